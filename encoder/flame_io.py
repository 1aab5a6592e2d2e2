"""Reading and writing FLAME-format face models and their landmark embeddings, safely.

FLAME ships as Python pickles (``generic_model.pkl``, ``FLAME_NEUTRAL.pkl``, ``flame2023.pkl``,
``flame2023_Open.pkl``): a dict of numpy arrays, a scipy.sparse joint regressor and, in the
2017-2020 releases, chumpy objects. A pickle can run any code when loaded, so nothing here calls
``pickle.load`` on a user file: :func:`restricted_unpickle` resolves only numpy, scipy.sparse,
chumpy (mapped to a stub that keeps the pickled value; chumpy is never imported) and a handful of
builtins, and refuses everything else with :class:`UnsafePickleError`.

Everything returned is in **millimetres** (FLAME files are in metres; a file that is already in
millimetres is not scaled twice). Canonical model dict (``V`` vertices, ``F`` faces, ``J`` joints):

============  ==================  ====================================================
key           shape / dtype        meaning
============  ==================  ====================================================
v_template    (V, 3) float32      mean face, mm
faces         (F, 3) int64        triangles
shapedirs     (V, 3, S) float32   identity basis, mm per unit coefficient
exprdirs      (V, 3, E) float32   expression basis, mm (E may be 0)
posedirs      (V, 3, P) float32   pose correctives, mm, P = 9 * (J - 1)
J_regressor   (J, V) float32      dense joint regressor (rows are convex weights)
weights       (V, J) float32      skinning weights (rows sum to 1)
parents       (J,) int64          kinematic tree, parents[0] = -1
meta          dict                source format, file name, units in file...
============  ==================  ====================================================

Our own ``.npz`` holds the same keys (plus any extra arrays, and ``meta`` as JSON in
``meta_json``) and is read with ``allow_pickle=False``: convert a pickle once, load the npz after.
"""

from __future__ import annotations

import collections
import copyreg
import dataclasses
import functools
import hashlib
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from skullsearch.encoder.atomic import atomic_file
from skullsearch.errors import FaceModelError, LandmarkError, UnsafePickleError

__all__ = [
    "FORMAT_VERSION",
    "LandmarkEmbedding",
    "file_sha256",
    "find_landmark_embedding",
    "load_face_model_file",
    "read_face_model_npz",
    "read_flame_pickle",
    "read_landmark_embedding",
    "restricted_unpickle",
    "to_array",
    "write_face_model_npz",
]

#: Version of our ``.npz`` layout, stored in ``meta['format_version']``.
FORMAT_VERSION = 1

#: Keys of the canonical model dict (besides ``meta``).
MODEL_KEYS = (
    "v_template", "faces", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights", "parents",
)
_LMK_FIELDS = ("static_faces", "static_bary", "dynamic_faces", "dynamic_bary", "full_faces",
               "full_bary")
_SUPPORTED = (".pkl: FLAME 2017/2020 (generic_model.pkl, FLAME_NEUTRAL.pkl...), FLAME 2023, "
              "FLAME 2023 Open; .npz: written by skullsearch (`skullsearch model convert`)")


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------


class _ChumpyStub:
    """Stand-in for any chumpy class: keeps the pickled state (a ``Ch`` stores its value as 'x')."""

    chumpy_class = "chumpy.ch.Ch"

    def __new__(cls, *args: Any, **kwargs: Any) -> _ChumpyStub:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state: dict = {}

    def __setstate__(self, state: Any) -> None:
        self._state = state if isinstance(state, dict) else {"state": state}


class _SparseStub:
    """Stand-in for a pickled scipy.sparse matrix of any scipy version; rebuilt after loading."""

    fmt = "csc"

    def __setstate__(self, state: Any) -> None:
        self._state = state if isinstance(state, dict) else {}


@functools.cache
def _chumpy_stub(module: str, name: str) -> type:
    return type(name, (_ChumpyStub,), {"chumpy_class": f"{module}.{name}"})


