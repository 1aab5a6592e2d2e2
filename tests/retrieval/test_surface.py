"""Surface scores (retrieval/surface.py) on the default face model's own meshes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.retrieval.score import ScoreConfig
from skullsearch.retrieval.surface import patches, surface_distances, surface_likelihood

K = len(SOFT_TISSUE_NAMES)


def _shape(model, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(model.n_shape) * 0.8).astype(np.float32)


def _face(model, shape):
    with torch.no_grad():
        v = model.rest_vertices(shape=torch.as_tensor(shape[None]))[0].double().numpy()
        p = model.soft_tissue(shape=torch.as_tensor(shape[None]))[0].double().numpy()
    return v, p


def _slid(model, v, p, along_mm=6.0):
    """(36, 3): for each landmark, a skin vertex of its patch about ``along_mm`` from the face's
    annotated point — on the same skin, elsewhere along it."""
    pat = patches(model)
    out = np.empty((K, 3))
    for i in range(K):
        cand = v[pat.vertices[i]]
        out[i] = cand[np.abs(np.linalg.norm(cand - p[i], axis=1) - along_mm).argmin()]
    return out


def _transform(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    rot = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    return scale, rot, rng.uniform(-200, 200, 3)


def _place(points, s, rot, t):
    return s * points @ rot.T + t


def _dist(model, shapes, target, present, s, rot, t, iterations=4):
    c = len(shapes)
    return surface_distances(model, shapes, target, present, np.full(c, s), np.repeat(rot[None], c, 0),
                             np.repeat(t[None], c, 0), iterations=iterations)


def test_points_elsewhere_on_the_skin_lie_on_it_by_the_surface_and_off_it_by_the_points(default_model):
    shape = _shape(default_model, 0)
    v, p = _face(default_model, shape)
    s, rot, t = _transform(1, scale=1.05)
    on_skin = _slid(default_model, v, p)
    target = _place(on_skin, s, rot, t)
    present = np.ones(K, bool)
    d = _dist(default_model, shape[None], target, present, s, rot, t)[0]
    assert np.all(d < 0.05)  # they are skin vertices of this very face
    assert np.linalg.norm(_place(p, s, rot, t) - target, axis=1).min() > 4.0  # the point score's view
    # lifted off the skin along its normal by h, by h (× the scale: skull frame mm)
    pat = patches(default_model)
    lifted = on_skin.copy()
    for i in range(K):
        j = np.flatnonzero(np.all(v[pat.vertices[i]] == on_skin[i], axis=1))[0]
        lifted[i] += 3.0 * pat.normals[i][j]  # mean-face normal, close to this face's
    d = _dist(default_model, shape[None], _place(lifted, s, rot, t), present, s, rot, t, iterations=0)[0]
    np.testing.assert_allclose(d, 3.0 * s, atol=0.45)
    # placed 4 mm and 3° off, the refits on the skin bring it closer, and all the way with more
    off = Rotation.from_rotvec(np.radians(3.0) * np.array([0.6, 0.8, 0.0])).as_matrix()
    c = target.mean(0)  # (turned about the face's centre)
    t_off = off @ (t - c) + c + np.array([4.0, 0.0, 0.0])
    d0, d, d32 = (np.median(_dist(default_model, shape[None], target, present, s, off @ rot, t_off,
                                  iterations=n)[0]) for n in (0, 6, 32))
    assert d0 > 1.2 and d < 0.5 * d0 and d32 < 0.05


def test_the_own_face_beats_other_faces_and_absent_landmarks_are_nan(default_model):
    shapes = np.stack([_shape(default_model, k) for k in range(12)])
    v, p = _face(default_model, shapes[3])
    s, rot, t = _transform(2)
    target = _place(_slid(default_model, v, p, 4.0), s, rot, t)
    present = np.ones(K, bool)
    present[[0, 5]] = False
    d = _dist(default_model, shapes, target, present, s, rot, t)
    assert np.isnan(d[:, [0, 5]]).all() and np.isfinite(d[:, present]).all()
    ll = surface_likelihood(d, ScoreConfig().sigma(np.full(K, 2.0)))
    assert ll.argmax() == 3 and ll[3] == pytest.approx(0.0, abs=0.01)
    assert np.all(np.delete(ll, 3) < -1.0)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_invariant_to_a_rigid_motion_of_the_skull(default_model, seed):
    """The skull moved (its landmarks and the faces' transforms moved with it): the same
    distances."""
    shapes = np.stack([_shape(default_model, k) for k in range(3)])
    v, p = _face(default_model, shapes[0])
    s, rot, t = _transform(seed, scale=0.95)
    target = _place(_slid(default_model, v, p, 5.0) + 1.5, s, rot, t)
    present = np.ones(K, bool)
    d0 = _dist(default_model, shapes, target, present, s, rot, t)
    _, m, u = _transform(seed + 1)
    d1 = _dist(default_model, shapes, target @ m.T + u, present, s, m @ rot, m @ t + u)
    np.testing.assert_allclose(d1, d0, atol=1e-8)


def test_likelihood_is_robust_and_ignores_absent_landmarks():
    sigma = np.full(4, 2.0)
    d = np.array([[0.0, 0.0, 0.0, np.nan], [0.0, 0.0, 2.0, np.nan], [0.0, 0.0, 40.0, np.nan],
                  [0.0, 0.0, 80.0, np.nan]])
    ll = surface_likelihood(d, sigma)
    assert ll[0] == 0.0 and ll[1] == pytest.approx(-np.log(2.0))
    assert ll[0] > ll[1] > ll[2] > ll[3]
    assert ll[2] - ll[3] < 1.5  # a point far off costs about as much as one farther off
