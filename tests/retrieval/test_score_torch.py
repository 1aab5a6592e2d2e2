"""The torch twin of the exact scorer (retrieval/score_torch.py), on the CPU: each step agrees with
retrieval/score.py's numpy code on the same inputs, blocks do not change results, the dtypes and
the empty case. (tests/retrieval/test_score.py checks the public ``score(..., device=)`` end to
end.) Millimetres."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from skullsearch.retrieval import score_torch
from skullsearch.retrieval.score import ScoreConfig, _fit, _horn_rotation, _score_block

seeds = st.integers(0, 2**32 - 1)


def case(seed, c=12, k=20):
    """Candidates (c, k, 3) mm in the model frame, a centred target (k, 3) near candidate 0 moved by
    a similarity, with a few outliers, and thresholds η (k,)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(scale=50.0, size=(k, 3))
    pts = mean + rng.normal(scale=4.0, size=(c, k, 3))
    rot = Rotation.random(random_state=rng).as_matrix()
    tgt = 1.05 * pts[0] @ rot.T + rng.normal(scale=1.5, size=(k, 3))
    tgt[rng.random(k) < 0.15] += rng.normal(scale=25.0, size=3)
    tgt -= tgt.mean(0)
    eta = rng.uniform(2.0, 6.0, k)
    return pts, tgt, eta


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_the_rotation_solver_agrees_with_numpy(seed):
    rng = np.random.default_rng(seed)
    S = rng.normal(scale=1e4, size=(16, 3, 3))
    S[0] = np.diag([3e4, 2e4, -1e4])  # a reflection is the best orthogonal map: R stays proper
    lam, r = _horn_rotation(S)
    lam_t, r_t = score_torch._horn_rotation(torch.as_tensor(S))
    np.testing.assert_allclose(lam_t.numpy(), lam, rtol=1e-12)
    np.testing.assert_allclose(r_t.numpy(), r, atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(r_t.numpy()), 1.0, atol=1e-10)
    # S = diag(3, 2, −1)·1e4: the reflection diag(1, 1, −1) would reach 6e4; the best rotation is I
    assert float(lam_t[0]) == pytest.approx(4e4, rel=1e-12)
    np.testing.assert_allclose(r_t[0].numpy(), np.eye(3), atol=1e-12)


def test_degenerate_correlations_reach_the_optimum_in_both():
    """Collinear or coplanar points (rank-one / rank-two S): the largest eigenvalue is a multiple
    root, known only to ~√ε, and the rotation is not unique: both solvers reach the same optimum
    tr(R S) = λ."""
    rng = np.random.default_rng(0)
    S = np.stack([np.outer(rng.normal(size=3), rng.normal(size=3)) * 1e4 for _ in range(4)]
                 + [sum(np.outer(rng.normal(size=3), rng.normal(size=3)) for _ in range(2)) * 1e4
                    for _ in range(4)])
    lam, r = _horn_rotation(S)
    lam_t, r_t = (x.numpy() for x in score_torch._horn_rotation(torch.as_tensor(S)))
    top = np.linalg.svd(S, compute_uv=False).sum(1)  # the optimum when det(UVᵀ) > 0 allows it
    for got_lam, got_r in ((lam, r), (lam_t, r_t)):
        np.testing.assert_allclose(np.einsum("bij,bji->b", got_r, S), got_lam, rtol=1e-6)
        np.testing.assert_allclose(got_lam[:4], top[:4], rtol=1e-6)  # rank one: |σ1| reachable
        np.testing.assert_allclose(np.linalg.det(got_r), 1.0, atol=1e-9)
    np.testing.assert_allclose(lam_t, lam, rtol=1e-6)


@pytest.mark.parametrize("bounds", [None, (0.9, 1.1), False])
def test_a_weighted_fit_agrees_with_numpy(bounds):
    pts, tgt, _ = case(3)
    w = (np.random.default_rng(4).random(pts.shape[:2]) > 0.3).astype(np.float64)
    pn2 = (pts**2).sum(-1)
    ref = _fit(*(pts[..., i] for i in range(3)), pn2, *tgt.T, w,
               bounds if bounds else None, bounds is not False)
    got = score_torch._fit(torch.as_tensor(pts), torch.as_tensor(pn2), torch.as_tensor(tgt),
                           torch.as_tensor(w), bounds)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-9)
    if bounds is False:
        assert (got[0] == 1).all()
    elif bounds:
        assert ((got[0] >= 0.9) & (got[0] <= 1.1)).all()


