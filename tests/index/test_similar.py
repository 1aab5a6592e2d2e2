"""index/similar.py on a real gallery of synthetic faces without descriptors: ranking by shape
code, the distances it reports, several queries at once, and a photo without a face. (Ranking by
person descriptor on a handmade set of persons: tests/index/test_persons.py.)"""

import numpy as np
import pytest
from PIL import Image

from skullsearch import Gallery, GalleryError
from skullsearch.index.similar import similar, similar_to_photo
from skullsearch.index.synth import add_synthetic_faces, synth_codes


@pytest.fixture(scope="module")
def shapes(default_model, tmp_path_factory):
    g = Gallery.create(tmp_path_factory.mktemp("g") / "g", face_model=default_model)
    codes = synth_codes(default_model, 12, np.random.default_rng(3))
    ids = add_synthetic_faces(g, codes)
    return g, codes, ids


def test_each_face_finds_itself_first_and_the_rest_by_shape_distance(shapes):
    g, codes, ids = shapes
    out = similar(g, codes[[2, 7]], top=5)
    assert len(out) == 2
    for q, rows in zip((2, 7), out, strict=True):
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0]["face_id"] == ids[q] and rows[0]["distance"] == pytest.approx(0.0, abs=1e-5)
        want = np.linalg.norm(codes[:, :90].astype(np.float64) - codes[q, :90], axis=1)
        got = {r["face_id"]: r["distance"] for r in rows}
        assert [r["face_id"] for r in rows] == list(ids[np.argsort(want)[:5]])
        np.testing.assert_allclose([got[i] for i in ids[np.argsort(want)[:5]]], np.sort(want)[:5], rtol=1e-5)
        assert all(r["by"] == "shape" and r["person_distance"] is None for r in rows)
        assert all(r["path"].startswith("synth://") for r in rows)


def test_top_beyond_the_gallery_gives_every_face_once(shapes):
    g, codes, ids = shapes
    (rows,) = similar(g, codes[:1], top=50)
    assert sorted(r["face_id"] for r in rows) == sorted(ids.tolist())


def test_ranking_by_person_in_a_gallery_without_descriptors_says_what_to_do(shapes):
    g, codes, _ = shapes
    probe = np.ones((1, 128), np.float32) / np.sqrt(128)
    with pytest.raises(GalleryError, match="holds no person descriptors.*by='shape'"):
        similar(g, codes[:1], descriptors=probe, by="person")
    (rows,) = similar(g, codes[:1], top=2, descriptors=probe)  # auto: shape, the person distance NaN
    assert rows[0]["by"] == "shape" and rows[0]["person_distance"] is None


def test_a_photo_without_a_face_names_the_photo(shapes, tmp_path):
    g, _, _ = shapes
    blank = tmp_path / "wall.png"
    Image.new("RGB", (160, 160), (128, 128, 128)).save(blank)
    with pytest.raises(GalleryError, match="wall.png"):
        similar_to_photo(g, blank)
