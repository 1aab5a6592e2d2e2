"""Arrow schemas of the catalog's two tables and their builders."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from skullsearch.encoder.descriptors import DIM as DESCRIPTOR_DIM
from skullsearch.index.fingerprint import DIM as FP_DIM

FACES = pa.schema([
    ("face_id", pa.int64()),
    ("image_id", pa.int64()),
    ("path", pa.string()),
    ("sha256", pa.string()),
    ("person", pa.string()),
    ("face_index", pa.int16()),
    ("box", pa.list_(pa.float32(), 4)),
    ("score", pa.float32()),
    ("landmarks", pa.list_(pa.float32(), 136)),
    ("residual_px", pa.float32()),
    ("quality", pa.string()),
    ("yaw_deg", pa.float32()),
    ("detector", pa.string()),
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("model_fingerprint", pa.string()),
    ("encoder_fingerprint", pa.string()),
    ("time", pa.string()),
    ("metadata", pa.string()),
    # added in format 1.1 (older shards lack them; the catalog view reads them as NULL):
    ("near_duplicate_of", pa.int64()),  # an earlier face flagged as this one's near-duplicate
    ("near_duplicate_distance", pa.float32()),  # their shape-code L2 distance (identity)
    # added in format 1.2:
    ("photo_fingerprint", pa.list_(pa.float16(), FP_DIM)),  # index.fingerprint of the face crop (fp16)
    ("near_duplicate_criterion", pa.string()),  # what flagged it: "photo" or "identity"
    ("near_duplicate_photo_distance", pa.float32()),  # their photo-fingerprint L2 distance
    # added in format 1.3:
    ("descriptor", pa.list_(pa.float16(), DESCRIPTOR_DIM)),  # dlib's person descriptor (fp16)
    ("near_duplicate_person_distance", pa.float32()),  # their person-descriptor L2 distance
    # added in format 1.4:
    ("photo_focal_px", pa.float32()),  # the photo's own focal length from its EXIF (px); NULL: not known
])

#: Face columns that older shards may lack, with their DuckDB types (read as NULL there).
LATER_FACE_COLUMNS = {"near_duplicate_of": "BIGINT", "near_duplicate_distance": "FLOAT",
                      # (63 and 128 values; DuckDB reads a shard's fixed-size lists as FLOAT[])
                      "photo_fingerprint": "FLOAT[]", "near_duplicate_criterion": "VARCHAR",
                      "near_duplicate_photo_distance": "FLOAT", "descriptor": "FLOAT[]",
                      "near_duplicate_person_distance": "FLOAT", "photo_focal_px": "FLOAT"}

IMAGES = pa.schema([
    ("image_id", pa.int64()),
    ("path", pa.string()),
    ("sha256", pa.string()),
    ("size_bytes", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("status", pa.string()),  # "ok" or the failure reason
    ("detail", pa.string()),
    ("faces", pa.int32()),
    ("person", pa.string()),
    ("time", pa.string()),
])


def empty_faces() -> pa.Table:
    return FACES.empty_table()


def without_float16(table: pa.Table) -> pa.Table:
    """The table with float16 list columns as float32 (what DuckDB reads them as from Parquet;
    it does not take float16 from Arrow)."""
    fields = [pa.field(f.name, pa.list_(pa.float32(), f.type.list_size))
              if pa.types.is_fixed_size_list(f.type) and pa.types.is_float16(f.type.value_type) else f
              for f in table.schema]
    return table.cast(pa.schema(fields))


def empty_images() -> pa.Table:
    return IMAGES.empty_table()


def fixed(arr: np.ndarray, width: int) -> pa.FixedSizeListArray:
    arr = np.asarray(arr, dtype=np.float32).reshape(-1, width)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), pa.float32()), width)


def faces_table(cols: dict) -> pa.Table:
    """Columns as lists/arrays (box (n, 4), landmarks (n, 68, 2)) → a FACES table."""
    n = len(cols["face_id"])
    arrays = []
    for f in FACES:
        v = cols.get(f.name)
        if v is None:
            arrays.append(pa.nulls(n, f.type))
        elif f.name == "box":
            arrays.append(fixed(v, 4))
        elif f.name == "landmarks":
            arrays.append(fixed(np.asarray(v).reshape(n, 136), 136))
        elif f.name in ("photo_fingerprint", "descriptor"):  # (n, d), a row of NaN: none (null)
            width = f.type.list_size
            v = np.asarray(v, np.float32).reshape(n, width)
            arrays.append(pa.FixedSizeListArray.from_arrays(
                pa.array(v.reshape(-1).astype(np.float16), pa.float16()), width,
                mask=pa.array(np.isnan(v).any(1))))
        elif isinstance(v, pa.Array):
            arrays.append(v.cast(f.type))
        else:
            arrays.append(pa.array(v, f.type))
    return pa.Table.from_arrays(arrays, schema=FACES)


def images_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=IMAGES)
