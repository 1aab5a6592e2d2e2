"""Classical head and face measurements of model faces, and published adult norms to hold them to.

:func:`measure` takes a batch of faces of a model and returns six soft-tissue distances in mm:

- ``g-op`` head length: glabella to opisthocranion (the annotation's ``g`` and ``op``);
- ``eu-eu`` head breadth: the widest transverse extent of the skin over the cranial vault
  (above the brows — the level where euryon lies — and behind the forehead);
- ``n-gn`` morphological face height: soft-tissue nasion (the annotation's ``n``, sellion) to
  gnathion;
- ``zy-zy`` bizygomatic breadth: the annotation's zygia;
- ``al-al`` nose breadth: between the alare vertices, found once on the mean face as the most
  lateral skin vertices of the alae (between subnasale and pronasale heights, in front of the
  alar curvature points) and followed through the shared topology;
- ``ch-ch`` mouth breadth: the mouth corners (iBUG landmarks 48 and 54).

:data:`ADULT_NORMS`: Farkas LG (1994) *Anthropometry of the Head and Face*, 2nd ed., Raven Press,
North American Caucasian adults aged 18–25 (the reference every clinical anthropometry table
compares to), men and women separately, in mm. The figures are as reproduced in secondary tables
of that book (we could not consult the book itself here); check them against it before relying
on a figure. :func:`pooled` combines the sexes into one mean and SD (a model's prior spans both).
"""

from __future__ import annotations

import numpy as np

from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

#: name → (men mean, men SD, women mean, women SD), mm. Source: module docstring.
ADULT_NORMS: dict[str, tuple[float, float, float, float]] = {
    "g-op": (197.0, 7.0, 187.0, 6.0),
    "eu-eu": (151.0, 5.5, 144.0, 5.0),
    "n-gn": (121.3, 6.8, 112.3, 5.2),
    "zy-zy": (137.1, 4.3, 129.9, 5.3),
    "al-al": (34.9, 2.1, 31.4, 2.0),
    "ch-ch": (53.3, 3.3, 50.2, 3.2),
}
LONG_NAMES = {
    "g-op": "head length", "eu-eu": "head breadth", "n-gn": "face height",
    "zy-zy": "bizygomatic breadth", "al-al": "nose breadth", "ch-ch": "mouth breadth",
}


def pooled(name: str) -> tuple[float, float]:
    """(mean, SD) of an equal mix of men and women for a norm of :data:`ADULT_NORMS`."""
    m, sm, f, sf = ADULT_NORMS[name]
    mean = (m + f) / 2
    return mean, float(np.sqrt((sm ** 2 + sf ** 2) / 2 + ((m - f) / 2) ** 2))


def _idx(name: str) -> int:
    return SOFT_TISSUE_NAMES.index(name)


def _extent(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """max − min of x (B, V) over mask (B, V) per row."""
    hi = np.where(mask, x, -np.inf).max(1)
    lo = np.where(mask, x, np.inf).min(1)
    return hi - lo


def measure(model, shape=None, *, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The six measurements of the faces ``shape`` (B, ≤S) (None: the mean face), neutral
    expression and pose. Returns name → (B,) float64 mm, names as in :data:`ADULT_NORMS`."""
    import torch

    from skullsearch.encoder.annotate import _skin

    if shape is None:
        shape = np.zeros((1, model.n_shape), np.float32)
    shape = np.asarray(shape, dtype=np.float32)
    _, skin_faces = _skin(model.v_template.astype(np.float64), model.faces)
    skin = np.unique(model.faces[skin_faces])
    al = _alare(model, skin)
    out: dict[str, list] = {k: [] for k in ADULT_NORMS}
    for a in range(0, len(shape), batch_size):
        with torch.no_grad():
            v = model.vertices(shape=torch.as_tensor(shape[a:a + batch_size]))
            pts = model.soft_tissue(vertices=v).double().numpy()
            lm = model.landmarks68(vertices=v).double().numpy()
        v = v.double().numpy()[:, skin]

        def dist(i, j, p=pts):
            return np.linalg.norm(p[:, i] - p[:, j], axis=1)

        out["g-op"].append(dist(_idx("g"), _idx("op")))
        out["n-gn"].append(dist(_idx("n"), _idx("gn")))
        out["zy-zy"].append(dist(_idx("zy_l"), _idx("zy_r")))
        out["ch-ch"].append(dist(48, 54, lm))
        g = pts[:, _idx("g")]
        vault = (v[..., 1] > g[:, None, 1] + 20.0) & (v[..., 2] < g[:, None, 2] - 40.0)
        out["eu-eu"].append(_extent(v[..., 0], vault))
        out["al-al"].append(np.linalg.norm(v[:, al[0]] - v[:, al[1]], axis=1))
    return {k: np.concatenate(v) for k, v in out.items()}


def _alare(model, skin: np.ndarray) -> tuple[int, int]:
    """Indices into ``skin`` of the left and right alare on the mean face."""
    import torch

    with torch.no_grad():
        pts = model.soft_tissue(batch_size=1)[0].double().numpy()
        lm = model.landmarks68(batch_size=1)[0].double().numpy()
    v = model.v_template[skin].astype(np.float64)
    ac_z = (pts[_idx("ac_l"), 2] + pts[_idx("ac_r"), 2]) / 2
    nose = ((v[:, 1] > pts[_idx("ss"), 1]) & (v[:, 1] < lm[30, 1]) & (np.abs(v[:, 0]) < 30.0)
            & (v[:, 2] > ac_z))
    ids = np.flatnonzero(nose)
    return int(ids[np.argmax(v[ids, 0])]), int(ids[np.argmin(v[ids, 0])])


def compare(model, n: int = 1000, seed: int = 0) -> list[dict]:
    """Sample ``n`` faces from the model's prior (shape ~ N(0, shape_std²)) and set each
    measurement beside the pooled adult norm: rows of name, model mean/SD, norm mean/SD, the
    mean's distance in norm SDs and the SD ratio."""
    rng = np.random.default_rng(seed)
    shape = rng.standard_normal((n, model.n_shape)).astype(np.float32) * model.shape_std
    got = measure(model, shape)
    rows = []
    for name, values in got.items():
        mean, sd = pooled(name)
        rows.append({
            "measure": name, "what": LONG_NAMES[name],
            "model_mean": float(values.mean()), "model_sd": float(values.std()),
            "norm_mean": mean, "norm_sd": sd,
            "mean_off_sd": float(abs(values.mean() - mean) / sd),
            "sd_ratio": float(values.std() / sd),
        })
    return rows
