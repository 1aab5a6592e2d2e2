"""``Gallery``: the library face of a gallery directory (see :mod:`skullsearch.index.store`).

    g = Gallery.create("missing_persons", face_model=FaceModel.default())
    g.ingest(["photos/"])
    table = g.faces(columns=["face_id", "path", "person"])     # pyarrow.Table
    pts = g.soft_tissue(table["face_id"])                       # (n, 36, 3) mm
    scores, ids = g.search_codes(codes, k=10)
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from skullsearch.encoder import code as code_layout
from skullsearch.encoder import descriptors as descriptors_mod
from skullsearch.encoder.atomic import write_json_atomic
from skullsearch.index import fingerprint, persons, schema, store, vectors
from skullsearch.index import indexes as index_kinds
from skullsearch.index.catalog import Catalog, arrow
from skullsearch.index.columns import VectorColumn
from skullsearch.index.indexes import SHAPE, SHORTLIST, SavedIndexes
from skullsearch.index.near_duplicates import NEAR_KEYS, NearIndexes
from skullsearch.index.store import GalleryError, ShardInfo

FACE_COLUMNS_EXTRA = ("code", "soft_tissue")


#: the vector columns of the faces table with an exact index each (:mod:`~skullsearch.index.columns`)
COLUMNS = {"photos": ("photo_fingerprint", fingerprint.DIM), "persons": ("descriptor", descriptors_mod.DIM)}


#: Query methods of earlier versions' query-side subclass → the functions that replaced them.
_MOVED = {"query": "skullsearch.query(gallery, skull, ...)", "rerun": "skullsearch.rerun(gallery, query_id)",
          "history": "skullsearch.history(gallery)", "record": "skullsearch.query_record(gallery, query_id)"}


class Gallery:
    """A gallery directory. Cheap to open; reads are safe while another process ingests.

    Skull queries are functions of a gallery (the skull side sits above this layer):
    ``skullsearch.query(gallery, skull)``, ``skullsearch.history(gallery)``,
    ``skullsearch.rerun(gallery, query_id)``, ``skullsearch.query_record(gallery, query_id)``.
    """

    def __getattr__(self, name: str):
        if name in _MOVED:
            raise AttributeError(f"Gallery.{name} is now a function: {_MOVED[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._model = None
        #: the saved FAISS indexes: shortlist and shape (:class:`~skullsearch.index.indexes.SavedIndexes`)
        self.indexes = SavedIndexes(self)
        #: GPU copies of the vector-column indexes (when faiss sees a GPU)
        self._gpu: dict = {}
        #: guards the vector-column indexes (photo fingerprints, person descriptors) and the
        #: near-duplicate indexes: their build, their growth and searches in them (faiss indexes
        #: are not safe to search while they are added to)
        self._photo_lock = threading.RLock()
        self._columns = {name: VectorColumn(name, col, dim, self._photo_lock)
                         for name, (col, dim) in COLUMNS.items()}
        #: the near-duplicate indexes ingest searches (:mod:`~skullsearch.index.near_duplicates`)
        self.near = NearIndexes(self, self._photo_lock)
        #: the DuckDB views over the committed shards (:mod:`~skullsearch.index.catalog`)
        ref = store.GalleryRef(self)  # (weak: no reference cycle through the catalog)
        self.catalog = Catalog(self.path, lambda: ref().shards())

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | os.PathLike, face_model=None, exist_ok: bool = False) -> Gallery:
        """A new, empty gallery built for ``face_model`` (default: $SKULLSEARCH_FACE_MODEL or the
        open model). The model is copied into the gallery (``face_model.npz``) so the gallery is
        self-contained. With exist_ok, an existing gallery for the same model is opened."""
        from skullsearch.encoder.face_model import FaceModel

        path = Path(path)
        if (path / "gallery.json").exists():
            if not exist_ok:
                raise GalleryError(f"{path} already holds a gallery; open it, or choose a new folder")
            g = cls.open(path)
            if face_model is not None:
                g.check_model(face_model)
            return g
        if path.exists() and any(path.iterdir()):
            raise GalleryError(f"{path} exists and is not empty: give a new or empty folder for the gallery")
        model = face_model or FaceModel.from_env()
        if model.soft_tissue_points is None:
            raise GalleryError("the face model has no soft-tissue annotation, so a gallery cannot "
                               "index it; give the 36 points as a JSON override")
        (path / "shards").mkdir(parents=True, exist_ok=True)
        (path / "index").mkdir(exist_ok=True)
        model.save(path / "face_model.npz")
        manifest = {
            "format": store.FORMAT, "version": store.VERSION, "created": store.now(),
            "face_model": {"name": model.meta.get("name", "FLAME-format model"),
                           "fingerprint": model.fingerprint,
                           "source": model.meta.get("source", model.meta.get("file", ""))},
        }
        write_json_atomic(path / "gallery.json", manifest)
        g = cls(path, manifest)
        g._model = model
        return g

    @classmethod
    def open(cls, path: str | os.PathLike) -> Gallery:
        path = Path(path)
        try:
            manifest = json.loads((path / "gallery.json").read_text())
        except FileNotFoundError:
            raise GalleryError(f"{path} is not a skullsearch gallery (no gallery.json); create one "
                               "with `skullsearch ingest PHOTOS --gallery DIR`") from None
        except ValueError as e:
            raise GalleryError(f"{path}/gallery.json is damaged ({e})") from None
        if manifest.get("format") != store.FORMAT or manifest.get("version", 0) > store.VERSION:
            raise GalleryError(f"{path}: not a gallery this skullsearch can read "
                               f"(format {manifest.get('format')} v{manifest.get('version')})")
        return cls(path, manifest)

    # ------------------------------------------------------------------ face model
    @property
    def face_model(self):
        """The face model this gallery was built with (its own copy)."""
        if self._model is None:
            from skullsearch.encoder.face_model import FaceModel

            model = FaceModel.load(self.path / "face_model.npz", annotate=False)
            if model.fingerprint != self.manifest["face_model"]["fingerprint"]:
                raise GalleryError(f"{self.path}/face_model.npz does not match the gallery's record; "
                                   "the gallery is damaged")
            self._model = model
        return self._model

    def check_model(self, model) -> None:
        """Refuse a different face model or annotation (they would mix incomparable faces)."""
        want = self.manifest["face_model"]
        if model.fingerprint != want["fingerprint"]:
            raise GalleryError(
                f"the gallery {self.path} was built with the face model '{want['name']}' "
                f"(fingerprint {want['fingerprint'][:12]}); this one is '{model.meta.get('name')}' "
                f"({model.fingerprint[:12]}). Faces of different models or annotations cannot be "
                "mixed: use a new gallery for this model, or ingest with the gallery's own model"
            )

    # ------------------------------------------------------------------ shards
    def shards(self) -> list[ShardInfo]:
        return store.committed_shards(self.path)

    @property
    def n_faces(self) -> int:
        return sum(s.faces for s in self.shards())

    def _files(self, kind: str, shards: list[ShardInfo] | None = None) -> list[str]:
        return [str(s.file(self.path, kind)) for s in (shards or self.shards())]

    def _npy(self, shard: ShardInfo, kind: str) -> np.ndarray:
        return np.load(shard.file(self.path, f"{kind}.npy"), mmap_mode="r")

    def _gather(self, ids, kind: str, width: tuple[int, ...], missing: float | None = None) -> np.ndarray:
        """Rows (n, *width) float32 of a per-face shard array for face ids. missing: the value of
        the rows of shards without that (optional) file; None: every shard must have it."""
        shard_no, row = store.split_id(ids)
        known = {s.number: s for s in self.shards()}
        out = np.zeros((len(shard_no), *width), np.float32)
        for sn in np.unique(shard_no):
            if int(sn) not in known:
                raise GalleryError(f"face ids of shard {int(sn)} are not in this gallery")
            sel = shard_no == sn
            if missing is not None and not known[int(sn)].file(self.path, f"{kind}.npy").exists():
                out[sel] = missing
                continue
            arr = self._npy(known[int(sn)], kind)
            if row[sel].max() >= len(arr):
                raise GalleryError(f"face id beyond shard {int(sn)}'s {len(arr)} faces")
            out[sel] = arr[row[sel]]
        return out

    def soft_tissue(self, ids) -> np.ndarray:
        """The 36 soft-tissue points (n, 36, 3) mm (model frame, neutral face) of face ids."""
        return self._gather(np.asarray(ids, dtype=np.int64), "soft", (36, 3))

    def tissue_covariance(self, ids) -> np.ndarray:
        """The fit's posterior covariance (n, 36, 3, 3) mm² of each soft-tissue point of face ids
        (ingested with ``uncertainty=True``); NaN for faces of shards ingested without it."""
        packed = self._gather(np.asarray(ids, dtype=np.int64), "tissue_cov", (36, 6), missing=np.nan)
        return store.unpack_covariance(packed)

    def codes(self, ids) -> np.ndarray:
        """Face codes (n, 228) of face ids."""
        return self._gather(np.asarray(ids, dtype=np.int64), "codes", (code_layout.CODE_SIZE,))

    def canonical(self, ids) -> np.ndarray:
        """Canonical shortlist vectors (n, 108) of face ids."""
        return vectors.canonical(self.soft_tissue(ids), self.mean_soft_tissue)

    @property
    def mean_soft_tissue(self) -> np.ndarray:
        """The face model's mean-face soft-tissue points (36, 3): the canonical frame."""
        return self.face_model.soft_tissue_basis(0)[0]

    # ------------------------------------------------------------------ catalog (DuckDB)
    def connect(self):
        """A DuckDB cursor with the read-only catalog views ``faces``, ``images``, ``failures``,
        ``person_groups`` over the committed shards (:class:`~skullsearch.index.catalog.Catalog`:
        one database per gallery object, views redefined when the shard list changes, a cursor
        per call). :meth:`close` closes the database."""
        return self.catalog.connect()

    def close(self) -> None:
        """Close the catalog's database (cursors from :meth:`connect` stop working); a later
        call opens a new one."""
        self.catalog.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sql(self, query: str):
        """Run one read-only SQL statement (SELECT …) over the catalog; returns a pyarrow.Table."""
        import duckdb

        con = self.connect()
        try:
            statements = con.extract_statements(query)
        except duckdb.Error as e:
            raise GalleryError(f"SQL error: {e}") from None
        allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
        if len(statements) != 1 or statements[0].type not in allowed:
            raise GalleryError("only one read-only statement (SELECT, WITH …, EXPLAIN) is allowed; "
                               "the catalog is changed only by ingest")
        try:
            return arrow(con.sql(query))
        except duckdb.Error as e:
            raise GalleryError(f"SQL error: {e}") from None

    def faces(self, columns: list[str] | None = None, as_pandas: bool = False):
        """The face catalog as a pyarrow.Table (or pandas): every committed face.

        columns: catalog columns, plus ``code`` (228 floats) and ``soft_tissue`` (108 floats)
        read from the shards' arrays.
        """
        import pyarrow as pa

        cols = list(columns) if columns else None
        extra = [c for c in (cols or []) if c in FACE_COLUMNS_EXTRA]
        base = [c for c in (cols or []) if c not in FACE_COLUMNS_EXTRA]
        if extra and "face_id" not in base:
            base = ["face_id", *base]
        select = ", ".join(f'"{c}"' for c in base) if base else "*"
        table = arrow(self.connect().sql(f"SELECT {select} FROM faces ORDER BY face_id"))
        ids = table.column("face_id").to_numpy() if extra else None
        for c in extra:
            arr = self.codes(ids) if c == "code" else self.soft_tissue(ids).reshape(len(ids), -1)
            table = table.append_column(c, pa.FixedSizeListArray.from_arrays(
                pa.array(arr.reshape(-1), pa.float32()), arr.shape[1]))
        if cols is not None:
            table = table.select(cols)
        return table.to_pandas() if as_pandas else table

    # ------------------------------------------------------------------ FAISS indexes
    @property
    def mmap_indexes(self) -> bool:
        """Open saved FAISS indexes memory-mapped (default True; see :meth:`index`)."""
        return self.indexes.mmap

    @mmap_indexes.setter
    def mmap_indexes(self, value: bool) -> None:
        self.indexes.mmap = bool(value)

    def index(self, name: str, mmap: bool | None = None):
        """The FAISS index ``shortlist`` (augmented canonical vectors, inner product) or ``shape``
        (shape vectors, L2; also by its earlier name ``codes``), holding every committed shard.

        The saved index is memory-mapped where faiss can (mmap, default :attr:`mmap_indexes`);
        shards committed after the save go to a second index in memory, searched together with
        it. mmap=False: one in-memory index (what :meth:`save_indexes` writes). See
        :meth:`skullsearch.index.indexes.SavedIndexes.get`.
        """
        return self.indexes.get(index_kinds.kind(name), mmap)

    def save_indexes(self) -> None:
        """Write the saved indexes and the near-duplicate indexes with the shards they hold, in
        one atomic commit (:meth:`skullsearch.index.indexes.SavedIndexes.save`). Called by the
        writer, under the gallery's write lock."""
        self.indexes.save(self.near.save, tuple(NEAR_KEYS.values()))

    def search_codes(self, codes: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Faces most similar in identity to the given codes (q, 228): (L2 distances (q, k), ids (q, k))."""
        idx = self.indexes.searched(SHAPE)
        if idx.ntotal == 0:
            q = len(codes)
            return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
        return vectors.search(idx, vectors.shape_vectors(codes), k)

    def column_index(self, name: str):
        """The exact index of a vector column (``photos``: photo fingerprints, ``persons``: person
        descriptors) over every committed face that has one (:class:`~skullsearch.index.columns.
        VectorColumn`; faces of older shards and synthetic faces have none). Memory: 4 × dim
        bytes per face."""
        return self._columns[name].index(self.path, self.shards())

    def search_photos(self, fingerprints: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Faces whose photo fingerprint is nearest to the given ones (q, 63) (exact):
        (L2 distances (q, k) float32, face ids (q, k) int64, −1 where fewer exist)."""
        return self._columns["photos"].search(self.path, self.shards(), fingerprints, k, self._gpu)

    def search_descriptors(self, descs: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Faces whose person descriptor is nearest to the given ones (q, 128) (exact):
        (L2 distances (q, k) float32, face ids (q, k) int64, −1 where fewer exist)."""
        return self._columns["persons"].search(self.path, self.shards(), descs, k, self._gpu)

    # ------------------------------------------------------------------ near-duplicate search
    def near_search(self, name: str, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest committed face (k=1) of each query for ingest's near-duplicate test, by
        criterion ``name`` (codes | photos | persons): (squared L2 distances (q, k) float64, face
        ids (q, k) int64), k = 1, or 0 when nothing is there; see
        :meth:`skullsearch.index.near_duplicates.NearIndexes.search`."""
        return self.near.search(name, queries)

    def near_index(self, name: str):
        """The near-duplicate IVF index of criterion ``name``, or None while the exact searches
        serve (:meth:`skullsearch.index.near_duplicates.NearIndexes.index`)."""
        return self.near.index(name)

    def photo_fingerprints(self, ids) -> np.ndarray:
        """Photo fingerprints (n, 63) float32 of face ids; NaN rows for faces without one."""
        return self.column_values("photos", ids)

    def descriptors(self, ids) -> np.ndarray:
        """Person descriptors (n, 128) float32 of face ids; NaN rows for faces without one."""
        return self.column_values("persons", ids)

    def column_values(self, name: str, ids) -> np.ndarray:
        """Vectors (n, d) float32 of face ids in a vector column (``photos`` | ``persons``); NaN
        rows for faces without one."""
        with self._photo_lock:  # large galleries (an IVF index serves): read the shards concerned
            return self._columns[name].values(self.path, self.shards(), ids,
                                              from_shards=name in self.near.held)

    def search_shortlist(self, canon: np.ndarray, mask: np.ndarray, k: int,
                         max_shard: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Masked nearest neighbours of canonical query vectors (q, 108) with presence masks
        (q, 36): (squared masked distances (q, k) mm², ids (q, k)). max_shard: search only shards
        up to this number (a recorded query's view of the gallery)."""
        idx = self.indexes.searched(SHORTLIST, selector=max_shard is not None)
        if idx.ntotal == 0:
            return np.zeros((len(canon), 0), np.float32), np.zeros((len(canon), 0), np.int64)
        max_id = None if max_shard is None else int(store.face_id(max_shard + 1, 0))
        scores, ids = vectors.search(idx, vectors.augment_query(canon, mask), k, max_id=max_id)
        return vectors.masked_distance(scores, canon, mask), ids

    def rows(self, ids, columns=("face_id", "person", "path")) -> list[dict]:
        """Catalog rows of face ids, in the order given (missing ids are left out)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) >= 0]
        if not ids:
            return []
        cols = ", ".join(f'"{c}"' for c in dict.fromkeys(["face_id", *columns]))
        con = self.connect()
        con.register("wanted", __import__("pyarrow").table({"face_id": np.asarray(ids, np.int64)}))
        found = {r["face_id"]: r for r in arrow(con.sql(
            f"SELECT {cols} FROM faces WHERE face_id IN (SELECT face_id FROM wanted)")).to_pylist()}
        return [found[i] for i in ids if i in found]

    def sample_ids(self, n: int, seed: int = 0, max_shard: int | None = None) -> np.ndarray:
        """Up to n face ids drawn uniformly without replacement (reproducible for a seed)."""
        shards = [s for s in self.shards() if max_shard is None or s.number <= max_shard]
        counts = np.array([s.faces for s in shards], np.int64)
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.int64)
        pick = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        starts = np.cumsum(counts) - counts
        which = np.searchsorted(starts, pick, side="right") - 1
        numbers = np.array([s.number for s in shards], np.int64)
        return (numbers[which] << store.ROW_BITS) | (pick - starts[which])

    def similar(self, codes: np.ndarray, top: int = 10, descriptors: np.ndarray | None = None,
                by: str = "auto") -> list[list[dict]]:
        """For each query face (codes (q, 228), descriptors (q, 128) or None) the ``top`` gallery
        faces nearest to it, by person descriptor or shape code (``by``: auto | person | shape);
        see :func:`skullsearch.index.similar.similar`."""
        from skullsearch.index.similar import similar

        return similar(self, codes, top, descriptors, by)

    def similar_to_photo(self, photo, top: int = 10, by: str = "auto") -> list[dict]:
        """The gallery's faces most similar to the largest face in a photo; see
        :func:`skullsearch.index.similar.similar_to_photo`."""
        from skullsearch.index.similar import similar_to_photo

        return similar_to_photo(self, photo, top, by)

    def near_duplicates(self, max_distance: float | None = None, criterion: str | None = None,
                        max_photo_distance: float | None = None):
        """Faces flagged at ingest as near-duplicates of an earlier face (a pyarrow.Table), closest
        first; criterion photo | person | identity | None (all); see
        :func:`skullsearch.index.near_duplicates.flagged_pairs`."""
        from skullsearch.index.near_duplicates import flagged_pairs

        return flagged_pairs(self, max_distance, criterion, max_photo_distance)

    # ------------------------------------------------------------------ persons
    def group_persons(self, threshold: float | None = None, k: int = 20):
        """Group the faces by person from their descriptors and save the groups (a
        pyarrow.Table face_id, person_group, group_size); see :mod:`skullsearch.index.persons`."""
        return persons.group_persons(self, k=k, **({} if threshold is None else {"threshold": threshold}))

    def person_groups(self, min_size: int = 1):
        """The saved person groups with each face's path and label (pyarrow.Table: person_group,
        group_size, face_id, person, path), largest groups first; None when
        :meth:`group_persons` has not run."""
        if not (self.path / persons.FILE).exists():
            return None
        return arrow(self.connect().sql(
            "SELECT g.person_group, g.group_size, g.face_id, f.person, f.path FROM person_groups g "
            f"JOIN faces f USING (face_id) WHERE g.group_size >= {int(min_size)} "
            "ORDER BY g.group_size DESC, g.person_group, g.face_id"))

    def refit_persons(self, out, **kw):
        """Write this gallery's person gallery at ``out``: each person group of ≥ 2 faces
        refitted with one shared shape (label-free Eq. 2), the other faces carried over; see
        :func:`skullsearch.index.refit.refit_persons`. Returns its RefitReport."""
        from skullsearch.index.refit import refit_persons

        return refit_persons(self, out, **kw)

    # ------------------------------------------------------------------ ingest & co
    def ingest(self, inputs, **kw):
        """Add photos (folders, files, lists, tables); see :func:`skullsearch.index.ingest.ingest`."""
        from skullsearch.index.ingest import ingest

        return ingest(self, inputs, **kw)

    def info(self) -> dict:
        """Counts and sizes for ``skullsearch info``."""
        con = self.connect()
        n_images, n_ok = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'ok') FROM images").fetchone()
        reasons = dict(con.execute(
            "SELECT status, count(*) FROM failures GROUP BY status ORDER BY 2 DESC").fetchall())
        persons, near_dup, fingerprinted, described = con.execute(
            "SELECT count(DISTINCT person) FILTER (WHERE person IS NOT NULL), "
            "count(*) FILTER (WHERE near_duplicate_of IS NOT NULL), "
            "count(photo_fingerprint), count(descriptor) FROM faces").fetchone()
        by_criterion = dict(con.execute(
            "SELECT near_duplicate_criterion, count(*) FROM faces WHERE near_duplicate_of IS NOT NULL "
            "GROUP BY 1 ORDER BY 2 DESC").fetchall())
        state = self.indexes.state()
        fm = self.manifest["face_model"]

        def size(p: Path) -> int:
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0

        return {
            "gallery": str(self.path),
            "face model": f"{fm['name']} ({fm['fingerprint'][:12]})",
            "images": n_images, "images with faces": n_ok, "faces": self.n_faces, "persons": persons,
            "near-duplicate faces": near_dup, "near-duplicates by criterion": by_criterion,
            "faces with a photo fingerprint": fingerprinted,
            "faces with a person descriptor": described,
            "faces with a fit uncertainty": sum(s.faces for s in self.shards()
                                                if s.file(self.path, "tissue_cov.npy").exists()),
            "failures": reasons, "shards": len(self.shards()),
            "shortlist index": f"{state.get('shortlist', {}).get('type', 'not built')} "
                               f"({state.get('shortlist', {}).get('ntotal', 0)} faces)",
            "catalog on disk": size(self.path / "shards"), "indexes on disk": size(self.path / "index"),
        }

    def verify(self, repair: bool = False) -> dict:
        """Check catalog ↔ shards ↔ indexes; with repair, mend what is found. See
        :func:`skullsearch.index.verify.verify`."""
        from skullsearch.index.verify import verify

        return verify(self, repair)

    def export(self, out: str | os.PathLike) -> Path:
        """Write the whole face catalog, with codes and soft-tissue points, as one Parquet file."""
        import pyarrow.parquet as pq

        out = Path(out)
        table = self.faces(columns=[*schema.FACES.names, "code", "soft_tissue"])
        pq.write_table(table, out)
        return out
