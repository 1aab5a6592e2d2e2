"""Robust image decoding: every bad-file case becomes an ImageFailure, every colour mode RGB."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from skullsearch.encoder import images
from skullsearch.encoder.images import DecodedImage, ImageFailure, read_image, read_images


def _rgb(h=30, w=40, seed=0) -> np.ndarray:
    """A smooth (h, w, 3) uint8 test pattern (JPEG-friendly)."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y + seed * 7) % 256], -1)
    return a.astype(np.uint8)


def _save(im: Image.Image, path, fmt=None, **kw):
    im.save(path, fmt, **kw)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose IHDR claims width × height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def _failed(res, reason):
    assert isinstance(res, ImageFailure), res
    assert res.reason == reason, (res.reason, res.detail)
    assert res.detail and res.path
    return res


# ---------------------------------------------------------------- bad files
def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    r = _failed(read_image(p), images.EMPTY)
    assert r.sha256 is not None and "0 bytes" in r.detail


def test_text_and_random_bytes_are_not_images(tmp_path):
    txt = tmp_path / "notes.jpg"
    txt.write_text("this is not a photo\n")
    _failed(read_image(txt), images.NOT_IMAGE)
    rnd = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    r = _failed(read_image(rnd, name="random.bin"), images.NOT_IMAGE)
    assert r.path == "random.bin"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(tmp_path, fmt):
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    r = _failed(read_image(p), images.TRUNCATED)
    assert r.sha256 is not None
    assert isinstance(read_image(data), DecodedImage)  # the whole file decodes
    if fmt == "JPEG":  # cut inside the header: Pillow fails already at open
        _failed(read_image(data[:100]), images.TRUNCATED)


def test_huge_dimensions_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(100_000, 100_000))
    assert p.stat().st_size < 200
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
    r = _failed(read_image(p), images.TOO_LARGE)
    assert not decoded  # refused from the header: no pixel was decoded
    assert r.sha256 is not None
    # below Pillow's own bomb limit, above ours: our header check refuses it
    _failed(read_image(_png_header_only(10_000, 10_000)), images.TOO_LARGE)
    # a real small image with a tiny limit
    small = _save(Image.fromarray(_rgb()), tmp_path / "small.png")
    r = _failed(read_image(small, max_pixels=100), images.TOO_LARGE)
    assert "40×30" in r.detail
    assert isinstance(read_image(small), DecodedImage)


def test_unreadable_file(tmp_path):
    p = _save(Image.fromarray(_rgb()), tmp_path / "locked.png")
    os.chmod(p, 0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as a user (root) who can read a chmod 000 file")
        r = _failed(read_image(p), images.UNREADABLE)
        assert r.sha256 is None and "permission" in r.detail
    finally:
        os.chmod(p, 0o644)


def test_permission_error_even_as_root(tmp_path, monkeypatch):
    p = _save(Image.fromarray(_rgb()), tmp_path / "locked.png")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", denied, raising=False)
    r = _failed(read_image(p), images.UNREADABLE)
    assert r.sha256 is None and "permission" in r.detail
    monkeypatch.setattr(images, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "I/O error")),
                        raising=False)
    assert "I/O error" in _failed(read_image(p), images.UNREADABLE).detail


def test_directory_and_missing_file(tmp_path):
    r = _failed(read_image(tmp_path), images.UNREADABLE)
    assert "folder" in r.detail
    r = _failed(read_image(tmp_path / "nope.jpg"), images.UNREADABLE)
    assert "does not exist" in r.detail


def test_damaged_header_is_a_decode_error():
    _failed(read_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), images.DECODE_ERROR)


