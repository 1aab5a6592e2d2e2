"""The exact scorer on a GPU: same matches as numpy, and how long a whole gallery takes.

``score(..., device="cuda")`` (the torch twin of the scorer, what an exhaustive query uses when
torch sees a GPU) against the numpy scorer on the same faces: matched flags, S, likelihood, RMS;
then the time to score ``--faces`` faces on the GPU (warm, median of ``--repeats``). Faces:
soft-tissue points of ``--base`` faces drawn from the default model's prior, tiled with 1 mm
noise up to ``--faces`` (synthetic; the scorer's cost does not depend on which faces).
Needs only numpy, torch and pyarrow (runs where faiss, DuckDB and dlib are not installed).

    python benchmarks/gpu_score.py --faces 1000000 --compare 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=1_000_000)
    ap.add_argument("--base", type=int, default=20_000)
    ap.add_argument("--compare", type=int, default=20_000, help="faces scored by both (numpy is slow)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import torch

    from skullsearch.encoder.face_model import FaceModel
    from skullsearch.retrieval.score import ScoreConfig, score
    from skullsearch.retrieval.tissue import load_table

    rng = np.random.default_rng(a.seed)
    model = FaceModel.default()
    base = []
    with torch.no_grad():
        for i in range(0, a.base, 2000):
            betas = torch.as_tensor(rng.standard_normal((min(2000, a.base - i), model.n_shape)),
                                    dtype=torch.float32)
            base.append(model.soft_tissue(shape=betas).numpy())
    base = np.concatenate(base).astype(np.float32)
    reps = -(-a.faces // len(base))
    pts = (np.tile(base, (reps, 1, 1))[: a.faces] + rng.normal(0, 1.0, (a.faces, 36, 3))).astype(np.float32)
    table = load_table()
    present = rng.random(36) > 0.2
    target = base[7] + rng.normal(0, table.sd[:, None].clip(0.5), (36, 3))
    cfg = ScoreConfig()
    n = min(a.compare, a.faces)
    t = time.perf_counter()
    ref = score(pts[:n], target, present, table.sd, cfg)
    t_numpy = time.perf_counter() - t
    got = score(pts[:n], target, present, table.sd, cfg, device=a.device)
    same_flags = float((ref.matched_flags == got.matched_flags).all(1).mean())
    out = {"device": a.device, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "torch": torch.__version__, "faces": a.faces, "compared": n,
           "same_matched_flags": same_flags,
           "max_abs_diff_s": float(np.abs(ref.s - got.s).max()),
           "max_abs_diff_likelihood": float(np.nanmax(np.abs(ref.likelihood - got.likelihood))),
           "max_abs_diff_rms_mm": float(np.nanmax(np.abs(ref.rms_mm - got.rms_mm))),
           "same_best_face": bool(np.argmax(ref.likelihood) == np.argmax(got.likelihood)),
           "numpy_us_per_face": round(t_numpy / n * 1e6, 2)}
    times = []
    for _ in range(a.repeats + 1):  # the first pass warms the kernels up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        score(pts, target, present, table.sd, cfg, device=a.device)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out["gpu_seconds_all_faces"] = round(float(np.median(times[1:])), 3)
    out["gpu_us_per_face"] = round(float(np.median(times[1:])) / a.faces * 1e6, 3)
    out["speedup_vs_numpy_one_core"] = round(out["numpy_us_per_face"] / out["gpu_us_per_face"], 1)
    print(f"{a.faces} faces on {out['gpu']}: {out['gpu_seconds_all_faces']} s "
          f"({out['gpu_us_per_face']} µs/face; "
          f"numpy one core {out['numpy_us_per_face']} µs/face); same matched flags on {n} faces: "
          f"{same_flags:.4f}, max |ΔS| {out['max_abs_diff_s']:.2e}")
    sys.stdout.flush()
    print(json.dumps(out, sort_keys=True))
    return out


if __name__ == "__main__":
    main()
