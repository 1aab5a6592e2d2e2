"""The encoder against real anatomy: photos of a real face (a CT head's skin) through the real
detector and fit, each fitted face compared with that skin.

Every other identity figure of skullsearch is synthetic: renders of faces drawn from the face
model, so the truth comes from the model the fit searches (DESIGN.md §9). Here the face is real:
the skin surface of a CT head (``benchmarks/_ct.py``; the shared Stanford/UNC CThead, a cadaver,
eyes closed, no hair in CT). It is placed in the face model's frame once (a rigid ICP of the mean
face; nothing else looks at it before the scoring), then rendered as portraits — yaw
``--yaws``, two lights each, the Lambertian renderer of the synthetic benchmarks, so the photos
are as photo-like as the renders the identity prior and the calibrated embeddings were learned
on, and no more — and every portrait goes through the real decode → detect → fit path:

- ``dlib``: the default fit, each photo alone;
- ``dlib_pose``: with the pose-conditioned embedding (``FitConfig(pose_embedding=True)``);
- ``dlib_textured``: with the embedding calibrated on textured renders
  (``FitConfig(textured_embedding=True)``; also ``dlib_textured_photo``, refined);
- ``mesh``: MediaPipe's face mesh with its own embedding (when mediapipe is installed);
- ``dlib_prior``: with the identity prior (shape predicted from the photo's person descriptor;
  its domain distance is reported: applied only within its limit);
- ``dlib_photo``: the dlib fit refined by the photos' shading (:mod:`skullsearch.encoder.photometric`);
- ``dlib_photo_from_best`` (``--photo-from-best``): the same refinement started from the model's
  best face for this skin (``oracle`` below); its final energy against ``dlib_photo``'s says
  whether the photometric energy's minimum lies at the true face;
- ``dlib_cnn`` (``--cnn CKPT``): a trained CNN encoder's codes on dlib's face boxes, no fit
  (``benchmarks/cnn_train.py``; shared: the photos' mean shape code);
- ``*_shared``: all photos of the head fitted with one shared shape (paper Eq. 2).

**Identity error**: each fitted *neutral* face (shape only; the gallery's soft-tissue points are
read off the neutral face), over the model's face region (NoW-style, brow to chin between the
zygia), aligned to the real skin by ICP (rigid, and similarity: NoW's non-metrical protocol),
then the distance of every region vertex to the skin (mean mm; the rigid one also by band of the
face's height, ``by_band_mean_mm``: the forehead above the brows — seen by no landmark — brows to
eyes, eyes to nose base, nose base to mouth, below the mouth), against:

- ``mean_face``: the model's mean face, aligned the same way (the baseline of every ratio);
- ``oracle``: the model's best neutral face for this skin — its shape coefficients fitted to
  the skin in 3D (non-rigid ICP under the model's prior): the floor the model itself sets.

Vertices whose place on the head falls in the CT's dental streak (slices 74–82: the lips and the
skin along the mouth line are metal-artefact spikes) are left out of every alignment and
distance (``streak_vertices``); ``--smooth-streak`` also flattens the band's spikes in the
renders (the photos), which a real photo would not show. No default is tuned to this head: it
reports. One cadaver head under untextured renders is a first real-anatomy check, not a
validation set.

``--ct`` takes another head in CThead's npz form: ``benchmarks/ct_cranium.py`` makes one of
Debian's InVesalius "Cranium" CT (a living patient; no dental streak: ``--no-streak``), whose scan
ends at the upper lip: ``--upper-face MM`` then places the skin, fits the oracle and scores only
above a line MM under the mean face's nose base (the bands forehead, brows to eyes, eyes to nose
base), and the portraits show the model's mean head below that line (no identity there, as the
mean face is every ratio's baseline) so that the detector sees a whole face.

    python benchmarks/ct_encoder.py [--ct /work/shared/ct/cthead/cthead.npz] [--no-streak] [--upper-face MM]
        [--yaws -30 -20 -10 0 10 20 30] [--detectors dlib mesh] [--no-prior] [--no-photometric]
        [--smooth-streak] [--photo-from-best] [--photo-set KEY=VALUE ...] [--cnn CKPT] [--save DIR]
        [--texture SEED] [--identity-prior-file NPZ] [--uncertainty [--photo-correlation RHO]]
        [--exif] [--no-jaw-calibration]

``--exif``: the portraits carry their focal length (2.33 × the side, 0.7 m away) in EXIF, which
the fit reads instead of guessing 1.2 ×, and dlib's jaw line is then moved by its calibration
(``FitConfig.jaw_calibration``; ``--no-jaw-calibration`` leaves it as detected).

``--uncertainty``: the dlib runs fitted with the posterior; each gets an ``uncertainty`` row —
its faces' Σ_face (the refined fit's for ``*_photo``) against the soft-tissue points of ``oracle``
(a proxy truth: its own error adds to the residual), median Mahalanobis² (2.37 when calibrated),
the share inside the 95 % ellipsoid, predicted SD and RMS error per axis; ``--photo-correlation``:
the ``*_shared`` runs' posterior counts the views as correlated evidence
(``FitConfig.photo_correlation``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import _ct as ct
import numpy as np
import torch
from _common import (
    add_camera_arguments,
    add_identity_prior_file_argument,
    add_jaw_calibration_argument,
    add_landmark_weights_argument,
    emit,
    face_bands,
    focal_exif,
    photometric_config,
    residual_by_group,
)

#: CT slices of the dental streak (fillings; see ../shared/ct/README.md), with a slice of margin.
STREAK_SLICES = (74.0, 82.0)
LIGHTS = ((0.3, 0.4, 1.0), (-0.4, 0.2, 1.0))


def _rigid(src: np.ndarray, dst: np.ndarray, scale: bool) -> np.ndarray:
    """The (4, 4) rigid (or similarity) transform taking src (n, 3) onto dst (n, 3)."""
    import trimesh

    m, _, _ = trimesh.registration.procrustes(src, dst, reflection=False, scale=scale,
                                              return_cost=True)
    return m


def _apply(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ m[:3, :3].T + m[:3, 3]


_SAMPLES: dict[int, tuple] = {}


def _samples(skin, spacing_mm: float = 0.4):
    """Points on the skin about ``spacing_mm`` apart and their KD-tree (cached per mesh): the ICP's
    correspondences (the final distances are to the surface itself)."""
    from scipy.spatial import cKDTree

    key = id(skin)
    if key not in _SAMPLES:
        import trimesh

        n = int(skin.area / spacing_mm**2)
        pts, _ = trimesh.sample.sample_surface(skin, n, seed=0)
        pts = np.concatenate([pts, skin.vertices])
        _SAMPLES[key] = (pts, cKDTree(pts))
    return _SAMPLES[key]


def icp(points: np.ndarray, skin, use: np.ndarray, scale: bool = False, init: np.ndarray | None = None,
        iters: int = 40, tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Align points (n, 3) to the skin mesh by ICP (point to closest surface point), using the
    points ``use`` (n,) bool. Returns the transform (4, 4) and every point's distance (n,) to the
    skin after it."""
    import trimesh

    m = np.eye(4) if init is None else np.asarray(init, np.float64)
    samples, tree = _samples(skin)
    last = np.inf
    for _ in range(iters):
        cur = _apply(m, points[use])
        d, j = tree.query(cur)
        closest = samples[j]
        cost = float(np.mean(d**2))
        m = _rigid(cur, closest, scale) @ m
        if last - cost < tol * max(cost, 1e-9):
            break
        last = cost
    _, d, _ = trimesh.proximity.closest_point(skin, _apply(m, points))
    return m, d


