"""``skullsearch persons`` and ``skullsearch similar`` (:mod:`skullsearch.cli.persons_cmd`) through
the console entry point, on a small gallery of photo-less faces with handmade person descriptors
(4 persons × 3 faces, and 2 faces without one). Ingest's descriptors and ``similar --csv`` on real
photos are in tests/index/test_persons.py, ``persons --refit`` in tests/index/test_refit.py."""

import csv
import io

import numpy as np
import pytest

from skullsearch import Gallery
from skullsearch.cli.app import main
from skullsearch.encoder.descriptors import DIM
from skullsearch.index.synth import add_synthetic_faces, synth_codes

GROUP_COLUMNS = ["person_group", "group_size", "face_id", "person", "path"]


@pytest.fixture(scope="module")
def people(default_model, tmp_path_factory):
    """(gallery path, face ids (12,), person number per face (12,), the descriptors)."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((4, DIM)) / np.sqrt(2 * DIM)  # persons ~1 apart
    who = np.repeat(np.arange(4), 3)
    desc = (centres[who] + rng.standard_normal((12, DIM)) * 0.05 / np.sqrt(DIM)).astype(np.float32)
    g = Gallery.create(tmp_path_factory.mktemp("persons") / "g", face_model=default_model)
    ids = add_synthetic_faces(g, synth_codes(default_model, 12, rng), descriptors=desc,
                              persons=[f"label-{w}" for w in who])
    add_synthetic_faces(g, synth_codes(default_model, 2, rng), tag="old")  # no descriptors
    return g.path, ids, who, desc


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_persons_csv_lists_every_grouped_face_with_its_group(people, capsys):
    path, ids, who, _ = people
    assert main(["persons", "--gallery", str(path), "--csv"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert out.splitlines()[0].replace('"', "").split(",") == GROUP_COLUMNS
    assert sorted(int(r["face_id"]) for r in rows) == sorted(ids.tolist())  # not the 2 without one
    for p in range(4):
        mine = [r for r in rows if int(r["face_id"]) in set(ids[who == p].tolist())]
        assert {r["person_group"] for r in mine} == {str(ids[who == p].min())}  # named by its first face
        assert {r["group_size"] for r in mine} == {"3"} and {r["person"] for r in mine} == {f"label-{p}"}
        assert all(r["path"].startswith("synth://") for r in mine)
    # the groups are saved: the catalog's view sees them
    g = Gallery.open(path)
    assert g.sql("SELECT count(DISTINCT person_group) AS n FROM person_groups").column("n")[0].as_py() == 4


def test_min_size_and_a_strict_threshold(people, capsys):
    path, ids, _, _ = people
    assert main(["persons", "-g", str(path), "--min-size", "4", "--csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [",".join(f'"{c}"' for c in GROUP_COLUMNS)]  # the header alone
    assert main(["persons", "-g", str(path), "--threshold", "0.001"]) == 0
    # (words only: rich folds a title to the width of its table, here an empty one)
    words = " ".join(capsys.readouterr().out.split())
    assert "12 faces in 12 person group(s); 0 faces in groups of ≥ 2" in words
    assert main(["persons", "-g", str(path), "--threshold", "0.001", "--min-size", "1", "--csv"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 12 and {r["group_size"] for r in rows} == {"1"}
    assert all(r["person_group"] == r["face_id"] for r in rows)  # each face its own group


def test_the_table_title_and_the_row_limit(people, capsys):
    path, ids, _, _ = people
    assert main(["persons", "-g", str(path)]) == 0
    out = capsys.readouterr().out
    assert "12 faces in 4 person group(s); 12 faces in groups of ≥ 2" in out
    assert sum(str(i) in out for i in ids) == 12
    assert main(["persons", "-g", str(path), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "12 faces in 4 person group(s)" in out  # the title counts all
    # two rows: the first group (named by its first face) and its first two faces
    assert [i for i in ids if str(i) in out] == ids[:2].tolist()
    assert out.count("synth://") == 2
    assert main(["persons", "-g", str(path), "--limit", "0"]) == 0
    out = capsys.readouterr().out
    assert "12 faces in 4 person group(s)" in out and "synth://" not in out  # no face row


@pytest.mark.parametrize("args, message", [
    (["--threshold", "0"], "threshold must be a distance > 0"),
])
def test_library_refusals_are_one_error_line(people, capsys, args, message):
    path, *_ = people
    assert main(["persons", "-g", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--threshold", "-1"], "--threshold"),
    (["--neighbours", "0"], "--neighbours"),
    (["--min-size", "0"], "--min-size"),
    (["--limit", "-1"], "--limit"),
    (["--threshold", "close"], "--threshold"),
    ([], "--gallery"),
])
def test_bad_arguments_exit_2_naming_the_option(people, capsys, args, message):
    path, *_ = people
    gallery = [] if args == [] else ["-g", str(path)]
    assert main(["persons", *gallery, *args]) == 2
    err = capsys.readouterr().err
    assert "Error" in err and message in err and "Traceback" not in err


def test_a_gallery_without_descriptors_or_no_gallery(default_model, tmp_path, capsys):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    add_synthetic_faces(g, synth_codes(default_model, 3, np.random.default_rng(0)))
    assert main(["persons", "-g", str(g.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no face in this gallery has a person descriptor" in err
    assert main(["persons", "-g", str(tmp_path / "none")]) == 2
    assert "not a skullsearch gallery" in capsys.readouterr().err


# ------------------------------------------------------------------ similar
@pytest.fixture(scope="module")
def photo(default_model, tmp_path_factory):
    from photos import render_faces

    (p,) = render_faces(default_model, tmp_path_factory.mktemp("probe"), 1, seed=9)
    return p


def test_similar_by_shape_prints_a_ranked_table(people, photo, capsys):
    path, ids, _, _ = people
    assert main(["similar", str(photo), "-g", str(path), "--by", "shape", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"faces like {photo.name} (ranked by shape)" in out
    lines = [ln.replace("│", " ").split() for ln in out.splitlines() if "://" in ln]
    assert [ln[0] for ln in lines] == ["1", "2", "3"]  # one row per rank
    all_ids = {str(i) for i in Gallery.open(path).faces(columns=["face_id"]).column("face_id").to_pylist()}
    assert {ln[1] for ln in lines} <= all_ids


def test_similar_csv_by_person_ranks_only_described_faces(people, photo, capsys):
    path, ids, _, _ = people
    assert main(["similar", str(photo), "-g", str(path), "--top", "20", "--csv"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert list(rows[0]) == ["rank", "face_id", "person_distance", "distance", "by", "person", "path"]
    assert {r["by"] for r in rows} == {"person"} and len(rows) == 12  # the 2 old faces have none
    assert sorted(int(r["face_id"]) for r in rows) == sorted(ids.tolist())
    d = [float(r["person_distance"]) for r in rows]
    assert d == sorted(d) and [int(r["rank"]) for r in rows] == list(range(1, 13))


def test_similar_refusals(people, photo, tmp_path, capsys):
    from PIL import Image

    path, *_ = people
    blank = tmp_path / "sky.png"
    Image.new("RGB", (200, 200), (90, 140, 200)).save(blank)
    assert main(["similar", str(blank), "-g", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "sky.png" in err
    assert main(["similar", str(photo), "-g", str(path), "--by", "name"]) == 2
    assert "by must be auto, person or shape" in capsys.readouterr().err
    assert main(["similar", str(photo), "-g", str(path), "--top", "0"]) == 2
    assert "--top" in capsys.readouterr().err
