"""Vectors and FAISS indexes of a gallery (index/vectors.py) with real FAISS: canonical vectors,
the augmented base vectors, index kinds, search limits, saved indexes, joined indexes and the
near-duplicate IVF index. (The masked search's exactness: tests/retrieval/test_shortlist.py.)
Millimetres."""

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from skullsearch.index import vectors

seeds = st.integers(0, 2**32 - 1)


def mean_face(seed=0):
    return np.random.default_rng(seed).normal(scale=50.0, size=(36, 3))


# ----------------------------------------------------------------------------- canonical
@settings(max_examples=25, deadline=None)
@given(seeds)
def test_canonical_vectors_forget_where_and_how_large_the_face_was(seed):
    rng = np.random.default_rng(seed)
    mean = mean_face()
    faces = mean + rng.normal(scale=3.0, size=(3, 36, 3))
    rot = Rotation.random(3, random_state=rng).as_matrix()
    moved = (rng.uniform(0.5, 2.0, 3)[:, None, None] * np.einsum("bij,bkj->bki", rot, faces)
             + rng.normal(scale=500.0, size=(3, 1, 3)))
    a, b = vectors.canonical(faces, mean), vectors.canonical(moved, mean)
    assert a.shape == (3, 108) and a.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=2e-3)


def test_the_mean_face_is_its_own_canonical_vector():
    mean = mean_face()
    np.testing.assert_allclose(vectors.canonical(mean[None], mean)[0], mean.reshape(-1), atol=1e-4)


def test_a_mask_zeroes_absent_landmarks_and_keeps_them_out_of_the_alignment():
    rng = np.random.default_rng(1)
    mean = mean_face()
    face = mean + rng.normal(scale=2.0, size=(36, 3))
    mask = np.ones(36, bool)
    mask[[2, 9, 30]] = False
    broken = face.copy()
    broken[~mask] += 400.0  # wild where absent: must not move the others
    a = vectors.canonical(face[None], mean, mask).reshape(36, 3)
    b = vectors.canonical(broken[None], mean, mask[None]).reshape(36, 3)
    assert (a[~mask] == 0).all() and (b[~mask] == 0).all()
    np.testing.assert_allclose(b, a, atol=1e-3)
    full = vectors.canonical(broken[None], mean).reshape(36, 3)
    assert np.abs(full[mask] - a[mask]).max() > 5.0  # without the mask, they would


def test_augment_base_appends_the_squared_norm_of_each_point():
    c = np.random.default_rng(2).normal(size=(4, 108)).astype(np.float32)
    aug = vectors.augment_base(c)
    assert aug.shape == (4, vectors.AUG_DIM) == (4, 144) and aug.dtype == np.float32
    assert aug.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(aug[:, :108], c)
    np.testing.assert_allclose(aug[:, 108:], (c.reshape(4, 36, 3) ** 2).sum(-1), rtol=1e-6)


def test_shape_vectors_are_the_leading_coefficients():
    codes = np.arange(2 * 228, dtype=np.float64).reshape(2, 228)
    out = vectors.shape_vectors(codes)
    assert out.shape == (2, 90) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, codes[:, :90])
    assert vectors.shape_vectors(codes, n=5).shape == (2, 5)


# ----------------------------------------------------------------------------- index kinds
def test_new_index_kinds_and_metrics():
    flat = vectors.new_index(144, "ip")
    assert isinstance(flat, faiss.IndexIDMap2) and flat.metric_type == faiss.METRIC_INNER_PRODUCT
    assert isinstance(faiss.downcast_index(flat.index), faiss.IndexFlatIP)
    l2 = vectors.new_index(90, "l2", n_expected=vectors.FLAT_LIMIT)
    assert isinstance(faiss.downcast_index(l2.index), faiss.IndexFlatL2)
    ivf = vectors.new_index(90, "l2", n_expected=vectors.FLAT_LIMIT + 1)  # auto: beyond the limit
    assert isinstance(ivf, faiss.IndexIVFPQ) and ivf.metric_type == faiss.METRIC_L2
    assert ivf.nlist == int(4 * np.sqrt(vectors.FLAT_LIMIT + 1)) and ivf.pq.M == 18  # 90 = 18 × 5
    assert vectors.new_index(144, "ip", n_expected=10_000, kind="ivfpq").pq.M == 48
    assert vectors.new_index(7, "ip", kind="ivfpq").pq.M == 1  # a prime width: one sub-quantizer


def test_an_unknown_index_kind_is_refused():
    with pytest.raises(ValueError, match="unknown index kind 'hnsw': auto, flat or ivfpq"):
        vectors.new_index(8, "l2", kind="hnsw")


