"""Horn's absolute orientation algebra (retrieval/horn.py): the 4 × 4 adjugate, Horn's quaternion
matrix and its characteristic quartic, quaternions to rotations, and the similarity fit they make
(here with numpy's eigensolver for the largest eigenpair; the scorers' closed-form QCP solver is
checked against it). Points in millimetres."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from skullsearch.retrieval.horn import adjugate4, horn_quartic, quaternion_rotation, stack_rows
from skullsearch.retrieval.score import _horn_rotation

seeds = st.integers(0, 2**32 - 1)


def nested(m):
    """(B, r, c) → the nested list of (B,) arrays the module takes."""
    return [[m[:, i, j] for j in range(m.shape[2])] for i in range(m.shape[1])]


def correlation(src, dst):
    """S (B, 3, 3) = Σ (src − μ)(dst − μ)ᵀ and the centred src."""
    a = src - src.mean(1, keepdims=True)
    b = dst - dst.mean(1, keepdims=True)
    return np.einsum("bka,bkc->bac", a, b), a


def horn_fit(src, dst):
    """Horn 1987: (scale (B,), R (B, 3, 3), t (B, 3)) minimizing Σ ‖s R src + t − dst‖², from the
    eigenvector of the largest eigenvalue of Horn's N."""
    S, a = correlation(src, dst)
    n, *_ = horn_quartic(S)
    w, v = np.linalg.eigh(stack_rows(n))
    rot = quaternion_rotation(v[:, :, -1])
    s = w[:, -1] / (a**2).sum((1, 2))
    t = dst.mean(1) - s[:, None] * np.einsum("bij,bj->bi", rot, src.mean(1))
    return s, rot, t


def apply(s, rot, t, p):
    return s[:, None, None] * np.einsum("bij,bkj->bki", rot, p) + t[:, None, :]


def face_points(rng, b=4, k=12):
    return rng.normal(scale=50.0, size=(b, k, 3))


def similarity(rng, b):
    return (rng.uniform(0.8, 1.25, b), Rotation.random(b, random_state=rng).as_matrix(),
            rng.normal(scale=300.0, size=(b, 3)))


# ----------------------------------------------------------------------------- the algebra
def test_stack_rows_puts_entry_ij_of_each_matrix_at_ij():
    m = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(stack_rows(nested(m)), m)


