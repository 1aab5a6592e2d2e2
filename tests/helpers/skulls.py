"""Synthetic skulls for the tests: a face's surface pushed inward by the tissue depths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def skull_from_face(model, shape: np.ndarray, depths: np.ndarray, rng=None):
    """A skull-like mesh under a face: every vertex moved inward along its normal by a depth
    interpolated (inverse distance, power 4) from the 36 tissue depths; the skull landmarks are
    the soft-tissue points moved the same way. shape (S,); depths (36,) mm.
    Returns (trimesh.Trimesh, {name: (3,)}), optionally under a random rigid motion."""
    import trimesh
    from scipy.spatial.transform import Rotation

    from skullsearch import SOFT_TISSUE_NAMES
    from skullsearch.encoder.annotate import _skin
    from skullsearch.encoder.render import vertex_normals

    with torch.no_grad():
        s = torch.as_tensor(np.asarray(shape, np.float32)[None])
        v = model.vertices(shape=s)[0].double().numpy()
        pts = model.soft_tissue(shape=s)[0].double().numpy()
    skin, skin_faces = _skin(v, model.faces)
    faces = model.faces[skin_faces]
    vn = vertex_normals(v, faces)
    centre = v.mean(0)
    vn *= np.sign(((v - centre) * vn).sum(1, keepdims=True) + 1e-9)
    d2 = ((v[:, None] - pts[None]) ** 2).sum(-1) + 1e-6
    w = 1.0 / d2**2
    depth = (w * depths).sum(1) / w.sum(1)
    bone = v - depth[:, None] * vn
    pn = (vn[model.faces[model.soft_tissue_points.faces]] * model.soft_tissue_points.bary[..., None]).sum(1)
    pn /= np.linalg.norm(pn, axis=1, keepdims=True)
    marks = pts - depths[:, None] * pn
    mesh = trimesh.Trimesh(bone, faces, process=False)
    mesh.remove_unreferenced_vertices()
    if rng is not None:
        rot = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
        t = rng.normal(scale=100.0, size=3)
        mesh.vertices = mesh.vertices @ rot.T + t
        marks = marks @ rot.T + t
    return mesh, dict(zip(SOFT_TISSUE_NAMES, marks, strict=True))


def write_skull(folder: Path, mesh, landmarks: dict, name: str = "skull", drop=(),
                scale: float = 1.0) -> Path:
    """Write skull.ply and its skull.landmarks.json sidecar (landmarks in ``drop`` left out)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ply"
    m = mesh.copy()
    m.vertices = m.vertices * scale
    m.export(path)
    marks = {k: (np.asarray(v) * scale).tolist() for k, v in landmarks.items() if k not in drop}
    (folder / f"{name}.landmarks.json").write_text(json.dumps(marks))
    return path


def skull_under(model, shape: np.ndarray, folder: Path, seed: int):
    """A test skull 3 mm under the neutral face of ``shape`` (a face pushed in by the real depths,
    up to 26 mm, folds where they exceed its curvature, which no real skull does), written to
    ``folder`` (:func:`write_skull`): (skull path, mesh, landmarks)."""
    mesh, marks = skull_from_face(model, shape, np.full(36, 3.0), rng=np.random.default_rng(seed))
    return write_skull(folder, mesh, marks), mesh, marks


def table_3mm(path: Path) -> Path:
    """A tissue table of 3 mm depths with the built-in table's SDs (CSV), for skulls from
    :func:`skull_under`."""
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
    from skullsearch.retrieval.tissue import load_table

    path.write_text("landmark,mean_mm,sd_mm\n" + "".join(
        f"{n},3.0,{s}\n" for n, s in zip(SOFT_TISSUE_NAMES, load_table().sd, strict=True)))
    return path
