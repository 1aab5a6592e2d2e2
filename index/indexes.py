"""The gallery's saved FAISS index kinds, one :class:`IndexKind` each (no string switches): what each
holds, its width and metric, how it is built, and how a shard's vectors are made.

- :data:`SHORTLIST` (``shortlist``): each face's 36 soft-tissue points aligned to the mean
  face, augmented for exact masked search (:func:`~skullsearch.index.vectors.augment_base`),
  inner product, flat at every size (memory-mapped): the masked search is exact only there, and
  IVF clustering by inner product on the augmented vectors (norm columns ~1e4 mm²) sent masked
  queries to the wrong lists (the source face in the top 20 for ~5 % of queries on 20k faces).
- :data:`SHAPE` (``codes``): the identity part of each face code (its shape coefficients,
  :func:`~skullsearch.index.vectors.shape_vectors`), L2, flat up to ``vectors.FLAT_LIMIT`` faces
  and IVF-PQ beyond.

The vector columns (photo fingerprints, person descriptors) have exact in-memory indexes of their
own (:mod:`skullsearch.index.columns`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from skullsearch.encoder import code as code_layout
from skullsearch.index import vectors


def _shortlist_vectors(gallery, shard) -> np.ndarray:
    """(n, AUG_DIM) float32 augmented canonical vectors of a shard's faces."""
    soft = np.asarray(gallery._npy(shard, "soft"))
    return vectors.augment_base(vectors.canonical(soft, gallery.mean_soft_tissue))


def _shape_vectors(gallery, shard) -> np.ndarray:
    """(n, N_SHAPE) float32 shape vectors of a shard's faces."""
    return vectors.shape_vectors(np.asarray(gallery._npy(shard, "codes")))


@dataclass(frozen=True)
class IndexKind:
    """One saved index kind: name (its key in ``index/state.json``), dim and metric ("ip" | "l2")
    of its vectors, build ("flat" at every size | "auto": by the gallery's size, see
    :func:`~skullsearch.index.vectors.new_index`) and how a shard's vectors are made
    (``shard_vectors(gallery, shard) → (n, dim) float32``)."""

    name: str
    dim: int
    metric: str
    build: str
    make_vectors: Callable

    def shard_vectors(self, gallery, shard) -> np.ndarray:
        return self.make_vectors(gallery, shard)


SHORTLIST = IndexKind("shortlist", vectors.AUG_DIM, "ip", "flat", _shortlist_vectors)
SHAPE = IndexKind("codes", code_layout.N_SHAPE, "l2", "auto", _shape_vectors)

#: the saved index kinds by name, in the order they are saved
KINDS = {k.name: k for k in (SHORTLIST, SHAPE)}
