"""68-point face landmark detectors: dlib (offline, default), FAN (optional), ``.pts`` sidecars.

Every detector returns :class:`Face` records: a box, a score, the 68 iBUG landmarks in pixels
(0-based, x right, y down) and quality flags (:func:`quality_flags`).

dlib's frontal face detector ships inside dlib; the 68-point shape predictor comes with the
``face_recognition_models`` sdist (no download). That package imports ``pkg_resources`` on
import, so its files are found through its import spec instead of importing it.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skullsearch.encoder.images import DecodedImage
from skullsearch.errors import DependencyError, LandmarkError, SkullsearchError

LANDMARKS_OUTSIDE = "landmarks-outside"
TINY = "tiny"
EXTREME_YAW = "extreme-yaw"
LOW_SCORE = "low-score"

# Nose-tip depth in front of the outer eye corners, as a fraction of the outer-corner distance
# (open default face model: 34 mm / 88 mm). Turns the nose offset into a yaw angle.
_NOSE_DEPTH_RATIO = 0.386


# ---------------------------------------------------------------- dlib models
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


def _parts(shape) -> np.ndarray:
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def dlib_landmarks68(image: np.ndarray, upsample: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """All faces in an RGB/gray uint8 image (H, W[, 3]), largest first.

    Returns a list of (box (4,) x0, y0, x1, y1 pixels, landmarks (68, 2) pixels, iBUG order).
    """
    detector, predictor = dlib_models()
    image = np.ascontiguousarray(image)
    boxes = detector(image, upsample)
    out = []
    for b in boxes:
        pts = _parts(predictor(image, b))
        out.append((np.array([b.left(), b.top(), b.right(), b.bottom()], np.float64), pts))
    out.sort(key=lambda r: -(r[0][2] - r[0][0]) * (r[0][3] - r[0][1]))
    return out


# ---------------------------------------------------------------- faces and quality
@dataclass
class Face:
    """One detected face. box: (4,) x0, y0, x1, y1 px; landmarks: (68, 2) px, iBUG order, 0-based
    (x right, y down); quality: flags among ``landmarks-outside``, ``tiny``, ``extreme-yaw``;
    yaw_deg: estimated from the landmarks, positive when the head turns to the subject's left
    (nose towards the image's right), as in :func:`skullsearch.encoder.render.face_camera`;
    dense: (478, 3) the mesh detector's points (:mod:`skullsearch.encoder.mesh`), else None."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    quality: tuple[str, ...] = ()
    yaw_deg: float = 0.0
    detector: str = ""
    dense: np.ndarray | None = None

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


def estimate_yaw(landmarks: np.ndarray) -> float:
    """Yaw (degrees) of a face from its 68 2D landmarks (68, 2) px.

    The nose tip (30) sits in front of the outer eye corners (36, 45): turning the head moves it
    sideways along the eye line by depth·sin(yaw) while the corners' distance shrinks by cos(yaw),
    so yaw = atan(offset / (ratio · corner distance)). Roll-invariant; accurate to a few degrees
    up to ~40° on renders, rougher beyond (the far eye corner is then hidden).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    axis = lm[45] - lm[36]
    width = float(np.hypot(*axis))
    if width < 1e-9:
        return 90.0
    offset = float(np.dot(lm[30] - (lm[36] + lm[45]) / 2, axis / width))
    return float(np.degrees(np.arctan2(offset, _NOSE_DEPTH_RATIO * width)))


def quality_flags(
    landmarks: np.ndarray,
    image_size: tuple[int, int],
    *,
    min_iod_px: float = 20.0,
    max_yaw_deg: float = 45.0,
) -> tuple[tuple[str, ...], float]:
    """(flags, yaw_deg) for 68 landmarks (68, 2) px in an image of size (width, height).

    ``landmarks-outside``: a landmark lies outside [0, w-1] × [0, h-1]; ``tiny``: the
    inter-ocular distance (outer eye corners 36–45, the 300-W normalisation) is below
    ``min_iod_px``; ``extreme-yaw``: |:func:`estimate_yaw`| above ``max_yaw_deg``.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise LandmarkError(f"expected 68 landmarks (68, 2), got an array of shape {lm.shape}")
    w, h = image_size
    flags = []
    if not np.isfinite(lm).all() or (lm < 0).any() or (lm[:, 0] > w - 1).any() or (lm[:, 1] > h - 1).any():
        flags.append(LANDMARKS_OUTSIDE)
    if float(np.hypot(*(lm[45] - lm[36]))) < min_iod_px:
        flags.append(TINY)
    yaw = estimate_yaw(lm)
    if abs(yaw) > max_yaw_deg:
        flags.append(EXTREME_YAW)
    return tuple(flags), yaw


# ---------------------------------------------------------------- detectors
@dataclass
class Detector(ABC):
    """A 68-point landmark detector. ``detect`` returns every face in an image, largest first."""

    min_iod_px: float = field(default=20.0, kw_only=True)
    max_yaw_deg: float = field(default=45.0, kw_only=True)
    name = "base"

    @abstractmethod
    def detect(self, image: DecodedImage) -> list[Face]:
        """All faces in one decoded image, largest (box area) first."""

    def detect_batch(self, images: list[DecodedImage]) -> list[list[Face]]:
        """:meth:`detect` over a list of images (one list of faces per image)."""
        return [self.detect(im) for im in images]

    def _faces(self, image: DecodedImage, found) -> list[Face]:
        """(box (4,), score, landmarks (68, 2)[, dense points]) tuples → sorted :class:`Face` list."""
        faces = []
        for box, score, lm, *dense in found:
            lm = np.asarray(lm, dtype=np.float64)
            flags, yaw = quality_flags(lm, image.size, min_iod_px=self.min_iod_px,
                                       max_yaw_deg=self.max_yaw_deg)
            faces.append(Face(np.asarray(box, dtype=np.float64), float(score), lm, flags, yaw,
                              self.name, dense[0] if dense else None))
        faces.sort(key=lambda f: -f.area)
        return faces


@dataclass
class DlibDetector(Detector):
    """dlib's HOG frontal face detector + the 68-point shape predictor (offline).

    upsample: times the image is doubled before detection (finds faces down to ~40 px at 1);
    min_score: detector score threshold (dlib's default is 0; ~0.5 drops most false positives).
    """

    upsample: int = 1
    min_score: float = 0.0
    low_score: float = 0.5  # below this a face is kept but flagged "low-score"
    name = "dlib"

    def detect(self, image: DecodedImage) -> list[Face]:
        detector, predictor = dlib_models()
        img = np.ascontiguousarray(image.pixels)
        rects, scores, _ = detector.run(img, self.upsample, self.min_score)
        found = []
        for r, s in zip(rects, scores, strict=True):
            if s < self.min_score:
                continue
            box = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64)
            found.append((box, s, _parts(predictor(img, r))))
        faces = self._faces(image, found)
        for f in faces:
            if f.score < self.low_score:
                f.quality = (*f.quality, LOW_SCORE)
        return faces


