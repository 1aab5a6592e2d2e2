"""Photos → face codes: decode, detect 68 landmarks, fit every face of the batch at once.

    result = skullsearch.encode(["a.jpg", "b.png"], detector="dlib")
    result.faces[0].code        # (228,) in the layout of skullsearch.encoder.code
    result.failures             # images that could not be used, with the reason

Bad images never raise: they are recorded as failures (reason: empty, not-an-image,
truncated, too-large, unreadable, decode-error, no-face) and the batch goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.detectors import Detector, Face, get_detector
from skullsearch.encoder.fitting import (
    FitConfig,
    LandmarkRig,
    camera_rotation,
    code_vertices,
    config_rig,
    dense_rig_for,
    fit_landmarks,
)
from skullsearch.encoder.images import IMAGE_EXTS, DecodedImage, ImageFailure, read_images

NO_FACE = "no-face"
#: quality flag: an identity prior was asked for, but this face has no descriptor in its domain
IDENTITY_PRIOR_OUT = "identity-prior-out-of-domain"


@dataclass
class EncodedFace:
    """One face of one photo.

    box (4,) px; landmarks (68, 2) px; code (228,); residual_px: mean landmark reprojection
    error of the fit; image_size (width, height); focal px: the fit's (NaN before it);
    photo_focal px: the photo's own focal length from its EXIF, NaN where it does not say (what
    the fit uses with :attr:`FitConfig.exif_focal`: :meth:`fitted_with_photo_focal`); quality:
    detector flags;
    descriptor: (128,) dlib person descriptor when asked for (:mod:`.descriptors`), else None;
    tissue_cov: (36, 3, 3) mm² the fit's posterior covariance of the face's neutral soft-tissue
    points when fitted with ``FitConfig(posterior=True)`` (the photometric refinement's when
    refined), else None;
    dense: (K, 2) px a dense detector's points (MediaPipe's mesh: 478), which the fit uses where the
    face model has a dense calibration for the detector, else None (not in :meth:`to_dict`);
    crop: the :class:`~.photometric.FaceCrop` of the photo around the face that a photometric fit
    (``FitConfig(photometric=True)``) reads, else None (not in :meth:`to_dict`).
    """

    image: str
    sha256: str
    face_index: int
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    quality: tuple[str, ...]
    yaw_deg: float
    detector: str
    image_size: tuple[int, int]
    code: np.ndarray = field(default_factory=lambda: np.zeros(code_layout.CODE_SIZE, np.float32))
    residual_px: float = float("nan")
    focal: float = float("nan")
    photo_focal: float = float("nan")
    person: str | None = None
    descriptor: np.ndarray | None = None
    tissue_cov: np.ndarray | None = None
    dense: np.ndarray | None = None
    crop: object | None = None

    def fitted_with_photo_focal(self, config: FitConfig | None = None) -> bool:
        """Whether the fit (with ``config``) takes the photo's own focal length, not the guess: the
        photo gives one and ``FitConfig.exif_focal`` is on (then dlib's jaw line is moved too,
        ``FitConfig.jaw_calibration``)."""
        own = bool(np.isfinite(self.photo_focal) and self.photo_focal > 0)
        return own and (config or FitConfig()).exif_focal

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("dense")
        d.pop("crop")
        for k in ("box", "landmarks", "code", "descriptor", "tissue_cov"):
            d[k] = None if d[k] is None else np.asarray(d[k]).tolist()
        d["quality"] = list(self.quality)
        for k in ("residual_px", "focal", "photo_focal"):  # (strict JSON: not known is null, not NaN)
            d[k] = None if not np.isfinite(d[k]) else float(d[k])
        return d


@dataclass
class EncodeResult:
    """faces: every face found (per image largest first); failures: unusable images."""

    faces: list[EncodedFace]
    failures: list[ImageFailure]

    @property
    def codes(self) -> np.ndarray:
        """(n, 228) float32."""
        if not self.faces:
            return np.zeros((0, code_layout.CODE_SIZE), np.float32)
        return np.stack([f.code for f in self.faces]).astype(np.float32)

    @property
    def descriptors(self) -> np.ndarray:
        """(n, 128) float32 person descriptors; NaN rows for faces without one (not asked for,
        or none could be made)."""
        from skullsearch.encoder.descriptors import DIM

        out = np.full((len(self.faces), DIM), np.nan, np.float32)
        for i, f in enumerate(self.faces):
            if f.descriptor is not None:
                out[i] = f.descriptor
        return out

    def failures_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.failures:
            out[f.reason] = out.get(f.reason, 0) + 1
        return out


def detect_faces(
    images: Iterable[DecodedImage | ImageFailure],
    detector: Detector,
    all_faces: bool = True,
) -> tuple[list[EncodedFace], list[ImageFailure]]:
    """Run a detector over decoded images: faces (not yet fitted) and failures."""
    faces, failures = [], []
    for img in images:
        if isinstance(img, ImageFailure):
            failures.append(img)
            continue
        try:
            found: list[Face] = detector.detect(img)
        except Exception as e:  # a detector crash on one image must not end the batch
            failures.append(ImageFailure(img.path, "decode-error", f"the detector failed: {e}", img.sha256))
            continue
        if not found:
            failures.append(ImageFailure(img.path, NO_FACE, "no face found by the "
                                         f"{detector.name} detector", img.sha256))
            continue
        for i, f in enumerate(found if all_faces else found[:1]):
            faces.append(EncodedFace(
                image=img.path, sha256=img.sha256, face_index=i, box=f.box, score=float(f.score),
                landmarks=f.landmarks, quality=tuple(f.quality), yaw_deg=float(f.yaw_deg),
                detector=f.detector, image_size=tuple(int(s) for s in img.size),
                photo_focal=float("nan") if img.focal_px is None else float(img.focal_px),
                dense=None if f.dense is None else np.asarray(f.dense)[:, :2]))
    return faces, failures


def fit_faces(model, faces: Sequence[EncodedFace], config: FitConfig | None = None,
              rig: LandmarkRig | None = None, batch_size: int = 512, init: np.ndarray | None = None,
              identity_prior=None) -> None:
    """Fit codes for detected faces in place, ``batch_size`` faces per optimization.

    Faces with the same ``person`` (and detector) share their shape when they fall in one batch
    (the batches keep a person's faces together). rig: one for every face (default: each
    detector's, :func:`~skullsearch.encoder.fitting.rig_for` with its calibrated embedding).
    identity_prior: an
    :class:`~skullsearch.encoder.identity_prior.IdentityPrior`: each face's shape prior is
    predicted from its person descriptor (faces without one, or out of its domain, keep the
    plain prior and get the quality flag ``identity-prior-out-of-domain``).
    """
    if not faces:
        return
    cfg = config or FitConfig()
    # one detector per batch (each has its own embedding); batches cut only between persons
    order = sorted(range(len(faces)), key=lambda i: (str(faces[i].detector), faces[i].person is None,
                                                     str(faces[i].person)))
    batches, current, last = [], [], object()
    for i in order:
        p = (faces[i].detector, faces[i].person)
        if current and (p[0] != faces[current[-1]].detector
                        or (len(current) >= batch_size and (p[1] is None or p != last))):
            batches.append(current)
            current = []
        current.append(i)
        last = p
    if current:
        batches.append(current)
    for idx in batches:
        rig_b = rig or config_rig(model, cfg, faces[idx[0]].detector)  # (cached on the model)
        lm = np.stack([faces[i].landmarks for i in idx])
        sizes = np.array([faces[i].image_size for i in idx], np.float64)
        person = np.array([faces[i].person if faces[i].person is not None else f"\0{i}" for i in idx])
        prior = None
        if identity_prior is not None:
            descs = np.stack([faces[i].descriptor if faces[i].descriptor is not None
                              else np.full(identity_prior.desc_mean.shape, np.nan) for i in idx])
            mean, std, applied = identity_prior.shape_prior(descs, np.asarray(model.shape_std, np.float64))
            k = min(mean.shape[1], rig_b.n_shape)
            prior = (mean[:, :k], std[:, :k])
            for j, i in enumerate(idx):
                if not applied[j]:
                    faces[i].quality = (*faces[i].quality, IDENTITY_PRIOR_OUT)
        dense, dense_rig = _dense_inputs(model, [faces[i] for i in idx], cfg)
        # the photos' EXIF focal lengths; NaN where not known, which the fit takes as the guess
        focal = np.array([faces[i].photo_focal for i in idx], np.float64)
        res = fit_landmarks(model, lm, sizes, person=person, config=cfg, rig=rig_b,
                            init=None if init is None else init[idx], shape_prior=prior,
                            dense=dense, dense_rig=dense_rig,
                            focal=focal if cfg.exif_focal else None, detector=faces[idx[0]].detector)
        tissue_cov = None if res.shape_cov is None else model.soft_tissue_covariance(res.shape_cov)
        for j, i in enumerate(idx):
            faces[i].code = res.codes[j]
            faces[i].residual_px = float(res.residual_px[j])
            faces[i].focal = float(res.focal[j])
            if tissue_cov is not None:
                faces[i].tissue_cov = tissue_cov[j]
    if cfg.photometric:
        from skullsearch.encoder.photometric import refine_faces

        refine_faces(model, faces, None, cfg)  # the faces with a crop


def _dense_inputs(model, faces: Sequence[EncodedFace], cfg: FitConfig):
    """(dense points (B, K, 2) px, their rig) for one batch of one detector's faces, or
    (None, None): the detector gives none, the model has no dense calibration for it
    (:func:`~skullsearch.encoder.fitting.dense_rig_for`), a face lacks them, or w_dense is 0."""
    if cfg.w_dense <= 0 or cfg.method != "lm" or any(f.dense is None for f in faces):
        return None, None
    rig, index = dense_rig_for(model, faces[0].detector, cfg.n_shape, cfg.n_expression,
                               device=cfg.device or "cpu", dtype=cfg.dtype)
    if rig is None or any(len(f.dense) <= index.max() for f in faces):
        return None, None
    return np.stack([f.dense[index] for f in faces]), rig


def encode(
    images: Iterable[str | os.PathLike | bytes | DecodedImage],
    *,
    model=None,
    detector: str | Detector = "dlib",
    config: FitConfig | None = None,
    person: Sequence[str | None] | None = None,
    all_faces: bool = True,
    workers: int = 0,
    light: bool = False,
    cnn: str | os.PathLike | None = None,
    descriptors: bool = False,
    identity_prior=None,
    uncertainty: bool = False,
    photometric=False,
) -> EncodeResult:
    """Encode photos: every face found gets a 228-float code.

    images: paths, bytes or decoded images; model: a FaceModel (default: ``$SKULLSEARCH_FACE_MODEL``
    or the open model); detector: "dlib" (default, offline), "fan", "pts" or a Detector;
    person: one id per image — the largest face of images with the same id shares its shape
    (paper Eq. 2); workers: decoding processes; light: also estimate the 27 SH lighting
    coefficients from the photo's colours (slower); cnn: a trained CNN encoder checkpoint whose
    predictions seed the fit; descriptors: also compute each face's person descriptor (dlib's
    128-d face recognition vector, :mod:`.descriptors`; ~75 ms per face on one core);
    identity_prior: ``True`` (the one packaged for the model), a file, or an
    :class:`~skullsearch.encoder.identity_prior.IdentityPrior`: predict each face's shape prior
    from its descriptor (:mod:`.identity_prior`; computes the descriptors); uncertainty: also
    each face's fit uncertainty, ``EncodedFace.tissue_cov`` (``FitConfig(posterior=True)``; of
    the final fit: the refined one's with photometric); photometric: ``True`` or a
    :class:`~skullsearch.encoder.photometric.PhotometricConfig`: refine each fit with the photo's
    shading (:mod:`.photometric`; about 1 s per face on one core).
    """
    from skullsearch.encoder.face_model import FaceModel

    model = model or FaceModel.from_env()
    det = get_detector(detector) if isinstance(detector, str) else detector
    items = list(images)
    raw = [i for i in items if not isinstance(i, DecodedImage)]
    decoded_raw = iter(read_images(raw, workers=workers) if raw else [])
    decoded = [i if isinstance(i, DecodedImage) else next(decoded_raw) for i in items]
    faces, failures = detect_faces(decoded, det, all_faces=all_faces)
    if person is not None:
        by_path = {}
        for img, p in zip(decoded, person, strict=True):
            by_path[img.path] = p
        for f in faces:
            if f.face_index == 0:
                f.person = by_path.get(f.image)
    init = None
    if cnn is not None and faces:
        from skullsearch.encoder.cnn import encode_detected, load_checkpoint

        net, _ = load_checkpoint(cnn, model=model)
        pixels = {img.path: img.pixels for img in decoded if isinstance(img, DecodedImage)}
        init = encode_detected(net, faces, pixels)
    prior = None
    if identity_prior is not None and identity_prior is not False:
        from skullsearch.encoder import identity_prior as ip

        prior = identity_prior if isinstance(identity_prior, ip.IdentityPrior) else \
            ip.for_model(model, None if identity_prior is True else identity_prior)
        descriptors = True
    if descriptors and faces:
        describe_faces(faces, {img.path: img.pixels for img in decoded if isinstance(img, DecodedImage)})
    if uncertainty:
        config = replace(config or FitConfig(), posterior=True)
    fit_faces(model, faces, config, init=init, identity_prior=prior)
    wants = photometric is not None and photometric is not False
    # (fit_faces refines only faces that carry a crop; these come with their photos)
    if (wants or (config is not None and config.photometric)) and faces:
        from skullsearch.encoder.photometric import PhotometricConfig, refine_faces

        refine_faces(model, faces, {img.path: img.pixels for img in decoded if isinstance(img, DecodedImage)},
                     config, photometric if isinstance(photometric, PhotometricConfig) else None)
    if light:
        pixels = {img.path: img.pixels for img in decoded if isinstance(img, DecodedImage)}
        for f in faces:
            f.code[code_layout.SLICES["light"]] = estimate_light(model, f.code, pixels[f.image], f.focal)
    return EncodeResult(faces, failures)


def describe_faces(faces: Sequence[EncodedFace], pixels: dict[str, np.ndarray]) -> None:
    """Set each face's person descriptor in place (one batched pass per photo); pixels: the
    decoded (H, W, 3) uint8 photo of each face's ``image``."""
    from skullsearch.encoder.descriptors import face_descriptors

    by_image: dict[str, list[EncodedFace]] = {}
    for f in faces:
        by_image.setdefault(f.image, []).append(f)
    for image, group in by_image.items():
        d = face_descriptors(pixels[image], np.stack([f.box for f in group]),
                             np.stack([f.landmarks for f in group]))
        for f, v in zip(group, d, strict=True):
            f.descriptor = None if np.isnan(v).any() else v


