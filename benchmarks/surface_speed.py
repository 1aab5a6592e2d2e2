"""What ranking by the surface costs a query (``query --rank-by surface``) against the likelihood.

A synthetic gallery of ``--faces`` faces of the default model; ``--queries`` skulls made from
gallery faces (``_common.synthetic_skull_targets``: depths off by the table's SD, 1 mm
placement, a rigid motion); each queried through :func:`~skullsearch.retrieval.query.query_points`
by likelihood and by the surface, interleaved (the first query of each warms up and is not
counted). The surface re-ranks the shortlist (2,000 by default) and scores the calibration
sample (2,000) alike. Prints the median latencies, their ratio, the time per surface-scored face
and the truth's rank by each.

    python benchmarks/surface_speed.py [--faces 100000] [--queries 6] [--seed 0]
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
from skullsearch.index.synth import synth
from skullsearch.retrieval.query import CALIBRATION_SAMPLE, DEFAULT_SHORTLIST, query_points


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="skullsearch-surface-"))
    try:
        g = Gallery.create(tmp / "g")
        synth(g, a.faces, seed=a.seed)
        sd = table_sd()
        ids = g.sample_ids(a.queries, seed=a.seed + 3)
        targets, present = synthetic_skull_targets(g.soft_tissue(ids).astype(np.float64),
                                                   face_normals(g.face_model), sd,
                                                   np.random.default_rng(a.seed))
        times = {"likelihood": [], "surface": []}
        rank = {"likelihood": [], "surface": []}
        for truth, t, m in zip(ids, targets, present, strict=True):
            for by in times:
                t0 = time.perf_counter()
                res = query_points(g, t, m, sd, top=20, rank_by=by)
                times[by].append(time.perf_counter() - t0)
                found = [c.face_id for c in res.candidates]
                rank[by].append(found.index(int(truth)) + 1 if int(truth) in found else None)
        g.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: float(np.median(v[1:] if len(v) > 1 else v)) for k, v in times.items()}
    scored = min(DEFAULT_SHORTLIST, a.faces) + min(CALIBRATION_SAMPLE, a.faces)
    out = {"faces": a.faces, "queries": a.queries,
           "median_seconds": {k: round(v, 3) for k, v in med.items()},
           "ratio": round(med["surface"] / med["likelihood"], 1),
           "ms_per_surface_face": round(1000 * (med["surface"] - med["likelihood"]) / scored, 2),
           "truth_rank": rank}
    print(f"{a.faces:,} faces: median query {med['likelihood']:.2f} s by likelihood, {med['surface']:.2f} s "
          f"by surface ({out['ratio']}×; {out['ms_per_surface_face']} ms a surface-scored face)")
    emit(out)


if __name__ == "__main__":
    main()
