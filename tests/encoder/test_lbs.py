"""Linear blend skinning (encoder/lbs.py): Rodrigues' formula against scipy, the kinematic chain,
and lbs on a small synthetic rig (5 joints in a chain like the face model's: global, neck, jaw,
eyes)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from skullsearch.encoder.lbs import axis_angle_to_matrix, lbs, rigid_transforms

rotvecs = st.lists(st.floats(-7.0, 7.0, allow_nan=False), min_size=3, max_size=3)


# ------------------------------------------------------------------------ axis_angle_to_matrix
@settings(max_examples=25, deadline=None)
@given(rotvecs)
def test_axis_angle_matches_scipy_and_is_a_rotation(v):
    r = axis_angle_to_matrix(torch.tensor(v, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(r, Rotation.from_rotvec(v).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(r @ np.asarray(v), v, atol=1e-12)  # the axis stays put


@settings(max_examples=25, deadline=None)
@given(rotvecs)
def test_the_opposite_rotation_is_the_transpose(v):
    t = torch.tensor(v, dtype=torch.float64)
    np.testing.assert_allclose(axis_angle_to_matrix(-t).numpy(), axis_angle_to_matrix(t).numpy().T,
                               atol=1e-12)


def test_zero_is_exactly_the_identity():
    r = axis_angle_to_matrix(torch.zeros(2, 4, 3, dtype=torch.float64))
    assert r.shape == (2, 4, 3, 3)
    assert torch.equal(r, torch.eye(3, dtype=torch.float64).expand(2, 4, 3, 3))


@pytest.mark.parametrize("size", [1e-4, 1e-7, 1e-9])
def test_tiny_angles_match_scipy_on_both_sides_of_the_series_switch(size):
    v = np.array([0.3, -0.5, 0.8]) * size  # |v|² from 1e-8 down to 1e-18 (the series below 1e-12)
    r = axis_angle_to_matrix(torch.tensor(v)).numpy()
    np.testing.assert_allclose(r, Rotation.from_rotvec(v).as_matrix(), atol=1e-15)
    assert r[1, 0] == pytest.approx(v[2], abs=size**2)  # first order: I + [v]×


def test_the_gradient_at_zero_is_the_cross_product_generator():
    """Smooth at zero: dR/dv_i = [e_i]× there (no NaN from the square root of |v|²)."""
    jac = torch.autograd.functional.jacobian(axis_angle_to_matrix, torch.zeros(3, dtype=torch.float64))
    assert torch.isfinite(jac).all()
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1.0
        np.testing.assert_allclose(jac[..., i].numpy(), _cross(e), atol=1e-12)


def _cross(e):
    """[e]×, the matrix with [e]× x = e × x."""
    x, y, z = e
    return np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])


def test_batched_shapes_and_float32():
    v = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(0))
    r = axis_angle_to_matrix(v)
    assert r.shape == (7, 5, 3, 3) and r.dtype == torch.float32
    np.testing.assert_allclose(r.numpy(), Rotation.from_rotvec(v.reshape(-1, 3).numpy()).as_matrix()
                               .reshape(7, 5, 3, 3), atol=1e-5)


# ----------------------------------------------------------------------------- a small rig
PARENTS = torch.tensor([-1, 0, 1, 1, 1])  # global → neck → (jaw, left eye, right eye)


def rig(n_vertices=40, seed=0):
    """Shaped vertices (2, V, 3) mm, a joint regressor (5, V) whose rows are convex combinations,
    skinning weights (V, 5) summing to 1 and pose correctives (9·4, 3V)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(2, n_vertices, 3, generator=g, dtype=torch.float64) * 60.0
    j_reg = torch.rand(5, n_vertices, generator=g, dtype=torch.float64)
    j_reg /= j_reg.sum(1, keepdim=True)
    w = torch.rand(n_vertices, 5, generator=g, dtype=torch.float64) ** 4
    w /= w.sum(1, keepdim=True)
    posedirs = torch.randn(9 * 4, 3 * n_vertices, generator=g, dtype=torch.float64)
    return v, j_reg, w, posedirs


def test_the_zero_pose_returns_the_shaped_vertices_and_regressed_joints():
    v, j_reg, w, posedirs = rig()
    verts, joints = lbs(v, torch.zeros(2, 15, dtype=torch.float64), j_reg, PARENTS, w, posedirs)
    torch.testing.assert_close(verts, v, atol=1e-10, rtol=0)
    torch.testing.assert_close(joints, torch.einsum("jv,bvc->bjc", j_reg, v), atol=1e-10, rtol=0)


@settings(max_examples=25, deadline=None)
@given(rotvecs)
def test_a_global_rotation_turns_the_whole_mesh_about_the_root_joint(rv):
    v, j_reg, w, posedirs = rig()
    pose = torch.zeros(2, 15, dtype=torch.float64)
    pose[:, :3] = torch.tensor(rv, dtype=torch.float64)
    verts, joints = lbs(v, pose, j_reg, PARENTS, w, posedirs)
    r = torch.tensor(Rotation.from_rotvec(rv).as_matrix())
    rest = torch.einsum("jv,bvc->bjc", j_reg, v)
    root = rest[:, :1]
    torch.testing.assert_close(verts, (v - root) @ r.T + root, atol=1e-9, rtol=0)
    torch.testing.assert_close(joints, (rest - root) @ r.T + root, atol=1e-9, rtol=0)


