"""Exact superimposition scores, batched over candidates.

For each candidate face (its 36 soft-tissue points p_i, model frame) and the skull's extended
landmarks n_i (skull frame), find the similarity transform T (rotation, translation, scale bounded
to ±10 % by default, or fixed) that **maximizes the number of matched landmarks**
‖T(p_i) − n_i‖ < η_i, not only the RMS: a least-squares fit on all present landmarks, then refits
on the inliers at shrinking tolerances (and from a trimmed start), keeping per candidate the
transform with the most matches (ties: the lower RMS). Then

- S = M / (M + U), the paper's score (M matched, U unmatched among present landmarks);
- a Gaussian log-likelihood Σ_i log N(d_i; 0, σ_i) with σ_i² = SD_i² + σ_place² (table SD and
  landmark placement noise), comparable between candidates of one query; given the faces' own
  uncertainty (``face_cov``: the fit's posterior covariance of each soft-tissue point), the 3D
  Gaussian Σ_i log N(r_i; 0, σ_i² I + s² R Σ_face,i Rᵀ) of the residual vectors r_i instead (the
  same transform and matches; with Σ_face = 0 it ranks exactly as the isotropic form); with
  ``ScoreConfig.tangent_sd_mm`` = τ > 0, s²τ² (I − m_i m_iᵀ) more (m_i the face's skin normal at
  the point, turned with it: an SD along the skin, where the skull's side and the face model
  place a named point differently);
- per-landmark distances, matched flags and the transform.

Everything is numpy over blocks of candidates: no Python loop over candidates. Each fit is a
weighted Umeyama/Horn alignment whose rotation comes from the largest eigenpair of Horn's 4 × 4
quaternion matrix, found in closed form for a whole block at once (Newton on the characteristic
quartic, then the eigenvector from the adjugate: the QCP method of Theobald 2005) instead of one
LAPACK SVD per candidate; only the present landmarks are touched, and candidates are processed in
cache-sized blocks. The scores of a face do not depend on which other faces share its block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skullsearch.retrieval.horn import adjugate4, horn_quartic, quaternion_rotation

PLACEMENT_SD_MM = 1.0
#: Candidates per internal block (cache-sized; results do not depend on it).
BLOCK = 2048


@dataclass
class ScoreConfig:
    """eta_sd: threshold η_i = eta_sd × SD_i (per landmark, from the tissue table); eta_mm: a
    global threshold in mm instead (overrides eta_sd); scale_bound: allowed relative scale change
    (0.1 = ±10 %; 0 fixes the scale at 1); iterations: inlier refits; tangent_sd_mm: an SD (mm)
    the likelihood adds *along the skin* at each landmark (across the face's skin normal there:
    the skull's side and the face model's annotation place a named point differently along the
    skin, not in depth); 0 (the default) leaves the likelihood isotropic. S is unchanged."""

    eta_sd: float = 1.5
    eta_mm: float | None = None
    eta_per_landmark: dict | None = None
    scale_bound: float = 0.1
    iterations: int = 6
    placement_sd_mm: float = PLACEMENT_SD_MM
    tangent_sd_mm: float = 0.0

    def thresholds(self, sd: np.ndarray) -> np.ndarray:
        """(36,) η_i in mm."""
        from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES, base_key

        eta = np.full(len(sd), self.eta_mm) if self.eta_mm is not None else self.eta_sd * np.asarray(sd)
        for name, value in (self.eta_per_landmark or {}).items():
            for i, n in enumerate(SOFT_TISSUE_NAMES):
                if n == name or base_key(n) == name:
                    eta[i] = value
        return eta.astype(np.float64)

    def sigma(self, sd: np.ndarray) -> np.ndarray:
        """(36,) σ_i of the likelihood score: sqrt(SD_i² + σ_place²) mm."""
        return np.sqrt(np.asarray(sd, np.float64) ** 2 + self.placement_sd_mm**2)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Scores:
    """Per candidate (C,): s, matched, present, likelihood, rms_mm; per landmark (C, 36): distance_mm
    (NaN where absent), matched; transforms: scale (C,), rotation (C, 3, 3), translation (C, 3)
    mapping face (model frame) → skull frame."""

    s: np.ndarray
    matched: np.ndarray
    present: np.ndarray
    likelihood: np.ndarray
    rms_mm: np.ndarray
    distance_mm: np.ndarray
    matched_flags: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray


# ---------------------------------------------------------------- batched Horn / QCP alignment
def _horn_rotation(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal rotations for blocks of 3 × 3 correlation matrices, in closed form.

    S (B, 3, 3) with S[a, b] = Σ w (src_a − μ_src)(dst_b − μ_dst). Returns (λ (B,), R (B, 3, 3)):
    the proper rotation R maximizing Σ w dstᵀ R src and λ that maximum (the Umeyama solution's
    Σ d_i σ_i). λ is the largest eigenvalue of Horn's 4 × 4 quaternion matrix N: Newton on its
    characteristic quartic from an upper bound (QCP, Theobald 2005); the quaternion is the
    longest row of adj(N − λI)."""
    n, c2, c1, f2 = horn_quartic(S)
    _, c0 = adjugate4(n)
    # λ_max ≤ nuclear norm of S ≤ √3 · Frobenius norm: Newton from above falls monotonically
    # (each matrix stops on its own, so that a result does not depend on the rest of the block)
    lam = np.sqrt(3.0 * f2)
    active = np.ones(len(lam), bool)
    for _ in range(100):
        l2 = lam * lam
        p = (l2 + c2) * l2 + c1 * lam + c0
        dp = (4.0 * l2 + 2.0 * c2) * lam + c1
        step = np.where(active, p / np.where(dp > 0, dp, np.inf), 0.0)
        lam = lam - step
        active &= np.abs(step) > 1e-15 * np.maximum(lam, 1e-30)
        if not active.any():
            break
    m = [[n[i][j] - lam if i == j else n[i][j] for j in range(4)] for i in range(4)]
    adj, _ = adjugate4(m)
    diag = np.abs(np.stack([adj[:, i, i] for i in range(4)], -1))
    q = np.take_along_axis(adj, diag.argmax(1)[:, None, None], 1)[:, 0]
    q = q / np.sqrt(np.maximum((q * q).sum(-1, keepdims=True), 1e-300))
    return lam, quaternion_rotation(q)


