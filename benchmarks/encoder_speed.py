"""Encoder speed: the batched fit against a per-face scipy L-BFGS fit of the same objective.

The baseline is the usual research-code way: one face at a time, all parameters flattened
into one vector, scipy.optimize.minimize(L-BFGS-B) with torch autograd gradients, the same
objective (paper Eq. 1 + reprojection + regularizer, same weights) and the same starting camera.
The speed-up only counts at equal accuracy, so both report their landmark residual and their
vertex error against the truth (face region, similarity-aligned).

    python benchmarks/encoder_speed.py [--faces 256] [--baseline-faces 24] [--threads 1] [--compare adam]
                                       [--posterior]

``--threads`` sets torch's threads (default: torch's own); the batched fit's CPU time is
reported next to its wall time (on a shared machine the CPU time is the steadier figure).
``--compare METHOD`` also times ``FitConfig(method=METHOD)`` on the same faces; ``--posterior``
the fit with its uncertainty (posterior covariance and soft-tissue covariances).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.optimize
import torch
from _common import emit, random_faces
from encoder_accuracy import errors, observe

from skullsearch import FaceModel
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.face_model import face_region
from skullsearch.encoder.fitting import (
    FitConfig,
    LandmarkRig,
    _edge_lengths,
    _init_camera,
    camera_rotation,
    delaunay_edges,
    fit_landmarks,
    model_landmarks_px,
)


def scipy_fit_one(rig, cfg, lm, size, focal):
    """One face, scipy L-BFGS-B over [rot 3, trans 3, shape S, expr E, jaw 3]."""
    dt = torch.float64
    lm2d = torch.as_tensor(lm[None], dtype=dt)
    center = torch.as_tensor(size[None] / 2, dtype=dt)
    f = torch.tensor([focal], dtype=dt)
    scale = (lm2d[:, 36:42].mean(1) - lm2d[:, 42:48].mean(1)).norm(dim=-1)
    e_np, m_np = delaunay_edges(lm[None])
    edges = torch.as_tensor(e_np)
    emask = torch.as_tensor(m_np, dtype=dt)
    obs_len = _edge_lengths(lm2d, edges)
    rot0, trans0 = _init_camera(lm2d.float(), rig, f.float(), center.float())
    s, e = rig.n_shape, rig.n_expression
    x0 = np.concatenate([rot0[0].numpy(), trans0[0].numpy(), np.zeros(s + e + 3)])
    shape_std, expr_std = rig.shape_std.double(), rig.expr_std.double()

    def objective(x):
        xt = torch.tensor(x, dtype=dt, requires_grad=True)
        rot, trans = xt[None, :3], xt[None, 3:6]
        shape, expr, jaw = xt[None, 6: 6 + s], xt[None, 6 + s: 6 + s + e], xt[None, 6 + s + e:]
        pose = torch.cat([torch.zeros(1, 6, dtype=dt), jaw, torch.zeros(1, 6, dtype=dt)], 1)
        uv = model_landmarks_px(rig, shape.float(), expr.float(), pose.float(),
                                camera_rotation(rot).float(), trans.float(), f.float(),
                                center.float()).double()
        reproj = ((uv - lm2d) ** 2).sum(-1).mean(1) / scale**2
        edge = (((obs_len - _edge_lengths(uv, edges)) ** 2) * emask).sum(1) / emask.sum(1) / scale**2
        reg = (cfg.w_shape * ((shape / shape_std) ** 2).sum() + cfg.w_expression
               * ((expr / expr_std) ** 2).sum() + cfg.w_pose * (jaw**2).sum())
        loss = (cfg.w_landmark * reproj + cfg.w_edge * edge + reg).sum()
        loss.backward()
        return float(loss.detach()), xt.grad.numpy().copy()

    res = scipy.optimize.minimize(objective, x0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": 500, "gtol": 1e-9, "ftol": 1e-12})
    x = res.x
    with torch.no_grad():
        rot, trans = torch.tensor(x[None, :3]), torch.tensor(x[None, 3:6])
        shape, expr = torch.tensor(x[None, 6: 6 + s]), torch.tensor(x[None, 6 + s: 6 + s + e])
        jaw = torch.tensor(x[None, 6 + s + e:])
        pose = torch.cat([torch.zeros(1, 6, dtype=dt), jaw, torch.zeros(1, 6, dtype=dt)], 1)
        uv = model_landmarks_px(rig, shape.float(), expr.float(), pose.float(),
                                camera_rotation(rot).float(), trans.float(), f.float(), center.float())
    code = code_layout.pack(shape=shape.float(), expression=expr.float(), pose=pose.float(),
                            cam_rot=rot.float(), cam_trans=trans.float())
    return code[0].numpy(), float((uv.double() - lm2d).norm(dim=-1).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=256)
    ap.add_argument("--baseline-faces", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--compare", default=None, help="also time FitConfig(method=COMPARE)")
    ap.add_argument("--posterior", action="store_true",
                    help="also time the fit with its uncertainty (FitConfig(posterior=True) and the "
                         "soft-tissue covariances)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = FaceModel.default()
    cfg = FitConfig()
    rig = LandmarkRig(model, cfg.n_shape, cfg.n_expression)
    mask = face_region(model)
    shape, expr, pose = random_faces(model, args.faces, rng)
    lm, sizes, focal = observe(model, rig, shape, expr, pose, rng, 0.015)

    def timed(config):
        fit_landmarks(model, lm[:8], sizes[:8], focal=focal[:8], config=config, rig=rig)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        res = fit_landmarks(model, lm, sizes, focal=focal, config=config, rig=rig)
        return res, time.perf_counter() - t0, time.process_time() - c0

    batched, t_batched, cpu_batched = timed(cfg)
    mean_b, _ = errors(model, mask, shape, batched.codes)
    other = None
    if args.compare:
        o_res, o_t, o_cpu = timed(FitConfig(method=args.compare))
        other = {"faces_per_s": round(args.faces / o_t, 2),
                 "cpu_ms_per_face": round(1000 * o_cpu / args.faces, 2),
                 "residual_px": round(float(o_res.residual_px.mean()), 3),
                 "vertex_error_mm": round(float(errors(model, mask, shape, o_res.codes)[0].mean()), 3)}

    post = None
    if args.posterior:
        p_res, p_t, _ = timed(FitConfig(posterior=True))
        t1 = time.perf_counter()
        model.soft_tissue_covariance(p_res.shape_cov)
        t_cov = time.perf_counter() - t1
        post = {"posterior_faces_per_s": round(args.faces / (p_t + t_cov), 2),
                "posterior_time_ratio": round((p_t + t_cov) / t_batched, 3)}
        print(f"batched with the posterior: {post['posterior_faces_per_s']:.1f} faces/s "
              f"({post['posterior_time_ratio']:.2f}× the plain fit's time, soft-tissue covariances "
              "included)")

    n = min(args.baseline_faces, args.faces)
    t0 = time.perf_counter()
    base = [scipy_fit_one(rig, cfg, lm[i], sizes[i], focal[i]) for i in range(n)]
    t_base = time.perf_counter() - t0
    codes_base = np.stack([c for c, _ in base])
    mean_s, _ = errors(model, mask, shape[:n], codes_base)
    fps, bfps = args.faces / t_batched, n / t_base
    print(f"batched ({cfg.method}): {fps:.1f} faces/s, {1000 * cpu_batched / args.faces:.2f} ms CPU/face, "
          f"residual {batched.residual_px.mean():.2f} px, vertex error {mean_b.mean():.2f} mm "
          f"({args.faces} faces, {torch.get_num_threads()} threads)")
    if other:
        print(f"batched ({args.compare}): {other['faces_per_s']:.1f} faces/s, "
              f"{other['cpu_ms_per_face']:.2f} ms CPU/face, residual {other['residual_px']:.2f} px, "
              f"vertex error {other['vertex_error_mm']:.2f} mm")
    print(f"scipy L-BFGS per face: {bfps:.2f} faces/s, residual {np.mean([r for _, r in base]):.2f} px, "
          f"vertex error {mean_s.mean():.2f} mm ({n} faces)")
    emit({
        "method": cfg.method, "faces_per_s": round(fps, 2),
        "cpu_ms_per_face": round(1000 * cpu_batched / args.faces, 2),
        "baseline_faces_per_s": round(bfps, 3),
        "speedup": round(fps / bfps, 1),
        "residual_px": round(float(batched.residual_px.mean()), 3),
        "baseline_residual_px": round(float(np.mean([r for _, r in base])), 3),
        "vertex_error_mm": round(float(mean_b.mean()), 3),
        "baseline_vertex_error_mm": round(float(mean_s.mean()), 3),
        "faces": args.faces, "baseline_faces": n, "threads": torch.get_num_threads(),
        **({f"compare_{k}": v for k, v in other.items()} | {"compare_method": args.compare}
           if other else {}),
        **(post or {}),
    })


if __name__ == "__main__":
    main()
