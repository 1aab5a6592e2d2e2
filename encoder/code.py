"""The face code: one vector of 228 floats per face, its layout named here and nowhere else.

Paper sizes (Liu & Li): α shape 90, δ expression 90, θ pose 15 (global, neck, jaw, left eye,
right eye; axis-angle), T camera rotation 3 (axis-angle), t camera translation 3 (mm, camera
frame), γ illumination 27 (3-band spherical harmonics × RGB).

A model with fewer components than the layout (the open model has 52 expressions) leaves the
extra slots at zero; one with more uses the leading ones.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # (torch is imported only where a tensor is given: numpy callers never need it)
    import torch

#: (name, size) in order.
LAYOUT: tuple[tuple[str, int], ...] = (
    ("shape", 90),
    ("expression", 90),
    ("pose", 15),
    ("cam_rot", 3),
    ("cam_trans", 3),
    ("light", 27),
)
CODE_SIZE = sum(n for _, n in LAYOUT)  # 228
#: Shape and expression coefficients a code holds (a model with more uses the leading ones).
N_SHAPE = 90
N_EXPRESSION = 90
#: The jaw's axis-angle within the pose part (joints: global, neck, jaw, left eye, right eye).
JAW_POSE = slice(6, 9)


def _slices() -> dict[str, slice]:
    out, start = {}, 0
    for name, n in LAYOUT:
        out[name] = slice(start, start + n)
        start += n
    return out


#: name → slice into a code vector.
SLICES: dict[str, slice] = _slices()


@dataclass
class CodeParts:
    """A batch of codes split into its parts (numpy or torch, leading batch axis B).

    shape (B, 90), expression (B, 90), pose (B, 15), cam_rot (B, 3), cam_trans (B, 3),
    light (B, 27).
    """

    shape: np.ndarray | torch.Tensor
    expression: np.ndarray | torch.Tensor
    pose: np.ndarray | torch.Tensor
    cam_rot: np.ndarray | torch.Tensor
    cam_trans: np.ndarray | torch.Tensor
    light: np.ndarray | torch.Tensor


def split(codes):
    """(B, 228) → :class:`CodeParts` (views, same array type)."""
    if codes.shape[-1] != CODE_SIZE:
        raise ValueError(f"a face code has {CODE_SIZE} numbers, got {codes.shape[-1]}")
    return CodeParts(**{name: codes[..., s] for name, s in SLICES.items()})


def pack(shape=None, expression=None, pose=None, cam_rot=None, cam_trans=None, light=None,
         batch_size: int | None = None):
    """Parts → (B, 228) codes. Each part may be shorter than its slot (zero-padded) or None.

    Returns torch when any part is a tensor, numpy otherwise.
    """
    parts = dict(shape=shape, expression=expression, pose=pose, cam_rot=cam_rot,
                 cam_trans=cam_trans, light=light)
    given = [p for p in parts.values() if p is not None]
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    use_torch = torch is not None and any(torch.is_tensor(p) for p in given)
    bsz = batch_size or (len(given[0]) if given else 1)
    if use_torch:
        ref = next(p for p in given if torch.is_tensor(p))
        out = torch.zeros(bsz, CODE_SIZE, dtype=ref.dtype, device=ref.device)
    else:
        out = np.zeros((bsz, CODE_SIZE), np.float32)
    for name, value in parts.items():
        if value is None:
            continue
        s = SLICES[name]
        width = min(value.shape[-1], s.stop - s.start)
        if use_torch:
            value = torch.as_tensor(value, dtype=out.dtype, device=out.device)
        out[:, s.start: s.start + width] = value[:, :width]
    return out
