"""A shard that cannot be read once (an I/O error, an interrupt) must not leave a held index
with vectors it does not list: the next call gives the same index as a clean one."""

import numpy as np
import pytest

from skullsearch import Gallery
from skullsearch.index.columns import VectorColumn
from skullsearch.index.indexes import IndexKind
from skullsearch.index.synth import add_synthetic_faces, synth_codes


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def three_shards(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    rng = np.random.default_rng(0)
    ids, fps = [], []
    for _ in range(3):
        f = _unit(rng.standard_normal((10, 63)))
        ids.append(add_synthetic_faces(g, synth_codes(default_model, 10, rng), f))
        fps.append(f)
    return g.path, np.concatenate(ids), np.concatenate(fps)


def _fail_once(monkeypatch, obj, name, shard_number):
    real = getattr(obj, name)
    state = {"failed": False}

    def flaky(self, *a):
        sh = a[-1] if name == "shard_vectors" else a[0]
        if sh.number == shard_number and not state["failed"]:
            state["failed"] = True
            raise OSError("disk hiccup")
        return real(self, *a)

    monkeypatch.setattr(obj, name, flaky)


@pytest.mark.parametrize("name", ["shortlist", "shape", "codes"])  # ("codes": the shape index's old name)
def test_a_failed_shard_read_does_not_duplicate_index_vectors(three_shards, monkeypatch, name):
    gpath, ids, _ = three_shards
    g = Gallery.open(gpath)
    g.mmap_indexes = False
    first = g.shards()[0].number
    # hold an index of the first shard only, as a gallery opened before the others were added
    monkeypatch.setattr(Gallery, "shards", lambda self, _real=Gallery.shards: _real(self)[:1])
    assert g.index(name).ntotal == 10
    monkeypatch.undo()
    _fail_once(monkeypatch, IndexKind, "shard_vectors", first + 2)
    with pytest.raises(OSError):
        g.index(name)
    assert g.index(name).ntotal == 30  # built afresh, not 40
    if name != "shortlist":
        d, found = g.search_codes(g.codes(ids[-3:]), k=1)
        assert list(found[:, 0]) == list(ids[-3:])


def test_a_failed_fingerprint_read_keeps_the_photo_index_and_its_ids_together(three_shards, monkeypatch):
    gpath, ids, fps = three_shards
    g = Gallery.open(gpath)
    monkeypatch.setattr(Gallery, "shards", lambda self, _real=Gallery.shards: _real(self)[:1])
    g.search_photos(fps[:1])  # holds shard 1's fingerprints
    monkeypatch.undo()
    _fail_once(monkeypatch, VectorColumn, "shard_vectors", g.shards()[2].number)
    with pytest.raises(OSError):
        g.search_photos(fps[:1])
    d, found = g.search_photos(fps, k=1)
    assert list(found[:, 0]) == list(ids)  # every face finds itself: positions and ids agree
