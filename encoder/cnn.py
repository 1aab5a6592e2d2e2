"""The paper's CNN encoder (GFMOFA): face crop → 228-float face code, trained self-supervised.

Pipeline
--------
1. **Crop** (:func:`crop_faces`). Each face box (x0, y0, x1, y1 px) becomes a square of side
   ``enlarge`` × max(box width, height) (default 1.4) around the box centre, resampled to
   ``size`` × ``size`` px (bilinear ``grid_sample``, supersampled then average-pooled when the crop
   shrinks the face, zeros outside the photo). A crop's ``transform`` (3,) = [scale, x0, y0] maps
   crop pixels to photo pixels: ``image = (x0, y0) + scale · crop`` (continuous pixel coordinates,
   pixel i covering [i, i + 1), the renderer's and detectors' convention).
   :func:`crop_to_image` / :func:`image_to_crop` convert landmarks.
2. **Network** (:class:`EncoderCNN`). VGG-style: per stage one 3×3 conv of stride 2 and
   ``convs_per_stage − 1`` 3×3 convs of stride 1, each conv–BatchNorm–ReLU; widths
   (default 32-64-128-256: 128 px → 8×8); global average pooling; one linear layer to 228 raw
   outputs (:meth:`EncoderCNN.forward`). Input: RGB in [0, 1].
3. **Decoding** (:meth:`EncoderCNN.decode`, :meth:`EncoderCNN.predict_codes`). The raw outputs sit
   in the slots of :mod:`skullsearch.encoder.code` and are read as

   - shape α = raw × σ_α (the model's prior std), the first ``n_shape`` = min(90, S) slots;
     expression δ = raw × σ_δ, the first ``n_expression`` = min(90, E) slots; other slots zero;
   - pose θ: the jaw (slots 6–8, axis-angle, radians) only; global and neck rotation are left to
     the camera and the eyes at zero, as in :func:`~skullsearch.encoder.fitting.fit_landmarks`;
   - camera rotation T: axis-angle (radians), as in :func:`~skullsearch.encoder.fitting.camera_rotation`;
   - camera translation, scale-free: (dx, dy, ds). The mean face's landmark centroid c (face
     frame, mm) is seen at crop point (size/2)·(1 + dx, 1 + dy), at depth
     z = z_ref · exp(ds), where z_ref = f · crop_mm / (crop side in photo px) and ``crop_mm`` =
     ``enlarge`` × the mean face's landmark extent (mm). Then, in the *full photo* frame with the
     principal point at the photo's centre and focal length f px,
     t = ((u − c_x) z / f, (v − c_y) z / f, z) − R(T) · c  (mm);
   - illumination γ: **not predicted**, left zero (the landmark loss cannot see it).

   The codes are therefore directly usable as ``fit_landmarks(..., init=codes)``. Everything is
   differentiable from the image pixels to the code (and through :func:`crop_faces` when the photo
   is a float tensor), which the inpainter's geometry loss (paper Eq. 5, Ψ_E) needs.

Loss (:func:`self_supervised_loss`)
-----------------------------------
Paper Eq. 1 on the predicted code, with the weights and normalization of
:class:`~skullsearch.encoder.fitting.FitConfig` (distances in units of the detected landmarks'
inter-ocular distance s):

    E = w_landmark · mean_k ‖π(L_k) − l_k‖² / s²
      + w_edge · mean_(i,j)∈Del(l) (‖l_i − l_j‖ − ‖π(L_i) − π(L_j)‖)² / s²
      + w_shape · Σ (α/σ_α)² + w_expression · Σ (δ/σ_δ)² + w_pose · Σ θ²
      [+ w_consistency · Σ ((α − ᾱ_person)/σ_α)²]                            (stage 2, Eq. 2)

Stage 2 (paper Eq. 2, one geometry per person) is made soft for a feed-forward network: when
person ids are given, each face's shape code is pulled to the mean shape code of the photos of
the same person in the batch, weight :data:`W_CONSISTENCY` = 1e-3 (a 1σ disagreement in one
component costs as much as a 0.03 s landmark misfit; 50× the shape prior's weight).
:func:`train_encoder` packs the photos of one person into the same batch.

Checkpoint (:func:`save_checkpoint`, :func:`load_checkpoint`)
-------------------------------------------------------------
One file written by ``torch.save`` (atomically: temp file + ``os.replace``), holding only
tensors and plain Python values so that it loads with ``torch.load(weights_only=True)``::

    {"format": "skullsearch-encoder-cnn", "version": 1,
     "state_dict": {...},                       # includes the prior std buffers
     "config": {"widths": [...], "convs_per_stage": 2, "input_size": 128, "enlarge": 1.4,
                "n_shape": 90, "n_expression": 52, "crop_mm": ..., "anchor_mm": [x, y, z]},
     "face_model_fingerprint": "<sha256 of the face model it was trained for>",
     "meta": {...}}                              # free JSON-like dict (epochs, history, ...)

Loading refuses (:class:`EncoderCheckpointError`) a file of another format or version, and one
trained for another face model when ``model`` is given.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.atomic import atomic_file
from skullsearch.encoder.checkpoints import read_checkpoint
from skullsearch.encoder.fitting import (
    FitConfig,
    LandmarkRig,
    _edge_lengths,
    camera_rotation,
    code_landmarks_px,
    delaunay_edges,
)
from skullsearch.errors import EncoderCheckpointError

_logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "skullsearch-encoder-cnn"
CHECKPOINT_VERSION = 1
#: Default backbone widths (one stride-2 stage each).
DEFAULT_WIDTHS: tuple[int, ...] = (32, 64, 128, 256)
#: Default crop enlargement around a face box.
ENLARGE = 1.4
#: Weight of the stage-2 (paper Eq. 2) shape-consistency term.
W_CONSISTENCY = 1e-3
#: Most edges a Delaunay triangulation of 68 points can have (3n − 6).
MAX_EDGES = 3 * 68 - 6
_JAW = slice(6, 9)
_INNER = list(range(17, 68))  # landmarks without the jaw line: the depth/position anchor


# ---------------------------------------------------------------------------------- cropping
def boxes_from_landmarks(landmarks) -> np.ndarray:
    """(N, 68, 2) px → (N, 4) x0, y0, x1, y1 px: the landmarks' bounding boxes (the sidecar
    detector's box convention)."""
    lm = np.asarray(landmarks, np.float64)
    return np.concatenate([lm.min(1), lm.max(1)], axis=1)


