"""The gallery's one cached catalog database: views kept while the shard list stands, redefined
when an ingest commits a shard, cursors per call (threads), closed with the gallery."""

import threading

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from skullsearch import Gallery
from skullsearch.index.catalog import Catalog
from skullsearch.index.synth import synth


def test_the_views_are_built_once_per_shard_list_and_follow_new_shards(default_model, tmp_path, monkeypatch):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    assert g.faces().num_rows == 0 and g.info()["faces"] == 0  # empty gallery: typed empty views
    built = []
    real = Catalog._define_views

    def counted(self, con, shards, *rest):
        built.append(len(shards))
        return real(self, con, shards, *rest)

    monkeypatch.setattr(Catalog, "_define_views", counted)
    reader = Gallery.open(g.path)
    assert reader.sql("SELECT count(*) AS n FROM faces").to_pylist() == [{"n": 0}]
    synth(g, 300, seed=0, shard_faces=100)  # three shards committed by a writer
    for _ in range(3):
        assert reader.sql("SELECT count(*) AS n FROM faces").to_pylist() == [{"n": 300}]
        assert reader.info()["faces"] == 300
    assert built == [0, 3]  # once for the empty gallery, once for the three shards
    ids = reader.sample_ids(5, seed=1)
    assert [r["face_id"] for r in reader.rows(ids)] == ids.tolist()
    synth(g, 50, seed=1)
    assert reader.faces(columns=["face_id"]).num_rows == 350 and built == [0, 3, 4]
    # what a cursor registers stays on it
    a, b = reader.connect(), reader.connect()
    a.register("mine", pa.table({"x": [1]}))
    assert a.execute("SELECT count(*) FROM mine").fetchone() == (1,)
    with pytest.raises(duckdb.Error):
        b.execute("SELECT count(*) FROM mine")


def test_threads_share_the_catalog_and_close_ends_it(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    synth(g, 400, seed=0, shard_faces=100)
    ids = g.sample_ids(40, seed=2)
    want = [r["face_id"] for r in g.rows(ids)]
    errors, counts = [], []

    def work(k):
        try:
            for _ in range(10):
                assert [r["face_id"] for r in g.rows(ids)] == want
                counts.append(g.sql("SELECT count(*) AS n FROM faces").column("n")[0].as_py())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    writer = threading.Thread(target=synth, args=(g, 100), kwargs={"seed": 9})
    for t in [*threads, writer]:
        t.start()
    for t in [*threads, writer]:
        t.join()
    assert not errors, errors
    assert set(counts) <= {400, 500} and g.n_faces == 500
    con = g.connect()
    with g:
        pass  # closed on leaving
    with pytest.raises(duckdb.Error):
        con.execute("SELECT 1")
    assert g.info()["faces"] == 500  # a closed gallery opens a new catalog when asked
    g.close()
    g.close()
    assert np.asarray(g.sample_ids(3)).size == 3
