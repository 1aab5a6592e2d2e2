"""Photo fingerprints (index/fingerprint.py) on synthetic pictures: the alignment points, the 2D
similarity, the aligned crop under moves of the photo, the DCT descriptor and the exact index.
(Copies of rendered faces: tests/index/test_near_dup_photos.py.)"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.fft import dctn
from scipy.ndimage import gaussian_filter

from skullsearch.index import fingerprint as fpm

seeds = st.integers(0, 2**32 - 1)


def landmarks_for(a: complex, b: complex, rng) -> np.ndarray:
    """68 landmarks whose eye and nose groups average to the canonical points mapped by z ↦ a·z + b
    (crop → photo); each group spread around its centre, the rest anywhere."""
    canon = fpm.canonical_points()
    target = a * (canon[:, 0] + 1j * canon[:, 1]) + b
    lm = rng.uniform(0, 50, size=(68, 2))
    for (lo, hi), c in zip(((36, 42), (42, 48), (27, 36)), target, strict=True):
        jitter = rng.normal(scale=2.0, size=(hi - lo, 2))
        lm[lo:hi] = np.array([c.real, c.imag]) + jitter - jitter.mean(0)
    return lm


def picture(rng, h=240, w=260):
    """A smooth grayscale picture with structure at the scale of a face crop."""
    img = gaussian_filter(rng.uniform(0, 255, size=(h, w)), 3.0)
    return np.clip((img - img.mean()) * 8 + 128, 0, 255).astype(np.uint8)


def test_align_points_are_the_eye_and_nose_centres():
    lm = np.zeros((68, 2))
    lm[36:42] = [10.0, 20.0]
    lm[42:48] = [30.0, 20.0]
    lm[27:36] = np.arange(9)[:, None] + [18.0, 30.0]  # mean (22, 34)
    lm[48:] = 1e6  # the mouth and jaw do not count
    np.testing.assert_allclose(fpm.align_points(lm), [[10, 20], [30, 20], [22, 34]])
    assert fpm.align_points(np.stack([lm, lm + 1])).shape == (2, 3, 2)


def test_canonical_points_scale_arcfaces_template():
    np.testing.assert_allclose(fpm.canonical_points(112, 1.0), fpm.TEMPLATE_112)
    c = fpm.canonical_points(32, 1.2)
    np.testing.assert_allclose(c - 16.0, (fpm.TEMPLATE_112 - 56.0) * 32 / (112 * 1.2))
    assert fpm.DIM == 63


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_similarity_2d_recovers_a_similarity(seed):
    rng = np.random.default_rng(seed)
    src = rng.normal(scale=30.0, size=(5, 2))
    a = complex(*rng.normal(size=2)) * rng.uniform(0.1, 10.0)
    b = complex(*rng.normal(scale=100.0, size=2))
    z = a * (src[:, 0] + 1j * src[:, 1]) + b
    got_a, got_b = fpm.similarity_2d(src, np.stack([z.real, z.imag], 1))
    assert abs(got_a - a) < 1e-9 * abs(a) and abs(got_b - b) < 1e-7


def test_similarity_2d_of_coincident_points_does_not_divide_by_zero():
    a, b = fpm.similarity_2d(np.ones((3, 2)), np.array([[0.0, 0], [1, 0], [0, 1]]))
    assert a == 0 and np.isfinite(b)


@pytest.mark.parametrize("scale", [1.6, 9.0])  # small face (no reduce), large face (box-reduced)
def test_the_crop_follows_the_face_when_the_photo_is_shifted(scale):
    rng = np.random.default_rng(0)
    img = picture(rng, 420, 440)
    a, b = scale * np.exp(0.2j), complex(200, 190) - scale * np.exp(0.2j) * 16 * (1 + 1j)
    lm = landmarks_for(a, b, rng)
    crop = fpm.face_crop(img, lm)
    assert crop.shape == (32, 32) and crop.dtype == np.float32 and crop.std() > 10
    shifted = np.pad(img, ((13, 0), (7, 0)), mode="constant")[:420, :440]
    np.testing.assert_allclose(fpm.face_crop(shifted, lm + [7, 13]), crop, atol=1e-4)


def test_the_crop_follows_the_face_when_the_photo_is_turned():
    rng = np.random.default_rng(1)
    img = picture(rng, 200, 200)
    lm = landmarks_for(2.0 + 0.3j, complex(70, 60), rng)
    crop = fpm.face_crop(img, lm)
    turned = np.rot90(img)  # a pixel at (x, y) moves to (y, W − 1 − x)
    lm_t = np.stack([lm[:, 1], 199 - lm[:, 0]], 1)
    diff = np.abs(fpm.face_crop(turned, lm_t) - crop)
    assert diff.max() <= 1.0 and diff.mean() < 0.3  # (PIL rounds each bilinear sample to uint8)
    other = np.abs(fpm.face_crop(img, lm_t) - crop)
    assert other.mean() > 10  # the same landmarks on the unturned photo: another crop


def test_beyond_the_photo_the_edge_pixels_are_repeated():
    rng = np.random.default_rng(2)
    img = picture(rng, 120, 120)
    lm = landmarks_for(2.5, complex(-20, 40), rng)  # the crop's left part lies left of the photo
    crop = fpm.face_crop(img, lm)
    diff = np.abs(fpm.face_crop(np.pad(img, 60, mode="edge"), lm + 60) - crop)
    assert diff.max() <= 1.0 and diff.mean() < 0.1  # (PIL rounds each bilinear sample to uint8)
    black = np.abs(fpm.face_crop(np.pad(img, 60), lm + 60) - crop)
    assert black[:, :8].mean() > 20  # the frame does leave the photo there


def test_colour_photos_are_cropped_in_grayscale():
    rng = np.random.default_rng(3)
    gray = picture(rng)
    lm = landmarks_for(1.8, complex(80, 70), rng)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_allclose(fpm.face_crop(rgb, lm), fpm.face_crop(gray, lm), atol=1e-4)


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError, match="degenerate landmarks: the face has no extent"):
        fpm.face_crop(np.zeros((50, 50), np.uint8), np.full((68, 2), 25.0))


def test_describe_is_the_unit_low_frequency_dct_without_dc():
    rng = np.random.default_rng(4)
    crops = rng.uniform(0, 255, size=(3, 32, 32))
    got = fpm.describe(crops)
    assert got.shape == (3, 63) and got.dtype == np.float32
    low = dctn(crops, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(3, -1)[:, 1:]
    np.testing.assert_allclose(got, low / np.linalg.norm(low, axis=1, keepdims=True), atol=1e-6)


def test_brightness_and_contrast_do_not_move_a_fingerprint_and_flat_crops_have_none():
    crops = np.random.default_rng(5).uniform(50, 150, size=(2, 32, 32))
    np.testing.assert_allclose(fpm.describe(crops * 1.7 + 40), fpm.describe(crops), atol=1e-6)
    flat = fpm.describe(np.full((1, 32, 32), 90.0))
    assert np.isnan(flat).all()
    assert not np.allclose(fpm.describe(crops[:1]), fpm.describe(crops[1:]), atol=0.05)


def test_photo_fingerprints_of_a_photo_with_a_degenerate_face():
    rng = np.random.default_rng(6)
    img = picture(rng)
    good = landmarks_for(2.0, complex(70, 60), rng)
    out = fpm.photo_fingerprints(img, np.stack([good, np.zeros((68, 2))]))
    assert out.shape == (2, 63)
    np.testing.assert_allclose(out[0], fpm.describe(fpm.face_crop(img, good)[None])[0])
    assert np.isnan(out[1]).all()


def test_distances_and_the_exact_index():
    rng = np.random.default_rng(7)
    v = rng.normal(size=(20, 63)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    d = fpm.distances(v[:5], v[5:10])
    assert d.dtype == np.float32 and d.shape == (5,)
    np.testing.assert_allclose(d, np.linalg.norm(v[:5] - v[5:10], axis=1), rtol=1e-6)
    assert fpm.flat_index().ntotal == 0 and fpm.flat_index(np.zeros((0, 63))).ntotal == 0
    index = fpm.flat_index(v)
    d2, pos = index.search(v[[3, 17]] + 0.01, 2)
    assert pos[:, 0].tolist() == [3, 17]
    np.testing.assert_allclose(d2[:, 0], 63 * 0.01**2, rtol=1e-3)  # squared L2
