"""Identification accuracy of skull queries on synthetic ground truth.

Galleries of synthetic faces (10k and 100k by default). A query skull is made from a gallery face:
its soft-tissue points moved along the face normal by a depth error ~ N(0, table SD) (so that
pushing the skull's landmarks out by the table's mean depth lands there), 1 mm placement noise,
a random rigid motion; variants with 25 % of the landmarks missing. Reported: rank-1 and rank-10
identification over the queries when ranking by S (the paper's score), by the likelihood score,
by plain masked L2 on the canonical vectors (the shortlist distance) and, with ``--surface``, by
the surface likelihood (``query --rank-by surface``), with ``--tangent-sd MM`` by the likelihood
with that SD along the skin (``query --tangent-sd``).

"re-encoded": the same, but the query skull is made from the face *as the encoder recovers it*
from noisy 2D landmarks of a photo (yaw ±30°, σ = 1.5 % of the inter-ocular distance) while the
gallery holds the true face — the encoder's error between photo and skull, as in real use.

    python benchmarks/query_accuracy.py [--sizes 10000,100000] [--queries 200] [--surface] [--tangent-sd MM]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, face_normals, random_cameras, synthetic_skull_targets, table_sd

from skullsearch import Gallery
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.fitting import camera_rotation, fit_landmarks, model_landmarks_px, rig_for
from skullsearch.index.ingest import neutral_soft_tissue
from skullsearch.retrieval.query import query_points


def reencode(model, codes: np.ndarray, rng, noise: float = 0.015) -> np.ndarray:
    """Codes as the encoder recovers them from noisy landmarks of a photo of each face."""
    rig = rig_for(model)
    shape = torch.as_tensor(code_layout.split(codes).shape[:, : rig.n_shape])
    n = len(codes)
    expr = torch.zeros(n, rig.n_expression)
    pose = torch.zeros(n, 3 * model.n_joints)
    rot, trans, focal, sizes = random_cameras(n, rng)
    with torch.no_grad():
        uv = model_landmarks_px(rig, shape, expr, pose, camera_rotation(rot), trans, focal,
                                torch.as_tensor(sizes / 2, dtype=torch.float32))
    iod = (uv[:, 36:42].mean(1) - uv[:, 42:48].mean(1)).norm(dim=-1)
    uv = uv + torch.as_tensor(rng.standard_normal(uv.shape), dtype=torch.float32) * noise * iod[:, None, None]
    return fit_landmarks(model, uv.numpy(), sizes, focal=focal.numpy(), rig=rig).codes


def evaluate(g, truth_ids, targets, present, sd, surface: bool = False, tangent: float = 0.0):
    from skullsearch.retrieval.score import ScoreConfig

    hits = {m: [0, 0] for m in ("s", "likelihood", "l2") + (("surface",) if surface else ())
            + (("likelihood_tangent",) if tangent else ())}
    for tid, t, m in zip(truth_ids, targets, present, strict=True):
        res = query_points(g, t, m, sd, top=10, calibration_sample=0)
        got_s = [c.face_id for c in res.candidates]
        # the same shortlist ranked by likelihood and by the shortlist's masked L2
        ids = np.array([c.face_id for c in query_points(g, t, m, sd, top=10, rank_by="likelihood",
                                                        calibration_sample=0).candidates])
        l2 = sorted(res.candidates, key=lambda c: c.shortlist_distance)
        rankings = [("s", got_s), ("likelihood", list(ids)), ("l2", [c.face_id for c in l2])]
        if surface:  # (the likelihood's shortlist, re-ranked by the surface)
            rankings.append(("surface", [c.face_id for c in query_points(
                g, t, m, sd, top=10, rank_by="surface", calibration_sample=0).candidates]))
        if tangent:  # the likelihood with an SD along the skin (query --tangent-sd)
            rankings.append(("likelihood_tangent", [c.face_id for c in query_points(
                g, t, m, sd, top=10, rank_by="likelihood", calibration_sample=0,
                score_config=ScoreConfig(tangent_sd_mm=tangent)).candidates]))
        for name, ranked in rankings:
            hits[name][0] += bool(ranked) and ranked[0] == tid
            hits[name][1] += tid in ranked[:10]
    n = len(truth_ids)
    return {f"{k}_rank{r}": round(v[i] / n, 4) for k, v in hits.items() for i, r in ((0, 1), (1, 10))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tangent-sd", type=float, default=0.0, metavar="MM",
                    help="also rank by the likelihood with this SD along the skin (query --tangent-sd)")
    ap.add_argument("--surface", action="store_true",
                    help="also rank by the surface likelihood (query --rank-by surface; ~1 s a query)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    out = {"queries": args.queries}
    sd = table_sd()
    tmp = Path(tempfile.mkdtemp(prefix="skullsearch-qacc-"))
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            from skullsearch.index.synth import synth

            g = Gallery.create(tmp / f"g{size}")
            synth(g, size, seed=args.seed)
            normals = face_normals(g.face_model)
            ids = g.sample_ids(args.queries, seed=args.seed + 7)
            pts = g.soft_tissue(ids).astype(np.float64)
            t0 = time.perf_counter()
            for missing in (0.0, 0.25):
                targets, present = synthetic_skull_targets(pts, normals, sd, rng, missing=missing)
                r = evaluate(g, ids, targets, present, sd, args.surface, args.tangent_sd)
                tag = f"{size}" + ("_missing25" if missing else "")
                out.update({f"{k}_{tag}": v for k, v in r.items()})
                print(f"{size:>7,} faces, {int(missing * 100)}% missing: " +
                      ", ".join(f"{k} {v:.1%}" for k, v in r.items()))
            # re-encoded faces: the skull comes from the face the encoder recovers from a photo
            codes = reencode(g.face_model, g.codes(ids), rng)
            rpts = neutral_soft_tissue(g.face_model, codes).astype(np.float64)
            targets, present = synthetic_skull_targets(rpts, normals, sd, rng)
            r = evaluate(g, ids, targets, present, sd, args.surface, args.tangent_sd)
            out.update({f"{k}_{size}_reencoded": v for k, v in r.items()})
            print(f"{size:>7,} faces, re-encoded from noisy landmarks: " +
                  ", ".join(f"{k} {v:.1%}" for k, v in r.items()) + f"  ({time.perf_counter() - t0:.0f} s)")
            shutil.rmtree(tmp / f"g{size}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(out)


if __name__ == "__main__":
    main()
