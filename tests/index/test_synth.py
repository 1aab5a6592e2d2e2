"""Synthetic galleries (:mod:`skullsearch.index.synth`): codes from the prior in their documented
ranges and deterministic for a seed, ``synth`` writing faces, persons and indexes into a real
gallery (DuckDB catalog, FAISS indexes), and ``add_synthetic_faces`` storing what it is given."""

import numpy as np
import pytest

from skullsearch import Gallery
from skullsearch.encoder import code as code_layout
from skullsearch.index import store
from skullsearch.index.ingest import neutral_soft_tissue
from skullsearch.index.synth import add_synthetic_faces, synth, synth_codes

S = code_layout.SLICES


def test_synth_codes_are_identity_only_in_the_documented_ranges(default_model):
    n = 2000
    codes = synth_codes(default_model, n, np.random.default_rng(0))
    assert codes.shape == (n, code_layout.CODE_SIZE) and codes.dtype == np.float32
    s = min(default_model.n_shape, code_layout.N_SHAPE)
    z = codes[:, S["shape"]][:, :s] / default_model.shape_std[:s]  # the prior: N(0, 1) per component
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1.0) < 0.02
    assert (codes[:, S["shape"]][:, s:] == 0).all()
    for part in ("expression", "pose", "light"):
        assert (codes[:, S[part]] == 0).all(), part
    rot = codes[:, S["cam_rot"]]
    assert (rot[:, [0, 2]] == 0).all()
    yaw = np.rad2deg(rot[:, 1])
    assert yaw.min() >= -30.0001 and yaw.max() <= 30.0001 and yaw.min() < -25 and yaw.max() > 25
    trans = codes[:, S["cam_trans"]]
    assert (trans[:, 0] == 0).all() and (trans[:, 1] == -30).all()
    assert trans[:, 2].min() >= 500 and trans[:, 2].max() <= 900


def test_synth_codes_are_deterministic_for_a_seed(default_model):
    a = synth_codes(default_model, 7, np.random.default_rng(3))
    b = synth_codes(default_model, 7, np.random.default_rng(3))
    c = synth_codes(default_model, 7, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert synth_codes(default_model, 0, np.random.default_rng(0)).shape == (0, code_layout.CODE_SIZE)


@pytest.fixture(scope="module")
def synthetic(default_model, tmp_path_factory):
    """A gallery of 25 synthetic faces in shards of 10 (seed 5), with the progress events."""
    g = Gallery.create(tmp_path_factory.mktemp("synth") / "g", face_model=default_model)
    events = []
    report = synth(g, 25, seed=5, shard_faces=10, progress=events.append)
    return g, report, events


def test_synth_writes_n_faces_in_shards(synthetic):
    g, report, events = synthetic
    assert (report.faces, report.shards, report.images_new, report.images_seen) == (25, 3, 25, 25)
    assert report.failures == {}
    assert g.n_faces == 25 and [s.faces for s in g.shards()] == [10, 10, 5]
    assert events == [{"done": 10, "total": 25}, {"done": 20, "total": 25}, {"done": 25, "total": 25}]


def test_synth_rows_have_synthetic_paths_and_persons_of_one_to_three_faces(synthetic):
    g, _, _ = synthetic
    rows = g.faces(columns=["face_id", "path", "person", "detector", "yaw_deg"]).to_pylist()
    assert len(rows) == 25
    for r in rows:
        shard, row = (int(x) for x in store.split_id(r["face_id"]))
        assert r["path"] == f"synth://5/{shard:08d}/{row:08d}.jpg"
        assert r["person"].startswith(f"synth-5-{shard}-") and r["detector"] == "synth"
    by_person = {}
    for r in rows:
        by_person.setdefault(r["person"], []).append(int(store.split_id(r["face_id"])[1]))
    sizes = [len(v) for v in by_person.values()]
    assert all(1 <= k <= 3 for k in sizes) and sum(sizes) == 25
    assert any(k > 1 for k in sizes)  # some persons do have several faces
    for faces in by_person.values():  # a person's faces are consecutive rows of one shard
        assert faces == list(range(faces[0], faces[0] + len(faces)))
    codes = g.codes([r["face_id"] for r in rows])
    np.testing.assert_allclose([r["yaw_deg"] for r in rows], np.rad2deg(codes[:, S["cam_rot"]][:, 1]),
                               atol=1e-4)


def test_synth_stores_the_seeds_codes_and_their_soft_tissue(synthetic, default_model):
    g, _, _ = synthetic
    rng = np.random.default_rng(5)  # the first shard's codes are the seed's first draw
    want = synth_codes(default_model, 10, rng)
    ids = store.face_id(g.shards()[0].number, np.arange(10))
    np.testing.assert_array_equal(g.codes(ids), want)
    np.testing.assert_allclose(g.soft_tissue(ids), neutral_soft_tissue(default_model, want), atol=1e-5)
    # the indexes were saved: a stored code finds its own face first
    _, found = g.search_codes(want[3:4], k=1)
    assert int(found[0, 0]) == int(ids[3])


def test_synth_is_deterministic_for_a_seed(default_model, tmp_path):
    a = Gallery.create(tmp_path / "a", face_model=default_model)
    b = Gallery.create(tmp_path / "b", face_model=default_model)
    synth(a, 6, seed=2)
    synth(b, 6, seed=2)
    ids = store.face_id(a.shards()[0].number, np.arange(6))
    np.testing.assert_array_equal(a.codes(ids), b.codes(ids))
    cols = ["face_id", "path", "person"]
    assert a.faces(columns=cols).to_pylist() == b.faces(columns=cols).to_pylist()


def test_add_synthetic_faces_stores_the_given_vectors_and_persons(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    rng = np.random.default_rng(1)
    codes = synth_codes(default_model, 4, rng)
    desc = rng.normal(size=(4, 128)).astype(np.float32)
    desc[2] = np.nan  # a face without a descriptor
    fps = rng.normal(size=(4, 63)).astype(np.float32)
    ids = add_synthetic_faces(g, codes, fingerprints=fps, descriptors=desc, tag="fake",
                              persons=["ann", "ann", "bob", "cy"])
    assert ids.dtype == np.int64 and ids.shape == (4,) and len(set(ids.tolist())) == 4
    np.testing.assert_array_equal(g.codes(ids), codes)
    got = g.descriptors(ids)  # stored as float16 (the catalog's vector columns)
    np.testing.assert_array_equal(got[[0, 1, 3]], desc[[0, 1, 3]].astype(np.float16).astype(np.float32))
    assert np.isnan(got[2]).all()
    np.testing.assert_array_equal(g.photo_fingerprints(ids), fps.astype(np.float16).astype(np.float32))
    number = int(store.split_id(ids)[0][0])
    rows = g.rows(ids, columns=("path", "person"))
    assert [r["path"] for r in rows] == [f"fake://{number}/{i}.jpg" for i in range(4)]
    assert [r["person"] for r in rows] == ["ann", "ann", "bob", "cy"]
    # a second call: the next shard; persons default to the paths; no vectors: NaN rows
    more = add_synthetic_faces(g, synth_codes(default_model, 2, rng))
    assert int(store.split_id(more)[0][0]) > number and g.n_faces == 6
    rows = g.rows(more, columns=("path", "person"))
    assert all(r["person"] == r["path"] and r["path"].startswith("synth://") for r in rows)
    assert np.isnan(g.descriptors(more)).all() and np.isnan(g.photo_fingerprints(more)).all()
