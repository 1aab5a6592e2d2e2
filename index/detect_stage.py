"""Ingest's detector stage: worker processes that read, hash, decode and detect each photo and
make each face's photo fingerprint and person descriptor (:func:`detect_one`, a pure function of
the photo), on a local process pool that survives crashing and hanging photos
(:class:`LocalDetectStage`); the Ray engine (:mod:`skullsearch.index.ray_engine`) runs the same
:func:`detect_one` on Ray Data. Both stages are called alike: ``stage.iter_chunks(sources,
sizes)`` yields each chunk's records in order, ``stage.close()`` ends it. A photo's record is a
:class:`PhotoRecord` (the image row and its :class:`FaceRecord` list); it crosses the Ray
boundary as JSON (:meth:`PhotoRecord.to_json`, :meth:`PhotoRecord.from_json`).
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

WORKER_CRASHED = "worker-crashed"
TIMEOUT = "timeout"

#: Detectors whose worker processes are spawned, not forked: MediaPipe's graphs hold threads
#: that a forked child inherits in an unusable state (a child of a process that has run one
#: hangs at its first photo).
SPAWN_DETECTORS = frozenset({"mesh"})


@dataclass
class Source:
    """One photo to ingest: path, optional person id and metadata (JSON-able dict)."""

    path: str
    person: str | None = None
    metadata: dict | None = None


@dataclass
class FaceRecord:
    """One detected face of a photo, as the detector stage gives it to the fit and the writer.

    box (4,) x0, y0, x1, y1 px; score; landmarks (68, 2) px (iBUG); quality: the detector's flags;
    yaw_deg; detector: its name; fingerprint (63,) float32 photo fingerprint
    (:mod:`~skullsearch.index.fingerprint`) and descriptor (128,) float32 person descriptor
    (:mod:`~skullsearch.encoder.descriptors`), None where none could be made; dense (K, 2) px a
    dense detector's points (MediaPipe's mesh), else None; crop: PNG bytes of the photo around
    the face (:class:`~skullsearch.encoder.photometric.FaceCrop`, with crop_origin (2,) px and
    crop_scale) when the ingest fits photometrically, else None.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    quality: tuple[str, ...]
    yaw_deg: float
    detector: str
    fingerprint: np.ndarray | None = None
    descriptor: np.ndarray | None = None
    dense: np.ndarray | None = None
    crop: bytes | None = None
    crop_origin: np.ndarray | None = None
    crop_scale: float = 1.0

    _ARRAYS = {"box": np.float64, "landmarks": np.float64, "fingerprint": np.float32,
               "descriptor": np.float32, "dense": np.float32, "crop_origin": np.float64}

    def to_dict(self) -> dict:
        """Plain JSON-able values (arrays as lists, the crop's PNG as base64 text)."""
        d = asdict(self)
        for k in self._ARRAYS:
            d[k] = None if d[k] is None else np.asarray(d[k]).tolist()
        d["quality"] = list(self.quality)
        d["crop"] = None if self.crop is None else base64.b64encode(self.crop).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FaceRecord:
        d = dict(d)
        for k, dtype in cls._ARRAYS.items():
            d[k] = None if d.get(k) is None else np.asarray(d[k], dtype)
        d["quality"] = tuple(d["quality"])
        d["crop"] = None if d.get("crop") is None else base64.b64decode(d["crop"])
        return cls(**d)

    def face_crop(self):
        """The :class:`~skullsearch.encoder.photometric.FaceCrop` kept for the fit, or None."""
        if self.crop is None:
            return None
        from skullsearch.encoder.photometric import FaceCrop

        return FaceCrop.from_png(self.crop, self.crop_origin, self.crop_scale)


@dataclass
class PhotoRecord:
    """One photo through the detector stage: path, person and metadata (from its
    :class:`Source`), size_bytes and mtime_ns (its stat, None when unreadable), sha256 (of its
    bytes, None when unread), status (``ok``, ``known`` — already in the gallery —, or the
    failure's reason), detail (what went wrong, for a person), width and height px (when
    decoded), faces (:class:`FaceRecord`, largest first; none unless ``ok``), focal_px (the
    camera's focal length from the photo's EXIF, px; None when it does not say)."""

    path: str
    person: str | None = None
    metadata: dict | None = None
    size_bytes: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    status: str = "ok"
    detail: str = ""
    width: int | None = None
    height: int | None = None
    faces: list[FaceRecord] = field(default_factory=list)
    focal_px: float | None = None  # the camera's focal length from the photo's EXIF (px), if any

    @classmethod
    def of(cls, source: Source, status: str = "ok", detail: str = "") -> PhotoRecord:
        """A record of ``source`` with its stat (size, mtime) and no faces yet."""
        key = stat_key(source.path)
        return cls(source.path, source.person, source.metadata, key[0] if key else None,
                   key[1] if key else None, status=status, detail=detail)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        """The record as JSON text (how it crosses the Ray boundary)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "faces"}
        d["faces"] = [f.to_dict() for f in self.faces]
        return json.dumps(d, default=str)

    @classmethod
    def from_json(cls, text: str) -> PhotoRecord:
        d = json.loads(text)
        d["faces"] = [FaceRecord.from_dict(f) for f in d["faces"]]
        return cls(**d)


def stat_key(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, or of the link itself when it dangles; None if neither exists."""
    for stat in (os.stat, os.lstat):
        try:
            st = stat(path)
            return st.st_size, st.st_mtime_ns
        except OSError:
            continue
    return None



