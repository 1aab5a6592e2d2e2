"""dlib's jaw-line calibration: the features it is regressed on (:func:`~skullsearch.encoder.
fitting.jaw_features`: invariant to the photo's scale, place and roll), the correction
(:func:`~skullsearch.encoder.fitting.jaw_corrected`: equivariant to them, clipped to the
calibrated range), its file (written, read back, refused for another model), the fit's use of it
(only for a named detector's points, only where the photo's focal length is known), and the
calibration itself with real dlib on renders: deterministic for a seed, also through the CLI."""

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from skullsearch.cli.app import app
from skullsearch.encoder import calibrate as cal
from skullsearch.encoder.embeddings import JawBias, jaw_bias, jaw_paths, save_jaw_bias
from skullsearch.encoder.fitting import (
    FitConfig,
    detector_jaw_bias,
    fit_landmarks,
    jaw_corrected,
    jaw_features,
    model_landmarks_px,
    rig_for,
)
from skullsearch.encoder.render import face_camera
from skullsearch.errors import LandmarkError

P = 5  # the features: 1, u, s, s², s·u


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SKULLSEARCH_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def photo(default_model):
    """The mean face's 68 points (68, 2) px as dlib would mark them without error, seen at 25°
    yaw from 60 cm, and the camera's focal length px."""
    cam = face_camera(yaw_deg=25.0, size=512, distance=600.0, fov_mm=300.0,
                      center=np.array([0.0, -30.0, 0.0]))
    m = default_model
    rig = rig_for(m, m.n_shape, m.n_expression, detector="dlib", dtype=torch.float64)
    t = lambda a: torch.as_tensor(np.asarray(a, np.float64)[None])  # noqa: E731
    with torch.no_grad():
        uv = model_landmarks_px(rig, torch.zeros(1, m.n_shape, dtype=torch.float64),
                                torch.zeros(1, m.n_expression, dtype=torch.float64),
                                torch.zeros(1, 3 * m.n_joints, dtype=torch.float64), t(cam.rotation),
                                t(cam.translation), t([cam.focal])[0], t([cam.width / 2, cam.height / 2]))
    return uv[0].numpy(), float(cam.focal)


def _f(*values) -> torch.Tensor:
    """Focal lengths (B,) px in float64, as the landmarks (float32 would round k·f and f apart)."""
    return torch.tensor(values, dtype=torch.float64)


def _bias(coef=None, lo=(-10.0, -5.0), hi=(10.0, 5.0)) -> JawBias:
    rng = np.random.default_rng(3)
    coef = rng.normal(0, 0.05, (2, 17, P)) if coef is None else coef
    return JawBias(np.asarray(coef, np.float64), np.asarray(lo, np.float64), np.asarray(hi, np.float64))


def _similar(lm, k, angle, shift):
    c, s = math.cos(angle), math.sin(angle)
    return k * lm @ np.array([[c, s], [-s, c]]) + np.asarray(shift)


@settings(max_examples=25, deadline=None)
@example(k=2.1410698645413224, angle=-0.28125, dx=-456.0, dy=0.0)  # (float32 focal lengths failed)
@given(k=st.floats(0.3, 3.0), angle=st.floats(-0.6, 0.6), dx=st.floats(-500, 500), dy=st.floats(-500, 500))
def test_the_features_and_the_correction_follow_the_photo_not_its_framing(photo, k, angle, dx, dy):
    lm, f = photo
    moved = _similar(lm, k, angle, (dx, dy))
    a = jaw_features(torch.as_tensor(lm[None]), _f(f))
    b = jaw_features(torch.as_tensor(moved[None]), _f(k * f))
    np.testing.assert_allclose(b[0].numpy(), a[0].numpy(), atol=1e-9)  # X: invariant
    np.testing.assert_allclose(b[3].numpy(), k * a[3].numpy(), rtol=1e-9)  # the inter-ocular distance
    bias = _bias()
    got = jaw_corrected(torch.as_tensor(moved[None]), _f(k * f), bias)[0].numpy()
    at_origin = jaw_corrected(torch.as_tensor(lm[None]), _f(f), bias)[0].numpy()
    want = _similar(at_origin, k, angle, (dx, dy))
    np.testing.assert_allclose(got, want, atol=1e-6)  # the correction: equivariant