def test_add_trains_an_untrained_index_first():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    index = vectors.new_index(8, "l2", n_expected=1000, kind="ivfpq")
    assert not index.is_trained
    vectors.add(index, x.astype(np.float64), np.arange(1000) + 5000)  # any float type, int64 ids
    assert index.is_trained and index.ntotal == 1000
    _, ids = vectors.search(index, x[:3], k=1, nprobe=index.nlist)
    assert ids[:, 0].tolist() == [5000, 5001, 5002]


def test_search_clamps_k_and_honours_max_id():
    x = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    index = vectors.new_index(4, "l2", kind="flat")
    assert vectors.search(index, x[:1], k=5)[1].shape == (1, 1)  # empty: one column of −1
    assert vectors.search(index, x[:1], k=5)[1][0, 0] == -1
    vectors.add(index, x, np.arange(10) * 10)
    d, ids = vectors.search(index, x[[2]], k=50)
    assert ids.shape == (1, 10) and ids[0, 0] == 20 and set(ids[0, 1:3]) == {10, 30}  # (a tie)
    assert set(ids[0]) == set(range(0, 100, 10))
    np.testing.assert_allclose(d[0, 0], 0.0)
    _, ids = vectors.search(index, x[[8]], k=3, max_id=45)  # only ids below 45
    assert ids[0].tolist() == [40, 30, 20]


def test_a_saved_index_reads_back_mapped_or_not(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    index = vectors.new_index(16, "ip", kind="flat")
    vectors.add(index, x, np.arange(50) + 100)
    faiss.write_index(index, str(tmp_path / "s.faiss"))
    want = vectors.search(index, x[:4], k=5)
    for mmap in (True, False):
        back, mapped = vectors.read_index(tmp_path / "s.faiss", mmap=mmap)
        assert mapped is mmap and back.ntotal == 50
        for a, b in zip(vectors.search(back, x[:4], k=5), want, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_joined_indexes_search_as_one_and_keep_their_ids(metric):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    whole, a, b = (vectors.new_index(8, metric, kind="flat") for _ in range(3))
    vectors.add(whole, x, np.arange(40))
    vectors.add(a, x[:25], np.arange(25))
    vectors.add(b, x[25:], np.arange(25, 40))
    both = vectors.joined(a, b)
    assert both.ntotal == 40
    q = rng.normal(size=(3, 8)).astype(np.float32)
    d_j, i_j = vectors.search(both, q, k=6)
    d_w, i_w = vectors.search(whole, q, k=6)
    np.testing.assert_array_equal(i_j, i_w)
    np.testing.assert_allclose(d_j, d_w, rtol=1e-5)
    _, i_sel = vectors.search(both, q, k=40, max_id=30)
    assert (i_sel < 30).all() and (i_sel >= 0).sum() == 3 * 30


# ----------------------------------------------------------------------------- near duplicates
def test_near_index_lists_nprobe_and_exact_distances():
    rng = np.random.default_rng(6)
    train = rng.normal(size=(400, 8)).astype(np.float32)
    index = vectors.near_index(train)
    assert index.is_trained and index.ntotal == 0
    assert index.nlist == 400 // 39 == 10 and index.nprobe == 10  # min(NEAR_NPROBE, nlist)
    assert vectors.near_index(train[:20]).nlist == 1  # at least one list
    d2, ids = vectors.near_search(index, train[:2])  # nothing added: no neighbour
    assert ids.tolist() == [[-1], [-1]] and np.isinf(d2).all() and d2.dtype == np.float32
    index.add_with_ids(train, np.arange(400) + 7)
    q = train[[5, 300]] + 0.01
    d2, ids = vectors.near_search(index, q)
    assert ids[:, 0].tolist() == [12, 307]
    np.testing.assert_allclose(d2[:, 0], ((q - train[[5, 300]]) ** 2).sum(1), rtol=1e-3)
    d2, ids = vectors.near_search(index, np.zeros((0, 8)))
    assert d2.shape == (0, 1) and ids.shape == (0, 1) and ids.dtype == np.int64


def test_the_near_index_is_the_same_every_time_it_is_trained():
    train = np.random.default_rng(7).normal(size=(500, 8)).astype(np.float32)
    a, b = vectors.near_index(train), vectors.near_index(train)
    ca = a.quantizer.reconstruct_n(0, a.nlist)
    np.testing.assert_array_equal(ca, b.quantizer.reconstruct_n(0, b.nlist))
    assert vectors.near_train_size() == min(vectors.NEAR_TRAIN, vectors.NEAR_EXACT_LIMIT)
