"""Per-detector embeddings: where on a face model each detector's 68 landmarks (and a dense
detector's K points) land, as measured by :func:`skullsearch.encoder.calibrate.calibrate_embedding`
(:func:`~skullsearch.encoder.calibrate.calibrate_dense`), stored per model and detector, and
found by the fit (:func:`skullsearch.encoder.fitting.rig_for`, ``dense_rig_for``).

Kept apart from the calibration (which renders and detects) so that the fit can look an
embedding up without importing the face model's building and annotation code.
"""

from __future__ import annotations

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


def embedding_file_name(model, detector: str) -> str:
    return f"landmarks-{detector}-{model.fingerprint[:16]}.npz"


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


def embedding_paths(model, detector: str) -> list[Path]:
    """Where a detector's calibrated embedding for ``model`` is looked for (:func:`_paths`)."""
    return _paths(embedding_file_name(model, detector))


def save_detector_embedding(path, model, detector: str, emb, report) -> None:
    """Write a detector's calibrated 68-point embedding (``emb`` and ``report`` from
    :func:`~skullsearch.encoder.calibrate.calibrate_embedding`)."""
    _save(path, model, detector, dict(faces=np.asarray(emb.static_faces, np.int64),
                                      bary=np.asarray(emb.static_bary, np.float32)),
          dict(source=emb.source, found=report.found, photos=report.photos, spread_mm=report.spread_mm))


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


def dense_file_name(model, detector: str) -> str:
    return f"dense-{detector}-{model.fingerprint[:16]}.npz"


def dense_paths(model, detector: str) -> list[Path]:
    """Where a dense detector's calibration for ``model`` is looked for (:func:`_paths`)."""
    return _paths(dense_file_name(model, detector))


def save_dense_embedding(path, model, detector: str, cal) -> None:
    """Write a dense detector's calibration (``cal``: a
    :class:`~skullsearch.encoder.calibrate.DenseCalibration`)."""
    _save(path, model, detector, dict(index=np.asarray(cal.index, np.int64),
                                      faces=np.asarray(cal.faces, np.int64),
                                      bary=np.asarray(cal.bary, np.float32)),
          dict(source=cal.source, found=cal.found, photos=cal.photos, samples=cal.samples,
               spread_mm=cal.spread_mm))


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


def pose_file_name(model, detector: str) -> str:
    return f"landmarks-{detector}-pose-{model.fingerprint[:16]}.npz"


def pose_paths(model, detector: str) -> list[Path]:
    """Where a detector's pose-conditioned embedding for ``model`` is looked for (:func:`_paths`)."""
    return _paths(pose_file_name(model, detector))


def save_pose_embedding(path, model, detector: str, pe) -> None:
    """Write a pose-conditioned embedding (``pe``: a
    :class:`~skullsearch.encoder.calibrate.PoseEmbedding`)."""
    _save(path, model, detector, dict(yaw_edges=np.asarray(pe.yaw_edges, np.float64),
                                      faces=np.asarray(pe.faces, np.int64),
                                      bary=np.asarray(pe.bary, np.float32)),
          dict(source=pe.source, found=np.asarray(pe.found), shift_mm=np.asarray(pe.shift_mm, np.float32)))


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
