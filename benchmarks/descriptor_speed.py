"""Person descriptor speed: dlib's face recognition network run by dlib against its torch port.

Both backends of :func:`skullsearch.encoder.descriptors.face_descriptors` compute the same
network (dlib's weights) on the same chips (cut by dlib): the port counts only if it gives the
same numbers, so the largest difference between the two descriptors of a face is reported, and
whether any pair of faces changes side of the ``persons`` cut (0.5). Faces come from N renders
of the default model (512 px, yaw ±30°) or, with ``--photos DIR``, from real photos; dlib finds
them once, then each backend describes every face, one photo per call (as ingest does), in
interleaved rounds on one thread (torch's threads: ``--threads``).

    python benchmarks/descriptor_speed.py [--images 48] [--photos DIR] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, random_faces, render_photos

from skullsearch import FaceModel
from skullsearch.encoder import descriptors
from skullsearch.encoder.detectors import DlibDetector
from skullsearch.encoder.encode import image_paths
from skullsearch.encoder.images import read_image


def photos(args, folder: Path) -> list[Path]:
    if args.photos:
        return image_paths([args.photos])
    rng = np.random.default_rng(args.seed)
    model = FaceModel.default()
    shape, expr, pose = random_faces(model, args.images, rng, expr_scale=0.1)
    return render_photos(model, folder, shape, expr, pose, rng)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48, help="renders (without --photos)")
    ap.add_argument("--photos", default=None, help="a folder of photos instead of renders")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    det = DlibDetector()
    with tempfile.TemporaryDirectory() as tmp:
        found = []
        for p in photos(args, Path(tmp)):
            img = read_image(p)
            if not hasattr(img, "pixels"):
                continue
            faces = det.detect(img)
            if faces:
                found.append((img.pixels, np.stack([f.box for f in faces]),
                              np.stack([f.landmarks for f in faces])))
    n_faces = sum(len(b) for _, b, _ in found)
    descriptors.torch_descriptor_model()  # loaded outside the timing, as a worker does once
    descriptors.dlib_descriptor_model()
    secs: dict[str, list[float]] = {"dlib": [], "torch": []}
    out: dict[str, np.ndarray] = {}
    for r in range(args.repeats):
        for backend in (("dlib", "torch") if r % 2 == 0 else ("torch", "dlib")):
            t = time.perf_counter()
            out[backend] = np.concatenate([descriptors.face_descriptors(px, b, lm, backend=backend)
                                           for px, b, lm in found])
            secs[backend].append(time.perf_counter() - t)
    ms = {k: 1e3 * float(np.median(v)) / n_faces for k, v in secs.items()}
    d_dlib = descriptors.descriptor_distances(out["dlib"], out["dlib"])
    d_torch = descriptors.descriptor_distances(out["torch"], out["torch"])
    iu = np.triu_indices(n_faces, 1)
    cut = descriptors.PERSON_DISTANCE
    flips = int(((d_dlib[iu] < cut) != (d_torch[iu] < cut)).sum())
    emit({
        "benchmark": "descriptor_speed", "source": args.photos or f"{args.images} renders (seed {args.seed})",
        "photos": len(found), "faces": n_faces, "threads": args.threads, "repeats": args.repeats,
        "ms_per_face_dlib": round(ms["dlib"], 2), "ms_per_face_torch": round(ms["torch"], 2),
        "speedup": round(ms["dlib"] / ms["torch"], 2),
        "max_abs_difference": float(np.abs(out["dlib"] - out["torch"]).max()),
        "max_distance_difference": float(np.abs(d_dlib - d_torch).max()),
        "pairs_changing_side_of_person_cut": flips,
    })


if __name__ == "__main__":
    main()
