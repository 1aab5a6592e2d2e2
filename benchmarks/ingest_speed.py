"""Ingest throughput against the bare detector: how much does the pipeline add to dlib (or the mesh)?

Renders N synthetic photos (512 px, perspective renders of random faces of the default model)
once, then measures, in interleaved rounds (bare, ingest, [ray]; the order alternates):

(a) bare dlib: a ``multiprocessing.Pool(workers)`` mapping read-with-PIL → dlib's frontal face
    detector (upsample 1) → the 68-point predictor, pool start-up included;
(b) ``Gallery.ingest([folder], workers=W)`` into a fresh gallery (detector workers with the photo
    fingerprint and person descriptor — ``--no-descriptors`` leaves the descriptor out —, the
    batched fit, the shard write and the index update): ``overhead_ratio`` = (a) ÷ (b) images/s, goal ≤ 1.3;
(c) the same with ``engine="ray"`` when Ray is installed (else null).

Each round gives its own ratio (bare and ingest run back to back, so a shared machine's load
hits both alike); the median over rounds is ``overhead_ratio`` and the spread is reported.
CPU seconds (this process and its reaped children: the worker pools) are counted too:
``cpu_ratio`` = ingest CPU ÷ bare CPU is the extra work, which load does not change much; on a
machine whose cores the detectors fill, the wall ratio cannot go below it.

    python benchmarks/ingest_speed.py [--images 64] [--workers 2] [--repeats 3] [--detector dlib|mesh]
        [--photometric]

``--photometric`` ingests with the photometric refinement (``ingest(photometric=True)``): the
ratio is then what the refinement costs over the bare detector, not the ≤ 1.3 goal's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import numpy as np  # noqa: E402
from _common import emit, random_faces  # noqa: E402
from PIL import Image  # noqa: E402

from skullsearch import FaceModel, Gallery  # noqa: E402


def render_photos(folder: Path, n: int, seed: int) -> list[Path]:
    """n synthetic portrait photos (512 px PNG): yaw ±30°, random light and skin tone."""
    rng = np.random.default_rng(seed)
    model = FaceModel.default()
    shape, expr, pose = random_faces(model, n, rng, expr_scale=0.1)
    return _common.render_photos(model, folder, shape, expr, pose, rng)


# ---------------------------------------------------------------- bare detector (pool workers)
_BARE = {"detector": "dlib"}


def _bare_init(detector: str = "dlib"):
    _BARE["detector"] = detector
    if detector == "mesh":
        from skullsearch.encoder.mesh import mesh_points

        mesh_points(np.zeros((64, 64, 3), np.uint8))  # build the graph once per worker
        return
    from skullsearch.encoder.detectors import dlib_models

    dlib_models()  # load the detector and the 68-point predictor once per worker


def _bare_detect(path: str) -> int:
    with Image.open(path) as im:
        img = np.ascontiguousarray(np.asarray(im.convert("RGB")))
    if _BARE["detector"] == "mesh":
        from skullsearch.encoder.mesh import mesh_points

        return len(mesh_points(img))
    from skullsearch.encoder.detectors import dlib_models

    detector, predictor = dlib_models()
    boxes = detector(img, 1)
    for b in boxes:
        predictor(img, b)
    return len(boxes)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its reaped children."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def run_bare(paths: list[Path], workers: int, detector: str = "dlib") -> tuple[float, float, int]:
    """Seconds and CPU seconds (pool start-up and model loading included) and faces found. The
    pool starts as ingest's does for the detector (spawned for the mesh)."""
    from skullsearch.index.detect_stage import SPAWN_DETECTORS

    fork = "fork" in mp.get_all_start_methods() and detector not in SPAWN_DETECTORS
    ctx = mp.get_context("fork" if fork else "spawn")
    c0, t0 = cpu_seconds(), time.perf_counter()
    with ctx.Pool(workers, initializer=_bare_init, initargs=(detector,)) as pool:
        found = pool.map(_bare_detect, [str(p) for p in paths], chunksize=1)
    pool.join()  # reaped: their CPU time is counted
    return time.perf_counter() - t0, cpu_seconds() - c0, int(sum(found))


