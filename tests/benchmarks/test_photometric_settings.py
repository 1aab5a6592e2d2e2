"""benchmarks/photometric_settings.py: a small real run (renders, and a folder of person
sub-folders of decoded PNGs standing in for photos) and its refusal of an unknown setting."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load


@pytest.fixture(scope="module")
def bench():
    return load("photometric_settings")


def test_an_unknown_setting_is_refused_naming_the_known_ones(bench):
    with pytest.raises(SystemExit, match="landmark_cauchy"):
        bench.main(["--renders", "0", "--try", "albedo=3"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.main(["--renders", "0", "--try", "weight"])
    with pytest.raises(SystemExit, match="true or false"):
        bench.main(["--renders", "0", "--try", "skip_features=maybe"])


def test_exact_landmark_parts_parse_and_refuse_unknown_ones(bench):
    from _common import LANDMARK_GROUPS

    assert bench._exact_parts(None) == []
    assert bench._exact_parts("all") == list(LANDMARK_GROUPS)
    assert bench._exact_parts("jaw, brows") == ["jaw", "brows"]
    with pytest.raises(SystemExit, match="outer_lips"):
        bench._exact_parts("lips")
    with pytest.raises(SystemExit, match="unknown parts"):
        bench._exact_parts(",")
    covered = sorted(i for g in LANDMARK_GROUPS.values() for i in g)
    assert covered == list(range(68))  # the parts partition the 68 points


def test_the_detectors_error_by_part_and_its_jaw_line_inward(bench):
    """Jaw points moved a tenth of the eyes' distance towards the nose: the jaw's error 0.1, every
    other part's 0, each jaw point 0.1 inward; moved outwards, −0.1."""
    rng = np.random.default_rng(0)
    exact = rng.uniform(100, 300, (3, 68, 2))
    exact[:, 36:42] = [100.0, 200.0]  # eye centres 100 px apart
    exact[:, 42:48] = [200.0, 200.0]
    exact[:, 27:36] = [150.0, 250.0]  # the nose
    exact[:, :17] = [150.0, 250.0] + 80 * np.stack([np.cos(np.linspace(0, np.pi, 17)),
                                                    np.sin(np.linspace(0, np.pi, 17))], -1)
    towards = exact[:, 27:36].mean(1, keepdims=True) - exact[:, :17]
    towards /= np.linalg.norm(towards, axis=-1, keepdims=True)
    for sign in (1, -1):
        detected = exact.copy()
        detected[:, :17] += sign * 10.0 * towards
        err = bench.detector_error_iod(detected, exact)
        assert err["jaw"] == pytest.approx(0.1) and err["brows"] == 0 and err["eyes"] == 0
        np.testing.assert_allclose(err["jaw_inward"], sign * 0.1, atol=1e-3)


def test_settings_parse_to_their_fields_types(bench):
    from _common import photometric_config

    cfg = photometric_config(["skip_features=false", "steps=20", "weight=3.5"])
    assert cfg.skip_features is False and cfg.steps == 20 and cfg.weight == 3.5
    assert photometric_config(["skip_features=True"]).skip_features is True
    assert photometric_config(None).skip_features is True  # the default
    assert photometric_config(["skip_parts=lips,lashes"]).skip_parts == ("lips", "lashes")
    assert photometric_config(["feature_albedo=1"]).feature_albedo is True
    assert photometric_config(["cast_shadows=true", "specular=16"]).specular == 16.0


