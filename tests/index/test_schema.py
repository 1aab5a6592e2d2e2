"""The catalog's Arrow schemas and table builders (index/schema.py), written to Parquet and read
back with real pyarrow and DuckDB."""

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skullsearch.index import schema


def test_the_later_columns_are_the_ones_after_the_first_formats_columns():
    names = schema.FACES.names
    assert len(names) == len(set(names)) and len(set(schema.IMAGES.names)) == len(schema.IMAGES.names)
    first = names[: names.index("metadata") + 1]  # format 1.0 ends with metadata
    assert list(schema.LATER_FACE_COLUMNS) == names[len(first):]
    assert schema.FACES.field("photo_fingerprint").type == pa.list_(pa.float16(), 63)
    assert schema.FACES.field("descriptor").type == pa.list_(pa.float16(), 128)


def test_empty_tables_have_the_schemas():
    assert schema.empty_faces().schema == schema.FACES and schema.empty_faces().num_rows == 0
    assert schema.empty_images().schema == schema.IMAGES and schema.empty_images().num_rows == 0


def test_faces_table_lays_out_boxes_landmarks_and_nulls():
    rng = np.random.default_rng(0)
    lm = rng.uniform(0, 400, size=(2, 68, 2))
    t = schema.faces_table({"face_id": np.array([7, 9]), "path": ["a.jpg", "b.jpg"],
                            "box": [[1, 2, 3, 4], [5, 6, 7, 8]], "landmarks": lm,
                            "face_index": [0, 1], "score": pa.array([0.5, 0.25])})
    assert t.schema == schema.FACES and t.num_rows == 2
    assert t.column("box").to_pylist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    row = np.array(t.column("landmarks")[1].as_py())
    np.testing.assert_allclose(row, lm[1].reshape(-1).astype(np.float32))  # x0, y0, x1, y1, …
    assert t.column("score").to_pylist() == [0.5, 0.25]  # an Arrow array is cast (double → float)
    assert t.column("person").null_count == 2 and t.column("photo_fingerprint").null_count == 2


def test_a_vector_row_of_nan_is_stored_as_null_and_the_rest_as_float16():
    fp = np.full((3, 63), np.nan, np.float32)
    fp[0] = np.linspace(-1, 1, 63)
    fp[2] = 1 / 3
    t = schema.faces_table({"face_id": [1, 2, 3], "photo_fingerprint": fp})
    col = t.column("photo_fingerprint")
    assert col.to_pylist()[1] is None and col.null_count == 1
    np.testing.assert_array_equal(np.array(col[0].as_py()), fp[0].astype(np.float16))
    assert col[2].as_py()[0] == float(np.float16(1 / 3)) != 1 / 3


def test_faces_table_refuses_landmarks_of_another_shape():
    with pytest.raises(ValueError):
        schema.faces_table({"face_id": [1], "landmarks": np.zeros((1, 5, 2))})


def test_without_float16_keeps_values_and_other_columns():
    fp = np.linspace(0, 1, 2 * 63).reshape(2, 63)
    t = schema.faces_table({"face_id": [1, 2], "photo_fingerprint": fp, "box": np.ones((2, 4))})
    w = schema.without_float16(t)
    assert w.schema.field("photo_fingerprint").type == pa.list_(pa.float32(), 63)
    assert w.schema.field("descriptor").type == pa.list_(pa.float32(), 128)
    assert w.schema.field("box").type == t.schema.field("box").type
    assert [f.name for f in w.schema] == schema.FACES.names
    np.testing.assert_array_equal(np.array(w.column("photo_fingerprint").to_pylist()),
                                  fp.astype(np.float16).astype(np.float32))
    # what it is for: DuckDB reads it from Arrow
    con = duckdb.connect()
    con.register("faces", w)
    assert con.execute("SELECT face_id, photo_fingerprint[2] FROM faces ORDER BY face_id").fetchall() == [
        (1, pytest.approx(float(np.float16(fp[0, 1])))), (2, pytest.approx(float(np.float16(fp[1, 1]))))]


def test_images_table_from_rows_with_missing_keys_as_null():
    t = schema.images_table([{"image_id": 1, "path": "a.jpg", "status": "ok", "faces": 2},
                             {"image_id": 2, "path": "b.png", "status": "unreadable", "detail": "truncated"}])
    assert t.schema == schema.IMAGES
    assert t.column("faces").to_pylist() == [2, None]
    assert t.column("detail").to_pylist() == [None, "truncated"]


def test_a_shard_written_with_the_schema_reads_back_in_duckdb(tmp_path):
    fp = np.random.default_rng(1).normal(size=(2, 63))
    t = schema.faces_table({"face_id": [5, 6], "path": ["x", "y"], "photo_fingerprint": fp,
                            "near_duplicate_of": [None, 5]})
    pq.write_table(t, tmp_path / "f.parquet")
    back = pq.read_table(tmp_path / "f.parquet")
    assert back.schema.field("photo_fingerprint").type == pa.list_(pa.float16(), 63)
    rows = duckdb.sql(f"SELECT face_id, near_duplicate_of, photo_fingerprint[1] AS x "
                      f"FROM read_parquet('{tmp_path / 'f.parquet'}') ORDER BY face_id").fetchall()
    assert rows == [(5, None, pytest.approx(float(np.float16(fp[0, 0])))),
                    (6, 5, pytest.approx(float(np.float16(fp[1, 0]))))]


def _duckdb_types(path):
    return {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()}


def test_later_scalar_columns_have_the_duckdb_types_a_shard_reads_as(tmp_path):
    pq.write_table(schema.faces_table({"face_id": [1]}), tmp_path / "f.parquet")
    types = _duckdb_types(tmp_path / "f.parquet")
    for column, declared in schema.LATER_FACE_COLUMNS.items():
        if "[" not in declared:
            assert types[column] == declared, column


def test_later_vector_columns_have_the_duckdb_types_a_shard_reads_as(tmp_path):
    pq.write_table(schema.faces_table({"face_id": [1], "photo_fingerprint": np.ones((1, 63)),
                                       "descriptor": np.ones((1, 128))}), tmp_path / "f.parquet")
    types = _duckdb_types(tmp_path / "f.parquet")
    assert types["photo_fingerprint"] == schema.LATER_FACE_COLUMNS["photo_fingerprint"]
    assert types["descriptor"] == schema.LATER_FACE_COLUMNS["descriptor"]