def crop_transforms(boxes, size: int = 128, enlarge: float = ENLARGE) -> np.ndarray:
    """(N, 4) boxes x0, y0, x1, y1 px → (N, 3) [scale, x0, y0] of the square crops:
    photo px = (x0, y0) + scale · crop px."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    side = enlarge * np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    side = np.maximum(side, 1.0)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return np.stack([side / size, cx - side / 2, cy - side / 2], axis=1)


def crop_to_image(points, transforms):
    """Crop px (N, K, 2) → photo px (N, K, 2). numpy or torch (the type of ``points``)."""
    t = _like(transforms, points)
    return points * t[:, None, 0:1] + t[:, None, 1:3]


def image_to_crop(points, transforms):
    """Photo px (N, K, 2) → crop px (N, K, 2). numpy or torch (the type of ``points``)."""
    t = _like(transforms, points)
    return (points - t[:, None, 1:3]) / t[:, None, 0:1]


def _like(x, ref):
    if torch.is_tensor(ref):
        return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    return np.asarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float64)


def _region_chw(img, r0: int, r1: int, c0: int, c1: int, device) -> torch.Tensor:
    """Rows r0:r1, columns c0:c1 of a (H, W, 3) photo, uint8 (0–255) or float in [0, 1], numpy
    or torch → (3, r1 − r0, c1 − c0) float32 in [0, 1] (keeps autograd for tensors)."""
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"a photo must be (H, W, 3), got {tuple(img.shape)}")
    if torch.is_tensor(img):
        t = img[r0:r1, c0:c1, :3].to(device)
        t = t.float() if t.is_floating_point() else t.float() / 255.0
    else:
        a = np.ascontiguousarray(img[r0:r1, c0:c1, :3])
        t = torch.from_numpy(a).to(device)
        t = t.float() / 255.0 if a.dtype == np.uint8 else t.float()
    return t.permute(2, 0, 1)


def crop_faces(pixels_list, boxes, size: int = 128, enlarge: float = ENLARGE,
               device: str | torch.device = "cpu", max_supersample: int = 4):
    """Square crops around face boxes, resampled in one batch.

    pixels_list: N photos (H_i, W_i, 3), uint8 (0–255) or float in [0, 1], numpy or torch (the
    same photo may appear several times, one per face; sizes may differ); or one (N, H, W, 3)
    array. boxes: (N, 4) x0, y0, x1, y1 px. The crop is ``enlarge`` × the box's longer side,
    centred on the box; outside the photo is zero. Only the pixels under each crop are read
    (copied into one zero-padded batch); a crop that shrinks the face by k is sampled k× finer
    (at most ``max_supersample``) and average-pooled (anti-aliasing); bilinear ``grid_sample``.

    Returns images (N, 3, size, size) float32 tensor in [0, 1] and transforms (N, 3) float32
    tensor [scale, x0, y0] (photo px = (x0, y0) + scale · crop px). Differentiable with respect
    to float tensor photos.
    """
    boxes = np.asarray(_np(boxes), np.float64).reshape(-1, 4)
    n = len(boxes)
    if len(pixels_list) != n:
        raise ValueError(f"{len(pixels_list)} photos for {n} boxes: give one photo per box")
    tr = crop_transforms(boxes, size, enlarge)
    if n == 0:
        return (torch.zeros(0, 3, size, size, device=device),
                torch.zeros(0, 3, dtype=torch.float32, device=device))
    hw = np.array([[p.shape[0], p.shape[1]] for p in pixels_list], np.int64)
    side = tr[:, 0] * size
    # the photo pixels under each crop, with a 1 px margin for the bilinear taps
    c0 = np.clip(np.floor(tr[:, 1]).astype(np.int64) - 1, 0, hw[:, 1])
    r0 = np.clip(np.floor(tr[:, 2]).astype(np.int64) - 1, 0, hw[:, 0])
    c1 = np.clip(np.ceil(tr[:, 1] + side).astype(np.int64) + 1, c0, hw[:, 1])
    r1 = np.clip(np.ceil(tr[:, 2] + side).astype(np.int64) + 1, r0, hw[:, 0])
    bh, bw = max(int((r1 - r0).max()), 1), max(int((c1 - c0).max()), 1)
    buf = torch.zeros(n, 3, bh, bw, dtype=torch.float32, device=device)
    for i, img in enumerate(pixels_list):  # memory copies only; the resampling is batched
        if r1[i] > r0[i] and c1[i] > c0[i]:
            buf[i, :, : r1[i] - r0[i], : c1[i] - c0[i]] = _region_chw(img, r0[i], r1[i], c0[i],
                                                                     c1[i], device)
    ss = int(min(max(math.ceil(float(tr[:, 0].max()) - 1e-6), 1), max_supersample))
    m = size * ss
    u = (torch.arange(m, dtype=torch.float64, device=device) + 0.5) / ss  # crop px
    t = torch.as_tensor(tr, dtype=torch.float64, device=device)
    off = torch.as_tensor(np.stack([c0, r0], 1), dtype=torch.float64, device=device)
    # photo px → buffer px → grid_sample's [-1, 1] (align_corners=False: ±1 are the outer edges)
    gx = ((t[:, None, 1] - off[:, None, 0] + t[:, None, 0] * u[None]) * (2.0 / bw) - 1.0).float()
    gy = ((t[:, None, 2] - off[:, None, 1] + t[:, None, 0] * u[None]) * (2.0 / bh) - 1.0).float()
    grid = torch.stack([gx[:, None, :].expand(-1, m, -1), gy[:, :, None].expand(-1, -1, m)], -1)
    # samples outside the photo but inside the buffer read the buffer's zeros: outside = 0
    crops = F.grid_sample(buf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if ss > 1:
        crops = F.avg_pool2d(crops, ss)
    return crops, torch.as_tensor(tr, dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------------- network
class EncoderCNN(nn.Module):
    """VGG-style image → face-code encoder (see the module docstring).

    Build one for a face model with :meth:`for_model`; the constructor takes the plain
    configuration stored in a checkpoint (:attr:`config`).
    """

    def __init__(self, n_shape: int, n_expression: int, widths: Sequence[int] = DEFAULT_WIDTHS,
                 convs_per_stage: int = 2, input_size: int = 128, enlarge: float = ENLARGE,
                 crop_mm: float = 200.0, anchor_mm: Sequence[float] = (0.0, 0.0, 0.0),
                 face_model_fingerprint: str = ""):
        super().__init__()
        if not widths or convs_per_stage < 1:
            raise ValueError("EncoderCNN needs at least one stage and one conv per stage")
        n_shape = min(int(n_shape), code_layout.SLICES["shape"].stop)
        n_expression = min(int(n_expression), code_layout.N_EXPRESSION)
        self.config = {
            "widths": [int(w) for w in widths], "convs_per_stage": int(convs_per_stage),
            "input_size": int(input_size), "enlarge": float(enlarge),
            "n_shape": n_shape, "n_expression": n_expression, "crop_mm": float(crop_mm),
            "anchor_mm": [float(a) for a in anchor_mm],
        }
        self.face_model_fingerprint = str(face_model_fingerprint)
        layers: list[nn.Module] = []
        c_in = 3
        for w in self.config["widths"]:
            for k in range(convs_per_stage):
                layers += [nn.Conv2d(c_in, w, 3, stride=2 if k == 0 else 1, padding=1, bias=False),
                           nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, code_layout.CODE_SIZE)
        with torch.no_grad():  # start near the mean face, frontal, centred, at the reference depth
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
        self.register_buffer("shape_std", torch.ones(n_shape))
        self.register_buffer("expression_std", torch.ones(n_expression))
        self.register_buffer("anchor", torch.tensor(self.config["anchor_mm"], dtype=torch.float32))

    @classmethod
    def for_model(cls, model, widths: Sequence[int] = DEFAULT_WIDTHS, convs_per_stage: int = 2,
                  input_size: int = 128, enlarge: float = ENLARGE) -> EncoderCNN:
        """A fresh encoder for a FaceModel (with 68 landmarks): prior std, anchor and reference
        crop width taken from the model, its fingerprint recorded."""
        with torch.no_grad():
            lm = model.landmarks68(batch_size=1)[0].double().numpy()  # mean face (68, 3) mm
        extent = float(np.max(lm[:, :2].max(0) - lm[:, :2].min(0)))
        net = cls(model.n_shape, model.n_expression, widths, convs_per_stage, input_size, enlarge,
                  crop_mm=enlarge * extent, anchor_mm=lm[_INNER].mean(0).tolist(),
                  face_model_fingerprint=model.fingerprint)
        with torch.no_grad():
            net.shape_std.copy_(torch.as_tensor(model.shape_std[: net.n_shape]))
            net.expression_std.copy_(torch.as_tensor(model.expression_std[: net.n_expression]))
        return net

    @property
    def n_shape(self) -> int:
        return self.config["n_shape"]

    @property
    def n_expression(self) -> int:
        return self.config["n_expression"]

    @property
    def input_size(self) -> int:
        return self.config["input_size"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) RGB in [0, 1] → (N, 228) raw head outputs (see :meth:`decode`)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, S, S), got {tuple(images.shape)}")
        x = self.features((images - 0.5) * 4.0)
        return self.head(x.mean(dim=(2, 3)))

    def decode(self, raw: torch.Tensor, transforms, image_sizes, focal=None,
               crop_size: int | None = None, focal_factor: float = FitConfig.focal_factor):
        """Raw outputs (N, 228) → face codes (N, 228) in the layout of
        :mod:`skullsearch.encoder.code`, camera in the full photo's frame (principal point at the
        photo's centre).

        transforms: (N, 3) [scale, x0, y0] of the crops; image_sizes: (N, 2) width, height px;
        focal: (N,) or scalar px, default ``focal_factor`` × the photo's longer side (as
        :func:`fit_landmarks`); crop_size: the crops' side in px (default the net's input size).
        """
        dev, dt = raw.device, raw.dtype
        n = raw.shape[0]
        size = float(crop_size or self.input_size)
        tr = torch.as_tensor(_np(transforms), dtype=dt, device=dev).reshape(n, 3)
        sizes = torch.as_tensor(_np(image_sizes), dtype=dt, device=dev).reshape(n, 2)
        f = _focal(focal, sizes, focal_factor)
        p = code_layout.split(raw)
        shape = p.shape[:, : self.n_shape] * self.shape_std
        expression = p.expression[:, : self.n_expression] * self.expression_std
        pose = F.pad(p.pose[:, _JAW], (_JAW.start, p.pose.shape[1] - _JAW.stop))  # jaw only
        rotvec = p.cam_rot
        dx, dy, ds = p.cam_trans.unbind(-1)
        half = tr[:, 0] * size / 2  # half the crop's side, photo px
        u = tr[:, 1] + half * (1 + dx)
        v = tr[:, 2] + half * (1 + dy)
        z = f * self.config["crop_mm"] / (2 * half) * torch.exp(ds)
        center = sizes / 2
        pc = torch.stack([(u - center[:, 0]) * z / f, (v - center[:, 1]) * z / f, z], 1)
        trans = pc - camera_rotation(rotvec) @ self.anchor.to(dt)
        return code_layout.pack(shape=shape, expression=expression, pose=pose, cam_rot=rotvec,
                                cam_trans=trans, batch_size=n)

    def predict_codes(self, images: torch.Tensor, transforms, image_sizes, focal=None,
                      focal_factor: float = FitConfig.focal_factor) -> torch.Tensor:
        """Crops (N, 3, S, S) in [0, 1] with their transforms (N, 3) → codes (N, 228) (torch,
        differentiable; call ``eval()`` first for inference). See :meth:`decode`."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            raise ValueError(f"this encoder takes {self.input_size}×{self.input_size} crops, got "
                             f"{tuple(images.shape[-2:])}: crop with crop_faces(..., size="
                             f"{self.input_size})")
        return self.decode(self(images), transforms, image_sizes, focal,
                           crop_size=images.shape[-1], focal_factor=focal_factor)


