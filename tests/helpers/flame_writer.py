"""Synthetic FLAME-format files for the tests: models, landmark embeddings, a malicious pickle.

Nothing here contains MPI data. The files copy the real layouts: a Python protocol-2 pickle
whose ``v_template`` and ``shapedirs`` are ``chumpy.ch.Ch`` objects holding their value under
``'x'`` (what chumpy's ``Ch.__getstate__`` pickles), a scipy.sparse ``J_regressor`` (named
``scipy.sparse.csc.csc_matrix`` as old scipy named it), ``kintree_table`` with ``2**32 - 1`` as
the root's parent; DECA's ``landmark_embedding.npy`` with torch tensors for the contour; RingNet /
TF_FLAME static (``.pkl``) and dynamic (``.npy``) embeddings.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.sparse as sp
import trimesh

#: Joint targets (metres, y up, +z forward): neck base, head/neck, jaw, left eye, right eye.
JOINT_TARGETS = np.array([[0.0, -0.085, -0.01], [0.0, -0.03, -0.01], [0.0, -0.045, 0.045],
                          [0.032, 0.02, 0.06], [-0.032, 0.02, 0.06]])
SEMI_AXES = np.array([0.075, 0.10, 0.09])  # a 0.15 m x 0.2 m x 0.18 m head


def _smooth_field(unit: np.ndarray, n: int, rng: np.random.Generator,
                  decay: float = 0.97) -> np.ndarray:
    """(V, 3, n) smooth random displacement fields: quadratic polynomials of the position."""
    x, y, z = unit.T
    basis = np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, y * z, z * x], 1)
    coef = rng.standard_normal((basis.shape[1], 3, n)) * decay ** np.arange(n)
    return np.einsum("vb,bcn->vcn", basis / np.sqrt(basis.shape[1]), coef)


def _convex_regressor(v: np.ndarray, targets: np.ndarray) -> sp.csc_matrix:
    """(J, V) rows of convex weights over a few vertices whose average is each target."""
    rows = []
    for p in targets:  # 5 tiny NNLS problems (J loop, not a vertex loop)
        a = np.vstack([v.T, 10.0 * np.ones(len(v))])
        w, _ = scipy.optimize.nnls(a, np.append(p, 10.0))
        rows.append(w / w.sum())
    return sp.csc_matrix(np.array(rows))


def make_synthetic_flame(n_vertices: int = 200, n_shape: int = 300, n_expr: int = 100,
                         seed: int = 0, root_parent: int = 2**32 - 1) -> dict:
    """A small head-like FLAME-format model in FLAME's own layout, in METRES.

    Parameters
    ----------
    n_vertices : int
      Wanted vertex count; the icosphere level nearest to it is used (162 for the default).
    n_shape, n_expr : int
      Identity and expression components; ``shapedirs`` is (V, 3, n_shape + n_expr).
    seed : int
      Random seed (the mesh is deterministic, the bases are random).
    root_parent : int
      ``kintree_table[0, 0]``: ``2**32 - 1`` (uint32, as FLAME 2020) or ``-1`` (int64).

    Returns
    -------
    arrays : dict
      ``v_template (V, 3)``, ``f (F, 3) uint32``, ``shapedirs (V, 3, S+E)``, ``posedirs
      (V, 3, 36)``, ``J_regressor`` scipy.sparse csc (5, V), ``weights (V, 5)``,
      ``kintree_table (2, 5)``, ``J (5, 3)``, ``bs_style``, ``bs_type`` (float64 arrays, metres).
    """
    rng = np.random.default_rng(seed)
    level = int(np.argmin([abs(10 * 4**s + 2 - n_vertices) for s in range(6)]))
    sphere = trimesh.creation.icosphere(subdivisions=level, radius=1.0)
    unit = np.asarray(sphere.vertices, dtype=np.float64)
    v = unit * SEMI_AXES
    shapedirs = _smooth_field(unit, n_shape + n_expr, rng) * 1e-3
    posedirs = _smooth_field(unit, 36, rng, decay=1.0) * 1e-4
    j_reg = _convex_regressor(v, JOINT_TARGETS)
    joints = j_reg @ v
    d2 = ((v[:, None, :] - joints[None]) ** 2).sum(-1)
    logits = -d2 / 0.03**2
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    dtype = np.uint32 if root_parent == 2**32 - 1 else np.int64
    kintree = np.array([[root_parent, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=dtype)
    return {"v_template": v, "f": np.asarray(sphere.faces, dtype=np.uint32),
            "shapedirs": shapedirs, "posedirs": posedirs, "J_regressor": j_reg,
            "weights": weights, "kintree_table": kintree, "J": joints,
            "bs_style": "lbs", "bs_type": "lrotmin"}


@contextlib.contextmanager
def fake_chumpy() -> Iterator[types.SimpleNamespace]:
    """Register fake ``chumpy``, ``chumpy.ch`` (class ``Ch``) and ``chumpy.ch_ops`` (``add``).

    Pickling an instance then references ``chumpy.ch.Ch`` as the real package would. The
    modules are removed on exit so that reading is tested without chumpy.
    """
    names = ("chumpy", "chumpy.ch", "chumpy.ch_ops")
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}

    class Ch:
        """Pickles like chumpy's Ch: ``__getstate__`` = ``__dict__`` minus _parents/_cache."""

        def __init__(self, x: np.ndarray) -> None:
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars, self._itr, self._depends_on_deps = set(), None, {}
            self._make_dense, self._make_sparse = False, False

    class add:  # noqa: N801 - chumpy's own name; state holds operands, not a value
        def __init__(self, a: object, b: object) -> None:
            self.a, self.b = a, b
            self._dirty_vars, self._itr, self._depends_on_deps = set(), None, {}

    for cls, mod in ((Ch, "chumpy.ch"), (add, "chumpy.ch_ops")):
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    mods["chumpy"].ch, mods["chumpy"].ch_ops = mods["chumpy.ch"], mods["chumpy.ch_ops"]
    sys.modules.update(mods)
    try:
        yield types.SimpleNamespace(Ch=Ch, add=add)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


