"""The gallery's saved index kinds (index/indexes.py): what each holds and how a shard's vectors
are made, on a real gallery of the default model with a few synthetic faces. (Building, saving
and searching the indexes: tests/index/test_indexes_and_duplicates.py.)"""

import numpy as np
import pytest
import torch

from skullsearch import Gallery
from skullsearch.encoder import code as code_layout
from skullsearch.index import indexes, vectors
from skullsearch.index.synth import add_synthetic_faces, synth_codes


def test_the_kinds_their_widths_and_metrics():
    assert list(indexes.KINDS) == ["shortlist", "shape"]
    s, c = indexes.KINDS["shortlist"], indexes.KINDS["shape"]
    assert (s.name, s.key, s.dim, s.metric, s.build) == ("shortlist", "shortlist", 144, "ip", "flat")
    # the shape index keeps its earlier galleries' key and name ("codes")
    assert (c.name, c.key, c.dim, c.metric, c.build) == ("shape", "codes", code_layout.N_SHAPE, "l2", "auto")
    assert indexes.kind("codes") is c and indexes.kind("shape") is c
    with pytest.raises(ValueError, match="unknown index 'soft'.*shortlist, shape"):
        indexes.kind("soft")
    with pytest.raises(AttributeError):  # frozen: a kind is a constant
        s.dim = 3


@pytest.fixture(scope="module")
def gallery(default_model, tmp_path_factory):
    g = Gallery.create(tmp_path_factory.mktemp("g") / "g", face_model=default_model)
    codes = synth_codes(default_model, 4, np.random.default_rng(0))
    codes[0, code_layout.SLICES["shape"]] = 0.0  # face 0: the mean face
    add_synthetic_faces(g, codes)
    return g, codes


def test_shortlist_vectors_are_augmented_canonical_soft_tissue_points(gallery, default_model):
    g, codes = gallery
    (shard,) = g.shards()
    v = indexes.SHORTLIST.shard_vectors(g, shard)
    assert v.shape == (4, indexes.SHORTLIST.dim) and v.dtype == np.float32
    canon = v[:, :108].reshape(4, 36, 3)
    np.testing.assert_allclose(v[:, 108:], (canon**2).sum(-1), rtol=1e-5)
    # the mean face, aligned to the mean face, is the mean face
    np.testing.assert_allclose(canon[0], g.mean_soft_tissue, atol=1e-3)
    # another face: its own points (from its shape code), similarity-aligned to the mean
    with torch.no_grad():
        pts = default_model.soft_tissue(shape=torch.as_tensor(codes[1:, :90])).double().numpy()
    np.testing.assert_allclose(canon[1:], vectors.canonical(pts, g.mean_soft_tissue).reshape(3, 36, 3),
                               atol=1e-2)
    assert np.abs(canon[1:] - g.mean_soft_tissue).max() > 1.0  # (and not the mean face)


def test_shape_vectors_are_the_codes_identity_part(gallery):
    g, codes = gallery
    (shard,) = g.shards()
    v = indexes.SHAPE.shard_vectors(g, shard)
    assert v.shape == (4, 90) and v.dtype == np.float32
    np.testing.assert_array_equal(v, codes[:, :90])
    assert not v[0].any() and v[1:].any()


def test_saved_indexes_build_save_reopen_and_forget(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    codes = synth_codes(default_model, 6, np.random.default_rng(1))
    ids = add_synthetic_faces(g, codes)
    saved = indexes.SavedIndexes(g)
    (g.path / "index" / "state.json").write_text("{not json")
    assert saved.state() == {}  # an unreadable state: nothing saved (the indexes are built)
    shape = saved.get(indexes.SHAPE, mmap=False)
    assert shape.ntotal == 6 and saved.held["shape"].shards == [s.number for s in g.shards()]
    saved.save()
    st = saved.state()
    assert set(st) == {"shortlist", "codes"}  # saved under each kind's key
    assert st["codes"]["ntotal"] == 6 and st["codes"]["file"].startswith("codes.")
    first_files = sorted(p.name for p in (g.path / "index").glob("*.faiss"))
    saved.save()  # a second save writes new files and removes the first ones
    files = sorted(p.name for p in (g.path / "index").glob("*.faiss"))
    assert len(files) == 2 and not set(files) & set(first_files)
    # another handle opens the saved file (not a rebuild) and finds the same faces
    other = indexes.SavedIndexes(g)
    got = other.read_saved("codes", {s.number for s in g.shards()})
    assert got is not None and got[0].ntotal == 6 and got[2] == saved.held["shape"].shards
    assert other.read_saved("codes", set()) is None  # holds shards that are not committed
    assert other.read_saved("codes", {s.number for s in g.shards()}, accept=lambda st: False) is None
    d, found = vectors.search(other.get(indexes.SHAPE), vectors.shape_vectors(codes), 1)
    assert list(found[:, 0]) == list(ids)
    other.forget()
    assert other.held == {}


def test_more_shards_after_a_save_are_added_in_memory(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    rng = np.random.default_rng(2)
    add_synthetic_faces(g, synth_codes(default_model, 4, rng))
    g.save_indexes()
    later = add_synthetic_faces(g, synth_codes(default_model, 3, rng))
    saved = indexes.SavedIndexes(g)
    idx = saved.get(indexes.SHORTLIST)
    assert idx.ntotal == 7 and len(saved.held["shortlist"].shards) == 2
    assert saved.state()["shortlist"]["ntotal"] == 4  # the saved file is unchanged
    assert set(later) <= set(vectors.search(idx, vectors.augment_query(
        g.canonical(later), np.ones((3, 36), bool)), 7)[1].reshape(-1).tolist())
