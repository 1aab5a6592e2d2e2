"""Real CT heads for validation: skull and skin surfaces from one volume, skull landmarks placed
automatically, and soft-tissue depths measured between them.

    volume, spacing = load_ct("/work/shared/ct/cthead/cthead.npz")   # int16 (S, R, C), (3,) mm
    skull, skin = extract_surfaces(volume, spacing)                   # trimesh, mm, face frame
    landmarks = skull_landmarks(skull)                                # {pair key: (3,) mm}
    depths = tissue_depths(skull, skin, landmarks)                    # {pair key: {...: mm}}
    python benchmarks/_ct.py OUT_DIR                                  # skull.ply, skin.ply, ...

The skin is the ground truth a facial reconstruction is validated against, so nothing that
places a landmark looks at it: landmarks come from the skull mesh alone.

**Frame** (:func:`head_frame`): voxel (slice, row, column) → mm with +y up (against the slice
order), +z out of the face (low rows are anterior) and +x = y × z (along the columns), origin at
the centre of the volume. Which column side is the subject's left is not documented for the
CThead data: a bilateral ``_l`` here means the +x side, as skullsearch's convention (subject's
left is +x) would have it if the columns run to the subject's left. A mirror changes no midline
measure, and left/right depths are reported as pairs.

**Surfaces** (:func:`extract_surfaces`): the volume is smoothed (Gaussian, σ 0.6 voxel) and
contoured by marching cubes at the skin level (500 ≈ half-way from air to soft tissue) and the
bone level (1250: ≈ 1300–1400 is cortical bone, thin nasal and orbital bone needs ≈ 1200).
Skin: the largest connected part of the tissue mask after an opening (2-voxel disk in each
slice), which drops the plastic wrap and the scanner table touching the head, then grown back
2 voxels inside the mask; closed air pockets are filled. Bone: parts of the bone mask larger
than ``min_part`` of the largest (the mandible stays if it is separate); closed pockets
(diploë, marrow) are filled. The volume is padded so both surfaces are closed, and they are
oriented outward. At 1250 the cervical spine touches the occiput (and the mandible the maxilla
through the teeth), so the skull surface of CThead carries C1–C3: the landmark search windows
keep clear of them.

**Landmarks** (:func:`fit_skull`, :func:`skull_landmarks`):

1. Midsagittal plane: mirror symmetry of the skull's vertices (mirror, pair each point with its
   nearest neighbour, refit the plane to the pairs; 80 % best pairs), refined on the upper
   front of the skull (forehead, orbits, nose, cheekbones) where the landmarks are.
2. The skull is cut by that plane; the *front silhouette* (most anterior bone at each height,
   0.25 mm steps) is split into runs where it is continuous (steps < 3 mm). The run through
   the forehead ends at the tip of the nasal bones: **rhi**. **n**: the deepest point behind the
   chord from the forehead (45 mm above rhi) to rhi; **mn**: half-way along the arc n → rhi;
   **g**: the apex of the frontal bulge, farthest in front of the chord from n to the profile
   35 mm of arc above it. **op**: the midline bone farthest from g, behind the face; **v**: the
   highest midline bone.
3. Below the nasal aperture the next two runs that reach within 25 mm of n's depth are the upper
   jaw and the mandible. Upper jaw: ANS = its most anterior point in the top 5 mm; the run ends
   at the upper incisal edge; **pr** is ``crown_mm`` (10) of arc above the edge (alveolar bone
   and teeth are one surface in a mesh: incisal edge to alveolar crest is a typical crown
   height); **ss**: the deepest point behind the chord ANS → pr (a third of the way down when
   that profile is not concave); **mp**: half-way in height between ss and pr. Mandible: the
   run starts at the lower incisal edge; **id** is ``crown_mm`` below it; **me**: the lowest bone
   near the run's end; **pg**: the chin's apex in front of the chord id → me (lower two thirds
   of the symphysis); **sm**: the deepest point behind the chord id → pg (half-way if not
   concave); **gn**: the bone farthest out from the chord pg → me.
4. Tilt: the head lies tilted in the scanner, and "highest" (v) or "lowest" (me) need a
   horizontal. Orbits: on parasagittal cuts 10–56 mm out, the front silhouette has a gap (bone
   ≥ 20 mm behind n for ≥ 12 mm of height) between the supra- and infraorbital margins; orbitale
   is the lowest infraorbital margin. Porion: the external acoustic meatus is a small bony
   canal, seen as a closed hole (outward normals pointing into it, 12–50 mm around) repeated
   on neighbouring parasagittal cuts 40–76 mm out, 55–100 mm behind and up to 35 mm below
   orbitale; of the candidates (mastoid cells look alike) the left/right pair seen on the most
   cuts and most symmetric wins; porion is the canal's top on its outermost cut. The
   horizontal is the **Frankfurt plane** (mean porion → mean orbitale, projected on the
   midsagittal plane); without it the palatal plane (ANS → PNS, the hindmost point of the bony
   palate's section), else nasion → opisthocranion. Steps 2–4 are repeated in the corrected
   frame until the tilt settles.
5. Front midline points move onto the bone's crest when it runs beside the plane (a deviated
   nose): the front-most point within ±5 mm on a horizontal cut, if > 0.5 mm ahead.
6. Bilateral points: **mso** / **mio** on the orbital margins (2 mm onto the front face) on the
   cut through the orbit's centre; **zy**: the most lateral bone 30+ mm out, 15 mm below to
   3 mm above orbitale, between porion + 10 mm and orbitale − 10 mm in depth; **go**: the lower
   border of the mandible (lowest bone 30–65 mm out per 1 mm of depth) followed back from the
   molars while continuous, the traced point farthest down-and-back along the angle's bisector
   (0.61, 0.79), moved onto the angle's outer face (most lateral bone within 4 mm); **mr**: the
   ramus' lateral surface half-way between go and the Frankfurt plane, mid-way across the
   ramus; **mmb**: the lowest bone half-way in depth between go and me; **ac**: the lateral
   margins of the piriform aperture at its widest (horizontal cuts between ANS and rhi; the
   aperture is where the bone lies > 6 mm behind the front-most bone), 2 mm out onto the front
   face; **sC** / **iC**: front bone of the alveolus 17 / 14 mm out, at the height of mp /
   half-way id–sm; **sM2** / **iM2**: the most lateral bone of those cuts 25 mm behind the
   canine point.

Every landmark lies on a section of the mesh, i.e. on its surface.

**Depths** (:func:`tissue_depths`): along the outward skull normal (area-weighted over 3 mm) to
the first skin crossing, to the nearest skin point, and optionally straight forward. The skin
surface includes the air passages open to the outside (nostrils, mouth): a normal ray from ss
runs up into the nostril, so read ss forward / nearest.

**Reliability on CThead** (cadaver, elderly, 2 mm slices, tilted back ~10°): dental fillings
streak slices ≈ 75–81, i.e. the incisal edges, teeth and lips: pr, mp, id, sC/iC and sM2/iM2 are
rough (their crown-height rule is a population average). The back of the head lies flattened on
the table (op). go/mr/mmb/ac normals run obliquely: compare nearest-point depths there.
The in-plane spacing of 1 mm is inferred, not documented (see /work/shared/ct/README.md).
Data: Stanford volume archive "CThead", courtesy of the University of North Carolina.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import trimesh
from scipy import ndimage as ndi

CT_HEAD = Path("/work/shared/ct/cthead/cthead.npz")


def load_ct(path=CT_HEAD) -> tuple[np.ndarray, np.ndarray]:
    """Read a CT head npz: (volume int16 (S, R, C), spacing_mm float64 (3,))."""
    p = Path(path)
    hint = ("pass the npz of a CT head with arrays 'volume' (int16, (slice, row, column)) and "
            "'spacing_mm' (3,), e.g. /work/shared/ct/cthead/cthead.npz")
    if not p.is_file():
        raise SystemExit(f"CT volume {p} not found; {hint}")
    try:
        with np.load(p) as d:
            volume = np.asarray(d["volume"])
            spacing = np.asarray(d["spacing_mm"], dtype=np.float64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise SystemExit(f"CT volume {p} is damaged or not a CT npz ({exc}); {hint}") from exc
    if volume.ndim != 3 or spacing.shape != (3,) or not (spacing > 0).all():
        raise SystemExit(f"CT volume {p}: volume {volume.shape}, spacing {spacing}; {hint}")
    return volume.astype(np.int16, copy=False), spacing


def head_frame(shape, spacing) -> np.ndarray:
    """Affine (4, 4): homogeneous voxel index (slice, row, column, 1) → face frame mm (x, y, z, 1).

    +y up (against the slice order: slice 0 is the top of the head), +z out of the face (low
    rows are anterior), +x = y × z (along the columns): a proper rotation (no mirror), scaled by
    ``spacing`` (3,) mm per (slice, row, column) axis; origin at the centre of the volume
    (``shape`` (3,)). Which column side is the subject's left is not documented for CThead, so
    +x may be the subject's left (skullsearch's convention) or right: a mirror changes no
    midline measure.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    rot = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # rows x, y, z
    lin = rot * spacing[None, :]
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = -lin @ centre
    return aff


