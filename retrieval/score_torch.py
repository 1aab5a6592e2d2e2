"""The exact scorer of :mod:`skullsearch.retrieval.score` in torch: the same algorithm step for step
(least-squares start and trimmed start, inlier refits at shrinking tolerances, the most matches
kept, ties to the lower RMS; Horn's quaternion matrix solved in closed form, QCP), on a torch
device: a GPU scores a whole gallery in one go, and on a CPU torch spreads each array operation
over the cores (numpy uses one). float64 by default, so that its matches are those of the numpy
scorer (:func:`score_blocks` is checked against it in the tests).
"""

from __future__ import annotations

import numpy as np

from skullsearch.retrieval.horn import adjugate4, horn_quartic, quaternion_rotation


def _stack(rows):
    import torch

    return torch.stack([torch.stack(r, -1) for r in rows], 1)


def _largest_root(lam, c2, c1, c0, max_iter: int = 100):
    """Newton's method on λ⁴ + c2 λ² + c1 λ + c0 from above (lam (B,), the bound √(3 f2)):
    (the largest root (B,), the iterations run). A face stops when its step falls under the
    dtype's resolution of λ (1e-15 λ in float64, as the numpy scorer; 4 eps λ in float32, where
    1e-15 is never reached and every face ran all max_iter iterations)."""
    import torch

    tol = max(1e-15, 4.0 * torch.finfo(lam.dtype).eps)
    active = torch.ones_like(lam, dtype=torch.bool)
    inf = torch.tensor(float("inf"), dtype=lam.dtype, device=lam.device)
    it = 0
    for it in range(1, max_iter + 1):
        l2 = lam * lam
        p = (l2 + c2) * l2 + c1 * lam + c0
        dp = (4.0 * l2 + 2.0 * c2) * lam + c1
        step = torch.where(active, p / torch.where(dp > 0, dp, inf), torch.zeros_like(lam))
        lam = lam - step
        active &= step.abs() > tol * lam.clamp(min=1e-30)
        if it % 8 == 0 and not bool(active.any()):  # (a device sync: checked now and then)
            break
    return lam, it


def _horn_rotation(S):
    """Torch twin of ``score._horn_rotation``: S (B, 3, 3) → (λ (B,), R (B, 3, 3))."""
    import torch

    n, c2, c1, f2 = horn_quartic(S)
    _, c0 = adjugate4(n, stack=_stack)
    lam, _ = _largest_root(torch.sqrt(3.0 * f2), c2, c1, c0)
    m = [[n[i][j] - lam if i == j else n[i][j] for j in range(4)] for i in range(4)]
    adj, _ = adjugate4(m, stack=_stack)
    diag = torch.stack([adj[:, i, i] for i in range(4)], -1).abs()
    q = torch.take_along_dim(adj, diag.argmax(1)[:, None, None], 1)[:, 0]
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True).clamp(min=1e-300))
    return lam, quaternion_rotation(q, stack=_stack)


def _fit(p, pn2, tgt, w, bounds):
    """Weighted similarity fits: p (B, k, 3), pn2 (B, k), tgt (k, 3) centred, w (B, k) or None;
    bounds (lo, hi) or None (scale fixed at 1 when bounds is False). → scale (B,), R (B, 3, 3), t (B, 3)."""
    import torch

    b, k = p.shape[:2]
    if w is None:
        w = torch.ones(b, k, dtype=p.dtype, device=p.device)
    wsum = w.sum(1).clamp(min=1e-12)
    mt = (w @ tgt) / wsum[:, None]  # (B, 3)
    mp = torch.einsum("bk,bkc->bc", w, p) / wsum[:, None]
    S = torch.einsum("bk,bka,kc->bac", w, p, tgt) / wsum[:, None, None] - mp[:, :, None] * mt[:, None, :]
    var = (w * pn2).sum(1) / wsum - (mp * mp).sum(1)
    lam, rot = _horn_rotation(S)
    if bounds is False:
        scale = torch.ones(b, dtype=p.dtype, device=p.device)
    else:
        scale = lam / var.clamp(min=1e-12)
        if bounds is not None:
            scale = scale.clamp(*bounds)
    trans = mt - scale[:, None] * torch.einsum("bij,bj->bi", rot, mp)
    return scale, rot, trans


def score_block(p, tgt, eta, scale_bound: float, iterations: int):
    """Torch twin of ``score._score_block``: p (B, k, 3) present landmarks, tgt (k, 3) centred,
    eta (k,), all tensors of one dtype and device. Returns (d (B, k), n (B,), rms (B,), scale, rot, trans)."""
    import torch

    b, k = p.shape[:2]
    pn2 = (p * p).sum(-1)
    bounds = (1 - scale_bound, 1 + scale_bound) if scale_bound > 0 else False

    def fit(w):
        return _fit(p, pn2, tgt, w, bounds)

    def evaluate(tr):
        s, r, t = tr
        e = torch.einsum("bij,bkj->bki", s[:, None, None] * r, p) + (t[:, None, :] - tgt[None])
        d2 = (e * e).sum(-1)
        return torch.sqrt(d2), d2.sum(1) / k

    best = {}

    def keep(tr):
        d, ms = evaluate(tr)
        rms = torch.sqrt(ms)
        n = (d < eta).sum(1)
        if not best:
            best.update(d=d.clone(), n=n, rms=rms, s=tr[0].clone(), r=tr[1].clone(), t=tr[2].clone())
            return d
        better = (n > best["n"]) | ((n == best["n"]) & (rms < best["rms"] - 1e-9))
        for key, v in (("d", d), ("n", n), ("rms", rms), ("s", tr[0]), ("r", tr[1]), ("t", tr[2])):
            m = better.reshape(-1, *([1] * (v.dim() - 1)))
            best[key] = torch.where(m, v, best[key])
        return d

    d = keep(fit(None))
    starts = [d]
    cut = torch.quantile(d, 0.75, dim=1)
    starts.append(keep(fit((d <= cut[:, None]).to(p.dtype))))
    for d in starts:
        for it in range(iterations):
            tol = eta * (2.0 - it / max(iterations - 1, 1))
            w = (d < tol).to(p.dtype)
            w[w.sum(1) < 3] = 1.0
            d = keep(fit(w))
    return best["d"], best["n"], best["rms"], best["s"], best["r"], best["t"]


def score_blocks(points: np.ndarray, tgt: np.ndarray, eta: np.ndarray, scale_bound: float, iterations: int,
                 device: str = "cpu", block: int = 65536, dtype=None) -> tuple[np.ndarray, ...]:
    """Score (C, k, 3) present landmarks (numpy, any float type) against the centred target (k, 3)
    on ``device`` in blocks of ``block`` candidates; returns numpy (d (C, k), n (C,), rms, scale (C,),
    rot (C, 3, 3), trans (C, 3)) as ``score._score_block`` does."""
    import torch

    dtype = dtype or torch.float64
    tg = torch.as_tensor(np.asarray(tgt), dtype=dtype, device=device)
    et = torch.as_tensor(np.asarray(eta), dtype=dtype, device=device)
    outs = []
    with torch.no_grad():
        for a in range(0, len(points), block):
            p = torch.as_tensor(np.ascontiguousarray(points[a:a + block]), device=device).to(dtype)
            outs.append([x.cpu().numpy() for x in score_block(p, tg, et, scale_bound, iterations)])
    if not outs:
        k = len(tgt)
        return (np.zeros((0, k)), np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros((0, 3, 3)),
                np.zeros((0, 3)))
    return tuple(np.concatenate(x) for x in zip(*outs, strict=True))