def run_ingest(folder: Path, workers: int, engine: str, scratch: Path,
               first_chunk: int = 64, descriptors: bool = True,
               detector: str = "dlib", photometric: bool = False) -> tuple[float, float, object]:
    """Seconds and CPU seconds of ``g.ingest`` into a fresh gallery (creation not timed) and its
    report (Ray's actors are not children of this process: their CPU is not counted)."""
    path = Path(tempfile.mkdtemp(prefix=f"ingest-{engine}-", dir=scratch))
    try:
        g = Gallery.create(path)
        c0, t0 = cpu_seconds(), time.perf_counter()
        rep = g.ingest([folder], workers=workers, engine=engine, first_chunk=first_chunk,
                       descriptors=descriptors, detector=detector, photometric=photometric)
        return time.perf_counter() - t0, cpu_seconds() - c0, rep
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median ratio reported)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    ap.add_argument("--first-chunk", type=int, default=64, help="photos in the first shard (local)")
    ap.add_argument("--photos", default=None, help="render into (and reuse) this folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-descriptors", action="store_true",
                    help="ingest without person descriptors (the detector workers' extra ~75 ms per face)")
    ap.add_argument("--detector", default="dlib", help="dlib or mesh (MediaPipe's face mesh): the bare "
                    "pool runs that detector alone, ingest uses it")
    ap.add_argument("--photometric", action="store_true",
                    help="ingest with the photometric refinement (the overhead ratio is then its cost)")
    args = ap.parse_args(argv)
    n, w = args.images, args.workers
    scratch = Path(tempfile.mkdtemp(prefix="skullsearch-ingest-bench-"))
    try:
        folder = Path(args.photos) if args.photos else scratch / "photos"
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        paths = sorted(folder.glob("*.png"))
        if len(paths) != n:
            for p in paths:
                p.unlink()
            paths = render_photos(folder, n, args.seed)
        print(f"{n} photos (512 px) ready in {time.perf_counter() - t0:.1f} s; {w} worker(s)")

        try:
            import ray  # noqa: F401

            ray_ok, ray_note = True, ""
        except ImportError:
            ray_ok = False
            ray_note = 'ray is not installed (pip install "skullsearch[distributed]" or "ray[data]")'
        times: dict[str, list[float]] = {"bare": [], "ingest": [], "ray": []}
        cpu: dict[str, list[float]] = {"bare": [], "ingest": [], "ray": []}
        faces = {}
        ray_error = None
        for r in range(args.repeats):
            order = ["bare", "ingest"] if r % 2 == 0 else ["ingest", "bare"]
            if ray_ok and ray_error is None and not args.no_ray:
                order.append("ray")
            for what in order:
                if what == "bare":
                    s, c, found = run_bare(paths, w, args.detector)
                    faces["bare"] = found
                else:
                    try:
                        s, c, rep = run_ingest(folder, w, "ray" if what == "ray" else "local", scratch,
                                               args.first_chunk, not args.no_descriptors, args.detector,
                                               args.photometric)
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
                cpu[what].append(c)
                print(f"  round {r + 1}: {what:6s} {s:6.2f} s  {n / s:6.2f} images/s  CPU {c:6.2f} s "
                      f"({faces[what]} faces)")
            print(f"  round {r + 1}: overhead ratio {times['ingest'][-1] / times['bare'][-1]:.3f}, "
                  f"CPU ratio {cpu['ingest'][-1] / cpu['bare'][-1]:.3f}")

        def best(what):
            return n / min(times[what]) if times[what] else None

        ratios = np.array(times["ingest"]) / np.array(times["bare"])
        cpu_ratios = np.array(cpu["ingest"]) / np.array(cpu["bare"])
        ratio = float(np.median(ratios))
        bare, ing, ray_ips = best("bare"), best("ingest"), best("ray")
        print(f"bare {args.detector:6s} {bare:.2f} images/s best ({faces['bare']} faces), "
              f"{np.median(cpu['bare']) / n * 1e3:.0f} ms CPU per photo")
        print(f"ingest      {ing:.2f} images/s best ({faces['ingest']} faces), "
              f"{np.median(cpu['ingest']) / n * 1e3:.0f} ms CPU per photo")
        print(f"overhead ratio (per round, ingest ÷ bare seconds): median {ratio:.3f}, "
              f"range {ratios.min():.3f}–{ratios.max():.3f} over {len(ratios)} rounds "
              f"({'meets' if ratio <= 1.3 else 'misses'} the ≤ 1.3 goal)")
        print(f"CPU ratio: median {np.median(cpu_ratios):.3f}, "
              f"range {cpu_ratios.min():.3f}–{cpu_ratios.max():.3f}")
        if ray_ips is not None:
            print(f"ingest ray  {ray_ips:.2f} images/s ({faces['ray']} faces)")
        elif ray_error:
            print(f"ingest ray  failed: {ray_error}")
        else:
            print(f"ingest ray  not measured: {ray_note or 'skipped (--no-ray)'}")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        emit({
            "images": n, "workers": w, "repeats": args.repeats, "cpus": os.cpu_count(),
            "first_chunk": args.first_chunk,
            "load_average_1min": round(load, 2) if load is not None else None,
            "bare_images_per_s": round(bare, 3), "ingest_images_per_s": round(ing, 3),
            "descriptors": not args.no_descriptors, "detector": args.detector,
            "photometric": args.photometric,
            "overhead_ratio": round(ratio, 3),
            "overhead_ratio_min": round(float(ratios.min()), 3),
            "overhead_ratio_max": round(float(ratios.max()), 3),
            "cpu_ratio": round(float(np.median(cpu_ratios)), 3),
            "bare_cpu_ms_per_photo": round(float(np.median(cpu["bare"])) / n * 1e3, 1),
            "ingest_cpu_ms_per_photo": round(float(np.median(cpu["ingest"])) / n * 1e3, 1),
            "ray_images_per_s": round(ray_ips, 3) if ray_ips is not None else None,
            "ray_note": ray_error or ray_note or None,
            "faces_bare": faces.get("bare"), "faces_ingest": faces.get("ingest"),
            "bare_seconds": [round(s, 3) for s in times["bare"]],
            "ingest_seconds": [round(s, 3) for s in times["ingest"]],
            "ray_seconds": [round(s, 3) for s in times["ray"]],
        })
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