def _fit(px, py, pz, pn2, tx, ty, tz, w, bounds, allow_scale):
    """Weighted similarity fits of a block: points (B, k) per coordinate, their squared norms
    pn2 (B, k), the (centred) target (k,) per coordinate, weights w (B, k) or None (all 1).
    Returns scale (B,), rotation (B, 3, 3), translation (B, 3)."""
    if w is None:
        wsum = np.full(len(px), float(px.shape[1]))
        wx, wy, wz = px, py, pz
        mt = np.stack([np.full(len(px), v.sum()) for v in (tx, ty, tz)], -1) / wsum[:, None]
        var_raw = pn2.sum(1)
    else:
        wsum = np.maximum(w.sum(1), 1e-12)
        wx, wy, wz = w * px, w * py, w * pz
        mt = np.stack([(w * v).sum(1) for v in (tx, ty, tz)], -1) / wsum[:, None]
        var_raw = (w * pn2).sum(1)
    mp = np.stack([wx.sum(1), wy.sum(1), wz.sum(1)], -1) / wsum[:, None]  # (B, 3)
    S = np.empty((len(px), 3, 3))
    for a, wa in enumerate((wx, wy, wz)):
        for b, tb in enumerate((tx, ty, tz)):
            S[:, a, b] = (wa * tb).sum(1) / wsum - mp[:, a] * mt[:, b]
    var = var_raw / wsum - (mp * mp).sum(1)
    lam, rot = _horn_rotation(S)
    if allow_scale:
        scale = lam / np.maximum(var, 1e-12)
        if bounds is not None:
            scale = np.clip(scale, *bounds)
    else:
        scale = np.ones(len(px))
    trans = mt - scale[:, None] * np.einsum("bij,bj->bi", rot, mp)
    return scale, rot, trans


def _distances(px, py, pz, tx, ty, tz, scale, rot, trans):
    """(B, k) squared distances ‖s·R·p + t − target‖²."""
    sr = scale[:, None, None] * rot
    out = None
    for i, tc in enumerate((tx, ty, tz)):
        e = (sr[:, i, 0, None] * px + sr[:, i, 1, None] * py + sr[:, i, 2, None] * pz
             + (trans[:, i, None] - tc))
        out = e * e if out is None else out + e * e
    return out


