"""Automatic annotation of a FLAME-format head: 68 landmarks and the 36 soft-tissue points.

Works on any head mesh from its geometry, so a user's FLAME file needs no hand work:

1. **68 landmarks** (when the model has no embedding): the mean face is rendered frontally
   (orthographic, Lambertian) at a few sizes and tilts, dlib's 68-point predictor runs on each
   render, every 2D point is read back onto the mesh through the rasterizer's triangle and
   barycentric buffers, and the 3D positions are averaged and snapped to the surface.
2. **A face frame** from the landmarks: x from the subject's right to left (symmetric pairs),
   y up (chin → nasion), z out of the face; the midsagittal plane through the midline points.
3. **Midline points** from the midsagittal profile of the skin (the largest connected part of
   the mesh): extremes (vertex, glabella, pronasale, pogonion, menton), deepest points below a
   chord (sellion, subnasale, supramentale), fractions along the nasal dorsum (mid-nasal,
   rhinion), and windows set by the landmarks.
4. **Bilateral points** by casting rays onto the skin at positions set by the landmarks and
   average adult proportions scaled to the face (biocular width / 90 mm).

Annotations are stored per topology (``encoder/data/annotation-<hash>.json`` in the package,
or the user's cache) as (triangle, barycentric) pairs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skullsearch.encoder.atomic import write_json_atomic
from skullsearch.encoder.soft_tissue import BILATERAL, SOFT_TISSUE_NAMES
from skullsearch.errors import LandmarkError

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
ANNOTATOR_VERSION = 1
#: mid-nasal and rhinion on the skin: at these fractions of the height from sellion down to
#: pronasale (average adult proportions; geometry alone does not fix them)
MID_NASAL_FRACTION = 0.3
RHINION_FRACTION = 0.6


def _skin(vertices: np.ndarray, faces: np.ndarray):
    """The skin: the largest connected part of the mesh (drops eyeballs, teeth, tongue), as a
    trimesh over all the vertices and the ids of its triangles (see
    :func:`~skullsearch.encoder.fitting.largest_component`)."""
    import trimesh

    from skullsearch.encoder.fitting import largest_component

    face_ids = largest_component(faces)
    return trimesh.Trimesh(vertices, faces[face_ids], process=False), face_ids


def surface_points(model_vertices, faces, skin, skin_faces, points) -> tuple[np.ndarray, np.ndarray]:
    """Snap (K, 3) points to the skin: triangle ids into ``faces`` (K,) and barycentrics (K, 3)."""
    import trimesh

    closest, _, tri = trimesh.proximity.closest_point(skin, np.asarray(points, dtype=np.float64))
    corners = model_vertices[faces[skin_faces[tri]]]
    bary = trimesh.triangles.points_to_barycentric(corners, closest)
    bary = np.clip(bary, 0, None)
    bary /= bary.sum(1, keepdims=True)
    return skin_faces[tri], bary.astype(np.float32)


# ---------------------------------------------------------------- 68 landmarks from renders
def detect_landmarks68(vertices: np.ndarray, faces: np.ndarray, views=None) -> np.ndarray:
    """68 iBUG landmarks (68, 3) mm on a head mesh, by dlib on orthographic renders.

    vertices: (V, 3) mm face frame (y up, z out of the face); faces (F, 3).
    views: (size px, pitch deg) pairs to average over.
    """
    from skullsearch.encoder.detectors import dlib_landmarks68
    from skullsearch.encoder.render import face_camera, render_mesh

    skin, skin_faces = _skin(vertices, faces)
    lo, hi = skin.bounds
    center = (lo + hi) / 2
    fov = 1.15 * max(hi[0] - lo[0], hi[1] - lo[1])
    views = views or [(400, 0.0), (480, 0.0), (360, 0.0), (400, 5.0), (400, -5.0)]
    found = []
    for size, pitch in views:
        cam = face_camera(pitch_deg=pitch, size=size, orthographic=True, fov_mm=fov, center=center)
        r = render_mesh(vertices, faces, cam)
        dets = dlib_landmarks68(r.image)
        if not dets:
            continue
        pts2d = dets[0][1]
        fg = np.argwhere(r.face_id >= 0)  # (n, 2) row, col
        pts3 = []
        for x, y in pts2d:
            row, col = int(round(y)), int(round(x))
            if not (0 <= row < cam.height and 0 <= col < cam.width) or r.face_id[row, col] < 0:
                row, col = fg[np.argmin(((fg - (row, col)) ** 2).sum(1))]  # nearest face pixel
            f = r.face_id[row, col]
            pts3.append((vertices[faces[f]] * r.bary[row, col][:, None]).sum(0))
        found.append(np.array(pts3))
    if not found:
        raise LandmarkError(
            "the landmark detector found no face on the model's renders; give a landmark "
            "embedding (landmark_embedding.npy) next to the model file"
        )
    mean = np.median(np.stack(found), axis=0)
    closest = surface_points(vertices, faces, skin, skin_faces, mean)
    return (vertices[faces[closest[0]]] * closest[1][..., None]).sum(1)


# ---------------------------------------------------------------- soft-tissue points
def face_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A local frame from 68 landmarks: rotation (3, 3) rows x, y, z and origin (3,) on the
    midsagittal plane. x: subject's right → left; y: up; z: out of the face."""
    pairs = [(36, 45), (39, 42), (31, 35), (48, 54), (0, 16), (2, 14), (17, 26), (21, 22)]
    xs = np.array([lm[b] - lm[a] for a, b in pairs])
    # iBUG 36 is the subject's right eye: lm[45] - lm[36] points to the subject's left.
    x = xs.sum(0)
    x /= np.linalg.norm(x)
    y = lm[27] - lm[8]
    y -= x * (y @ x)
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    midline = [27, 28, 29, 30, 33, 51, 57, 8, 62, 66]
    mids = np.concatenate([lm[midline], np.array([(lm[a] + lm[b]) / 2 for a, b in pairs])])
    return np.stack([x, y, z]), mids.mean(0)


