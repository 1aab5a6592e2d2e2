"""The near-duplicate searches of large galleries: an IVF-Flat index per criterion beyond
``vectors.NEAR_EXACT_LIMIT`` (forced here with a low limit; real FAISS), saved beside the other
indexes, rebuilt the same way by any run, and flagging the faces the exact search flags."""

import json

import numpy as np
import pytest

from skullsearch import Gallery
from skullsearch.index import gallery as gallery_mod
from skullsearch.index import store, vectors
from skullsearch.index.ingest import (
    NEAR_DUPLICATE_DISTANCE,
    NEAR_DUPLICATE_PHOTO_DISTANCE,
    near_duplicate_stage,
)
from skullsearch.index.near_duplicates import NearIndexes
from skullsearch.index.synth import add_synthetic_faces, synth_codes


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _fingerprints(rng, n):
    """Fingerprints spread like real ones (a common direction plus noise; random pairs ~0.4 apart)."""
    return _unit(np.ones(63) / np.sqrt(63) + 0.036 * rng.standard_normal((n, 63)))


def add_shard(g, codes, fps):
    """Commit one shard of synthetic faces that have photo fingerprints (as ingest writes them)."""
    return add_synthetic_faces(g, codes, fps, tag="fake")


@pytest.fixture()
def big(default_model, tmp_path):
    """A gallery of 3 × 300 faces with codes and fingerprints, and a shard's worth of new faces:
    near-copies of gallery faces (in code, in photo, or both) and unrelated faces."""
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    rng = np.random.default_rng(0)
    codes = [synth_codes(default_model, 300, rng) for _ in range(3)]
    fps = [_fingerprints(rng, 300) for _ in range(3)]
    ids = np.concatenate([add_shard(g, c, f) for c, f in zip(codes, fps, strict=True)])
    codes, fps = np.concatenate(codes), np.concatenate(fps)
    pick = rng.choice(len(ids), 60, replace=False)
    q_codes = synth_codes(default_model, 120, rng)
    q_fps = _fingerprints(rng, 120)
    step = rng.standard_normal((60, 90)).astype(np.float32)
    step *= (rng.uniform(0, 1.2, 60) * NEAR_DUPLICATE_DISTANCE / np.linalg.norm(step, axis=1))[:, None]
    q_codes[:60, :90] = codes[pick, :90] + step  # identity copies (some beyond the cut)
    q_fps[30:90] = _unit(fps[pick[:60]] + 0.6 * NEAR_DUPLICATE_PHOTO_DISTANCE / np.sqrt(63)
                         * rng.standard_normal((60, 63)))
    return g, ids, q_codes, q_fps


def _flags(g, q_codes, q_fps):
    return near_duplicate_stage(g, q_codes, q_fps, store.next_shard_number(g.path))


def test_below_the_limit_the_searches_stay_exact(big):
    g, _, q_codes, q_fps = big
    assert g.near_index("codes") is None and g.near_index("photos") is None
    nd = _flags(g, q_codes, q_fps)
    assert nd.count > 40 and "photos" not in g.near.held
    g.save_indexes()
    state = json.loads((g.path / "index" / "state.json").read_text())
    assert not ({"near_codes", "near_photos"} & set(state))


def test_the_ivf_path_flags_what_the_exact_search_flags(big, monkeypatch):
    g, ids, q_codes, q_fps = big
    exact = _flags(g, q_codes, q_fps)
    monkeypatch.setattr(vectors, "NEAR_EXACT_LIMIT", 500)
    monkeypatch.setattr(vectors, "NEAR_TRAIN", 400)  # → 10 lists
    monkeypatch.setattr(vectors, "NEAR_NPROBE", 4)
    g = Gallery.open(g.path)
    approx = _flags(g, q_codes, q_fps)
    for name in ("codes", "photos"):
        idx = g.near.held[name].index
        assert idx.nlist == 10 and idx.nprobe == 4 and idx.ntotal == 900, name
    assert g._columns["photos"].held is None  # the exact photo index is dropped
    assert exact.count > 40 and exact.by("photo") > 20 and exact.by("identity") > 10
    # the same flagged face and criterion for (nearly) every flag, and never a flag the exact
    # search lacks; distances are exact
    same = (approx.of == exact.of) & (approx.criterion == exact.criterion)
    assert same[exact.of >= 0].mean() >= 0.9 and (exact.of[approx.of >= 0] >= 0).all()
    both = same & (exact.of >= 0)
    np.testing.assert_allclose(approx.distance[both], exact.distance[both], rtol=1e-5)
    np.testing.assert_allclose(approx.photo_distance[both], exact.photo_distance[both], rtol=1e-4, atol=1e-6)
    # what users get from the code index is unchanged (exact)
    d, i = g.search_codes(q_codes[:5], k=3)
    flat = vectors.shape_vectors(g.codes(ids))
    ref = np.argsort(((vectors.shape_vectors(q_codes[:5])[:, None] - flat[None]) ** 2).sum(-1), 1)[:, :3]
    assert (i == ids[ref]).all()
    # every list probed: the same flags as the exact search
    monkeypatch.setattr(vectors, "NEAR_NPROBE", 10)
    full = _flags(g, q_codes, q_fps)
    assert (full.of == exact.of).all() and (full.criterion == exact.criterion).all()


