"""Exact superimposition scores: invariances, missing landmarks, robustness, bounds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from skullsearch.retrieval.score import ScoreConfig, rank_order, score

SD = np.full(36, 3.0)


def faces(seed, c=50):
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=40.0, size=(36, 3))
    return base + rng.normal(scale=4.0, size=(c, 36, 3)), rng


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(-300, 300))
def test_scores_do_not_change_when_the_skull_moves_rigidly(seed, shift):
    pts, rng = faces(seed)
    target = pts[7] + rng.normal(scale=2.0, size=(36, 3))
    present = rng.random(36) > 0.2
    a = score(pts, target, present, SD)
    rot = Rotation.random(random_state=seed).as_matrix()
    b = score(pts, target @ rot.T + shift, present, SD)
    np.testing.assert_array_equal(a.matched, b.matched)
    np.testing.assert_allclose(a.likelihood, b.likelihood, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.rms_mm, b.rms_mm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.nan_to_num(a.distance_mm), np.nan_to_num(b.distance_mm), atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_scores_follow_a_permutation_of_the_landmarks(seed):
    pts, rng = faces(seed, c=20)
    target = pts[3] + rng.normal(scale=2.0, size=(36, 3))
    present = rng.random(36) > 0.3
    sd = rng.uniform(1, 6, 36)
    perm = rng.permutation(36)
    a = score(pts, target, present, sd)
    b = score(pts[:, perm], target[perm], present[perm], sd[perm])
    np.testing.assert_array_equal(a.matched, b.matched)
    np.testing.assert_allclose(a.likelihood, b.likelihood, rtol=1e-6)
    np.testing.assert_allclose(np.nan_to_num(a.distance_mm[:, perm]), np.nan_to_num(b.distance_mm), atol=1e-6)


def test_the_planted_face_wins_and_matches_everything():
    pts, rng = faces(1, c=200)
    rot = Rotation.random(random_state=2).as_matrix()
    target = 1.05 * pts[42] @ rot.T + np.array([10.0, -50.0, 300.0])
    present = np.ones(36, bool)
    sc = score(pts, target, present, SD)
    assert sc.s[42] == 1.0 and sc.rms_mm[42] < 1e-6
    assert rank_order(sc)[0] == 42 and rank_order(sc, "likelihood")[0] == 42
    np.testing.assert_allclose(sc.scale[42], 1.05, rtol=1e-9)
    np.testing.assert_allclose(sc.rotation[42], rot, atol=1e-9)


def test_missing_landmarks_are_neither_matched_nor_unmatched():
    pts, rng = faces(3, c=5)
    present = np.zeros(36, bool)
    present[:10] = True
    target = pts[0].copy()
    target[10:] = np.nan  # absent: any value, even NaN
    sc = score(pts, target, present, SD)
    assert (sc.present == 10).all() and sc.s[0] == 1.0
    assert np.isnan(sc.distance_mm[:, 10:]).all() and not sc.matched_flags[:, 10:].any()


def test_robust_fit_maximizes_matches_despite_outliers():
    pts, rng = faces(4, c=1)
    target = pts[0] + rng.normal(scale=0.5, size=(36, 3))
    target[:6] += rng.normal(scale=60.0, size=(6, 3))  # six landmarks badly off (e.g. damaged bone)
    present = np.ones(36, bool)
    sc = score(pts, target, present, SD)
    assert sc.matched[0] == 30  # every good landmark matched, the six outliers not
    plain = score(pts, target, present, SD, ScoreConfig(iterations=0))
    assert sc.matched[0] >= plain.matched[0]


def test_scale_is_bounded_or_fixed():
    pts, _ = faces(5, c=3)
    target = 1.5 * pts[0]
    present = np.ones(36, bool)
    sc = score(pts, target, present, SD)
    assert np.all(sc.scale <= 1.1 + 1e-12) and np.all(sc.scale >= 0.9 - 1e-12)
    fixed = score(pts, target, present, SD, ScoreConfig(scale_bound=0.0))
    np.testing.assert_array_equal(fixed.scale, 1.0)


def test_thresholds_from_sd_or_global_or_per_landmark():
    sd = np.arange(1, 37, dtype=float)
    np.testing.assert_allclose(ScoreConfig(eta_sd=2.0).thresholds(sd), 2 * sd)
    np.testing.assert_allclose(ScoreConfig(eta_mm=4.0).thresholds(sd), np.full(36, 4.0))
    eta = ScoreConfig(eta_per_landmark={"zy": 9.0, "pg": 1.0}).thresholds(sd)
    from skullsearch import SOFT_TISSUE_NAMES

    assert eta[SOFT_TISSUE_NAMES.index("zy_l")] == 9.0 and eta[SOFT_TISSUE_NAMES.index("zy_r")] == 9.0
    assert eta[SOFT_TISSUE_NAMES.index("pg")] == 1.0


def test_closed_form_rotation_equals_the_svd_solution():
    from skullsearch.encoder.align import similarity_transform
    from skullsearch.retrieval.score import _horn_rotation

    rng = np.random.default_rng(11)
    src = rng.normal(scale=40.0, size=(300, 36, 3))
    rot = Rotation.random(300, random_state=3).as_matrix()
    dst = np.concatenate([
        np.einsum("cij,ckj->cki", rot[:150], src[:150]) + rng.normal(scale=3.0, size=(150, 36, 3)),
        src[150:] * np.array([1.0, 1.0, -1.0]) + rng.normal(scale=5.0, size=(150, 36, 3)),  # mirrored
    ])
    s, r, _ = similarity_transform(src, dst)
    a = src - src.mean(1, keepdims=True)
    b = dst - dst.mean(1, keepdims=True)
    lam, r2 = _horn_rotation(np.einsum("cka,ckb->cab", a, b))
    np.testing.assert_allclose(r2, r, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(r2), 1.0, atol=1e-12)
    np.testing.assert_allclose(lam / (a**2).sum((1, 2)), s, rtol=1e-9)


def test_a_face_scores_the_same_whatever_block_it_is_in(monkeypatch):
    import importlib

    mod = importlib.import_module("skullsearch.retrieval.score")
    pts, rng = faces(6, c=40)
    target = pts[5] + rng.normal(scale=2.0, size=(36, 3))
    present = rng.random(36) > 0.2
    whole = score(pts, target, present, SD)
    monkeypatch.setattr(mod, "BLOCK", 7)
    part = score(pts[3:31], target, present, SD)
    np.testing.assert_array_equal(part.likelihood, whole.likelihood[3:31])
    np.testing.assert_array_equal(part.matched, whole.matched[3:31])
    np.testing.assert_array_equal(part.rotation, whole.rotation[3:31])


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.1]), st.floats(0.0, 0.5))
def test_the_torch_scorer_gives_the_numpy_scores(seed, scale_bound, missing):
    """The torch twin (run here on the CPU; the same code runs on a GPU) finds the same matches,
    distances and transforms as the numpy scorer, with outliers and missing landmarks."""
    pts, rng = faces(seed, c=60)
    target = pts[3] + rng.normal(scale=2.0, size=(36, 3))
    target[rng.random(36) < 0.15] += rng.normal(scale=30.0, size=3)
    present = rng.random(36) >= missing
    present[:3] = True
    cfg = ScoreConfig(scale_bound=scale_bound)
    ref = score(pts, target, present, SD, cfg)
    got = score(pts, target, present, SD, cfg, device="cpu")
    np.testing.assert_array_equal(got.matched, ref.matched)
    np.testing.assert_array_equal(got.matched_flags, ref.matched_flags)
    np.testing.assert_allclose(got.distance_mm, ref.distance_mm, atol=1e-8)
    np.testing.assert_allclose(got.likelihood, ref.likelihood, atol=1e-7)
    np.testing.assert_allclose(got.rotation, ref.rotation, atol=1e-9)
    np.testing.assert_allclose(got.scale, ref.scale, atol=1e-10)
    np.testing.assert_allclose(got.translation, ref.translation, atol=1e-7)
    np.testing.assert_array_equal(rank_order(got), rank_order(ref))


def random_covariances(rng, c, scale=2.0):
    a = rng.normal(scale=scale, size=(c, 36, 3, 3))
    return a @ a.transpose(0, 1, 3, 2) + 0.1 * np.eye(3)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(-300, 300))
def test_the_likelihood_with_face_covariances_moves_with_the_skull(seed, shift):
    """Σ_face lives in the face's frame: a rigid motion of the skull changes nothing."""
    pts, rng = faces(seed, c=20)
    cov = random_covariances(rng, 20)
    target = pts[5] + rng.normal(scale=2.0, size=(36, 3))
    present = rng.random(36) > 0.2
    rot = Rotation.random(random_state=seed).as_matrix()
    a = score(pts, target, present, SD, face_cov=cov)
    b = score(pts, target @ rot.T + shift, present, SD, face_cov=cov)
    np.testing.assert_allclose(a.likelihood, b.likelihood, rtol=1e-6, atol=1e-6)
    # and a rotation of the faces (with their covariances) neither
    c = score(pts @ rot.T, target, present, SD, face_cov=rot @ cov @ rot.T)
    np.testing.assert_allclose(a.likelihood, c.likelihood, rtol=1e-6, atol=1e-6)


