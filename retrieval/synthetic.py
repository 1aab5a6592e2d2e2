"""Synthetic skulls with known faces, for tests, benchmarks and the demo.

    sk = synthetic_skull(model, code, depth_noise=1.0, rng=np.random.default_rng(0))
    sk.save("case/")                      # case/skull.ply + case/skull.landmarks.json
    skull = Skull.load("case/skull.ply")  # queries find the face this skull was made from

The skull is the face's **inner offset surface**: the zero level set of
g(x) = s(x) + d(c(x)), where s is the signed distance to the skin (negative inside), c(x) the
closest skin point and d a smooth tissue-depth field over the skin interpolated from the 36
landmark depths. A level set cannot fold or self-intersect, unlike moving the skin's vertices
inward along their normals (which crosses itself wherever the depth exceeds the skin's local
radius of curvature: nose, lips, ears). Thin parts thinner than the depth (ears, the nose tip)
vanish, as they do on a real skull. The surface is extracted by marching cubes on a voxel grid
(``voxel_mm``) and cut at the mandible's lower border. Each craniometric landmark is the bone
point closest to its soft-tissue point, so the face point lies along the bone's normal there, at
about the landmark's depth.

This is not an anatomical skull: it is a surface whose landmarks, pushed out along its outward
normals by their depths, land on a known face (up to ``depth_noise`` × the table's SD per
landmark), which is what the retrieval and re-synthesis code needs to be tested end to end.
Needs scikit-image (marching cubes; in the ``dev`` extra).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.errors import DependencyError


@dataclass
class SyntheticSkull:
    """mesh: trimesh.Trimesh (mm); landmarks: {pair key: (3,)} on the mesh (a landmark whose
    face point lies on the bone's inner side — a skin crease — is left out, see ``present``);
    face_vertices (V, 3): the true face in the same frame; soft_tissue (36, 3): the true face's
    soft-tissue points in that frame; depths (36,): the tissue depths used (mm);
    transform (4, 4): face frame → this skull's frame (a rigid motion; identity when none)."""

    mesh: object
    landmarks: dict[str, np.ndarray]
    face_vertices: np.ndarray
    soft_tissue: np.ndarray
    depths: np.ndarray
    transform: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """(36,) bool: the landmarks the skull has (those the bone's normal reaches)."""
        return np.array([k in self.landmarks for k in SOFT_TISSUE_NAMES])

    def save(self, folder: str | os.PathLike, name: str = "skull", drop=()) -> Path:
        """Write ``folder/name.ply`` and its ``name.landmarks.json`` sidecar (the landmarks in
        ``drop`` left out, for partial skulls). Returns the mesh path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.ply"
        self.mesh.export(path)
        marks = {k: np.asarray(v, float).round(4).tolist()
                 for k, v in self.landmarks.items() if k not in drop}
        (folder / f"{name}.landmarks.json").write_text(json.dumps(marks, indent=1))
        return path


def _depth_field(skin_vertices: np.ndarray, points: np.ndarray, depths: np.ndarray,
                 sigma_mm: float) -> np.ndarray:
    """(V,) depth at every skin vertex: Gaussian-weighted (Shepard) mean of the (K,) landmark
    depths at the (K, 3) points; smooth, and exactly bounded by the landmark depths."""
    d2 = ((skin_vertices[:, None, :] - points[None]) ** 2).sum(-1)
    w = np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * sigma_mm**2))
    return (w * depths).sum(1) / w.sum(1)


def synthetic_skull(model, code=None, *, vertices=None, table=None, depth_noise: float = 0.0,
                    rng: np.random.Generator | None = None, rigid_motion: bool = False,
                    voxel_mm: float = 2.5, sigma_mm: float = 8.0,
                    crop_mm: float = 3.0) -> SyntheticSkull:
    """A skull under a known face.

    model: a :class:`~skullsearch.FaceModel`; code: a (228,) face code (shape, expression, pose
    parts are used) — or ``vertices`` (V, 3) mm, a face of the model's topology in its frame;
    table: a tissue table (anything :func:`~skullsearch.retrieval.tissue.load_table` takes;
    default the 2023 global T-Table); depth_noise: each landmark's depth is
    ``mean + depth_noise · sd · N(0, 1)`` (0: exactly the table's means), clipped at 1 mm;
    rigid_motion: put the skull (and its face) under a random rotation and a translation of
    ~100 mm, so that nothing can rely on the face frame; voxel_mm: marching-cubes grid step;
    sigma_mm: reach of each landmark's depth over the skin; crop_mm: how far below the plane
    through menton and the gonia the bone is kept (the neck is cut off).
    """
    try:
        from skimage.measure import marching_cubes  # noqa: F401 - checked here, used in _bone_surface
    except ImportError:  # pragma: no cover - dev extra installed in tests
        raise DependencyError("synthetic skulls need scikit-image (marching cubes): "
                              "pip install scikit-image, or pip install 'skullsearch[dev]'") from None
    from skullsearch.retrieval.tissue import load_table

    rng = rng if rng is not None else np.random.default_rng()
    v, pts = _face_and_points(model, code, vertices)
    table = load_table(table)
    mean = np.where(np.isfinite(table.mean), table.mean, np.nanmean(table.mean))
    sd = np.where(np.isfinite(table.sd), table.sd, 0.0)
    depths = np.maximum(mean + depth_noise * sd * rng.standard_normal(len(mean)), 1.0)
    skin = _OuterSkin(model, v, pts, crop_mm, voxel_mm)
    depth_v = _depth_field(skin.sv, pts, depths, sigma_mm)
    g, lo = _signed_offset_field(v, skin, depth_v, voxel_mm)
    bone = _bone_surface(g, lo, voxel_mm, skin.cut_point, skin.cut_normal, crop_mm)
    marks, reachable = _bone_landmarks(bone, pts)
    transform = np.eye(4)
    face_v = v
    soft = pts
    if rigid_motion:
        from scipy.spatial.transform import Rotation

        transform[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
        transform[:3, 3] = rng.normal(scale=100.0, size=3)
        bone.apply_transform(transform)
        marks = marks @ transform[:3, :3].T + transform[:3, 3]
        face_v = v @ transform[:3, :3].T + transform[:3, 3]
        soft = pts @ transform[:3, :3].T + transform[:3, 3]
    landmarks = {k: x for k, x, ok in zip(SOFT_TISSUE_NAMES, marks, reachable, strict=True) if ok}
    return SyntheticSkull(mesh=bone, landmarks=landmarks,
                          face_vertices=face_v.astype(np.float32), soft_tissue=soft,
                          depths=depths, transform=transform)


def _face_and_points(model, code, vertices) -> tuple[np.ndarray, np.ndarray]:
    """The face's vertices (V, 3) (given, or posed from the code) and its soft-tissue points (36, 3)."""
    import torch

    if vertices is None:
        if code is None:
            raise ValueError("synthetic_skull needs a code or vertices")
        from skullsearch.encoder.fitting import code_vertices

        with torch.no_grad():
            vertices = code_vertices(model, np.asarray(code, np.float32)[None])[0].numpy()
    v = np.asarray(vertices, np.float64)
    if v.shape != (model.n_vertices, 3):
        raise ValueError(f"vertices must be ({model.n_vertices}, 3), got {v.shape}")
    with torch.no_grad():
        pts = model.soft_tissue_points.evaluate(torch.as_tensor(v[None], dtype=torch.float64),
                                                torch.as_tensor(model.faces)).numpy()[0]
    return v, pts


class _OuterSkin:
    """The face's outer skin above the neck cut, subdivided to about the voxel size: vertices sv
    (n, 3) with outward normals sn; used: the ids of the face's skin vertices; the cut plane
    (cut_point, cut_normal: through menton and both gonia, the normal towards the vertex)."""

    def __init__(self, model, v: np.ndarray, pts: np.ndarray, crop_mm: float, voxel_mm: float):
        import trimesh

        from skullsearch.encoder.annotate import _skin
        from skullsearch.encoder.render import vertex_normals

        skin, skin_faces = _skin(v, model.faces)
        faces = model.faces[skin_faces]
        centre = v.mean(0)
        vn = vertex_normals(v, faces)
        vn *= np.sign(((v - centre) * vn).sum())  # one sign for the whole (consistently wound) skin
        # the outer skin only: drop the inside of the mouth, nostrils, the back of the ears (a ray
        # along the normal hits the skin again), which would otherwise put "outside" under the lips
        self.used = np.unique(faces)
        hit = np.zeros(len(v), bool)
        hit[self.used] = skin.ray.intersects_any(v[self.used] + 0.5 * vn[self.used], vn[self.used])
        # no neck: the plane through menton and both gonia (the mandible's lower border); the
        # neck's skin below it is left out of the distance field and the bone is cut there
        ids = [SOFT_TISSUE_NAMES.index(k) for k in ("me", "go_l", "go_r")]
        a, b, c = pts[ids]
        normal = np.cross(b - a, c - a)
        normal /= np.linalg.norm(normal)
        if np.dot(pts[SOFT_TISSUE_NAMES.index("v")] - a, normal) < 0:
            normal = -normal  # towards the vertex (top of the head)
        self.cut_point, self.cut_normal = a, normal
        outer = faces[~hit[faces].any(1)]
        outer = outer[((v[outer].mean(1) - a) @ normal) > -crop_mm]
        # a denser skin for accurate distances: subdivide until edges are ~ voxel size
        sv, sf = trimesh.remesh.subdivide_to_size(v, outer, max_edge=max(voxel_mm, 1.0), max_iter=6)
        ref = np.unique(sf)  # subdividing keeps every input vertex: drop those no face uses
        sn = vertex_normals(sv, sf)[ref]
        self.sv = sv[ref]
        self.sn = sn * np.sign(((self.sv - centre) * sn).sum())


def _signed_offset_field(v: np.ndarray, skin: _OuterSkin, depth_v: np.ndarray, voxel_mm: float):
    """The grid (its values, and its lowest corner (3,)) of signed distance to the skin plus the
    local depth: negative inside the bone. Far from the skin: the convex hull decides."""
    from scipy.spatial import Delaunay, cKDTree

    sv, sn, used = skin.sv, skin.sn, skin.used
    lo = sv.min(0) - 2 * voxel_mm
    hi = sv.max(0) + 2 * voxel_mm
    axes = [np.arange(a, b + voxel_mm, voxel_mm) for a, b in zip(lo, hi, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    # coarse pass on the skin's own vertices: which grid points can be near the zero set
    band = float(depth_v.max()) + 2 * voxel_mm
    coarse, _ = cKDTree(v[used]).query(grid, k=1)
    near = coarse < band + 6.0  # the skin's vertices are ~5 mm apart: a margin for that
    g = np.full(len(grid), band)  # far from the skin: outside (the sign is fixed just below)
    dist, idx = cKDTree(sv).query(grid[near], k=4)
    # signed distance: a k-nearest average of the side (robust near thin parts), Euclidean size
    side = np.sign((((grid[near][:, None] - sv[idx]) * sn[idx]).sum(-1)).mean(1))
    side[side == 0] = 1.0
    g[near] = side * dist[:, 0] + depth_v[idx[:, 0]]
    # far points (further than the band from any skin vertex) inside the skin's convex hull are
    # deep inside the head: bone (negative); the others are outside
    far = np.nonzero(~near)[0]
    inside = Delaunay(v[used]).find_simplex(grid[far]) >= 0
    g[far[inside]] = -band
    return g.reshape([len(a) for a in axes]), lo


def _bone_surface(g: np.ndarray, lo: np.ndarray, voxel_mm: float, cut_point, cut_normal, crop_mm: float):
    """The zero level set of the field as a smoothed, outward-wound trimesh, cut crop_mm below the
    neck plane, its largest part kept."""
    import trimesh
    from skimage.measure import marching_cubes

    try:
        verts, tris, _, _ = marching_cubes(g.astype(np.float32), level=0.0, spacing=(voxel_mm,) * 3)
    except (ValueError, RuntimeError) as exc:  # pragma: no cover - degenerate input
        raise ValueError(f"could not extract a skull surface under this face: {exc}") from None
    verts = verts + lo
    bone = trimesh.Trimesh(verts, tris[:, ::-1], process=True)
    keep = ((bone.triangles_center - cut_point) @ cut_normal) > -crop_mm
    bone.update_faces(keep)
    bone.remove_unreferenced_vertices()
    parts = bone.split(only_watertight=False)
    bone = max(parts, key=lambda m: len(m.faces))
    trimesh.smoothing.filter_taubin(bone, iterations=6)
    if bone.volume < 0:
        bone.invert()
    return bone


def _bone_landmarks(bone, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks (36, 3): the bone point closest to each soft-tissue point — so that the face
    point lies along the bone's normal there, at about the landmark's depth, the level set's
    property —, reachable (36,) bool). A face point on the inner side of the bone (a skin crease
    where the offset surfaces of two skin sheets meet, e.g. under the jaw) cannot be reached along
    the bone's outward normal: that landmark is left out, as on a partial skull."""
    import trimesh

    from skullsearch.retrieval.extended import outward_normals

    marks, _, _ = trimesh.proximity.closest_point(bone, pts)
    out_n = outward_normals(bone, marks)
    reachable = ((pts - marks) * out_n).sum(1) > 0.5 * np.linalg.norm(pts - marks, axis=1)
    return marks, reachable
