"""Vectors and FAISS indexes of a gallery.

Shortlist vectors: each face's 36 soft-tissue points, similarity-aligned to the face model's mean
face, flattened to 108 numbers (the *canonical* vector). A skull usually lacks some landmarks;
FAISS cannot restrict a search to some dimensions, but a masked L2 search is exact on a flat
inner-product index over augmented vectors (README, How it works: gallery and query):

    x′ = [x, ‖x_1‖², …, ‖x_K‖²]          (108 + 36 = 144 numbers per face)
    q′ = [2·m⊙q, −m_1, …, −m_K]           (m_k = 1 where landmark k is present)
    x′·q′ = −Σ_k m_k ‖q_k − x_k‖² + Σ_k m_k ‖q_k‖²

so the largest inner products are the smallest masked distances. The mask may hold any
non-negative per-landmark weights w_k instead of 0/1 (q′ = [2·w⊙q, −w] gives
−Σ_k w_k ‖q_k − x_k‖² + const): a weighted masked search on the same index, free at query time.
Code vectors: the 228-float
codes' identity part (shape) for face-to-face similarity (L2).

Index type by size, the autofaiss way: exact flat indexes up to ``FLAT_LIMIT`` faces, IVF-PQ
beyond (approximate; masked shortlist search is then approximate too); searched on GPU when faiss
sees one. Saved indexes are memory-mapped when a gallery opens them (:func:`read_index`); what
is added later lives in memory beside them (:func:`joined`).
"""

from __future__ import annotations

import numpy as np

from skullsearch.encoder.align import similarity_transform

K = 36
CANON_DIM = 3 * K
AUG_DIM = CANON_DIM + K
#: Up to this many faces the indexes are exact (flat).
FLAT_LIMIT = 2_000_000


