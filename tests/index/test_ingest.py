"""Ingest's units (:mod:`skullsearch.index.ingest`), each on its own: the reader over folders,
lists and tables; the per-face vectors of detected photos; the encoder fingerprint; the neutral
soft tissue of codes; the run's duplicate filter; the detector stage's engine choice. Ingest end
to end is in test_gallery.py, test_persons.py and the near-duplicate tests."""

import importlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.descriptors import DIM as DESCRIPTOR_DIM
from skullsearch.encoder.fitting import FitConfig
from skullsearch.errors import SkullsearchError
from skullsearch.index.detect_stage import FaceRecord, LocalDetectStage, PhotoRecord, Source
from skullsearch.index.fingerprint import DIM as FP_DIM
from skullsearch.index.synth import synth_codes

# the module (``skullsearch.index.ingest`` the attribute is the function Gallery.ingest calls)
ingest = importlib.import_module("skullsearch.index.ingest")


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ reader
@pytest.fixture
def tree(tmp_path):
    """A folder of photos in sub-folders, with files and a folder that are not photos."""
    root = tmp_path / "photos"
    for rel in ("alice/a1.jpg", "alice/a2.PNG", "bob/deep/b1.jpeg", "bob/b2.webp", "top.tif"):
        _touch(root / rel)
    for rel in ("alice/notes.txt", "bob/meta.json", "bob/deep/noext", "list.csv"):
        _touch(root / rel)
    (root / "folder.jpg").mkdir()  # a folder with an image's name
    os.symlink(root / "missing.jpg", root / "alice" / "gone.jpg")  # dangling: kept
    return root


def test_a_folder_is_read_recursively_images_only_in_sorted_order(tree):
    got = list(ingest.read_sources([tree]))
    rel = [str(Path(s.path).relative_to(tree)) for s in got]
    assert rel == ["alice/a1.jpg", "alice/a2.PNG", "alice/gone.jpg", "bob/b2.webp", "bob/deep/b1.jpeg",
                   "top.tif"]
    assert all(s.person is None and s.metadata is None for s in got)


def test_person_from_the_parent_folder(tree):
    got = {Path(s.path).name: s.person for s in ingest.read_sources([tree], person_from_parent_dir=True)}
    assert got == {"a1.jpg": "alice", "a2.PNG": "alice", "gone.jpg": "alice", "b2.webp": "bob",
                   "b1.jpeg": "deep", "top.tif": "photos"}


def test_a_text_list_is_relative_to_its_folder_and_skips_comments(tmp_path):
    absolute = _touch(tmp_path / "elsewhere" / "x.png")
    lst = tmp_path / "cases" / "case1.txt"
    lst.parent.mkdir()
    lst.write_text(f"# photos of case 1\n\n  p1/a.jpg  \n{absolute}\n   # indented comment\nb.bmp\n")
    got = list(ingest.read_sources([lst]))
    assert [s.path for s in got] == [str(lst.parent / "p1/a.jpg"), str(absolute), str(lst.parent / "b.bmp")]
    assert [s.person for s in got] == [None] * 3
    other = tmp_path / "more.LST"  # the other list extension, any case
    other.write_text("q/c.jpg\n")
    (src,) = ingest.read_sources([other], person_from_parent_dir=True)
    assert src.path == str(tmp_path / "q/c.jpg") and src.person == "q"


def test_a_csv_table_gives_paths_persons_and_metadata(tmp_path):
    table = tmp_path / "t" / "photos.csv"
    table.parent.mkdir()
    table.write_text("path,person,case,site\n"
                     "a/1.jpg,P-1,2024-001,north\n"
                     f"{tmp_path / 'abs.png'},P-2,2024-002,south\n"
                     "b/2.jpg,,2024-003,east\n")
    got = list(ingest.read_sources([table]))
    assert [s.path for s in got] == [str(table.parent / "a/1.jpg"), str(tmp_path / "abs.png"),
                                     str(table.parent / "b/2.jpg")]
    assert [s.person for s in got] == ["P-1", "P-2", None]  # an empty cell: no person
    assert got[0].metadata == {"case": "2024-001", "site": "north"}
    by_dir = list(ingest.read_sources([table], person_from_parent_dir=True))
    assert [s.person for s in by_dir] == ["P-1", "P-2", "b"]  # the table's person wins


def test_person_id_is_the_person_and_a_path_only_table_has_no_metadata(tmp_path):
    t1 = tmp_path / "ids.csv"
    t1.write_text("person_id,path\nP-9,x.jpg\n")
    (s,) = ingest.read_sources([t1])
    assert (s.path, s.person, s.metadata) == (str(tmp_path / "x.jpg"), "P-9", None)
    t2 = tmp_path / "paths.csv"
    t2.write_text("path\ny.jpg\n")
    (s,) = ingest.read_sources([t2])
    assert (s.person, s.metadata) == (None, None)