# ---------------------------------------------------------------- lighting
def sh_basis(normals: np.ndarray) -> np.ndarray:
    """3-band real spherical harmonics (unnormalized constants folded in): (n, 3) → (n, 9)."""
    x, y, z = normals.T
    return np.stack([np.ones_like(x), y, z, x, x * y, y * z, 3 * z**2 - 1, x * z, x**2 - y**2], 1)


def estimate_light(model, code: np.ndarray, pixels: np.ndarray, focal: float) -> np.ndarray:
    """27 SH coefficients (9 per RGB channel, albedo folded in) from the colours of the visible
    face vertices: least squares, colours in [0, 1]. code (228,); pixels (H, W, 3) uint8."""
    from skullsearch.encoder.face_model import face_region
    from skullsearch.encoder.render import Camera, rasterize, vertex_normals

    with torch.no_grad():
        verts = code_vertices(model, code[None])[0].double().numpy()
        p = code_layout.split(torch.as_tensor(code[None], dtype=torch.float64))
        rot = camera_rotation(p.cam_rot)[0].numpy()
        trans = p.cam_trans[0].numpy()
    h, w = pixels.shape[:2]
    cam = Camera(rot, trans, focal, w, h)
    screen = cam.project(verts)
    face_id, _, depth = rasterize(screen, model.faces, w, h)
    col, row = np.round(screen[:, 0] - 0.5).astype(int), np.round(screen[:, 1] - 0.5).astype(int)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    visible = np.zeros(len(verts), bool)
    visible[inside] = screen[inside, 2] <= depth[row[inside], col[inside]] + 2.0
    normals = vertex_normals(verts, model.faces) @ rot.T  # camera frame
    towards = normals[:, 2] < 0  # facing the camera (OpenCV: z away from it)
    use = visible & towards & face_region(model)
    if use.sum() < 30:
        return np.zeros(27, np.float32)
    basis = sh_basis(normals[use] * np.array([1.0, -1.0, -1.0]))  # back to y up, z to viewer
    colours = pixels[row[use], col[use]].astype(np.float64) / 255.0
    coef, *_ = np.linalg.lstsq(basis, colours, rcond=None)  # (9, 3)
    return coef.T.reshape(-1).astype(np.float32)


