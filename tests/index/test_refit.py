"""The person gallery (label-free Eq. 2): person groups refitted with one shared shape from the
photos' stored landmarks, on real renders through the real ingest."""

import json
from pathlib import Path

import numpy as np
import pytest

from skullsearch import Gallery
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.fitting import FitConfig, fit_landmarks
from skullsearch.errors import SkullsearchError
from skullsearch.index.refit import REFIT
from skullsearch.index.synth import add_synthetic_faces, synth_codes


@pytest.fixture(scope="module")
def people(default_model, tmp_path_factory):
    """A gallery of 3 rendered heads × 3 photos (in a folder per head, no person labels: each
    photo fitted alone) and one head with one photo, ingested with descriptors and the fit's
    uncertainty."""
    from photos import render_heads

    root = tmp_path_factory.mktemp("people")
    for h in range(4):
        render_heads(default_model, root / f"p{h}", [(f"p{h}_{k}", h) for k in range(3 if h < 3 else 1)],
                     seed=43, max_yaw=25.0)
    g = Gallery.create(tmp_path_factory.mktemp("g") / "g", face_model=default_model)
    rep = g.ingest([root], workers=1, uncertainty=True)
    assert rep.faces == 10
    return g


def test_the_person_gallery_has_one_face_per_person(people, tmp_path):
    g = people
    groups = g.group_persons()
    n_groups = len(set(groups.column("person_group").to_pylist()))
    assert n_groups == 4  # (the renders' heads are told apart by their descriptors)
    rep = g.refit_persons(tmp_path / "persons", uncertainty=True)
    assert (rep.persons, rep.groups_refit, rep.faces_refit, rep.carried) == (4, 3, 9, 1)
    pg = Gallery.open(tmp_path / "persons")
    rows = pg.faces(columns=["face_id", "person", "path", "metadata", "detector", "encoder_fingerprint",
                             "descriptor"]).to_pylist()
    src = {r["face_id"]: r for r in g.faces(columns=["face_id", "person", "path"]).to_pylist()}
    by_person = {}
    for r in rows:
        meta = json.loads(r["metadata"])
        assert meta["source"] == str(g.path)
        heads = {Path(src[f]["path"]).parent.name for f in meta["faces"]}
        assert len(heads) == 1  # one head's photos, all of them
        head = heads.pop()
        by_person[head] = r
        assert len(meta["faces"]) == (3 if head != "p3" else 1)
        assert meta["photos"] == [src[f]["path"] for f in meta["faces"]] and r["path"] == meta["photos"][0]
        # no labels: a refitted group is named by its id, a lone face keeps its own (none)
        assert r["person"] == (f"group:{min(meta['faces'])}" if head != "p3" else None)
        assert r["encoder_fingerprint"].startswith(REFIT) and r["detector"] == "refit"
        assert r["descriptor"] is not None
    assert sorted(by_person) == ["p0", "p1", "p2", "p3"]
    # the carried-over face keeps its code; a refitted person's code is the joint fit of its photos
    lone = json.loads(by_person["p3"]["metadata"])["faces"][0]
    np.testing.assert_array_equal(pg.codes([by_person["p3"]["face_id"]])[0], g.codes([lone])[0])
    members = json.loads(by_person["p0"]["metadata"])["faces"]
    lms = g.faces(columns=["face_id", "landmarks", "image_width", "image_height"]).to_pylist()
    lms = [r for r in lms if r["face_id"] in members]
    joint = fit_landmarks(g.face_model, np.array([r["landmarks"] for r in lms]).reshape(-1, 68, 2),
                          np.array([[r["image_width"], r["image_height"]] for r in lms], np.float64),
                          person=np.zeros(len(lms)), config=FitConfig(), rig=None)
    got = code_layout.split(pg.codes([by_person["p0"]["face_id"]])).shape[0]
    np.testing.assert_allclose(got, code_layout.split(joint.codes).shape[0], atol=1e-4)
    own = code_layout.split(g.codes(members)).shape
    assert not np.allclose(own[0], own[1])  # each photo alone gave another shape
    # a person's uncertainty: three photos know its shape better than one of them alone
    cov_p = pg.tissue_covariance([by_person["p0"]["face_id"]])[0]
    cov_1 = g.tissue_covariance(members[:1])[0]
    assert np.trace(cov_p, axis1=-2, axis2=-1).sum() < np.trace(cov_1, axis1=-2, axis2=-1).sum()
    # the person gallery is a gallery: it verifies and answers queries
    assert pg.verify()["ok"]


