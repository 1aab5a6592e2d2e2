"""Detector-calibrated landmark embeddings: where a 2D detector's points land on a face model.

A model's 68-point embedding says which surface point each detector landmark means. A static
embedding chosen by hand (or by another detector's convention) is systematically off from where
a given detector puts its points, and that bias goes straight into every fitted face. Here the
embedding is *measured*: faces sampled from the model's prior are rendered at many poses, lights
and skin tones (perspective, the package's rasterizer), the real detector runs on each render,
and every detected point is read back onto the mesh through the rasterizer's triangle and
barycentric buffers. The same (triangle, barycentric) location evaluated on the mean face gives
one 3D sample per detection; the per-landmark median of the samples, snapped to the mean face's
skin, is the calibrated point.

For dlib only the inner 51 points (brows, eyes, nose, mouth: iBUG 17–67) are calibrated: its jaw
line (0–16) lies on the face's silhouette, which moves with the pose, and the fit lets those
points march along it (:mod:`skullsearch.encoder.fitting`). A detector that fits a 3D face mesh
(:data:`SURFACE_CONTOUR`: MediaPipe's) puts its contour points at fixed places on the surface:
all 68 are calibrated, and its fit does not march them.

    emb, report = calibrate_embedding(model, photos=96, seed=0)   # deterministic for a seed
    model.landmarks = emb
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skullsearch.encoder.embeddings import SURFACE_CONTOUR  # noqa: F401 - named in the docstrings
from skullsearch.errors import LandmarkError

#: iBUG indices that are calibrated (the jaw line 0–16 follows the silhouette instead).
INNER = tuple(range(17, 68))


@dataclass
class CalibrationReport:
    """photos: renders made; found: renders the detector found a face on; samples (68,) int:
    detections read back onto the skin per landmark; shift_mm (68,): distance on the mean face
    from the previous embedding's point to the calibrated one (0 for points kept);
    spread_mm (68,): median distance of a landmark's samples from their median (how consistently
    the detector places it)."""

    photos: int
    found: int
    samples: np.ndarray
    shift_mm: np.ndarray
    spread_mm: np.ndarray


def _render_set(model, photos: int, rng, max_yaw: float, size: int):
    """Yield (render, camera) for ``photos`` faces drawn from the prior at random poses."""
    import torch

    from skullsearch.encoder.render import random_portrait

    s = model.n_shape
    shape = torch.as_tensor(rng.standard_normal((photos, s)) * model.shape_std, dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=shape).numpy()
    for v in verts:
        yield random_portrait(v, model.faces, rng, max_yaw, size)


def skin_triangles(model, skin_faces=None) -> np.ndarray:
    """(F,) bool: the model's triangles on its outer skin (not the eyes, mouth or other parts);
    skin_faces: their indices when already known (:func:`~skullsearch.encoder.annotate._skin`)."""
    if skin_faces is None:
        from skullsearch.encoder.annotate import _skin

        skin_faces = _skin(model.v_template.astype(np.float64), model.faces)[1]
    on_skin = np.zeros(len(model.faces), bool)
    on_skin[skin_faces] = True
    return on_skin


def read_back(render, points_px, on_skin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detected points (n, 2) px of a render back onto the rendered mesh through its triangle and
    barycentric buffers: (ok (n,) bool — the point's pixel shows a triangle of ``on_skin`` —,
    triangle (n,), barycentric weights (n, 3))."""
    pts = np.asarray(points_px, np.float64)
    h, w = render.face_id.shape
    rows = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
    tri = render.face_id[rows, cols]
    ok = (tri >= 0) & on_skin[np.maximum(tri, 0)]
    return ok, tri, render.bary[rows, cols]


def calibrate_embedding(model, photos: int = 96, seed: int = 0, max_yaw: float = 30.0,
                        size: int = 512, detect=None, min_samples: int = 5, points=INNER):
    """Measure where the detector's points land on ``model`` (module docstring).

    detect: image (H, W, 3) uint8 → list of (box, (68, 2) points) (default: dlib's 68-point
    predictor); points: the iBUG indices to calibrate (default the inner 51; all 68 for a
    detector in :data:`SURFACE_CONTOUR`). Returns (a static 68-point
    :class:`~skullsearch.encoder.flame_io.LandmarkEmbedding`, :class:`CalibrationReport`).
    Deterministic for a seed.
    """
    points = tuple(points)
    import torch

    from skullsearch.encoder.annotate import _skin, landmark_embedding, surface_points
    from skullsearch.encoder.face_model import SurfacePoints

    if detect is None:
        from skullsearch.encoder.detectors import dlib_landmarks68 as detect
    if model.landmarks is None:
        raise LandmarkError("calibration starts from the model's 68-point embedding; it has none")
    rng = np.random.default_rng(seed)
    tmpl = model.v_template.astype(np.float64)
    skin, skin_faces = _skin(tmpl, model.faces)
    on_skin = skin_triangles(model, skin_faces)
    samples: list[list[np.ndarray]] = [[] for _ in range(68)]
    found = 0
    for r, _ in _render_set(model, photos, rng, max_yaw, size):
        dets = detect(r.image)
        if not dets:
            continue
        found += 1
        ok, tri, bary = read_back(r, dets[0][1], on_skin)
        for k in points:
            if ok[k]:
                samples[k].append((tmpl[model.faces[tri[k]]] * bary[k][:, None]).sum(0))
    with torch.no_grad():
        old = model.landmarks68(batch_size=1)[0].double().numpy()
    new = old.copy()
    counts = np.array([len(s) for s in samples])
    spread = np.zeros(68)
    for k in points:
        if counts[k] < min_samples:
            continue
        s = np.asarray(samples[k])
        med = np.median(s, axis=0)
        new[k] = med
        spread[k] = float(np.median(np.linalg.norm(s - med, axis=1)))
    if found == 0:
        raise LandmarkError("the detector found no face on any calibration render")
    tri, bary = surface_points(tmpl, model.faces, skin, skin_faces, new)
    # points not calibrated (the jaw line, by default) keep the model's own (exactly)
    base = model._landmarks68_points()
    keep = np.array([k not in points or counts[k] < min_samples for k in range(68)])
    tri[keep], bary[keep] = base.faces[keep], base.bary[keep]
    emb = landmark_embedding(SurfacePoints(tri, bary))
    emb.source = f"calibrated on {found} renders (seed {seed}, yaw ±{max_yaw:g}°)"
    snapped = (tmpl[model.faces[tri]] * bary[..., None]).sum(1)
    return emb, CalibrationReport(photos=photos, found=found, samples=counts,
                                  shift_mm=np.linalg.norm(snapped - old, axis=1), spread_mm=spread)
