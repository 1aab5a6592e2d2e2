"""The gallery's saved FAISS index kinds, one :class:`IndexKind` each (no string switches): what each
holds, its width and metric, how it is built, and how a shard's vectors are made.

- :data:`SHORTLIST` (``shortlist``): each face's 36 soft-tissue points aligned to the mean
  face, augmented for exact masked search (:func:`~skullsearch.index.vectors.augment_base`),
  inner product, flat at every size (memory-mapped): the masked search is exact only there, and
  IVF clustering by inner product on the augmented vectors (norm columns ~1e4 mm²) sent masked
  queries to the wrong lists (the source face in the top 20 for ~5 % of queries on 20k faces).
- :data:`SHAPE` (``shape``; saved under the key ``codes``, its name in galleries of earlier
  versions): the identity part of each face code (its shape coefficients,
  :func:`~skullsearch.index.vectors.shape_vectors`), L2, flat up to ``vectors.FLAT_LIMIT`` faces
  and IVF-PQ beyond.

The vector columns (photo fingerprints, person descriptors) have exact in-memory indexes of their
own (:mod:`skullsearch.index.columns`). :class:`SavedIndexes` holds a gallery's saved indexes
(``gallery.indexes``): it opens, grows, copies to a GPU and saves them.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.atomic import write_json_atomic
from skullsearch.index import store, vectors


def _shortlist_vectors(gallery, shard) -> np.ndarray:
    """(n, AUG_DIM) float32 augmented canonical vectors of a shard's faces."""
    soft = np.asarray(gallery._npy(shard, "soft"))
    return vectors.augment_base(vectors.canonical(soft, gallery.mean_soft_tissue))


def _shape_vectors(gallery, shard) -> np.ndarray:
    """(n, N_SHAPE) float32 shape vectors of a shard's faces."""
    return vectors.shape_vectors(np.asarray(gallery._npy(shard, "codes")))


@dataclass(frozen=True)
class IndexKind:
    """One saved index kind: name, key (its entry in ``index/state.json`` and its files' prefix),
    dim and metric ("ip" | "l2") of its vectors, build ("flat" at every size | "auto": by the
    gallery's size, see :func:`~skullsearch.index.vectors.new_index`) and how a shard's vectors
    are made (``shard_vectors(gallery, shard) → (n, dim) float32``)."""

    name: str
    key: str
    dim: int
    metric: str
    build: str
    make_vectors: Callable

    def shard_vectors(self, gallery, shard) -> np.ndarray:
        return self.make_vectors(gallery, shard)


SHORTLIST = IndexKind("shortlist", "shortlist", vectors.AUG_DIM, "ip", "flat", _shortlist_vectors)
SHAPE = IndexKind("shape", "codes", code_layout.N_SHAPE, "l2", "auto", _shape_vectors)

#: the saved index kinds by name, in the order they are saved
KINDS = {k.name: k for k in (SHORTLIST, SHAPE)}
#: earlier names of kinds (``Gallery.index("codes")``)
ALIASES = {"codes": "shape"}


def kind(name: str) -> IndexKind:
    """The index kind of a name (or an earlier name); a clear error for an unknown one."""
    try:
        return KINDS[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown index {name!r}: one of {', '.join(KINDS)}") from None


class _Held(NamedTuple):
    """A loaded index: what is searched, the shards it holds, the saved part (maybe mapped) and
    the part added since in memory (when the saved one is mapped)."""

    searched: object
    shards: list
    base: object
    delta: object
    mapped: bool


def write_index_file(folder: Path, key: str, index, shards: list, **extra) -> dict:
    """Write ``index`` under a fresh name (``KEY.<random>.faiss``, via a temporary file) and
    return its ``state.json`` entry (shards, ntotal, type, file and ``extra``); the caller
    commits it by writing the state."""
    import faiss

    fname = f"{key}.{uuid.uuid4().hex[:12]}.faiss"
    tmp = folder / f".{fname}.tmp"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, folder / fname)
    return {"shards": shards, "ntotal": int(index.ntotal), "type": type(index).__name__, "file": fname,
            **extra}


