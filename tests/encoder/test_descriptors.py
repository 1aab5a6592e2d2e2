"""Person descriptors (dlib's face recognition network) on real decoded renders, offline."""

import numpy as np
import pytest

from skullsearch.encoder import descriptors
from skullsearch.encoder.detectors import DlibDetector
from skullsearch.encoder.encode import encode
from skullsearch.encoder.images import read_image


@pytest.fixture(scope="module")
def portraits(default_model, tmp_path_factory):
    """Two PNG portraits each (other pose, light, skin tone) of three default-model heads."""
    from photos import render_heads

    heads = [(f"head{i}_{k}", i) for i in range(3) for k in range(2)]
    paths = render_heads(default_model, tmp_path_factory.mktemp("desc"), heads, seed=3)
    return paths, np.array([h for _, h in heads])


def _describe(paths):
    det = DlibDetector()
    out = []
    for p in paths:
        img = read_image(p)
        (face,) = det.detect(img)[:1]
        out.append(descriptors.face_descriptors(img.pixels, face.box[None], face.landmarks[None])[0])
    return np.stack(out)


def test_descriptors_tell_the_heads_apart(portraits):
    paths, person = portraits
    d = _describe(paths)
    assert d.shape == (6, descriptors.DIM) and d.dtype == np.float32 and np.isfinite(d).all()
    dist = descriptors.descriptor_distances(d, d)
    same = person[:, None] == person[None, :]
    off = ~np.eye(len(person), dtype=bool)
    # every head's other photo is nearer than any other head's photo
    assert dist[same & off].max() < dist[~same].min()
    assert dist[same & off].max() < descriptors.SAME_PERSON_DISTANCE


def test_gray_photos_no_landmarks_and_wrong_layouts(portraits):
    paths, _ = portraits
    img = read_image(paths[0])
    (face,) = DlibDetector().detect(img)[:1]
    rgb = descriptors.face_descriptors(img.pixels, face.box[None], face.landmarks[None])
    gray = descriptors.face_descriptors(img.pixels.mean(2).astype(np.uint8), face.box[None],
                                        face.landmarks[None])
    assert np.linalg.norm(rgb - gray) < 0.3  # a gray copy is still the same person
    lost = face.landmarks.copy()
    lost[0] = np.nan
    two = descriptors.face_descriptors(img.pixels, np.stack([face.box, face.box]),
                                       np.stack([face.landmarks, lost]))
    assert np.isfinite(two[0]).all() and np.isnan(two[1]).all()
    np.testing.assert_allclose(two[0], rgb[0], atol=1e-5)
    with pytest.raises(ValueError, match="68 landmarks"):
        descriptors.face_descriptors(img.pixels, face.box[None], face.landmarks[None, :5])


def test_encode_gives_descriptors_only_when_asked(default_model, portraits):
    paths, _ = portraits
    plain = encode(paths[:2], model=default_model)
    assert all(f.descriptor is None for f in plain.faces)
    assert np.isnan(plain.descriptors).all()
    described = encode(paths[:2], model=default_model, descriptors=True)
    assert described.descriptors.shape == (2, descriptors.DIM)
    np.testing.assert_allclose(described.descriptors, _describe(paths[:2]), atol=1e-5)
    assert len(described.faces[0].to_dict()["descriptor"]) == descriptors.DIM
