"""Similarity alignment: exact recovery, invariances, bounds (property tests)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from skullsearch.encoder.align import align, apply_similarity, similarity_transform

seeds = st.integers(0, 10_000)


@settings(max_examples=40, deadline=None)
@given(seeds, st.floats(0.5, 2.0), st.floats(-500, 500))
def test_recovers_a_similarity_exactly(seed, scale, shift):
    rng = np.random.default_rng(seed)
    src = rng.normal(scale=50, size=(20, 3))
    rot = Rotation.random(random_state=seed).as_matrix()
    dst = scale * src @ rot.T + shift
    s, r, t = similarity_transform(src, dst)
    np.testing.assert_allclose(s, scale, rtol=1e-9)
    np.testing.assert_allclose(r, rot, atol=1e-9)
    np.testing.assert_allclose(apply_similarity(src, s, r, t), dst, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(seeds)
def test_invariant_to_permutation_of_points(seed):
    rng = np.random.default_rng(seed)
    src, dst = rng.normal(size=(2, 15, 3))
    perm = rng.permutation(15)
    a = align(src, dst)
    b = align(src[perm], dst[perm])
    np.testing.assert_allclose(a[perm], b, atol=1e-9)


def test_batched_equals_one_by_one_and_bounds_hold():
    rng = np.random.default_rng(1)
    src, dst = rng.normal(size=(2, 5, 12, 3))
    dst *= 3.0
    s, r, t = similarity_transform(src, dst, scale_bounds=(0.9, 1.1))
    assert np.all((s >= 0.9) & (s <= 1.1))
    for i in range(5):
        si, ri, ti = similarity_transform(src[i], dst[i], scale_bounds=(0.9, 1.1))
        np.testing.assert_allclose([s[i]], [si])
        np.testing.assert_allclose(r[i], ri, atol=1e-12)
    assert np.allclose(np.linalg.det(r), 1.0)
    s1, _, _ = similarity_transform(src, dst, allow_scale=False)
    assert np.all(s1 == 1.0)


def test_weights_ignore_outliers():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(30, 3))
    dst = src + 5.0
    dst[0] += 100.0  # an outlier
    w = np.ones(30)
    w[0] = 0
    s, r, t = similarity_transform(src, dst, weights=w)
    np.testing.assert_allclose(apply_similarity(src[1:], s, r, t), dst[1:], atol=1e-9)