def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)


def _focal(focal, sizes: torch.Tensor, focal_factor: float) -> torch.Tensor:
    if focal is None:
        return focal_factor * sizes.max(dim=1).values
    f = torch.as_tensor(_np(focal), dtype=sizes.dtype, device=sizes.device).reshape(-1)
    return f.expand(len(sizes)) if f.numel() == 1 else f


@torch.no_grad()
def encode_faces(net: EncoderCNN, pixels_list, boxes, image_sizes=None, focal=None,
                 batch_size: int = 64, focal_factor: float = FitConfig.focal_factor) -> np.ndarray:
    """Inference convenience: photos + face boxes → codes (N, 228) float32 numpy.

    pixels_list and boxes as :func:`crop_faces`; image_sizes (N, 2) width, height (default the
    photos' sizes); focal (N,) px (default ``focal_factor`` × longer side). Eval mode, batched.
    """
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if image_sizes is None:
        image_sizes = np.array([[p.shape[1], p.shape[0]] for p in pixels_list], np.float64)
    sizes = np.asarray(image_sizes, np.float64).reshape(-1, 2)
    f = _focal(focal, torch.as_tensor(sizes), focal_factor).numpy()
    out = np.zeros((len(boxes), code_layout.CODE_SIZE), np.float32)
    for a in range(0, len(boxes), batch_size):
        sl = slice(a, a + batch_size)
        imgs, tr = crop_faces(pixels_list[sl], boxes[sl], net.input_size, net.config["enlarge"],
                              device=dev)
        out[sl] = net.predict_codes(imgs, tr, sizes[sl], f[sl]).cpu().numpy()
    net.train(was_training)
    return out


