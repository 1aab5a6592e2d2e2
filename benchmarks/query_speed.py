"""Query speed on a 1M-face synthetic gallery (this CPU), and how large the shortlist must be.

- ``latency_ms``: median warm query latency (shortlist + exact scoring + calibration + catalog rows);
- ``exhaustive_ms``: exact scoring of every face of the gallery for one query; ``speedup`` = its
  ratio to the query latency;
- ``top10_agreement``: for each shortlist size tried, the share of queries whose top 10 (ranked
  by S, ties by likelihood: the default) equals the top 10 of exhaustive exact scoring;
  ``top10_agreement_likelihood`` the same for ``rank_by="likelihood"``; ``top1_agreement``: the
  share whose best face is the exhaustive best (queries ``agreement_queries``). Every face is
  scored once per query and every shortlist size is read off that one exhaustive pass (a face's
  scores do not depend on which other faces are scored with it); the shortlists are the gallery's
  real FAISS search, and the default size is checked against ``query_points`` itself
  (``direct_agreement``); ``shortlist_default``: the smallest size reaching 99 % (none if none);
- ``naive_ratio``: a per-candidate Python loop over the shortlist (one alignment at a time, the
  usual research-code way) against the batched scorer; ``candidates_per_s``: batched exact scoring.

    python benchmarks/query_speed.py [--faces 1000000] [--queries 30] [--exhaustive-queries 20]
        [--shortlists 500,2000,10000] [--gallery DIR]
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
from skullsearch.index import vectors
from skullsearch.retrieval.query import DEFAULT_SHORTLIST, query_points, shortlist_weights
from skullsearch.retrieval.score import ScoreConfig, score

CHUNK = 200_000


def all_ids(g) -> np.ndarray:
    """Every face id of the gallery, shard by shard (the position of a face in the exhaustive
    pass)."""
    return np.concatenate([(np.int64(s.number) << 24) | np.arange(s.faces, dtype=np.int64)
                           for s in g.shards()])


def exhaustive_scores(g, ids, target, present, sd) -> tuple[np.ndarray, np.ndarray]:
    """Exact S and likelihood (n,) of every face, scored in chunks."""
    s = np.empty(len(ids))
    ll = np.empty(len(ids))
    for a in range(0, len(ids), CHUNK):
        sc = score(g.soft_tissue(ids[a:a + CHUNK]), target, present, sd)
        s[a:a + CHUNK], ll[a:a + CHUNK] = sc.s, sc.likelihood
    return s, ll


def top10(pos: np.ndarray, s: np.ndarray, ll: np.ndarray, rank_by: str) -> list[int]:
    """The top 10 among faces at positions ``pos`` (the same order as ``rank_order``)."""
    keys = (-s[pos], -ll[pos]) if rank_by == "likelihood" else (-ll[pos], -s[pos])
    return [int(x) for x in pos[np.lexsort(keys)[:10]]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=30, help="latency queries")
    ap.add_argument("--exhaustive-queries", type=int, default=20,
                    help="queries scored against every face (top-10 agreement)")
    ap.add_argument("--shortlists", default="500,2000,10000,50000")
    ap.add_argument("--missing", type=float, default=0.0, help="share of landmarks absent")
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
    n_q = max(args.queries, args.exhaustive_queries)
    ids = g.sample_ids(n_q, seed=args.seed + 1)
    targets, present = synthetic_skull_targets(g.soft_tissue(ids), normals, sd, rng, missing=args.missing)
    query_points(g, targets[0], present[0], sd, top=10)  # warm: index loaded, caches filled

    lat = []
    for t, m in zip(targets[:args.queries], present[:args.queries], strict=True):
        t0 = time.perf_counter()
        query_points(g, t, m, sd, top=10)
        lat.append(time.perf_counter() - t0)
    latency = float(np.median(lat) * 1000)
    print(f"{n_faces:,} faces: median warm query {latency:.0f} ms (shortlist {DEFAULT_SHORTLIST})",
          flush=True)

    sizes = sorted(int(x) for x in args.shortlists.split(","))
    gids = all_ids(g)
    position = {int(s.number): a for s, a in zip(g.shards(), np.cumsum([0] + [s.faces for s in g.shards()]),
                                                   strict=False)}
    n_ex = min(args.exhaustive_queries, len(ids))
    agree = {r: {k: 0 for k in sizes} for r in ("s", "likelihood", "top1")}
    direct = 0
    ex_times = []
    for i in range(n_ex):
        t, m = targets[i], present[i]
        t0 = time.perf_counter()
        s, ll = exhaustive_scores(g, gids, t, m, sd)
        ex_times.append(time.perf_counter() - t0)
        every = np.arange(len(gids))
        truth = {r: top10(every, s, ll, r) for r in ("s", "likelihood")}
        canon = vectors.canonical(np.nan_to_num(t)[None], g.mean_soft_tissue, mask=m)
        pos = {}
        for r in ("s", "likelihood"):  # the shortlist each ranking gets (plain or 1/σ² weights)
            w = shortlist_weights(m, sd, ScoreConfig(), r)
            _, short = g.search_shortlist(canon, w[None], k=min(sizes[-1], n_faces))
            short = short[0][short[0] >= 0]
            pos[r] = np.array([position[int(f >> 24)] + int(f & ((1 << 24) - 1)) for f in short], np.int64)
        for k in sizes:
            for r in ("s", "likelihood"):
                agree[r][k] += top10(pos[r][:k], s, ll, r) == truth[r]
            agree["top1"][k] += top10(pos["s"][:k], s, ll, "s")[0] == truth["s"][0]
        pos = pos["s"]
        got = [c.face_id for c in query_points(g, t, m, sd, top=10, calibration_sample=0).candidates]
        direct += got == [int(gids[x]) for x in top10(pos[:DEFAULT_SHORTLIST], s, ll, "s")]
        print(f"  exhaustive query {i + 1}/{n_ex}: {ex_times[-1]:.1f} s; agreeing sizes (S): "
              + ",".join(str(k) for k in sizes if top10(pos[:k], s, ll, "s") == truth["s"]), flush=True)
    agreement = {r: {str(k): round(v / n_ex, 4) if n_ex else None for k, v in a.items()}
                 for r, a in agree.items()}
    chosen = next((k for k in sizes if n_ex and agreement["s"][str(k)] >= 0.99), None)
    exhaustive_ms = float(np.median(ex_times) * 1000) if ex_times else None

    # batched vs naive per-candidate loop on one shortlist
    cand = g.soft_tissue(g.sample_ids(2000, seed=9))
    t0 = time.perf_counter()
    score(cand, targets[0], present[0], sd)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cand[:200]:
        score(c[None], targets[0], present[0], sd)
    naive = (time.perf_counter() - t0) * len(cand) / 200
    if n_ex:
        print(f"exhaustive exact scoring {exhaustive_ms:.0f} ms ({exhaustive_ms / latency:.0f}× the query)")
        for r, name in (("s", "top 10 by S"), ("likelihood", "top 10 by likelihood"), ("top1", "best face")):
            print(f"{name}: agreement with exhaustive scoring over {n_ex} queries by shortlist size: "
                  + ", ".join(f"{k}: {v:.0%}" for k, v in agreement[r].items()))
        print(f"default {DEFAULT_SHORTLIST} checked through query_points: {direct}/{n_ex} equal; "
              f"smallest size reaching 99 %: {chosen}")
    print(f"batched scoring {len(cand) / batched:,.0f} candidates/s; "
          f"naive loop {naive / batched:.0f}× slower")
    emit({
        "faces": n_faces, "queries": args.queries, "agreement_queries": n_ex, "missing": args.missing,
        "latency_ms": round(latency, 1), "shortlist": DEFAULT_SHORTLIST,
        "exhaustive_ms": round(exhaustive_ms, 1) if n_ex else None,
        "speedup": round(exhaustive_ms / latency, 1) if n_ex else None,
        "top10_agreement": agreement["s"], "top10_agreement_likelihood": agreement["likelihood"],
        "top1_agreement": agreement["top1"], "direct_agreement": round(direct / n_ex, 4) if n_ex else None,
        "shortlist_default": chosen,
        "naive_ratio": round(naive / batched, 1), "candidates_per_s": round(len(cand) / batched),
    })
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
