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
    assert list(indexes.KINDS) == ["shortlist", "codes"]
    s, c = indexes.KINDS["shortlist"], indexes.KINDS["codes"]
    assert (s.name, s.dim, s.metric, s.build) == ("shortlist", 144, "ip", "flat")
    assert (c.name, c.dim, c.metric, c.build) == ("codes", code_layout.N_SHAPE, "l2", "auto")
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