def encode_detected(net: EncoderCNN, faces, pixels: dict, batch_size: int = 64) -> np.ndarray:
    """:func:`encode_faces` on a detector's faces (each with ``image``, ``box`` and
    ``image_size``, as :class:`~skullsearch.encoder.detectors.Face`): their photos' pixels are
    looked up by path in ``pixels`` ({path: (H, W, 3) uint8}). → codes (N, 228) float32."""
    if not len(faces):
        return np.zeros((0, code_layout.CODE_SIZE), np.float32)
    return encode_faces(net, [pixels[f.image] for f in faces], np.stack([f.box for f in faces]),
                        image_sizes=np.array([f.image_size for f in faces], np.float64),
                        batch_size=batch_size)


# ---------------------------------------------------------------------------------- loss
@dataclass
class EncoderLoss:
    """Per face (B,) tensors: total and its terms (already weighted)."""

    total: torch.Tensor
    landmark: torch.Tensor
    edge: torch.Tensor
    regularizer: torch.Tensor
    consistency: torch.Tensor

    def means(self) -> dict[str, float]:
        """The batch means as floats."""
        return {k: float(getattr(self, k).detach().mean())
                for k in ("total", "landmark", "edge", "regularizer", "consistency")}


def landmark_edges(landmarks_px) -> tuple[np.ndarray, np.ndarray]:
    """Delaunay edges of detected landmarks padded to :data:`MAX_EDGES`:
    (N, 68, 2) px → edges (N, 198, 2) int64, mask (N, 198) bool."""
    lm = np.asarray(_np(landmarks_px), np.float64)
    e, m = delaunay_edges(lm)
    edges = np.zeros((len(lm), MAX_EDGES, 2), np.int64)
    mask = np.zeros((len(lm), MAX_EDGES), bool)
    k = min(e.shape[1], MAX_EDGES)
    edges[:, :k], mask[:, :k] = e[:, :k], m[:, :k]
    return edges, mask


