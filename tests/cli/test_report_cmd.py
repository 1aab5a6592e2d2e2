"""``skullsearch report`` (:mod:`skullsearch.cli.report_cmd`) through the console entry point, on a
60-face synthetic gallery with one recorded query: the default output file and the line that
says what was written, --top, a folder written by ``skullsearch reconstruct``, and the refusals.
The report's contents are in tests/inpaint/test_report.py."""

import json
import re

import numpy as np
import pytest
from skulls import skull_under

import skullsearch
from skullsearch import Gallery, Skull
from skullsearch.cli.app import main
from skullsearch.index.synth import synth


@pytest.fixture(scope="module")
def case(default_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("report_cmd")
    g = Gallery.create(root / "g", face_model=default_model)
    synth(g, 60, seed=5)
    shape = np.random.default_rng(8).standard_normal(90).astype(np.float32)
    skull, _, _ = skull_under(default_model, shape, root / "case", seed=2)
    res = skullsearch.query(g, Skull.load(skull), top=5)
    assert res.query_id
    return {"g": g.path, "qid": res.query_id, "skull": skull, "root": root}


def _scene(text: str) -> dict:
    return json.loads(re.search(r'id="scene-data">(.*?)</script>', text, re.S).group(1))


def test_the_default_output_is_report_html_here_and_the_line_says_so(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report", case["qid"], "-g", str(case["g"])]) == 0
    out = capsys.readouterr().out.strip()
    path = tmp_path / "report.html"
    assert path.is_file() and case["qid"] in path.read_text(encoding="utf-8")
    mb = path.stat().st_size / 1e6
    assert out == f"wrote report.html ({mb:.1f} MB): open it in a browser, no network needed"
    assert len(_scene(path.read_text(encoding="utf-8"))["candidates"]) == 5  # --top's default


def test_top_sets_the_candidates_with_a_3d_view(case, tmp_path, capsys):
    out = tmp_path / "deep" / "er" / "r.htm"  # folders made; .htm is HTML too
    assert main(["report", case["qid"], "-g", str(case["g"]), "-o", str(out), "--top", "2"]) == 0
    assert f"wrote {out} (" in capsys.readouterr().out
    assert len(_scene(out.read_text(encoding="utf-8"))["candidates"]) == 2
    assert not list(out.parent.glob("*.tmp"))  # written atomically, nothing left over


@pytest.mark.parametrize("args, message", [
    (["--top", "0"], "--top must be at least 1, got 0"),
    (["--out", "r.txt"], "give an output name ending in .html, not r.txt"),
    (["--reconstruction", "."], "is not a reconstruction folder (no reconstruction.json)"),
])
def test_refusals_are_one_error_line_and_write_nothing(case, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["report", case["qid"], "-g", str(case["g"]), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in " ".join(err.split()) and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_query_or_gallery(case, tmp_path, capsys):
    unknown = "20990101T000000Z-deadbeef"
    assert main(["report", unknown, "-g", str(case["g"]), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no recorded query" in err
    assert main(["report", case["qid"], "-g", str(tmp_path / "none"), "-o", str(tmp_path / "r.html")]) == 2
    assert "not a skullsearch gallery" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("args, message", [
    ([], "QUERY_ID"),
    (["QID"], "--gallery"),
    (["QID", "-g", "G", "--top", "many"], "--top"),
])
def test_bad_arguments_exit_2(capsys, args, message):
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert "Error" in err and message in err and "Traceback" not in err


def test_an_output_under_a_file_is_an_error_line(case, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["report", case["qid"], "-g", str(case["g"]), "-o", str(tmp_path / "file" / "r.html")]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.slow
def test_a_reconstruct_folder_goes_into_the_report(case, tmp_path, capsys):
    """The two commands together: reconstruct writes a folder, report --reconstruction shows it
    (and says when it was made for another query)."""
    folder = tmp_path / "recon"
    assert main(["reconstruct", str(case["skull"]), "-g", str(case["g"]), "--candidates", "1",
                 "--method", "fit", "--out", str(folder)]) == 0
    capsys.readouterr()
    data = json.loads((folder / "reconstruction.json").read_text())
    fid = data["candidates"][0]["face_id"]
    out = tmp_path / "r.html"
    assert main(["report", data["query_id"], "-g", str(case["g"]), "-o", str(out), "--reconstruction",
                 str(folder), "--top", "1"]) == 0
    text = out.read_text(encoding="utf-8")
    assert f'id="recon-{fid}"' in text and "Re-synthesized faces" in text
    assert "this reconstruction was made for query" not in text
    assert list(_scene(text)["reconstructions"]) == [str(fid)]
    other = tmp_path / "other.html"
    assert main(["report", case["qid"], "-g", str(case["g"]), "-o", str(other), "--reconstruction",
                 str(folder), "--top", "1"]) == 0
    assert f"this reconstruction was made for query {data['query_id']}, not {case['qid']}" in other.read_text(
        encoding="utf-8")