def place_skin(model, skin, region: np.ndarray):
    """The skin (trimesh, CT frame) in the model's face frame: the mean face's region aligned to
    it by rigid ICP from pitches −20…20° (the head lies tilted), nose tip on the skin's most
    anterior point. Returns (skin in the model frame, the (4, 4) model → CT transform, the RMS mm
    of that fit)."""
    src = model.v_template.astype(np.float64)[region]
    front = skin.vertices[np.argmax(skin.vertices[:, 2])]
    best = None
    for pitch in (-20.0, -10.0, 0.0, 10.0, 20.0):
        a = np.deg2rad(pitch)
        r = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        init = np.eye(4)
        init[:3, :3] = r
        init[:3, 3] = front - r @ src[np.argmax(src[:, 2])]
        m, d = icp(src, skin, np.ones(len(src), bool), init=init, iters=60)
        rms = float(np.sqrt(np.mean(d**2)))
        if best is None or rms < best[2]:
            best = (m, d, rms)
    m = best[0]
    placed = skin.copy()
    placed.apply_transform(np.linalg.inv(m))
    return placed, m, best[2]


def crop(skin, points: np.ndarray, margin: float = 30.0):
    """The part of the skin (trimesh) within ``margin`` mm of the box around points (n, 3): the
    face, without the back of the head (closest-point queries on it are ~5× faster)."""
    lo, hi = points.min(0) - margin, points.max(0) + margin
    inside = np.all((skin.vertices >= lo) & (skin.vertices <= hi), axis=1)
    part = skin.copy()
    part.update_faces(inside[skin.faces].all(1))
    part.remove_unreferenced_vertices()
    return part


