"""benchmarks/persons.py and benchmarks/regression.py: small real runs."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from benchmark_scripts import load
from hypothesis import given, settings
from hypothesis import strategies as st

_load = load


@pytest.mark.slow
def test_persons_on_rendered_heads_reports_every_figure(tmp_path, capsys):
    from PIL import Image

    persons = _load("persons")
    persons.render_people(tmp_path, 3, 4, seed=2)
    # another file of one picture (re-saved as JPEG): a copy, not a second photo of its person
    Image.open(tmp_path / "person001" / "photo0.png").convert("RGB").save(
        tmp_path / "person001" / "photo0-copy.jpg", quality=90)
    out = persons.main(["--photos", str(tmp_path), "--workers", "1", "--shared", "2"])
    assert out["faces"] >= 10 and out["persons"] == 3 and out["copy_pairs_left_out"] == 1
    assert 0.5 < out["auc_descriptor"] <= 1 and 0 <= out["auc_shape_code"] <= 1
    for k in ("shape_code", "tissue_points", "landmarks_2d"):
        assert 0 <= out[f"auc_{k}"] <= 1 and 0 <= out[f"nearest_same_{k}"] <= 1
    assert 0 < out["nearest_same_chance"] < 1
    assert 0 < out["tissue_rms_mm_same_median"] < 10 and 0 < out["tissue_rms_mm_different_median"] < 10
    assert set(out["auc_shape_code_by_person_pair"]) == {"person000|person001", "person000|person002",
                                                         "person001|person002"}
    # groups of two photos, one shape each: 3 persons × 2 groups, person001's 5 photos 2 groups and
    # one left over (a group counts once)
    assert out["shared_groups_staged"] == 6 and out["shared_persons"] == 3
    assert 4 <= out["shared_faces"] <= 6 and 0 <= out["shared_auc_shape_code"] <= 1
    assert [g["threshold"] for g in out["grouping"]] == [0.4, 0.5, 0.6]
    assert all(0 <= g["pair_precision"] <= 1 and 0 <= g["pair_recall"] <= 1 for g in out["grouping"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["faces"] == out["faces"]


@pytest.mark.slow
def test_the_regression_run_is_identical_to_itself_and_finds_a_change(tmp_path, capsys):
    reg = _load("regression")
    saved = tmp_path / "before.json"
    assert reg.main(["--faces", "300", "--save", str(saved)]) == 0
    assert reg.main(["--faces", "300", "--check", str(saved)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "identical"
    before = json.loads(saved.read_text())
    before["s"][0] += 0.01  # as if the code had changed a score
    saved.write_text(json.dumps(before))
    assert reg.main(["--faces", "300", "--check", str(saved)]) == 1
    assert "DIFFERS s:" in capsys.readouterr().out


@settings(max_examples=25, deadline=None)
@given(angle=st.floats(-3.1, 3.1), scale=st.floats(0.2, 5.0), shift=st.floats(-500, 500),
       seed=st.integers(0, 1000))
def test_the_landmark_control_ignores_where_and_how_large_a_face_is(angle, scale, shift, seed):
    """persons.py's control (the detector's 68 points similarity-aligned) must not tell faces apart
    by their place, size or roll in the photo, only by their shape."""
    aligned = _load("persons").aligned_landmarks
    rng = np.random.default_rng(seed)
    lm = rng.normal(0, 30, (4, 68, 2)) + 200
    c, s = np.cos(angle), np.sin(angle)
    moved = lm.copy()
    moved[1] = (lm[1] - 200) @ np.array([[c, -s], [s, c]]).T * scale + 200 + shift
    a, b = aligned(lm), aligned(moved)
    assert np.allclose(a[[0, 2, 3]], b[[0, 2, 3]], atol=1e-6)
    assert np.allclose(a[1], b[1], atol=1e-6)
    assert np.linalg.norm(a[0] - a[1]) > 1e-3  # different shapes stay apart


def test_nearest_same_person_rate():
    nearest_same = _load("persons").nearest_same
    who = np.array(["a", "a", "b", "b", "c"])
    x = np.array([0.0, 0.1, 5.0, 9.0, 5.2])  # b's two faces are further apart than b and c
    d = np.abs(x[:, None] - x[None])
    # a: both right; b at 5.0 → c (wrong), b at 9.0 → c at 5.2 (wrong); c has no other face
    assert nearest_same(d, who) == 0.5


def test_real_photos_unpacks_person_folders_and_refuses_a_changed_archive(tmp_path, monkeypatch):
    rp = _load("real_photos")
    archive = tmp_path / "dl" / "dlib-19.5.0.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("dlib-19.5.0/docs/docs/cache/examples/johns/John_A/1.jpg",
                     "dlib-19.5.0/docs/docs/cache/examples/johns/John_A/2.jpg",
                     "dlib-19.5.0/docs/docs/cache/examples/johns/John_B/1.jpg",
                     "dlib-19.5.0/docs/docs/cache/examples/johns/README.txt",
                     "dlib-19.5.0/examples/faces/other.jpg"):
            data = name.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(rp, "_download", lambda requirement, folder: archive)
    import hashlib

    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    requirement, _, prefix = rp.SETS["johns"]
    monkeypatch.setitem(rp.SETS, "johns", (requirement, digest, prefix))
    out = rp.fetch(tmp_path / "out", ["johns"])
    assert out["persons"] == {"John_A": 2, "John_B": 1} and out["photos"] == 3
    assert (tmp_path / "out" / "John_A" / "2.jpg").read_bytes().endswith(b"John_A/2.jpg")
    monkeypatch.setitem(rp.SETS, "johns", (requirement, "0" * 64, prefix))
    with pytest.raises(SystemExit, match="sha256"):
        rp.fetch(tmp_path / "again", ["johns"])
    assert not (tmp_path / "again").exists() or not any((tmp_path / "again").iterdir())