def chunk_sizes(n: int, largest: int = 256, first: int = 64) -> list[int]:
    """Photos per chunk (= per shard) for n photos: ``first``, doubling up to ``largest``, so that
    the fit of the first chunk overlaps the detection of the next ones instead of waiting for a
    whole large chunk. Sums to n."""
    sizes, size, done = [], max(1, min(first, largest)), 0
    while done < n:
        sizes.append(min(size, n - done))
        done += sizes[-1]
        size = min(2 * size, max(1, largest))
    return sizes


# ---------------------------------------------------------------- detector stage (workers)
_KNOWN: frozenset = frozenset()
_DETECTOR = None
_DESCRIBE = True
_CROPS = False


def init_worker(known: frozenset, detector: str, descriptors: bool = True, crops: bool = False) -> None:
    """Set up a detector worker process (local pool or Ray actor): the sha256 of the photos the
    gallery holds, the detector by name, whether to compute person descriptors, whether to keep
    each face's crop for a photometric fit."""
    global _KNOWN, _DETECTOR, _DESCRIBE, _CROPS
    import gc

    # a forked worker inherits the parent's objects, some of which (a torch, FAISS or DuckDB
    # object of the parent's) cannot be finalized in a child: the garbage collector must never
    # visit them here, or the worker crashes at its first collection (seen as worker-crashed)
    gc.freeze()
    import torch

    torch.set_num_threads(1)
    _KNOWN = known
    _DESCRIBE = descriptors
    _CROPS = crops
    from skullsearch.encoder.detectors import get_detector

    _DETECTOR = get_detector(detector)


def detect_one(source: Source, max_pixels: int = 60_000_000) -> PhotoRecord:
    """Worker stage: read, hash, decode, detect, and per face its photo fingerprint and person
    descriptor. Returns the photo's :class:`PhotoRecord`."""
    from skullsearch.encoder.images import ImageFailure, read_image

    row = PhotoRecord.of(source)
    try:
        data = Path(source.path).read_bytes()
    except OSError as e:
        row.status, row.detail = "unreadable", f"cannot read the file ({e.strerror or e}); check permissions"
        return row
    row.sha256 = hashlib.sha256(data).hexdigest()
    if row.sha256 in _KNOWN:
        row.status = "known"
        return row
    img = read_image(data, max_pixels=max_pixels, name=source.path)
    if isinstance(img, ImageFailure):
        row.status, row.detail = img.reason, img.detail
        return row
    try:
        found = _DETECTOR.detect(img)
    except Exception as e:  # noqa: BLE001 - a detector failure is this photo's failure
        row.status, row.detail = "detector-error", str(e)
        return row
    if not found:
        row.status, row.detail = "no-face", f"no face found by the {_DETECTOR.name} detector"
    row.width, row.height = img.size
    row.focal_px = img.focal_px
    from skullsearch.encoder import descriptors
    from skullsearch.index import fingerprint

    boxes = np.stack([f.box for f in found]) if found else None
    lms = np.stack([f.landmarks for f in found]) if found else None
    fps = _per_face(found, fingerprint.DIM, lambda: fingerprint.photo_fingerprints(img.pixels, lms))
    descs = (_per_face(found, descriptors.DIM, lambda: descriptors.face_descriptors(img.pixels, boxes, lms))
             if _DESCRIBE else np.full((len(found), descriptors.DIM), np.nan, np.float32))
    crops = [None] * len(found)
    if _CROPS:  # the photo around each face, for a photometric fit (small: CROP_PX on its longer side)
        from skullsearch.encoder.photometric import face_crop

        crops = [face_crop(img.pixels, f.landmarks) for f in found]
    row.faces = [FaceRecord(
        box=np.asarray(f.box, np.float64), score=float(f.score),
        landmarks=np.asarray(f.landmarks, np.float64), quality=tuple(q for q in f.quality if q),
        yaw_deg=float(f.yaw_deg), detector=f.detector,
        fingerprint=None if np.isnan(fp).any() else np.asarray(fp, np.float32),
        descriptor=None if np.isnan(d).any() else np.asarray(d, np.float32),
        # a dense detector's points (x, y px) for the fit's dense term
        dense=None if f.dense is None else np.asarray(f.dense, np.float32)[:, :2].copy(),
        crop=None if c is None else c.png(), crop_origin=None if c is None else c.origin,
        crop_scale=1.0 if c is None else c.scale)
        for f, fp, d, c in zip(found, fps, descs, crops, strict=True)]
    return row


