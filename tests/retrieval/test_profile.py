"""The skull's midsagittal profile image (:mod:`skullsearch.retrieval.profile`) on a real mesh:
a skull 3 mm under a face of the default model, drawn through the real PIL encoder and read
back; the plane from the landmarks follows any rigid motion of the skull file."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from skullsearch import Skull
from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.retrieval.extended import ExtendedLandmarkError, extend
from skullsearch.retrieval.profile import midline_plane, profile_image
from skullsearch.retrieval.tissue import load_table

TABLE = load_table()


@pytest.fixture(scope="module")
def case(default_model):
    """A skull 3 mm under the mean face (the face frame: x the subject's left, y up, z forward),
    its landmarks, extension and the face itself."""
    import torch
    from skulls import skull_from_face

    shape = np.zeros(default_model.n_shape)
    mesh, marks = skull_from_face(default_model, shape, np.full(36, 3.0))
    with torch.no_grad():
        v = default_model.vertices(shape=torch.zeros(1, default_model.n_shape))[0].double().numpy()
    face = trimesh.Trimesh(v, default_model.faces, process=False)
    skull = Skull(mesh=mesh, landmarks=marks)
    return skull, marks, extend(skull, TABLE), face


def _colour_count(path, colour, tol=30) -> int:
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(a - np.asarray(colour)).max(-1) <= tol).sum())


def test_the_plane_is_the_skulls_midline(case):
    skull, marks, ext, _ = case
    frame, origin = midline_plane(ext)
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(frame) > 0
    # the mean face is symmetric about x = 0: left ≈ +x, up ≈ +y, forward ≈ +z, the plane at x ≈ 0
    assert frame[0] @ [1, 0, 0] > 0.99 and frame[1] @ [0, 1, 0] > 0.9 and frame[2] @ [0, 0, 1] > 0.9
    assert abs(origin[0]) < 1.0
    midline = np.array([marks[n] for n in ("g", "n", "pr", "pg", "v", "op")])
    assert np.abs((midline - origin) @ frame[0]).max() < 2.0


def test_the_image_shows_bone_landmarks_and_faces(case, tmp_path):
    skull, _, ext, face = case
    path = profile_image(skull, ext, tmp_path / "sub" / "profile.png", faces=[("mean face", face)])
    im = Image.open(path)
    assert im.format == "PNG" and 400 < im.width < 2000 and 400 < im.height < 2000
    assert _colour_count(path, (220, 40, 40)) > 2000   # the bone's section
    assert _colour_count(path, (255, 215, 0)) > 100    # the skull landmarks
    assert _colour_count(path, (0, 200, 230)) > 100    # the extended points and their directions
    assert _colour_count(path, (30, 160, 60)) > 2000   # the face's section
    bare = profile_image(skull, ext, tmp_path / "bare.png")
    assert _colour_count(bare, (30, 160, 60)) < 50     # (the legend's swatch is not drawn without a face)
    assert _colour_count(bare, (255, 40, 40)) < 50     # no direction into the skull: no red marks
    # face to the right: the skin's front-most pixel (the nose) lies right of the bone's, by the
    # 3 mm this test skull lies under its face everywhere (12 px at 0.25 mm a pixel)
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    green = np.nonzero(np.abs(a - [30, 160, 60]).max(-1) <= 30)[1]
    red = np.nonzero(np.abs(a - [220, 40, 40]).max(-1) <= 30)[1]
    assert 4 < green.max() - red.max() < 40, (green.max(), red.max())
    # a coarser scale: a smaller image of the same skull
    small = Image.open(profile_image(skull, ext, tmp_path / "small.png", px_mm=1.0))
    assert small.width < im.width / 3


def test_a_direction_into_the_skull_is_drawn_red(case, tmp_path):
    skull, _, ext, _ = case
    angle = np.asarray(ext.outward_angle_deg, np.float64).copy()
    angle[SOFT_TISSUE_NAMES.index("pr")] = 130.0
    path = profile_image(skull, replace(ext, outward_angle_deg=angle), tmp_path / "warn.png")
    assert _colour_count(path, (255, 40, 40), tol=20) > 30


def test_bad_input_names_the_problem(case, tmp_path):
    skull, marks, ext, _ = case
    with pytest.raises(ExtendedLandmarkError, match="PNG"):
        profile_image(skull, ext, tmp_path / "profile.jpg")
    few = {k: v for k, v in marks.items() if k in ("g", "zy_l", "zy_r")}
    with pytest.raises(ExtendedLandmarkError, match="midline plane cannot be told"):
        profile_image(skull, extend(Skull(mesh=skull.mesh, landmarks=few), TABLE), tmp_path / "p.png")
    # landmarks 500 mm beside the mesh (another file's, or in other units): the plane misses it
    ext_far = replace(ext, skull_points=ext.skull_points + [500.0, 0, 0], points=ext.points + [500.0, 0, 0])
    with pytest.raises(ExtendedLandmarkError, match="misses the skull"):
        profile_image(skull, ext_far, tmp_path / "p.png")
    (tmp_path / "taken").write_text("a file where a folder should be")
    with pytest.raises(ExtendedLandmarkError, match="cannot write"):
        profile_image(skull, ext, tmp_path / "taken" / "p.png")


quaternions = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(q=quaternions, t=st.lists(st.floats(-500, 500), min_size=3, max_size=3))
def test_the_profile_follows_a_rigid_motion_of_the_skull(case, tmp_path, q, t):
    """Moving the skull file (mesh and landmarks) moves the plane with it and leaves the drawing."""
    from scipy.spatial.transform import Rotation

    skull, marks, ext, _ = case
    rot = Rotation.from_quat(np.asarray(q) / np.linalg.norm(q)).as_matrix()
    moved = Skull(mesh=trimesh.Trimesh(skull.mesh.vertices @ rot.T + t, skull.mesh.faces, process=False),
                  landmarks={k: np.asarray(v) @ rot.T + t for k, v in marks.items()})
    ext_m = extend(moved, TABLE)
    frame, origin = midline_plane(ext)
    frame_m, origin_m = midline_plane(ext_m)
    np.testing.assert_allclose(frame_m, frame @ rot.T, atol=1e-3)
    np.testing.assert_allclose(origin_m, origin @ rot.T + t, atol=1e-3)
    a = np.asarray(Image.open(profile_image(skull, ext, tmp_path / "a.png")).convert("L"), float)
    b = np.asarray(Image.open(profile_image(moved, ext_m, tmp_path / "b.png")).convert("L"), float)
    assert abs(a.shape[0] - b.shape[0]) <= 2 and abs(a.shape[1] - b.shape[1]) <= 2
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    assert (np.abs(a[:h, :w] - b[:h, :w]) > 60).mean() < 0.01
