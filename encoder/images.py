"""Robust image decoding: any photo file → (H, W, 3) uint8 RGB, or a reason why not.

:func:`read_image` never raises for a bad image: a zero-byte, non-image, truncated, oversized,
unreadable or undecodable file comes back as an :class:`ImageFailure` saying what is wrong and
what to do. EXIF orientation is applied; grayscale, 16-bit, palette, CMYK, YCbCr, 1-bit and
alpha images are all converted to 8-bit RGB (alpha composited over white).

Pillow's global settings (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) are
never changed: the pixel limit is checked here, from the header, before any pixel is decoded.
Pillow's own bomb check still applies on top (it refuses more than 2 × ``MAX_IMAGE_PIXELS``,
about 179 megapixels), so a ``max_pixels`` above that has no further effect.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EMPTY = "empty"
NOT_IMAGE = "not-an-image"
TRUNCATED = "truncated"
TOO_LARGE = "too-large"
UNREADABLE = "unreadable"
DECODE_ERROR = "decode-error"
REASONS = (EMPTY, NOT_IMAGE, TRUNCATED, TOO_LARGE, UNREADABLE, DECODE_ERROR)

DEFAULT_MAX_PIXELS = 60_000_000

#: the file suffixes taken for photos when a folder is listed (lower case)
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

_SIGNATURES = {  # leading bytes → format name, to tell a damaged image from a non-image
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}

Source = str | os.PathLike | bytes


@dataclass
class DecodedImage:
    """A decoded photo. pixels: (H, W, 3) uint8 RGB after EXIF orientation; size: (W, H);
    focal_px: the camera's focal length in pixels of this image from its EXIF
    (:func:`exif_focal_px`), None where the photo does not say it."""

    path: str
    pixels: np.ndarray
    sha256: str
    size: tuple[int, int]
    exif_transposed: bool
    focal_px: float | None = None


#: a 35 mm frame's diagonal (mm): EXIF's 35 mm-equivalent focal length is relative to it
FRAME_35MM_DIAGONAL = float(np.hypot(36.0, 24.0))
#: 35 mm-equivalent focal lengths (mm) outside this range are taken as a broken tag
FOCAL_35MM_RANGE = (8.0, 1200.0)
#: the image's aspect ratio may differ from the one the camera recorded by this much (relative)
#: before the photo counts as cropped (its recorded focal length then no longer applies)
ASPECT_TOLERANCE = 0.02


def exif_focal_px(exif, size: tuple[int, int]) -> float | None:
    """The focal length in pixels of an image of ``size`` (W, H) px from its EXIF (a Pillow
    ``Image.Exif``): the 35 mm-equivalent focal length (FocalLengthIn35mmFilm, tag 0xA405) ×
    the image's diagonal / the 35 mm frame's diagonal (43.3 mm). None when the tag is missing,
    0 (unknown) or outside :data:`FOCAL_35MM_RANGE`, or when the camera's recorded image size
    (PixelXDimension / PixelYDimension) has another aspect ratio than the image's (either way
    round): a crop keeps the tag but not the field of view it describes. A resized photo keeps
    both (the focal length scales with the pixels)."""
    try:
        sub = exif.get_ifd(0x8769)
        f35 = float(sub.get(0xA405) or 0)
        recorded = (sub.get(0xA002), sub.get(0xA003))
    except Exception:  # noqa: BLE001 - a broken EXIF block: the focal length is not known
        return None
    if not FOCAL_35MM_RANGE[0] <= f35 <= FOCAL_35MM_RANGE[1]:
        return None
    w, h = (float(v) for v in size)
    try:
        rw, rh = (float(v) for v in recorded)
    except (TypeError, ValueError):
        rw = rh = 0.0
    if rw > 0 and rh > 0:
        aspect = w / h
        if min(abs(aspect / (rw / rh) - 1), abs(aspect / (rh / rw) - 1)) > ASPECT_TOLERANCE:
            return None
    return f35 * float(np.hypot(w, h)) / FRAME_35MM_DIAGONAL


@dataclass
class ImageFailure:
    """A file that could not be decoded. reason: one of :data:`REASONS`; detail: what is wrong and
    what to do; sha256: of the file bytes when they could be read."""

    path: str
    reason: str
    detail: str
    sha256: str | None = None


def _signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for sig, fmt in _SIGNATURES.items() if data.startswith(sig)), None)


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """A single-channel integer/float image (H, W) → (H, W) uint8, keeping relative values.

    16-bit data (I;16*, or I with values in [0, 65535]) maps 0..65535 → 0..255; float data in
    [0, 1] maps to 0..255; anything else is stretched from its min to its max.
    """
    a = a.astype(np.float64)
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        out = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = a * 255.0
    else:
        out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(np.nan_to_num(out)), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow image → (H, W, 3) uint8 RGB; alpha is composited over white."""
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _scale_to_uint8(np.asarray(im), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[:, :, 3:] / 255.0
        rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _failure(path, reason, detail, sha=None) -> ImageFailure:
    return ImageFailure(path=path, reason=reason, detail=detail, sha256=sha)


def read_image(
    source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> DecodedImage | ImageFailure:
    """Decode one photo (a path or the file's bytes) into a :class:`DecodedImage`.

    Never raises for a bad image: returns an :class:`ImageFailure` instead. ``max_pixels``:
    width × height above which the image is refused (read from the header, before decoding).
    ``name``: the path to report for ``bytes`` input (default ``"<bytes>"``).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, path = bytes(source), name or "<bytes>"
    elif isinstance(source, str | os.PathLike):
        path = name or os.fspath(source)
        try:
            with open(source, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return _failure(path, UNREADABLE, f"{path} does not exist; check the path")
        except IsADirectoryError:
            return _failure(path, UNREADABLE, f"{path} is a folder, not an image file; give the "
                            "image files inside it")
        except PermissionError:
            return _failure(path, UNREADABLE, f"permission denied reading {path}; make the file "
                            "readable (chmod +r) or run as a user who can read it")
        except OSError as e:
            return _failure(path, UNREADABLE, f"cannot read {path} ({e.strerror or e}); check the "
                            "disk or network share and try again")
    else:
        raise TypeError(f"read_image takes a path or bytes, not {type(source).__name__}")

    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return _failure(path, EMPTY, f"{path} is empty (0 bytes); re-copy or re-download it", sha)
    kind = _signature(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                return _failure(path, TOO_LARGE, f"{path} is {w}×{h} pixels, more than the "
                                f"{max_pixels:,}-pixel limit; downscale it or raise max_pixels",
                                sha)
            im.load()
            exif = im.getexif()
            orientation = exif.get(0x0112, 1)
    except Image.DecompressionBombError as e:
        return _failure(path, TOO_LARGE, f"{path} is too large to decode safely ({e}); downscale "
                        "it first", sha)
    except UnidentifiedImageError:
        if kind is None:
            return _failure(path, NOT_IMAGE, f"{path} is not an image file Pillow can read "
                            "(JPEG, PNG, TIFF, BMP, GIF, WebP...); remove it or convert it", sha)
        return _failure(path, DECODE_ERROR, f"{path} starts like a {kind} file but its header is "
                        "damaged or cut short; re-copy the original file", sha)
    except Exception as e:  # noqa: BLE001 - Pillow plugins raise many types on bad data
        if "truncat" in str(e).lower():
            return _failure(path, TRUNCATED, f"{path} is truncated (the file ends before the "
                            "image does); re-copy or re-download the original", sha)
        return _failure(path, DECODE_ERROR, f"{path} could not be decoded ({type(e).__name__}: "
                        f"{e}); re-save it as JPEG or PNG", sha)

    transposed = False
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            im = ImageOps.exif_transpose(im)
            transposed = True
        except Exception:  # noqa: BLE001 - broken EXIF: keep the pixels as stored
            transposed = False
    try:
        pixels = _to_rgb(im)
    except Exception as e:  # noqa: BLE001
        return _failure(path, DECODE_ERROR, f"{path} has colour mode {im.mode!r}, which cannot be "
                        f"converted to RGB ({e}); re-save it as an RGB JPEG or PNG", sha)
    size = (int(pixels.shape[1]), int(pixels.shape[0]))
    return DecodedImage(path=path, pixels=pixels, sha256=sha, size=size, exif_transposed=transposed,
                        focal_px=exif_focal_px(exif, size))


def _crash_failure(source: Source, name: str | None) -> ImageFailure:
    path = name or ("<bytes>" if isinstance(source, bytes | bytearray) else os.fspath(source))
    return _failure(path, DECODE_ERROR, f"the decoder process crashed on {path}; the file is "
                    "probably corrupt: re-save it as JPEG or PNG, or remove it")


def read_images(
    sources: Iterable[Source],
    workers: int = 0,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    names: Sequence[str | None] | None = None,
) -> list[DecodedImage | ImageFailure]:
    """:func:`read_image` over many sources, results in input order.

    workers > 0 decodes in that many processes; a worker that crashes (e.g. a segfault in a
    codec) turns into an :class:`ImageFailure` for its file, the rest of the batch goes on.
    """
    sources = list(sources)
    names = list(names) if names is not None else [None] * len(sources)
    if len(names) != len(sources):
        raise ValueError("names must have one entry per source")
    if workers <= 0:
        return [read_image(s, max_pixels=max_pixels, name=n) for s, n in zip(sources, names, strict=True)]

    out: list[DecodedImage | ImageFailure | None] = [None] * len(sources)
    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(read_image, s, max_pixels=max_pixels, name=n)
                   for s, n in zip(sources, names, strict=True)]
        for i, fut in enumerate(futures):
            try:
                out[i] = fut.result()
            except BrokenProcessPool:
                pass  # retried alone below, to find which file killed the pool
    for i, res in enumerate(out):
        if res is None:  # each suspect in a fresh one-process pool of its own
            with cf.ProcessPoolExecutor(max_workers=1) as pool:
                try:
                    out[i] = pool.submit(read_image, sources[i], max_pixels=max_pixels,
                                         name=names[i]).result()
                except BrokenProcessPool:
                    out[i] = _crash_failure(sources[i], names[i])
    return out  # type: ignore[return-value]
