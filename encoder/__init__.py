"""Face side: FLAME-format face models, landmark annotation, image → code (later issues)."""

from skullsearch.encoder.face_model import FaceModel, SOFT_TISSUE_NAMES

__all__ = ["FaceModel", "SOFT_TISSUE_NAMES"]
