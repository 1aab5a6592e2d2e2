"""Outward normals and extended landmarks n_i = m_i + d_i · direction_i."""

import numpy as np
import pytest
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.errors import SkullsearchError
from skullsearch.retrieval.extended import (
    DIRECTION_LIMIT_DEG,
    ExtendedLandmarkError,
    ExtendedLandmarks,
    export_pegs,
    extend,
    outward_normals,
)
from skullsearch.retrieval.skull import Skull
from skullsearch.retrieval.tissue import TissueTable, load_table

IDX = {n: i for i, n in enumerate(SOFT_TISSUE_NAMES)}
AXES = np.array([90.0, 70.0, 110.0])          # ellipsoid semi-axes, mm


def flip_half(mesh, seed=0):
    """The same surface with the winding of a random half of the faces reversed."""
    faces = np.array(mesh.faces)
    sel = np.random.default_rng(seed).random(len(faces)) < 0.5
    faces[sel] = faces[sel][:, ::-1]
    return trimesh.Trimesh(np.array(mesh.vertices), faces, process=False)


def sphere(subdivisions=4, radius=90.0):
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)


def ellipsoid(subdivisions=4):
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return trimesh.Trimesh(mesh.vertices * AXES, mesh.faces, process=False)


def ellipsoid_normal(p):
    g = p / AXES ** 2
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def radial(p):
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def dots(a, b):
    return np.einsum("ij,ij->i", a, b)


# ------------------------------------------------------------------ normals
@pytest.mark.parametrize("flip", [False, True])
def test_sphere_normals_point_radially_outward(flip):
    mesh = sphere()
    points, _ = trimesh.sample.sample_surface(mesh, 200, seed=1)
    normals = outward_normals(flip_half(mesh) if flip else mesh, points)
    assert normals.shape == (200, 3)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1)
    assert dots(normals, radial(points)).min() > 0.99


def test_open_sphere_with_a_cap_removed():
    mesh = sphere()
    keep = mesh.triangles_center[:, 2] < 45          # a 60° cap gone
    open_mesh = flip_half(trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=False))
    assert not open_mesh.is_watertight
    points, _ = trimesh.sample.sample_surface(open_mesh, 300, seed=2)
    rim = points[points[:, 2] > 30]                  # near the hole
    assert len(rim) > 5
    normals = outward_normals(open_mesh, points)
    assert dots(normals, radial(points)).min() > 0.99


def test_hemisphere_bowl():
    mesh = sphere()
    bowl = flip_half(trimesh.Trimesh(mesh.vertices, mesh.faces[mesh.triangles_center[:, 2] < 0],
                                     process=False))
    points, _ = trimesh.sample.sample_surface(bowl, 200, seed=3)
    assert dots(outward_normals(bowl, points), radial(points)).min() > 0.99


@pytest.mark.parametrize("flip", [False, True])
def test_ellipsoid_normals(flip):
    mesh = ellipsoid(5)
    points, _ = trimesh.sample.sample_surface(mesh, 200, seed=4)
    normals = outward_normals(flip_half(mesh) if flip else mesh, points)
    assert dots(normals, ellipsoid_normal(points)).min() > 0.99


@pytest.mark.parametrize("subdivide", [0, 3])
def test_box_normals(subdivide):
    """A coarse box (12 triangles, 140 mm edges) is sampled as finely as a dense one."""
    half = np.array([60.0, 80.0, 50.0])
    mesh = trimesh.creation.box(extents=2 * half)
    for _ in range(subdivide):
        mesh = mesh.subdivide()
    points, _ = trimesh.sample.sample_surface(mesh, 600, seed=5)
    axis = np.argmin(np.abs(np.abs(points) - half), axis=1)
    inner = np.abs(points) < half - 10               # ≥ 10 mm from every edge
    keep = inner.sum(axis=1) == 2
    points, axis = points[keep], axis[keep]
    expected = np.zeros_like(points)
    expected[np.arange(len(points)), axis] = np.sign(points[np.arange(len(points)), axis])
    normals = outward_normals(flip_half(mesh), points)
    assert dots(normals, expected).min() > 0.99