def _torch_hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _fan_weight_names() -> tuple[str, str]:
    """File names face_alignment would download: (2D FAN network, s3fd face detector)."""
    import torch
    from face_alignment import api
    from face_alignment.detection.sfd import sfd_detector

    version = torch.__version__.split("+")[0]
    version = version.rsplit(".", 2 if "dev" in version else 1)[0]
    urls = getattr(api, "models_urls", {}).get(version, api.default_model_urls)
    return urls["2DFAN-4"].rsplit("/", 1)[-1], sfd_detector.models_urls["s3fd"].rsplit("/", 1)[-1]


@dataclass
class FanDetector(Detector):
    """face-alignment's 2D-FAN with its s3fd face detector (``pip install skullsearch[fan]``).

    Never downloads: the weights must already be in torch hub's ``checkpoints`` folder (where
    face-alignment caches them) or in ``weights_dir``; otherwise :class:`DependencyError`.
    """

    device: str | None = None
    weights_dir: str | Path | None = None
    name = "fan"

    def __post_init__(self):
        if importlib.util.find_spec("face_alignment") is None:
            raise DependencyError(
                "the FAN detector needs the face-alignment package (pip install "
                "'skullsearch[fan]') and its weights; offline, use --detector dlib instead"
            )
        import torch
        import torch.hub
        from face_alignment import FaceAlignment, LandmarksType

        fan_name, sfd_name = _fan_weight_names()
        folder = Path(self.weights_dir) if self.weights_dir else _torch_hub_checkpoints()
        missing = [n for n in (fan_name, sfd_name) if not (folder / n).is_file()]
        if missing:
            raise DependencyError(
                f"the FAN detector's weights are not on this machine: put {' and '.join(missing)} "
                f"in {folder} (face-alignment's download cache), or use --detector dlib, which "
                "works offline"
            )
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        previous = torch.hub.get_dir()
        with tempfile.TemporaryDirectory() as hub:
            if self.weights_dir:  # face-alignment reads <hub dir>/checkpoints: point it at ours
                (Path(hub) / "checkpoints").symlink_to(folder.resolve(), target_is_directory=True)
                torch.hub.set_dir(hub)
            try:
                self._fa = FaceAlignment(
                    LandmarksType.TWO_D, device=device, flip_input=False, face_detector="sfd",
                    face_detector_kwargs={"path_to_detector": str(folder / sfd_name)},
                )
            finally:
                torch.hub.set_dir(previous)

    def detect(self, image: DecodedImage) -> list[Face]:
        lms, _, boxes = self._fa.get_landmarks_from_image(
            image.pixels, return_bboxes=True, return_landmark_score=True)
        if lms is None:
            return []
        found = [(np.asarray(b[:4]), float(b[4]) if len(b) > 4 else 1.0, np.asarray(lm)[:, :2])
                 for lm, b in zip(lms, boxes, strict=True)]
        return self._faces(image, found)


