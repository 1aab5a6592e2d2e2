"""Extended landmarks: skull landmarks pushed out to where the skin should be.

    table = load_table()                       # 2023 global T-Table (or a user CSV)
    ext = extend(skull, table)                 # n_i = m_i + d_i · direction_i
    ext.points, ext.present                    # (36, 3) mm (NaN where absent), (36,) bool
    export_pegs(skull, ext, "pegs.ply")        # the skull with a peg per landmark, to look at

The direction is the skull's outward surface normal at the landmark (the paper's choice; README,
How it works: query) unless the table gives one for that landmark (``me`` pushed straight down, a
Frankfurt-horizontal study...). Normals come from :func:`outward_normals`, which does not trust the
mesh's triangle winding (scans and segmentations often get it wrong in places) nor assume a frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skullsearch.encoder.soft_tissue import MIDLINE, SOFT_TISSUE_NAMES
from skullsearch.errors import SkullsearchError
from skullsearch.retrieval.tissue import TissueTable, load_table

__all__ = ["ExtendedLandmarks", "ExtendedLandmarkError", "export_pegs", "extend", "outward_normals"]

_N = len(SOFT_TISSUE_NAMES)
#: Ray cones for the orientation vote: the axis, 6 rays at 30° and 6 at 60° from it.
_CONE = ((0.0, (0.0,)), (30.0, tuple(range(0, 360, 60))), (60.0, tuple(range(30, 360, 60))))
#: Face centroids per orientation patch that vote on its outside, besides the landmarks.
_VOTERS = 24
#: A landmark's tissue direction further than this from outward (from the skull's centre) is
#: flagged (:attr:`ExtendedLandmarks.warnings`): its extended point lies behind the bone.
DIRECTION_LIMIT_DEG = 90.0
#: the midline landmarks in front of the face, whose tissue :meth:`ExtendedLandmarks.laid_forward`
#: lays along the skull's forward axis (op and v lie on the vault, me under the chin)
FORWARD_MIDLINE = ("g", "n", "mn", "rhi", "ss", "mp", "pr", "id", "sm", "pg", "gn")
#: A midline landmark further than this (mm) from the midline plane through the skull's other
#: midline landmarks is flagged (:attr:`ExtendedLandmarks.midline_warnings`). The automatic
#: landmarks of the two real CT skulls lie within 2.5 mm of it (``benchmarks/ct_identification.py``
#: ``--profile`` draws the plane); a skull's own asymmetry moves its midline a few mm, not ten.
MIDLINE_LIMIT_MM = 10.0
#: The midline landmarks fix their plane themselves where they spread this far (mm, RMS) across
#: its second direction (:meth:`ExtendedLandmarks.midline_plane`).
PLANE_SPAN_MM = 20.0


class ExtendedLandmarkError(SkullsearchError):
    """The skull cannot be extended (no triangles, no landmarks) or the export cannot be written."""


# ---------------------------------------------------------------------------------- normals
class _Geometry:
    """Per-mesh arrays used by the normal estimate (computed once per call)."""

    def __init__(self, mesh):
        from scipy.spatial import cKDTree

        vertices = np.asarray(mesh.vertices, dtype=np.float64).view(np.ndarray)
        faces = np.asarray(mesh.faces, dtype=np.int64).view(np.ndarray)
        if faces.ndim != 2 or len(faces) == 0 or faces.shape[1] != 3:
            raise ExtendedLandmarkError(
                "the skull has no triangles (a point cloud?); surface normals need a triangle mesh "
                "— mesh the scan first (e.g. Poisson reconstruction in MeshLab)")
        if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ExtendedLandmarkError("the skull mesh has faces that point at missing vertices")
        if not np.isfinite(vertices).all():
            used = np.isfinite(vertices).all(axis=1)[faces].all(axis=1)
            faces = faces[used]
            if len(faces) == 0:
                raise ExtendedLandmarkError("the skull mesh has no finite triangles")
        # explicit per-corner arrays: reductions over a length-3 axis are slow in numpy
        A, B, C = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
        self.tri = np.stack([A, B, C], axis=1)                          # (F, 3, 3)
        self.centroid = (A + B + C) / 3.0                               # (F, 3)
        cross = np.cross(B - A, C - A)
        self.area = 0.5 * np.sqrt(_dot(cross, cross))                   # (F,)
        self.rho = np.sqrt(np.maximum(np.maximum(_dot(A - self.centroid, A - self.centroid),
                                                 _dot(B - self.centroid, B - self.centroid)),
                                      _dot(C - self.centroid, C - self.centroid)))
        self.max_edge = np.sqrt(np.maximum(np.maximum(_dot(A - B, A - B), _dot(B - C, B - C)),
                                           _dot(C - A, C - A)))
        total = self.area.sum()
        self.surface_centroid = (self.area @ self.centroid / total) if total > 0 else self.centroid.mean(0)
        lo, hi = self.centroid.min(axis=0), self.centroid.max(axis=0)
        self.scale = float(np.linalg.norm(hi - lo) + 2 * self.rho.max()) or 1.0     # ~ diagonal
        # orientation patches (faces joined across manifold edges) and a consistent winding
        self.patch, flip = _orient(vertices, faces)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = cross / (2 * self.area[:, None])
        self.normal = np.where(np.isfinite(unit), unit, 0.0) * np.where(flip, -1.0, 1.0)[:, None]
        # faces small enough for a centroid KD-tree (ball queries padded by rho_small), and the
        # few large ones checked by brute force
        cut = max(float(np.percentile(self.rho, 99)), 1e-12) if len(self.rho) > 100 else np.inf
        self.small = np.nonzero(self.rho <= cut)[0]
        self.large = np.nonzero(self.rho > cut)[0]
        self.rho_small = float(self.rho[self.small].max()) if len(self.small) else 0.0
        self.large_lo = self.tri[self.large].min(axis=1)
        self.large_hi = self.tri[self.large].max(axis=1)
        self.tree = (cKDTree(self.centroid[self.small], balanced_tree=False, compact_nodes=False)
                     if len(self.small) else None)
        # cells of about 64 faces (by centroid) with bounding balls, for the ray test
        mean_area = float(self.area.mean())
        cell = 8.0 * math.sqrt(mean_area) if mean_area > 0 else self.scale / 32
        cell = max(cell, self.scale / 256)
        ijk = np.floor((self.centroid - lo) / cell).astype(np.int64)
        key = (ijk[:, 0] * (ijk[:, 1].max() + 1) + ijk[:, 1]) * (ijk[:, 2].max() + 1) + ijk[:, 2]
        order = np.argsort(key, kind="stable")
        _, start, count = np.unique(key[order], return_index=True, return_counts=True)
        self.cell_faces, self.cell_start, self.cell_count = order, start, count
        self.cell_center = np.add.reduceat(self.centroid[order], start) / count[:, None]
        spread = np.linalg.norm(self.centroid[order] - np.repeat(self.cell_center, count, axis=0), axis=1)
        self.cell_radius = np.maximum.reduceat(spread + self.rho[order], start)

    def faces_near(self, points: np.ndarray, radii: np.ndarray) -> list[np.ndarray]:
        """For each point (k, 3), the faces that may come within radii (k,) of it (a superset)."""
        out = []
        small_hits = (self.tree.query_ball_point(points, radii + self.rho_small)
                      if self.tree is not None else [[] for _ in points])
        for p, r, hits in zip(points, radii, small_hits, strict=True):
            idx = self.small[np.asarray(hits, dtype=np.int64)]
            if len(self.large):
                box = np.all((self.large_lo <= p + r) & (self.large_hi >= p - r), axis=1)
                idx = np.concatenate([idx, self.large[box]])
            out.append(idx)
        return out

    def closest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest surface points (k, 3), their distances (k,) and faces (k,)."""
        from trimesh.triangles import closest_point

        if self.tree is not None:
            d0, _ = self.tree.query(points)
        else:
            d0 = np.full(len(points), np.inf)
        if not np.isfinite(d0).all():         # only large faces: their vertices bound the distance
            dv = np.linalg.norm(self.tri[:, 0][None] - points[:, None], axis=2).min(axis=1)
            d0 = np.minimum(d0, dv)
        cands = self.faces_near(points, d0 * (1 + 1e-9) + 1e-9)
        owner = np.repeat(np.arange(len(points)), [len(c) for c in cands])
        faces = np.concatenate(cands)
        cp = closest_point(self.tri[faces], points[owner])
        dist = np.linalg.norm(cp - points[owner], axis=1)
        order = np.lexsort((dist, owner))
        first = order[np.searchsorted(owner[order], np.arange(len(points)))]
        return cp[first], dist[first], faces[first]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (n, 3) arrays."""
    return np.einsum("ij,ij->i", a, b)


def _orient(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orientation patches and a consistent winding, whatever the file's winding was.

    Vertices are welded by position (STL-style triangle soups too). Two faces sharing a
    manifold edge (exactly two faces on it) are consistently wound when they run the edge in
    opposite directions. A breadth-first spanning forest over these edges gives every face a
    flip bit: the XOR of the "inconsistent" marks on its path to the root of its patch (path
    XORs by pointer jumping, log(depth) vectorized steps). Returns patch (F,) int — connected
    components of that graph, which non-manifold edges split — and flip (F,) bool."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    n_faces = len(faces)
    _, weld = np.unique(vertices, axis=0, return_inverse=True)
    f = weld.reshape(-1)[faces]
    e0, e1 = f.reshape(-1), f[:, [1, 2, 0]].reshape(-1)
    owner = np.repeat(np.arange(n_faces), 3)
    keep = e0 != e1
    e0, e1, owner = e0[keep], e1[keep], owner[keep]
    key = np.minimum(e0, e1) * (int(weld.max()) + 1) + np.maximum(e0, e1)
    order = np.argsort(key, kind="stable")
    _, start, count = np.unique(key[order], return_index=True, return_counts=True)
    pair = start[count == 2]                                   # manifold edges only
    i, j = order[pair], order[pair + 1]
    fa, fb = owner[i], owner[j]
    mark = ((e0[i] < e1[i]) == (e0[j] < e1[j])).astype(np.int8)   # same direction: inconsistent
    ok = fa != fb
    fa, fb, mark = fa[ok], fb[ok], mark[ok]
    lo, hi = np.minimum(fa, fb), np.maximum(fa, fb)
    pkey, first = np.unique(lo * (n_faces + 1) + hi, return_index=True)
    lo, hi, mark = lo[first], hi[first], mark[first]
    graph = coo_matrix((np.ones(len(lo)), (lo, hi)), shape=(n_faces, n_faces)).tocsr()
    _, patch = connected_components(graph, directed=False)
    _, roots = np.unique(patch, return_index=True)
    virtual = n_faces                                          # one root joining every patch
    rows = np.concatenate([lo, np.full(len(roots), virtual)])
    cols = np.concatenate([hi, roots])
    forest = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_faces + 1, n_faces + 1)).tocsr()
    _, pred = breadth_first_order(forest, virtual, directed=False, return_predecessors=True)
    ptr = np.where(pred < 0, virtual, pred)
    ptr[virtual] = virtual
    child = np.arange(n_faces)
    parent = ptr[:n_faces]
    a, b = np.minimum(child, parent), np.maximum(child, parent)
    where = np.searchsorted(pkey, a * (n_faces + 1) + b)
    where = np.clip(where, 0, max(len(pkey) - 1, 0))
    found = (parent != virtual) & (len(pkey) > 0)
    if len(pkey):
        found &= pkey[where] == a * (n_faces + 1) + b
    val = np.zeros(n_faces + 1, dtype=np.int8)
    val[:n_faces] = np.where(found, mark[where] if len(mark) else 0, 0)
    for _ in range(64):                                        # pointer jumping: path XOR
        if (ptr == virtual).all():
            break
        val, ptr = val ^ val[ptr], ptr[ptr]
    return patch, val[:n_faces].astype(bool)


def _split(tri: np.ndarray) -> np.ndarray:
    """Midpoint subdivision: (n, 3, 3) triangles → (4n, 3, 3)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
    return np.stack([np.stack(t, axis=1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))],
                    axis=1).reshape(-1, 3, 3)