def test_the_features_say_the_perspective_and_the_yaw(photo):
    lm, f = photo
    x, xh, yh, iod = (a.numpy()[0] for a in jaw_features(torch.as_tensor(lm[None]), _f(f)))
    np.testing.assert_allclose(x[[0, 3, 4]], [1.0, x[2] ** 2, x[2] * x[1]])
    assert x[2] > 0.15  # turned: the nose tip off the eyes' midpoint, along the eye line
    mirrored = lm * np.array([-1.0, 1.0])  # the face turned the other way (the points' sides swap)
    mirrored = mirrored[[*range(16, -1, -1), *range(26, 16, -1), *range(27, 31), *range(35, 30, -1),
                         45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40, *range(54, 47, -1),
                         *range(59, 54, -1), *range(64, 59, -1), *range(67, 64, -1)]]
    xm = jaw_features(torch.as_tensor(mirrored[None]), _f(f))[0].numpy()[0]
    np.testing.assert_allclose(xm[2], -x[2], atol=1e-9)
    np.testing.assert_allclose(xm[1], x[1], atol=1e-9)
    near = jaw_features(torch.as_tensor(lm[None]), _f(f / 3))[0].numpy()[0]
    np.testing.assert_allclose(near[1], x[1] + math.log(3), atol=1e-9)  # nearer: a larger angular size
    np.testing.assert_allclose(iod, np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))
    np.testing.assert_allclose(np.linalg.norm(xh), 1.0)
    np.testing.assert_allclose(xh @ yh, 0.0, atol=1e-12)


def test_a_constant_offset_moves_the_jaw_points_only(photo):
    lm, f = photo
    coef = np.zeros((2, 17, P))
    coef[0, 3, 0] = 0.1  # point 3: a tenth of the inter-ocular distance along the eye line
    coef[1, 8, 0] = -0.05  # the chin's middle: up
    x, xh, yh, iod = (a.numpy()[0] for a in jaw_features(torch.as_tensor(lm[None]), _f(f)))
    got = jaw_corrected(torch.as_tensor(lm[None]), _f(f), _bias(coef))[0].numpy()
    want = lm.copy()
    want[3] += 0.1 * iod * xh
    want[8] -= 0.05 * iod * yh
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_features_beyond_the_calibrated_range_are_clipped_to_it(photo):
    lm, f = photo
    coef = np.zeros((2, 17, P))
    coef[0, :, 1] = 0.02  # offsets that grow with u, the log of the angular size
    u = jaw_features(torch.as_tensor(lm[None]), _f(f))[0].numpy()[0, 1]
    bias = _bias(coef, lo=(u - 1.0, -1.0), hi=(u + 0.5, 1.0))
    t = torch.as_tensor(lm[None])
    at_hi = jaw_corrected(t, _f(f / math.exp(0.5)), bias)  # just inside: u + 0.5
    beyond = jaw_corrected(t, _f(f / math.exp(3.0)), bias)  # u + 3 → clipped to u + 0.5
    np.testing.assert_allclose(beyond.numpy(), at_hi.numpy(), atol=1e-9)
    assert not np.allclose(jaw_corrected(t, _f(f), bias).numpy(), at_hi.numpy())


def _calibration(coef) -> cal.JawCalibration:
    return cal.JawCalibration(coef=coef, feature_lo=np.array([-4.0, -0.8]), feature_hi=np.array([-1.0, 0.8]),
                              rms_before=0.15, rms_after=0.07, inward_near=0.05, inward_far=0.1,
                              sigma_raw=np.linspace(0.03, 0.1, 68),
                              sigma_calibrated=np.linspace(0.02, 0.09, 68),
                              photos=10, found=9, source="a test")


def test_a_saved_jaw_calibration_reads_back_and_is_refused_for_another_model(default_model, anny_model,
                                                                             cache):
    coef = np.random.default_rng(0).normal(0, 0.05, (2, 17, P))
    path = jaw_paths(anny_model, "dlib")[1]
    assert path.parent == cache and not path.exists()
    assert jaw_bias(anny_model, "dlib") is None  # none: the fit takes dlib's points as detected
    save_jaw_bias(path, anny_model, "dlib", _calibration(coef))
    got = jaw_bias(anny_model, None)  # (None: dlib, the model's own detector)
    np.testing.assert_array_equal(got.coef, coef)
    np.testing.assert_array_equal(got.feature_lo, [-4.0, -0.8])
    np.testing.assert_array_equal(got.sigma_calibrated, np.linspace(0.02, 0.09, 68))
    assert jaw_bias(anny_model, "mesh") is None  # its contour is on the surface: never corrected
    with np.load(path) as z:
        assert str(z["source"]) == "a test" and float(z["rms_after"]) == 0.07
    # a file of another model under this model's name is refused with what to do
    other = jaw_paths(default_model, "fan")[1]
    other.write_bytes(path.read_bytes())
    with pytest.raises(LandmarkError, match="calibrate again"):
        jaw_bias(default_model, "fan")
    save_jaw_bias(other, default_model, "fan", _calibration(np.zeros((2, 16, P))))  # 16: not a jaw line
    with pytest.raises(LandmarkError, match="--jaw"):
        jaw_bias(default_model, "fan")


