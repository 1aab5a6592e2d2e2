"""Per-detector embeddings: where on a face model each detector's 68 landmarks (and a dense
detector's K points) land, as measured by :func:`skullsearch.encoder.calibrate.calibrate_embedding`
(:func:`~skullsearch.encoder.calibrate.calibrate_dense`), stored per model and detector, and
found by the fit (:func:`skullsearch.encoder.fitting.rig_for`, ``dense_rig_for``).

Kept apart from the calibration (which renders and detects) so that the fit can look an
embedding up without importing the face model's building and annotation code.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from skullsearch.errors import LandmarkError

#: Detectors whose contour points (iBUG 0–16) are fixed on the face's surface, as a 3D face mesh
#: fit places them, not on the visible silhouette as dlib's (trained on 300-W) are: all 68 of
#: their points are calibrated, and the fit does not march their jaw line.
SURFACE_CONTOUR = frozenset({"mesh"})


class DetectorPoints(NamedTuple):
    """A detector's 68 points on a model: triangle indices (68,) int64, barycentric weights (68, 3)
    float32 (what :class:`~skullsearch.encoder.fitting.LandmarkRig` reads of surface points)."""

    faces: np.ndarray
    bary: np.ndarray


#: the calibration files by kind: a detector's 68 points, a dense detector's points, dlib's 68 per
#: yaw bin, dlib's 68 measured on textured renders, dlib's jaw-line offsets from the silhouette
#: (named per model by its fingerprint)
FILE_NAMES = {"landmarks": "landmarks-{detector}-{fp}.npz", "dense": "dense-{detector}-{fp}.npz",
              "pose": "landmarks-{detector}-pose-{fp}.npz",
              "textured": "landmarks-{detector}-textured-{fp}.npz", "jaw": "jaw-{detector}-{fp}.npz"}


def file_name(kind: str, model, detector: str) -> str:
    """The name of ``model``'s calibration file of ``kind`` (:data:`FILE_NAMES`) for a detector."""
    return FILE_NAMES[kind].format(detector=detector, fp=model.fingerprint[:16])


def file_paths(kind: str, model, detector: str) -> list[Path]:
    """Where that file is looked for (:func:`_paths`)."""
    return _paths(file_name(kind, model, detector))


embedding_file_name = partial(file_name, "landmarks")  # (model, detector) → its file's name


def _paths(name: str) -> list[Path]:
    """Where a calibration file is looked for: the package's data (the default model's), then
    the cache folder (``skullsearch model calibrate --detector``)."""
    from skullsearch.encoder.cache import cache_dir

    return [Path(__file__).parent / "data" / name, cache_dir() / name]


def _read(model, detector: str | None, paths: list[Path], dlib_too: bool = False) -> dict | None:
    """The arrays of the first calibration file of ``paths`` that exists, checked to be
    ``model``'s; None when none exists, and for dlib unless dlib_too (its static embedding is
    the model's own)."""
    if not detector or (detector == "dlib" and not dlib_too):
        return None
    for p in paths:
        if p.exists():
            with np.load(p) as z:
                if str(z["model_fingerprint"]) != model.fingerprint:
                    raise LandmarkError(f"{p} was calibrated for another face model: calibrate again "
                                        f"(skullsearch model calibrate --detector {detector})")
                return {k: z[k] for k in z.files}
    return None


def _points(z: dict) -> DetectorPoints:
    return DetectorPoints(z["faces"].astype(np.int64), z["bary"].astype(np.float32))


embedding_paths = partial(file_paths, "landmarks")  # (model, detector) → where it is looked for


textured_paths = partial(file_paths, "textured")  # (model, detector) → where it is looked for


def textured_points(model, detector: str | None) -> DetectorPoints | None:
    """``detector``'s 68 points on ``model`` as calibrated on textured renders (brows, lips and
    eyes painted by the model's source annotation: :func:`~skullsearch.encoder.calibrate.
    calibrate_textured`; None: dlib's, the model's own detector), or None where there is none
    (:func:`textured_paths`)."""
    z = _read(model, detector or "dlib", textured_paths(model, detector or "dlib"), dlib_too=True)
    return None if z is None else _points(z)