@settings(max_examples=6, deadline=None)
@given(seeds, st.sampled_from([0.0, 0.1, 0.3]), st.integers(1, 8))
def test_score_blocks_agrees_with_the_numpy_block_scorer(seed, scale_bound, iterations):
    pts, tgt, eta = case(seed)
    cfg = ScoreConfig(scale_bound=scale_bound, iterations=iterations)
    ref = _score_block(pts, tgt, eta, cfg)
    got = score_torch.score_blocks(pts, tgt, eta, scale_bound, iterations)
    d, n, rms, s, r, t = got
    np.testing.assert_array_equal(n, ref[1])
    np.testing.assert_allclose(d, ref[0], atol=1e-8)
    np.testing.assert_allclose(rms, ref[2], atol=1e-9)
    np.testing.assert_allclose(s, ref[3], atol=1e-10)
    np.testing.assert_allclose(r, ref[4], atol=1e-9)
    np.testing.assert_allclose(t, ref[5], atol=1e-7)
    assert isinstance(d, np.ndarray) and d.shape == pts.shape[:2] and r.shape == (len(pts), 3, 3)


def test_the_planted_face_is_fully_matched_and_its_transform_found():
    rng = np.random.default_rng(7)
    pts = rng.normal(scale=50.0, size=(5, 15, 3))
    rot = Rotation.random(random_state=8).as_matrix()
    tgt = 1.04 * pts[2] @ rot.T
    tgt -= tgt.mean(0)
    d, n, rms, s, r, t = score_torch.score_blocks(pts, tgt, np.full(15, 2.0), 0.1, 6)
    assert n[2] == 15 and n.argmax() == 2 and (n[[0, 1, 3, 4]] < 15).all()
    assert rms[2] < 1e-9 and s[2] == pytest.approx(1.04, abs=1e-12)
    np.testing.assert_allclose(r[2], rot, atol=1e-12)


def test_a_candidates_result_does_not_depend_on_the_block_it_is_in():
    pts, tgt, eta = case(11, c=6)
    whole = score_torch.score_blocks(pts, tgt, eta, 0.1, 6)
    small = score_torch.score_blocks(pts, tgt, eta, 0.1, 6, block=4)
    for a, b in zip(whole, small, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-12)


def test_float32_input_and_a_float32_run():
    pts, tgt, eta = case(5)
    ref = score_torch.score_blocks(pts, tgt, eta, 0.1, 6)
    from32 = score_torch.score_blocks(pts.astype(np.float32), tgt, eta, 0.1, 6)  # computed in float64
    assert from32[0].dtype == np.float64
    np.testing.assert_allclose(from32[0], ref[0], atol=1e-4)  # (the input's own rounding)
    single = score_torch.score_blocks(pts, tgt, eta, 0.1, 6, dtype=torch.float32)
    assert single[0].dtype == np.float32
    np.testing.assert_allclose(single[0], ref[0], atol=1e-2)
    assert (np.abs(single[1] - ref[1]) <= 1).all()  # a landmark on its threshold may flip


def test_newton_stops_at_the_dtypes_resolution_in_float32_too():
    """The largest root of Horn's quartic: float32 used to run all 100 Newton iterations (its
    stop test asked for 1e-15 λ, below float32's resolution); it now stops as float64 does, at the
    same root to float32 precision."""
    from skullsearch.retrieval.horn import adjugate4, horn_quartic

    rng = np.random.default_rng(3)
    S = torch.as_tensor(rng.normal(scale=1e4, size=(64, 3, 3)))

    def root(dtype, max_iter=100):
        n, c2, c1, f2 = horn_quartic(S.to(dtype))
        _, c0 = adjugate4(n, stack=score_torch._stack)
        return score_torch._largest_root(torch.sqrt(3.0 * f2), c2, c1, c0, max_iter)

    lam64, it64 = root(torch.float64)
    lam32, it32 = root(torch.float32)
    assert it64 < 100 and it32 < 100, (it64, it32)
    np.testing.assert_allclose(lam32.double().numpy(), lam64.numpy(), rtol=1e-5)
    assert root(torch.float64, max_iter=3)[1] == 3  # (bounded)


def test_no_candidates_gives_empty_results_of_the_right_shapes():
    _, tgt, eta = case(0, k=9)
    d, n, rms, s, r, t = score_torch.score_blocks(np.zeros((0, 9, 3)), tgt, eta, 0.1, 6)
    assert d.shape == (0, 9) and n.shape == (0,) and n.dtype == np.int64
    assert rms.shape == s.shape == (0,) and r.shape == (0, 3, 3) and t.shape == (0, 3)
