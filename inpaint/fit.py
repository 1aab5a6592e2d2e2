"""F3DMM-GC, the paper's baseline: fit the face code itself to the constraints, no GAN.

For each candidate (batched), find shape α, expression δ (and optionally the jaw pose) minimizing

    E = w_k · mean_{i kept} ‖v_i − k_i‖²           kept vertices stay where the candidate had them
      + Σ_{l present} w_l · ‖p_l − n_l‖²            soft-tissue points on the extended landmarks
      + w_d · mean_{j definite} ‖v_j − d_j‖²        forehead / back of head on the offset skull
      + w_r · (Σ (α/σ_α)² + Σ (δ/σ_δ)² + Σ θ²)      the Eq. 1 regularizer (coefficients in prior SDs)
      + w_s · Σ ((α − α_c)/σ_α)²  (+ the same for δ)  stay near the candidate's own code

everything in the face frame, mm. With the pose at zero the model is linear in (α, δ), so each
iteration is one exact batched least-squares solve (normal equations, float64). Iterations
re-weight: a present landmark still farther than ``match_margin`` × η from its target (η the
score's match threshold) has its weight multiplied by ``boost``, until every landmark is within
the margin (or ``iterations`` runs out) — so a reachable target ends with S = 1. With
``jaw=True`` a few L-BFGS steps then refine (α, δ, jaw rotation) on the same energy (LBS).

    res = f3dmm_gc(model, codes, target, present, keep, eta=eta)
    res.vertices, res.points, res.losses, res.iterations
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from skullsearch.encoder import code as code_layout


@dataclass
class FitWeights:
    """kept, landmarks, definite, reg, stay: the weights of the terms (see the module docstring);
    boost: factor on a landmark's weight per iteration while it is outside the margin.

    Defaults, measured on synthetic ground truth (benchmarks/inpaint_eval.py): ``reg`` = 1 (in
    units of a kept vertex's mean squared mm per squared prior SD) roughly halves the error
    against the true face compared with 1e-3, where the landmarks let the revised regions run
    off with large coefficients; S still reaches 1 through the re-weighting. The prior also
    pulls kept parts a little towards the model's mean (a few mm on an unusual face). ``stay``
    (not in the paper, default off) instead penalizes the change from the candidate's own code;
    it measured slightly worse against the truth."""

    kept: float = 1.0
    landmarks: float = 1.0
    definite: float = 1.0
    reg: float = 1.0
    stay: float = 0.0
    boost: float = 4.0
    #: stop boosting a candidate's landmarks once its coefficients leave this quantile of the
    #: prior (χ² with one degree per coefficient): a real skull's extended landmarks need not lie
    #: on any face of the model, and boosting without bound buys S = 1 with faces tens of SDs
    #: from the mean (measured on a real CT head: 46 mm from the real skin). None: no bound.
    prior_quantile: float | None = 0.999
    #: weight each landmark by 1/σ_i² (σ_i: the scorer's σ, table SD ⊕ placement SD) and solve
    #: once, without boosting: the maximum a posteriori face under the model's prior when the
    #: extended landmarks are noisy by their table SDs. The default: on synthetic ground truth
    #: (benchmarks/inpaint_eval.py, ICT model) it lands 1.83 mm from the true face against 2.49 mm
    #: for the paper's boosting to S = 1 (1.98 vs 3.27 mm with depths off by one table SD), at
    #: S 0.95 instead of 0.99. False: the paper's re-weighting towards S = 1.
    landmark_sigma: bool = True


@dataclass
class FitResult:
    """codes (C, 228) the fitted codes (shape and expression set; pose zero but for the fitted
    jaw rotation, the pose the vertices have; camera and light kept);
    vertices (C, V, 3) and points (C, 36, 3) mm face frame; losses: per candidate, one dict per
    iteration (iteration, total, kept, landmarks, definite, reg: the terms at the base weights,
    and max_ratio: the worst landmark distance / η); iterations (C,) int; within_margin (C,)
    bool; seconds (C,) wall time shared equally over the batch."""

    codes: np.ndarray
    vertices: np.ndarray
    points: np.ndarray
    losses: list[list[dict]]
    iterations: np.ndarray
    within_margin: np.ndarray
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))


def loss_terms(vertices, points, coeffs, kept_positions, keep, target, present, definite_target,
               landmark_weights=None, stay_from=None) -> dict[str, torch.Tensor]:
    """The F3DMM-GC terms, each (C,) float, unweighted (see the module docstring):

    kept = mean over kept vertices of ‖v − k‖²; landmarks = Σ_present w_l ‖p − n‖² (w_l = 1
    unless ``landmark_weights`` (C, 36) is given); definite = mean over definite vertices with a
    finite target of ‖v − d‖²; reg = Σ coeffs² (coeffs already divided by their prior SDs);
    stay = Σ (coeffs − stay_from)² (0 when ``stay_from`` (C, P), the candidate's, is None).

    vertices (C, V, 3), points (C, 36, 3), coeffs (C, P), kept_positions (C, V, 3), keep (C, V)
    bool, target (C, 36, 3), present (C, 36) bool, definite_target (C, V, 3) (NaN: unknown) or
    None. Torch tensors or numpy arrays; returns torch tensors.
    """
    t = _t
    v, p, x = t(vertices), t(points), t(coeffs)
    keep = keep if torch.is_tensor(keep) else torch.as_tensor(np.array(keep, dtype=bool))
    present = present if torch.is_tensor(present) else torch.as_tensor(np.array(present, dtype=bool))
    k = keep.to(v.dtype)
    kept = (((v - t(kept_positions)) ** 2).sum(-1) * k).sum(1) / k.sum(1).clamp_min(1)
    tgt = torch.nan_to_num(t(target))
    lw = present.to(v.dtype) * (1.0 if landmark_weights is None else t(landmark_weights))
    lms = (((p - tgt) ** 2).sum(-1) * lw).sum(1)
    if definite_target is None:
        definite = torch.zeros(len(v), dtype=v.dtype)
    else:
        d = t(definite_target)
        known = torch.isfinite(d).all(-1).to(v.dtype)
        definite = (((v - torch.nan_to_num(d)) ** 2).sum(-1) * known).sum(1) / known.sum(1).clamp_min(1)
    reg = (x**2).sum(1)
    stay = torch.zeros_like(reg) if stay_from is None else ((x - t(stay_from)) ** 2).sum(1)
    return {"kept": kept, "landmarks": lms, "definite": definite, "reg": reg, "stay": stay}


def f3dmm_gc(model, codes, target, present, keep, kept_positions=None, definite_target=None, *,
             eta=None, sigma=None, weights: FitWeights | None = None, iterations: int = 12,
             expression: bool = True, jaw: bool = False, jaw_steps: int = 30,
             match_margin: float = 0.5) -> FitResult:
    """Fit codes to kept vertices, extended landmarks and definite targets (F3DMM-GC), batched.

    model: the gallery's :class:`~skullsearch.FaceModel`; codes (C, 228) the candidates' codes
    (their shape starts the fit); target (C, 36, 3) or (36, 3) mm extended landmarks in each
    candidate's face frame; present (C, 36) or (36,) bool; keep (C, V) bool vertices that stay;
    kept_positions (C, V, 3) where they stay (default: the candidates' neutral faces);
    definite_target (C, V, 3) mm (NaN: unknown) or None; eta (36,) or (C, 36) mm match
    thresholds in the face frame (default 3 mm); sigma (36,) or (C, 36) mm: the landmarks' noise
    SDs in the face frame (used with ``weights.landmark_sigma``; default η / 1.5); iterations:
    re-weighting rounds (each one
    exact solve); expression: fit δ too; jaw: also fit the jaw rotation (L-BFGS, ``jaw_steps``
    steps). Returns a :class:`FitResult`.
    """
    t0 = time.perf_counter()
    w = weights or FitWeights()
    codes = np.asarray(codes, np.float32)
    c = len(codes)
    n_v = model.n_vertices
    s_n = min(model.n_shape, code_layout.SLICES["shape"].stop)
    e_n = min(model.n_expression, code_layout.N_EXPRESSION) if expression else 0
    target = np.broadcast_to(np.asarray(target, np.float64), (c, 36, 3))
    present = np.broadcast_to(np.asarray(present, bool), (c, 36))
    keep = np.broadcast_to(np.asarray(keep, bool), (c, n_v))
    eta = np.full(36, 3.0) if eta is None else np.asarray(eta, np.float64)
    shape0 = np.asarray(code_layout.split(codes).shape[:, :s_n], np.float64)
    with torch.no_grad():
        base = model.vertices(shape=torch.as_tensor(shape0, dtype=torch.float32)).double().numpy()
    kept_pos = base if kept_positions is None else np.asarray(kept_positions, np.float64)
    d_tgt = None if definite_target is None else np.asarray(definite_target, np.float64)
    lin = _LinearFace(model, s_n, e_n)
    hv, gv = lin.vertex_normal_equations(keep, kept_pos, d_tgt, w)
    lw = present.astype(np.float64) * w.landmarks  # (C, 36)
    if w.landmark_sigma:
        sig = eta / 1.5 if sigma is None else np.asarray(sigma, np.float64)
        lw = lw / np.broadcast_to(sig, (c, 36)) ** 2
        iterations = 1
    x0 = np.concatenate([shape0 / lin.sd[:s_n], np.zeros((c, e_n))], axis=1)
    problem = _Problem(lin, hv, gv, x0, target, present, eta, kept_pos, keep, d_tgt, w, match_margin)
    x, verts, pts, lw_now, losses, iters = problem.reweight(lw, iterations)
    pose = np.zeros((c, 3 * model.n_joints))
    if jaw:
        x, pose, verts, pts, extra = _refine_jaw(model, x, x0, lin.sd, s_n, e_n, kept_pos, keep, target,
                                                 present, d_tgt, lw_now, w, jaw_steps)
        ratio = np.where(present, np.linalg.norm(pts - target, axis=-1) / eta, 0.0)
        _record(losses, np.zeros(c, bool), None, verts, pts, x, x0, kept_pos, keep, target, present, d_tgt,
                w, ratio, iteration=iters.copy())
        iters = iters + extra
    ratio_final = np.where(present, np.linalg.norm(pts - target, axis=-1) / eta, 0.0)
    secs = (time.perf_counter() - t0) / c
    return FitResult(codes=_with_coefficients(codes, x * lin.sd, s_n, e_n, pose),
                     vertices=verts.astype(np.float32), points=pts.astype(np.float32),
                     losses=losses, iterations=iters, within_margin=(ratio_final <= match_margin).all(1),
                     seconds=np.full(c, secs))


class _LinearFace:
    """The neutral face as a linear function of x, its coefficients in prior SDs: vertices
    v = T + A_v x (V, 3), soft-tissue points p = P0 + A_l x (36, 3), for the first s_n shape and
    e_n expression components."""

    def __init__(self, model, s_n: int, e_n: int):
        self.sd = np.concatenate([np.asarray(model.shape_std[:s_n], np.float64),
                                  np.asarray(model.expression_std[:e_n], np.float64)])
        a_v = np.concatenate([model.shapedirs[:, :, :s_n], model.exprdirs[:, :, :e_n]], axis=2)
        self.a_v = a_v.astype(np.float64) * self.sd  # (V, 3, P)
        self.tmpl = model.v_template.astype(np.float64)
        st = model.soft_tissue_points
        corners = model.faces[st.faces]  # (36, 3)
        bw = st.bary.astype(np.float64)
        self.a_l = (self.a_v[corners] * bw[..., None, None]).sum(1)  # (36, 3, P)
        self.p0 = (self.tmpl[corners] * bw[..., None]).sum(1)  # (36, 3)
        self.n_v, self.n_p = self.a_v.shape[0], self.a_v.shape[2]
        self.av = torch.as_tensor(self.a_v.reshape(self.n_v * 3, self.n_p))
        self.al = torch.as_tensor(self.a_l.reshape(36 * 3, self.n_p))

    def vertex_normal_equations(self, keep, kept_pos, d_tgt, w: FitWeights):
        """(H (C, P, P), g (C, P)) of the vertex rows: kept vertices where they stay, definite
        vertices at their targets (a vertex both kept and definite: the weighted mean)."""
        c = len(keep)
        wk = keep / np.maximum(keep.sum(1, keepdims=True), 1) * w.kept  # (C, V)
        rhs_v = np.where(keep[..., None], kept_pos, 0.0)  # (C, V, 3) targets of the vertex rows
        if d_tgt is not None:
            known = np.isfinite(d_tgt).all(-1)
            wd = known / np.maximum(known.sum(1, keepdims=True), 1) * w.definite
            tot = wk + wd
            rhs_v = np.where(tot[..., None] > 0, (wk[..., None] * rhs_v
                                                  + wd[..., None] * np.nan_to_num(d_tgt)) /
                             np.maximum(tot, 1e-300)[..., None], 0.0)
            wk = tot
        wv = torch.as_tensor(np.repeat(wk, 3, axis=1))  # (C, 3V)
        yv = torch.as_tensor((rhs_v - self.tmpl).reshape(c, -1))  # (C, 3V)
        hv = torch.matmul(self.av.T[None] * wv[:, None, :], self.av)  # (C, P, P)
        return hv, (wv * yv) @ self.av

    def evaluate(self, x: np.ndarray):
        """Vertices (C, V, 3) and soft-tissue points (C, 36, 3) of coefficients x (C, P)."""
        c = len(x)
        verts = self.tmpl + (x @ self.a_v.reshape(self.n_v * 3, self.n_p).T).reshape(c, self.n_v, 3)
        pts = self.p0 + (x @ self.a_l.reshape(108, self.n_p).T).reshape(c, 36, 3)
        return verts, pts


class _Problem:
    """F3DMM-GC's weighted least squares for a batch, and its re-weighting towards S = 1."""

    def __init__(self, lin: _LinearFace, hv, gv, x0, target, present, eta, kept_pos, keep, d_tgt,
                 w: FitWeights, match_margin: float):
        self.lin, self.hv, self.gv, self.x0 = lin, hv, gv, x0
        self.target, self.present, self.eta = target, present, eta
        self.kept_pos, self.keep, self.d_tgt, self.w, self.margin = kept_pos, keep, d_tgt, w, match_margin
        self.yl = torch.as_tensor(np.nan_to_num(target - lin.p0).reshape(len(x0), -1))  # (C, 108)

    def solve(self, lw_now: np.ndarray) -> np.ndarray:
        """The exact minimizer x (C, P) at landmark weights lw_now (C, 36)."""
        lin, w = self.lin, self.w
        wl = torch.as_tensor(np.repeat(lw_now, 3, axis=1))
        eye = torch.eye(lin.n_p, dtype=torch.float64)
        h = self.hv + torch.matmul(lin.al.T[None] * wl[:, None, :], lin.al) + (w.reg + w.stay) * eye
        g = self.gv + (wl * self.yl) @ lin.al + w.stay * torch.as_tensor(self.x0)
        return torch.linalg.solve(h, g).numpy()

    def reweight(self, lw: np.ndarray, iterations: int):
        """Solve, then boost the weights of landmarks still beyond match_margin × η, up to
        ``iterations`` solves or the prior bound. Returns (x, vertices, points, final weights,
        losses per candidate, iterations per candidate)."""
        c, w, x0 = len(self.x0), self.w, self.x0
        losses: list[list[dict]] = [[] for _ in range(c)]
        done = np.zeros(c, bool)
        iters = np.zeros(c, np.int64)
        x = x0.copy()
        lw_now = lw.copy()
        bound = np.full(c, np.inf)  # per candidate: never below where the candidate itself starts
        if w.prior_quantile is not None:
            from scipy.stats import chi2

            bound = np.maximum(float(chi2.ppf(w.prior_quantile, self.lin.n_p)), (x0 ** 2).sum(1))
        for it in range(max(int(iterations), 1)):
            x_new = self.solve(lw_now)
            # past the prior bound: keep the last plausible solution and stop boosting (the first
            # solve, at the base weights, is always taken)
            beyond = ((x_new ** 2).sum(1) > bound) & (it > 0) & ~done
            done |= beyond
            x = np.where(done[:, None], x, x_new)
            verts, pts = self.lin.evaluate(x)
            dist = np.linalg.norm(pts - self.target, axis=-1)
            ratio = np.where(self.present, dist / self.eta, 0.0)
            _record(losses, done, it, verts, pts, x, x0, self.kept_pos, self.keep, self.target,
                    self.present, self.d_tgt, w, ratio)
            iters = np.where(done, iters, it + 1)
            ok = (ratio <= self.margin).all(1)
            done |= ok
            if done.all():
                break
            lw_now = np.where(~done[:, None] & (ratio > self.margin), lw_now * w.boost, lw_now)
        return x, verts, pts, lw_now, losses, iters


def _with_coefficients(codes: np.ndarray, coef: np.ndarray, s_n: int, e_n: int,
                       pose: np.ndarray) -> np.ndarray:
    """The codes with shape, expression (the rest zero) and pose replaced by the fit's."""
    out = codes.copy()
    sh = code_layout.SLICES["shape"].start
    out[:, sh: sh + s_n] = coef[:, :s_n]
    es = code_layout.SLICES["expression"].start
    out[:, es: es + code_layout.N_EXPRESSION] = 0.0
    out[:, es: es + e_n] = coef[:, s_n:]
    ps = code_layout.SLICES["pose"].start
    n_pose = min(pose.shape[1], code_layout.SLICES["pose"].stop - ps)
    out[:, ps: ps + n_pose] = pose[:, :n_pose]
    return out


def _record(losses, done, it, verts, pts, x, x0, kept_pos, keep, target, present, d_tgt, w, ratio,
            iteration=None):
    terms = loss_terms(verts, pts, x, kept_pos, keep, target, present, d_tgt, stay_from=x0)
    total = (w.kept * terms["kept"] + w.landmarks * terms["landmarks"] + w.definite * terms["definite"]
             + w.reg * terms["reg"] + w.stay * terms["stay"])
    for i in range(len(losses)):
        if done[i]:
            continue
        row = {"iteration": int(it if iteration is None else iteration[i]), "total": float(total[i])}
        row.update({k: float(v[i]) for k, v in terms.items()})
        row["max_ratio"] = float(ratio[i].max())
        losses[i].append(row)


def _refine_jaw(model, x, x0, sd, s_n, e_n, kept_pos, keep, target, present, d_tgt, lw, w, steps):
    """L-BFGS on (coefficients, jaw rotation) through the model's LBS; same energy."""
    c = len(x)
    sd_t = torch.as_tensor(sd, dtype=torch.float32)
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    x0_t = torch.as_tensor(x0, dtype=torch.float32)
    jaw = torch.zeros(c, 3, requires_grad=True)
    opt = torch.optim.LBFGS([xt, jaw], max_iter=steps, line_search_fn="strong_wolfe")
    kp = torch.as_tensor(kept_pos, dtype=torch.float32)
    keep_t = torch.as_tensor(np.array(keep, dtype=bool))
    tg = torch.as_tensor(np.nan_to_num(target), dtype=torch.float32)
    pr = torch.as_tensor(np.array(present, dtype=bool))
    lw_t = torch.as_tensor(lw, dtype=torch.float32) / max(w.landmarks, 1e-12)
    dt = None if d_tgt is None else torch.as_tensor(d_tgt, dtype=torch.float32)
    n_eval = [0]

    def forward():
        coef = xt * sd_t
        pose = torch.zeros(c, 3 * model.n_joints)
        jaw_idx = torch.arange(code_layout.JAW_POSE.start, code_layout.JAW_POSE.stop)
        pose = pose.index_put((torch.arange(c)[:, None], jaw_idx[None]), jaw)
        verts = model.vertices(shape=coef[:, :s_n], expression=coef[:, s_n:] if e_n else None, pose=pose)
        pts = model.soft_tissue(vertices=verts)
        return verts, pts, pose

    def closure():
        opt.zero_grad()
        verts, pts, _ = forward()
        t = loss_terms(verts, pts, xt, kp, keep_t, tg, pr, dt, landmark_weights=lw_t, stay_from=x0_t)
        loss = (w.kept * t["kept"] + w.landmarks * t["landmarks"] + w.definite * t["definite"]
                + w.reg * (t["reg"] + (jaw**2).sum(1)) + w.stay * t["stay"]).sum()
        loss.backward()
        n_eval[0] += 1
        return loss

    opt.step(closure)
    with torch.no_grad():
        verts, pts, pose = forward()
    return (xt.detach().double().numpy(), pose.numpy(), verts.double().numpy(), pts.double().numpy(),
            n_eval[0])


def _t(x) -> torch.Tensor:
    if torch.is_tensor(x):
        return x
    return torch.as_tensor(np.array(x, dtype=np.float64))