def test_torus_concave_side():
    """On the inner ring of a torus the outside faces the hole: rays must cross the far side."""
    mesh = trimesh.creation.torus(major_radius=60, minor_radius=20, major_sections=96, minor_sections=48)
    points, _ = trimesh.sample.sample_surface(mesh, 300, seed=6)
    rxy = np.linalg.norm(points[:, :2], axis=1, keepdims=True)
    ring = np.c_[points[:, :2] / rxy * 60, np.zeros(len(points))]
    expected = radial(points - ring)
    normals = outward_normals(flip_half(mesh), points)
    assert dots(normals, expected).min() > 0.99


def test_thick_shell_inner_table_faces_the_cavity():
    """A CT-like skull wall: outer surface → away from the centre; inner (endocranial) surface →
    into the cavity, which is outside the bone."""
    outer, inner = sphere(4, 90.0), sphere(4, 84.0)
    shell = flip_half(trimesh.util.concatenate([outer, inner]))
    po, _ = trimesh.sample.sample_surface(outer, 60, seed=7)
    pi, _ = trimesh.sample.sample_surface(inner, 60, seed=8)
    normals, info = outward_normals(shell, np.vstack([po, pi]), return_info=True)
    assert dots(normals[:60], radial(po)).min() > 0.99
    assert dots(normals[60:], -radial(pi)).min() > 0.99
    assert set(info["method"]) == {"vote"}
    assert (info["votes"][:, 1] == 0).all() and (info["own"] == 1).all()   # unanimous


def test_triangle_soup_and_duplicated_faces():
    """An STL-like soup (no shared vertices) is welded; a mesh whose every face is doubled
    (all edges non-manifold, every crossing counted twice) still finds its outside."""
    mesh = sphere(3)
    soup = trimesh.Trimesh(mesh.triangles.reshape(-1, 3), np.arange(3 * len(mesh.faces)).reshape(-1, 3),
                           process=False)
    doubled = trimesh.Trimesh(mesh.vertices, np.vstack([mesh.faces, mesh.faces[:, ::-1]]), process=False)
    points, _ = trimesh.sample.sample_surface(mesh, 50, seed=11)
    for m in (flip_half(soup), doubled):
        assert dots(outward_normals(m, points), radial(points)).min() > 0.99


def test_components_wound_oppositely():
    """Two separate bodies, one wound inside out: each orientation patch gets its own vote."""
    a = sphere(3, 40.0)
    b = sphere(3, 30.0)
    b = trimesh.Trimesh(b.vertices + [100.0, 0, 0], b.faces[:, ::-1], process=False)
    both = trimesh.util.concatenate([a, b])
    pa, _ = trimesh.sample.sample_surface(a, 20, seed=12)
    pb, _ = trimesh.sample.sample_surface(b, 20, seed=13)
    normals, info = outward_normals(both, np.vstack([pa, pb]), return_info=True)
    assert dots(normals[:20], radial(pa)).min() > 0.99
    assert dots(normals[20:], radial(pb - [100.0, 0, 0])).min() > 0.99
    assert len(set(info["patch"][:20])) == 1 and len(set(info["patch"])) == 2


def test_points_off_the_surface_and_nan_rows():
    mesh = sphere()
    points = np.array([[0, 0, 92.0], [np.nan, 0, 0], [0, 0, -88.0]])
    normals, info = outward_normals(mesh, points, return_info=True)
    assert np.allclose(normals[0], [0, 0, 1], atol=0.01) and np.allclose(normals[2], [0, 0, -1], atol=0.01)
    assert np.isnan(normals[1]).all()
    assert info["surface_distance"][0] == pytest.approx(2.0, abs=0.1)


