"""The plain data of a face model (:mod:`skullsearch.encoder.face_data`): SurfacePoints (coercion,
validation, vertices, evaluation, JSON), FaceModelArrays (what FaceModel checks of them) and
topology_hash (stable, keyed by the vertex count and the triangles only)."""

import json

import numpy as np
import pytest
import torch
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from skullsearch import FaceModel, FaceModelError, LandmarkError
from skullsearch.encoder.face_data import FaceModelArrays, SurfacePoints, topology_hash

SPHERE = trimesh.creation.icosphere(subdivisions=2, radius=80.0)  # 320 triangles, mm


def _tetra(**over) -> FaceModelArrays:
    """A 4-vertex, 2-joint model (mm) whose arrays a test may replace."""
    v = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], np.float64)
    rng = np.random.default_rng(0)
    base = dict(v_template=v, faces=np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]),
                shapedirs=rng.normal(size=(4, 3, 5)), exprdirs=rng.normal(size=(4, 3, 2)),
                posedirs=np.zeros((4, 3, 9)), j_regressor=np.full((2, 4), 0.25),
                weights=np.tile([0.5, 0.5], (4, 1)), parents=np.array([-1, 0]))
    return FaceModelArrays(**{**base, **over})


# ------------------------------------------------------------------ SurfacePoints
def test_surface_points_coerce_to_flat_int64_and_float32_rows():
    sp = SurfacePoints([[3], [7]], [0.2, 0.3, 0.5, 1.0, 0.0, 0.0], names=["a", "b"])
    assert sp.faces.dtype == np.int64 and sp.faces.tolist() == [3, 7]
    assert sp.bary.dtype == np.float32 and sp.bary.shape == (2, 3)
    assert sp.names == ("a", "b") and isinstance(sp.names, tuple)
    assert len(sp) == 2
    with pytest.raises(AttributeError):  # frozen
        sp.faces = np.zeros(2, np.int64)


def test_surface_points_refuse_a_count_mismatch_naming_both_counts():
    with pytest.raises(LandmarkError, match="3 triangle indices but 2 barycentric rows"):
        SurfacePoints(np.arange(3), np.full((2, 3), 1 / 3))


def _bary(draw_floats):
    w = np.abs(np.asarray(draw_floats, np.float64).reshape(-1, 3)) + 1e-3
    return w / w.sum(1, keepdims=True)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30).flatmap(lambda k: st.tuples(
    st.lists(st.integers(0, 10_000), min_size=k, max_size=k),
    st.lists(st.floats(0.0, 1.0), min_size=3 * k, max_size=3 * k))))
def test_json_round_trip_keeps_faces_names_and_weights_to_1e7(case):
    faces, w = case
    sp = SurfacePoints(np.array(faces), _bary(w), tuple(f"p{i}" for i in range(len(faces))))
    back = SurfacePoints.from_json(json.loads(json.dumps(sp.to_json())))
    np.testing.assert_array_equal(back.faces, sp.faces)
    assert back.names == sp.names
    np.testing.assert_allclose(back.bary, sp.bary, atol=1e-7)
    np.testing.assert_allclose(back.bary.sum(1), 1.0, atol=1e-6)


def test_json_without_names_reads_back_unnamed():
    sp = SurfacePoints.from_json({"faces": [1, 2], "bary": [[1, 0, 0], [0, 0.5, 0.5]]})
    assert sp.names == () and sp.faces.tolist() == [1, 2]
    data = sp.to_json()
    assert set(data) == {"names", "faces", "bary"} and data["names"] == []


def test_at_vertices_puts_all_weight_on_the_first_triangle_using_each_vertex():
    faces = SPHERE.faces
    ids = np.array([0, 5, 41, 5])
    sp = SurfacePoints.at_vertices(faces, ids, names=("a", "b", "c", "d"))
    for vid, tri, w in zip(ids, sp.faces, sp.bary, strict=True):
        first = np.flatnonzero((faces == vid).any(1))[0]
        assert tri == first
        assert w.tolist().count(1.0) == 1 and w.sum() == 1.0
        assert faces[tri][np.argmax(w)] == vid
    got = sp.evaluate(torch.as_tensor(SPHERE.vertices)[None], torch.as_tensor(faces))[0].numpy()
    np.testing.assert_array_equal(got, SPHERE.vertices[ids])  # exactly the vertices
    assert sp.names == ("a", "b", "c", "d")


@pytest.mark.parametrize("bad", [-1, 10_000])
def test_at_vertices_names_a_vertex_no_triangle_uses(bad):
    with pytest.raises(LandmarkError, match=f"vertex {bad} is not on the mesh"):
        SurfacePoints.at_vertices(SPHERE.faces, [0, bad])


def test_at_vertices_of_a_vertex_left_out_of_the_triangles():
    faces = np.array([[0, 1, 2], [0, 2, 4]])  # vertex 3 is unused
    with pytest.raises(LandmarkError, match="vertex 3 is not on the mesh"):
        SurfacePoints.at_vertices(faces, [4, 3])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 2.0), st.lists(st.floats(-500, 500), min_size=3, max_size=3))
