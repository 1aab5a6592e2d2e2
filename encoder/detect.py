"""68-point face landmark detection with dlib, offline.

The frontal face detector ships inside dlib; the 68-point shape predictor comes with the
``face_recognition_models`` sdist (no download). That package imports ``pkg_resources`` on
import, so its files are found through its import spec instead of importing it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from skullsearch.errors import DependencyError


def face_recognition_models_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(
            "dlib's 68-point predictor comes with the 'face_recognition_models' package: "
            "pip install face_recognition_models"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@functools.lru_cache(maxsize=1)
def dlib_models():
    """(face detector, 68-point shape predictor), loaded once per process."""
    try:
        import dlib
    except ImportError as e:
        raise DependencyError("the dlib detector needs dlib: pip install dlib-bin") from e
    predictor = face_recognition_models_dir() / "shape_predictor_68_face_landmarks.dat"
    if not predictor.exists():
        raise DependencyError(f"dlib's 68-point predictor is missing: {predictor}")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor))


def dlib_landmarks68(image: np.ndarray, upsample: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """All faces in an RGB/gray uint8 image (H, W[, 3]), largest first.

    Returns a list of (box (4,) x0, y0, x1, y1 pixels, landmarks (68, 2) pixels, iBUG order).
    """
    detector, predictor = dlib_models()
    image = np.ascontiguousarray(image)
    boxes = detector(image, upsample)
    out = []
    for b in boxes:
        shape = predictor(image, b)
        pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        out.append((np.array([b.left(), b.top(), b.right(), b.bottom()], np.float64), pts))
    out.sort(key=lambda r: -(r[0][2] - r[0][0]) * (r[0][3] - r[0][1]))
    return out