def streak_band(shape, spacing) -> tuple[float, float]:
    """(low, high) CT-frame heights (mm, ``_ct.head_frame``) of the dental streak's slices."""
    low, high = (ct.slice_height(shape, spacing, s) for s in STREAK_SLICES[::-1])
    return low, high


def streak_vertices(model, to_ct: np.ndarray, shape, spacing) -> np.ndarray:
    """(V,) bool: model vertices (mean face) whose place on the CT head lies in the dental
    streak's slices. to_ct: model → CT-frame transform."""
    y = _apply(to_ct, model.v_template.astype(np.float64))[:, 1]
    low, high = streak_band(shape, spacing)
    return (y >= low) & (y <= high)


def smooth_band(mesh, y_range: tuple[float, float], iters: int = 40):
    """A copy of the mesh whose vertices with y (CT frame) in y_range are Laplacian-smoothed
    ``iters`` times, the others held: the dental streak's spikes flattened for the renders (a real
    photo has no metal artefact; the scoring leaves the band out either way)."""
    import scipy.sparse as sp

    out = mesh.copy()
    v = out.vertices.copy()
    band = (v[:, 1] >= y_range[0]) & (v[:, 1] <= y_range[1])
    e = out.edges_unique
    n = len(v)
    adj = sp.coo_matrix((np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])),
                        shape=(n, n)).tocsr()
    deg = np.asarray(adj.sum(1)).ravel()
    for _ in range(iters):
        v[band] = (adj @ v)[band] / np.maximum(deg[band, None], 1)
    out.vertices = v
    return out


def upper_face_line(model, below_nose_mm: float) -> float:
    """The height (model frame, mm) ``below_nose_mm`` under the mean face's nose base (the
    source-annotated subnasale, iBUG 33): a scan that ends above the mouth is placed, fitted by the
    oracle and scored above it."""
    from skullsearch.encoder.render import anatomical_landmarks

    return float(anatomical_landmarks(model)[33, 1]) - below_nose_mm


def graft_lower_face(model, head_ct, to_ct: np.ndarray, y_cut: float, scan_end_y: float,
                     margin_mm: float = 3.0, overlap_mm: float = 1.5):
    """The skin of a scan that ends above the mouth, completed for the detector by a lower face
    that carries no identity: the skin (trimesh, CT frame) above the model-frame line ``y_cut``
    and more than ``margin_mm`` above the scan's end (CT-frame height ``scan_end_y``: its flat cap
    left out), the model's mean head wherever the skin is not (each running ``overlap_mm`` past
    the seam, so that no gap shows). to_ct: model → CT frame. Returns the head in the model
    frame. The scoring never looks below ``y_cut``."""
    import trimesh

    above = head_ct.copy()
    above.update_faces((above.vertices[above.faces][:, :, 1] > scan_end_y + margin_mm).all(1))
    above.apply_transform(np.linalg.inv(to_ct))
    above.update_faces((above.vertices[above.faces][:, :, 1] > y_cut - overlap_mm).all(1))
    above.remove_unreferenced_vertices()
    tv = np.asarray(model.v_template, np.float64)
    in_ct = _apply(to_ct, tv)[:, 1]
    faces = np.asarray(model.faces)
    low = faces[((tv[faces][:, :, 1] < y_cut + overlap_mm)
                 | (in_ct[faces] < scan_end_y + margin_mm + overlap_mm)).all(1)]
    mean = trimesh.Trimesh(tv, low, process=False)
    mean.remove_unreferenced_vertices()
    return trimesh.util.concatenate([above, mean])


class PlacedHead(NamedTuple):
    """A CT head's skin in the face model's frame (:func:`place_head`): ``skin`` the face part
    (cropped to the region), ``full`` the whole head for the renders (with the mean head grafted
    below the cut for ``upper_face``), ``to_ct`` the model → CT-frame transform, ``rms`` the mean
    face's placement RMS mm, and the model-vertex masks (V,) ``region`` (the face region),
    ``upper`` (above the cut), ``streak`` (in the dental streak), ``keep`` (scored)."""

    skin: object
    full: object
    to_ct: np.ndarray
    rms: float
    region: np.ndarray
    upper: np.ndarray
    streak: np.ndarray
    keep: np.ndarray