def shape_consistency(shape: torch.Tensor, person, shape_std: torch.Tensor) -> torch.Tensor:
    """Stage-2 term per face (B,): Σ_k ((α_ik − ᾱ_p(i),k) / σ_k)², ᾱ_p the mean shape code of the
    faces with the same person id in the batch. Zero for a person seen once."""
    pid = torch.as_tensor(np.unique(_np(person), return_inverse=True)[1], device=shape.device)
    pid = pid.reshape(-1)
    n_p = int(pid.max()) + 1 if len(pid) else 0
    counts = torch.bincount(pid, minlength=n_p).clamp(min=1).to(shape.dtype)[:, None]
    mean = torch.zeros(n_p, shape.shape[1], dtype=shape.dtype, device=shape.device)
    mean = mean.index_add(0, pid, shape) / counts
    return (((shape - mean[pid]) / shape_std) ** 2).sum(1)


def self_supervised_loss(model_rig: LandmarkRig, codes: torch.Tensor, landmarks_px, image_sizes,
                         focal=None, cfg: FitConfig | None = None, person=None, edges=None,
                         w_consistency: float = W_CONSISTENCY) -> EncoderLoss:
    """Paper Eq. 1 (and Eq. 2's consistency when ``person`` is given) on predicted codes.

    model_rig: a :class:`LandmarkRig` of the face model; codes (B, 228) (full-photo camera);
    landmarks_px (B, 68, 2) detected landmarks in photo px; image_sizes (B, 2) width, height;
    focal (B,) px (default ``cfg.focal_factor`` × longer side); cfg: the weights
    (:class:`FitConfig`); person (B,) ids or None; edges: precomputed ``(edges (B, E, 2),
    mask (B, E))`` Delaunay edges of the landmarks (:func:`landmark_edges`), else computed here.
    Returns an :class:`EncoderLoss` of per-face (B,) tensors.
    """
    cfg = cfg or FitConfig()
    dev, dt = codes.device, codes.dtype
    lm2d = torch.as_tensor(_np(landmarks_px), dtype=dt, device=dev)
    b = lm2d.shape[0]
    sizes = torch.as_tensor(_np(image_sizes), dtype=dt, device=dev).reshape(b, 2)
    f = _focal(focal, sizes, cfg.focal_factor)
    p = code_layout.split(codes)
    s = p.shape[:, : model_rig.n_shape]
    e = p.expression[:, : model_rig.n_expression]
    pose = p.pose[:, : 3 * model_rig.n_joints]
    uv = code_landmarks_px(model_rig, codes, f, sizes)
    scale2 = ((lm2d[:, 36:42].mean(1) - lm2d[:, 42:48].mean(1)).norm(dim=-1).clamp(min=1.0)) ** 2
    reproj = ((uv - lm2d) ** 2).sum(-1).mean(1) / scale2
    if edges is None:
        edges = landmark_edges(lm2d.detach().cpu().numpy())
    ed = torch.as_tensor(edges[0], device=dev).long()
    em = torch.as_tensor(edges[1], device=dev).to(dt)
    edge = (((_edge_lengths(lm2d, ed) - _edge_lengths(uv, ed)) ** 2) * em).sum(1)
    edge = edge / em.sum(1).clamp(min=1) / scale2
    reg = (cfg.w_shape * ((s / model_rig.shape_std.to(dev, dt)) ** 2).sum(1)
           + cfg.w_expression * ((e / model_rig.expr_std.to(dev, dt)) ** 2).sum(1)
           + cfg.w_pose * (pose**2).sum(1))
    cons = torch.zeros(b, dtype=dt, device=dev)
    if person is not None and w_consistency:
        cons = w_consistency * shape_consistency(s, person, model_rig.shape_std.to(dev, dt))
    lmk, edg = cfg.w_landmark * reproj, cfg.w_edge * edge
    return EncoderLoss(lmk + edg + reg + cons, lmk, edg, reg, cons)


