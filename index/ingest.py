"""Ingest: photos → faces in a gallery, resumable, idempotent, in small stages.

Stages (each a small unit, clip-retrieval's shape): **reader** (expands the inputs, skips photos
already in the gallery), **detector** (:mod:`~skullsearch.index.detect_stage`; worker processes:
read bytes, hash, decode, detect 68 landmarks and make each face's photo fingerprint and person
descriptor, each photo a typed ``PhotoRecord``; a corrupt, hanging or crashing photo becomes a
recorded failure), **encoder** (:class:`Fitter`: the batched fit in torch, then the soft-tissue
points; a :class:`FittedChunk`), **near-duplicates** and **writer** (:class:`Writer`: each new
face searched against the gallery's photo fingerprints, person descriptors and code index and
the shard's earlier faces, a close one recorded with the criterion that fired, the face kept;
then one shard per chunk of photos, committed atomically; the FAISS indexes are extended at the
end). One runner (:func:`ingest`) composes them over chunks; ``engine="local"`` runs the detector
stage on a process pool, ``engine="ray"`` on Ray Data, both called alike.

Kill it at any moment and run it again: committed shards are kept, the chunk that was being
written is done again, nothing twice (photos are keyed by the sha256 of their bytes).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.descriptors import DIM as DESCRIPTOR_DIM
from skullsearch.encoder.descriptors import PERSON_DISTANCE
from skullsearch.encoder.images import IMAGE_EXTS
from skullsearch.index import schema, store
from skullsearch.index.detect_stage import (  # noqa: F401 - the detector stage's names, re-exported
    TIMEOUT,
    WORKER_CRASHED,
    FaceRecord,
    LocalDetectStage,
    PhotoRecord,
    Source,
    chunk_sizes,
    detect_one,
    init_worker,
    stat_key,
)
from skullsearch.index.fingerprint import DIM as FP_DIM
from skullsearch.index.near_duplicates import CRITERIA, IDENTITY, PERSON, PHOTO  # noqa: F401 - re-exported

TABLE_EXTS = {".parquet", ".csv"}
LIST_EXTS = {".txt", ".lst"}


@dataclass
class IngestReport:
    """What an ingest did: counts, failures by reason, seconds."""

    images_seen: int = 0
    images_skipped: int = 0
    images_new: int = 0
    faces: int = 0
    failures: dict = field(default_factory=dict)
    shards: int = 0
    seconds: float = 0.0
    duplicates: int = 0  # the same bytes twice in this run (kept once)
    near_duplicates: int = 0  # faces flagged near an earlier face (kept, flagged)
    near_duplicate_photos: int = 0  # of those, flagged by the photo criterion (same picture)
    near_duplicate_persons: int = 0  # of those, flagged by the person criterion (a re-shot)

    @property
    def images_per_s(self) -> float:
        return self.images_new / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------- reader
def read_sources(inputs: Iterable[str | os.PathLike],
                 person_from_parent_dir: bool = False) -> Iterator[Source]:
    """Expand inputs: folders (recursive), image files, text lists (one path per line, relative
    to the list), Parquet/CSV tables with a ``path`` column (``person`` / ``person_id`` and any
    other columns become the person and metadata)."""
    from skullsearch.errors import SkullsearchError

    def person_of(p: Path) -> str | None:
        return p.parent.name if person_from_parent_dir else None

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for q in sorted(p.rglob("*")):  # a dangling link is kept: it is recorded as unreadable
                if (q.is_file() or q.is_symlink()) and q.suffix.lower() in IMAGE_EXTS:
                    yield Source(str(q), person_of(q))
        elif p.suffix.lower() in LIST_EXTS:
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    yield Source(str(q), person_of(q))
        elif p.suffix.lower() in TABLE_EXTS:
            columns, rows = _table_rows(p)
            if "path" not in columns:
                raise SkullsearchError(f"{p}: the table needs a 'path' column (it has: "
                                       f"{', '.join(columns) or 'none'})")
            for n, row in enumerate(rows, start=1):
                if row.get("path") is None:
                    raise SkullsearchError(f"{p}: row {n} has no path; give each photo's path, or "
                                           "remove the row")
                q = Path(str(row.pop("path")))
                q = q if q.is_absolute() else p.parent / q
                person = row.pop("person", None) or row.pop("person_id", None)
                yield Source(str(q), str(person) if person is not None else person_of(q),
                             {k: v for k, v in row.items() if v is not None} or None)
        else:
            yield Source(str(p), person_of(p))


def _table_rows(p: Path) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CSV or Parquet table; an empty CSV cell is None (no value),
    as a null is in Parquet."""
    if p.suffix.lower() == ".csv":
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in reader]
            return list(reader.fieldnames or []), rows
    import pyarrow.parquet as pq

    table = pq.read_table(p)
    return table.column_names, table.to_pylist()


