"""The skull side of a query: a mesh in millimetres and its craniometric landmarks.

    skull = Skull.load("case17.ply")                      # finds case17.landmarks.json next to it
    skull = Skull.load("case17.stl", landmarks="case17.pp", units="cm")
    points, present = skull.landmark_array()              # (36, 3) mm (NaN where absent), (36,) bool

Landmarks are named by the pair keys of :data:`skullsearch.SOFT_TISSUE_NAMES` (``n`` nasion,
``pg`` pogonion, ``zy_l`` left zygion…); common names are accepted as aliases. A skull arrives in
any frame; nothing here assumes one. Missing landmarks are normal (partial skulls).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES


@dataclass
class Skull:
    """mesh: trimesh.Trimesh in mm; landmarks: {pair key: (3,) mm} on (or snapped to) the surface;
    path / sha256: the mesh file and the hash of its bytes; landmarks_path / landmarks_sha256: the
    landmark file; units: the units the file was read in ("mm", "cm" or "m", converted to mm);
    warnings: what was repaired or snapped, for the user and the audit log."""

    mesh: object
    landmarks: dict[str, np.ndarray]
    path: str | None = None
    sha256: str | None = None
    landmarks_path: str | None = None
    landmarks_sha256: str | None = None
    units: str = "mm"
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | os.PathLike, landmarks: str | os.PathLike | dict | None = None,
             units: str | None = None, snap_mm: float = 2.0, **kw) -> Skull:
        """Read a skull mesh and its landmarks; see :func:`skullsearch.retrieval.skull_io.read_skull`
        (``kw``: its ``max_snap_mm``)."""
        from skullsearch.retrieval.skull_io import read_skull

        return cls(**read_skull(path, landmarks=landmarks, units=units, snap_mm=snap_mm, **kw))

    def landmark_array(self) -> tuple[np.ndarray, np.ndarray]:
        """(36, 3) float64 landmark positions in SOFT_TISSUE_NAMES order (NaN where absent) and the
        (36,) bool presence mask."""
        pts = np.full((len(SOFT_TISSUE_NAMES), 3), np.nan)
        for i, name in enumerate(SOFT_TISSUE_NAMES):
            if name in self.landmarks:
                pts[i] = self.landmarks[name]
        return pts, ~np.isnan(pts[:, 0])

    @property
    def n_present(self) -> int:
        return int(self.landmark_array()[1].sum())


def load_skull(path: str | os.PathLike, landmarks=None, units: str | None = None, snap_mm: float = 2.0,
               **kw) -> Skull:
    """:meth:`Skull.load` as a function."""
    return Skull.load(path, landmarks=landmarks, units=units, snap_mm=snap_mm, **kw)