def test_wrong_argument_type_is_a_programming_error():
    with pytest.raises(TypeError):
        read_image(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- good files
def test_unicode_file_name(tmp_path):
    p = _save(Image.fromarray(_rgb()), tmp_path / "ñandú 写真.jpg", quality=95)
    r = read_image(p)
    assert isinstance(r, DecodedImage)
    assert r.path == str(p) and r.size == (40, 30) and r.pixels.shape == (30, 40, 3)
    assert r.pixels.dtype == np.uint8 and not r.exif_transposed
    import hashlib

    assert r.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_exif_orientation_is_applied(tmp_path):
    a = np.full((20, 40, 3), 255, np.uint8)  # stored 40 wide, 20 tall
    a[:6, :6] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    p = _save(Image.fromarray(a), tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    r = read_image(p)
    assert isinstance(r, DecodedImage) and r.exif_transposed
    assert r.size == (20, 40) and r.pixels.shape == (40, 20, 3)
    top_right = r.pixels[:4, -4:].reshape(-1, 3).mean(0)
    assert top_right[0] > 200 and top_right[1] < 80  # the red block is now top-right


def test_grayscale_and_one_bit(tmp_path):
    g = _rgb()[:, :, 0]
    r = read_image(_save(Image.fromarray(g, "L"), tmp_path / "gray.png"))
    assert r.pixels.shape == (30, 40, 3) and r.pixels.dtype == np.uint8
    np.testing.assert_array_equal(r.pixels[:, :, 1], g)
    r = read_image(_save(Image.fromarray(g > 128), tmp_path / "bits.png"))
    assert r.pixels.shape == (30, 40, 3) and set(np.unique(r.pixels)) <= {0, 255}


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    vals = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16).repeat(3, 0)
    p = _save(Image.fromarray(vals), tmp_path / "deep.png")
    assert Image.open(p).mode.startswith("I")
    r = read_image(p)
    assert r.pixels.shape == (3, 4, 3) and r.pixels.dtype == np.uint8
    np.testing.assert_array_equal(r.pixels[0, :, 0], [0, 100, 255, 4])


def test_cmyk_jpeg(tmp_path):
    rgb = _rgb(48, 64)
    p = _save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "print.jpg", quality=95)
    assert Image.open(p).mode == "CMYK"
    r = read_image(p)
    assert r.pixels.shape == (48, 64, 3) and r.pixels.dtype == np.uint8
    assert np.abs(r.pixels.astype(int) - rgb).mean() < 8


def test_rgba_composited_over_white(tmp_path):
    a = np.zeros((10, 10, 4), np.uint8)
    a[:, :5] = (255, 0, 0, 255)  # opaque red
    a[:, 5:] = (0, 0, 255, 0)  # fully transparent blue
    a[0, 0] = (0, 0, 0, 128)  # half-transparent black
    r = read_image(_save(Image.fromarray(a, "RGBA"), tmp_path / "alpha.png"))
    assert r.pixels.shape == (10, 10, 3)
    np.testing.assert_array_equal(r.pixels[5, 2], [255, 0, 0])
    np.testing.assert_array_equal(r.pixels[5, 7], [255, 255, 255])
    assert 120 <= r.pixels[0, 0, 0] <= 135
    la = read_image(_save(Image.fromarray(a[:, :, [0, 3]], "LA"), tmp_path / "la.png"))
    assert la.pixels.shape == (10, 10, 3) and la.pixels[5, 7].tolist() == [255, 255, 255]


def test_palette_png(tmp_path):
    rgb = _rgb()
    p = _save(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=32),
              tmp_path / "pal.png")
    assert Image.open(p).mode == "P"
    r = read_image(p)
    assert r.pixels.shape == (30, 40, 3) and r.pixels.dtype == np.uint8
    assert np.abs(r.pixels.astype(int) - rgb).mean() < 20


def test_bytes_input():
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, "PNG")
    r = read_image(buf.getvalue())
    assert isinstance(r, DecodedImage) and r.path == "<bytes>"
    np.testing.assert_array_equal(r.pixels, _rgb())


# ---------------------------------------------------------------- batches
class _CrashInChild(os.PathLike):
    """A path that kills the process asking for it, unless that is the test process."""

    def __init__(self, path):
        self.path, self.parent = str(path), os.getpid()

    def __fspath__(self):
        if os.getpid() != self.parent:
            os._exit(3)
        return self.path


