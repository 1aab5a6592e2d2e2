"""The gallery's saved FAISS index kinds, one small class each (no string switches): what each
holds, its width and metric, how it is built, and how a shard's vectors are made.

- :class:`ShortlistIndex` (``shortlist``): each face's 36 soft-tissue points aligned to the mean
  face, augmented for exact masked search (:func:`~skullsearch.index.vectors.augment_base`),
  inner product, flat at every size (memory-mapped): the masked search is exact only there, and
  IVF clustering by inner product on the augmented vectors (norm columns ~1e4 mm²) sent masked
  queries to the wrong lists (the source face in the top 20 for ~5 % of queries on 20k faces).
- :class:`ShapeIndex` (``codes``): the identity part of each face code (its shape coefficients,
  :func:`~skullsearch.index.vectors.shape_vectors`), L2, flat up to ``vectors.FLAT_LIMIT`` faces
  and IVF-PQ beyond.

The vector columns (photo fingerprints, person descriptors) have exact in-memory indexes of their
own (:mod:`skullsearch.index.columns`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skullsearch.encoder import code as code_layout
from skullsearch.index import vectors


@dataclass(frozen=True)
class ShortlistIndex:
    name: str = "shortlist"
    dim: int = vectors.AUG_DIM
    metric: str = "ip"
    build: str = "flat"

    def shard_vectors(self, gallery, shard) -> np.ndarray:
        """(n, AUG_DIM) float32 augmented canonical vectors of a shard's faces."""
        soft = np.asarray(gallery._npy(shard, "soft"))
        return vectors.augment_base(vectors.canonical(soft, gallery.mean_soft_tissue))


@dataclass(frozen=True)
class ShapeIndex:
    name: str = "codes"
    dim: int = code_layout.N_SHAPE
    metric: str = "l2"
    build: str = "auto"

    def shard_vectors(self, gallery, shard) -> np.ndarray:
        """(n, N_SHAPE) float32 shape vectors of a shard's faces."""
        return vectors.shape_vectors(np.asarray(gallery._npy(shard, "codes")))


#: the saved index kinds by name, in the order they are saved
KINDS = {k.name: k for k in (ShortlistIndex(), ShapeIndex())}
