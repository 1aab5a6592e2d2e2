"""The photometric refinement on a GPU: faces per second against the CPU, on the same faces.

The refinement (:mod:`skullsearch.encoder.photometric`) runs about 1 s a face on one CPU core,
which is why it is not the default. Two steps, because the real detector (dlib) runs here:

1. ``prepare``: renders of sampled default-model heads (as ``identity.py``'s: yaw ±40°, light,
   skin tone, a little expression) through dlib and the landmark fit; each face's code,
   landmarks, focal, photo size, true shape and its :class:`~skullsearch.encoder.photometric.FaceCrop`
   (JPEG, quality 95) go into one ``.npz``.
2. ``run``: the refinement of those faces with ``FitConfig(device=...)`` in batches of each
   ``--batch`` size, timed (the first batch of each size warms up and is not counted when there
   are several); the identity error (synthetic: the truth comes from the model) of the landmark
   fit and of the refinement, and, with ``--compare cpu``, the same faces refined on the CPU:
   faces per second on both and how far the two results are apart.

    python benchmarks/photometric_device.py prepare --faces 256 --seed 21 --out faces.npz
    python benchmarks/photometric_device.py run --data faces.npz --device cuda --batch 64 256 --compare cpu
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from _common import emit, identity_errors, random_faces, render_images


def prepare(a) -> dict:
    from PIL import Image

    from skullsearch import FaceModel
    from skullsearch.encoder.detectors import get_detector
    from skullsearch.encoder.encode import detect_faces, fit_faces
    from skullsearch.encoder.photometric import face_crop

    model = FaceModel.default()
    rng = np.random.default_rng(a.seed)
    shape, expr, pose = random_faces(model, a.faces, rng, expr_scale=0.1)
    images = render_images(model, shape, expr, pose, rng, 40.0)
    faces, _ = detect_faces(images, get_detector("dlib"), all_faces=False)
    fit_faces(model, faces)
    blobs, origins, scales = [], [], []
    for f in faces:
        c = face_crop(images[int(f.image)].pixels, f.landmarks)
        buf = io.BytesIO()
        Image.fromarray(c.pixels).save(buf, "JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        origins.append(c.origin)
        scales.append(c.scale)
    idx = np.array([int(f.image) for f in faces])
    np.savez(a.out, jpeg=np.concatenate(blobs), offsets=np.r_[0, np.cumsum([len(b) for b in blobs])],
             origin=np.array(origins), scale=np.array(scales), codes=np.stack([f.code for f in faces]),
             landmarks=np.stack([f.landmarks for f in faces]), focal=np.array([f.focal for f in faces]),
             size=np.array([f.image_size for f in faces], np.float64), shape=shape.numpy()[idx])
    out = {"step": "prepare", "photos": a.faces, "faces": len(faces), "seed": a.seed,
           "bytes": int(sum(len(b) for b in blobs))}
    emit(out)
    return out


def _refine(model, z, crops, rows, device: str, batch: int, pcfg) -> tuple[np.ndarray, float, float, int]:
    """Refined codes of ``rows``, seconds in all, and the seconds and faces that count for a rate:
    those after the first batch (its warm-up), or the one batch when there is only one."""
    from skullsearch.encoder.fitting import FitConfig
    from skullsearch.encoder.photometric import refine_photometric

    cfg = FitConfig(device=device)
    codes, times = [], []
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        t = time.perf_counter()
        res = refine_photometric(model, z["codes"][r], z["landmarks"][r], [], config=cfg, photometric=pcfg,
                                 focal=z["focal"][r], detector="dlib", crops=[crops[i] for i in r],
                                 image_sizes=z["size"][r])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        codes.append(res.codes)
    if len(times) > 1:
        return np.concatenate(codes), float(sum(times)), float(sum(times[1:])), len(rows) - batch
    return np.concatenate(codes), float(times[0]), float(times[0]), len(rows)


def run(a) -> dict:
    from skullsearch import FaceModel
    from skullsearch.encoder import code as code_layout
    from skullsearch.encoder.face_model import face_region
    from skullsearch.encoder.photometric import FaceCrop, PhotometricConfig

    z = dict(np.load(a.data))
    n = len(z["codes"]) if not a.faces else min(a.faces, len(z["codes"]))
    off = z["offsets"]
    crops = [FaceCrop.from_png(z["jpeg"][off[i]:off[i + 1]].tobytes(), z["origin"][i], z["scale"][i])
             for i in range(n)]
    model = FaceModel.default()
    mask = face_region(model)
    pcfg = PhotometricConfig(**({"steps": a.steps} if a.steps else {}))
    k = z["shape"].shape[1]
    std = model.shape_std[:k]
    fitted = code_layout.split(z["codes"][:n]).shape[:, :k]
    err_fit, err0 = identity_errors(model, mask, fitted, z["shape"][:n])
    out = {"step": "run", "faces": n, "device": a.device, "steps": pcfg.steps,
           "identity_ratio_landmark_fit": round(float(err_fit.mean() / err0.mean()), 3), "by_batch": {}}
    if a.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    rows = np.arange(n)
    results = {}
    for batch in a.batch:
        codes, total, warm, counted = _refine(model, z, crops, rows, a.device, batch, pcfg)
        err, _ = identity_errors(model, mask, code_layout.split(codes).shape[:, :k], z["shape"][:n])
        out["by_batch"][str(batch)] = {"faces_per_s": round(counted / warm, 2), "seconds": round(total, 1),
                                       "identity_ratio": round(float(err.mean() / err0.mean()), 3)}
        results[batch] = codes
        print(f"{a.device} batch {batch}: {counted / warm:.2f} faces/s, identity ratio "
              f"{err.mean() / err0.mean():.3f}", flush=True)
    if a.compare:
        m = min(n, a.compare_faces)
        batch = min(a.batch)
        codes, total, warm, counted = _refine(model, z, crops, rows[:m], a.compare, batch, pcfg)
        gpu = results[batch][:m]
        diff = np.abs((code_layout.split(codes).shape[:, :k] - code_layout.split(gpu).shape[:, :k]) / std)
        out["compare"] = {"device": a.compare, "faces": m, "batch": batch, "threads": torch.get_num_threads(),
                          "faces_per_s": round(counted / warm, 3),
                          "shape_code_max_abs_diff_sigma": round(float(diff.max()), 4),
                          "shape_code_mean_abs_diff_sigma": round(float(diff.mean()), 5)}
        print(f"{a.compare} batch {batch}: {counted / warm:.3f} faces/s; shape codes apart by at most "
              f"{diff.max():.4f} σ", flush=True)
    emit(out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="render, detect and fit the faces (here, with dlib)")
    p.add_argument("--faces", type=int, default=256)
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--out", required=True)
    r = sub.add_parser("run", help="refine them on a device, timed")
    r.add_argument("--data", required=True)
    r.add_argument("--device", default="cpu")
    r.add_argument("--batch", type=int, nargs="+", default=[64])
    r.add_argument("--faces", type=int, default=0, help="use the first N faces (0: all)")
    r.add_argument("--steps", type=int, default=0, help="refinement steps (0: PhotometricConfig's)")
    r.add_argument("--compare", default=None, help="also refine on this device (cpu), same faces")
    r.add_argument("--compare-faces", type=int, default=64, help="how many faces --compare refines")
    a = ap.parse_args(argv)
    return prepare(a) if a.step == "prepare" else run(a)


if __name__ == "__main__":
    main()
