"""Encoder accuracy on synthetic ground truth (open default model).

Faces with codes drawn from the prior are seen through realistic perspective cameras (yaw up to
±30°); their 68 landmarks (jaw line on the silhouette, as a detector marks it) get
detector-like noise (σ = 1.5 % of the inter-ocular distance); the batched fit recovers the
codes. Error: per-vertex distance between the fitted and the true *neutral* face (expression
and pose removed: the identity, which is what the soft-tissue points come from) on the face
region, after a similarity alignment (the NoW non-metrical protocol). ``mean_mm`` is the mean
over faces of the per-face mean; ``max_mm`` the mean over faces of the per-face maximum.
Multi-image: 3 photos per person share the shape (paper Eq. 2).

    python benchmarks/encoder_accuracy.py [--faces 96] [--seed 0] [--compare adam]

``--compare METHOD`` also fits the same photos with ``FitConfig(method=METHOD)`` (e.g. the
first-order ``adam`` schedule against the default Levenberg-Marquardt) and reports both; the
fit's CPU time per face is measured on one thread, with the fit's energy (lower is better: the
same objective for every method).

Paper (Liu & Li, Table 1): 2.2 mm mean / 9.7 mm max.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import emit, random_cameras, random_faces

from skullsearch import FaceModel
from skullsearch.encoder.align import align
from skullsearch.encoder.code import CODE_SIZE
from skullsearch.encoder.face_model import face_region
from skullsearch.encoder.fitting import (
    FitConfig,
    LandmarkRig,
    camera_rotation,
    code_vertices,
    fit_energy,
    fit_landmarks,
    model_landmarks_px,
)


def observe(model, rig, shape, expr, pose, rng, noise):
    rot, trans, focal, sizes = random_cameras(len(shape), rng)
    with torch.no_grad():
        uv = model_landmarks_px(rig, shape, expr, pose, camera_rotation(rot), trans, focal,
                                torch.as_tensor(sizes / 2, dtype=torch.float32))
    iod = (uv[:, 36:42].mean(1) - uv[:, 42:48].mean(1)).norm(dim=-1)
    uv = uv + torch.as_tensor(rng.standard_normal(uv.shape), dtype=torch.float32) * noise * iod[:, None, None]
    return uv.numpy(), sizes, focal.numpy()


def errors(model, mask, true_shape, codes):
    with torch.no_grad():
        truth = model.vertices(shape=true_shape).numpy()[:, mask]
        z = torch.as_tensor(codes).clone()
        z[:, 90:] = 0  # neutral: shape only
        fit = code_vertices(model, z).numpy()[:, mask]
    d = np.linalg.norm(align(fit, truth) - truth, axis=-1)  # (n, V) after similarity alignment
    return d.mean(1), d.max(1)


def run(model, rig, mask, cfg, data):
    """Fit the single-photo and the 3-photos-per-person sets with cfg → dict of figures."""
    (shape, lm, sizes, focal), (pshape, person, lm3, sizes3, focal3) = data
    fit_landmarks(model, lm[:4], sizes[:4], focal=focal[:4], config=cfg, rig=rig)  # warm-up
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time per face on one thread: comparable on a shared machine
    try:
        t0 = time.process_time()
        single = fit_landmarks(model, lm, sizes, focal=focal, config=cfg, rig=rig)
        t_single = time.process_time() - t0
    finally:
        torch.set_num_threads(threads)
    mean1, max1 = errors(model, mask, shape, single.codes)
    multi = fit_landmarks(model, lm3, sizes3, person=person, focal=focal3, config=cfg, rig=rig)
    mean3, max3 = errors(model, mask, pshape[person], multi.codes)
    return {"mean_mm": float(mean1.mean()), "max_mm": float(max1.mean()),
            "multi_mean_mm": float(mean3.mean()), "multi_max_mm": float(max3.mean()),
            "residual_px": float(single.residual_px.mean()),
            "fit_ms_per_face": 1000 * t_single / len(lm),
            "energy": float(fit_energy(model, lm, sizes, single.codes, focal=focal, config=cfg,
                                       rig=rig).mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.015)
    ap.add_argument("--compare", default=None, help="also fit with FitConfig(method=COMPARE)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    model = FaceModel.default()
    cfg = FitConfig()
    rig = LandmarkRig(model, cfg.n_shape, cfg.n_expression)
    mask = face_region(model)

    shape, expr, pose = random_faces(model, args.faces, rng)
    lm, sizes, focal = observe(model, rig, shape, expr, pose, rng, args.noise)
    n_person = max(args.faces // 3, 1)
    pshape, _, _ = random_faces(model, n_person, rng)
    person = np.repeat(np.arange(n_person), 3)
    _, pexpr, ppose = random_faces(model, len(person), rng)
    lm3, sizes3, focal3 = observe(model, rig, pshape[person], pexpr, ppose, rng, args.noise)
    data = (shape, lm, sizes, focal), (pshape, person, lm3, sizes3, focal3)
    res = run(model, rig, mask, cfg, data)
    other = run(model, rig, mask, FitConfig(method=args.compare), data) if args.compare else None

    # the mean face as the "fit": what knowing nothing about the face gives
    mean0, max0 = errors(model, mask, shape, np.zeros((args.faces, CODE_SIZE), np.float32))
    for name, r in [(cfg.method, res)] + ([(args.compare, other)] if other else []):
        print(f"[{name}] single image: {r['mean_mm']:.3f} mm mean, {r['max_mm']:.2f} mm max "
              f"(residual {r['residual_px']:.2f} px, energy {r['energy']:.5f}, "
              f"{r['fit_ms_per_face']:.1f} ms CPU/face on 1 thread)")
        print(f"[{name}] 3 images / person: {r['multi_mean_mm']:.3f} mm mean, {r['multi_max_mm']:.2f} mm max")
    print(f"mean face (no fit): {mean0.mean():.2f} mm mean, {max0.mean():.2f} mm max")
    print("paper (Table 1): 2.2 mm mean, 9.7 mm max")
    out = {k: round(v, 3 if k != "energy" else 6) for k, v in res.items()}
    out.update({"method": cfg.method, "mean_face_mean_mm": round(float(mean0.mean()), 3),
                "mean_face_max_mm": round(float(max0.mean()), 3), "faces": args.faces,
                "noise_iod": args.noise, "face_region_vertices": int(mask.sum()),
                "paper_mean_mm": 2.2, "paper_max_mm": 9.7})
    if other:
        out.update({f"compare_{k}": round(v, 3 if k != "energy" else 6) for k, v in other.items()})
        out["compare_method"] = args.compare
    emit(out)


if __name__ == "__main__":
    main()