def _per_face(found, dim: int, make) -> np.ndarray:
    """make() (n, dim) for the n detected faces (a photo fingerprint, a person descriptor), from
    the decoded pixels the worker holds; NaN rows where it fails — a face without one is still a
    face, and never fails the photo."""
    if not found:
        return np.zeros((0, dim), np.float32)
    try:
        return make()
    except Exception:  # noqa: BLE001 - see the docstring
        return np.full((len(found), dim), np.nan, np.float32)


class LocalDetectStage:
    """The detector stage on a local process pool; survives crashing and hanging photos.

    cpu_share: the CPUs of this machine its workers keep busy (the fit leaves them theirs)."""

    def __init__(self, workers: int, known: frozenset, detector: str, timeout_s: float = 120.0,
                 descriptors: bool = True, crops: bool = False):
        self.workers = max(1, workers)
        self.known = known
        self.detector = detector
        self.timeout_s = timeout_s
        self.descriptors = descriptors
        self.crops = crops
        self.pool = None
        self.cpu_share = self.workers

    def _pool(self):
        if self.pool is None:
            fork = "fork" in mp.get_all_start_methods() and self.detector not in SPAWN_DETECTORS
            ctx = mp.get_context("fork" if fork else "spawn")
            self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=init_worker,
                                               initargs=(self.known, self.detector, self.descriptors,
                                                         self.crops))
        return self.pool

    def _kill(self):
        if self.pool is not None:
            for p in list(getattr(self.pool, "_processes", {}).values()):
                p.kill()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def __call__(self, sources: list[Source]) -> list[PhotoRecord]:
        return self._collect(sources, self._submit(sources))

    def iter_chunks(self, sources: list[Source], chunk: int | list[int]) -> Iterator[list[PhotoRecord]]:
        """Records chunk by chunk, the next chunk already detecting while the caller fits and
        writes this one (detection and fitting overlap). chunk: photos per chunk, or the list
        of chunk sizes. The first chunk is submitted at once, before the first ``next``."""
        sizes = chunk if isinstance(chunk, list) else chunk_sizes(len(sources), chunk, chunk)
        starts = np.cumsum([0, *sizes])
        batches = [sources[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True) if b > a]
        return self._chunks(batches, self._submit(batches[0]) if batches else {})

    def _chunks(self, batches: list[list[Source]], pending: dict) -> Iterator[list[PhotoRecord]]:
        # a crash while collecting one chunk also breaks the next chunk's futures: _collect then
        # redoes what they left undone, one photo per fresh worker; a chunk whose submission
        # failed (broken pool) is submitted again to a fresh pool when its turn comes
        for k, batch in enumerate(batches):
            current = pending or self._submit(batch)
            pending = self._submit(batches[k + 1]) if k + 1 < len(batches) else {}
            yield self._collect(batch, current)

    def _submit(self, sources: list[Source]) -> dict:
        try:
            return {self._pool().submit(detect_one, s): i for i, s in enumerate(sources)}
        except cf.process.BrokenProcessPool:
            self._kill()
            return {}

    def _collect(self, sources: list[Source], futures: dict | None) -> list[PhotoRecord]:
        results: list[PhotoRecord | None] = [None] * len(sources)
        try:
            for fut in cf.as_completed(futures or {},
                                       timeout=self.timeout_s * max(1, len(sources) / self.workers)):
                results[futures[fut]] = fut.result()
        except (cf.process.BrokenProcessPool, cf.TimeoutError):
            self._kill()
        # anything left (a crash or a hang took the pool down): one photo per fresh worker
        for i, s in enumerate(sources):
            if results[i] is None:
                results[i] = self._isolated(s)
        return results

    def _isolated(self, source: Source) -> PhotoRecord:
        try:
            fut = self._pool().submit(detect_one, source)
            return fut.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            self._kill()
            reason, detail = TIMEOUT, f"decoding or detection took over {self.timeout_s:.0f} s"
        except cf.process.BrokenProcessPool:
            self._kill()
            reason, detail = WORKER_CRASHED, "the decoder crashed on this file (corrupt image?)"
        return PhotoRecord.of(source, reason, detail)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


