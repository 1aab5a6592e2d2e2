"""Per-detector embeddings (:mod:`skullsearch.encoder.embeddings`): where they are looked for (the
package's data first, then the cache folder of ``$SKULLSEARCH_CACHE``), the saved files read back
as written, and a file calibrated for another face model is refused with what to do. (The
packaged mesh embeddings the fit uses are checked in test_mesh.py.)"""

from pathlib import Path

import numpy as np
import pytest

import skullsearch.encoder.embeddings as emb_mod
from skullsearch.encoder.annotate import landmark_embedding
from skullsearch.encoder.calibrate import CalibrationReport, DenseCalibration
from skullsearch.encoder.embeddings import (
    SURFACE_CONTOUR,
    dense_file_name,
    dense_paths,
    dense_points,
    detector_points,
    embedding_file_name,
    embedding_paths,
    save_dense_embedding,
    save_detector_embedding,
)
from skullsearch.encoder.face_model import SurfacePoints
from skullsearch.errors import LandmarkError

PACKAGE_DATA = Path(emb_mod.__file__).parent / "data"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SKULLSEARCH_CACHE", str(folder))
    return folder


def _embedding(model):
    """A 68-point embedding unlike the model's own: its triangles, the weights rotated."""
    own = model._landmarks68_points()
    e = landmark_embedding(SurfacePoints(np.asarray(own.faces), np.asarray(own.bary)[:, [1, 2, 0]]))
    e.source = "calibrated on 3 renders (seed 0, yaw ±30°)"
    return e


def _report():
    return CalibrationReport(photos=4, found=3, samples=np.full(68, 3), shift_mm=np.zeros(68),
                             spread_mm=np.linspace(0.0, 2.0, 68))


def test_embeddings_are_looked_for_in_the_package_then_the_cache(default_model, cache):
    fp16 = default_model.fingerprint[:16]
    name = f"landmarks-fake-{fp16}.npz"
    assert embedding_file_name(default_model, "fake") == name
    assert embedding_paths(default_model, "fake") == [PACKAGE_DATA / name, cache / name]
    dense = f"dense-fake-{fp16}.npz"
    assert dense_file_name(default_model, "fake") == dense
    assert dense_paths(default_model, "fake") == [PACKAGE_DATA / dense, cache / dense]
    assert "mesh" in SURFACE_CONTOUR and "dlib" not in SURFACE_CONTOUR


def test_no_embedding_for_dlib_or_an_uncalibrated_detector(default_model, cache):
    assert detector_points(default_model, "dlib") is None
    assert detector_points(default_model, None) is None and detector_points(default_model, "") is None
    assert detector_points(default_model, "fake") is None  # no file anywhere
    assert dense_points(default_model, "dlib") is None and dense_points(default_model, "fake") is None


def test_a_saved_embedding_reads_back_as_written(default_model, cache):
    e, rep = _embedding(default_model), _report()
    path = embedding_paths(default_model, "fake")[1]
    save_detector_embedding(path, default_model, "fake", e, rep)
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # written atomically: no leftovers
    pts = detector_points(default_model, "fake")
    assert pts is not None
    assert pts.faces.dtype == np.int64 and pts.bary.dtype == np.float32
    assert pts.faces.shape == (68,) and pts.bary.shape == (68, 3)
    np.testing.assert_array_equal(pts.faces, e.static_faces)
    np.testing.assert_array_equal(pts.bary, np.asarray(e.static_bary, np.float32))
    with np.load(path) as z:
        assert str(z["detector"]) == "fake" and str(z["model_fingerprint"]) == default_model.fingerprint
        assert str(z["source"]) == e.source and int(z["found"]) == 3 and int(z["photos"]) == 4
        np.testing.assert_array_equal(z["spread_mm"], rep.spread_mm)
    # overwriting replaces it
    e2 = landmark_embedding(SurfacePoints(np.asarray(e.static_faces),
                                          np.asarray(e.static_bary)[:, [1, 2, 0]]))
    save_detector_embedding(path, default_model, "fake", e2, rep)
    np.testing.assert_array_equal(detector_points(default_model, "fake").bary,
                                  np.asarray(e2.static_bary, np.float32))


def test_the_package_data_comes_before_the_cache(default_model, cache):
    """The default model ships a mesh embedding: one in the cache folder does not override it."""
    assert embedding_paths(default_model, "mesh")[0].exists()
    packaged = detector_points(default_model, "mesh")
    save_detector_embedding(embedding_paths(default_model, "mesh")[1], default_model, "mesh",
                            _embedding(default_model), _report())
    got = detector_points(default_model, "mesh")
    np.testing.assert_array_equal(got.faces, packaged.faces)
    np.testing.assert_array_equal(got.bary, packaged.bary)
    assert not np.array_equal(got.bary, np.asarray(_embedding(default_model).static_bary, np.float32))


