"""Shared helpers of the benchmarks: synthetic faces and cameras with known ground truth."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

#: the 68 iBUG points by part of the face
LANDMARK_GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
                   "outer_lips": range(48, 60), "inner_lips": range(60, 68)}


def random_faces(model, n: int, rng, n_shape: int = 90, expr_scale: float = 0.15):
    """Codes drawn from the prior: shape (n, S) ~ N(0, σ), sparse non-negative expressions
    (n, E), jaw opening (n, 15)."""
    s = min(n_shape, model.n_shape)
    shape = rng.standard_normal((n, s)) * model.shape_std[:s]
    expr = np.clip(rng.standard_normal((n, model.n_expression)) * expr_scale, 0, None)
    expr *= rng.random((n, model.n_expression)) < 0.2
    pose = np.zeros((n, 3 * model.n_joints))
    pose[:, 6] = rng.uniform(0.0, 0.12, n)
    return (torch.tensor(shape, dtype=torch.float32), torch.tensor(expr, dtype=torch.float32),
            torch.tensor(pose, dtype=torch.float32))


def random_cameras(n: int, rng, max_yaw: float = 30.0, size: int = 512, focal_factor: float = 1.2):
    """Realistic portrait cameras: yaw ±max_yaw°, pitch ±10°, roll ±5°, 0.45–0.9 m away.
    Returns (rotvec (n, 3), trans (n, 3) mm, focal (n,), image sizes (n, 2))."""
    yaw = np.deg2rad(rng.uniform(-max_yaw, max_yaw, n))
    pitch = np.deg2rad(rng.uniform(-10, 10, n))
    roll = np.deg2rad(rng.uniform(-5, 5, n))
    rot = np.stack([pitch, yaw, roll], 1)
    trans = np.stack([rng.uniform(-20, 20, n), rng.uniform(-50, -10, n), rng.uniform(450, 900, n)], 1)
    focal = np.full(n, focal_factor * size)
    sizes = np.full((n, 2), size)
    return (torch.tensor(rot, dtype=torch.float32), torch.tensor(trans, dtype=torch.float32),
            torch.tensor(focal, dtype=torch.float32), sizes)


def auc(same: np.ndarray, different: np.ndarray) -> float:
    """P(a same-person distance < a different-person distance) (ties count half); NaN when
    either set is empty."""
    if not len(same) or not len(different):
        return float("nan")
    d = np.concatenate([same, different])
    ranks = np.argsort(np.argsort(d, kind="stable"), kind="stable") + 1.0
    r_same = ranks[: len(same)].sum()
    return float(1.0 - (r_same - len(same) * (len(same) + 1) / 2) / (len(same) * len(different)))


def photometric_config(settings: list[str] | None):
    """A :class:`~skullsearch.encoder.photometric.PhotometricConfig` from ``KEY=VALUE`` strings
    (its field names; the rest keep their defaults). Refuses an unknown key, naming the known ones."""
    from dataclasses import fields

    from skullsearch.encoder.photometric import PhotometricConfig

    types = {f.name: type(getattr(PhotometricConfig(), f.name)) for f in fields(PhotometricConfig)}
    kw = {}
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"photometric setting {item!r}: want KEY=VALUE with KEY one of {sorted(types)}")
        if types[key] is bool and value.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"photometric setting {item!r}: want true or false")
        if types[key] is bool:
            kw[key] = value.lower() in ("true", "1")
        elif types[key] is tuple:  # comma-separated: skip_parts=lips,lashes
            kw[key] = tuple(v for v in value.split(",") if v)
        else:
            kw[key] = types[key](value)
    return PhotometricConfig(**kw)


def photo_copies(sha256: np.ndarray, fingerprints: np.ndarray) -> np.ndarray:
    """(n, n) bool: which pairs of faces are two files of one picture — the same bytes (sha256
    (n,)), or photo fingerprints (n, 63) within the gallery's near-duplicate distance — and so
    not two photos of a person (the diagonal False). A row of NaN (no fingerprint) matches none."""
    from skullsearch.index.ingest import NEAR_DUPLICATE_PHOTO_DISTANCE

    sha = np.asarray(sha256)
    fp = np.asarray(fingerprints, np.float64)
    out = (sha[:, None] == sha[None]) | (np.linalg.norm(fp[:, None] - fp[None], axis=-1)
                                         <= NEAR_DUPLICATE_PHOTO_DISTANCE)
    np.fill_diagonal(out, False)
    return out


def same_person(who: np.ndarray, copies: np.ndarray | None = None
                ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Every pair of faces (the upper triangle's indices) but two files of one picture (copies
    (n, n), :func:`photo_copies`), and whether it is one person's (who (n,) labels)."""
    iu = np.triu_indices(len(who), 1)
    if copies is not None:
        keep = ~copies[iu]
        iu = (iu[0][keep], iu[1][keep])
    return iu, who[iu[0]] == who[iu[1]]


