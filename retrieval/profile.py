"""The skull's midsagittal profile as an image: the lateral view in which an examiner checks a
skull's landmarks and tissue depths (a cephalometric tracing's view), without a 3D viewer.

:func:`profile_image` cuts the skull mesh with its own midline plane — the plane of the
landmarks' frame (:meth:`~skullsearch.retrieval.extended.ExtendedLandmarks.frame`: up from the
chin to the brow, forward along the midline's tissue directions) through the midline landmarks —
and draws, face to the right, 1 px = ``px_mm`` mm:

- the bone's section (red) and any face meshes' sections (a reconstruction placed on the skull,
  in the skull's frame: each its own colour, named in the legend);
- each midline landmark on the bone (yellow circle, named), its tissue direction and its extended
  (soft-tissue) point at the table's depth (cyan square; red where the extension warns that its
  direction points into the skull: :data:`~skullsearch.retrieval.extended.DIRECTION_LIMIT_DEG`),
  each projected onto the plane;
- a 10 mm scale bar and a legend.

Bilateral landmarks lie off the plane and are not drawn (``skullsearch landmarks --export``
writes all of them in 3D). A point far off the plane (a midline landmark placed off the midline:
more than ``OFF_PLANE_MM``) is drawn hollow and named with its distance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skullsearch.encoder.soft_tissue import MIDLINE, SOFT_TISSUE_NAMES
from skullsearch.retrieval.extended import DIRECTION_LIMIT_DEG, ExtendedLandmarkError, ExtendedLandmarks

#: a midline landmark further than this (mm) from the midline plane is drawn hollow, its distance named
OFF_PLANE_MM = 5.0
#: the largest image side (px): a larger drawing is made coarser than ``px_mm`` asks
MAX_SIDE_PX = 4000

_BONE, _SKULL, _EXT, _WARN, _TEXT = (220, 40, 40), (255, 215, 0), (0, 200, 230), (255, 40, 40), (20, 20, 20)
#: colours of the face sections, in turn
FACE_COLOURS = ((30, 160, 60), (60, 90, 230), (200, 90, 200), (230, 140, 0))


def midline_plane(ext: ExtendedLandmarks) -> tuple[np.ndarray, np.ndarray]:
    """The skull's midline plane from its landmarks (:meth:`ExtendedLandmarks.midline_plane`):
    (frame (3, 3) unit rows left, up, forward; origin (3,) mm). Raises
    :class:`ExtendedLandmarkError` where the landmarks do not tell it."""
    plane = ext.midline_plane()
    if plane is None:
        raise ExtendedLandmarkError(
            "the skull's midline plane cannot be told from its landmarks: give the brow (g or n) and two "
            "of the chin's (pg, gn, me) or mouth's (pr, id, sm), or the vertex (v) over two of g, n, op, "
            "and two midline face landmarks")
    return plane


def _sections(mesh, normal: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """The mesh's section by the plane: (m, 2, 3) segments, mm."""
    import trimesh

    segs = trimesh.intersections.mesh_plane(mesh, normal, origin)
    return np.asarray(segs, np.float64).reshape(-1, 2, 3)


