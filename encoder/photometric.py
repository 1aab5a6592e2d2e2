"""Photometric refinement: the photo's shading as a dense cue to the face's shape.

68 landmarks say little about a face's depths (the nose's projection, the cheeks' curvature);
the shading of the skin says much (shape from shading; Blanz & Vetter's analysis by synthesis).
After the landmark fit, :func:`refine_photometric` moves each face's shape, expression, jaw and
camera to minimize

    E = E_landmarks (the fit's: reprojection + Delaunay edges + prior; :class:`FitConfig`)
        + w_photo · mean_v ρ(‖I(π(v)) − L · Y(n_v)‖)

over the visible vertices v of the face region (without the skin of the brows, lips and lash
lines: ``PhotometricConfig.skip_features``): I the photo's light (RGB in [0, 1], its pixel values
decoded as linear light, ``PhotometricConfig.photo_gamma``, and lightly blurred),
π the camera, n_v the vertex normal, Y the 9 real spherical harmonics of n (order 2), L (3, 9)
the light × a uniform albedo, solved in closed form at each step (least squares over the
visible vertices; the gradient of E at the optimal L is E's with L held: it is detached), ρ a
Cauchy loss (scale ``PhotometricConfig.cauchy``: eyebrows, lips, hair, specular spots and closed
eyes are outliers to a uniform albedo). Visibility (z-buffer of the current face and normals
turned towards the camera) is recomputed every ``visibility_every`` steps. Adam with a cosine
schedule; faces of one person share their shape (their photometric terms add up).

The model has no albedo: a face is assumed one colour under one smooth light. That holds for
renders and roughly for skin; a photo's texture (brows, lips, make-up, beard) and cast shadows
break it, and the robust loss only bounds their pull (``PhotometricConfig.cast_shadows`` leaves
out the vertices in a shadow the face casts on itself, under the light's direction read off the
photo; ``skip_features`` the skin of the brows, lips and lash lines). Measured in ``benchmarks/identity.py
--photometric`` and ``benchmarks/encoder_images.py --photometric`` (renders of the model's faces:
synthetic), ``benchmarks/ct_encoder.py`` (renders of a real CT head's skin) and
``benchmarks/persons.py --photos DIR --photometric`` (real photos, identity only).

With ``FitConfig.posterior`` each refined face gets its own shape posterior (the landmark fit's
Laplace approximation plus the shading's information, discounted:
``PhotometricConfig.posterior_discount``), which replaces the landmark fit's.

The refinement reads each face through a :class:`FaceCrop` of its photo (≤ ``CROP_PX`` px), so
that a batch's memory does not grow with the photos' size and an ingest's workers can hand the
crop to the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.face_data import SurfacePoints
from skullsearch.encoder.fitting import (
    FitConfig,
    FitResult,
    LandmarkRig,
    _AdamFit,
    _initial_state,
    _observations,
    camera_rotation,
    detector_jaw_bias,
    detector_point_sigma,
    person_shape_covariance,
    project,
    rig_for,
)
from skullsearch.encoder.render import FEATURE_PARTS

#: The longer side (px) of the face crop an ingest keeps for the refinement (:func:`face_crop`).
CROP_PX = 512
#: The visibility z-buffer's size (px, longer side): a vertex is visible when within 1 mm of it.
VISIBILITY_PX = 160
#: The shadow map's size (px) of ``PhotometricConfig.cast_shadows`` (over the head's extent, ~1 mm).
SHADOW_PX = 256
#: the 68 iBUG points of the features (brows 17–26, eyes 36–47, mouth 48–67):
#: ``PhotometricConfig.feature_landmark_weight`` weighs them
FEATURE_LANDMARKS = np.r_[17:27, 36:48, 48:68]


@dataclass(frozen=True)
class PhotometricConfig:
    """Settings of :func:`refine_photometric`. weight: w_photo (the landmark term's scale: a
    face's mean squared landmark error in inter-ocular units is ~0.002); steps, lr: Adam;
    cauchy: the robust loss's scale (colour units); blur: Gaussian σ of the photo as a fraction of
    the face's inter-ocular distance (1.5 px at 110 px); vertices: the face region's vertices used
    (evenly subsampled) per face. Set on 12 renders of faces from the prior (seed 5, not the
    benchmarks'; identity error as a ratio to the mean face's, the landmark fit's 0.98x): weight 3 /
    10 / 30 at 100 steps 0.81 / 0.75 / 0.73x; weight 10 at 200 steps 0.66x, at 400 0.63x (twice the
    time); blur 0.007 / 0.014 / 0.026: 0.654 / 0.656 / 0.708x. Then on 23 renders of the same
    seed, through the crops (landmark fit 1.03x): lr 0.01 / 0.015 / 0.02 / 0.03 / 0.04 at 200
    steps 0.708 / 0.678 / 0.664 / 0.656 / 0.649x (the landmark residual rising at 0.04), lr 0.01 at
    300 steps 0.674x, 400 0.659x (this version, textured renders of seed 7 encoded with shadows,
    ``photometric_settings.py``: 200 steps 0.657x, 400 0.653x, 800 0.654x, 100 0.693x — converged
    at 200; every face-region vertex is already read, 4,554 outside the features, so ``vertices``
    above that changes nothing, 1,200 gives 0.669x at 0.72x the time); the visibility every 15 or
    25 steps: the same (0.708 / 0.707x);
    a coarse-to-fine blur (twice or 3.5 times as blurred for the first half) 0.675 / 0.695x (0.664x
    without). Weight 20 / 40 gain on these renders (0.615 / 0.594x) but not on the 7 real photos
    (shape-code pair AUC 0.82 / 0.76 against 0.92 at weight 10; landmark residual 6.2 → 6.7 → 7.8
    px): renders' shading is the model's own, a photo's is not; weight 10 stays. landmark_cauchy:
    0 (least squares) or the scale c (inter-ocular distances) of a Cauchy loss on each landmark's
    and edge's error in the refinement, so that the shading can overrule points that disagree
    with it. Off: on renders of seed 7 (``benchmarks/photometric_settings.py``) c = 0.03 / 0.06 /
    0.1 take 0.650x to 0.590 / 0.597 / 0.602x, on the 300 persons of ``identity.py`` 0.688x to
    0.615x (c = 0.06), but on the real CT head's renders 0.914x to 0.968 / 0.955x, and on the 7
    real photos the landmark residual rises from 6.2 to 11.9 / 9.5 / 6.9 px. A lighter shape prior
    in the refinement (half, a quarter) was worse on both (0.660 / 0.673x; not kept).
    skip_features: leave the skin of the brows, lips and upper lids' lash lines (each widened by
    3 mm, placed by the model's source annotation; :func:`~skullsearch.encoder.render.feature_mask`)
    out of the shading term — a real face's features have their own colour, not the skin's
    (skip_parts: which of them; all by default: one part alone gains little on renders, 0.649x
    each, and on the untextured CT head the lids most, 0.863x, brows 0.921x, lips 0.900x — and
    its eyes are closed). On by
    default since it gained on every set that has a truth: renders of seed 7 0.650 → 0.638x
    untextured and 0.739 → 0.640x textured (``--texture``), the real CT head's geometry 0.914 →
    0.807x untextured and 0.793x textured (the features painted on it); on the 7 real photos it
    raises the landmark residual (6.2 → 7.2 px). (Its first mask, placed by the dlib-calibrated
    embedding, ~6 mm under the brows: 0.644x, 0.853x.) Off: the refinement of earlier versions.
    feature_albedo: read the features' skin after all, each feature (brows, lips, lash lines)
    with its own colour (:func:`_feature_profiles`; the light is solved on the skin alone; each
    face's brows of 9 widths and heights, the one its photo shows best), so that a photo's dark
    brows and red lips say where the face's brows and lips are rather than being outliers to the
    skin's colour (it overrides skip_features). Off: it keeps the real photos' features on their
    landmarks (the 7 real photos' residual 6.0 px, skip_features 7.2, as skin 6.2; the brows
    0.039 inter-ocular distances from dlib's, skip_features 0.069) but loses on every set with a
    truth: renders of seed 7 0.655x textured, 0.647x untextured (skip_features 0.640 / 0.638x),
    the real CT head's geometry 0.852x textured, 0.882x untextured (0.793 / 0.807x). On the
    untextured CT, whose features are the skin's colour, it lies between skip_features and the
    features read as skin (0.914x): the features' skin misleads the refinement as shape, not
    only as colour — with dlib's points: fitted to their exact points instead
    (``photometric_settings.py --exact-landmarks``), the same renders give 0.580x with it,
    0.591x (textured) / 0.589x (untextured) with skip_features, 0.709x / 0.588x as skin. A
    detector whose points are right at the brows, lids and lips would want it on.
    feature_landmark_weight: the weight of the features' landmarks (brows, eyes, mouth:
    :data:`FEATURE_LANDMARKS`, 42 of the 68, and the edges that touch them) in the
    refinement's landmark term, so that the shading places the features where dlib errs most;
    1 (off): as the landmark fit. At 0.3 it gains on nearly every set with a truth — renders of
    seed 7 0.640 → 0.632x textured, 0.638 → 0.613x untextured (0.5: 0.617x), the real CT head's
    geometry 0.793 → 0.764x textured, 0.807 → 0.799x untextured (views sharing one shape 0.771 →
    0.739x, and 0.774 → 0.781x, the one loss), the 300 persons of ``identity.py`` 0.672 → 0.648x
    (three photos 0.614 → 0.597x); with feature_albedo it changes little (CT 0.852 /
    0.882 → 0.852 / 0.870x) — but every one of those sets is shaded by the refinement's own model
    (Lambertian, one albedo). On the 7 real photos, whose shading it explains far less well (final
    photometric energy 0.059 against 0.018 on textured renders), the faces leave dlib's points
    further than on renders (where those points are known to err): eyes 0.058 → 0.079
    inter-ocular distances (textured renders 0.032 → 0.037), outer lips 0.054 → 0.063 (0.037 →
    0.047). As landmark_cauchy: trusting the shading more wins where the shading is the model's
    own; off until a set of real photos with a truth says otherwise. Exact points at one part at
    a time (``photometric_settings.py --exact-landmarks PARTS``, textured renders of seed 7:
    0.640x with dlib's) say that dlib's error is spread over the face: the jaw line 0.622x, the
    lips 0.627x, the brows 0.632x, the eyes 0.635x, the nose 0.636x, the brows, eyes and lips
    together 0.611x, all 0.591x.
    landmark_weights: with ``FitConfig.landmark_weights`` on, the landmark term weighs each
    point by its detector's measured reliability as the landmark fit does (on, the default);
    off: the points count alike, as when the photometric weight was set. Both weighed gain on
    renders (``identity.py --persons 100 --photometric --landmark-weights``: 0.708 -> 0.643x,
    the jaw line and brows left more to the shading) and lose on the real photos (same-person
    AUC 0.886 -> 0.873) and the real CT head (0.791 -> 0.820x rigid); the fit's weights alone
    (this off) end where no weights do (0.708x, real photos 0.892, CT 0.786x).
    photo_gamma: the photo's pixel values are read as linear light, value^photo_gamma: a photo
    (JPEG, PNG) stores its light sRGB-encoded (about ^(1/2.2)), and the Lambertian shading the
    refinement models is linear in the light. 2.2 by default; 1: the pixel values as they are
    (the refinement of earlier versions). On renders of seed 7 (``photometric_settings.py
    --camera-gamma``; synthetic) matching the encoding gains 0.03–0.04 of the mean face's error
    either way: renders encoded as a camera's (gamma 2.2) 0.659 → 0.627x textured, 0.688 → 0.646x
    untextured; with cast shadows too (``--shadows``) 0.697 → 0.658x, 0.726 → 0.698x; linear
    renders (the model's own shading) 0.640 → 0.675x, 0.638 → 0.666x. The share of the photos'
    colour variance the refined faces explain (``shading_r2``, scale-free) rises with it where the
    pixels are encoded (0.892 → 0.907 textured renders with shadows), falls where they are not
    (0.904 → 0.892) — and on the 7 real photos it rises, 0.680 → 0.717: they read as encoded
    photos do (their landmark residual 7.17 → 7.69 px, as on encoded renders 5.44 → 5.67 px).
    cast_shadows: leave out of the shading term the vertices in a shadow the face casts on itself
    (the nose's on a cheek, the brow ridge's on the lids): the harmonics model the shading of a
    surface turned from the light, not a shadow one part of the face throws on another, and a
    dark vertex the light should reach bends its normal away from the light. The light's
    direction is read off the photo once, on the landmark fit's face (:func:`light_direction`),
    and every ``visibility_every`` steps a shadow map of the current face along it marks them
    (:meth:`_PhotoFit.cast_shadows`; on renders with shadows 97.7–99.1 % of the vertices marked as
    the renderer's; the share left out is the final terms' ``shadowed``, the light's mean
    elevation above the head's horizon ``light_up_deg``, over the photos where one was found).
    It costs 1.2–1.5x the
    time per face. Measured on renders of seed 7 encoded as a camera's with cast shadows
    (``photometric_settings.py --renders 40 --seed 7 --camera-gamma 2.2 --shadows``; synthetic):
    0.657 → 0.641x textured, 0.697 → 0.650x untextured; without shadows it changes nothing
    (0.627 → 0.627x textured); on the 7 real photos the refined faces stay nearer dlib's points
    (landmark residual 7.64 → 6.94 px) and explain more of the shading they keep (shading_r2
    0.717 → 0.810, over fewer vertices — 23 % of the seen ones left out, 10 % on the textured
    renders: not the same measure). But on the real
    CT head's geometry, rendered encoded with its own shadows (``ct_encoder.py --detectors dlib
    --no-prior --camera-gamma 2.2 --shadows --photo-set cast_shadows=true``), it loses: untextured
    0.830 → 0.843x (views sharing one shape 0.795 → 0.818x), textured 0.802 → 0.826x (0.748 →
    0.742x), about 9 % of the seen vertices left out — the shadows the fitted face casts are not
    quite the real face's, and a vertex wrongly left out or kept costs more than the shadow's
    pull did. Under lights as high as the real photos' (read off the 7 real photos: 43.8° above
    the head's horizon on average, where it reads renders lit 43.5° / 42.9° up as 39.3° / 37.7°;
    the renders' default lights stand at most 31° up) the shadows grow and so does its gain on renders
    (``photometric_settings.py --camera-gamma 2.2 --shadows --light-up 30 60``, 14 % left out):
    seed 7 textured 0.729 → 0.658x, untextured 0.744 → 0.675x, seed 11 textured 0.737 →
    0.691x — but on the real CT head's geometry under the same lights (``ct_encoder.py ...
    --light-up 30 60``) it still loses: 0.794 → 0.809x (twelve views one shape 0.792 → 0.809x;
    textured embedding 0.795 → 0.813x, one shape 0.774 → 0.803x). Off until a set of real photos
    with a truth says otherwise.
    specular: the shininess (Blinn-Phong exponent; 0, the default: none) of a white highlight
    whose column joins the harmonics in the light's closed-form solve, under the light's
    direction read off the photo as for cast_shadows: the highlight is explained instead of
    being an outlier. On the textured renders above (whose highlights are Blinn-Phong, shininess
    8–40) with cast_shadows it explains more (shading_r2 0.926 → 0.935) but fits worse (0.641 →
    0.651x at 16), and on the 7 real photos it changes nothing (shading_r2 0.799 → 0.800, the
    landmark residual 6.99 px both; a first run that re-read the light every visibility update,
    which gave the same 0.641x): off.
    shadow_confirm, shadow_spread (with cast_shadows): the fitted face is not the real one, so
    the shadow it casts lies a little off the photo's. shadow_spread: the shadows cast along the
    light and along four directions this many degrees around it, together — the candidates;
    shadow_confirm: of the candidates only those the photo shows dark are left out — darker than
    halfway between the ambient light alone and the ambient plus the direct light their normal
    receives (a + b·max(0, n·d), a and b fitted to the vertices' brightness outside the
    candidates): a vertex the real face lights is kept, however the fitted face shades it.
    On renders whose faces are not the fitted ones (``tests/encoder/test_photometric.py``) the
    confirmed marks are the renderer's shadows more often (precision 0.89 → 0.96) and the spread
    finds more of them (recall 0.87 → 0.94). Off: with both, steep-lit textured renders of seed 7
    0.658 → 0.654x (confirm alone 0.660x), the real CT head under the same lights 0.809 → 0.812x
    (one shape 0.809 → 0.804x; textured embedding 0.813 → 0.818x, 0.803 → 0.781x) — no nearer
    the refinement without cast_shadows there (0.794x): it is not the misplaced shadow that costs.
    posterior_discount: with ``FitConfig.posterior`` the refined faces get their own uncertainty
    (:meth:`_PhotoFit.shape_posterior`: the landmark fit's Laplace approximation plus the shading's
    Gauss-Newton information), the shading's information divided by this: counted as if each of
    the ~2,500 vertices' colours were an independent measurement (1) it claims far more than it
    holds — neighbouring vertices read the same blurred pixels and err together where the model's
    shading is not the photo's. 20 calibrates it on renders of seed 1 (``benchmarks/
    fit_uncertainty.py --faces 60 --noise 0.03 --photometric 10 30 100``; synthetic: the true
    soft-tissue points' median Mahalanobis² under the refined covariance 2.83 / 2.21 / 1.87 at
    10 / 30 / 100, 2.37 when calibrated; at 1 it is 10.8 on 6 faces). Only the covariance
    depends on it, not the codes."""

    weight: float = 10.0
    steps: int = 200
    lr: float = 0.02
    cauchy: float = 0.1
    blur: float = 0.014
    visibility_every: int = 25
    vertices: int = 2500
    min_visible: int = 200
    landmark_cauchy: float = 0.0
    skip_features: bool = True
    skip_parts: tuple[str, ...] = FEATURE_PARTS
    feature_albedo: bool = False
    feature_landmark_weight: float = 1.0
    landmark_weights: bool = True
    photo_gamma: float = 2.2
    cast_shadows: bool = False
    specular: float = 0.0
    posterior_discount: float = 20.0
    shadow_confirm: bool = False
    shadow_spread: float = 0.0

    def __post_init__(self):
        from skullsearch.errors import SkullsearchError

        if not self.feature_landmark_weight >= 0:
            raise SkullsearchError(f"PhotometricConfig.feature_landmark_weight must be 0 or more (1: as the "
                                   f"landmark fit), got {self.feature_landmark_weight}")
        if not 0 <= self.specular < float("inf"):
            raise SkullsearchError(f"PhotometricConfig.specular is the highlight's shininess (a Blinn-Phong "
                                   f"exponent, e.g. 16; 0: no highlight), got {self.specular}")
        if not 0 < self.posterior_discount < float("inf"):
            raise SkullsearchError(f"PhotometricConfig.posterior_discount divides the shading's information "
                                   f"in the fit's uncertainty (1: its vertices counted as independent); "
                                   f"it must be above 0, got {self.posterior_discount}")
        if not 0 <= self.shadow_spread < 45:
            raise SkullsearchError(f"PhotometricConfig.shadow_spread is an angle in degrees (0: the light's "
                                   f"direction alone; e.g. 8), below 45, got {self.shadow_spread}")
        if not self.photo_gamma > 0:
            raise SkullsearchError(f"PhotometricConfig.photo_gamma must be above 0 (1: the pixel values "
                                   f"as they are; 2.2: sRGB photos), got {self.photo_gamma}")
        unknown = set(self.skip_parts) - set(FEATURE_PARTS)
        if unknown:
            raise SkullsearchError(f"PhotometricConfig.skip_parts: unknown {sorted(unknown)}; "
                                   f"choose from {FEATURE_PARTS}")


def sh9(normals: torch.Tensor) -> torch.Tensor:
    """Order-2 real spherical harmonics (constants folded in): (..., 3) unit normals, y up and z
    towards the viewer → (..., 9)."""
    x, y, z = normals.unbind(-1)
    return torch.stack([torch.ones_like(x), y, z, x, x * y, y * z, 3 * z**2 - 1, x * z, x**2 - y**2], -1)


def _blurred(images: list[np.ndarray], sigma_px: np.ndarray, gamma: float = 1.0
             ) -> tuple[torch.Tensor, np.ndarray]:
    """Photos (H, W, 3) uint8 → one padded (B, 3, Hmax, Wmax) float tensor in [0, 1], each raised to
    ``gamma`` (the pixel values' encoding undone: linear light) and blurred by a Gaussian of
    σ = sigma_px[i] px; and the padded size (2,) (W, H)."""
    from scipy.ndimage import gaussian_filter

    hmax = max(im.shape[0] for im in images)
    wmax = max(im.shape[1] for im in images)
    out = np.zeros((len(images), 3, hmax, wmax), np.float32)
    for i, im in enumerate(images):
        a = np.asarray(im, np.float32)[..., :3] / 255.0
        if gamma != 1.0:
            a = a ** np.float32(gamma)
        s = float(sigma_px[i])
        if s > 0:
            a = gaussian_filter(a, sigma=(s, s, 0))
        out[i, :, : a.shape[0], : a.shape[1]] = a.transpose(2, 0, 1)
    return torch.from_numpy(out), np.array([wmax, hmax], np.float64)


@dataclass(frozen=True)
class FaceCrop:
    """The part of a photo around a face that the refinement reads, kept small: pixels (h, w, 3)
    uint8 of the photo's window from ``origin`` (2,) px (x, y), resized by ``scale`` (crop px per
    photo px). A photo pixel u is crop pixel (u − origin) · scale."""

    pixels: np.ndarray
    origin: np.ndarray
    scale: float

    def png(self) -> bytes:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.pixels).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    @classmethod
    def from_png(cls, data: bytes, origin, scale: float) -> FaceCrop:
        import io

        from PIL import Image

        return cls(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), np.asarray(origin, np.float64),
                   float(scale))


def face_crop(pixels: np.ndarray, landmarks: np.ndarray, max_side: int = CROP_PX, margin: float = 0.6
              ) -> FaceCrop:
    """The window of a photo (H, W, 3) uint8 around a face's landmarks (68, 2) px, widened by
    ``margin`` × its size on every side (the forehead and cheeks lie outside the landmarks), and
    shrunk so that its longer side is at most ``max_side`` px."""
    from PIL import Image

    h, w = pixels.shape[:2]
    lo, hi = np.asarray(landmarks).min(0), np.asarray(landmarks).max(0)
    pad = margin * (hi - lo).max()
    x0, y0 = (int(max(0, np.floor(v - pad))) for v in lo)
    x1, y1 = int(min(w, np.ceil(hi[0] + pad))), int(min(h, np.ceil(hi[1] + pad)))
    window = np.ascontiguousarray(np.asarray(pixels)[y0:y1, x0:x1, :3])
    k = min(1.0, max_side / max(window.shape[:2]))
    if k < 1.0:
        size = (max(1, round(window.shape[1] * k)), max(1, round(window.shape[0] * k)))
        k = size[0] / window.shape[1]  # the horizontal scale as rounded (the vertical is within a pixel)
        window = np.asarray(Image.fromarray(window).resize(size, Image.BILINEAR))
    return FaceCrop(window, np.array([x0, y0], np.float64), float(k))


def _vertex_rig(model, ids: np.ndarray, n_shape: int, n_expression: int, dtype, device="cpu") -> LandmarkRig:
    """A :class:`~.fitting.LandmarkRig` whose points are the model's vertices ``ids`` (K,): their
    posed positions at the cost of K vertices, not the whole mesh."""
    flat = model.faces.reshape(-1)
    order = np.argsort(flat, kind="stable")
    first = order[np.searchsorted(flat[order], ids)]  # a corner of each vertex
    bary = np.zeros((len(ids), 3), np.float32)
    bary[np.arange(len(ids)), first % 3] = 1.0
    return LandmarkRig(model, n_shape, n_expression, device=device, dtype=dtype,
                       points=SurfacePoints(first // 3, bary), marching=False)


def _surface(model, vertices: int, n_shape: int, n_expression: int, dtype, device="cpu",
             skip_features: bool = False, parts: tuple[str, ...] = FEATURE_PARTS):
    """The face region's vertices the refinement reads (about ``vertices``, evenly subsampled;
    ``skip_features``: without brows, lips and lash lines, :func:`~skullsearch.encoder.render.
    feature_mask`, of ``parts``) and the T triangles around them, as a :class:`_Surface` on
    ``device``. Cached on the model."""
    from skullsearch.encoder.face_model import face_region

    cache = model.__dict__.setdefault("_photometric_surface", {})
    key = (vertices, n_shape, n_expression, dtype, str(device), skip_features, tuple(parts))
    if key not in cache:
        mask = face_region(model)
        if skip_features:
            from skullsearch.encoder.render import feature_mask

            mask &= ~feature_mask(model, parts=tuple(parts))
        region = np.flatnonzero(mask)
        use = region[:: max(1, len(region) // vertices)]
        faces = model.faces
        near = np.zeros(model.n_vertices, bool)
        near[use] = True
        tri = faces[near[faces].any(1)]  # the triangles around the used vertices: their corners
        rig = _vertex_rig(model, np.unique(tri), n_shape, n_expression, dtype, device)
        lookup = np.full(model.n_vertices, -1)
        lookup[rig.vertex_ids] = np.arange(len(rig.vertex_ids))  # (the rig's rows: a few more)
        t0, t1, t2 = lookup[tri].T
        n_tri, k = len(tri), len(rig.vertex_ids)
        rows = np.r_[np.arange(n_tri), np.arange(n_tri)]
        minus = np.r_[np.ones(n_tri), -np.ones(n_tri)]
        # each used vertex gets the (area-weighted) normals of the triangles it is a corner of
        at = np.full(model.n_vertices, -1)
        at[use] = np.arange(len(use))
        hit = at[tri]  # (T, 3)
        tri_of, corner = np.nonzero(hit >= 0)
        cache[key] = _Surface(
            rig, rig.vertex_ids, torch.as_tensor(lookup[use], device=device),
            _sparse(rows, np.r_[t1, t0], minus, (n_tri, k), dtype, device),
            _sparse(rows, np.r_[t2, t0], minus, (n_tri, k), dtype, device),
            _sparse(hit[tri_of, corner], tri_of, np.ones(len(tri_of)), (len(use), n_tri), dtype, device))
    return cache[key]


#: a used vertex counts as skin for the light's solve when its features' weights sum below this
SKIN_BELOW = 0.05
#: the features' colour solve's pull to the skin's colour (in squared shading units: ~ a few
#: vertices' worth), so that a feature with hardly a visible vertex keeps the skin's colour
FEATURE_RIDGE = 0.05


#: the brows the refinement tries on each face (``feature_albedo``): bands this many mm under the
#: brow landmarks' line × this many mm half-wide at their heads (tapering to the tails)
BROW_OFFSETS_MM = (1.0, 2.5, 4.0)
BROW_HALF_WIDTHS_MM = (1.5, 3.0, 4.5)


def _feature_profiles(model) -> np.ndarray:
    """(J, V, 3) each vertex's weight in [0, 1] of the brows, lips and upper lids' lash lines, J
    ways: the generic features of the model's mean face (:class:`~skullsearch.encoder.render.
    TextureRegions`, placed by its source's annotation: lips inside the outer lip contour, lash
    lines 0.6 mm half-wide), with each of the J = 9 brows of :data:`BROW_OFFSETS_MM` ×
    :data:`BROW_HALF_WIDTHS_MM` (a face's brows lie a few mm under its brow landmarks and are
    thick or thin: each face gets the one its photo shows best); 0 off the skin. Cached on the
    model."""
    cache = model.__dict__.setdefault("_photometric_profile", {})
    if "profiles" not in cache:
        from skullsearch.encoder.render import _brow_band, texture_regions

        r = texture_regions(model)
        rest = np.stack([r.lips, r.lashes], 1)
        out = [np.concatenate([_brow_band(r.brow_depth, r.brow_width, o, h)[:, None], rest], 1)
               for o in BROW_OFFSETS_MM for h in BROW_HALF_WIDTHS_MM]
        cache["profiles"] = np.stack(out) * r.skin[None, :, None]
    return cache["profiles"]


def _sparse(rows, cols, values, shape, dtype, device="cpu") -> torch.Tensor:
    index = torch.as_tensor(np.stack([rows, cols]), dtype=torch.int64)
    return torch.sparse_coo_tensor(index, torch.as_tensor(values, dtype=dtype), shape,
                                   check_invariants=True).coalesce().to(device)


def _sphere(n: int) -> np.ndarray:
    """n nearly even unit directions (n, 3) (a Fibonacci sphere)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = k * np.pi * (3 - np.sqrt(5))
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def _tilted(d: np.ndarray, degrees: float) -> list[np.ndarray]:
    """Four unit directions ``degrees`` from the unit direction d (3,), around it a quarter turn apart."""
    helper = np.array([0.0, 1.0, 0.0]) if abs(d[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return [c * d + s * w for w in (u, -u, v, -v)]


#: The light directions :func:`light_direction` tries (~7° apart).
LIGHT_DIRECTIONS = _sphere(800)
_LIGHT_DIRECTIONS_T = np.ascontiguousarray(LIGHT_DIRECTIONS.T, np.float32)


def light_direction(normals: np.ndarray, brightness: np.ndarray, weight: np.ndarray) -> np.ndarray | None:
    """The direction (3,) (unit, the normals' frame) of the directional light that, with an
    ambient one, best explains a surface's brightness: of :data:`LIGHT_DIRECTIONS`, the d whose
    brightness ≈ a + b·max(0, n·d), b > 0, fits best by weighted least squares (over about a
    thousand of the weighted vertices). normals (n, 3) unit, brightness (n,), weight (n,) ≥ 0.
    None where none explains 1 % of the brightness's variance (a flat light: no direction)."""
    rows = np.flatnonzero(weight > 0)
    rows = rows[:: max(1, len(rows) // 1000)]  # (about a thousand vertices say it)
    normals, brightness, weight = normals[rows], brightness[rows], weight[rows]
    x = np.maximum(np.asarray(normals, np.float32) @ _LIGHT_DIRECTIONS_T, 0.0)  # (n, D)
    w = (weight / max(float(weight.sum()), 1e-12)).astype(np.float32)
    deviation = brightness - float(w @ brightness)
    centred = (w * deviation).astype(np.float32)
    mx = (w @ x).astype(np.float64)
    cov = (centred @ x).astype(np.float64)  # (D,)
    np.square(x, out=x)
    var = (w @ x).astype(np.float64) - mx**2
    gain = np.where((cov > 0) & (var > 1e-9), cov**2 / np.maximum(var, 1e-12), -np.inf)  # variance explained
    best = int(np.argmax(gain))
    spread = float(w @ deviation**2)
    return LIGHT_DIRECTIONS[best] if spread > 1e-8 and gain[best] > 0.01 * spread else None


@dataclass(frozen=True)
class _Surface:
    """The face region's surface as the refinement reads it (:func:`_surface`)."""

    rig: LandmarkRig  #: a vertex rig of the K vertices the used vertices' normals need
    ids: np.ndarray  #: (K,) the model vertex of each of the rig's rows
    use: torch.Tensor  #: (n,) the used vertices, as rig rows
    edge1: torch.Tensor  #: (T, K) sparse: each triangle's edge corner 1 − corner 0
    edge2: torch.Tensor  #: (T, K) sparse: corner 2 − corner 0
    gather: torch.Tensor  #: (n, T) sparse: 1 where the used vertex is a corner of the triangle


class _PhotoFit(_AdamFit):
    """The landmark fit's Adam problem (:class:`~.fitting._AdamFit`) plus the photometric term."""

    def __init__(self, model, rig, cfg: FitConfig, pcfg: PhotometricConfig, obs, pidx, n_person, state,
                 images: list[np.ndarray]):
        super().__init__(rig, cfg, obs, pidx, n_person, state)
        self.model, self.pcfg = model, pcfg
        self.img, self.padded = _blurred(images, pcfg.blur * self.scale.double().numpy(), pcfg.photo_gamma)
        self.img = self.img.to(self.device, self.dt)
        self.sizes = torch.as_tensor(np.array([[im.shape[1], im.shape[0]] for im in images], np.float64),
                                     dtype=self.dt)  # (on the CPU: the z-buffer's)
        skip = pcfg.skip_features and not pcfg.feature_albedo
        self.mesh = _surface(model, pcfg.vertices, rig.n_shape, rig.n_expression, self.dt, self.device, skip,
                             pcfg.skip_parts)
        self.surface, self.surface_ids, self.use = self.mesh.rig, self.mesh.ids, self.mesh.use
        #: (J, n, 3) each used vertex's weights of the brows, lips and lash lines, J ways
        #: (feature_albedo; :func:`_feature_profiles`), each face's choice (B,) and the skin (n,)
        self.profiles = self.choice = self.skin = None
        if pcfg.feature_albedo:
            used = self.surface_ids[self.use.cpu().numpy()]
            prof = _feature_profiles(model)[:, used]
            self.profiles = torch.as_tensor(prof, dtype=self.dt, device=self.device)
            self.choice = torch.full((self.b,), len(self.profiles) // 2, dtype=torch.long, device=self.device)
            self.skin = (self.profiles.sum(2).amax(0) < SKIN_BELOW).to(self.dt)
        self.visible = torch.zeros(self.b, len(self.use), dtype=torch.bool, device=self.device)
        #: (B, n) the used vertices in a cast shadow at the last visibility update (cast_shadows)
        self.shadowed = torch.zeros_like(self.visible)
        #: (B, 3) each photo's light direction (the head's frame; 0: none found), read at the
        #: first visibility update (cast_shadows, specular)
        self.towards_light = torch.zeros(self.b, 3, dtype=self.dt, device=self.device)
        self.light_read = False
        if pcfg.feature_landmark_weight != 1.0:  # the brows', eyes' and mouth's points (and edges)
            pw = torch.ones(68, dtype=self.dt, device=self.device)
            pw[FEATURE_LANDMARKS] = pcfg.feature_landmark_weight
            ew = torch.minimum(pw[self.edges[..., 0]], pw[self.edges[..., 1]])
            if self.noise_weight is not None:  # (times the detector's measured reliability)
                pw, ew = pw * self.noise_weight, ew * self.edge_weight
            self.point_weight, self.edge_weight = pw, ew

    def posed(self) -> torch.Tensor:
        """The surface rig's vertices, posed (B, K, 3) mm (the head's rotation is the camera's)."""
        return self.surface.vertices_jaw(self.shape[self.pidx], self.face_expr(), self.jaw)

    def normals(self, verts: torch.Tensor) -> torch.Tensor:
        """Unit normals (B, n, 3) of the used vertices from the rig's vertices (B, K, 3),
        area-weighted over their triangles: sparse products over the vertices laid out (K, B·3),
        whose backward passes gather rows, where indexing's scatter (B, T, 3, 3) tensors."""
        b, k = verts.shape[:2]
        v = verts.transpose(0, 1).reshape(k, 3 * b)
        t = self.mesh.edge1.shape[0]
        ax, ay, az = torch.sparse.mm(self.mesh.edge1, v).reshape(t, b, 3).unbind(-1)  # (T, B) each
        bx, by, bz = torch.sparse.mm(self.mesh.edge2, v).reshape(t, b, 3).unbind(-1)
        fn = torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], -1)  # (T, B, 3)
        n = torch.sparse.mm(self.mesh.gather, fn.reshape(t, 3 * b)).reshape(-1, b, 3).transpose(0, 1)
        return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-9)

    def update_visibility(self) -> None:
        """Which used vertices each photo shows: in the image, nearest in the z-buffer of the
        current face, and facing the camera."""
        from skullsearch.encoder.render import rasterize

        with torch.no_grad():  # on the CPU (the model's mesh and the rasterizer are there)
            cpu = {"shape": self.shape[self.pidx].cpu(), "expression": self.face_expr().cpu(),
                   "pose": self.full_pose().cpu()}
            full = self.model.vertices(**cpu)
            rot_here = camera_rotation(self.cam_rot)  # (on the fit's device)
            rot, trans = rot_here.cpu(), self.trans().cpu()
            cam = full @ rot.transpose(1, 2) + trans[:, None]
            uv = project(full, rot, trans, self.f.cpu(), self.center.cpu())
            normals = self.normals(self.posed())  # (B, n, 3) the head's frame
            # camera frame (z away from the viewer); towards the camera, not grazing
            facing = ((normals @ rot_here.transpose(1, 2))[..., 2] < -0.2).cpu().numpy()
            normals = normals.cpu().double().numpy()
            used = self.surface_ids[self.use.cpu().numpy()]
            # the triangles that face the camera (the normals' winding, as the used vertices'):
            # of a closed surface only these can be nearest; half the triangles to draw
            t = cam[:, self.model.faces]  # (B, F, 3, 3)
            fn = torch.cross(t[:, :, 1] - t[:, :, 0], t[:, :, 2] - t[:, :, 0], dim=-1)
            front = ((fn * t.mean(2)).sum(-1) <= 0).numpy()  # (B, F)
        faces = self.model.faces
        visible = np.zeros((self.b, len(used)), bool)
        for i in range(self.b):  # a z-buffer of at most VISIBILITY_PX on its longer side
            k = min(1.0, VISIBILITY_PX / float(self.sizes[i].max()))
            w, h = (max(1, int(x * k)) for x in self.sizes[i])
            screen = torch.cat([uv[i] * k, cam[i, :, 2:3]], 1).double().numpy()
            _, _, depth = rasterize(screen, faces[front[i]], w, h)
            p = screen[used]
            col, row = np.floor(p[:, 0]).astype(int), np.floor(p[:, 1]).astype(int)
            inside = (col >= 1) & (col < w - 1) & (row >= 1) & (row < h - 1)
            vis = np.zeros(len(p), bool)
            vis[inside] = p[inside, 2] <= depth[row[inside], col[inside]] + 1.0
            visible[i] = vis & facing[i]
        self.visible = torch.as_tensor(visible, device=self.device)
        if (self.pcfg.cast_shadows or self.pcfg.specular) and not self.light_read:
            # read once, off the landmark fit's face: the refinement moves the normals too little
            # to turn it (and it costs a third of the shadows' time)
            self.towards_light = self.light_directions(normals)
            self.light_read = True
        if self.pcfg.cast_shadows:
            self.shadowed = torch.as_tensor(self.cast_shadows(full, used, normals), device=self.device)
            self.visible &= ~self.shadowed

    def light_directions(self, normals: np.ndarray) -> torch.Tensor:
        """Each photo's light direction (B, 3) (unit, the head's frame; 0 where none is found or
        too little of the face is seen): :func:`light_direction` over the visible vertices'
        brightness (the mean of their colours) and normals (B, n, 3) (the head's frame)."""
        with torch.no_grad():
            _, colour, w = self._shading()
            brightness = colour.mean(-1).cpu().double().numpy()  # (B, n)
            w = w.cpu().double().numpy()
        out = np.zeros((self.b, 3))
        for i in range(self.b):
            if w[i].sum() >= self.pcfg.min_visible:
                d = light_direction(normals[i], brightness[i], w[i])
                out[i] = 0.0 if d is None else d
        return torch.as_tensor(out, dtype=self.dt, device=self.device)

    def cast_shadows(self, full: torch.Tensor, used: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Which used vertices (B, n) bool lie in a shadow their face casts on itself under its
        photo's light (``PhotometricConfig.cast_shadows``; the light's direction
        :attr:`towards_light`; the used vertices' normals (B, n, 3) the head's frame). The face's
        own mesh (full (B, V, 3) mm, the head's frame) is the
        occluder (:func:`~skullsearch.encoder.render.in_shadow`, its triangles that face the light:
        the winding's outward normals, as the visibility's); only vertices turned towards the
        light count: one turned away is in the harmonics' own (attached) shadow. With
        ``shadow_spread`` the shadows along four directions around the light join them, and with
        ``shadow_confirm`` only those the photo shows dark stay marked (:class:`PhotometricConfig`)."""
        from skullsearch.encoder.render import in_shadow

        pcfg = self.pcfg
        towards = self.towards_light.cpu().double().numpy()
        out = np.zeros((self.b, len(used)), bool)
        faces = self.model.faces
        if pcfg.shadow_confirm:
            with torch.no_grad():
                _, colour, _ = self._shading()
            brightness = colour.mean(-1).cpu().double().numpy()  # (B, n)
            seen = self.visible.cpu().numpy()
        for i, d in enumerate(towards):
            if not np.any(d):  # no light direction: nothing cast
                continue
            pts = full[i].double().numpy()
            t = pts[faces]
            tri_n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
            for e in [d, *_tilted(d, pcfg.shadow_spread)] if pcfg.shadow_spread else [d]:
                lit = tri_n @ e > 0  # (the light meets these first)
                out[i] |= (in_shadow(pts, faces[lit], pts[used], e, normals=normals[i], size=SHADOW_PX)
                           & (normals[i] @ e > 0.0))
            if pcfg.shadow_confirm:
                direct = np.maximum(normals[i] @ d, 0.0)
                rest = seen[i] & ~out[i]
                if rest.sum() < 10:  # too little lit skin to say how bright lit is: all stay marked
                    continue
                a, b = np.linalg.lstsq(np.c_[np.ones(rest.sum()), direct[rest]], brightness[i, rest],
                                       rcond=None)[0]
                out[i] &= brightness[i] < a + 0.5 * max(b, 0.0) * direct
        return out

    def _shading(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The used vertices' shading under the optimal light (B, n, 3) (their colour if they
        were skin), their colour in the photo (B, n, 3) and which are visible (B, n) float."""
        verts = self.posed()
        rot = camera_rotation(self.cam_rot)
        uv = project(verts.index_select(1, self.use), rot, self.trans(), self.f, self.center)  # (B, n, 2)
        grid = (uv / torch.as_tensor(self.padded, dtype=self.dt, device=self.device)) * 2 - 1
        colour = torch.nn.functional.grid_sample(self.img, grid[:, None], mode="bilinear",
                                                 padding_mode="border", align_corners=False)
        colour = colour[:, :, 0].transpose(1, 2)  # (B, n, 3)
        n = self.normals(verts) @ rot.transpose(1, 2)
        flip = torch.tensor([1.0, -1.0, -1.0], dtype=self.dt, device=self.device)
        basis = sh9(n * flip)  # y up, z to the viewer
        if self.pcfg.specular and bool(self.towards_light.any()):  # a Blinn-Phong highlight's column
            light_dir = self.towards_light[:, None] @ rot.transpose(1, 2)  # (B, 1, 3) camera frame
            at = verts.index_select(1, self.use) @ rot.transpose(1, 2) + self.trans()[:, None]
            half = light_dir - at / at.norm(dim=-1, keepdim=True)  # (+ towards the camera)
            half = half / half.norm(dim=-1, keepdim=True).clamp(min=1e-9)
            lit = ((n * light_dir).sum(-1) > 0).to(self.dt)
            highlight = (n * half).sum(-1).clamp(min=0) ** self.pcfg.specular * lit
            basis = torch.cat([basis, highlight[..., None]], -1)
        w = self.visible.to(self.dt)  # (B, n)
        skin = w if self.skin is None else w * self.skin  # the light from the skin alone
        with torch.no_grad():  # the optimal light for the current shape (least squares)
            a = basis * skin[..., None]
            k = basis.shape[-1]
            gram = a.transpose(1, 2) @ basis + 1e-4 * torch.eye(k, dtype=self.dt, device=self.device)
            light = torch.linalg.solve(gram, a.transpose(1, 2) @ colour)  # (B, 9 (+1), 3)
        return basis @ light, colour, w

    def _energy(self, shading, colour, w) -> torch.Tensor:
        """The robust photometric energy per face (B,) of predicted colours (B, n, 3)."""
        pcfg = self.pcfg
        r2 = ((shading - colour) ** 2).sum(-1)
        rho = pcfg.cauchy**2 * torch.log1p(r2 / pcfg.cauchy**2)
        count = w.sum(1)
        ok = (count >= pcfg.min_visible).to(self.dt)
        return ok * (rho * w).sum(1) / count.clamp(min=1)

    def _predicted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The used vertices' predicted colour (B, n, 3) (their shading, times the features' colours
        with feature_albedo), their colour in the photo (B, n, 3) and which are visible (B, n)."""
        shading, colour, w = self._shading()
        if self.profiles is not None:
            shading = shading * self.feature_colours(shading, colour, w, self.profiles[self.choice])
        return shading, colour, w

    def photometric(self) -> torch.Tensor:
        """The photometric energy per face (B,) (0 for a face with too few visible vertices)."""
        return self._energy(*self._predicted())

    def explained(self, predicted=None) -> torch.Tensor:
        """The share of each photo's colour variance over the visible vertices that the model's
        shading explains (B,), R² = 1 − Σ‖I − L·Y‖² / Σ‖I − Ī‖²: scale-free (unlike the energy, it
        does not change with photo_gamma's brightness), NaN for a face with too few visible
        vertices. predicted: :meth:`_predicted`'s result when already computed."""
        pred, colour, w = predicted if predicted is not None else self._predicted()
        wv = w[..., None]
        count = w.sum(1)
        mean = (colour * wv).sum(1, keepdim=True) / count.clamp(min=1)[:, None, None]
        spread = ((colour - mean) ** 2 * wv).sum((1, 2)).clamp(min=1e-12)
        r2 = 1 - ((pred - colour) ** 2 * wv).sum((1, 2)) / spread
        return torch.where(count >= self.pcfg.min_visible, r2, torch.full_like(r2, float("nan")))

    def choose_features(self) -> None:
        """Each face's brows (``choice``): of the J tried, those whose colours explain its photo best."""
        with torch.no_grad():
            shading, colour, w = self._shading()
            energy = torch.stack([
                self._energy(shading * self.feature_colours(shading, colour, w, m.expand(self.b, *m.shape)),
                             colour, w) for m in self.profiles])  # (J, B)
            self.choice = energy.argmin(0)

    @staticmethod
    def feature_colours(shading: torch.Tensor, colour: torch.Tensor, w: torch.Tensor,
                        m: torch.Tensor) -> torch.Tensor:
        """The albedo (B, n, 3) relative to the skin's, 1 − Σ_k m_k + Σ_k m_k ρ_k, of the shaded
        skin (B, n, 3) under the features' weights m (B, n, K): each feature's colour ratio ρ_k
        (B, K, 3) solved in closed form (least squares against the photo's colour (B, n, 3) over
        the visible vertices w (B, n), a weak pull to 1 where a feature is hardly seen; held, as
        the light)."""
        with torch.no_grad():
            sm = shading[:, :, None, :] * m[..., None]  # (B, n, K, 3)
            rest = colour - shading * (1 - m.sum(-1))[..., None]  # (B, n, 3)
            wv = w[:, :, None, None]
            num = (wv * sm * rest[:, :, None, :]).sum(1) + FEATURE_RIDGE  # (B, K, 3)
            den = (wv * sm * sm).sum(1) + FEATURE_RIDGE
            rho = (num / den).clamp(0.02, 2.0)
        return 1 - m.sum(-1)[..., None] + (m[..., None] * rho[:, None]).sum(2)

    def shape_posterior(self, noise: float) -> torch.Tensor:
        """Each face's shape posterior covariance (B, S, S) float64 around the refined fit (its
        person's shared α): the Laplace approximation of the landmark fit's
        (:meth:`~.fitting._LMProblem.shape_posterior`: the 68 points' Gauss-Newton information at
        σ = noise × the inter-ocular distance, the model's priors, the camera, jaw and
        expression marginalized, a person's photos summed) plus the photometric term's
        Gauss-Newton information in the same units: the refinement's energy counts a landmark's
        squared error over σ² as w_landmark · noise² / 68 (``w_noise``), so the photometric
        term's Hessian weight · Σ_v ρ'_v J_vᵀ J_v / count (the Cauchy loss's reweighting ρ' at
        the current residuals, over the visible vertices) is divided by w_noise — the
        photometric weight read as how much a photo's shading says against its landmarks. The
        Jacobians J_v of the colour residuals (with the light solved again, as each step does)
        and of the landmarks are forward differences over the camera, jaw, expression and
        shape, at the current visibility: one pass of the residuals per parameter."""
        cfg, pcfg, rig = self.cfg, self.pcfg, self.rig
        w_noise = cfg.w_landmark / 68 * noise**2
        sigma = (noise * self.scale)[:, None, None]  # (B, 1, 1) px
        if self.noise_weight is not None:  # a point of weight w errs by σ / √w
            sigma = sigma / self.noise_weight.sqrt()[..., None]  # (B, 68, 1)
        # [camera 6, jaw 3, δ E, α S]: δ the face's own, or its person's with α (share_expression)
        blocks = [(self.cam_rot, torch.full((3,), 1e-3)), (self.cam_off, torch.full((3,), 1e-3)),
                  (self.jaw, torch.full((3,), 1e-3)), (self.expr, 1e-2 * rig.expr_std.cpu()),
                  (self.shape, 1e-2 * rig.shape_std.cpu())]
        with torch.no_grad():
            pred, colour, w = self._predicted()
            count = w.sum(1)
            ok = (count >= pcfg.min_visible).to(self.dt)
            reweight = w / (1 + ((pred - colour) ** 2).sum(-1) / pcfg.cauchy**2)  # ρ' (B, n)
            rows = (pcfg.weight * reweight * (ok / count.clamp(min=1))[:, None]
                    / (w_noise * pcfg.posterior_discount)).sqrt()

            def residuals() -> torch.Tensor:  # (B, 136 + 3n), scaled: information = JᵀJ
                _, uv = self.losses(rigid=False)
                p, c, _ = self._predicted()
                return torch.cat([((uv - self.lm2d) / sigma).reshape(self.b, -1),
                                  ((p - c) * rows[..., None]).reshape(self.b, -1)], 1)

            base = residuals()
            jac = base.new_empty(*base.shape, sum(len(steps) for _, steps in blocks))  # (B, M, N)
            col = 0
            for param, steps in blocks:
                for j, h in enumerate(steps.clamp(min=1e-4).tolist()):
                    kept = param[:, j].clone()
                    param[:, j] += h
                    jac[..., col] = (residuals() - base) / h
                    param[:, j] = kept
                    col += 1
            info = torch.cat([(c.double().transpose(1, 2) @ c.double()) for c in jac.split(8)])
        n_local = 9 + (0 if cfg.share_expression else rig.n_expression)
        return person_shape_covariance(info, n_local, cfg.w_pose / w_noise, rig.expr_std, rig.shape_std,
                                       self.pidx, self.n_person, rig.n_shape, cfg.photo_correlation)

    def refine(self) -> None:
        pcfg = self.pcfg
        from skullsearch.encoder.fitting import Adam

        params = [self.cam_rot, self.cam_off, self.shape, self.expr, self.jaw]
        opt = Adam(params, lr=pcfg.lr, cosine_steps=pcfg.steps, eta_min=pcfg.lr * 0.05)
        for step in range(pcfg.steps):
            if step % pcfg.visibility_every == 0:
                self.update_visibility()
                if self.profiles is not None:
                    self.choose_features()
            opt.zero_grad()
            lmk, _ = self.losses(rigid=False, robust=pcfg.landmark_cauchy)
            total = lmk + pcfg.weight * self.photometric()
            total.sum().backward()
            opt.step()
            self.history.append(float(total.detach().mean()))


def refine_photometric(model, codes: np.ndarray, landmarks: np.ndarray, images: list[np.ndarray],
                       person: np.ndarray | None = None, config: FitConfig | None = None,
                       photometric: PhotometricConfig | None = None, focal: np.ndarray | None = None,
                       detector: str | None = None, crops: list[FaceCrop] | None = None,
                       image_sizes: np.ndarray | None = None,
                       focal_known: np.ndarray | None = None) -> FitResult:
    """Refine landmark-fitted codes (B, 228) with the photos' shading (module docstring).

    landmarks (B, 68, 2) px the codes were fitted to; images: the B photos (H, W, 3) uint8;
    person (B,): faces with the same value share their shape (as in the fit); detector: whose
    landmarks they are (its calibrated embedding, as in the fit; the static one, not the
    pose-conditioned); focal (B,) px (default: the fit's, from the photo's size); focal_known
    (B,) bool: the faces whose focal length is the photo's own, not the guess (their detector's
    jaw line is moved by its calibration, ``FitConfig.jaw_calibration``, as in the fit; default
    none). crops: instead
    of whole photos, each face's :class:`FaceCrop` (``images`` is then ignored) with the photos'
    image_sizes (B, 2) px: the camera is the photo's, the landmarks and the result stay in the
    photo's pixels. The optimization runs on ``config.device`` (default the CPU; the visibility
    z-buffer, every ``visibility_every`` steps, always on the CPU). Returns a
    :class:`~.fitting.FitResult` (residual and landmarks from the landmark term, in the photo's
    pixels; with ``config.posterior`` the refined faces' shape_cov, :meth:`_PhotoFit.shape_posterior`)."""
    from skullsearch.errors import SkullsearchError

    cfg = config or FitConfig()
    pcfg = photometric or PhotometricConfig()
    codes = np.asarray(codes, np.float32)
    landmarks = np.asarray(landmarks, np.float64)
    if crops is not None:
        if image_sizes is None or len(image_sizes) != len(crops):
            raise SkullsearchError("refine_photometric with crops needs the photos' image_sizes, "
                                   "one per crop")
        images = [c.pixels for c in crops]
    if len(codes) != len(images) or len(codes) != len(landmarks):
        raise SkullsearchError(f"refine_photometric needs one photo and one set of landmarks per code: "
                               f"{len(codes)} codes, {len(images)} photos, {len(landmarks)} landmark sets")
    if len(codes) == 0:
        return FitResult(codes=codes.reshape(0, code_layout.CODE_SIZE), residual_px=np.zeros(0),
                         landmarks_px=np.zeros((0, 68, 2)), focal=np.zeros(0))
    device = cfg.device or "cpu"
    rig = rig_for(model, cfg.n_shape, cfg.n_expression, device=device, dtype=cfg.dtype, detector=detector,
                  textured=cfg.textured_embedding)
    sizes = np.array([[im.shape[1], im.shape[0]] for im in images], np.float64)
    jaw = detector_jaw_bias(model, detector, cfg)  # (the fit's: dlib's jaw line moved as there)
    # (and its points weighed as there, FitConfig.landmark_weights, unless landmark_weights is off here)
    sigma = detector_point_sigma(model, detector, cfg) if pcfg.landmark_weights else None
    if crops is None:
        obs = _observations(landmarks, sizes, focal, cfg, jaw, focal_known, sigma)
    else:  # the photo's camera seen through the crop: u' = k (u − o), so f' = k f, c' = k (c − o)
        full = np.asarray(image_sizes, np.float64)
        origin = np.stack([c.origin for c in crops])
        k = np.array([c.scale for c in crops])
        f = (np.asarray(focal, np.float64) if focal is not None else cfg.focal_factor * full.max(1))
        obs = _observations(k[:, None, None] * (landmarks - origin[:, None]), sizes, k * f, cfg, jaw,
                            focal_known, sigma)
        obs = (obs[0], obs[1], torch.as_tensor(k[:, None] * (full / 2 - origin), dtype=obs[2].dtype,
                                               device=obs[2].device), *obs[3:])
    b = len(codes)
    person = np.arange(b) if person is None else np.asarray(person)
    _, pidx_np = np.unique(person, return_inverse=True)
    pidx = torch.as_tensor(pidx_np, device=device)
    n_person = int(pidx_np.max()) + 1
    state = _initial_state(rig, cfg, obs, pidx, n_person, codes)
    fit = _PhotoFit(model, rig, cfg, pcfg, obs, pidx, n_person, state, images)
    fit.refine()
    out = fit.result()
    with torch.no_grad():  # the final energy's terms (weighted), each its mean over the faces
        fit.update_visibility()
        if fit.profiles is not None:
            fit.choose_features()
        parts: dict = {}
        lmk = fit.losses(rigid=False, robust=pcfg.landmark_cauchy, parts=parts)[0]
        predicted = fit._predicted()  # (the light solved once for both)
        photo = pcfg.weight * fit._energy(*predicted)
        r2 = fit.explained(predicted)
        out.terms = {"landmarks": float(lmk.mean()), "photometric": float(photo.mean()),
                     "shading_r2": float(r2.nanmean()) if bool(torch.isfinite(r2).any()) else float("nan")}
        if pcfg.cast_shadows:  # the share of the seen vertices left out as in a cast shadow
            seen = (fit.visible | fit.shadowed).sum(1).clamp(min=1)
            out.terms["shadowed"] = float((fit.shadowed.sum(1) / seen).mean())
        found = fit.towards_light.norm(dim=1) > 0.5
        if fit.light_read and bool(found.any()):  # the light read off the photos: degrees above the
            up = torch.rad2deg(torch.asin(fit.towards_light[found, 1].clamp(-1, 1)))  # head's horizon
            out.terms["light_up_deg"] = float(up.mean())
        out.terms |= {f"landmarks_{k}": float(v.mean()) for k, v in parts.items()}
    if cfg.posterior:
        out.shape_cov = fit.shape_posterior(cfg.landmark_noise).cpu().numpy().astype(np.float32)
    if crops is not None:  # back to the photo's pixels
        out.landmarks_px = out.landmarks_px / k[:, None, None] + origin[:, None]
        out.residual_px = out.residual_px / k
        out.focal = out.focal / k
    return out


def refine_faces(model, faces, pixels: dict[str, np.ndarray] | None = None, config: FitConfig | None = None,
                 photometric: PhotometricConfig | None = None, batch_size: int = 64) -> dict:
    """:func:`refine_photometric` for fitted :class:`~.encode.EncodedFace` s, in place (code,
    residual_px), in batches of about ``batch_size`` faces of one detector (a person's faces kept
    together: they share their shape). pixels: the decoded (H, W, 3) uint8 photo of each face's
    ``image`` (each face is read through its :func:`face_crop`); without it each face's own
    ``crop`` (an ingest's) is read, and faces without one are left as fitted. Returns the final
    energy's terms (``FitResult.terms``), each its mean over the refined faces ({} for none): how
    well the faces explain their photos (a photo's shading far from the model's raises
    "photometric" and lowers "shading_r2", the share of the photo's colour variance explained:
    :meth:`_PhotoFit.explained`)."""
    todo = [i for i, f in enumerate(faces) if pixels is not None or f.crop is not None]
    todo.sort(key=lambda i: (str(faces[i].detector), faces[i].person is None, str(faces[i].person), i))
    batches: list[list[int]] = []
    for i in todo:
        f, last = faces[i], faces[batches[-1][-1]] if batches else None
        same = last is not None and last.detector == f.detector
        if not batches or not same or (len(batches[-1]) >= batch_size
                                       and (f.person is None or f.person != last.person)):
            batches.append([])
        batches[-1].append(i)
    terms: dict[str, float] = {}
    count: dict[str, int] = {}
    for idx in batches:
        group = [faces[i] for i in idx]
        crops = [f.crop if pixels is None else face_crop(pixels[f.image], f.landmarks) for f in group]
        person = [f.person if f.person is not None else f"\0{i}" for i, f in zip(idx, group, strict=True)]
        res = refine_photometric(
            model, np.stack([f.code for f in group]), np.stack([f.landmarks for f in group]), [],
            person=np.array(person), config=config, photometric=photometric,
            focal=np.array([f.focal for f in group]), detector=group[0].detector, crops=crops,
            image_sizes=np.array([f.image_size for f in group], np.float64),
            focal_known=np.array([f.fitted_with_photo_focal(config) for f in group], bool))
        tissue_cov = None if res.shape_cov is None else model.soft_tissue_covariance(res.shape_cov)
        for j, (f, code, r) in enumerate(zip(group, res.codes, res.residual_px, strict=True)):
            f.code = code
            f.residual_px = float(r)
            if tissue_cov is not None:  # the refined fit's uncertainty replaces the landmark fit's
                f.tissue_cov = tissue_cov[j]
        for k, v in res.terms.items():
            if np.isfinite(v):  # (shading_r2: NaN for a batch without a face seen enough)
                terms[k] = terms.get(k, 0.0) + v * len(group)
                count[k] = count.get(k, 0) + len(group)
    return {k: v / count[k] for k, v in terms.items()}