# ---------------------------------------------------------------- encoder stage
def encode_stage(model, rows: list[PhotoRecord], config=None, rig=None, identity_prior=None):
    """Fit the faces of detected photos; returns (faces as EncodedFace list, soft (n, 36, 3),
    codes (n, 228)). identity_prior: fit each face with the shape predicted from its person
    descriptor (:mod:`skullsearch.encoder.identity_prior`)."""

    from skullsearch.encoder.encode import EncodedFace, fit_faces

    faces = []
    for r in rows:
        for k, f in enumerate(r.faces):
            faces.append(EncodedFace(
                image=r.path, sha256=r.sha256, face_index=k, box=f.box, score=f.score,
                landmarks=f.landmarks, quality=f.quality, yaw_deg=f.yaw_deg, detector=f.detector,
                image_size=(r.width, r.height), person=r.person if k == 0 else None,
                descriptor=f.descriptor,
                photo_focal=float("nan") if r.focal_px is None else float(r.focal_px),
                dense=None if f.dense is None else np.asarray(f.dense, np.float64),
                crop=f.face_crop()))
    fit_faces(model, faces, config, rig=rig, identity_prior=identity_prior)
    codes = (np.stack([f.code for f in faces]) if faces
             else np.zeros((0, code_layout.CODE_SIZE), np.float32))
    return faces, neutral_soft_tissue(model, codes), codes


def neutral_soft_tissue(model, codes: np.ndarray, batch: int = 262_144) -> np.ndarray:
    """Neutral-face soft-tissue points (n, 36, 3) mm of codes (n, 228): the identity's points,
    expression and pose removed (what a skull constrains)."""
    s = min(model.n_shape, code_layout.N_SHAPE)
    p0, basis = model.soft_tissue_basis(s)
    flat = basis.reshape(-1, s)  # (108, S)
    n = len(codes)
    soft = np.empty((n, 36, 3), np.float32)
    for a in range(0, n, batch):
        b = min(n, a + batch)
        soft[a:b] = (np.asarray(codes[a:b, :s], np.float32) @ flat.T).reshape(-1, 36, 3) + p0
    return soft


# ---------------------------------------------------------------- near-duplicate stage
#: Shape-code L2 distance under which a new face is flagged as a near-duplicate of an earlier one
#: (the ``identity`` criterion). Measured with benchmarks/near_duplicates.py (24 synthetic faces,
#: real dlib + fit): the nearest *different* face is 0.81–0.98 away (5th percentile 0.86–1.05),
#: but two photos of one face are not much closer (4° yaw apart: median 0.79–0.99; a 90 % JPEG
#: re-save: median 0.69–0.79), since the landmark-only fit's identity noise is about the spread
#: between faces. So the cut is set well below every different face: it catches copies with the
#: same pixels under other bytes (re-encoded, metadata stripped: distance ≈ 0) and the closest
#: re-shots; re-saved, resized or cropped copies are the photo criterion's job (below).
NEAR_DUPLICATE_DISTANCE = 0.4

#: Photo-fingerprint L2 distance (:mod:`skullsearch.index.fingerprint`, unit vectors) under which
#: a new face is flagged as a near-duplicate *photo* of an earlier face (the ``photo`` criterion).
#: Measured with ``benchmarks/near_duplicates.py --faces 24`` (360 photos: 24 rendered faces,
#: each with 13 copies — JPEG 95…30, resized 90…50 %, cropped 3/6 %, brightness ±10 %,
#: PNG→JPEG with EXIF, EXIF stripped — and a re-shot 4° further; real dlib + fit; ingest's rule
#: replayed in ingest order), seeds 0 / 1: a copy's distance to its original has median
#: 0.04–0.12 per kind; the nearest *different* face is 0.14 / 0.07 away at the minimum (the 0.07:
#: two bald renders of near-identical heads, lit alike), 0.15 at the 5th percentile, 0.21 median.
#: At 0.12: copies flagged 93.9 % / 92.3 % (JPEG re-saves 96–100 %, resized 88–100 %, cropped
#: 75–83 %, brightness ±10 % 75–100 %, PNG→JPEG and EXIF-stripped 96–100 %), re-shots 4 % / 0 %,
#: false flags 0 / 1. Most misses are copies on which dlib put the landmarks elsewhere (for
#: 10–20 % of the copies the alignment points moved > 5 % of the eye distance; 25–36 % of those
#: are within the threshold of their original, 86–88 % of the others). At 0.16 re-shots start
#: to be flagged, at 0.18 false flags rise to 7–8. The identity criterion alone flags 36–45 % of
#: these copies.
NEAR_DUPLICATE_PHOTO_DISTANCE = 0.12

#: Person-descriptor L2 distance under which a new face is flagged as a re-shot of an earlier
#: face's person (the ``person`` criterion): the one cut for persons,
#: :data:`skullsearch.encoder.descriptors.PERSON_DISTANCE`.
NEAR_DUPLICATE_PERSON_DISTANCE = PERSON_DISTANCE