@settings(max_examples=25, deadline=None)
@given(seeds)
@example(6216073)  # (its adjugate has a 4e-15 singular value that numpy's default rank counts)
def test_adjugate_times_the_matrix_is_its_determinant(seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(6, 4, 4))
    m[0, 3] = m[0, 0] + 2 * m[0, 1]  # singular: the adjugate is still defined (rank 1)
    adj, det = adjugate4(nested(m))
    np.testing.assert_allclose(det, np.linalg.det(m), atol=1e-10)
    np.testing.assert_allclose(adj @ m, det[:, None, None] * np.eye(4), atol=1e-10)
    # entry (i, j) is the cofactor (j, i): (−1)^(i+j) det of m without row j and column i
    cof = np.array([[(-1) ** (i + j) * np.linalg.det(np.delete(np.delete(m[0], j, 0), i, 1))
                     for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(adj[0], cof, atol=1e-10)
    # rank 1 up to rounding (numpy's default tolerance counts a 1e-15 singular value)
    assert np.linalg.matrix_rank(adj[0], tol=1e-9 * np.abs(adj[0]).max()) == 1


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_horns_matrix_and_its_characteristic_quartic(seed):
    S = np.random.default_rng(seed).normal(scale=1e3, size=(3, 3, 3))
    n, c2, c1, f2 = horn_quartic(S)
    N = stack_rows(n)
    np.testing.assert_array_equal(N, np.swapaxes(N, 1, 2))  # symmetric
    np.testing.assert_allclose(np.trace(N, axis1=1, axis2=2), 0.0, atol=1e-9)
    np.testing.assert_allclose(N[:, 0, 0], np.trace(S, axis1=1, axis2=2))
    np.testing.assert_allclose(f2, (S**2).sum((1, 2)))
    for b in range(3):  # λ⁴ + 0·λ³ + c2 λ² + c1 λ + det N
        want = np.poly(N[b])
        scale = np.abs(want).max()
        np.testing.assert_allclose([1.0, 0.0, c2[b], c1[b], np.linalg.det(N[b])] / scale, want / scale,
                                   atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_quaternion_rotation_matches_scipy_and_ignores_the_sign(seed):
    q = np.random.default_rng(seed).normal(size=(5, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r = quaternion_rotation(q)  # (w, x, y, z)
    np.testing.assert_allclose(r, Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(quaternion_rotation(-q), r, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)


# ----------------------------------------------------------------------------- the fit
def test_the_fit_recovers_a_known_similarity_transform():
    rng = np.random.default_rng(0)
    src = face_points(rng)
    s, rot, t = similarity(rng, 4)
    dst = apply(s, rot, t, src)
    got_s, got_r, got_t = horn_fit(src, dst)
    np.testing.assert_allclose(got_s, s, rtol=1e-12)
    np.testing.assert_allclose(got_r, rot, atol=1e-12)
    np.testing.assert_allclose(got_t, t, atol=1e-9)


def test_the_closed_form_qcp_solver_finds_the_largest_eigenpair():
    """The scorers' Newton-on-the-quartic λ and adjugate quaternion agree with eigh, with noise
    and for mirrored targets (where the best proper rotation is a poor fit)."""
    rng = np.random.default_rng(1)
    src = face_points(rng, b=40)
    s, rot, t = similarity(rng, 40)
    dst = apply(s, rot, t, src) + rng.normal(scale=3.0, size=src.shape)
    dst[20:] *= np.array([1.0, 1.0, -1.0])
    S, _ = correlation(src, dst)
    lam, r = _horn_rotation(S)
    w = np.linalg.eigvalsh(stack_rows(horn_quartic(S)[0]))
    np.testing.assert_allclose(lam, w[:, -1], rtol=1e-10)
    np.testing.assert_allclose(r, horn_fit(src, dst)[1], atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_the_fit_is_the_best_proper_rotation(seed):
    """No rotation near the fitted one does better (a least-squares minimum), and it is never a
    reflection, even for a mirrored target."""
    rng = np.random.default_rng(seed)
    src = face_points(rng, b=1)
    dst = src * np.array([-1.0, 1.0, 1.0]) + rng.normal(scale=2.0, size=src.shape)
    s, rot, t = horn_fit(src, dst)
    assert np.linalg.det(rot[0]) == pytest.approx(1.0, abs=1e-12)
    best = ((apply(s, rot, t, src) - dst) ** 2).sum()
    for dv in rng.normal(scale=0.02, size=(10, 3)):
        r2 = Rotation.from_rotvec(dv).as_matrix() @ rot[0]
        t2 = dst.mean(1) - s[:, None] * (r2 @ src[0].mean(0))
        assert ((apply(s, r2[None], t2, src) - dst) ** 2).sum() >= best - 1e-9


def _noisy_pair(seed):
    """(rng, source points (2, K, 3) mm, their image under a random similarity plus 4 mm noise)."""
    rng = np.random.default_rng(seed)
    src = face_points(rng, b=2)
    return rng, src, apply(*similarity(rng, 2), src) + rng.normal(scale=4.0, size=src.shape)


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_moving_the_target_rigidly_moves_the_fit_with_it(seed):
    rng, src, dst = _noisy_pair(seed)
    s, rot, t = horn_fit(src, dst)
    _, move, shift = similarity(rng, 2)
    s2, rot2, t2 = horn_fit(src, np.einsum("bij,bkj->bki", move, dst) + shift[:, None])
    np.testing.assert_allclose(s2, s, rtol=1e-9)
    np.testing.assert_allclose(rot2, move @ rot, atol=1e-9)
    np.testing.assert_allclose(t2, np.einsum("bij,bj->bi", move, t) + shift, atol=1e-6)
    # the residuals do not change
    res = np.linalg.norm(apply(s, rot, t, src) - dst, axis=-1)
    moved = np.einsum("bij,bkj->bki", move, dst) + shift[:, None]
    np.testing.assert_allclose(np.linalg.norm(apply(s2, rot2, t2, src) - moved, axis=-1), res, atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_the_order_of_the_corresponding_points_does_not_matter(seed):
    rng, src, dst = _noisy_pair(seed)
    perm = rng.permutation(src.shape[1])
    for a, b in zip(horn_fit(src, dst), horn_fit(src[:, perm], dst[:, perm]), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_millimetres_or_metres_give_the_same_rotation_and_scale(seed):
    rng, src, dst = _noisy_pair(seed)
    s, rot, t = horn_fit(src, dst)
    s_m, rot_m, t_m = horn_fit(src / 1000.0, dst / 1000.0)  # both in metres
    np.testing.assert_allclose(s_m, s, rtol=1e-9)
    np.testing.assert_allclose(rot_m, rot, atol=1e-9)
    np.testing.assert_allclose(t_m, t / 1000.0, atol=1e-9)
    s_mix, rot_mix, _ = horn_fit(src, dst / 1000.0)  # a face in mm on a skull in metres
    np.testing.assert_allclose(s_mix, s / 1000.0, rtol=1e-9)
    np.testing.assert_allclose(rot_mix, rot, atol=1e-9)
