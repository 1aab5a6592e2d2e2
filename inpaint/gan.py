"""The learned part of the inpainter (paper §4.4): a DCGAN of normalized face renders and Ψ_E.

Networks
--------
- :class:`Generator` G: z (B, z_dim) ~ N(0, I) → normalized render (B, 1, S, S) in [0, 1]. DCGAN:
  one 4×4 transposed convolution from z, then stride-2 transposed 4×4 convolutions doubling the
  side up to S (BatchNorm + ReLU between, ``tanh`` mapped to [0, 1] at the end). Channels halve
  per layer from ``width`` × 8 (capped) to ``width`` at S/2 (DCGAN's 512-256-128-64 at 64 px).
- :class:`Discriminator` D: render (B, 1, S, S) → logit (B,) (D = sigmoid(logit) is the
  probability the render is real). The mirror image: stride-2 4×4 convolutions (LeakyReLU 0.2)
  down to 4×4, then a 4×4 convolution to one number. Every convolution is spectrally normalized
  instead of DCGAN's BatchNorm: on a few hundred renders a BatchNorm D wins within a few epochs
  and G learns nothing for many more (seen here: D loss 0.006 for 18 epochs); with spectral norm
  D and G stay balanced from the start.
- :class:`RenderEncoder` Ψ_E: render (B, 1, S, S) → face code (B, 228) with the layout of
  :mod:`skullsearch.encoder.code`. It predicts the face's geometry only: shape α (first
  ``n_shape`` ≤ 90 slots, in units of the model's prior std) and, for an inpainter trained with
  ``neutral=False``, expression δ and the jaw rotation (pose slots 6–8, radians). Global/neck/eye
  pose, camera and light stay zero: a normalized render has a canonical camera and light, so the
  code is canonical too (:func:`canonical_codes`). By default the inpainter works on *neutral*
  faces (shape only), the faces whose soft-tissue points the gallery stores and the skull query
  scores. Backbone as the photo encoder (:class:`~skullsearch.encoder.cnn.EncoderCNN`): per
  stage a stride-2 and a stride-1 3×3 convolution with BatchNorm + ReLU, global average pooling,
  one linear layer.

Training (:func:`train_inpainter`)
----------------------------------
The gallery's face codes (``gallery.codes``) are made canonical (neutral by default), turned
into meshes (:func:`~skullsearch.encoder.fitting.code_vertices`) and rendered with the normalized
renderer (:func:`skullsearch.inpaint.raster.render_normalized`, in parallel processes:
:func:`render_codes`); the renders are kept as uint8. Per batch:

- D: ``softplus(−D(x)) + softplus(D(G(z)))`` (the standard GAN discriminator loss),
- G: ``softplus(−D(G(z)))`` (the non-saturating generator loss),
- Ψ_E, supervised by the known code c of each render (:class:`CodeMetric`): the mean squared
  vertex error of the rest-pose mesh (mm², all V vertices) + the mean squared error of the 36
  soft-tissue points (mm²) + :data:`W_JAW` · the squared jaw-rotation error (rad²). The first two
  are exact and cheap because the rest mesh is linear in (α, δ): ‖D·Δc‖² = Δcᵀ (DᵀD) Δc with
  the model's bases D, so no mesh is built per step.

Adam (DCGAN settings lr 2e-4, β = (0.5, 0.999) for G and D; lr 1e-3 for Ψ_E). A tenth of the
faces (at most 500, none below 20 faces) is held out to report Ψ_E's error on renders it has not
seen. BatchNorm running statistics are re-estimated (:func:`recalibrate_batchnorm`): Ψ_E's over
the training renders after each epoch (before the held-out check), G's over random z at the end,
so that the networks in eval mode (as the inpainting optimization uses them) behave as in
training.

Checkpoint
----------
``<gallery>/models/inpainter.pt`` by default (:func:`default_inpainter_path`), written atomically
by ``torch.save`` with tensors and plain values only (loads with ``torch.load(weights_only=True)``)::

    {"format": "skullsearch-inpainter", "version": 1,
     "generator": {state dict}, "discriminator": {...}, "encoder": {...},
     "config": {"size": 128, "z_dim": 100, "width": 64, "encoder_widths": [...],
                "n_shape": 90, "n_expression": 0, "jaw": false, "neutral": true, "renderer": ...},
     "face_model_fingerprint": "<sha256 of the face model>",
     "meta": {gallery, faces, epochs, batch_size, seed, device, history, seconds, created, ...}}

and beside it ``inpainter.json`` (the same ``config`` and ``meta``, readable without torch).
:func:`load_inpainter` refuses a file of another format or version and one made for another face
model (:class:`InpainterCheckpointError`); no file raises :class:`InpainterMissingError` whose
message gives the command that trains one.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.atomic import atomic_file, write_json_atomic
from skullsearch.encoder.checkpoints import read_checkpoint
from skullsearch.encoder.cnn import _plain
from skullsearch.encoder.face_model import face_region
from skullsearch.encoder.fitting import code_vertices
from skullsearch.errors import LandmarkError, SkullsearchError
from skullsearch.inpaint.raster import render_normalized

_logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "skullsearch-inpainter"
CHECKPOINT_VERSION = 1
#: Side of the normalized renders (paper: 128 × 128).
DEFAULT_SIZE = 128
#: Latent size (paper / DCGAN: 100).
Z_DIM = 100
#: Base channel width of G and D (DCGAN's 64).
DEFAULT_WIDTH = 64
#: Ψ_E's stage widths for 128 px renders (one stride-2 stage each: 128 → 4).
DEFAULT_ENCODER_WIDTHS: tuple[int, ...] = (32, 64, 128, 256, 256)
#: Weight of the squared jaw-rotation error (rad²) in Ψ_E's loss: 0.1 rad costs 10 mm².
W_JAW = 1000.0
_JAW = slice(6, 9)


class InpainterCheckpointError(SkullsearchError):
    """An inpainter checkpoint is unreadable, of another format, or made for another face model."""


class InpainterMissingError(InpainterCheckpointError):
    """No inpainter has been trained (for this gallery)."""


# ---------------------------------------------------------------------------------- networks
def _check_size(size: int) -> int:
    size = int(size)
    if size < 16 or size > 1024 or size & (size - 1):
        raise ValueError(f"render size must be a power of two from 16 to 1024, got {size}")
    return size


def _channels(size: int, width: int) -> list[int]:
    """Channels at 4, 8, …, size/2 px: ``width`` at size/2, doubling per halving, capped at 8×
    (DCGAN's 512-256-128-64 for 64 px and width 64)."""
    n = int(math.log2(size)) - 3  # doublings from 4 px to size/2
    return [width * min(2 ** (n - k), 8) for k in range(n + 1)]


class Generator(nn.Module):
    """DCGAN generator: z (B, z_dim) → renders (B, 1, S, S) in [0, 1]."""

    def __init__(self, z_dim: int = Z_DIM, size: int = DEFAULT_SIZE, width: int = DEFAULT_WIDTH):
        super().__init__()
        self.z_dim, self.size = int(z_dim), _check_size(size)
        ch = _channels(self.size, int(width))
        layers: list[nn.Module] = [nn.ConvTranspose2d(self.z_dim, ch[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
        for a, b in zip(ch[:-1], ch[1:], strict=True):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ch[-1], 1, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be (B, {self.z_dim}), got {tuple(z.shape)}")
        return (self.net(z[:, :, None, None]) + 1.0) * 0.5


class Discriminator(nn.Module):
    """DCGAN discriminator: renders (B, 1, S, S) in [0, 1] → logits (B,)."""

    def __init__(self, size: int = DEFAULT_SIZE, width: int = DEFAULT_WIDTH):
        super().__init__()
        self.size = _check_size(size)
        ch = _channels(self.size, int(width))[::-1]  # size/2 px … 4 px
        sn = nn.utils.parametrizations.spectral_norm
        layers: list[nn.Module] = [sn(nn.Conv2d(1, ch[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for a, b in zip(ch[:-1], ch[1:], strict=True):
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        layers += [sn(nn.Conv2d(ch[-1], 1, 4, 1, 0))]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.size)
        return self.net(images * 2.0 - 1.0).reshape(-1)


def _dcgan_init(net: nn.Module) -> None:
    """DCGAN's initialization: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check_images(images: torch.Tensor, size: int) -> None:
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != size or images.shape[3] != size:
        raise ValueError(f"renders must be (B, 1, {size}, {size}), got {tuple(images.shape)}")


def default_encoder_widths(size: int) -> tuple[int, ...]:
    """Ψ_E's stage widths for a render size: one stride-2 stage per halving down to 4 px."""
    n = int(math.log2(_check_size(size))) - 2
    w = list(DEFAULT_ENCODER_WIDTHS)
    return tuple(w[:n]) if n <= len(w) else tuple(w + [w[-1]] * (n - len(w)))


class RenderEncoder(nn.Module):
    """Ψ_E: normalized renders (B, 1, S, S) in [0, 1] → canonical face codes (B, 228).

    n_shape, n_expression: predicted components (≤ 90 each); jaw: predict the jaw rotation.
    Buffers ``shape_std`` (n_shape,) and ``expression_std`` (n_expression,) hold the face
    model's prior scales (the raw outputs are in those units).
    """

    def __init__(self, n_shape: int, n_expression: int, size: int = DEFAULT_SIZE,
                 widths: Sequence[int] | None = None, jaw: bool = True):
        super().__init__()
        self.size = _check_size(size)
        self.n_shape = min(int(n_shape), code_layout.SLICES["shape"].stop)
        self.n_expression = min(int(n_expression), code_layout.N_EXPRESSION)
        self.jaw = bool(jaw)
        self.widths = [int(w) for w in (widths or default_encoder_widths(self.size))]
        layers: list[nn.Module] = []
        c_in = 1
        for w in self.widths:
            for k in range(2):
                layers += [nn.Conv2d(c_in, w, 3, stride=2 if k == 0 else 1, padding=1, bias=False),
                           nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c_in = w
        self.features = nn.Sequential(*layers)
        self.n_out = self.n_shape + self.n_expression + (3 if self.jaw else 0)
        self.head = nn.Linear(c_in, self.n_out)
        with torch.no_grad():  # start at the mean face
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
        self.register_buffer("shape_std", torch.ones(self.n_shape))
        self.register_buffer("expression_std", torch.ones(self.n_expression))

    @classmethod
    def for_model(cls, model, size: int = DEFAULT_SIZE, widths: Sequence[int] | None = None,
                  neutral: bool = True) -> RenderEncoder:
        """A fresh Ψ_E for a FaceModel, its prior scales copied in. neutral: shape only;
        otherwise also expression and (when the model has a jaw joint) the jaw."""
        jaw = not neutral and model.n_joints >= 3
        net = cls(model.n_shape, 0 if neutral else model.n_expression, size, widths, jaw)
        with torch.no_grad():
            net.shape_std.copy_(torch.as_tensor(model.shape_std[: net.n_shape]))
            net.expression_std.copy_(torch.as_tensor(model.expression_std[: net.n_expression]))
        return net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) → raw outputs (B, n_out) (see :meth:`decode`)."""
        _check_images(images, self.size)
        x = self.features((images - 0.5) * 4.0)
        return self.head(x.mean(dim=(2, 3)))

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw outputs (B, n_out) → canonical codes (B, 228): shape, expression, jaw; rest zero."""
        s, e = self.n_shape, self.n_expression
        shape = raw[:, :s] * self.shape_std
        expression = raw[:, s: s + e] * self.expression_std
        pose = None
        if self.jaw:
            pose = F.pad(raw[:, s + e: s + e + 3], (_JAW.start, 0))
        return code_layout.pack(shape=shape, expression=expression, pose=pose, batch_size=len(raw))

    def predict_codes(self, images: torch.Tensor) -> torch.Tensor:
        """Renders (B, 1, S, S) → codes (B, 228), differentiable (call ``eval()`` first for
        inference)."""
        return self.decode(self(images))


def canonical_codes(codes, model=None, neutral: bool = True) -> np.ndarray:
    """Codes (B, 228) → (B, 228) float32 with only the geometry a normalized render shows:
    the shape α, and unless ``neutral`` the expression δ and jaw rotation; global/neck/eye pose,
    camera and light zero. Neutral (the default) is the face the gallery's soft-tissue points and
    the skull query use."""
    c = np.asarray(codes.detach().cpu().numpy() if torch.is_tensor(codes) else codes, np.float32)
    c = c.reshape(-1, code_layout.CODE_SIZE)
    p = code_layout.split(c)
    if neutral:
        return code_layout.pack(shape=p.shape, batch_size=len(c))
    jaw = p.pose[:, _JAW] if model is None or model.n_joints >= 3 else None
    pose = None if jaw is None else np.pad(jaw, ((0, 0), (_JAW.start, 0)))
    return code_layout.pack(shape=p.shape, expression=p.expression, pose=pose, batch_size=len(c))


# ---------------------------------------------------------------------------------- Ψ_E's loss
class CodeMetric:
    """Squared geometric distance between canonical codes, in mm², without building meshes.

    For codes a, b (B, 228) with Δ = a − b over the (shape, expression) slots used:
    ``vertex`` = mean over the V rest-pose vertices of ‖Δv‖² = Δᵀ G_v Δ, ``soft_tissue`` = mean
    over the 36 points of ‖Δp‖² = Δᵀ G_p Δ (G = DᵀD / n, D the model's linear bases), ``face``
    = the vertex term over the face proper (:func:`~skullsearch.encoder.face_model.face_region`,
    what a frontal render shows; the back of the head is only guessed from it),
    ``jaw`` = ‖Δθ_jaw‖² (rad²).
    """

    def __init__(self, model, n_shape: int, n_expression: int, device="cpu"):
        self.n_shape, self.n_expression = int(n_shape), int(n_expression)
        v = model.n_vertices
        d = np.concatenate([model.shapedirs[:, :, : self.n_shape],
                            model.exprdirs[:, :, : self.n_expression]], axis=2).astype(np.float64)
        gv = np.einsum("vcp,vcq->pq", d, d) / v
        try:
            fr = face_region(model)
        except LandmarkError:  # a model without soft-tissue annotation: the whole mesh
            fr = np.ones(v, bool)
        df = d[fr]
        gf = np.einsum("vcp,vcq->pq", df, df) / max(len(df), 1)
        gp = np.zeros_like(gv)
        if model.soft_tissue_points is not None:
            pts = model.soft_tissue_points
            corners = model.faces[pts.faces]  # (36, 3)
            dp = (d[corners] * pts.bary.astype(np.float64)[:, :, None, None]).sum(1)  # (36, 3, P)
            gp = np.einsum("kcp,kcq->pq", dp, dp) / len(dp)
        self.g_vertex = torch.as_tensor(gv, dtype=torch.float32, device=device)
        self.g_soft = torch.as_tensor(gp, dtype=torch.float32, device=device)
        self.g_face = torch.as_tensor(gf, dtype=torch.float32, device=device)
        self._idx = torch.cat([
            torch.arange(self.n_shape),
            code_layout.SLICES["expression"].start + torch.arange(self.n_expression)]).to(device)

    def to(self, device) -> CodeMetric:
        self.g_vertex, self.g_soft = self.g_vertex.to(device), self.g_soft.to(device)
        self.g_face = self.g_face.to(device)
        self._idx = self._idx.to(device)
        return self

    def __call__(self, pred: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred, true (B, 228) → per face (B,) tensors ``vertex``, ``soft_tissue``, ``face``
        (mm²; face: the vertices of the face proper only, a measure, not in the total),
        ``jaw`` (rad²) and ``total`` = vertex + soft_tissue + W_JAW · jaw."""
        delta = (pred - true)[:, self._idx]
        vert = ((delta @ self.g_vertex) * delta).sum(1).clamp(min=0)
        soft = ((delta @ self.g_soft) * delta).sum(1).clamp(min=0)
        face = ((delta @ self.g_face) * delta).sum(1).clamp(min=0)
        jaw = ((code_layout.split(pred).pose[:, _JAW] - code_layout.split(true).pose[:, _JAW])
               ** 2).sum(1)
        return {"vertex": vert, "soft_tissue": soft, "face": face, "jaw": jaw,
                "total": vert + soft + W_JAW * jaw}


# ---------------------------------------------------------------------------------- bundle
@dataclass
class Inpainter:
    """A trained inpainter: G, D, Ψ_E in eval mode, their ``config`` (size, z_dim, widths, …),
    the face model's fingerprint, the training ``meta`` and the file it came from."""

    generator: Generator
    discriminator: Discriminator
    encoder: RenderEncoder
    config: dict
    face_model_fingerprint: str
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def size(self) -> int:
        return int(self.config["size"])

    @property
    def z_dim(self) -> int:
        return int(self.config["z_dim"])

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device) -> Inpainter:
        for net in (self.generator, self.discriminator, self.encoder):
            net.to(device)
        return self

    def eval(self) -> Inpainter:
        for net in (self.generator, self.discriminator, self.encoder):
            net.eval()
        return self

    def check_model(self, model) -> None:
        """Refuse a face model other than the one this inpainter was trained for."""
        if model.fingerprint != self.face_model_fingerprint:
            where = f" ({self.path})" if self.path else ""
            raise InpainterCheckpointError(
                f"the inpainter{where} was trained for face model "
                f"{self.face_model_fingerprint[:16] or '?'}, not for this one "
                f"({model.fingerprint[:16]}); use the gallery's own face model, or train an "
                "inpainter for this model with `skullsearch train inpainter --gallery DIR`")

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n random renders (n, 1, S, S) from G."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=gen).to(self.device)
        return self.generator(z)

    @torch.no_grad()
    def codes_of(self, images) -> np.ndarray:
        """Ψ_E on renders (B, 1, S, S) (numpy or torch, [0, 1]) → codes (B, 228) float32."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images,
                            dtype=torch.float32, device=self.device)
        return self.encoder.predict_codes(x).cpu().numpy()


def default_inpainter_path(gallery) -> Path:
    """Where a gallery's inpainter lives: ``<gallery>/models/inpainter.pt`` (gallery: a Gallery
    or its folder)."""
    root = Path(getattr(gallery, "path", gallery))
    return root / "models" / "inpainter.pt"


def sidecar_path(checkpoint) -> Path:
    """The JSON record beside a checkpoint: ``inpainter.pt`` → ``inpainter.json``."""
    return Path(checkpoint).with_suffix(".json")


def save_inpainter(path, inp: Inpainter) -> Path:
    """Write an inpainter (checkpoint + JSON sidecar), atomically; see the module docstring."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "generator": _cpu_state(inp.generator),
        "discriminator": _cpu_state(inp.discriminator),
        "encoder": _cpu_state(inp.encoder),
        "config": _plain(inp.config, "config"),
        "face_model_fingerprint": inp.face_model_fingerprint,
        "meta": _plain(inp.meta),
    }
    with atomic_file(path) as fh:
        torch.save(payload, fh)
    write_json_atomic(sidecar_path(path), {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "checkpoint": path.name,
        "face_model_fingerprint": inp.face_model_fingerprint, "config": payload["config"],
        **payload["meta"]})
    inp.path = path
    return path


def _cpu_state(net: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def build_networks(config: dict) -> tuple[Generator, Discriminator, RenderEncoder]:
    """Fresh G, D, Ψ_E from a checkpoint ``config``."""
    size = int(config["size"])
    g = Generator(int(config["z_dim"]), size, int(config["width"]))
    d = Discriminator(size, int(config["width"]))
    e = RenderEncoder(int(config["n_shape"]), int(config["n_expression"]), size,
                      config.get("encoder_widths"), bool(config.get("jaw", True)))
    return g, d, e


def load_inpainter(path_or_gallery, model=None, map_location="cpu") -> Inpainter:
    """Read an inpainter written by :func:`train_inpainter` / :func:`save_inpainter`.

    path_or_gallery: a checkpoint file, a Gallery, or a gallery folder (then its
    :func:`default_inpainter_path`, and the gallery's face model unless ``model`` is given).
    model: refuse a checkpoint made for another face model. Loads with
    ``torch.load(weights_only=True)``; returns the :class:`Inpainter` in eval mode.
    Raises :class:`InpainterMissingError` when there is no file, :class:`InpainterCheckpointError`
    for another format, version or face model, a damaged file, or a folder that is not a gallery.
    """
    gallery = None
    target = path_or_gallery
    if hasattr(target, "face_model") and hasattr(target, "path"):
        gallery = target
    elif Path(target).is_dir() and (Path(target) / "gallery.json").exists():
        from skullsearch.index import Gallery

        gallery = Gallery.open(target)
    path = default_inpainter_path(gallery) if gallery is not None else Path(target)
    if gallery is None and path.is_dir():
        raise InpainterCheckpointError(
            f"{path} is a folder but not a skullsearch gallery (no gallery.json): give the gallery's "
            "folder or an inpainter checkpoint file (inpainter.pt)")
    if not path.is_file():
        where = gallery.path if gallery is not None else "DIR"
        raise InpainterMissingError(
            f"no inpainter trained yet ({path} does not exist); train one with "
            f"`skullsearch train inpainter --gallery {where}` (or use --method fit)")
    if model is None and gallery is not None:
        model = gallery.face_model
    ck = read_checkpoint(path, fmt=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, what="inpainter",
                         error=InpainterCheckpointError,
                         hint="train one with `skullsearch train inpainter --gallery DIR`",
                         retrain="retrain the inpainter", map_location=map_location)
    try:
        cfg = dict(ck["config"])
        g, d, e = build_networks(cfg)
        g.load_state_dict(ck["generator"])
        d.load_state_dict(ck["discriminator"])
        e.load_state_dict(ck["encoder"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise InpainterCheckpointError(
            f"{path.name}: the inpainter checkpoint is damaged or inconsistent ({exc}); retrain it "
            "with `skullsearch train inpainter --gallery DIR`") from exc
    inp = Inpainter(g, d, e, cfg, str(ck.get("face_model_fingerprint", "")),
                    dict(ck.get("meta") or {}), path).eval()
    if model is not None:
        inp.check_model(model)
    return inp


# ---------------------------------------------------------------------------------- renders
def _render_chunk(model, codes: np.ndarray, size: int) -> np.ndarray:
    with torch.no_grad():
        verts = code_vertices(model, codes)
    img = np.asarray(render_normalized(model, verts, size=size).image)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


_WORKER_MODEL = None


def _init_render_worker(model) -> None:
    global _WORKER_MODEL
    torch.set_num_threads(1)
    _WORKER_MODEL = model


def _render_chunk_worker(codes: np.ndarray, size: int) -> np.ndarray:
    return _render_chunk(_WORKER_MODEL, codes, size)


def render_codes(model, codes, size: int = DEFAULT_SIZE, chunk: int = 64, workers: int | None = None,
                 progress: Callable[[dict], None] | None = None) -> np.ndarray:
    """Canonical codes (N, 228) → normalized renders (N, 1, S, S) uint8 (0–255), in chunks of
    ``chunk`` faces. workers: processes rendering chunks in parallel (default: the CPU count, at
    most 8, when there are at least four chunks; 1 = in this process)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    codes = np.asarray(codes, np.float32).reshape(-1, code_layout.CODE_SIZE)
    n = len(codes)
    out = np.zeros((n, 1, size, size), np.uint8)
    starts = list(range(0, n, chunk))
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(starts) >= 4 else 1
    done = 0

    def tick(k: int):
        nonlocal done
        done += k
        if progress:
            progress({"stage": "render", "done": done, "total": n})

    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        for a in starts:
            out[a: a + chunk] = _render_chunk(model, codes[a: a + chunk], size)
            tick(len(codes[a: a + chunk]))
        return out
    ctx = mp.get_context("fork")  # the workers inherit the model instead of unpickling it
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_render_worker,
                                initargs=(model,)) as pool:
        futures = {pool.submit(_render_chunk_worker, codes[a: a + chunk], size): a for a in starts}
        for fut in cf.as_completed(futures):
            a = futures[fut]
            out[a: a + chunk] = fut.result()
            tick(len(out[a: a + chunk]))
    return out


# ---------------------------------------------------------------------------------- training
def _checked_settings(epochs: int, batch_size: int, width: int, z_dim: int, faces: int | None,
                      device, size: int) -> tuple[torch.device, int]:
    """Refuse training settings that cannot work, each with what to give instead.

    Returns the torch device and the render side (px, a power of two).
    """
    if epochs < 1 or batch_size < 2:
        raise SkullsearchError(f"training needs at least 1 epoch and 2 renders per batch (got "
                               f"epochs {epochs}, batch size {batch_size})")
    if int(width) < 1 or int(z_dim) < 1:
        raise SkullsearchError(f"width and z_dim must be at least 1 (got width {width}, z_dim {z_dim}); "
                               f"DCGAN uses width {DEFAULT_WIDTH} and z_dim {Z_DIM}")
    if faces is not None and int(faces) < 2:
        raise SkullsearchError(f"faces must be at least 2 (got {faces}); an inpainter needs a few hundred "
                               "faces or more (leave it out to train on the whole gallery)")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise SkullsearchError(f"unknown device {device!r}: use cpu or cuda (cuda:N for one GPU)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SkullsearchError("--device cuda was asked for but torch sees no CUDA GPU; use "
                               "--device cpu (slow for large galleries) or install a CUDA build of torch")
    try:
        size = _check_size(size)
    except ValueError as exc:
        raise SkullsearchError(f"{exc}; the paper uses 128 (--size 128), 64 trains faster") from None
    return device, size


def _training_renders(gallery, model, faces: int | None, seed: int, size: int, neutral: bool,
                      render_workers: int | None, progress,
                      say) -> tuple[np.ndarray, np.ndarray, float]:
    """The faces to train on (all, or a reproducible sample of ``faces`` for ``seed``), made
    canonical and rendered: codes (N, 228) float32, renders (N, 1, S, S) uint8 and the seconds
    rendering took."""
    n_all = gallery.n_faces
    ids = gallery.sample_ids(n_all if faces is None else int(faces), seed=seed)
    if len(ids) < 2:
        raise SkullsearchError(f"the gallery {gallery.path} has {len(ids)} face(s); an inpainter "
                               "needs at least a few hundred: ingest photos (or `skullsearch synth`) first")
    codes = canonical_codes(gallery.codes(ids), model, neutral)
    t0 = time.perf_counter()
    images = render_codes(model, codes, size, workers=render_workers, progress=progress)
    render_s = time.perf_counter() - t0
    say(f"rendered {len(ids)} faces at {size}×{size} px in {render_s:.1f} s")
    return codes, images, render_s


@dataclass
class _Training:
    """One training run: the networks G, D, Ψ_E (``g``, ``d``, ``e``), Ψ_E's loss ``metric``,
    the three optimizers, the renders ``imgs`` (N, 1, S, S) uint8 and their codes ``true``
    (N, 228) on ``device``, the held-out and training rows ``val_idx``, ``train_idx``, ``gen``
    (the generator that orders the batches), and the run's settings; ``step`` counts the
    batches run so far, of ``total_steps``."""

    g: Generator
    d: Discriminator
    e: RenderEncoder
    metric: CodeMetric
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    opt_e: torch.optim.Optimizer
    imgs: torch.Tensor
    true: torch.Tensor
    val_idx: torch.Tensor
    train_idx: torch.Tensor
    gen: torch.Generator
    z_dim: int
    batch_size: int
    seed: int
    device: torch.device
    total_steps: int = 0
    step: int = 0

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One step of D, G and Ψ_E on the renders ``idx`` (b,): (d_loss, g_loss, Ψ_E's terms)."""
        real = self.imgs[idx].float() / 255.0
        z = torch.randn(len(idx), self.z_dim, device=self.device)
        fake = self.g(z)
        d_loss = F.softplus(-self.d(real)).mean() + F.softplus(self.d(fake.detach())).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss = F.softplus(-self.d(fake)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        terms = self.metric(self.e.predict_codes(real), self.true[idx])
        self.opt_e.zero_grad(set_to_none=True)
        terms["total"].mean().backward()
        self.opt_e.step()
        return d_loss, g_loss, terms


def _start_training(model, codes: np.ndarray, images: np.ndarray, *, seed: int, z_dim: int,
                    size: int, width: int, encoder_widths, neutral: bool, lr: float,
                    encoder_lr: float, batch_size: int, epochs: int, device) -> _Training:
    """Seed torch, hold out a tenth of the faces (at most 500, none below 20 faces), and build
    the networks and their Adam optimizers on ``device`` (see the module docstring)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(codes)
    n_val = min(n // 10, 500) if n >= 20 else 0
    order = torch.randperm(n, generator=gen)
    val_idx, train_idx = order[:n_val], order[n_val:]
    imgs = torch.from_numpy(images).to(device)
    true = torch.from_numpy(codes).to(device)
    g = Generator(z_dim, size, width).to(device)
    d = Discriminator(size, width).to(device)
    e = RenderEncoder.for_model(model, size, encoder_widths, neutral).to(device)
    metric = CodeMetric(model, e.n_shape, e.n_expression, device)
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_e = torch.optim.Adam(e.parameters(), lr=encoder_lr)
    n_train = len(train_idx)
    # batches per epoch: a last batch of one render is skipped (BatchNorm needs two)
    per_epoch = max(1, n_train // batch_size + (n_train % batch_size >= 2))
    return _Training(g, d, e, metric, opt_g, opt_d, opt_e, imgs, true, val_idx, train_idx, gen,
                     z_dim, batch_size, seed, device, total_steps=per_epoch * epochs)


def _train_epoch(t: _Training, epoch: int, epochs: int, progress) -> dict:
    """One pass over the training renders in a random order, then Ψ_E's BatchNorm statistics
    re-estimated and its held-out error measured. Returns the epoch's record (see
    :func:`train_inpainter`)."""
    t_ep = time.perf_counter()
    for net in (t.g, t.d, t.e):
        net.train()
    sums = dict.fromkeys(("d_loss", "g_loss", "encoder_loss", "vertex", "soft_tissue", "face",
                          "jaw"), 0.0)
    n_train = len(t.train_idx)
    perm = t.train_idx[torch.randperm(n_train, generator=t.gen)]
    seen = 0
    for a in range(0, n_train, t.batch_size):
        idx = perm[a: a + t.batch_size].to(t.device)
        if len(idx) < 2:  # BatchNorm needs two samples
            continue
        d_loss, g_loss, terms = t.batch(idx)
        b = len(idx)
        seen += b
        sums["d_loss"] += d_loss.item() * b
        sums["g_loss"] += g_loss.item() * b
        sums["encoder_loss"] += float(terms["total"].detach().sum())
        for k in ("vertex", "soft_tissue", "face", "jaw"):
            sums[k] += float(terms[k].detach().sum())
        t.step += 1
        if progress:
            progress({"stage": "train", "done": t.step, "total": t.total_steps, "epoch": epoch,
                      "epochs": epochs, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                      "encoder_loss": float(terms["total"].detach().mean())})
    seen = max(seen, 1)
    rec = {"epoch": epoch, "d_loss": sums["d_loss"] / seen, "g_loss": sums["g_loss"] / seen,
           "encoder_loss": sums["encoder_loss"] / seen,
           "vertex_rms_mm": math.sqrt(sums["vertex"] / seen),
           "soft_tissue_rms_mm": math.sqrt(sums["soft_tissue"] / seen),
           "face_rms_mm": math.sqrt(sums["face"] / seen),
           "jaw_rms_rad": math.sqrt(sums["jaw"] / seen)}
    recalibrate_batchnorm(t.e, t.imgs, t.train_idx, t.batch_size, seed=t.seed + epoch)
    rec.update(_validate(t.e, t.metric, t.imgs, t.true, t.val_idx, t.batch_size))
    rec["seconds"] = time.perf_counter() - t_ep
    return rec


def train_inpainter(gallery, out=None, *, epochs: int = 25, batch_size: int = 64,
                    faces: int | None = None, size: int = DEFAULT_SIZE, z_dim: int = Z_DIM,
                    width: int = DEFAULT_WIDTH, encoder_widths: Sequence[int] | None = None,
                    lr: float = 2e-4, encoder_lr: float = 1e-3, seed: int = 0,
                    neutral: bool = True, render_workers: int | None = None,
                    device: str | torch.device = "cpu",
                    progress: Callable[[dict], None] | None = None,
                    log: Callable[[str], None] | None = None) -> Path:
    """Train G, D and Ψ_E on normalized renders of a gallery's faces; write the checkpoint.

    gallery: a Gallery or its folder. out: the checkpoint file (default
    :func:`default_inpainter_path`). faces: use at most this many faces (a reproducible random
    sample for ``seed``; default all). size: render side px (power of two, default 128);
    width: G/D base channels; encoder_widths: Ψ_E's stage widths (default one per halving).
    neutral: train on neutral faces (shape only: the faces the skull query scores; default) or
    on the codes' expression and jaw too. render_workers: processes for rendering (see
    :func:`render_codes`).
    device: ``cpu`` or ``cuda``. progress gets dicts: ``{"stage": "render", "done", "total"}``
    while rendering, ``{"stage": "train", "done", "total", "epoch", "epochs", **losses}`` after
    each batch (done/total count batches over the whole run) and ``{"stage": "epoch", ...}`` with
    the epoch's record. log gets one line per epoch.

    Returns the checkpoint path. The epoch records (``meta["history"]``): epoch, d_loss, g_loss
    (the GAN losses above), encoder_loss (mm²), vertex_rms_mm, soft_tissue_rms_mm, face_rms_mm
    (vertices of the face proper), jaw_rms_rad on the training renders, val_vertex_rms_mm,
    val_soft_tissue_rms_mm, val_face_rms_mm on the held-out ones (NaN when none), seconds.
    """
    say = log or _logger.info
    t_start = time.perf_counter()
    if not hasattr(gallery, "codes"):
        from skullsearch.index import Gallery

        gallery = Gallery.open(gallery)
    model = gallery.face_model
    device, size = _checked_settings(epochs, batch_size, width, z_dim, faces, device, size)
    codes, images, render_s = _training_renders(gallery, model, faces, seed, size, neutral,
                                                render_workers, progress, say)
    t = _start_training(model, codes, images, seed=seed, z_dim=z_dim, size=size, width=width,
                        encoder_widths=encoder_widths, neutral=neutral, lr=lr,
                        encoder_lr=encoder_lr, batch_size=batch_size, epochs=epochs, device=device)
    history: list[dict] = []
    for epoch in range(1, epochs + 1):
        rec = _train_epoch(t, epoch, epochs, progress)
        history.append(rec)
        say(f"epoch {epoch}/{epochs}: D {rec['d_loss']:.3f} G {rec['g_loss']:.3f} Ψ_E "
            f"{rec['encoder_loss']:.2f} mm² (vertex RMS {rec['vertex_rms_mm']:.2f} mm, held-out "
            f"{rec['val_vertex_rms_mm']:.2f} mm) {rec['seconds']:.1f} s")
        if progress:
            progress({"stage": "epoch", "done": t.step, "total": t.total_steps, "epochs": epochs, **rec})
    recalibrate_batchnorm(t.g, int(z_dim), seed=seed)
    for net in (t.g, t.d, t.e):
        net.eval()
    config = {"size": size, "z_dim": int(z_dim), "width": int(width), "encoder_widths": t.e.widths,
              "n_shape": t.e.n_shape, "n_expression": t.e.n_expression, "jaw": t.e.jaw,
              "neutral": bool(neutral), "renderer": "skullsearch.inpaint.raster.render_normalized"}
    meta = {"gallery": str(gallery.path), "face_model_name": model.meta.get("name", ""),
            "faces": len(codes), "train_faces": len(t.train_idx), "val_faces": len(t.val_idx),
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "encoder_lr": encoder_lr,
            "seed": seed, "device": str(device), "history": history, "render_seconds": render_s,
            "seconds": time.perf_counter() - t_start,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": str(torch.__version__)}
    inp = Inpainter(t.g.cpu(), t.d.cpu(), t.e.cpu(), config, model.fingerprint, meta)
    path = Path(out) if out is not None else default_inpainter_path(gallery)
    return save_inpainter(path, inp)


@torch.no_grad()
def _validate(e: RenderEncoder, metric: CodeMetric, imgs, true, val_idx, batch_size) -> dict:
    if len(val_idx) == 0:
        return {"val_vertex_rms_mm": float("nan"), "val_soft_tissue_rms_mm": float("nan"),
                "val_face_rms_mm": float("nan")}
    e.eval()
    vert = soft = face = 0.0
    for a in range(0, len(val_idx), batch_size):
        idx = val_idx[a: a + batch_size].to(imgs.device)
        t = metric(e.predict_codes(imgs[idx].float() / 255.0), true[idx])
        vert += float(t["vertex"].sum())
        soft += float(t["soft_tissue"].sum())
        face += float(t["face"].sum())
    e.train()
    return {"val_vertex_rms_mm": math.sqrt(vert / len(val_idx)),
            "val_soft_tissue_rms_mm": math.sqrt(soft / len(val_idx)),
            "val_face_rms_mm": math.sqrt(face / len(val_idx))}


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, source, index=None, batch_size: int = 64,
                          batches: int = 16, seed: int = 0) -> None:
    """Re-estimate a network's BatchNorm running statistics (cumulative average over up to
    ``batches`` batches, in train mode, no gradients), so that it behaves in eval mode as in
    training. source: an int z_dim (G: random z ~ N(0, I)) or uint8 renders (N, 1, S, S) with
    the rows ``index`` to draw from (Ψ_E). Leaves the network in eval mode."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    dev = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed + 1)
    if isinstance(source, int):
        for _ in range(batches):
            net(torch.randn(batch_size, source, generator=gen).to(dev))
    else:
        index = torch.arange(len(source)) if index is None else torch.as_tensor(index)
        order = index[torch.randperm(len(index), generator=gen)][: batches * batch_size]
        for a in range(0, len(order), batch_size):
            idx = order[a: a + batch_size]
            if len(idx) > 1:
                net(source[idx.to(source.device)].float() / 255.0)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    net.eval()


__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CodeMetric", "Discriminator", "Generator",
    "Inpainter", "InpainterCheckpointError", "InpainterMissingError", "RenderEncoder",
    "build_networks", "canonical_codes", "default_inpainter_path", "load_inpainter",
    "recalibrate_batchnorm", "render_codes", "save_inpainter", "sidecar_path", "train_inpainter",
]