def test_face_covariances_change_only_the_likelihood_and_zero_ranks_as_without():
    pts, rng = faces(3, c=60)
    target = pts[9] + rng.normal(scale=3.0, size=(36, 3))
    present = rng.random(36) > 0.25
    plain = score(pts, target, present, SD)
    zero = score(pts, target, present, SD, face_cov=np.zeros((60, 36, 3, 3)))
    none = score(pts, target, present, SD, face_cov=np.full((60, 36, 3, 3), np.nan))  # no covariance
    np.testing.assert_array_equal(zero.matched, plain.matched)
    np.testing.assert_allclose(zero.distance_mm, plain.distance_mm)
    diff = zero.likelihood - plain.likelihood  # 3D vs 1D Gaussian: a constant per query
    np.testing.assert_allclose(diff, diff[0], atol=1e-9)
    np.testing.assert_array_equal(rank_order(zero, "likelihood"), rank_order(plain, "likelihood"))
    np.testing.assert_allclose(none.likelihood, zero.likelihood)


def test_an_error_along_a_faces_uncertain_direction_costs_less_than_across_it():
    """Two faces off the skull by 4 mm at every landmark (signs at random: no rigid motion takes
    it away), one along x, one along z; both are uncertain in z (σ 4 mm) and sure in x: the
    z-displaced face is the likelier, though without covariances the two score alike."""
    rng = np.random.default_rng(4)
    base = rng.normal(scale=40.0, size=(36, 3))
    sign = rng.choice([-1.0, 1.0], size=(36, 1))
    pts = np.stack([base + sign * [4.0, 0, 0], base + sign * [0, 0, 4.0]])
    cov = np.zeros((2, 36, 3, 3))
    cov[..., 2, 2] = 16.0
    present = np.ones(36, bool)
    sc = score(pts, base, present, SD, face_cov=cov)
    plain = score(pts, base, present, SD)
    assert sc.likelihood[1] - sc.likelihood[0] > 10.0
    assert abs(plain.likelihood[1] - plain.likelihood[0]) < 2.0


