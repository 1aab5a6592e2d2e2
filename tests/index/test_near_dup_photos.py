"""Near-duplicate photos: the photo fingerprint (aligned face crop → DCT descriptor), the photo
criterion at ingest (real dlib detector + real fit on rendered photos), older shards, the CLI.
The renders are of the anny head: the fingerprint's threshold (0.12) was measured on its renders;
on the ICT default's untextured renders a plain JPEG re-save moves a fingerprint by up to ~0.15
(see the README's limits).
"""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance

from skullsearch import Gallery
from skullsearch.index import fingerprint, store
from skullsearch.index.ingest import (
    IDENTITY,
    NEAR_DUPLICATE_PHOTO_DISTANCE,
    PHOTO,
    near_duplicate_stage,
)
from skullsearch.index.synth import synth, synth_codes


@pytest.fixture(scope="module")
def renders(anny_model, tmp_path_factory):
    """Three rendered faces (PNG) and the dlib landmarks of each."""
    from photos import render_faces

    from skullsearch.encoder.detectors import get_detector
    from skullsearch.encoder.images import read_image

    folder = tmp_path_factory.mktemp("fp") / "orig"
    paths = render_faces(anny_model, folder, 3, seed=21, size=400, prefix="face")
    det = get_detector("dlib")
    out = []
    for p in paths:
        img = read_image(p)
        faces = det.detect(img)
        assert faces, p
        out.append((p, img.pixels, faces[0].landmarks))
    return out


def _fp(pixels, lm):
    return fingerprint.photo_fingerprints(pixels, lm[None])[0]


def test_the_fingerprint_follows_the_face_through_resizes_crops_and_brightness(renders):
    """The same landmarks carried through the edit (no detector noise): the canonical crop is the
    same picture, so the fingerprint barely moves; another face is far."""
    _, px, lm = renders[0]
    # on a wider canvas (the renders' white background), so that the canonical frame stays
    # inside the photo under every edit below (where it leaves the photo, edges are repeated)
    px = np.pad(px, ((60, 60), (60, 60), (0, 0)), constant_values=255)
    lm = lm + 60
    f = _fp(px, lm)
    assert f.shape == (fingerprint.DIM,) and abs(np.linalg.norm(f) - 1) < 1e-5
    im = Image.fromarray(px)
    # 2.5× larger (the reduce path) and 0.6× smaller; pixel centre x → (x + 0.5)·s − 0.5
    for s in (2.5, 0.6):
        big = np.asarray(im.resize((round(520 * s),) * 2, Image.LANCZOS))
        assert np.linalg.norm(_fp(big, (lm + 0.5) * s - 0.5) - f) < 0.05, s
    # a crop off the left and top moves the landmarks with the face: the same crop
    assert np.linalg.norm(_fp(px[24:, 31:], lm - [31, 24]) - f) < 1e-4
    # brightness −10 % (a gain): the unit-length AC descriptor stays
    dim = np.asarray(ImageEnhance.Brightness(im).enhance(0.9))
    assert np.linalg.norm(_fp(dim, lm) - f) < 0.03
    for _, px2, lm2 in renders[1:]:
        assert np.linalg.norm(_fp(px2, lm2) - f) > 2 * NEAR_DUPLICATE_PHOTO_DISTANCE


def test_degenerate_faces_and_flat_crops_have_no_fingerprint(renders):
    _, px, lm = renders[0]
    same_point = np.zeros((68, 2)) + 100.0
    flat = np.full_like(px, 128)
    out = fingerprint.photo_fingerprints(px, np.stack([lm, same_point]))
    assert not np.isnan(out[0]).any() and np.isnan(out[1]).all()
    assert np.isnan(fingerprint.photo_fingerprints(flat, lm[None])).all()
    assert fingerprint.photo_fingerprints(px, np.zeros((0, 68, 2))).shape == (0, fingerprint.DIM)
    # a face at the photo's edge: the frame is filled by repeating the edge, no error
    assert not np.isnan(_fp(px[:, 180:], lm - [180, 0])).any()


def _jpeg(im, quality=85):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def copies(renders, tmp_path_factory):
    """first/: the three originals and a 70 % JPEG copy of face000 (other bytes, other size);
    second/: a 4 %-cropped, brightened JPEG copy of face001 (ingested by a later run)."""
    root = tmp_path_factory.mktemp("copies")
    first, second = root / "first", root / "second"
    first.mkdir()
    second.mkdir()
    for p, _, _ in renders:
        (first / p.name).write_bytes(p.read_bytes())
    a = Image.open(renders[0][0]).convert("RGB")
    (first / "face000_small.jpg").write_bytes(_jpeg(a.resize((280, 280), Image.LANCZOS)))
    b = Image.open(renders[1][0]).convert("RGB")
    b = ImageEnhance.Brightness(b.crop((16, 16, 400, 400))).enhance(1.08)
    (second / "face001_cropped.jpg").write_bytes(_jpeg(b, 90))
    return first, second