def place_head(model, volume, spacing, skin_ct, upper_face: float | None = None,
               smooth_streak: bool = False, no_streak: bool = False) -> PlacedHead:
    """Place the CT skin (``skin_ct``, CT frame, of ``volume`` and ``spacing``) in the model's
    frame by a rigid ICP of the mean face over the face region (above the line ``upper_face`` mm
    under its nose base, where given: the scan ends there)."""
    from skullsearch.encoder.face_model import face_region

    region = face_region(model)
    upper = np.ones(model.n_vertices, bool)
    if upper_face is not None:
        y_cut = upper_face_line(model, upper_face)
        upper = np.asarray(model.v_template, np.float64)[:, 1] > y_cut
    skin, to_ct, rms = place_skin(model, crop(skin_ct, skin_ct.vertices[skin_ct.vertices[:, 2] > 0], 0.0),
                                  region & upper)
    if smooth_streak:
        low, high = streak_band(volume.shape, spacing)
        skin_ct = smooth_band(skin_ct, (low - 2.0, high + 2.0))
    full = skin_ct.copy()
    full.apply_transform(np.linalg.inv(to_ct))  # the whole head, for the renders
    if upper_face is not None:  # the last slice ends the scan
        full = graft_lower_face(model, skin_ct, to_ct, y_cut,
                                ct.slice_height(volume.shape, spacing, volume.shape[0] - 1))
    skin = crop(skin, model.v_template[region & upper].astype(np.float64))
    streak = (np.zeros(model.n_vertices, bool) if no_streak
              else streak_vertices(model, to_ct, volume.shape, spacing))
    return PlacedHead(skin, full, to_ct, rms, region, upper, streak, region & ~streak & upper)


def neutral_faces(model, shapes: np.ndarray) -> np.ndarray:
    """Neutral faces (n, V, 3) mm of shape codes (n, ≤S)."""
    s = np.zeros((len(shapes), model.n_shape), np.float32)
    s[:, : shapes.shape[1]] = shapes[:, : model.n_shape]
    with torch.no_grad():
        return model.rest_vertices(shape=torch.as_tensor(s)).double().numpy()


def oracle_shape(model, skin, region: np.ndarray, use: np.ndarray, iters: int = 12,
                 noise_mm: float = 1.0) -> np.ndarray:
    """The model's best neutral face for the skin: shape coefficients (S,) fitted in 3D by
    non-rigid ICP — closest skin points of the region's vertices, rigid re-alignment, then the
    MAP shape under the model's prior N(0, σ²) with ``noise_mm`` per coordinate."""
    idx = np.flatnonzero(region & use)
    basis = model.shapedirs[idx].astype(np.float64).reshape(-1, model.n_shape)  # (3n, S)
    base = model.v_template[idx].astype(np.float64).reshape(-1)
    reg = np.diag((noise_mm / np.asarray(model.shape_std, np.float64)) ** 2)
    alpha = np.zeros(model.n_shape)
    m = np.eye(4)
    for _ in range(iters):
        face = (base + basis @ alpha).reshape(-1, 3)
        m, _ = icp(face, skin, np.ones(len(face), bool), init=m, iters=10)
        samples, tree = _samples(skin)
        closest = samples[tree.query(_apply(m, face))[1]]
        target = _apply(np.linalg.inv(m), closest).reshape(-1)
        alpha = np.linalg.solve(basis.T @ basis + reg, basis.T @ (target - base))
    return alpha


def lights(light_up=None) -> list[tuple[float, float, float]]:
    """The portraits' lights: :data:`LIGHTS`, or with light_up (LO, HI) degrees the same lights
    from the same sides raised to LO (the first) and HI (the second) above the horizon."""
    from skullsearch.encoder.render import raised

    if light_up is None:
        return list(LIGHTS)
    return [raised(light, up) for light, up in zip(LIGHTS, light_up, strict=True)]


def render_photos(skin, folder: Path, yaws, albedo=None, specular: float = 0.0, gamma: float = 1.0,
                  shadows: bool = False, light_up=None, exif: bool = False) -> list[Path]:
    """Portraits (512 px PNG, 0.7 m away: focal length 2.33 × the image's side) of the placed skin:
    each yaw under each of :func:`lights`; albedo (V, 3) per skin vertex (default: one skin
    colour), a specular highlight's strength, the camera's gamma, cast shadows
    (:func:`~skullsearch.encoder.render.render_mesh`), the lights' elevations (degrees, the two
    lights'; None: :data:`LIGHTS`); exif: each PNG carries its focal length (35 mm-equivalent,
    whole mm: :func:`_common.focal_exif`), which the fit reads, else it guesses 1.2 × the side."""
    from PIL import Image

    paths = []
    for yaw in yaws:
        for k, light in enumerate(lights(light_up)):
            img, cam = portrait(skin.vertices, skin.faces, yaw, light, albedo, specular, gamma, shadows)
            paths.append(folder / f"ct_yaw{int(yaw):+03d}_light{k}.png")
            Image.fromarray(img).save(paths[-1], **(focal_exif(cam) if exif else {}))
    return paths