def export_faces(model, faces: Sequence[EncodedFace], folder: str | os.PathLike) -> list[Path]:
    """Write each face (its identity, expression and jaw; camera not applied) as a PLY with its
    landmarks marked: ``<photo stem>_face<k>.ply``."""
    from skullsearch.encoder.export import export_face

    folder = Path(folder)
    written = []
    for f in faces:
        p = code_layout.split(torch.as_tensor(f.code[None]))
        path = folder / f"{Path(f.image).stem}_face{f.face_index}.ply"
        export_face(model, path, shape=p.shape[:, : model.n_shape],
                    expression=p.expression[:, : model.n_expression],
                    pose=p.pose[:, : 3 * model.n_joints])
        written.append(path)
    return written


def image_paths(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively) into image files; files are kept as given, in order."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTS))
        else:
            out.append(p)
    return out


def train_encoder_on_photos(
    photos: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    person: Sequence[str | None] | None = None,
    **kw,
):
    """Train the CNN encoder self-supervised on photos (paper Eq. 1; Eq. 2 with ``person``):
    detect faces with dlib, crop them, train, and write the checkpoint ``out``. Other keywords
    (model, epochs, batch_size, size, device, seed, log) as :func:`train_encoder_on_faces`.

    Returns (net, history). Photos without a usable face are skipped (as in :func:`encode`).
    """
    decoded = read_images(list(photos))
    faces, _ = detect_faces(decoded, get_detector("dlib"), all_faces=False)
    if person is not None:
        by_path = {str(p): q for p, q in zip(photos, person, strict=True)}
        for f in faces:
            f.person = by_path.get(f.image)
    pixels = {d.path: d.pixels for d in decoded if isinstance(d, DecodedImage)}
    return train_encoder_on_faces(faces, pixels, out, use_person=person is not None, **kw)


