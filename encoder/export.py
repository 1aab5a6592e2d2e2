"""Face meshes to files (PLY, OBJ, STL, GLB: whatever trimesh writes), landmarks marked.

The 68 iBUG landmarks are drawn blue and the 36 soft-tissue points red, as small spheres
added to the mesh (so they show in any viewer), and the nearest vertices are coloured too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from skullsearch.errors import SkullsearchError

SKIN = (205, 170, 150, 255)
LANDMARK68 = (40, 90, 230, 255)
SOFT_TISSUE = (220, 40, 40, 255)


def face_mesh(
    model,
    shape=None,
    expression=None,
    pose=None,
    markers: bool = True,
    marker_radius: float = 1.5,
):
    """One face as a ``trimesh.Trimesh`` (mm, face frame), landmarks marked.

    shape (1, ≤S), expression (1, ≤E), pose (1, 3J): a single face's coefficients; all
    None gives the mean face.
    """
    import torch
    import trimesh

    with torch.no_grad():
        verts = model.vertices(shape, expression, pose, batch_size=1)
        v = verts[0].double().numpy()
        groups = []
        if model.landmarks is not None:
            groups.append((model.landmarks68(vertices=verts, pose=pose)[0].double().numpy(),
                           LANDMARK68))
        if model.soft_tissue_points is not None:
            groups.append((model.soft_tissue(vertices=verts)[0].double().numpy(), SOFT_TISSUE))
    colors = np.tile(np.array(SKIN, np.uint8), (len(v), 1))
    parts = [trimesh.Trimesh(v, model.faces, vertex_colors=colors, process=False)]
    for pts, col in groups:
        nearest = np.argmin(((v[None] - pts[:, None]) ** 2).sum(-1), axis=1)
        colors[nearest] = col
        if markers:
            ball = trimesh.creation.icosphere(subdivisions=1, radius=marker_radius)
            n = len(ball.vertices)
            bv = (ball.vertices[None] + pts[:, None]).reshape(-1, 3)
            bf = (ball.faces[None] + n * np.arange(len(pts))[:, None, None]).reshape(-1, 3)
            parts.append(trimesh.Trimesh(bv, bf, vertex_colors=np.tile(col, (len(bv), 1)),
                                         process=False))
    parts[0].visual.vertex_colors = colors
    return trimesh.util.concatenate(parts) if len(parts) > 1 else parts[0]


def export_face(model, path: str | os.PathLike, **kw) -> Path:
    """Write :func:`face_mesh` to ``path``; the format follows the extension."""
    path = Path(path)
    supported = (".ply", ".obj", ".stl", ".glb", ".off")
    if path.suffix.lower() not in supported:
        raise SkullsearchError(
            f"cannot write {path.name!r}: choose one of {', '.join(supported)} as the extension"
        )
    mesh = face_mesh(model, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path