def read_pts(path: str | Path) -> np.ndarray:
    """Landmarks (n, 2) float64 from an iBUG / 300-W ``.pts`` file, converted to 0-based pixels.

    Format: ``version: 1`` / ``n_points: 68`` / ``{`` / one ``x y`` per line / ``}``. Blank lines,
    ``#`` or ``//`` comments, CRLF and a BOM are accepted. 300-W coordinates are 1-based (the
    top-left pixel's centre is (1, 1)); 1 is subtracted.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        raise LandmarkError(f"cannot read landmark file {path}: {e.strerror or e}") from e

    def bad(lineno: int, what: str) -> LandmarkError:
        return LandmarkError(f"{path}, line {lineno}: {what}; a .pts file is 'version: 1', "
                             "'n_points: N', '{', N lines 'x y', '}'")

    n_points, points, state, lineno = None, [], "header", 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"#|//", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        if state == "header":
            if line == "{":
                state = "points"
            elif (m := re.fullmatch(r"(\w+)\s*:\s*(\S+)", line)) is None:
                raise bad(lineno, f"expected 'key: value' or '{{', found {raw.strip()!r}")
            elif m[1].lower() == "n_points":
                if not m[2].isdigit():
                    raise bad(lineno, f"n_points must be a whole number, not {m[2]!r}")
                n_points = int(m[2])
        elif state == "points":
            if line == "}":
                state = "done"
                continue
            parts = line.split()
            try:
                xy = [float(v) for v in parts]
            except ValueError:
                xy = []
            if len(xy) != 2 or not np.isfinite(xy).all():
                raise bad(lineno, f"expected two numbers 'x y', found {raw.strip()!r}")
            points.append(xy)
        else:
            raise bad(lineno, f"unexpected text after the closing '}}': {raw.strip()!r}")
    if state != "done":
        raise bad(lineno, "the point list '{ ... }' is missing or not closed")
    if n_points is not None and n_points != len(points):
        raise bad(lineno, f"n_points says {n_points} but the file lists {len(points)} points")
    return np.asarray(points, dtype=np.float64).reshape(-1, 2) - 1.0


def pts_sidecars(image_path: str | Path) -> list[Path]:
    """The ``.pts`` files of an image: ``photo.pts``, then ``photo_1.pts``, ``photo_2.pts``..."""
    p = Path(image_path)
    single = p.with_suffix(".pts")
    numbered = []
    for q in p.parent.glob(f"{glob_escape(p.stem)}_*.pts"):
        suffix = q.stem[len(p.stem) + 1:]
        if suffix.isdigit():
            numbered.append((int(suffix), q))
    return ([single] if single.is_file() else []) + [q for _, q in sorted(numbered)]


def glob_escape(s: str) -> str:
    """``s`` with glob metacharacters escaped (for names like ``img[1].jpg``)."""
    return re.sub(r"([*?\[])", r"[\1]", s)


@dataclass
class PtsDetector(Detector):
    """Landmarks from iBUG/300-W ``.pts`` sidecar files next to the image (no detection).

    Box: the landmarks' bounding box; score 1.0. An image without a sidecar has no faces.
    """

    name = "pts"

    def detect(self, image: DecodedImage) -> list[Face]:
        found = []
        for f in pts_sidecars(image.path):
            lm = read_pts(f)
            if lm.shape != (68, 2):
                raise LandmarkError(f"{f} has {len(lm)} points; the pts detector needs the 68-point "
                                    "iBUG layout")
            found.append((np.concatenate([lm.min(0), lm.max(0)]), 1.0, lm))
        return self._faces(image, found)


DETECTORS: dict[str, type[Detector]] = {"dlib": DlibDetector, "fan": FanDetector, "pts": PtsDetector}
#: Detectors in their own modules (imported when asked for): name → (module, class name).
LAZY_DETECTORS = {"mesh": ("skullsearch.encoder.mesh", "MeshDetector")}


def detector_names() -> tuple[str, ...]:
    return (*DETECTORS, *LAZY_DETECTORS)


def get_detector(name: str, **kw) -> Detector:
    """A detector by name: ``dlib`` (default, offline), ``mesh`` (MediaPipe, optional install),
    ``fan`` or ``pts``; ``kw`` go to its class."""
    key = name.lower()
    if key in LAZY_DETECTORS:
        import importlib

        module, cls_name = LAZY_DETECTORS[key]
        return getattr(importlib.import_module(module), cls_name)(**kw)
    try:
        cls = DETECTORS[key]
    except KeyError:
        raise SkullsearchError(
            f"unknown detector {name!r}; choose one of: {', '.join(detector_names())}"
        ) from None
    return cls(**kw)
