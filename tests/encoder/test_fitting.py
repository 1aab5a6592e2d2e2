"""Batched fitting: recovery of a known face and camera, multi-image sharing, edge terms."""

import numpy as np
import pytest
import torch

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.align import align
from skullsearch.encoder.face_model import face_region
from skullsearch.encoder.fitting import (
    FitConfig,
    LandmarkRig,
    camera_rotation,
    code_landmarks_px,
    code_vertices,
    delaunay_edges,
    fit_landmarks,
    model_landmarks_px,
)


@pytest.fixture(scope="module")
def rig(default_model):
    return LandmarkRig(default_model, 90, 90)


def synth(model, rig, n, seed, n_active=6, max_yaw=25.0):
    """n faces: shape on the first n_active components, neutral, cameras with known yaw."""
    rng = np.random.default_rng(seed)
    shape = torch.zeros(n, 90)
    shape[:, :n_active] = torch.tensor(rng.standard_normal((n, n_active)), dtype=torch.float32)
    expr = torch.zeros(n, model.n_expression)
    pose = torch.zeros(n, 15)
    yaw = rng.uniform(-max_yaw, max_yaw, n)
    rot = torch.tensor(np.stack([np.zeros(n), np.deg2rad(yaw), np.zeros(n)], 1), dtype=torch.float32)
    trans = torch.tensor(np.stack([rng.uniform(-15, 15, n), rng.uniform(-40, -20, n),
                                   rng.uniform(500, 800, n)], 1), dtype=torch.float32)
    size = np.full((n, 2), 512.0)
    focal = torch.full((n,), 1.2 * 512)
    with torch.no_grad():
        uv = model_landmarks_px(rig, shape, expr, pose, camera_rotation(rot), trans, focal,
                                torch.full((n, 2), 256.0))
    return shape, rot, trans, uv.numpy(), size


def aligned_error(model, mask, shape_true, codes):
    with torch.no_grad():
        truth = model.vertices(shape=shape_true).numpy()[:, mask]
        z = torch.as_tensor(codes).clone()
        z[:, 90:] = 0
        fit = code_vertices(model, z).numpy()[:, mask]
    return np.linalg.norm(align(fit, truth) - truth, axis=-1).mean(1)


def test_recovers_a_known_face_and_camera_from_noiseless_landmarks(default_model, rig):
    shape, rot, trans, uv, size = synth(default_model, rig, 8, seed=0)
    res = fit_landmarks(default_model, uv, size, config=FitConfig(), rig=rig)
    assert res.codes.shape == (8, code_layout.CODE_SIZE)
    assert res.residual_px.max() < 0.75  # px, on a 512 px photo (IOD ≈ 60 px)
    parts = code_layout.split(res.codes)
    np.testing.assert_allclose(np.rad2deg(parts.cam_rot[:, 1]), np.rad2deg(rot[:, 1].numpy()), atol=2.0)
    # a photo fixes size/distance only up to scale: compare distance per mm of face width
    with torch.no_grad():
        fit_lm = default_model.landmarks68(shape=torch.as_tensor(parts.shape[:, :default_model.n_shape]))
        true_lm = default_model.landmarks68(shape=shape)
    width = lambda lm: (lm[:, 36] - lm[:, 45]).norm(dim=-1).numpy()  # noqa: E731
    np.testing.assert_allclose(parts.cam_trans[:, 2] / width(fit_lm),
                               trans[:, 2].numpy() / width(true_lm), rtol=0.03)
    err = aligned_error(default_model, face_region(default_model), shape, res.codes)
    assert err.mean() < 0.8 and err.max() < 1.6, err  # mm, face region (68 points do not fix all 90)


