"""The exact indexes over the faces table's vector columns (index/columns.py): reading a shard's
vectors (nulls, float16, old shards without the column), growing shard by shard, searching and
looking vectors up. Real shards written by store.ShardWriter in tmp_path, real FAISS.
(A shard read that fails half-way: tests/index/test_index_read_failures.py.)"""

import threading

import numpy as np
import pytest

from skullsearch.index import schema, store
from skullsearch.index.columns import VectorColumn, list_matrix, positions


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_shard(root, number, fps, rows=None, with_column=True):
    """Commit shard ``number``: one face per fingerprint row (NaN row: none), rows in the given
    order (face ids need not be ascending in the file)."""
    n = len(fps)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    t = schema.faces_table({"face_id": store.face_id(number, rows), "photo_fingerprint": fps})
    if not with_column:  # a shard written before the column existed
        t = t.drop(["photo_fingerprint"])
    images = schema.images_table([])
    return store.ShardWriter(root, number).commit(t, images, np.zeros((n, 36, 3)), np.zeros((n, 228)))


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "shards").mkdir()
    return tmp_path


@pytest.fixture()
def column():
    return VectorColumn("photos", "photo_fingerprint", 63, threading.RLock())


def test_positions_finds_ids_in_a_sorted_array():
    pos, found = positions(np.array([3, 8, 20]), np.array([8, 3, 5, 21, 20]))
    assert found.tolist() == [True, True, False, False, True]
    assert pos[found].tolist() == [1, 0, 2]
    assert (pos >= 0).all() and (pos <= 2).all()  # clamped: safe to index with
    pos, found = positions(np.zeros(0, np.int64), np.array([1, 2]))
    assert not found.any() and pos.tolist() == [0, 0]


def test_a_shards_vectors_skip_nulls_and_come_in_face_id_order(root, column):
    fps = unit(np.random.default_rng(0).normal(size=(5, 63)))
    fps[2] = np.nan  # this face has no fingerprint
    sh = write_shard(root, 1, fps, rows=[4, 0, 3, 1, 2])
    ids, vals = column.shard_vectors(root, sh)
    assert ids.dtype == np.int64 and vals.dtype == np.float32 and vals.shape == (4, 63)
    assert ids.tolist() == store.face_id(1, [0, 1, 2, 4]).tolist()
    by_row = {4: fps[0], 0: fps[1], 1: fps[3], 2: fps[4]}
    for i, row in enumerate([0, 1, 2, 4]):
        np.testing.assert_array_equal(vals[i], by_row[row].astype(np.float16))  # stored as float16


def test_shards_without_the_column_or_without_values_give_nothing(root, column):
    old = write_shard(root, 1, unit(np.ones((2, 63))), with_column=False)
    none = write_shard(root, 2, np.full((3, 63), np.nan))
    empty = write_shard(root, 3, np.zeros((0, 63)))
    for sh in (old, none, empty):
        ids, vals = column.shard_vectors(root, sh)
        assert ids.shape == (0,) and vals.shape == (0, 63)


def test_the_index_grows_shard_by_shard_and_starts_again_when_shards_go(root, column):
    rng = np.random.default_rng(1)
    shards = [write_shard(root, n, unit(rng.normal(size=(4, 63)))) for n in (1, 2, 3)]
    held = column.index(root, shards[:1])
    assert held.shards == [1] and held.index.ntotal == 4
    first_index = held.index
    held = column.index(root, shards)
    assert held.shards == [1, 2, 3] and held.index.ntotal == 12 and held.index is first_index  # grown
    assert held.ids.tolist() == sorted(held.ids.tolist())
    again = column.index(root, shards)  # nothing new: nothing read, nothing added
    assert again.index.ntotal == 12
    fewer = column.index(root, shards[1:])  # shard 1 is gone (a repair): built afresh
    assert fewer.shards == [2, 3] and fewer.index.ntotal == 8 and fewer.index is not first_index
    column.drop()
    assert column.held is None


def test_search_finds_the_nearest_faces_by_l2(root, column):
    rng = np.random.default_rng(2)
    a, b = unit(rng.normal(size=(6, 63))), unit(rng.normal(size=(5, 63)))
    shards = [write_shard(root, 1, a), write_shard(root, 2, b)]
    q = np.stack([b[3], a[0]]) + 0.001
    d, ids = column.search(root, shards, q, k=3)
    assert d.shape == ids.shape == (2, 3) and d.dtype == np.float32 and ids.dtype == np.int64
    assert ids[:, 0].tolist() == [store.face_id(2, 3), store.face_id(1, 0)]
    stored = b[3].astype(np.float16)
    np.testing.assert_allclose(d[0, 0], np.linalg.norm(q[0] - stored), atol=1e-4)  # L2, not squared
    assert (np.diff(d, axis=1) >= 0).all()
    d, ids = column.search(root, shards, a[1], k=100)  # one query as a vector; k beyond the faces
    assert ids.shape == (1, 11) and set(ids[0].tolist()) == set(column.held.ids.tolist())


def test_search_without_any_vector_gives_no_columns(root, column):
    shards = [write_shard(root, 1, np.full((2, 63), np.nan))]
    d, ids = column.search(root, shards, np.ones((3, 63)), k=5)
    assert d.shape == (3, 0) and ids.shape == (3, 0)


@pytest.mark.parametrize("from_shards", [False, True])
def test_values_of_face_ids_with_nan_for_faces_without_one(root, column, from_shards):
    rng = np.random.default_rng(3)
    a = unit(rng.normal(size=(3, 63)))
    a[1] = np.nan
    b = unit(rng.normal(size=(2, 63)))
    shards = [write_shard(root, 1, a), write_shard(root, 2, b)]
    ids = [store.face_id(2, 1), store.face_id(1, 1), store.face_id(1, 0), store.face_id(7, 0),
           store.face_id(1, 9)]
    out = column.values(root, shards, ids, from_shards=from_shards)
    assert out.shape == (5, 63) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], b[1].astype(np.float16))
    np.testing.assert_array_equal(out[2], a[0].astype(np.float16))
    assert np.isnan(out[[1, 3, 4]]).all()  # no fingerprint, an unknown shard, an unknown row
    assert (column.held is None) is from_shards  # read from the shards: no index held


def test_list_matrix_reads_fixed_and_variable_lists_with_nulls_as_nan_rows():
    import pyarrow as pa

    rows = [[1.0, 2.0, 3.0], None, [4.0, 5.0, 6.5]]
    fixed = pa.array(rows, pa.list_(pa.float16(), 3))  # (the shards' layout: float16, fixed size)
    variable = pa.chunked_array([pa.array(rows[:2], pa.list_(pa.float32())),
                                 pa.array(rows[2:], pa.list_(pa.float32()))])  # (DuckDB's FLOAT[])
    for col in (fixed, variable, fixed.slice(1)):
        got, valid = list_matrix(col, 3)
        want = np.array(rows[len(rows) - len(col):], dtype=object)
        assert got.dtype == np.float32 and got.shape == (len(col), 3)
        assert valid.tolist() == [r is not None for r in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, np.full(3, np.nan) if w is None else w)
    got, valid = list_matrix(pa.array([None, None], pa.list_(pa.float32(), 3)), 3)
    assert np.isnan(got).all() and not valid.any()