_PY2_GLOBALS = {  # how Python 2 / old numpy / old scipy named these classes (protocol <= 2 GLOBAL)
    b"cnumpy._core.multiarray\n": b"cnumpy.core.multiarray\n",
    b"cscipy.sparse._csc\ncsc_matrix\n": b"cscipy.sparse.csc\ncsc_matrix\n",
    b"cscipy.sparse._csr\ncsr_matrix\n": b"cscipy.sparse.csr\ncsr_matrix\n",
}


def write_flame_pickle(path: str | os.PathLike, arrays: dict, chumpy: bool = True,
                       protocol: int = 2, legacy_names: bool = True) -> Path:
    """Write ``arrays`` as a FLAME pickle.

    Parameters
    ----------
    chumpy : bool
      Store ``v_template`` and ``shapedirs`` as ``chumpy.ch.Ch`` objects (FLAME 2020 style);
      False writes plain ndarrays (FLAME 2023 style).
    protocol : int
      Pickle protocol (FLAME files are protocol 2).
    legacy_names : bool
      For protocol <= 2, rename globals as numpy 1.x / old scipy wrote them
      (``numpy.core.multiarray``, ``scipy.sparse.csc``).
    """
    path = Path(path)
    data = dict(arrays)
    if chumpy:
        with fake_chumpy() as ch:
            for key in ("v_template", "shapedirs"):
                data[key] = ch.Ch(data[key])
            blob = pickle.dumps(data, protocol=protocol)
    else:
        blob = pickle.dumps(data, protocol=protocol)
    if legacy_names and protocol <= 2:
        for new, old in _PY2_GLOBALS.items():
            blob = blob.replace(new, old)
    path.write_bytes(blob)
    return path


