"""Exact FAISS indexes over the vector columns of the faces table: photo fingerprints
(``photo_fingerprint``, 63 values, :mod:`skullsearch.index.fingerprint`) and person descriptors
(``descriptor``, 128 values, :mod:`skullsearch.encoder.descriptors`).

Both columns are optional per face (older shards and synthetic faces have none; a face whose
crop failed has a null), so each index holds the faces that have one, with their face ids beside
the FAISS positions. An index is built in memory from the shards on first use and grows shard by
shard (each shard is read once; a failed read adds nothing). Memory: 4 × dim bytes per face
(252 MB for the fingerprints, 512 MB for the descriptors at 1M faces); on disk the columns are
float16.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from skullsearch.index.store import ShardInfo


class Held(NamedTuple):
    """One column's index as read so far: shards it holds, face ids (n,) int64 ascending by
    shard, the faiss IndexFlatL2 (position i ↔ ids[i])."""

    shards: list
    ids: np.ndarray
    index: object


def list_matrix(column, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A pyarrow list column of ``width`` values per row (fixed-size or not, float16 or 32,
    chunked or not) → ((n, width) float32 with NaN rows for nulls, valid (n,) bool)."""
    import pyarrow.compute as pc

    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    out = np.full((len(col), width), np.nan, np.float32)
    if valid.any():
        values = pc.list_flatten(col.filter(col.is_valid())).to_numpy(zero_copy_only=False)
        out[valid] = values.reshape(-1, width)
    return out, valid


def positions(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``ids`` sits in ``sorted_ids`` (ascending): (positions (n,), found (n,) bool)."""
    pos = np.searchsorted(sorted_ids, ids)
    pos_c = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    found = (pos < len(sorted_ids)) & (sorted_ids[pos_c] == ids) if len(sorted_ids) else \
        np.zeros(len(ids), bool)
    return pos_c, found


@dataclass
class VectorColumn:
    """The exact index of one vector column of a gallery's faces.

    name: what the gallery calls it (``photos`` | ``persons``); column: the faces-table column;
    dim: its width. ``lock`` guards the build, its growth and searches in it (faiss indexes are
    not safe to search while they are added to).
    """

    name: str
    column: str
    dim: int
    lock: threading.RLock
    held: Held | None = None

    def empty(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)

    def shard_vectors(self, root: Path, sh: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
        """The faces of one shard that have a value in this column: (face ids (m,) int64
        ascending, vectors (m, dim) float32); empty for shards without the column."""
        import pyarrow.parquet as pq

        path = sh.file(root, "faces.parquet")
        if not sh.faces or self.column not in pq.read_schema(path).names:
            return self.empty()
        t = pq.read_table(path, columns=["face_id", self.column])
        vals, valid = list_matrix(t.column(self.column), self.dim)
        if not valid.any():
            return self.empty()
        sid = t.column("face_id").to_numpy()[valid].astype(np.int64)
        order = np.argsort(sid, kind="stable")
        return sid[order], np.ascontiguousarray(vals[valid][order], np.float32)

    def index(self, root: Path, shards: list[ShardInfo]) -> Held:
        """The index over every given shard's vectors (shards added since the last call are read
        once each; a shard list that lost shards starts again)."""
        import faiss

        with self.lock:
            held = self.held
            if held is None or not {s.number for s in shards} >= set(held.shards):
                held = Held([], np.zeros(0, np.int64), faiss.IndexFlatL2(self.dim))
            have = set(held.shards)
            ids, new = [held.ids], []
            for sh in shards:  # read every new shard first: a failed read adds nothing
                if sh.number in have:
                    continue
                have.add(sh.number)
                sid, vals = self.shard_vectors(root, sh)
                if len(sid):
                    ids.append(sid)
                    new.append(vals)
            if new:  # (the index and its ids grow together, or not at all)
                held.index.add(np.concatenate(new))
            self.held = Held(sorted(have), np.concatenate(ids), held.index)
            return self.held

    def search(self, root: Path, shards: list[ShardInfo], queries: np.ndarray, k: int,
               gpu: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Nearest faces (exact) of queries (q, dim): (L2 distances (q, k') float32, face ids
        (q, k') int64, −1 where fewer exist); k' = 0 when no face has a value."""
        import faiss

        from skullsearch.index import vectors

        q = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.dim))
        with self.lock:  # (the index and its ids as one: no other thread adds meanwhile)
            held = self.index(root, shards)
            if held.index.ntotal == 0 or not len(q):
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            searched = held.index
            if gpu is not None and faiss.get_num_gpus() > 0:  # pragma: no cover - no GPU in CI
                key = (id(held.index), held.index.ntotal)
                copy = gpu.get(self.name)
                if copy is None or copy[0] != key:  # a copy of the index as it is now
                    copy = gpu[self.name] = (key, vectors.to_gpu(held.index))
                searched = copy[1]
            d2, pos = searched.search(q, max(1, min(k, held.index.ntotal)))
        ids = np.where(pos >= 0, held.ids[np.maximum(pos, 0)], -1)
        return np.sqrt(np.maximum(d2, 0)), ids

    def values(self, root: Path, shards: list[ShardInfo], ids, from_shards: bool = False) -> np.ndarray:
        """Vectors (n, dim) float32 of face ids; NaN rows for faces without one. from_shards:
        read the shards concerned instead of the in-memory index (large galleries, where the
        exact index is not held)."""
        from skullsearch.index import store

        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.full((len(ids), self.dim), np.nan, np.float32)
        with self.lock:
            if from_shards and self.held is None:
                known = {s.number: s for s in shards}
                shard_no = store.split_id(ids)[0]
                for sn in np.unique(shard_no):
                    if int(sn) not in known:
                        continue
                    sid, vals = self.shard_vectors(root, known[int(sn)])
                    pos, hit = positions(sid, ids)
                    hit &= shard_no == sn
                    out[hit] = vals[pos[hit]]
                return out
            held = self.index(root, shards)
            pos, hit = positions(held.ids, ids)
            if hit.any():
                out[hit] = held.index.reconstruct_batch(pos[hit].astype(np.int64))
        return out

    def drop(self) -> None:
        """Forget the in-memory index (a near-duplicate IVF index serves instead)."""
        with self.lock:
            self.held = None