def test_point_cloud_is_refused():
    vertices = np.random.default_rng(0).normal(size=(50, 3))
    cloud = trimesh.Trimesh(vertices=vertices, faces=np.zeros((0, 3), int))
    with pytest.raises(ExtendedLandmarkError, match="triangle") as err:
        outward_normals(cloud, [[0, 0, 0]])
    assert isinstance(err.value, SkullsearchError)


# ------------------------------------------------------------------ extension
ELLIPSOID = ellipsoid(4)
SAMPLES, _ = trimesh.sample.sample_surface(ELLIPSOID, 36, seed=9)
TABLE = load_table()


def ellipsoid_skull(mesh=ELLIPSOID, points=SAMPLES, names=SOFT_TISSUE_NAMES):
    return Skull(mesh=mesh, landmarks={n: points[IDX[n]] for n in names})


def test_extend_on_an_ellipsoid():
    ext = extend(ellipsoid_skull(), TABLE)
    assert ext.present.all() and ext.n_present == 36
    assert ext.points.shape == ext.skull_points.shape == ext.normals.shape == (36, 3)
    assert np.allclose(ext.skull_points, SAMPLES)
    offset = ext.points - ext.skull_points
    assert np.allclose(np.linalg.norm(offset, axis=1), TABLE.mean)
    assert dots(offset / TABLE.mean[:, None], ellipsoid_normal(SAMPLES)).min() > 0.99
    assert ext.direction_source == ["normal"] * 36
    assert np.array_equal(ext.depth, TABLE.mean) and np.array_equal(ext.sd, TABLE.sd)
    assert ext.table_sha256 == TABLE.sha256 and ext.table_name == "global-2023"
    assert all(o.startswith("vote ") for o in ext.orientation)
    # every direction points out of the skull, seen from its centre: nothing to warn of (the
    # landmarks' names mean nothing on an ellipsoid: its sides are not checked here)
    assert np.nanmax(ext.outward_angle_deg) < 45 and ext.direction_warnings == []


def test_a_direction_into_the_skull_is_flagged(tmp_path):
    """A landmark placed on the inner table of a skull wall gets the normal of that surface (into
    the cranial cavity: the right normal of the wrong surface), and a table direction can point
    anywhere: either lays the tissue into the skull, and the extension says which landmark and
    why; the others stay silent."""
    outer, inner = sphere(4, 90.0), sphere(4, 84.0)
    shell = trimesh.util.concatenate([outer, inner])
    po, _ = trimesh.sample.sample_surface(outer, 36, seed=3)
    pi, _ = trimesh.sample.sample_surface(inner, 1, seed=4)
    points = po.copy()
    points[IDX["rhi"]] = pi[0]  # on the endocranial surface
    ext = extend(ellipsoid_skull(shell, points), TABLE)
    assert ext.outward_angle_deg[IDX["rhi"]] > 179 and ext.direction_source[IDX["rhi"]] == "normal"
    assert np.delete(ext.outward_angle_deg, IDX["rhi"]).max() < 1
    (w,) = ext.direction_warnings
    assert w.startswith("rhi: its surface normal points 180° from outward") and "check where" in w
    # a table direction into the skull (here: g pushed towards the centre)
    g = IDX["g"]
    d = -points[g] / np.linalg.norm(points[g])
    path = tmp_path / "t.csv"
    path.write_text(f"landmark,mean_mm,sd_mm,direction\ng,5.5,1,{d[0]} {d[1]} {d[2]}\nn,6,1.5,\n")
    ext = extend(ellipsoid_skull(shell, points, ["g", "n"]), load_table(path))
    assert ext.outward_angle_deg[g] > 179 and ext.outward_angle_deg[IDX["n"]] < 1
    assert [w[:40] for w in ext.warnings] == ["g: the table's direction points 180° fro"]  # (no pairs)
    # the angles travel with the extended landmarks (the audit record), and warn again when read
    back = ExtendedLandmarks.from_dict(ext.to_dict())
    np.testing.assert_array_equal(back.outward_angle_deg, ext.outward_angle_deg)
    assert back.warnings == ext.warnings
    # a record from before the check has no angles: nothing to warn of
    old = ext.to_dict()
    del old["outward_angle_deg"]
    assert ExtendedLandmarks.from_dict(old).warnings == [] and DIRECTION_LIMIT_DEG == 90.0
    # left out, the landmark is not extended nor warned of, and the record says so
    kept = ext.without(["g"])
    assert kept.direction_warnings == [] and kept.left_out == ["g"] and not kept.present[g] and ext.present[g]
    assert np.isnan(kept.points[g]).all() and np.array_equal(kept.points[IDX["n"]], ext.points[IDX["n"]])
    assert ExtendedLandmarks.from_dict(kept.to_dict()).left_out == ["g"]