def save_detector_embedding(path, model, detector: str, emb, report) -> None:
    """Write a detector's calibrated 68-point embedding (``emb`` and ``report`` from
    :func:`~skullsearch.encoder.calibrate.calibrate_embedding`)."""
    _save(path, model, detector, dict(faces=np.asarray(emb.static_faces, np.int64),
                                      bary=np.asarray(emb.static_bary, np.float32)),
          dict(source=emb.source, found=report.found, photos=report.photos, spread_mm=report.spread_mm))


#: the stored dtype of a calibration file's arrays (others: as numpy makes them)
_DTYPES = {"index": np.int64, "faces": np.int64, "bary": np.float32, "yaw_edges": np.float64,
           "shift_mm": np.float32, "coef": np.float64, "feature_lo": np.float64, "feature_hi": np.float64}


def _fields(obj, *names) -> dict:
    """A calibration result's attributes by name, as the arrays a file stores (:data:`_DTYPES`)."""
    return {n: np.asarray(getattr(obj, n), _DTYPES.get(n)) for n in names}


def _save(path, model, detector: str, points: dict, about: dict) -> None:
    """Write a calibration file (atomic): its point arrays, the detector and the model's
    fingerprint (checked on reading, :func:`_read`), then what it was made from."""
    from skullsearch.encoder.atomic import atomic_file

    with atomic_file(path) as fh:
        np.savez(fh, **points, detector=detector, model_fingerprint=model.fingerprint, **about)


def detector_points(model, detector: str | None) -> DetectorPoints | None:
    """The 68 surface points to fit ``detector``'s landmarks with on ``model``: its calibrated
    embedding where one exists (:func:`embedding_paths`), else None — the model's own embedding
    (calibrated to dlib for the default model)."""
    z = _read(model, detector, embedding_paths(model, detector) if detector else [])
    return None if z is None else _points(z)


class DensePoints(NamedTuple):
    """A dense detector's calibrated points on a model: index (K,) int64 the detector's points
    kept (of its 478 for MediaPipe's mesh), points their surface points (K triangles, weights)."""

    index: np.ndarray
    points: DetectorPoints


dense_file_name = partial(file_name, "dense")  # (model, detector) → its file's name


dense_paths = partial(file_paths, "dense")  # (model, detector) → where it is looked for


def save_dense_embedding(path, model, detector: str, cal) -> None:
    """Write a dense detector's calibration (``cal``: a
    :class:`~skullsearch.encoder.calibrate.DenseCalibration`)."""
    _save(path, model, detector, _fields(cal, "index", "faces", "bary"),
          _fields(cal, "source", "found", "photos", "samples", "spread_mm"))


def dense_points(model, detector: str | None) -> DensePoints | None:
    """A dense detector's calibrated points on ``model`` (:func:`dense_paths`), or None where the
    detector has none (dlib) or the model has not been calibrated for it."""
    z = _read(model, detector, dense_paths(model, detector) if detector else [])
    return None if z is None else DensePoints(z["index"].astype(np.int64), _points(z))


class PosePoints(NamedTuple):
    """A detector's pose-conditioned embedding on a model: yaw_edges (n + 1,) degrees, and the
    68 surface points of each yaw bin stacked bin after bin: faces (68 n,) int64, bary (68 n, 3)
    float32 (what a pose-conditioned :class:`~skullsearch.encoder.fitting.LandmarkRig` reads)."""

    yaw_edges: np.ndarray
    faces: np.ndarray
    bary: np.ndarray


pose_file_name = partial(file_name, "pose")  # (model, detector) → its file's name


pose_paths = partial(file_paths, "pose")  # (model, detector) → where it is looked for


