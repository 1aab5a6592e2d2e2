"""Face side: FLAME-format face models, landmark annotation, rendering, detection.

Imports nothing else of skullsearch's subpackages (README, Layout). The names below load on
first use (PEP 562), so a module of this package that needs no torch (``atomic``, ``code``
layout constants, ``soft_tissue``) can be imported without it.
"""

import importlib

__all__ = ["FaceModel", "SurfacePoints", "SOFT_TISSUE_NAMES"]
_EXPORTS = {"FaceModel": "skullsearch.encoder.face_model",
            "SurfacePoints": "skullsearch.encoder.face_model",
            "SOFT_TISSUE_NAMES": "skullsearch.encoder.soft_tissue"}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'skullsearch.encoder' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
