"""Shared helpers of the benchmarks: synthetic faces and cameras with known ground truth."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def random_faces(model, n: int, rng, n_shape: int = 90, expr_scale: float = 0.15):
    """Codes drawn from the prior: shape (n, S) ~ N(0, σ), sparse non-negative expressions
    (n, E), jaw opening (n, 15)."""
    s = min(n_shape, model.n_shape)
    shape = rng.standard_normal((n, s)) * model.shape_std[:s]
    expr = np.clip(rng.standard_normal((n, model.n_expression)) * expr_scale, 0, None)
    expr *= rng.random((n, model.n_expression)) < 0.2
    pose = np.zeros((n, 3 * model.n_joints))
    pose[:, 6] = rng.uniform(0.0, 0.12, n)
    return (torch.tensor(shape, dtype=torch.float32), torch.tensor(expr, dtype=torch.float32),
            torch.tensor(pose, dtype=torch.float32))


def random_cameras(n: int, rng, max_yaw: float = 30.0, size: int = 512, focal_factor: float = 1.2):
    """Realistic portrait cameras: yaw ±max_yaw°, pitch ±10°, roll ±5°, 0.45–0.9 m away.
    Returns (rotvec (n, 3), trans (n, 3) mm, focal (n,), image sizes (n, 2))."""
    yaw = np.deg2rad(rng.uniform(-max_yaw, max_yaw, n))
    pitch = np.deg2rad(rng.uniform(-10, 10, n))
    roll = np.deg2rad(rng.uniform(-5, 5, n))
    rot = np.stack([pitch, yaw, roll], 1)
    trans = np.stack([rng.uniform(-20, 20, n), rng.uniform(-50, -10, n), rng.uniform(450, 900, n)], 1)
    focal = np.full(n, focal_factor * size)
    sizes = np.full((n, 2), size)
    return (torch.tensor(rot, dtype=torch.float32), torch.tensor(trans, dtype=torch.float32),
            torch.tensor(focal, dtype=torch.float32), sizes)


def emit(result: dict) -> None:
    """Print the benchmark's JSON object as the last line."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True))
