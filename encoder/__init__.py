"""Face side: FLAME-format face models, landmark annotation, rendering, detection.

Imports nothing else of skullsearch's subpackages (DESIGN.md §3).
"""

from skullsearch.encoder.face_model import FaceModel, SurfacePoints
from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

__all__ = ["FaceModel", "SurfacePoints", "SOFT_TISSUE_NAMES"]
