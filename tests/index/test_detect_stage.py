"""Ingest's detector stage (:mod:`skullsearch.index.detect_stage`): the records and their JSON
form, the chunk sizes, the file stat, :func:`detect_one` on real files of every kind (with the
real decoder and dlib), and the local pool's chunks in order."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from photos import render_faces
from PIL import Image

from skullsearch.index import detect_stage as ds
from skullsearch.index.detect_stage import (
    FaceRecord,
    LocalDetectStage,
    PhotoRecord,
    Source,
    chunk_sizes,
    detect_one,
    init_worker,
    stat_key,
)


def _face(**kw):
    rng = np.random.default_rng(0)
    base = dict(box=np.array([1.0, 2.0, 30.5, 40.25]), score=0.75, landmarks=rng.random((68, 2)) * 100,
                quality=("tiny",), yaw_deg=-12.5, detector="dlib",
                fingerprint=rng.random(63).astype(np.float32), descriptor=None,
                dense=rng.random((478, 2)).astype(np.float32))
    return FaceRecord(**{**base, **kw})


# ---------------------------------------------------------------- records


def test_photo_records_cross_json_with_arrays_dtypes_and_nones():
    faces = [_face(), _face(fingerprint=None, dense=None, descriptor=np.ones(128, np.float32), quality=())]
    rec = PhotoRecord("a/b é.jpg", person=None, metadata={"case": 7, "tags": ["x"]}, size_bytes=12,
                      mtime_ns=1_700_000_000_123_456_789, sha256="ab" * 32, status="ok", width=640,
                      height=480, faces=faces, focal_px=1234.5)
    text = rec.to_json()
    json.loads(text)  # plain JSON
    back = PhotoRecord.from_json(text)
    for k in ("path", "person", "metadata", "size_bytes", "mtime_ns", "sha256", "status", "detail",
              "width", "height", "focal_px"):
        assert getattr(back, k) == getattr(rec, k), k
    assert len(back.faces) == 2
    for want, got in zip(faces, back.faces, strict=True):
        for k, dtype in FaceRecord._ARRAYS.items():
            a, b = getattr(want, k), getattr(got, k)
            if a is None:
                assert b is None, k
            else:
                assert b.dtype == dtype and b.shape == np.shape(a), k
                np.testing.assert_array_equal(b, np.asarray(a, dtype))
        assert got.quality == want.quality and isinstance(got.quality, tuple)
        assert (got.score, got.yaw_deg, got.detector) == (want.score, want.yaw_deg, want.detector)


def test_a_failed_record_crosses_json_without_faces():
    rec = PhotoRecord("x.jpg", status="unreadable", detail="cannot read the file")
    back = PhotoRecord.from_json(rec.to_json())
    assert back == rec and not back.ok and back.faces == []
    assert PhotoRecord("y.jpg").ok and not PhotoRecord("y.jpg", status="known").ok


def test_photo_record_of_stats_the_file(tmp_path):
    f = tmp_path / "p.jpg"
    f.write_bytes(b"0123456789")
    os.utime(f, ns=(1_600_000_000_000_000_001, 1_600_000_000_000_000_001))
    rec = PhotoRecord.of(Source(str(f), person="ann", metadata={"k": 1}), "timeout", "slow")
    assert (rec.path, rec.person, rec.metadata) == (str(f), "ann", {"k": 1})
    assert rec.size_bytes == 10 and rec.mtime_ns == 1_600_000_000_000_000_001
    assert (rec.status, rec.detail, rec.sha256, rec.faces) == ("timeout", "slow", None, [])
    missing = PhotoRecord.of(Source(str(tmp_path / "nope.jpg")))
    assert missing.size_bytes is None and missing.mtime_ns is None and missing.ok


def test_stat_key_of_a_file_a_dangling_link_and_nothing(tmp_path):
    f = tmp_path / "f.png"
    f.write_bytes(b"abc")
    st_f = os.stat(f)
    assert stat_key(str(f)) == (3, st_f.st_mtime_ns)
    link = tmp_path / "gone.jpg"
    os.symlink(tmp_path / "does-not-exist.jpg", link)
    st_l = os.lstat(link)
    assert stat_key(str(link)) == (st_l.st_size, st_l.st_mtime_ns)  # the link itself
    assert stat_key(str(tmp_path / "nothing.jpg")) is None


# ---------------------------------------------------------------- chunk sizes


def test_chunk_sizes_double_from_first_up_to_largest():
    assert chunk_sizes(1000, largest=256, first=64) == [64, 128, 256, 256, 256, 40]
    assert chunk_sizes(10, largest=256, first=64) == [10]
    assert chunk_sizes(0) == []
    assert chunk_sizes(7, largest=4, first=16) == [4, 3]  # first is capped by largest
    assert chunk_sizes(5, largest=0, first=0) == [1, 1, 1, 1, 1]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 600), st.integers(1, 600))
def test_chunk_sizes_sum_to_n_and_double_up_to_largest(n, largest, first):
    sizes = chunk_sizes(n, largest=largest, first=first)
    assert sum(sizes) == n and all(s >= 1 for s in sizes)
    want = min(first, largest)
    for s in sizes[:-1]:  # every chunk but the last (the rest) has its full size
        assert s == want
        want = min(2 * want, largest)
    if sizes:
        assert sizes[-1] <= want


# ---------------------------------------------------------------- detect_one on real files


@pytest.fixture
def worker(monkeypatch):
    """init_worker as a worker process runs it, in this process: its globals and the torch
    thread count are put back afterwards."""
    for name in ("_KNOWN", "_DETECTOR", "_DESCRIBE"):
        monkeypatch.setattr(ds, name, getattr(ds, name))
    threads = torch.get_num_threads()

    def init(known=frozenset(), descriptors=False):
        init_worker(frozenset(known), "dlib", descriptors=descriptors)

    yield init
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def face_png(default_model, tmp_path_factory):
    return render_faces(default_model, tmp_path_factory.mktemp("faces"), 2, seed=4, size=256)


def test_unreadable_files_say_so(tmp_path, worker):
    worker()
    missing = detect_one(Source(str(tmp_path / "missing.jpg")))
    assert missing.status == "unreadable" and "cannot read the file" in missing.detail
    assert missing.sha256 is None and missing.size_bytes is None
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    assert detect_one(Source(str(folder))).status == "unreadable"


def test_a_file_that_is_no_image_fails_with_the_decoders_reason(tmp_path, worker):
    worker()
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    rec = detect_one(Source(str(text), person="p"))
    assert rec.status == "not-an-image" and "not an image file" in rec.detail
    assert rec.sha256 == hashlib.sha256(text.read_bytes()).hexdigest()
    assert rec.size_bytes == text.stat().st_size and rec.person == "p" and rec.faces == []
    assert rec.width is None
    empty = tmp_path / "zero.png"
    empty.write_bytes(b"")
    assert detect_one(Source(str(empty))).status == "empty"


def test_a_photo_without_a_face_is_no_face(tmp_path, worker):
    worker()
    sky = tmp_path / "sky.jpg"
    Image.new("RGB", (200, 120), (90, 140, 200)).save(sky)
    rec = detect_one(Source(str(sky)))
    assert rec.status == "no-face" and "dlib" in rec.detail
    assert (rec.width, rec.height) == (200, 120) and rec.faces == [] and rec.sha256


def test_a_rendered_face_is_one_ok_face(face_png, worker):
    worker()
    rec = detect_one(Source(str(face_png[0]), person="ann"))
    assert rec.ok and rec.person == "ann" and (rec.width, rec.height) == (256, 256)
    assert len(rec.faces) == 1
    (f,) = rec.faces
    assert f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float64
    assert f.box.shape == (4,) and f.box[0] < f.landmarks[:, 0].mean() < f.box[2]
    assert f.detector == "dlib" and f.dense is None
    assert f.fingerprint is not None and f.fingerprint.shape == (63,) and f.fingerprint.dtype == np.float32
    assert f.descriptor is None  # descriptors=False
    back = PhotoRecord.from_json(rec.to_json())
    np.testing.assert_array_equal(back.faces[0].landmarks, f.landmarks)
    np.testing.assert_array_equal(back.faces[0].fingerprint, f.fingerprint)
    assert rec.focal_px is None  # a PNG render without EXIF


def test_detect_one_reads_the_photos_focal_length_from_exif(face_png, worker, tmp_path):
    from skullsearch.encoder.images import FRAME_35MM_DIAGONAL

    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif.get_ifd(0x8769)[0xA405] = 50
    path = tmp_path / "with-exif.jpg"
    Image.open(face_png[0]).convert("RGB").save(path, quality=95, exif=exif)
    worker()
    rec = detect_one(Source(str(path)))
    assert rec.ok and rec.focal_px == pytest.approx(50 * np.hypot(256, 256) / FRAME_35MM_DIAGONAL)
    assert PhotoRecord.from_json(rec.to_json()).focal_px == pytest.approx(rec.focal_px)


def test_a_photo_the_gallery_holds_is_known(face_png, worker):
    sha = hashlib.sha256(Path(face_png[1]).read_bytes()).hexdigest()
    worker(known={sha})
    rec = detect_one(Source(str(face_png[1])))
    assert rec.status == "known" and rec.sha256 == sha and rec.faces == [] and rec.width is None
    assert detect_one(Source(str(face_png[0]))).ok  # another photo still goes through


def test_local_stage_yields_chunks_in_order(face_png, tmp_path):
    text = tmp_path / "junk.png"
    text.write_text("no image")
    sources = [Source(str(face_png[0]), person="a"), Source(str(text)), Source(str(face_png[1]))]
    stage = LocalDetectStage(workers=1, known=frozenset(), detector="dlib", descriptors=False)
    try:
        chunks = list(stage.iter_chunks(sources, [1, 2]))
    finally:
        stage.close()
    assert [len(c) for c in chunks] == [1, 2]
    records = [r for c in chunks for r in c]
    assert [r.path for r in records] == [s.path for s in sources]
    assert [r.status for r in records] == ["ok", "not-an-image", "ok"]
    assert records[0].person == "a" and len(records[0].faces) == 1
    assert stage.pool is None  # closed


class _Canary:
    """Garbage of the parent process (in a reference cycle) that notes where it is finalized."""

    def __init__(self, path: Path):
        self.path, self.me = path, self

    def __del__(self):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")


def _worker_collects(path, known):
    import gc

    init_worker(known, "dlib", False)
    gc.collect()
    Path(path).with_suffix(".done").write_text("ok")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked workers only")
def test_a_forked_worker_never_finalizes_the_parents_garbage(tmp_path):
    """A parent's garbage (a closed-over gallery's DuckDB connection, FAISS indexes) is not safe to
    finalize in a forked child: the worker's collector must leave it alone (it crashed workers
    of a second ingest in one process)."""
    import gc
    import multiprocessing as mp

    log = tmp_path / "finalized.txt"
    gc.disable()  # keep the cycle uncollected until the fork
    try:
        _Canary(log)
        proc = mp.get_context("fork").Process(target=_worker_collects, args=(str(log), frozenset()))
        proc.start()
        proc.join(60)
    finally:
        gc.enable()
    assert proc.exitcode == 0 and log.with_suffix(".done").exists()
    gc.collect()
    assert log.read_text().split() == [str(os.getpid())]  # finalized by the parent, not the worker