def refine_symmetry(rot: np.ndarray, origin: np.ndarray, points: np.ndarray, iters: int = 200):
    """Refine the midsagittal plane of a (near-)symmetric surface.

    rot (3, 3) rows x, y, z with x the plane normal; origin (3,); points (n, 3) the skin.
    Mirror ICP: each step mirrors the points across the plane, pairs each with its nearest
    neighbour (the closest 80 %: asymmetric parts are left out), finds the rigid motion that
    lays the mirrored points on their partners (Kabsch), and takes as the new plane the one of
    the composed reflection (its normal: the eigenvector of its linear part with eigenvalue −1;
    its origin: the mean midpoint of each point and its image). Plane errors about either axis
    in it are corrected: turned about the vertical (yaw) or about the front axis (roll). (A step
    that refits the normal to the pairs' differences, as before, could not correct a roll: it
    kept the plane it was given.) Returns the refined (rot, origin).
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    tree = cKDTree(points)
    n, o = rot[0].copy(), origin.copy()
    for _ in range(iters):
        mirror = np.eye(3) - 2 * np.outer(n, n)
        mirrored = (points - o) @ mirror + o  # (the mirror is symmetric)
        dist, j = tree.query(mirrored)
        good = dist <= np.quantile(dist, 0.8)
        src, dst = mirrored[good], points[j[good]]
        cs, cd = src.mean(0), dst.mean(0)
        u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
        r = vt.T @ np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))]) @ u.T
        a = r @ mirror  # the linear part of x → r · mirror(x) + t: a reflection, near enough
        w, vecs = np.linalg.eigh((a + a.T) / 2)
        n_new = vecs[:, np.argmin(w)]
        n_new = n_new * np.sign(n_new @ rot[0])
        image = (src - cs) @ r.T + cd  # each good point's mirror image under the new symmetry
        o = ((points[good] + image) / 2).mean(0)
        step = np.arccos(np.clip(n_new @ n, -1, 1))
        n = n_new
        if step < 1e-8:  # rad: converged (point-to-point ICP converges linearly)
            break
    y = rot[1] - n * (rot[1] @ n)
    y /= np.linalg.norm(y)
    return np.stack([n, y, np.cross(n, y)]), origin + n * ((o - origin) @ n)


def _profile(skin, rot, origin) -> np.ndarray:
    """Midsagittal profile of the skin in the local frame: segments (m, 2, 2) of (y, z)."""
    import trimesh

    # A hair off the plane: vertices lying exactly on it (a symmetric mesh's midline) make
    # degenerate intersections that the slicer drops.
    origin = origin + 1e-3 * rot[0]
    segs = trimesh.intersections.mesh_plane(skin, rot[0], origin)  # (m, 2, 3)
    return ((segs - origin) @ rot.T)[..., 1:]


def _dense(segs: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Points every ``step`` mm along the profile segments: (n, 2) (y, z)."""
    lengths = np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1)
    counts = np.maximum(np.ceil(lengths / step).astype(int), 1) + 1
    seg_id = np.repeat(np.arange(len(segs)), counts)
    t = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) / (
        counts[seg_id] - 1)
    return segs[seg_id, 0] + t[:, None] * (segs[seg_id, 1] - segs[seg_id, 0])


