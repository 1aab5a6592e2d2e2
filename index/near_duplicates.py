"""The near-duplicate indexes of a gallery: what ingest searches each new face against.

For each criterion (``codes``: shape vectors, ``photos``: photo fingerprints, ``persons``: person
descriptors) the nearest committed face of a query: the gallery's exact searches up to
``vectors.NEAR_EXACT_LIMIT`` vectors, an IVF-Flat index of its own beyond (approximate in which
face it finds, exact in the distance it returns), saved beside the gallery's indexes
(``state.json`` keys :data:`NEAR_KEYS`) so that an ingest into a large gallery starts without
rebuilding it. :class:`NearIndexes` holds them for one :class:`~skullsearch.index.gallery.Gallery`
(``gallery.near``); ``Gallery.near_search`` / ``near_index`` are its public face.
:func:`flagged_pairs` lists the faces ingest flagged (``Gallery.near_duplicates``).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from skullsearch.encoder import code as code_layout
from skullsearch.index import store, vectors
from skullsearch.index.catalog import arrow
from skullsearch.index.indexes import SHAPE, write_index_file
from skullsearch.index.store import GalleryError, ShardInfo

PHOTO = "photo"
PERSON = "person"
IDENTITY = "identity"
#: the criteria of a flag (``near_duplicate_criterion``) in the order ingest tries them: the first
#: that fires names the flag (:func:`skullsearch.index.ingest.near_duplicate_stage`)
CRITERIA = (PHOTO, PERSON, IDENTITY)

#: the near-duplicate criteria with an index of their own, and the state.json key of each
NEAR_KEYS = {"codes": "near_codes", "photos": "near_photos", "persons": "near_persons"}


class _Near(NamedTuple):
    """A near-duplicate IVF index (:func:`~skullsearch.index.vectors.near_index`, ids = face
    ids) and the shard numbers it holds."""

    shards: list
    index: object


class _ShapeCriterion(store.GalleryPart):
    """The identity criterion's vectors: shape vectors of face codes, exactly searched in the
    gallery's shape index."""

    def __init__(self, gallery):
        super().__init__(gallery)  # (held weakly: the gallery owns this)
        self.dim = code_layout.N_SHAPE

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        """(q, 228) codes → (q, dim) float32 shape vectors."""
        return vectors.shape_vectors(np.asarray(queries, np.float32))

    def warm(self) -> None:
        self.gallery.index(SHAPE.name)

    def exact_search(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prepared queries (q, dim) → (squared L2 distances (q, 1) float64, face ids (q, 1))."""
        d2, ids = self.gallery.search_codes(q, k=1)  # (shape_vectors of shape vectors: the same)
        return d2.astype(np.float64), ids

    def count(self, shards: list[ShardInfo]) -> int:
        return sum(s.faces for s in shards)

    def shard_vectors(self, sh: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
        if not sh.faces:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return store.face_id(sh.number, np.arange(sh.faces)), SHAPE.shard_vectors(self.gallery, sh)

    def values(self, ids) -> np.ndarray:
        """Prepared vectors (n, dim) float32 of committed face ids."""
        return self.prepare(self.gallery.codes(ids))

    def drop_exact(self) -> None:
        """(the shape index serves search_codes too: it stays)"""


class _ColumnCriterion(store.GalleryPart):
    """A vector column's criterion (``photos``: photo fingerprints, ``persons``: person
    descriptors; NaN rows: none), exactly searched in the column's in-memory index."""

    def __init__(self, gallery, name: str):
        super().__init__(gallery)  # (held weakly: the gallery owns this)
        self.name = name
        self.dim = gallery._columns[name].dim

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        return np.asarray(queries, np.float32).reshape(-1, self.dim)

    def warm(self) -> None:
        self.gallery.column_index(self.name)

    def exact_search(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = self.gallery
        d, ids = g._columns[self.name].search(g.path, g.shards(), q, 1, g._gpu)
        return d.astype(np.float64) ** 2, ids

    def count(self, shards: list[ShardInfo]) -> int:
        return int(self.gallery.column_index(self.name).index.ntotal)

    def shard_vectors(self, sh: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
        return self.gallery._columns[self.name].shard_vectors(self.gallery.path, sh)

    def values(self, ids) -> np.ndarray:
        return self.gallery.column_values(self.name, ids)

    def drop_exact(self) -> None:
        """The exact column index is not needed once the IVF index exists."""
        self.gallery._columns[self.name].drop()
        self.gallery._gpu.pop(self.name, None)


class NearIndexes(store.GalleryPart):
    """A gallery's near-duplicate indexes (module docstring). lock: the gallery's lock over its
    vector-column and near-duplicate indexes (faiss indexes are not safe to search while they are
    added to); held: the IVF indexes loaded, by criterion."""

    def __init__(self, gallery, lock):
        super().__init__(gallery)  # (held weakly: the gallery owns this)
        self.lock = lock
        self.held: dict[str, _Near] = {}
        self.criteria = {"codes": _ShapeCriterion(gallery), "photos": _ColumnCriterion(gallery, "photos"),
                         "persons": _ColumnCriterion(gallery, "persons")}

    def criterion(self, name: str):
        """The criterion ``name`` (codes | photos | persons): how its queries are prepared, searched
        exactly, and its committed vectors read (``prepare``, ``exact_search``, ``values``)."""
        try:
            return self.criteria[name]
        except KeyError:
            raise ValueError(f"unknown near-duplicate index {name!r}: {', '.join(NEAR_KEYS)}") from None

    def search(self, name: str, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest committed face (k=1) of each query for the near-duplicate test at ingest:
        name ``"codes"`` (queries (q, 228) codes, their shape vectors against the code index),
        ``"photos"`` (queries (q, 63) photo fingerprints) or ``"persons"`` (queries (q, 128)
        person descriptors). Returns (squared L2 distances (q, k)
        float64, face ids (q, k) int64), k = 1, or k = 0 when nothing is there to search.

        Up to ``vectors.NEAR_EXACT_LIMIT`` vectors: the gallery's exact searches
        (``search_codes``, ``search_photos``, ``search_descriptors``). Beyond: an IVF-Flat index
        of its own (:meth:`index`), approximate in which face it finds (nprobe ``NEAR_NPROBE`` of
        ``NEAR_NLIST`` lists), exact in the distance it returns. ``search_codes`` (what
        ``similar`` returns) is unchanged.
        """
        crit = self.criterion(name)
        q = crit.prepare(queries)
        with self.lock:
            near = self.index(name)
            if near is not None and near.ntotal:
                d2, ids = vectors.near_search(near, q)
                return d2.astype(np.float64), ids
        if not len(q):  # (a warm-up: the exact index is read)
            crit.warm()
            return np.zeros((0, 0), np.float64), np.zeros((0, 0), np.int64)
        return crit.exact_search(q)

    def index(self, name: str):
        """The near-duplicate IVF index of criterion ``name`` (codes | photos | persons) holding every
        committed shard, or None while the criterion has at most ``vectors.NEAR_EXACT_LIMIT``
        vectors (the exact searches serve then).

        Read from the file ``state.json`` names (written by :meth:`save_indexes`, so an ingest
        into a large gallery starts without rebuilding it) and extended with newer shards; built
        from the shards when there is none (trained on the first ``near_train_size()`` vectors in
        face-id order: the same quantizer whichever run builds it). Memory: 4·d bytes per face
        (360 MB for the codes, 252 MB for the fingerprints, 512 MB for the descriptors at 1M
        faces); the exact column index is dropped once this one exists.
        """
        g = self.gallery
        crit = self.criterion(name)
        with self.lock:
            shards = g.shards()
            numbers = {s.number for s in shards}
            held = self.held.get(name)
            if held is not None and not set(held.shards) <= numbers:
                held = None  # shards went away (verify --repair): start again
            if held is None:
                held = self._load(name, numbers)
            if held is None:
                if crit.count(shards) <= vectors.NEAR_EXACT_LIMIT:
                    self.held.pop(name, None)
                    return None
                held = self.build(name, shards)
            have = set(held.shards)
            self.held[name] = held
            for sh in shards:
                if sh.number not in have:
                    ids, vecs = crit.shard_vectors(sh)
                    if len(ids):
                        held.index.add_with_ids(vecs, ids)
                    have.add(sh.number)  # (recorded shard by shard: an error never adds one twice)
                    self.held[name] = _Near(sorted(have), held.index)
            crit.drop_exact()
            return held.index

    def build(self, name: str, shards: list[ShardInfo]) -> _Near:
        """Train on the first ``near_train_size()`` vectors (face-id order), add them all."""
        m = vectors.near_train_size()
        train, got = [], 0
        for sh in sorted(shards, key=lambda s: s.number):
            if got >= m:
                break
            _, vecs = self.criterion(name).shard_vectors(sh)
            train.append(vecs[: m - got])
            got += len(train[-1])
        index = vectors.near_index(np.concatenate(train))
        return _Near([], index)  # (near_index adds every shard)

    def _load(self, name: str, numbers: set) -> _Near | None:
        """The saved near-duplicate index, when state.json names one of the current settings
        whose shards are all committed; else None."""
        saved = self.gallery.indexes.read_saved(NEAR_KEYS[name], numbers, accept=lambda st: (
            st.get("train") == vectors.near_train_size() and st.get("nlist_max") == vectors.NEAR_NLIST))
        return None if saved is None else _Near(saved[2], saved[0])

    def save(self, folder: Path, state: dict) -> None:
        """Write each near-duplicate index this gallery holds (up to date) under a fresh name
        into ``state`` (committed by the caller's state.json write)."""
        with self.lock:
            for name in list(self.held):
                index = self.index(name)
                held = self.held.get(name)
                if index is None or held is None:
                    continue
                state[NEAR_KEYS[name]] = write_index_file(
                    folder, NEAR_KEYS[name], index, held.shards, train=vectors.near_train_size(),
                    nlist_max=vectors.NEAR_NLIST)


def flagged_pairs(gallery, max_distance: float | None = None, criterion: str | None = None,
                    max_photo_distance: float | None = None):
    """Faces flagged at ingest as near-duplicates of an earlier face (a pyarrow.Table:
    face_id, path, person, near_duplicate_of, its path and person, criterion, distance,
    photo_distance, person_distance), closest first (photo pairs by photo distance, then
    person pairs by person distance, then identity pairs by distance).

    criterion: ``"photo"`` (another file of the same picture: the photo fingerprints are
    close), ``"person"`` (a re-shot of the same person: the person descriptors are close) or
    ``"identity"`` (the shape codes are close; same-pixel copies and the closest re-shots);
    None: all. distance: the pair's shape-code L2 distance; photo_distance / person_distance:
    their photo-fingerprint / person-descriptor L2 distance (NULL where either face has
    none). max_distance / max_photo_distance: keep only pairs at most this far apart (≥ 0,
    inf: all)."""
    where = []
    for name, col, value in (("max_distance", "f.near_duplicate_distance", max_distance),
                             ("max_photo_distance", "f.near_duplicate_photo_distance",
                              max_photo_distance)):
        if value is None:
            continue
        try:
            d = float(value)
        except (TypeError, ValueError):
            d = float("nan")
        if not d >= 0:  # (NaN too: it used to reach the SQL as a column name)
            raise GalleryError(f"{name} must be a number ≥ 0 (L2 distance), got {value!r}")
        if np.isfinite(d):
            where.append(f"AND {col} <= {d!r}")
    if criterion is not None:
        if criterion not in CRITERIA:
            raise GalleryError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        where.append(f"AND f.near_duplicate_criterion = '{criterion}'")
    return arrow(gallery.connect().sql(
        "SELECT f.face_id, f.path, f.person, f.near_duplicate_of, o.path AS duplicate_path, "
        "o.person AS duplicate_person, f.near_duplicate_criterion AS criterion, "
        "f.near_duplicate_distance AS distance, f.near_duplicate_photo_distance AS photo_distance, "
        "f.near_duplicate_person_distance AS person_distance "
        "FROM faces f LEFT JOIN faces o ON o.face_id = f.near_duplicate_of "
        f"WHERE f.near_duplicate_of IS NOT NULL {' '.join(where)} "
        "ORDER BY CASE criterion WHEN 'photo' THEN 0 WHEN 'person' THEN 1 ELSE 2 END, "
        "CASE criterion WHEN 'photo' THEN photo_distance WHEN 'person' THEN person_distance END, "
        "distance, f.face_id"))
