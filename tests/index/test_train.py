"""Training the CNN encoder on a gallery (:mod:`skullsearch.index.train`): the photographed faces'
stored detections are reused, synthetic rows are skipped, photos no longer on disk drop out, a
sample of faces, the person labels for stage 2; on three real renders ingested for real (tiny
crops, one epoch)."""

import shutil

import numpy as np
import pytest
from photos import render_faces

from skullsearch import Gallery
from skullsearch.encoder.cnn import load_checkpoint
from skullsearch.errors import SkullsearchError
from skullsearch.index.synth import add_synthetic_faces, synth_codes
from skullsearch.index.train import train_encoder_on_gallery

TINY = dict(epochs=1, batch_size=2, size=64)


@pytest.fixture(scope="module")
def gallery(default_model, tmp_path_factory):
    """Three photographed faces (alice × 2, bob × 1; persons from their folders) and four
    synthetic faces (no photo, no landmarks)."""
    root = tmp_path_factory.mktemp("train")
    render_faces(default_model, root / "photos" / "alice", 2, seed=1, size=256)
    render_faces(default_model, root / "photos" / "bob", 1, seed=2, size=256)
    g = Gallery.create(root / "g", face_model=default_model)
    rep = g.ingest([root / "photos"], workers=1, person_from_parent_dir=True, descriptors=False)
    assert rep.faces == 3
    add_synthetic_faces(g, synth_codes(default_model, 4, np.random.default_rng(0)))
    assert g.n_faces == 7
    return g, root / "photos"


def test_trains_on_the_photographed_faces_with_their_persons(gallery, tmp_path):
    g, _ = gallery
    out = tmp_path / "enc.pt"
    net, history = train_encoder_on_gallery(g, out, **TINY)
    loaded, meta = load_checkpoint(out, model=g.face_model)  # trained for the gallery's model
    assert meta == {"faces": 3, "epochs": 1, "seed": 0}  # the 4 synthetic faces were skipped
    assert net.face_model_fingerprint == g.face_model.fingerprint
    assert [h["epoch"] for h in history] == [1]
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[0]["consistency"] > 0  # stage 2: alice's two photos share one shape


def test_a_sample_of_faces_and_no_person_labels(gallery, tmp_path):
    g, _ = gallery
    out = tmp_path / "enc.pt"
    _, history = train_encoder_on_gallery(g, out, use_person=False, max_faces=2, seed=3, **TINY)
    _, meta = load_checkpoint(out)
    assert meta == {"faces": 2, "epochs": 1, "seed": 3}
    assert history[0]["consistency"] == 0.0  # no persons: Eq. 1 alone


def test_too_few_faces_is_refused_before_training(gallery, tmp_path):
    g, _ = gallery
    with pytest.raises(SkullsearchError, match=r"found 1 usable face\(s\): training needs at least 2"):
        train_encoder_on_gallery(g, tmp_path / "enc.pt", max_faces=1, **TINY)
    assert not (tmp_path / "enc.pt").exists()


def test_photos_moved_away_drop_out(gallery, tmp_path):
    g, photos = gallery
    away = tmp_path / "away"
    shutil.move(photos / "alice", away)  # two of the three photos are no longer where ingested
    try:
        with pytest.raises(SkullsearchError, match=r"found 1 usable face\(s\)"):
            train_encoder_on_gallery(g, tmp_path / "enc.pt", **TINY)
    finally:
        shutil.move(away, photos / "alice")


def test_a_gallery_of_synthetic_faces_has_nothing_to_train_on(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    add_synthetic_faces(g, synth_codes(default_model, 5, np.random.default_rng(1)))
    with pytest.raises(SkullsearchError, match=r"found 0 usable face\(s\)"):
        train_encoder_on_gallery(g, tmp_path / "enc.pt", **TINY)
