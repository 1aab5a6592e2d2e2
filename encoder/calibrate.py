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


def _render_set(model, photos: int, rng, max_yaw: float, size: int, texture: bool = False):
    """Yield (render, camera) for ``photos`` faces drawn from the prior at random poses; texture:
    with brows, lips, eyes and skin blotches (:func:`~skullsearch.encoder.render.texture_regions`,
    placed by the model's source annotation) rather than one skin colour."""
    import torch

    from skullsearch.encoder.render import random_portrait, texture_regions

    s = model.n_shape
    shape = torch.as_tensor(rng.standard_normal((photos, s)) * model.shape_std, dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=shape).numpy()
    regions = texture_regions(model) if texture else None
    for v in verts:
        yield random_portrait(v, model.faces, rng, max_yaw, size, texture=regions)


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
                        size: int = 512, detect=None, min_samples: int = 5, points=INNER,
                        texture: bool = False):
    """Measure where the detector's points land on ``model`` (module docstring).

    detect: image (H, W, 3) uint8 → list of (box, (68, 2) points) (default: dlib's 68-point
    predictor); points: the iBUG indices to calibrate (default the inner 51; all 68 for a
    detector in :data:`SURFACE_CONTOUR`); texture: textured renders (:func:`_render_set`). Returns
    (a static 68-point
    :class:`~skullsearch.encoder.flame_io.LandmarkEmbedding`, :class:`CalibrationReport`).
    Deterministic for a seed.
    """
    points = tuple(points)
    from skullsearch.encoder.annotate import landmark_embedding
    from skullsearch.encoder.face_model import SurfacePoints

    skin = _MeanSkin.of(model)
    pts, _ = detected_points(model, photos, seed, max_yaw, size, detect, points, skin, texture)
    (tri, bary), counts, spread, snapped, old = _medians_on_skin(model, pts, points, min_samples, skin)
    emb = landmark_embedding(SurfacePoints(tri, bary))
    emb.source = f"calibrated on {len(pts)} {_kind(texture)} renders (seed {seed}, yaw ±{max_yaw:g}°)"
    return emb, CalibrationReport(photos=photos, found=len(pts), samples=counts,
                                  shift_mm=np.linalg.norm(snapped - old, axis=1), spread_mm=spread)


@dataclass
class _MeanSkin:
    """The mean face's skin, found once per calibration: the template (V, 3) float64, the skin
    vertices and triangles (:func:`~skullsearch.encoder.annotate._skin`), the skin-triangle mask
    (F,) and the model's own 68 points (68, 3) mm."""

    tmpl: np.ndarray
    skin: np.ndarray
    skin_faces: np.ndarray
    on_skin: np.ndarray
    own: np.ndarray

    @classmethod
    def of(cls, model) -> _MeanSkin:
        import torch

        from skullsearch.encoder.annotate import _skin

        if model.landmarks is None:
            raise LandmarkError("calibration starts from the model's 68-point embedding; it has none")
        tmpl = model.v_template.astype(np.float64)
        skin, skin_faces = _skin(tmpl, model.faces)
        with torch.no_grad():
            own = model.landmarks68(batch_size=1)[0].double().numpy()
        return cls(tmpl, skin, skin_faces, skin_triangles(model, skin_faces), own)


def _kind(texture: bool) -> str:
    return "textured" if texture else "untextured"