# ---------------------------------------------------------------------------------- data
class FaceCropDataset(torch.utils.data.Dataset):
    """Crops with their labels, one dict per face: ``image`` (3, S, S), ``landmarks_px`` (68, 2)
    photo px, ``transform`` (3,), ``image_size`` (2,), ``focal`` (), ``edges`` (198, 2),
    ``edge_mask`` (198,). A Dataset of your own given to :func:`train_encoder` must yield the
    first five keys (edges are then computed per batch)."""

    def __init__(self, images, landmarks_px, transforms, image_sizes, focal=None,
                 focal_factor: float = FitConfig.focal_factor):
        self.images = images if torch.is_tensor(images) else torch.as_tensor(np.asarray(images))
        n = len(self.images)
        self.landmarks_px = torch.as_tensor(_np(landmarks_px), dtype=torch.float32).reshape(n, 68, 2)
        self.transforms = torch.as_tensor(_np(transforms), dtype=torch.float32).reshape(n, 3)
        self.image_sizes = torch.as_tensor(_np(image_sizes), dtype=torch.float32).reshape(n, 2)
        self.focal = _focal(focal, self.image_sizes, focal_factor).float()
        e, m = landmark_edges(self.landmarks_px.numpy())
        self.edges, self.edge_mask = torch.from_numpy(e), torch.from_numpy(m)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "landmarks_px": self.landmarks_px[i],
                "transform": self.transforms[i], "image_size": self.image_sizes[i],
                "focal": self.focal[i], "edges": self.edges[i], "edge_mask": self.edge_mask[i]}


