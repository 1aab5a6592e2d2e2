"""The plain data of a FLAME-format face model: its arrays and the points it carries.

:class:`FaceModelArrays` (the arrays, millimetres) and :class:`SurfacePoints` (points on the
surface as triangle + barycentric weights), and :func:`topology_hash`, what an annotation is keyed
by. They sit below every module that builds, annotates or evaluates a model (``face_model``,
``annotate``, ``calibrate``, ``builtin_models``, the exporters), so that those import one way;
:mod:`skullsearch.encoder.face_model` re-exports them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from skullsearch.errors import LandmarkError


def topology_hash(n_vertices: int, faces: np.ndarray) -> str:
    """sha256 of the vertex count and the triangle list (F, 3): what an annotation is keyed by."""
    h = hashlib.sha256(np.int64(n_vertices).tobytes())
    h.update(np.ascontiguousarray(faces, dtype=np.int64).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SurfacePoints:
    """Points carried by a topology: triangle index and barycentric weights per point.

    faces: (K,) int64 triangle indices; bary: (K, 3) float32 weights summing to 1;
    names: K names (optional).
    """

    faces: np.ndarray
    bary: np.ndarray
    names: tuple[str, ...] = ()

    def __post_init__(self):
        faces = np.asarray(self.faces, dtype=np.int64).reshape(-1)
        bary = np.asarray(self.bary, dtype=np.float32).reshape(-1, 3)
        if len(faces) != len(bary):
            raise LandmarkError(
                f"surface points: {len(faces)} triangle indices but {len(bary)} barycentric rows"
            )
        object.__setattr__(self, "faces", faces)
        object.__setattr__(self, "bary", bary)
        object.__setattr__(self, "names", tuple(self.names))

    def __len__(self) -> int:
        return len(self.faces)

    @classmethod
    def at_vertices(cls, triangles: np.ndarray, vertex_ids, names=()) -> SurfacePoints:
        """Points exactly at mesh vertices: for each id (K,), the first triangle of ``triangles``
        (F, 3) that uses it, with all the weight on that corner. An id no triangle uses raises
        :class:`LandmarkError` naming it."""
        tri = np.asarray(triangles, np.int64)
        ids = np.asarray(vertex_ids, np.int64).reshape(-1)
        flat = tri.reshape(-1)
        first = np.full(max(int(flat.max(initial=-1)), int(ids.max(initial=-1))) + 1, -1, np.int64)
        first[flat[::-1]] = np.arange(flat.size)[::-1]  # the smallest position wins
        pos = np.where(ids >= 0, first[np.maximum(ids, 0)], -1)
        if (pos < 0).any():
            raise LandmarkError(f"vertex {int(ids[np.argmax(pos < 0)])} is not on the mesh")
        return cls(pos // 3, np.eye(3, dtype=np.float32)[pos % 3], names)

    def evaluate(self, vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
        """vertices (B, V, 3), triangles (F, 3) int64 → points (B, K, 3)."""
        corner_ids = triangles[torch.as_tensor(self.faces, device=vertices.device)]  # (K, 3)
        corners = vertices[:, corner_ids]  # (B, K, 3, 3)
        bary = torch.as_tensor(self.bary, dtype=vertices.dtype, device=vertices.device)
        return (corners * bary[None, :, :, None]).sum(2)

    def to_json(self) -> dict:
        return {
            "names": list(self.names),
            "faces": self.faces.tolist(),
            "bary": np.round(self.bary.astype(np.float64), 7).tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> SurfacePoints:
        return cls(np.asarray(data["faces"]), np.asarray(data["bary"]), tuple(data.get("names", ())))


@dataclass
class FaceModelArrays:
    """The arrays of a FLAME-format model, millimetres.

    v_template (V, 3) · faces (F, 3) int64 · shapedirs (V, 3, S) · exprdirs (V, 3, E) ·
    posedirs (V, 3, 9(J-1)) · j_regressor (J, V) · weights (V, J) · parents (J,) int64 ·
    shape_std (S,) and expression_std (E,) prior scales of the coefficients.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    shape_std: np.ndarray | None = None
    expression_std: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
