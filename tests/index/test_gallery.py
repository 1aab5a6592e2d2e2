"""The gallery: ingest of real files, idempotence, refusals, masked search, verify/repair, SQL."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from photos import bad_files, render_faces

from skullsearch import Gallery, GalleryError
from skullsearch.index import store, vectors
from skullsearch.index.indexes import SHAPE
from skullsearch.index.synth import synth


@pytest.fixture(scope="module")
def photo_dir(default_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    render_faces(default_model, folder / "alice", 2, seed=1)
    render_faces(default_model, folder / "bob", 2, seed=2)
    expected = bad_files(folder / "bad")
    return folder, expected


@pytest.fixture(scope="module")
def ingested_once(photo_dir, tmp_path_factory):
    folder, _ = photo_dir
    g = Gallery.create(tmp_path_factory.mktemp("base") / "g")
    report = g.ingest([folder], workers=2, person_from_parent_dir=True, chunk_images=4)
    return g.path, report


@pytest.fixture
def ingested(ingested_once, tmp_path):
    """A private copy of the ingested gallery (tests may damage it)."""
    path, report = ingested_once
    shutil.copytree(path, tmp_path / "g", symlinks=True)
    return Gallery.open(tmp_path / "g"), report


def test_ingest_records_every_photo_with_its_reason(ingested, photo_dir):
    g, report = ingested
    _, expected = photo_dir
    assert report.faces == 4 and report.images_new == 4 + len(expected)
    rows = {r["path"].split("/")[-1]: r for r in g.sql("SELECT path, status, detail FROM images").to_pylist()}
    for name, reason in expected.items():
        assert rows[name]["status"] == reason, (name, rows[name])
        assert rows[name]["detail"]  # a sentence saying what is wrong
    faces = g.faces(columns=["face_id", "person", "path", "code", "soft_tissue"])
    assert faces.num_rows == 4
    assert sorted(set(faces.column("person").to_pylist())) == ["alice", "bob"]
    assert len(faces.column("code")[0]) == 228
    pts = g.soft_tissue(faces.column("face_id").to_numpy())
    assert pts.shape == (4, 36, 3) and np.isfinite(pts).all()
    info = g.info()
    assert info["faces"] == 4 and info["failures"]["empty"] == 1 and info["persons"] == 2


def test_reingest_adds_nothing_even_after_touching_files(ingested, photo_dir):
    g, _ = ingested
    folder, _ = photo_dir
    before = g.sql("SELECT count(*) AS n FROM images").column("n")[0].as_py()
    for p in folder.rglob("*.png"):
        p.touch()  # new mtime, same bytes: found by the content hash
    again = g.ingest([folder], workers=2)
    assert again.images_new == 0 and again.faces == 0
    assert g.sql("SELECT count(*) AS n FROM images").column("n")[0].as_py() == before
    dup = g.sql("SELECT sha256, count(*) c FROM images WHERE sha256 IS NOT NULL GROUP BY 1 HAVING c > 1")
    assert dup.num_rows == 0


def test_same_bytes_under_two_names_is_one_image(default_model, tmp_path):
    folder = tmp_path / "p"
    (p,) = render_faces(default_model, folder, 1, seed=5)
    shutil.copy(p, folder / "copy.png")
    g = Gallery.create(tmp_path / "g")
    rep = g.ingest([folder], workers=1)
    assert rep.faces == 1 and rep.duplicates == 1
    assert g.sql("SELECT count(*) AS n FROM images").column("n")[0].as_py() == 1


def test_a_different_face_model_is_refused(ingested, tmp_path):
    g, _ = ingested
    from skullsearch import FaceModel

    from flame_writer import make_synthetic_flame, write_flame_pickle

    path = tmp_path / "other.pkl"
    write_flame_pickle(path, make_synthetic_flame(seed=9))
    other = FaceModel.load(path, annotate=False)
    with pytest.raises(GalleryError, match="cannot be mixed"):
        g.ingest([tmp_path], face_model=other)
    with pytest.raises(GalleryError, match="cannot be mixed"):
        Gallery.create(g.path, face_model=other, exist_ok=True)


def test_masked_shortlist_search_is_exact(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    synth(g, 3000, seed=1, shard_faces=1000)
    ids = np.concatenate([store.face_id(s.number, np.arange(s.faces)) for s in g.shards()])
    base = g.canonical(ids).reshape(-1, 36, 3)
    rng = np.random.default_rng(0)
    query_ids = ids[rng.choice(len(ids), 5, replace=False)]
    q = g.canonical(query_ids) + rng.normal(scale=1.0, size=(5, 108)).astype(np.float32)
    mask = rng.random((5, 36)) > 0.4
    dist, got = g.search_shortlist(q, mask, k=20)
    for i in range(5):
        d = ((q[i].reshape(36, 3) - base) ** 2).sum(-1) @ mask[i]  # brute-force masked L2
        # the 20 nearest, in order; faces whose distances tie to float32 precision may swap
        np.testing.assert_allclose(dist[i], np.sort(d)[:20], rtol=1e-3, atol=1e-2)
        got_d = d[np.searchsorted(ids, got[i])]
        np.testing.assert_allclose(got_d, np.sort(d)[:20], rtol=1e-4, atol=1e-3)
        assert len(set(got[i])) == 20


def test_canonical_vectors_ignore_rigid_motion_and_absent_landmarks(default_model):
    from scipy.spatial.transform import Rotation

    mean = default_model.soft_tissue_basis()[0]
    rng = np.random.default_rng(3)
    pts = mean + rng.normal(scale=2.0, size=(4, 36, 3))
    rot = Rotation.random(4, random_state=1).as_matrix()
    moved = np.einsum("nij,nkj->nki", rot, pts) * 1.05 + rng.normal(scale=50, size=(4, 1, 3))
    np.testing.assert_allclose(vectors.canonical(moved, mean), vectors.canonical(pts, mean), atol=1e-3)
    mask = np.ones(36, bool)
    mask[[0, 5, 9]] = False
    c = vectors.canonical(pts, mean, mask).reshape(4, 36, 3)
    assert np.all(c[:, ~mask] == 0)


def test_verify_finds_and_repairs_damage(ingested, photo_dir):
    g, _ = ingested
    folder, _ = photo_dir
    assert g.verify()["ok"]
    shard = g.shards()[0]
    codes = shard.file(g.path, "codes.npy")
    codes.write_bytes(codes.read_bytes()[:100])  # truncate
    (g.path / "shards" / "99999999.soft.npy").write_bytes(b"leftover")
    res = Gallery.open(g.path).verify()
    assert not res["ok"] and any("leftover" in p for p in res["problems"])
    fixed = Gallery.open(g.path).verify(repair=True)
    assert any("quarantined" in r for r in fixed["repaired"])
    g2 = Gallery.open(g.path)
    assert g2.verify()["ok"]
    g2.ingest([folder], workers=2)  # the quarantined shard's photos come back
    assert g2.n_faces == 4 and g2.verify()["ok"]


def test_sql_is_read_only_and_export_round_trips(ingested, tmp_path):
    g, _ = ingested
    with pytest.raises(GalleryError, match="read-only"):
        g.sql("DELETE FROM faces")
    with pytest.raises(GalleryError, match="read-only"):
        g.sql("SELECT 1; SELECT 2")
    with pytest.raises(GalleryError, match="SQL error"):
        g.sql("SELECT nope FROM faces")
    out = g.export(tmp_path / "all.parquet")
    t = pq.read_table(out)
    assert t.num_rows == 4 and {"code", "soft_tissue", "person", "path"} <= set(t.column_names)


def test_inputs_lists_and_tables(default_model, tmp_path):
    folder = tmp_path / "p"
    paths = render_faces(default_model, folder, 2, seed=7)
    (tmp_path / "list.txt").write_text(f"# photos\n{paths[0].relative_to(tmp_path)}\n")
    (tmp_path / "t.csv").write_text(f"path,person_id,case\n{paths[1]},P-17,2024-001\n")
    g = Gallery.create(tmp_path / "g")
    g.ingest([tmp_path / "list.txt", tmp_path / "t.csv"], workers=1)
    rows = {r["path"]: r for r in g.faces(columns=["path", "person", "metadata"]).to_pylist()}
    assert rows[str(paths[1])]["person"] == "P-17"
    assert json.loads(rows[str(paths[1])]["metadata"]) == {"case": "2024-001"}
    assert str(tmp_path / paths[0].relative_to(tmp_path)) in rows


def test_open_and_create_errors(tmp_path):
    with pytest.raises(GalleryError, match="not a skullsearch gallery"):
        Gallery.open(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hi")
    with pytest.raises(GalleryError, match="not empty"):
        Gallery.create(tmp_path / "x")


def test_train_encoder_on_a_gallery(ingested, tmp_path, capsys):
    from skullsearch.cli.app import main

    g, _ = ingested
    ckpt = tmp_path / "enc.pt"
    assert main(["train", "encoder", "--gallery", str(g.path), "--out", str(ckpt), "--epochs", "2",
                 "--batch-size", "2"]) == 0
    assert ckpt.exists() and "wrote" in capsys.readouterr().out
    assert main(["train", "encoder"]) == 2  # neither photos nor a gallery


def test_a_dropped_gallery_is_freed_at_once_and_its_parts_say_so(default_model, tmp_path):
    """A Gallery holds no reference cycle (its indexes, near-duplicate indexes and catalog hold it
    weakly): dropping the last reference frees it, its FAISS indexes and its DuckDB connection
    there and then, not at some later collection (in whatever process that happens to be)."""
    import gc
    import weakref

    g = Gallery.create(tmp_path / "g", face_model=default_model)
    synth(g, 20, seed=0)
    g.search_codes(g.codes(g.sample_ids(1)), k=1)  # opens the indexes
    assert g.catalog.connect() is not None  # and the catalog's connection
    g.near_search("persons", np.zeros((0, 128), np.float32))  # and a vector column's index
    parts = (g.indexes, g.near, g.catalog)
    ref = weakref.ref(g)
    gc.disable()
    try:
        del g
        assert ref() is None
    finally:
        gc.enable()
    with pytest.raises(GalleryError, match="gallery .* no longer open"):
        parts[0].get(SHAPE)
    with pytest.raises(GalleryError, match="no longer open"):
        parts[1].search("codes", np.zeros((1, 228), np.float32))
    with pytest.raises(GalleryError, match="no longer open"):
        parts[2].connect()