def test_the_default_model_ships_dlibs_jaw_line_calibration(default_model):
    bias = jaw_bias(default_model, "dlib")
    assert bias is not None and bias.coef.shape == (2, 17, P) and np.isfinite(bias.coef).all()
    assert jaw_paths(default_model, "dlib")[0].exists()  # in the package's data
    assert np.all(bias.feature_lo < bias.feature_hi)
    assert detector_jaw_bias(default_model, "dlib", FitConfig(jaw_calibration=False)) is None
    assert detector_jaw_bias(default_model, None, FitConfig()) is None  # points as given


def test_the_fit_moves_dlibs_jaw_line_only_for_dlib_and_a_known_focal_length(default_model, photo):
    lm, f = photo
    rng = np.random.default_rng(1)
    lms = np.stack([lm + rng.normal(0, 1.0, lm.shape) for _ in range(3)])
    sizes = np.full((3, 2), 512.0)
    focal = np.array([f, f, np.nan])  # the third photo does not say its focal length: the guess
    fit = lambda **kw: fit_landmarks(default_model, lms, sizes, focal=focal, **kw)  # noqa: E731
    plain = fit()
    off = fit(detector="dlib", config=FitConfig(jaw_calibration=False))
    np.testing.assert_array_equal(off.codes, plain.codes)
    np.testing.assert_array_equal(fit(detector="mesh").codes, plain.codes)  # (no jaw line to move)
    dlib = fit(detector="dlib")
    bias = jaw_bias(default_model, "dlib")
    moved = jaw_corrected(torch.as_tensor(lms), _f(f, f, f), bias).numpy()
    assert not np.allclose(dlib.codes[:2], plain.codes[:2], atol=1e-4)
    np.testing.assert_array_equal(dlib.codes[2], plain.codes[2])  # the guessed camera: as detected
    for i in range(2):  # the fitted jaw line follows the moved points, not the detected ones
        to_moved = np.linalg.norm(dlib.landmarks_px[i, :17] - moved[i, :17], axis=1).mean()
        to_detected = np.linalg.norm(dlib.landmarks_px[i, :17] - lms[i, :17], axis=1).mean()
        assert to_moved < to_detected


@pytest.mark.slow
def test_dlibs_jaw_line_calibration_on_renders_is_deterministic_and_the_cli_writes_it(default_model, cache):
    """Real dlib on 48 textured renders (the default is 800): the offsets' shape and sense, the same
    for a seed, through ``skullsearch model calibrate --jaw`` too."""
    a = cal.calibrate_jaw(default_model, photos=48, seed=4)
    assert a.found >= 40 and a.photos == 48 and a.coef.shape == (2, 17, P) and np.isfinite(a.coef).all()
    assert a.rms_after < a.rms_before  # what the features explain of dlib's offsets
    assert np.all(a.feature_lo < a.feature_hi)
    # each point's scatter: the jaw line's less once calibrated, the others' as detected
    assert a.sigma_raw.shape == a.sigma_calibrated.shape == (68,) and (a.sigma_calibrated > 0).all()
    np.testing.assert_array_equal(a.sigma_raw[17:], a.sigma_calibrated[17:])
    assert a.sigma_calibrated[:17].mean() < a.sigma_raw[:17].mean()
    res = CliRunner().invoke(app, ["model", "calibrate", "--jaw", "--photos", "48", "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "inward" in res.output and "scatter" in res.output
    with np.load(jaw_paths(default_model, "dlib")[1]) as z:
        np.testing.assert_array_equal(z["coef"], a.coef)  # deterministic for a seed
        np.testing.assert_array_equal(z["sigma_calibrated"], a.sigma_calibrated)
        assert int(z["found"]) == a.found