def portrait(vertices, faces, yaw: float, light, albedo=None, specular: float = 0.0, gamma: float = 1.0,
             shadows: bool = False):
    """One portrait of :func:`render_photos` (512 px, 0.7 m away) of a mesh (vertices (V, 3) mm,
    the model's frame; faces (F, 3)) at ``yaw`` degrees under ``light``: the image (512, 512, 3)
    uint8 and its camera."""
    from skullsearch.encoder.render import face_camera, render_mesh

    cam = face_camera(yaw_deg=float(yaw), size=512, distance=700.0, fov_mm=300.0,
                      center=np.array([0.0, -30.0, 0.0]))
    img = render_mesh(vertices, faces, cam, light_dir=light, specular=specular, gamma=gamma,
                      shadows=shadows, **({} if albedo is None else {"albedo": albedo})).image
    return img, cam


def skin_texture(model, skin, shape: np.ndarray, seed: int) -> np.ndarray:
    """A random albedo (V, 3) for the placed skin's vertices: the model's
    (:func:`~skullsearch.encoder.render.random_albedo`, seed) carried over from the model's face
    ``shape`` (S,) — the best fit to this skin, so that its brows and lips fall on the skin's own —
    by nearest skin vertex within 6 mm; the skin tone beyond (the back of the head)."""
    from scipy.spatial import cKDTree

    from skullsearch.encoder.render import random_albedo, random_skin_tone, texture_regions

    regions = texture_regions(model)
    rng = np.random.default_rng(seed)
    tone = random_skin_tone(rng)
    albedo = random_albedo(regions, rng, tone)
    with torch.no_grad():
        face = model.vertices(shape=torch.as_tensor(shape[None], dtype=torch.float32))[0].numpy()
    ids = np.flatnonzero(regions.skin)  # not the eyeballs: the CT's eyes are closed
    d, j = cKDTree(face[ids]).query(np.asarray(skin.vertices))
    return np.where(d[:, None] < 6.0, albedo[ids[j]], tone)


def fit_codes(model, paths, detector: str, config, prior=None, shared: bool = False, photometric=None,
              start_shape=None, info: dict | None = None, cnn=None):
    """Fitted shape codes (n, S) of the photos the detector finds, their names, the person
    descriptors' domain distances under the prior (n,) (None without one) and the mean residual px.
    photometric: a PhotometricConfig to refine the landmark fits with the photos' shading; then
    start_shape (S,): refine from this shape instead of the landmark fit's (the camera, expression
    and landmarks stay the fit's), and info gets the refinement's final mean energy, its terms and
    the landmark residual by part of the face (:func:`residual_by_group`). cnn: a CNN encoder
    checkpoint whose codes replace the fit's (shared: their mean shape). With ``config.posterior``
    info gets "_tissue_cov" (n, 36, 3, 3) mm², the final fit's (the refined one's where refined)."""
    from skullsearch.encoder import code as code_layout
    from skullsearch.encoder.detectors import get_detector
    from skullsearch.encoder.encode import describe_faces, detect_faces, fit_faces
    from skullsearch.encoder.images import read_images

    images = read_images(paths)
    faces, _ = detect_faces(images, get_detector(detector), all_faces=False)
    if not faces:
        return np.zeros((0, model.n_shape)), [], None, float("nan")
    dist = None
    if prior is not None:
        describe_faces(faces, {im.path: im.pixels for im in images if hasattr(im, "pixels")})
        descs = np.stack([f.descriptor if f.descriptor is not None else np.full(128, np.nan)
                          for f in faces])
        dist = prior.domain_distance(descs)
    if cnn is not None:
        from skullsearch.encoder.cnn import encode_detected, load_checkpoint

        net, _ = load_checkpoint(cnn, model=model)
        pixels = {im.path: im.pixels for im in images if hasattr(im, "pixels")}
        codes = encode_detected(net, faces, pixels)
        shape = codes[:, code_layout.SLICES["shape"]]
        if shared:
            shape = np.broadcast_to(shape.mean(0), shape.shape).copy()
        return shape, [Path(f.image).name for f in faces], None, float("nan")
    if shared:
        for f in faces:
            f.person = "ct"
    fit_faces(model, faces, config=config, identity_prior=prior)
    codes = np.stack([f.code for f in faces])
    if info is not None and config is not None and config.posterior:
        info["_tissue_cov"] = np.stack([f.tissue_cov for f in faces])
    if photometric is not None:
        from skullsearch.encoder.photometric import refine_photometric

        pixels = {im.path: im.pixels for im in images if hasattr(im, "pixels")}
        if start_shape is not None:
            sl = code_layout.SLICES["shape"]
            codes[:, sl] = np.asarray(start_shape)[: sl.stop - sl.start]
        res = refine_photometric(model, codes, np.stack([f.landmarks for f in faces]),
                                 [pixels[f.image] for f in faces],
                                 person=np.array([f.person or f"\0{i}" for i, f in enumerate(faces)]),
                                 config=config, photometric=photometric, detector=detector,
                                 # the fit's cameras (its focal lengths: the photos' own where EXIF
                                 # gives them, under which dlib's jaw line was moved) as fitted
                                 focal=np.array([f.focal for f in faces]),
                                 focal_known=[f.fitted_with_photo_focal(config) for f in faces])
        codes = res.codes
        if info is not None and res.shape_cov is not None:
            info["_tissue_cov"] = model.soft_tissue_covariance(res.shape_cov)
        if info is not None:
            info["energy"] = round(float(res.history[-1]), 4)
            info["energy_terms"] = {k: round(v, 4) for k, v in res.terms.items()}
            detected = np.stack([f.landmarks for f in faces])
            info["landmark_residual_iod"] = residual_by_group(res.landmarks_px, detected)
        for f, r in zip(faces, res.residual_px, strict=True):
            f.residual_px = float(r)
    shape = codes[:, code_layout.SLICES["shape"]]
    return shape, [Path(f.image).name for f in faces], dist, float(np.mean([f.residual_px for f in faces]))


