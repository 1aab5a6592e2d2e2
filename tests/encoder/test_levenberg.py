"""The Levenberg-Marquardt building blocks of :mod:`skullsearch.encoder.levenberg`: the SO(3)
helpers against their definitions (cross product, finite differences of the rotation), the
per-person Schur solve against the dense joint system on random groupings, the damping, the
per-person sums and the rows of the marching jaw line. (The landmark and projection Jacobians
against autograd are in test_fitting_lm.py.)"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skullsearch.encoder import levenberg as lev
from skullsearch.encoder.fitting import MARCHING, LandmarkRig
from skullsearch.encoder.lbs import axis_angle_to_matrix

SETTINGS = settings(max_examples=25, deadline=None)

vec3 = st.lists(st.floats(-3.0, 3.0, allow_nan=False), min_size=3, max_size=3)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _vee(m):
    """(3, 3) (near) skew-symmetric → (3,) axial vector."""
    return torch.stack([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / 2


# ---------------------------------------------------------------- skew


@SETTINGS
@given(vec3, vec3)
def test_skew_is_the_cross_product_matrix(v, w):
    v, w = _t(v), _t(w)
    k = lev.skew(v)
    assert k.shape == (3, 3)
    assert torch.allclose(k @ w, torch.linalg.cross(v, w), atol=1e-12)
    assert torch.equal(k, -k.T)  # antisymmetric, zero diagonal
    assert torch.equal(k.diagonal(), torch.zeros(3, dtype=torch.float64))


def test_skew_keeps_batch_dimensions():
    v = torch.randn(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k = lev.skew(v)
    assert k.shape == (4, 5, 3, 3)
    assert torch.equal(k[2, 3], lev.skew(v[2, 3]))


# ---------------------------------------------------------------- right Jacobian


def _jr_numeric(theta, eps=1e-6):
    """Columns i: vee(R(θ)ᵀ (R(θ + ε eᵢ) − R(θ − ε eᵢ)) / 2ε), the definition of J_r."""
    r = axis_angle_to_matrix(theta[None])[0]
    cols = []
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = eps
        rp = axis_angle_to_matrix((theta + e)[None])[0]
        rm = axis_angle_to_matrix((theta - e)[None])[0]
        cols.append(_vee(r.T @ (rp - rm) / (2 * eps)))
    return torch.stack(cols, 1)


@SETTINGS
@given(vec3)
def test_right_jacobian_matches_finite_differences_of_the_rotation(v):
    theta = _t(v)
    if float(theta.norm()) > 3.0:  # stay away from θ = π, where axis-angle is not unique
        theta = theta * (3.0 / float(theta.norm()))
    got = lev.right_jacobian(theta)
    want = _jr_numeric(theta)
    assert torch.allclose(got, want, atol=1e-7), (got, want)


def test_right_jacobian_small_angle_branch_is_continuous_and_exact():
    assert torch.allclose(lev.right_jacobian(torch.zeros(3, dtype=torch.float64)),
                          torch.eye(3, dtype=torch.float64), atol=0)
    axis = _t([0.3, -0.8, 0.5])
    axis = axis / axis.norm()
    # just below and just above the series' threshold (|θ|² = 1e-8): the same values
    below, above = lev.right_jacobian(axis * 0.99e-4), lev.right_jacobian(axis * 1.01e-4)
    assert torch.allclose(below, above, atol=1e-5)
    for theta in (axis * 5e-5, axis * 2e-4, axis * 0.7):
        assert torch.allclose(lev.right_jacobian(theta), _jr_numeric(theta), atol=1e-7)


def test_right_jacobian_batches_like_its_rows():
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(2, 4, 3, dtype=torch.float64, generator=g)
    theta[0, 0] = 0.0  # the small-angle branch inside a batch
    jr = lev.right_jacobian(theta)
    assert jr.shape == (2, 4, 3, 3)
    for i in range(2):
        for j in range(4):
            assert torch.allclose(jr[i, j], lev.right_jacobian(theta[i, j]), atol=1e-14)


# ---------------------------------------------------------------- solve_step


def _joint_solve(h, g, lam, pidx, n_person, n_local):
    """The damped normal equations of all faces and persons as one dense system."""
    b, n = g.shape
    n_shared = n - n_local
    size = b * n_local + n_person * n_shared
    big = torch.zeros(size, size, dtype=torch.float64)
    rhs = torch.zeros(size, dtype=torch.float64)
    for i in range(b):
        cols = list(range(i * n_local, (i + 1) * n_local)) + [
            b * n_local + int(pidx[i]) * n_shared + k for k in range(n_shared)]
        big[np.ix_(cols, cols)] += h[i]
        rhs[cols] += g[i]
    lam_col = torch.cat([lam[pidx].repeat_interleave(n_local), lam.repeat_interleave(n_shared)])
    big += torch.diag(lam_col * big.diagonal())
    x = -torch.linalg.solve(big, rhs)
    return x[: b * n_local].reshape(b, n_local), x[b * n_local:].reshape(n_person, n_shared)


@SETTINGS
@given(st.lists(st.integers(0, 3), min_size=1, max_size=7), st.integers(1, 4), st.integers(1, 3),
       st.integers(0, 2**31 - 1))
def test_schur_step_is_the_joint_solve_for_any_grouping(groups, n_local, n_shared, seed):
    """Faces grouped into persons at random (labels renumbered densely): the per-person Schur
    step equals the dense joint solve, face by face and person by person."""
    labels = {p: k for k, p in enumerate(dict.fromkeys(groups))}
    pidx = torch.tensor([labels[p] for p in groups])
    n_person, b, n = len(labels), len(groups), n_local + n_shared
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n + 2, n, generator=gen, dtype=torch.float64)
    h = x.transpose(1, 2) @ x + 0.1 * torch.eye(n, dtype=torch.float64)  # SPD per face
    g = torch.randn(b, n, generator=gen, dtype=torch.float64)
    lam = torch.rand(n_person, generator=gen, dtype=torch.float64) * 2
    dl, dg = lev.solve_step(h, g, lam, pidx, n_person, n_local)
    assert dl.shape == (b, n_local) and dg.shape == (n_person, n_shared)
    assert dl.dtype == dg.dtype == torch.float64
    want_l, want_g = _joint_solve(h, g, lam, pidx, n_person, n_local)
    scale = max(float(want_l.abs().max()), float(want_g.abs().max()), 1.0)
    assert torch.allclose(dl, want_l, atol=1e-7 * scale)
    assert torch.allclose(dg, want_g, atol=1e-7 * scale)


def test_solve_step_leaves_its_inputs_alone_and_returns_float64():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 5, generator=gen)
    h = x.transpose(1, 2) @ x + torch.eye(5)
    g = torch.randn(3, 5, generator=gen)
    h0, g0 = h.clone(), g.clone()
    dl, dg = lev.solve_step(h, g, torch.tensor([0.5, 0.5]), torch.tensor([0, 1, 1]), 2, 3)
    assert torch.equal(h, h0) and torch.equal(g, g0)  # damped on copies
    assert dl.dtype == dg.dtype == torch.float64
    want_l, want_g = _joint_solve(h.double(), g.double(), torch.tensor([0.5, 0.5], dtype=torch.float64),
                                  torch.tensor([0, 1, 1]), 2, 3)
    assert torch.allclose(dl, want_l, atol=1e-4) and torch.allclose(dg, want_g, atol=1e-4)


def test_solve_step_without_shared_parameters_is_one_damped_solve_per_face():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 9, 6, generator=gen, dtype=torch.float64)
    h = x.transpose(1, 2) @ x + torch.eye(6, dtype=torch.float64)
    g = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    lam = torch.tensor([0.0, 2.0], dtype=torch.float64)
    pidx = torch.tensor([0, 1, 1, 0])
    dl, dg = lev.solve_step(h, g, lam, pidx, 2, 6)
    assert dg.shape == (2, 0)
    damped = h + torch.diag_embed(lam[pidx, None] * h.diagonal(dim1=1, dim2=2))
    assert torch.allclose(dl, -torch.linalg.solve(damped, g[..., None])[..., 0], atol=1e-9)


def test_a_larger_damping_gives_a_shorter_step():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 10, 5, generator=gen, dtype=torch.float64)
    h = x.transpose(1, 2) @ x + torch.eye(5, dtype=torch.float64)
    g = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    pidx = torch.tensor([0, 0])
    norms = []
    for lam in (0.0, 1.0, 100.0):
        dl, dg = lev.solve_step(h, g, torch.tensor([lam], dtype=torch.float64), pidx, 1, 3)
        norms.append(float(torch.cat([dl.reshape(-1), dg.reshape(-1)]).norm()))
    assert norms[0] > norms[1] > norms[2] > 0


# ---------------------------------------------------------------- person_sum, _damp_


def test_person_sum_adds_each_persons_faces():
    values = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    pidx = torch.tensor([2, 0, 2, 0, 2])
    got = lev.person_sum(values, pidx, 4)
    assert got.dtype == torch.float64
    assert got.tolist() == [10.0, 0.0, 21.0, 0.0]  # person 1 and 3 have no face: 0
    assert float(got.sum()) == float(values.sum())


def test_damp_scales_the_diagonal_in_place_and_keeps_the_rest():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)
    h = x.transpose(1, 2) @ x
    before = h.clone()
    lam = torch.tensor([0.0, 3.0], dtype=torch.float64)
    out = lev._damp_(h, lam)
    assert out is h  # in place
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.equal(h[:, off], before[:, off])
    d0 = before.diagonal(dim1=1, dim2=2)
    floor = 1e-9 * d0.amax(1, keepdim=True) * (1 + lam[:, None]) + 1e-12
    assert torch.allclose(h.diagonal(dim1=1, dim2=2), d0 * (1 + lam[:, None]) + floor, rtol=1e-12)
    assert (h.diagonal(dim1=1, dim2=2) > d0).all()  # strictly: the floor is positive


def test_damp_makes_a_parameter_the_data_does_not_see_solvable():
    h = torch.zeros(1, 3, 3, dtype=torch.float64)
    h[0, 0, 0] = 4.0  # parameters 1 and 2 unseen: singular
    lev._damp_(h, torch.tensor([0.1], dtype=torch.float64))
    chol, info = torch.linalg.cholesky_ex(h)
    assert int(info[0]) == 0 and torch.isfinite(chol).all()


# ---------------------------------------------------------------- effective_rows


@pytest.fixture(scope="module")
def tables(default_model):
    return lev.PointTables.of(LandmarkRig(default_model, 90, 90, dtype=torch.float64))


def test_effective_rows_of_a_fixed_contour_are_the_68_landmarks(tables):
    rows = lev.effective_rows(tables, torch.zeros(3, 14, dtype=torch.long), ())
    assert rows.shape == (3, 68) and torch.equal(rows, torch.arange(68).expand(3, 68))


def test_effective_rows_pick_the_chosen_silhouette_candidates(tables):
    """The rows of the marching jaw-line landmarks index each face's chosen candidate among the
    tables' points; every other landmark keeps its own row."""
    gen = torch.Generator().manual_seed(7)
    b, c = 3, tables.n_cand
    pick = torch.randint(0, c, (b, len(MARCHING)), generator=gen)
    rows = lev.effective_rows(tables, pick, MARCHING)
    static = [k for k in range(68) if k not in MARCHING]
    assert torch.equal(rows[:, static], torch.tensor(static).expand(b, -1))
    assert (rows[:, list(MARCHING)] >= 68).all()
    coef = torch.randn(b, tables.d0.shape[-1], generator=gen, dtype=torch.float64) * 0.3
    jaw = torch.randn(b, 3, generator=gen, dtype=torch.float64) * 0.1
    pts, _ = tables.forward(coef, jaw)
    cand = pts[:, 68:].reshape(b, len(MARCHING), c, 3)
    got = pts[torch.arange(b)[:, None], rows]  # (b, 68, 3)
    for f in range(b):
        for m, k in enumerate(MARCHING):
            assert torch.equal(got[f, k], cand[f, m, pick[f, m]])