def _patch_frames(geo: _Geometry, q: np.ndarray, face: np.ndarray, radius: float):
    """Area-weighted PCA of the surface within ``radius`` of each q (k, 3).

    The triangles near q are split at their edge midpoints, only where they meet the patch,
    until no edge is longer than radius / 3, so a coarse mesh is resolved as finely as a dense
    one. Each piece adds its area × kernel (1 − (d / radius)²)² (d: centroid to q) times its
    centroid and its own second moment (exact for a uniform triangle: Σ(v − c)(v − c)ᵀ / 12).

    Returns normal (k, 3) — signed like the consistently wound surface of q's orientation patch
    (whose global sign is still open) — t1, t2 (k, 3) tangents, and (k,) bool "fell back to the
    nearest face's normal" (too little or collinear support)."""
    k = len(q)
    h = radius / 3.0
    cands = geo.faces_near(q, np.full(k, radius))
    owner = np.repeat(np.arange(k), [len(c) for c in cands])
    parent = np.concatenate(cands)
    tri = geo.tri[parent] - q[owner][:, None]                                # about q
    pieces, owners, parents = [], [], []
    for _ in range(64):
        centre = tri.mean(axis=1)
        reach = np.sqrt(np.max(np.einsum("nvd,nvd->nv", tri - centre[:, None], tri - centre[:, None]),
                               axis=1))
        near = np.sqrt(_dot(centre, centre)) <= radius + reach
        tri, owner, parent = tri[near], owner[near], parent[near]
        edge = np.max(np.einsum("nvd,nvd->nv", tri - np.roll(tri, 1, axis=1),
                                tri - np.roll(tri, 1, axis=1)), axis=1)
        big = edge > h * h
        pieces.append(tri[~big])
        owners.append(owner[~big])
        parents.append(parent[~big])
        if not big.any():
            break
        tri, owner, parent = _split(tri[big]), np.repeat(owner[big], 4), np.repeat(parent[big], 4)
    tri, owner, parent = np.concatenate(pieces), np.concatenate(owners), np.concatenate(parents)
    centre = tri.mean(axis=1)                                                # (n, 3) about q
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    w = area * np.clip(1 - _dot(centre, centre) / (radius * radius), 0, None) ** 2
    spread = tri - centre[:, None]
    second = (centre[:, :, None] * centre[:, None, :]
              + np.einsum("nva,nvb->nab", spread, spread) / 12.0).reshape(-1, 9)
    W = np.bincount(owner, weights=w, minlength=k)
    S1 = np.stack([np.bincount(owner, weights=w * centre[:, a], minlength=k) for a in range(3)], axis=1)
    S2 = np.stack([np.bincount(owner, weights=w * second[:, c], minlength=k) for c in range(9)],
                  axis=1).reshape(k, 3, 3)
    # the patch's mean consistently-wound normal (same patch as q only): the local sign
    same = geo.patch[parent] == geo.patch[face[owner]]
    ref = np.stack([np.bincount(owner, weights=w * same * geo.normal[parent, a], minlength=k)
                    for a in range(3)], axis=1)
    ref_weight = np.bincount(owner, weights=w * same, minlength=k)
    ok = W > 0
    safe = np.where(ok, W, 1.0)
    mu = S1 / safe[:, None]
    cov = S2 / safe[:, None, None] - mu[:, :, None] * mu[:, None, :]
    evals, evecs = np.linalg.eigh(cov)                                        # ascending
    normal, t2, t1 = evecs[..., 0], evecs[..., 1], evecs[..., 2]
    degenerate = ~ok | (evals[:, 1] <= 1e-10 * np.maximum(evals[:, 2], 1e-300))
    if degenerate.any():
        t = geo.tri[face[degenerate]]
        fn = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        length = np.linalg.norm(fn, axis=1, keepdims=True)
        bad = length[:, 0] == 0
        fn = fn / np.where(length > 0, length, 1.0)
        away = q[degenerate] - geo.surface_centroid
        fn[bad] = away[bad] / np.maximum(np.linalg.norm(away[bad], axis=1, keepdims=True), 1e-300)
        normal[degenerate] = fn
        t1[degenerate], t2[degenerate] = _tangents(fn)
    # orient the axis like the (consistently wound) surface around it — the patch's majority,
    # so a small fold or a flipped sliver under the landmark does not decide; only where the
    # patch's normals cancel exactly does the nearest face decide
    along = _dot(normal, ref)
    weak = ~(np.abs(along) > 1e-9 * ref_weight)
    along = np.where(weak, _dot(normal, geo.normal[face]), along)
    normal *= np.where(along < 0, -1.0, 1.0)[:, None]
    return normal, t1, t2, degenerate


