"""FLAME-format reading: pickles (with and without chumpy), npz, landmark embeddings, refusals."""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import sys

import numpy as np
import pytest

from skullsearch.encoder import flame_io as fio
from skullsearch.errors import FaceModelError, LandmarkError, UnsafePickleError

from flame_writer import (
    _Payload,
    fake_chumpy,
    make_synthetic_flame,
    write_flame_dynamic_embedding,
    write_flame_pickle,
    write_flame_static_embedding,
    write_landmark_embedding_deca,
    write_malicious_pickle,
)


@pytest.fixture(scope="module")
def flame() -> dict:
    return make_synthetic_flame(seed=1)


@pytest.fixture()
def no_chumpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import chumpy`` fail while the test reads files."""
    for name in ("chumpy", "chumpy.ch", "chumpy.ch_ops", "chumpy.reordering"):
        monkeypatch.setitem(sys.modules, name, None)


def _globals(path) -> set[str]:
    ops = pickletools.genops(path.read_bytes())
    return {arg.replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"}


# ----------------------------------------------------------------------------- pickles


def test_flame2020_chumpy_pickle_reads_in_mm(tmp_path, flame, no_chumpy):
    path = write_flame_pickle(tmp_path / "generic_model.pkl", flame, chumpy=True)
    assert {"chumpy.ch.Ch", "scipy.sparse.csc.csc_matrix"} <= _globals(path)
    m = fio.read_flame_pickle(path)
    n_v, n_f = len(flame["v_template"]), len(flame["f"])
    assert m["v_template"].shape == (n_v, 3) and m["v_template"].dtype == np.float32
    np.testing.assert_allclose(m["v_template"], flame["v_template"] * 1000, rtol=1e-6)
    assert m["faces"].dtype == np.int64 and m["faces"].shape == (n_f, 3)
    np.testing.assert_array_equal(m["faces"], flame["f"])
    assert m["shapedirs"].shape == (n_v, 3, 300) and m["exprdirs"].shape == (n_v, 3, 100)
    np.testing.assert_allclose(m["shapedirs"], flame["shapedirs"][:, :, :300] * 1000, rtol=1e-5)
    np.testing.assert_allclose(m["exprdirs"], flame["shapedirs"][:, :, 300:] * 1000, rtol=1e-5)
    np.testing.assert_allclose(m["posedirs"], flame["posedirs"] * 1000, rtol=1e-5)
    assert m["J_regressor"].shape == (5, n_v) and isinstance(m["J_regressor"], np.ndarray)
    np.testing.assert_allclose(m["J_regressor"], flame["J_regressor"].toarray(), rtol=1e-6)
    np.testing.assert_allclose(m["weights"], flame["weights"], rtol=1e-6)
    np.testing.assert_array_equal(m["parents"], [-1, 0, 1, 1, 1])
    assert m["parents"].dtype == np.int64
    assert m["meta"]["source_format"] == "FLAME 2020"
    assert m["meta"]["units_in_file"] == "m" and m["meta"]["file"] == "generic_model.pkl"
    assert sys.modules.get("chumpy") is None  # never imported (the fixture's None is intact)


def test_plain_ndarray_pickles_flame2023(tmp_path, flame):
    for name, label in (("flame2023.pkl", "FLAME 2023"), ("flame2023_Open.pkl", "FLAME 2023 Open")):
        path = write_flame_pickle(tmp_path / name, flame, chumpy=False, legacy_names=False)
        assert not any(g.startswith("chumpy") for g in _globals(path))
        m = fio.read_flame_pickle(path)
        assert m["meta"]["source_format"] == label and m["meta"]["chumpy"] is False
        np.testing.assert_allclose(m["v_template"], flame["v_template"] * 1000, rtol=1e-6)


@pytest.mark.parametrize("protocol", [0, 4, 5])
def test_other_pickle_protocols(tmp_path, flame, protocol):
    path = write_flame_pickle(tmp_path / "m.pkl", flame, chumpy=protocol > 0, protocol=protocol)
    m = fio.read_flame_pickle(path)
    np.testing.assert_allclose(m["weights"], flame["weights"], rtol=1e-6)


def test_already_mm_file_is_not_scaled_twice(tmp_path, flame):
    mm = dict(flame, v_template=flame["v_template"] * 1000, shapedirs=flame["shapedirs"] * 1000,
              posedirs=flame["posedirs"] * 1000)
    m = fio.read_flame_pickle(write_flame_pickle(tmp_path / "mm.pkl", mm))
    assert m["meta"]["units_in_file"] == "mm"
    np.testing.assert_allclose(m["v_template"], mm["v_template"], rtol=1e-6)
    np.testing.assert_allclose(m["shapedirs"], mm["shapedirs"][:, :, :300], rtol=1e-5)


def test_kintree_with_minus_one_root(tmp_path):
    arrays = make_synthetic_flame(root_parent=-1, n_shape=10, n_expr=5)
    m = fio.read_flame_pickle(write_flame_pickle(tmp_path / "k.pkl", arrays))
    np.testing.assert_array_equal(m["parents"], [-1, 0, 1, 1, 1])


def test_shapedirs_split(tmp_path):
    small = make_synthetic_flame(n_shape=100, n_expr=50)
    path = write_flame_pickle(tmp_path / "s.pkl", small)
    m = fio.read_flame_pickle(path)  # 150 <= 300: all identity by default
    assert m["shapedirs"].shape[2] == 150 and m["exprdirs"].shape == (len(m["v_template"]), 3, 0)
    m = fio.read_flame_pickle(path, n_shape=100)
    assert m["shapedirs"].shape[2] == 100 and m["exprdirs"].shape[2] == 50
    np.testing.assert_allclose(m["exprdirs"], small["shapedirs"][:, :, 100:] * 1000, rtol=1e-5)
    m = fio.read_flame_pickle(write_flame_pickle(tmp_path / "b.pkl",
                                                 make_synthetic_flame(n_shape=300, n_expr=50)))
    assert m["shapedirs"].shape[2] == 300 and m["exprdirs"].shape[2] == 50
    with pytest.raises(FaceModelError, match="n_shape"):
        fio.read_flame_pickle(path, n_shape=200)


def test_restricted_unpickle_accepts_bytes_and_paths(tmp_path, flame):
    path = write_flame_pickle(tmp_path / "m.pkl", flame)
    from_bytes = fio.restricted_unpickle(path.read_bytes())
    from_path = fio.restricted_unpickle(path)
    assert set(from_bytes) == set(from_path) == set(flame)
    assert from_path["J_regressor"].format == "csc"  # a real, current scipy matrix
    np.testing.assert_allclose(fio.to_array(from_path["v_template"]), flame["v_template"])


def test_crlf_mangled_text_pickle_still_reads(tmp_path):
    data = {"lmk_face_idx": np.arange(3), "lmk_b_coords": np.full((3, 3), 1 / 3)}
    blob = pickle.dumps(data, protocol=0).replace(b"\n", b"\r\n")
    out = fio.restricted_unpickle(blob)
    np.testing.assert_array_equal(out["lmk_face_idx"], [0, 1, 2])
    binary = pickle.dumps({"x": np.frombuffer(b"\r\n" * 8, np.uint8)}, protocol=1)
    assert binary[:1] != b"\x80" and b"\r\n" in binary  # protocol 1: no header, raw CR LF kept
    assert fio.restricted_unpickle(binary)["x"].tobytes() == b"\r\n" * 8
    marker = tmp_path / "marker"
    evil = pickle.dumps(_Payload(os.system, (f"touch {marker}",)), 0)
    with pytest.raises(UnsafePickleError, match="system"):
        fio.restricted_unpickle(evil.replace(b"\n", b"\r\n"))
    assert not marker.exists()


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind", ["os.system", "eval", "getattr", "torch"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, kind):
    if kind == "torch":
        pytest.importorskip("torch")
    marker = tmp_path / "marker"
    path = write_malicious_pickle(tmp_path / "generic_model.pkl", marker, kind=kind)
    with pytest.raises(UnsafePickleError, match="skullsearch model convert") as err:
        fio.read_flame_pickle(path)
    assert "malicious" in str(err.value)
    assert "generic_model.pkl" in str(err.value) or kind == "torch"
    with pytest.raises(UnsafePickleError):
        fio.load_face_model_file(path)
    assert not marker.exists()


def test_malicious_object_npy_embedding_is_refused(tmp_path):
    marker = tmp_path / "marker"
    evil = write_malicious_pickle(tmp_path / "evil.pkl", marker).read_bytes()
    npy = tmp_path / "landmark_embedding.npy"
    with open(npy, "wb") as fh:  # an object .npy is a header followed by a pickle
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(evil)
    with pytest.raises(UnsafePickleError, match="system"):
        fio.read_landmark_embedding(npy)
    assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path, flame):
    blob = write_flame_pickle(tmp_path / "m.pkl", flame).read_bytes()
    cases = {"truncated.pkl": blob[: len(blob) // 2], "empty.pkl": b"",
             "garbage.pkl": b"\xff\xfe" + np.random.default_rng(0).bytes(4096),
             "text.pkl": b"hello, not a pickle\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FaceModelError) as err:
            fio.read_flame_pickle(tmp_path / name)
        assert not isinstance(err.value, UnsafePickleError)
        assert name in str(err.value)
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(FaceModelError, match="not a FLAME model dict"):
        fio.read_flame_pickle(tmp_path / "list.pkl")


def test_truncated_file_is_not_unsafe(tmp_path, flame):
    blob = write_flame_pickle(tmp_path / "m.pkl", flame).read_bytes()
    (tmp_path / "t.pkl").write_bytes(blob[:-100])
    with pytest.raises(FaceModelError, match="truncated or damaged") as err:
        fio.read_flame_pickle(tmp_path / "t.pkl")
    assert not isinstance(err.value, UnsafePickleError)


@pytest.mark.parametrize("key", ["posedirs", "J_regressor", "kintree_table", "f"])
def test_missing_key_is_named(tmp_path, flame, key):
    arrays = {k: v for k, v in flame.items() if k != key}
    with pytest.raises(FaceModelError, match=f"'{key}' is missing"):
        fio.read_flame_pickle(write_flame_pickle(tmp_path / "m.pkl", arrays))


def test_shape_mismatches_are_named(tmp_path, flame):
    bad = {
        "weights": dict(flame, weights=flame["weights"][:-1]),
        "posedirs": dict(flame, posedirs=flame["posedirs"][:, :, :27]),
        "J_regressor": dict(flame, J_regressor=flame["J_regressor"][:, :-1]),
        "f": dict(flame, f=flame["f"] + np.uint32(len(flame["v_template"]))),
    }
    for key, arrays in bad.items():
        with pytest.raises(FaceModelError, match=f"'{key}'"):
            fio.read_flame_pickle(write_flame_pickle(tmp_path / f"{key}.pkl", arrays))
    w = flame["weights"].copy()
    w[0] *= 2
    with pytest.raises(FaceModelError, match="sum to 1"):
        fio.read_flame_pickle(write_flame_pickle(tmp_path / "w.pkl", dict(flame, weights=w)))


def test_chumpy_expression_without_value_names_the_key(tmp_path, flame):
    with fake_chumpy() as ch:
        arrays = dict(flame, posedirs=ch.add(ch.Ch(flame["posedirs"]), ch.Ch(flame["posedirs"])))
        blob = pickle.dumps(arrays, protocol=2)
    assert "chumpy" not in sys.modules
    (tmp_path / "op.pkl").write_bytes(blob)
    with pytest.raises(FaceModelError, match=r"'posedirs' is a chumpy chumpy\.ch_ops\.add"):
        fio.read_flame_pickle(tmp_path / "op.pkl")


def test_torch_tensors_in_plain_pickles_decode_without_torch():
    torch = pytest.importorskip("torch")
    ts = {"t": torch.arange(12).reshape(3, 4).t(), "s": torch.rand(5, 3)[1:4, ::2],
          "b": torch.tensor([True, False]), "d": torch.rand(2, 3, dtype=torch.float64),
          "e": torch.zeros(0, 3), "i": torch.arange(5, dtype=torch.int32)[2:]}
    for protocol in (2, 4):
        out = fio.restricted_unpickle(pickle.dumps(ts, protocol=protocol))
        for k, t in ts.items():
            assert isinstance(out[k], np.ndarray) and out[k].dtype == t.numpy().dtype
            np.testing.assert_array_equal(out[k], t.numpy())
    with pytest.raises(FaceModelError, match="past its storage"):
        fio._torch_tensor(np.arange(4), 0, (5,), (1,))


def test_to_array_kinds():
    import scipy.sparse as sp

    torch = pytest.importorskip("torch")

    assert fio.to_array(sp.csr_matrix(np.eye(2))).tolist() == [[1, 0], [0, 1]]
    assert fio.to_array(torch.arange(3)).tolist() == [0, 1, 2]
    assert fio.to_array([np.zeros(2), np.ones(2)]).shape == (2, 2)
    assert fio.to_array(3.0).shape == ()
    with pytest.raises(FaceModelError, match="'x' holds a str"):
        fio.to_array("text", "'x'")


# ----------------------------------------------------------------------------- npz


def test_npz_round_trip(tmp_path, flame):
    m = fio.read_flame_pickle(write_flame_pickle(tmp_path / "generic_model.pkl", flame))
    write_flame_static_embedding(tmp_path / "s.pkl", len(flame["f"]))
    emb = fio.read_landmark_embedding(tmp_path / "s.pkl")
    m["shape_std"] = np.ones(300, np.float32)
    m["landmarks"] = emb
    out = tmp_path / "model.npz"
    fio.write_face_model_npz(out, m)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    back = fio.read_face_model_npz(out)
    for k in fio.MODEL_KEYS:
        np.testing.assert_array_equal(back[k], m[k])
        assert back[k].dtype == m[k].dtype
    np.testing.assert_array_equal(back["shape_std"], m["shape_std"])
    assert back["meta"]["format_version"] == fio.FORMAT_VERSION
    assert back["meta"]["source_format"] == "FLAME 2020" and back["meta"]["units_in_file"] == "m"
    np.testing.assert_array_equal(back["landmarks"].static_faces, emb.static_faces)
    with np.load(out, allow_pickle=False) as z:  # plain arrays only, meta as JSON
        assert "meta_json" in z.files and all(z[k].dtype != object for k in z.files)
    loaded = fio.load_face_model_file(out)
    np.testing.assert_array_equal(loaded["landmarks"].static_bary, emb.static_bary)


def test_npz_refuses_pickles_metres_and_bad_keys(tmp_path, flame):
    m = fio.read_flame_pickle(write_flame_pickle(tmp_path / "m.pkl", flame))
    np.savez(tmp_path / "obj.npz", **{k: m[k] for k in fio.MODEL_KEYS}, x=np.array([{}], object))
    with pytest.raises(FaceModelError, match="obj.npz"):
        fio.read_face_model_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "metres.npz", **dict({k: m[k] for k in fio.MODEL_KEYS},
                                             v_template=m["v_template"] / 1000))
    with pytest.raises(FaceModelError, match="metres"):
        fio.read_face_model_npz(tmp_path / "metres.npz")
    np.savez(tmp_path / "missing.npz", **{k: m[k] for k in fio.MODEL_KEYS if k != "weights"})
    with pytest.raises(FaceModelError, match="'weights' is missing"):
        fio.read_face_model_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(FaceModelError, match="junk.npz"):
        fio.read_face_model_npz(tmp_path / "junk.npz")
    with pytest.raises(FaceModelError, match="'parents' is missing"):
        fio.write_face_model_npz(tmp_path / "w.npz", {k: m[k] for k in fio.MODEL_KEYS[:-1]})
    assert not (tmp_path / "w.npz").exists()


# ----------------------------------------------------------------------------- embeddings


def test_deca_embedding_with_torch_contour(tmp_path, no_chumpy, monkeypatch):
    pytest.importorskip("torch")
    ref = write_landmark_embedding_deca(tmp_path / "landmark_embedding.npy", n_faces=320)
    monkeypatch.setitem(sys.modules, "torch", None)  # decoded without torch
    e = fio.read_landmark_embedding(tmp_path / "landmark_embedding.npy", n_faces=320)
    assert e.static_faces.shape == (51,) and e.static_bary.shape == (51, 3)
    assert e.dynamic_faces.shape == (79, 17) and e.dynamic_bary.shape == (79, 17, 3)
    assert e.full_faces.shape == (68,) and e.full_bary.shape == (68, 3)
    assert e.static_faces.dtype == np.int64 and e.dynamic_bary.dtype == np.float32
    np.testing.assert_array_equal(e.dynamic_faces, ref["dynamic_lmk_faces_idx"])
    np.testing.assert_allclose(e.full_bary, ref["full_lmk_bary_coords"][0], rtol=1e-6)
    np.testing.assert_array_equal(e.static_faces, ref["static_lmk_faces_idx"])


@pytest.mark.parametrize("n", [51, 68])
def test_flame_static_embedding(tmp_path, n):
    ref = write_flame_static_embedding(tmp_path / "s.pkl", n_faces=320, n=n)
    e = fio.read_landmark_embedding(tmp_path / "s.pkl", n_faces=320)
    assert e.n_static == n and e.dynamic_faces is None and e.full_faces is None
    np.testing.assert_array_equal(e.static_faces, ref["lmk_face_idx"])
    np.testing.assert_allclose(e.static_bary, ref["lmk_b_coords"], rtol=1e-6)


@pytest.mark.parametrize("as_list", [False, True])
def test_flame_dynamic_embedding(tmp_path, as_list):
    write_flame_static_embedding(tmp_path / "s.pkl", n_faces=320)
    ref = write_flame_dynamic_embedding(tmp_path / "d.npy", n_faces=320, as_list=as_list)
    e = fio.read_landmark_embedding(tmp_path / "s.pkl", dynamic_path=tmp_path / "d.npy")
    np.testing.assert_array_equal(e.dynamic_faces, ref["lmk_face_idx"])
    assert e.dynamic_bary.shape == (79, 17, 3) and e.source == "s.pkl+d.npy"
    with pytest.raises(LandmarkError, match="only the dynamic"):
        fio.read_landmark_embedding(tmp_path / "d.npy")


def test_embedding_face_indices_checked(tmp_path):
    write_flame_static_embedding(tmp_path / "s.pkl", n_faces=320)
    with pytest.raises(LandmarkError, match="another mesh topology"):
        fio.read_landmark_embedding(tmp_path / "s.pkl", n_faces=10)
    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"foo": np.zeros(3)}, protocol=2))
    with pytest.raises(LandmarkError, match="not a known landmark embedding"):
        fio.read_landmark_embedding(tmp_path / "x.pkl")


def test_find_landmark_embedding_next_to_model(tmp_path, flame):
    model = write_flame_pickle(tmp_path / "generic_model.pkl", flame)
    n_f = len(flame["f"])
    assert fio.find_landmark_embedding(model) is None
    assert fio.load_face_model_file(model)["landmarks"] is None
    write_flame_static_embedding(tmp_path / "flame_static_embedding.pkl", n_f, n=51)
    write_flame_dynamic_embedding(tmp_path / "flame_dynamic_embedding.npy", n_f)
    e = fio.find_landmark_embedding(model, n_faces=n_f)
    assert e.n_static == 51 and e.dynamic_faces.shape == (79, 17)
    write_flame_static_embedding(tmp_path / "flame_static_embedding_68.pkl", n_f, n=68)
    assert fio.find_landmark_embedding(model).n_static == 68
    write_landmark_embedding_deca(tmp_path / "landmark_embedding.npy", n_f)
    e = fio.load_face_model_file(model)["landmarks"]
    assert e.source == "landmark_embedding.npy" and e.full_faces.shape == (68,)


# ----------------------------------------------------------------------------- dispatch


def test_load_face_model_file_dispatch(tmp_path, flame):
    with pytest.raises(FaceModelError, match="no such face model file"):
        fio.load_face_model_file(tmp_path / "absent.pkl")
    (tmp_path / "head.obj").write_text("v 0 0 0\n")
    with pytest.raises(FaceModelError, match=r"Supported: \.pkl"):
        fio.load_face_model_file(tmp_path / "head.obj")
    m = fio.load_face_model_file(write_flame_pickle(tmp_path / "FLAME_NEUTRAL.pkl", flame))
    assert m["meta"]["source_format"] == "FLAME 2020" and m["landmarks"] is None


def test_file_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 3_000_000)
    assert fio.file_sha256(p, chunk_size=1 << 16) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