def _score_block(p, tgt, eta, cfg):
    """Best transform per candidate of one block. p (B, k, 3) present landmarks only; tgt (k, 3)
    centred. Returns (d (B, k), n (B,), rms (B,), scale, rot, trans)."""
    b, k = p.shape[:2]
    px, py, pz = (np.ascontiguousarray(p[..., i]) for i in range(3))
    pn2 = px * px + py * py + pz * pz
    tx, ty, tz = tgt[:, 0], tgt[:, 1], tgt[:, 2]
    bounds = (1 - cfg.scale_bound, 1 + cfg.scale_bound) if cfg.scale_bound > 0 else None
    allow = cfg.scale_bound > 0

    def fit(w):
        return _fit(px, py, pz, pn2, tx, ty, tz, w, bounds, allow)

    def evaluate(tr):
        d2 = _distances(px, py, pz, tx, ty, tz, *tr)
        return np.sqrt(d2), (d2.sum(1) / k)

    best = {}

    def keep(tr):
        d, ms = evaluate(tr)
        rms = np.sqrt(ms)
        n = (d < eta).sum(1)
        if not best:
            best.update(d=d.copy(), n=n, rms=rms, s=tr[0].copy(), r=tr[1].copy(), t=tr[2].copy())
            return d
        better = (n > best["n"]) | ((n == best["n"]) & (rms < best["rms"] - 1e-9))
        if better.any():
            for key, v in (("d", d), ("n", n), ("rms", rms), ("s", tr[0]), ("r", tr[1]), ("t", tr[2])):
                best[key][better] = v[better]
        return d

    # start 1: all present landmarks; start 2: trimmed (drop the worst quarter of start 1)
    d = keep(fit(None))
    starts = [d]
    cut = np.quantile(d, 0.75, axis=1)
    starts.append(keep(fit((d <= cut[:, None]).astype(np.float64))))
    for d in starts:
        for it in range(cfg.iterations):
            tol = eta * (2.0 - it / max(cfg.iterations - 1, 1))  # 2η → η
            w = (d < tol).astype(np.float64)
            w[w.sum(1) < 3] = 1.0
            d = keep(fit(w))
    return best["d"], best["n"], best["rms"], best["s"], best["r"], best["t"]


def score(
    face_points: np.ndarray,
    target: np.ndarray,
    present: np.ndarray,
    sd: np.ndarray,
    config: ScoreConfig | None = None,
    device: str | None = None,
    face_cov: np.ndarray | None = None,
    normals: np.ndarray | None = None,
) -> Scores:
    """Score candidates against a skull's extended landmarks.

    face_points (C, 36, 3) mm; target (36, 3) mm extended landmarks (any values where absent);
    present (36,) bool; sd (36,) mm table SDs; face_cov (C, 36, 3, 3) mm² each face point's
    covariance (model frame; changes only the likelihood, see the module docstring), rows of
    NaN where a face has none (the isotropic term alone). normals (36, 3): the face's unit skin
    normals at its points (model frame; :meth:`FaceModel.soft_tissue_normals`), needed when
    ``config.tangent_sd_mm`` > 0: the likelihood then reads each residual's component along the
    skin with σ_i² + s² tangent_sd² and across it with σ_i². device: None scores in numpy; a torch device
    ("cuda", "cpu") scores with the torch twin (:mod:`skullsearch.retrieval.score_torch`, the same
    algorithm in float64, the same matches). Returns :class:`Scores`.
    """
    cfg = config or ScoreConfig()
    mask = np.asarray(present, bool)
    k = int(mask.sum())
    if k < 3:
        raise ValueError("at least 3 landmarks are needed to align a face to a skull")
    c = len(face_points)
    tgt = np.asarray(target, np.float64)[mask]
    centre = tgt.mean(0)
    tgt = tgt - centre
    eta = cfg.thresholds(sd)[mask]
    sigma = cfg.sigma(sd)[mask]
    d = np.empty((c, k))
    n = np.empty(c, np.int64)
    rms = np.empty(c)
    scale = np.empty(c)
    rot = np.empty((c, 3, 3))
    trans = np.empty((c, 3))
    if device is not None:
        from skullsearch.retrieval.score_torch import score_blocks

        d, n, rms, scale, rot, trans = score_blocks(np.asarray(face_points)[:, mask], tgt, eta,
                                                    cfg.scale_bound, cfg.iterations, device=device)
        n = n.astype(np.int64)
    else:
        for a in range(0, c, BLOCK):
            sl = slice(a, min(a + BLOCK, c))
            p = np.asarray(face_points[sl], np.float64)[:, mask]
            d[sl], n[sl], rms[sl], scale[sl], rot[sl], trans[sl] = _score_block(p, tgt, eta, cfg)
    trans += centre
    tangent = cfg.tangent_sd_mm
    if tangent > 0 and normals is None:
        raise ValueError("tangent_sd_mm needs the face's skin normals at its points (normals=)")
    if face_cov is None and tangent > 0:
        ll = _likelihood_tangent(np.asarray(face_points)[:, mask], np.asarray(normals, np.float64)[mask],
                                 np.asarray(target, np.float64)[mask], sigma, tangent, scale, rot, trans)
    elif face_cov is None:
        ll = (-0.5 * (d / sigma) ** 2 - np.log(sigma * np.sqrt(2 * np.pi))).sum(1)
    else:
        cov = np.nan_to_num(np.asarray(face_cov, np.float64)[:, mask], nan=0.0)
        if tangent > 0:
            nu = np.asarray(normals, np.float64)[mask]
            cov = cov + tangent**2 * (np.eye(3) - nu[:, :, None] * nu[:, None, :])[None]
        ll = _likelihood_3d(np.asarray(face_points)[:, mask], cov,
                            np.asarray(target, np.float64)[mask], sigma, scale, rot, trans)
    dist = np.full((c, len(mask)), np.nan)
    dist[:, mask] = d
    flags = np.zeros((c, len(mask)), bool)
    flags[:, mask] = d < eta
    return Scores(
        s=n / k, matched=n.astype(np.int32), present=np.full(c, k, np.int32),
        likelihood=ll, rms_mm=rms, distance_mm=dist, matched_flags=flags,
        scale=scale, rotation=rot, translation=trans,
    )


