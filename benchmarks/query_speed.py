"""Query speed on a 1M-face synthetic gallery (this CPU).

- ``latency_ms``: median warm query latency (shortlist + exact scoring + calibration + catalog rows);
- ``exhaustive_ms``: exact scoring of every face of the gallery for one query; ``speedup`` = its
  ratio to the query latency; ``top10_agreement``: share of queries whose top 10 equals the
  exhaustive top 10, for each shortlist size tried (the default size is the smallest reaching 99 %);
- ``naive_ratio``: a per-candidate Python loop over the shortlist (one alignment at a time, the
  usual research-code way) against the batched scorer; ``candidates_per_s``: batched exact scoring.

    python benchmarks/query_speed.py [--faces 1000000] [--queries 100] [--gallery DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, face_normals, synthetic_skull_targets, table_sd

from skullsearch import Gallery
from skullsearch.retrieval.query import query_points
from skullsearch.retrieval.score import rank_order, score


def exhaustive_top(g, target, present, sd, k=10, chunk=250_000):
    best_ids, best_s, best_ll = [], [], []
    for s in g.shards():
        for a in range(0, s.faces, chunk):
            ids = (np.int64(s.number) << 24) | np.arange(a, min(a + chunk, s.faces), dtype=np.int64)
            sc = score(g.soft_tissue(ids), target, present, sd)
            order = rank_order(sc)[:k]
            best_ids.append(ids[order])
            best_s.append(sc.s[order])
            best_ll.append(sc.likelihood[order])
    ids, s, ll = map(np.concatenate, (best_ids, best_s, best_ll))
    return ids[np.lexsort((-ll, -s))[:k]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--exhaustive-queries", type=int, default=20)
    ap.add_argument("--shortlists", default="250,500,1000,2000,4000")
    ap.add_argument("--gallery", type=Path, default=None, help="reuse (or create) this synthetic gallery")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    tmp = None
    path = args.gallery
    if path is None:
        tmp = Path(tempfile.mkdtemp(prefix="skullsearch-qspeed-"))
        path = tmp / "g"
    if not (path / "gallery.json").exists():
        from skullsearch.index.synth import synth

        g = Gallery.create(path)
        t0 = time.perf_counter()
        synth(g, args.faces, seed=args.seed)
        print(f"synthetic gallery of {args.faces:,} faces in {time.perf_counter() - t0:.1f} s")
    g = Gallery.open(path)
    n_faces = g.n_faces
    sd = table_sd()
    normals = face_normals(g.face_model)
    ids = g.sample_ids(args.queries, seed=args.seed + 1)
    targets, present = synthetic_skull_targets(g.soft_tissue(ids), normals, sd, rng)
    query_points(g, targets[0], present[0], sd, top=10)  # warm: index loaded, caches filled

    lat = []
    for t, m in zip(targets, present, strict=True):
        t0 = time.perf_counter()
        query_points(g, t, m, sd, top=10)
        lat.append(time.perf_counter() - t0)
    latency = float(np.median(lat) * 1000)

    sizes = [int(x) for x in args.shortlists.split(",")]
    n_ex = min(args.exhaustive_queries, len(ids))
    agree = {k: 0 for k in sizes}
    ex_times = []
    for i in range(n_ex):
        t0 = time.perf_counter()
        truth = exhaustive_top(g, targets[i], present[i], sd)
        ex_times.append(time.perf_counter() - t0)
        for k in sizes:
            got = [c.face_id for c in query_points(g, targets[i], present[i], sd, top=10, shortlist=k,
                                                   calibration_sample=0).candidates]
            agree[k] += list(got) == list(truth)
    agreement = {k: agree[k] / n_ex for k in sizes}
    chosen = next((k for k in sizes if agreement[k] >= 0.99), sizes[-1])
    exhaustive_ms = float(np.median(ex_times) * 1000)

    # batched vs naive per-candidate loop on one shortlist
    cand = g.soft_tissue(g.sample_ids(2000, seed=9))
    t0 = time.perf_counter()
    score(cand, targets[0], present[0], sd)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cand[:200]:
        score(c[None], targets[0], present[0], sd)
    naive = (time.perf_counter() - t0) * len(cand) / 200
    print(f"{n_faces:,} faces: median warm query {latency:.0f} ms; exhaustive exact scoring "
          f"{exhaustive_ms:.0f} ms ({exhaustive_ms / latency:.0f}× slower)")
    print("top-10 agreement with exhaustive scoring by shortlist size: "
          + ", ".join(f"{k}: {v:.0%}" for k, v in agreement.items()) + f" → default {chosen}")
    print(f"batched scoring {len(cand) / batched:,.0f} candidates/s; "
          f"naive loop {naive / batched:.0f}× slower")
    emit({
        "faces": n_faces, "queries": len(ids), "latency_ms": round(latency, 1),
        "exhaustive_ms": round(exhaustive_ms, 1), "speedup": round(exhaustive_ms / latency, 1),
        "top10_agreement": {str(k): v for k, v in agreement.items()}, "shortlist_default": chosen,
        "naive_ratio": round(naive / batched, 1), "candidates_per_s": round(len(cand) / batched),
    })
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
