"""The default face model: the ICT Face Model Light exported to the FLAME layout.

The ICT Face Model Light (© 2020 USC Institute for Creative Technologies, MIT licence; the
ICT-FaceKit repository) is learned from registered light-stage scans: 100 identity principal
components (each already scaled by its standard deviation, so identities are sampled as
neutral + Σ wᵢ·identityᵢ with wᵢ ~ N(0, 1)) and 53 ARKit-named expression shapes on one
26,719-vertex topology that also carries mouth and eye sockets, teeth, gums, eyeballs, eyelashes.

The export (:func:`build_arrays`, run once by ``python -m skullsearch.encoder.ict_head``; the
result ships in the package as ``encoder/data/ict-face-model-light.npz``):

- **surface**: the skin (the source's ``face`` and ``head_and_neck`` parts, one connected
  surface) plus the two eyeballs as separate parts, so renders show eyes; the eyeballs are not
  connected to the skin, so everything that works on the skin (its largest connected part:
  soft-tissue points, regions, scoring, reconstruction) leaves them out. Sockets, teeth, gums,
  lacrimal and occlusion shells and eyelashes are dropped.
- **shape**: the first :data:`N_SHAPE` (90) identity components, prior SD 1 (the source's own
  statistics).
- **expression**: the 53 expression shapes in the expression slots, prior SD
  :data:`EXPRESSION_STD` per coefficient (one unit = the full ARKit action).
- **rig**: 5 joints in FLAME order — global at the base of the neck, neck at the middle of the
  head at the height of the jaw joints, jaw, left eye, right eye — placed on the neutral head
  and regressed from nearby vertices so that they follow the shape. The jaw's pivot is the
  rotation axis that best explains the source's ``jawOpen`` shape; each skin vertex's jaw
  weight is the share of a rigid jaw rotation that ``jawOpen`` moves it by. The head turns on
  the neck joint with weights that fade to the global joint down the neck. No pose correctives.
- **frame**: the source's (mm, +x subject's left, +y up, +z out of the face), origin moved to the
  midpoint of the eyeball centres as for every skullsearch model.
- **annotation**: the 36 soft-tissue points by the automatic annotator
  (:mod:`skullsearch.encoder.annotate`) from the source's 68 Multi-PIE landmark vertices (kept in
  ``meta["source_landmarks68"]``); the 68-point embedding the encoder fits to is then *calibrated
  to dlib* (:mod:`skullsearch.encoder.calibrate`: the inner 51 points where dlib puts them on
  renders of faces sampled from the prior; the jaw line stays the source's): on renders through
  the real detector it brings the fitted identity from 1.11–1.19× to 0.95–1.00× the mean face's
  error (``benchmarks/encoder_images.py``, 3 × 96 renders not used in the calibration).

Arrays are stored as float16 where that loses under 0.01 mm (the bases); they load as float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skullsearch.encoder.builtin_models import ICT_PACKAGED
from skullsearch.errors import FaceModelError

log = logging.getLogger(__name__)

#: The packaged export (``FaceModel.default()`` loads it: :mod:`skullsearch.encoder.builtin_models`).
PACKAGED = ICT_PACKAGED
#: Its licence, shipped beside it.
LICENCE_FILE = Path(__file__).parent / "data" / "ict-face-model-light.LICENSE"
ATTRIBUTION = "ICT Face Model Light, © 2020 USC Institute for Creative Technologies, MIT licence"
#: Bump when the export changes.
EXPORT_VERSION = 1
N_SHAPE = 90
EXPRESSION_STD = 0.3
JOINT_NAMES = ("global", "neck", "jaw", "eye_l", "eye_r")
#: Source parts kept: the skin (one connected surface) and the eyeballs.
SKIN_PARTS = ("face", "head_and_neck")
EYE_PARTS = ("eyeball_left", "eyeball_right")
#: Source keys a repacked ICT file must have.
SOURCE_KEYS = ("neutral", "identity", "expression", "expression_names", "faces", "group_names",
               "group_ranges", "landmarks68")


def read_source(path: str | Path) -> dict:
    """Read a repacked ICT Face Model Light ``.npz`` (see the module docstring): a dict of arrays.

    Raises :class:`FaceModelError` naming what is wrong with a missing, damaged or foreign file.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in SOURCE_KEYS if k not in f.files]
            if missing:
                raise FaceModelError(f"{path}: not a repacked ICT Face Model Light file (lacks "
                                     f"{', '.join(missing)})")
            return {k: f[k] for k in f.files}
    except FaceModelError:
        raise
    except Exception as e:  # zip/format errors: the message names the file and what to do
        raise FaceModelError(f"cannot read the ICT model file {path}: {e}; give the repacked "
                             "ict_face_model_light.npz") from None