def detected_points(model, photos: int, seed: int, max_yaw: float, size: int, detect, points=INNER,
                    skin: _MeanSkin | None = None, texture: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The detector's points read back onto the mean face: (P, 68, 3) mm (NaN where a point was
    not calibrated or fell off the skin; P: the renders it found a face on) and each render's
    camera yaw (P,) degrees (:func:`~skullsearch.encoder.render.camera_yaw`). Deterministic for
    a seed."""
    from skullsearch.encoder.render import camera_yaw

    if detect is None:
        from skullsearch.encoder.detectors import dlib_landmarks68 as detect
    skin = skin or _MeanSkin.of(model)
    rng = np.random.default_rng(seed)
    tmpl, on_skin = skin.tmpl, skin.on_skin
    idx = np.asarray(tuple(points), np.int64)
    out, yaws = [], []
    for r, cam in _render_set(model, photos, rng, max_yaw, size, texture):
        dets = detect(r.image)
        if not dets:
            continue
        ok, tri, bary = read_back(r, dets[0][1], on_skin)
        pts = np.full((68, 3), np.nan)
        sel = idx[ok[idx]]
        pts[sel] = (tmpl[model.faces[tri[sel]]] * bary[sel][..., None]).sum(1)
        out.append(pts)
        yaws.append(float(camera_yaw(cam.rotation)))
    if not out:
        raise LandmarkError("the detector found no face on any calibration render")
    return np.asarray(out), np.asarray(yaws)


def _medians_on_skin(model, pts: np.ndarray, points, min_samples: int, skin: _MeanSkin):
    """Per landmark the median of its samples pts (P, 68, 3) (NaN: none), snapped to the mean
    face's skin; points not calibrated or with fewer than min_samples samples keep the model's
    own embedding (exactly). Returns ((triangles (68,), barycentrics (68, 3)), samples (68,),
    spread (68,) mm, the snapped points (68, 3), the model's own points (68, 3))."""
    from skullsearch.encoder.annotate import surface_points

    tmpl, old = skin.tmpl, skin.own
    new = old.copy()
    have = ~np.isnan(pts[..., 0])  # (P, 68)
    counts = have.sum(0)
    spread = np.zeros(68)
    for k in points:
        if counts[k] < min_samples:
            continue
        s = pts[have[:, k], k]
        med = np.median(s, axis=0)
        new[k] = med
        spread[k] = float(np.median(np.linalg.norm(s - med, axis=1)))
    tri, bary = surface_points(tmpl, model.faces, skin.skin, skin.skin_faces, new)
    base = model._landmarks68_points()
    keep = np.array([k not in points or counts[k] < min_samples for k in range(68)])
    tri[keep], bary[keep] = base.faces[keep], base.bary[keep]
    snapped = (tmpl[model.faces[tri]] * bary[..., None]).sum(1)
    return (tri, bary), counts, spread, snapped, old


#: the default yaw bins of a pose-conditioned embedding, degrees (the outer ones open-ended)
YAW_EDGES = (-90.0, -25.0, -10.0, 10.0, 25.0, 90.0)


@dataclass
class PoseEmbedding:
    """A pose-conditioned 68-point embedding: yaw_edges (n + 1,) degrees; faces (n, 68) int64 and
    bary (n, 68, 3) float32 the surface points of each yaw bin; found (n,) renders per bin;
    shift_mm (n, 68) each bin's point from the all-pose calibrated one; source: how it was made.
    A bin's point with fewer than min_samples samples is the all-pose one."""

    yaw_edges: np.ndarray
    faces: np.ndarray
    bary: np.ndarray
    found: np.ndarray
    shift_mm: np.ndarray
    source: str


def calibrate_pose_embedding(model, photos: int = 600, seed: int = 0, max_yaw: float = 40.0,
                             size: int = 512, detect=None, min_samples: int = 8, points=INNER,
                             yaw_edges=YAW_EDGES, texture: bool = False) -> PoseEmbedding:
    """Where the detector's points land on ``model`` per yaw bin (module docstring): dlib puts
    a landmark at a different place on the face at 30° than frontally (its inner points move by
    a median 2 mm between the frontal and the ±25–40° bins on renders of the default model), and
    one static embedding makes that difference a shape error in every turned photo. Each bin's
    points: the median of the renders whose camera yaw falls in it; the all-pose median where a
    bin has too few samples. Deterministic for a seed."""
    from skullsearch.encoder.render import yaw_bins

    points = tuple(points)
    edges = np.asarray(yaw_edges, np.float64)
    if edges.ndim != 1 or len(edges) < 3 or np.any(np.diff(edges) <= 0) or not edges[0] < 0 < edges[-1]:
        raise ValueError(f"yaw_edges must rise through 0 with at least two bins, got {yaw_edges}")
    skin = _MeanSkin.of(model)
    pts, yaw = detected_points(model, photos, seed, max_yaw, size, detect, points, skin, texture)
    (tri_all, bary_all), _, _, snapped_all, _ = _medians_on_skin(model, pts, points, min_samples, skin)
    which = yaw_bins(yaw, edges)
    faces, barys, shifts, found = [], [], [], []
    for i in range(len(edges) - 1):
        sub = pts[which == i]
        (tri, bary), counts, _, snapped, _ = _medians_on_skin(model, sub, points, min_samples, skin)
        few = counts < min_samples  # too few in this bin: the all-pose point
        tri[few], bary[few], snapped[few] = tri_all[few], bary_all[few], snapped_all[few]
        faces.append(tri)
        barys.append(bary)
        shifts.append(np.linalg.norm(snapped - snapped_all, axis=1))
        found.append(len(sub))
    return PoseEmbedding(edges, np.asarray(faces, np.int64), np.asarray(barys, np.float32),
                         np.asarray(found), np.asarray(shifts),
                         f"calibrated per yaw bin on {len(pts)} {_kind(texture)} renders (seed {seed}, "
                         f"yaw ±{max_yaw:g}°)")


@dataclass
class JawCalibration:
    """dlib's jaw line against the face model's silhouette (:func:`calibrate_jaw`).

    coef (2, 17, 5) float64: per jaw point (iBUG 0–16) its offset from the detected point to the
    model's (the silhouette's, marched as the fit does; the chin's 7–9 fixed points), along the
    eye line and across it in inter-ocular distances, linear in
    :func:`~skullsearch.encoder.fitting.jaw_features` (1, u, s, s², s·u);
    feature_lo, feature_hi (2,): the calibration's range of u and s; rms_before, rms_after: the
    offsets' root mean square over all points and renders, raw and after the fitted offsets
    (what the calibration explains; the rest is the detector's scatter); inward_near, inward_far:
    the median offset towards the nose of the contour points 0–6 and 10–16, renders within
    0.6 m and beyond 1.0 m (inter-ocular distances); sigma_raw, sigma_calibrated (68,): each of
    the 68 points' scatter about the model's point (root mean square per image coordinate, in
    inter-ocular distances), as detected and with the jaw line moved by the fitted offsets
    (``FitConfig.landmark_weights``); photos, found: renders made and with a face.
    """

    coef: np.ndarray
    feature_lo: np.ndarray
    feature_hi: np.ndarray
    rms_before: float
    rms_after: float
    inward_near: float
    inward_far: float
    sigma_raw: np.ndarray
    sigma_calibrated: np.ndarray
    photos: int
    found: int
    source: str


#: the cameras' distance range of :func:`calibrate_jaw`'s renders, × random_portrait's 0.5–0.9 m
#: (log-uniform): 0.35 puts the nearest 17.5 cm from the face (a selfie), 2 the farthest at 1.8 m
JAW_DISTANCE_SCALES = (0.35, 2.0)


def _robust_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares of y (n,) on x (n, p), refitted without the samples more than 3 robust
    standard deviations off the first fit (the detector's gross misses)."""
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    r = y - x @ beta
    keep = np.abs(r - np.median(r)) <= 3 * 1.4826 * max(np.median(np.abs(r - np.median(r))), 1e-9)
    if keep.sum() > x.shape[1] * 3:
        beta = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
    return beta


def calibrate_jaw(model, photos: int = 600, seed: int = 0, max_yaw: float = 40.0, size: int = 512,
                  detect=None, texture: bool = True, distance_scales=JAW_DISTANCE_SCALES) -> JawCalibration:
    """Measure where the detector draws its jaw line against the model's silhouette.

    dlib marks a face's visible boundary as its training photos showed it, not where the
    silhouette of the face in front of it lies: on renders of the default model it draws the jaw
    line inside the silhouette, the more so the farther the camera (perspective shows less of
    the cheeks' sides from near) and differently on the near and far side of a turned face. The
    fit puts those points on the model's silhouette (landmark marching), so the bias narrows
    every fitted face. Here faces from the prior are rendered (textured by default: the
    detector sees brows and lips as on a photo) at yaw ±max_yaw°, cameras from a selfie's
    distance to 1.8 m (``distance_scales``), the detector runs, and each jaw point's offset to
    the model's own point at the true camera is regressed on features of the detected points
    and the true focal length (:func:`~skullsearch.encoder.fitting.jaw_features`), per point and
    direction. detect: as :func:`calibrate_embedding`'s (default dlib). Deterministic for a seed."""
    import torch

    from skullsearch.encoder.fitting import jaw_features, model_landmarks_px, rig_for
    from skullsearch.encoder.render import random_portrait, texture_regions

    if detect is None:
        from skullsearch.encoder.detectors import dlib_landmarks68 as detect
    rng = np.random.default_rng(seed)
    rig = rig_for(model, model.n_shape, model.n_expression, detector="dlib", dtype=torch.float64)
    regions = texture_regions(model) if texture else None
    draws = rng.standard_normal((photos, model.n_shape)) * model.shape_std
    shape = torch.as_tensor(draws, dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=shape).numpy()
    lo, hi = np.log(distance_scales[0]), np.log(distance_scales[1])
    det, exact, focal, near = [], [], [], []
    zeros_e = torch.zeros(1, model.n_expression, dtype=torch.float64)
    zeros_p = torch.zeros(1, 3 * model.n_joints, dtype=torch.float64)
    for i, v in enumerate(verts):
        scale = float(np.exp(rng.uniform(lo, hi)))
        r, cam = random_portrait(v, model.faces, rng, max_yaw, size, texture=regions, distance_scale=scale)
        dets = detect(r.image)
        if not dets:
            continue
        t = lambda a: torch.as_tensor(np.asarray(a, np.float64)[None])  # noqa: E731
        with torch.no_grad():
            uv = model_landmarks_px(rig, shape[i:i + 1].double(), zeros_e, zeros_p, t(cam.rotation),
                                    t(cam.translation), t([cam.focal])[0], t([cam.width / 2, cam.height / 2]))
        det.append(np.asarray(dets[0][1], np.float64))
        exact.append(uv[0].numpy())
        focal.append(cam.focal)
        near.append(float(np.linalg.norm(cam.translation)))
    if len(det) < 40:
        raise LandmarkError(f"the detector found a face on {len(det)} of {photos} renders: too few to "
                            "calibrate its jaw line (give more --photos)")
    det, exact, focal = np.asarray(det), np.asarray(exact), np.asarray(focal)
    x, xh, yh, iod = (a.numpy() for a in jaw_features(torch.as_tensor(det), torch.as_tensor(focal)))
    d = (exact[:, :17] - det[:, :17]) / iod[:, None, None]
    comps = np.stack([(d * xh[:, None]).sum(-1), (d * yh[:, None]).sum(-1)])  # (2, n, 17)
    coef = np.stack([[_robust_lstsq(x, comps[c, :, k]) for k in range(17)] for c in range(2)])
    resid = comps - np.einsum("np,ckp->cnk", x, coef)
    err2 = (((exact - det) / iod[:, None, None]) ** 2).sum(-1)  # (n, 68) squared offsets
    err2_cal = err2.copy()
    err2_cal[:, :17] = (resid ** 2).sum(0)  # (an orthonormal basis: the same squared length)
    outward = exact[:, :17] - exact[:, 27:36].mean(1, keepdims=True)
    outward /= np.linalg.norm(outward, axis=-1, keepdims=True)
    inward = ((exact[:, :17] - det[:, :17]) * outward).sum(-1) / iod[:, None]  # > 0: det inside
    contour = list(range(7)) + list(range(10, 17))
    dist = np.asarray(near)
    return JawCalibration(coef=coef, feature_lo=x[:, 1:3].min(0), feature_hi=x[:, 1:3].max(0),
                          rms_before=float(np.sqrt(np.mean(comps ** 2))),
                          rms_after=float(np.sqrt(np.mean(resid ** 2))),
                          inward_near=float(np.median(inward[dist < 600][:, contour])),
                          inward_far=float(np.median(inward[dist > 1000][:, contour])),
                          sigma_raw=np.sqrt(err2.mean(0) / 2), sigma_calibrated=np.sqrt(err2_cal.mean(0) / 2),
                          photos=photos, found=len(det),
                          source=f"calibrated on {len(det)} {_kind(texture)} renders (seed {seed}, yaw "
                                 f"±{max_yaw:g}°, distance ×{distance_scales[0]:g}–{distance_scales[1]:g})")


def calibrate_jaw_file(model, photos: int = 600, seed: int = 0, dst=None) -> tuple:
    """Calibrate dlib's jaw line on ``model`` (:func:`calibrate_jaw`) and write it where the fit
    looks for it with ``FitConfig.jaw_calibration`` (``dst``, default the cache folder,
    :func:`~skullsearch.encoder.embeddings.jaw_paths`). Returns (the file, :class:`JawCalibration`)."""
    from pathlib import Path

    from skullsearch.encoder.embeddings import jaw_paths, save_jaw_bias

    cal = calibrate_jaw(model, photos=photos, seed=seed)
    dst = Path(dst) if dst is not None else jaw_paths(model, "dlib")[1]
    save_jaw_bias(dst, model, "dlib", cal)
    return dst, cal


@dataclass
class DenseCalibration:
    """Where a dense detector's K points land on a face model (:func:`calibrate_dense`).

    index (K',) int64: the detector's points kept (those read back onto the skin on at least
    ``min_share`` of the renders that found a face — the eyeballs' and the mouth's inside drop
    out); faces (K',) int64, bary (K', 3) float32: their surface points on the model;
    samples (K,) int and spread_mm (K,): every point's read-back count and the median distance of
    its samples from their median on the mean face (how consistently the detector places it);
    photos, found: renders made and renders with a face.
    """

    index: np.ndarray
    faces: np.ndarray
    bary: np.ndarray
    samples: np.ndarray
    spread_mm: np.ndarray
    photos: int
    found: int
    source: str


def calibrate_dense(model, photos: int = 96, seed: int = 0, max_yaw: float = 30.0, size: int = 512,
                    detect=None, min_share: float = 0.6, max_spread_mm: float = 4.0,
                    points=None) -> DenseCalibration:
    """Measure where every point of a dense detector lands on ``model``: the 68-point
    calibration (:func:`calibrate_embedding`) for all of its points, with no starting embedding.

    detect: image (H, W, 3) uint8 → list of (K, ≥2) point arrays px, one per face (default
    MediaPipe's face mesh, :func:`~skullsearch.encoder.mesh.mesh_points`: K = 478). A point is
    kept when it was read back onto the skin on ≥ ``min_share`` of the renders with a face and
    its samples' spread is ≤ ``max_spread_mm``; points: the detector's point indices to consider
    (default: all; for the mesh its 468 face points, not the irises, which follow the gaze).
    Deterministic for a seed.
    """
    from skullsearch.encoder.annotate import _skin, surface_points

    if detect is None:
        from skullsearch.encoder.mesh import mesh_points

        def detect(img):
            return mesh_points(img, max_faces=1)
    rng = np.random.default_rng(seed)
    tmpl = model.v_template.astype(np.float64)
    skin, skin_faces = _skin(tmpl, model.faces)
    on_skin = skin_triangles(model, skin_faces)
    samples: list[list[np.ndarray]] | None = None
    found = 0
    for r, _ in _render_set(model, photos, rng, max_yaw, size):
        dets = detect(r.image)
        if not dets:
            continue
        pts = np.asarray(dets[0], np.float64)[:, :2]
        if samples is None:
            samples = [[] for _ in range(len(pts))]
        found += 1
        ok, tri, bary = read_back(r, pts, on_skin)
        where = (tmpl[model.faces[tri]] * bary[..., None]).sum(1)  # (K, 3) on the mean face
        for k in np.flatnonzero(ok):
            samples[k].append(where[k])
    if samples is None:
        raise LandmarkError("the detector found no face on any calibration render")
    k_all = len(samples)
    counts = np.array([len(s) for s in samples])
    spread = np.full(k_all, np.inf)
    med = np.zeros((k_all, 3))
    for k in range(k_all):
        if counts[k]:
            s = np.asarray(samples[k])
            med[k] = np.median(s, axis=0)
            spread[k] = float(np.median(np.linalg.norm(s - med[k], axis=1)))
    considered = np.zeros(k_all, bool)
    considered[list(range(k_all)) if points is None else list(points)] = True
    keep = np.flatnonzero(considered & (counts >= max(1, min_share * found)) & (spread <= max_spread_mm))
    if len(keep) == 0:
        raise LandmarkError("no detector point landed on the skin consistently: nothing to calibrate")
    tri, bary = surface_points(tmpl, model.faces, skin, skin_faces, med[keep])
    return DenseCalibration(index=keep.astype(np.int64), faces=np.asarray(tri, np.int64),
                            bary=np.asarray(bary, np.float32), samples=counts, spread_mm=spread,
                            photos=photos, found=found,
                            source=f"calibrated on {found} renders (seed {seed}, yaw ±{max_yaw:g}°)")


def calibrate_mesh(model, photos: int = 300, seed: int = 0, dst=None):
    """Calibrate MediaPipe's face mesh on ``model`` and write both files the fit looks for:
    its 68 points (all calibrated: its contour is on the surface) to ``dst`` (default the cache
    folder, :func:`~skullsearch.encoder.embeddings.embedding_paths`) and its dense calibration
    (:func:`calibrate_dense` over the 468 face points, the irises left out) beside it.
    Returns (68-point file, dense file, :class:`CalibrationReport`, :class:`DenseCalibration`)."""
    from pathlib import Path

    from skullsearch.encoder.embeddings import (
        dense_file_name,
        embedding_paths,
        save_dense_embedding,
        save_detector_embedding,
    )
    from skullsearch.encoder.mesh import MeshDetector, landmarks68, mesh_points

    MeshDetector()  # (says how to install MediaPipe when it is missing)
    emb, rep = calibrate_embedding(model, photos=photos, seed=seed, detect=landmarks68,
                                   points=range(68))
    dst = Path(dst) if dst is not None else embedding_paths(model, "mesh")[1]
    save_detector_embedding(dst, model, "mesh", emb, rep)
    dense = calibrate_dense(model, photos=photos, seed=seed, points=range(468),
                            detect=lambda img: mesh_points(img, max_faces=1))
    dense_dst = dst.parent / dense_file_name(model, "mesh")
    save_dense_embedding(dense_dst, model, "mesh", dense)
    return dst, dense_dst, rep, dense


def calibrate_textured(model, photos: int = 300, seed: int = 0, dst=None) -> tuple:
    """Calibrate dlib's 68-point embedding on textured renders of ``model`` (brows, lips, eyes and
    skin blotches painted where the model's source annotates its features:
    :func:`~skullsearch.encoder.render.texture_regions`) and write it where the fit looks for it
    with ``FitConfig.textured_embedding`` (``dst``, default the cache folder,
    :func:`~skullsearch.encoder.embeddings.textured_paths`). On untextured renders dlib sees no
    brows and puts its brow points on the brow ridge's shading, ~6 mm under a real brow; here it
    sees them. Returns (the file, :class:`CalibrationReport`)."""
    from pathlib import Path

    from skullsearch.encoder.embeddings import save_detector_embedding, textured_paths

    emb, rep = calibrate_embedding(model, photos=photos, seed=seed, texture=True)
    dst = Path(dst) if dst is not None else textured_paths(model, "dlib")[1]
    save_detector_embedding(dst, model, "dlib", emb, rep)
    return dst, rep


def calibrate_pose(model, photos: int = 800, seed: int = 0, dst=None) -> tuple:
    """Calibrate dlib's pose-conditioned embedding on ``model`` (:func:`calibrate_pose_embedding`,
    yaw ±40°) and write it where the fit looks for it with ``FitConfig.pose_embedding`` (``dst``,
    default the cache folder, :func:`~skullsearch.encoder.embeddings.pose_paths`). Returns (the
    file, :class:`PoseEmbedding`)."""
    from pathlib import Path

    from skullsearch.encoder.embeddings import pose_paths, save_pose_embedding

    pe = calibrate_pose_embedding(model, photos=photos, seed=seed)
    dst = Path(dst) if dst is not None else pose_paths(model, "dlib")[1]
    save_pose_embedding(dst, model, "dlib", pe)
    return dst, pe
