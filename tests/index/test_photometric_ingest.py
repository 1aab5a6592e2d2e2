"""ingest --photometric: the detector workers keep a small crop of each face, the fit refines its
code with the crop's shading (the same refinement as on the whole photo), the crops are not
stored, and the faces' encoder fingerprint says how they were made."""

import numpy as np
import pytest

from skullsearch import Gallery
from skullsearch.encoder import code as code_layout
from skullsearch.index.detect_stage import FaceRecord
from skullsearch.index.ingest import encoder_fingerprint


@pytest.fixture(scope="module")
def galleries(default_model, tmp_path_factory):
    from photos import render_heads

    root = tmp_path_factory.mktemp("photometric")
    render_heads(default_model, root / "photos", [("a1", 0), ("a2", 0), ("b1", 1)], seed=5)
    out = {}
    for name, photometric, uncertainty in (("plain", False, False), ("photo", True, False),
                                           ("plain_cov", False, True), ("photo_cov", True, True)):
        g = Gallery.create(root / name, face_model=default_model)
        report = g.ingest([root / "photos"], workers=1, descriptors=False, photometric=photometric,
                          uncertainty=uncertainty, near_duplicate_distance=0, near_duplicate_photo_distance=0)
        assert report.faces == 3
        out[name] = g
    return out, root


def _codes(g):
    rows = g.faces(columns=["face_id", "path", "encoder_fingerprint"]).to_pylist()
    order = sorted(rows, key=lambda r: r["path"])
    codes = np.stack([g.codes(np.array([r["face_id"]]))[0] for r in order])
    return codes, {r["encoder_fingerprint"] for r in rows}


def test_photometric_ingest_refines_the_codes_and_says_so(galleries):
    (gs, _) = galleries
    plain, fp_plain = _codes(gs["plain"])
    photo, fp_photo = _codes(gs["photo"])
    from skullsearch.encoder.fitting import FitConfig

    assert fp_plain == {encoder_fingerprint(None, "dlib")}
    assert fp_photo == {encoder_fingerprint(FitConfig(photometric=True), "dlib")} != fp_plain
    shape = code_layout.SLICES["shape"]
    assert np.isfinite(photo).all()
    for a, b in zip(plain, photo, strict=True):
        assert not np.allclose(a[shape], b[shape])
    assert gs["photo"].verify()["ok"]


def test_photometric_ingest_keeps_the_refined_faces_uncertainty(galleries):
    """--photometric --uncertainty: each face's stored soft-tissue covariance is the refined fit's,
    narrower than the landmark fit's (a plain --uncertainty ingest of the same photos), the depths
    included; the codes are those of the ingest without it (the covariance does not move them)."""
    (gs, _) = galleries

    def spread(g):
        rows = sorted(g.faces(columns=["face_id", "path"]).to_pylist(), key=lambda r: r["path"])
        cov = g.tissue_covariance(np.array([r["face_id"] for r in rows]))
        return np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1)).mean(1)  # (3 faces, xyz) mm

    landmark, refined = spread(gs["plain_cov"]), spread(gs["photo_cov"])
    assert np.isfinite(refined).all() and (refined < landmark).all(), (landmark, refined)
    np.testing.assert_allclose(_codes(gs["photo_cov"])[0], _codes(gs["photo"])[0], atol=1e-5)
    assert _codes(gs["photo_cov"])[1] == _codes(gs["photo"])[1]  # one fingerprint


def test_the_crop_refinement_is_the_whole_photos(default_model, galleries):
    """A face refined from its crop lands where the same face refined from the whole photo does
    (the crop is the photo's camera seen through a window; the blur follows the face's size)."""
    from skullsearch.encoder.encode import fit_faces
    from skullsearch.encoder.images import read_image
    from skullsearch.encoder.photometric import PhotometricConfig, face_crop, refine_photometric
    from skullsearch.index.detect_stage import detect_one, init_worker
    from skullsearch.index.ingest import Source

    _, root = galleries
    path = sorted((root / "photos").rglob("*.png"))[0]
    init_worker(frozenset(), "dlib", descriptors=False, crops=True)
    rec = detect_one(Source(str(path)))
    assert rec.ok and rec.faces[0].crop is not None and max(rec.faces[0].face_crop().pixels.shape) <= 512
    from skullsearch.encoder.encode import EncodedFace

    f = rec.faces[0]
    face = EncodedFace(image=str(path), sha256="", face_index=0, box=f.box, score=f.score,
                       landmarks=f.landmarks, quality=(), yaw_deg=f.yaw_deg, detector="dlib",
                       image_size=(rec.width, rec.height))
    fit_faces(default_model, [face])
    pixels = read_image(path.read_bytes()).pixels
    cfg = PhotometricConfig(steps=40)
    whole = refine_photometric(default_model, face.code[None], f.landmarks[None], [pixels], photometric=cfg,
                               focal=np.array([face.focal]))
    crop = face_crop(pixels, f.landmarks, max_side=max(pixels.shape))  # the window, not shrunk
    through = refine_photometric(default_model, face.code[None], f.landmarks[None], [], photometric=cfg,
                                 focal=np.array([face.focal]), crops=[crop],
                                 image_sizes=np.array([[rec.width, rec.height]], np.float64))
    shape = code_layout.SLICES["shape"]
    moved = np.abs(whole.codes[0, shape] - face.code[shape]).max()
    assert moved > 0.05
    np.testing.assert_allclose(through.codes[0, shape], whole.codes[0, shape], atol=0.1 * moved)
    np.testing.assert_allclose(through.landmarks_px, whole.landmarks_px, atol=0.5)
    init_worker(frozenset(), "dlib", descriptors=True, crops=False)


def test_a_face_record_keeps_its_crop_through_json():
    from skullsearch.encoder.photometric import face_crop

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    lm = np.c_[rng.uniform(150, 250, 68), rng.uniform(100, 200, 68)]
    c = face_crop(pixels, lm, max_side=64)
    assert max(c.pixels.shape[:2]) <= 64 and c.scale < 1
    rec = FaceRecord(box=np.zeros(4), score=1.0, landmarks=lm, quality=(), yaw_deg=0.0, detector="dlib",
                     crop=c.png(), crop_origin=c.origin, crop_scale=c.scale)
    back = FaceRecord.from_dict(__import__("json").loads(__import__("json").dumps(rec.to_dict())))
    got = back.face_crop()
    np.testing.assert_array_equal(got.pixels, c.pixels)
    np.testing.assert_array_equal(got.origin, c.origin)
    assert got.scale == c.scale
    # the window holds the landmarks with a margin and lies inside the photo
    x0, y0 = c.origin
    assert x0 <= lm[:, 0].min() and y0 <= lm[:, 1].min() and x0 >= 0 and y0 >= 0