def to_frame(ijk, affine) -> np.ndarray:
    """Voxel indices (..., 3) (may be fractional) → frame mm (..., 3)."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def slice_height(shape, spacing, s) -> float:
    """The frame height y (mm, :func:`head_frame`) of slice index ``s`` (may be fractional) of a
    volume of ``shape`` and ``spacing``: slice 0 the top, the last slice (``shape[0] − 1``) where
    the scan ends below."""
    return float(to_frame([s, 0.0, 0.0], head_frame(shape, spacing))[1])


def _parts(mask, min_part):
    """Connected parts of a mask (6-connected) with at least ``min_part`` × the voxels of the
    largest; ValueError when the mask is empty."""
    lab, n = ndi.label(mask)
    if n == 0:
        raise ValueError("no voxels above the level: check the level and the volume's units "
                         "(CThead holds HU + 1024)")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = sizes >= min_part * sizes.max()
    keep[0] = False
    return keep[lab]


def _disk(r):
    """Structuring element (3, 2r+1, 2r+1): a disk of radius r in the slice, ±1 slice on the axis."""
    st = np.zeros((3, 2 * r + 1, 2 * r + 1), bool)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    st[1] = yy ** 2 + xx ** 2 <= r * r
    st[0, r, r] = st[2, r, r] = True
    return st


def _surface(smooth, inside, level, affine, fill=None):
    """Closed outward-oriented isosurface at ``level`` of the part ``inside`` (S, R, C) of the
    smoothed volume, in frame mm. Other parts are masked out, closed pockets filled, and the
    voxels of ``fill`` (S, R, C) bool, where given, too."""
    from skimage import measure

    near = ndi.binary_dilation(inside)  # the voxels around the part all lie below the level
    field = np.where(near, smooth, np.float32(level - 100.0))
    pockets = ndi.binary_fill_holes(inside)
    if fill is not None:
        pockets |= fill
    field[pockets & ~inside] = level + 100.0
    field = np.pad(field, 1, mode="constant", constant_values=level - 100.0)
    verts, faces, _, _ = measure.marching_cubes(field, level)
    mesh = trimesh.Trimesh(to_frame(verts - 1.0, affine), faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def outer_air(head: np.ndarray) -> np.ndarray:
    """(S, R, C) bool: the air inside the head that each axial slice encloses — sinuses, nasal
    cavity, airway. In 3D that air reaches the outside (through the nostrils), so it is no closed
    pocket; its walls are no skin. ``head`` (S, R, C) bool, slices along the first axis."""
    return np.stack([ndi.binary_fill_holes(s) for s in head]) & ~head


def extract_surfaces(volume, spacing, skin_level=500.0, bone_level=1250.0, sigma_vox=0.6,
                     min_part=0.05, outer_skin=True) -> tuple[trimesh.Trimesh, trimesh.Trimesh]:
    """(skull, skin) closed outward-oriented meshes in the :func:`head_frame`, mm.

    volume (S, R, C) (CThead: HU + 1024; axial slices), spacing (3,) mm per axis. ``sigma_vox``:
    Gaussian smoothing in voxels; ``min_part``: bone parts smaller than this fraction of the
    largest are dropped (calcified cartilage, streaks, hyoid). ``outer_skin``: the skin is the
    head's outer surface only — the air each slice encloses (:func:`outer_air`: sinuses, nasal
    cavity, airway, open to the outside through the nostrils) is filled first; without it 16 % of
    CThead's and 15 % of Cranium's skin vertices are those cavities' walls, more than 5 mm inside
    the face (Cranium's frontal sinus 9 mm behind the glabella's skin), and "the distance to the
    real skin" of a face lying inside it was measured to them. ~3 s for the 113 × 256 × 256
    CThead (skull ≈ 260 k vertices, skin ≈ 150 k).
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (slice, row, column), got shape {vol.shape}")
    smooth = ndi.gaussian_filter(vol, sigma_vox)
    affine = head_frame(vol.shape, spacing)
    tissue = smooth > skin_level
    st = _disk(2)
    core = _parts(ndi.binary_opening(tissue, st), 1.0)  # wrap and table are thin: opened away
    head = _parts(tissue & ndi.binary_dilation(core, st, iterations=2), 1.0)
    skin = _surface(smooth, head, skin_level, affine, fill=outer_air(head) if outer_skin else None)
    bone = _parts(smooth > bone_level, min_part)
    skull = _surface(smooth, bone, bone_level, affine)
    return skull, skin


def symmetry_plane(points, normal=(1.0, 0.0, 0.0), origin=None, iters=15, keep=0.8):
    """Midsagittal plane of a near-symmetric point set (n, 3): (unit normal (3,), origin (3,))."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    tree = cKDTree(points)
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    o = points.mean(0) if origin is None else np.asarray(origin, dtype=np.float64)
    for _ in range(iters):
        mirrored = points - 2 * ((points - o) @ n)[:, None] * n
        dist, j = tree.query(mirrored)
        good = dist <= np.quantile(dist, keep)
        diff = points[good] - points[j[good]]
        diff *= np.where(diff @ n < 0, -1.0, 1.0)[:, None]
        n_new = np.linalg.svd(diff, full_matrices=False)[2][0]
        n = n_new * np.sign(n_new @ n)
        o = ((points[good] + points[j[good]]) / 2).mean(0)
    return n, o


# ------------------------------------------------------------------ midline profile
def _rot_x(theta):
    """Rotation (3, 3) about x by theta (rad): rows are the new x, y, z axes in the old frame."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def _silhouette(segs, step=0.25, y_range=None):
    """Front silhouette of 2D segments (m, 2, 2) of (y, z): heights ys (k,) descending and the
    largest z (k,) at each (-inf where the plane holds no bone at that height); ``y_range``
    (lo, hi) limits the heights."""
    y_lo, y_hi = segs[..., 0].min(), segs[..., 0].max()
    if y_range is not None:
        y_lo, y_hi = max(y_lo, y_range[0]), min(y_hi, y_range[1])
        segs = segs[(segs[..., 0].max(1) >= y_lo) & (segs[..., 0].min(1) <= y_hi)]
    ya, za = segs[:, 0].T
    yb, zb = segs[:, 1].T
    ys = np.arange(np.floor(y_hi / step) * step, y_lo, -step)
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    dy = np.where(np.abs(yb - ya) < 1e-12, 1e-12, yb - ya)
    out = np.full(len(ys), -np.inf)
    for i in range(0, len(ys), 256):  # chunks of heights keep the (k, m) table small
        y = ys[i:i + 256, None]
        z = np.where((y >= lo) & (y <= hi), za + (y - ya) / dy * (zb - za), -np.inf)
        out[i:i + 256] = z.max(1)
    return ys, out