def _triangles(polys: np.ndarray) -> np.ndarray:
    """(F, 4) polygons padded with −1 → (T, 3) triangles (fan)."""
    polys = np.asarray(polys, dtype=np.int64)
    quad = polys[:, 3] >= 0
    tri = [polys[:, :3], polys[quad][:, [0, 2, 3]]]
    return np.concatenate(tri)


def _part(src: dict, name: str) -> tuple[int, int]:
    names = [str(n) for n in src["group_names"]]
    if name not in names:
        raise FaceModelError(f"ICT model file lacks the part {name!r} (has {', '.join(names)})")
    a, b = src["group_ranges"][names.index(name)]
    return int(a), int(b)


def _point_regressor(v0: np.ndarray, pool: np.ndarray, target: np.ndarray, k: int = 60,
                     ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Weights over the ``k`` vertices of ``pool`` nearest to ``target`` with Σ w = 1 and
    Σ w v = target on the neutral head (least squares, ridge toward the plain average).

    v0 (V, 3); pool (n,) vertex ids; target (3,). Returns (ids (k,), weights (k,)).
    """
    d = np.linalg.norm(v0[pool] - target, axis=1)
    ids = pool[np.argsort(d)[:k]]
    a = np.vstack([v0[ids].T, 1e3 * np.ones((1, len(ids))), ridge * np.eye(len(ids))])
    b = np.concatenate([target, [1e3], ridge * np.full(len(ids), 1.0 / len(ids))])
    return ids, np.linalg.lstsq(a, b, rcond=None)[0]


def _jaw_rotation(v0: np.ndarray, disp: np.ndarray, ids: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    """ω (3,): the small rotation about ``pivot`` that best explains a displacement field,
    disp ≈ ω × (v − pivot), least squares over the vertices ``ids`` (v0, disp (V, 3))."""
    r = v0[ids] - pivot  # ω × r = −[r]× ω
    skew = np.zeros((len(r), 3, 3))
    skew[:, 0, 1], skew[:, 0, 2] = -r[:, 2], r[:, 1]
    skew[:, 1, 0], skew[:, 1, 2] = r[:, 2], -r[:, 0]
    skew[:, 2, 0], skew[:, 2, 1] = -r[:, 1], r[:, 0]
    return np.linalg.lstsq(-skew.reshape(-1, 3), disp[ids].reshape(-1), rcond=None)[0]


@dataclass
class _Kept:
    """The source's kept parts (skin, then the two eyeballs), centred: what the rig is built on.

    v0 (V, 3) float64 mm neutral vertices, origin at the midpoint of the eyeball centres;
    tris (F, 3) int64 triangles over them; n_skin: the first n_skin vertices are the skin
    (``skin`` their ids (n_skin,)), the rest the eyeballs; eye_ids: the vertex ids of each
    eyeball, in the source's part order; eye_c (2, 3) mm their centres; identity (S, V, 3) and
    expression (E, V, 3) mm per unit coefficient; names: the E expression names; lm (68,) int64
    the landmark vertex ids (all on the skin).
    """

    v0: np.ndarray
    tris: np.ndarray
    n_skin: int
    skin: np.ndarray
    eye_ids: list[np.ndarray]
    eye_c: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    names: list[str]
    lm: np.ndarray

    @property
    def p(self) -> np.ndarray:
        """The 68 landmark positions (68, 3) mm on the neutral head."""
        return self.v0[self.lm]


def _kept_triangles(src: dict) -> tuple[np.ndarray, int, list[tuple[int, int]], np.ndarray, np.ndarray]:
    """The vertices kept (skin parts, then eyeball parts) and the triangles among them.

    Returns keep (V,) source vertex ids, n_skin, the eyeball parts' source ranges, remap
    (V_source,) source id → kept id (−1 dropped), tris (F, 3) int64 kept ids.
    """
    skin_ranges = [_part(src, p) for p in SKIN_PARTS]
    eye_ranges = [_part(src, p) for p in EYE_PARTS]
    keep = np.concatenate([np.arange(a, b) for a, b in skin_ranges + eye_ranges])
    n_skin = sum(b - a for a, b in skin_ranges)
    remap = np.full(len(src["neutral"]), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    tris = _triangles(src["faces"])
    tris = remap[tris]
    tris = tris[(tris >= 0).all(1)]
    if len(tris) == 0:
        raise FaceModelError("ICT model file: no triangles on the skin")
    return keep, n_skin, eye_ranges, remap, tris


def _kept_and_centred(src: dict, n_shape: int) -> _Kept:
    """The skin and eyeballs of the source with its first ``n_shape`` identity components,
    moved so that the origin is the midpoint of the eyeball centres (see :class:`_Kept`)."""
    keep, n_skin, eye_ranges, remap, tris = _kept_triangles(src)
    neutral = np.asarray(src["neutral"], np.float64)[keep]
    identity = np.asarray(src["identity"], np.float64)[:, keep]
    expression = np.asarray(src["expression"], np.float64)[:, keep]
    if len(identity) < n_shape:
        raise FaceModelError(f"ICT model file has {len(identity)} identity components, need {n_shape}")
    identity = identity[:n_shape]
    names = [str(n) for n in src["expression_names"]]

    eye_ids = [np.arange(n_skin, n_skin + eye_ranges[0][1] - eye_ranges[0][0])]
    eye_ids.append(np.arange(eye_ids[0][-1] + 1, len(keep)))
    eye_c = np.array([neutral[i].mean(0) for i in eye_ids])
    origin = eye_c.mean(0)
    v0 = neutral - origin
    eye_c -= origin

    lm = remap[np.asarray(src["landmarks68"], np.int64)]
    if (lm < 0).any() or (lm >= n_skin).any():
        raise FaceModelError("ICT model file: a landmark vertex is not on the skin")
    return _Kept(v0=v0, tris=tris, n_skin=n_skin, skin=np.arange(n_skin), eye_ids=eye_ids,
                 eye_c=eye_c, identity=identity, expression=expression, names=names, lm=lm)


def _jaw_rig(k: _Kept) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The jaw joint and its skinning weights, from the source's ``jawOpen`` shape.

    The pivot sits between the jaw joints, placed anatomically from the jaw-line landmarks
    (iBUG 0-2 / 14-16 run down in front of the ears): at the height of landmarks 1/15 (the
    tragus), 15 mm behind landmarks 0/16; jawOpen's motion, read as a rotation about it, sets
    the skinning weights. (jawOpen is not a rigid rotation — the soft tissue stretches — so a
    free fit of the pivot is ill-posed: its residual varies by < 2 % over ±30 mm.)

    Returns jaw_c (3,) mm the pivot, omega (3,) the rotation (axis × angle) that best explains
    jawOpen, w_jaw (V,) in [0, 1] each vertex's share of the jaw's rotation.
    """
    if "jawOpen" not in k.names:
        raise FaceModelError("ICT model file lacks the 'jawOpen' expression the jaw rig is fit to")
    v0, skin, n_skin, p = k.v0, k.skin, k.n_skin, k.p
    jaw_disp = k.expression[k.names.index("jawOpen")]
    mag = np.linalg.norm(jaw_disp[skin], axis=1)
    moving = skin[mag > 0.5 * mag.max()]
    jaw_c = np.array([0.0, (p[1, 1] + p[15, 1]) / 2, (p[0, 2] + p[16, 2]) / 2 - 15.0])
    omega = _jaw_rotation(v0, jaw_disp, moving, jaw_c)
    rigid = np.cross(omega, v0 - jaw_c)  # (V, 3) motion of a rigid jaw rotation
    r2 = (rigid ** 2).sum(1)
    w_jaw = np.where(r2 > 0.25, (jaw_disp * rigid).sum(1) / np.maximum(r2, 1e-9), 0.0)
    w_jaw = np.clip(w_jaw, 0.0, 1.0)
    w_jaw[:n_skin][mag < 0.05] = 0.0
    w_jaw[v0[:, 1] > p[33, 1]] = 0.0  # nothing above the nose's base rides on the jaw
    w_jaw[n_skin:] = 0.0
    return jaw_c, omega, w_jaw


def _neck_rim(k: _Kept) -> np.ndarray:
    """The skin's open boundary below the chin (the neck's cut): vertex ids (n,), n ≥ 3."""
    edges = np.sort(np.concatenate([k.tris[:, [0, 1]], k.tris[:, [1, 2]], k.tris[:, [2, 0]]]), axis=1)
    edges = edges[(edges < k.n_skin).all(1)]
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    rim = np.unique(uniq[count == 1])
    rim = rim[k.v0[rim, 1] < k.p[8, 1] - 40.0]  # below the chin only the neck is open
    if len(rim) < 3:
        raise FaceModelError("ICT model file: the skin has no open neck boundary")
    return rim


def _joints(k: _Kept, jaw_c: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The 5 joints (5, 3) mm on the neutral head in FLAME order, and the eyeballs' vertex ids
    in joint order (left eye, right eye).

    The neck joint sits at the centre of the skin's horizontal section at the jaw joints'
    height; the global joint at the centre of the neck's open boundary.
    """
    band = k.skin[np.abs(k.v0[k.skin, 1] - jaw_c[1]) < 4.0]
    neck_c = k.v0[band].mean(0)
    neck_c[0] = 0.0
    glob_c = k.v0[_neck_rim(k)].mean(0)
    glob_c[0] = 0.0
    joints0 = np.array([glob_c, neck_c, jaw_c, k.eye_c[0], k.eye_c[1]])
    eye_ids = k.eye_ids
    # the source's x is the subject's left: the first eyeball part is the left eye
    if joints0[3, 0] < joints0[4, 0]:
        joints0[[3, 4]] = joints0[[4, 3]]
        eye_ids = eye_ids[::-1]
    return joints0, eye_ids


def _skinning_weights(k: _Kept, jaw_c: np.ndarray, w_jaw: np.ndarray,
                      eye_ids: list[np.ndarray]) -> np.ndarray:
    """Skinning weights (V, 5): the head (neck joint) above a plane that runs under the jaw from
    behind the chin up to the skull base, fading to the global joint over 30 mm below it; the
    head's share split with the jaw by ``w_jaw`` (V,); each eyeball (``eye_ids`` in joint order)
    wholly on its eye joint."""
    p, v0 = k.p, k.v0
    a_pt = np.array([0.0, p[8, 1] - 15.0, p[8, 2] - 25.0])
    b_pt = np.array([0.0, p[8, 1] + 15.0, jaw_c[2] - 85.0])
    normal = np.array([0.0, b_pt[2] - a_pt[2], -(b_pt[1] - a_pt[1])])  # ⊥ to AB in the y-z plane
    normal /= np.linalg.norm(normal) * np.sign(normal[1])  # pointing up
    t = np.clip(((v0 - a_pt) @ normal + 40.0) / 30.0, 0.0, 1.0)
    head = t * t * (3 - 2 * t)
    weights = np.zeros((len(v0), 5))
    weights[:, 0] = 1 - head
    weights[:, 1] = head * (1 - w_jaw)
    weights[:, 2] = head * w_jaw
    for j, ids in ((3, eye_ids[0]), (4, eye_ids[1])):
        weights[ids] = 0.0
        weights[ids, j] = 1.0
    return weights


def _joint_regressor(k: _Kept, joints0: np.ndarray, eye_ids: list[np.ndarray]) -> np.ndarray:
    """J_regressor (5, V): the global, neck and jaw joints (joints0 (5, 3) mm) as weighted means
    of nearby skin vertices (:func:`_point_regressor`), each eye joint as its eyeball's mean."""
    j_reg = np.zeros((5, len(k.v0)))
    for j in range(3):
        ids, w = _point_regressor(k.v0, k.skin, joints0[j])
        j_reg[j, ids] = w
    for j, ids in ((3, eye_ids[0]), (4, eye_ids[1])):
        j_reg[j, ids] = 1.0 / len(ids)
    return j_reg


def build_arrays(source: str | Path | dict, n_shape: int = N_SHAPE) -> dict:
    """Export an ICT Face Model Light file to FLAME-layout arrays (see the module docstring).

    source: the repacked ``.npz`` path or its arrays. Returns a dict with v_template (V, 3),
    faces (F, 3), shapedirs (V, 3, S), exprdirs (V, 3, 53), posedirs (V, 3, 36) zeros,
    J_regressor (5, V), weights (V, 5), parents (5,), shape_std (S,), expression_std (53,),
    landmarks68 (68,) vertex ids, meta. Lengths in millimetres.
    """
    src = read_source(source) if not isinstance(source, dict) else source
    k = _kept_and_centred(src, n_shape)
    jaw_c, omega, w_jaw = _jaw_rig(k)
    joints0, eye_ids = _joints(k, jaw_c)
    weights = _skinning_weights(k, jaw_c, w_jaw, eye_ids)
    j_reg = _joint_regressor(k, joints0, eye_ids)
    n_v = len(k.v0)
    return {
        "v_template": k.v0.astype(np.float32),
        "faces": k.tris.astype(np.int64),
        "shapedirs": k.identity.transpose(1, 2, 0).astype(np.float32),
        "exprdirs": k.expression.transpose(1, 2, 0).astype(np.float32),
        "posedirs": np.zeros((n_v, 3, 36), np.float32),
        "J_regressor": j_reg.astype(np.float32),
        "weights": weights.astype(np.float32),
        "parents": np.array([-1, 0, 1, 1, 1], np.int64),
        "shape_std": np.ones(n_shape, np.float32),
        "expression_std": np.full(len(k.names), EXPRESSION_STD, np.float32),
        "landmarks68": k.lm,
        "meta": {
            "name": "ICT Face Model Light (scan-learned)",
            "source": f"ICT-FaceKit ICT Face Model Light (USC ICT, 2020), skullsearch export "
                      f"v{EXPORT_VERSION}: skin + eyeballs, {n_shape} of {len(src['identity'])} "
                      "identity components",
            "licence": "MIT (" + ATTRIBUTION + ")",
            "attribution": ATTRIBUTION,
            "expression_names": k.names,
            "joint_names": list(JOINT_NAMES),
            "skin_vertices": int(k.n_skin),
            "jaw_axis": [round(float(x), 6) for x in omega / np.linalg.norm(omega)],
        },
    }


#: Renders (and their seed) the packaged embedding is calibrated on.
CALIBRATION_PHOTOS = 300
CALIBRATION_SEED = 0


def build_model(source: str | Path | dict, n_shape: int = N_SHAPE, calibrate: bool = True):
    """A :class:`FaceModel` from an ICT file: the export plus its annotation (the annotator's 36
    soft-tissue points from the 68 source landmarks) and, with ``calibrate``, the 68-point
    embedding calibrated to dlib (:data:`CALIBRATION_PHOTOS` renders; about a minute and a half)."""
    import torch

    from skullsearch.encoder.annotate import annotate
    from skullsearch.encoder.face_model import FaceModel, FaceModelArrays, SurfacePoints

    d = build_arrays(source, n_shape)
    lm_ids = d.pop("landmarks68")
    meta = d.pop("meta")
    model = FaceModel(FaceModelArrays(
        v_template=d["v_template"], faces=d["faces"], shapedirs=d["shapedirs"],
        exprdirs=d["exprdirs"], posedirs=d["posedirs"], j_regressor=d["J_regressor"],
        weights=d["weights"], parents=d["parents"], shape_std=d["shape_std"],
        expression_std=d["expression_std"], meta=meta))
    from skullsearch.encoder.annotate import landmark_embedding

    model.landmarks = landmark_embedding(SurfacePoints.at_vertices(model.faces, lm_ids))
    with torch.no_grad():
        lm3 = model.landmarks68(batch_size=1)[0].numpy().astype(np.float64)
    _, st = annotate(model.v_template, model.faces, lm3)
    model.soft_tissue_points = st
    model.meta["source_landmarks68"] = [int(i) for i in lm_ids]
    model.meta["landmarks68"] = "the source's Multi-PIE vertices"
    if calibrate:
        from skullsearch.encoder.calibrate import calibrate_embedding

        emb, rep = calibrate_embedding(model, photos=CALIBRATION_PHOTOS, seed=CALIBRATION_SEED)
        model.landmarks = emb
        model.meta["landmarks68"] = (f"inner 51 calibrated to dlib on {rep.found} renders (seed "
                                     f"{CALIBRATION_SEED}); jaw line: the source's Multi-PIE vertices")
    return model


def save_packaged(model, path: str | Path = PACKAGED) -> Path:
    """Write the export with its bases as float16 (under 0.01 mm of rounding), compressed."""
    return model.save(path, half_bases=True, compress=True)


def main(argv=None) -> None:  # pragma: no cover - maintenance entry point
    """``python -m skullsearch.encoder.ict_head SOURCE.npz``: rebuild the packaged export."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="the repacked ict_face_model_light.npz")
    p.add_argument("--out", default=str(PACKAGED))
    a = p.parse_args(argv)
    model = build_model(a.source)
    print(save_packaged(model, a.out))


if __name__ == "__main__":  # pragma: no cover
    main()