def _batches(n: int, batch_size: int, person, gen: torch.Generator) -> list[list[int]]:
    """Shuffled index batches; with person ids, a person's photos go to the same batch (a person
    with more photos than batch_size fills whole batches)."""
    if person is None:
        perm = torch.randperm(n, generator=gen).tolist()
        return [perm[a: a + batch_size] for a in range(0, n, batch_size)]
    _, pid = np.unique(np.asarray(person), return_inverse=True)
    members = [np.flatnonzero(pid == k).tolist() for k in range(int(pid.max()) + 1)]
    batches, cur = [], []
    for k in torch.randperm(len(members), generator=gen).tolist():
        m = members[k]
        if cur and len(cur) + len(m) > batch_size:
            batches.append(cur)
            cur = []
        cur = cur + m
        while len(cur) >= batch_size:
            batches.append(cur[:batch_size])
            cur = cur[batch_size:]
    if cur:
        batches.append(cur)
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def train_encoder(images, landmarks_px=None, transforms=None, image_sizes=None, *,
                  landmarks_crop=None, person=None, focal=None, model=None,
                  net: EncoderCNN | None = None, widths: Sequence[int] = DEFAULT_WIDTHS,
                  convs_per_stage: int = 2, epochs: int = 20, batch_size: int = 32,
                  lr: float = 1e-3, weight_decay: float = 0.0, device: str | torch.device = "cpu",
                  seed: int = 0, config: FitConfig | None = None,
                  w_consistency: float = W_CONSISTENCY, checkpoint_path=None,
                  log: Callable[[str], None] | None = None) -> tuple[EncoderCNN, list[dict]]:
    """Train an :class:`EncoderCNN` self-supervised (paper Eq. 1; Eq. 2 with ``person``).

    images: (N, 3, S, S) crops in [0, 1] (:func:`crop_faces`) or a torch Dataset of dicts (see
    :class:`FaceCropDataset`; then the label arguments are unused). Labels: landmarks_px
    (N, 68, 2) photo px, or landmarks_crop (N, 68, 2) crop px; transforms (N, 3) of the crops;
    image_sizes (N, 2) width, height px; focal (N,) px (default ``config.focal_factor`` × longer
    side); person (N,) ids: adds the shape-consistency term (weight ``w_consistency``) and keeps
    each person's photos in one batch. model: the FaceModel (default the open one); net: continue
    training this network (else a new one with ``widths``, ``convs_per_stage``, input size S).
    Adam, ``epochs`` passes, deterministic for a ``seed`` on one device. After each epoch
    ``log`` gets one line and ``checkpoint_path`` (if given) is rewritten.

    Returns (net in eval mode, history: one dict per epoch with epoch, loss (the mean total loss
    over the epoch's faces), landmark, edge, regularizer, consistency, seconds).
    """
    from skullsearch.encoder.face_model import FaceModel

    say = log or _logger.info
    cfg = config or FitConfig()
    model = model or FaceModel.default()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if isinstance(images, torch.utils.data.Dataset) and not torch.is_tensor(images):
        data = images
    else:
        if landmarks_px is None:
            if landmarks_crop is None or transforms is None:
                raise ValueError("give landmarks_px, or landmarks_crop with transforms")
            landmarks_px = crop_to_image(np.asarray(_np(landmarks_crop)), _np(transforms))
        if transforms is None or image_sizes is None:
            raise ValueError("train_encoder needs the crops' transforms and the photos' sizes")
        data = FaceCropDataset(images, landmarks_px, transforms, image_sizes, focal,
                               cfg.focal_factor)
    n = len(data)
    if n == 0:
        raise ValueError("no training faces")
    size = int(data[0]["image"].shape[-1])
    if net is None:
        net = EncoderCNN.for_model(model, widths, convs_per_stage, input_size=size)
    elif net.face_model_fingerprint and net.face_model_fingerprint != model.fingerprint:
        raise EncoderCheckpointError(
            "this encoder was trained for another face model; train a new one for this model "
            "(net=None) or pass the model it was trained with")
    net = net.to(device)
    rig = LandmarkRig(model, net.n_shape, net.n_expression, device=device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[dict] = []
    person_np = None if person is None else np.asarray(person).reshape(-1)
    for epoch in range(1, epochs + 1):
        net.train()
        t0 = time.perf_counter()
        sums = dict.fromkeys(("total", "landmark", "edge", "regularizer", "consistency"), 0.0)
        for idx in _batches(n, batch_size, person_np, gen):
            items = [data[i] for i in idx]
            batch = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
            imgs = batch["image"].to(device)
            imgs = imgs.float() if imgs.is_floating_point() else imgs.float() / 255.0  # uint8 crops
            f = batch.get("focal")
            codes = net.predict_codes(imgs, batch["transform"], batch["image_size"],
                                      None if f is None else f, cfg.focal_factor)
            edges = (batch["edges"], batch["edge_mask"]) if "edges" in batch else None
            terms = self_supervised_loss(
                rig, codes, batch["landmarks_px"], batch["image_size"], f, cfg,
                person=None if person_np is None else person_np[idx], edges=edges,
                w_consistency=w_consistency)
            opt.zero_grad()
            terms.total.mean().backward()
            opt.step()
            for k in sums:
                sums[k] += float(getattr(terms, k).detach().sum())
        rec = {"epoch": epoch, "loss": sums["total"] / n,
               **{k: v / n for k, v in sums.items() if k != "total"},
               "seconds": time.perf_counter() - t0}
        history.append(rec)
        say(f"epoch {epoch}/{epochs}: loss {rec['loss']:.5f} (landmark {rec['landmark']:.5f}, "
            f"edge {rec['edge']:.5f}, reg {rec['regularizer']:.5f}, consistency "
            f"{rec['consistency']:.5f}) {rec['seconds']:.1f} s")
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, net, {"epoch": epoch, "epochs": epochs, "lr": lr,
                                                   "batch_size": batch_size, "seed": seed,
                                                   "n_train": n, "history": history})
    net.eval()
    return net, history