@functools.cache
def _sparse_stub(fmt: str) -> type:
    return type(f"{fmt}_stub", (_SparseStub,), {"fmt": fmt})


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes (latin1 only)."""
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in (
            "latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"refusing to decode pickled text as {encoding!r}: a FLAME file "
                                "only stores latin1 bytes, so it is not a plain FLAME model")
    return obj.encode("latin1", errors)


_TORCH_STORAGES = {"DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
                   "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
                   "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


class _TorchStorageType:
    """What ``torch.LongStorage`` & co. resolve to: only their element dtype."""

    def __init__(self, dtype: str) -> None:
        self.dtype = np.dtype(dtype)


class _StorageRef:
    def __init__(self, dtype: np.dtype, numel: int) -> None:
        self.dtype, self.numel, self.array = dtype, numel, None


def _torch_storage(data: bytes) -> np.ndarray:
    """A torch storage pickled inside a plain pickle (DECA's landmark_embedding.npy holds some).

    torch pickles a storage as ``torch.storage._load_from_bytes(b)``, ``b`` in torch's legacy
    ``torch.save`` layout: pickles of the magic number, the protocol version and system info, the
    object (storages as persistent ids), the storage keys, then each storage's int64 little-endian
    element count and raw little-endian data. Parsed here with the restricted unpickler, so
    torch is neither needed nor trusted (``torch.load`` before 2.6 is unsafe, CVE-2025-32434).
    """
    f = io.BytesIO(bytes(data))
    where = "a torch storage in the file"
    try:
        header = [_RestrictedUnpickler(f, where).load() for _ in range(3)]
        if header[0] != _TORCH_MAGIC:
            raise ValueError("bad magic number")
        unpickler = _RestrictedUnpickler(f, where, storages={})
        ref = unpickler.load()
        for key in _RestrictedUnpickler(f, where).load():
            st = unpickler.storages[str(key)]
            numel = int.from_bytes(f.read(8), "little")
            buf = f.read(numel * st.dtype.itemsize)
            if numel != st.numel or len(buf) != numel * st.dtype.itemsize:
                raise ValueError("storage data is truncated")
            st.array = np.frombuffer(buf, st.dtype).astype(st.dtype.newbyteorder("="))
    except FaceModelError:
        raise
    except Exception as exc:
        raise FaceModelError(f"cannot read {where} ({type(exc).__name__}: {exc}); the file is "
                             "damaged") from exc
    if not isinstance(ref, _StorageRef) or ref.array is None:
        raise FaceModelError(f"cannot read {where}: it holds no storage data")
    return ref.array


def _torch_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor[_v2]`` → numpy, bounds-checked (no out-of-range views)."""
    flat = np.asarray(storage)
    size, stride, offset = tuple(map(int, size)), tuple(map(int, stride)), int(offset)
    if flat.ndim != 1 or len(size) != len(stride) or min((offset, *size, *stride)) < 0:
        raise FaceModelError("a pickled torch tensor has an invalid layout; the file is damaged")
    if 0 in size:
        return np.empty(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= flat.size:
        raise FaceModelError("a pickled torch tensor reaches past its storage; the file is damaged")
    view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * flat.itemsize for s in stride])
    return view.copy()


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    a = np.zeros(2)
    reconstruct, frombuffer, scalar = a.__reduce__()[0], a.__reduce_ex__(5)[0], \
        np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[f"{core}.multiarray", "_reconstruct"] = reconstruct
        allowed[f"{core}.multiarray", "scalar"] = scalar
        allowed[f"{core}.numeric", "_frombuffer"] = frombuffer
    for t in (object, set, frozenset, slice, complex, bytearray, list, dict, tuple):
        allowed["builtins", t.__name__] = t
    allowed.update({
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("copyreg", "__newobj__"): copyreg.__newobj__,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _torch_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _torch_tensor,
        ("torch.storage", "_load_from_bytes"): _torch_storage,
    })
    allowed.update({("torch", k): _TorchStorageType(v) for k, v in _TORCH_STORAGES.items()})
    return allowed


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_SPARSE_NAME = re.compile(r"(csc|csr|coo)_(matrix|array)")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, where: str, storages: dict | None = None) -> None:
        super().__init__(file, encoding="latin1")  # FLAME files are Python-2 pickles
        self.where = where
        self.seen: set[str] = set()
        self.storages = storages  # only inside a torch storage: persistent ids allowed

    def persistent_load(self, pid: Any) -> Any:
        if (self.storages is None or not isinstance(pid, tuple) or len(pid) < 5
                or pid[0] != "storage" or not isinstance(pid[1], _TorchStorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("torch storage views are not supported")
        return self.storages.setdefault(str(pid[2]), _StorageRef(pid[1].dtype, int(pid[4])))

    def find_class(self, module: str, name: str) -> Any:
        if module.endswith("\r") or name.endswith("\r"):  # CRLF-mangled text pickle: retried
            raise pickle.UnpicklingError("global name ends with a carriage return")
        module = _PY2_MODULES.get(module, module)
        self.seen.add(f"{module}.{name}")
        found = _allowed_globals().get((module, name))
        if found is not None:
            return found
        if module == "chumpy" or module.startswith("chumpy."):
            return _chumpy_stub(module, name)
        sparse = _SPARSE_NAME.fullmatch(name)
        if module.startswith("scipy.sparse") and sparse:
            return _sparse_stub(sparse.group(1))
        raise UnsafePickleError(
            f"refusing to load {self.where}: the pickle asks for {module}.{name}, which a FLAME "
            "model never needs, so the file is not a plain FLAME model or it is malicious. Use the "
            "files as downloaded from flame.is.tue.mpg.de; a file you trust that holds other "
            "objects must be exported to plain arrays (np.savez) and converted once with "
            "`skullsearch model convert`.")


def _sparse_from_state(stub: _SparseStub, where: str) -> Any:
    import scipy.sparse as sp

    st = getattr(stub, "_state", {})
    try:
        shape = tuple(int(n) for n in st.get("_shape", st.get("shape")))
        if stub.fmt == "coo":
            coords = st.get("coords") or (st["row"], st["col"])
            return sp.coo_matrix((st["data"], tuple(coords)), shape=shape)
        cls = sp.csc_matrix if stub.fmt == "csc" else sp.csr_matrix
        return cls((st["data"], st["indices"], st["indptr"]), shape=shape)
    except Exception as exc:
        raise FaceModelError(f"{where}: a pickled scipy.sparse {stub.fmt} matrix is malformed "
                             f"({exc}); the file is damaged, download it again") from exc


def _finalize(obj: Any, where: str, depth: int = 0) -> Any:
    """Turn sparse stubs inside dicts/lists/tuples into real scipy matrices."""
    if isinstance(obj, _SparseStub):
        return _sparse_from_state(obj, where)
    if depth > 8:
        return obj
    if isinstance(obj, dict):
        return {k: _finalize(v, where, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_finalize(v, where, depth + 1) for v in obj)
    return obj


def _describe(source: Any, name: str | None) -> str:
    if name:
        return name
    return Path(source).name if isinstance(source, str | os.PathLike) else "<pickle bytes>"


def _unpickle(source: Any, name: str | None = None) -> tuple[Any, set[str]]:
    where = _describe(source, name)
    if isinstance(source, str | os.PathLike):
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise FaceModelError(f"cannot read {source}: {exc.strerror or exc}") from exc
    else:
        data = bytes(source)
    try:
        return _load_once(data, where)
    except FaceModelError as exc:
        # A text (protocol 0) pickle checked out with CRLF line ends: retry with LF. Binary
        # protocol-1 data may hold CR LF bytes, so only ever as a second attempt.
        if data[:1] == b"\x80" or b"\r\n" not in data or isinstance(exc, UnsafePickleError):
            raise
        try:
            return _load_once(data.replace(b"\r\n", b"\n"), where)
        except UnsafePickleError:
            raise
        except FaceModelError:
            raise exc from None


def _load_once(data: bytes, where: str) -> tuple[Any, set[str]]:
    unpickler = _RestrictedUnpickler(io.BytesIO(data), where)
    try:
        obj = unpickler.load()
    except FaceModelError:
        raise
    except RecursionError as exc:
        raise FaceModelError(f"{where}: the pickle nests too deeply to be a FLAME file") from exc
    except Exception as exc:  # truncated, garbage, wrong opcodes, numpy/scipy refusing state
        raise FaceModelError(
            f"cannot read {where}: it is not a readable pickle ({type(exc).__name__}: {exc}); "
            "the file is truncated or damaged, download it again") from exc
    return _finalize(obj, where), unpickler.seen


def restricted_unpickle(source: bytes | str | os.PathLike, *, name: str | None = None) -> Any:
    """Load a pickle that may only build numpy arrays, scipy.sparse matrices and chumpy values.

    Parameters
    ----------
    source : bytes or path
      The pickle itself, or the file holding it. Python-2 pickles are read (latin1).
    name : str, optional
      How to name the source in error messages (default: the file name).

    Returns
    -------
    obj : object
      The unpickled object. scipy.sparse matrices come back as current scipy ``csc``/``csr``/
      ``coo`` matrices whatever scipy pickled them; chumpy objects come back as stubs that
      :func:`to_array` turns into arrays (chumpy itself is never imported).

    Raises
    ------
    UnsafePickleError
      The pickle asks for anything else (``os.system``, ``builtins.eval``...). Nothing runs.
    FaceModelError
      The data is not a readable pickle (truncated, garbage, unreadable file).
    """
    return _unpickle(source, name)[0]


# --------------------------------------------------------------------------------------------
# Values → arrays
# --------------------------------------------------------------------------------------------


def _chumpy_value(stub: _ChumpyStub, key: str, depth: int) -> np.ndarray:
    st = getattr(stub, "_state", {})
    op = stub.chumpy_class.rsplit(".", 1)[-1]
    if "x" in st:
        return to_array(st["x"], key, _depth=depth + 1)
    if op == "Reshape" and "a" in st and "newshape" in st:
        return to_array(st["a"], key, _depth=depth + 1).reshape(st["newshape"])
    if op == "transpose" and "a" in st:
        return np.transpose(to_array(st["a"], key, _depth=depth + 1), st.get("axes"))
    raise FaceModelError(
        f"{key} is a chumpy {stub.chumpy_class} object whose value is not stored in the file "
        f"(it keeps {sorted(map(str, st))}), so it cannot be read without running chumpy. Load "
        "the model once where chumpy is installed, save its arrays with np.savez, and convert "
        "that with `skullsearch model convert`.")


def to_array(obj: Any, key: str = "value", *, _depth: int = 0) -> np.ndarray:
    """Turn one value of a FLAME-format file into a dense numpy array.

    Parameters
    ----------
    obj : ndarray, chumpy stub, scipy.sparse matrix, torch tensor, list or number
      A value from :func:`restricted_unpickle`. Lists (and object arrays) of arrays are stacked.
    key : str
      What ``obj`` is, for error messages.

    Returns
    -------
    array : (...) ndarray
      Dense, in the dtype stored (no copy for an ndarray).

    Raises
    ------
    FaceModelError
      ``obj`` holds no recoverable array (e.g. a chumpy expression with no stored value).
    """
    if _depth > 32:
        raise FaceModelError(f"{key}: the value nests too deeply to be an array")
    if isinstance(obj, np.ndarray):
        if obj.dtype != object:
            return obj
        if obj.ndim == 0:
            return to_array(obj[()], key, _depth=_depth + 1)
        items = [to_array(o, key, _depth=_depth + 1) for o in obj.ravel()]
        return _stack(items, key).reshape(obj.shape + items[0].shape)
    if isinstance(obj, _ChumpyStub):
        return _chumpy_value(obj, key, _depth)
    if isinstance(obj, _SparseStub):
        obj = _sparse_from_state(obj, key)
    if hasattr(obj, "toarray") and type(obj).__module__.startswith("scipy.sparse"):
        return np.asarray(obj.toarray())
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):
        return obj.detach().cpu().numpy()
    if isinstance(obj, list | tuple):
        return _stack([to_array(o, key, _depth=_depth + 1) for o in obj], key)
    if isinstance(obj, int | float | bool | np.generic):
        return np.asarray(obj)
    raise FaceModelError(f"{key} holds a {type(obj).__name__}, not an array")


def _stack(items: list[np.ndarray], key: str) -> np.ndarray:
    if not items:
        return np.zeros(0)
    try:
        return np.stack(items)
    except ValueError as exc:
        raise FaceModelError(f"{key} is a list of arrays of different shapes") from exc


# --------------------------------------------------------------------------------------------
# Face models
# --------------------------------------------------------------------------------------------


def _shape_error(where: str, key: str, got: tuple, expected: str) -> FaceModelError:
    return FaceModelError(f"{where}: '{key}' has shape {got}, expected {expected}; the file is not "
                          "a FLAME-format model or it is damaged")


def _check_finite(where: str, out: dict) -> None:
    for k in ("v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights"):
        if not np.isfinite(out[k]).all():
            raise FaceModelError(f"{where}: '{k}' contains NaN or infinite values")


def _canonical_faces(where: str, key: str, f: np.ndarray, n_vertices: int) -> np.ndarray:
    if f.ndim != 2 or f.shape[1] != 3:
        raise _shape_error(where, key, f.shape, "(F, 3) vertex indices")
    if not np.issubdtype(f.dtype, np.integer):
        if not (np.issubdtype(f.dtype, np.floating) and np.array_equal(f, np.round(f))):
            raise FaceModelError(f"{where}: '{key}' holds {f.dtype} values, expected integer "
                                 "vertex indices")
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= n_vertices):
        raise FaceModelError(f"{where}: '{key}' indexes vertices {f.min()}..{f.max()}, but "
                             f"'v_template' has only {n_vertices} vertices (0..{n_vertices - 1})")
    return f


def _validate(where: str, out: dict, faces_key: str = "faces") -> dict:
    """Check the canonical arrays agree with each other; returns ``out`` with canonical dtypes."""
    v = out["v_template"]
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise _shape_error(where, "v_template", v.shape, "(V, 3) with V > 0")
    n_v = len(v)
    out["faces"] = _canonical_faces(where, faces_key, out["faces"], n_v)
    for k in ("shapedirs", "exprdirs", "posedirs"):
        if out[k].ndim != 3 or out[k].shape[:2] != (n_v, 3):
            raise _shape_error(where, k, out[k].shape, f"({n_v}, 3, N) (V = {n_v} vertices)")
    jr = out["J_regressor"]
    if jr.ndim != 2 or jr.shape[1] != n_v or jr.shape[0] < 1:
        raise _shape_error(where, "J_regressor", jr.shape, f"(J, {n_v}) (V = {n_v} vertices)")
    n_j = jr.shape[0]
    if out["weights"].shape != (n_v, n_j):
        raise _shape_error(where, "weights", out["weights"].shape,
                           f"({n_v}, {n_j}) = (V, J) with J = {n_j} joints from 'J_regressor'")
    if out["posedirs"].shape[2] != 9 * (n_j - 1):
        raise _shape_error(where, "posedirs", out["posedirs"].shape,
                           f"({n_v}, 3, {9 * (n_j - 1)}) = (V, 3, 9 * (J - 1))")
    parents = np.asarray(out["parents"])
    if parents.shape != (n_j,):
        raise _shape_error(where, "parents", parents.shape, f"({n_j},) = (J,)")
    parents = parents.astype(np.int64)
    if parents[0] != -1 or (parents[1:] < 0).any() or (parents[1:] >= np.arange(1, n_j)).any():
        raise FaceModelError(f"{where}: the kinematic tree {parents.tolist()} is not ordered "
                             "parents-first with joint 0 as root")
    out["parents"] = parents
    _check_finite(where, out)
    sums = out["weights"].sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise FaceModelError(f"{where}: skinning 'weights' rows must sum to 1 (vertex {bad} sums "
                             f"to {sums[bad]:.4f}); the file is damaged")
    for k in ("v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights"):
        out[k] = np.ascontiguousarray(out[k], dtype=np.float32)
    return out


def _format_name(path: Path, used_chumpy: bool) -> str:
    name = path.name.lower()
    if "2023" in name:
        return "FLAME 2023 Open" if "open" in name else "FLAME 2023"
    return "FLAME 2020" if used_chumpy else "FLAME (numpy pickle)"


def read_flame_pickle(path: str | os.PathLike, *, n_shape: int | None = None) -> dict:
    """Read a FLAME pickle (2017/2020 with chumpy, 2023, 2023 Open) into canonical mm arrays.

    Parameters
    ----------
    path : path
      The ``.pkl`` file (``generic_model.pkl``, ``FLAME_NEUTRAL.pkl``, ``flame2023.pkl``...).
    n_shape : int, optional
      How many of the ``shapedirs`` columns are identity; the rest are expression. Default:
      300 when the file has more than 300 (FLAME: 300 shape + 100 expression), else all.

    Returns
    -------
    model : dict
      ``v_template (V, 3) float32`` mm, ``faces (F, 3) int64``, ``shapedirs (V, 3, S) float32``
      mm, ``exprdirs (V, 3, E) float32`` mm, ``posedirs (V, 3, 9 (J - 1)) float32`` mm,
      ``J_regressor (J, V) float32``, ``weights (V, J) float32``, ``parents (J,) int64``
      (``parents[0] == -1``) and ``meta`` (``source_format``, ``file``, ``units_in_file``).

    Raises
    ------
    UnsafePickleError
      The pickle asks for code outside numpy/scipy.sparse/chumpy.
    FaceModelError
      Unreadable file, a missing key, or arrays whose shapes disagree (the message names the key).
    """
    path = Path(path)
    where = path.name
    raw, seen = _unpickle(path)
    if not isinstance(raw, dict):
        raise FaceModelError(f"{where}: holds a {type(raw).__name__}, not a FLAME model dict")
    missing = [k for k in ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights",
                           "kintree_table") if k not in raw]
    if missing:
        raise FaceModelError(f"{where}: key '{missing[0]}' is missing (a FLAME model has "
                             "v_template, f, shapedirs, posedirs, J_regressor, weights, "
                             f"kintree_table; this file has {sorted(map(str, raw))})")
    arr = {k: to_array(raw[k], f"{where}: '{k}'") for k in
           ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")}
    v = arr["v_template"].astype(np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise _shape_error(where, "v_template", v.shape, "(V, 3)")
    dirs = arr["shapedirs"]
    if dirs.ndim != 3 or dirs.shape[:2] != v.shape:
        raise _shape_error(where, "shapedirs", dirs.shape, f"({len(v)}, 3, N) (V = {len(v)})")
    total = dirs.shape[2]
    n_shape = (300 if total > 300 else total) if n_shape is None else int(n_shape)
    if not 0 <= n_shape <= total:
        raise FaceModelError(f"{where}: n_shape={n_shape} but 'shapedirs' has only {total} "
                             "components")
    kin = arr["kintree_table"]
    if kin.ndim != 2 or kin.shape[0] != 2:
        raise _shape_error(where, "kintree_table", kin.shape, "(2, J)")
    parents = kin[0].astype(np.int64)
    parents[(parents == 2**32 - 1) | (parents == -1)] = -1
    parents[0] = -1
    diag = float(np.linalg.norm(np.ptp(v, axis=0)))
    units = "mm" if diag > 5 else "m"
    scale = 1.0 if units == "mm" else 1000.0
    out = {
        "v_template": v * scale,
        "faces": arr["f"],
        "shapedirs": dirs[:, :, :n_shape] * scale,
        "exprdirs": dirs[:, :, n_shape:] * scale,
        "posedirs": arr["posedirs"] * scale,
        "J_regressor": arr["J_regressor"],
        "weights": arr["weights"],
        "parents": parents,
    }
    _validate(where, out, faces_key="f")
    used_chumpy = any(s.startswith("chumpy") for s in seen)
    out["meta"] = {"source_format": _format_name(path, used_chumpy), "file": path.name,
                   "units_in_file": units, "chumpy": used_chumpy}
    return out


def _embedding_arrays(emb: LandmarkEmbedding) -> dict[str, np.ndarray]:
    return {f"lmk_{f}": getattr(emb, f) for f in _LMK_FIELDS if getattr(emb, f) is not None}


def write_face_model_npz(path: str | os.PathLike, arrays: dict, compress: bool = False) -> Path:
    """Write a canonical model dict to our ``.npz`` (atomically: temp file + ``os.replace``).

    Parameters
    ----------
    path : path
      Destination (written exactly there, no suffix added).
    arrays : dict
      The canonical keys (see module docstring, mm), optional ``meta`` (JSON-serializable dict;
      ``format_version`` is added), optional ``landmarks`` (:class:`LandmarkEmbedding`, stored as
      ``lmk_*`` arrays) and any extra numeric arrays (``shape_std``, ...), passed through.
      The bases (shapedirs, exprdirs, posedirs) are stored as float16 when that is exact (a
      model loaded from such a file), halving the file; they always load as float32.
    compress : bool
      zip-deflate the members (for files shipped in the package).

    Returns
    -------
    path : Path
      The file written.
    """
    path = Path(path)
    out = {k: np.asarray(v) for k, v in arrays.items() if k not in ("meta", "landmarks")}
    missing = [k for k in MODEL_KEYS if k not in out]
    if missing:
        raise FaceModelError(f"cannot write {path.name}: key '{missing[0]}' is missing")
    _validate(path.name, out)
    for k in ("shapedirs", "exprdirs", "posedirs"):
        half = out[k].astype(np.float16)
        if np.array_equal(half.astype(np.float32), out[k]):
            out[k] = half
    if arrays.get("landmarks") is not None:
        out.update(_embedding_arrays(arrays["landmarks"]))
    bad = [k for k, v in out.items() if v.dtype == object]
    if bad:
        raise FaceModelError(f"cannot write {path.name}: '{bad[0]}' is not a numeric array")
    meta = {**dict(arrays.get("meta") or {}), "format_version": FORMAT_VERSION}
    try:
        out["meta_json"] = np.array(json.dumps(meta, sort_keys=True))
    except TypeError as exc:
        raise FaceModelError(f"cannot write {path.name}: meta is not JSON-serializable: {exc}") \
            from exc
    with atomic_file(path) as fh:
        (np.savez_compressed if compress else np.savez)(fh, **out)
    return path


def read_face_model_npz(path: str | os.PathLike) -> dict:
    """Read our ``.npz`` face model (never unpickles: ``allow_pickle=False``).

    Parameters
    ----------
    path : path
      A file written by :func:`write_face_model_npz`.

    Returns
    -------
    model : dict
      The canonical arrays (mm, canonical dtypes), every extra array as stored, ``meta`` (dict,
      with ``format_version``) and ``landmarks`` (:class:`LandmarkEmbedding` or None).
    """
    path = Path(path)
    where = path.name
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise FaceModelError(f"no such face model file: {path}") from exc
    except Exception as exc:  # BadZipFile, object arrays (pickles), truncated members...
        raise FaceModelError(f"cannot read {where} as a skullsearch .npz face model "
                             f"({type(exc).__name__}: {exc}); convert the model again with "
                             "`skullsearch model convert`") from exc
    try:
        meta = json.loads(str(data.pop("meta_json"))) if "meta_json" in data else {}
    except json.JSONDecodeError as exc:
        raise FaceModelError(f"{where}: 'meta_json' is not valid JSON") from exc
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise FaceModelError(f"{where} was written by a newer skullsearch (format "
                             f"{meta['format_version']} > {FORMAT_VERSION}); upgrade skullsearch")
    missing = [k for k in MODEL_KEYS if k not in data]
    if missing:
        raise FaceModelError(f"{where}: key '{missing[0]}' is missing; convert the model again "
                             "with `skullsearch model convert`")
    _validate(where, data)
    if float(np.linalg.norm(np.ptp(data["v_template"], axis=0))) <= 5:
        raise FaceModelError(f"{where}: the template is under 5 mm across, so it is in metres, "
                             "not millimetres; convert the model again with `skullsearch model "
                             "convert`")
    lmk = {f: data.pop(f"lmk_{f}", None) for f in _LMK_FIELDS}
    data["landmarks"] = None
    if lmk["static_faces"] is not None:
        data["landmarks"] = LandmarkEmbedding(**lmk, source=where).validated(len(data["faces"]))
    data["meta"] = {**meta, "loaded_from": path.name}
    return data


def load_face_model_file(path: str | os.PathLike, *, n_shape: int | None = None) -> dict:
    """Load any supported face-model file, with its landmark embedding.

    Parameters
    ----------
    path : path
      ``.pkl`` (FLAME 2017/2020/2023/2023 Open) or ``.npz`` (ours).
    n_shape : int, optional
      Identity components of a pickle's ``shapedirs`` (see :func:`read_flame_pickle`).

    Returns
    -------
    model : dict
      Canonical arrays (see module docstring) plus ``landmarks``: the embedding stored in the
      npz, else one found next to the file (:func:`find_landmark_embedding`), else None.
    """
    path = Path(path)
    if not path.is_file():
        raise FaceModelError(f"no such face model file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        model = read_flame_pickle(path, n_shape=n_shape)
        model["landmarks"] = None
    elif suffix == ".npz":
        model = read_face_model_npz(path)
    else:
        raise FaceModelError(f"{path.name}: unsupported face model format '{path.suffix}'. "
                             f"Supported: {_SUPPORTED}")
    if model["landmarks"] is None:
        model["landmarks"] = find_landmark_embedding(path, n_faces=len(model["faces"]))
    return model


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (read in chunks), e.g. to record which model built a gallery."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Landmark embeddings
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class LandmarkEmbedding:
    """Landmarks as barycentric points on mesh faces (FLAME / DECA / RingNet embeddings).

    Attributes
    ----------
    static_faces : (K,) int64
      Face index of each static landmark (K = 51 inner-face points, or 68 with the contour).
    static_bary : (K, 3) float32
      Barycentric coordinates of each landmark in its face.
    dynamic_faces : (R, 17) int64 or None
      Face contour (the 17 jaw-line points) for each of R head yaws (R = 79 in FLAME: 0..39°
      then -1..-39°, as DECA / RingNet index it).
    dynamic_bary : (R, 17, 3) float32 or None
    full_faces : (68,) int64 or None
      DECA's fixed 68-point 3D landmarks.
    full_bary : (68, 3) float32 or None
    source : str
      The file(s) it came from.
    """

    static_faces: np.ndarray
    static_bary: np.ndarray
    dynamic_faces: np.ndarray | None = None
    dynamic_bary: np.ndarray | None = None
    full_faces: np.ndarray | None = None
    full_bary: np.ndarray | None = None
    source: str = ""

    @property
    def n_static(self) -> int:
        return len(self.static_faces)

    def validated(self, n_faces: int | None = None) -> LandmarkEmbedding:
        """Canonical dtypes and checked shapes; raises LandmarkError naming the bad field."""
        where = self.source or "landmark embedding"
        pairs = (("static", 1), ("dynamic", 2), ("full", 1))
        new = {}
        for kind, ndim in pairs:
            faces, bary = getattr(self, f"{kind}_faces"), getattr(self, f"{kind}_bary")
            if faces is None and bary is None and kind != "static":
                new[f"{kind}_faces"] = new[f"{kind}_bary"] = None
                continue
            if faces is None or bary is None:
                raise LandmarkError(f"{where}: {kind} landmark faces and barycentric coordinates "
                                    "must come together")
            faces, bary = np.asarray(faces), np.asarray(bary, dtype=np.float64)
            if kind == "full":  # DECA stores (1, 68) and (1, 68, 3)
                faces, bary = faces.reshape(-1), bary.reshape(-1, 3)
            if faces.ndim != ndim or bary.shape != faces.shape + (3,) or faces.size == 0:
                raise LandmarkError(
                    f"{where}: {kind} landmarks have faces {faces.shape} and barycentric "
                    f"coordinates {bary.shape}; expected {'(K,)' if ndim == 1 else '(R, 17)'} and "
                    f"{'(K, 3)' if ndim == 1 else '(R, 17, 3)'}")
            if not np.issubdtype(faces.dtype, np.integer):
                if not np.array_equal(faces, np.round(faces)):
                    raise LandmarkError(f"{where}: {kind} landmark face indices are not integers")
            faces = faces.astype(np.int64)
            if faces.min() < 0 or (n_faces is not None and faces.max() >= n_faces):
                raise LandmarkError(
                    f"{where}: {kind} landmarks use faces {faces.min()}..{faces.max()}, but the "
                    f"model has {n_faces} faces; the embedding belongs to another mesh topology")
            if not np.isfinite(bary).all() or not np.allclose(bary.sum(-1), 1.0, atol=1e-2):
                raise LandmarkError(f"{where}: {kind} barycentric coordinates must be finite and "
                                    "sum to 1 per landmark")
            new[f"{kind}_faces"], new[f"{kind}_bary"] = faces, bary.astype(np.float32)
        return LandmarkEmbedding(**new, source=self.source)


def _read_npy_payload(path: Path) -> Any:
    """A .npy file's content; object arrays go through :func:`restricted_unpickle`."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            if not dtype.hasobject:
                return np.load(path, allow_pickle=False)
            rest = fh.read()
    except OSError as exc:
        raise FaceModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise FaceModelError(f"cannot read {path.name} as a .npy file ({exc})") from exc
    obj = restricted_unpickle(rest, name=path.name)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj[()]
    return obj


def _read_embedding_payload(path: Path) -> dict:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        payload = _read_npy_payload(path)
    elif suffix == ".npz":
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                payload = {k: z[k] for k in z.files}
        except Exception as exc:
            raise LandmarkError(f"cannot read {path.name} as an .npz embedding ({exc})") from exc
    elif suffix in (".pkl", ".pickle"):
        payload = restricted_unpickle(path)
    else:
        raise LandmarkError(f"{path.name}: unsupported landmark embedding format (expected .npy, "
                            ".pkl or .npz)")
    if not isinstance(payload, dict):
        raise LandmarkError(f"{path.name}: holds a {type(payload).__name__}, not a landmark "
                            "embedding dict")
    return payload


def _embedding_fields(path: Path) -> dict[str, np.ndarray]:
    """The LandmarkEmbedding fields a file provides (static and/or dynamic and/or full)."""
    p = _read_embedding_payload(path)
    name = path.name

    def get(key: str) -> np.ndarray:
        return to_array(p[key], f"{name}: '{key}'")

    if "static_lmk_faces_idx" in p:  # DECA landmark_embedding.npy
        out = {"static_faces": get("static_lmk_faces_idx"),
               "static_bary": get("static_lmk_bary_coords")}
        for kind in ("dynamic", "full"):
            if f"{kind}_lmk_faces_idx" in p:
                out[f"{kind}_faces"] = get(f"{kind}_lmk_faces_idx")
                out[f"{kind}_bary"] = get(f"{kind}_lmk_bary_coords")
        return out
    if "lmk_face_idx" in p and "lmk_b_coords" in p:  # FLAME / RingNet / TF_FLAME / mediapipe
        faces, bary = get("lmk_face_idx"), get("lmk_b_coords")
        kind = "dynamic" if faces.ndim == 2 else "static"
        return {f"{kind}_faces": faces, f"{kind}_bary": bary}
    raise LandmarkError(f"{name}: not a known landmark embedding (keys {sorted(map(str, p))}; "
                        "expected DECA's static_lmk_faces_idx... or FLAME's lmk_face_idx and "
                        "lmk_b_coords)")


def read_landmark_embedding(path: str | os.PathLike, *, dynamic_path: str | os.PathLike | None
                            = None, n_faces: int | None = None) -> LandmarkEmbedding:
    """Read a landmark embedding file, dispatching on its contents.

    Parameters
    ----------
    path : path
      DECA ``landmark_embedding.npy`` (static 51, dynamic contour (79, 17), full 68), FLAME /
      RingNet ``flame_static_embedding.pkl`` (51) or ``flame_static_embedding_68.pkl`` (68), or
      an ``.npz`` with ``lmk_face_idx`` / ``lmk_b_coords``.
    dynamic_path : path, optional
      A ``flame_dynamic_embedding.npy`` (contour (79, 17)) to combine with a static file.
    n_faces : int, optional
      Number of faces of the model; face indices must be below it.

    Returns
    -------
    embedding : LandmarkEmbedding
    """
    path = Path(path)
    fields = _embedding_fields(path)
    sources = [path.name]
    if dynamic_path is not None:
        dyn = _embedding_fields(Path(dynamic_path))
        if "dynamic_faces" not in dyn:
            raise LandmarkError(f"{Path(dynamic_path).name}: holds no dynamic contour embedding "
                                "(expected lmk_face_idx of shape (79, 17))")
        fields.update(dynamic_faces=dyn["dynamic_faces"], dynamic_bary=dyn["dynamic_bary"])
        sources.append(Path(dynamic_path).name)
    if "static_faces" not in fields:
        raise LandmarkError(f"{path.name}: holds only the dynamic face contour; read it as "
                            "`dynamic_path` together with a static embedding file")
    return LandmarkEmbedding(**fields, source="+".join(sources)).validated(n_faces)


def find_landmark_embedding(model_path: str | os.PathLike, *, n_faces: int | None = None
                            ) -> LandmarkEmbedding | None:
    """Find and read the landmark embedding stored next to a model file.

    Looks in the model's folder for ``landmark_embedding.npy`` (DECA), then
    ``flame_static_embedding_68.pkl``, then ``flame_static_embedding.pkl`` (each combined with
    ``flame_dynamic_embedding.npy`` when present). A file that is there but broken raises.

    Parameters
    ----------
    model_path : path
      The face model file (or its folder).
    n_faces : int, optional
      Number of faces of the model, to check the indices.

    Returns
    -------
    embedding : LandmarkEmbedding or None
      None when no embedding file is there.
    """
    folder = Path(model_path)
    folder = folder if folder.is_dir() else folder.parent
    dynamic = folder / "flame_dynamic_embedding.npy"
    for name in ("landmark_embedding.npy", "flame_static_embedding_68.pkl",
                 "flame_static_embedding.pkl"):
        if (folder / name).is_file():
            dyn = dynamic if name.startswith("flame_") and dynamic.is_file() else None
            return read_landmark_embedding(folder / name, dynamic_path=dyn, n_faces=n_faces)
    return None