@pytest.mark.slow
def test_a_resaved_resized_copy_is_flagged_by_the_photo_criterion(anny_model, copies, tmp_path, capsys):
    first, second = copies
    g = Gallery.create(tmp_path / "g", face_model=anny_model)
    rep = g.ingest([first], workers=1)
    assert rep.faces == 4 and rep.duplicates == 0
    rep2 = g.ingest([second], workers=1)  # a later run: searched against the catalog's fingerprints
    assert rep2.faces == 1
    rows = g.faces(columns=["face_id", "path", "photo_fingerprint", "near_duplicate_of",
                            "near_duplicate_criterion", "near_duplicate_distance",
                            "near_duplicate_photo_distance"]).to_pylist()
    by = {r["path"].rsplit("/", 1)[1]: r for r in rows}
    assert all(len(r["photo_fingerprint"]) == 63 for r in rows)
    for copy, original in (("face000_small.jpg", "face000.png"), ("face001_cropped.jpg", "face001.png")):
        r = by[copy]
        assert r["near_duplicate_of"] == by[original]["face_id"], copy
        assert r["near_duplicate_criterion"] == PHOTO
        assert r["near_duplicate_photo_distance"] <= NEAR_DUPLICATE_PHOTO_DISTANCE
        assert r["near_duplicate_distance"] > 0  # the identity distance of the pair, recorded too
    for name in ("face000.png", "face001.png", "face002.png"):  # different faces: not flagged
        assert by[name]["near_duplicate_of"] is None and by[name]["near_duplicate_criterion"] is None
    assert rep.near_duplicate_photos + rep2.near_duplicate_photos == 2
    info = g.info()
    assert info["near-duplicate faces"] == 2 and info["near-duplicates by criterion"] == {PHOTO: 2}
    assert info["faces with a photo fingerprint"] == 5
    listed = g.near_duplicates(criterion=PHOTO).to_pylist()
    assert {r["path"].rsplit("/", 1)[1] for r in listed} == {"face000_small.jpg", "face001_cropped.jpg"}
    assert all(r["criterion"] == PHOTO and r["photo_distance"] is not None for r in listed)
    assert g.near_duplicates(criterion=IDENTITY).num_rows == 0
    assert g.near_duplicates(max_photo_distance=0.0).num_rows == 0
    with pytest.raises(store.GalleryError, match="criterion"):
        g.near_duplicates(criterion="pixels")
    with pytest.raises(store.GalleryError, match="max_photo_distance"):
        g.near_duplicates(max_photo_distance=-1)

    from skullsearch.cli.app import main

    capsys.readouterr()
    assert main(["near-duplicates", "--gallery", str(g.path), "--criterion", "photo", "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "criterion" in lines[0] and "photo_distance" in lines[0]
    assert all(",\"photo\"," in ln for ln in lines[1:]) and "face001_cropped.jpg" in "".join(lines)
    assert main(["near-duplicates", "--gallery", str(g.path)]) == 0
    table = capsys.readouterr().out
    assert "2 near-duplicate face(s)" in table and table.count(" photo ") == 2
    assert str(by["face000_small.jpg"]["face_id"]) in table
    assert main(["near-duplicates", "--gallery", str(g.path), "--criterion", "pixels"]) != 0
    assert "criterion" in capsys.readouterr().err


def test_the_photo_criterion_can_be_turned_off(anny_model, copies, tmp_path):
    first, _ = copies
    g = Gallery.create(tmp_path / "g", face_model=anny_model)
    g.ingest([first], workers=1, near_duplicate_photo_distance=0)
    assert g.near_duplicates(criterion=PHOTO).num_rows == 0
    # the fingerprints are still stored: a later run with the criterion on finds the copy
    assert g.info()["faces with a photo fingerprint"] == 4


def test_photo_matches_come_first_and_both_distances_are_recorded(anny_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=anny_model)
    synth(g, 20, seed=0)  # faces without fingerprints: searched by identity only
    codes = synth_codes(g.face_model, 4, np.random.default_rng(1))  # new faces
    gallery_face = int(g.sample_ids(1, seed=3)[0])
    codes[3] = g.codes([gallery_face])[0]  # the same identity as a gallery face
    rng = np.random.default_rng(0)
    fps = rng.standard_normal((4, 63)).astype(np.float32)
    fps /= np.linalg.norm(fps, axis=1, keepdims=True)
    fps[1] = fps[0] + 0.003  # face 1: the same photo as face 0 (in this shard)
    fps[1] /= np.linalg.norm(fps[1])
    fps[2] = np.nan  # face 2: no fingerprint
    shard = store.next_shard_number(g.path)
    nd = near_duplicate_stage(g, codes, fps, shard)
    own = store.face_id(shard, np.arange(4))
    assert nd.of.tolist() == [-1, own[0], -1, gallery_face]
    assert nd.criterion.tolist() == [None, PHOTO, None, IDENTITY]
    assert nd.photo_distance[1] < 0.03 and np.isnan(nd.photo_distance[3])  # synth: no fingerprint
    assert nd.distance[3] < 1e-4 and nd.distance[1] > 0.4  # identity distance of the photo pair
    assert np.isnan(nd.distance[[0, 2]]).all() and nd.count == 2 and nd.by(PHOTO) == 1
    off = near_duplicate_stage(g, codes, fps, shard, distance=0, photo_distance=0)
    assert off.count == 0


def test_shards_without_the_photo_columns_still_open(anny_model, copies, tmp_path):
    first, _ = copies
    g = Gallery.create(tmp_path / "g", face_model=anny_model)
    g.ingest([first], workers=1)
    synth(g, 50, seed=0)  # a second shard
    path = g.shards()[0].file(g.path, "faces.parquet")
    t = pq.read_table(path)
    # as written before the photo criterion: an identity flag, no fingerprint / criterion columns
    flagged = np.array([r is not None for r in t.column("near_duplicate_of").to_pylist()])
    assert flagged.sum() == 1
    t = t.drop(["photo_fingerprint", "near_duplicate_criterion", "near_duplicate_photo_distance"])
    pq.write_table(t, path)
    g = Gallery.open(tmp_path / "g")
    info = g.info()
    assert info["faces"] == 54 and info["near-duplicates by criterion"] == {IDENTITY: 1}
    assert info["faces with a photo fingerprint"] == 0
    assert g.near_duplicates().to_pylist()[0]["criterion"] == IDENTITY
    assert g.search_photos(np.zeros((2, 63), np.float32))[1].shape == (2, 0)
    assert np.isnan(g.photo_fingerprints(g.sample_ids(3, seed=0))).all()
    # a new ingest over the old shard still runs and flags by photo against the new faces only
    more = tmp_path / "more"
    more.mkdir()
    a = Image.open(first / "face002.png").convert("RGB")
    (more / "face002_copy.jpg").write_bytes(_jpeg(a, 80))
    rep = g.ingest([more], workers=1)
    assert rep.faces == 1 and rep.near_duplicate_photos == 0  # its original has no fingerprint


@pytest.mark.slow
def test_ingest_command_sets_every_cut(anny_model, copies, tmp_path, capsys):
    """`skullsearch ingest --near-duplicate-photo-distance 0 --near-duplicate-person-distance 0
    --near-duplicate-distance 0` flags nothing; the defaults flag the re-saved copy."""
    from skullsearch.cli.app import main

    first, _ = copies
    off, on = tmp_path / "off", tmp_path / "on"
    assert main(["ingest", str(first), "--gallery", str(off), "--workers", "1",
                 "--near-duplicate-photo-distance", "0", "--near-duplicate-distance", "0",
                 "--near-duplicate-person-distance", "0"]) == 0
    assert Gallery.open(off).near_duplicates().num_rows == 0
    assert main(["ingest", str(first), "--gallery", str(on), "--workers", "1"]) == 0
    listed = Gallery.open(on).near_duplicates(criterion=PHOTO).to_pylist()
    assert [r["path"].rsplit("/", 1)[1] for r in listed] == ["face000_small.jpg"]
    assert "near-duplicate faces" in capsys.readouterr().out
    # listed in full when piped (not folded to 80 columns), and as CSV; list columns as JSON
    assert main(["near-duplicates", "--gallery", str(on)]) == 0
    text = capsys.readouterr().out
    copy_path = listed[0]["path"]
    assert any(copy_path in line and str(listed[0]["face_id"]) in line for line in text.splitlines())
    assert main(["sql", "SELECT face_id, path, box, photo_fingerprint FROM faces ORDER BY face_id",
                 "--gallery", str(on), "--csv"]) == 0
    import csv
    import json

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and len(json.loads(rows[0]["box"])) == 4
    assert len(json.loads(rows[0]["photo_fingerprint"])) == 63
