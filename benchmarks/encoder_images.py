"""End to end on images: synthetic photos (perspective renders of known faces, yaw ±30°, random
light and skin tone) through the real decoder, the dlib detector and the batched fit.

Reports how many faces were found, the landmark residual, the identity error against the truth
(face region, similarity-aligned, as encoder_accuracy.py) and the throughput of each stage.

    python benchmarks/encoder_images.py [--images 48] [--photometric] [--threads 1]

``--photometric`` also refines every fit with the photo's shading
(:mod:`skullsearch.encoder.photometric`) and reports its identity error and its time per face
beside the landmark fit's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_texture_argument, emit, identity_errors, random_faces, render_photos

from skullsearch import FaceModel
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.detectors import DlibDetector
from skullsearch.encoder.encode import detect_faces, fit_faces
from skullsearch.encoder.face_model import face_region
from skullsearch.encoder.images import read_images


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_texture_argument(ap)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--face-model", default=None, help="a built-in name (ict, anny) or a model file")
    ap.add_argument("--photometric", action="store_true", help="also refine with the photos' shading")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    model = FaceModel.from_env(args.face_model)
    mask = face_region(model)
    shape, expr, pose = random_faces(model, args.images, rng, expr_scale=0.1)
    folder = Path(tempfile.mkdtemp(prefix="skullsearch-bench-"))
    paths = render_photos(model, folder, shape, expr, pose, rng, texture=args.texture)

    t0 = time.perf_counter()
    decoded = read_images(paths)
    t1 = time.perf_counter()
    faces, failures = detect_faces(decoded, DlibDetector(), all_faces=False)
    t2 = time.perf_counter()
    fit_faces(model, faces)
    t3 = time.perf_counter()

    idx = [int(Path(f.image).stem[5:]) for f in faces]
    fitted = code_layout.split(np.stack([f.code for f in faces])).shape
    err, err0 = identity_errors(model, mask, fitted, shape[idx].numpy())
    found = len(faces)
    print(f"found {found}/{args.images} faces; residual {np.mean([f.residual_px for f in faces]):.2f} px; "
          f"identity error {err.mean():.2f} mm mean, {err.max(1).mean():.2f} mm max "
          f"(the mean face: {err0.mean():.2f} / {err0.max(1).mean():.2f}; "
          f"ratio {err.mean() / err0.mean():.2f})")
    print(f"decode {args.images / (t1 - t0):.0f} img/s, detect {args.images / (t2 - t1):.1f} img/s, "
          f"fit {found / (t3 - t2):.1f} faces/s (one process)")
    emit({
        "images": args.images, "texture": args.texture, "faces_found": found,
        "residual_px": round(float(np.mean([f.residual_px for f in faces])), 3),
        "mean_mm": round(float(err.mean()), 3), "max_mm": round(float(err.max(1).mean()), 3),
        "mean_face_mean_mm": round(float(err0.mean()), 3),
        "ratio_to_mean_face": round(float(err.mean() / err0.mean()), 3),
        "decode_images_per_s": round(args.images / (t1 - t0), 1),
        "detect_images_per_s": round(args.images / (t2 - t1), 2),
        "fit_faces_per_s": round(found / (t3 - t2), 2),
        "failures": len(failures),
        **(_photometric(model, mask, faces, decoded, shape[idx].numpy(), err0) if args.photometric else {}),
    })


def _photometric(model, mask, faces, decoded, true_shape, err0) -> dict:
    """The landmark fits refined by the photos' shading: identity error and seconds per face."""
    from skullsearch.encoder.photometric import refine_faces

    t = time.perf_counter()
    refine_faces(model, faces, {im.path: im.pixels for im in decoded if hasattr(im, "pixels")})
    dt = time.perf_counter() - t
    shapes = code_layout.split(np.stack([f.code for f in faces])).shape
    err, _ = identity_errors(model, mask, shapes, true_shape)
    print(f"photometric: identity error {err.mean():.2f} mm mean (ratio {err.mean() / err0.mean():.2f}); "
          f"{dt / len(faces):.2f} s per face (one process)")
    return {"photometric_mean_mm": round(float(err.mean()), 3),
            "photometric_ratio_to_mean_face": round(float(err.mean() / err0.mean()), 3),
            "photometric_residual_px": round(float(np.mean([f.residual_px for f in faces])), 3),
            "photometric_seconds_per_face": round(dt / len(faces), 3)}


if __name__ == "__main__":
    main()