def _runs(f, jump):
    """Index ranges [(i0, i1)] (inclusive) of the silhouette where it is defined and continuous
    (no step larger than ``jump`` mm between neighbours)."""
    ok = np.isfinite(f)
    brk = ~ok[1:] | ~ok[:-1] | (np.abs(np.diff(np.where(ok, f, 0.0))) > jump)
    edges = np.flatnonzero(brk)
    starts = np.concatenate([[0], edges + 1])
    ends = np.concatenate([edges, [len(f) - 1]])
    return [(a, b) for a, b in zip(starts, ends, strict=True) if ok[a] and b > a]


def _farthest(curve, a, b, front=False):
    """Index into ``curve`` (k, 2) of (y, z) of the point farthest behind (−z side of; in front
    of with ``front``) the chord a → b, among the points between a and b in height."""
    d = b - a
    nrm = np.array([-d[1], d[0]]) / max(np.linalg.norm(d), 1e-9)
    if (nrm[1] > 0) != front:
        nrm = -nrm
    inside = (curve[:, 0] <= max(a[0], b[0])) & (curve[:, 0] >= min(a[0], b[0]))
    score = np.where(inside, (curve - a) @ nrm, -np.inf)
    return int(np.argmax(score))


def _deepest(curve, a, b):
    return _farthest(curve, a, b)


def _concavity(curve, i0, i1, fraction):
    """Index of the deepest point behind the chord curve[i0] → curve[i1]; where the profile
    between them has no concavity (< 0.3 mm), the point at ``fraction`` of the arc."""
    part = curve[i0:i1 + 1]
    if len(part) < 3:
        return i0
    k = _farthest(part, part[0], part[-1])
    d = part[-1] - part[0]
    nrm = np.array([-d[1], d[0]]) / max(np.linalg.norm(d), 1e-9)
    if nrm[1] > 0:
        nrm = -nrm
    if (part[k] - part[0]) @ nrm >= 0.3:
        return i0 + k
    seg = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(part, axis=0), axis=1))])
    return i0 + int(np.argmin(np.abs(seg - fraction * seg[-1])))


def _arc_index(curve, start, length):
    """Index of the point ``length`` mm of arc from index ``start`` along ``curve`` (k, 2)
    (negative length: backwards); clipped to the ends."""
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    return int(np.clip(np.searchsorted(s, s[start] + length), 0, len(curve) - 1))