def test_a_codes_landmarks_are_the_points_it_was_fitted_to(default_model, rig):
    """code_landmarks_px reads a fitted code back to the fit's own landmarks (B, 68, 2) px, and
    the gradient reaches the code."""
    shape, rot, trans, uv, size = synth(default_model, rig, 4, seed=3)
    res = fit_landmarks(default_model, uv, size, config=FitConfig(), rig=rig)
    codes = torch.as_tensor(res.codes, dtype=torch.float32).requires_grad_()
    got = code_landmarks_px(rig, codes, torch.as_tensor(res.focal, dtype=torch.float32),
                            torch.as_tensor(size, dtype=torch.float32))
    assert got.shape == (4, 68, 2)
    np.testing.assert_allclose(got.detach().numpy(), res.landmarks_px, atol=0.05)
    got.sum().backward()
    assert codes.grad is not None and codes.grad.abs().sum() > 0


def test_multi_image_shares_the_shape(default_model, rig):
    shape, _, _, uv, size = synth(default_model, rig, 6, seed=1)
    person = np.array([0, 0, 0, 1, 1, 1])
    # photos 0-2 and 3-5 are the same two persons seen by different cameras
    shape_p = shape[[0, 0, 0, 3, 3, 3]]
    _, rot, trans, _, _ = synth(default_model, rig, 6, seed=2)
    with torch.no_grad():
        uv = model_landmarks_px(rig, shape_p, torch.zeros(6, default_model.n_expression),
                                torch.zeros(6, 15), camera_rotation(rot), trans,
                                torch.full((6,), 614.4), torch.full((6, 2), 256.0)).numpy()
    res = fit_landmarks(default_model, uv, size, person=person, rig=rig)
    s = code_layout.split(res.codes).shape
    np.testing.assert_array_equal(s[0], s[1])
    np.testing.assert_array_equal(s[3], s[5])
    assert not np.allclose(s[0], s[3])
    # the cameras stay per photo
    assert len({round(float(c), 3) for c in code_layout.split(res.codes).cam_rot[:, 1]}) == 6


def test_noise_is_tolerated_and_the_prior_keeps_faces_plausible(default_model, rig):
    shape, _, _, uv, size = synth(default_model, rig, 8, seed=3)
    rng = np.random.default_rng(0)
    noisy = uv + rng.normal(scale=2.0, size=uv.shape)  # ~3 % of the inter-ocular distance
    res = fit_landmarks(default_model, noisy, size, rig=rig)
    s = code_layout.split(res.codes).shape
    assert np.abs(s).max() < 5  # within the prior
    assert 1.0 < res.residual_px.mean() < 4.0


def test_delaunay_edges_are_padded_per_face():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (3, 68, 2))
    pts[2] = np.stack([np.arange(68.0), np.arange(68.0)], 1)  # collinear: no triangulation
    edges, mask = delaunay_edges(pts)
    assert edges.shape[0] == 3 and mask[:2].sum(1).min() > 100
    assert mask[2].sum() == 0
    # every edge of face 0 joins two different landmarks
    e0 = edges[0][mask[0]]
    assert (e0[:, 0] != e0[:, 1]).all() and e0.max() < 68


@pytest.mark.parametrize("cfg", [FitConfig(lm_iters=2),
                                 FitConfig(method="adam", alternations=1, camera_steps=5, full_steps=10)],
                         ids=["lm", "adam"])
def test_starting_from_codes_skips_the_rigid_stage(default_model, rig, cfg):
    shape, rot, trans, uv, size = synth(default_model, rig, 4, seed=4)
    init = code_layout.pack(shape=shape.numpy(), cam_rot=rot.numpy(), cam_trans=trans.numpy())
    res = fit_landmarks(default_model, uv, size, config=cfg, rig=rig, init=init)
    assert len(res.history) == (cfg.lm_iters if cfg.method == "lm" else 15)  # no rigid stage
    # started at the answer: only the prior's pull moves it, and the camera stays put
    assert res.residual_px.max() < 1.5
    yaw = code_layout.split(res.codes).cam_rot[:, 1]
    np.testing.assert_allclose(np.rad2deg(yaw), np.rad2deg(rot[:, 1].numpy()), atol=1.5)