def uncertainty_check(model, shapes: np.ndarray, best: np.ndarray, cov: np.ndarray) -> dict:
    """Is each face's Σ_face (n, 36, 3, 3) mm² calibrated on this real head? Its fitted
    soft-tissue points (shapes (n, S)) against those of the model's best face for the skin (best
    (S,); a proxy truth whose own error, ~0.8 mm over the face, adds to the residual: a calibrated
    posterior reads a little high here), similarity-aligned as a score aligns a face."""
    from _common import CHI2_3_95, tissue_errors_under_cov

    from skullsearch.encoder import code as code_layout
    from skullsearch.index.ingest import neutral_soft_tissue

    fit = neutral_soft_tissue(model, code_layout.pack(shape=np.asarray(shapes, np.float32)))
    truth = neutral_soft_tissue(model, code_layout.pack(shape=np.repeat(best[None], len(shapes), 0)
                                                        .astype(np.float32)))
    err, m2 = tissue_errors_under_cov(fit, truth, cov)
    var = np.diagonal(np.asarray(cov, np.float64), axis1=-2, axis2=-1)
    return {"median_mahalanobis2": round(float(np.median(m2)), 2),
            "inside_95pct": round(float((m2 < CHI2_3_95).mean()), 3),
            "predicted_sd_mm_xyz": [round(float(v), 2) for v in np.sqrt(var.mean((0, 1)))],
            "error_rms_mm_xyz": [round(float(v), 2) for v in np.sqrt((err**2).mean((0, 1)))]}


def _stats(d: np.ndarray) -> dict:
    return {"mean_mm": round(float(np.mean(d)), 3), "p90_mm": round(float(np.percentile(d, 90)), 3)}


def face_errors(model, skin, shapes: np.ndarray, keep: np.ndarray) -> dict:
    """Distances of neutral faces of shapes (n, S) to the skin over ``keep`` (V,) after rigid and
    after similarity ICP: per face mean mm (n,) each; "bands": per band (:func:`_common.face_bands`) the
    rigid distances' mean (n,)."""
    faces = neutral_faces(model, shapes)
    bands = face_bands(model, keep)
    out = {"rigid": [], "similarity": []}
    by_band = {k: [] for k in bands}
    for v in faces:
        pts = v[keep]
        m, d = icp(pts, skin, np.ones(len(pts), bool))
        out["rigid"].append(float(np.mean(d)))
        for k, b in bands.items():
            by_band[k].append(float(np.mean(d[b])) if b.any() else float("nan"))
        _, d = icp(pts, skin, np.ones(len(pts), bool), scale=True, init=m)
        out["similarity"].append(float(np.mean(d)))
    bands_out = {k: np.asarray(v) for k, v in by_band.items()}
    return {k: np.asarray(v) for k, v in out.items()} | {"bands": bands_out}


