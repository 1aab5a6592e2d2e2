"""The face-code layout (encoder/code.py): the slices, split / pack, zero padding and truncation,
numpy vs torch."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from skullsearch.encoder import code


def test_the_layout_is_the_papers_228_numbers_in_order():
    assert [name for name, _ in code.LAYOUT] == ["shape", "expression", "pose", "cam_rot", "cam_trans",
                                                 "light"]
    assert dict(code.LAYOUT) == {"shape": 90, "expression": 90, "pose": 15, "cam_rot": 3, "cam_trans": 3,
                                 "light": 27}
    assert code.CODE_SIZE == 228
    assert code.N_SHAPE == dict(code.LAYOUT)["shape"]
    assert code.N_EXPRESSION == dict(code.LAYOUT)["expression"]


def test_the_slices_tile_the_code_without_gaps_or_overlaps():
    s = code.SLICES
    assert list(s) == [name for name, _ in code.LAYOUT]
    assert s["shape"] == slice(0, 90) and s["expression"] == slice(90, 180)
    assert s["pose"] == slice(180, 195) and s["cam_rot"] == slice(195, 198)
    assert s["cam_trans"] == slice(198, 201) and s["light"] == slice(201, 228)
    covered = np.concatenate([np.arange(228)[sl] for sl in s.values()])
    np.testing.assert_array_equal(covered, np.arange(228))


def test_the_jaw_is_the_third_joint_of_the_pose():
    pose = np.arange(15).reshape(5, 3)  # joints: global, neck, jaw, left eye, right eye
    np.testing.assert_array_equal(np.arange(15)[code.JAW_POSE], pose[2])


def test_split_gives_views_of_each_part():
    codes = np.arange(2 * 228, dtype=np.float32).reshape(2, 228)
    parts = code.split(codes)
    assert parts.shape.shape == (2, 90) and parts.light.shape == (2, 27)
    np.testing.assert_array_equal(parts.cam_trans[1], [228 + 198, 228 + 199, 228 + 200])
    parts.pose[0, 0] = -1.0  # a view: writes go through to the code
    assert codes[0, 180] == -1.0


def test_split_of_torch_codes_keeps_torch_and_gradients():
    codes = torch.randn(3, 228, dtype=torch.float64, requires_grad=True)
    parts = code.split(codes)
    assert torch.is_tensor(parts.expression) and parts.expression.dtype == torch.float64
    parts.cam_rot.sum().backward()
    grad = codes.grad.numpy()
    assert (grad[:, 195:198] == 1).all() and grad.sum() == 3 * 3


@pytest.mark.parametrize("width", [227, 229, 90])
def test_split_refuses_a_code_of_another_length(width):
    with pytest.raises(ValueError, match=rf"228 numbers, got {width}"):
        code.split(np.zeros((1, width)))


def test_pack_inverts_split():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(4, 228)).astype(np.float32)
    p = code.split(codes)
    back = code.pack(shape=p.shape, expression=p.expression, pose=p.pose, cam_rot=p.cam_rot,
                     cam_trans=p.cam_trans, light=p.light)
    assert back.dtype == np.float32 and back.shape == (4, 228)
    np.testing.assert_array_equal(back, codes)


def test_pack_zero_pads_a_short_part_and_keeps_the_leading_numbers_of_a_long_one():
    expr = np.full((2, 52), 3.0)  # the open model's 52 expressions
    shape = np.arange(2 * 100, dtype=np.float64).reshape(2, 100)  # a model with more components
    out = code.pack(shape=shape, expression=expr)
    np.testing.assert_array_equal(out[:, :90], shape[:, :90])
    np.testing.assert_array_equal(out[:, 90:142], 3.0)
    assert not out[:, 142:].any()  # the rest of expression and every other part: zeros


def test_pack_without_parts_is_one_zero_code_or_batch_size_of_them():
    assert code.pack().shape == (1, 228) and not code.pack().any()
    assert code.pack(batch_size=5).shape == (5, 228)
    out = code.pack(cam_trans=np.array([[0.0, -30.0, 600.0]]), batch_size=3)  # broadcast one row
    np.testing.assert_array_equal(out[:, 198:201], np.tile([0.0, -30.0, 600.0], (3, 1)))


def test_pack_returns_torch_when_any_part_is_a_tensor():
    shape = np.ones((2, 90))
    pose = torch.full((2, 15), 0.5, dtype=torch.float64)
    out = code.pack(shape=shape, pose=pose)
    assert torch.is_tensor(out) and out.dtype == torch.float64 and out.shape == (2, 228)
    np.testing.assert_array_equal(out[:, :90].numpy(), 1.0)
    np.testing.assert_array_equal(out[:, 180:195].numpy(), 0.5)
    assert not out[:, 90:180].any() and not out[:, 195:].any()


def test_pack_of_tensors_is_differentiable():
    light = torch.randn(2, 27, requires_grad=True)
    out = code.pack(light=light)
    (out * torch.arange(228.0)).sum().backward()
    np.testing.assert_array_equal(light.grad.numpy(), np.tile(np.arange(201.0, 228.0), (2, 1)))


def test_a_numpy_caller_never_imports_torch():
    """The layout is usable without torch (the CLI's listing, the index): importing it and packing
    numpy parts must not pull torch in."""
    prog = ("import sys, numpy as np\n"
            "from skullsearch.encoder import code\n"
            "code.split(code.pack(shape=np.ones((1, 90))))\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    res = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
