"""Batched fitting of face codes to 2D landmarks (paper Eq. 1 and Eq. 2).

For a batch of B faces with detected 68-point landmarks, find per face the shape α, expression
δ, pose θ (jaw; global and neck are left to the camera) and a perspective camera (rotation T,
translation t) minimizing

    E = w_lmk · mean_k ‖π(L_k) − l_k‖² / s²                  (reprojection)
      + w_edge · mean_(i,j)∈Del(l) (‖l_i − l_j‖ − ‖π(L_i) − π(L_j)‖)² / s²    (paper Eq. 1)
      + w_shape · Σ (α/σ_α)² + w_expr · Σ (δ/σ_δ)² + w_pose · Σ θ²          (regularizer)

with s the face's inter-ocular distance in pixels, Del(l) the Delaunay triangulation of the
detected landmarks, π the camera projection. E is a sum of squares, so the default solver is
Levenberg-Marquardt (:mod:`skullsearch.encoder.levenberg`: analytic Jacobians, one damped
Gauss-Newton system per face, all faces of the batch at once): a rigid stage (camera only, mean
face) from a closed-form depth, then all parameters together. It reaches a lower E than the
first-order schedule it replaced (``method="adam"``: rigid Adam steps, linear shape solves
alternating with camera steps, then Adam on everything; kept for comparison) in a fifth of the
CPU time. Multi-image fitting (Eq. 2): faces with the same person index share α (and δ if
asked), each photo keeps its camera and light; the solver eliminates each photo's own
parameters and takes the joint step of the person's shared ones.

Jaw-line landmarks 0–16 follow the silhouette ("landmark marching"): for each, a row of candidate
vertices across the cheek is projected and the outermost in the image is used, as 2D detectors
trained on 300-W mark the visible face boundary. Chin points 7–9 stay fixed.

The default weights were set with ``benchmarks/encoder_accuracy.py`` (see the README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from skullsearch.encoder import code as code_layout
from skullsearch.encoder import levenberg as lev
from skullsearch.encoder.lbs import axis_angle_to_matrix, lbs
from skullsearch.encoder.render import camera_yaw, largest_component, yaw_bins  # noqa: F401 (re-exported)
from skullsearch.errors import SkullsearchError

#: OpenCV camera axes from the face frame: x right, y down, z away from the camera.
_FLIP = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
#: Translation parameter unit of the Adam path, as a fraction of the starting depth (Adam
#: steps ≈ lr in parameter units: 0.1 makes a step of lr = 0.01 about 0.6 mm at 60 cm).
TRANS_STEP = 0.1
#: Contour landmarks that march along the silhouette (iBUG indices; subject's right first).
MARCHING = (0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15, 16)
#: The jaw joint (FLAME order: global, neck, jaw, eye_l, eye_r); the fit poses only the jaw.
JAW = 2


@dataclass
class FitConfig:
    """Settings of :func:`fit_landmarks`. Weights are dimensionless (distances in units of the
    face's inter-ocular distance)."""

    n_shape: int = 90
    n_expression: int = 90
    focal_factor: float = 1.2  # focal length = focal_factor × the image's longer side (px)
    # the photo's own focal length where its EXIF gives it (35 mm-equivalent, not cropped:
    # encoder.images.exif_focal_px) instead of focal_factor's guess; photos without one keep the
    # guess. Measured (synthetic: 40 photo-like renders of seed 7 taken as selfies, 19-35 cm from
    # the face, true focal 0.64-1.2 x the longer side; benchmarks/photometric_settings.py
    # --distance-scale 0.386 [--exif]): refined identity error 0.760 x the mean face's with the
    # guess, 0.670 x with EXIF — the guess's weaker perspective than a close photo's costs ~0.09;
    # the same renders as portraits 0.5-0.9 m away (true 1.7-3.1 x) lost 0.02 with EXIF
    # (0.657 -> 0.678 x) until dlib's jaw line was calibrated (jaw_calibration: 0.631 x; selfies
    # 0.648 x). A gallery stores it (photo_focal_px): persons --refit fits with it too.
    exif_focal: bool = True
    # move dlib's jaw line (iBUG 0-16) onto the model's silhouette by its calibrated offsets
    # (calibrate.calibrate_jaw: where dlib puts it on renders, against the perspective and the
    # yaw; jaw_corrected) before the fit, for the faces whose photo gives its focal length (EXIF;
    # fit_landmarks' detector= names whose points they are). dlib draws its jaw line inside the
    # silhouette, the more the farther the camera (median 0.06 inter-ocular distances within 0.6 m,
    # 0.11 beyond 1 m on 800 textured renders), and the fit, which puts those points on the
    # silhouette, narrows the face to meet them. Measured (synthetic; photometric_settings.py
    # --renders 40 --seed 7 --texture --camera-gamma 2.2 --shadows --exif [--distance-scale
    # 0.386]): refined identity error portraits 0.678 -> 0.631 x the mean face's, selfies 0.670 ->
    # 0.648 x (the jaw's exact points: 0.595 x). Under the guessed focal length the model's
    # silhouette is not the photo's and the offsets do not apply (applied there: portraits 0.657 ->
    # 0.683 x, selfies 0.760 -> 0.717 x; a table made for the guess, against the silhouette of the
    # true face under the camera a guessed fit places: 0.694 / 0.720 x): such faces keep dlib's
    # points. Models without the calibration file, and detectors whose contour is on the surface,
    # fit the points as detected.
    jaw_calibration: bool = True
    # weigh each of a detector's 68 points by its measured reliability: 1 / σ² (scaled to a mean
    # of 1), σ its scatter about the face model's point at the true camera on the jaw-line
    # calibration's 800 renders (calibrate.calibrate_jaw; dlib: jaw line 0.06-0.21 inter-ocular
    # distances as detected, 0.06-0.08 after its calibration, brows 0.08-0.10, nose bridge and
    # eyes 0.03-0.05), the jaw line's after its calibration where that is applied; the fit's
    # posterior counts each point's noise as σ_noise / √w; the photometric refinement weighs its
    # landmark term alike (PhotometricConfig.landmark_weights). Detectors without the measurement
    # (the mesh) and landmarks with no detector named keep equal weights. Off: it gains on
    # renders and on the real photos' consistency, not on the real CT head. Measured (the
    # guessed focal length): landmark fit, 40 textured renders of seed 7 0.950 -> 0.892 x the
    # mean face's error (photometric_settings.py --renders 40 --seed 7 --texture --camera-gamma
    # 2.2 --shadows --landmark-weights), 62 real photos of 7 persons same-person AUC from shape
    # codes 0.889 -> 0.912 (persons.py --photos DIR --shared 3 --landmark-weights; three photos
    # 0.947 -> 0.956), the real CT head 0.976 / 0.967 -> 1.026 / 0.978 x (rigid / similarity;
    # ct_encoder.py --detectors dlib --no-prior --landmark-weights); refined, the refinement
    # weighing alike: identity.py --persons 100 --photometric 0.708 -> 0.643 x (three photos
    # 0.648 -> 0.591 x; 300 persons 0.705 -> 0.651 x, 0.644 -> 0.595 x), the textured renders
    # 0.657 -> 0.648 x, but the real photos' AUC 0.886 -> 0.873 (three photos 0.978 -> 0.960)
    # and the CT head 0.791 / 0.839 -> 0.820 / 0.847 x;
    # the refinement unweighted (PhotometricConfig(landmark_weights=False)) ends where it ends
    # without the weights (0.708 x; CT 0.786 / 0.838 x; real photos 0.892)
    landmark_weights: bool = False
    w_landmark: float = 1.0
    w_edge: float = 3.0
    w_shape: float = 2e-4
    w_expression: float = 2e-4
    w_pose: float = 1e-3
    # a dense detector's points (fit_landmarks' dense=): their mean squared reprojection error
    # in IOD units, weighed like the 68 landmarks' (w_landmark = 1); 0 (the default) leaves them
    # out. Measured (benchmarks/dense_fit.py --faces 300, renders): points that follow the face
    # exactly take the identity error from 0.72x to 0.59x the mean face's at w 5, MediaPipe's
    # own change nothing (0.96x at 0, 0.97x at 1, 0.99x at 5): they do not follow identity
    w_dense: float = 0.0
    # dlib's points per yaw bin (calibrate.calibrate_pose_embedding; the LM path reads each photo's
    # from the bin of its camera's yaw after the rigid stage) instead of one static embedding.
    # Off by default: see the README's figures (benchmarks/identity.py --pose-embedding)
    pose_embedding: bool = False
    # dlib's static embedding as calibrated on textured renders (calibrate.calibrate_textured:
    # brows, lips and eyes painted where the model's source annotates them) instead of the
    # model's own (calibrated on untextured renders, where dlib sees no brows and puts them
    # ~6 mm low). See the README's figures (benchmarks/identity.py --textured-embedding)
    textured_embedding: bool = False
    # refine each fit with the photo's shading (encoder/photometric.py, PhotometricConfig's
    # defaults) where fit_faces has the face's crop (EncodedFace.crop: an ingest keeps one when
    # this is on). Off by default: about 1 s per face on one core, 100x the landmark fit
    photometric: bool = False
    # solver: "lm" Levenberg-Marquardt (lm_* below) or "adam" (the first-order schedule below)
    method: str = "lm"
    # LM schedule: 5 camera-only + 5 full iterations. benchmarks/encoder_accuracy.py --faces 96
    # --compare adam: 1.771 mm vs 1.838 mm (Adam), fit energy 0.00384 vs 0.00398, 7.2 vs 26.2 ms
    # CPU per face on one thread (encoder_speed.py --faces 256 --threads 1 --compare adam: 6.5
    # vs 25.3 ms); 5 full iterations leave every face within 0.05 % of its energy after 30 (4
    # seeds, also at 4 % noise and ±50° yaw)
    lm_rigid_iters: int = 5
    lm_iters: int = 5
    lm_damping: float = 1e-3  # starting λ of the Marquardt damping λ·diag(H), per person
    # Adam schedule (method="adam"): 40 rigid + 5 × (linear shape solve + 10 camera steps) + 100
    # full steps (was 80 + 3 × 30 + 100: the same identity error within 0.01 mm, 30 % less CPU)
    rigid_steps: int = 40
    alternations: int = 5  # linear (Gauss-Newton) shape solves, each followed by camera steps
    camera_steps: int = 10
    full_steps: int = 100
    lr_rigid: float = 0.05
    lr_full: float = 0.01
    share_expression: bool = False
    # fit uncertainty (posterior=True): each face's shape posterior from the final Gauss-Newton
    # system, with the model's own prior N(0, σ_α²) (or an identity prior's) and landmark noise
    # of landmark_noise × the inter-ocular distance per image coordinate (see shape_posterior;
    # a photometric refinement adds the shading's: PhotometricConfig.posterior_discount)
    posterior: bool = False
    landmark_noise: float = 0.03
    # the posterior of a person's photos sharing one shape: their errors are correlated (the
    # detector errs alike on one face, the shading misleads alike), so K photos count as
    # K / (1 + (K - 1) ρ) independent ones (the design effect of correlated samples): their
    # summed data information is divided by 1 + (K - 1) ρ; 0 counts them as independent. The
    # codes do not depend on it (see person_shape_covariance). 0.7 makes a person's shared
    # posterior as calibrated as one photo's on renders of seed 1 (fit_uncertainty.py
    # --per-person 3, 120 / 40 heads: median Mahalanobis² of the shared fit at ρ 0 / 0.6 / 0.8,
    # landmark fit 3.32 / 2.60 / 2.48 against one photo's 2.45, refined 3.30 / 2.22 / 2.07
    # against 2.15); on renders of seed 0 (identity.py) 3.51 → 2.68 (one photo 2.53), on the
    # real CT head's nine views 9.25 → 4.25 (one view 3.78), refined 22.5 → 5.55 (5.28);
    # likelihood rank-10 unchanged within noise (identity.py --matched-distractors)
    photo_correlation: float = 0.7
    device: str | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if not 0.0 <= self.photo_correlation < 1.0:
            raise SkullsearchError(f"FitConfig.photo_correlation is the correlation of one person's "
                                   f"photos' errors, in [0, 1): got {self.photo_correlation}")


@dataclass
class FitResult:
    """Per face: codes (B, 228) (layout in :mod:`skullsearch.encoder.code`), residual_px (B,)
    mean landmark reprojection error in pixels, landmarks_px (B, 68, 2) the fitted landmarks,
    focal (B,) px, history (iterations,) the batch's mean energy of the best state after each
    step (LM) or its loss before each step (Adam); shape_cov (B, S, S) float32 the posterior
    covariance of each face's shape coefficients (its person's, shared) when
    ``FitConfig.posterior`` (LM path, and the photometric refinement's own), else None; terms:
    the final energy's terms (batch means) by name where the fit reports them (the photometric
    refinement: landmarks, photometric, and the landmark term's parts landmarks_reprojection,
    landmarks_edges, landmarks_prior)."""

    codes: np.ndarray
    residual_px: np.ndarray
    landmarks_px: np.ndarray
    focal: np.ndarray
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    shape_cov: np.ndarray | None = None
    terms: dict[str, float] | None = None


class LandmarkRig:
    """The part of a face model that the 68 landmarks need, for fast batched fitting.

    Holds only the vertices under the landmarks and the silhouette candidates, with their shape,
    expression and pose bases, and the joints as a linear function of the coefficients.
    points: the 68 surface points (a detector's calibrated embedding, :mod:`.calibrate`);
    default the model's own. marching: the jaw line follows the silhouette (dlib's, trained on
    300-W, marks the visible face boundary); False: every landmark is a fixed surface point.
    yaw_edges: a pose-conditioned rig (:func:`.calibrate.calibrate_pose_embedding`): points holds
    68 per yaw bin (bin i: yaw_edges[i] ≤ yaw < yaw_edges[i + 1], degrees, positive showing the
    right cheek), and the Levenberg-Marquardt fit reads each photo's 68 from the bin of its
    camera's yaw after the rigid stage (the bin holding 0° before).
    """

    def __init__(self, model, n_shape: int, n_expression: int, device="cpu",
                 dtype=torch.float32, band_mm: float = 4.0, max_candidates: int = 16, points=None,
                 marching: bool = True, yaw_edges=None):
        pts = points if points is not None else model._landmarks68_points()
        #: yaw bins of a pose-conditioned rig: edges (n_bins + 1,) degrees, or None (one bin)
        self.yaw_edges = None if yaw_edges is None else np.asarray(yaw_edges, np.float64)
        self.n_bins = 1 if yaw_edges is None else len(self.yaw_edges) - 1
        #: the bin holding yaw 0 (the rigid stage's, and the one :meth:`points` callers read)
        self.center_bin = 0 if yaw_edges is None else int(yaw_bins(0.0, self.yaw_edges))
        #: the jaw-line landmarks that follow the silhouette (:data:`MARCHING`), or none: a
        #: detector whose contour points are fixed on the face's surface (a 3D mesh fit)
        self.marching = MARCHING if marching else ()
        if pts is None:
            raise ValueError("the face model has no 68-point landmarks")
        self.model = model
        self.n_shape = min(n_shape, model.n_shape)
        self.n_expression = min(n_expression, model.n_expression)
        faces = model.faces
        lm_corners = faces[pts.faces]  # (K, 3) vertex ids
        #: K: 68 (iBUG), or a dense detector's points (:func:`dense_rig_for`: fixed surface
        #: points, no silhouette candidates)
        self.n_points = len(lm_corners)
        if self.n_bins > 1 and (self.n_points != 68 * self.n_bins or not marching):
            raise ValueError(f"a pose-conditioned rig holds 68 marching landmarks per yaw bin "
                             f"({68 * self.n_bins}), not {self.n_points}")
        if self.n_points == 68 * self.n_bins:
            cand = contour_candidates(model, band_mm=band_mm, max_candidates=max_candidates)
        else:
            if marching:
                raise ValueError("only the 68 iBUG landmarks march along the silhouette")
            cand = np.zeros((0, 1), np.int64)
        ids, inverse = np.unique(np.concatenate([lm_corners.ravel(), cand.ravel()]),
                                 return_inverse=True)
        #: the model vertex of each of the rig's own vertices (n,)
        self.vertex_ids = ids
        self.lm_local = inverse[: lm_corners.size].reshape(-1, 3)
        self.cand_local = inverse[lm_corners.size:].reshape(cand.shape)  # (M, C)
        s, e = self.n_shape, self.n_expression
        t = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)  # noqa: E731
        self.v0 = t(model.v_template[ids])  # (n, 3)
        self.sdirs = t(model.shapedirs[ids, :, :s].reshape(-1, s))  # (3n, s)
        self.edirs = t(model.exprdirs[ids, :, :e].reshape(-1, e))
        jr = model.j_regressor.astype(np.float64)
        self.j0 = t(jr @ model.v_template)  # (J, 3)
        self.jsdirs = t(np.einsum("jv,vcs->jcs", jr, model.shapedirs[:, :, :s]).reshape(-1, s))
        self.jedirs = t(np.einsum("jv,vcs->jcs", jr, model.exprdirs[:, :, :e]).reshape(-1, e))
        pd = model.posedirs[ids]
        self.posedirs = t(pd.reshape(-1, pd.shape[2]).T) if np.any(pd) else None
        self.weights = t(model.weights[ids])
        self.parents = torch.as_tensor(model.parents, device=device)
        self.bary = t(pts.bary)  # (K, 3)
        self.shape_std = t(model.shape_std[:s])
        self.expr_std = t(model.expression_std[:e])
        self.n_joints = model.n_joints
        # the jaw-only fast path (points_jaw): the jaw's subtree weights, rest position, bases
        self.dirs_t = torch.cat([self.sdirs, self.edirs], 1).T.contiguous()  # (S+E, 3n)
        sub = {JAW}
        for j in range(self.n_joints):
            if int(model.parents[j]) in sub:
                sub.add(j)
        self.w_jaw = self.weights[:, sorted(sub)].sum(1) if self.n_joints > JAW else None
        if self.w_jaw is not None:
            self.jaw0 = self.j0[JAW]
            jd = torch.cat([self.jsdirs, self.jedirs], 1).reshape(self.n_joints, 3, -1)[JAW]
            self.jaw_dirs_t = jd.T.contiguous()  # (S+E, 3)
            self.jaw_posedirs = (None if self.posedirs is None
                                 else self.posedirs[9 * (JAW - 1): 9 * JAW].contiguous())  # (9, 3n)

    def bins_of(self, rot: torch.Tensor) -> torch.Tensor | None:
        """Each photo's yaw bin (B,) int64 from its camera rotations rot (B, 3, 3)
        (:func:`camera_rotation`); None for a rig of one bin."""
        if self.n_bins == 1:
            return None
        yaw = camera_yaw(rot.detach().cpu().numpy())  # (once per fit: the calibration's convention)
        return torch.as_tensor(yaw_bins(yaw, self.yaw_edges), device=rot.device)

    def points_jaw(self, shape, expression, jaw) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`points` for a pose that turns only the jaw (the fit's: the head's rotation is
        the camera's), jaw (B, 3) axis-angle. The other joints' skinning transforms are then the
        identity and each vertex's weights sum to 1, so posing blends one transform:
        v + w_jaw · (R (v − j) + j − v). The same points as :meth:`points` for a fraction of the
        work (the fit's hot path)."""
        posed = self.vertices_jaw(shape, expression, jaw)
        lm = (posed[:, self.lm_local] * self.bary[None, :, :, None]).sum(2)
        return lm, posed[:, self.cand_local]

    def vertices_jaw(self, shape, expression, jaw) -> torch.Tensor:
        """The rig's own vertices (:attr:`vertex_ids`) posed by a jaw-only pose (B, n, 3) mm
        (:meth:`points_jaw`'s; full skinning for a model without a jaw joint)."""
        if self.w_jaw is None:
            pose = torch.zeros(len(jaw), 3 * self.n_joints, dtype=jaw.dtype, device=jaw.device)
            pose[:, 3 * JAW: 3 * JAW + 3] = jaw
            return self.vertices(shape, expression, pose)
        b, n = shape.shape[0], len(self.v0)
        c = torch.cat([shape, expression], 1)
        v = self.v0 + (c @ self.dirs_t).reshape(b, n, 3)
        rot = axis_angle_to_matrix(jaw)  # (B, 3, 3)
        if self.jaw_posedirs is not None:
            eye = torch.eye(3, dtype=jaw.dtype, device=jaw.device)
            v = v + ((rot - eye).reshape(b, 9) @ self.jaw_posedirs).reshape(b, n, 3)
        pivot = (self.jaw0 + c @ self.jaw_dirs_t)[:, None]  # (B, 1, 3) the jaw joint
        moved = (v - pivot) @ rot.transpose(1, 2) + pivot
        return v + self.w_jaw[None, :, None] * (moved - v)

    def linearize(self, shape, expression, pose, pick):
        """The 68 landmarks as an affine function of [α, δ] at the current estimate.

        pick (B, 14) silhouette choices. Returns p (B, 68, 3) posed landmarks now and
        d (B, 68, 3, S+E) their derivatives, the skinning transforms held fixed (Gauss-Newton;
        the joints' own motion with the shape is left to the next iteration).
        """
        from skullsearch.encoder.lbs import rigid_transforms

        b, n = shape.shape[0], len(self.v0)
        v = self.v0 + (shape @ self.sdirs.T + expression @ self.edirs.T).reshape(b, n, 3)
        joints = self.j0 + (shape @ self.jsdirs.T + expression @ self.jedirs.T).reshape(b, -1, 3)
        posed, _ = lbs(v, pose, None, self.parents, self.weights, self.posedirs, joints=joints)
        rots = axis_angle_to_matrix(pose.reshape(b, self.n_joints, 3))
        _, skin = rigid_transforms(rots, joints, self.parents)
        rv = torch.einsum("vj,bjmn->bvmn", self.weights, skin[..., :3, :3])  # (B, n, 3, 3)
        dirs = torch.cat([self.sdirs, self.edirs], 1).reshape(n, 3, -1)  # (n, 3, P)
        # static landmarks: barycentric blends of their corners
        r_lm = (rv[:, self.lm_local] * self.bary[None, :, :, None, None]).sum(2)  # (B, 68, 3, 3)
        d_lm = (dirs[self.lm_local] * self.bary[:, :, None, None]).sum(1)  # (68, 3, P)
        p = (posed[:, self.lm_local] * self.bary[None, :, :, None]).sum(2)
        jac = r_lm @ d_lm[None]  # (B, 68, 3, P)
        if not self.marching:
            return p, jac
        cand = torch.as_tensor(self.cand_local, device=pick.device)[
            torch.arange(len(MARCHING), device=pick.device)[None], pick]  # (B, 14) vertex rows
        marching = list(MARCHING)
        p = p.clone()
        p[:, marching] = torch.gather(posed, 1, cand[..., None].expand(-1, -1, 3))
        jac[:, marching] = rv[torch.arange(b)[:, None], cand] @ dirs[cand]
        return p, jac

    def vertices(self, shape, expression, pose) -> torch.Tensor:
        """The rig's own vertices (:attr:`vertex_ids`) posed (B, n, 3) mm."""
        b, n = shape.shape[0], len(self.v0)
        v = self.v0 + (shape @ self.sdirs.T + expression @ self.edirs.T).reshape(b, n, 3)
        joints = self.j0 + (shape @ self.jsdirs.T + expression @ self.jedirs.T).reshape(b, -1, 3)
        posed, _ = lbs(v, pose, None, self.parents, self.weights, self.posedirs, joints=joints)
        return posed

    def points(self, shape, expression, pose) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed static landmarks (B, 68, 3) and silhouette candidates (B, M, C, 3), mm."""
        posed = self.vertices(shape, expression, pose)
        lm = (posed[:, self.lm_local] * self.bary[None, :, :, None]).sum(2)
        return lm, posed[:, self.cand_local]


def rig_for(model, n_shape: int = 90, n_expression: int = 90, device="cpu",
            dtype=torch.float32, detector: str | None = None, pose: bool = False,
            textured: bool = False) -> LandmarkRig:
    """A :class:`LandmarkRig` for the model and a detector's landmarks (its calibrated embedding
    where there is one, :func:`.embeddings.detector_points`, else the model's own; a jaw line that
    marches along the silhouette unless the detector's contour is fixed on the surface,
    :data:`.embeddings.SURFACE_CONTOUR`), built once per (sizes, device, dtype, embedding) and
    cached on the model. pose: the detector's pose-conditioned embedding
    (:func:`.embeddings.pose_points`, ``FitConfig.pose_embedding``) where the model has one.
    textured: the detector's static embedding calibrated on textured renders
    (:func:`.embeddings.textured_points`, ``FitConfig.textured_embedding``) where the model has
    one; a pose-conditioned embedding, where asked for and found, comes first."""
    from skullsearch.encoder.embeddings import SURFACE_CONTOUR, detector_points, pose_points, textured_points

    cache = model.__dict__.setdefault("_rig_cache", {})
    # dlib's alternative embeddings (None: the model's own detector), each read from disk once
    for kind, wanted, load in (("pose", pose, pose_points), ("textured", textured, textured_points)):
        if not wanted or detector in SURFACE_CONTOUR:
            continue
        det = detector or "dlib"
        found = model.__dict__.setdefault(f"_{kind}_points", {})
        if det not in found:
            found[det] = load(model, det)
        pts = found[det]
        if pts is not None:
            key = (kind, det, n_shape, n_expression, str(device), dtype)
            if key not in cache:
                cache[key] = LandmarkRig(model, n_shape, n_expression, device=device, dtype=dtype, points=pts,
                                         yaw_edges=getattr(pts, "yaw_edges", None))
            return cache[key]
    looked_up = model.__dict__.setdefault("_detector_points", {})  # (read from disk once)
    if detector not in looked_up:
        looked_up[detector] = detector_points(model, detector)
    points = looked_up[detector]
    marching = detector not in SURFACE_CONTOUR
    key = (n_shape, n_expression, str(device), dtype,
           None if points is None and marching else detector)
    if key not in cache:
        cache[key] = LandmarkRig(model, n_shape, n_expression, device=device, dtype=dtype, points=points,
                                 marching=marching)
    return cache[key]


def config_rig(model, cfg: FitConfig, detector: str | None = None, device=None) -> LandmarkRig:
    """:func:`rig_for` as ``cfg`` asks for it: its sizes, dtype, device (or ``device``) and
    embedding (``pose_embedding``, ``textured_embedding``)."""
    return rig_for(model, cfg.n_shape, cfg.n_expression, device=device or cfg.device or "cpu",
                   dtype=cfg.dtype, detector=detector, pose=cfg.pose_embedding,
                   textured=cfg.textured_embedding)


def dense_rig_for(model, detector: str, n_shape: int = 90, n_expression: int = 90, device="cpu",
                  dtype=torch.float32):
    """(rig, index): a :class:`LandmarkRig` over a dense detector's calibrated surface points
    and the indices (K,) of the detector's points it holds (:func:`.embeddings.dense_points`),
    or (None, None) when the model has no dense calibration for ``detector``. Cached on the model."""
    from skullsearch.encoder.embeddings import dense_points

    looked_up = model.__dict__.setdefault("_dense_points", {})
    if detector not in looked_up:
        looked_up[detector] = dense_points(model, detector)
    found = looked_up[detector]
    if found is None:
        return None, None
    cache = model.__dict__.setdefault("_rig_cache", {})
    key = ("dense", detector, n_shape, n_expression, str(device), dtype)
    if key not in cache:
        cache[key] = LandmarkRig(model, n_shape, n_expression, device=device, dtype=dtype,
                                 points=found.points, marching=False)
    return cache[key], found.index


def contour_candidates(model, band_mm: float = 4.0, max_candidates: int = 16) -> np.ndarray:
    """Vertex ids (14, C) of silhouette candidates for the :data:`MARCHING` landmarks.

    For each, the skin vertices at the landmark's height (±band_mm, mean face), on its side of
    the face, from the landmark forward to the front of the ear; padded with the vertex nearest
    the landmark itself.
    """
    import torch as _t

    with _t.no_grad():
        lm = model.landmarks68(batch_size=1)[0].double().numpy()
    v = model.v_template.astype(np.float64)
    skin_v = np.unique(model.faces[largest_component(model.faces)])
    out = np.empty((len(MARCHING), max_candidates), np.int64)
    eye_z = lm[36:48, 2].mean()
    for row, k in enumerate(MARCHING):
        p = lm[k]
        side = np.sign(p[0]) or 1.0
        nearest = int(np.argmin(np.linalg.norm(v - p, axis=1)))
        q = v[skin_v]
        sel = skin_v[(np.abs(q[:, 1] - p[1]) < band_mm) & (np.sign(q[:, 0]) == side)
                     & (q[:, 2] > min(p[2], eye_z) - 45.0) & (np.abs(q[:, 0]) > 0.5 * abs(p[0]))]
        if len(sel) > max_candidates - 1:  # keep the spread: evenly along depth
            sel = sel[np.argsort(v[sel, 2])][np.linspace(0, len(sel) - 1, max_candidates - 1).astype(int)]
        row_ids = np.concatenate([[nearest], sel])
        out[row] = np.resize(row_ids, max_candidates) if len(row_ids) else nearest
    return out


def camera_rotation(rotvec: torch.Tensor) -> torch.Tensor:
    """(B, 3) axis-angle → (B, 3, 3) rotation from the face frame to the OpenCV camera frame.
    A zero vector looks straight at the face."""
    return _FLIP.to(rotvec) @ axis_angle_to_matrix(rotvec)


def project(points: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor, focal: torch.Tensor,
            center: torch.Tensor) -> torch.Tensor:
    """Perspective projection. points (B, ..., 3) mm face frame; rot (B, 3, 3); trans (B, 3) mm;
    focal (B,) px; center (B, 2) px → (B, ..., 2) px."""
    shp = points.shape
    p = points.reshape(shp[0], -1, 3) @ rot.transpose(1, 2) + trans[:, None]
    uv = p[..., :2] / p[..., 2:3].clamp(min=1.0) * focal[:, None, None] + center[:, None]
    return uv.reshape(*shp[:-1], 2)


def select_silhouette(cand_uv: torch.Tensor) -> torch.Tensor:
    """(B, 14, C, 2) projected candidates → index (B, 14) of the outermost one per landmark
    (image x: subject's right side has the smaller x in a frontal photo)."""
    side = torch.tensor([-1.0 if k < 8 else 1.0 for k in MARCHING], device=cand_uv.device)
    return torch.argmax(cand_uv[..., 0] * side[None, :, None], dim=-1)


def model_landmarks_px(rig: LandmarkRig, shape, expression, pose, rot, trans, focal, center,
                       points=None):
    """The model's 68 landmarks in pixels (B, 68, 2), jaw line on the silhouette. points: the
    posed (landmarks, candidates) of :meth:`LandmarkRig.points` when already known."""
    if rig.n_bins > 1:
        raise ValueError("a pose-conditioned rig holds 68 landmarks per yaw bin: project one bin's "
                         "rig, or read the fit's landmarks_px")
    lm, cand = points if points is not None else rig.points(shape, expression, pose)
    uv = project(lm, rot, trans, focal, center)
    if not rig.marching:
        return uv
    cuv = project(cand, rot, trans, focal, center)  # (B, 14, C, 2)
    pick = select_silhouette(cuv.detach())
    chosen = torch.gather(cuv, 2, pick[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
    uv = uv.clone()
    uv[:, list(MARCHING)] = chosen
    return uv


def code_landmarks_px(rig: LandmarkRig, codes: torch.Tensor, focal: torch.Tensor, image_sizes: torch.Tensor
                      ) -> torch.Tensor:
    """The 68 landmarks (B, 68, 2) px of codes (B, 228) (:mod:`.code`: shape, expression, pose and
    camera; the rig's leading shape and expression coefficients) seen by their photo's camera:
    focal (B,) px, the principal point at the centre of image_sizes (B, 2) px (w, h).
    Differentiable in the codes."""
    from skullsearch.encoder import code as code_layout

    p = code_layout.split(codes)
    return model_landmarks_px(rig, p.shape[:, : rig.n_shape], p.expression[:, : rig.n_expression],
                              p.pose[:, : 3 * rig.n_joints], camera_rotation(p.cam_rot), p.cam_trans,
                              focal, image_sizes / 2)


def delaunay_edges(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges of each face's Delaunay triangulation, padded: (B, 68, 2) px → edges (B, Emax, 2)
    int64 and mask (B, Emax) bool."""
    from scipy.spatial import Delaunay

    edge_sets = []
    for pts in landmarks:  # scipy triangulates one point set at a time
        try:
            tri = Delaunay(pts).simplices
        except Exception:  # degenerate (all points on a line): no edge term for this face
            edge_sets.append(np.zeros((0, 2), np.int64))
            continue
        e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
        edge_sets.append(np.unique(np.sort(e, axis=1), axis=0))
    n = max(1, max(len(e) for e in edge_sets))
    edges = np.zeros((len(landmarks), n, 2), np.int64)
    mask = np.zeros((len(landmarks), n), bool)
    for i, e in enumerate(edge_sets):
        edges[i, : len(e)] = e
        mask[i, : len(e)] = True
    return edges, mask


def linear_shape_step(rig, lm2d, shape, expr, pose, rot, trans, focal, center, scale, cfg):
    """One Gauss-Newton step on [α, δ] per face, camera and pose fixed: returns new (α, δ).

    The perspective reprojection is made linear by multiplying through by the current depth:
    ((u − c) Z − f X) / Z_now, which is linear in the coefficients. Regularized normal
    equations, one (S+E)² system per face, solved in a batch.
    """
    with torch.no_grad():
        cand_uv = project(rig.points(shape, expr, pose)[1], rot, trans, focal, center)
        p, jac = rig.linearize(shape, expr, pose, select_silhouette(cand_uv))
        pc = p @ rot.transpose(1, 2) + trans[:, None]  # (B, 68, 3) camera frame
        jc = torch.einsum("bmn,bknp->bkmp", rot, jac)  # (B, 68, 3, P)
        z = pc[..., 2:3].clamp(min=1.0)  # (B, 68, 1)
        obs = lm2d - center[:, None]  # (B, 68, 2)
        f = focal[:, None, None]
        # residual r(x) = ((obs · Z) − f · XY) / Z_now, linear in x = [α, δ] around x_now
        x_now = torch.cat([shape, expr], 1)
        a = (obs[..., None] * jc[:, :, 2:3] - f[..., None] * jc[:, :, :2]) / z[..., None]  # (B,68,2,P)
        r0 = (obs * pc[..., 2:3] - f * pc[..., :2]) / z  # (B, 68, 2) at x_now
        a = a.reshape(len(a), -1, a.shape[-1]) / scale[:, None, None]
        r0 = r0.reshape(len(r0), -1) / scale[:, None]
        k = a.shape[1] / 2  # landmarks: the reprojection term is a mean over them
        prior = torch.cat([cfg.w_shape / rig.shape_std**2, cfg.w_expression / rig.expr_std**2])
        lhs = a.transpose(1, 2) @ a / k + torch.diag_embed(prior.expand(len(a), -1))
        # minimize |r0 + a (x - x_now)|²/k + Σ prior x²
        rhs = (a.transpose(1, 2) @ (a @ x_now[..., None] - r0[..., None]))[..., 0] / k
        x = torch.linalg.solve(lhs, rhs[..., None])[..., 0]
        return x[:, : rig.n_shape], x[:, rig.n_shape:]


def _init_camera(lm2d: torch.Tensor, rig: LandmarkRig, focal, center):
    """Depth from the ratio of the mean face's 3D to the photo's 2D landmark spread; x, y from
    the landmark centroid. Returns (rotvec (B, 3), trans (B, 3))."""
    b = lm2d.shape[0]
    zeros_s = torch.zeros(1, rig.n_shape, dtype=lm2d.dtype, device=lm2d.device)
    zeros_e = torch.zeros(1, rig.n_expression, dtype=lm2d.dtype, device=lm2d.device)
    lm3, _ = rig.points(zeros_s, zeros_e, torch.zeros(1, 3 * rig.n_joints, dtype=lm2d.dtype,
                                                      device=lm2d.device))
    lm3 = lm3[:, 68 * rig.center_bin: 68 * rig.center_bin + 68]  # (a pose-conditioned rig: yaw 0's)
    inner = list(range(17, 68))
    spread3 = (lm3[0, inner, :2] - lm3[0, inner, :2].mean(0)).norm(dim=-1).mean()
    c2 = lm2d[:, inner].mean(1)
    spread2 = (lm2d[:, inner] - c2[:, None]).norm(dim=-1).mean(1)
    z = focal * spread3 / spread2
    c3 = lm3[0, inner].mean(0)
    xy = (c2 - center) * z[:, None] / focal[:, None]
    trans = torch.stack([xy[:, 0] - c3[0], xy[:, 1] + c3[1], z + c3[2]], dim=1)
    return torch.zeros(b, 3, dtype=lm2d.dtype, device=lm2d.device), trans


def jaw_features(lm2d: torch.Tensor, focal: torch.Tensor, lo=None, hi=None):
    """What dlib's jaw-line offsets are calibrated against (:func:`.calibrate.calibrate_jaw`),
    from the detected points alone: landmarks (B, 68, 2) px, focal (B,) px → (X (B, 5): 1, u, s,
    s², s·u; the eye line's direction x̂ (B, 2) and its normal ŷ (B, 2, image-down for an
    upright face); the inter-ocular distance (B,) px). u: the log of the inner 51 points' mean
    distance from their centroid over the focal length (the face's angular size: the
    perspective, −log of the distance up to a constant); s: the nose tip's offset from the eyes'
    midpoint along the eye line in inter-ocular distances (the yaw, ±0.7 at ±40°). lo, hi (2,):
    u and s clipped to this range (the calibration's) when given. Invariant to the image's
    scale, place and roll."""
    re, le = lm2d[:, 36:42].mean(1), lm2d[:, 42:48].mean(1)
    d = le - re
    iod = d.norm(dim=-1).clamp(min=1.0)
    xh = d / iod[:, None]
    yh = torch.stack([-xh[:, 1], xh[:, 0]], dim=1)
    inner = lm2d[:, 17:68]
    spread = (inner - inner.mean(1, keepdim=True)).norm(dim=-1).mean(1)
    u = torch.log(spread / focal)
    s = ((lm2d[:, 30] - (re + le) / 2) * xh).sum(-1) / iod
    if lo is not None:
        u = u.clamp(float(lo[0]), float(hi[0]))
        s = s.clamp(float(lo[1]), float(hi[1]))
    return torch.stack([torch.ones_like(u), u, s, s * s, s * u], dim=1), xh, yh, iod


def jaw_corrected(lm2d: torch.Tensor, focal: torch.Tensor, bias) -> torch.Tensor:
    """Landmarks (B, 68, 2) px with the jaw line (0–16) moved by a detector's calibrated offsets
    (``bias``: an :class:`~.embeddings.JawBias`) to where the face model's silhouette (and
    chin) would put them: each point + iod · (X·β_x x̂ + X·β_y ŷ) (:func:`jaw_features`)."""
    x, xh, yh, iod = jaw_features(lm2d, focal, bias.feature_lo, bias.feature_hi)
    coef = torch.as_tensor(bias.coef, dtype=lm2d.dtype, device=lm2d.device)  # (2, 17, P)
    off = torch.einsum("bp,ckp->bck", x, coef)  # (B, 2, 17) inter-ocular distances
    shift = iod[:, None, None] * (off[:, 0, :, None] * xh[:, None] + off[:, 1, :, None] * yh[:, None])
    out = lm2d.clone()
    out[:, :17] = out[:, :17] + shift
    return out


def detector_jaw_bias(model, detector: str | None, cfg: FitConfig):
    """The jaw-line calibration to apply to ``detector``'s landmarks on ``model``
    (:func:`.embeddings.jaw_bias`, read from disk once per model and detector), or None: no
    detector named (the landmarks are taken as given, e.g. a face's exact points),
    ``cfg.jaw_calibration`` off, a detector whose contour is on the surface, or no calibration file."""
    if not detector or not cfg.jaw_calibration:
        return None
    return _jaw_file(model, detector)


def _jaw_file(model, detector: str):
    """:func:`.embeddings.jaw_bias`, read from disk once per model and detector."""
    from skullsearch.encoder.embeddings import jaw_bias

    cache = model.__dict__.setdefault("_jaw_bias", {})
    if detector not in cache:
        cache[detector] = jaw_bias(model, detector)
    return cache[detector]


def detector_point_sigma(model, detector: str | None, cfg: FitConfig):
    """The measured scatter of ``detector``'s 68 points on ``model`` for
    ``FitConfig.landmark_weights``: (as detected (68,), with the jaw line moved by its
    calibration (68,)) in inter-ocular distances (:func:`.calibrate.calibrate_jaw`, kept in the
    jaw-line calibration's file), or None: no detector named, the setting off, or not measured."""
    if not detector or not cfg.landmark_weights:
        return None
    bias = _jaw_file(model, detector)
    if bias is None or bias.sigma_raw is None:
        return None
    return bias.sigma_raw, bias.sigma_calibrated


def point_weights(sigma: torch.Tensor) -> torch.Tensor:
    """Each landmark's weight (B, 68) from its noise σ (B, 68) (any unit): 1/σ², scaled to a mean
    of 1 over the 68 (the landmark term's weight w_landmark keeps its meaning)."""
    w = sigma.clamp(min=1e-6) ** -2
    return w / w.mean(-1, keepdim=True)


def edge_weights(pw: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Each Delaunay edge's weight (B, E) from its end points' weights pw (B, 68) (mean 1): an
    edge's length errs by both ends' noise, σ_i² + σ_j², so 2 / (1/w_i + 1/w_j)."""
    wi = torch.gather(pw, 1, edges[..., 0])
    wj = torch.gather(pw, 1, edges[..., 1])
    return 2.0 / (1.0 / wi + 1.0 / wj)


def _observations(landmarks, image_sizes, focal, cfg, jaw=None, known=None, sigma=None):
    """The fit's fixed inputs as tensors: landmarks (B, 68, 2), focal (B,), image centre (B, 2),
    inter-ocular scale (B,) px, Delaunay edges (B, E, 2) with their mask (B, E) and lengths
    (B, E) px, and each landmark's weight (B, 68) (None: all 1). sigma: the detector's measured
    point scatter (:func:`detector_point_sigma`: as detected, and with the jaw line moved), whose
    inverse squares weigh the points (:func:`point_weights`), or None. jaw: a detector's
    jaw-line calibration (:func:`detector_jaw_bias`) that moves the jaw line first
    (:func:`jaw_corrected`) of the faces whose focal length is given (finite and positive: the
    photo's own; under the guess the model's silhouette is not the photo's, and the offsets
    measured against the true camera's do not apply; ``known`` (B,) bool, where given, says
    which faces' focal length is the photo's own instead), or None."""
    device, dt = cfg.device or "cpu", cfg.dtype
    lm2d = torch.as_tensor(np.asarray(landmarks, np.float64), dtype=dt, device=device)
    sizes = torch.as_tensor(np.asarray(image_sizes, np.float64), dtype=dt, device=device)
    f = cfg.focal_factor * sizes.max(dim=1).values
    own = torch.zeros(len(f), dtype=torch.bool, device=device)  # the photo's own focal length
    if focal is not None:  # (NaN or ≤ 0 where a photo's focal length is not known: the guess)
        given = torch.as_tensor(np.asarray(focal, np.float64), dtype=dt, device=device).reshape(-1)
        own = torch.isfinite(given) & (given > 0)
        f = torch.where(own, given, f)
    if known is not None:  # (a refinement's: its focal lengths are the fit's, guessed or not)
        own = torch.as_tensor(np.asarray(known, bool), device=device).reshape(-1)
    moved = own if jaw is not None else torch.zeros_like(own)
    if bool(moved.any()):  # (only where the camera is known: FitConfig.jaw_calibration)
        lm2d = torch.where(moved[:, None, None], jaw_corrected(lm2d, f, jaw), lm2d)
        landmarks = lm2d.detach().cpu().double().numpy()
    weights = None
    if sigma is not None:
        raw, cal = (torch.as_tensor(np.asarray(x, np.float64), dtype=dt, device=device) for x in sigma)
        weights = point_weights(torch.where(moved[:, None], cal, raw))
    scale = (lm2d[:, 36:42].mean(1) - lm2d[:, 42:48].mean(1)).norm(dim=-1).clamp(min=1.0)  # IOD px
    edges_np, mask_np = delaunay_edges(np.asarray(landmarks, np.float64))
    edges = torch.as_tensor(edges_np, device=device)
    emask = torch.as_tensor(mask_np, dtype=dt, device=device)
    return lm2d, f, sizes / 2, scale, edges, emask, _edge_lengths(lm2d, edges), weights


def fit_energy(model, landmarks: np.ndarray, image_sizes: np.ndarray, codes: np.ndarray,
               focal: np.ndarray | None = None, config: FitConfig | None = None,
               rig: LandmarkRig | None = None, detector: str | None = None) -> np.ndarray:
    """The fit's objective E (module docstring) per face (B,) at given codes (B, 228): the
    number :func:`fit_landmarks` minimizes, whichever method found the codes. Arguments as there."""
    cfg = config or FitConfig()
    device = cfg.device or "cpu"
    rig = rig or config_rig(model, cfg)
    obs = _observations(landmarks, image_sizes, focal, cfg, detector_jaw_bias(model, detector, cfg),
                        sigma=detector_point_sigma(model, detector, cfg))
    b = obs[0].shape[0]
    p = code_layout.split(torch.as_tensor(np.asarray(codes), dtype=cfg.dtype, device=device))
    prob = _LMProblem(rig, cfg, *obs, torch.arange(b, device=device), b)
    prob.bins = rig.bins_of(camera_rotation(p.cam_rot))  # (a pose-conditioned rig: each photo's bin)
    with torch.no_grad():
        energy, _ = prob.energy(dict(cam_rot=p.cam_rot, trans=p.cam_trans,
                                     jaw=p.pose[:, 3 * JAW: 3 * JAW + 3],
                                     shape=p.shape[:, : rig.n_shape],
                                     expr=p.expression[:, : rig.n_expression]))
    return energy.cpu().numpy()


def fit_landmarks(
    model,
    landmarks: np.ndarray,
    image_sizes: np.ndarray,
    person: np.ndarray | None = None,
    config: FitConfig | None = None,
    focal: np.ndarray | None = None,
    rig: LandmarkRig | None = None,
    init: np.ndarray | None = None,
    shape_prior: tuple[np.ndarray, np.ndarray] | None = None,
    dense: np.ndarray | None = None,
    dense_rig: LandmarkRig | None = None,
    detector: str | None = None,
) -> FitResult:
    """Fit face codes to 2D landmarks, all faces at once.

    model: a FaceModel with 68 landmarks; landmarks (B, 68, 2) px (iBUG order);
    image_sizes (B, 2) width, height px; person (B,) int: faces with the same value share their
    shape (paper Eq. 2), default all different; focal (B,) px, default (and where NaN) from the image size;
    init (B, 228) codes to start from (e.g. the CNN encoder's predictions: camera, shape,
    expression and jaw are taken from them, and the rigid stage is skipped);
    shape_prior: (mean (B, S'), std (B, S') or (S',)) in shape-coefficient units for the first
    S' ≤ S components: each face's shape prior N(mean, std²) instead of N(0, σ_α²) (a prediction
    of the face's shape from other evidence, e.g. :mod:`.identity_prior`); the fit starts there.
    Levenberg-Marquardt path only.
    dense: (B, K, 2) px a dense detector's points (x, y only) with dense_rig, the rig of their
    calibrated surface points (:func:`dense_rig_for`): one more term of the energy, weighed by
    ``FitConfig.w_dense`` (Levenberg-Marquardt path only; the posterior counts the 68 only).
    detector: whose detections the landmarks are: with ``FitConfig.jaw_calibration`` the jaw
    line of a detector calibrated for it on the model (dlib's on the default model,
    :func:`detector_jaw_bias`) is moved onto the model's silhouette first; None (the default)
    fits the landmarks as given (e.g. a face's exact points). :func:`~.encode.fit_faces` names
    each face's detector. Returns a :class:`FitResult` (landmarks_px and residual_px against the
    moved points).
    """
    from skullsearch.errors import SkullsearchError

    cfg = config or FitConfig()
    landmarks = _checked_landmarks(landmarks, cfg)
    if len(landmarks) == 0:
        return FitResult(codes=np.zeros((0, code_layout.CODE_SIZE), np.float32), residual_px=np.zeros(0),
                         landmarks_px=np.zeros((0, 68, 2)), focal=np.zeros(0))
    device = cfg.device or "cpu"
    rig = rig or config_rig(model, cfg)
    obs = _observations(landmarks, image_sizes, focal, cfg, detector_jaw_bias(model, detector, cfg),
                        sigma=detector_point_sigma(model, detector, cfg))
    b = obs[0].shape[0]
    person = np.arange(b) if person is None else np.asarray(person)
    _, person_idx = np.unique(person, return_inverse=True)
    n_person = int(person_idx.max()) + 1 if b else 0
    pidx = torch.as_tensor(person_idx, device=device)
    state = _initial_state(rig, cfg, obs, pidx, n_person, init)
    dense_obs = _dense_observations(dense, dense_rig, b, cfg)
    prior = None
    if shape_prior is not None:
        if cfg.method != "lm":
            raise SkullsearchError("a shape prior needs the Levenberg-Marquardt fit (FitConfig.method='lm')")
        prior = _shape_prior(shape_prior, state, pidx, n_person, b, rig, cfg, start=init is None)
    if cfg.method == "lm":
        return _fit_lm(rig, cfg, *obs, pidx, n_person, state, rigid=init is None, shape_prior=prior,
                       dense=dense_obs)
    if dense_obs is not None:
        raise SkullsearchError("dense points need the Levenberg-Marquardt fit (FitConfig.method='lm')")
    if rig.n_bins > 1:
        raise SkullsearchError("a pose-conditioned rig needs the Levenberg-Marquardt fit "
                               "(FitConfig.method='lm')")
    return _fit_adam(model, rig, cfg, obs, pidx, n_person, state, rigid=init is None)


def _dense_observations(dense, dense_rig, b: int, cfg: FitConfig):
    """(dense rig, (B, K, 2) tensor) for the fit, None without dense points (or with w_dense 0),
    or the error that says what is wrong."""
    from skullsearch.errors import SkullsearchError

    if dense is None or cfg.w_dense <= 0:
        return None
    if dense_rig is None:
        raise SkullsearchError("dense points need the rig of their surface points (dense_rig_for)")
    dense = np.asarray(dense, np.float64)
    if dense.shape != (b, dense_rig.n_points, 2):
        raise SkullsearchError(f"dense points must be (faces={b}, {dense_rig.n_points}, 2) pixel "
                               f"positions for this rig, not {dense.shape}")
    if not np.isfinite(dense).all():
        raise SkullsearchError("dense points hold NaN or infinite values")
    return dense_rig, torch.as_tensor(dense, dtype=cfg.dtype, device=cfg.device or "cpu")


def _checked_landmarks(landmarks, cfg: FitConfig) -> np.ndarray:
    """landmarks (B, 68, 2) as float64, or the error that says what is wrong."""
    from skullsearch.errors import SkullsearchError

    if cfg.method not in ("lm", "adam"):
        raise SkullsearchError(f"unknown fit method {cfg.method!r} in FitConfig: use 'lm' or 'adam'")
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise SkullsearchError(f"landmarks must be (faces, 68, 2) pixel positions, not {landmarks.shape}")
    bad = np.flatnonzero(~np.isfinite(landmarks).all((1, 2)))
    if len(bad):
        raise SkullsearchError(f"faces {bad[:10].tolist()} have NaN or infinite landmarks: leave them out "
                               "of the batch (the detectors never give such landmarks)")
    return landmarks


def _initial_state(rig, cfg: FitConfig, obs, pidx, n_person: int, init) -> dict:
    """The fit's starting state: the camera from the landmarks' spread (or ``init``'s codes,
    with their shape, expression and jaw), the mean face, closed jaw. Keys cam_rot, trans, jaw
    (B, 3), shape (n_person, S), expr (B or n_person, E)."""
    lm2d, f, center = obs[0], obs[1], obs[2]
    b, dt, device = lm2d.shape[0], lm2d.dtype, lm2d.device
    rot0, trans0 = _init_camera(lm2d, rig, f, center)
    n_expr_rows = n_person if cfg.share_expression else b
    shape = torch.zeros(n_person, rig.n_shape, dtype=dt, device=device)
    expr = torch.zeros(n_expr_rows, rig.n_expression, dtype=dt, device=device)
    jaw = torch.zeros(b, 3, dtype=dt, device=device)
    if init is not None:
        parts = code_layout.split(torch.as_tensor(np.asarray(init), dtype=dt, device=device))
        rot0, trans0 = parts.cam_rot.clone(), parts.cam_trans.clone()
        trans0[:, 2] = trans0[:, 2].clamp(min=50.0)
        counts0 = torch.bincount(pidx, minlength=n_person).clamp(min=1).to(dt)[:, None]
        shape += torch.zeros_like(shape).index_add_(0, pidx, parts.shape[:, : rig.n_shape]) / counts0
        e0 = parts.expression[:, : rig.n_expression]
        expr += (torch.zeros_like(expr).index_add_(0, pidx, e0) / counts0) if cfg.share_expression else e0
        jaw += parts.pose[:, code_layout.JAW_POSE]
    return dict(cam_rot=rot0, trans=trans0, jaw=jaw, shape=shape, expr=expr)


def _shape_prior(shape_prior, state: dict, pidx, n_person: int, b: int, rig, cfg: FitConfig, start: bool):
    """(mean (B, S'), std (B, S')) as tensors, checked; with start, the state's shape set to each
    person's mean prediction."""
    from skullsearch.errors import SkullsearchError

    dt, device = state["trans"].dtype, state["trans"].device
    mean, std = (torch.as_tensor(np.asarray(v, np.float64), dtype=dt, device=device) for v in shape_prior)
    k = mean.shape[1]
    if mean.shape[0] != b or k > rig.n_shape or not bool((std > 0).all()):
        raise SkullsearchError(f"shape_prior must be (mean ({b}, ≤{rig.n_shape}), std > 0), got "
                               f"mean {tuple(mean.shape)}")
    if start:  # start at the person's mean prediction
        counts0 = torch.bincount(pidx, minlength=n_person).clamp(min=1).to(dt)[:, None]
        sums = torch.zeros(n_person, k, dtype=dt, device=device).index_add_(0, pidx, mean)
        state["shape"][:, :k] = sums / counts0
    return mean, std.expand_as(mean)


def _fit_adam(model, rig, cfg: FitConfig, obs, pidx, n_person: int, state: dict, rigid: bool) -> FitResult:
    """The first-order schedule (``method="adam"``, kept for comparison): rigid Adam steps (when
    rigid), alternations of a linear shape solve and camera steps, then Adam on everything."""
    fit = _AdamFit(rig, cfg, obs, pidx, n_person, state)
    if rigid:
        fit.run([fit.cam_rot, fit.cam_off], cfg.rigid_steps, cfg.lr_rigid, rigid=True)
    for _ in range(cfg.alternations):
        fit.linear_shape_step()
        fit.run([fit.cam_rot, fit.cam_off, fit.jaw], cfg.camera_steps, cfg.lr_rigid * 0.5, rigid=False)
    fit.run([fit.cam_rot, fit.cam_off, fit.shape, fit.expr, fit.jaw], cfg.full_steps, cfg.lr_full,
            rigid=False, decay=True)
    return fit.result()


class _AdamFit:
    """The Adam path's parameters (leaf tensors) and energy. The translation is trans0 + z0 · off ·
    :data:`TRANS_STEP`, so that a step of lr moves the face by a fraction of its depth."""

    def __init__(self, rig, cfg: FitConfig, obs, pidx, n_person: int, state: dict):
        self.rig, self.cfg, self.pidx, self.n_person = rig, cfg, pidx, n_person
        self.lm2d, self.f, self.center, self.scale, self.edges, self.emask, self.obs_len, pw = obs
        b, dt, device = self.lm2d.shape[0], self.lm2d.dtype, self.lm2d.device
        self.b, self.dt, self.device = b, dt, device
        self.trans0 = state["trans"]
        self.z0 = self.trans0[:, 2:3].detach()
        self.cam_rot = state["cam_rot"].clone().requires_grad_(True)
        self.cam_off = torch.zeros(b, 3, dtype=dt, device=device, requires_grad=True)
        self.shape = state["shape"].requires_grad_(True)
        self.expr = state["expr"].requires_grad_(True)
        self.jaw = state["jaw"].requires_grad_(True)
        self.mean_points = None  # the rigid stage's face (mean shape, closed jaw): posed once
        #: optional weights of each landmark ((68,) or (B, 68)) and each face's edge (B, E) in
        #: :meth:`losses` (None: 1); noise_weight (B, 68): the detector's measured reliability
        #: alone (:func:`point_weights`), which the posterior reads
        self.noise_weight = pw
        self.point_weight = pw
        self.edge_weight = None if pw is None else edge_weights(pw, self.edges)
        self.history: list[float] = []

    def full_pose(self):
        pose = torch.zeros(self.b, 3 * self.rig.n_joints, dtype=self.dt, device=self.device)
        pose[:, 3 * JAW: 3 * JAW + 3] = self.jaw
        return pose

    def trans(self):
        return self.trans0 + TRANS_STEP * self.z0 * self.cam_off

    def face_expr(self):
        return self.expr[self.pidx] if self.cfg.share_expression else self.expr

    def losses(self, rigid: bool, robust: float = 0.0, parts: dict | None = None):
        """Per-face energy (B,) (the LM's, without the prior in the rigid stage) and uv (B, 68, 2).
        robust > 0: each landmark's and each edge's squared residual r² (inter-ocular units) counts
        as the Cauchy loss c² log(1 + r²/c²), c = robust (a point that disagrees with the rest of
        the evidence pulls less); 0: the least squares of Eq. 1. parts: a dict that gets the
        weighted terms (B,) each: "reprojection", "edges", "prior" (shape, expression and jaw)."""
        cfg, rig = self.cfg, self.rig
        s, e = self.shape[self.pidx], self.face_expr()
        rot = camera_rotation(self.cam_rot)
        if rigid:
            if self.mean_points is None:
                with torch.no_grad():
                    self.mean_points = rig.points(s * 0, e * 0, self.full_pose() * 0)
            points = self.mean_points
        else:
            points = rig.points_jaw(s, e, self.jaw)
        uv = model_landmarks_px(rig, None, None, None, rot, self.trans(), self.f, self.center, points=points)
        r2 = ((uv - self.lm2d) ** 2).sum(-1)  # (B, 68) px²
        e2 = (self.obs_len - _edge_lengths(uv, self.edges)) ** 2  # (B, E) px²
        if robust > 0:  # in inter-ocular units
            c2 = robust**2 * self.scale[:, None] ** 2
            r2, e2 = (c2 * torch.log1p(x / c2) for x in (r2, e2))
        if self.point_weight is not None:
            r2, e2 = r2 * self.point_weight, e2 * self.edge_weight
        reproj = r2.mean(1) / self.scale**2
        edge = (e2 * self.emask).sum(1) / self.emask.sum(1).clamp(min=1) / self.scale**2
        total = cfg.w_landmark * reproj + cfg.w_edge * edge
        prior = None
        if not rigid:
            prior = (cfg.w_shape * ((s / rig.shape_std) ** 2).sum(1)
                     + cfg.w_expression * ((e / rig.expr_std) ** 2).sum(1)
                     + cfg.w_pose * (self.jaw**2).sum(1))
            total = total + prior
        if parts is not None:
            parts.update(reprojection=cfg.w_landmark * reproj, edges=cfg.w_edge * edge,
                         prior=torch.zeros_like(reproj) if prior is None else prior)
        return total, uv

    def run(self, params, steps: int, lr: float, rigid: bool, decay: bool = False) -> None:
        if steps <= 0:
            return
        opt = Adam(params, lr=lr, cosine_steps=steps if decay else 0, eta_min=lr * 0.05)
        for _ in range(steps):
            opt.zero_grad()
            total, _ = self.losses(rigid=rigid)
            total.sum().backward()
            opt.step()
            self.history.append(float(total.detach().mean()))

    def linear_shape_step(self) -> None:
        """One Gauss-Newton solve of [α, δ] (:func:`linear_shape_step`); faces of one person share
        α (and δ when asked): their estimates are averaged."""
        pidx = self.pidx
        counts = torch.bincount(pidx, minlength=self.n_person).clamp(min=1).to(self.dt)[:, None]
        with torch.no_grad():
            new_s, new_e = linear_shape_step(
                self.rig, self.lm2d, self.shape[pidx], self.face_expr(), self.full_pose(),
                camera_rotation(self.cam_rot), self.trans(), self.f, self.center, self.scale, self.cfg)
            self.shape.copy_(torch.zeros_like(self.shape).index_add_(0, pidx, new_s) / counts)
            if self.cfg.share_expression:
                self.expr.copy_(torch.zeros_like(self.expr).index_add_(0, pidx, new_e) / counts)
            else:
                self.expr.copy_(new_e)

    def result(self) -> FitResult:
        with torch.no_grad():
            _, uv = self.losses(rigid=False)
            residual = (uv - self.lm2d).norm(dim=-1).mean(1)
            codes = code_layout.pack(shape=self.shape[self.pidx], expression=self.face_expr(),
                                     pose=self.full_pose(), cam_rot=self.cam_rot, cam_trans=self.trans())
        return FitResult(codes=codes.cpu().numpy().astype(np.float32), residual_px=residual.cpu().numpy(),
                         landmarks_px=uv.cpu().numpy(), focal=self.f.cpu().numpy(),
                         history=np.asarray(self.history))


def _fit_lm(rig, cfg, lm2d, f, center, scale, edges, emask, obs_len, point_w, pidx, n_person, state,
            rigid: bool, shape_prior=None, dense=None) -> FitResult:
    """The Levenberg-Marquardt schedule: cfg.lm_rigid_iters on the camera alone (mean face)
    when rigid, then cfg.lm_iters on everything."""
    prob = _LMProblem(rig, cfg, lm2d, f, center, scale, edges, emask, obs_len, point_w, pidx, n_person,
                      shape_prior, dense)
    history: list[float] = []
    with torch.no_grad():
        if rigid and cfg.lm_rigid_iters > 0:
            state, _ = prob.run(state, cfg.lm_rigid_iters, rigid=True, history=history)
        # a pose-conditioned rig: each photo's landmarks from the bin of its camera's yaw now
        prob.bins = rig.bins_of(camera_rotation(state["cam_rot"]))
        state, aux = prob.run(state, cfg.lm_iters, rigid=False, history=history)
        uv = aux["uv"]
        residual = (uv - lm2d).norm(dim=-1).mean(1)
        pose = torch.zeros(prob.b, 3 * rig.n_joints, dtype=lm2d.dtype, device=lm2d.device)
        pose[:, 3 * JAW: 3 * JAW + 3] = state["jaw"]
        e = state["expr"][pidx] if cfg.share_expression else state["expr"]
        codes = code_layout.pack(shape=state["shape"][pidx], expression=e, pose=pose,
                                 cam_rot=state["cam_rot"], cam_trans=state["trans"])
        cov = prob.shape_posterior(state, aux, cfg.landmark_noise) if cfg.posterior else None
    return FitResult(codes=codes.cpu().numpy().astype(np.float32), residual_px=residual.cpu().numpy(),
                     landmarks_px=uv.cpu().numpy(), focal=f.cpu().numpy(), history=np.asarray(history),
                     shape_cov=None if cov is None else cov.cpu().numpy().astype(np.float32))


def person_shape_covariance(h: torch.Tensor, n_local: int, jaw_prior: float, expr_std: torch.Tensor,
                            shape_sd: torch.Tensor, pidx: torch.Tensor, n_person: int,
                            n_shape: int, photo_correlation: float = 0.0) -> torch.Tensor:
    """Each face's shape posterior covariance (B, S, S) float64 from the faces' data information
    h (B, N, N) over [camera 6, jaw 3, δ E, α S] (δ among the face's own, the first n_local, or
    shared by its person's photos with α): the priors added — jaw_prior (information units) and
    1/expr_std² (E,) on each face's own, 1/shape_sd² (B, S) on the shared once per person (its
    photos' mean) — each face's own parameters eliminated (Schur complement), the person's
    information summed over its photos (pidx (B,) of n_person), inverted, and the α block read
    for each face. photo_correlation ρ: the correlation of a person's photos' errors — the
    person's summed data information is divided by 1 + (K − 1) ρ for its K photos (K photos count
    as K / (1 + (K − 1) ρ) independent ones; one photo is unchanged). Both fits'
    :meth:`shape_posterior` (:class:`_LMProblem`; the photometric refinement's)."""
    b = h.shape[0]
    h = h.clone()
    jaw_p = torch.full((b, 3), jaw_prior, dtype=h.dtype, device=h.device)
    expr_p = (1.0 / expr_std.to(h.dtype) ** 2).expand(b, -1)
    shape_p = 1.0 / shape_sd.to(h.dtype).expand(b, -1) ** 2
    # per-face prior on the face's own parameters; the shared ones' prior once per person
    own = torch.cat([jaw_p, expr_p], 1)[:, : n_local - 6]
    h.diagonal(dim1=1, dim2=2)[:, 6:n_local].add_(own)
    h.diagonal(dim1=1, dim2=2)[:, :6].add_(1e-9)
    a, bm, cm = h[:, :n_local, :n_local], h[:, :n_local, n_local:], h[:, n_local:, n_local:]
    info = cm - bm.transpose(1, 2) @ torch.linalg.solve(a, bm)  # (B, G, G)
    g = info.shape[1]
    person_info = info.new_zeros(n_person, g, g).index_add_(0, pidx, info)
    counts = torch.bincount(pidx, minlength=n_person).clamp(min=1).to(h.dtype)
    if photo_correlation:  # correlated photos: the design effect 1 + (K - 1) ρ
        person_info = person_info / (1.0 + (counts - 1.0) * photo_correlation)[:, None, None]
    shared_p = h.new_zeros(n_person, g).index_add_(
        0, pidx, torch.cat([expr_p, shape_p], 1)[:, -g:]) / counts[:, None]  # the photos' mean
    person_info.diagonal(dim1=1, dim2=2).add_(shared_p)
    cov = torch.linalg.inv(person_info)[:, -n_shape:, -n_shape:]
    return 0.5 * (cov + cov.transpose(1, 2))[pidx]


class _LMProblem:
    """The fit's energy and its Gauss-Newton pieces for one batch (the Levenberg-Marquardt path
    of :func:`fit_landmarks`; the linear algebra is in :mod:`skullsearch.encoder.levenberg`)."""

    def __init__(self, rig, cfg, lm2d, focal, center, scale, edges, emask, obs_len, point_w, pidx, n_person,
                 shape_prior=None, dense=None):
        self.rig, self.cfg = rig, cfg
        #: each landmark's weight (B, 68) (:func:`point_weights`) and per image coordinate
        #: (B, 136), None: 1; the edges' mask times their weights (B, E) (:func:`edge_weights`)
        self.point_w = point_w
        self.coord_w = None if point_w is None else point_w.repeat_interleave(2, dim=1)
        self.emask_w = emask if point_w is None else emask * edge_weights(point_w, edges)
        self.tables = lev.PointTables.of(rig)
        #: each photo's yaw bin (B,) in a pose-conditioned rig (:meth:`LandmarkRig.bins_of`; the
        #: bin of yaw 0 until the rigid stage has placed the camera), None otherwise
        self.bins = (None if rig.n_bins == 1 else
                     torch.full((lm2d.shape[0],), rig.center_bin, dtype=torch.long, device=lm2d.device))
        # a dense detector's points (dense rig, (B, K, 2) px), weighed as one term like the 68's
        self.dense = None
        if dense is not None:
            d_rig, d2d = dense
            self.dense = (lev.PointTables.of(d_rig), d2d)
            self.k_dense = math.sqrt(cfg.w_dense / d2d.shape[1]) / scale  # (B,)
            self.dense_rows = torch.arange(d2d.shape[1], device=d2d.device).expand(d2d.shape[0], -1)
        self.lm2d, self.focal, self.center, self.scale = lm2d, focal, center, scale
        self.edges, self.emask, self.obs_len = edges, emask, obs_len
        self.pidx, self.n_person = pidx, n_person
        self.b = lm2d.shape[0]
        self.bi = torch.arange(self.b, device=lm2d.device)[:, None]
        # residual weights: E = Σ r² is the fit's energy
        self.k_lmk = math.sqrt(cfg.w_landmark / 68) / scale  # (B,)
        self.k_edge = (cfg.w_edge / emask.sum(1).clamp(min=1)).sqrt() / scale  # (B,)
        # columns: camera rotation, translation, jaw (9), δ (E), α (S): each photo's own first
        prior = torch.cat([torch.full((3,), cfg.w_pose, dtype=lm2d.dtype, device=lm2d.device),
                           cfg.w_expression / rig.expr_std**2, cfg.w_shape / rig.shape_std**2])
        # per face (B, 3 + E + S): the prior's weights and its centre (zero, or a shape prior's mean)
        self.prior = prior.expand(self.b, -1).clone()
        self.prior_mean = torch.zeros_like(self.prior)
        # the shape prior's scale per face (B, S): the model's σ_α, or a shape prior's std
        self.shape_sd = rig.shape_std.expand(self.b, -1).clone()
        if shape_prior is not None:
            mean, std = shape_prior
            a0 = 3 + rig.n_expression
            self.prior[:, a0: a0 + mean.shape[1]] = cfg.w_shape / std**2
            self.prior_mean[:, a0: a0 + mean.shape[1]] = mean
            self.shape_sd[:, : mean.shape[1]] = std
        self.n_local = lev.N_RIGID + (0 if cfg.share_expression else rig.n_expression)

    def coeffs(self, st):
        e = st["expr"][self.pidx] if self.cfg.share_expression else st["expr"]
        return torch.cat([e, st["shape"][self.pidx]], 1)  # the tables' order [δ, α]

    def energy(self, st, rows=None):
        """Per-face energy (B,) and what the Jacobian needs at this state. rows (B, 68): the
        silhouette choice to use (:func:`levenberg.effective_rows`), default the outermost
        candidates at this state."""
        cfg, t = self.cfg, self.tables
        c = self.coeffs(st)
        pts, parts = t.forward(c, st["jaw"])
        rot = camera_rotation(st["cam_rot"])
        uv_all = project(pts, rot, st["trans"], self.focal, self.center)
        if rows is None:
            pick = (select_silhouette(uv_all[:, t.n_static:].reshape(self.b, len(MARCHING), t.n_cand, 2))
                    if self.rig.marching else uv_all.new_zeros(self.b, 0, dtype=torch.long))
            rows = lev.effective_rows(t, pick, self.rig.marching, self.bins)
        uv = uv_all[self.bi, rows]
        r2 = ((uv - self.lm2d) ** 2).sum(-1)
        reproj = (r2 if self.point_w is None else r2 * self.point_w).mean(1) / self.scale**2
        fit_len = _edge_lengths(uv, self.edges)
        edge = ((((self.obs_len - fit_len) ** 2) * self.emask_w).sum(1)
                / self.emask.sum(1).clamp(min=1))
        total = cfg.w_landmark * reproj + cfg.w_edge * edge / self.scale**2
        x = torch.cat([st["jaw"], c], 1)
        total = total + (self.prior * (x - self.prior_mean) ** 2).sum(1)
        aux = dict(c=c, pts=pts, parts=parts, rot=rot, rows=rows, uv=uv, fit_len=fit_len, x=x)
        if self.dense is not None:
            d_tables, d2d = self.dense
            aux["pts_d"], aux["parts_d"] = d_tables.forward(c, st["jaw"])
            aux["uv_d"] = project(aux["pts_d"], rot, st["trans"], self.focal, self.center)
            total = total + cfg.w_dense * ((aux["uv_d"] - d2d) ** 2).sum(-1).mean(1) / self.scale**2
        return total, aux

    def uv_jacobian(self, st, aux, rigid: bool, dense: bool = False) -> torch.Tensor:
        """d(landmark pixels)/d(parameters) (B, 136, N) at state st: N = 6 (rigid: camera only) or
        [camera 6, jaw 3, δ E, α S]; dense: the dense points' instead (B, 2K, N)."""
        if dense:
            tables, pe, parts, rows, marching = (self.dense[0], aux["pts_d"], aux["parts_d"],
                                                 self.dense_rows, ())
        else:
            tables, parts, rows, marching = self.tables, aux["parts"], aux["rows"], self.rig.marching
            pe = aux["pts"][self.bi, rows]  # (B, 68, 3)
        m, jcam = lev.projection_jacobian(pe, aux["rot"], st["cam_rot"], st["trans"], self.focal)
        if rigid:
            juv = jcam
        else:
            jl = lev.landmark_uv_jacobian(tables, st["jaw"], parts, rows, m, marching)
            juv = torch.cat([jcam, jl], -1)  # (B, K, 2, N)
        return juv.reshape(self.b, -1, juv.shape[-1])

    def normal_equations(self, st, aux, rigid: bool):
        """H (B, N, N) = JᵀJ (+ prior), g (B, N) = Jᵀr (+ prior · x): half the energy's Hessian
        (Gauss-Newton) and gradient; N = 6 (rigid: camera only) or 9 + S + E."""
        b = self.b
        juv = self.uv_jacobian(st, aux, rigid)
        k2 = (self.k_lmk[:, None] ** 2) * (1.0 if self.coord_w is None else self.coord_w)  # (B, 1 or 136)
        m_e, q = lev.edge_metric(aux["uv"], self.edges, self.emask_w, k2, self.k_edge,
                                 self.obs_len, aux["fit_len"])
        q = q + k2 * (aux["uv"] - self.lm2d).reshape(b, -1)
        jt = juv.transpose(1, 2)
        h = jt @ (m_e @ juv)
        g = (jt @ q[..., None])[..., 0]
        if self.dense is not None:  # a diagonal metric: k_dense² per coordinate
            jd = self.uv_jacobian(st, aux, rigid, dense=True) * self.k_dense[:, None, None]
            rd = (aux["uv_d"] - self.dense[1]).reshape(b, -1, 1) * self.k_dense[:, None, None]
            jdt = jd.transpose(1, 2)
            h = h + jdt @ jd
            g = g + (jdt @ rd)[..., 0]
        if not rigid:  # the prior's rows: jaw, δ, α (not the camera's 6)
            h.diagonal(dim1=1, dim2=2)[:, 6:].add_(self.prior)
            g[:, 6:] += self.prior * (aux["x"] - self.prior_mean)
        return h, g

    def shape_posterior(self, st, aux, noise: float) -> torch.Tensor:
        """Posterior covariance (B, S, S) of each face's shape coefficients at state st (its
        person's shared α; float64): the Laplace approximation (J_uvᵀ J_uv / σ² + P)⁻¹ around the
        fit, marginalized over the camera, jaw and expression.

        J_uv: the 136 landmark coordinates' Jacobian (the Delaunay edge terms are left out: they
        restate the same detections); σ = noise × the face's inter-ocular distance (px) per image
        coordinate; P: the model's own prior 1/σ_α² on shape (a shape prior's 1/std² where one was
        given) and 1/σ_δ² on expression, counted once per person, and the fit's jaw prior in the
        same noise units. Not the fit's own regularizer, which is stronger than the model's
        statistics. Each face's own parameters are eliminated (Schur complement), the person's
        information summed over its photos, then inverted.
        """
        rig = self.rig
        sigma = (noise * self.scale).double()  # (B,) px
        j = self.uv_jacobian(st, aux, rigid=False).double() / sigma[:, None, None]
        if self.coord_w is not None:  # a point of weight w errs by σ / √w
            j = j * self.coord_w.double().sqrt()[..., None]
        h = j.transpose(1, 2) @ j  # (B, N, N): [camera 6, jaw 3, δ E, α S]
        w_noise = self.cfg.w_landmark / 68 * noise**2  # the fit's energy units per σ²
        return person_shape_covariance(h, self.n_local, self.cfg.w_pose / w_noise, rig.expr_std,
                                       self.shape_sd, self.pidx, self.n_person, rig.n_shape,
                                       self.cfg.photo_correlation)

    def step(self, st, dl, dg, rigid: bool):
        """The state moved by a step from :func:`levenberg.solve_step`."""
        dt = st["trans"].dtype
        dl, dg = dl.to(dt), dg.to(dt)
        new = dict(st)
        new["cam_rot"] = st["cam_rot"] + dl[:, 0:3]
        new["trans"] = st["trans"] + dl[:, 3:6]
        if rigid:
            return new
        e = self.rig.n_expression
        new["jaw"] = st["jaw"] + dl[:, 6:9]
        if self.cfg.share_expression:
            new["expr"], new["shape"] = st["expr"] + dg[:, :e], st["shape"] + dg[:, e:]
        else:
            new["expr"], new["shape"] = st["expr"] + dl[:, 9: 9 + e], st["shape"] + dg
        return new

    def run(self, st, iters: int, rigid: bool, history: list):
        """iters Levenberg-Marquardt iterations from state st (dict of cam_rot, trans, jaw (B, 3),
        shape (n_person, S), expr (B or n_person, E)). Returns the best state seen (per person)
        and its energy pieces.

        The jaw-line landmarks' silhouette choice is discrete: a step that makes another
        candidate the outermost can change E by a jump that no step length removes. A step is
        therefore judged with the choice it was computed for (there E is smooth) and the choice
        is made again at the new state for the next step, as the gradient methods do at every
        step; a face on the edge between two choices can then alternate, so the best state
        seen is what is returned.
        """
        energy, aux = self.energy(st)
        best, best_p = st, lev.person_sum(energy.double(), self.pidx, self.n_person)
        n_local = 6 if rigid else self.n_local
        lam = torch.full((self.n_person,), self.cfg.lm_damping, dtype=torch.float64,
                         device=energy.device)
        for _ in range(iters):
            h, g = self.normal_equations(st, aux, rigid)
            dl, dg = lev.solve_step(h, g, lam, self.pidx, self.n_person, n_local)
            cand = self.step(st, dl, dg, rigid)
            e_new, _ = self.energy(cand, rows=aux["rows"])
            old_p = lev.person_sum(energy.double(), self.pidx, self.n_person)
            new_p = lev.person_sum(e_new.double(), self.pidx, self.n_person)
            better = torch.isfinite(new_p) & (new_p <= old_p)
            lam = torch.where(better, (lam * 0.3).clamp(min=1e-7), lam * 10.0)
            st = self._merge(cand, st, better)
            energy, aux = self.energy(st)  # the silhouette chosen again
            now_p = lev.person_sum(energy.double(), self.pidx, self.n_person)
            improved = now_p < best_p
            best, best_p = self._merge(st, best, improved), torch.where(improved, now_p, best_p)
            history.append(float(best_p.sum()) / self.b)
        if best is not st:
            energy, aux = self.energy(best)
        return best, aux

    def _merge(self, a: dict, b: dict, take_a: torch.Tensor) -> dict:
        """State with person p's values (its faces' and its shared ones) from a where
        take_a[p], else from b."""
        if bool(take_a.all()):
            return a
        if not bool(take_a.any()):
            return b
        face = take_a[self.pidx]

        def pick(x, y, k):
            return torch.where(k.reshape(-1, *([1] * (x.dim() - 1))), x, y)

        return {"cam_rot": pick(a["cam_rot"], b["cam_rot"], face),
                "trans": pick(a["trans"], b["trans"], face),
                "jaw": pick(a["jaw"], b["jaw"], face),
                "shape": pick(a["shape"], b["shape"], take_a),
                "expr": pick(a["expr"], b["expr"], take_a if self.cfg.share_expression else face)}


class Adam:
    """torch.optim.Adam's update (no weight decay, no amsgrad: the same operations as its
    single-tensor path), with an optional cosine-annealed learning rate (CosineAnnealingLR's
    recursion), without torch.optim: building a torch optimizer imports torch._dynamo, about
    1.5 s of CPU once per process, which a short ingest feels."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 cosine_steps: int = 0, eta_min: float = 0.0):
        self.params = list(params)
        self.base_lr = self.lr = lr
        self.b1, self.b2 = betas
        self.eps = eps
        self.cosine_steps = cosine_steps
        self.eta_min = eta_min
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        bc1 = 1 - self.b1**self.t
        bc2_sqrt = math.sqrt(1 - self.b2**self.t)
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(self.eps), value=-self.lr / bc1)
        if self.cosine_steps:  # the rate for the next step
            t, n = self.t, self.cosine_steps
            self.lr = ((1 + math.cos(math.pi * t / n)) / (1 + math.cos(math.pi * (t - 1) / n))
                       * (self.lr - self.eta_min) + self.eta_min)


def _edge_lengths(points: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) points, (B, E, 2) edge index pairs → (B, E) lengths."""
    a = torch.gather(points, 1, edges[..., 0:1].expand(-1, -1, 2))
    c = torch.gather(points, 1, edges[..., 1:2].expand(-1, -1, 2))
    return (a - c).norm(dim=-1)


def code_vertices(model, codes: np.ndarray | torch.Tensor, n_shape: int | None = None) -> torch.Tensor:
    """Face meshes of codes (B, 228) → (B, V, 3) mm in the face frame (camera not applied)."""
    codes = torch.as_tensor(codes, dtype=torch.float32)
    p = code_layout.split(codes)
    s = p.shape[:, : min(model.n_shape, code_layout.SLICES["shape"].stop)]
    e = p.expression[:, : min(model.n_expression, code_layout.N_EXPRESSION)]
    pose = p.pose[:, : 3 * model.n_joints]
    return model.vertices(shape=s, expression=e, pose=pose)


def camera_from_code(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes (B, 228) → camera rotation matrices (B, 3, 3) and translations (B, 3) mm."""
    p = code_layout.split(torch.as_tensor(codes, dtype=torch.float64))
    return camera_rotation(p.cam_rot).numpy(), p.cam_trans.numpy()


__all__ = ["FitConfig", "FitResult", "LandmarkRig", "fit_landmarks", "fit_energy", "code_vertices",
           "camera_from_code", "delaunay_edges", "project"]