def profile_image(skull, ext: ExtendedLandmarks, path, faces=(), px_mm: float = 0.25,
                  margin_mm: float = 15.0) -> Path:
    """Write the skull's midsagittal profile (module docstring) to ``path`` (PNG) and return it.

    skull: a :class:`~skullsearch.Skull` (its mesh, mm) or the mesh itself; ext: its extended
    landmarks (:func:`~skullsearch.retrieval.extended.extend`, the same frame); faces: meshes to
    cut too, each a trimesh or a (label, trimesh) pair, in the skull's frame (e.g. a
    reconstruction's ``face_<id>.ply``); px_mm: mm per pixel (made coarser where the drawing would
    exceed :data:`MAX_SIDE_PX`). Raises :class:`ExtendedLandmarkError` where the landmarks do not
    tell the midline plane, the plane misses the skull or the file cannot be written."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ExtendedLandmarkError(f"cannot write {path.name}: the profile is a PNG image (use a .png name)")
    im = draw_profile(skull, ext, faces, px_mm, margin_mm)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, format="PNG")
    except (OSError, ValueError) as e:
        raise ExtendedLandmarkError(f"cannot write {path}: {e}") from None
    return path


def draw_profile(skull, ext: ExtendedLandmarks, faces=(), px_mm: float = 0.25, margin_mm: float = 15.0):
    """The drawing :func:`profile_image` writes, as a PIL RGB image (same arguments)."""
    from PIL import Image, ImageDraw

    frame, origin = midline_plane(ext)
    left, up, forward = frame
    bone = _sections(getattr(skull, "mesh", skull), left, origin)
    if not len(bone):
        raise ExtendedLandmarkError("the skull's midline plane (from its landmarks) misses the skull mesh: "
                                    "are the landmarks in the mesh's frame and units?")
    named = [(f[0], f[1]) if isinstance(f, tuple) else (f"face {k + 1}", f) for k, f in enumerate(faces)]
    cuts = [(label, _sections(mesh, left, origin)) for label, mesh in named]

    def plane(p: np.ndarray) -> np.ndarray:  # (..., 3) mm → (..., 2) (forward, up) mm on the plane
        q = np.asarray(p, np.float64) - origin
        return np.stack([q @ forward, q @ up], -1)

    idx = [i for i, n in enumerate(SOFT_TISSUE_NAMES)
           if n in MIDLINE and ext.present[i] and np.isfinite(ext.skull_points[i]).all()]
    skull_2d, ext_2d = plane(ext.skull_points[idx]), plane(ext.points[idx])
    extent = np.concatenate([plane(bone).reshape(-1, 2), skull_2d, ext_2d]
                            + [plane(c).reshape(-1, 2) for _, c in cuts])
    lo, hi = extent.min(0) - margin_mm, extent.max(0) + margin_mm
    px_mm = max(float(px_mm), float((hi - lo).max()) / MAX_SIDE_PX)
    width, height = (int(np.ceil(v)) + 1 for v in (hi - lo) / px_mm)

    def xy(p2: np.ndarray) -> tuple[float, float]:  # face to the right, up up
        return float((p2[0] - lo[0]) / px_mm), float((hi[1] - p2[1]) / px_mm)

    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    font = _font(max(11, min(24, round(0.012 * max(width, height)))))
    for (_, segs), colour in zip(cuts, FACE_COLOURS * len(cuts), strict=False):
        for a, b in plane(segs):
            draw.line([xy(a), xy(b)], fill=colour, width=2)
    for a, b in plane(bone):
        draw.line([xy(a), xy(b)], fill=_BONE, width=2)
    off = np.abs((np.asarray(ext.skull_points)[idx] - origin) @ left)
    angle = (np.zeros(len(idx)) if ext.outward_angle_deg is None
             else np.nan_to_num(np.asarray(ext.outward_angle_deg, np.float64)[idx]))
    r = 4
    for j, i in enumerate(idx):
        (sx, sy), (ex, ey) = xy(skull_2d[j]), xy(ext_2d[j])
        warn = angle[j] > DIRECTION_LIMIT_DEG
        draw.line([(sx, sy), (ex, ey)], fill=_WARN if warn else _EXT, width=1)
        hollow = off[j] > OFF_PLANE_MM
        draw.ellipse([sx - r, sy - r, sx + r, sy + r], outline=(120, 100, 0),
                     fill=None if hollow else _SKULL)
        draw.rectangle([ex - r, ey - r, ex + r, ey + r], outline=_WARN if warn else _EXT, width=2)
        label = SOFT_TISSUE_NAMES[i] + (f" ({off[j]:.0f} mm off)" if hollow else "")
        draw.text((sx - r - 4, sy), label, fill=_TEXT, font=font, anchor="rm")
    # the scale bar and the legend
    bar = 10.0 / px_mm
    y0 = height - 12
    draw.line([(12, y0), (12 + bar, y0)], fill=_TEXT, width=3)
    draw.text((12, y0 - 4), "10 mm", fill=_TEXT, font=font, anchor="ld")
    step = font.size + 4 if hasattr(font, "size") else 14
    lines = [("bone (midline section)", _BONE), ("skull landmark", _SKULL),
             ("extended (table depth)", _EXT)]
    if (angle > DIRECTION_LIMIT_DEG).any():
        lines.append(("direction into the skull", _WARN))
    lines += [(label, colour) for (label, _), colour in zip(cuts, FACE_COLOURS * len(cuts), strict=False)]
    for k, (text, colour) in enumerate(lines):
        y = 10 + step * k
        draw.rectangle([10, y, 10 + step - 6, y + step - 6], fill=colour)
        draw.text((16 + step - 6, y + (step - 6) / 2), text, fill=_TEXT, font=font, anchor="lm")
    return im


def _font(size: int):
    """Pillow's own scalable font at ``size`` px (Pillow ≥ 10.1 with FreeType), else its bitmap one."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # (an older Pillow, or one built without FreeType)
        return ImageFont.load_default()