def test_the_index_is_saved_reloaded_extended_and_rebuilt_identically(big, default_model, monkeypatch):
    g, ids, q_codes, q_fps = big
    monkeypatch.setattr(vectors, "NEAR_EXACT_LIMIT", 500)
    monkeypatch.setattr(vectors, "NEAR_TRAIN", 400)
    monkeypatch.setattr(vectors, "NEAR_NPROBE", 2)
    first = _flags(g, q_codes, q_fps)
    g.save_indexes()
    state = json.loads((g.path / "index" / "state.json").read_text())
    assert state["near_codes"]["ntotal"] == 900 and state["near_photos"]["ntotal"] == 900
    assert (g.path / "index" / state["near_photos"]["file"]).exists()
    # a new run reads the saved indexes (no rebuild), and adds a newer shard to them
    rng = np.random.default_rng(5)
    more = add_shard(g, synth_codes(default_model, 50, rng), _fingerprints(rng, 50))

    def no_build(*a, **k):
        raise AssertionError("rebuilt instead of read")

    r = Gallery.open(g.path)
    monkeypatch.setattr(r.near, "build", no_build)
    for name in ("codes", "photos"):
        assert r.near_index(name).ntotal == 950
    assert (r.photo_fingerprints(more[:3]) == g.photo_fingerprints(more[:3])).all()
    by_shard = r.photo_fingerprints(ids[[0, 400]])  # (read from the shards: no exact index here)
    np.testing.assert_array_equal(by_shard, Gallery.open(g.path).photo_fingerprints(ids[[0, 400]]))
    # a run that finds no saved index (a kill before the first save) trains the same quantizer on
    # the same leading faces: the same flags, though only 2 of 10 lists are searched
    (g.path / "index" / "state.json").unlink()
    fresh = Gallery.open(g.path)
    for name in ("codes", "photos"):
        a, b = r.near_index(name), fresh.near_index(name)
        np.testing.assert_array_equal(a.quantizer.reconstruct_n(0, a.nlist),
                                      b.quantizer.reconstruct_n(0, b.nlist))
    again = _flags(fresh, q_codes, q_fps)
    reloaded = _flags(r, q_codes, q_fps)
    for nd in (again, reloaded):
        assert (nd.of == first.of).all() and (nd.criterion == first.criterion).all()
    # old index files go with the next save
    fresh.save_indexes()
    st = json.loads((g.path / "index" / "state.json").read_text())
    on_disk = sorted(p.name for p in (g.path / "index").glob("near_*.faiss"))
    assert on_disk == sorted([st["near_codes"]["file"], st["near_photos"]["file"]])


def test_a_quarantined_shard_rebuilds_the_index(big, monkeypatch):
    g, ids, q_codes, q_fps = big
    monkeypatch.setattr(vectors, "NEAR_EXACT_LIMIT", 500)
    monkeypatch.setattr(vectors, "NEAR_TRAIN", 400)
    assert g.near_index("codes").ntotal == 900
    # the catalog loses a shard (as verify --repair quarantines one): the index follows
    monkeypatch.setattr(gallery_mod.Gallery, "shards", lambda self: store.committed_shards(self.path)[:2])
    assert g.near_index("codes").ntotal == 600
    monkeypatch.setattr(gallery_mod.Gallery, "shards", lambda self: store.committed_shards(self.path)[:1])
    assert g.near_index("codes") is None and "codes" not in g.near.held  # 300 faces: exact again


def test_an_ingest_into_a_large_gallery_flags_through_the_saved_ivf_index(anny_model, tmp_path,
                                                                          monkeypatch):
    """Real dlib + fit: a photo, then (a later run) a JPEG copy of it, into a gallery beyond the
    (lowered) limit: the first run builds and saves the IVF indexes, the second reads them and
    flags the copy by the photo criterion."""
    from photos import render_faces
    from PIL import Image

    monkeypatch.setattr(vectors, "NEAR_EXACT_LIMIT", 500)
    monkeypatch.setattr(vectors, "NEAR_TRAIN", 400)
    g = Gallery.create(tmp_path / "g", face_model=anny_model)
    rng = np.random.default_rng(2)
    add_shard(g, synth_codes(anny_model, 600, rng), _fingerprints(rng, 600))
    first, second = tmp_path / "a", tmp_path / "b"
    second.mkdir()
    (path,) = render_faces(anny_model, first, 1, seed=21, size=400, prefix="face")
    Image.open(path).convert("RGB").save(second / "copy.jpg", quality=85)
    assert g.ingest([first], workers=1).faces == 1
    state = json.loads((g.path / "index" / "state.json").read_text())
    assert state["near_codes"]["ntotal"] == 601 and state["near_photos"]["ntotal"] == 601
    g = Gallery.open(g.path)

    def no_build(*a, **k):
        raise AssertionError("rebuilt instead of read")

    monkeypatch.setattr(NearIndexes, "build", no_build)
    monkeypatch.setattr(g._columns["photos"], "index", no_build)  # the exact one: not needed
    rep = g.ingest([second], workers=1)
    assert rep.faces == 1 and rep.near_duplicate_photos == 1
    assert g.near.held["photos"].index.ntotal == 602 and g.near.held["codes"].index.ntotal == 602
    (row,) = g.near_duplicates().to_pylist()
    assert row["path"].endswith("copy.jpg") and row["duplicate_path"] == str(path)
    assert row["criterion"] == "photo" and row["photo_distance"] < NEAR_DUPLICATE_PHOTO_DISTANCE