def _pieces(segs):
    """Connected piece id (m,) of each 2D segment (m, 2, 2) (segments chained at shared ends)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ends = np.round(segs.reshape(-1, 2), 5)
    _, node = np.unique(ends, axis=0, return_inverse=True)
    node = node.reshape(-1, 2)
    k = node.max() + 1
    graph = coo_matrix((np.ones(len(node)), (node[:, 0], node[:, 1])), shape=(k, k))
    _, label = connected_components(graph, directed=False)
    return label[node[:, 0]]


def _dense(segs, step=0.5):
    """Points every ``step`` mm along 2D segments (m, 2, 2): (n, 2)."""
    lengths = np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1)
    counts = np.maximum(np.ceil(lengths / step).astype(int), 1) + 1
    seg_id = np.repeat(np.arange(len(segs)), counts)
    t = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) / (counts[seg_id] - 1)
    return segs[seg_id, 0] + t[:, None] * (segs[seg_id, 1] - segs[seg_id, 0])


def _upper_midline(segs, jump):
    """n, g, rhi, mn on the front silhouette of rotated 2D segments; None when not found."""
    ys, f = _silhouette(segs)
    top = ys[np.isfinite(f)][0]
    runs = _runs(f, jump)
    start = int(np.searchsorted(-ys, -(top - 50.0)))  # the forehead, 50 mm below the vertex
    run = next(((a, b) for a, b in runs if a <= start <= b), None)
    if run is None:
        return None
    curve = np.stack([ys[run[0]:run[1] + 1], f[run[0]:run[1] + 1]], 1)
    i_rhi = len(curve) - 1
    rhi = curve[i_rhi]
    i_top = int(np.searchsorted(-curve[:, 0], -(rhi[0] + 45.0)))
    i_n = i_top + _deepest(curve[i_top:], curve[i_top], rhi)
    n = curve[i_n]
    # glabella: the apex of the frontal bulge, farthest in front of the chord from nasion to the
    # profile 35 mm (of arc) above it (frame-independent; the most anterior point in a Frankfurt
    # frame when the brow is prominent, the brow-ridge level when the forehead recedes)
    i_f = _arc_index(curve, i_n, -35.0)
    i_g = i_f + _farthest(curve[i_f:i_n + 1], curve[i_f], n, front=True)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve[i_n:], axis=0), axis=1))])
    i_mn = i_n + int(np.argmin(np.abs(s - s[-1] / 2)))
    return {"g": curve[i_g], "n": n, "mn": curve[i_mn], "rhi": rhi}, (ys, f, runs)


class _Cuts:
    """Sections of a mesh by planes parallel to the midsagittal plane (cached by offset).

    ``cut(offset)`` → (segs (m, 2, 2) as (y, z) in ``frame0``, in-plane outward normals (m, 2)).
    """

    def __init__(self, mesh, frame0, origin):
        from types import SimpleNamespace

        self.frame0, self.origin = frame0, origin
        # plain arrays: trimesh re-hashes a Trimesh's arrays on every cached-property access
        self.mesh = SimpleNamespace(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces))
        self.face_normals = np.asarray(mesh.face_normals)
        self.dots = (self.mesh.vertices - origin) @ frame0[0]
        fd = self.dots[self.mesh.faces]
        self.order = np.argsort(fd.min(1))
        self.fmin = fd.min(1)[self.order]
        self.fmax = fd.max(1)[self.order]
        self.cache = {}

    def __call__(self, offset):
        key = round(float(offset), 3)
        if key not in self.cache:
            o = self.origin + key * self.frame0[0]
            k = np.searchsorted(self.fmin, key + 1e-9)  # faces that can cross the plane
            local = self.order[:k][self.fmax[:k] >= key - 1e-9]
            if len(local) == 0:
                self.cache[key] = (np.zeros((0, 2, 2)), np.zeros((0, 2)))
                return self.cache[key]
            segs3, faces = trimesh.intersections.mesh_plane(
                self.mesh, self.frame0[0], o, return_faces=True, local_faces=local,
                cached_dots=self.dots - key)
            segs = ((np.asarray(segs3).reshape(-1, 2, 3) - o) @ self.frame0.T)[..., 1:]
            nrm = (self.face_normals[faces] @ self.frame0.T)[:, 1:]
            self.cache[key] = (segs, nrm)
        return self.cache[key]


def _rot2(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, s], [-s, c]])


def _midline_points(segs, crown_mm, jump, partial=False):
    """All midline points (2D (y, z)) on a rotated midsagittal section, plus ans and the incisal
    tips; raises ValueError when the profile is not that of a skull with a face (``partial``: a
    scan that ends above the teeth gives the points down to rhinion only)."""
    dense = _dense(segs)
    found = _upper_midline(segs, jump)
    if found is None:
        raise ValueError("no continuous frontal-nasal profile found on the skull's midline")
    pts, (ys, f, runs) = found
    n, g = pts["n"], pts["g"]
    back = dense[(dense[:, 1] < n[1] - 80.0) & (dense[:, 0] > n[0] - 60.0)]
    if not len(back):
        raise ValueError("no vault behind the face on the skull's midline")
    pts["op"] = back[np.argmax(np.linalg.norm(back - g, axis=1))]
    pts["v"] = dense[np.argmax(dense[:, 0])]
    try:
        pts.update(_lower_midline(ys, f, runs, dense, pts, crown_mm))
    except ValueError:
        if not partial:
            raise
    return pts


def _orbit_rims(segs, n, deep_mm=20.0, face_mm=2.0):
    """Orbital margins on one rotated parasagittal section around the longest run of heights
    (≥ 12 mm, within n + 35 / − 45 mm) where the front bone lies more than ``deep_mm`` behind
    nasion: (supra, infra, infra edge) as (y, z), the first two ``face_mm`` onto the front face;
    None when there is no plausible orbit."""
    if len(segs) == 0:
        return None
    ys, f = _silhouette(segs, y_range=(n[0] - 50.0, n[0] + 40.0))
    if len(ys) < 3:
        return None
    deep = (f < n[1] - deep_mm) & (ys < n[0] + 35.0) & (ys > n[0] - 45.0)
    runs = _runs(np.where(deep, 0.0, np.nan), 1.0)
    runs = [(a, b) for a, b in runs if a > 0 and b < len(ys) - 1 and ys[a] - ys[b] >= 12.0
            and min(f[a - 1], f[b + 1]) >= n[1] - deep_mm]  # bone on both sides, not the window's end
    if not runs:
        return None
    a, b = max(runs, key=lambda r: r[1] - r[0])
    # the margin's edge is where the front face turns into the orbit; the points are taken
    # ``face_mm`` onto the front face (still on the margin), where the surface faces forward
    k = int(round(face_mm / 0.25))
    ia = max(a - 1 - k, 0) if np.isfinite(f[max(a - 1 - k, 0)]) else a - 1
    ib = min(b + 1 + k, len(ys) - 1) if np.isfinite(f[min(b + 1 + k, len(ys) - 1)]) else b + 1
    supra, infra = np.array([ys[ia], f[ia]]), np.array([ys[ib], f[ib]])
    plausible = (supra[0] < n[0] + 28.0 and infra[0] > n[0] - 48.0
                 and 20.0 <= supra[0] - infra[0] <= 56.0 and min(supra[1], infra[1]) > n[1] - 30.0)
    return (supra, infra, np.array([ys[b + 1], f[b + 1]])) if plausible else None


def _holes(segs, nrm):
    """Small closed bone openings (canals) on a section: list of (centre (2,), top (2,), size)."""
    if len(segs) == 0:
        return []
    piece = _pieces(segs)
    mid = segs.mean(1)
    out = []
    for p in np.unique(piece):
        sel = piece == p
        if sel.sum() < 8:
            continue
        c = mid[sel].mean(0)
        inward = np.mean(np.sum(nrm[sel] * (c - mid[sel]), 1) > 0)  # normals point into the hole
        length = np.linalg.norm(segs[sel, 1] - segs[sel, 0], axis=1).sum()
        ext = mid[sel].max(0) - mid[sel].min(0)
        if inward > 0.8 and 12.0 < length < 50.0 and ext.max() < 16.0 and ext.min() > 3.0:
            out.append((c, mid[sel][np.argmax(mid[sel, 0])], length))
    return out


def _canals(cuts, theta, orbitale, side, offsets):
    """Candidates for the external acoustic meatus on one side: small holes (:func:`_holes`) in
    the window 55–100 mm behind and 0–35 mm below ``orbitale``, grouped across neighbouring
    parasagittal cuts (centres within 5 mm). Returns [(number of cuts, centre (y, z), top (y, z)
    on the outermost cut, that cut's offset)], groups seen on at least 2 cuts, best first."""
    rot = _rot2(theta)
    found = []
    for off in offsets:
        segs, nrm = cuts(side * off)
        for c, top, length in _holes(segs @ rot.T, nrm @ rot.T):
            d = c - orbitale
            if -35.0 < d[0] < 5.0 and -100.0 < d[1] < -55.0:
                found.append((off, c, top, length))
    groups = []
    while found:
        best = max(([h for h in found if np.linalg.norm(h[1] - c) < 5.0] for _, c, _, _ in found),
                    key=lambda g: len({h[0] for h in g}) + sum(h[3] for h in g) / 1000.0)
        found = [h for h in found if not any(h is g for g in best)]
        n_cuts = len({h[0] for h in best})
        if n_cuts >= 2:
            outer = max(best, key=lambda h: h[0])  # the outermost cut: the canal's opening
            groups.append((n_cuts, np.mean([h[1] for h in best], 0), outer[2], outer[0]))
    return sorted(groups, key=lambda g: -g[0])


def _porions(canals):
    """Porion per side {side: ((y, z), offset)} from :func:`_canals` candidates {side: list}: the
    pair of canals, one per side, seen on the most cuts and most symmetric (a canal on one side
    only when the other side has none)."""
    left, right = canals.get(1, []), canals.get(-1, [])
    if left and right:
        pairs = [(a[0] + b[0] - np.linalg.norm(a[1] - b[1]) / 3.0 - abs(a[3] - b[3]) / 6.0, a, b)
                 for a in left for b in right
                 if np.linalg.norm(a[1] - b[1]) < 12.0 and abs(a[3] - b[3]) < 12.0]
        if pairs:
            _, a, b = max(pairs, key=lambda p: p[0])
            return {1: (a[2], a[3]), -1: (b[2], b[3])}
        return {}
    for side, found in ((1, left), (-1, right)):
        if found:
            return {side: (found[0][2], found[0][3])}
    return {}


def fit_skull(skull, crown_mm=10.0, jump=3.0, iters=6, partial=False):
    """The skull's own frame and its midline and orbital points.

    Returns a dict: ``frame`` (3, 3) rows x (midsagittal normal, to the +x side of the mesh), y
    (up), z (forward) in mesh coordinates; ``origin`` (3,) on the midsagittal plane; ``segs``
    (m, 2, 2) the midsagittal section as (y, z) segments in that frame; ``points`` {name: (2,)
    (y, z)} midline points (the 14 landmarks and helpers ans, pns, upper_tip, lower_tip);
    ``orbits`` {side: list of (offset mm, supra, infra, infra edge) (y, z)} (side +1 / -1 on x);
    ``porion`` {side: ((y, z), offset)}; ``orbitale`` {side: ((y, z), offset)}; ``reference``:
    the horizontal used ("Frankfurt", "palatal plane" or "nasion-opisthocranion"); ``tilt_deg``.
    ``partial``: the skull may end above the teeth (a scan cut at the upper lip): the points below
    rhinion that it lacks are left out instead of raising.
    """
    verts = np.asarray(skull.vertices, dtype=np.float64)
    rng = np.random.default_rng(0)
    sample = verts[rng.choice(len(verts), min(len(verts), 40000), replace=False)]
    normal, origin = symmetry_plane(sample)
    # refine on the upper front of the skull (forehead, orbits, nose, cheekbones): the landmarks
    # are mostly facial, and a face sits a few mm off a plane fitted to the whole vault
    ax = np.cross(normal, [0.0, 1.0, 0.0])
    ax *= np.sign(ax[2]) if ax[2] != 0 else 1.0  # forward, +z
    up = sample @ np.array([0.0, 1.0, 0.0])
    front = sample[(sample @ ax > np.median(sample @ ax)) & (up > np.quantile(up, 0.3))]
    if len(front) > 1000:
        normal, origin = symmetry_plane(front, normal, origin)
    if normal[0] < 0:
        normal = -normal
    y0 = np.array([0.0, 1.0, 0.0]) - normal * normal[1]
    y0 /= np.linalg.norm(y0)
    frame0 = np.stack([normal, y0, np.cross(normal, y0)])
    origin = origin + 1e-4 * normal  # a hair off the plane: vertices on it slice badly
    cuts = _Cuts(skull, frame0, origin)
    segs0, _ = cuts(0.0)
    if len(segs0) == 0:
        raise ValueError("the skull mesh does not cross its own midsagittal plane")
    piece = _pieces(segs0)
    orbit_offsets = np.arange(10.0, 56.0, 2.0)
    ear_offsets = np.arange(40.0, 76.0, 1.5)
    theta = 0.0
    for it in range(iters):
        rot = _rot2(theta)
        segs = segs0 @ rot.T
        pts = _midline_points(segs, crown_mm, jump, partial)
        pns = _pns(segs, piece, pts["ans"]) if "ans" in pts else None
        orbits, orbitale, canals = {}, {}, {}
        for side in (1, -1):
            rims = [(off, *r) for off in orbit_offsets
                    if (r := _orbit_rims(cuts(side * off)[0] @ rot.T, pts["n"])) is not None]
            orbits[side] = rims
            if rims:
                off, _, _, edge = min(rims, key=lambda r: r[3][0])
                orbitale[side] = (edge, off)
                canals[side] = _canals(cuts, theta, edge, side, ear_offsets)
        porion = _porions(canals)
        d_nop = pts["op"] - pts["n"]
        if orbitale and porion:
            d = (np.mean([p[0] for p in porion.values()], 0)
                 - np.mean([o[0] for o in orbitale.values()], 0))
            reference = "Frankfurt"
        elif pns is not None and 35.0 <= np.linalg.norm(pns - pts["ans"]) <= 70.0:
            d = pns - pts["ans"]
            reference = "palatal plane"
        else:
            d = d_nop
            reference = "nasion-opisthocranion"
        if pns is not None:
            pts["pns"] = pns
        step = np.arctan2(d[0], -d[1])
        if abs(step) < 2e-3 or it == iters - 1:
            break  # everything above was computed at this theta
        theta += step
    return {"frame": _rot_x(theta) @ frame0, "origin": origin, "segs": segs, "points": pts,
            "orbits": orbits, "orbitale": orbitale, "porion": porion, "reference": reference,
            "tilt_deg": float(np.degrees(theta)), "cuts": cuts, "theta": theta}


def _pns(segs, piece, ans):
    """Posterior nasal spine: the hindmost point, within 15 mm of the height of ``ans``, of the
    section piece (bony palate) holding ``ans``; None when that piece is not found."""
    a, d = segs[:, 0], segs[:, 1] - segs[:, 0]
    t = np.clip(((ans - a) * d).sum(1) / np.maximum((d * d).sum(1), 1e-12), 0.0, 1.0)
    near = np.linalg.norm(a + t[:, None] * d - ans, axis=1)  # distance to each segment
    if near.min() > 2.0:
        return None
    pal = _dense(segs[piece == piece[np.argmin(near)]])
    pal = pal[np.abs(pal[:, 0] - ans[0]) < 15.0]
    return pal[np.argmin(pal[:, 1])] if len(pal) else None


def _lower_midline(ys, f, runs, dense, pts, crown_mm):
    """ss, mp, pr (upper jaw) and id, sm, pg, gn, me (mandible) from the silhouette below rhi."""
    n, rhi = pts["n"], pts["rhi"]
    face = [(a, b) for a, b in runs if ys[a] < rhi[0] - 2.0 and f[a:b + 1].max() > n[1] - 25.0
            and ys[a] - ys[b] >= 4.0]
    if len(face) < 2:
        raise ValueError("the skull's midline shows no upper jaw and mandible below the nasal bones")
    (a, b), (c, d) = face[0], face[1]
    up = np.stack([ys[a:b + 1], f[a:b + 1]], 1)
    low = np.stack([ys[c:d + 1], f[c:d + 1]], 1)
    # upper jaw: anterior nasal spine = most anterior point of the run's top 5 mm; prosthion a
    # crown height above the incisal tip; subspinale the deepest point between them (a third of
    # the way down when the profile is not concave there)
    top5 = up[:, 0] >= up[0, 0] - 5.0
    i_ans = int(np.argmax(np.where(top5, up[:, 1], -np.inf)))
    i_pr = max(_arc_index(up, len(up) - 1, -crown_mm), i_ans)
    i_ss = _concavity(up, i_ans, i_pr, 1 / 3)
    i_mp = i_ss + int(np.argmin(np.abs(up[i_ss:i_pr + 1, 0] - (up[i_ss, 0] + up[i_pr, 0]) / 2)))
    # mandible: infradentale a crown height below the lower incisal tip; menton the lowest bone
    # near the run's bottom; pogonion the chin's apex in front of the chord id-me (lower two
    # thirds of the symphysis); supramentale the deepest point between id and pg; gnathion
    # farthest out from the chord pg-me
    i_id = _arc_index(low, 0, crown_mm)
    end = low[-1]
    chin = dense[(dense[:, 1] > end[1] - 25.0) & (dense[:, 1] < end[1] + 10.0)
                 & (dense[:, 0] <= end[0] + 1.0) & (dense[:, 0] > end[0] - 25.0)]
    me = chin[np.argmin(chin[:, 0])]
    i_lo = int(np.searchsorted(-low[:, 0], -(low[i_id, 0] - (low[i_id, 0] - me[0]) / 3)))
    i_lo = min(max(i_lo, i_id + 1), len(low) - 1)
    i_pg = i_lo + _farthest(low[i_lo:], low[i_id], me, front=True)
    i_sm = _concavity(low, i_id, i_pg, 0.5)
    pg = low[i_pg]
    under = dense[(dense[:, 0] >= me[0]) & (dense[:, 0] <= pg[0]) & (dense[:, 1] >= me[1] - 1.0)
                  & (dense[:, 1] <= pg[1] + 1.0)]
    dvec = me - pg
    nrm = np.array([dvec[1], -dvec[0]]) / np.linalg.norm(dvec)
    if nrm @ np.array([-1.0, 1.0]) < 0:  # out of the chin: down and forward
        nrm = -nrm
    gn = under[np.argmax((under - pg) @ nrm)]
    return {"ss": up[i_ss], "mp": up[i_mp], "pr": up[i_pr], "ans": up[i_ans], "upper_tip": up[-1],
            "id": low[i_id], "sm": low[i_sm], "pg": pg, "gn": gn, "me": me, "lower_tip": low[0]}


def _hcut(skull_cuts, frame, origin, y):
    """Horizontal section (plane normal frame[1]) at height y: segments (m, 2, 2) as (x, z)."""
    mesh = skull_cuts.mesh
    o = origin + y * frame[1]
    dots = (mesh.vertices - o) @ frame[1]
    segs3 = trimesh.intersections.mesh_plane(mesh, frame[1], o, cached_dots=dots)
    return ((np.asarray(segs3).reshape(-1, 2, 3) - o) @ frame.T)[..., [0, 2]]


def _front_x(segs, xs):
    """Largest z of horizontal-section segments (m, 2, 2) of (x, z) at each x of ``xs`` (k,)."""
    if len(segs) == 0:
        return np.full(len(xs), -np.inf)
    xa, za = segs[:, 0].T
    xb, zb = segs[:, 1].T
    lo, hi = np.minimum(xa, xb), np.maximum(xa, xb)
    dx = np.where(np.abs(xb - xa) < 1e-12, 1e-12, xb - xa)
    x = xs[:, None]
    z = np.where((x >= lo) & (x <= hi), za + (x - xa) / dx * (zb - za), -np.inf)
    return z.max(1)


def _aperture(cuts, frame, origin, pts, face_mm=2.0):
    """Lateral margins of the piriform aperture at its widest, ``face_mm`` out onto the front
    face of the maxilla: {side: (x, y, z)} in the frame."""
    xs = np.arange(-30.0, 30.01, 0.25)
    best = None
    for y in np.arange(pts["ans"][0] + 3.0, pts["rhi"][0] - 3.0, 1.0):
        f = _front_x(_hcut(cuts, frame, origin, y), xs)
        if not np.isfinite(f).any():
            continue
        gap = f < np.max(f) - 6.0
        mid = len(xs) // 2
        if not gap[mid]:
            continue
        right = mid + int(np.argmin(gap[mid:])) if not gap[mid:].all() else None
        left = mid - int(np.argmin(gap[:mid + 1][::-1])) if not gap[:mid + 1].all() else None
        if right is None or left is None or not (np.isfinite(f[left]) and np.isfinite(f[right])):
            continue
        width = xs[right] - xs[left]
        if best is None or width > best[0]:
            best = (width, y, (xs[right], f[right]), (xs[left], f[left]))
    if best is None:
        return {}
    _, y, r, left = best
    f = _front_x(_hcut(cuts, frame, origin, y), xs)
    out = {}
    for side, (x, z) in ((1, r), (-1, left)):
        i = int(np.argmin(np.abs(xs - (x + side * face_mm))))
        out[side] = np.array([xs[i], y, f[i]]) if np.isfinite(f[i]) else np.array([x, y, z])
    return out


def skull_landmarks(skull, crown_mm=10.0, fit=None, partial=False) -> dict[str, np.ndarray]:
    """Craniometric landmarks placed automatically on a skull mesh: {name: (3,) mesh coordinates}.

    ``skull``: trimesh.Trimesh in mm, face roughly along +z and the top along +y (as from
    :func:`extract_surfaces`); names are the pair keys of ``skullsearch.SOFT_TISSUE_NAMES``
    (bilateral ``_l`` on the skull's +x side). ``crown_mm``: incisal edge to alveolar crest
    (prosthion / infradentale); 0 for an edentulous skull. ``fit``: a :func:`fit_skull` result to
    reuse. Every point lies on the surface (on a section of it). Raises ValueError when the
    geometry is not that of a skull with a face. ``partial``: a skull cut above the teeth gives
    the landmarks it holds (:func:`fit_skull`).
    """
    fit = fit_skull(skull, crown_mm, partial=partial) if fit is None else fit
    frame, origin, pts = fit["frame"], fit["origin"], fit["points"]

    def p3(y, z, x=0.0):
        return origin + x * frame[0] + y * frame[1] + z * frame[2]

    out = {k: p3(*pts[k]) for k in ("op", "v", "g", "n", "mn", "rhi", "ss", "mp", "pr", "id",
                                    "sm", "pg", "gn", "me") if k in pts}
    # points of the front profile move onto the crest of the bone when it runs beside the plane
    # (a deviated nose): the front-most point within ±5 mm on a horizontal section, if it is
    # more than 0.5 mm ahead of the midline point
    xs = np.arange(-5.0, 5.01, 0.25)
    for k in ("g", "n", "mn", "rhi", "ss", "mp", "pr", "id", "sm", "pg"):
        if k not in pts:
            continue
        y, z = pts[k]
        f = _front_x(_hcut(fit["cuts"], frame, origin, y), xs)
        if np.isfinite(f).any() and f.max() > z + 0.5:
            i = int(np.argmax(f))
            out[k] = p3(y, f[i], x=xs[i])
    names = {1: "l", -1: "r"}
    local = (np.asarray(skull.vertices) - origin) @ frame.T  # (V, 3) x, y, z in the frame
    orb = [o[0] for o in fit["orbitale"].values()]
    por = [p[0] for p in fit["porion"].values()]
    for side, sfx in names.items():
        rims = fit["orbits"].get(side) or []
        if rims:  # mso / mio: orbital margins above / below the orbit's centre
            offs = np.array([r[0] for r in rims])
            centre = (offs.min() + offs.max()) / 2
            off, supra, infra, _ = rims[int(np.argmin(np.abs(offs - centre)))]
            out[f"mso_{sfx}"] = p3(*supra, x=side * off)
            out[f"mio_{sfx}"] = p3(*infra, x=side * off)
    if orb:
        oy, oz = np.mean(orb, 0)
        pz = np.mean(por, 0)[1] if por else oz - 75.0
        py = np.mean(por, 0)[0] if por else oy
        for side, sfx in names.items():
            sx = side * local[:, 0]
            # zygion: the most lateral point of the zygomatic arch
            band = (sx > 30) & (local[:, 1] > oy - 15) & (local[:, 1] < oy + 3) & (
                local[:, 2] > pz + 10) & (local[:, 2] < oz - 10)
            if band.any():
                out[f"zy_{sfx}"] = skull.vertices[np.flatnonzero(band)[np.argmax(sx[band])]]
            if "me" not in pts:  # no mandible in the scan
                continue
            # gonion: the mandible's angle. Its lower border (lowest bone 30-65 mm out, per 1 mm of
            # depth) is followed back from the molars while it stays continuous; gonion is the
            # traced point farthest out along the angle's bisector (down and back)
            me = pts["me"]
            lateral = (sx > 30) & (sx < 65) & (local[:, 1] > me[0] - 5) & (local[:, 1] < py - 20)
            idx = np.flatnonzero(lateral)
            zbin = np.floor(local[idx, 2]).astype(int)
            order = np.lexsort((local[idx, 1], zbin))  # by bin, then height
            zb, first = np.unique(zbin[order], return_index=True)
            low = idx[order][first]  # lowest vertex of each 1 mm bin
            trace = []
            for zz, i in sorted(zip(zb, low, strict=True), reverse=True):
                if zz > me[1] - 20 or zz < pz - 8:
                    continue
                if trace and (zz < trace[-1][0] - 2 or abs(local[i, 1] - local[trace[-1][1], 1]) > 4.0):
                    break
                trace.append((zz, i))
            if len(trace) >= 10:
                cand = np.array([i for _, i in trace])
                score = local[cand, 1] * -0.61 + local[cand, 2] * -0.79
                i_go = cand[int(np.argmax(score))]
                # onto the outer (lateral) face of the angle: the most lateral bone within 4 mm
                near = np.flatnonzero(np.linalg.norm(local - local[i_go], axis=1) < 4.0)
                i_go = near[np.argmax(sx[near])]
                out[f"go_{sfx}"] = skull.vertices[i_go]
                go = local[i_go]
                # mid-ramus: lateral surface of the ramus halfway between gonion and Frankfurt
                y_mid = (go[1] + py) / 2
                ram = (np.abs(local[:, 1] - y_mid) < 1.5) & (sx > 30) & (local[:, 2] > go[2] - 5) & (
                    local[:, 2] < go[2] + 45)
                if ram.any():
                    lateral = ram & (sx > sx[ram].max() - 6)
                    z_mid = (local[lateral, 2].min() + local[lateral, 2].max()) / 2
                    sel = ram & (np.abs(local[:, 2] - z_mid) < 2.0)
                    if sel.any():
                        out[f"mr_{sfx}"] = skull.vertices[np.flatnonzero(sel)[np.argmax(sx[sel])]]
                # mid-mandibular border: lowest bone halfway (in depth) between gonion and menton
                z_mid = (go[2] + me[1]) / 2
                sel = (np.abs(local[:, 2] - z_mid) < 1.5) & (sx > 25) & (local[:, 1] > me[0] - 15)
                if sel.any():
                    out[f"mmb_{sfx}"] = skull.vertices[np.flatnonzero(sel)[np.argmin(local[sel, 1])]]
    for side, p in (_aperture(fit["cuts"], frame, origin, pts) if "ans" in pts else {}).items():
        out[f"ac_{names[side]}"] = p3(p[1], p[2], x=p[0])
    # canine and second-molar alveolar points: on horizontal sections through the alveoli
    jaws = ([("s", pts["mp"][0])] if "mp" in pts else []) + (
        [("i", (pts["id"][0] + pts["sm"][0]) / 2)] if "id" in pts else [])
    for jaw, y in jaws:
        segs = _hcut(fit["cuts"], frame, origin, y)
        if len(segs) == 0:
            continue
        for side, sfx in names.items():
            xc = side * (17.0 if jaw == "s" else 14.0)
            zc = _front_x(segs, np.array([xc]))[0]
            if np.isfinite(zc):
                out[f"{jaw}C_{sfx}"] = p3(y, zc, x=xc)
                zm = zc - 25.0  # second molar, ~25 mm behind the canine along the arch
                pts_z = _dense(segs)
                near = pts_z[(np.abs(pts_z[:, 1] - zm) < 1.0) & (side * pts_z[:, 0] > 15)
                             & (side * pts_z[:, 0] < 45)]
                if len(near):
                    q = near[np.argmax(side * near[:, 0])]
                    out[f"{jaw}M2_{sfx}"] = p3(y, q[1], x=q[0])
    return out


def surface_normals(mesh, points, radius=3.0) -> np.ndarray:
    """Outward unit normals (k, 3) of ``mesh`` at surface points (k, 3): area-weighted normals of
    the faces within ``radius`` mm that face the same way as the closest face (so the far side
    of a thin bone does not cancel the near side)."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    _, _, tri = trimesh.proximity.closest_point(mesh, points)
    centres = np.asarray(mesh.triangles_center)
    fn = np.asarray(mesh.face_normals)
    area = np.asarray(mesh.area_faces)
    tree = cKDTree(centres)
    out = np.empty_like(points)
    for i, (p, t) in enumerate(zip(points, tri, strict=True)):
        idx = np.asarray(tree.query_ball_point(p, radius), dtype=int)
        idx = idx[fn[idx] @ fn[t] > 0.0] if len(idx) else np.array([t])
        v = (fn[idx] * area[idx, None]).sum(0) if len(idx) else fn[t]
        out[i] = v / max(np.linalg.norm(v), 1e-12)
    return out


def _first_hit(mesh, origins, directions, limit):
    """Distance (k,) along each ray to its first crossing of ``mesh`` (nan beyond ``limit``)."""
    loc, ray, _ = mesh.ray.intersects_location(origins, directions, multiple_hits=True)
    out = np.full(len(origins), np.nan)
    if len(loc):
        d = np.linalg.norm(loc - origins[ray], axis=1)
        ok = d < limit
        np.fmin.at(out, ray[ok], d[ok])
    return out


def tissue_depths(skull, skin, landmarks, radius=3.0, forward=None, limit=60.0
                  ) -> dict[str, dict[str, float]]:
    """Soft-tissue depth (mm) at skull landmarks: {name: {"normal": along the outward skull
    normal (:func:`surface_normals`) to the first skin crossing, "nearest": to the closest skin
    point, and with ``forward`` (3,) a direction (e.g. the skull frame's +z) "forward": along
    it}}; nan where a ray meets no skin within ``limit`` mm. ``landmarks``: {name: (3,)} on
    ``skull``; the skin may hold air passages (nostrils, mouth): a ray stops at the first."""
    names = list(landmarks)
    pts = np.array([landmarks[k] for k in names], dtype=np.float64).reshape(-1, 3)
    nrm = surface_normals(skull, pts, radius)
    eps = 0.05  # start just outside the bone
    d_normal = _first_hit(skin, pts + eps * nrm, nrm, limit) + eps
    _, nearest, _ = trimesh.proximity.closest_point(skin, pts)
    if forward is not None:
        fwd = np.tile(np.asarray(forward, dtype=np.float64) / np.linalg.norm(forward), (len(pts), 1))
        d_fwd = _first_hit(skin, pts + eps * fwd, fwd, limit) + eps
    out = {}
    for i, k in enumerate(names):
        out[k] = {"normal": float(d_normal[i]), "nearest": float(nearest[i])}
        if forward is not None:
            out[k]["forward"] = float(d_fwd[i])
    return out


def profile_image(path, mid, volume=None, spacing=None, skin=None, px=0.5, crop=None, marks=(), lines=()):
    """PNG of the midsagittal plane (face to the left): the CT resampled on the plane (when
    ``volume``/``spacing`` are given), the skull section in red, the skin section in green and
    the midline points of a :func:`fit_skull` result ``mid`` in yellow with their names.
    ``crop``: (y_lo, y_hi, z_lo, z_hi) mm in the skull frame. ``marks``: more named points, each
    set ({name: (3,) mm, CT frame}, (r, g, b)) drawn as squares projected onto the plane;
    ``lines``: segments ((3,), (3,), (r, g, b)) projected alike."""
    from PIL import Image, ImageDraw

    frame, origin = mid["frame"], mid["origin"]
    segs = mid["segs"]
    y_lo, y_hi, z_lo, z_hi = crop or (segs[..., 0].min() - 15, segs[..., 0].max() + 15,
                                      segs[..., 1].min() - 15, segs[..., 1].max() + 15)
    ys = np.arange(y_hi, y_lo, -px)
    zs = np.arange(z_hi, z_lo, -px)  # face (large z) on the left
    if volume is not None:
        yy, zz = np.meshgrid(ys, zs, indexing="ij")
        world = origin + yy[..., None] * frame[1] + zz[..., None] * frame[2]
        inv = np.linalg.inv(head_frame(volume.shape, spacing))
        ijk = world.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
        img = ndi.map_coordinates(np.asarray(volume, np.float32), ijk.T, order=1).reshape(yy.shape)
        grey = np.clip(img / 2000.0 * 255, 0, 255).astype(np.uint8)
    else:
        grey = np.zeros((len(ys), len(zs)), np.uint8)
    im = Image.fromarray(np.stack([grey] * 3, -1))
    draw = ImageDraw.Draw(im)

    def xy(p):
        return ((z_hi - p[1]) / px, (y_hi - p[0]) / px)

    layers = [(segs, (255, 40, 40))]
    if skin is not None:
        s3 = trimesh.intersections.mesh_plane(skin, frame[0], origin)
        layers.append((((s3 - origin) @ frame.T)[..., 1:], (40, 255, 40)))
    for sg, colour in layers:
        for a, b in sg:
            draw.line([xy(a), xy(b)], fill=colour)
    for name, p in mid["points"].items():
        x, y = xy(p)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=(255, 255, 0))
        draw.text((x + 5, y - 6), name, fill=(255, 255, 0))

    def plane(p):  # a CT-frame point in the plane's (y, z)
        return ((np.asarray(p, np.float64) - origin) @ frame.T)[1:]

    for a, b, colour in lines:
        draw.line([xy(plane(a)), xy(plane(b))], fill=colour)
    for points, colour in marks:
        for name, p in points.items():
            x, y = xy(plane(p))
            draw.rectangle([x - 3, y - 3, x + 3, y + 3], outline=colour)
            draw.text((x + 5, y + 2), name, fill=colour)
    im.save(path)
    return path


def past_rhinion(volume, spacing, fit, distances=(1, 2, 3, 5), sigma_vox=0.6) -> dict:
    """Is there bone past the automatic rhinion that the isosurface lost (thin nasal bones)? The CT
    (smoothed as :func:`extract_surfaces` smooths it) sampled across the nasal dorsum — the most
    on segments ±5 mm square to nasion → rhinion in the midsagittal plane of ``fit``
    (:func:`fit_skull`) — at each of ``distances`` mm past rhinion along that line, beside the
    same at 10–15 mm (soft tissue only) and the nasal bones' length (nasion → rhinion, mm)."""
    vol = ndi.gaussian_filter(np.asarray(volume, np.float32), sigma_vox)
    frame, origin, pts = fit["frame"], fit["origin"], fit["points"]
    n, rhi = np.asarray(pts["n"], np.float64), np.asarray(pts["rhi"], np.float64)
    along = (rhi - n) / np.linalg.norm(rhi - n)
    across = np.array([-along[1], along[0]])
    inv = np.linalg.inv(head_frame(volume.shape, spacing))
    offsets = np.arange(-5.0, 5.01, 0.25)

    def most(t: float) -> float:
        yz = rhi + t * along + offsets[:, None] * across
        world = origin + yz[:, :1] * frame[1] + yz[:, 1:] * frame[2]
        return float(ndi.map_coordinates(vol, (world @ inv[:3, :3].T + inv[:3, 3]).T, order=1).max())

    return {"nasal_bones_mm": round(float(np.linalg.norm(rhi - n)), 1),
            "most_past_rhinion": {f"{t:g}": round(most(t)) for t in distances},
            "most_10_15_mm_past": round(float(np.median([most(t) for t in range(10, 16)])))}


#: Landmarks on the face's front profile, where a depth straight forward (Frankfurt frame) means
#: something; "forward" depths are reported for these only.
FRONT_PROFILE = ("g", "n", "mn", "rhi", "ss", "mp", "pr", "id", "sm", "pg")

ACKNOWLEDGEMENT = (
    "Derived from the CThead volume of the Stanford volume data archive (public domain), provided "
    "courtesy of North Carolina Memorial Hospital. Source: University of North Carolina.\n"
    "In-plane spacing 1 mm is inferred, not documented (archive aspect 1:1:2).\n")


def write_case(out_dir, ct_path=CT_HEAD, images=False, depths=False, partial=False) -> dict:
    """Write one validation case to ``out_dir``: skull.ply, skin.ply (mm, :func:`head_frame`),
    skull.landmarks.json ({pair key: [x, y, z]} mm, readable by
    ``skullsearch.Skull.load``) and ACKNOWLEDGEMENT.txt (the data's terms).
    ``images``: also profile.png / profile_face.png (midsagittal CT, bone, skin, landmarks);
    ``depths``: add the soft-tissue depths at the landmarks to the summary; ``partial``: the scan
    may end above the teeth (:func:`skull_landmarks`). Returns the summary
    (counts, timings in s, the skull frame's tilt and horizontal)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    t0 = time.perf_counter()
    volume, spacing = load_ct(ct_path)
    times["load"] = time.perf_counter() - t0
    t = time.perf_counter()
    skull, skin = extract_surfaces(volume, spacing)
    times["surfaces"] = time.perf_counter() - t
    t = time.perf_counter()
    fit = fit_skull(skull, partial=partial)
    landmarks = skull_landmarks(skull, fit=fit, partial=partial)
    times["landmarks"] = time.perf_counter() - t
    t = time.perf_counter()
    skull.export(out / "skull.ply")
    skin.export(out / "skin.ply")
    (out / "skull.landmarks.json").write_text(json.dumps(
        {k: [round(float(c), 4) for c in v] for k, v in landmarks.items()}, indent=1) + "\n")
    (out / "ACKNOWLEDGEMENT.txt").write_text(ACKNOWLEDGEMENT)
    times["write"] = time.perf_counter() - t
    summary = {
        "out_dir": str(out), "ct": str(ct_path), "volume_shape": list(volume.shape),
        "spacing_mm": [float(x) for x in spacing],
        "skull": {"vertices": len(skull.vertices), "faces": len(skull.faces),
                  "watertight": bool(skull.is_watertight)},
        "skin": {"vertices": len(skin.vertices), "faces": len(skin.faces),
                 "watertight": bool(skin.is_watertight), "volume_l": round(skin.volume / 1e6, 3)},
        "landmarks": len(landmarks), "horizontal": fit["reference"],
        "tilt_deg": round(fit["tilt_deg"], 2),
    }
    if images:
        t = time.perf_counter()
        profile_image(out / "profile.png", fit, volume, spacing, skin)
        n, me = fit["points"]["n"], fit["points"]["me"]
        profile_image(out / "profile_face.png", fit, volume, spacing, skin, px=0.25,
                      crop=(me[0] - 10, n[0] + 35, me[1] - 45, n[1] + 35))
        times["images"] = time.perf_counter() - t
    if depths:
        t = time.perf_counter()
        d = tissue_depths(skull, skin, landmarks, forward=fit["frame"][2])
        summary["depths_mm"] = {k: {m: round(x, 2) for m, x in v.items()
                                    if m != "forward" or k in FRONT_PROFILE} for k, v in d.items()}
        times["depths"] = time.perf_counter() - t
    summary["seconds"] = {k: round(v, 2) for k, v in times.items()}
    summary["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write a real-CT validation case: skull.ply, skin.ply, "
                                             "skull.landmarks.json (mm) from a CT head volume.")
    ap.add_argument("out_dir")
    ap.add_argument("--ct", default=str(CT_HEAD), help="CT npz with 'volume' and 'spacing_mm'")
    ap.add_argument("--images", action="store_true", help="also write midsagittal profile PNGs")
    ap.add_argument("--depths", action="store_true", help="add soft-tissue depths to the summary")
    ap.add_argument("--partial", action="store_true",
                    help="the scan may end above the teeth: place the landmarks the skull holds")
    args = ap.parse_args(argv)
    summary = write_case(args.out_dir, args.ct, images=args.images, depths=args.depths, partial=args.partial)
    sys.stdout.flush()
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