def add_head_arguments(p) -> None:
    """The CT head's options: ``--ct``, ``--no-streak``, ``--upper-face`` (see :func:`place_head`)."""
    p.add_argument("--ct", default=None, help="CT head npz (default: the shared CThead)")
    p.add_argument("--no-streak", action="store_true",
                   help="the head has no dental streak (another CT than CThead): score every face vertex")
    p.add_argument("--upper-face", type=float, default=None, metavar="MM",
                   help="the scan ends above the mouth: place, fit the oracle and score only the face "
                        "above MM below the mean face's nose base, and render the mean face's head below "
                        "that line (no identity there) in place of the cut")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_head_arguments(p)
    p.add_argument("--yaws", type=float, nargs="+", default=[-30, -20, -10, 0, 10, 20, 30])
    p.add_argument("--detectors", nargs="+", default=["dlib", "mesh"])
    p.add_argument("--no-prior", action="store_true", help="skip the identity prior's fits")
    p.add_argument("--no-photometric", action="store_true", help="skip the photometric refinement's fits")
    p.add_argument("--photo-from-best", action="store_true",
                   help="also refine from the model's best face for the skin (is the photometric energy's "
                        "minimum the true face? compare the energies: dlib_photo_from_best vs dlib_photo)")
    p.add_argument("--save", default=None, help="keep the renders and the placed skin in this folder")
    p.add_argument("--smooth-streak", action="store_true",
                   help="render the skin with the dental streak's band smoothed (its metal-artefact spikes "
                        "flattened: a photo has none); the scoring is the same")
    p.add_argument("--cnn", default=None, metavar="CKPT",
                   help="also a CNN encoder checkpoint's codes (benchmarks/cnn_train.py) on dlib's boxes")
    p.add_argument("--texture", type=int, default=None, metavar="SEED",
                   help="render the skin textured (the model's random albedo of this seed, carried over "
                        "from its best face for the skin) with a specular highlight: real geometry, "
                        "synthetic colour")
    add_camera_arguments(p)
    p.add_argument("--exif", action="store_true",
                   help="the portraits carry their focal length in EXIF, which the fit reads "
                        "(FitConfig.exif_focal; without, it guesses 1.2x the side: the truth is 2.33x)")
    add_jaw_calibration_argument(p)
    add_landmark_weights_argument(p)
    p.add_argument("--photo-set", nargs="+", default=None, metavar="KEY=VALUE",
                   help="the photometric runs with these PhotometricConfig settings (landmark_cauchy=0.06)")
    add_identity_prior_file_argument(p)
    p.add_argument("--uncertainty", action="store_true",
                   help="fit the dlib runs with the posterior and check each face's Σ_face against the "
                        "soft-tissue points of the model's best face for the skin (the `uncertainty` rows)")
    p.add_argument("--photo-correlation", type=float, default=None, metavar="RHO",
                   help="with --uncertainty: the shared runs' posterior counts the views as correlated "
                        "(FitConfig.photo_correlation; default: its default)")
    a = p.parse_args(argv)
    from skullsearch import FaceModel
    from skullsearch.encoder.fitting import FitConfig as _FitConfig

    FitConfig = partial(_FitConfig, jaw_calibration=a.jaw_calibration,  # noqa: N806 (every run's)
                        landmark_weights=a.landmark_weights)
    photo_cfg = photometric_config(a.photo_set)
    model = FaceModel.from_env()
    t = time.time()
    volume, spacing = ct.load_ct(a.ct or ct.CT_HEAD)
    _, skin_ct = ct.extract_surfaces(volume, spacing)
    head = place_head(model, volume, spacing, skin_ct, a.upper_face, a.smooth_streak, a.no_streak)
    skin, full, rms, region, upper, streak, keep = (head.skin, head.full, head.rms, head.region, head.upper,
                                                    head.streak, head.keep)
    print(f"skin placed in the model's frame ({time.time() - t:.0f} s; mean face RMS {rms:.2f} mm); "
          f"{keep.sum()} of {region.sum()} face-region vertices scored (outside the dental streak"
          f"{', above the cut' if a.upper_face is not None else ''})", file=sys.stderr)
    out = {"ct": str(Path(a.ct or ct.CT_HEAD).name), "yaws": a.yaws, "lights": len(LIGHTS),
           "smooth_streak": bool(a.smooth_streak), "photometric_settings": a.photo_set or [],
           "streak": not a.no_streak, "upper_face_mm": a.upper_face,
           "texture_seed": a.texture, "camera_gamma": a.camera_gamma, "shadows": a.shadows,
           "light_up": a.light_up, "exif": a.exif, "jaw_calibration": a.jaw_calibration,
           "landmark_weights": a.landmark_weights,
           "region_vertices": int(region.sum()), "scored_vertices": int(keep.sum()),
           "placement_rms_mm": round(rms, 3), "faces": {}}

    def record(name, shapes, **extra):
        e = face_errors(model, skin, shapes, keep)
        bands = e.pop("bands")
        row = {k: _stats(v) | {"per_photo_mean_mm": [round(float(x), 3) for x in v]} if len(v) > 1
               else _stats(v) for k, v in e.items()}
        row["rigid"]["by_band_mean_mm"] = {k: round(float(np.mean(v)), 3) for k, v in bands.items()}
        out["faces"][name] = row | {"n": len(shapes)} | extra
        print(f"  {name}: {len(shapes)} faces, rigid {np.mean(e['rigid']):.3f} mm, similarity "
              f"{np.mean(e['similarity']):.3f} mm", file=sys.stderr)

    record("mean_face", np.zeros((1, model.n_shape)))
    t = time.time()
    best = oracle_shape(model, skin, region, ~streak & upper)
    record("oracle", best[None], seconds=round(time.time() - t, 1))

    prior = None
    if not a.no_prior:
        from skullsearch.encoder.identity_prior import for_model
        prior = for_model(model, a.identity_prior_file)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.save or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if a.save:
            full.export(folder / "skin_model_frame.ply")
        albedo = None if a.texture is None else skin_texture(model, full, best, a.texture)
        paths = render_photos(full, folder, a.yaws, albedo, 0.0 if a.texture is None else 0.1, a.camera_gamma,
                              a.shadows, a.light_up, exif=a.exif)
        runs = []
        for det in a.detectors:
            if det == "mesh" and importlib.util.find_spec("mediapipe") is None:
                print("  mesh: mediapipe is not installed, skipped", file=sys.stderr)
                continue
            runs += [(det, FitConfig(), None), (f"{det}_shared", FitConfig(), None)]
            if det == "dlib":
                runs.insert(len(runs) - 1, ("dlib_pose", FitConfig(pose_embedding=True), None))
                runs.append(("dlib_pose_shared", FitConfig(pose_embedding=True), None))
                runs += [("dlib_textured", FitConfig(textured_embedding=True), None),
                         ("dlib_textured_shared", FitConfig(textured_embedding=True), None)]
                if prior is not None:
                    runs += [("dlib_prior", FitConfig(), prior), ("dlib_prior_shared", FitConfig(), prior)]
        if a.cnn:
            runs += [("dlib_cnn", None, None), ("dlib_cnn_shared", None, None)]
        if "dlib" in a.detectors and not a.no_photometric:
            runs += [("dlib_photo", FitConfig(), None), ("dlib_photo_shared", FitConfig(), None),
                     ("dlib_textured_photo", FitConfig(textured_embedding=True), None),
                     ("dlib_textured_photo_shared", FitConfig(textured_embedding=True), None)]
            if a.photo_from_best:
                runs.append(("dlib_photo_from_best", FitConfig(), None))
        for name, cfg, pr in runs:
            det = name.split("_")[0]
            if a.uncertainty and cfg is not None and det == "dlib":
                cfg = replace(cfg, posterior=True, **({} if a.photo_correlation is None
                                                      else {"photo_correlation": a.photo_correlation}))
            t = time.time()
            info = {}
            shapes, names, dist, res_px = fit_codes(
                model, paths, det, cfg, prior=pr, shared=name.endswith("_shared"),
                photometric=photo_cfg if "_photo" in name else None,
                start_shape=best if name.endswith("_from_best") else None, info=info,
                cnn=a.cnn if "_cnn" in name else None)
            extra = {"photos": len(paths), "found": len(names), "found_photos": [Path(n).stem for n in names],
                     "residual_px": None if np.isnan(res_px) else round(res_px, 2),
                     "fit_seconds": round(time.time() - t, 1)} | info
            cov = extra.pop("_tissue_cov", None)
            if cov is not None and len(shapes):
                extra["uncertainty"] = uncertainty_check(model, shapes, best, cov)
            if dist is not None:
                extra["prior_domain_distance"] = [round(float(x), 1) for x in dist]
                extra["prior_domain_limit"] = round(float(pr.domain_limit), 1)
                extra["prior_applied"] = int((dist <= pr.domain_limit).sum())
            if name.endswith("_shared") and len(shapes):
                shapes = shapes[:1]
            if len(shapes):
                record(name, shapes, **extra)
    base = out["faces"]["mean_face"]
    for row in out["faces"].values():
        for k in ("rigid", "similarity"):
            row[k]["ratio_to_mean_face"] = round(row[k]["mean_mm"] / base[k]["mean_mm"], 3)
    emit(json.loads(json.dumps(out)))


if __name__ == "__main__":
    main()