def test_a_child_joint_turns_only_what_it_skins_about_itself():
    v, j_reg, _, _ = rig()
    w = torch.zeros(40, 5, dtype=torch.float64)
    w[:20, 0] = 1.0  # the first half follows the root, the second the jaw (joint 2)
    w[20:, 2] = 1.0
    pose = torch.zeros(2, 15, dtype=torch.float64)
    pose[:, 6:9] = torch.tensor([0.4, 0.0, 0.0], dtype=torch.float64)
    verts, joints = lbs(v, pose, j_reg, PARENTS, w, None)
    r = torch.tensor(Rotation.from_rotvec([0.4, 0.0, 0.0]).as_matrix())
    jaw = torch.einsum("jv,bvc->bjc", j_reg, v)[:, 2:3]
    torch.testing.assert_close(verts[:, :20], v[:, :20], atol=1e-10, rtol=0)
    torch.testing.assert_close(verts[:, 20:], (v[:, 20:] - jaw) @ r.T + jaw, atol=1e-9, rtol=0)
    torch.testing.assert_close(joints[:, 2:3], jaw, atol=1e-10, rtol=0)  # a joint turns about itself


def test_pose_correctives_are_added_from_the_rotations_minus_identity():
    v, j_reg, _, posedirs = rig()
    w = torch.zeros(40, 5, dtype=torch.float64)
    w[:, 0] = 1.0  # the root is not rotated: vertices move by the correctives alone
    pose = torch.zeros(2, 15, dtype=torch.float64)
    pose[0, 3:6] = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    pose[1, 9:12] = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)
    verts, _ = lbs(v, pose, j_reg, PARENTS, w, posedirs)
    rots = torch.tensor(Rotation.from_rotvec(pose.reshape(-1, 3).numpy()).as_matrix()).reshape(2, 5, 3, 3)
    feature = (rots[:, 1:] - torch.eye(3, dtype=torch.float64)).reshape(2, -1)
    torch.testing.assert_close(verts, v + (feature @ posedirs).reshape(2, 40, 3), atol=1e-9, rtol=0)
    plain, _ = lbs(v, pose, j_reg, PARENTS, w, None)
    torch.testing.assert_close(plain, v, atol=1e-10, rtol=0)  # without correctives: unchanged


def test_given_joints_replace_the_regressor():
    """A subset of the mesh is posed with the full mesh's rest joints (j_regressor unused)."""
    v, j_reg, w, posedirs = rig()
    pose = torch.randn(2, 15, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.3
    full, full_joints = lbs(v, pose, j_reg, PARENTS, w, posedirs)
    rest = torch.einsum("jv,bvc->bjc", j_reg, v)
    keep = torch.arange(0, 40, 3)
    sub_posedirs = posedirs.reshape(36, 40, 3)[:, keep].reshape(36, -1)
    part, joints = lbs(v[:, keep], pose, None, PARENTS, w[keep], sub_posedirs, joints=rest)
    torch.testing.assert_close(part, full[:, keep], atol=1e-9, rtol=0)
    torch.testing.assert_close(joints, full_joints, atol=1e-9, rtol=0)


def test_rigid_transforms_compose_down_the_chain():
    joints = torch.tensor([[[0.0, 0, 0], [0, 10, 0], [0, 10, 5], [3, 12, 0], [-3, 12, 0]]],
                          dtype=torch.float64)
    rots = torch.eye(3, dtype=torch.float64).repeat(1, 5, 1, 1)
    rz = torch.tensor(Rotation.from_rotvec([0, 0, np.pi / 2]).as_matrix())
    rots[0, 0] = rz  # the root turns 90° about z
    rots[0, 1] = rz  # and the neck another 90°
    posed, skin = rigid_transforms(rots, joints, PARENTS)
    # neck (0, 10, 0) → (-10, 0, 0); jaw offset (0, 0, 5) from the neck, turned 180°: unchanged z
    np.testing.assert_allclose(posed[0, 1].numpy(), [-10, 0, 0], atol=1e-12)
    np.testing.assert_allclose(posed[0, 2].numpy(), [-10, 0, 5], atol=1e-12)
    np.testing.assert_allclose(posed[0, 3].numpy(), [-10 - 3, -2, 0], atol=1e-12)  # (3, 2) turned 180°
    # a skinning transform maps the rest joint onto the posed one
    rest_h = torch.cat([joints, torch.ones(1, 5, 1, dtype=torch.float64)], -1)
    mapped = torch.einsum("bjmn,bjn->bjm", skin, rest_h)[..., :3]
    torch.testing.assert_close(mapped, posed, atol=1e-12, rtol=0)
    assert (skin[..., 3, :] == torch.tensor([0, 0, 0, 1.0], dtype=torch.float64)).all()