def canonical(points: np.ndarray, mean_points: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Soft-tissue points aligned to the mean face (similarity), flattened.

    points (n, 36, 3) mm; mean_points (36, 3); mask (n, 36) or (36,) bool: landmarks used for the
    alignment and kept (absent ones are zeroed). Returns (n, 108) float32.
    """
    points = np.asarray(points, dtype=np.float64)
    w = None if mask is None else np.broadcast_to(np.asarray(mask, dtype=np.float64), points.shape[:2])
    target = np.broadcast_to(mean_points, points.shape)
    s, r, t = similarity_transform(points, target, weights=w)
    out = s[:, None, None] * np.matmul(points, np.swapaxes(r, 1, 2)) + t[:, None, :]
    if w is not None:
        out = out * w[..., None]
    return out.reshape(len(points), -1).astype(np.float32)


def augment_base(canon: np.ndarray) -> np.ndarray:
    """(n, 108) canonical vectors → (n, 144) augmented database vectors."""
    c = np.asarray(canon, dtype=np.float32)
    sq = (c.reshape(len(c), K, 3) ** 2).sum(-1)
    return np.ascontiguousarray(np.concatenate([c, sq], axis=1), dtype=np.float32)


def augment_query(canon: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(q, 108) canonical queries and (q, 36) presence mask (or non-negative per-landmark weights,
    0 where absent) → (q, 144) augmented queries."""
    c = np.asarray(canon, dtype=np.float32).reshape(len(canon), K, 3)
    m = np.asarray(mask, dtype=np.float32).reshape(len(canon), K)
    return np.ascontiguousarray(np.concatenate([(2 * m[..., None] * c).reshape(len(c), -1), -m], 1),
                                dtype=np.float32)


def masked_distance(scores: np.ndarray, canon_q: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Inner-product scores (q, k) of :func:`augment_query` → masked (weighted) squared L2
    distances Σ_k w_k ‖q_k − x_k‖²."""
    c = np.asarray(canon_q, dtype=np.float32).reshape(len(canon_q), K, 3)
    qn = (np.asarray(mask, np.float32) * (c**2).sum(-1)).sum(1)
    return np.maximum(qn[:, None] - scores, 0.0)


def shape_vectors(codes: np.ndarray, n: int = 90) -> np.ndarray:
    """(m, 228) codes → (m, n) identity (shape) vectors for face-to-face search."""
    return np.ascontiguousarray(np.asarray(codes, dtype=np.float32)[:, :n])


def new_index(dim: int, metric: str, n_expected: int = 0, kind: str = "auto"):
    """An empty FAISS index with int64 ids. metric: "ip" or "l2"; kind: auto | flat | ivfpq."""
    import faiss

    mt = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if kind == "auto":
        kind = "flat" if n_expected <= FLAT_LIMIT else "ivfpq"
    if kind == "flat":
        base = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        return faiss.IndexIDMap2(base)
    if kind == "ivfpq":
        nlist = int(4 * np.sqrt(max(n_expected, 1)))
        m = next(m for m in (48, 36, 24, 18, 16, 12, 8, 6, 4, 3, 2, 1) if dim % m == 0)
        quant = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        return faiss.IndexIVFPQ(quant, dim, nlist, m, 8, mt)
    raise ValueError(f"unknown index kind {kind!r}: auto, flat or ivfpq")


def add(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add vectors (n, d) with int64 ids, training an untrained (IVF) index on them first."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not index.is_trained:
        index.train(vectors)
    index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))


def search(index, queries: np.ndarray, k: int, nprobe: int = 32,
           max_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(q, d) → scores (q, k) and ids (q, k) (−1 where fewer than k exist); GPU when present.
    max_id: only ids below it (e.g. the shards a recorded query saw)."""
    import faiss

    _set_nprobe(index, nprobe)
    k = max(1, min(k, max(index.ntotal, 1)))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if max_id is not None:
        params = faiss.SearchParameters(sel=faiss.IDSelectorRange(0, int(max_id)))
        return index.search(q, k, params=params)
    return index.search(q, k)


def _set_nprobe(index, nprobe: int) -> None:
    """nprobe on an IVF index, or on each IVF part of a :func:`joined` index (IndexShards has
    no nprobe of its own: without this its IVF part would search 1 list)."""
    import faiss

    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    elif isinstance(index, faiss.IndexShards):
        for i in range(index.count()):
            _set_nprobe(faiss.downcast_index(index.at(i)), nprobe)


def to_gpu(index):
    """The index on all GPUs faiss sees (once, by the caller, who caches it); as is without one."""
    import faiss

    if faiss.get_num_gpus() > 0:  # pragma: no cover - no GPU in CI
        return faiss.index_cpu_to_all_gpus(index)
    return index


def read_index(path, mmap: bool = True):
    """A saved index and whether it is memory-mapped: (index, mapped).

    With mmap, the file is mapped where this faiss can: ``IO_FLAG_MMAP_IFC`` views a flat
    index's vectors (and IVF lists) in the file itself, so opening costs no copy and the pages
    are the kernel's page cache, shared by every process that opens the gallery; else
    ``IO_FLAG_MMAP`` (IVF lists on disk); else an ordinary read. Never add to a mapped index
    (faiss aborts the process): add to a second, in-memory index and search both (:func:`joined`).
    """
    import faiss

    if mmap:
        for flag in ("IO_FLAG_MMAP_IFC", "IO_FLAG_MMAP"):
            if hasattr(faiss, flag):
                try:
                    return faiss.read_index(str(path), getattr(faiss, flag)), True
                except RuntimeError:  # this index type cannot be mapped by this faiss
                    continue
    return faiss.read_index(str(path)), False


def joined(*parts):
    """Several indexes of one dimension and metric searched as one (faiss.IndexShards keeping
    each part's ids; results merged by the metric). Search parameters (ID selectors) pass through."""
    import faiss

    out = faiss.IndexShards(parts[0].d, False, False)
    for p in parts:
        out.add_shard(p)  # (faiss's wrapper keeps a reference to each part)
    return out


# ---------------------------------------------------------------- near-duplicate search
#: The near-duplicate searches at ingest (code index and photo fingerprints, k=1) are exact up to
#: this many vectors, then go to an IVF-Flat index (:func:`near_index`): only a neighbour within a
#: small radius matters there, and an exact search costs ~16 ms per photo at 1M faces on 2 cores.
NEAR_EXACT_LIMIT = 100_000
#: IVF lists of the near-duplicate index (fixed, so that every run trains the same index).
NEAR_NLIST = 1024
#: Lists searched per query. ``benchmarks/near_duplicate_scale.py --sizes 1000000 --nprobe ...``
#: (1M synthetic faces, planted copies at the thresholds' scale; seeds 0 / 1, 601 / 927 flags):
#: the same flags as the exact search for 97.7 / – % at nprobe 16 (0.7 ms per photo, both
#: criteria), 99.7 / 99.2 % at 32 (1.2 ms), 100 / 99.5 % at 48 (1.5 ms; exact: 16–17 ms). The
#: photo criterion is the harder one (98.9–99.1 % at 32–48). Cost grows with the gallery (fixed
#: lists): ~1.5 ms per million faces.
NEAR_NPROBE = 48
#: The near-duplicate index is trained on the first this many vectors in face-id order (at most
#: ``NEAR_EXACT_LIMIT``): the same for every run that crosses the limit, so a killed ingest run
#: again trains the same quantizer and gives the same flags.
NEAR_TRAIN = 65_536


def near_train_size() -> int:
    """How many leading vectors (face-id order) the near-duplicate index is trained on."""
    return max(1, min(NEAR_TRAIN, NEAR_EXACT_LIMIT))


def near_index(train: np.ndarray):
    """An empty IVF-Flat L2 index (int64 ids: ``add_with_ids``) trained on ``train`` (m, d)
    float32: min(``NEAR_NLIST``, m // 39) lists (faiss's minimum points per centroid), 10 k-means
    iterations, a fixed seed; nprobe ``NEAR_NPROBE``. Vectors are stored as they are, so the
    distances it returns are exact squared L2 (only the candidates are approximate)."""
    import faiss

    train = np.ascontiguousarray(train, dtype=np.float32)
    m, d = train.shape
    nlist = max(1, min(NEAR_NLIST, m // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
    index.cp.niter = 10
    index.cp.seed = 1234
    index.train(train)
    index.nprobe = min(NEAR_NPROBE, nlist)
    return index


def near_search(index, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbour (k=1) of queries (q, d) in a :func:`near_index`: (squared L2 (q, 1)
    float32, ids (q, 1) int64; inf / −1 where the probed lists hold none)."""
    index.nprobe = min(NEAR_NPROBE, index.nlist)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if not len(q):
        return np.zeros((0, 1), np.float32), np.zeros((0, 1), np.int64)
    d2, ids = index.search(q, 1)
    d2 = np.where(ids >= 0, d2, np.inf).astype(np.float32)
    return d2, ids
