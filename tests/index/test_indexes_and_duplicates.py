"""Memory-mapped indexes, the IVF-PQ path, galleries older than a column, near-duplicate flags."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from skullsearch import Gallery
from skullsearch.index import store, vectors
from skullsearch.index.ingest import flag_near_duplicates
from skullsearch.index.synth import synth


def _queries(g, n, seed, missing=0):
    rng = np.random.default_rng(seed)
    ids = g.sample_ids(n, seed=seed)
    pts = g.soft_tissue(ids) + rng.normal(0, 1.0, (n, 36, 3)).astype(np.float32)
    mask = np.ones((n, 36), bool)
    for row in mask:
        row[rng.choice(36, missing, replace=False)] = False
    return ids, vectors.canonical(pts, g.mean_soft_tissue, mask), mask


def test_saved_indexes_are_memory_mapped_and_search_the_same(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    synth(g, 3000, seed=0)
    reader = Gallery.open(tmp_path / "g")
    idx = reader.index("shortlist")
    assert reader.indexes.held["shortlist"].mapped  # this faiss maps flat indexes (IO_FLAG_MMAP_IFC)
    assert idx.ntotal == 3000
    plain = Gallery.open(tmp_path / "g")
    plain.mmap_indexes = False
    assert not (plain.index("shortlist") and plain.indexes.held["shortlist"].mapped)
    _, canon, mask = _queries(g, 8, 1, missing=5)
    codes = g.codes(g.sample_ids(5, seed=2))
    for a, b in ((reader.search_shortlist(canon, mask, 50), plain.search_shortlist(canon, mask, 50)),
                 (reader.search_codes(codes, 7), plain.search_codes(codes, 7))):
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    # the gallery grows while the reader has it mapped: new shards go to an in-memory part
    synth(g, 700, seed=5)
    after = reader.search_shortlist(canon, mask, 50)
    held = reader.indexes.held["shortlist"]
    assert held.mapped and held.base.ntotal == 3000 and held.delta.ntotal == 700
    fresh = Gallery.open(tmp_path / "g")
    fresh.mmap_indexes = False
    want = fresh.search_shortlist(canon, mask, 50)
    assert np.array_equal(after[1], want[1]) and np.allclose(after[0], want[0], atol=1e-3)
    # a recorded query's view (ID selector) still stops at its shard
    first = max(s.number for s in g.shards()) - 1
    _, ids = reader.search_shortlist(canon, mask, 50, max_shard=first)
    assert (store.split_id(ids[ids >= 0])[0] <= first).all()
    # the writer's save reads the index into memory (a mapped one is never added to)
    g.save_indexes()
    assert not g.indexes.held["shortlist"].mapped and g.index("shortlist").ntotal == 3700


@pytest.fixture(scope="module")
def ivf_gallery(default_model, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(vectors, "FLAT_LIMIT", 1000)  # the > 2M faces path, on 20k faces
    try:
        path = tmp_path_factory.mktemp("ivf") / "g"
        g = Gallery.create(path, face_model=default_model)
        synth(g, 20_000, seed=3)
    finally:
        mp.undo()
    return path


@pytest.mark.slow
def test_ivfpq_path_builds_saves_maps_and_searches_codes(ivf_gallery):
    import faiss

    reader = Gallery.open(ivf_gallery)
    idx = reader.index("codes")
    assert isinstance(faiss.downcast_index(idx), faiss.IndexIVFPQ) and idx.ntotal == 20_000
    assert reader.indexes.held["shape"].mapped  # IVF lists are mapped too
    ids = reader.sample_ids(40, seed=4)
    _, found = reader.search_codes(reader.codes(ids), 5)
    # approximate (PQ codes, 32 of 565 lists probed): the face itself comes first for most
    assert np.mean(found[:, 0] == ids) >= 0.7


@pytest.mark.slow
def test_the_shortlist_index_stays_flat_and_exact_beyond_the_flat_limit(ivf_gallery):
    """IVF clustering by inner product on the augmented vectors sent masked queries to the wrong
    lists (~5 % recall): the shortlist index is flat (mapped) at every size."""
    import faiss

    reader = Gallery.open(ivf_gallery)
    idx = reader.index("shortlist")
    assert isinstance(faiss.downcast_index(idx), faiss.IndexIDMap2) and idx.ntotal == 20_000
    assert reader.indexes.held["shortlist"].mapped
    ids, canon, mask = _queries(reader, 40, 4)
    _, found = reader.search_shortlist(canon, mask, 20)
    hit = np.mean([t in row for t, row in zip(ids, found, strict=True)])
    assert hit >= 0.95, hit


def test_a_gallery_older_than_the_near_duplicate_columns_still_opens(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    synth(g, 200, seed=0, shard_faces=100)  # two shards
    old = g.shards()[0].file(g.path, "faces.parquet")
    t = pq.read_table(old)
    pq.write_table(t.drop(["near_duplicate_of", "near_duplicate_distance"]), old)
    assert "near_duplicate_of" not in pq.read_schema(old).names
    g = Gallery.open(tmp_path / "g")
    assert g.info()["near-duplicate faces"] == 0 and g.info()["faces"] == 200
    rows = g.sql("SELECT count(*) AS n, count(near_duplicate_of) AS d FROM faces").to_pylist()
    assert rows == [{"n": 200, "d": 0}]
    assert g.faces().num_rows == 200 and g.near_duplicates().num_rows == 0
    # every shard old: the columns still exist in the view
    newer = g.shards()[1].file(g.path, "faces.parquet")
    pq.write_table(pq.read_table(newer).drop(["near_duplicate_of", "near_duplicate_distance"]), newer)
    g = Gallery.open(tmp_path / "g")  # (shards are immutable: a gallery object keeps its views)
    assert g.sql("SELECT max(near_duplicate_distance) AS m FROM faces").to_pylist() == [{"m": None}]


@pytest.fixture(scope="module")
def dup_photos(default_model, tmp_path_factory):
    from photos import render_faces

    root = tmp_path_factory.mktemp("dups")
    first, second = root / "first", root / "second"
    render_faces(default_model, first, 3, seed=11, prefix="face")
    # the same pixels under other bytes (re-encoded, with a text chunk): sha256 differs
    a = Image.open(first / "face000.png")
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a copy")
    a.save(first / "face000_copy.png", compress_level=1, pnginfo=info)
    render_faces(default_model, second, 2, seed=12, prefix="other")
    a.save(second / "face000_again.png", compress_level=9)
    return first, second


def test_near_duplicate_photos_are_flagged_and_different_faces_are_not(default_model, dup_photos, tmp_path,
                                                                       capsys):
    first, second = dup_photos
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    rep = g.ingest([first], workers=1)
    assert rep.faces == 4 and rep.duplicates == 0  # other bytes: not the sha256 duplicate
    rep2 = g.ingest([second], workers=1)
    assert rep2.faces == 3
    t = g.faces(columns=["face_id", "path", "near_duplicate_of", "near_duplicate_distance"]).to_pylist()
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in t}
    orig = by_name["face000.png"]
    # within one run (earlier in the shard) and against the saved code index (a later run)
    copy = by_name["face000_copy.png"]
    assert copy["near_duplicate_of"] == orig["face_id"] and copy["near_duplicate_distance"] < 0.05
    again = by_name["face000_again.png"]  # the nearest earlier face: the original or its copy
    assert again["near_duplicate_of"] in (orig["face_id"], copy["face_id"])
    assert again["near_duplicate_distance"] < 0.05
    flagged = {n for n, r in by_name.items() if r["near_duplicate_of"] is not None}
    assert flagged == {"face000_copy.png", "face000_again.png"}  # 3 other faces: not flagged
    assert rep.near_duplicates + rep2.near_duplicates == 2
    assert g.info()["near-duplicate faces"] == 2
    listed = g.near_duplicates().to_pylist()
    assert {r["path"].rsplit("/", 1)[1] for r in listed} == flagged
    assert all(r["duplicate_path"].rsplit("/", 1)[1] in ("face000.png", "face000_copy.png")
               for r in listed)
    from skullsearch.cli.app import main

    capsys.readouterr()
    assert main(["near-duplicates", "--gallery", str(g.path), "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "face000_again.png" in "".join(lines)
    assert main(["info", "--gallery", str(g.path)]) == 0
    assert "near-duplicate faces" in capsys.readouterr().out


def test_flagging_off_and_the_pairwise_rule(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    codes = np.zeros((4, 228), np.float32)
    codes[:, 0] = [0.0, 5.0, 0.1, 5.3]
    of, d = flag_near_duplicates(g, codes, shard=1, threshold=0.4)
    own = store.face_id(1, np.arange(4))
    assert of.tolist() == [-1, -1, own[0], own[1]]
    assert np.allclose(d[2:], [0.1, 0.3], atol=1e-5) and np.isnan(d[:2]).all()
    of, _ = flag_near_duplicates(g, codes, shard=1, threshold=0)
    assert (of == -1).all()


def test_near_duplicates_max_distance_is_checked(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    synth(g, 50, seed=0)
    assert g.near_duplicates(float("inf")).num_rows == g.near_duplicates().num_rows
    assert g.near_duplicates(0.0).num_rows == 0
    for bad in (float("nan"), -1.0):
        with pytest.raises(store.GalleryError, match="max_distance"):
            g.near_duplicates(bad)


def test_a_save_killed_before_its_state_is_written_duplicates_nothing(default_model, tmp_path, monkeypatch):
    """The state names the file it describes: a kill after the new index files are in place but
    before state.json is written leaves the previous (file, shards) pair, never a new file read
    with the old shard list (which added the newer shards a second time)."""
    import shutil

    from skullsearch.index import indexes as indexes_mod

    g = Gallery.create(tmp_path / "g", face_model=default_model)
    synth(g, 300, seed=0)
    shutil.copytree(g.path / "index", tmp_path / "saved")
    synth(g, 200, seed=1)
    # an ingest between two saves: 500 faces committed, the saved indexes hold the first 300
    shutil.rmtree(g.path / "index")
    shutil.copytree(tmp_path / "saved", g.path / "index")

    def killed(*a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(indexes_mod, "write_json_atomic", killed)
    g = Gallery.open(tmp_path / "g")
    with pytest.raises(KeyboardInterrupt):
        g.save_indexes()
    monkeypatch.undo()
    for mmap in (True, False):
        r = Gallery.open(tmp_path / "g")
        r.mmap_indexes = mmap
        for name in ("shortlist", "codes"):
            assert r.index(name).ntotal == 500, (name, mmap)
    g = Gallery.open(tmp_path / "g")
    g.save_indexes()  # a later save commits, and removes the killed save's files
    g.save_indexes()
    names = sorted(p.name for p in (g.path / "index").glob("*.faiss"))
    assert len(names) == 2 and Gallery.open(g.path).index("shortlist").ntotal == 500, names
    assert not list((g.path / "index").glob(".*.tmp"))
    # a reader whose state named files that a save has since removed reads the state again
    r = Gallery.open(g.path)
    real = r.indexes.state

    def stale_once(calls=[]):  # noqa: B006 - counts the calls
        calls.append(1)
        st = real()
        return {k: dict(v, file="gone.faiss") for k, v in st.items()} if len(calls) == 1 else st

    r.indexes.state = stale_once
    assert r.index("shortlist").ntotal == 500 and r.indexes.held["shortlist"].mapped


def test_a_joined_ivf_index_searches_nprobe_lists():
    import faiss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    ivf = vectors.new_index(16, "l2", n_expected=3000, kind="ivfpq")
    vectors.add(ivf, x[:2000], np.arange(2000))
    delta = vectors.new_index(16, "l2", kind="flat")
    vectors.add(delta, x[2000:], np.arange(2000, 3000))
    joined = vectors.joined(ivf, delta)
    vectors.search(joined, x[:5], 3, nprobe=17)
    assert faiss.downcast_index(joined.at(0)).nprobe == 17
