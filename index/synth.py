"""Synthetic galleries: faces drawn from the model's prior, written through the real storage path.

No photos: codes come from the prior (shape ~ N(0, σ) on 90 components, neutral expression,
plausible cameras), the soft-tissue points and shortlist vectors are computed exactly as for
ingested faces, paths are ``synth://SEED/NNNNNNNN.jpg`` and persons group 1–3 faces. Used to
build million-face galleries for the query benchmarks, and for tests.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from skullsearch.encoder import code as code_layout
from skullsearch.index import schema, store
from skullsearch.index.ingest import IngestReport, neutral_soft_tissue


def synth_codes(model, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 228) codes from the prior: identity only, cameras 0.5–0.9 m in front, yaw ±30°."""
    s = min(model.n_shape, code_layout.N_SHAPE)
    shape = rng.standard_normal((n, s), dtype=np.float32) * model.shape_std[:s]
    rot = np.zeros((n, 3), np.float32)
    rot[:, 1] = np.deg2rad(rng.uniform(-30, 30, n)).astype(np.float32)
    trans = np.stack([np.zeros(n), np.full(n, -30.0), rng.uniform(500, 900, n)], 1).astype(np.float32)
    return code_layout.pack(shape=shape, cam_rot=rot, cam_trans=trans)


def write_synthetic_shard(gallery, number: int, codes: np.ndarray, paths: list[str], persons: list[str],
                          fingerprints: np.ndarray | None = None,
                          descriptors: np.ndarray | None = None) -> np.ndarray:
    """Commit shard ``number`` of photo-less faces (the caller holds the gallery's write lock):
    codes (n, 228), one path and person per face, optional photo fingerprints (n, 63) and person
    descriptors (n, 128) (stored as ingest stores them). Returns the face ids (n,) int64."""
    return write_code_shard(gallery, number, codes, paths, persons, fingerprints=fingerprints,
                            descriptors=descriptors)


def write_code_shard(gallery, number: int, codes: np.ndarray, paths: list[str], persons: list,
                     *, detector: str = "synth", encoder_fingerprint: str = "synth",
                     metadata: list[str | None] | None = None, residual_px: np.ndarray | None = None,
                     fingerprints: np.ndarray | None = None, descriptors: np.ndarray | None = None,
                     tissue_cov: np.ndarray | None = None) -> np.ndarray:
    """Commit shard ``number`` of faces given by their codes, not fitted here (synthetic faces,
    person refits; the caller holds the gallery's write lock): codes (n, 228), one path and
    person per face; detector and encoder_fingerprint: what made the codes; metadata: one JSON
    text (or None) per face; residual_px (n,); photo fingerprints (n, 63), person descriptors
    (n, 128) (NaN rows: none) and soft-tissue covariances (n, 36, 3, 3) mm² where known.
    Returns the face ids (n,) int64."""
    n = len(codes)
    model_fp = gallery.manifest["face_model"]["fingerprint"]
    soft = neutral_soft_tissue(gallery.face_model, codes)
    ids = store.face_id(number, np.arange(n))
    sha = [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    t = store.now()
    cols = {
        "face_id": ids, "image_id": ids, "path": paths, "sha256": sha, "person": persons,
        "face_index": np.zeros(n, np.int16), "box": None,
        "score": np.ones(n, np.float32), "landmarks": None,
        "residual_px": np.asarray(np.zeros(n) if residual_px is None else residual_px, np.float32),
        "quality": [""] * n,
        "yaw_deg": np.rad2deg(codes[:, code_layout.SLICES["cam_rot"]][:, 1]),
        "detector": [detector] * n, "image_width": np.zeros(n, np.int32),
        "image_height": np.zeros(n, np.int32), "model_fingerprint": [model_fp] * n,
        "encoder_fingerprint": [encoder_fingerprint] * n, "time": [t] * n, "metadata": metadata,
    }
    if fingerprints is not None:
        cols["photo_fingerprint"] = np.asarray(fingerprints, np.float32)
    if descriptors is not None:
        cols["descriptor"] = np.asarray(descriptors, np.float32)
    faces = schema.faces_table(cols)
    pa = schema.pa
    images = pa.Table.from_arrays([
        pa.array(ids), pa.array(paths), pa.array(sha), pa.nulls(n, pa.int64()), pa.nulls(n, pa.int64()),
        pa.array(["ok"] * n), pa.array([""] * n), pa.array(np.ones(n, np.int32)), pa.array(persons),
        pa.array([t] * n)], schema=schema.IMAGES)
    extra = {} if tissue_cov is None else {"tissue_cov.npy": store.pack_covariance(tissue_cov)}
    writer = store.ShardWriter(gallery.path, number)
    try:
        writer.commit(faces, images, soft, codes, extra=extra)
    except BaseException:
        writer.abort()
        raise
    return ids


def add_synthetic_faces(gallery, codes: np.ndarray, fingerprints: np.ndarray | None = None,
                        tag: str = "synth", descriptors: np.ndarray | None = None,
                        persons: list[str] | None = None) -> np.ndarray:
    """Add one shard of the given photo-less faces (codes (n, 228), optional photo fingerprints
    (n, 63) and person descriptors (n, 128)); paths ``TAG://SHARD/I.jpg``; persons: one label per
    face (default: its path). Returns their face ids (n,)."""
    with store.WriteLock(gallery.path):
        number = store.next_shard_number(gallery.path)
        paths = [f"{tag}://{number}/{i}.jpg" for i in range(len(codes))]
        return write_synthetic_shard(gallery, number, codes, paths, persons or paths, fingerprints,
                                     descriptors)


def synth(gallery, n_faces: int, seed: int = 0, shard_faces: int = 250_000,
          progress=None) -> IngestReport:
    """Add ``n_faces`` synthetic faces to a gallery; returns an :class:`IngestReport`."""
    model = gallery.face_model
    rng = np.random.default_rng(seed)
    report = IngestReport()
    t0 = time.perf_counter()
    with store.WriteLock(gallery.path):
        store.remove_uncommitted(gallery.path)
        done = 0
        while done < n_faces:
            n = min(shard_faces, n_faces - done, store.MAX_ROWS)
            number = store.next_shard_number(gallery.path)
            codes = synth_codes(model, n, rng)
            tag = f"synth://{seed}/{number:08d}/"
            paths = [f"{tag}{i:08d}.jpg" for i in range(n)]
            sizes = rng.integers(1, 4, n)  # faces per person
            person = np.repeat(np.arange(n), sizes)[:n]
            persons = [f"synth-{seed}-{number}-{p}" for p in person]
            write_synthetic_shard(gallery, number, codes, paths, persons)
            done += n
            report.shards += 1
            report.faces += n
            report.images_new += n
            if progress:
                progress({"done": done, "total": n_faces})
        gallery.save_indexes()
    report.images_seen = report.images_new
    report.seconds = time.perf_counter() - t0
    return report
