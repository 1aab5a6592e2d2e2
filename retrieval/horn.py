"""Batched Horn / QCP alignment algebra shared by the numpy scorer (:mod:`.score`) and its torch
twin (:mod:`.score_torch`): plain arithmetic on nested lists of (B,) arrays, so numpy arrays and
torch tensors alike (each caller passes its own ``stack``)."""

from __future__ import annotations

import numpy as np


def stack_rows(rows):
    return np.stack([np.stack(r, -1) for r in rows], 1)


def adjugate4(a, stack=stack_rows):
    """Adjugate (B, 4, 4) of 4 × 4 matrices given as a nested list a[i][j] of (B,) arrays, and
    their determinants (B,) (Laplace expansion over 2 × 2 minors). stack: nested list of (B,)
    arrays → (B, 4, 4) (numpy by default; the torch scorer passes its own)."""
    s0 = a[0][0] * a[1][1] - a[1][0] * a[0][1]
    s1 = a[0][0] * a[1][2] - a[1][0] * a[0][2]
    s2 = a[0][0] * a[1][3] - a[1][0] * a[0][3]
    s3 = a[0][1] * a[1][2] - a[1][1] * a[0][2]
    s4 = a[0][1] * a[1][3] - a[1][1] * a[0][3]
    s5 = a[0][2] * a[1][3] - a[1][2] * a[0][3]
    c5 = a[2][2] * a[3][3] - a[3][2] * a[2][3]
    c4 = a[2][1] * a[3][3] - a[3][1] * a[2][3]
    c3 = a[2][1] * a[3][2] - a[3][1] * a[2][2]
    c2 = a[2][0] * a[3][3] - a[3][0] * a[2][3]
    c1 = a[2][0] * a[3][2] - a[3][0] * a[2][2]
    c0 = a[2][0] * a[3][1] - a[3][0] * a[2][1]
    det = s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0
    b = [
        [a[1][1] * c5 - a[1][2] * c4 + a[1][3] * c3, -a[0][1] * c5 + a[0][2] * c4 - a[0][3] * c3,
         a[3][1] * s5 - a[3][2] * s4 + a[3][3] * s3, -a[2][1] * s5 + a[2][2] * s4 - a[2][3] * s3],
        [-a[1][0] * c5 + a[1][2] * c2 - a[1][3] * c1, a[0][0] * c5 - a[0][2] * c2 + a[0][3] * c1,
         -a[3][0] * s5 + a[3][2] * s2 - a[3][3] * s1, a[2][0] * s5 - a[2][2] * s2 + a[2][3] * s1],
        [a[1][0] * c4 - a[1][1] * c2 + a[1][3] * c0, -a[0][0] * c4 + a[0][1] * c2 - a[0][3] * c0,
         a[3][0] * s4 - a[3][1] * s2 + a[3][3] * s0, -a[2][0] * s4 + a[2][1] * s2 - a[2][3] * s0],
        [-a[1][0] * c3 + a[1][1] * c1 - a[1][2] * c0, a[0][0] * c3 - a[0][1] * c1 + a[0][2] * c0,
         -a[3][0] * s3 + a[3][1] * s1 - a[3][2] * s0, a[2][0] * s3 - a[2][1] * s1 + a[2][2] * s0],
    ]
    return stack(b), det


def horn_quartic(S):
    """Horn's 4 × 4 quaternion matrix N of correlation matrices S (B, 3, 3) as a nested list of
    (B,) arrays, and the coefficients (c2, c1) of its characteristic quartic λ⁴ + c2 λ² + c1 λ + c0
    (c0 = det N) and ‖S‖²_F (B,). Plain arithmetic: numpy arrays and torch tensors alike."""
    xx, xy, xz = S[:, 0, 0], S[:, 0, 1], S[:, 0, 2]
    yx, yy, yz = S[:, 1, 0], S[:, 1, 1], S[:, 1, 2]
    zx, zy, zz = S[:, 2, 0], S[:, 2, 1], S[:, 2, 2]
    n = [[xx + yy + zz, yz - zy, zx - xz, xy - yx],
         [None, xx - yy - zz, xy + yx, zx + xz],
         [None, None, -xx + yy - zz, yz + zy],
         [None, None, None, -xx - yy + zz]]
    for i in range(4):
        for j in range(i):
            n[i][j] = n[j][i]
    f2 = (S * S).sum((1, 2))
    c1 = -8.0 * (xx * (yy * zz - yz * zy) - xy * (yx * zz - yz * zx) + xz * (yx * zy - yy * zx))
    return n, -2.0 * f2, c1, f2


def quaternion_rotation(q, stack=stack_rows):
    """Rotation matrices (B, 3, 3) of unit quaternions q (B, 4) (w, x, y, z)."""
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return stack([
        [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
    ])