def _tangents(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    t1 = np.cross(n, helper)
    t1 /= np.maximum(np.linalg.norm(t1, axis=1, keepdims=True), 1e-300)
    return t1, np.cross(n, t1)


def _cone(n: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """Ray directions (R, 3) of the cone around n (a pattern symmetric under t1 → −t1, t2 → −t2)."""
    dirs = []
    for elevation, azimuths in _CONE:
        e = math.radians(elevation)
        for az in azimuths:
            a = math.radians(az)
            dirs.append(math.cos(e) * n + math.sin(e) * (math.cos(a) * t1 + math.sin(a) * t2))
    return np.asarray(dirs)


def _ray_votes(geo: _Geometry, origin: np.ndarray, dirs: np.ndarray, tau: float) -> np.ndarray:
    """Crossings of rays from one origin: (2, R) int, row 0 along +dirs, row 1 along −dirs.

    Broad phase: the faces are bucketed into cells (about 64 faces each) with a bounding ball
    (centre C, radius rho); ray d can only meet a cell's faces if it points into the cone the
    ball subtends from the origin, u·d ≥ sqrt(|u|² − rho²) with u = C − origin (any d when the
    origin is inside the ball) — one (cells, 3) @ (3, R) product serves both directions.
    Exact phase, on the faces of the candidate cells: d hits triangle (a, b, c) (relative to
    the origin) iff det(a, b, d), det(b, c, d), det(c, a, d) all have the sign of det(a, b, c)
    — a test that does not depend on the triangle's winding; the hit distance is
    det(a, b, c) / Σ det(·, ·, d). Hits nearer than tau (the landmark's own surface, scan
    roughness) are not counted."""
    R = dirs.shape[0]
    u = geo.cell_center - origin                                             # (M, 3)
    uu = np.einsum("ij,ij->i", u, u)
    outside = uu > geo.cell_radius ** 2
    thr = np.where(outside, np.sqrt(np.where(outside, uu - geo.cell_radius ** 2, 0.0))
                   - 1e-9 * (np.sqrt(uu) + geo.scale), -np.inf)     # origin in the ball: all rays
    g = u @ dirs.T                                                           # (M, R)
    cp, rp = np.nonzero(g >= thr[:, None])
    cm, rm = np.nonzero(-g >= thr[:, None])
    cells = np.concatenate([cp, cm])
    rays = np.concatenate([rp, rm])
    side = np.repeat(np.array([0, 1]), [len(cp), len(cm)])                   # 0: +d, 1: −d
    n = geo.cell_count[cells]
    if n.sum() == 0:
        return np.zeros((2, R), dtype=np.int64)
    # expand (cell, ray) pairs to (face, ray) pairs
    first = np.repeat(geo.cell_start[cells] - np.cumsum(n) + n, n) + np.arange(n.sum())
    faces = geo.cell_faces[first]
    rays = np.repeat(rays, n)
    side = np.repeat(side, n)
    d = dirs[rays] * (1.0 - 2.0 * side)[:, None]
    t = geo.tri[faces] - origin                                              # (p, 3, 3)
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    ab, bc, ca = np.cross(a, b), np.cross(b, c), np.cross(c, a)
    det = np.einsum("ij,ij->i", ab, c)
    sgn = np.sign(det)
    s1 = np.einsum("ij,ij->i", ab, d) * sgn
    s2 = np.einsum("ij,ij->i", bc, d) * sgn
    s3 = np.einsum("ij,ij->i", ca, d) * sgn
    hit = (s1 > 0) & (s2 > 0) & (s3 > 0) & (np.abs(det) > tau * (s1 + s2 + s3))
    return np.bincount(side[hit] * R + rays[hit], minlength=2 * R).reshape(2, R)


def _voter_faces(geo: _Geometry, patches: np.ndarray, n: int) -> np.ndarray:
    """Up to n faces per orientation patch, spread by area (deterministic: evenly spaced
    quantiles of the cumulative area in face order, so the choice turns with the mesh)."""
    out = []
    for pid in patches:
        faces = np.nonzero(geo.patch == pid)[0]
        cum = np.cumsum(geo.area[faces])
        if len(faces) == 0 or cum[-1] <= 0:
            continue
        targets = (np.arange(n) + 0.5) / n * cum[-1]
        out.append(np.unique(faces[np.minimum(np.searchsorted(cum, targets), len(faces) - 1)]))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def outward_normals(mesh, points, radius_mm: float = 4.0, return_info: bool = False):
    """Robust outward unit normals (k, 3) of a triangle mesh at points (k, 3) mm on its surface.

    1. **Where.** Each point is moved to its closest surface point q (a landmark a little off the
       surface still gets the normal of the bone under it); rows of NaN give NaN normals.
    2. **Axis.** The surface within ``radius_mm`` of q is cut into pieces no longer than
       ``radius_mm / 3`` (triangles meeting the patch are split at their edge midpoints, so a
       coarse mesh is resolved as finely as a dense one); each piece is weighted by its area
       times the smooth kernel (1 − (d / radius)²)² and contributes its exact second moment;
       the normal axis is the direction of least variance of that patch (area-weighted PCA).
       Scan noise below the patch size is averaged out. Too little support (or a collinear
       patch) falls back to the nearest triangle's plane.
    3. **Winding, repaired.** The file's triangle winding is not trusted (segmentations and
       repaired scans mix it). Vertices are welded by position, and faces joined across
       manifold edges form *orientation patches* (non-manifold edges split them); inside a
       patch every face is re-wound consistently with its neighbours (a spanning forest and
       path XORs), which fixes the sign of the axis relative to the patch: it points to the
       same side of the surface as the re-wound faces around q. Only one sign per patch is
       left to decide — which side of the whole patch is outside.
    4. **Outside, by a vote of the patch.** Voters are the points of that patch plus 24 face
       centroids spread over it by area. Each voter casts 13 rays in a cone around its axis
       (the axis, 6 at 30°, 6 at 60°, laid out on its own principal directions) and the same
       13 reversed, counting their crossings with the whole mesh (an exact, winding-free
       ray/triangle test ignoring hits closer than ``radius_mm / 8``: the voter's own surface
       and roughness). A voter's opinion is the first of these that is not a tie:

       a. *parity*: a ray from outside a closed surface crosses it an even number of times
          (usually zero), from inside an odd number; each of its 26 rays votes for the side its
          parity says (shadowed rays carry evidence too; on the inner table of a CT skull the
          outside is the cranial cavity, and parity says so);
       b. *escape*: outside is the side whose rays escape (cross nothing) more often;
       c. *crossings*: the side with fewer crossings in all.

       The patch's majority decides for all its points; a tie falls back to "away from the
       area-weighted centroid of the patch". One voter fooled by a big hole (an open neck, a
       missing skull base) or a self-intersection is outvoted. A triangle soup whose faces
       share no edge is a patch per face: each point then decides alone (rules a–c, then the
       centroid). Limitations: the axis takes the side of the patch's majority within
       ``radius_mm``, so where the surface itself is folded inside out over more than that (a
       self-intersecting offset surface) the normal follows the fold; two sheets closer than
       ``radius_mm`` (an eyelid, a bone thinner than the patch) blur the local sign.

    return_info: also return a dict with ``surface_points`` (k, 3), ``surface_distance`` (k,),
    ``patch`` (k,) orientation-patch id, ``votes`` (k, 2) for/against the chosen side in the
    point's patch, ``own`` (k,) the point's own opinion (+1 agrees, −1 disagrees, 0 none),
    ``escapes`` / ``crossings`` (k, 2) of the point's rays (outside cone first), ``method``
    (k,) "vote" / "centroid", ``fallback_plane`` (k,) bool and ``surface_centroid`` (3,) the
    mesh's area-weighted centroid (NaN where no point was valid: the mesh was not read).
    Cost: a per-mesh set-up (about 0.3 s for 200k faces) and a few ms per point and voter:
    about 0.5 s for 36 landmarks on a 200k-face skull.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    radius = float(radius_mm)
    if not radius > 0:
        raise ExtendedLandmarkError(f"the normal patch radius must be positive, got {radius_mm!r} mm")
    k = len(points)
    normals = np.full((k, 3), np.nan)
    info = {"surface_points": np.full((k, 3), np.nan), "surface_distance": np.full(k, np.nan),
            "patch": np.full(k, -1, np.int64), "votes": np.zeros((k, 2), np.int64),
            "own": np.zeros(k, np.int64), "escapes": np.zeros((k, 2), np.int64),
            "crossings": np.zeros((k, 2), np.int64), "method": np.array([""] * k, dtype=object),
            "fallback_plane": np.zeros(k, bool), "surface_centroid": np.full(3, np.nan)}
    valid = np.isfinite(points).all(axis=1)
    if not valid.any():
        return (normals, info) if return_info else normals
    geo = _Geometry(mesh)
    info["surface_centroid"] = geo.surface_centroid
    q, dist, face = geo.closest(points[valid])
    n = len(q)
    patches = np.unique(geo.patch[face])
    extra = _voter_faces(geo, patches, _VOTERS)
    vq = np.concatenate([q, geo.centroid[extra]])
    vface = np.concatenate([face, extra])
    axis, t1, t2, plane = _patch_frames(geo, vq, vface, radius)
    tau = radius / 8.0
    counts = np.stack([_ray_votes(geo, vq[i], _cone(axis[i], t1[i], t2[i]), tau)
                       for i in range(len(vq))])                                 # (v, 2, R)
    escapes = (counts == 0).sum(axis=2)                                          # (v, 2)
    crossings = counts.sum(axis=2)
    odd = counts % 2 == 1
    parity = (~odd[:, 0]).sum(1) - odd[:, 0].sum(1) + odd[:, 1].sum(1) - (~odd[:, 1]).sum(1)
    rules = np.stack([np.sign(parity), np.sign(escapes[:, 0] - escapes[:, 1]),
                      np.sign(crossings[:, 1] - crossings[:, 0])], axis=1)
    opinion = rules[np.arange(len(vq)), np.argmax(rules != 0, axis=1)]           # (v,) −1/0/+1
    slot = np.searchsorted(patches, geo.patch[vface])
    yes = np.bincount(slot, weights=opinion > 0, minlength=len(patches)).astype(np.int64)
    no = np.bincount(slot, weights=opinion < 0, minlength=len(patches)).astype(np.int64)
    sign = np.sign(yes - no)
    # ties: away from the patch's area-weighted centroid, summed over its voters
    in_patch = np.isin(geo.patch, patches)
    pslot = np.searchsorted(patches, geo.patch[in_patch])
    area = geo.area[in_patch]
    total = np.maximum(np.bincount(pslot, weights=area, minlength=len(patches)), 1e-300)
    centre = np.stack([np.bincount(pslot, weights=area * geo.centroid[in_patch, a],
                                   minlength=len(patches)) for a in range(3)], axis=1) / total[:, None]
    away = np.bincount(slot, weights=_dot(vq - centre[slot], axis), minlength=len(patches))
    by_vote = sign != 0
    sign = np.where(by_vote, sign, np.where(away < 0, -1, 1))
    final = sign[slot[:n]]
    normals[valid] = axis[:n] * final[:, None]
    agree = np.where(sign > 0, yes, no)[slot[:n]]
    disagree = np.where(sign > 0, no, yes)[slot[:n]]
    flip = final < 0
    esc, crs = escapes[:n].copy(), crossings[:n].copy()
    esc[flip], crs[flip] = esc[flip][:, ::-1], crs[flip][:, ::-1]
    info["surface_points"][valid] = q
    info["surface_distance"][valid] = dist
    info["patch"][valid] = geo.patch[face]
    info["votes"][valid] = np.stack([agree, disagree], axis=1)
    info["own"][valid] = opinion[:n] * final
    info["escapes"][valid] = esc
    info["crossings"][valid] = crs
    info["method"][valid] = np.where(by_vote[slot[:n]], "vote", "centroid")
    info["fallback_plane"][valid] = plane[:n]
    return (normals, info) if return_info else normals


# ------------------------------------------------------------------------------ extension
def _json(a) -> list:
    """An array as nested lists of floats, NaN → None."""
    a = np.asarray(a, np.float64)
    return [_json(v) for v in a] if a.ndim > 1 else [float(v) if np.isfinite(v) else None for v in a]


@dataclass
class ExtendedLandmarks:
    """The skull's extended landmarks, all arrays in SOFT_TISSUE_NAMES order, mm, skull frame.

    points (36, 3): n_i = m_i + depth_i · directions_i (NaN where not present);
    skull_points (36, 3): m_i as given (NaN where the skull has no such landmark);
    present (36,) bool: the landmark is given AND the table has a depth for it;
    normals (36, 3): the outward surface normal at m_i (NaN where not present);
    directions (36, 3): the unit direction used (the table's where it gives one, else the normal);
    depth, sd (36,): the table's mean and SD (mm; NaN where the table has none);
    direction_source: 36 × "table" / "normal" (the table's choice for each landmark);
    orientation: 36 × how the normal's side was decided (see :func:`outward_normals`):
    "vote 31/32" (voters of the landmark's orientation patch for the side chosen / all with an
    opinion) or "centroid"; "" where absent;
    surface_distance (36,): distance of m_i from the mesh (mm; the normal is taken there);
    table_name / table_sha256: the tissue table used; g_depth: the glabella's tissue depth (mm)
    that places the face's definite regions in a reconstruction (the table's, or the 2023 global
    T-Table's where the table has none; NaN for points given without a table);
    outward_angle_deg (36,): the angle between direction_i and the way out from the skull's
    centre (m_i − the mesh's area-weighted centroid), degrees (NaN where absent or unknown).
    Over :data:`DIRECTION_LIMIT_DEG` the tissue is laid into the skull instead of over it — a
    normal turned by a bone thinner than the normal's patch (the nasal bones, the maxilla's walls,
    a CT surface of them) or a table direction in another frame — and :attr:`warnings` says so;
    left_out: the landmarks the user left out of this query (:meth:`without`), absent here.

    It travels whole: in a :class:`~skullsearch.QueryResult`, its audit record (:meth:`to_dict` /
    :meth:`from_dict`), reconstruction, report and export — nothing extends the skull again or
    reloads the table. :meth:`from_points` wraps extended landmarks made elsewhere (synthetic
    targets).
    """

    points: np.ndarray
    skull_points: np.ndarray
    present: np.ndarray
    normals: np.ndarray
    directions: np.ndarray
    depth: np.ndarray
    sd: np.ndarray
    direction_source: list
    orientation: list
    surface_distance: np.ndarray
    table_name: str = ""
    table_sha256: str = ""
    g_depth: float = float("nan")
    outward_angle_deg: np.ndarray = field(default_factory=lambda: np.full(_N, np.nan))
    left_out: list = field(default_factory=list)

    @property
    def names(self) -> tuple[str, ...]:
        return SOFT_TISSUE_NAMES

    @property
    def warnings(self) -> list[str]:
        """What is wrong with the skull's landmarks and what to do: :attr:`side_warnings`,
        :attr:`midline_warnings`, then :attr:`direction_warnings`."""
        return self.side_warnings + self.midline_warnings + self.direction_warnings

    @property
    def direction_warnings(self) -> list[str]:
        """One line per present landmark whose direction points into the skull (its
        ``outward_angle_deg`` over :data:`DIRECTION_LIMIT_DEG`)."""
        out = []
        angle = self.outward_angle_deg
        for i in np.flatnonzero(self.present & (np.nan_to_num(angle) > DIRECTION_LIMIT_DEG)):
            source = "the table's direction" if self.direction_source[i] == "table" else "its surface normal"
            out.append(f"{SOFT_TISSUE_NAMES[i]}: {source} points {angle[i]:.0f}° from outward "
                       "(seen from the skull's centre), so its extended point lies behind the bone, not "
                       "over it; check where the landmark sits (a thin or damaged bone, or a CT surface "
                       "of one, turns the normal), give it a direction in the tissue table, or leave it "
                       f"out (query --leave-out {SOFT_TISSUE_NAMES[i]})")
        return out

    @property
    def units(self) -> str:
        return "mm"

    def frame(self, without: tuple[str, ...] = ()) -> np.ndarray | None:
        """The skull's own frame from its landmarks alone: (3, 3) unit rows — the subject's left,
        up and forward — or None where it cannot be told (no brow (g, n) over two of the chin and
        mouth landmarks nor a vertex over two of g, n, op, or fewer than two midline face
        landmarks with a direction). Up runs from the chin (pg, gn, me; else pr, id, sm) to the
        brow (g, n), or without a jaw from g, n, op to the vertex; forward is the mean tissue
        direction of the midline face landmarks (made square to up); left = up × forward (the
        face frame's +x). It follows any rigid motion of the skull file. ``without``: landmarks
        not to use."""
        idx = {n: i for i, n in enumerate(SOFT_TISSUE_NAMES)}

        def mean(names):
            rows = [self.skull_points[idx[n]] for n in names if self.present[idx[n]] and n not in without
                    and np.isfinite(self.skull_points[idx[n]]).all()]
            return (np.mean(rows, axis=0), len(rows)) if rows else (None, 0)

        top, _ = mean(("g", "n"))
        chin, k = mean(("pg", "gn", "me"))
        if chin is None or k < 2:
            chin, k = mean(("pr", "id", "sm", "pg", "gn", "me"))
        vertex, _ = mean(("v",))
        rim, r = mean(("g", "n", "op"))
        if top is not None and chin is not None and k >= 2:
            up = top - chin
        elif vertex is not None and r >= 2:  # no jaw (a cranium): the vertex above brow and occiput
            up = vertex - rim
        else:
            return None
        face = [self.directions[idx[n]] for n in ("g", "n", "mn", "rhi", "ss", "mp", "pr", "id", "sm", "pg",
                                                    "gn") if self.present[idx[n]] and n not in without
                and np.isfinite(self.directions[idx[n]]).all()]
        if len(face) < 2 or not np.linalg.norm(up) > 0:
            return None
        up = up / np.linalg.norm(up)
        forward = np.mean(face, axis=0)
        forward = forward - (forward @ up) * up
        if not np.linalg.norm(forward) > 1e-6:
            return None
        forward = forward / np.linalg.norm(forward)
        return np.stack([np.cross(up, forward), up, forward])

    def midline_plane(self, without: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray] | None:
        """The skull's midline plane from its landmarks (those in ``without`` left out): (frame
        (3, 3) unit rows left, up, forward; origin (3,) mm on the plane, the midline landmarks'
        mean, else the bilateral pairs' mid-points'), or None where :meth:`frame` cannot be told.
        The normal is the best-fitting plane's through the midline landmarks where three or more
        span one (RMS over :data:`PLANE_SPAN_MM` across their second direction, within 45° of the
        frame's left), else the frame's left; up and forward are the frame's, made square to it."""
        frame = self.frame(without)
        if frame is None:  # (without them the frame cannot be told: with them, then)
            frame = self.frame()
        if frame is None:
            return None
        pts = np.asarray(self.skull_points, np.float64)
        ok = np.asarray(self.present, bool) & np.isfinite(pts).all(1)
        index = {n: i for i, n in enumerate(SOFT_TISSUE_NAMES)}
        mid = [pts[i] for i, n in enumerate(SOFT_TISSUE_NAMES) if n in MIDLINE and ok[i] and n not in without]
        if not mid:  # the pairs' mid-points lie on the midline too
            mid = [(pts[index[n]] + pts[index[n[:-2] + "_r"]]) / 2 for n in SOFT_TISSUE_NAMES
                   if n.endswith("_l") and ok[index[n]] and ok[index[n[:-2] + "_r"]]]
        if not mid:
            return None
        origin = np.mean(mid, axis=0)
        if len(mid) >= 3:  # the plane through the midline landmarks themselves, where they span one
            _, sv, vt = np.linalg.svd(np.asarray(mid) - origin, full_matrices=False)
            if len(sv) == 3 and sv[1] / np.sqrt(len(mid)) > PLANE_SPAN_MM \
                    and abs(vt[2] @ frame[0]) > np.cos(np.radians(45)):
                left = vt[2] * np.sign(vt[2] @ frame[0])
                up = frame[1] - (frame[1] @ left) * left
                up /= np.linalg.norm(up)
                frame = np.stack([left, up, np.cross(left, up)])
        return frame, origin

    def midline_offsets(self) -> dict[str, float]:
        """{midline landmark: its signed distance (mm; + to the subject's left) from the skull's
        midline plane (:meth:`midline_plane`)}, for each present midline landmark where the plane
        can be told. Robust to a few gross errors: while more than four remain, the landmark
        furthest off — over :data:`MIDLINE_LIMIT_MM` — is set aside and the plane fitted again
        without it; a set-aside landmark is measured against the plane of those kept. (Each
        landmark against a plane through the others alone would extrapolate: a plane through the
        face's few landmarks, carried 190 mm back to opisthocranion, misses it by 10 mm on a real
        skull whose landmarks all lie within 3 mm of their common plane.) The other side of that:
        where few midline landmarks remain, one far from the rest (op or v on a cranium with only
        the nose's and brow's) pulls the plane to itself and is not caught."""
        pts = np.asarray(self.skull_points, np.float64)
        index = {n: i for i, n in enumerate(SOFT_TISSUE_NAMES)}
        names = [n for n in MIDLINE if self.present[index[n]] and np.isfinite(pts[index[n]]).all()]
        aside: list[str] = []
        while True:
            plane = self.midline_plane(without=tuple(aside))
            if plane is None:
                return {}
            (left, _, _), origin = plane
            out = {n: float((pts[index[n]] - origin) @ left) for n in names}
            kept = [n for n in names if n not in aside]
            worst = max(kept, key=lambda n: abs(out[n]))
            if abs(out[worst]) <= MIDLINE_LIMIT_MM or len(kept) <= 4:
                return out
            aside.append(worst)

    @property
    def midline_warnings(self) -> list[str]:
        """One line per midline landmark more than :data:`MIDLINE_LIMIT_MM` from the skull's
        midline plane fitted without it (:meth:`midline_offsets`): placed off the midline, or a
        bilateral point given a midline name."""
        return [f"{n}: a midline landmark {abs(d):.0f} mm to the subject's {'left' if d > 0 else 'right'} "
                "of the midline plane through the skull's other midline landmarks: check where it was "
                "placed (or whether a bilateral point was given its name); a misplaced landmark scores as "
                "a wrong one" for n, d in self.midline_offsets().items() if abs(d) > MIDLINE_LIMIT_MM]

    def swapped_sides(self) -> tuple[list[str], int] | None:
        """The bilateral pairs whose ``_l`` point lies on the subject's right of its ``_r`` point,
        and the number of pairs checked; None where the skull's own frame cannot be told
        (:meth:`frame`: from the skull landmarks alone, so the check holds under any rigid motion
        of the skull file); a mirrored mesh (one axis flipped in an export) flags every pair, as
        labels read from the viewer's side do."""
        from skullsearch.encoder.soft_tissue import BILATERAL

        idx = {n: i for i, n in enumerate(SOFT_TISSUE_NAMES)}
        frame = self.frame()
        if frame is None:
            return None
        left = frame[0]
        swapped, checked = [], 0
        for key in BILATERAL:
            a, b = idx[f"{key}_l"], idx[f"{key}_r"]
            if not (self.present[a] and self.present[b]):
                continue
            checked += 1
            if (self.skull_points[a] - self.skull_points[b]) @ left < 0:
                swapped.append(key)
        return swapped, checked

    @property
    def side_warnings(self) -> list[str]:
        """Where the bilateral landmarks' names contradict the skull (:meth:`swapped_sides`): one
        line for all pairs swapped (named from the viewer's side, or a mirrored mesh), else one
        per swapped pair."""
        found = self.swapped_sides()
        if found is None or not found[0]:
            return []
        swapped, checked = found
        if len(swapped) == checked and checked >= 2:
            return [f"left and right look swapped: in all {checked} bilateral pairs the _l landmark lies on "
                    "the subject's right (seen from the skull's own midline and face); were the sides "
                    "named as the viewer sees them, or is the mesh mirrored? Rename them (the subject's "
                    "left is _l) or fix the mesh"]
        return [f"{key}: {key}_l lies on the subject's right of {key}_r (seen from the skull's own midline "
                f"and face; {checked - len(swapped)} of the {checked} pairs agree with their names): check "
                "the two landmarks' names" for key in swapped]

    def without(self, names) -> ExtendedLandmarks:
        """A copy with the landmarks ``names`` left out: absent (NaN points), recorded in
        ``left_out``. A name is a landmark (``zy_l``) or a bilateral pair's key (``zy``: both
        sides); an unknown name raises :class:`ExtendedLandmarkError` listing the known ones."""
        from dataclasses import replace

        from skullsearch.encoder.soft_tissue import base_key

        names = [names] if isinstance(names, str) else [str(n) for n in names or ()]
        known = set(SOFT_TISSUE_NAMES) | {base_key(n) for n in SOFT_TISSUE_NAMES}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ExtendedLandmarkError(
                f"cannot leave out {', '.join(unknown)}: not a landmark name; the names are "
                f"{', '.join(SOFT_TISSUE_NAMES)} (or a pair's key such as zy for both sides)")
        drop = np.array([n in names or base_key(n) in names for n in SOFT_TISSUE_NAMES])
        if not drop.any():
            return self
        present = self.present & ~drop
        left = set(self.left_out) | {SOFT_TISSUE_NAMES[i] for i in np.flatnonzero(drop)}
        return replace(self, present=present, points=np.where(present[:, None], self.points, np.nan),
                       left_out=sorted(left, key=SOFT_TISSUE_NAMES.index))

    def _relaid(self, directions: np.ndarray, factor: float = 1.0, source=None) -> ExtendedLandmarks:
        """A copy whose present points are m_i + factor · depth_i · directions_i."""
        from dataclasses import replace

        if not np.isfinite(np.asarray(self.skull_points, np.float64)[self.present]).all():
            raise ExtendedLandmarkError("these extended landmarks were given as points, without a skull: "
                                        "their tissue cannot be laid again")
        depth = factor * np.asarray(self.depth, np.float64)[:, None]
        laid = np.asarray(self.skull_points, np.float64) + depth * np.asarray(directions, np.float64)
        return replace(self, points=np.where(self.present[:, None], laid, np.nan), directions=directions,
                       direction_source=list(source or self.direction_source))

    def with_depths(self, factor: float) -> ExtendedLandmarks:
        """A copy with every tissue depth times ``factor`` (0.8: a lean face, a cadaver's shrunken
        tissue; 1.2: a heavy one), along the same directions. Raises
        :class:`ExtendedLandmarkError` for points given without a skull (:meth:`from_points`)."""
        return self._relaid(np.asarray(self.directions, np.float64), float(factor))

    def laid_forward(self, names=FORWARD_MIDLINE, forward: np.ndarray | None = None) -> ExtendedLandmarks:
        """A copy with the tissue of the present landmarks ``names`` (default the midline face's,
        :data:`FORWARD_MIDLINE`) laid along ``forward`` (3,) — default the skull's own forward
        axis (:meth:`frame`) — instead of their bone normal (or table direction): a depth measured
        parallel to the Frankfort plane rather than square to the bone. Bone normals fan out over
        a convex profile (a nasion's tissue tilted 30° up, an infradentale's 40° down), spreading the
        extended points up and down the face. Raises :class:`ExtendedLandmarkError` where the
        skull's frame cannot be told or the points were given without a skull."""
        if forward is None:
            frame = self.frame()
            if frame is None:
                raise ExtendedLandmarkError("the skull's forward axis cannot be told from its landmarks "
                                            "(it needs g or n over the chin, or v over g, n, op)")
            forward = frame[2]
        f = np.asarray(forward, np.float64) / np.linalg.norm(forward)
        names = {names} if isinstance(names, str) else set(names)
        directions = np.array(self.directions, np.float64)
        source = list(self.direction_source)
        for i, n in enumerate(SOFT_TISSUE_NAMES):
            if n in names and self.present[i]:
                directions[i] = f
                source[i] = "forward"
        return self._relaid(directions, 1.0, source)

    @classmethod
    def from_points(cls, points, present, sd, table_name: str = "") -> ExtendedLandmarks:
        """Extended landmarks given as points (36, 3) mm, present (36,) bool and SDs (36,) mm,
        without a skull (the skull points, normals and directions are unknown: NaN)."""
        present = np.asarray(present, bool).reshape(_N)
        points = np.where(present[:, None], np.asarray(points, np.float64).reshape(_N, 3), np.nan)
        nan3 = np.full((_N, 3), np.nan)
        return cls(points=points, skull_points=nan3.copy(), present=present, normals=nan3.copy(),
                   directions=nan3.copy(), depth=np.full(_N, np.nan),
                   sd=np.asarray(sd, np.float64).reshape(_N), direction_source=[""] * _N,
                   orientation=[""] * _N, surface_distance=np.full(_N, np.nan), table_name=table_name)

    def to_dict(self) -> dict:
        """Plain JSON values (NaN → None), the audit record's ``extended`` entry."""
        return {"names": list(SOFT_TISSUE_NAMES), "units": "mm", "points": _json(self.points),
                "present": [bool(p) for p in self.present], "sd": _json(self.sd),
                "skull_points": _json(self.skull_points), "normals": _json(self.normals),
                "directions": _json(self.directions), "depth": _json(self.depth),
                "direction_source": list(self.direction_source), "orientation": list(self.orientation),
                "surface_distance": _json(self.surface_distance), "table_name": self.table_name,
                "table_sha256": self.table_sha256,
                "g_depth": float(self.g_depth) if np.isfinite(self.g_depth) else None,
                "outward_angle_deg": _json(self.outward_angle_deg), "left_out": list(self.left_out)}

    @classmethod
    def from_dict(cls, d: dict) -> ExtendedLandmarks:
        """Read back :meth:`to_dict`; records written before it held only points, present and sd
        (the rest is NaN there; records before the direction check have no outward angles)."""
        def arr(key, shape):
            v = d.get(key)
            if v is None:
                return np.full(shape, np.nan)
            if len(shape) == 2:
                v = [[None] * 3 if r is None else r for r in v]
            return np.array(v, dtype=float).reshape(shape)  # (None → NaN)

        names = d.get("names")
        if names is not None and tuple(names) != SOFT_TISSUE_NAMES:
            raise ExtendedLandmarkError("the recorded extended landmarks list other landmarks than this "
                                        "version of skullsearch; re-run the query from the skull")
        present = np.asarray(d["present"], bool)
        g = d.get("g_depth")
        return cls(points=arr("points", (_N, 3)), skull_points=arr("skull_points", (_N, 3)), present=present,
                   normals=arr("normals", (_N, 3)), directions=arr("directions", (_N, 3)),
                   depth=arr("depth", (_N,)), sd=arr("sd", (_N,)),
                   direction_source=list(d.get("direction_source") or [""] * _N),
                   orientation=list(d.get("orientation") or [""] * _N),
                   surface_distance=arr("surface_distance", (_N,)), table_name=d.get("table_name", ""),
                   table_sha256=d.get("table_sha256", ""), g_depth=float("nan") if g is None else float(g),
                   outward_angle_deg=arr("outward_angle_deg", (_N,)), left_out=list(d.get("left_out") or []))

    @property
    def n_present(self) -> int:
        return int(self.present.sum())


def extend(skull, table: TissueTable | str | None = None, radius_mm: float = 4.0) -> ExtendedLandmarks:
    """Extended landmarks of a skull: n_i = m_i + d_i · dir_i (README, How it works: query).

    skull: a :class:`~skullsearch.retrieval.skull.Skull` (mesh in mm, landmarks by pair key);
    table: a :class:`TissueTable` or anything :func:`load_table` takes (None: the 2023 global
    T-Table); dir_i is the table's direction for the landmark when it gives one (a fixed vector
    in the skull file's frame), else the outward surface normal from :func:`outward_normals`
    with a ``radius_mm`` patch. Depths are millimetres and are not scaled with the skull.
    Landmarks the skull lacks, or the table has no depth for, are absent (NaN rows).
    """
    if not isinstance(table, TissueTable):
        table = load_table(table)
    m, given = skull.landmark_array()
    m = np.asarray(m, dtype=np.float64)
    present = given & table.available
    normals = np.full((_N, 3), np.nan)
    distance = np.full(_N, np.nan)
    orientation = [""] * _N
    centre = np.full(3, np.nan)  # the mesh's area-weighted centroid: the way out is away from it
    if present.any():
        nrm, info = outward_normals(skull.mesh, m[present], radius_mm=radius_mm, return_info=True)
        centre = info["surface_centroid"]
        normals[present] = nrm
        distance[present] = info["surface_distance"]
        for i, how, (yes, no) in zip(np.nonzero(present)[0], info["method"], info["votes"], strict=True):
            orientation[i] = f"vote {yes}/{yes + no}" if how == "vote" else str(how)
    from_table = np.isfinite(table.direction).all(axis=1)
    directions = np.where(from_table[:, None], table.direction, normals)
    directions[~present] = np.nan
    points = np.where(present[:, None], m + table.mean[:, None] * directions, np.nan)
    outward = m - centre
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = _dot(outward, directions) / (np.linalg.norm(outward, axis=1)
                                           * np.linalg.norm(directions, axis=1))
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    g_depth = table.row("g")[0]
    if not np.isfinite(g_depth):  # the definite regions need one: the default table's
        g_depth = load_table().row("g")[0]
    return ExtendedLandmarks(
        points=points, skull_points=m, present=present, normals=normals, directions=directions,
        depth=table.mean.copy(), sd=table.sd.copy(),
        direction_source=["table" if t else "normal" for t in from_table], orientation=orientation,
        surface_distance=distance, table_name=table.name, table_sha256=table.sha256 or "",
        g_depth=float(g_depth), outward_angle_deg=np.where(present, angle, np.nan))


# -------------------------------------------------------------------------------- export
_GREY, _BLUE, _ORANGE, _PEG = (190, 190, 190, 255), (40, 90, 230, 255), (255, 140, 0, 255), (90, 90, 90, 255)
_EXPORT_TYPES = {".ply": "ply", ".obj": "obj", ".glb": "glb"}


def export_pegs(skull, ext: ExtendedLandmarks, path, ball_mm: float = 1.5, peg_mm: float = 0.5) -> Path:
    """Write the skull (grey) with, per present landmark, a blue ball at m_i, a peg (thin
    cylinder) from m_i to n_i and an orange ball at n_i, as one vertex-coloured mesh; the format
    follows the extension (.ply, .obj, .glb). Returns the path written."""
    import trimesh

    path = Path(path)
    kind = _EXPORT_TYPES.get(path.suffix.lower())
    if kind is None:
        raise ExtendedLandmarkError(f"cannot write {path.name}: use a .ply, .obj or .glb file name")
    mesh = skull.mesh
    parts = [trimesh.Trimesh(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces),
                             vertex_colors=_GREY, process=False)]
    ball = trimesh.creation.icosphere(subdivisions=2, radius=ball_mm)
    for i in np.nonzero(ext.present)[0]:
        m_i, n_i = ext.skull_points[i], ext.points[i]
        for centre, colour in ((m_i, _BLUE), (n_i, _ORANGE)):
            parts.append(trimesh.Trimesh(ball.vertices + centre, ball.faces, vertex_colors=colour,
                                         process=False))
        if np.linalg.norm(n_i - m_i) > 1e-9:
            peg = trimesh.creation.cylinder(radius=peg_mm, segment=np.stack([m_i, n_i]), sections=12)
            parts.append(trimesh.Trimesh(peg.vertices, peg.faces, vertex_colors=_PEG, process=False))
    out = trimesh.util.concatenate(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        out.export(path, file_type=kind)
    except OSError as exc:
        raise ExtendedLandmarkError(f"cannot write {path}: {exc}") from None
    return path