def train_encoder_on_faces(
    faces: Sequence[EncodedFace],
    pixels: dict,
    out: str | os.PathLike,
    *,
    model=None,
    use_person: bool = False,
    epochs: int = 20,
    batch_size: int = 32,
    size: int = 128,
    device: str = "cpu",
    seed: int = 0,
    log=None,
):
    """Train the CNN encoder on detected faces (box, landmarks, image size; ``person`` used for
    stage 2 when ``use_person``); pixels: photo path → (H, W, 3) uint8. Writes ``out``."""
    from skullsearch.encoder.cnn import crop_faces, save_checkpoint, train_encoder
    from skullsearch.encoder.face_model import FaceModel
    from skullsearch.errors import SkullsearchError

    model = model or FaceModel.from_env()
    faces = [f for f in faces if f.image in pixels]
    if len(faces) < 2:
        raise SkullsearchError(f"found {len(faces)} usable face(s): training needs at least 2")
    boxes = np.stack([f.box for f in faces])
    crops, transforms = crop_faces([pixels[f.image] for f in faces], boxes, size=size)
    # person names → integer ids (photos without a person each get their own)
    ids = (np.unique([str(f.person) if f.person is not None else f"\0{i}" for i, f in enumerate(faces)],
                     return_inverse=True)[1] if use_person else None)
    net, history = train_encoder(
        crops, landmarks_px=np.stack([f.landmarks for f in faces]), transforms=transforms,
        image_sizes=np.array([f.image_size for f in faces], np.float64), person=ids, model=model,
        epochs=epochs, batch_size=batch_size, device=device, seed=seed, log=log)
    save_checkpoint(out, net, meta={"faces": len(faces), "epochs": epochs, "seed": seed})
    return net, history