def emit(result: dict) -> None:
    """Print the benchmark's JSON object as the last line."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True))


#: Table SDs (mm) of the 2023 global T-Table in SOFT_TISSUE_NAMES order (the built-in table).
def table_sd() -> np.ndarray:
    from skullsearch.retrieval.tissue import load_table

    return np.asarray(load_table().sd, dtype=np.float64)


def face_normals(model) -> np.ndarray:
    """Unit outward normals (36, 3) of the mean face at its soft-tissue points
    (:meth:`FaceModel.soft_tissue_normals`)."""
    return model.soft_tissue_normals()


def synthetic_skull_targets(face_points: np.ndarray, normals: np.ndarray, sd: np.ndarray, rng,
                            missing: float = 0.0, placement_mm: float = 1.0,
                            offset: np.ndarray | None = None):
    """Extended landmarks a skull of each face would give: the true soft-tissue points moved
    along the face normal by the depth error (true depth − table mean ~ N(0, SD)), plus
    placement noise, under a random rigid motion; a share ``missing`` of landmarks absent.
    offset (36, 3) mm, in the face's frame: a disagreement between where the skull puts each
    point and where the model annotates it, added to every face (e.g. a real head's measured
    one: ``ct_identification.correspondence_gap``). face_points (q, 36, 3) → targets (q, 36, 3)
    (NaN where absent), present (q, 36)."""
    from scipy.spatial.transform import Rotation

    q = len(face_points)
    depth_err = rng.standard_normal((q, 36)) * sd
    t = face_points + depth_err[..., None] * normals + rng.normal(scale=placement_mm, size=(q, 36, 3))
    if offset is not None:
        t = t + np.nan_to_num(np.asarray(offset, np.float64))
    rot = Rotation.random(q, random_state=int(rng.integers(1 << 31))).as_matrix()
    t = np.einsum("qij,qkj->qki", rot, t) + rng.normal(scale=200.0, size=(q, 1, 3))
    present = np.ones((q, 36), bool)
    if missing > 0:
        for i in range(q):
            present[i, rng.choice(36, int(round(missing * 36)), replace=False)] = False
    return np.where(present[..., None], t, np.nan), present


def add_texture_argument(parser) -> None:
    """``--texture``: the renders textured (:func:`render_photos`'s ``texture``)."""
    parser.add_argument("--texture", action="store_true",
                        help="textured renders: brows, lips, eyes, blotches, sometimes a beard, "
                             "a specular highlight")


def add_identity_prior_file_argument(parser) -> None:
    """``--identity-prior-file NPZ``: an identity prior file instead of the model's packaged one
    (e.g. one learned on textured renders: ``skullsearch model train-identity-prior --texture``)."""
    parser.add_argument("--identity-prior-file", type=Path, default=None, metavar="NPZ",
                        help="the identity prior to use instead of the model's packaged one")


def add_camera_arguments(parser) -> None:
    """``--camera-gamma G``: the renders encoded as a camera does (pixel = light^(1/G); 2.2 about
    sRGB; 1, the default: the light as it is, the refinement's own model); ``--shadows``: the
    faces cast shadows (:func:`~skullsearch.encoder.render.in_shadow`) — two ways a photo's
    shading is not the refinement's model of it; ``--light-up LO HI``: the light's elevation drawn
    between LO and HI degrees above the horizon (default: the renders' usual lights, at most about
    31° up; the light read off the 7 real photos stands 43.8° up on average, 48–53° on five of
    them, and the reading runs low by about 4–5° on renders: ``--light-up 30 60`` is nearer a
    portrait's)."""
    parser.add_argument("--camera-gamma", type=float, default=1.0, metavar="G",
                        help="encode the renders' light as a camera does (2.2: about sRGB; 1: linear)")
    parser.add_argument("--shadows", action="store_true", help="the rendered faces cast shadows")
    parser.add_argument("--light-up", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="the light's elevation between LO and HI degrees (default: at most ~31 deg)")


def add_textured_embedding_argument(parser) -> None:
    """``--textured-embedding``: fit dlib's points with its embedding calibrated on textured
    renders (``FitConfig.textured_embedding``)."""
    parser.add_argument("--textured-embedding", action="store_true",
                        help="fit dlib's points with its embedding calibrated on textured renders "
                             "(FitConfig.textured_embedding)")


def add_jaw_calibration_argument(parser) -> None:
    """``--no-jaw-calibration``: fit dlib's jaw line as detected, not moved by its calibrated
    offsets from the silhouette (``FitConfig.jaw_calibration``; ``args.jaw_calibration``)."""
    parser.add_argument("--no-jaw-calibration", dest="jaw_calibration", action="store_false",
                        help="fit dlib's jaw line as detected (FitConfig.jaw_calibration off)")


def add_landmark_weights_argument(parser) -> None:
    """``--landmark-weights`` / ``--no-landmark-weights``: weigh each of dlib's points by its
    measured reliability or not (``FitConfig.landmark_weights``; ``args.landmark_weights``)."""
    from skullsearch.encoder.fitting import FitConfig

    parser.add_argument("--landmark-weights", action=argparse.BooleanOptionalAction,
                        default=FitConfig.landmark_weights,
                        help="weigh each of dlib's 68 points by 1/σ² of its measured scatter "
                             "(FitConfig.landmark_weights)")


def mean_residual_px(faces) -> float:
    """The fitted faces' mean landmark residual (px, two decimals)."""
    return round(float(np.mean([f.residual_px for f in faces])), 2)


def focal_exif(camera) -> dict:
    """PIL's save arguments that give a render its camera's (:class:`~skullsearch.encoder.render.
    Camera`) 35 mm-equivalent focal length in EXIF, rounded to whole mm as cameras write it."""
    from PIL import Image

    from skullsearch.encoder.images import FRAME_35MM_DIAGONAL

    tags = Image.Exif()
    tags[0x010F] = "skullsearch render"
    tags.get_ifd(0x8769)[0xA405] = int(round(camera.focal * FRAME_35MM_DIAGONAL / np.hypot(camera.width,
                                                                                           camera.height)))
    return {"exif": tags}


def render_photos(model, folder, shape, expr, pose, rng, max_yaw: float = 30.0,
                  texture: bool = False, cameras: list | None = None, gamma: float = 1.0,
                  shadows: bool = False, light_up: tuple[float, float] | None = None,
                  lights: list | None = None, distance_scale: float = 1.0, exif: bool = False) -> list:
    """Synthetic portrait photos (512 px PNG) of the given faces: yaw ±max_yaw°, pitch ±10°,
    random distance, light and skin tone; ``texture``: a random albedo map and a specular
    highlight too (:func:`~skullsearch.encoder.render.random_albedo`); ``gamma``: the camera's
    encoding of the light, ``shadows``: cast shadows (:func:`~skullsearch.encoder.render.
    render_mesh`), ``light_up``: the light's elevation range in degrees (None: the default
    lights, at most about 31° up; :func:`~skullsearch.encoder.render.random_portrait`; ``lights``:
    a list that gets each photo's light direction); ``distance_scale``: the camera's distance ×
    this (0.386: a selfie's 19–35 cm); ``exif``: each PNG carries its camera's 35 mm-equivalent
    focal length in EXIF, rounded to whole mm as cameras write it. Returns the paths,
    ``photo0000.png``…; ``cameras``: a list that gets each photo's
    :class:`~skullsearch.encoder.render.Camera`."""
    from PIL import Image

    from skullsearch.encoder.render import random_portrait, texture_regions

    regions = texture_regions(model) if texture else None
    with torch.no_grad():
        verts = model.vertices(shape=shape, expression=expr, pose=pose).numpy()
    paths = []
    for i, v in enumerate(verts):
        paths.append(Path(folder) / f"photo{i:04d}.png")
        render, camera = random_portrait(v, model.faces, rng, max_yaw, texture=regions, gamma=gamma,
                                         shadows=shadows, light_up=light_up, lights=lights,
                                         distance_scale=distance_scale)
        Image.fromarray(render.image).save(paths[-1], **(focal_exif(camera) if exif else {}))
        if cameras is not None:
            cameras.append(camera)
    return paths


def exact_landmarks(model, shape, expr, pose, cameras, textured: bool = False) -> np.ndarray:
    """(n, 68, 2) px: the faces' (shape (n, S), expr (n, E), pose (n, P) tensors) own 68 landmarks
    as the fit models dlib's (its embedding — ``textured``: the one calibrated on textured renders
    — the jaw line on the silhouette) through each photo's camera (n,): what dlib without error
    would give."""
    from skullsearch.encoder.fitting import model_landmarks_px, rig_for

    rig = rig_for(model, shape.shape[1], expr.shape[1], detector="dlib", textured=textured)
    rot = torch.as_tensor(np.stack([c.rotation for c in cameras]), dtype=torch.float32)
    trans = torch.as_tensor(np.stack([c.translation for c in cameras]), dtype=torch.float32)
    focal = torch.as_tensor([c.focal for c in cameras], dtype=torch.float32)
    center = torch.as_tensor([[c.width / 2, c.height / 2] for c in cameras], dtype=torch.float32)
    with torch.no_grad():
        uv = model_landmarks_px(rig, shape.float(), expr.float(), pose.float(), rot, trans, focal, center)
    return uv.double().numpy()


def faces_landmarks_px(model, faces, textured: bool = False) -> np.ndarray:
    """(n, 68, 2) px: the 68 landmarks of fitted faces' codes (dlib's embedding; ``textured``: the
    one calibrated on textured renders), jaw line on the silhouette, through each face's camera."""
    from skullsearch.encoder import code as code_layout
    from skullsearch.encoder.fitting import code_landmarks_px, rig_for

    rig = rig_for(model, min(code_layout.N_SHAPE, model.n_shape), model.n_expression, detector="dlib",
                  textured=textured, dtype=torch.float64)
    with torch.no_grad():
        uv = code_landmarks_px(rig, torch.as_tensor(np.stack([f.code for f in faces]), dtype=torch.float64),
                               torch.as_tensor([f.focal for f in faces], dtype=torch.float64),
                               torch.as_tensor([f.image_size for f in faces], dtype=torch.float64))
    return uv.numpy()


def inter_ocular(points: np.ndarray) -> np.ndarray:
    """(n,) px: the distance between the eyes' centres of 68-point sets (n, 68, 2)."""
    return np.linalg.norm(points[:, 36:42].mean(1) - points[:, 42:48].mean(1), axis=-1)


def residual_by_group(fitted: np.ndarray, detected: np.ndarray) -> dict:
    """The fitted face's landmarks (n, 68, 2) px against the detector's (n, 68, 2): mean distance
    per part of the face in inter-ocular distances (the detected eyes' centres)."""
    iod = inter_ocular(detected)
    r = np.linalg.norm(fitted - detected, axis=-1) / iod[:, None]
    return {"all": round(float(r.mean()), 4)} | {g: round(float(r[:, list(ix)].mean()), 4)
                                                  for g, ix in LANDMARK_GROUPS.items()}


def render_images(model, shape, expr, pose, rng, max_yaw: float = 40.0, texture: bool = False) -> list:
    """Synthetic portrait photos of the given faces, as :func:`render_photos`'s, kept in memory:
    decoded images (512 px) named ``"0"``, ``"1"``… (their index), for the detectors directly."""
    from skullsearch.encoder.images import DecodedImage
    from skullsearch.encoder.render import random_portrait, texture_regions

    regions = texture_regions(model) if texture else None

    with torch.no_grad():
        verts = model.vertices(shape=torch.as_tensor(shape), expression=torch.as_tensor(expr),
                               pose=torch.as_tensor(pose)).numpy()
    images = []
    for i, v in enumerate(verts):
        px = random_portrait(v, model.faces, rng, max_yaw, texture=regions)[0].image
        images.append(DecodedImage(f"{i}", px, "", (px.shape[1], px.shape[0]), False))
    return images


def identity_errors(model, mask: np.ndarray, fitted_shape, true_shape) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex identity errors (n, m) mm over the face region ``mask`` (V,) of the fitted
    neutral faces against the true ones, similarity-aligned (the NoW non-metrical protocol), and
    the same for the model's mean face in place of each fit. fitted_shape, true_shape (n, ≤S)."""
    from skullsearch.encoder.align import align

    with torch.no_grad():
        truth = model.vertices(shape=torch.as_tensor(true_shape, dtype=torch.float32)).numpy()[:, mask]
        fit = model.vertices(shape=torch.as_tensor(fitted_shape, dtype=torch.float32)).numpy()[:, mask]
    err = np.linalg.norm(align(fit, truth) - truth, axis=-1)
    mean_face = np.broadcast_to(model.v_template[mask], truth.shape)
    return err, np.linalg.norm(align(mean_face, truth) - truth, axis=-1)


def face_bands(model, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The vertices ``keep`` (V,) bool split into bands of the mean face's height (each (K,) bool
    over the kept vertices), cut at the source-annotated brow line, eye line, nose base and mouth
    line (:func:`~skullsearch.encoder.render.anatomical_landmarks`): the forehead above the brows
    is seen by no landmark, so a fit's error there is the prior's extrapolation."""
    from skullsearch.encoder.render import anatomical_landmarks

    lm = anatomical_landmarks(model)
    y = np.asarray(model.v_template, np.float64)[keep, 1]
    cuts = [np.inf, lm[17:27, 1].mean(), lm[36:48, 1].mean(), lm[33, 1], lm[48:60, 1].mean(), -np.inf]
    names = ["forehead", "brows_to_eyes", "eyes_to_nose_base", "nose_base_to_mouth", "below_mouth"]
    return {n: (y <= hi) & (y > lo) for n, hi, lo in zip(names, cuts[:-1], cuts[1:], strict=True)}


#: χ²₃'s median and 95th percentile: a calibrated 3D Gaussian's squared Mahalanobis distances.
CHI2_3_MEDIAN = 2.366
CHI2_3_95 = 7.815


def tissue_errors_under_cov(fit_pts: np.ndarray, true_pts: np.ndarray, cov: np.ndarray):
    """The fitted soft-tissue points' errors (n, 36, 3) mm, similarity-aligned to the truth as a
    score aligns a face, and their squared Mahalanobis distances (n, 36) under each point's
    covariance cov (n, 36, 3, 3) mm²."""
    from skullsearch.encoder.align import align

    fit_pts, true_pts = np.asarray(fit_pts, np.float64), np.asarray(true_pts, np.float64)
    err = align(fit_pts, true_pts) - true_pts
    m2 = np.einsum("nki,nkij,nkj->nk", err, np.linalg.inv(np.asarray(cov, np.float64)), err)
    return err, m2

