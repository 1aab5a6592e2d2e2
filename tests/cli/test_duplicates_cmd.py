"""``skullsearch near-duplicates`` (:mod:`skullsearch.cli.duplicates_cmd`) through the console entry
point, on a small gallery whose second shard went through ingest's own near-duplicate and writer
stages: one face flagged by each criterion (photo, person, identity) and one not flagged. Flags
on real photos are in tests/index/test_near_dup_photos.py and test_indexes_and_duplicates.py."""

import csv
import importlib
import io
import math

import numpy as np
import pytest

from skullsearch import Gallery
from skullsearch.cli.app import main
from skullsearch.encoder.descriptors import DIM
from skullsearch.encoder.encode import EncodedFace
from skullsearch.index import store
from skullsearch.index.detect_stage import PhotoRecord
from skullsearch.index.fingerprint import DIM as FP_DIM
from skullsearch.index.synth import add_synthetic_faces, synth_codes

ingest = importlib.import_module("skullsearch.index.ingest")  # (the package's `ingest` is the function)

COLUMNS = ["face_id", "path", "person", "near_duplicate_of", "duplicate_path", "duplicate_person",
           "criterion", "distance", "photo_distance", "person_distance"]


def _unit(rng, n, d):
    v = rng.standard_normal((n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def flagged(default_model, tmp_path_factory):
    """A gallery: 4 earlier faces with photo fingerprints and person descriptors, then a shard of
    4 new faces — new/0 another file of face 0's picture, new/1 a re-shot of face 1's person,
    new/2 face 2's identity, new/3 nobody's — written by ingest's Writer."""
    rng = np.random.default_rng(3)
    model = default_model
    g = Gallery.create(tmp_path_factory.mktemp("dups") / "g", face_model=model)
    codes = synth_codes(model, 4, rng)
    fps = _unit(rng, 4, FP_DIM)
    descs = _unit(rng, 4, DIM)
    earlier = add_synthetic_faces(g, codes, fingerprints=fps, descriptors=descs,
                                  persons=[f"p{i}" for i in range(4)])
    new_codes = synth_codes(model, 4, rng)
    new_fps = np.full((4, FP_DIM), np.nan, np.float32)
    new_descs = np.full((4, DIM), np.nan, np.float32)
    new_fps[0] = fps[0] + 0.03 * _unit(rng, 1, FP_DIM)[0]
    new_descs[1] = descs[1] + 0.1 * _unit(rng, 1, DIM)[0]
    new_codes[2] = codes[2]
    new_codes[2, :5] += 0.01
    paths = [f"new/{i}.jpg" for i in range(4)]
    rows = [PhotoRecord(p, person=f"n{i}", sha256=f"{i:064d}", width=320, height=320)
            for i, p in enumerate(paths)]
    faces = [EncodedFace(image=p, sha256=f"{i:064d}", face_index=0, box=np.array([10.0, 10, 200, 200]),
                         score=1.0, landmarks=np.zeros((68, 2)), quality=(), yaw_deg=0.0, detector="test",
                         image_size=(320, 320), code=new_codes[i], residual_px=1.0, person=f"n{i}")
             for i, p in enumerate(paths)]
    chunk = ingest.FittedChunk(rows, faces, ingest.neutral_soft_tissue(model, new_codes), new_codes,
                               new_fps, new_descs)
    report = ingest.IngestReport()
    with store.WriteLock(g.path):
        ingest.Writer(g, ingest._Cuts(ingest.NEAR_DUPLICATE_DISTANCE, ingest.NEAR_DUPLICATE_PHOTO_DISTANCE,
                                      ingest.NEAR_DUPLICATE_PERSON_DISTANCE), report)(chunk, "test")
    assert (report.near_duplicates, report.near_duplicate_photos, report.near_duplicate_persons) == (3, 1, 1)
    new = {r["path"]: r["face_id"] for r in g.faces(columns=["face_id", "path"]).to_pylist()}
    return g.path, earlier, [new[p] for p in paths]


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def _num(s):
    return None if s == "" else float(s)


def test_csv_has_the_documented_columns_one_row_per_flag_photo_then_person_then_identity(flagged, capsys):
    path, earlier, new = flagged
    assert main(["near-duplicates", "-g", str(path), "--csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].replace('"', "").split(",") == COLUMNS
    rows = _csv(out)
    assert [r["criterion"] for r in rows] == ["photo", "person", "identity"]
    assert [int(r["face_id"]) for r in rows] == new[:3]  # new/3 is nobody's: not listed
    assert [int(r["near_duplicate_of"]) for r in rows] == earlier[:3].tolist()
    assert [r["path"] for r in rows] == ["new/0.jpg", "new/1.jpg", "new/2.jpg"]
    assert [r["person"] for r in rows] == ["n0", "n1", "n2"]
    assert [r["duplicate_person"] for r in rows] == ["p0", "p1", "p2"]
    assert all(r["duplicate_path"].startswith("synth://") for r in rows)
    photo, person, identity = rows
    assert 0 < _num(photo["photo_distance"]) <= 0.12 and photo["person_distance"] == ""
    assert 0 < _num(person["person_distance"]) <= 0.5 and person["photo_distance"] == ""
    assert _num(identity["distance"]) < 0.4
    assert identity["photo_distance"] == identity["person_distance"] == ""
    # the identity distance of every pair is given, whichever criterion fired
    assert _num(photo["distance"]) > 1.0 and _num(person["distance"]) > 1.0


@pytest.mark.parametrize("args, paths", [
    (["--criterion", "person"], ["new/1.jpg"]),
    (["--criterion", "identity"], ["new/2.jpg"]),
    (["--max-distance", "0.4"], ["new/2.jpg"]),
    (["--max-distance", "inf"], ["new/0.jpg", "new/1.jpg", "new/2.jpg"]),
    (["--max-photo-distance", "0.12"], ["new/0.jpg"]),  # pairs without fingerprints drop out
    (["--criterion", "photo", "--max-distance", "0.4"], []),
])
def test_filters(flagged, capsys, args, paths):
    path, *_ = flagged
    assert main(["near-duplicates", "-g", str(path), "--csv", *args]) == 0
    assert [r["path"] for r in _csv(capsys.readouterr().out)] == paths


def test_the_table_shows_the_count_and_at_most_limit_rows(flagged, capsys):
    path, earlier, new = flagged
    assert main(["near-duplicates", "-g", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 near-duplicate face(s)" in out
    for name in ("face_id", "near_duplicate_of", "criterion", "photo_distance", "person_distance"):
        assert name in out
    body = [ln for ln in out.splitlines() if "new/" in ln]
    assert [ln.split("│")[5].strip() for ln in body] == ["photo", "person", "identity"]
    assert all(str(new[i]) in body[i] and str(earlier[i]) in body[i] for i in range(3))
    assert main(["near-duplicates", "-g", str(path), "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 near-duplicate face(s)" in out  # the count of all
    assert [ln for ln in out.splitlines() if "new/" in ln][0].count("new/0.jpg") == 1
    assert "new/1.jpg" not in out and "new/2.jpg" not in out


@pytest.mark.parametrize("value, option", [("-1", "max_distance"), ("nan", "max_distance")])
def test_bad_distances_are_one_error_line(flagged, capsys, value, option):
    path, *_ = flagged
    flag = "--" + option.replace("_", "-")
    assert main(["near-duplicates", "-g", str(path), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and f"{option} must be a number ≥ 0" in err and "Traceback" not in err
    assert main(["near-duplicates", "-g", str(path), "--max-photo-distance", value]) == 2
    assert "max_photo_distance must be a number ≥ 0" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--limit", "-1"], "--limit"),
    (["--max-distance", "close"], "--max-distance"),
    (["--max-photo-distance", ""], "--max-photo-distance"),
])
def test_bad_arguments_exit_2_naming_the_option(flagged, capsys, args, message):
    path, *_ = flagged
    assert main(["near-duplicates", "-g", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert "Error" in err and message in err and "Traceback" not in err


def test_a_gallery_without_flags_lists_none(default_model, tmp_path, capsys):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    add_synthetic_faces(g, synth_codes(default_model, 3, np.random.default_rng(0)))
    assert main(["near-duplicates", "-g", str(g.path)]) == 0
    assert "0 near-duplicate face(s)" in " ".join(capsys.readouterr().out.split())
    assert main(["near-duplicates", "-g", str(g.path), "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == [",".join(f'"{c}"' for c in COLUMNS)]
    assert main(["near-duplicates", "-g", str(tmp_path / "none")]) == 2
    assert "not a skullsearch gallery" in capsys.readouterr().err


def test_the_distances_are_the_pairs_own(flagged, capsys):
    """The CSV's distances are those of the stored vectors of each pair (float16 in the catalog)."""
    path, earlier, new = flagged
    g = Gallery.open(path)
    assert main(["near-duplicates", "-g", str(path), "--csv"]) == 0
    photo, person, _ = _csv(capsys.readouterr().out)
    fp = g.photo_fingerprints(np.array([new[0], earlier[0]]))
    assert math.isclose(_num(photo["photo_distance"]), float(np.linalg.norm(fp[0] - fp[1])), abs_tol=2e-3)
    d = g.descriptors(np.array([new[1], earlier[1]]))
    assert math.isclose(_num(person["person_distance"]), float(np.linalg.norm(d[0] - d[1])), abs_tol=2e-3)
