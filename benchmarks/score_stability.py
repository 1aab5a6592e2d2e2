"""How much of the exhaustive top 10 is the skull, and how much is chance?

The same skull measured twice (two independent draws of the tissue-depth error ~ N(0, SD), the 1 mm
landmark placement noise and the rigid pose, as in ``query_accuracy.py``) is scored exactly against
every face of a synthetic gallery. For each ranking (S, the paper's score, ties by likelihood; and
the likelihood) the benchmark reports

- ``same_best``: the share of skulls whose best face is the same for both draws;
- ``true_first``: the share of draws whose best face is the skull's own face;
- ``runner_up_overlap``: how many of the 9 faces after the skull's own face (the top 10 without it)
  the two draws share, on average (9 = the same faces, 0 = none);
- ``identical_top10``: the share of skulls whose two top-10 lists are equal.

If two measurements of one skull do not agree on the runners-up, no shortlist can be asked to
reproduce them: the shortlist-size criterion in ``query_speed.py`` (top 10 equal to the exhaustive
top 10) then measures agreement with noise. Every face is scored once per draw (both rankings read
off one pass); the gallery is ``synth``'s.

    python benchmarks/score_stability.py [--faces 100000] [--queries 50] [--missing 0.0] [--gallery DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import emit, face_normals, synthetic_skull_targets, table_sd  # noqa: E402

from skullsearch import Gallery  # noqa: E402
from skullsearch.retrieval.score import score  # noqa: E402

CHUNK = 100_000


def top10_both(points: np.ndarray, target, present, sd) -> dict[str, np.ndarray]:
    """Positions (10,) of the exhaustive top 10 by S (ties: likelihood) and by likelihood (ties: S)."""
    s = np.empty(len(points))
    ll = np.empty(len(points))
    for a in range(0, len(points), CHUNK):
        sc = score(points[a:a + CHUNK], target, present, sd)
        s[a:a + CHUNK], ll[a:a + CHUNK] = sc.s, sc.likelihood
    return {"s": np.lexsort((-ll, -s))[:10], "likelihood": np.lexsort((-s, -ll))[:10]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--missing", type=float, default=0.0, help="share of landmarks absent")
    ap.add_argument("--gallery", type=Path, default=None, help="reuse (or create) this synthetic gallery")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tmp = None
    path = args.gallery
    if path is None:
        tmp = Path(tempfile.mkdtemp(prefix="skullsearch-stability-"))
        path = tmp / "g"
    try:
        if not (path / "gallery.json").exists():
            from skullsearch.index.synth import synth

            synth(Gallery.create(path), args.faces, seed=args.seed)
        g = Gallery.open(path)
        ids = np.concatenate([(np.int64(s.number) << 24) | np.arange(s.faces, dtype=np.int64)
                              for s in g.shards()])
        points = g.soft_tissue(ids)
        sd = table_sd()
        normals = face_normals(g.face_model)
        qids = g.sample_ids(args.queries, seed=args.seed + 1)
        own = np.searchsorted(ids, qids)
        stats = {r: {"same_best": 0, "true_first": 0, "overlap": [], "identical": 0}
                 for r in ("s", "likelihood")}
        t0 = time.perf_counter()
        for i, q in enumerate(qids):
            tops = []
            for draw in range(2):
                rng = np.random.default_rng([args.seed, i, draw])
                t, m = synthetic_skull_targets(g.soft_tissue([q]), normals, sd, rng, missing=args.missing)
                tops.append(top10_both(points, t[0], m[0], sd))
            for r, st in stats.items():
                a, b = tops[0][r], tops[1][r]
                st["same_best"] += int(a[0] == b[0])
                st["true_first"] += int(a[0] == own[i]) + int(b[0] == own[i])
                runners = [[x for x in t if x != own[i]][:9] for t in (a, b)]
                st["overlap"].append(len(set(runners[0]) & set(runners[1])))
                st["identical"] += int(list(a) == list(b))
            print(f"  skull {i + 1}/{len(qids)}: runner-up overlap S {stats['s']['overlap'][-1]}/9, "
                  f"likelihood {stats['likelihood']['overlap'][-1]}/9 ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        n = len(qids)
        res = {"faces": len(ids), "queries": n, "missing": args.missing}
        for r, st in stats.items():
            res[r] = {"same_best": round(st["same_best"] / n, 4),
                      "true_first": round(st["true_first"] / (2 * n), 4),
                      "runner_up_overlap": round(float(np.mean(st["overlap"])), 3),
                      "identical_top10": round(st["identical"] / n, 4)}
            print(f"{r}: same best face {res[r]['same_best']:.0%}, "
                  f"own face first {res[r]['true_first']:.0%}, "
                  f"runners-up shared {res[r]['runner_up_overlap']:.1f} of 9, "
                  f"identical top 10 {res[r]['identical_top10']:.0%}")
        emit(res)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