def test_landmarks_left_out_by_name_or_pair():
    ext = extend(ellipsoid_skull(), TABLE)
    out = ext.without(["zy", "rhi"])
    assert out.left_out == ["rhi", "zy_l", "zy_r"] and out.n_present == 33
    assert ext.without([]) is ext and ext.n_present == 36
    assert out.without(["g"]).left_out == ["g", "rhi", "zy_l", "zy_r"] == out.without("g").left_out
    with pytest.raises(ExtendedLandmarkError, match="cannot leave out nose: not a landmark name.*zy"):
        ext.without(["nose"])


def test_partial_skull_and_partial_table(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("landmark,mean_mm,sd_mm\ng,5,1\nn,6,1.5\nzy,7,3\n")
    table = load_table(path)
    ext = extend(ellipsoid_skull(names=["g", "zy_l", "pg"]), table)
    assert ext.present[IDX["g"]] and ext.present[IDX["zy_l"]]
    assert not ext.present[IDX["pg"]]                # skull has it, table does not
    assert not ext.present[IDX["n"]]                 # table has it, skull does not
    assert ext.n_present == 2
    assert np.isnan(ext.points[~ext.present]).all() and np.isnan(ext.normals[~ext.present]).all()
    assert np.allclose(ext.skull_points[IDX["pg"]], SAMPLES[IDX["pg"]])


def test_table_direction_override(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("landmark,mean_mm,sd_mm,direction\nme,7,2.5,0 0 -1\ng,5.5,1,\n")
    ext = extend(ellipsoid_skull(), load_table(path))
    me, g = IDX["me"], IDX["g"]
    assert np.allclose(ext.points[me], SAMPLES[me] + 7 * np.array([0, 0, -1.0]), atol=1e-12)
    assert ext.direction_source[me] == "table" and ext.direction_source[g] == "normal"
    assert np.allclose(ext.directions[me], [0, 0, -1])
    assert dots(ext.normals[[me]], ellipsoid_normal(SAMPLES[[me]]))[0] > 0.99   # normal still reported
    assert np.allclose(ext.points[g], SAMPLES[g] + 5.5 * ext.normals[g])


def test_extend_accepts_a_table_name_or_none():
    a = extend(ellipsoid_skull(names=["g", "n"]))
    b = extend(ellipsoid_skull(names=["g", "n"]), "global-2023")
    assert np.array_equal(a.points, b.points, equal_nan=True)


def random_rotation(q):
    q = np.asarray(q, float)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


SMALL = ellipsoid(3)
SMALL_SAMPLES, _ = trimesh.sample.sample_surface(SMALL, 36, seed=10)
SMALL_EXT = extend(ellipsoid_skull(SMALL, SMALL_SAMPLES), TABLE)
quaternions = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.2)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(q=quaternions, t=st.lists(st.floats(-500, 500), min_size=3, max_size=3),
       subset=st.sets(st.sampled_from(SOFT_TISSUE_NAMES), min_size=1, max_size=36))
def test_equivariant_under_rigid_motion(q, t, subset):
    rot, shift = random_rotation(q), np.array(t)
    moved_mesh = trimesh.Trimesh(SMALL.vertices @ rot.T + shift, SMALL.faces, process=False)
    moved = ellipsoid_skull(moved_mesh, SMALL_SAMPLES @ rot.T + shift, sorted(subset))
    ext = extend(moved, TABLE)
    sel = np.array([n in subset for n in SOFT_TISSUE_NAMES])
    assert np.array_equal(ext.present, sel)
    scale = float(np.linalg.norm(AXES)) * 2
    expected = SMALL_EXT.points[sel] @ rot.T + shift
    assert np.allclose(ext.points[sel], expected, rtol=0, atol=1e-6 * scale)
    assert np.allclose(ext.normals[sel], SMALL_EXT.normals[sel] @ rot.T, atol=1e-6)
    assert np.allclose(ext.outward_angle_deg[sel], SMALL_EXT.outward_angle_deg[sel], atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(order=st.permutations(SOFT_TISSUE_NAMES))
def test_invariant_to_landmark_order(order):
    ext = extend(ellipsoid_skull(SMALL, SMALL_SAMPLES, order), TABLE)
    assert np.array_equal(ext.points, SMALL_EXT.points, equal_nan=True)
    assert np.array_equal(ext.normals, SMALL_EXT.normals, equal_nan=True)
    assert np.array_equal(ext.outward_angle_deg, SMALL_EXT.outward_angle_deg, equal_nan=True)


@settings(max_examples=5, deadline=None)
@given(subset=st.sets(st.sampled_from(SOFT_TISSUE_NAMES), min_size=1, max_size=36))
def test_depth_is_not_scaled_with_the_skull(subset):
    """A skull file in cm read as mm is 10× too small; scaling it up moves m_i ×10 but the
    soft tissue stays the table's millimetres."""
    big_mesh = trimesh.Trimesh(SMALL.vertices * 10, SMALL.faces, process=False)
    ext = extend(ellipsoid_skull(big_mesh, SMALL_SAMPLES * 10, sorted(subset)), TABLE)
    sel = ext.present
    assert np.allclose(ext.skull_points[sel], SMALL_SAMPLES[sel] * 10)
    assert np.allclose(np.linalg.norm(ext.points[sel] - ext.skull_points[sel], axis=1), TABLE.mean[sel])
    assert dots(ext.normals[sel], ellipsoid_normal(SMALL_SAMPLES[sel])).min() > 0.99
    # an angle has no unit: at any size it is the true normal's angle from outward, to within the
    # normal's own error (cos 0.99: 8.1°; the normal's patch is a fixed 4 mm)
    _, info = outward_normals(SMALL, SMALL_SAMPLES[:1], return_info=True)
    tri = np.asarray(SMALL.vertices)[np.asarray(SMALL.faces)]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    np.testing.assert_allclose(info["surface_centroid"], area @ tri.mean(1) / area.sum(), atol=1e-9)
    out = SMALL_SAMPLES[sel] - info["surface_centroid"]
    cos = dots(ellipsoid_normal(SMALL_SAMPLES[sel]), out / np.linalg.norm(out, axis=1, keepdims=True))
    assert np.abs(ext.outward_angle_deg[sel] - np.degrees(np.arccos(np.clip(cos, -1, 1)))).max() < 8.2


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_export_pegs(tmp_path, suffix):
    skull = ellipsoid_skull(SMALL, SMALL_SAMPLES, ["g", "n", "pg", "zy_l"])
    ext = extend(skull, TABLE)
    path = export_pegs(skull, ext, tmp_path / f"pegs{suffix}")
    assert path.exists()
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) > len(SMALL.vertices)
    if suffix == ".ply":
        colours = np.asarray(loaded.visual.vertex_colors)[:, :3]
        assert (colours == [255, 140, 0]).all(axis=1).any()       # orange n_i balls
        assert (colours == [40, 90, 230]).all(axis=1).any()       # blue m_i balls


def test_export_pegs_bad_suffix(tmp_path):
    skull = ellipsoid_skull(SMALL, SMALL_SAMPLES, ["g"])
    with pytest.raises(ExtendedLandmarkError, match=".ply"):
        export_pegs(skull, extend(skull, TABLE), tmp_path / "pegs.stl")


def test_table_built_in_memory():
    mean = np.full(36, np.nan)
    mean[IDX["g"]] = 4.0
    table = TissueTable(name="mem", source="test", mean=mean, sd=np.ones(36), direction=None)
    ext = extend(ellipsoid_skull(SMALL, SMALL_SAMPLES), table)
    assert ext.n_present == 1 and ext.table_name == "mem"


def test_swapped_left_and_right_are_flagged(default_model):
    """The bilateral landmarks' names are checked against the skull's own frame (up from chin to
    brow, forward along the midline's tissue directions): a skull as made says nothing; its
    pairs all renamed (named from the viewer's side) or its mesh mirrored flag all pairs; one
    pair renamed flags that pair; a skull without a jaw is checked from its vertex; one without
    enough midline is not checked. Any rigid motion of the file changes nothing."""
    from skulls import skull_from_face

    from skullsearch.encoder.soft_tissue import BILATERAL, mirror_name

    rng = np.random.default_rng(2)
    shape = rng.standard_normal(default_model.n_shape) * np.asarray(default_model.shape_std)
    mesh, marks = skull_from_face(default_model, shape, np.full(36, 3.0), rng=rng)  # (a random pose)
    ext = extend(Skull(mesh=mesh, landmarks=marks), TABLE)
    assert ext.swapped_sides() == ([], 11) and ext.warnings == []
    renamed = {mirror_name(k): v for k, v in marks.items()}
    (w,) = extend(Skull(mesh=mesh, landmarks=renamed), TABLE).warnings
    assert w.startswith("left and right look swapped: in all 11 bilateral pairs")
    flip = np.diag([-1.0, 1.0, 1.0])
    mirrored = trimesh.Trimesh(mesh.vertices @ flip, mesh.faces[:, ::-1], process=False)
    ext_m = extend(Skull(mesh=mirrored, landmarks={k: v @ flip for k, v in marks.items()}), TABLE)
    assert ext_m.swapped_sides() == (list(BILATERAL), 11)
    one = dict(marks, zy_l=marks["zy_r"], zy_r=marks["zy_l"])
    ext_1 = extend(Skull(mesh=mesh, landmarks=one), TABLE)
    assert ext_1.swapped_sides() == (["zy"], 11)
    assert [w[:39] for w in ext_1.warnings] == ["zy: zy_l lies on the subject's right of"]
    # no jaw: up from g, n, op to the vertex
    cranium = {k: v for k, v in renamed.items() if k in ("op", "v", "g", "n", "mn", "rhi") or k[:-2] in
               ("mso", "mio", "zy")}
    assert extend(Skull(mesh=mesh, landmarks=cranium), TABLE).swapped_sides() == (["mso", "mio", "zy"], 3)
    # too little midline to tell the frame: not checked
    sides = {k: v for k, v in renamed.items() if k[:-2] in BILATERAL or k == "g"}
    assert extend(Skull(mesh=mesh, landmarks=sides), TABLE).swapped_sides() is None


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(q=quaternions, t=st.lists(st.floats(-500, 500), min_size=3, max_size=3), mirror=st.booleans())
def test_side_check_is_invariant_to_rigid_motion(default_model, q, t, mirror):
    """Any rotation and shift of the skull file leaves the side check's answer; a reflection
    (one axis flipped) turns every pair."""
    from skulls import skull_from_face

    from skullsearch.encoder.soft_tissue import BILATERAL

    mesh, marks = skull_from_face(default_model, np.zeros(default_model.n_shape), np.full(36, 3.0))
    rot = random_rotation(q) @ (np.diag([-1.0, 1.0, 1.0]) if mirror else np.eye(3))
    faces = mesh.faces[:, ::-1] if mirror else mesh.faces
    moved = trimesh.Trimesh(mesh.vertices @ rot.T + t, faces, process=False)
    ext = extend(Skull(mesh=moved, landmarks={k: v @ rot.T + t for k, v in marks.items()}), TABLE)
    assert ext.swapped_sides() == ((list(BILATERAL), 11) if mirror else ([], 11))


def test_a_midline_landmark_off_the_midline_is_flagged(default_model):
    """Each midline landmark is measured against the plane through the others: a skull as made
    says nothing (all within 2 mm); nasion moved 15 mm to the subject's left, or glabella given a
    zygion's point, is named with its side; any rigid motion leaves the offsets."""
    from skulls import skull_from_face

    from skullsearch.retrieval.extended import MIDLINE_LIMIT_MM

    rng = np.random.default_rng(4)
    shape = rng.standard_normal(default_model.n_shape) * np.asarray(default_model.shape_std) * 0.5
    mesh, marks = skull_from_face(default_model, shape, np.full(36, 3.0), rng=rng)  # (a random pose)
    ext = extend(Skull(mesh=mesh, landmarks=marks), TABLE)
    offsets = ext.midline_offsets()
    assert len(offsets) == 14 and max(abs(d) for d in offsets.values()) < 2.0, offsets
    assert ext.midline_warnings == [] and ext.warnings == []
    left = ext.frame()[0]
    moved = extend(Skull(mesh=mesh, landmarks=dict(marks, n=marks["n"] + 15.0 * left)), TABLE)
    (w,) = moved.midline_warnings
    assert w.startswith("n: a midline landmark 15 mm to the subject's left of the midline plane"), w
    assert w in moved.warnings and MIDLINE_LIMIT_MM < moved.midline_offsets()["n"] < 16
    swapped = extend(Skull(mesh=mesh, landmarks=dict(marks, g=marks["zy_r"])), TABLE)
    (w,) = swapped.midline_warnings
    assert w.startswith("g: a midline landmark") and "to the subject's right of" in w, w
    # a cranium (the midline's op, v, g, n, mn, rhi): nasion moved is caught there too
    cranium = {k: v for k, v in marks.items() if k in ("op", "v", "g", "n", "mn", "rhi")
               or k[:-2] in ("mso", "mio", "zy")}
    off = dict(cranium, n=cranium["n"] + 15.0 * left)
    (w,) = extend(Skull(mesh=mesh, landmarks=off), TABLE).midline_warnings
    assert w.startswith("n: a midline landmark 15 mm to the subject's left"), w
    # too few landmarks to tell the plane: nothing measured
    few = {k: v for k, v in marks.items() if k in ("g", "zy_l", "zy_r")}
    assert extend(Skull(mesh=mesh, landmarks=few), TABLE).midline_offsets() == {}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(q=quaternions, t=st.lists(st.floats(-500, 500), min_size=3, max_size=3))
def test_midline_offsets_are_invariant_to_rigid_motion(default_model, q, t):
    from skulls import skull_from_face

    mesh, marks = skull_from_face(default_model, np.zeros(default_model.n_shape), np.full(36, 3.0))
    marks = dict(marks, n=marks["n"] + [12.0, 0.0, 0.0])  # (one landmark off, to have a signal)
    rot = random_rotation(q)
    moved = trimesh.Trimesh(mesh.vertices @ rot.T + t, mesh.faces, process=False)
    a = extend(Skull(mesh=mesh, landmarks=marks), TABLE).midline_offsets()
    moved_marks = {k: v @ rot.T + t for k, v in marks.items()}
    b = extend(Skull(mesh=moved, landmarks=moved_marks), TABLE).midline_offsets()
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) < 0.05, (a, b)
    assert a["n"] > 10  # the face frame's +x is the subject's left
