"""Person descriptors: dlib's 128-d face recognition vector of each detected face (offline).

A face's *shape code* says what its 3D face looks like as far as 68 landmarks can tell; its
*person descriptor* says who it is. dlib's ResNet face recognition model
(``dlib_face_recognition_resnet_model_v1.dat``, shipped in the ``face_recognition_models``
package that the 68-point predictor already comes from; no download) maps an aligned 150×150
chip of the face to a unit-scale 128-d vector whose Euclidean distance separates persons: dlib
reports 99.38 % same/different accuracy on LFW at a distance of :data:`SAME_PERSON_DISTANCE` =
0.6. The chip is aligned from the face's 68 landmarks, so every 68-point detector (dlib, FAN,
``.pts``) gets a descriptor.

The network runs in torch by default (:mod:`~skullsearch.encoder.dlib_resnet`: dlib's own weights,
read from the same file; the chip still cut by dlib): the same descriptor to float rounding
(≤ 1e-6 against dlib's own, tested), about 13 ms of one CPU core a face against dlib's 75 ms
(``benchmarks/descriptor_speed.py``). ``backend="dlib"`` runs dlib's own network; a model file that
does not read as dlib's network falls back to it with a warning.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from skullsearch.errors import DependencyError

DIM = 128
#: dlib's same-person distance (Euclidean, 128-d): same/different accuracy 99.38 % on LFW at it.
SAME_PERSON_DISTANCE = 0.6
#: The distance under which skullsearch takes two faces for one person (``persons`` grouping, the
#: ``person`` near-duplicate criterion): stricter than :data:`SAME_PERSON_DISTANCE`, as dlib's own
#: face-clustering example is (0.5), since in a large gallery the nearest *other* person of a face
#: is often closer than 0.6. ``benchmarks/persons.py`` measures it on a labelled photo folder.
PERSON_DISTANCE = 0.5
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
#: The chip dlib's network reads: side (px) and the margin around the landmarks (dlib's defaults
#: in ``compute_face_descriptor``).
CHIP_SIZE, CHIP_PADDING = 150, 0.25
BACKENDS = ("torch", "dlib")

log = logging.getLogger(__name__)


def _model_path():
    from skullsearch.encoder.detectors import face_recognition_models_dir

    path = face_recognition_models_dir() / MODEL_FILE
    if not path.exists():
        raise DependencyError(f"dlib's face recognition model is missing: {path} "
                              "(reinstall face_recognition_models)")
    return path


@functools.lru_cache(maxsize=1)
def dlib_descriptor_model():
    """dlib's face recognition network, loaded once per process."""
    try:
        import dlib
    except ImportError as e:
        raise DependencyError("person descriptors need dlib: pip install dlib-bin") from e
    return dlib.face_recognition_model_v1(str(_model_path()))


@functools.lru_cache(maxsize=1)
def torch_descriptor_model():
    """The same network's weights in torch (:class:`~skullsearch.encoder.dlib_resnet.TorchResNet`),
    loaded once per process; None where the file does not read as dlib's network (then dlib runs
    it)."""
    from skullsearch.encoder import dlib_resnet

    path = _model_path()
    try:
        return dlib_resnet.TorchResNet(dlib_resnet.read_network(path))
    except ValueError as e:
        log.warning("person descriptors: %s; running dlib's own network instead (slower)", e)
        return None


def _shape(box: np.ndarray, landmarks: np.ndarray):
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    pts = dlib.points()
    for x, y in np.rint(landmarks).astype(np.int64):
        pts.append(dlib.point(int(x), int(y)))
    return dlib.full_object_detection(dlib.rectangle(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), pts)


def face_descriptors(pixels: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray,
                     backend: str = "torch") -> np.ndarray:
    """Person descriptors (n, 128) float32 of the faces of one photo.

    pixels: (H, W, 3) uint8 RGB (or (H, W) gray); boxes: (n, 4) x0, y0, x1, y1 px; landmarks:
    (n, 68, 2) px, iBUG order. One batched pass of dlib's network over the photo's faces (each
    aligned to a 150×150 chip from its landmarks by dlib), in torch or (``backend="dlib"``) by
    dlib itself: the same numbers to float rounding. A face whose landmarks are not finite gets a
    NaN row.
    """
    if backend not in BACKENDS:
        raise ValueError(f"descriptor backend must be one of {BACKENDS}, got {backend!r}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    landmarks = np.asarray(landmarks, np.float64).reshape(len(boxes), -1, 2)
    out = np.full((len(boxes), DIM), np.nan, np.float32)
    ok = np.isfinite(landmarks).all((1, 2)) & np.isfinite(boxes).all(1)
    if landmarks.shape[1] != 68:
        raise ValueError(f"descriptors need 68 landmarks per face, got {landmarks.shape[1]}")
    if not ok.any():
        return out
    import dlib

    img = np.asarray(pixels)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)
    shapes = dlib.full_object_detections()
    for b, lm in zip(boxes[ok], landmarks[ok], strict=True):
        shapes.append(_shape(b, lm))
    net = torch_descriptor_model() if backend == "torch" else None
    if net is not None:
        out[ok] = net(np.stack(dlib.get_face_chips(img, shapes, CHIP_SIZE, CHIP_PADDING)))
        return out
    vecs = dlib_descriptor_model().compute_face_descriptor(img, shapes, 0, CHIP_PADDING)
    out[ok] = np.array([np.asarray(v) for v in vecs], np.float32).reshape(-1, DIM)
    return out


def descriptor_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances (n, m) between descriptors a (n, 128) and b (m, 128)."""
    a = np.asarray(a, np.float64).reshape(-1, DIM)
    b = np.asarray(b, np.float64).reshape(-1, DIM)
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))
