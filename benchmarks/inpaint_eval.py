"""Re-synthesis accuracy on synthetic ground truth (issue 6).

For each query: a face NOT in the gallery (shape drawn from the prior with its own seed) → its
synthetic skull (:func:`skullsearch.retrieval.synthetic.synthetic_skull`: the face's inner
offset surface by the 2023 global T-Table depths, optionally with depth noise, under a random
rigid motion) → query the gallery → reconstruct the top candidates with each method.

Measured per reconstruction, then averaged (and the worst reported):

- ``s_after`` (goal 1.0) and ``s_before`` (the candidate as retrieved);
- ``truth_mean_mm`` / ``truth_max_mm``: per-vertex distance between the reconstruction's mesh in
  the skull's frame (placed by its own after-superimposition transform, as written to the PLY)
  and the true face in that frame, over the face proper
  (:func:`skullsearch.encoder.face_model.face_region`: 25 mm above glabella to menton, in front
  of the zygia); same topology, so vertex i against vertex i; mean over vertices, max over
  vertices; ``candidate_mean_mm`` / ``candidate_max_mm`` the same for the retrieved candidate's
  neutral face placed by its query transform (the starting point);
- ``mutual_mean_mm`` / ``mutual_max_mm``: the same per-vertex distance between the
  reconstructions of one query from different candidates (all pairs);
- ``iterations`` and ``seconds`` per reconstruction.

GII-GC (the GAN) runs when an inpainter can be trained here (``--gan``: a small one through
``skullsearch.inpaint.gan.train_inpainter``, minutes on a CPU); otherwise only F3DMM-GC is
reported and the JSON says why.

    python benchmarks/inpaint_eval.py [--gallery 2000] [--queries 3] [--candidates 3] [--gan]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit

from skullsearch import Gallery, Skull
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.face_model import FaceModel, face_region
from skullsearch.index.synth import synth
from skullsearch.inpaint.reconstruct import reconstruct


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gallery", type=int, default=2000, help="synthetic gallery faces")
    ap.add_argument("--queries", type=int, default=3, help="skulls (faces not in the gallery)")
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--depth-noise", type=float, default=0.0, help="skull depth error in table SDs")
    ap.add_argument("--voxel", type=float, default=2.0, help="synthetic skull marching-cubes step (mm)")
    ap.add_argument("--gan", action="store_true", help="also train a small inpainter and run GII-GC")
    ap.add_argument("--gan-epochs", type=int, default=5)
    ap.add_argument("--gan-faces", type=int, default=512)
    ap.add_argument("--gan-size", type=int, default=64)
    ap.add_argument("--gan-width", type=int, default=16, help="G/D base channels (small for a CPU)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--prior-quantile", default="0.999",
                    help="F3DMM-GC's prior bound (FitWeights.prior_quantile); 'none' disables it")
    ap.add_argument("--face-model", default="ict", help="a built-in model: ict (default) or anny")
    ap.add_argument("--fit", choices=("map", "paper"), default="map",
                    help="F3DMM-GC: map (the default: landmarks weighted by 1/σ², one solve) or "
                         "paper (re-weighted towards S = 1)")
    args = ap.parse_args(argv)
    from skullsearch.inpaint.fit import FitWeights

    fit_weights = FitWeights(prior_quantile=None if args.prior_quantile == "none"
                             else float(args.prior_quantile), landmark_sigma=args.fit == "map")

    from skullsearch.retrieval.synthetic import synthetic_skull

    model = FaceModel.builtin(args.face_model)
    face = face_region(model)
    tmp = Path(tempfile.mkdtemp(prefix="inpaint-eval-"))
    try:
        g = Gallery.create(tmp / "g", face_model=model)
        synth(g, args.gallery, seed=0)
        methods = ["fit"]
        gan_note = "GII-GC not run: pass --gan to train a small inpainter"
        if args.gan:
            try:
                from skullsearch.inpaint.gan import train_inpainter
                from skullsearch.inpaint.gii import gii_gc  # noqa: F401
            except ImportError:
                gan_note = "GII-GC not run: skullsearch.inpaint.gan / gii are not available"
            else:
                t0 = time.perf_counter()
                train_inpainter(g, epochs=args.gan_epochs, faces=args.gan_faces, size=args.gan_size,
                                width=args.gan_width)
                gan_note = (f"GII-GC with an inpainter trained here: {args.gan_faces} faces, "
                            f"{args.gan_epochs} epochs, {args.gan_size} px, width {args.gan_width}, "
                            f"{time.perf_counter() - t0:.0f} s on this machine")
                methods.append("gan")
        rng = np.random.default_rng(args.seed)
        rows = {m: [] for m in methods}
        mutual = {m: [] for m in methods}
        for q in range(args.queries):
            shape = rng.standard_normal((1, min(model.n_shape, 90))).astype(np.float32)
            code = code_layout.pack(shape=shape)[0]
            sk = synthetic_skull(model, code, depth_noise=args.depth_noise, rng=rng, rigid_motion=True,
                                 voxel_mm=args.voxel)
            path = sk.save(tmp / f"q{q}")
            skull = Skull.load(path)
            truth = np.asarray(sk.face_vertices, np.float64)[face]
            for m in methods:
                res = reconstruct(skull, g, candidates=args.candidates, method=m, record=False,
                                  fit_weights=fit_weights if m == "fit" else None)
                placed = _candidates_placed(g, res)
                for r, before in zip(res, placed, strict=True):
                    d = np.linalg.norm(r.vertices_skull.astype(np.float64)[face] - truth, axis=1)
                    d0 = np.linalg.norm(before[face] - truth, axis=1)
                    rows[m].append({"s_before": r.s_before, "s_after": r.s_after,
                                    "truth_mean_mm": d.mean(), "truth_max_mm": d.max(),
                                    "candidate_mean_mm": d0.mean(), "candidate_max_mm": d0.max(),
                                    "iterations": r.iterations, "seconds": r.seconds})
                for a, b in itertools.combinations(list(res), 2):
                    diff = (a.vertices_skull - b.vertices_skull).astype(np.float64)[face]
                    dd = np.linalg.norm(diff, axis=1)
                    mutual[m].append((dd.mean(), dd.max()))
                last = rows[m][-len(res):]
                print(f"query {q} {m}: S {np.mean([x['s_before'] for x in last]):.3f} → "
                      f"{np.mean([x['s_after'] for x in last]):.3f}, truth "
                      f"{np.mean([x['truth_mean_mm'] for x in last]):.2f} mm mean "
                      f"(candidate {np.mean([x['candidate_mean_mm'] for x in last]):.2f}), "
                      f"{np.mean([x['seconds'] for x in last]):.2f} s each", flush=True)
        out = {"benchmark": "inpaint_eval", "gallery_faces": args.gallery, "queries": args.queries,
               "candidates": args.candidates, "depth_noise_sd": args.depth_noise,
               "face_region_vertices": int(face.sum()), "gan_note": gan_note}
        for m in methods:
            r = rows[m]

            def mean(k, r=r):
                return round(float(np.mean([x[k] for x in r])), 4)

            out[m] = {
                "reconstructions": len(r), "s_before": mean("s_before"), "s_after": mean("s_after"),
                "s_after_min": round(float(min(x["s_after"] for x in r)), 4),
                "truth_mean_mm": mean("truth_mean_mm"), "truth_max_mm": mean("truth_max_mm"),
                "truth_max_mm_worst": round(float(max(x["truth_max_mm"] for x in r)), 3),
                "candidate_mean_mm": mean("candidate_mean_mm"), "candidate_max_mm": mean("candidate_max_mm"),
                "mutual_mean_mm": round(float(np.mean([a for a, _ in mutual[m]])), 4) if mutual[m] else None,
                "mutual_max_mm": round(float(np.mean([b for _, b in mutual[m]])), 4) if mutual[m] else None,
                "iterations": mean("iterations"), "seconds": mean("seconds"),
            }
        if "gan" not in out:
            out["gan"] = None
        print()
        for m in methods:
            o = out[m]
            print(f"{m:4s}: S {o['s_before']:.3f} → {o['s_after']:.3f} (min {o['s_after_min']:.3f}); "
                  f"truth {o['truth_mean_mm']:.2f} / {o['truth_max_mm']:.2f} mm mean / max "
                  f"(candidate as retrieved {o['candidate_mean_mm']:.2f} / {o['candidate_max_mm']:.2f}); "
                  f"mutual {o['mutual_mean_mm']} / {o['mutual_max_mm']} mm; "
                  f"{o['iterations']:.1f} iterations, {o['seconds']:.2f} s per reconstruction")
        print(gan_note)
        out.update(face_model=args.face_model, prior_quantile=args.prior_quantile,
                   fit_mode=args.fit,
                   depth_noise_sd=args.depth_noise)
        emit(out)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _candidates_placed(g, res) -> list[np.ndarray]:
    """The candidates' neutral faces (V, 3) placed on the skull by their query transforms."""
    import torch

    from skullsearch.encoder.align import apply_similarity
    from skullsearch.retrieval.score import score

    model = g.face_model
    ids = [r.face_id for r in res]
    codes = g.codes(ids)
    shape = code_layout.split(codes).shape[:, : min(model.n_shape, 90)]
    with torch.no_grad():
        v = model.vertices(shape=torch.as_tensor(np.ascontiguousarray(shape))).double().numpy()
    from skullsearch.retrieval.tissue import load_table

    sd = load_table(res.tissue_table).sd
    sc = score(g.soft_tissue(ids), np.nan_to_num(res.target), res.present, sd)
    return list(apply_similarity(v, sc.scale, sc.rotation, sc.translation))


if __name__ == "__main__":
    main()