def test_a_parquet_table_drops_nulls_and_names_persons_as_text(tmp_path):
    path = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"path": ["a.jpg", "b.jpg"], "person": pa.array([17, None], pa.int64()),
                             "age": pa.array([34, None], pa.int64()), "note": ["x", None]}), path)
    a, b = ingest.read_sources([path])
    assert a.person == "17" and a.metadata == {"age": 34, "note": "x"}
    assert b.person is None and b.metadata is None


def test_a_table_without_a_path_column_says_so(tmp_path):
    table = tmp_path / "bad.csv"
    table.write_text("file,person\na.jpg,P-1\n")
    want = r"bad\.csv: the table needs a 'path' column \(it has: file, person\)"
    with pytest.raises(SkullsearchError, match=want):
        list(ingest.read_sources([table]))
    # a table with no rows is checked by its header too (it used to pass silently)
    table.write_text("file,person\n")
    with pytest.raises(SkullsearchError, match="needs a 'path' column"):
        list(ingest.read_sources([table]))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"name": pa.array([], pa.string())}), empty)
    with pytest.raises(SkullsearchError, match="needs a 'path' column"):
        list(ingest.read_sources([empty]))


def test_empty_csv_cells_are_no_value_and_a_row_without_a_path_is_named(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("path,person,age,note\na.jpg,,34,\nb.jpg,P-2,,\n")
    a, b = ingest.read_sources([table])
    assert (a.person, a.metadata) == (None, {"age": "34"})  # not "" as a person or a note
    assert (b.person, b.metadata) == ("P-2", None)
    table.write_text("path,person\na.jpg,P-1\n,P-2\n")
    with pytest.raises(SkullsearchError, match=r"t\.csv: row 2 has no path"):
        list(ingest.read_sources([table]))


def test_inputs_of_every_kind_in_one_call(tree, tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("one.jpg\n")
    single = tmp_path / "single.gif"
    got = [Path(s.path).name for s in ingest.read_sources([lst, tree / "alice", single, "no/such/file.jpg"])]
    assert got == ["one.jpg", "a1.jpg", "a2.PNG", "gone.jpg", "single.gif", "file.jpg"]


# ------------------------------------------------------------------ per-face vectors
def _rec(path, faces, status="ok", sha=None):
    return PhotoRecord(path, sha256=sha or path, status=status, faces=faces)


def _fr(fp=None, desc=None):
    return FaceRecord(box=np.zeros(4), score=1.0, landmarks=np.zeros((68, 2)), quality=(), yaw_deg=0.0,
                      detector="dlib", fingerprint=fp, descriptor=desc)


def test_face_vectors_follow_the_faces_order_with_nan_rows_where_none():
    rng = np.random.default_rng(0)
    fps = rng.normal(size=(3, FP_DIM)).astype(np.float32)
    rows = [_rec("a", [_fr(fps[0]), _fr(None)]), _rec("b", []), _rec("c", [_fr(fps[1]), _fr(fps[2][:10])])]
    got = ingest.face_fingerprints(rows)
    assert got.shape == (4, FP_DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], fps[0], rtol=1e-3)
    np.testing.assert_allclose(got[2], fps[1], rtol=1e-3)
    assert np.isnan(got[1]).all()  # no fingerprint
    assert np.isnan(got[3]).all()  # one of the wrong length: none
    descs = ingest.face_vectors(rows, "descriptor", DESCRIPTOR_DIM)
    assert descs.shape == (4, DESCRIPTOR_DIM) and np.isnan(descs).all()
    assert ingest.face_vectors([], "fingerprint", FP_DIM).shape == (0, FP_DIM)


def test_face_vectors_are_rounded_to_float16_as_the_catalog_stores_them():
    v = np.full(FP_DIM, 0.1, np.float32)
    v[1] = 1 / 3
    (got,) = ingest.face_fingerprints([_rec("a", [_fr(v)])])
    np.testing.assert_array_equal(got, v.astype(np.float16).astype(np.float32))
    assert got[0] != np.float32(0.1)  # rounded, not kept


# ------------------------------------------------------------------ encoder fingerprint
def test_the_encoder_fingerprint_is_stable_and_names_what_made_the_codes(default_model):
    from skullsearch.encoder import identity_prior as ip

    base = ingest.encoder_fingerprint(None, "dlib")
    assert len(base) == 16 and int(base, 16) >= 0
    assert ingest.encoder_fingerprint(FitConfig(), "dlib") == base  # None: the default settings
    assert ingest.encoder_fingerprint(None, "dlib") == base
    changed = {
        "lm_iters": ingest.encoder_fingerprint(FitConfig(lm_iters=6), "dlib"),
        "w_shape": ingest.encoder_fingerprint(FitConfig(w_shape=1e-3), "dlib"),
        "dtype": ingest.encoder_fingerprint(FitConfig(dtype=torch.float64), "dlib"),
        "detector": ingest.encoder_fingerprint(None, "fan"),
        "prior": ingest.encoder_fingerprint(None, "dlib", ip.for_model(default_model)),
        "exif_focal": ingest.encoder_fingerprint(FitConfig(exif_focal=False), "dlib"),
        "jaw_calibration": ingest.encoder_fingerprint(FitConfig(jaw_calibration=False), "dlib"),
        "landmark_weights": ingest.encoder_fingerprint(FitConfig(landmark_weights=True), "dlib"),
    }
    assert len({base, *changed.values()}) == 1 + len(changed), changed


def test_settings_the_codes_do_not_depend_on_leave_it_alone():
    base = ingest.encoder_fingerprint(None, "dlib")
    assert ingest.encoder_fingerprint(FitConfig(posterior=True), "dlib") == base
    assert ingest.encoder_fingerprint(FitConfig(landmark_noise=0.1), "dlib") == base
    assert ingest.encoder_fingerprint(FitConfig(posterior=True, landmark_noise=0.2), "dlib") == base
    # the same fit on a GPU: a gallery re-ingested there does not encode its photos again
    assert ingest.encoder_fingerprint(FitConfig(device="cuda"), "dlib") == base
    assert ingest.encoder_fingerprint(FitConfig(device="cpu"), "dlib") == base


# ------------------------------------------------------------------ neutral soft tissue
def test_neutral_soft_tissue_is_the_shapes_points_without_expression_or_pose(default_model):
    m = default_model
    rng = np.random.default_rng(4)
    codes = synth_codes(m, 5, rng)
    codes[:, code_layout.SLICES["expression"]][:, : m.n_expression] = rng.normal(size=(5, m.n_expression))
    codes[:, code_layout.SLICES["pose"]] = rng.normal(scale=0.3, size=(5, 15))
    got = ingest.neutral_soft_tissue(m, codes)
    assert got.shape == (5, 36, 3) and got.dtype == np.float32
    shape = torch.as_tensor(code_layout.split(codes).shape[:, : m.n_shape])
    with torch.no_grad():
        want = m.soft_tissue(shape=shape).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)  # mm
    # in batches of 2: the same points (to float32 rounding: BLAS picks another kernel per size)
    np.testing.assert_allclose(ingest.neutral_soft_tissue(m, codes, batch=2), got, atol=1e-4)
    assert ingest.neutral_soft_tissue(m, codes[:0]).shape == (0, 36, 3)
    zero = ingest.neutral_soft_tissue(m, np.zeros((1, code_layout.CODE_SIZE), np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(zero[0], m.soft_tissue(batch_size=1)[0].numpy(), atol=1e-3)


# ------------------------------------------------------------------ a run's duplicates
def test_fresh_rows_skip_known_photos_and_copies_within_the_run():
    rows = [
        _rec("known.jpg", [], status="known", sha="k"),
        _rec("a.jpg", [_fr()], sha="A"),
        _rec("a_copy.jpg", [_fr()], sha="A"),  # the same bytes again
        _rec("seen.jpg", [_fr()], sha="S"),  # in an earlier chunk of this run
        PhotoRecord("gone.jpg", status="unreadable"),  # no bytes read: no sha256
        PhotoRecord("gone2.jpg", status="unreadable"),
        _rec("b.jpg", [_fr()], sha="B"),
    ]
    report = ingest.IngestReport(images_skipped=3)
    seen = {"S"}
    fresh = ingest._fresh_rows(rows, seen, report)
    assert [r.path for r in fresh] == ["a.jpg", "gone.jpg", "gone2.jpg", "b.jpg"]
    assert report.duplicates == 2 and report.images_skipped == 4
    assert seen == {"S", "A", "B"}
    again = ingest._fresh_rows([_rec("b2.jpg", [], sha="B")], seen, report)  # the next chunk
    assert again == [] and report.duplicates == 3


# ------------------------------------------------------------------ the detector stage
def test_the_engine_is_local_or_ray():
    stage = ingest.make_detect_stage("local", 3, frozenset({"x"}), "dlib", 5.0, descriptors=False)
    try:
        assert isinstance(stage, LocalDetectStage)
        assert (stage.workers, stage.known, stage.detector, stage.timeout_s, stage.descriptors) == (
            3, frozenset({"x"}), "dlib", 5.0, False)
        assert stage.pool is None  # no process started until there is work
    finally:
        stage.close()
    with pytest.raises(SkullsearchError, match="unknown engine 'spark': use local or ray"):
        ingest.make_detect_stage("spark", 1, frozenset(), "dlib", 5.0)


def test_the_reader_yields_sources():
    (s,) = ingest.read_sources(["x.png"])
    assert isinstance(s, Source) and s == Source("x.png")