@pytest.mark.slow
def test_a_small_run_reports_each_setting_on_renders_and_photos(bench, default_model, tmp_path, capsys):
    from _common import random_faces, render_photos

    rng = np.random.default_rng(3)
    shape, expr, pose = random_faces(default_model, 2, rng, expr_scale=0.05)
    for who in (0, 1):  # two persons, two photos each
        folder = tmp_path / f"person{who}"
        folder.mkdir()
        made = render_photos(default_model, folder, shape[[who, who]], expr[[who, who]], pose[[who, who]],
                             rng)
    shutil.copy(made[0], tmp_path / "person1" / "copy.png")  # one picture twice: not a re-shot
    setting = "steps=20 landmark_cauchy=0.06 skip_features=false cast_shadows=true"
    out = bench.main(["--renders", "2", "--texture", "--photos", str(tmp_path), "--try", setting,
                      "--light-up", "30", "60"])
    assert [r["setting"] for r in out["rows"]] == ["defaults", setting]
    assert out["renders"]["faces_found"] == 2 and out["renders"]["truth"].startswith("synthetic")
    assert out["renders"]["texture"] is True and out["renders"]["landmark_fit_residual_px"] > 0
    assert out["renders"]["light_up"] == [30.0, 60.0] and 30 <= out["renders"]["light_up_deg"] <= 60
    assert len(out["renders"]["detector_error_iod"]["jaw_inward"]) == 17
    assert out["real"]["landmark_fit_residual_px"] > 0
    real = out["real"]
    # person1's copy pairs with its original (left out) and its other photo; with person0's two
    assert real["persons"] == 2 and real["copy_pairs_left_out"] == 1
    assert real["same_pairs"] == 3 and real["different_pairs"] == 6
    for row in out["rows"]:
        assert 0 < row["renders_ratio_to_mean_face"] < 2 and row["renders_residual_px"] >= 0
        assert 0 <= row["real_auc_shape_code"] <= 1 and row["real_residual_px"] >= 0
        assert row["renders_photometric_energy"] > 0 and row["real_photometric_energy"] > 0
        for where in ("renders", "real"):
            off = row[f"{where}_off_detector_iod"]
            assert set(off) == {"all", "jaw", "brows", "nose", "eyes", "outer_lips", "inner_lips"}
            assert 0 < off["all"] < 0.5
    # the share left out as in a cast shadow, reported where cast_shadows is on
    assert "renders_shadowed" not in out["rows"][0] and "real_shadowed" not in out["rows"][0]
    assert 0 <= out["rows"][1]["renders_shadowed"] < 0.5 and 0 <= out["rows"][1]["real_shadowed"] < 0.5
    # and the light's elevation read off the photos: only where a setting reads it
    assert "renders_light_up_deg" not in out["rows"][0] and "real_light_up_deg" not in out["rows"][0]
    for where in ("renders", "real"):
        assert -90 <= out["rows"][1][f"{where}_light_up_deg"] <= 90
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["rows"] == out["rows"]


def test_exact_landmarks_lie_on_the_face_and_the_fit_reaches_them(bench, default_model, tmp_path):
    """``--exact-landmarks``: the renders' own points, projected by each photo's camera, lie on the
    face dlib finds (within a tenth of the eyes' distance on average), and the fit reaches them
    closer than dlib's, to a pixel or two (its prior and its focal length, its own guess, not the
    render's, keep it from zero)."""
    from _common import exact_landmarks, random_faces, render_photos

    m = default_model
    rng = np.random.default_rng(4)
    shape, expr, pose = random_faces(m, 3, rng, expr_scale=0.05)
    cameras: list = []
    paths = render_photos(m, tmp_path, shape, expr, pose, rng, max_yaw=30.0, cameras=cameras)
    assert len(cameras) == 3
    exact = exact_landmarks(m, shape, expr, pose, cameras)
    assert exact.shape == (3, 68, 2)
    faces, _ = bench.fitted(m, paths)
    assert len(faces) >= 2
    dlib = [f.residual_px for f in faces]
    from _common import faces_landmarks_px

    # the codes' own landmarks, projected again, are the fit's: their distance to dlib's is its residual
    again = faces_landmarks_px(m, faces)
    residual = np.linalg.norm(again - np.stack([f.landmarks for f in faces]), axis=-1).mean(1)
    np.testing.assert_allclose(residual, dlib, rtol=1e-3, atol=1e-3)
    for f in faces:
        i = int(Path(f.image).stem[5:])
        iod = np.linalg.norm(exact[i, 36:42].mean(0) - exact[i, 42:48].mean(0))
        assert np.linalg.norm(f.landmarks - exact[i], axis=1).mean() < 0.1 * iod
        f.landmarks = exact[i]
    from skullsearch.encoder.encode import fit_faces

    fit_faces(m, faces)
    now = [f.residual_px for f in faces]
    assert max(now) < 2.5 and all(a < b for a, b in zip(now, dlib, strict=True)), (now, dlib)


def test_renders_taken_close_carry_their_focal_length_in_exif(bench, default_model, tmp_path):
    """render_photos' selfies (distance_scale) and EXIF (exif): the same draws nearer, so a
    shorter focal length for the same framing, which the decoder reads back from the PNG."""
    from _common import random_faces, render_photos

    from skullsearch.encoder.images import read_image

    shape, expr, pose = random_faces(default_model, 2, np.random.default_rng(5), expr_scale=0.0)
    far, near = [], []
    (tmp_path / "far").mkdir()
    (tmp_path / "near").mkdir()
    plain = render_photos(default_model, tmp_path / "far", shape, expr, pose, np.random.default_rng(6),
                          cameras=far)
    close = render_photos(default_model, tmp_path / "near", shape, expr, pose, np.random.default_rng(6),
                          cameras=near, distance_scale=0.4, exif=True)
    for a, b, p, q in zip(far, near, plain, close, strict=True):
        assert b.focal == pytest.approx(0.4 * a.focal) and b.translation[2] < 0.45 * a.translation[2]
        assert read_image(p).focal_px is None
        # whole mm of 35 mm-equivalent focal length, as cameras write it: within 0.5 mm
        assert read_image(q).focal_px == pytest.approx(b.focal, abs=0.5 * np.hypot(512, 512) / 43.27)
