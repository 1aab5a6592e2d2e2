"""Synthetic photos for the tests: renders of the open model's faces that the real detector finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def render_faces(model, folder: Path, n: int, seed: int = 0, size: int = 320,
                 prefix: str = "face") -> list[Path]:
    """Write n PNG renders of random faces (yaw ±20°) into folder; returns their paths."""
    from skullsearch.encoder.render import face_camera, render_mesh

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    betas = torch.tensor(rng.standard_normal((n, 90)), dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=betas).numpy()
    paths = []
    for i, v in enumerate(verts):
        cam = face_camera(yaw_deg=rng.uniform(-20, 20), size=size, distance=600, fov_mm=300,
                          center=np.array([0.0, -30.0, 0.0]))
        albedo = np.array([0.8, 0.62, 0.5]) * rng.uniform(0.7, 1.05)
        p = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(render_mesh(v, model.faces, cam, albedo=albedo).image).save(p)
        paths.append(p)
    return paths


def bad_files(folder: Path) -> dict[str, str]:
    """Write every kind of unusable file; returns {file name: expected failure reason}."""
    import io
    import os
    import struct
    import zlib

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (200, 120, 90)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    # a PNG whose header claims 100000 × 100000 pixels (a decompression bomb), a few bytes long
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    (folder / "huge.png").write_bytes(png)
    # a dangling symbolic link: unreadable even for root
    os.symlink(folder / "does-not-exist.jpg", folder / "gone.jpg")
    Image.new("RGB", (240, 240), (90, 140, 200)).save(folder / "ñandú 写真 sky.jpg")  # no face
    return {"zero.jpg": "empty", "notes.png": "not-an-image", "truncated.jpg": "truncated",
            "huge.png": "too-large", "gone.jpg": "unreadable", "ñandú 写真 sky.jpg": "no-face"}


def render_heads(model, folder: Path, heads: list[tuple[str, int]], seed: int, size: int = 360,
                 max_yaw: float = 20.0) -> list[Path]:
    """PNG portraits (``random_portrait``: pose, light, skin tone drawn per photo) of random heads
    of ``model``: heads = [(file stem, head number), ...]; photos of one head number show the same
    head. Returns the paths, in that order."""
    from skullsearch.encoder.render import random_portrait

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = max(h for _, h in heads) + 1
    betas = torch.tensor(rng.standard_normal((n, model.n_shape)), dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=betas).numpy()
    paths = []
    for stem, h in heads:
        render, _ = random_portrait(verts[h], model.faces, rng, max_yaw=max_yaw, size=size)
        paths.append(folder / f"{stem}.png")
        Image.fromarray(render.image).save(paths[-1])
    return paths
