"""``skullsearch reconstruct`` (:mod:`skullsearch.cli.reconstruct_cmd`) through the console entry
point, on a 60-face synthetic gallery and a synthetic (open) skull: the skull's warnings, the
table's title (query id, landmarks), the recorded query, --json without --out, --landmarks,
--units, and the refusals. The table's numbers, the --out folder and --fit are in
tests/inpaint/test_reconstruct.py."""

import json
import re
import shutil

import numpy as np
import pytest
from skulls import skull_under

from skullsearch import Gallery
from skullsearch.cli.app import main
from skullsearch.index.synth import synth


@pytest.fixture(scope="module")
def case(default_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("reconstruct_cmd")
    g = Gallery.create(root / "g", face_model=default_model)
    synth(g, 60, seed=4)
    shape = np.random.default_rng(6).standard_normal(90).astype(np.float32)
    skull, _, marks = skull_under(default_model, shape, root / "case", seed=3)
    return {"g": g.path, "skull": skull, "marks": marks, "root": root}


def _run(capsys, *args):
    code = main(["reconstruct", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_json_without_out_records_the_query_and_warns_of_the_open_skull(case, tmp_path, capsys):
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, case["skull"], "-g", case["g"], "--candidates", "1", "--method", "fit",
                          "--fit", "paper", "--iterations", "2", "--json", js)
    assert code == 0, err
    # the skull reader's warning, as one line on stderr
    assert re.search(r"^warning: skull\.ply: the mesh is open \(\d+ boundary edges\)", err, re.M)
    words = " ".join(out.split())
    qid = re.search(r"skull\.ply — query (\S+), 36 landmarks;", words).group(1)
    assert (case["g"] / "audit" / f"{qid}.json").is_file()  # the query behind it is recorded
    data = json.loads(js.read_text())
    assert data["query_id"] == qid and len(data["candidates"]) == 1
    c = data["candidates"][0]
    assert c["method"] == "fit" and 1 <= c["iterations"] <= 2
    assert c["mesh"] is None and c["render"] is None  # no --out: no files
    assert f"wrote {js}" in out and "face(s) to" not in out
    assert "F3DMM-GC" in out
    row = [ln for ln in out.splitlines() if str(c["face_id"]) in ln]
    assert len(row) == 1 and row[0].split()[:3] == ["1", str(c["face_id"]), "fit"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_landmark_file_given_apart_with_some_left_out(case, tmp_path, capsys):
    lone = tmp_path / "lone.ply"
    shutil.copy(case["skull"], lone)  # no sidecar next to it
    keep = {k: np.asarray(v).tolist() for k, v in case["marks"].items() if k not in ("op", "v", "go_l")}
    marks = tmp_path / "picked.json"
    marks.write_text(json.dumps(keep))
    code, out, err = _run(capsys, lone, "-g", case["g"], "--candidates", "1", "--method", "fit",
                          "--landmarks", marks)
    assert code == 0, err
    assert "lone.ply — query" in out and "33 landmarks" in " ".join(out.split())
    code, _, err = _run(capsys, lone, "-g", case["g"])  # and without it: none next to the mesh
    assert code == 2 and err.startswith("error:") and "no landmarks for lone.ply" in " ".join(err.split())


@pytest.mark.parametrize("args, message", [
    (["--method", "magic"], "method must be one of"),
    (["--iterations", "-1"], "iterations must be a whole number ≥ 1"),
    (["--candidates", "-3"], "candidates must be a whole number ≥ 1"),
    (["--units", "furlong"], "unknown units 'furlong'; use one of"),
    (["--units", "cm"], "pass --units mm"),  # a skull in mm read as cm: metres across
    (["--tissue-table", "missing.csv"], "missing.csv"),
])
def test_refusals_are_one_error_line(case, capsys, args, message):
    code, out, err = _run(capsys, case["skull"], "-g", case["g"], *args)
    assert code == 2
    assert err.startswith("error:") or "\nerror:" in err, err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert "query" not in out  # nothing ran


def test_a_missing_skull_or_gallery(case, tmp_path, capsys):
    code, _, err = _run(capsys, tmp_path / "nope.ply", "-g", case["g"])
    assert code == 2 and "error:" in err and "nope.ply" in err
    code, _, err = _run(capsys, case["skull"], "-g", tmp_path / "none")
    assert code == 2 and "not a skullsearch gallery" in err


@pytest.mark.parametrize("args, message", [
    ([], "SKULL"),
    (["skull.ply"], "--gallery"),
    (["skull.ply", "-g", "G", "--candidates", "two"], "--candidates"),
    (["skull.ply", "-g", "G", "--fit", "exact"], "--fit must be map or paper"),
])
def test_bad_arguments_exit_2(capsys, args, message):
    code, _, err = _run(capsys, *args)
    assert code == 2 and "Error" in err and message in err and "Traceback" not in err


def test_json_in_a_missing_folder_is_an_error_line(case, tmp_path, capsys):
    code, _, err = _run(capsys, case["skull"], "-g", case["g"], "--candidates", "1", "--method", "fit",
                        "--json", tmp_path / "no" / "such" / "r.json")
    assert code == 2 and "error:" in err