@dataclass
class NearDuplicates:
    """The near-duplicate flags of one shard's faces, in row order (n faces).

    of: (n,) int64, the earlier face each is a near-duplicate of, −1 where none; criterion: (n,)
    object, ``"photo"`` (photo fingerprints within the photo threshold: another file of the same
    picture), ``"person"`` (person descriptors within the person threshold: a re-shot of the same
    person, and not a photo match), ``"identity"`` (shape codes within the identity threshold,
    and neither of the others), None where not flagged; distance: (n,) float32, the pair's
    shape-code L2 distance; photo_distance / person_distance: (n,) float32, the pair's
    photo-fingerprint / person-descriptor L2 distance (NaN where either face has none). All
    distances are given whichever criterion fired; NaN where not flagged.
    """

    of: np.ndarray
    criterion: np.ndarray
    distance: np.ndarray
    photo_distance: np.ndarray
    person_distance: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.of)

    @property
    def count(self) -> int:
        return int((self.of >= 0).sum())

    def by(self, criterion: str) -> int:
        return int(sum(1 for c in self.criterion if c == criterion))


def _nearest_earlier(found_d2: np.ndarray, found_ids: np.ndarray, vecs: np.ndarray, shard: int,
                     valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combine a gallery search (squared distances (n,), ids (n,), inf / −1 where none) with the
    faces before each one in this shard (vecs (n, d) float; valid (n,) bool: rows that take
    part). Returns (squared distances (n,), ids (n,))."""
    n = len(vecs)
    best, of = found_d2.astype(np.float64).copy(), found_ids.copy()
    v = np.where(valid[:, None], np.asarray(vecs, np.float64), 0.0)
    sq = (v**2).sum(1)
    pair = sq[:, None] + sq[None, :] - 2 * v @ v.T  # (n, n) squared
    pair[np.triu_indices(n)] = np.inf  # only faces before it in the shard
    pair[~valid, :] = np.inf
    pair[:, ~valid] = np.inf
    j = pair.argmin(1)
    dj = pair[np.arange(n), j]
    closer = dj < best
    best[closer], of[closer] = dj[closer], store.face_id(shard, j[closer])
    best[~valid] = np.inf
    of[~valid] = -1
    return np.maximum(best, 0.0), of


def _flag_nearest(gallery, name: str, queries: np.ndarray, vecs: np.ndarray, valid: np.ndarray,
                  shard: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The nearest earlier face of each new face under one criterion, when closer than
    ``threshold``: the gallery's (one batched :meth:`Gallery.near_search` of ``name`` with the
    valid rows of ``queries``) and those before it in this shard (``vecs`` (n, d), the vectors
    that search compares). Rows not ``valid`` are never flagged. Returns (face ids (n,) int64, −1
    where none; L2 distances (n,) float32, NaN where none); threshold ≤ 0 flags nothing."""
    n = len(vecs)
    of = np.full(n, -1, np.int64)
    dist = np.full(n, np.nan, np.float32)
    if n == 0 or not threshold or threshold <= 0 or not valid.any():
        return of, dist
    d2 = np.full(n, np.inf)
    ids = np.full(n, -1, np.int64)
    found_d2, found_ids = gallery.near_search(name, queries[valid])
    if found_d2.shape[1]:
        rows = np.flatnonzero(valid)
        hit = found_ids[:, 0] >= 0
        d2[rows[hit]], ids[rows[hit]] = found_d2[hit, 0], found_ids[hit, 0]
    best, near = _nearest_earlier(d2, ids, vecs, shard, valid)
    keep = best <= threshold**2
    of[keep] = near[keep]
    dist[keep] = np.sqrt(best[keep])
    return of, dist


def flag_near_duplicates(gallery, codes: np.ndarray, shard: int,
                         threshold: float = NEAR_DUPLICATE_DISTANCE) -> tuple[np.ndarray, np.ndarray]:
    """The identity criterion: the nearest earlier face of each new face, when closer in
    identity than ``threshold``.

    codes (n, 228): the faces of shard ``shard`` (about to be written), in row order. Earlier
    faces are those of the gallery (one batched search, :meth:`Gallery.near_search`: the exact
    code index, or an IVF index beyond ``vectors.NEAR_EXACT_LIMIT`` faces) and those before it
    in this shard. Returns (face ids (n,) int64, −1 where none; shape-code L2 distances (n,)
    float32, NaN where none). threshold ≤ 0 flags nothing.
    """
    from skullsearch.index import vectors

    codes = np.asarray(codes)
    return _flag_nearest(gallery, "codes", codes, vectors.shape_vectors(codes), np.ones(len(codes), bool),
                         shard, threshold)


def flag_photo_duplicates(gallery, fingerprints: np.ndarray, shard: int,
                          threshold: float = NEAR_DUPLICATE_PHOTO_DISTANCE) -> tuple[np.ndarray, np.ndarray]:
    """The photo criterion: the nearest earlier face of each new face by photo fingerprint, when
    closer than ``threshold``.

    fingerprints (n, 63) float32 (:mod:`~skullsearch.index.fingerprint`; a NaN row: none, never
    flagged): the faces of shard ``shard`` in row order. Earlier faces: the gallery's faces with
    a fingerprint (:meth:`Gallery.near_search`, one batched search: exact, or an IVF index beyond
    ``vectors.NEAR_EXACT_LIMIT`` fingerprints) and those before it in this shard.
    Returns (face ids (n,) int64, −1 where none; fingerprint L2 distances (n,)
    float32, NaN where none). threshold ≤ 0 flags nothing.
    """
    fps = np.asarray(fingerprints, np.float32).reshape(-1, FP_DIM)
    return _flag_nearest(gallery, "photos", fps, np.nan_to_num(fps), ~np.isnan(fps).any(1), shard, threshold)


def flag_person_duplicates(gallery, descs: np.ndarray, shard: int,
                           threshold: float = NEAR_DUPLICATE_PERSON_DISTANCE
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The person criterion: the nearest earlier face of each new face by person descriptor, when
    closer than ``threshold`` (a re-shot of the same person).

    descs (n, 128) float32 (:mod:`~skullsearch.encoder.descriptors`; a NaN row: none, never
    flagged): the faces of shard ``shard`` in row order; earlier faces as for
    :func:`flag_photo_duplicates`. Returns (face ids (n,) int64, −1 where none; descriptor L2
    distances (n,) float32, NaN where none). threshold ≤ 0 flags nothing.
    """
    d = np.asarray(descs, np.float32).reshape(-1, DESCRIPTOR_DIM)
    return _flag_nearest(gallery, "persons", d, np.nan_to_num(d), ~np.isnan(d).any(1), shard, threshold)


def _pair_distance(gallery, name: str, vecs: np.ndarray, flagged: np.ndarray, other: np.ndarray,
                   shard: int) -> np.ndarray:
    """L2 distances (m,) between the flagged faces' vectors (rows ``flagged`` of this shard's
    ``vecs`` (n, d)) and those of the faces they were flagged against (``other`` (m,) face ids,
    in this shard or the gallery's): NaN where either has none (then nothing is looked up: a
    shard ingested without descriptors reads no gallery descriptors)."""
    if np.isnan(vecs[flagged]).all():
        return np.full(len(flagged), np.nan)
    crit = gallery.near.criterion(name)
    own_vecs = crit.prepare(vecs)  # (n, d): the criterion's vectors (shape vectors of codes)
    other_shard, rows = store.split_id(other)
    own = other_shard == shard
    o = np.full((len(other), own_vecs.shape[1]), np.nan, np.float32)
    o[own] = own_vecs[rows[own]]
    if (~own).any():
        o[~own] = crit.values(other[~own])
    return np.linalg.norm(own_vecs[flagged].astype(np.float64) - o, axis=1)


def near_duplicate_stage(gallery, codes: np.ndarray, fingerprints: np.ndarray, shard: int,
                         distance: float = NEAR_DUPLICATE_DISTANCE,
                         photo_distance: float = NEAR_DUPLICATE_PHOTO_DISTANCE,
                         descs: np.ndarray | None = None,
                         person_distance: float = NEAR_DUPLICATE_PERSON_DISTANCE) -> NearDuplicates:
    """Flag each new face of shard ``shard`` that is a near-duplicate of an earlier face: the
    photo criterion first (:func:`flag_photo_duplicates`), then the person criterion
    (:func:`flag_person_duplicates`), else the identity criterion (:func:`flag_near_duplicates`);
    every distance of each flagged pair is recorded.

    codes (n, 228), fingerprints (n, 63), descs (n, 128) (NaN rows: none; None: no face has one):
    the shard's faces in row order. A threshold ≤ 0 turns its criterion off.
    """
    n = len(codes)
    fps = np.asarray(fingerprints, np.float32).reshape(n, FP_DIM)
    descs = (np.full((n, DESCRIPTOR_DIM), np.nan, np.float32) if descs is None
             else np.asarray(descs, np.float32).reshape(n, DESCRIPTOR_DIM))
    p_of, _ = flag_photo_duplicates(gallery, fps, shard, photo_distance)
    s_of, _ = flag_person_duplicates(gallery, descs, shard, person_distance)
    i_of, _ = flag_near_duplicates(gallery, codes, shard, distance)
    of = np.where(p_of >= 0, p_of, np.where(s_of >= 0, s_of, i_of))
    criterion = np.array([PHOTO if p >= 0 else PERSON if s >= 0 else IDENTITY if i >= 0 else None
                          for p, s, i in zip(p_of, s_of, i_of, strict=True)], dtype=object)
    out = {name: np.full(n, np.nan, np.float32) for name in ("codes", "photos", "persons")}
    flagged = np.flatnonzero(of >= 0)
    if len(flagged):
        for name, vecs in (("codes", np.asarray(codes, np.float32)), ("photos", fps), ("persons", descs)):
            out[name][flagged] = _pair_distance(gallery, name, vecs, flagged, of[flagged], shard)
    return NearDuplicates(of, criterion, out["codes"], out["photos"], out["persons"])


def face_vectors(rows: list[PhotoRecord], key: str, dim: int) -> np.ndarray:
    """One per-face vector of detected photos (``fingerprint``: (n, 63); ``descriptor``: (n, 128))
    as float32, in the order :func:`encode_stage` lists the faces; NaN rows where a face has
    none. Rounded to float16, as the catalog stores them (a face is compared alike with this
    shard's faces and with the gallery's)."""
    out = [getattr(f, key) for r in rows for f in r.faces]
    arr = np.full((len(out), dim), np.nan, np.float32)
    for i, f in enumerate(out):
        if f is not None and len(f) == dim:
            arr[i] = f
    return arr.astype(np.float16).astype(np.float32)


def face_fingerprints(rows: list[PhotoRecord]) -> np.ndarray:
    """The photo fingerprints (n, 63) of the faces of detected photos (:func:`face_vectors`)."""
    return face_vectors(rows, "fingerprint", FP_DIM)


# ---------------------------------------------------------------- writer stage
def write_shard(gallery, number: int, rows: list[PhotoRecord], faces, soft, codes, encoder_fp: str,
                near_duplicates: NearDuplicates | None = None, fingerprints: np.ndarray | None = None,
                descs: np.ndarray | None = None):
    """Commit one shard: image rows (all, failures included) and face rows.
    near_duplicates: the flags of :func:`near_duplicate_stage`; fingerprints: (n, 63) photo
    fingerprints of the faces, descs: (n, 128) person descriptors (NaN rows: none)."""
    t = store.now()
    image_ids = store.face_id(number, np.arange(len(rows)))
    by_path = {r.path: i for i, r in enumerate(rows)}
    image_rows = [{
        "image_id": int(image_ids[i]), "path": r.path, "sha256": r.sha256,
        "size_bytes": r.size_bytes, "mtime_ns": r.mtime_ns, "status": r.status,
        "detail": r.detail, "faces": len(r.faces) if r.ok else 0,
        "person": r.person, "time": t} for i, r in enumerate(rows)]
    n = len(faces)
    meta = {r.path: json.dumps(r.metadata, default=str) if r.metadata else None for r in rows}
    photo_focal = np.array([f.photo_focal for f in faces], np.float32)
    cols = {
        "face_id": store.face_id(number, np.arange(n)),
        "image_id": [int(image_ids[by_path[f.image]]) for f in faces],
        "path": [f.image for f in faces], "sha256": [f.sha256 for f in faces],
        "person": [f.person if f.face_index == 0 else None for f in faces],
        "face_index": [f.face_index for f in faces],
        "box": np.array([f.box for f in faces], np.float32).reshape(n, 4) if n else np.zeros((0, 4)),
        "score": [f.score for f in faces],
        "landmarks": np.array([f.landmarks for f in faces], np.float32).reshape(n, 136) if n
        else np.zeros((0, 136)),
        "residual_px": [f.residual_px for f in faces], "quality": [",".join(f.quality) for f in faces],
        "yaw_deg": [f.yaw_deg for f in faces], "detector": [f.detector for f in faces],
        "image_width": [f.image_size[0] for f in faces], "image_height": [f.image_size[1] for f in faces],
        "model_fingerprint": [gallery.manifest["face_model"]["fingerprint"]] * n,
        "encoder_fingerprint": [encoder_fp] * n, "time": [t] * n,
        "metadata": [meta[f.image] for f in faces],
        # (what a refit from the stored landmarks fits with, as the ingest did: persons --refit)
        "photo_focal_px": pa_masked(photo_focal, ~np.isfinite(photo_focal)),
    }
    if near_duplicates is not None and n:
        nd = near_duplicates
        flagged = nd.of >= 0
        cols["near_duplicate_of"] = pa_masked(nd.of, ~flagged)
        cols["near_duplicate_distance"] = pa_masked(nd.distance, ~flagged | np.isnan(nd.distance))
        cols["near_duplicate_photo_distance"] = pa_masked(nd.photo_distance,
                                                          ~flagged | np.isnan(nd.photo_distance))
        if nd.person_distance is not None:
            cols["near_duplicate_person_distance"] = pa_masked(
                nd.person_distance, ~flagged | np.isnan(nd.person_distance))
        cols["near_duplicate_criterion"] = list(nd.criterion)
    if fingerprints is not None and n:
        cols["photo_fingerprint"] = np.asarray(fingerprints, np.float32).reshape(n, FP_DIM)
    if descs is not None and n:
        cols["descriptor"] = np.asarray(descs, np.float32).reshape(n, DESCRIPTOR_DIM)
    extra = {}
    if n and all(f.tissue_cov is not None for f in faces):  # the fit's uncertainty
        extra["tissue_cov.npy"] = store.pack_covariance(np.stack([f.tissue_cov for f in faces]))
    writer = store.ShardWriter(gallery.path, number)
    try:
        return writer.commit(schema.faces_table(cols), schema.images_table(image_rows), soft, codes,
                             extra=extra)
    except BaseException:
        writer.abort()
        raise


def pa_masked(values: np.ndarray, null: np.ndarray):
    """A pyarrow array of values (n,) with nulls where null (n,) bool is set."""
    import pyarrow as pa

    return pa.array(values, mask=np.asarray(null, bool))


def _without_off(settings: dict, later: dict) -> dict:
    """``settings`` without those of the ``later``-added keys (a dict: key → its "off" value) that
    are off: a setting added off leaves the codes of the versions before it, and so their
    fingerprint, as they were."""
    return {k: v for k, v in settings.items() if k not in later or v != later[k]}


#: the version of the refinement's feature mask (``PhotometricConfig.skip_features``): 2 places the
#: brows and lips by the face model's source annotation (:func:`~skullsearch.encoder.render.
#: anatomical_landmarks`); 1, the first (not in the fingerprint: its galleries' faces keep
#: 730ab933b893d01f), placed them by the dlib-calibrated embedding, about 6 mm under the brows.
FEATURE_MASK_VERSION = 2


#: the version of dlib's jaw-line calibration (``FitConfig.jaw_calibration``,
#: :func:`~skullsearch.encoder.calibrate.calibrate_jaw`) in the encoder fingerprint: 1, the first
#: (800 textured renders of the default model, seed 0; off: the fingerprint of earlier versions)
JAW_CALIBRATION_VERSION = 1

#: the version of dlib's measured point scatter (``FitConfig.landmark_weights``, measured by
#: :func:`~skullsearch.encoder.calibrate.calibrate_jaw` on the same renders) in the fingerprint
LANDMARK_WEIGHTS_VERSION = 1


def encoder_fingerprint(config, detector: str, identity_prior=None) -> str:
    """What made a face's code: the fit's settings, the detector and the identity prior (the
    hash of its weights; none: the fingerprint of earlier versions)."""
    from skullsearch.encoder.fitting import FitConfig

    cfg = asdict(config or FitConfig())
    cfg["dtype"] = str(cfg["dtype"])
    for k in ("posterior", "landmark_noise", "photo_correlation"):  # the codes do not depend on them
        cfg.pop(k)
    cfg["device"] = None  # the same fit on a GPU or the CPU (as in the versions before it said so)
    cfg = _without_off(cfg, {"w_dense": 0.0, "pose_embedding": False, "photometric": False,
                             "textured_embedding": False, "exif_focal": False,
                             "jaw_calibration": False, "landmark_weights": False})
    from skullsearch.encoder.embeddings import SURFACE_CONTOUR

    # which calibration moved dlib's jaw line, and which measurement weighed its points (none
    # for a detector whose contour is on the surface: its codes as before)
    for key, version in (("jaw_calibration", JAW_CALIBRATION_VERSION),
                         ("landmark_weights", LANDMARK_WEIGHTS_VERSION)):
        if cfg.get(key):
            if detector in SURFACE_CONTOUR:
                cfg.pop(key)
            else:
                cfg[key] = version
    what = {"fit": cfg, "detector": detector}
    if cfg.get("photometric"):  # its settings make the codes too
        from skullsearch.encoder.photometric import PhotometricConfig

        what["photometric"] = _without_off(asdict(PhotometricConfig()),
                                           {"landmark_cauchy": 0.0, "skip_features": False,
                                            "feature_albedo": False, "feature_landmark_weight": 1.0,
                                            "photo_gamma": 1.0, "cast_shadows": False,
                                            "specular": 0.0, "shadow_confirm": False,
                                            "shadow_spread": 0.0, "landmark_weights": True})
        if not cfg.get("landmark_weights"):  # (the refinement weighs the points only as the fit does)
            what["photometric"].pop("landmark_weights", None)
        what["photometric"].pop("skip_parts")  # all the features, as before the choice existed
        what["photometric"].pop("posterior_discount")  # the codes do not depend on it
        if what["photometric"].get("skip_features"):  # the features' mask, by the source's annotation
            what["photometric"]["feature_mask"] = FEATURE_MASK_VERSION
    if identity_prior is not None:
        weights = np.ascontiguousarray(identity_prior.weights).tobytes()
        what["identity_prior"] = hashlib.sha256(weights).hexdigest()
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- runner
def ingest(
    gallery,
    inputs: Iterable[str | os.PathLike],
    *,
    face_model=None,
    detector: str = "dlib",
    workers: int | None = None,
    chunk_images: int = 256,
    first_chunk: int = 64,
    config=None,
    person_from_parent_dir: bool = False,
    engine: str = "local",
    progress: Callable[[dict], None] | None = None,
    timeout_s: float = 120.0,
    index_every_s: float = 120.0,
    near_duplicate_distance: float = NEAR_DUPLICATE_DISTANCE,
    near_duplicate_photo_distance: float = NEAR_DUPLICATE_PHOTO_DISTANCE,
    near_duplicate_person_distance: float = NEAR_DUPLICATE_PERSON_DISTANCE,
    descriptors: bool = True,
    identity_prior=None,
    uncertainty: bool = False,
    photometric: bool = False,
) -> IngestReport:
    """Add photos to a gallery; see the module docstring.

    face_model: refused unless it is the gallery's own; workers: detector processes (default:
    CPU count); chunk_images: photos per shard (the local engine starts with ``first_chunk`` and
    doubles up to it, see :func:`chunk_sizes`); engine: "local" or "ray"; progress: called with a
    dict of counters after every shard; index_every_s: save the FAISS indexes at least this often;
    near_duplicate_distance: flag faces this close in identity to an earlier face (shape-code L2,
    :func:`flag_near_duplicates`; 0 turns it off); near_duplicate_photo_distance: flag faces whose
    photo fingerprint is this close to an earlier face's (another file of the same picture,
    :func:`flag_photo_duplicates`; 0 turns it off); near_duplicate_person_distance: flag faces
    whose person descriptor is this close to an earlier face's (a re-shot of the person,
    :func:`flag_person_duplicates`; 0 turns it off). See :func:`near_duplicate_stage`.
    descriptors: compute each face's person descriptor in the detector workers (dlib's
    128-d face recognition vector; ``similar`` and ``persons`` use it; False saves its time).
    identity_prior: True (the model's packaged one), a file or an IdentityPrior: fit each face
    with the shape predicted from its descriptor (:mod:`skullsearch.encoder.identity_prior`;
    learned on renders, not applied to descriptors outside its domain, such as real photos'),
    recorded in the faces' ``encoder_fingerprint``.
    uncertainty: keep each face's posterior covariance of its soft-tissue points
    (``FitConfig(posterior=True)``; 432 bytes a face in ``tissue_cov.npy``) for queries with
    ``uncertainty=True``.
    photometric: refine each fit with the photo's shading (``FitConfig(photometric=True)``,
    :mod:`skullsearch.encoder.photometric`): the detector workers keep a small crop of the photo
    around each face for the fit (not stored); about 1 s per face on one core; recorded in the
    faces' ``encoder_fingerprint``.
    """
    if face_model is not None:
        gallery.check_model(face_model)
    from skullsearch.encoder.detectors import get_detector

    get_detector(detector)  # an unknown name or a missing install says so here, not per photo
    model = gallery.face_model
    t0 = time.perf_counter()
    report = IngestReport()
    workers = workers or os.cpu_count() or 1
    prior = _identity_prior(model, identity_prior, descriptors)
    cuts = _Cuts(near_duplicate_distance, near_duplicate_photo_distance,
                 near_duplicate_person_distance if descriptors else 0)
    with store.WriteLock(gallery.path):
        store.remove_uncommitted(gallery.path)
        sources, known = _pending_sources(gallery, inputs, person_from_parent_dir, report)
        from skullsearch.encoder.fitting import FitConfig, config_rig

        cfg = config or FitConfig()
        if uncertainty and not cfg.posterior:
            cfg = replace(cfg, posterior=True)
        if photometric and not cfg.photometric:
            cfg = replace(cfg, photometric=True)
        stage = make_detect_stage(engine, workers, known, detector, timeout_s, descriptors, cfg.photometric)
        import torch

        threads = torch.get_num_threads()
        seen_sha = set(known)
        saved_at = time.monotonic()
        try:
            # small chunks first, so that fitting starts while the detectors go on
            sizes = chunk_sizes(len(sources), chunk_images, first_chunk)
            starts = np.cumsum([0, *sizes])[:-1]
            chunks = stage.iter_chunks(sources, sizes)
            # built while the detectors work on the first chunk
            fitter = Fitter(model, cfg, config_rig(model, cfg, detector, device="cpu"),
                            prior, encoder_fingerprint(cfg, detector, prior))
            writer = Writer(gallery, cuts, report)
            _warm_up(gallery, *cuts)
            # the fit shares the CPU with the detector processes: leave them their cores (torch's
            # threads spin while they wait: on a busy CPU two threads cost several times the CPU
            # of one for these small batched ops)
            if stage.cpu_share:
                torch.set_num_threads(max(1, (os.cpu_count() or 1) - stage.cpu_share))
            for a, rows in zip(starts, chunks, strict=True):
                fresh = _fresh_rows(rows, seen_sha, report)
                if not fresh:
                    continue
                writer(fitter(fresh), fitter.fingerprint)
                report.seconds = time.perf_counter() - t0
                if time.monotonic() - saved_at > index_every_s:  # bound what a crash leaves unsaved
                    gallery.save_indexes()
                    saved_at = time.monotonic()
                if progress:
                    progress({"done": int(a) + len(rows), "total": len(sources), **asdict(report)})
        finally:
            stage.close()
            torch.set_num_threads(threads)
        if report.shards:
            gallery.save_indexes()
    report.seconds = time.perf_counter() - t0
    return report


@dataclass
class _Cuts:
    """The near-duplicate criteria's thresholds (0: off)."""

    identity: float
    photo: float
    person: float

    def __iter__(self):
        return iter((self.identity, self.photo, self.person))


@dataclass
class FittedChunk:
    """One chunk after the encoder stage, what the writer commits as one shard: rows — every
    fresh photo's record, failures included; faces — the fitted faces of its ``ok`` photos
    (EncodedFace, in photo order); soft (n, 36, 3) mm and codes (n, 228); fingerprints (n, 63)
    and descriptors (n, 128) float32 (NaN rows: none)."""

    rows: list[PhotoRecord]
    faces: list
    soft: np.ndarray
    codes: np.ndarray
    fingerprints: np.ndarray
    descriptors: np.ndarray


@dataclass
class Fitter:
    """The encoder stage: the model, the fit's settings and rig, the identity prior (or None) and
    the encoder fingerprint the faces record; called on a chunk's fresh photo records."""

    model: object
    config: object
    rig: object
    prior: object
    fingerprint: str

    def __call__(self, fresh: list[PhotoRecord]) -> FittedChunk:
        ok = [r for r in fresh if r.ok]
        faces, soft, codes = encode_stage(self.model, ok, self.config, self.rig, self.prior)
        return FittedChunk(fresh, faces, soft, codes, face_fingerprints(ok),
                           face_vectors(ok, "descriptor", DESCRIPTOR_DIM))


@dataclass
class Writer:
    """The near-duplicate and writer stages: each chunk flagged against the gallery
    (:func:`near_duplicate_stage`, thresholds ``cuts``) and committed as the next shard
    (:func:`write_shard`); counts go to ``report``."""

    gallery: object
    cuts: _Cuts
    report: IngestReport

    def __call__(self, chunk: FittedChunk, encoder_fp: str) -> int:
        gallery, cuts, report = self.gallery, self.cuts, self.report
        number = store.next_shard_number(gallery.path)
        dup = near_duplicate_stage(gallery, chunk.codes, chunk.fingerprints, number, cuts.identity,
                                   cuts.photo, chunk.descriptors, cuts.person)
        write_shard(gallery, number, chunk.rows, chunk.faces, chunk.soft, chunk.codes, encoder_fp,
                    near_duplicates=dup, fingerprints=chunk.fingerprints, descs=chunk.descriptors)
        report.near_duplicates += dup.count
        report.near_duplicate_photos += dup.by(PHOTO)
        report.near_duplicate_persons += dup.by(PERSON)
        report.shards += 1
        report.images_new += len(chunk.rows)
        report.faces += len(chunk.faces)
        for r in chunk.rows:
            if not r.ok:
                report.failures[r.status] = report.failures.get(r.status, 0) + 1
        return number


def _identity_prior(model, identity_prior, descriptors: bool):
    """The identity prior to fit with (None when not asked for): True → the model's packaged one,
    a file, or an IdentityPrior. Refused without descriptors."""
    if not identity_prior:
        return None
    from skullsearch.encoder import identity_prior as ip

    if not descriptors:
        from skullsearch.errors import SkullsearchError

        raise SkullsearchError("the identity prior predicts each face's shape from its person "
                               "descriptor: ingest with descriptors (drop --no-descriptors)")
    if isinstance(identity_prior, ip.IdentityPrior):
        return identity_prior
    return ip.for_model(model, None if identity_prior is True else identity_prior)


def _pending_sources(gallery, inputs, person_from_parent_dir: bool, report: IngestReport):
    """(the sources not yet ingested — by path, size and mtime —, the sha256 of every photo the
    gallery has seen). Counts what was seen and skipped in ``report``."""
    done_stat, known = set(), frozenset()
    if gallery.shards():  # (a new gallery: no catalog to read)
        con = gallery.connect()
        done_stat = {(p, s, m) for p, s, m in con.execute(
            "SELECT path, size_bytes, mtime_ns FROM images").fetchall()}
        known = frozenset(h for (h,) in con.execute(
            "SELECT sha256 FROM images WHERE sha256 IS NOT NULL").fetchall())
    sources = []
    for src in read_sources(inputs, person_from_parent_dir):
        report.images_seen += 1
        key = stat_key(src.path)
        if key is not None and (src.path, *key) in done_stat:
            report.images_skipped += 1
            continue
        sources.append(src)
    return sources, known


def _fresh_rows(rows: list[PhotoRecord], seen_sha: set, report: IngestReport) -> list[PhotoRecord]:
    """The detected photos not seen before (by content): known photos are skipped, copies
    within this run counted as duplicates; ``seen_sha`` grows."""
    fresh = []
    for r in rows:
        if r.status == "known" or (r.sha256 and r.sha256 in seen_sha):
            report.duplicates += r.status != "known"
            report.images_skipped += r.status == "known"
            continue
        if r.sha256:
            seen_sha.add(r.sha256)
        fresh.append(r)
    return fresh


def _warm_up(gallery, near_duplicate_distance: float, near_duplicate_photo_distance: float = 0,
             near_duplicate_person_distance: float = 0) -> None:
    """Pay the fit's and the writer's one-time costs while the detectors work on the first chunk,
    instead of after it: scipy's Delaunay (~1 s of CPU to import), pyarrow's first conversions
    (they import pandas), the indexes of the near-duplicate searches (:meth:`Gallery.near_search`)."""
    import pyarrow.parquet  # noqa: F401
    import scipy.spatial  # noqa: F401

    schema.faces_table({"face_id": np.zeros(0, np.int64)})
    if near_duplicate_distance and near_duplicate_distance > 0:
        gallery.near_search("codes", np.zeros((0, code_layout.CODE_SIZE), np.float32))
    if near_duplicate_photo_distance and near_duplicate_photo_distance > 0:
        gallery.near_search("photos", np.zeros((0, FP_DIM), np.float32))
    if near_duplicate_person_distance and near_duplicate_person_distance > 0:
        gallery.near_search("persons", np.zeros((0, DESCRIPTOR_DIM), np.float32))


def make_detect_stage(engine: str, workers: int, known: frozenset, detector: str, timeout_s: float,
                      descriptors: bool = True, crops: bool = False):
    from skullsearch.errors import SkullsearchError

    if engine == "local":
        return LocalDetectStage(workers, known, detector, timeout_s, descriptors, crops)
    if engine == "ray":
        from skullsearch.index.ray_engine import RayDetectStage

        return RayDetectStage(workers, known, detector, timeout_s, descriptors=descriptors, crops=crops)
    raise SkullsearchError(f"unknown engine {engine!r}: use local or ray")
