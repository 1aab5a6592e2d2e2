"""Similarity alignment of point sets (Umeyama), batched, with optional weights and scale bounds."""

from __future__ import annotations

import numpy as np


def similarity_transform(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    scale_bounds: tuple[float, float] | None = None,
    allow_scale: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best s·R·x + t mapping src onto dst in the least-squares sense (Umeyama 1991).

    src, dst: (..., n, 3) float; weights: (..., n) non-negative (default all 1);
    scale_bounds: (lo, hi) clamp of the scale (the optimum under the bound, since the cost is
    a parabola in s for the optimal R); allow_scale False fixes s = 1.
    Returns scale (...,), rotation (..., 3, 3) (proper, det +1), translation (..., 3).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.ones(src.shape[:-1]) if weights is None else np.asarray(weights, dtype=np.float64)
    wsum = np.maximum(w.sum(-1, keepdims=True), 1e-12)
    mu_s = (w[..., None] * src).sum(-2) / wsum
    mu_d = (w[..., None] * dst).sum(-2) / wsum
    a = src - mu_s[..., None, :]
    b = dst - mu_d[..., None, :]
    cov = np.matmul(np.swapaxes(b * w[..., None], -1, -2), a) / wsum[..., None]  # (..., 3, 3)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(sv.shape)
    d[..., -1] = np.sign(np.linalg.det(u @ vt))
    rot = u @ (d[..., :, None] * vt)
    var = (w * (a**2).sum(-1)).sum(-1) / wsum[..., 0]
    if allow_scale:
        scale = (sv * d).sum(-1) / np.maximum(var, 1e-12)
        if scale_bounds is not None:
            scale = np.clip(scale, *scale_bounds)
    else:
        scale = np.ones(var.shape)
    trans = mu_d - scale[..., None] * np.matmul(rot, mu_s[..., None])[..., 0]
    return scale, rot, trans


def apply_similarity(points: np.ndarray, scale, rot, trans) -> np.ndarray:
    """(..., n, 3) points → s·R·x + t."""
    return np.asarray(scale)[..., None, None] * np.matmul(points, np.swapaxes(rot, -1, -2)) + \
        np.asarray(trans)[..., None, :]


def align(src: np.ndarray, dst: np.ndarray, **kw) -> np.ndarray:
    """src (..., n, 3) similarity-aligned onto dst; keywords as :func:`similarity_transform`."""
    return apply_similarity(src, *similarity_transform(src, dst, **kw))