def save_pose_embedding(path, model, detector: str, pe) -> None:
    """Write a pose-conditioned embedding (``pe``: a
    :class:`~skullsearch.encoder.calibrate.PoseEmbedding`)."""
    _save(path, model, detector, _fields(pe, "yaw_edges", "faces", "bary"),
          _fields(pe, "source", "found", "shift_mm"))


def pose_points(model, detector: str | None) -> PosePoints | None:
    """``detector``'s pose-conditioned embedding on ``model`` (None: dlib's, the model's own
    detector), or None where there is none (:func:`pose_paths`)."""
    detector = detector or "dlib"
    z = _read(model, detector, pose_paths(model, detector), dlib_too=True)
    if z is None:
        return None
    n = len(z["yaw_edges"]) - 1
    if z["faces"].shape != (n, 68) or z["bary"].shape != (n, 68, 3):
        raise LandmarkError(f"{pose_paths(model, detector)[0].name}: a pose-conditioned embedding holds "
                            f"68 points per yaw bin; calibrate again (skullsearch model calibrate --pose)")
    return PosePoints(z["yaw_edges"], z["faces"].reshape(-1).astype(np.int64),
                      z["bary"].reshape(-1, 3).astype(np.float32))


class JawBias(NamedTuple):
    """Where a detector puts its jaw line (iBUG 0–16) against the face model's silhouette, as
    measured on renders (:func:`~skullsearch.encoder.calibrate.calibrate_jaw`): coef (2, 17, P)
    float64, each point's offset from the detected to the model's point along the face's eye
    line and across it, in inter-ocular distances, as linear in the P features of
    :func:`~skullsearch.encoder.fitting.jaw_features`; feature_lo, feature_hi (2,): the range of
    the two measured features (the perspective's log and the yaw proxy) that the calibration
    covered (the fit clips to it rather than extrapolate); sigma_raw, sigma_calibrated (68,):
    the scatter of all 68 points about the model's at the true camera, as detected and with the
    jaw line moved by ``coef``, in inter-ocular distances (``FitConfig.landmark_weights``; None
    in a file made before they were measured)."""

    coef: np.ndarray
    feature_lo: np.ndarray
    feature_hi: np.ndarray
    sigma_raw: np.ndarray | None = None
    sigma_calibrated: np.ndarray | None = None


jaw_paths = partial(file_paths, "jaw")  # (model, detector) → where it is looked for


def save_jaw_bias(path, model, detector: str, cal) -> None:
    """Write a jaw-line calibration (``cal``: a :class:`~skullsearch.encoder.calibrate.JawCalibration`)."""
    _save(path, model, detector, _fields(cal, "coef", "feature_lo", "feature_hi", "sigma_raw",
                                         "sigma_calibrated"),
          _fields(cal, "source", "found", "photos", "rms_before", "rms_after"))


def jaw_bias(model, detector: str | None) -> JawBias | None:
    """``detector``'s jaw-line offsets on ``model`` (None: dlib's, the model's own detector), or
    None where there is none (:func:`jaw_paths`; a detector whose contour is on the surface has
    none: its jaw line does not follow the silhouette)."""
    detector = detector or "dlib"
    if detector in SURFACE_CONTOUR:
        return None
    z = _read(model, detector, jaw_paths(model, detector), dlib_too=True)
    if z is None:
        return None
    if z["coef"].ndim != 3 or z["coef"].shape[:2] != (2, 17) or z["feature_lo"].shape != (2,):
        raise LandmarkError(f"{jaw_paths(model, detector)[0].name}: a jaw-line calibration holds (2, 17, P) "
                            f"coefficients; calibrate again (skullsearch model calibrate --jaw)")
    sigma = [z[k].astype(np.float64) if k in z and z[k].shape == (68,) else None
             for k in ("sigma_raw", "sigma_calibrated")]
    return JawBias(z["coef"].astype(np.float64), z["feature_lo"].astype(np.float64),
                   z["feature_hi"].astype(np.float64), *sigma)
