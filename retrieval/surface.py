"""Surface scores: how far each extended landmark lies from a candidate face's *skin*, not from
the face model's annotated point of the same name.

The point score (:mod:`skullsearch.retrieval.score`) compares each extended landmark n_i with the
face's soft-tissue point p_i, where the face model's annotation puts it. On real skulls the two
sides define many points differently along the surface (the automatic or expert bone landmark and
the tissue table's direction on one side, the annotation's rules on the other: a median 9.3–11.5 mm
apart on two real CT heads, most of it along the skin; ``benchmarks/ct_identification.py``'s
``correspondence``), and every face's point score carries that gap.
The soft-tissue table measures a depth, and where the skin lies at that depth is what a skull
tells; which point of the skin carries a landmark's name is a convention. The surface score asks
only the first: with each candidate placed by its superimposition (the point score's transform),
the distance d_i from n_i to the face's skin near p_i, and the robust (Cauchy) log-likelihood

    L_surface = Σ_i −log(1 + (d_i / σ_i)²),   σ_i² = SD_i² + σ_place²

(a point off by far more than its SD counts as little as one a few SDs off: a landmark's
direction or placement can be wrong, and the vault of a face encoded from a photo is the model's
guess). Faces that differ only in where their points sit along the skin score alike. The
placement starts from the point score's transform and is refitted on the skin itself
(:data:`ICP_ITERATIONS` damped Gauss-Newton steps on the point-to-plane distances, Cauchy
weights): the point placement carries the gap too. What it gains it pays for: where along the
skin a point lies is much of what tells faces apart when both sides do agree (synthetic skulls of
gallery faces: the true face among 100,000 in the top 20 in 2 of 6 queries, first in 6 of 6 by
the likelihood; ``benchmarks/surface_speed.py``), and where few landmarks lie on a smooth part
of the face (the forehead and orbits alone) the skin lets a face slide. A second reading beside
the point scores, not a default (README: Limits).

The skin near p_i: the vertices of the model's skin (its largest part: no eyeballs, teeth or
tongue) within :data:`PATCH_MM` of the mean face's point i (the topology is shared, so the patches
are fixed per model and decoded per candidate from the shape basis alone); d_i is the distance to
the nearest patch vertex's tangent plane, plus what lies beyond half that vertex's edge length
across it. Batched over candidates (numpy; no loop over candidates).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: The skin searched around each landmark: vertices within this distance (mm) of the mean face's
#: point (the two sides' points lie up to ~25 mm apart on real heads, a median 9–11 mm).
PATCH_MM = 30.0
#: Candidates decoded at a time (memory: block × patch vertices × 3 doubles).
BLOCK = 256
#: Robust refits of each candidate's placement on its skin (from the point score's transform).
ICP_ITERATIONS = 6
#: The first search looks at one patch vertex per cube of this side (mm); each later one for the
#: nearest vertex among this many mean-face neighbours of the last (:data:`SEARCHES` of them before
#: the refits, one after each).
COARSE_MM = 4.0
NEIGHBOURS = 24
SEARCHES = 3


@dataclass(frozen=True)
class SurfacePatches:
    """Per landmark (36): the skin vertices searched (``vertices``: one int array each, into the
    model's vertices), their mean-face unit normals ((n_i, 3) each, model frame) and half their
    mean incident edge length (mm); ``rows``: all patch vertices (sorted, unique) and ``where``:
    per landmark the positions of its vertices in ``rows``; ``neighbours``: per landmark (n_i,
    :data:`NEIGHBOURS`) each patch vertex's nearest patch vertices on the mean face (itself first),
    where the refits look for the next nearest one; ``coarse``: per landmark the patch positions
    of one vertex per :data:`COARSE_MM` cube, where the first search looks."""

    vertices: tuple
    normals: tuple
    half_edge: tuple
    rows: np.ndarray
    where: tuple
    neighbours: tuple
    coarse: tuple


def patches(model, radius_mm: float = PATCH_MM) -> SurfacePatches:
    """The skin patches of a face model (cached per model and radius)."""
    return _patches(model, float(radius_mm))


@lru_cache(maxsize=4)
def _patches(model, radius_mm: float) -> SurfacePatches:
    import torch
    from scipy.spatial import cKDTree

    from skullsearch.encoder.annotate import _skin
    from skullsearch.encoder.render import vertex_normals

    v = np.asarray(model.v_template, np.float64)
    faces = np.asarray(model.faces)
    _, skin_faces = _skin(v, faces)
    tri = faces[skin_faces]
    on_skin = np.unique(tri)
    normals = vertex_normals(v, tri)
    # half the mean edge length at each vertex
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    length = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
    total = np.bincount(edges.ravel(), np.repeat(length, 2), len(v))
    count = np.maximum(np.bincount(edges.ravel(), minlength=len(v)), 1)
    half = 0.5 * total / count
    with torch.no_grad():
        pts = model.soft_tissue(batch_size=1)[0].double().numpy()
    sel = [on_skin[np.linalg.norm(v[on_skin] - p, axis=1) <= radius_mm] for p in pts]
    rows = np.unique(np.concatenate(sel))
    near, coarse = [], []
    for s in sel:
        k = min(NEIGHBOURS, len(s))
        near.append(cKDTree(v[s]).query(v[s], k=k)[1].reshape(len(s), k))
        coarse.append(np.sort(np.unique(np.floor(v[s] / COARSE_MM), axis=0, return_index=True)[1]))
    return SurfacePatches(tuple(sel), tuple(normals[s] for s in sel), tuple(half[s] for s in sel),
                          rows, tuple(np.searchsorted(rows, s) for s in sel), tuple(near), tuple(coarse))


def _patch_vertices(model, shapes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(C, len(rows), 3) mm: the neutral faces of shape codes (C, ≤S) at the vertices ``rows``."""
    s = np.asarray(shapes, np.float64)
    n = min(s.shape[1], model.n_shape)
    basis = np.asarray(model.shapedirs, np.float64)[rows][:, :, :n].reshape(-1, n)  # (3r, n)
    return np.asarray(model.v_template, np.float64)[rows][None] + (s[:, :n] @ basis.T).reshape(len(s), -1, 3)


def surface_distances(model, shapes: np.ndarray, target: np.ndarray, present: np.ndarray,
                      scale: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                      sigma: np.ndarray | None = None, iterations: int = ICP_ITERATIONS,
                      scale_bound: float = 0.1, radius_mm: float = PATCH_MM) -> np.ndarray:
    """(C, 36) mm, NaN where absent: each extended landmark's distance to the skin of each
    candidate placed in the skull's frame.

    shapes (C, ≤S) shape codes (neutral faces, as scored); target (36, 3) mm extended landmarks;
    present (36,) bool; scale (C,), rotation (C, 3, 3), translation (C, 3): face (model frame) →
    skull frame, the point score's transforms (:class:`~skullsearch.retrieval.score.Scores`), the
    start of ``iterations`` robust refits of the placement on the skin itself (each landmark's
    nearest skin point, Cauchy weights 1 / (1 + (d/σ)²) with ``sigma`` (36,) mm — default 3 mm —,
    the scale within ±``scale_bound``): the point score's placement carries the gap between the
    two sides' points, which the surface score is to be free of.
    """
    pat = patches(model, radius_mm)
    present = np.asarray(present, bool)
    idx = np.flatnonzero(present)
    target = np.asarray(target, np.float64)
    sig = np.full(len(idx), 3.0) if sigma is None else np.asarray(sigma, np.float64)[idx]
    c = len(shapes)
    out = np.full((c, len(present)), np.nan)
    for a in range(0, c, BLOCK):
        sl = slice(a, min(a + BLOCK, c))
        verts = _patch_vertices(model, np.asarray(shapes)[sl], pat.rows)  # (b, r, 3)
        s = np.asarray(scale, np.float64)[sl]
        rot = np.asarray(rotation, np.float64)[sl]
        t = np.asarray(translation, np.float64)[sl]
        last = None
        for _ in range(SEARCHES):  # coarse, then finer: the nearest vertex of each patch
            d, foot, normal, last = _nearest_on_skin(pat, verts, target[idx], idx, s, rot, t, last)
        for _ in range(iterations):
            s, rot, t = _plane_step(foot, normal, target[idx], 1.0 / (1.0 + (d / sig) ** 2), s, rot, t,
                                    scale_bound)
            d, foot, normal, last = _nearest_on_skin(pat, verts, target[idx], idx, s, rot, t, last)
        out[sl, idx] = d
    return out


def _nearest_on_skin(pat: SurfacePatches, verts, tgt, idx, s, rot, t, last=None):
    """Distances (b, k) mm, skull frame, of the landmarks ``tgt`` (k, 3) (numbers ``idx``) to
    each candidate's skin placed by (s, rot, t); the nearest skin points (b, k, 3) (on the nearest
    vertex's tangent plane) and that vertex's unit normal (b, k, 3), both in the face frame; and
    the nearest vertices' positions in their patches (b, k), which, given back as ``last``,
    narrow the next search to their neighbours."""
    # each landmark into every candidate's face frame: q = R^T (n − t) / s
    q = np.einsum("bji,bkj->bki", rot, tgt[None] - t[:, None]) / s[:, None, None]  # (b, k, 3)
    d = np.empty(q.shape[:2])
    foot = np.empty_like(q)
    normal = np.empty_like(q)
    found = np.empty(q.shape[:2], np.int64)
    r = np.arange(len(q))
    for col, i in enumerate(idx):
        where = pat.where[i]
        # one vertex per cube of the patch, or the last nearest vertex's neighbours
        if last is None:
            cand = pat.coarse[i]
            diff = q[:, col, None] - verts[:, where[cand]]  # (b, m, 3)
            k = np.einsum("bnk,bnk->bn", diff, diff).argmin(1)
            j = cand[k]
        else:
            cand = pat.neighbours[i][last[:, col]]  # (b, m) patch positions
            diff = q[:, col, None] - verts[r[:, None], where[cand]]
            k = np.einsum("bnk,bnk->bn", diff, diff).argmin(1)
            j = cand[r, k]
        found[:, col] = j
        e = diff[r, k]
        nrm = pat.normals[i][j]
        plane = np.einsum("bk,bk->b", e, nrm)
        across = np.sqrt(np.maximum(np.einsum("bk,bk->b", e, e) - plane**2, 0.0))
        d[:, col] = s * np.hypot(plane, np.maximum(across - pat.half_edge[i][j], 0.0))
        foot[:, col] = q[:, col] - plane[:, None] * nrm
        normal[:, col] = nrm
    return d, foot, normal, found


def _plane_step(foot, normal, tgt, w, s, rot, t, scale_bound: float):
    """One damped Gauss-Newton step of the placement (s, rot, t) (b,), (b, 3, 3), (b, 3) on the
    weighted (w (b, k)) point-to-plane distances of the landmarks tgt (k, 3) to the skin's tangent
    planes at ``foot`` with ``normal`` (b, k, 3, face frame): a small turn ω about the landmarks'
    centre, a scale change and a shift, solved together (7 × 7 per candidate); the scale kept
    within 1 ± scale_bound."""
    c = tgt.mean(0)
    y = s[:, None, None] * np.einsum("bij,bkj->bki", rot, foot) + t[:, None] - c  # placed, about c
    m = np.einsum("bij,bkj->bki", rot, normal)  # skull-frame normals
    r0 = np.einsum("bki,bki->bk", y - (tgt - c)[None], m)
    jac = np.concatenate([np.cross(y, m), np.einsum("bki,bki->bk", y, m)[..., None], m], -1)  # (b, k, 7)
    a = np.einsum("bk,bki,bkj->bij", w, jac, jac)
    g = np.einsum("bk,bki,bk->bi", w, jac, r0)
    damp = 1e-3 * np.trace(a, axis1=1, axis2=2) / 7 + 1e-9
    step = -np.linalg.solve(a + damp[:, None, None] * np.eye(7), g[..., None])[..., 0]
    omega, grow, shift = step[:, :3], 1.0 + step[:, 3], step[:, 4:]
    turn = _rotvec(omega)
    s_new = np.clip(s * grow, 1 - scale_bound, 1 + scale_bound)
    grow = s_new / s
    t_new = grow[:, None] * np.einsum("bij,bj->bi", turn, t - c) + c + shift
    return s_new, np.einsum("bij,bjk->bik", turn, rot), t_new


def _rotvec(omega):
    """Rotation matrices (b, 3, 3) of rotation vectors (b, 3) (Rodrigues)."""
    theta = np.linalg.norm(omega, axis=1)
    k = omega / np.maximum(theta, 1e-12)[:, None]
    kx = np.zeros((len(omega), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    kx = kx - kx.transpose(0, 2, 1)
    st, ct = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3) + st * kx + (1 - ct) * kx @ kx


def surface_scores(model, shapes: np.ndarray, scores, target: np.ndarray, present: np.ndarray,
                   sigma: np.ndarray, scale_bound: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Faces of shape codes (n, ≤S) placed by their point scores' transforms (``scores``:
    :class:`~skullsearch.retrieval.score.Scores`): each extended landmark's distance to their skin
    (n, 36) mm (:func:`surface_distances`, NaN where absent) and their surface likelihoods (n,)
    (:func:`surface_likelihood`); sigma (36,) mm, the likelihood's σ_i."""
    d = surface_distances(model, shapes, target, present, scores.scale, scores.rotation, scores.translation,
                          sigma=sigma, scale_bound=scale_bound)
    return d, surface_likelihood(d, sigma)


def surface_likelihood(distance_mm: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(C,) Σ_i −log(1 + (d_i / σ_i)²) over the present landmarks (NaN distances: absent);
    distance_mm (C, 36), sigma (36,) mm (:meth:`ScoreConfig.sigma
    <skullsearch.retrieval.score.ScoreConfig.sigma>`)."""
    z = np.asarray(distance_mm, np.float64) / np.asarray(sigma, np.float64)
    return -np.nansum(np.log1p(z * z), axis=1)
