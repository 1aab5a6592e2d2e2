"""Ingest's detector stage: worker processes that read, hash, decode and detect each photo and
make each face's photo fingerprint and person descriptor (:func:`detect_one`, a pure function of
the photo), on a local process pool that survives crashing and hanging photos
(:class:`LocalDetectStage`); the Ray engine (:mod:`skullsearch.index.ray_engine`) runs the same
:func:`detect_one` on Ray Data. Rows are plain dicts (they cross process boundaries as JSON on
Ray): the image row (path, person, metadata, size_bytes, mtime_ns, sha256, status, detail, width,
height) and its ``faces`` (box, score, landmarks, quality, yaw_deg, detector, fingerprint,
descriptor, and a dense detector's points).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import dataclass
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


def init_worker(known: frozenset, detector: str, descriptors: bool = True) -> None:
    """Set up a detector worker process (local pool or Ray actor): the sha256 of the photos the
    gallery holds, the detector by name, whether to compute person descriptors."""
    global _KNOWN, _DETECTOR, _DESCRIBE
    import torch

    torch.set_num_threads(1)
    _KNOWN = known
    _DESCRIBE = descriptors
    from skullsearch.encoder.detectors import get_detector

    _DETECTOR = get_detector(detector)


def detect_one(source: Source, max_pixels: int = 60_000_000) -> dict:
    """Worker stage: read, hash, decode, detect, and per face its photo fingerprint and person
    descriptor. Returns a plain dict (image row + faces)."""
    from skullsearch.encoder.images import ImageFailure, read_image

    key = stat_key(source.path)
    row = {"path": source.path, "person": source.person, "metadata": source.metadata,
           "size_bytes": key[0] if key else None, "mtime_ns": key[1] if key else None,
           "sha256": None, "status": "ok", "detail": "", "faces": []}
    try:
        data = Path(source.path).read_bytes()
    except OSError as e:
        row.update(status="unreadable", detail=f"cannot read the file ({e.strerror or e}); check permissions")
        return row
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if row["sha256"] in _KNOWN:
        row["status"] = "known"
        return row
    img = read_image(data, max_pixels=max_pixels, name=source.path)
    if isinstance(img, ImageFailure):
        row.update(status=img.reason, detail=img.detail)
        return row
    try:
        found = _DETECTOR.detect(img)
    except Exception as e:  # noqa: BLE001 - a detector failure is this photo's failure
        row.update(status="detector-error", detail=str(e))
        return row
    if not found:
        row.update(status="no-face", detail=f"no face found by the {_DETECTOR.name} detector")
    row["width"], row["height"] = img.size
    from skullsearch.encoder import descriptors
    from skullsearch.index import fingerprint

    boxes = np.stack([f.box for f in found]) if found else None
    lms = np.stack([f.landmarks for f in found]) if found else None
    fps = _per_face(found, fingerprint.DIM, lambda: fingerprint.photo_fingerprints(img.pixels, lms))
    descs = (_per_face(found, descriptors.DIM, lambda: descriptors.face_descriptors(img.pixels, boxes, lms))
             if _DESCRIBE else np.full((len(found), descriptors.DIM), np.nan, np.float32))
    row["faces"] = [{"box": f.box.tolist(), "score": float(f.score), "landmarks": f.landmarks.tolist(),
                     "quality": ",".join(f.quality), "yaw_deg": float(f.yaw_deg), "detector": f.detector,
                     "fingerprint": None if np.isnan(fp).any() else fp.tolist(),
                     "descriptor": None if np.isnan(d).any() else d.tolist(),
                     # a dense detector's points (x, y px) for the fit's dense term
                     "dense": None if f.dense is None else np.asarray(f.dense, np.float32)[:, :2].tolist()}
                    for f, fp, d in zip(found, fps, descs, strict=True)]
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
    """The detector stage on a local process pool; survives crashing and hanging photos."""

    def __init__(self, workers: int, known: frozenset, detector: str, timeout_s: float = 120.0,
                 descriptors: bool = True):
        self.workers = max(1, workers)
        self.known = known
        self.detector = detector
        self.timeout_s = timeout_s
        self.descriptors = descriptors
        self.pool = None

    def _pool(self):
        if self.pool is None:
            fork = "fork" in mp.get_all_start_methods() and self.detector not in SPAWN_DETECTORS
            ctx = mp.get_context("fork" if fork else "spawn")
            self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=init_worker,
                                               initargs=(self.known, self.detector, self.descriptors))
        return self.pool

    def _kill(self):
        if self.pool is not None:
            for p in list(getattr(self.pool, "_processes", {}).values()):
                p.kill()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def __call__(self, sources: list[Source]) -> list[dict]:
        return self._collect(sources, self._submit(sources))

    def iter_chunks(self, sources: list[Source], chunk: int | list[int]) -> Iterator[list[dict]]:
        """Rows chunk by chunk, the next chunk already detecting while the caller fits and
        writes this one (detection and fitting overlap). chunk: photos per chunk, or the list
        of chunk sizes. The first chunk is submitted at once, before the first ``next``."""
        sizes = chunk if isinstance(chunk, list) else chunk_sizes(len(sources), chunk, chunk)
        starts = np.cumsum([0, *sizes])
        batches = [sources[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True) if b > a]
        return self._chunks(batches, self._submit(batches[0]) if batches else {})

    def _chunks(self, batches: list[list[Source]], pending: dict) -> Iterator[list[dict]]:
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

    def _collect(self, sources: list[Source], futures: dict | None) -> list[dict]:
        results: list[dict | None] = [None] * len(sources)
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

    def _isolated(self, source: Source) -> dict:
        try:
            fut = self._pool().submit(detect_one, source)
            return fut.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            self._kill()
            reason, detail = TIMEOUT, f"decoding or detection took over {self.timeout_s:.0f} s"
        except cf.process.BrokenProcessPool:
            self._kill()
            reason, detail = WORKER_CRASHED, "the decoder crashed on this file (corrupt image?)"
        key = stat_key(source.path)
        return {"path": source.path, "person": source.person, "metadata": source.metadata,
                "size_bytes": key[0] if key else None, "mtime_ns": key[1] if key else None,
                "sha256": None, "status": reason, "detail": detail, "faces": []}

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