def test_a_tangent_sd_forgives_slides_along_the_skin_not_depth(default_model):
    """tangent_sd_mm: the likelihood with an SD along the skin equals the 3D form with that
    covariance; a face whose points slid along its skin gains, one whose points moved in depth
    does not; S is unchanged; 0 is the plain likelihood's ranking."""
    from skullsearch.retrieval.score import ScoreConfig, _likelihood_3d, score

    rng = np.random.default_rng(0)
    nu = default_model.soft_tissue_normals()
    p0 = default_model.soft_tissue_basis(0)[0].astype(np.float64)
    tang = rng.standard_normal((36, 3))
    tang -= (tang * nu).sum(1, keepdims=True) * nu
    tang *= 5.0 / np.linalg.norm(tang, axis=1, keepdims=True)
    signs = rng.choice([-1.0, 1.0], 36)[:, None]  # (in and out: no shift or scale takes it up)
    faces = np.stack([p0 + tang, p0 + 5.0 * signs * nu, p0 + rng.normal(scale=3.0, size=(36, 3))])
    present = np.ones(36, bool)
    sd = np.full(36, 2.0)
    plain = score(faces, p0, present, sd, ScoreConfig())
    cfg = ScoreConfig(tangent_sd_mm=6.0)
    tan = score(faces, p0, present, sd, cfg, normals=nu)
    np.testing.assert_array_equal(tan.s, plain.s)
    cov = 36.0 * (np.eye(3) - nu[:, :, None] * nu[:, None, :])
    ref = _likelihood_3d(faces, np.repeat(cov[None], 3, 0), p0, cfg.sigma(sd), tan.scale, tan.rotation,
                         tan.translation)
    np.testing.assert_allclose(tan.likelihood, ref, rtol=1e-9)
    assert tan.likelihood[0] > tan.likelihood[1]  # slid along the skin beats moved in depth
    assert plain.likelihood[0] == pytest.approx(plain.likelihood[1], rel=0.35)  # (alike without it)
    with pytest.raises(ValueError, match="normals"):
        score(faces, p0, present, sd, cfg)
    zero = score(faces, p0, present, sd, ScoreConfig(tangent_sd_mm=0.0), normals=nu)
    np.testing.assert_array_equal(zero.likelihood, plain.likelihood)