# ---------------------------------------------------------------------------------- checkpoints
def _plain(x, where: str = "meta"):
    """Meta → only dict/list/str/int/float/bool/None (loadable with weights_only=True)."""
    if isinstance(x, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v, where) for v in x]
    if isinstance(x, np.ndarray) or torch.is_tensor(x):
        return _np(x).tolist()
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"checkpoint {where}: {type(x).__name__} is not a plain value "
                    "(use numbers, strings, lists and dicts)")


def save_checkpoint(path, net: EncoderCNN, meta: dict | None = None) -> Path:
    """Write the encoder to one file (format in the module docstring), atomically."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "config": _plain(net.config, "config"),
        "face_model_fingerprint": net.face_model_fingerprint,
        "meta": _plain(meta or {}),
    }
    with atomic_file(path) as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(path, model=None, map_location="cpu") -> tuple[EncoderCNN, dict]:
    """Read an encoder written by :func:`save_checkpoint` (``torch.load(weights_only=True)``:
    never unpickles arbitrary objects).

    model: when given, refuse a checkpoint trained for a face model with another fingerprint.
    Returns (net in eval mode, meta) — meta is the file's ``meta`` dict.
    Raises :class:`EncoderCheckpointError` for a missing file, another format or version, or a
    face-model mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderCheckpointError(f"encoder checkpoint {str(path)!r} does not exist; train one "
                                     "with train_encoder(..., checkpoint_path=...)")
    ck = read_checkpoint(path, fmt=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, what="encoder",
                         error=EncoderCheckpointError,
                         hint="give a file written by save_checkpoint / train_encoder",
                         retrain="retrain the encoder", map_location=map_location)
    fp = str(ck.get("face_model_fingerprint", ""))
    if model is not None and fp != model.fingerprint:
        raise EncoderCheckpointError(
            f"{path.name} was trained for face model {fp[:16] or '?'}, not for this one "
            f"({model.fingerprint[:16]}); use the face model it was trained with, or train an "
            "encoder for this model (train_encoder)")
    try:
        cfg = dict(ck["config"])
        net = EncoderCNN(face_model_fingerprint=fp, **cfg)
        net.load_state_dict(ck["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise EncoderCheckpointError(
            f"{path.name}: the encoder checkpoint is damaged or inconsistent ({exc}); retrain or "
            "re-save it with save_checkpoint") from exc
    net.eval()
    return net, dict(ck.get("meta") or {})


__all__ = [
    "EncoderCNN", "EncoderCheckpointError", "EncoderLoss", "FaceCropDataset", "crop_faces",
    "crop_transforms", "crop_to_image", "image_to_crop", "boxes_from_landmarks", "encode_faces",
    "encode_detected",
    "landmark_edges", "self_supervised_loss", "shape_consistency", "train_encoder",
    "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION",
    "DEFAULT_WIDTHS", "W_CONSISTENCY",
]
