"""The gallery on disk: immutable shards, a manifest, FAISS indexes, DuckDB views.

Layout of a gallery directory::

    gallery.json                 what built it: face model and annotation fingerprints, encoder
    shards/00000001.faces.parquet    one row per face (ids, photo, box, landmarks, code, quality…)
    shards/00000001.images.parquet   one row per photo seen (ok or failed, with the reason)
    shards/00000001.soft.npy         (n, 36, 3) float32 soft-tissue points, mm, model frame
    shards/00000001.codes.npy        (n, 228) float32 face codes
    shards/00000001.tissue_cov.npy   (n, 36, 6) float16 optional: the fit's posterior covariance
                                     of each soft-tissue point, mm² (xx, xy, xz, yy, yz, zz)
    shards/00000001.json             the commit record, written last
    index/shortlist.<id>.faiss, index/codes.<id>.faiss, index/state.json (names them: the commit)
    ingest.lock                      held by the one writing process

A shard is written to temporary names, renamed into place, then committed by atomically writing
its ``.json`` record: readers see only committed shards, so a query never sees half a shard and a
killed ingest loses at most the shard it was writing (the next run removes the leftovers and does
that work again). Face ids are ``shard << 24 | row``: unique, stable, and the FAISS ids.
The FAISS indexes record which shards they hold; a reader adds any newer committed shard in
memory, so queries see new faces while an ingest runs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import shutil
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skullsearch.encoder.atomic import write_json_atomic
from skullsearch.errors import SkullsearchError

FORMAT = "skullsearch-gallery"
VERSION = 1
ROW_BITS = 24
MAX_ROWS = 1 << ROW_BITS


class GalleryError(SkullsearchError):
    """A gallery folder is missing, damaged, locked or incompatible."""


class GalleryRef:
    """A weak reference to a :class:`~skullsearch.index.gallery.Gallery`, held by the parts the
    gallery owns (its saved indexes, near-duplicate indexes and catalog): they do not keep it
    alive, so a gallery that is dropped is freed at once with its FAISS indexes and DuckDB
    connection — no reference cycle left for a later collection, in whatever process that runs
    (a forked worker finalizing its parent's gallery crashed). Calling it gives the gallery, or
    raises :class:`GalleryError` once the gallery object is gone."""

    __slots__ = ("_ref", "path")

    def __init__(self, gallery):
        self._ref = weakref.ref(gallery)
        self.path = Path(gallery.path)

    def __call__(self):
        g = self._ref()
        if g is None:
            raise GalleryError(f"the gallery at {self.path} is no longer open (its Gallery object was "
                               "dropped): keep the Gallery while you use its indexes or catalog")
        return g


class GalleryPart:
    """A part a gallery owns (``gallery``: the gallery, through a :class:`GalleryRef`)."""

    def __init__(self, gallery):
        self._gallery = GalleryRef(gallery)

    @property
    def gallery(self):
        return self._gallery()


def face_id(shard: int, row) -> np.ndarray:
    return (np.int64(shard) << ROW_BITS) | np.asarray(row, dtype=np.int64)


def split_id(ids) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)
    return ids >> ROW_BITS, ids & (MAX_ROWS - 1)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class ShardInfo:
    """A committed shard: number, face/image/failure counts, creation time."""

    number: int
    faces: int
    images: int
    failures: int
    created: str

    def file(self, root: Path, kind: str) -> Path:
        return root / "shards" / f"{self.number:08d}.{kind}"


SHARD_FILES = ("faces.parquet", "images.parquet", "soft.npy", "codes.npy")
#: Shard files that a shard may lack (ingested without them, or by an older version).
OPTIONAL_SHARD_FILES = ("tissue_cov.npy",)
#: The upper triangle of a 3 × 3 covariance, the order it is stored in.
_TRIU = np.triu_indices(3)


def pack_covariance(cov: np.ndarray) -> np.ndarray:
    """(..., 3, 3) symmetric → (..., 6) float16 (xx, xy, xz, yy, yz, zz): 12 bytes a point."""
    return np.asarray(cov, np.float32)[..., _TRIU[0], _TRIU[1]].astype(np.float16)


def unpack_covariance(packed: np.ndarray) -> np.ndarray:
    """(..., 6) → (..., 3, 3) float32, the inverse of :func:`pack_covariance`."""
    packed = np.asarray(packed, np.float32)
    out = np.empty((*packed.shape[:-1], 3, 3), np.float32)
    out[..., _TRIU[0], _TRIU[1]] = packed
    out[..., _TRIU[1], _TRIU[0]] = packed
    return out


#: Tests of crash safety set this to ``"STEP:K"`` to SIGKILL the writing process (and its
#: process group when it leads one) at a fixed point of its K-th shard commit (K from 1):
#: ``written`` (data in the temporary folder, nothing renamed), ``renamed`` (data files in place,
#: no commit record), ``recorded`` (record written, temporary folder not yet removed).
CRASH_ENV = "SKULLSEARCH_CRASH_AT"
_commits = [0]


def _crash_point(step: str) -> None:
    want = os.environ.get(CRASH_ENV)
    if not want or want != f"{step}:{_commits[0]}":
        return
    import signal

    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)  # the ingest and its detector workers
    os.kill(os.getpid(), signal.SIGKILL)


class ShardWriter:
    """Writes one shard: data files under temporary names, renamed, then the commit record."""

    def __init__(self, root: Path, number: int):
        self.root = root
        self.number = number
        self.tmp = root / "shards" / f".tmp-{number:08d}-{uuid.uuid4().hex}"
        self.tmp.mkdir(parents=True)

    def commit(self, faces_table, images_table, soft: np.ndarray, codes: np.ndarray,
               extra: dict[str, np.ndarray] | None = None) -> ShardInfo:
        """extra: optional arrays by file name (:data:`OPTIONAL_SHARD_FILES`), one row per face,
        written with their own dtype."""
        import pyarrow.parquet as pq

        n = faces_table.num_rows
        extra = dict(extra or {})
        if not (len(soft) == len(codes) == n) or any(len(v) != n for v in extra.values()):
            raise ValueError("shard arrays and face rows disagree")
        if set(extra) - set(OPTIONAL_SHARD_FILES):
            raise ValueError(f"unknown shard files {sorted(set(extra) - set(OPTIONAL_SHARD_FILES))}")
        # row groups of 64k rows: a lookup by face id reads only the groups that hold it
        pq.write_table(faces_table, self.tmp / "faces.parquet", compression="zstd", row_group_size=65536)
        pq.write_table(images_table, self.tmp / "images.parquet", compression="zstd", row_group_size=65536)
        for name, arr in (("soft.npy", soft), ("codes.npy", codes)):
            np.save(self.tmp / name, np.ascontiguousarray(arr, dtype=np.float32))
        for name, arr in extra.items():
            np.save(self.tmp / name, np.ascontiguousarray(arr))
        files = (*SHARD_FILES, *extra)
        for name in files:
            with open(self.tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        _commits[0] += 1
        _crash_point("written")
        shards = self.root / "shards"
        for name in files:
            os.replace(self.tmp / name, shards / f"{self.number:08d}.{name}")
        fsync_dir(shards)
        _crash_point("renamed")
        status = images_table.column("status").to_pylist() if images_table.num_rows else []
        info = ShardInfo(self.number, n, images_table.num_rows,
                         sum(1 for s in status if s != "ok"), now())
        write_json_atomic(shards / f"{self.number:08d}.json", info.__dict__)
        fsync_dir(shards)
        _crash_point("recorded")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return info

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class WriteLock:
    """The gallery's single-writer lock (``ingest.lock``, flock). Readers never take it."""

    def __init__(self, root: Path, wait: bool = False):
        self.path = root / "ingest.lock"
        self.wait = wait
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self.fh.close()
            raise GalleryError(
                f"another process is writing to the gallery {self.path.parent} (ingest.lock is "
                "held); wait for it to finish — queries keep working meanwhile"
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
        return False


def committed_shards(root: Path) -> list[ShardInfo]:
    """Committed shards in order (those with a commit record)."""
    out = []
    for p in sorted((root / "shards").glob("[0-9]" * 8 + ".json")):
        try:
            d = json.loads(p.read_text())
            out.append(ShardInfo(**{k: d[k] for k in ShardInfo.__dataclass_fields__}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GalleryError(f"{p}: damaged shard record ({e}); run `skullsearch verify --repair`") from e
    return out


def remove_uncommitted(root: Path) -> list[Path]:
    """Delete what an interrupted writer left (temp folders, data files without a commit record).
    Call only while holding the write lock."""
    shards = root / "shards"
    done = {s.number for s in committed_shards(root)}
    removed = []
    for p in shards.iterdir():
        if p.name.startswith(".tmp-") or p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
            continue
        head = p.name.split(".", 1)[0]
        if head.isdigit() and int(head) not in done:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def next_shard_number(root: Path) -> int:
    nums = [int(p.name[:8]) for p in (root / "shards").glob("[0-9]" * 8 + ".*")]
    return max(nums, default=0) + 1