def _front(segs: np.ndarray, y_lo: float, y_hi: float, step: float = 0.25) -> np.ndarray:
    """The front (max z) silhouette of the profile between two heights: (n, 2) (y, z), y desc."""
    ys = np.arange(y_hi, y_lo - step, -step)
    (ya, za), (yb, zb) = segs[:, 0].T, segs[:, 1].T
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    span = np.where(hi - lo < 1e-9, 1e-9, yb - ya)
    t = (ys[:, None] - ya) / span
    z = np.where((ys[:, None] >= lo) & (ys[:, None] <= hi), za + t * (zb - za), -np.inf)
    zmax = z.max(1)
    keep = np.isfinite(zmax)
    return np.stack([ys[keep], zmax[keep]], 1)


def _deepest(curve: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The curve point (y, z) farthest behind the chord a → b (between a and b in height)."""
    seg = curve[(curve[:, 0] <= max(a[0], b[0])) & (curve[:, 0] >= min(a[0], b[0]))]
    d = b - a
    n = np.array([-d[1], d[0]]) / np.linalg.norm(d)  # normal of the chord
    if n[1] > 0:  # make it point backwards (−z)
        n = -n
    return seg[np.argmax((seg - a) @ n)]


def _at_height(curve: np.ndarray, y: float) -> np.ndarray:
    return curve[np.argmin(np.abs(curve[:, 0] - y))]


@dataclass
class _Face:
    """What the soft-tissue points are placed from: the skin and the face's local frame.

    skin: the skin trimesh (world frame); rot (3, 3) rows x, y, z and origin (3,) mm the local
    frame (x: the midsagittal plane's normal, y up, z out of the face); L (68, 3) mm the
    landmarks in it; s: the face's scale (biocular width / 90 mm); prof (n, 2) (y, z) mm the
    midsagittal profile every 0.5 mm; front (m, 2) (y, z) mm its front silhouette from 40 s mm
    below the chin to the top, y descending; y_eye, y_brow, y_mouth, y_chin: heights (mm) of the
    eyes, brows, mouth and chin from the landmarks.
    """

    skin: object
    rot: np.ndarray
    origin: np.ndarray
    L: np.ndarray
    s: float
    prof: np.ndarray
    front: np.ndarray
    y_eye: float
    y_brow: float
    y_mouth: float
    y_chin: float

    def front_max(self, y_lo: float, y_hi: float) -> np.ndarray:
        """The most prominent (max z) silhouette point (y, z) between two heights."""
        seg = self.front[(self.front[:, 0] >= y_lo) & (self.front[:, 0] <= y_hi)]
        return seg[np.argmax(seg[:, 1])]


def _face_setup(vertices: np.ndarray, faces: np.ndarray, lm: np.ndarray, largest_part: bool = True) -> _Face:
    """The skin, the refined face frame and the midsagittal profile of a head (see :class:`_Face`);
    vertices (V, 3) mm, faces (F, 3), lm (68, 3) mm; ``largest_part``: the skin is the mesh's
    largest connected part (:func:`_skin`), else the whole mesh."""
    if largest_part:
        skin, _ = _skin(vertices, faces)
    else:
        import trimesh

        skin = trimesh.Trimesh(vertices, faces, process=False)
    rot, origin = refine_symmetry(*face_frame(lm), skin.vertices)
    L = (lm - origin) @ rot.T  # landmarks in the local frame
    s = np.linalg.norm(L[45] - L[36]) / 90.0  # scale against the adult biocular width
    segs = _profile(skin, rot, origin)
    prof = _dense(segs)
    top = prof[:, 0].max()
    y_chin = L[8, 1]
    return _Face(skin=skin, rot=rot, origin=origin, L=L, s=s, prof=prof,
                 front=_front(segs, y_chin - 40 * s, top), y_eye=L[36:48, 1].mean(),
                 y_brow=L[17:27, 1].mean(), y_mouth=(L[62, 1] + L[66, 1]) / 2, y_chin=y_chin)


def nasal_dorsum(f: _Face) -> tuple[np.ndarray, np.ndarray]:
    """Sellion and pronasale (y, z) mm in the face's local frame: the deepest point of the front
    silhouette between glabella and the nose's tip, and that tip (the most prominent point between
    the nose's base and root landmarks)."""
    L, s = f.L, f.s
    g = f.front_max((L[27, 1] + f.y_brow) / 2, f.y_brow + 20 * s)
    prn = f.front_max(L[33, 1], L[27, 1])
    return _deepest(f.front, g, prn), prn


def _midline_points(f: _Face, dorsum: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """The 14 midline points (3,) mm in the local frame (x = 0): extremes, deepest points below
    a chord, fractions along the nasal dorsum (``dorsum``: mid-nasal's and rhinion's, default
    :data:`MID_NASAL_FRACTION`, :data:`RHINION_FRACTION`) and windows set by the landmarks."""
    mn_at, rhi_at = dorsum if dorsum is not None else (MID_NASAL_FRACTION, RHINION_FRACTION)
    L, s, front, prof = f.L, f.s, f.front, f.prof
    # glabella: the most prominent point between the brows — above the nasal root, where a face
    # with a shallow root would otherwise take the start of the nasal dorsum
    g = f.front_max((L[27, 1] + f.y_brow) / 2, f.y_brow + 20 * s)
    se, prn = nasal_dorsum(f)
    ls = f.front_max(f.y_mouth, L[33, 1])
    sn = _deepest(front, prn, ls)
    li = f.front_max(f.y_mouth - 0.45 * (f.y_mouth - f.y_chin), f.y_mouth)
    pg = f.front_max(f.y_chin - 5 * s, f.y_mouth - 0.5 * (f.y_mouth - f.y_chin))
    sm = _deepest(front, li, pg)
    chin = prof[(prof[:, 1] > pg[1] - 30 * s) & (prof[:, 0] < pg[0])]
    me = chin[np.argmin(chin[:, 0])]
    under = prof[(prof[:, 0] <= pg[0]) & (prof[:, 0] >= me[0]) & (prof[:, 1] >= me[1])]
    gn = under[np.argmax(under[:, 1] - under[:, 0])]  # most anterior-inferior
    back = prof[(prof[:, 1] < 0) & (np.abs(prof[:, 0] - g[0]) < 50 * s)]
    op = back[np.argmax(np.linalg.norm(back - g, axis=1))]
    v = prof[np.argmax(prof[:, 0])]
    midline = {
        "op": op, "v": v, "g": g, "n": se,
        "mn": _at_height(front, se[0] + mn_at * (prn[0] - se[0])),
        "rhi": _at_height(front, se[0] + rhi_at * (prn[0] - se[0])),
        "ss": sn, "mp": _at_height(front, (sn[0] + ls[0]) / 2), "pr": ls, "id": li,
        "sm": sm, "pg": pg, "gn": gn, "me": me,
    }
    return {k: np.array([0.0, y, z]) for k, (y, z) in midline.items()}


def _bilateral_rays(f: _Face) -> tuple[list, list, list[str]]:
    """The rays (local frame) whose first skin hit is a bilateral point: origins (n, 3) mm,
    directions (n, 3) and the n point names, at positions set by the landmarks and average
    adult proportions scaled to the face."""
    L, s, y_mouth = f.L, f.s, f.y_mouth
    rays_o, rays_d, names = [], [], []

    def cast(name, x, y, z, direction):
        rays_o.append([x, y, z])
        rays_d.append(direction)
        names.append(name)

    far = 300.0
    for side, sign, eye, corner, ala in (
        ("l", 1.0, range(42, 48), 54, 35), ("r", -1.0, range(36, 42), 48, 31),
    ):
        e = L[list(eye)].mean(0)
        brow = L[22:27].mean(0) if side == "l" else L[17:22].mean(0)
        cast(f"mso_{side}", e[0], e[1] + 0.8 * (brow[1] - e[1]), far, (0, 0, -1))
        cast(f"mio_{side}", e[0], e[1] - 0.4 * (e[1] - L[33, 1]), far, (0, 0, -1))
        a = L[ala]
        cast(f"ac_{side}", a[0] + sign * 3 * s, a[1] + 2 * s, far, (0, 0, -1))
        c = L[corner]
        cast(f"sC_{side}", 0.75 * c[0], y_mouth + 10 * s, far, (0, 0, -1))
        cast(f"iC_{side}", 0.75 * c[0], y_mouth - 10 * s, far, (0, 0, -1))
        cast(f"sM2_{side}", sign * far, y_mouth + 8 * s, c[2] - 22 * s, (-sign, 0, 0))
        cast(f"iM2_{side}", sign * far, y_mouth - 8 * s, c[2] - 22 * s, (-sign, 0, 0))
        ex = L[45] if side == "l" else L[36]
        y_go = y_mouth - 0.45 * (y_mouth - f.y_chin)
        z_go = ex[2] - 62 * s
        cast(f"go_{side}", sign * far, y_go, z_go, (-sign, 0, 0))
        cast(f"mr_{side}", sign * far, (y_go + f.y_eye - 25 * s) / 2, z_go + 4 * s, (-sign, 0, 0))
    return rays_o, rays_d, names


def _ray_points(f: _Face, rays_o, rays_d, names) -> dict[str, np.ndarray]:
    """Each ray's first skin hit (3,) mm in the local frame, by name (rays as
    :func:`_bilateral_rays` gives them); a ray that misses the skin raises LandmarkError."""
    # to world, cast, back to local
    o = np.array(rays_o) @ f.rot + f.origin
    d = np.array(rays_d, dtype=np.float64) @ f.rot
    loc, ray_idx, _ = f.skin.ray.intersects_location(o, d, multiple_hits=True)
    pts = {}
    for i, name in enumerate(names):
        hits = loc[ray_idx == i]
        if not len(hits):
            raise LandmarkError(f"annotator: no skin surface found for {name}; give the point "
                                "in a soft-tissue JSON override")
        first = hits[np.argmin(np.linalg.norm(hits - o[i], axis=1))]
        pts[name] = (first - f.origin) @ f.rot.T
    return pts


def _zygia_and_mandible(f: _Face, pts: dict[str, np.ndarray]) -> None:
    """Add zygion (the widest point of the cheekbone band, in front of the ear) and the
    mid-mandibular border (the mid-point of gonion and menton) on each side to ``pts``
    (local frame, mm; needs go_l, go_r and me)."""
    L, s = f.L, f.s
    vl = (f.skin.vertices - f.origin) @ f.rot.T
    for side, sign, ex in (("l", 1.0, L[45]), ("r", -1.0, L[36])):
        band = vl[(vl[:, 1] > f.y_eye - 25 * s) & (vl[:, 1] < f.y_eye - 5 * s)
                  & (vl[:, 2] > ex[2] - 45 * s) & (vl[:, 2] < ex[2] - 5 * s) & (sign * vl[:, 0] > 0)]
        pts[f"zy_{side}"] = band[np.argmax(sign * band[:, 0])]
        # mid-mandibular border: the mid-point of gonion and menton (inside the head; annotate()
        # snaps every point to the skin nearest it)
        mid = (pts[f"go_{side}"] + pts["me"]) / 2
        pts[f"mmb_{side}"] = mid


def _mirror_average(pts: dict[str, np.ndarray]) -> None:
    """Symmetry: replace each bilateral pair (local frame) by the average of the pair and its
    mirror image across the midsagittal plane (x = 0)."""
    flip = np.array([-1.0, 1.0, 1.0])
    for key in BILATERAL:
        m = (pts[f"{key}_l"] + pts[f"{key}_r"] * flip) / 2
        pts[f"{key}_l"], pts[f"{key}_r"] = m, m * flip


def soft_tissue_positions(vertices: np.ndarray, faces: np.ndarray, lm: np.ndarray,
                          largest_part: bool = True, dorsum: tuple[float, float] | None = None) -> np.ndarray:
    """The 36 soft-tissue points (36, 3) mm, in :data:`SOFT_TISSUE_NAMES` order: on the skin but
    the two mid-mandibular points (``mmb``, the mid-points of gonion and menton, inside the
    head); :func:`annotate` snaps all 36 to the skin.

    vertices (V, 3) mm of the mean face; faces (F, 3); lm (68, 3) mm its iBUG landmarks;
    ``largest_part``: read the skin as the mesh's largest connected part (a model's head: without
    eyeballs, teeth and tongue), else the whole mesh (a skin in pieces, e.g. a scan that ends at
    the lip with a face grafted below it); ``dorsum``: mid-nasal's and rhinion's fractions of
    the height from sellion to pronasale (default :data:`MID_NASAL_FRACTION`,
    :data:`RHINION_FRACTION`).
    """
    return face_positions(_face_setup(vertices, faces, lm, largest_part), dorsum)


def face_positions(f: _Face, dorsum: tuple[float, float] | None = None) -> np.ndarray:
    """:func:`soft_tissue_positions` of a head already set up (its skin and frame, as
    :func:`_face_setup` gives them: the costly part on a large scan), (36, 3) mm."""
    pts = _midline_points(f, dorsum)
    pts.update(_ray_points(f, *_bilateral_rays(f)))
    _zygia_and_mandible(f, pts)
    _mirror_average(pts)
    local = np.array([pts[n] for n in SOFT_TISSUE_NAMES])
    return local @ f.rot + f.origin


def annotate(vertices: np.ndarray, faces: np.ndarray, lm68: np.ndarray | None = None):
    """Annotate a head mesh: (landmarks68 SurfacePoints, soft tissue SurfacePoints).

    vertices (V, 3) mm mean face; faces (F, 3); lm68 (68, 3) landmarks when the model has an
    embedding (otherwise detected on renders).
    """
    from skullsearch.encoder.face_data import SurfacePoints

    vertices = np.asarray(vertices, dtype=np.float64)
    skin, skin_faces = _skin(vertices, faces)
    if lm68 is None:
        lm68 = detect_landmarks68(vertices, faces)
    lm_f, lm_b = surface_points(vertices, faces, skin, skin_faces, lm68)
    pos = soft_tissue_positions(vertices, faces, lm68)
    st_f, st_b = surface_points(vertices, faces, skin, skin_faces, pos)
    return (landmark_embedding(SurfacePoints(lm_f, lm_b)),
            SurfacePoints(st_f, st_b, SOFT_TISSUE_NAMES))


def landmark_embedding(points):
    """68 surface points → a static 68-point :class:`LandmarkEmbedding`."""
    from skullsearch.encoder.flame_io import LandmarkEmbedding

    return LandmarkEmbedding(static_faces=points.faces, static_bary=points.bary,
                             source="skullsearch annotator").validated()


# ---------------------------------------------------------------- storage
def _annotation_file(topology_hash: str, folder: Path) -> Path:
    return folder / f"annotation-{topology_hash[:16]}.json"


def _read(path: Path, topology_hash: str):
    from skullsearch.encoder.face_data import SurfacePoints

    data = json.loads(path.read_text())
    if data.get("topology") != topology_hash:
        return None
    lm = data.get("landmarks68")
    return (landmark_embedding(SurfacePoints.from_json(lm)) if lm else None,
            SurfacePoints.from_json(data["soft_tissue"]))


def packaged_annotation(topology_hash: str):
    """(landmarks68, soft_tissue) shipped in the package for this topology, or None."""
    path = _annotation_file(topology_hash, DATA_DIR)
    return _read(path, topology_hash) if path.exists() else None


def write_annotation(path: Path, topology_hash: str, landmarks68, soft_tissue, source: str) -> Path:
    """Store an annotation (landmarks68: a 68-point LandmarkEmbedding or None) as JSON."""
    from skullsearch.encoder.face_data import SurfacePoints

    data = {
        "topology": topology_hash,
        "annotator_version": ANNOTATOR_VERSION,
        "source": source,
        "landmarks68": SurfacePoints(landmarks68.static_faces, landmarks68.static_bary).to_json()
        if landmarks68 is not None else None,
        "soft_tissue": soft_tissue.to_json(),
    }
    write_json_atomic(path, data, sort_keys=False)
    return path


def annotation_for(model):
    """The soft-tissue annotation of a model: packaged, cached, or computed (then cached).

    A model without a 68-point embedding also gets one (set on ``model.landmarks``).
    """
    from skullsearch.encoder.cache import cache_dir

    h = model.topology_hash
    found = packaged_annotation(h)
    cached = _annotation_file(h, cache_dir() / "annotations")
    if found is None and cached.exists():
        found = _read(cached, h)
    if found is not None:
        lm, st = found
        if model.landmarks is None and lm is not None:
            model.landmarks = lm
        return st
    lm68 = None
    if model.landmarks is not None:
        import torch

        with torch.no_grad():
            lm68 = model.landmarks68(batch_size=1)[0].numpy().astype(np.float64)
    log.info("annotating the face model's soft-tissue points (topology %s)", h[:16])
    try:
        lm, st = annotate(model.v_template, model.faces, lm68)
    except LandmarkError:
        raise
    except (ValueError, IndexError, FloatingPointError, np.linalg.LinAlgError) as e:
        raise LandmarkError(
            f"the automatic annotator could not place the soft-tissue points ({e}): the mesh does "
            "not look like a head in the face frame (millimetres, +y up, +z out of the face) "
            "with its 68 landmarks on the face; check the file, or give the 36 points as "
            "soft_tissue=FILE.json (--soft-tissue FILE.json)") from None
    if model.landmarks is None:
        model.landmarks = lm
    write_annotation(cached, h, lm, st, source=model.meta.get("name", "user model"))
    return st


def main(argv=None) -> None:  # pragma: no cover - maintenance entry point
    """``python -m skullsearch.encoder.annotate``: re-annotate the open default model and write
    the packaged annotation file."""
    from skullsearch.encoder.anny_head import build_arrays
    from skullsearch.encoder.face_data import topology_hash

    d = build_arrays()
    # as FaceModel holds them: float32 mm vertices, int64 triangles
    v_template = np.asarray(d["v_template"], dtype=np.float32)
    faces = np.asarray(d["faces"], dtype=np.int64)
    h = topology_hash(len(v_template), faces)
    lm, st = annotate(v_template, faces)
    path = write_annotation(_annotation_file(h, DATA_DIR), h, lm, st, source=d["meta"]["source"])
    print(path)


if __name__ == "__main__":  # pragma: no cover
    main()
