"""verify (index/verify.py) on a real gallery of synthetic faces: each kind of damage it names,
the normal state it only notes, and what --repair does. (Damage after a real ingest, and photos
coming back after a quarantine: tests/index/test_gallery.py.)"""

import json

import numpy as np
import pytest

from skullsearch import Gallery
from skullsearch.index.synth import add_synthetic_faces, synth_codes
from skullsearch.index.verify import verify


@pytest.fixture()
def two_shards(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    rng = np.random.default_rng(0)
    add_synthetic_faces(g, synth_codes(default_model, 5, rng))
    add_synthetic_faces(g, synth_codes(default_model, 4, rng))
    g.save_indexes()
    return g.path


def test_a_whole_gallery_is_ok(two_shards):
    res = verify(Gallery.open(two_shards))
    assert res == {"ok": True, "problems": [], "repaired": [], "notes": []}


def test_rows_that_disagree_with_the_shard_record_are_damage(two_shards):
    g = Gallery.open(two_shards)
    sh = g.shards()[1]
    np.save(sh.file(g.path, "soft.npy"), np.zeros((3, 36, 3), np.float32))  # 3 rows, record says 4
    res = verify(g)
    assert not res["ok"]
    assert res["problems"] == [f"shard {sh.number}: row counts or face ids disagree with its record"]


def test_an_unreadable_file_is_damage_and_repair_quarantines_the_shard(two_shards):
    g = Gallery.open(two_shards)
    first, second = g.shards()
    path = second.file(g.path, "faces.parquet")
    path.write_bytes(path.read_bytes()[:50])
    res = verify(g)
    assert not res["ok"] and res["problems"][0].startswith(f"shard {second.number}: unreadable (")
    fixed = verify(Gallery.open(two_shards), repair=True)
    quarantined = f"quarantined shard {second.number} (its photos will be ingested again)"
    assert fixed["repaired"][-2:] == [quarantined, "rebuilt the indexes"]
    assert (g.path / "quarantine" / path.name).exists()
    after = Gallery.open(two_shards)
    assert [s.number for s in after.shards()] == [first.number]
    assert after.index("shape").ntotal == 5 and verify(after)["ok"]


def test_an_index_behind_the_catalog_is_a_note_and_repair_saves_it(two_shards, default_model, monkeypatch):
    g = Gallery.open(two_shards)
    with monkeypatch.context() as m:  # a writer killed after its shard's commit, before the save
        m.setattr(Gallery, "save_indexes", lambda self: None)
        add_synthetic_faces(g, synth_codes(default_model, 2, np.random.default_rng(9)))
    res = verify(Gallery.open(two_shards))
    assert res["ok"] and len(res["notes"]) == 2
    assert res["notes"][0].startswith("index shortlist: 1 newer shard(s) not saved in it yet")
    assert res["notes"][1].startswith("index codes: 1 newer shard(s)")
    fixed = verify(Gallery.open(two_shards), repair=True)
    assert fixed["repaired"] == ["rebuilt the indexes"]
    assert verify(Gallery.open(two_shards)) == {"ok": True, "problems": [], "repaired": [], "notes": []}
    assert len(list((g.path / "index").glob("*.faiss"))) == 2  # the old files went


def test_an_index_with_shards_not_in_the_catalog_or_the_wrong_count_is_a_problem(two_shards):
    g = Gallery.open(two_shards)
    state_file = g.path / "index" / "state.json"
    state = json.loads(state_file.read_text())
    state["shortlist"]["shards"].append(12345)
    state["codes"]["ntotal"] += 1
    state_file.write_text(json.dumps(state))
    res = verify(Gallery.open(two_shards))
    assert res["problems"] == ["index shortlist: holds shards that are not in the catalog",
                               "index codes: 10 vectors, the catalog says otherwise"]


def test_leftovers_of_an_interrupted_write_are_removed_by_repair(two_shards):
    g = Gallery.open(two_shards)
    (g.path / "shards" / "99999999.soft.npy").write_bytes(b"leftover")
    (g.path / "shards" / ".tmp-write").write_bytes(b"x")
    res = verify(g)
    assert res["problems"] == ["2 leftover file(s) of an interrupted write"]
    fixed = verify(Gallery.open(two_shards), repair=True)
    assert {"removed 99999999.soft.npy", "removed .tmp-write"} <= set(fixed["repaired"])
    assert verify(Gallery.open(two_shards))["ok"]
