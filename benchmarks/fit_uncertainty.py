"""Is the fit's posterior covariance calibrated? (synthetic: renders of the default model)

Faces drawn from the default model's prior are rendered once each (perspective, yaw ±40°, pitch,
light, skin tone, a little expression), go through the real decoder and dlib detector, and are
fitted with ``FitConfig(posterior=True)`` at each ``--noise`` (the landmark noise, a fraction of
the inter-ocular distance, that scales the data term of the posterior). For every face the true
neutral soft-tissue points are compared with the fitted ones (similarity-aligned, as a score
aligns a face to a skull) under the face's own covariance Σ_face:

- median Mahalanobis² per point (χ²₃'s median 2.37 when calibrated; larger: over-confident);
- share of points inside their 95 % ellipsoid (0.95 when calibrated);
- per axis (x width, y height, z depth), the mean squared error over the mean predicted variance
  (1 when calibrated): does the posterior know that a frontal photo fixes widths, not depths?

    python benchmarks/fit_uncertainty.py [--faces 120] [--noise 0.03 0.05 0.08 0.12] [--seed 1]

The default ``FitConfig.landmark_noise`` is the calibrated value of this benchmark at seed 1
(other renders than ``benchmarks/identity.py``'s seed 0, where identification is measured).

``--photometric [DISCOUNT ...]`` refines each fit with its photo's shading and calibrates the
refined posterior instead (one row per noise and ``PhotometricConfig.posterior_discount``; its
default was set here, seed 1), and times the refinement with the posterior against the same
refinement without (``posterior_time_ratio``: the first row's); ``--texture``,
``--camera-gamma``, ``--shadows``, ``--light-up`` render as ``identity.py`` does.

    python benchmarks/fit_uncertainty.py --faces 60 --noise 0.03 --photometric 10 30 100

``--per-person K`` photographs each head K times (other poses, lights, expressions) and also fits
each head's photos with one shape (paper Eq. 2), one calibration row per
``--photo-correlation`` value (``FitConfig.photo_correlation``: the photos' summed information
divided by 1 + (K − 1) ρ; each head counted once), beside the photos fitted alone; and reports how
alike one head's photos' errors are (``photo_error_correlation``: the mean product of two of its
photos' errors over the mean squared error, each photo fitted alone — the model's prior, which
pulls every photo of a head the same way, makes it high; the posterior already knows that part).

    python benchmarks/fit_uncertainty.py --faces 120 --per-person 3 --noise 0.03 \
        --photo-correlation 0 0.2 0.4 0.6 0.8 [--photometric]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from _common import (
    CHI2_3_95,
    CHI2_3_MEDIAN,
    add_camera_arguments,
    add_texture_argument,
    emit,
    random_faces,
    render_photos,
    tissue_errors_under_cov,
)

from skullsearch import FaceModel
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.detectors import DlibDetector
from skullsearch.encoder.encode import detect_faces, fit_faces
from skullsearch.encoder.fitting import FitConfig
from skullsearch.encoder.images import read_images
from skullsearch.encoder.photometric import PhotometricConfig, refine_faces
from skullsearch.index.ingest import neutral_soft_tissue


def calibration(model, faces, true_pts: np.ndarray, noise: float, pixels: dict | None = None,
                discount: float | None = None, persons: np.ndarray | None = None,
                correlation: float = 0.0) -> dict:
    """Fit the faces with the posterior at this noise (refined by their photos' shading, with
    this posterior_discount, where pixels are given); compare with the truth (one row per face).
    persons (n,): each face's head; then every head's photos share one shape (paper Eq. 2), and
    each head counts once (its first face's code and covariance, ``true_pts`` its first face's),
    its photos' errors taken as correlated by ``correlation`` (``FitConfig.photo_correlation``).
    """
    cfg = FitConfig(posterior=True, landmark_noise=noise, photo_correlation=correlation)
    for i, f in enumerate(faces):
        f.person = None if persons is None else str(persons[i])
    fit_faces(model, faces, config=cfg)
    seconds = None
    if pixels is not None:
        t = time.perf_counter()
        refine_faces(model, faces, pixels, cfg, PhotometricConfig(posterior_discount=discount))
        seconds = time.perf_counter() - t
    first = (np.arange(len(faces)) if persons is None
             else np.unique(np.asarray(persons), return_index=True)[1])  # each head's first face
    codes = np.stack([f.code for f in faces])[first]
    cov = np.stack([f.tissue_cov for f in faces]).astype(np.float64)[first]  # (n, 36, 3, 3)
    err, m2 = tissue_errors_under_cov(neutral_soft_tissue(model, codes), true_pts[first], cov)
    var = np.diagonal(cov, axis1=-2, axis2=-1)  # (n, 36, 3)
    ratio = (err**2).mean((0, 1)) / var.mean((0, 1))
    return {"noise": noise,
            **({} if pixels is None else {"posterior_discount": discount,
                                          "refine_seconds": round(seconds, 1)}),
            **({} if persons is None else {"photos_one_shape": True, "heads": len(first),
                                           "photo_correlation": correlation}),
            "_err": err, "_var": var,
            "median_mahalanobis2": round(float(np.median(m2)), 3),
            "inside_95pct": round(float((m2 < CHI2_3_95).mean()), 3),
            "error_over_predicted_xyz": [round(float(r), 3) for r in ratio],
            "predicted_sd_mm_xyz": [round(float(v), 3) for v in np.sqrt(var.mean((0, 1)))],
            "error_rms_mm_xyz": [round(float(v), 3) for v in np.sqrt((err**2).mean((0, 1)))]}


def photo_error_correlation(err: np.ndarray, head: np.ndarray) -> float:
    """How alike the errors of one head's photos are: the mean product of two different photos'
    soft-tissue errors of the same head over the mean squared error, pooled over points and axes
    (err (n, 36, 3) mm, each photo fitted alone; head (n,)). 0: independent; 1: every photo errs
    the same way."""
    num, pairs = 0.0, 0
    for h in np.unique(head):
        e = err[head == h].reshape((head == h).sum(), -1)
        for i in range(len(e)):
            for j in range(i + 1, len(e)):
                num += float(e[i] @ e[j])
                pairs += 1
    return num / max(pairs, 1) / float((err**2).sum((1, 2)).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=120)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.03, 0.05, 0.08, 0.12])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--photometric", type=float, nargs="*", metavar="DISCOUNT",
                    help="refine each fit with its photo's shading and calibrate the refined posterior "
                         "at each of these PhotometricConfig.posterior_discount values (default: the "
                         "configured one)")
    ap.add_argument("--per-person", type=int, default=1, metavar="K",
                    help="photos per head (K > 1: each head also fitted with one shape over its K "
                         "photos, and how alike its photos' errors are is measured)")
    ap.add_argument("--photo-correlation", type=float, nargs="+", default=[FitConfig.photo_correlation],
                    metavar="RHO", help="with --per-person: the one-shape fits' FitConfig.photo_correlation "
                                        "values to try (one row each)")
    add_texture_argument(ap)
    add_camera_arguments(ap)
    a = ap.parse_args(argv)
    if a.per_person < 1:
        ap.error("--per-person must be at least 1")
    rng = np.random.default_rng(a.seed)
    model = FaceModel.default()
    k = a.per_person
    shape, expr, pose = random_faces(model, a.faces * k, rng, expr_scale=0.1)
    shape = shape[::k].repeat_interleave(k, 0)  # each head photographed k times
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skullsearch-uncertainty-") as folder:
        paths = render_photos(model, folder, shape, expr, pose, rng, max_yaw=40.0, texture=a.texture,
                              gamma=a.camera_gamma, shadows=a.shadows, light_up=a.light_up)
        # (the decoded photos are kept only for the refinement, which reads them again)
        images = list(read_images(paths)) if a.photometric is not None else read_images(paths)
        faces, _ = detect_faces(images, DlibDetector(), all_faces=False)
    pixels = None if a.photometric is None else {im.path: im.pixels for im in images if hasattr(im, "pixels")}
    t1 = time.perf_counter()
    photo = np.array([int(str(f.image).rsplit("photo", 1)[1][:4]) for f in faces])
    true_pts = neutral_soft_tissue(model, code_layout.pack(shape=shape.numpy()[photo])).astype(np.float64)
    discounts = [None] if a.photometric is None else (a.photometric or [PhotometricConfig.posterior_discount])
    rows = [calibration(model, faces, true_pts, n, pixels, d) for n in a.noise for d in discounts]
    shared, rho = [], None
    if k > 1:  # the same, each head's photos sharing one shape
        rho = photo_error_correlation(rows[0]["_err"], photo // k)
        shared = [calibration(model, faces, true_pts, n, pixels, d, persons=photo // k, correlation=c)
                  for n in a.noise for d in discounts for c in a.photo_correlation]
    t2 = time.perf_counter()
    plain = None
    if a.photometric is not None:  # the same refinement without the posterior: its time
        for f in faces:
            f.person = None
        fit_faces(model, faces)
        t = time.perf_counter()
        refine_faces(model, faces, pixels)
        plain = time.perf_counter() - t
    best = min(rows, key=lambda r: abs(np.log(r["median_mahalanobis2"] / CHI2_3_MEDIAN)))
    for r in rows + shared:
        discount = f", posterior_discount {r['posterior_discount']:g}" if "posterior_discount" in r else ""
        who = f", {k} photos one shape, photo_correlation {r['photo_correlation']:g}" if "heads" in r else ""
        print(f"noise {r['noise']:g} IOD{discount}{who}: median Mahalanobis² {r['median_mahalanobis2']} "
              f"(calibrated 2.37), {r['inside_95pct']:.1%} inside the 95 % ellipsoid, "
              f"error²/predicted x, y, z {r['error_over_predicted_xyz']}")
    if rho is not None:
        print(f"one head's photos' errors (each photo fitted alone) correlate by {rho:.3f}")
    for r in rows + shared:
        del r["_err"], r["_var"]
    out = {"faces": len(faces), "photos": a.faces * k, "heads": a.faces, "seed": a.seed, "synthetic": True,
           "texture": a.texture, "camera_gamma": a.camera_gamma, "shadows": a.shadows, "light_up": a.light_up,
           "photometric": a.photometric is not None,
           "by_noise": rows, "best_noise": best["noise"],
           **({} if not shared else {"per_person": k, "by_noise_one_shape": shared,
                                     "photo_error_correlation": round(rho, 3)}),
           "default_noise": FitConfig.landmark_noise,
           "seconds": {"render_and_detect": round(t1 - t0, 1), "fits": round(t2 - t1, 1)}}
    if a.photometric is not None:
        out |= {"best_posterior_discount": best["posterior_discount"],
                "default_posterior_discount": PhotometricConfig.posterior_discount,
                "refine_seconds_without_posterior": round(plain, 1),
                "posterior_time_ratio": round(rows[0]["refine_seconds"] / max(plain, 1e-9), 2)}
    emit(out)
    return out


if __name__ == "__main__":
    main()
