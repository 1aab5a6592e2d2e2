"""The built-in face models by name (:mod:`skullsearch.encoder.builtin_models`): the names, the
default, the packaged ICT export, anny's cache (read, never trusted when damaged), and an unknown
name's error. anny itself is built only in the test marked slow."""

import logging

import numpy as np
import pytest

from skullsearch import FaceModel, FaceModelError
from skullsearch.encoder import builtin_models as bm
from skullsearch.encoder.anny_head import default_model_path


class _Sub(FaceModel):
    """A FaceModel subclass: load_builtin builds the class it is given."""


def test_the_names_and_the_default():
    assert list(bm.BUILTIN_MODELS) == ["ict", "anny"]
    assert bm.DEFAULT_MODEL == next(iter(bm.BUILTIN_MODELS))  # "the first is the default"
    assert "MIT" in bm.BUILTIN_MODELS["ict"] and "Apache-2.0" in bm.BUILTIN_MODELS["anny"]
    assert bm.ICT_PACKAGED.is_file() and bm.ICT_PACKAGED.suffix == ".npz"
    assert bm.ICT_PACKAGED.parent.name == "data"


def test_ict_is_the_packaged_default(default_model):
    m = bm.load_builtin(FaceModel, "ict")
    assert m.fingerprint == default_model.fingerprint
    assert m is not default_model  # a fresh model each time, not a shared one
    assert m.soft_tissue_points is not None and m.landmarks is not None  # annotated in the file
    assert "ICT Face Model Light" in m.meta["name"]
    assert FaceModel.default().fingerprint == m.fingerprint == FaceModel.builtin(bm.DEFAULT_MODEL).fingerprint


def test_the_model_class_is_taken_as_an_argument(default_model):
    m = bm.load_builtin(_Sub, "ict")
    assert type(m) is _Sub and m.fingerprint == default_model.fingerprint
    assert type(_Sub.default()) is _Sub


@pytest.mark.parametrize("name", ["flame", "ICT", "", "anny "])
def test_an_unknown_name_lists_the_known_ones(name):
    with pytest.raises(FaceModelError) as info:
        bm.load_builtin(FaceModel, name)
    text = str(info.value)
    assert f"no built-in face model {name!r}" in text
    assert "built-in: ict, anny" in text and ".pkl" in text and ".npz" in text


def test_a_missing_packaged_file_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(bm, "ICT_PACKAGED", tmp_path / "gone.npz")
    with pytest.raises(FaceModelError, match="is missing: reinstall skullsearch, or choose another model"):
        bm.load_builtin(FaceModel, "ict")


def test_anny_is_read_from_its_cache_without_building(default_model, monkeypatch, tmp_path):
    """A readable cached export is loaded as it is (here: a model file put where anny's goes)."""
    monkeypatch.setenv("SKULLSEARCH_CACHE", str(tmp_path))
    path = default_model_path()
    assert path.is_relative_to(tmp_path) and path.name.startswith("anny-head-")
    path.parent.mkdir(parents=True)
    default_model.save(path)
    before = path.stat().st_mtime_ns
    m = bm.load_builtin(FaceModel, "anny")
    assert m.fingerprint == default_model.fingerprint
    assert path.stat().st_mtime_ns == before  # not rewritten


@pytest.mark.slow
def test_a_damaged_anny_cache_is_rebuilt(anny_model, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SKULLSEARCH_CACHE", str(tmp_path))
    path = default_model_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger=bm.__name__):
        m = bm.load_builtin(FaceModel, "anny")
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert m.fingerprint == anny_model.fingerprint
    again = FaceModel.load(path, annotate=False)  # the cache now holds the rebuilt export
    assert again.fingerprint == anny_model.fingerprint
    assert np.isfinite(again.v_template).all() and again.soft_tissue_points is not None