def _likelihood_3d(p, cov, target, sigma, scale, rot, trans) -> np.ndarray:
    """(C,) Σ_i log N(r_i; 0, σ_i² I + s² R Σ_i Rᵀ), r_i = s R p_i + t − n_i. p (C, k, 3), cov
    (C, k, 3, 3) model frame (NaN: none), target (k, 3), sigma (k,), the transforms (C,), (C, 3, 3),
    (C, 3)."""
    p = np.asarray(p, np.float64)
    r = scale[:, None, None] * np.einsum("cij,ckj->cki", rot, p) + trans[:, None] - target
    cov = np.nan_to_num(np.asarray(cov, np.float64), nan=0.0)
    sr = scale[:, None, None] * rot  # (C, 3, 3)
    tot = np.einsum("cij,ckjl,cml->ckim", sr, cov, sr, optimize=True)
    tot += (sigma**2)[None, :, None, None] * np.eye(3)
    chol = np.linalg.cholesky(tot)
    z = np.linalg.solve(chol, r[..., None])[..., 0]
    logdet = 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    return (-0.5 * (z**2).sum(-1) - 0.5 * logdet - 1.5 * np.log(2 * np.pi)).sum(1)


def _likelihood_tangent(p, normals, target, sigma, tangent, scale, rot, trans) -> np.ndarray:
    """(C,) Σ_i log N(r_i; 0, σ_i² I + s² τ² (I − m_i m_iᵀ)), m_i = R ν_i: the isotropic term with
    an SD τ = ``tangent`` (mm) along the skin; in closed form (σ_i² across the skin, σ_i² + s²τ²
    along it). p (C, k, 3), normals ν (k, 3) model frame, target (k, 3), sigma (k,)."""
    p = np.asarray(p, np.float64)
    r = scale[:, None, None] * np.einsum("cij,ckj->cki", rot, p) + trans[:, None] - target
    m = np.einsum("cij,kj->cki", rot, normals)
    across = np.einsum("cki,cki->ck", r, m)
    along2 = np.maximum(np.einsum("cki,cki->ck", r, r) - across**2, 0.0)
    wide = sigma[None] ** 2 + (scale[:, None] * tangent) ** 2  # (C, k)
    return (-0.5 * (across**2 / sigma[None] ** 2 + along2 / wide)
            - 0.5 * np.log(wide**2 * sigma[None] ** 2) - 1.5 * np.log(2 * np.pi)).sum(1)


def rank_order(scores: Scores, rank_by: str = "s") -> np.ndarray:
    """Candidate order: by S (ties broken by likelihood) or by likelihood (ties by S)."""
    if rank_by == "s":
        return np.lexsort((-scores.likelihood, -scores.s))
    if rank_by == "likelihood":
        return np.lexsort((-scores.s, -scores.likelihood))
    raise ValueError(f"rank_by must be 's' or 'likelihood', not {rank_by!r}")
