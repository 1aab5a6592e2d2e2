"""skullsearch.inpaint — re-synthesis of the winning faces through the skull's extended landmarks.

Face regions (:mod:`.regions`), normalized rendering (:mod:`.raster`), F3DMM-GC, the direct fit
of the face code (:mod:`.fit`), GII-GC, the GAN inpainting (:mod:`.gan`, :mod:`.gii`), and
:func:`reconstruct`, which runs them on a query's candidates (:mod:`.reconstruct`).
"""

from skullsearch.inpaint.fit import FitResult, FitWeights, f3dmm_gc
from skullsearch.inpaint.gan import (
    Inpainter,
    InpainterCheckpointError,
    InpainterMissingError,
    default_inpainter_path,
    load_inpainter,
    train_inpainter,
)
from skullsearch.inpaint.gii import GIIResult, GIIWeights, gii_gc
from skullsearch.inpaint.raster import NormalizedRender, render_normalized
from skullsearch.inpaint.reconstruct import (
    Reconstruction,
    ReconstructionError,
    ReconstructionResult,
    reconstruct,
    write_reconstruction,
)
from skullsearch.inpaint.regions import FaceRegions, face_regions, revised_vertices

__all__ = [
    "FaceRegions", "face_regions", "revised_vertices",
    "NormalizedRender", "render_normalized",
    "FitResult", "FitWeights", "f3dmm_gc",
    "Inpainter", "InpainterCheckpointError", "InpainterMissingError", "default_inpainter_path",
    "load_inpainter", "train_inpainter", "GIIResult", "GIIWeights", "gii_gc",
    "Reconstruction", "ReconstructionError", "ReconstructionResult", "reconstruct", "write_reconstruction",
]
