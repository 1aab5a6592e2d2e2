"""Identity prior: a face's shape predicted from its person descriptor, as the fit's shape prior.

68 sparse landmarks barely fix a face's shape (``benchmarks/identity.py``: a landmark fit is no
closer to the true face than the mean face). dlib's person descriptor
(:mod:`skullsearch.encoder.descriptors`) does carry shape: on renders of the default model's heads
it tells heads apart (re-shot AUC ≈ 1.0). :func:`train_identity_prior` learns, from renders of
faces drawn from the model's prior (random pose up to ±40° yaw, light, skin tone) through the real
dlib detector and descriptor, a ridge regression descriptor → shape coefficients, and the
residual SD of each coefficient on held-out renders. :meth:`IdentityPrior.shape_prior` turns a
face's descriptor into the fit's prior N(prediction, (scale · residual SD)²)
(:func:`~skullsearch.encoder.fitting.fit_landmarks`'s ``shape_prior``).

**Domain.** It is learned on untextured renders. A descriptor far from the training descriptors
(Mahalanobis distance above 1.05 × the training set's 99.9th percentile, :attr:`domain_limit`) is *out of
domain*: the prior is not applied to it (the plain N(0, σ²) prior is) and the caller is told.
Real photos measured so far lie far outside it (distance 21–24 against a limit of 13.8), so on
real photos this prior is normally not applied: it needs textured renders, or photo + 3D scan
pairs, to cross that gap. It is therefore off by default (``--identity-prior`` turns it on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skullsearch.errors import SkullsearchError

#: the prior's SD as a multiple of the held-out residual SD. The landmark energy's weights are not
#: a calibrated likelihood, so the residual SD is not used as is; 0.5 was chosen on held-out
#: synthetic renders (benchmarks/identity.py measures the result on others).
PRIOR_SCALE = 0.5
RIDGE = 0.1
_STREAM = 0x1D  # the training renders' random stream, apart from the benchmarks'
DATA = Path(__file__).parent / "data"


@dataclass
class IdentityPrior:
    """weights (129, S): ridge regression [descriptor, 1] → shape coefficients; residual_std (S,)
    on held-out renders; desc_mean (128,) and desc_whiten (128, 128) (inverse Cholesky factor of
    the training descriptors' covariance) for the domain test; domain_limit: the Mahalanobis
    distance above which a descriptor is out of domain; model_fingerprint: the face model it was
    learned for; meta: how (renders, seed, held-out figures)."""

    weights: np.ndarray
    residual_std: np.ndarray
    desc_mean: np.ndarray
    desc_whiten: np.ndarray
    domain_limit: float
    model_fingerprint: str
    meta: dict = field(default_factory=dict)

    @property
    def n_shape(self) -> int:
        return int(self.weights.shape[1])

    def domain_distance(self, descs: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (n,) of descriptors (n, 128) from the training descriptors."""
        d = np.asarray(descs, np.float64).reshape(-1, self.desc_mean.shape[0])
        z = (d - self.desc_mean) @ self.desc_whiten.T
        return np.sqrt((z**2).sum(1))

    def predict(self, descs: np.ndarray) -> np.ndarray:
        """Predicted shape coefficients (n, S) of descriptors (n, 128)."""
        d = np.asarray(descs, np.float64).reshape(-1, self.desc_mean.shape[0])
        return np.c_[d, np.ones(len(d))] @ self.weights

    def shape_prior(self, descs: np.ndarray, shape_std: np.ndarray, scale: float = PRIOR_SCALE
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fit's shape prior for faces with descriptors (n, 128) (NaN rows: none): (mean (n, S),
        std (n, S), applied (n,) bool). Where not applied (no descriptor, or out of domain) the
        row is the plain prior N(0, shape_std²)."""
        descs = np.asarray(descs, np.float64).reshape(-1, self.desc_mean.shape[0])
        n, s = len(descs), self.n_shape
        mean = np.zeros((n, s))
        std = np.broadcast_to(np.asarray(shape_std, np.float64)[:s], (n, s)).copy()
        ok = np.isfinite(descs).all(1)
        ok[ok] = self.domain_distance(descs[ok]) <= self.domain_limit
        if ok.any():
            mean[ok] = self.predict(descs[ok])
            std[ok] = scale * self.residual_std
        return mean, std, ok

    def save(self, path) -> Path:
        path = Path(path)
        np.savez_compressed(path, weights=self.weights.astype(np.float32),
                            residual_std=self.residual_std.astype(np.float32),
                            desc_mean=self.desc_mean.astype(np.float32),
                            desc_whiten=self.desc_whiten.astype(np.float32),
                            domain_limit=np.float64(self.domain_limit),
                            model_fingerprint=np.str_(self.model_fingerprint),
                            meta=np.str_(json.dumps(self.meta)))
        return path

    @classmethod
    def load(cls, path) -> IdentityPrior:
        try:
            with np.load(Path(path)) as z:
                return cls(z["weights"].astype(np.float64), z["residual_std"].astype(np.float64),
                           z["desc_mean"].astype(np.float64), z["desc_whiten"].astype(np.float64),
                           float(z["domain_limit"]), str(z["model_fingerprint"]), json.loads(str(z["meta"])))
        except (OSError, KeyError, ValueError) as e:
            raise SkullsearchError(f"{path} is not an identity prior file ({e}): train one with "
                                   "'skullsearch model train-identity-prior'") from None


def packaged_path(model) -> Path:
    return DATA / f"identity-prior-{model.fingerprint[:16]}.npz"


def for_model(model, path=None) -> IdentityPrior:
    """The identity prior of a face model: ``path``, or the one packaged for it."""
    p = Path(path) if path is not None else packaged_path(model)
    if not p.exists():
        raise SkullsearchError(f"no identity prior for the face model {model.meta.get('name', '')!r} "
                               f"({p.name} is not there): train one with 'skullsearch model "
                               "train-identity-prior --out FILE' and pass it")
    prior = IdentityPrior.load(p)
    if prior.model_fingerprint != model.fingerprint:
        raise SkullsearchError(f"{p} was learned for another face model ({prior.model_fingerprint[:12]}, "
                               f"this one is {model.fingerprint[:12]}): train one for this model")
    return prior


def _render_batch(args) -> tuple[np.ndarray, np.ndarray]:
    """Worker: (shape coefficients (m, S), descriptors (m, 128)) of renders found by dlib."""
    import torch

    from skullsearch.encoder.descriptors import face_descriptors
    from skullsearch.encoder.detectors import DlibDetector
    from skullsearch.encoder.face_model import FaceModel
    from skullsearch.encoder.images import DecodedImage
    from skullsearch.encoder.render import random_portrait, texture_regions

    model_path, seed, batch, n, max_yaw, texture = args
    torch.set_num_threads(1)
    model = FaceModel.load(model_path) if model_path else FaceModel.default()
    # a stream of its own (the benchmarks' default_rng(seed) faces are never training faces)
    rng = np.random.default_rng([seed, batch, _STREAM])
    det = DlibDetector()
    regions = texture_regions(model) if texture else None
    shapes, descs = [], []
    for i in range(n):
        a = (rng.standard_normal(model.n_shape) * model.shape_std).astype(np.float32)
        with torch.no_grad():
            v = model.vertices(shape=torch.as_tensor(a[None]))[0].numpy()
        render, _ = random_portrait(v, model.faces, rng, max_yaw=max_yaw, size=400, texture=regions)
        faces = det.detect(DecodedImage(str(i), render.image, "", (400, 400), False))
        if not faces:
            continue
        descs.append(face_descriptors(render.image, faces[0].box[None], faces[0].landmarks[None])[0])
        shapes.append(a)
    return np.array(shapes).reshape(-1, model.n_shape), np.array(descs).reshape(-1, 128)


def train_identity_prior(model, renders: int = 3000, seed: int = 0, workers: int = 1,
                         held_out: float = 0.15, max_yaw: float = 40.0, model_path=None,
                         progress=None, texture: bool = False) -> IdentityPrior:
    """Learn the identity prior of ``model`` from ``renders`` renders (see the module docstring);
    deterministic for a seed and worker count. model_path: where workers load the model from
    (None: the default model). progress(done, total) after each batch. texture: textured renders
    (:func:`~skullsearch.encoder.render.random_albedo`: brows, lips, eyes, blotches, sometimes a
    beard, a specular highlight) instead of one skin colour."""
    import concurrent.futures as cf

    from skullsearch.encoder.descriptors import DIM

    if renders < 200:
        raise SkullsearchError(f"renders must be at least 200 to learn 129 × S weights, got {renders}")
    batch = 100
    src = str(model_path) if model_path else None
    jobs = [(src, seed, k, min(batch, renders - k * batch), max_yaw, texture)
            for k in range((renders + batch - 1) // batch)]
    out = []
    if workers > 1:
        with cf.ProcessPoolExecutor(workers) as pool:
            for k, r in enumerate(pool.map(_render_batch, jobs)):
                out.append(r)
                if progress:
                    progress(min((k + 1) * batch, renders), renders)
    else:
        for k, job in enumerate(jobs):
            out.append(_render_batch(job))
            if progress:
                progress(min((k + 1) * batch, renders), renders)
    shapes = np.concatenate([o[0] for o in out]).astype(np.float64)
    descs = np.concatenate([o[1] for o in out]).astype(np.float64)
    n = len(shapes)
    n_test = max(1, int(round(held_out * n)))
    tr, te = slice(0, n - n_test), slice(n - n_test, n)

    def ridge(d, a):
        x = np.c_[d, np.ones(len(d))]
        return np.linalg.solve(x.T @ x + RIDGE * np.eye(DIM + 1), x.T @ a)

    w = ridge(descs[tr], shapes[tr])
    resid = shapes[te] - np.c_[descs[te], np.ones(n_test)] @ w
    residual_std = resid.std(0)
    r2 = 1 - resid.var(0) / shapes[te].var(0)
    w = ridge(descs, shapes)  # the final weights from every render
    mean = descs.mean(0)
    cov = np.cov(descs.T) + 1e-6 * np.eye(DIM)
    whiten = np.linalg.inv(np.linalg.cholesky(cov))
    prior = IdentityPrior(w, residual_std, mean, whiten, 0.0, model.fingerprint)
    dist = prior.domain_distance(descs)
    prior.domain_limit = float(np.quantile(dist, 0.999) * 1.05)
    prior.meta = {"renders": int(renders), "found": int(n), "seed": int(seed), "max_yaw": max_yaw,
                  "texture": bool(texture),
                  "held_out": int(n_test), "held_out_r2_first5": [round(float(v), 3) for v in r2[:5]],
                  "held_out_residual_sd_mean": round(float(residual_std.mean()), 4)}
    return prior
