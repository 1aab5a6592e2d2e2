"""Ingest throughput against the bare detector: how much does the pipeline add to dlib?

Renders N synthetic photos (512 px, perspective renders of random faces of the default model)
once, then measures, interleaved and repeated (the best of each is kept):

(a) bare dlib: a ``multiprocessing.Pool(workers)`` mapping read-with-PIL → dlib's frontal face
    detector (upsample 1) → the 68-point predictor, pool start-up included;
(b) ``Gallery.ingest([folder], workers=W)`` into a fresh gallery (detector workers, the batched fit,
    the shard write and the index update): ``overhead_ratio`` = (a) ÷ (b) images/s, goal ≤ 1.3;
(c) the same with ``engine="ray"`` when Ray is installed (else null);
(d) ingest (local) with torch limited to one thread in the encoder's process, because the batched
    fit's many small ops slow down badly when its threads compete for the CPUs.

    python benchmarks/ingest_speed.py [--images 64] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit, random_faces  # noqa: E402
from PIL import Image  # noqa: E402

from skullsearch import FaceModel, Gallery  # noqa: E402


def render_photos(folder: Path, n: int, seed: int) -> list[Path]:
    """n synthetic portrait photos (512 px PNG): yaw ±30°, random light and skin tone."""
    rng = np.random.default_rng(seed)
    model = FaceModel.default()
    shape, expr, pose = random_faces(model, n, rng, expr_scale=0.1)
    return _common.render_photos(model, folder, shape, expr, pose, rng)


# ---------------------------------------------------------------- bare dlib (pool workers)
def _bare_init():
    from skullsearch.encoder.detectors import dlib_models

    dlib_models()  # load the detector and the 68-point predictor once per worker


def _bare_detect(path: str) -> int:
    from skullsearch.encoder.detectors import dlib_models

    detector, predictor = dlib_models()
    with Image.open(path) as im:
        img = np.ascontiguousarray(np.asarray(im.convert("RGB")))
    boxes = detector(img, 1)
    for b in boxes:
        predictor(img, b)
    return len(boxes)


def run_bare(paths: list[Path], workers: int) -> tuple[float, int]:
    """Seconds (pool start-up and model loading included) and faces found."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    t0 = time.perf_counter()
    with ctx.Pool(workers, initializer=_bare_init) as pool:
        found = pool.map(_bare_detect, [str(p) for p in paths], chunksize=1)
    return time.perf_counter() - t0, int(sum(found))


def run_ingest(folder: Path, workers: int, engine: str, scratch: Path,
               torch_threads: int | None = None) -> tuple[float, object]:
    """Seconds of ``g.ingest`` into a fresh gallery (creation not timed) and its report.
    torch_threads: set torch's intra-op threads in this (the encoder's) process for the run."""
    path = Path(tempfile.mkdtemp(prefix=f"ingest-{engine}-", dir=scratch))
    old = torch.get_num_threads()
    try:
        g = Gallery.create(path)
        if torch_threads:
            torch.set_num_threads(torch_threads)
        t0 = time.perf_counter()
        rep = g.ingest([folder], workers=workers, engine=engine)
        return time.perf_counter() - t0, rep
    finally:
        torch.set_num_threads(old)
        shutil.rmtree(path, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n, w = args.images, args.workers
    scratch = Path(tempfile.mkdtemp(prefix="skullsearch-ingest-bench-"))
    try:
        folder = scratch / "photos"
        folder.mkdir()
        t0 = time.perf_counter()
        paths = render_photos(folder, n, args.seed)
        print(f"rendered {n} photos (512 px) in {time.perf_counter() - t0:.1f} s; {w} worker(s)")

        try:
            import ray  # noqa: F401

            ray_ok, ray_note = True, ""
        except ImportError:
            ray_ok = False
            ray_note = 'ray is not installed (pip install "skullsearch[distributed]" or "ray[data]")'
        times: dict[str, list[float]] = {"bare": [], "ingest": [], "ingest_t1": [], "ray": []}
        faces = {}
        ray_error = None
        for r in range(args.repeats):
            order = ["bare", "ingest", "ingest_t1"] if r % 2 == 0 else ["ingest_t1", "ingest", "bare"]
            if ray_ok and ray_error is None:
                order.append("ray")
            for what in order:
                if what == "bare":
                    s, found = run_bare(paths, w)
                    faces["bare"] = found
                else:
                    try:
                        s, rep = run_ingest(folder, w, "ray" if what == "ray" else "local", scratch,
                                            torch_threads=1 if what == "ingest_t1" else None)
                    except Exception as e:  # noqa: BLE001 - report a broken engine, keep the rest
                        if what != "ray":
                            raise
                        ray_error = f"{type(e).__name__}: {e}"
                        traceback.print_exc(limit=3)
                        continue
                    faces[what] = rep.faces
                    if rep.images_new != n or rep.failures:
                        print(f"  note: {what} ingested {rep.images_new}/{n} images, failures {rep.failures}")
                times[what].append(s)
                print(f"  round {r + 1}: {what:9s} {s:6.2f} s  {n / s:6.2f} images/s  ({faces[what]} faces)")

        def best(what):
            return n / min(times[what]) if times[what] else None

        bare, ing, ray_ips, ing1 = best("bare"), best("ingest"), best("ray"), best("ingest_t1")
        ratio = bare / ing
        print(f"bare dlib   {bare:.2f} images/s ({faces['bare']} faces)")
        print(f"ingest      {ing:.2f} images/s ({faces['ingest']} faces); overhead ratio {ratio:.2f} "
              f"({'meets' if ratio <= 1.3 else 'misses'} the ≤ 1.3 goal)")
        print(f"ingest, torch 1 thread  {ing1:.2f} images/s; overhead ratio {bare / ing1:.2f}")
        if ray_ips is not None:
            print(f"ingest ray  {ray_ips:.2f} images/s ({faces['ray']} faces)")
        elif ray_error:
            print(f"ingest ray  failed: {ray_error}")
        else:
            print(f"ingest ray  not measured: {ray_note}")
        emit({
            "images": n, "workers": w, "repeats": args.repeats,
            "bare_dlib_images_per_s": round(bare, 3), "ingest_images_per_s": round(ing, 3),
            "overhead_ratio": round(ratio, 3),
            "ray_images_per_s": round(ray_ips, 3) if ray_ips is not None else None,
            "ingest_torch1_images_per_s": round(ing1, 3), "overhead_ratio_torch1": round(bare / ing1, 3),
            "ray_note": ray_error or ray_note or None,
            "faces_bare": faces.get("bare"), "faces_ingest": faces.get("ingest"),
            "bare_seconds": [round(s, 3) for s in times["bare"]],
            "ingest_seconds": [round(s, 3) for s in times["ingest"]],
            "ingest_torch1_seconds": [round(s, 3) for s in times["ingest_t1"]],
            "ray_seconds": [round(s, 3) for s in times["ray"]],
        })
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
