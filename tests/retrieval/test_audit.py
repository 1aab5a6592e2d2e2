"""The audit log (retrieval/audit.py): what a record holds, its hash, the history and reading a
record back. A real gallery folder (its manifest and two committed shard records) and the real
tissue table; the query result is built by hand (tests/retrieval/test_query.py records real
queries end to end)."""

import hashlib
import json
import re

import numpy as np
import pytest

from skullsearch.encoder.atomic import write_json_atomic
from skullsearch.index import store
from skullsearch.index.gallery import Gallery
from skullsearch.index.store import GalleryError
from skullsearch.retrieval import audit
from skullsearch.retrieval.extended import ExtendedLandmarks
from skullsearch.retrieval.query import Candidate, QueryResult
from skullsearch.retrieval.skull import Skull
from skullsearch.retrieval.tissue import load_table


@pytest.fixture()
def gallery(tmp_path):
    root = tmp_path / "g"
    write_json_atomic(root / "gallery.json", {
        "format": store.FORMAT, "version": store.VERSION, "created": store.now(),
        "face_model": {"name": "toy", "fingerprint": "f" * 64, "source": "test"}})
    for number in (1, 3):
        write_json_atomic(root / "shards" / f"{number:08d}.json",
                          store.ShardInfo(number, 10, 10, 0, store.now()).__dict__)
    return Gallery.open(root)


def candidate(rank, face_id, s):
    return Candidate(rank=rank, face_id=face_id, person=None, path=f"p{face_id}.jpg", s=s, matched=3,
                     present=4, likelihood=-12.5, calibrated=0.5, rms_mm=2.0, shortlist_distance=1.0,
                     distance_mm=[1.0] * 36, matched_flags=[True] * 36, scale=1.0,
                     rotation=np.eye(3).tolist(), translation=[0.0, 0.0, 0.0])


@pytest.fixture()
def query():
    table = load_table()
    present = np.zeros(36, bool)
    present[[0, 3, 8, 22]] = True
    ext = ExtendedLandmarks.from_points(np.arange(108.0).reshape(36, 3), present, table.sd,
                                        table_name=table.name)
    skull = Skull(mesh=None, landmarks={"n": np.array([1.0, 2.0, 3.0]), "pg": np.array([4.0, 5.0, 6.5])},
                  path="/cases/c17.ply", sha256="a" * 64, landmarks_path="/cases/c17.landmarks.json",
                  landmarks_sha256="b" * 64, warnings=["landmark pg was snapped"])
    params = {"top": np.int64(5), "eta_sd": np.float32(1.5), "weights": np.array([0.5, 2.0]),
              "exhaustive": np.bool_(False)}
    result = QueryResult(candidates=[candidate(1, 16777218, 0.75), candidate(2, 50331649, 0.5)],
                         extended=ext, params=params)
    return skull, table, ext, result


def test_a_record_holds_the_whole_query(gallery, query):
    skull, table, ext, result = query
    qid = audit.record_query(gallery, skull, table, ext, result)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", qid)
    rec = json.loads((gallery.path / "audit" / f"{qid}.json").read_text())
    assert rec["query_id"] == qid and rec["time"].startswith(f"{qid[:4]}-{qid[4:6]}-{qid[6:8]}T")
    assert rec["skull"] == {"path": "/cases/c17.ply", "sha256": "a" * 64,
                            "landmarks_path": "/cases/c17.landmarks.json", "landmarks_sha256": "b" * 64,
                            "units": "mm", "landmarks": {"n": [1.0, 2.0, 3.0], "pg": [4.0, 5.0, 6.5]},
                            "warnings": ["landmark pg was snapped"]}
    assert rec["extended"] == json.loads(json.dumps(ext.to_dict()))
    assert rec["tissue_table"]["sha256"] == table.sha256
    # numpy scalars and arrays in the parameters become plain JSON values
    assert rec["params"] == {"top": 5, "eta_sd": 1.5, "weights": [0.5, 2.0], "exhaustive": False}
    assert rec["gallery"] == {"face_model": gallery.manifest["face_model"], "shards": [1, 3]}
    assert rec["versions"]["numpy"] == np.__version__
    assert rec["results"] == [{"rank": 1, "face_id": 16777218, "s": 0.75, "likelihood": -12.5},
                              {"rank": 2, "face_id": 50331649, "s": 0.5, "likelihood": -12.5}]


def test_the_record_hash_covers_everything_but_itself(gallery, query):
    qid = audit.record_query(gallery, *query)
    rec = audit.load_record(gallery, qid)
    digest = rec.pop("sha256")

    def sha(r):
        return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()

    assert sha(rec) == digest
    rec["results"][0]["face_id"] += 1  # an edited record no longer matches its hash
    assert sha(rec) != digest


def test_history_lists_records_oldest_first_and_skips_unreadable_files(gallery, query):
    skull, table, ext, result = query
    first = audit.record_query(gallery, skull, table, ext, result)
    result.candidates = []
    second = audit.record_query(gallery, skull, table, ext, result)
    (gallery.path / "audit" / "00000000T000000Z-broken.json").write_text('{"query_id": ')
    (gallery.path / "audit" / "notes.txt").write_text("not a record")
    rows = audit.history(gallery)
    assert [r["query_id"] for r in rows] == sorted([first, second])
    by_id = {r["query_id"]: r for r in rows}
    assert by_id[first] == {"query_id": first, "time": by_id[first]["time"], "skull": "/cases/c17.ply",
                            "landmarks": 4, "table": table.name, "top_face": 16777218, "top_s": 0.75}
    assert by_id[second]["top_face"] is None and by_id[second]["top_s"] is None  # no candidates


def test_history_of_a_gallery_without_queries_is_empty(gallery):
    assert audit.history(gallery) == []


def test_an_unknown_query_id_names_the_recent_ones(gallery, query):
    qid = audit.record_query(gallery, *query)
    assert audit.query_record is audit.load_record
    with pytest.raises(GalleryError, match=rf"no recorded query 'nope' in .*; recent ones: {qid}$"):
        audit.load_record(gallery, "nope")
    (gallery.path / "audit" / f"{qid}.json").unlink()
    with pytest.raises(GalleryError, match="recent ones: none$"):
        audit.load_record(gallery, qid)


def test_json_plain_converts_numpy_and_refuses_the_rest():
    assert audit.json_plain(np.int64(7)) == 7 and type(audit.json_plain(np.int64(7))) is int
    assert audit.json_plain(np.float32(0.5)) == 0.5
    assert audit.json_plain(np.arange(4).reshape(2, 2)) == [[0, 1], [2, 3]]
    with pytest.raises(TypeError, match="not JSON-serializable: <class 'set'>"):
        audit.json_plain({1, 2})


@pytest.mark.parametrize("text", ["{}", "[]"])
def test_a_foreign_json_file_in_the_audit_folder_is_skipped(gallery, query, text):
    qid = audit.record_query(gallery, *query)
    (gallery.path / "audit" / "zz-notes.json").write_text(text)
    assert [r["query_id"] for r in audit.history(gallery)] == [qid]
