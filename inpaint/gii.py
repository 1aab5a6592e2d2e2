"""GII-GC, the paper's constrained inpainting: regenerate the revised regions of a face with the GAN
so that the face passes through the skull's extended landmarks.

The candidate face (its code, made canonical: :func:`~skullsearch.inpaint.gan.canonical_codes`)
is rendered with the normalized renderer; the pixels whose visible triangle touches a revised
vertex are the *hole* M, the others are *kept*. A batch of latent vectors z (one per random
start) is optimized with Adam for

    L(z) = context + λp · prior + λ2 · geometry + λd · definite

- **context** (paper Eq. 3, :func:`context_loss`): Σ_i W_i · |G(z)_i − y_i| / Σ_i W_i over the
  pixels, y the candidate's render; W_i = 0 on hole pixels and, on a kept pixel i, the share of
  hole pixels in the ``window`` × ``window`` box around it (:func:`hole_weights`; the paper's
  weighting, after Yeh et al.: kept pixels next to the hole count most, far ones not at all).
  The paper's sum ‖W ⊙ (G(z) − y)‖₁ is divided by Σ W so that λ's do not depend on the image size
  or the hole's size (a weighted mean intensity error in [0, 1]).
- **prior** (Eq. 4, :func:`prior_loss`): log(1 − D(G(z))) = −softplus(logit): lower when the
  discriminator finds the render realistic.
- **geometry** (Eq. 5, :func:`geometry_loss`): mean over the present landmarks of
  ‖L_f(F(z))_i − target_i‖ in mm: the soft-tissue points of the result face F(z) (below), whose
  revised part is M(Ψ_E(G(z))), the face Ψ_E reads off the generated render, against the
  extended landmarks. **In the face frame**: the caller gives
  the targets already carried into the candidate's face frame (the inverse of the score's
  best similarity alignment, as :func:`skullsearch.inpaint.reconstruct` does), so no alignment
  is re-fitted inside the loop (the face's size and placement are part of what is optimized).
  The paper's sum over landmarks is a mean here (λ2 per mm, independent of how many are present).
- **definite** (:func:`definite_loss`): mean distance (mm) of the definite-region vertices
  (forehead, back of the head) of F(z) to their targets (the skull surface offset by the
  tissue depth, face frame; NaN = no target).

The result face F(z) = C + b ⊙ (M(Ψ_E(G(z))) − C) is inpainted in 3D as the image is in 2D: C the
candidate's mesh, b (:func:`blend_weights`) 1 on the revised vertices and falling smoothly to 0
over ``blend_mm`` (geodesic) outside them, so the kept regions stay exactly the candidate's (and
keep their matched landmarks) while the hole takes the generated face's shape. With
``blend_mm = 0`` the whole face is M(Ψ_E(G(z))), the paper's literal output.

Each start keeps its best iterate (lowest total); the result is the best start's: F(z*) in the
face frame (mm) and the code Ψ_E(G(z*)) of its generated part. Convergence: the first iteration
t ≥ ``patience`` at which |L(t − patience) − L(t)| ≤ tol · |L(t − patience)| for the start (the
run stops when every start has converged, or after ``iterations``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from skullsearch.encoder.fitting import code_vertices
from skullsearch.errors import SkullsearchError
from skullsearch.inpaint.gan import Inpainter, canonical_codes
from skullsearch.inpaint.raster import render_normalized

#: Keys of a per-iteration loss record (weighted terms; total is their sum).
LOSS_KEYS = ("total", "context", "prior", "geometry", "definite")


@dataclass
class GIIWeights:
    """Weights and optimizer settings of :func:`gii_gc`.

    context: weight of Eq. 3 (a mean intensity error in [0, 1]); prior: λp of Eq. 4 (Yeh et al.
    use 0.003); geometry: λ2 per mm of mean landmark distance; definite: per mm of mean
    definite-region distance; window: side of the W box filter (px, odd); lr: Adam's step on z;
    tol, patience: convergence test (relative change of the total over ``patience`` iterations);
    z_clip: after each step z is clipped to ±z_clip per component (keeps z where G was trained;
    0 = off); blend_mm: width of the seam between the kept and the regenerated surface
    (:func:`blend_weights`; 0 = no blending, the whole face is Ψ_E's).
    """

    context: float = 1.0
    prior: float = 0.003
    geometry: float = 1.0
    definite: float = 0.05
    window: int = 7
    lr: float = 0.05
    tol: float = 5e-3
    patience: int = 10
    z_clip: float = 3.0
    blend_mm: float = 10.0


@dataclass
class GIIResult:
    """The re-synthesized face (best start).

    code (228,) float32 canonical code Ψ_E(G(z*)) of the generated face; vertices (V, 3) float32
    mm face frame: the result, the candidate's surface outside the revised regions and the
    generated face M(code) inside them, joined over a ``blend_mm`` seam (see ``blend``);
    losses: one dict per iteration of the best start (:data:`LOSS_KEYS`, weighted, plus
    ``geometry_mm`` and ``definite_mm`` the unweighted mean distances); iterations: iteration
    at which the best start converged (``iterations`` run when it did not); start: index of the
    best start; converged: whether it did; z (z_dim,) the best latent; image (S, S) the best
    start's generated render; target_image (S, S) the candidate's render; hole (S, S) bool the
    revised pixels; weights (S, S) the context weights W; start_totals (starts,) each start's best
    total; seconds; generated_vertices (V, 3) M(code), the whole generated face; blend (V,) the
    generated face's share per vertex (:func:`blend_weights`).
    """

    code: np.ndarray
    vertices: np.ndarray
    losses: list[dict]
    iterations: int
    start: int
    converged: bool = False
    z: np.ndarray | None = None
    image: np.ndarray | None = None
    target_image: np.ndarray | None = None
    hole: np.ndarray | None = None
    weights: np.ndarray | None = None
    start_totals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0
    generated_vertices: np.ndarray | None = None
    blend: np.ndarray | None = None


# ---------------------------------------------------------------------------------- the terms
def hole_weights(hole, window: int = 7) -> torch.Tensor:
    """The context weights of paper Eq. 3: hole (B, 1, H, W) bool/float (1 = missing pixel) →
    W (B, 1, H, W) float32: on a kept pixel the share of hole pixels among the pixels of the
    ``window`` × ``window`` box around it (inside the image), 0 on hole pixels."""
    h = torch.as_tensor(np.asarray(hole) if not torch.is_tensor(hole) else hole).float()
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and positive, got {window}")
    share = F.avg_pool2d(h, window, stride=1, padding=window // 2, count_include_pad=False)
    return share * (1.0 - h)


def context_loss(generated: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3 normalized: Σ W·|G − y| / Σ W per image. generated (B, 1, H, W); target and
    weights (B or 1, 1, H, W). Returns (B,); zero where Σ W = 0 (no hole)."""
    w = weights.expand_as(generated)
    num = (w * (generated - target).abs()).flatten(1).sum(1)
    return num / w.flatten(1).sum(1).clamp(min=1e-8)


def prior_loss(logits: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 4 without λp: log(1 − D) with D = sigmoid(logits), computed stably as
    −softplus(logits). logits (B,) → (B,); decreasing in D."""
    return -F.softplus(logits)


def geometry_loss(points: torch.Tensor, target, present) -> torch.Tensor:
    """Paper Eq. 5 without λ2, as a mean: points (B, K, 3) mm (the generated face's soft-tissue
    points), target (K, 3) mm, present (K,) bool → (B,) mean distance (mm) over present
    landmarks (0 when none is present)."""
    t = torch.as_tensor(np.asarray(target, np.float32) if not torch.is_tensor(target) else target,
                        dtype=points.dtype, device=points.device)
    m = torch.as_tensor(np.asarray(present, bool) if not torch.is_tensor(present) else present,
                        device=points.device).bool()
    if not bool(m.any()):
        return points.new_zeros(points.shape[0])
    d = points[:, m] - torch.nan_to_num(t[m])[None]
    return torch.sqrt((d * d).sum(-1) + 1e-12).mean(1)


def definite_loss(vertices: torch.Tensor, definite, definite_target) -> torch.Tensor:
    """Definite regions pinned: vertices (B, V, 3) mm, definite (V,) bool, definite_target
    (V, 3) mm (NaN = unknown) → (B,) mean distance (mm) over definite vertices with a target
    (0 when there are none)."""
    if definite is None or definite_target is None:
        return vertices.new_zeros(vertices.shape[0])
    t = torch.as_tensor(np.asarray(definite_target, np.float32)
                        if not torch.is_tensor(definite_target) else definite_target,
                        dtype=vertices.dtype, device=vertices.device)
    m = torch.as_tensor(np.asarray(definite, bool) if not torch.is_tensor(definite) else definite,
                        device=vertices.device).bool() & torch.isfinite(t).all(-1)
    if not bool(m.any()):
        return vertices.new_zeros(vertices.shape[0])
    d = vertices[:, m] - t[m][None]
    return torch.sqrt((d * d).sum(-1) + 1e-12).mean(1)


def blend_weights(model, revise, band_mm: float = 10.0) -> np.ndarray:
    """Per-vertex share of the regenerated face in the result: (V,) float32, 1 on the revised
    vertices, falling smoothly (smoothstep of the geodesic distance along the mesh's edges) to 0
    at ``band_mm`` from them; all ones when band_mm ≤ 0 (no blending)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import dijkstra

    revise = np.asarray(revise, bool).reshape(-1)
    n = model.n_vertices
    if band_mm <= 0:
        return np.ones(n, np.float32)
    if not revise.any():
        return np.zeros(n, np.float32)
    f = model.faces
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    v = model.v_template.astype(np.float64)
    length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1) + 1e-9
    # one virtual source joined to every revised vertex at zero length: one Dijkstra run
    src = np.full(int(revise.sum()), n)
    rows = np.concatenate([e[:, 0], src])
    cols = np.concatenate([e[:, 1], np.flatnonzero(revise)])
    vals = np.concatenate([length, np.full(len(src), 1e-9)])
    graph = sp.coo_matrix((vals, (rows, cols)), shape=(n + 1, n + 1)).tocsr()
    d = dijkstra(graph, directed=False, indices=n, limit=band_mm * 1.01)[:n]
    t = np.clip(1.0 - d / band_mm, 0.0, 1.0)
    w = t * t * (3.0 - 2.0 * t)
    w[revise] = 1.0
    return w.astype(np.float32)


# ---------------------------------------------------------------------------------- GII-GC
def _checked_inputs(model, inpainter: Inpainter, target, present, revise, starts: int,
                    iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refuse another face model, no start or iteration, and misshapen inputs.

    Returns revise (V,) bool, present (K,) bool (false where the target is not finite) and
    target (K, 3) float32 mm.
    """
    inpainter.check_model(model)
    if starts < 1 or iterations < 1:
        raise SkullsearchError(f"gii_gc needs starts ≥ 1 and iterations ≥ 1 (got starts {starts}, "
                               f"iterations {iterations})")
    n_v = model.n_vertices
    revise = np.asarray(revise, bool).reshape(-1)
    present = np.asarray(present, bool).reshape(-1)
    target = np.asarray(target, np.float32).reshape(-1, 3)
    if revise.shape != (n_v,):
        raise SkullsearchError(f"revise must be ({n_v},) bool (one flag per vertex), got {revise.shape}")
    if target.shape != (len(present), 3):
        raise SkullsearchError(f"target must be ({len(present)}, 3) mm, got {target.shape}")
    present = present & np.isfinite(target).all(1)
    return revise, present, target


@dataclass
class _Problem:
    """The fixed inputs of one GII-GC run, on the device ``dev`` it runs on.

    model: the FaceModel; inpainter (its G, D and Ψ_E in eval mode on ``dev``); w: the weights;
    canon (1, 228) the candidate's canonical code; base (1, V, 3) mm its mesh (face frame);
    blend (1, V, 1) the generated face's share per vertex; y (1, 1, S, S) the candidate's
    render; hole (1, 1, S, S) bool the revised pixels; wmap (1, 1, S, S) the context weights W;
    tgt (K, 3) mm the extended landmarks and pres (K,) bool the present ones; dfn (V,) bool the
    definite vertices and dtgt (V, 3) mm their targets (NaN unknown), or None.
    """

    model: object
    inpainter: Inpainter
    w: GIIWeights
    dev: torch.device
    canon: np.ndarray
    base: torch.Tensor
    blend: torch.Tensor
    y: torch.Tensor
    hole: torch.Tensor
    wmap: torch.Tensor
    tgt: torch.Tensor
    pres: torch.Tensor
    dfn: torch.Tensor | None
    dtgt: torch.Tensor | None

    @property
    def neutral(self) -> bool:
        return bool(self.inpainter.config.get("neutral", True))

    def evaluate(self, zz: torch.Tensor):
        """L(z) for latents zz (B, z_dim): total (B,), the weighted terms {name: (B,)}, the
        unweighted geometry and definite distances (B,) mm, the renders G(z) (B, 1, S, S) and the
        codes Ψ_E(G(z)) (B, 228)."""
        w, inp, base = self.w, self.inpainter, self.base
        img = inp.generator(zz)
        ctx = context_loss(img, self.y, self.wmap)
        pri = prior_loss(inp.discriminator(img))
        codes = inp.encoder.predict_codes(img)
        verts = base + self.blend * (code_vertices(self.model, codes) - base)  # kept surface stays
        pts = self.model.soft_tissue(vertices=verts)
        geo = geometry_loss(pts, self.tgt, self.pres)
        dl = definite_loss(verts, self.dfn, self.dtgt)
        terms = {"context": w.context * ctx, "prior": w.prior * pri,
                 "geometry": w.geometry * geo, "definite": w.definite * dl}
        total = sum(terms.values())
        return total, terms, geo, dl, img, codes


def _problem(model, inpainter: Inpainter, code, target, present, revise, definite, definite_target,
             w: GIIWeights, device) -> _Problem:
    """Move the inpainter to the device, render the candidate and its hole, and put the targets
    on the device (see :class:`_Problem`)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else inpainter.device
    dev = torch.device(device)
    inpainter.to(dev).eval()
    canon = canonical_codes(code, model, bool(inpainter.config.get("neutral", True)))
    with torch.no_grad():
        base = code_vertices(model, canon)
    blend = torch.as_tensor(blend_weights(model, revise, w.blend_mm), device=dev)[None, :, None]
    base_t = base.to(dev)
    r = render_normalized(model, base, size=inpainter.size, vertex_mask=revise[None])
    y = torch.as_tensor(np.asarray(r.image, np.float32), device=dev)  # (1, 1, S, S)
    hole = torch.as_tensor(np.asarray(r.masked), device=dev)
    wmap = hole_weights(hole, w.window).to(dev)
    dfn = None if definite is None else torch.as_tensor(np.asarray(definite, bool), device=dev)
    dtgt = None if definite_target is None else torch.as_tensor(
        np.asarray(definite_target, np.float32), device=dev)
    return _Problem(model=model, inpainter=inpainter, w=w, dev=dev, canon=canon, base=base_t,
                    blend=blend, y=y, hole=hole, wmap=wmap, tgt=torch.as_tensor(target, device=dev),
                    pres=torch.as_tensor(present, device=dev), dfn=dfn, dtgt=dtgt)


def _images(pb: _Problem) -> dict:
    """The result's images (S, S) numpy: the candidate's render, its hole and the weights W."""
    return {"target_image": pb.y[0, 0].cpu().numpy(), "hole": pb.hole[0, 0].cpu().numpy(),
            "weights": pb.wmap[0, 0].cpu().numpy()}


def _candidate_result(pb: _Problem, t0: float) -> GIIResult:
    """Nothing to regenerate: the candidate itself is the answer (0 iterations, one loss record)."""
    w, base = pb.w, pb.base
    with torch.no_grad():
        pts = pb.model.soft_tissue(vertices=base)
        geo = geometry_loss(pts, pb.tgt, pb.pres)
        dl = definite_loss(base, pb.dfn, pb.dtgt)
    rec = {"total": float(w.geometry * geo[0] + w.definite * dl[0]), "context": 0.0, "prior": 0.0,
           "geometry": float(w.geometry * geo[0]), "definite": float(w.definite * dl[0]),
           "geometry_mm": float(geo[0]), "definite_mm": float(dl[0])}
    v = base[0].cpu().numpy().astype(np.float32)
    return GIIResult(code=pb.canon[0].astype(np.float32), vertices=v, losses=[rec], iterations=0,
                     start=0, converged=True, image=pb.y[0, 0].cpu().numpy(), **_images(pb),
                     start_totals=np.array([rec["total"]], np.float32),
                     seconds=time.perf_counter() - t0, generated_vertices=v,
                     blend=np.zeros(pb.model.n_vertices, np.float32))


@dataclass
class _Run:
    """The state of the optimization, per start: history (one list of loss records per start),
    best_total (starts,) the lowest total so far, best_z (starts, z_dim) the latent that gave
    it, converged_at (starts,) the iteration each start converged at (−1: not yet)."""

    history: list[list[dict]]
    best_total: np.ndarray
    best_z: torch.Tensor
    converged_at: np.ndarray

    def record(self, total, terms, geo, dl, z: torch.Tensor) -> None:
        """Append each start's loss record and keep its best latent."""
        tot = total.detach().cpu().numpy()
        parts = {k: v.detach().cpu().numpy() for k, v in terms.items()}
        geo_np, dl_np = geo.detach().cpu().numpy(), dl.detach().cpu().numpy()
        for s in range(len(self.history)):
            self.history[s].append({"total": float(tot[s]), **{k: float(v[s]) for k, v in parts.items()},
                                    "geometry_mm": float(geo_np[s]), "definite_mm": float(dl_np[s])})
        better = tot < self.best_total
        self.best_total = np.where(better, tot, self.best_total)
        if better.any():
            mask = torch.as_tensor(better, device=z.device)
            self.best_z[mask] = z.detach()[mask]

    def all_converged(self, it: int, w: GIIWeights) -> bool:
        """Mark the starts whose total changed by at most ``tol`` (relative) over the last
        ``patience`` iterations as converged at ``it``; whether every start now has."""
        if it < w.patience:
            return False
        for s in np.flatnonzero(self.converged_at < 0):
            old, new = self.history[s][it - w.patience]["total"], self.history[s][it]["total"]
            if abs(old - new) <= w.tol * max(abs(old), 1e-8):
                self.converged_at[s] = it
        return bool((self.converged_at >= 0).all())


@contextlib.contextmanager
def _frozen(nets):
    """Turn off the gradients of the networks' parameters for the block (only z is optimized),
    then restore each parameter's flag."""
    params = [p for net in nets for p in net.parameters()]
    grad_flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, grad_flags, strict=True):
            p.requires_grad_(flag)


def _optimize(pb: _Problem, z: torch.Tensor, iterations: int) -> _Run:
    """Adam on the latents z (starts, z_dim) (in place) for at most ``iterations`` steps, until
    every start has converged; each step clips z to ±z_clip."""
    w, starts = pb.w, len(z)
    opt = torch.optim.Adam([z], lr=w.lr)
    run = _Run(history=[[] for _ in range(starts)], best_total=np.full(starts, np.inf),
               best_z=z.detach().clone(), converged_at=np.full(starts, -1))
    for it in range(iterations):
        total, terms, geo, dl, _, _ = pb.evaluate(z)
        run.record(total, terms, geo, dl, z)
        if run.all_converged(it, w):
            break
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
        opt.step()
        if w.z_clip > 0:
            with torch.no_grad():
                z.clamp_(-w.z_clip, w.z_clip)
    return run


def _best_result(pb: _Problem, run: _Run, img: torch.Tensor, codes: torch.Tensor,
                 t0: float) -> GIIResult:
    """The best start's result: img (starts, 1, S, S) and codes (starts, 228) of G and Ψ_E at
    each start's best latent."""
    best = int(np.argmin(run.best_total))
    out_code = canonical_codes(codes[best: best + 1], pb.model, pb.neutral)[0]
    with torch.no_grad():
        generated = code_vertices(pb.model, out_code[None]).to(pb.dev)
        verts = (pb.base + pb.blend * (generated - pb.base))[0].cpu().numpy().astype(np.float32)
    conv = bool(run.converged_at[best] >= 0)
    history = run.history[best]
    return GIIResult(
        code=out_code.astype(np.float32), vertices=verts,
        generated_vertices=generated[0].cpu().numpy().astype(np.float32),
        blend=pb.blend[0, :, 0].cpu().numpy(), losses=history,
        iterations=int(run.converged_at[best]) if conv else len(history), start=best,
        converged=conv, z=run.best_z[best].cpu().numpy(), image=img[best, 0].cpu().numpy(),
        **_images(pb), start_totals=run.best_total.astype(np.float32),
        seconds=time.perf_counter() - t0)


def gii_gc(model, inpainter: Inpainter, code, target, present, revise, definite=None,
           definite_target=None, *, starts: int = 4, iterations: int = 100, seed: int = 0,
           weights: GIIWeights | None = None, device=None) -> GIIResult:
    """Re-synthesize the revised part of a face with the GAN (see the module docstring).

    model: the FaceModel the inpainter was trained for; inpainter: :class:`Inpainter`
    (:func:`~skullsearch.inpaint.gan.load_inpainter`); code (228,) the candidate's code;
    target (36, 3) mm extended landmarks in the candidate's face frame; present (36,) bool;
    revise (V,) bool vertices to regenerate (their pixels are the hole); definite (V,) bool and
    definite_target (V, 3) mm face frame (NaN where unknown), or None; starts: random starts,
    optimized together as one batch; iterations: the most Adam steps; seed: the starts' z;
    weights: :class:`GIIWeights`; device: where to optimize (default the GPU when torch sees
    one, else the inpainter's device; the inpainter is moved there).
    Returns a :class:`GIIResult` (with nothing to revise: the candidate itself, 0 iterations).
    """
    t0 = time.perf_counter()
    w = weights or GIIWeights()
    revise, present, target = _checked_inputs(model, inpainter, target, present, revise, starts,
                                              iterations)
    pb = _problem(model, inpainter, code, target, present, revise, definite, definite_target, w,
                  device)
    if not revise.any():  # nothing to regenerate: the candidate is the answer
        return _candidate_result(pb, t0)
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(starts, inpainter.z_dim, generator=gen).to(pb.dev).requires_grad_(True)
    inp = pb.inpainter
    with _frozen((inp.generator, inp.discriminator, inp.encoder)):
        run = _optimize(pb, z, iterations)
        with torch.no_grad():
            _, _, _, _, img, codes = pb.evaluate(run.best_z)
    return _best_result(pb, run, img, codes, t0)


__all__ = ["GIIResult", "GIIWeights", "LOSS_KEYS", "blend_weights", "context_loss", "definite_loss",
           "geometry_loss", "gii_gc", "hole_weights", "prior_loss"]