def test_an_embedding_for_another_model_says_calibrate_again(default_model, cache):
    path = embedding_paths(default_model, "fake")[1]
    save_detector_embedding(path, default_model, "fake", _embedding(default_model), _report())
    with np.load(path) as z:
        fields = dict(z)
    np.savez(path, **{**fields, "model_fingerprint": "f" * 64})
    with pytest.raises(LandmarkError, match=r"another face model: calibrate again.*--detector fake"):
        detector_points(default_model, "fake")


def _dense(model, k=5):
    own = model._landmarks68_points()
    return DenseCalibration(index=np.array([0, 3, 4, 9, 11][:k], np.int64),
                            faces=np.asarray(own.faces[:k], np.int64),
                            bary=np.asarray(own.bary[:k], np.float32), samples=np.arange(12),
                            spread_mm=np.linspace(0, 1, 12), photos=6, found=5, source="test")


def test_a_saved_dense_calibration_reads_back_as_written(default_model, cache):
    cal = _dense(default_model)
    path = dense_paths(default_model, "fake")[1]
    save_dense_embedding(path, default_model, "fake", cal)
    got = dense_points(default_model, "fake")
    assert got.index.dtype == np.int64 and got.points.faces.dtype == np.int64
    assert got.points.bary.dtype == np.float32
    np.testing.assert_array_equal(got.index, cal.index)
    np.testing.assert_array_equal(got.points.faces, cal.faces)
    np.testing.assert_array_equal(got.points.bary, cal.bary)
    assert detector_points(default_model, "fake") is None  # a dense file is not a 68-point one
    with np.load(path) as z:
        fields = dict(z)
    np.savez(path, **{**fields, "model_fingerprint": "0" * 64})
    with pytest.raises(LandmarkError, match="calibrate again"):
        dense_points(default_model, "fake")


# ---------------------------------------------------------------- dlib on textured renders
def test_the_default_model_ships_dlibs_textured_embedding(default_model):
    """dlib's points measured on textured renders (encoder/data, made by ``skullsearch model
    calibrate --texture``, 300 renders, seed 0): the jaw line the model's own (it marches), the
    brows on the source's brow line (the untextured calibration put them ~6 mm lower)."""
    import torch

    from skullsearch.encoder.embeddings import textured_paths, textured_points
    from skullsearch.encoder.render import anatomical_landmarks

    assert textured_paths(default_model, "dlib")[0].exists()  # in the package, not the cache
    pts = textured_points(default_model, None)  # None: dlib, the model's own detector
    own = default_model._landmarks68_points()
    np.testing.assert_array_equal(pts.faces[:17], own.faces[:17])
    tmpl = default_model.v_template.astype(np.float64)
    new = (tmpl[default_model.faces[pts.faces]] * pts.bary[..., None]).sum(1)
    with torch.no_grad():
        old = default_model.landmarks68(batch_size=1)[0].double().numpy()
    src = anatomical_landmarks(default_model)
    brows = slice(17, 27)
    assert np.median(new[brows, 1] - old[brows, 1]) > 4.0
    assert np.median(np.abs(new[brows, 1] - src[brows, 1])) < 1.5
    with np.load(textured_paths(default_model, "dlib")[0]) as z:
        assert "textured renders (seed 0" in str(z["source"]) and int(z["found"]) >= 290


def test_rig_for_uses_the_textured_embedding_when_asked_and_there_is_one(default_model, tmp_path,
                                                                        monkeypatch):
    from skullsearch.encoder.fitting import FitConfig, config_rig, rig_for

    m = default_model
    for k in ("_textured_points", "_rig_cache"):
        monkeypatch.setitem(m.__dict__, k, {})
    static = rig_for(m)
    textured = rig_for(m, textured=True)
    assert textured is not static and textured is rig_for(m, detector="dlib", textured=True)
    assert config_rig(m, FitConfig(textured_embedding=True)) is textured
    assert config_rig(m, FitConfig()) is static
    assert textured.marching == static.marching  # dlib's jaw line marches either way
    assert not (np.array_equal(textured.bary.numpy(), static.bary.numpy())
                and np.array_equal(textured.lm_local, static.lm_local))
    assert rig_for(m, detector="mesh", textured=True) is rig_for(m, detector="mesh")  # the mesh's own
    # a model without one (no file): the static embedding
    monkeypatch.setattr(emb_mod, "textured_paths", lambda model, det: [tmp_path / "none.npz"])
    m.__dict__["_textured_points"].clear()
    m.__dict__["_rig_cache"].clear()
    assert rig_for(m, textured=True) is rig_for(m)


def test_the_encoder_fingerprint_changes_only_when_the_textured_embedding_is_on():
    from skullsearch.encoder.fitting import FitConfig
    from skullsearch.index.ingest import encoder_fingerprint

    base = encoder_fingerprint(FitConfig(), "dlib")
    assert encoder_fingerprint(FitConfig(textured_embedding=False), "dlib") == base
    assert encoder_fingerprint(FitConfig(textured_embedding=True), "dlib") != base
