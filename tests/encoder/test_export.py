"""Face meshes to files (encoder/export.py): the mesh, its marker spheres and colours, the formats
and the refusal of an unknown extension. On the default (ICT) model, read back with trimesh."""

import numpy as np
import pytest
import torch
import trimesh

from skullsearch.encoder import export
from skullsearch.errors import SkullsearchError

#: vertices of trimesh's icosphere(subdivisions=1), one per marker
BALL = 42


@pytest.fixture(scope="module")
def shape():
    return torch.as_tensor(np.random.default_rng(0).normal(size=(1, 20)), dtype=torch.float32)


@pytest.fixture(scope="module")
def points(default_model, shape):
    with torch.no_grad():
        v = default_model.vertices(shape)
        return (v[0].double().numpy(), default_model.landmarks68(vertices=v)[0].double().numpy(),
                default_model.soft_tissue(vertices=v)[0].double().numpy())


def test_the_face_with_a_sphere_at_each_landmark(default_model, shape, points):
    verts, lm68, soft = points
    mesh = export.face_mesh(default_model, shape=shape, marker_radius=2.0)
    n_v = default_model.n_vertices
    assert len(mesh.vertices) == n_v + (68 + 36) * BALL
    np.testing.assert_allclose(mesh.vertices[:n_v], verts, atol=1e-4)  # the given face, not the mean
    balls = mesh.vertices[n_v:].reshape(68 + 36, BALL, 3)
    np.testing.assert_allclose(balls.mean(1), np.concatenate([lm68, soft]), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(balls - balls.mean(1, keepdims=True), axis=-1), 2.0,
                               rtol=1e-3)
    colors = mesh.visual.vertex_colors
    assert (colors[n_v:n_v + 68 * BALL] == export.LANDMARK68).all()
    assert (colors[n_v + 68 * BALL:] == export.SOFT_TISSUE).all()


def test_the_vertices_nearest_the_landmarks_are_coloured(default_model, shape, points):
    verts, lm68, soft = points
    mesh = export.face_mesh(default_model, shape=shape, markers=False)
    assert len(mesh.vertices) == default_model.n_vertices and len(mesh.faces) == len(default_model.faces)
    colors = mesh.visual.vertex_colors
    red = np.flatnonzero((colors == export.SOFT_TISSUE).all(1))
    blue = np.flatnonzero((colors == export.LANDMARK68).all(1))
    nearest_soft = np.argmin(((verts[None] - soft[:, None]) ** 2).sum(-1), axis=1)
    assert set(red) == set(nearest_soft)  # (soft-tissue red is drawn over a shared blue vertex)
    assert 0 < len(blue) <= 68 and not set(blue) & set(red)
    skin = np.ones(len(colors), bool)
    skin[red] = skin[blue] = False
    assert (colors[skin] == export.SKIN).all()


@pytest.mark.parametrize("ext", [".ply", ".obj", ".stl", ".off", ".GLB"])
def test_export_face_writes_a_mesh_trimesh_reads_back(default_model, tmp_path, ext):
    path = export.export_face(default_model, tmp_path / "out" / f"face{ext}", markers=False)
    assert path == tmp_path / "out" / f"face{ext}" and path.stat().st_size > 0
    back = trimesh.load(path, force="mesh", process=False)
    with torch.no_grad():
        mean = default_model.vertices(batch_size=1)[0].numpy()
    if ext == ".stl":  # unindexed triangles: compare the extent
        np.testing.assert_allclose(back.bounds, [mean.min(0), mean.max(0)], atol=1e-3)
    else:
        assert len(back.vertices) == len(mean)
        np.testing.assert_allclose(back.vertices, mean, atol=1e-3)


@pytest.mark.parametrize("name", ["face.png", "face", "face.ply.bak"])
def test_an_unknown_extension_is_refused_before_anything_is_written(default_model, tmp_path, name):
    with pytest.raises(SkullsearchError, match=r"choose one of \.ply, \.obj, \.stl, \.glb, \.off"):
        export.export_face(default_model, tmp_path / "sub" / name)
    assert not (tmp_path / "sub").exists()
