"""Face side: FLAME-format face models, landmark annotation, rendering, detection.

Imports nothing else of skullsearch's subpackages (README, Layout). The names below load on
first use (PEP 562), so a module of this package that needs no torch (``atomic``, ``code``
layout constants, ``soft_tissue``) can be imported without it.
"""

from skullsearch.meta import lazy_getattr

__all__ = ["FaceModel", "SurfacePoints", "SOFT_TISSUE_NAMES"]
_EXPORTS = {"FaceModel": "skullsearch.encoder.face_model",
            "SurfacePoints": "skullsearch.encoder.face_model",
            "SOFT_TISSUE_NAMES": "skullsearch.encoder.soft_tissue"}
__getattr__ = lazy_getattr("skullsearch.encoder", _EXPORTS, globals())