def _random_embedding(n_faces: int, shape: tuple, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    faces = rng.integers(0, n_faces, size=shape)
    bary = rng.dirichlet(np.ones(3), size=shape)
    return faces, bary


def write_landmark_embedding_deca(path: str | os.PathLike, n_faces: int, seed: int = 0,
                                  torch_dynamic: bool = True) -> dict:
    """DECA's ``landmark_embedding.npy``: a pickled dict in an object .npy.

    Static (51,) / (51, 3) and full (1, 68) / (1, 68, 3) are numpy; the dynamic contour
    (79, 17) / (79, 17, 3) is torch tensors as in DECA's file (``torch_dynamic=False``: numpy).
    Returns the dict written (numpy arrays).
    """
    rng = np.random.default_rng(seed)
    s_f, s_b = _random_embedding(n_faces, (51,), rng)
    d_f, d_b = _random_embedding(n_faces, (79, 17), rng)
    f_f, f_b = _random_embedding(n_faces, (1, 68), rng)
    ref = {"static_lmk_faces_idx": s_f, "static_lmk_bary_coords": s_b,
           "dynamic_lmk_faces_idx": d_f, "dynamic_lmk_bary_coords": d_b.astype(np.float32),
           "full_lmk_faces_idx": f_f, "full_lmk_bary_coords": f_b}
    out = dict(ref)
    if torch_dynamic:
        import torch

        out["dynamic_lmk_faces_idx"] = torch.from_numpy(d_f)
        out["dynamic_lmk_bary_coords"] = torch.from_numpy(d_b.astype(np.float32))
    with open(path, "wb") as fh:
        np.save(fh, np.array(out, dtype=object), allow_pickle=True)
    return ref


def write_flame_static_embedding(path: str | os.PathLike, n_faces: int, n: int = 51,
                                 seed: int = 0, protocol: int = 2) -> dict:
    """RingNet / TF_FLAME ``flame_static_embedding[_68].pkl``: ``lmk_face_idx`` (n,),
    ``lmk_b_coords`` (n, 3). Returns the dict written."""
    faces, bary = _random_embedding(n_faces, (n,), np.random.default_rng(seed))
    d = {"lmk_face_idx": faces.astype(np.uint32), "lmk_b_coords": bary}
    Path(path).write_bytes(pickle.dumps(d, protocol=protocol))
    return d


def write_flame_dynamic_embedding(path: str | os.PathLike, n_faces: int, seed: int = 0,
                                  as_list: bool = False) -> dict:
    """``flame_dynamic_embedding.npy``: a pickled dict ``lmk_face_idx`` (79, 17), ``lmk_b_coords``
    (79, 17, 3) in an object .npy (``as_list``: lists of 79 arrays). Returns the arrays."""
    faces, bary = _random_embedding(n_faces, (79, 17), np.random.default_rng(seed))
    d = {"lmk_face_idx": list(faces) if as_list else faces,
         "lmk_b_coords": list(bary) if as_list else bary}
    with open(path, "wb") as fh:
        np.save(fh, np.array(d, dtype=object), allow_pickle=True)
    return {"lmk_face_idx": faces, "lmk_b_coords": bary}


class _Payload:
    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args

    def __call__(self) -> None:  # pickle wants a callable where a payload stands for one
        raise AssertionError

    def __reduce__(self) -> tuple:
        return self.func, self.args


def write_malicious_pickle(path: str | os.PathLike, marker: str | os.PathLike | None = None,
                           kind: str = "os.system") -> Path:
    """A FLAME-looking dict whose loading would create ``marker`` (default: ``<path>.pwned``).

    ``kind``: ``os.system``, ``eval``, ``getattr`` (``getattr(__import__('os'), 'system')``) or
    ``torch`` (``os.system`` hidden in a torch storage's bytes, as DECA's files nest pickles).
    """
    import builtins

    cmd = f"touch {marker or str(path) + '.pwned'}"
    if kind == "torch":
        import torch

        inner = pickle.dumps(_Payload(os.system, (cmd,)), protocol=2)
        d = {"static_lmk_faces_idx": _Payload(torch.storage._load_from_bytes, (inner,))}
        Path(path).write_bytes(pickle.dumps(d, protocol=2))
        return Path(path)
    payload = {
        "os.system": _Payload(os.system, (cmd,)),
        "eval": _Payload(builtins.eval, (f"__import__('os').system({cmd!r})",)),
        "getattr": _Payload(_Payload(builtins.getattr, (_Payload(builtins.__import__, ("os",)),
                                                        "system")), (cmd,)),
    }[kind]
    d = {"v_template": np.zeros((3, 3)), "f": np.zeros((1, 3), np.uint32), "evil": payload}
    Path(path).write_bytes(pickle.dumps(d, protocol=2))
    return Path(path)
