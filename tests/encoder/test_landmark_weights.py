"""Each landmark weighed by its detector's measured reliability (``FitConfig.landmark_weights``):
the weights (1/σ², mean 1: invariant to σ's unit, following a permutation of the points), the
edges' (both ends' noise), the measured scatter shipped for dlib, the LM's normal equations of
the weighted energy against autograd, its posterior, and the fit: off or with no detector named
as before, equal scatter as unweighted, a point known to scatter pulling less."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from landmark_photos import landmark_photos, use_measured_scatter

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.embeddings import jaw_bias
from skullsearch.encoder.fitting import (
    JAW,
    FitConfig,
    LandmarkRig,
    _LMProblem,
    _observations,
    detector_point_sigma,
    edge_weights,
    fit_energy,
    fit_landmarks,
    point_weights,
)

BROWS = list(range(17, 27))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


sigmas = st.lists(st.floats(0.01, 0.3), min_size=68, max_size=68).map(np.array)


@settings(max_examples=30, deadline=None)
@given(sigma=sigmas, unit=st.floats(0.01, 100.0), seed=st.integers(0, 2**31 - 1))
def test_point_weights_are_inverse_variances_of_mean_one(sigma, unit, seed):
    w = point_weights(torch.as_tensor(sigma[None]))[0].numpy()
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(w * sigma**2, (w * sigma**2)[0], rtol=1e-9)  # ∝ 1/σ²
    # σ's unit (inter-ocular distances, px, mm) does not matter
    np.testing.assert_allclose(point_weights(torch.as_tensor(unit * sigma[None]))[0].numpy(), w, rtol=1e-9)
    perm = np.random.default_rng(seed).permutation(68)  # the points' order does not either
    np.testing.assert_allclose(point_weights(torch.as_tensor(sigma[perm][None]))[0].numpy(), w[perm],
                               rtol=1e-12)


def test_an_edge_weighs_both_ends_noise():
    pw = torch.ones(1, 68, dtype=torch.float64)
    pw[0, 1], pw[0, 2] = 4.0, 0.25
    edges = torch.tensor([[[0, 3], [0, 1], [1, 2], [2, 1]]])
    ew = edge_weights(pw, edges)[0].numpy()
    # σ_e² ∝ 1/w_i + 1/w_j, scaled so that two points of weight 1 make an edge of weight 1
    np.testing.assert_allclose(ew, [1.0, 2 / (1 + 0.25), 2 / (0.25 + 4), 2 / (0.25 + 4)])


def test_dlibs_measured_scatter_ships_with_the_default_model(default_model):
    cfg = FitConfig(landmark_weights=True)
    raw, cal = detector_point_sigma(default_model, "dlib", cfg)
    assert raw.shape == cal.shape == (68,) and (raw > 0).all() and (cal > 0).all()
    np.testing.assert_array_equal(raw[17:], cal[17:])  # the calibration moves the jaw line only
    assert cal[:17].mean() < raw[:17].mean()  # and explains part of its scatter
    # measured: the jaw line and the brows scatter more than the nose's bridge and the eyes
    assert min(raw[:17].mean(), raw[BROWS].mean()) > max(raw[27:31].mean(), raw[36:48].mean())
    assert detector_point_sigma(default_model, "dlib", FitConfig()) is None  # off by default
    assert detector_point_sigma(default_model, None, cfg) is None  # no detector: points as given
    assert detector_point_sigma(default_model, "mesh", cfg) is None  # not measured for the mesh
    assert jaw_bias(default_model, "dlib").sigma_raw is not None


def test_the_weighted_normal_equations_are_half_the_energys_gradient(default_model):
    """g = Jᵀr and E = Σ r² of the weighted LM: 2 g equals autograd's gradient of E (camera,
    jaw, expression, shape), with unequal weights on the points and edges."""
    cfg = FitConfig(dtype=torch.float64)
    rig64 = LandmarkRig(default_model, 90, 90, dtype=torch.float64)
    _, uv, size = landmark_photos(default_model, LandmarkRig(default_model, 90, 90), 2, seed=4, noise_px=2.0)
    sigma = np.random.default_rng(0).uniform(0.02, 0.12, 68)
    obs = _observations(uv, size, None, cfg, sigma=(sigma, sigma))
    assert obs[-1] is not None and not torch.allclose(obs[-1], torch.ones_like(obs[-1]))
    prob = _LMProblem(rig64, cfg, *obs, torch.arange(2), 2)
    res = fit_landmarks(default_model, uv, size, rig=rig64, config=FitConfig(dtype=torch.float64, lm_iters=1))
    p = code_layout.split(torch.as_tensor(res.codes, dtype=torch.float64))
    st0 = dict(cam_rot=p.cam_rot, trans=p.cam_trans, jaw=p.pose[:, 3 * JAW: 3 * JAW + 3],
               shape=p.shape[:, : rig64.n_shape], expr=p.expression[:, : rig64.n_expression])
    _, aux = prob.energy(st0)
    _, g = prob.normal_equations(st0, aux, rigid=False)
    st1 = {k: v.clone().requires_grad_(True) for k, v in st0.items()}
    energy, _ = prob.energy(st1, rows=aux["rows"])  # (the silhouette choice held, as a step's)
    energy.sum().backward()
    grad = torch.cat([st1[k].grad for k in ("cam_rot", "trans", "jaw", "expr", "shape")], 1)
    torch.testing.assert_close(2 * g, grad, rtol=1e-6, atol=1e-9 * float(grad.abs().max()))


def test_weights_off_no_detector_or_equal_scatter_fit_as_unweighted(default_model, landmark_rig, monkeypatch):
    _, uv, size = landmark_photos(default_model, landmark_rig, 3, seed=6)
    plain = fit_landmarks(default_model, uv, size, rig=landmark_rig, config=FitConfig(posterior=True))
    on = FitConfig(landmark_weights=True, posterior=True)
    # no detector named: the landmarks are taken as given (e.g. a face's exact points)
    given = fit_landmarks(default_model, uv, size, rig=landmark_rig, config=on)
    np.testing.assert_array_equal(given.codes, plain.codes)
    # a detector whose scatter is the same everywhere: every weight 1, the same fit
    use_measured_scatter(monkeypatch, np.full(68, 0.05))
    same = fit_landmarks(default_model, uv, size, rig=landmark_rig, config=on, detector="test")
    np.testing.assert_allclose(same.codes, plain.codes, atol=1e-5)
    np.testing.assert_allclose(same.shape_cov, plain.shape_cov, rtol=1e-4, atol=1e-7)  # (the posterior too)


def test_a_point_known_to_scatter_pulls_the_face_less(default_model, landmark_rig, monkeypatch):
    """Brows 0.25 inter-ocular distances too high (dlib on a brow ridge in shadow): with the
    brows' larger measured scatter the fitted face lies nearer its truth and the brows' fitted
    points further from where they were detected."""
    truth, uv, size = landmark_photos(default_model, landmark_rig, 6, seed=7, noise_px=0.5)
    iod = np.linalg.norm(uv[:, 36:42].mean(1) - uv[:, 42:48].mean(1), axis=1)
    moved = uv.copy()
    moved[:, BROWS, 1] -= 0.25 * iod[:, None]  # (image y down: up the face)
    sigma = np.full(68, 0.03)
    sigma[BROWS] = 0.25
    use_measured_scatter(monkeypatch, sigma)
    plain = fit_landmarks(default_model, moved, size, rig=landmark_rig, detector="test")
    weighted = fit_landmarks(default_model, moved, size, rig=landmark_rig,
                             config=FitConfig(landmark_weights=True), detector="test")

    def shape_error(res):
        shape = code_layout.split(torch.as_tensor(res.codes)).shape[:, :90]
        return float((shape - truth).norm(dim=1).mean())

    assert shape_error(weighted) < shape_error(plain)
    off = lambda res: np.linalg.norm(res.landmarks_px[:, BROWS] - moved[:, BROWS], axis=-1).mean()  # noqa: E731
    assert off(weighted) > off(plain)
    e_w = fit_energy(default_model, moved, size, weighted.codes, rig=landmark_rig,
                     config=FitConfig(landmark_weights=True), detector="test")
    e_p = fit_energy(default_model, moved, size, plain.codes, rig=landmark_rig,
                     config=FitConfig(landmark_weights=True), detector="test")
    assert (e_w <= e_p * 1.001).all()  # the weighted fit minimizes the weighted energy