class SavedIndexes(store.GalleryPart):
    """A gallery's saved FAISS indexes (one per :data:`KINDS` entry, in ``index/``, named by
    ``index/state.json``): opened memory-mapped or in memory, grown by the shards committed since
    the save, copied to a GPU when faiss sees one, and saved atomically.

    gallery: the :class:`~skullsearch.index.gallery.Gallery` whose shards they index (its
    ``path``, ``shards()`` and the shard vectors each kind makes). ``mmap``: open saved indexes
    memory-mapped (default True; see :meth:`get`).
    """

    def __init__(self, gallery):
        super().__init__(gallery)  # (held weakly: the gallery owns this)
        self.folder = Path(gallery.path) / "index"
        self.mmap = True
        self.held: dict[str, _Held] = {}
        self._gpu: dict = {}
        self._lock = threading.Lock()

    def state(self) -> dict:
        """``index/state.json`` ({} when there is none or it cannot be read)."""
        try:
            return json.loads((self.folder / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def get(self, kind: IndexKind, mmap: bool | None = None):
        """The index of ``kind`` holding every committed shard.

        The saved index is memory-mapped where faiss can (mmap, default ``self.mmap``;
        :func:`~skullsearch.index.vectors.read_index`): opening copies nothing, and the pages
        are shared by every process that reads the gallery. Shards committed after the save go
        to a second index in memory, searched together with it. mmap=False: one in-memory index
        (what :meth:`save` writes).
        """
        mmap = self.mmap if mmap is None else mmap
        with self._lock:
            shards = self.gallery.shards()
            cached = self.held.get(kind.name)
            if cached is not None and cached.mapped and not mmap:
                cached = None  # a writer needs it in memory: read it again
            if cached is None:
                base, delta, mapped, have = self._open(kind, shards, mmap)
            else:
                base, delta, mapped, have = cached.base, cached.delta, cached.mapped, set(cached.shards)
            try:
                for s in shards:
                    if s.number not in have and s.faces:
                        if mapped and delta is None:  # a mapped index is never added to
                            delta = vectors.new_index(kind.dim, kind.metric, kind="flat")
                        ids = store.face_id(s.number, np.arange(s.faces))
                        vectors.add(delta if mapped else base, kind.shard_vectors(self.gallery, s), ids)
                    have.add(s.number)
            except BaseException:  # a shard read failed midway: the held index has some shards
                self.held.pop(kind.name, None)  # added that it does not list; build it afresh
                self._gpu.pop(kind.name, None)
                raise
            if cached is None or sorted(have) != cached.shards:
                self._gpu.pop(kind.name, None)  # the GPU copy is stale
                searched = base if delta is None else vectors.joined(base, delta)
            else:
                searched = cached.searched
            self.held[kind.name] = _Held(searched, sorted(have), base, delta, mapped)
            return searched

    def _open(self, kind: IndexKind, shards: list, mmap: bool):
        """(base index, delta None, mapped, the shard numbers it holds): the saved index when the
        state names one of committed shards, else a new empty one."""
        saved = self.read_saved(kind.key, {s.number for s in shards}, mmap=mmap)
        if saved is not None:
            return saved[0], None, saved[1], set(saved[2])
        base = vectors.new_index(kind.dim, kind.metric, n_expected=sum(s.faces for s in shards),
                                 kind=kind.build)
        return base, None, False, set()

    def searched(self, kind: IndexKind, selector: bool = False):
        """The index to search: a cached GPU copy when faiss sees a GPU (ID selectors, used by
        re-runs of recorded queries, stay on the CPU)."""
        idx = self.get(kind)
        if selector:
            return idx
        if kind.name not in self._gpu:
            held = self.held[kind.name]
            self._gpu[kind.name] = (vectors.to_gpu(idx) if held.delta is None else
                                    vectors.joined(vectors.to_gpu(held.base), vectors.to_gpu(held.delta)))
        return self._gpu[kind.name]

    def read_saved(self, key: str, numbers: set, mmap: bool = False, accept=None):
        """The index that ``state.json`` names under ``key``, when every shard it holds is among
        ``numbers`` and ``accept(state entry)`` (if given) holds: (index, mapped, its shards);
        else None. The file a state names holds exactly its shards (see :meth:`save`); a save
        may replace it between reading the state and opening it, so a missing or unreadable
        file sends us back to the state (three tries)."""
        for _ in range(3):
            st = self.state().get(key)
            if not (st and set(st["shards"]) <= numbers and (accept is None or accept(st))):
                return None
            try:
                index, mapped = vectors.read_index(self.folder / st.get("file", f"{key}.faiss"), mmap=mmap)
            except (FileNotFoundError, RuntimeError):
                continue
            return index, mapped, sorted(st["shards"])
        return None

    def save(self, more=None, more_keys: tuple = ()) -> None:
        """Write every kind's index with the shards it holds, and ``more(folder, state)``'s
        entries (the near-duplicate indexes, under ``more_keys``), committed by one atomic write
        of state.json.

        Each save writes new files (a fresh name per save): a kill at any point, or a reader
        opening the index meanwhile, never pairs a file with another save's shard list (which
        would add shards twice). The previous files are removed once the state names the new
        ones (a reader that had mapped them keeps its pages; one about to open them reads the
        state again, see :meth:`read_saved`); a killed save's .tmp files too (the caller holds
        the write lock)."""
        state = self.state()
        for kind in KINDS.values():
            idx = self.get(kind, mmap=False)
            state[kind.key] = write_index_file(self.folder, kind.key, idx, self.held[kind.name].shards)
        if more is not None:
            more(self.folder, state)
        write_json_atomic(self.folder / "state.json", state)
        keep = {st["file"] for st in state.values() if isinstance(st, dict) and "file" in st}
        for key in (*(k.key for k in KINDS.values()), *more_keys):
            for f in [*self.folder.glob(f"{key}*.faiss"), *self.folder.glob(f".{key}*.faiss.tmp")]:
                if f.name not in keep:
                    f.unlink(missing_ok=True)

    def forget(self) -> None:
        """Drop every held index and GPU copy (the next :meth:`get` opens or builds afresh)."""
        with self._lock:
            self.held.clear()
            self._gpu.clear()
