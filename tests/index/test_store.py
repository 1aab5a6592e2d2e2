"""The gallery on disk (index/store.py): face ids, the covariance packing order, writing and
committing a shard, the write lock, committed shards and the clean-up of an interrupted writer.
Real files in tmp_path (kill -9 during a commit: tests/index/test_crash_and_concurrency.py)."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from skullsearch.index import schema, store
from skullsearch.index.store import GalleryError


# ------------------------------------------------------------------------------ face ids
def test_face_ids_put_the_shard_above_24_row_bits():
    assert store.MAX_ROWS == 2**24
    ids = store.face_id(3, [0, 1, store.MAX_ROWS - 1])
    assert ids.dtype == np.int64
    assert ids.tolist() == [3 * 2**24, 3 * 2**24 + 1, 4 * 2**24 - 1]
    big = store.face_id(99_999_999, 5)  # the largest 8-digit shard number still fits an int64
    shard, row = store.split_id(big)
    assert (int(shard), int(row)) == (99_999_999, 5)
    shard, row = store.split_id([ids[2], 2**24])
    assert shard.tolist() == [3, 1] and row.tolist() == [2**24 - 1, 0]


# ------------------------------------------------------------------------------ covariances
def test_a_covariance_is_packed_as_its_upper_triangle_row_by_row():
    cov = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]])
    packed = store.pack_covariance(cov)
    assert packed.dtype == np.float16 and packed.tolist() == [1, 2, 3, 4, 5, 6]  # xx xy xz yy yz zz
    back = store.unpack_covariance(packed)
    assert back.dtype == np.float32 and (back == back.T).all()
    np.testing.assert_array_equal(back, cov)


# ------------------------------------------------------------------------------ shards
def tables(n, statuses=("ok",)):
    faces = schema.faces_table({"face_id": store.face_id(1, np.arange(n)),
                                "path": [f"{i}.jpg" for i in range(n)]})
    images = schema.images_table([{"image_id": i, "path": f"{i}.jpg", "status": s}
                                  for i, s in enumerate(statuses)])
    return faces, images


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "shards").mkdir()
    return tmp_path


def test_a_committed_shard_has_its_files_and_record(root):
    faces, images = tables(3, statuses=("ok", "unreadable", "ok", "no face"))
    soft = np.random.default_rng(0).normal(size=(3, 36, 3))
    codes = np.ones((3, 228), np.float64)
    cov = np.ones((3, 36, 6), np.float16)
    writer = store.ShardWriter(root, 4)
    assert writer.tmp.parent == root / "shards" and writer.tmp.name.startswith(".tmp-00000004-")
    info = writer.commit(faces, images, soft, codes, extra={"tissue_cov.npy": cov})
    assert (info.number, info.faces, info.images, info.failures) == (4, 3, 4, 2)
    assert info.file(root, "faces.parquet") == root / "shards" / "00000004.faces.parquet"
    back = np.load(root / "shards" / "00000004.soft.npy")
    assert back.dtype == np.float32 and np.allclose(back, soft, atol=1e-6)
    assert np.load(root / "shards" / "00000004.codes.npy").dtype == np.float32
    assert np.load(root / "shards" / "00000004.tissue_cov.npy").dtype == np.float16  # its own dtype
    assert pq.read_table(info.file(root, "faces.parquet")).column("path").to_pylist() == ["0.jpg", "1.jpg",
                                                                                         "2.jpg"]
    assert json.loads((root / "shards" / "00000004.json").read_text()) == info.__dict__
    assert not writer.tmp.exists()
    assert store.committed_shards(root) == [info]


@pytest.mark.parametrize("soft_rows, codes_rows, cov_rows", [(2, 3, None), (3, 2, None), (3, 3, 4)])
def test_arrays_that_disagree_with_the_face_rows_are_refused(root, soft_rows, codes_rows, cov_rows):
    faces, images = tables(3)
    extra = None if cov_rows is None else {"tissue_cov.npy": np.zeros((cov_rows, 36, 6))}
    writer = store.ShardWriter(root, 1)
    with pytest.raises(ValueError, match="shard arrays and face rows disagree"):
        writer.commit(faces, images, np.zeros((soft_rows, 36, 3)), np.zeros((codes_rows, 228)), extra)
    writer.abort()
    assert store.committed_shards(root) == [] and list((root / "shards").iterdir()) == []


def test_an_unknown_extra_file_is_refused(root):
    faces, images = tables(1)
    with pytest.raises(ValueError, match=r"unknown shard files \['notes.npy'\]"):
        store.ShardWriter(root, 1).commit(faces, images, np.zeros((1, 36, 3)), np.zeros((1, 228)),
                                          {"notes.npy": np.zeros(1)})


def test_committed_shards_are_in_order_and_a_damaged_record_says_how_to_repair(root):
    for n in (10, 2):
        store.ShardWriter(root, n).commit(*tables(1), np.zeros((1, 36, 3)), np.zeros((1, 228)))
    assert [s.number for s in store.committed_shards(root)] == [2, 10]
    (root / "shards" / "00000007.json").write_text('{"number": 7, "faces": 1}')  # keys missing
    with pytest.raises(GalleryError, match=r"00000007\.json: damaged shard record .*verify --repair"):
        store.committed_shards(root)
    (root / "shards" / "00000007.json").write_text("{not json")
    with pytest.raises(GalleryError, match="damaged shard record"):
        store.committed_shards(root)


def test_remove_uncommitted_deletes_only_what_an_interrupted_writer_left(root):
    info = store.ShardWriter(root, 1).commit(*tables(2), np.zeros((2, 36, 3)), np.zeros((2, 228)))
    tmp = store.ShardWriter(root, 2).tmp  # a temporary folder, never committed
    (tmp / "faces.parquet").write_bytes(b"written, never renamed")
    shards = root / "shards"
    (shards / "00000003.faces.parquet").write_bytes(b"renamed, never recorded")
    (shards / ".00000001.json.abc.tmp").write_text("half a record")
    (shards / "README").write_text("not a shard file")
    kept = sorted(p.name for p in shards.iterdir() if p.name.startswith("00000001."))
    assert len(kept) == 5  # the four data files and the record
    removed = store.remove_uncommitted(root)
    assert sorted(p.name for p in removed) == sorted([tmp.name, ".00000001.json.abc.tmp",
                                                      "00000003.faces.parquet"])
    assert sorted(p.name for p in shards.iterdir()) == sorted([*kept, "README"])
    assert store.committed_shards(root) == [info]


def test_next_shard_number_counts_uncommitted_files_too(root):
    assert store.next_shard_number(root) == 1
    (root / "shards" / "00000005.codes.npy").write_bytes(b"")  # a number once used is not reused
    assert store.next_shard_number(root) == 6


# ------------------------------------------------------------------------------ the write lock
def test_the_write_lock_admits_one_writer_and_records_its_pid(root):
    with store.WriteLock(root) as lock:
        assert (root / "ingest.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(GalleryError, match="another process is writing to the gallery .*ingest.lock is "
                                               "held.*queries keep working"):
            with store.WriteLock(root):
                pass
        assert not lock.fh.closed
    with store.WriteLock(root):  # released on exit: the next writer gets it
        pass


def test_the_write_lock_is_released_when_the_block_raises(root):
    with pytest.raises(RuntimeError):
        with store.WriteLock(root):
            raise RuntimeError("ingest failed")
    with store.WriteLock(root):
        pass
