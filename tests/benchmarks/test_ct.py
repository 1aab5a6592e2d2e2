"""benchmarks/_ct.py on small synthetic data: CT surfaces, the face frame, automatic skull
landmarks and load_ct's errors (offline; no /work/shared needed)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from benchmark_scripts import load


@pytest.fixture(scope="module")
def ct():
    return load("_ct")


SPACING = np.array([2.0, 1.5, 1.5])  # (slice, row, column) mm, anisotropic like CThead
SHAPE = (48, 64, 64)
SKIN_AXES = np.array([38.0, 36.0, 32.0])  # semi-axes (slice, row, column) mm
BONE_AXES = np.array([30.0, 28.0, 25.0])


def _ellipsoid(centre, axes):
    idx = np.indices(SHAPE, dtype=np.float64).transpose(1, 2, 3, 0) * SPACING
    return (((idx - centre) / axes) ** 2).sum(-1)


@pytest.fixture(scope="module")
def head_volume():
    """(S, R, C) int16 like CThead (air 0, tissue 1060, bone 1800): a tissue ellipsoid with a
    'nose' at low rows (the face), a closed bone shell inside, a loose blob of wrap in the air and
    a bone fleck in the tissue (both to be dropped)."""
    centre = (np.array(SHAPE) - 1) / 2 * SPACING
    vol = np.zeros(SHAPE, np.int16)
    vol[_ellipsoid(centre, SKIN_AXES) <= 1] = 1060
    nose = centre + np.array([0.0, -SKIN_AXES[1], 0.0])
    vol[_ellipsoid(nose, np.array([8.0, 8.0, 8.0])) <= 1] = 1060
    r = _ellipsoid(centre, BONE_AXES)
    vol[(r <= 1) & (r >= 0.75)] = 1800
    vol[_ellipsoid(np.array([4.0, 6.0, 6.0]), np.array([4.0, 4.0, 4.0])) <= 1] = 1060  # wrap blob
    vol[_ellipsoid(centre + [0.0, 0.0, 10.0], np.array([1.5, 1.5, 1.5])) <= 1] = 1800  # fleck
    return vol


def test_head_frame_axes(ct):
    aff = ct.head_frame(SHAPE, SPACING)
    o = ct.to_frame([0, 0, 0], aff)
    # +y up against the slice order, +z out of the face (low rows), +x along the columns
    np.testing.assert_allclose(ct.to_frame([1, 0, 0], aff) - o, [0, -2.0, 0], atol=1e-12)
    np.testing.assert_allclose(ct.to_frame([0, 1, 0], aff) - o, [0, 0, -1.5], atol=1e-12)
    np.testing.assert_allclose(ct.to_frame([0, 0, 1], aff) - o, [1.5, 0, 0], atol=1e-12)
    assert np.linalg.det(aff[:3, :3]) > 0  # a rotation, no mirror: marching-cubes winding survives
    centre = (np.array(SHAPE) - 1) / 2
    np.testing.assert_allclose(ct.to_frame(centre, aff), 0, atol=1e-12)


def test_extract_surfaces_closed_sized_and_oriented(ct, head_volume):
    skull, skin = ct.extract_surfaces(head_volume, SPACING)
    for mesh in (skull, skin):
        assert mesh.is_watertight
        assert mesh.volume > 0  # outward normals
        assert len(mesh.split(only_watertight=False)) == 1  # wrap blob and bone fleck dropped
    # sizes in mm, axes mapped (slice → y, row → z, column → x); ±1.5 voxel of iso-level blur
    lo, hi = skin.bounds
    np.testing.assert_allclose(hi[:2] - lo[:2], 2 * SKIN_AXES[[2, 0]], atol=3.0)
    assert hi[2] > SKIN_AXES[1] + 5.0 and lo[2] == pytest.approx(-SKIN_AXES[1], abs=2.5)  # nose at +z
    np.testing.assert_allclose(skull.extents, 2 * BONE_AXES[[2, 0, 1]], atol=3.0)
    inside = skin.contains(skull.vertices[::50])
    assert inside.all()  # the bone lies under the skin


def test_extract_surfaces_rejects_an_empty_volume(ct):
    with pytest.raises(ValueError, match="no voxels above"):
        ct.extract_surfaces(np.zeros((8, 8, 8), np.int16), (1.0, 1.0, 1.0))


def _synthetic_skull(jaws: bool = True):
    """A crude skull in mm (y up, z forward, symmetric in x): a vault, a nasal plate pointing
    forward-down from the forehead, an upper-jaw block and a mandible block below a gap (``jaws``
    False: a scan that ends above the teeth, without the two blocks)."""
    vault = trimesh.creation.icosphere(subdivisions=4)
    vault.apply_scale([70.0, 55.0, 92.0])
    vault.apply_translation([0.0, 40.0, -15.0])
    nasal = trimesh.creation.box(extents=[14.0, 24.0, 5.0])
    nasal.apply_transform(trimesh.transformations.rotation_matrix(np.radians(-35), [1, 0, 0]))
    nasal.apply_translation([0.0, 6.0, 72.0])
    upper = trimesh.creation.box(extents=[50.0, 30.0, 40.0])
    upper.apply_translation([0.0, -45.0, 60.0])
    lower = trimesh.creation.box(extents=[60.0, 40.0, 40.0])
    lower.apply_translation([0.0, -85.0, 55.0])
    return trimesh.util.concatenate([vault, nasal, upper, lower] if jaws else [vault, nasal])


def test_skull_landmarks_on_the_surface_and_in_anatomical_order(ct):
    skull = _synthetic_skull()
    fit = ct.fit_skull(skull)
    lm = ct.skull_landmarks(skull, fit=fit)
    midline = ("op", "v", "g", "n", "mn", "rhi", "ss", "mp", "pr", "id", "sm", "pg", "gn", "me")
    assert set(midline) <= set(lm)
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    assert set(lm) <= set(SOFT_TISSUE_NAMES)
    pts = np.array([lm[k] for k in lm])
    _, dist, _ = trimesh.proximity.closest_point(skull, pts)
    assert dist.max() < 1e-3, dict(zip(lm, dist.round(4), strict=True))
    p = {k: lm[k] for k in midline}
    for k in midline:
        assert abs(p[k][0]) < 0.5, k  # on the midsagittal plane x = 0
    y = {k: v[1] for k, v in p.items()}
    assert y["v"] == pytest.approx(95.0, abs=1.0)  # top of the vault
    assert p["op"][2] == pytest.approx(-107.0, abs=2.0)  # back of the vault
    assert y["g"] > y["n"] > y["mn"] > y["rhi"] > y["ss"] >= y["mp"] >= y["pr"]
    assert y["pr"] > y["id"] >= y["sm"] >= y["pg"] >= y["gn"] >= y["me"]
    assert p["rhi"][2] > p["n"][2] + 5.0  # the nasal tip points forward
    assert p["ss"][1] <= -30.0 and p["pr"][1] == pytest.approx(-50.0, abs=1.0)  # 10 mm above the edge
    assert p["me"][1] == pytest.approx(-105.0, abs=0.5)
    assert fit["reference"] == "palatal plane" and abs(fit["tilt_deg"]) < 1.0


def test_a_skull_cut_above_the_teeth_gives_its_upper_landmarks_when_asked(ct):
    """A scan that ends above the mouth (Debian's Cranium): with ``partial`` the landmarks down to
    rhinion, where the whole skull puts them; without, the missing jaws are an error."""
    cut = _synthetic_skull(jaws=False)
    with pytest.raises(ValueError, match="upper jaw and mandible"):
        ct.skull_landmarks(cut)
    lm = ct.skull_landmarks(cut, partial=True)
    upper = ("op", "v", "g", "n", "mn", "rhi")
    assert set(upper) <= set(lm)
    assert not set(lm) & {"ss", "mp", "pr", "id", "sm", "pg", "gn", "me", "go_l", "go_r", "sC_l", "iC_l"}
    whole = ct.skull_landmarks(_synthetic_skull())
    for k in ("g", "n", "mn", "rhi"):  # (the vertex and opisthocranion follow the horizontal, which
        np.testing.assert_allclose(lm[k], whole[k], atol=1.5, err_msg=k)  # the palate set there)


def test_skull_landmarks_need_a_face(ct):
    with pytest.raises(ValueError):
        ct.skull_landmarks(trimesh.creation.icosphere(subdivisions=3).apply_scale(90.0))


def test_load_ct_reads_and_refuses_clearly(ct, tmp_path, head_volume):
    good = tmp_path / "head.npz"
    np.savez_compressed(good, volume=head_volume, spacing_mm=SPACING)
    vol, spacing = ct.load_ct(good)
    assert vol.dtype == np.int16 and vol.shape == SHAPE
    np.testing.assert_array_equal(spacing, SPACING)
    with pytest.raises(SystemExit, match="not found.*pass the npz"):
        ct.load_ct(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SystemExit, match="damaged"):
        ct.load_ct(bad)
    np.savez(tmp_path / "nokey.npz", vol=head_volume)
    with pytest.raises(SystemExit, match="spacing_mm"):
        ct.load_ct(tmp_path / "nokey.npz")


def test_past_rhinion_finds_bone_the_landmark_left_out(ct):
    """A nasal bone that runs 3 mm past the rhinion given: bone's values 1 and 2 mm past it, soft
    tissue's from 5 mm on; the bones' length is nasion → rhinion."""
    shape, spacing = (60, 80, 80), np.array([1.0, 1.0, 1.0])
    affine = ct.head_frame(shape, spacing)
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    frame, origin = np.eye(3), world.mean(0)
    n, rhi = np.array([10.0, 5.0]), np.array([-6.0, 17.0])  # (y, z) in the plane x = origin's
    along = (rhi - n) / np.linalg.norm(rhi - n)
    end = rhi + 3.0 * along
    yz = (world - origin)[:, 1:]
    t = np.clip(((yz - n) @ (end - n)) / ((end - n) @ (end - n)), 0.0, 1.0)
    near = np.linalg.norm(yz - (n + t[:, None] * (end - n)), axis=1)
    bone = (near < 1.2) & (np.abs(world[:, 0] - origin[0]) < 6.0)
    volume = np.where(bone, 1800, 1000).reshape(shape).astype(np.int16)
    out = ct.past_rhinion(volume, spacing, {"frame": frame, "origin": origin, "points": {"n": n, "rhi": rhi}})
    assert out["nasal_bones_mm"] == 20.0
    most = out["most_past_rhinion"]
    assert most["1"] > 1500 and most["2"] > 1500 and most["5"] < 1150, out  # (smoothed: its end blurs)
    assert abs(out["most_10_15_mm_past"] - 1000) < 20


def test_the_skin_is_the_outer_surface_not_the_walls_of_open_cavities(ct, head_volume):
    """A sinus behind the face, open to the outside through a 'nostril' channel down the slices:
    no closed pocket, so the plain isosurface holds its walls; the outer skin does not."""
    vol = head_volume.copy()
    centre = (np.array(SHAPE) - 1) / 2 * SPACING
    sinus = centre + np.array([0.0, -20.0, 0.0])  # under the face (low rows), 12–16 mm deep
    vol[_ellipsoid(sinus, np.array([6.0, 4.5, 6.0])) <= 1] = 0
    idx = np.indices(SHAPE, dtype=np.float64).transpose(1, 2, 3, 0) * SPACING
    channel = ((np.abs(idx[..., 1] - sinus[1]) <= 2.5) & (np.abs(idx[..., 2] - sinus[2]) <= 2.5)
               & (idx[..., 0] >= sinus[0]))  # down the slices, out of the head's bottom
    vol[channel] = 0
    _, plain = ct.extract_surfaces(vol, SPACING, outer_skin=False)
    _, outer = ct.extract_surfaces(vol, SPACING)
    assert outer.is_watertight and outer.volume > 0
    air = ct.outer_air(vol > 500)
    assert air.sum() > 0 and not (air & (vol > 500)).any()
    aff = ct.head_frame(SHAPE, SPACING)
    wall = ct.to_frame(sinus / SPACING, aff)  # the sinus' centre, in the frame
    for mesh, near in ((plain, True), (outer, False)):
        d = np.linalg.norm(mesh.vertices - wall, axis=1).min()
        assert (d < 8.0) == near, d  # the sinus' walls lie 4.5–6 mm from its centre
    # away from the sinus and its channel (along the slices: the frame's y) the two skins agree
    far = np.linalg.norm((plain.vertices - wall)[:, [0, 2]], axis=1) > 12.0
    from scipy.spatial import cKDTree

    assert cKDTree(outer.vertices).query(plain.vertices[far])[0].max() < 1.0