def test_refitting_asks_for_a_new_folder_and_real_groups(people, tmp_path):
    with pytest.raises(SkullsearchError, match="another folder"):
        people.refit_persons(people.path)
    with pytest.raises(SkullsearchError, match="at least 2"):
        people.refit_persons(tmp_path / "x", min_size=1)
    people.refit_persons(tmp_path / "y")
    with pytest.raises(Exception, match="already holds a gallery"):
        people.refit_persons(tmp_path / "y")


def test_faces_without_landmarks_are_carried_over(default_model, tmp_path):
    """Synthetic faces (no photo, no landmarks) cannot be refitted: each is its own person, its
    code as it was; a stale grouping (made before a later shard) is made again."""
    rng = np.random.default_rng(1)
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    desc = np.repeat(rng.standard_normal((2, 128)).astype(np.float32) * 0.05, 2, 0)
    ids = add_synthetic_faces(g, synth_codes(default_model, 4, rng), descriptors=desc)
    g.group_persons()
    ids = np.concatenate([ids, add_synthetic_faces(g, synth_codes(default_model, 1, rng), tag="later")])
    rep = g.refit_persons(tmp_path / "p")
    assert (rep.persons, rep.groups_refit, rep.carried) == (5, 0, 5)
    pg = Gallery.open(tmp_path / "p")
    np.testing.assert_array_equal(pg.codes(pg.faces(columns=["face_id"]).column("face_id").to_numpy()),
                                  g.codes(ids))


def test_the_persons_command_writes_the_person_gallery(people, tmp_path, capsys):
    from skullsearch.cli.app import main

    out = tmp_path / "pg"
    assert main(["persons", "--gallery", str(people.path), "--refit", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 persons — 3 groups (9 faces) refitted with one shape each, 1 faces carried over" in text
    assert Gallery.open(out).n_faces == 4
    assert main(["info", "--gallery", str(out)]) == 0


def test_the_photos_focal_length_is_stored_and_the_refit_fits_with_it(default_model, tmp_path):
    """A photo's EXIF focal length goes into the catalog (``photo_focal_px``; NULL without one)
    and a person's refit from the stored landmarks fits with it, as the ingest did (dlib's jaw
    line moved where it is known: FitConfig.jaw_calibration)."""
    from photos import render_heads
    from PIL import Image

    from skullsearch.encoder.images import FRAME_35MM_DIAGONAL

    paths = render_heads(default_model, tmp_path / "photos" / "p0", [(f"p0_{k}", 0) for k in range(3)],
                         seed=43, max_yaw=20.0)
    for p in paths[:2]:  # two of the three say their focal length: 50 mm (35 mm-equivalent)
        exif = Image.Exif()
        exif[0x010F] = "TestCam"  # (PIL writes an EXIF block with a tag of its own IFD)
        exif.get_ifd(0x8769)[0xA405] = 50
        Image.open(p).save(p, exif=exif)
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    assert g.ingest([tmp_path / "photos"], workers=1).faces == 3
    rows = sorted(g.faces(columns=["face_id", "path", "photo_focal_px", "landmarks", "image_width",
                                   "image_height"]).to_pylist(), key=lambda r: r["path"])
    focal = 50 * np.hypot(360, 360) / FRAME_35MM_DIAGONAL
    assert [r["photo_focal_px"] for r in rows[:2]] == pytest.approx([focal, focal], rel=1e-6)
    assert rows[2]["photo_focal_px"] is None
    g.group_persons()
    rep = g.refit_persons(tmp_path / "persons")
    assert rep.groups_refit == 1 and rep.faces_refit == 3
    pg = Gallery.open(tmp_path / "persons")
    (code,) = pg.codes(pg.faces(columns=["face_id"]).column("face_id").to_pylist())  # one person
    lm = np.array([r["landmarks"] for r in rows]).reshape(-1, 68, 2)
    sizes = np.array([[r["image_width"], r["image_height"]] for r in rows], np.float64)
    joint = fit_landmarks(default_model, lm, sizes, person=np.zeros(3), detector="dlib",
                          focal=np.array([r["photo_focal_px"] or np.nan for r in rows], np.float64))
    guessed = fit_landmarks(default_model, lm, sizes, person=np.zeros(3), detector="dlib")
    shape = lambda c: code_layout.split(np.asarray(c)[None]).shape[0]  # noqa: E731
    np.testing.assert_allclose(shape(code), shape(joint.codes[0]), atol=1e-4)
    assert not np.allclose(shape(code), shape(guessed.codes[0]), atol=1e-3)