def test_read_images_in_worker_processes_keeps_order(tmp_path):
    good = [_save(Image.fromarray(_rgb(10 + i, 12 + i, seed=i)), tmp_path / f"g{i}.png")
            for i in range(4)]
    empty = tmp_path / "e.jpg"
    empty.write_bytes(b"")
    sources = [good[0], empty, good[1], b"plain text", good[2], tmp_path / "missing.jpg", good[3]]
    serial = read_images(sources)
    parallel = read_images(sources, workers=2)
    for s, p in zip(serial, parallel, strict=True):
        assert type(s) is type(p) and s.path == p.path
    assert [type(r).__name__ for r in parallel] == [
        "DecodedImage", "ImageFailure", "DecodedImage", "ImageFailure", "DecodedImage",
        "ImageFailure", "DecodedImage"]
    assert [r.size for r in parallel if isinstance(r, DecodedImage)] == [(12, 10), (13, 11),
                                                                         (14, 12), (15, 13)]
    assert [r.reason for r in parallel if isinstance(r, ImageFailure)] == [
        images.EMPTY, images.NOT_IMAGE, images.UNREADABLE]


def test_worker_crash_becomes_a_failure(tmp_path):
    import multiprocessing

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the crashing stand-in path reaches workers by fork only")
    good = [_save(Image.fromarray(_rgb(10, 10 + i)), tmp_path / f"g{i}.png") for i in range(3)]
    crash = _CrashInChild(tmp_path / "boom.jpg")
    out = read_images([good[0], crash, good[1], good[2]], workers=2)
    assert [type(r).__name__ for r in out] == ["DecodedImage", "ImageFailure", "DecodedImage",
                                               "DecodedImage"]
    assert out[1].reason == images.DECODE_ERROR and "crashed" in out[1].detail
    assert out[1].path.endswith("boom.jpg")


def _jpeg_with_exif(size=(400, 300), f35=None, recorded=None, orientation=None, fmt="JPEG") -> bytes:
    """A flat photo whose EXIF holds a 35 mm-equivalent focal length and the camera's recorded
    size (Make too: Pillow writes no EXIF that holds a sub-IFD alone)."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    if orientation is not None:
        exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)
    if f35 is not None:
        sub[0xA405] = f35
    if recorded is not None:
        sub[0xA002], sub[0xA003] = recorded
    buf = io.BytesIO()
    Image.new("RGB", size, (128, 110, 100)).save(buf, fmt, exif=exif)
    return buf.getvalue()


def test_the_focal_length_comes_from_exif_in_pixels_of_the_decoded_image():
    from skullsearch.encoder.images import FRAME_35MM_DIAGONAL

    diag = np.hypot(400, 300)
    # a phone's 26 mm-equivalent, the photo resized from the camera's 4032 × 3024: the same view
    img = read_image(_jpeg_with_exif(f35=26, recorded=(4032, 3024)))
    assert img.focal_px == pytest.approx(26 * diag / FRAME_35MM_DIAGONAL)
    assert img.focal_px == pytest.approx(0.751 * 400, rel=1e-3)  # 0.75 × the longer side
    # turned by its EXIF orientation: the diagonal, so the focal length, is the same
    turned = read_image(_jpeg_with_exif(f35=26, recorded=(4032, 3024), orientation=6))
    assert turned.exif_transposed and turned.size == (300, 400)
    assert turned.focal_px == pytest.approx(img.focal_px)
    # no recorded size (an editor dropped it): the tag is taken as it is
    assert read_image(_jpeg_with_exif(f35=85)).focal_px == pytest.approx(85 * diag / FRAME_35MM_DIAGONAL)
    assert read_image(_jpeg_with_exif(f35=85, fmt="PNG")).focal_px == pytest.approx(
        85 * diag / FRAME_35MM_DIAGONAL)


@pytest.mark.parametrize("f35, recorded", [
    (None, None),           # no tag
    (0, None),              # 0: unknown, by the standard
    (5000, None),           # not a lens: a broken tag
    (26, (4000, 4000)),     # cropped square from another frame: the tag no longer applies
    (26, (3024, 3024)),
])
def test_no_focal_length_where_exif_does_not_give_one_that_applies(f35, recorded):
    assert read_image(_jpeg_with_exif(f35=f35, recorded=recorded)).focal_px is None


def test_a_broken_exif_block_gives_no_focal_length():
    from skullsearch.encoder.images import exif_focal_px

    class Broken:
        def get_ifd(self, tag):
            raise ValueError("corrupt IFD")

    assert exif_focal_px(Broken(), (400, 300)) is None
