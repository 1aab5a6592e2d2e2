"""Exact superimposition scores, batched over candidates.

For each candidate face (its 36 soft-tissue points p_i, model frame) and the skull's extended
landmarks n_i (skull frame), find the similarity transform T (rotation, translation, scale bounded
to ±10 % by default, or fixed) that **maximizes the number of matched landmarks**
‖T(p_i) − n_i‖ < η_i, not only the RMS: a least-squares fit on all present landmarks, then refits
on the inliers at shrinking tolerances (and from a trimmed start), keeping per candidate the
transform with the most matches (ties: the lower RMS). Then

- S = M / (M + U), the paper's score (M matched, U unmatched among present landmarks);
- a Gaussian log-likelihood Σ_i log N(d_i; 0, σ_i) with σ_i² = SD_i² + σ_place² (table SD and
  landmark placement noise), comparable between candidates of one query;
- per-landmark distances, matched flags and the transform.

Everything is numpy over (C, 36, 3) arrays: no Python loop over candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skullsearch.encoder.align import apply_similarity, similarity_transform

PLACEMENT_SD_MM = 1.0


@dataclass
class ScoreConfig:
    """eta_sd: threshold η_i = eta_sd × SD_i (per landmark, from the tissue table); eta_mm: a
    global threshold in mm instead (overrides eta_sd); scale_bound: allowed relative scale change
    (0.1 = ±10 %; 0 fixes the scale at 1); iterations: inlier refits."""

    eta_sd: float = 1.5
    eta_mm: float | None = None
    eta_per_landmark: dict | None = None
    scale_bound: float = 0.1
    iterations: int = 6
    placement_sd_mm: float = PLACEMENT_SD_MM

    def thresholds(self, sd: np.ndarray) -> np.ndarray:
        """(36,) η_i in mm."""
        from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES, base_key

        eta = np.full(len(sd), self.eta_mm) if self.eta_mm is not None else self.eta_sd * np.asarray(sd)
        for name, value in (self.eta_per_landmark or {}).items():
            for i, n in enumerate(SOFT_TISSUE_NAMES):
                if n == name or base_key(n) == name:
                    eta[i] = value
        return eta.astype(np.float64)

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


def score(
    face_points: np.ndarray,
    target: np.ndarray,
    present: np.ndarray,
    sd: np.ndarray,
    config: ScoreConfig | None = None,
) -> Scores:
    """Score candidates against a skull's extended landmarks.

    face_points (C, 36, 3) mm; target (36, 3) mm extended landmarks (any values where absent);
    present (36,) bool; sd (36,) mm table SDs. Returns :class:`Scores`.
    """
    cfg = config or ScoreConfig()
    p = np.asarray(face_points, dtype=np.float64)
    c = len(p)
    mask = np.asarray(present, bool)
    k = int(mask.sum())
    if k < 3:
        raise ValueError("at least 3 landmarks are needed to align a face to a skull")
    tgt = np.where(mask[:, None], np.asarray(target, np.float64), 0.0)
    eta = cfg.thresholds(sd)
    sigma = np.sqrt(np.asarray(sd, np.float64) ** 2 + cfg.placement_sd_mm**2)
    bounds = (1 - cfg.scale_bound, 1 + cfg.scale_bound) if cfg.scale_bound > 0 else None
    fit_kw = {"scale_bounds": bounds, "allow_scale": cfg.scale_bound > 0}
    tgt_b = np.broadcast_to(tgt, p.shape)
    base_w = np.broadcast_to(mask.astype(np.float64), (c, len(mask))).copy()

    def evaluate(s, r, t):
        d = np.linalg.norm(apply_similarity(p, s, r, t) - tgt_b, axis=-1)  # (C, 36)
        m = (d < eta) & mask
        rms = np.sqrt((d**2 * mask).sum(1) / k)
        return d, m, rms

    best = None

    def keep(s, r, t):
        nonlocal best
        d, m, rms = evaluate(s, r, t)
        n = m.sum(1)
        if best is None:
            best = [s, r, t, d, m, rms, n]
            return d, m
        better = (n > best[6]) | ((n == best[6]) & (rms < best[5] - 1e-9))
        for i, v in enumerate((s, r, t, d, m, rms, n)):
            best[i] = np.where(better.reshape((-1,) + (1,) * (v.ndim - 1)), v, best[i])
        return d, m

    # start 1: all present landmarks; start 2: trimmed (drop the worst quarter of start 1)
    s, r, t = similarity_transform(p, tgt_b, weights=base_w, **fit_kw)
    d, m = keep(s, r, t)
    starts = [(s, r, t, d)]
    cut = np.quantile(d[:, mask], 0.75, axis=1)  # the same landmarks are present for every face
    w = base_w * (d <= cut[:, None])
    starts.append((*similarity_transform(p, tgt_b, weights=w, **fit_kw), None))
    for s, r, t, _ in starts:
        d, m = keep(s, r, t)
        for it in range(cfg.iterations):
            tol = eta * (2.0 - it / max(cfg.iterations - 1, 1))  # 2η → η
            w = base_w * (d < tol)
            enough = w.sum(1) >= 3
            w = np.where(enough[:, None], w, base_w)
            s, r, t = similarity_transform(p, tgt_b, weights=w, **fit_kw)
            d, m = keep(s, r, t)

    s, r, t, d, m, rms, n = best
    ll = (-0.5 * (d / sigma) ** 2 - np.log(sigma * np.sqrt(2 * np.pi))) * mask
    return Scores(
        s=n / k, matched=n.astype(np.int32), present=np.full(c, k, np.int32),
        likelihood=ll.sum(1), rms_mm=rms, distance_mm=np.where(mask, d, np.nan), matched_flags=m,
        scale=s, rotation=r, translation=t,
    )


def rank_order(scores: Scores, rank_by: str = "s") -> np.ndarray:
    """Candidate order: by S (ties broken by likelihood) or by likelihood (ties by S)."""
    if rank_by == "s":
        return np.lexsort((-scores.likelihood, -scores.s))
    if rank_by == "likelihood":
        return np.lexsort((-scores.s, -scores.likelihood))
    raise ValueError(f"rank_by must be 's' or 'likelihood', not {rank_by!r}")