def test_evaluation_commutes_with_similarity_transforms(seed, scale, shift):
    """Weights summing to 1: the points of moved vertices are the moved points (mm)."""
    rng = np.random.default_rng(seed)
    k = 12
    sp = SurfacePoints(rng.integers(0, len(SPHERE.faces), k), _bary(rng.random(3 * k)))
    rot = Rotation.random(random_state=seed).as_matrix()
    v = torch.as_tensor(SPHERE.vertices)[None]
    moved = torch.as_tensor(scale * SPHERE.vertices @ rot.T + np.asarray(shift))[None]
    tri = torch.as_tensor(SPHERE.faces)
    a = sp.evaluate(v, tri)[0].numpy()
    b = sp.evaluate(moved, tri)[0].numpy()
    np.testing.assert_allclose(b, scale * a @ rot.T + np.asarray(shift), atol=1e-3)
    # each point lies in its triangle's plane, inside the sphere's facet (radius ≤ 80 mm)
    assert (np.linalg.norm(a, axis=1) <= 80.0 + 1e-6).all()


def test_evaluation_is_batched_and_keeps_the_vertices_dtype():
    sp = SurfacePoints([0, 1, 2], np.full((3, 3), 1 / 3))
    v = torch.as_tensor(np.stack([SPHERE.vertices, 2 * SPHERE.vertices]))
    out = sp.evaluate(v, torch.as_tensor(SPHERE.faces))
    assert out.shape == (2, 3, 3) and out.dtype == torch.float64
    torch.testing.assert_close(out[1], 2 * out[0])
    centroid = SPHERE.vertices[SPHERE.faces[1]].mean(0)
    np.testing.assert_allclose(out[0, 1].numpy(), centroid, atol=1e-5)


# ------------------------------------------------------------------ FaceModelArrays
def test_arrays_get_their_own_meta_and_default_priors():
    a, b = _tetra(), _tetra()
    a.meta["name"] = "a"
    assert b.meta == {}  # not a shared default
    assert a.shape_std is None and a.expression_std is None
    m = FaceModel(a)
    np.testing.assert_array_equal(m.shape_std, np.ones(5))
    np.testing.assert_array_equal(m.expression_std, np.ones(2))
    assert m.meta == {"name": "a"} and m.meta is not a.meta
    assert m.v_template.dtype == np.float32 and m.faces.dtype == np.int64
    assert (m.n_vertices, m.n_shape, m.n_expression, m.n_joints) == (4, 5, 2, 2)


@pytest.mark.parametrize("over, key", [
    (dict(v_template=np.zeros((4, 2))), "v_template"),
    (dict(faces=np.zeros((4, 4), np.int64)), "faces"),
    (dict(j_regressor=np.zeros((3, 4))), "J_regressor"),
    (dict(weights=np.zeros((4, 3))), "weights"),
    (dict(posedirs=np.zeros((4, 3, 5))), "posedirs"),
    (dict(parents=np.array([0, 0])), "parents"),
    (dict(faces=np.array([[0, 1, 4]])), "triangle indices point outside"),
    (dict(faces=np.array([[0, 1, -1]])), "triangle indices point outside"),
])
def test_a_model_refuses_arrays_of_the_wrong_layout_naming_the_array(over, key):
    with pytest.raises(FaceModelError, match=key):
        FaceModel(_tetra(**over))


def test_posedirs_may_be_empty():
    m = FaceModel(_tetra(posedirs=np.zeros((4, 3, 0))))
    assert m.posedirs.shape == (4, 3, 0)


# ------------------------------------------------------------------ topology_hash
def test_topology_hash_is_stable_across_dtypes_and_memory_layouts():
    faces = SPHERE.faces.astype(np.int64)
    h = topology_hash(len(SPHERE.vertices), faces)
    assert len(h) == 64 and int(h, 16) >= 0
    assert topology_hash(len(SPHERE.vertices), faces.astype(np.int32)) == h
    assert topology_hash(len(SPHERE.vertices), np.asfortranarray(faces)) == h
    assert topology_hash(len(SPHERE.vertices), faces.tolist()) == h


def test_topology_hash_changes_with_the_faces_and_the_vertex_count():
    faces = SPHERE.faces.astype(np.int64)
    n = len(SPHERE.vertices)
    h = topology_hash(n, faces)
    flipped = faces.copy()
    flipped[7] = flipped[7, ::-1]  # one triangle's winding
    reordered = faces[np.r_[1, 0, 2:len(faces)]]  # two triangles swapped
    hashes = {h, topology_hash(n, flipped), topology_hash(n, reordered), topology_hash(n + 1, faces),
              topology_hash(n, faces[:-1])}
    assert len(hashes) == 5


def test_the_topology_ignores_positions_the_fingerprint_does_not():
    a = FaceModel(_tetra())
    b = FaceModel(_tetra(v_template=_tetra().v_template * 1.1))
    assert a.topology_hash == b.topology_hash == topology_hash(4, a.faces)
    assert a.fingerprint != b.fingerprint


def test_the_default_model_topology_hash(default_model):
    m = default_model
    assert m.topology_hash == topology_hash(m.n_vertices, m.faces)
    assert m.topology_hash != topology_hash(m.n_vertices, m.faces[:, [0, 2, 1]])
