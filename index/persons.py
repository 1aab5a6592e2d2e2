"""Person groups: the faces of one person, found from their person descriptors alone.

A gallery rarely has person labels. :func:`group_persons` links every face that has a person
descriptor (:mod:`skullsearch.encoder.descriptors`) to its ``k`` nearest faces (FAISS: exact up
to :data:`EXACT_LIMIT` faces, IVF beyond), keeps the links closer than ``threshold``
(:data:`~skullsearch.encoder.descriptors.PERSON_DISTANCE`, 0.5, as dlib's face-clustering example)
and clusters the graph with dlib's Chinese whispers (what dlib uses to cluster faces: a face
joins the group most of its links point to, so a chain of look-alikes does not merge two
persons the way single linkage would). Deterministic for a gallery and its settings.

The result is saved as ``person_groups.parquet`` in the gallery folder (face_id, person_group,
group_size; the group's id is its smallest face id) and read by the catalog view
``person_groups`` (``skullsearch sql "SELECT ... FROM person_groups"``). Faces ingested later
are not in it until the grouping runs again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from skullsearch.encoder.descriptors import PERSON_DISTANCE
from skullsearch.errors import SkullsearchError

FILE = "person_groups.parquet"
#: faces up to which the neighbour search is exact (all pairs); an IVF index beyond
EXACT_LIMIT = 100_000


def knn_edges(vecs: np.ndarray, k: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Links between each vector (n, d) and its ``k`` nearest others closer than ``threshold``
    (L2): (pairs (m, 2) int64 with i < j, each once; distances (m,) float32)."""
    import faiss

    n, d = vecs.shape
    x = np.ascontiguousarray(vecs, np.float32)
    kk = min(k + 1, n)
    if n <= EXACT_LIMIT:
        index = faiss.IndexFlatL2(d)
    else:  # pragma: no cover - exercised by the benchmark, not CI
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.train(x[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
        index.nprobe = 16
    index.add(x)
    d2, nn = index.search(x, kk)
    i = np.repeat(np.arange(n), kk)
    j, dist = nn.reshape(-1), np.sqrt(np.maximum(d2.reshape(-1), 0))
    keep = (j >= 0) & (j != i) & (dist < threshold)
    pairs = np.sort(np.stack([i[keep], j[keep]], 1), axis=1)
    pairs, first = np.unique(pairs, axis=0, return_index=True)
    return pairs.astype(np.int64), dist[keep][first].astype(np.float32)


def cluster(n: int, pairs: np.ndarray) -> np.ndarray:
    """Chinese-whispers labels (n,) int64 of a graph of n nodes and its links (m, 2); every node
    gets a label (one without links its own)."""
    import dlib

    edges = [(int(a), int(b)) for a, b in pairs] + [(i, i) for i in range(n)]
    return np.asarray(dlib.chinese_whispers(edges), np.int64) if n else np.zeros(0, np.int64)


def group_persons(gallery, threshold: float = PERSON_DISTANCE, k: int = 20):
    """Group the gallery's faces by person (see the module docstring) and save the groups.

    threshold: person-descriptor L2 distance under which two faces may be linked (> 0); k:
    neighbours looked at per face. Returns a pyarrow.Table (face_id, person_group, group_size),
    faces without a descriptor left out. Raises when no face has a descriptor.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skullsearch.index import store

    if not threshold > 0:
        raise SkullsearchError(f"threshold must be a distance > 0, got {threshold!r}")
    if k < 1:
        raise SkullsearchError(f"k must be at least 1, got {k!r}")
    held = gallery.column_index("persons")
    n = int(held.index.ntotal)
    if n == 0:
        raise SkullsearchError(
            "no face in this gallery has a person descriptor (ingested before they were made, "
            "or with --no-descriptors): ingest the photos into a new gallery to group them")
    ids = held.ids
    vecs = held.index.reconstruct_n(0, n)
    pairs, _ = knn_edges(vecs, k, threshold)
    labels = cluster(n, pairs)
    # the group's id: its smallest face id (stable across runs and readable)
    order = np.lexsort((ids, labels))
    first = np.ones(n, bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    group_of = np.empty(n, np.int64)
    group_of[order] = ids[order][group_start]
    _, inverse, counts = np.unique(group_of, return_inverse=True, return_counts=True)
    table = pa.table({"face_id": pa.array(ids, pa.int64()), "person_group": pa.array(group_of, pa.int64()),
                      "group_size": pa.array(counts[inverse], pa.int32())})
    table = table.replace_schema_metadata({"skullsearch": json.dumps({
        "threshold": float(threshold), "k": int(k), "faces": n,
        "shards": [s.number for s in gallery.shards()], "time": store.now()})})
    path = Path(gallery.path) / FILE
    tmp = path.with_name(f".{FILE}.tmp")
    with store.WriteLock(gallery.path):
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    return table


def cliques(vecs: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Split each group of ``labels`` (n,) into cliques whose members are all pairwise closer than
    ``threshold`` (vecs (n, d), L2): from the group's medoid outwards, a member joins while it is
    within ``threshold`` of every member taken, the rest split the same way again. Chinese whispers
    links chains of look-alikes; a clique cannot hold two faces farther apart than the cut, so
    what is merged on it (one shape fitted to all the photos, :mod:`~skullsearch.index.refit`)
    mixes fewer persons. Returns new labels (n,) int64, ≥ 0 (each clique its own)."""
    x = np.asarray(vecs, np.float64)
    out = np.empty(len(labels), np.int64)
    nxt = 0
    for g in np.unique(labels):
        members = np.flatnonzero(labels == g)
        while len(members):
            d = np.linalg.norm(x[members][:, None] - x[members][None], axis=-1)
            order = np.argsort(d[d.sum(1).argmin()], kind="stable")  # from the medoid outwards
            taken = [order[0]]
            for i in order[1:]:
                if (d[i, taken] < threshold).all():
                    taken.append(i)
            out[members[taken]] = nxt
            nxt += 1
            members = np.delete(members, taken)
    return out
