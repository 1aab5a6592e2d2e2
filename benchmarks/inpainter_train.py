"""Cost and quality of training the GAN inpainter (G, D, Ψ_E) on a synthetic gallery, and the cost
of one GII-GC iteration with it.

- ``render_s`` / ``renders_per_s``: normalized renders of the training faces (parallel processes);
- ``epoch_s`` (median over epochs) and ``epoch_s_per_1000_faces``;
- ``val_vertex_rms_mm`` / ``val_face_rms_mm`` / ``val_soft_tissue_rms_mm``: Ψ_E's error on held-out
  renders (all vertices / the face proper / the 36 soft-tissue points), against
  ``baseline_vertex_rms_mm`` / ``baseline_face_rms_mm``, the error of always answering the mean
  face (expected under the prior the synthetic faces are drawn from);
- ``sample_mean_corr``: correlation between the mean of 64 G samples and the mean of 64 real
  renders (1 = G puts the face where the renders have it); ``sample_std_ratio``: per-pixel std of
  the samples over that of the renders (≪ 1: G's samples vary too little, mode collapse);
- ``gii_s_per_iteration``: a GII-GC call's wall time over its iterations, with ``--starts``
  starts (the call's setup — candidate render, seam weights, final evaluation — included: an
  upper bound on one Adam step).

    python benchmarks/inpainter_train.py [--faces 1000] [--size 64] [--width 32] [--epochs 3]
        [--batch-size 64] [--device cpu|cuda] [--starts 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit

from skullsearch import FaceModel, Gallery
from skullsearch.index.synth import synth
from skullsearch.inpaint.gan import (
    CodeMetric,
    canonical_codes,
    load_inpainter,
    render_codes,
    train_inpainter,
)
from skullsearch.inpaint.gii import GIIWeights, gii_gc
from skullsearch.inpaint.regions import face_regions, revised_vertices


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("--gii-iterations", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    model = FaceModel.default()
    tmp = Path(tempfile.mkdtemp(prefix="inpainter-train-"))
    try:
        g = Gallery.create(tmp / "g", face_model=model)
        synth(g, args.faces, seed=args.seed)
        t0 = time.perf_counter()
        path = train_inpainter(g, epochs=args.epochs, batch_size=args.batch_size, size=args.size,
                               width=args.width, seed=args.seed, device=args.device, log=print)
        total_s = time.perf_counter() - t0
        inp = load_inpainter(g)
        meta, hist = inp.meta, inp.meta["history"]
        metric = CodeMetric(model, 90, 0)
        var = model.shape_std[:90].astype(np.float64) ** 2
        base_v = float(np.sqrt((np.diag(metric.g_vertex.numpy()) * var).sum()))
        base_f = float(np.sqrt((np.diag(metric.g_face.numpy()) * var).sum()))
        real = render_codes(model, canonical_codes(g.codes(g.sample_ids(64, seed=1))), inp.size)
        real = real.astype(np.float32) / 255
        fake = inp.sample(64).cpu().numpy()
        corr = float(np.corrcoef(fake.mean(0).ravel(), real.mean(0).ravel())[0, 1])
        std_ratio = float(fake.std(0).mean() / max(real.std(0).mean(), 1e-9))

        ids = g.sample_ids(2, seed=5)
        codes = g.codes(ids)
        with torch.no_grad():
            pts = model.soft_tissue(shape=torch.as_tensor(codes[:, :90])).numpy()
        present = np.ones(36, bool)
        matched = np.linalg.norm(pts[0] - pts[1], axis=1) < 3.0
        revise = revised_vertices(face_regions(model), matched, present)
        res = gii_gc(model, inp, codes[0], pts[1], present, revise, starts=args.starts,
                     iterations=args.gii_iterations, weights=GIIWeights(tol=0.0),  # every iteration
                     device=args.device)
        epoch_s = statistics.median(r["seconds"] for r in hist)
        result = {
            "faces": args.faces, "size": args.size, "width": args.width, "epochs": args.epochs,
            "batch_size": args.batch_size, "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "render_s": round(meta["render_seconds"], 2),
            "renders_per_s": round(args.faces / max(meta["render_seconds"], 1e-9), 1),
            "epoch_s": round(epoch_s, 2),
            "epoch_s_per_1000_faces": round(epoch_s * 1000 / max(meta["train_faces"], 1), 2),
            "total_s": round(total_s, 1),
            "val_vertex_rms_mm": round(hist[-1]["val_vertex_rms_mm"], 2),
            "val_face_rms_mm": round(hist[-1]["val_face_rms_mm"], 2),
            "val_soft_tissue_rms_mm": round(hist[-1]["val_soft_tissue_rms_mm"], 2),
            "baseline_vertex_rms_mm": round(base_v, 2), "baseline_face_rms_mm": round(base_f, 2),
            "d_loss": round(hist[-1]["d_loss"], 3), "g_loss": round(hist[-1]["g_loss"], 3),
            "sample_mean_corr": round(corr, 3), "sample_std_ratio": round(std_ratio, 3),
            "gii_s_per_iteration": round(res.seconds / max(len(res.losses), 1), 3),
            "gii_starts": args.starts, "checkpoint_mb": round(path.stat().st_size / 1e6, 1),
        }
        print(f"{args.faces} faces at {args.size} px (width {args.width}) on {args.device}: renders "
              f"{result['render_s']} s, {result['epoch_s']} s/epoch; Ψ_E held-out "
              f"{result['val_face_rms_mm']} mm on the face (mean-face guess {result['baseline_face_rms_mm']} "
              f"mm); G samples: mean corr {corr:.2f}, std ratio {std_ratio:.2f}; GII-GC "
              f"{result['gii_s_per_iteration']} s/iteration ({args.starts} starts)")
        emit(result)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
