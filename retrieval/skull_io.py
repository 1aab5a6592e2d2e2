"""Read a skull: a surface mesh in millimetres and its craniometric landmarks.

    mesh, units, warnings = read_mesh("case17.off")              # PLY, STL, OBJ, OFF (ASCII or binary)
    landmarks, sha = read_landmarks("case17.landmarks.json")     # {pair key: (3,) float}
    fields = read_skull("case17.ply", units="cm")     # Skull's fields, landmarks snapped (Skull.load)

A skull arrives in any frame: nothing here moves, rotates or re-orients it. Only its *scale* is
checked: an adult skull is about 180–200 mm long (bounding-box diagonal ~200–350 mm), so a file
in metres or centimetres is recognised and refused with the ``--units`` option that fixes it.

Landmarks are named by the pair keys of :data:`skullsearch.SOFT_TISSUE_NAMES`; anatomical names
(``pogonion``, ``left zygion``, ``zy-L``, ``A point``…) are accepted as aliases. Their coordinates
are in the units of the mesh and are converted with it. Every user mistake raises a
:class:`~skullsearch.errors.SkullError` whose message says what to do.

Binary OFF follows Geomview's "OFF BINARY" (geomview.org/docs/html/Binary-format.html and OFF.html,
and Geomview's own reader ``src/lib/gprim/polylist/plload.c``): a text header line
``[ST][C][N][4]OFF BINARY``, then big-endian int32 ``nv nf ne``, ``nv`` vertices of float32
(x y z [w] [normal 3] [colour 4] [st 2]), then per face an int32 vertex count, the int32 indices,
an int32 colour-component count and that many float32. Writers that use little-endian or omit the
colour count (e.g. pmp-library) are read too, with a warning.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import trimesh

from skullsearch.encoder.soft_tissue import BILATERAL, LONG_NAMES, MIDLINE, SOFT_TISSUE_NAMES
from skullsearch.errors import DependencyError, SkullError, SkullLandmarkError

logger = logging.getLogger(__name__)

#: Mesh formats read (by file extension; content is sniffed when the extension is unknown).
MESH_FORMATS: tuple[str, ...] = ("ply", "stl", "obj", "off")
#: Units a mesh may be given in, and their size in mm.
UNITS_MM: dict[str, float] = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
#: Plausible bounding-box diagonal of a skull (or a large skull fragment) in mm.
SKULL_DIAGONAL_MM: tuple[float, float] = (60.0, 600.0)
#: Landmarks farther than this from the surface are refused rather than snapped.
MAX_LANDMARK_DISTANCE_MM = 20.0
#: Faces touching NaN/inf vertices are dropped (with a warning) when fewer than this fraction.
MAX_NONFINITE_FACE_FRACTION = 0.01
#: Sidecar landmark files looked for next to ``skull.<ext>``, in order of preference.
LANDMARK_SIDECARS: tuple[str, ...] = (
    ".landmarks.json", ".landmarks.csv", ".pp", "_picked_points.pp", ".mrk.json", ".fcsv",
)

_UNIT_ALIASES = {
    "mm": "mm", "millimetre": "mm", "millimetres": "mm", "millimeter": "mm", "millimeters": "mm",
    "cm": "cm", "centimetre": "cm", "centimetres": "cm", "centimeter": "cm", "centimeters": "cm",
    "m": "m", "metre": "m", "metres": "m", "meter": "m", "meters": "m",
}

_FORMAT_HELP = "skullsearch reads PLY, STL, OBJ and OFF meshes (ASCII or binary)"

_LANDMARK_HELP = (
    'a JSON file {"pg": [x, y, z], "zy_l": [x, y, z], ...}, a CSV file with rows name,x,y,z, '
    "or MeshLab picked points (.pp), in the same units and frame as the mesh"
)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _warn(warnings: list[str], message: str) -> None:
    logger.warning("%s", message)
    warnings.append(message)


# --------------------------------------------------------------------------------------- meshes


_NOT_A_MESH = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
)

_OFF_BINARY = re.compile(rb"\A\s*(ST)?(C)?(N)?(4)?(n)?OFF[ \t]+BINARY[ \t]*(#[^\n]*)?\r?\n")


def _not_a_mesh(data: bytes) -> str | None:
    """What ``data`` looks like when it is clearly not a mesh (an image, an archive, DICOM)."""
    for magic, what in _NOT_A_MESH:
        if data.startswith(magic):
            return what
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "a DICOM image (a CT slice?)"
    return None


def _sniff_format(data: bytes) -> str | None:
    """The mesh format of ``data`` from its content, for files with an unknown extension."""
    head = data[:4096]
    if head[:4] in (b"ply\n", b"ply\r"):
        return "ply"
    if re.match(rb"\A\s*(ST)?C?N?4?n?OFF\b", head):
        return "off"
    if len(data) >= 84 and len(data) == 84 + 50 * int.from_bytes(data[80:84], "little"):
        return "stl"
    if head.lstrip().lower().startswith(b"solid"):
        return "stl"
    if re.search(rb"^\s*v\s+[-+.0-9]", head, re.M) and re.search(rb"^\s*f\s+\d", data, re.M):
        return "obj"
    return None


def _fan(polys: np.ndarray) -> np.ndarray:
    """(n, k) polygons → (n * (k - 2), 3) triangles, fan-triangulated from the first vertex."""
    k = polys.shape[1]
    if k == 3:
        return polys
    tris = [np.stack([polys[:, 0], polys[:, j], polys[:, j + 1]], axis=1) for j in range(1, k - 1)]
    return np.stack(tris, axis=1).reshape(-1, 3)


def _parse_binary_off(data: bytes, start: int, stride: int, dim: int, endian: str,
                      color_counts: bool) -> tuple[np.ndarray, np.ndarray, int, int] | str:
    """One layout of a binary OFF body. Returns (vertices, triangles, skipped faces, leftover
    bytes) or a string saying why this layout does not fit."""
    if len(data) - start < 12:
        return "the file ends before the vertex/face/edge counts"
    nv, nf, _ = (int(c) for c in np.frombuffer(data, dtype=endian + "i4", count=3, offset=start))
    vstart = start + 12
    if nv <= 0 or nf < 0 or vstart + 4 * nv * stride > len(data):
        return f"counts {nv} vertices / {nf} faces do not fit a file of {len(data)} bytes"
    raw = np.frombuffer(data, dtype=endian + "f4", count=nv * stride, offset=vstart)
    raw = raw.reshape(nv, stride).astype(np.float64)
    vertices = raw[:, :3] / raw[:, 3:4] if dim == 4 else raw[:, :3]
    fstart = vstart + 4 * nv * stride
    words = np.frombuffer(data, dtype=endian + "i4", count=(len(data) - fstart) // 4, offset=fstart)

    tris: np.ndarray | None = None
    skipped = 0
    used = 0
    # Fast path: every face has the same vertex count and colour count (the usual case).
    if nf and len(words) >= 2:
        k = int(words[0])
        ncol = int(words[k + 1]) if color_counts and 0 < k < len(words) - 1 else 0
        per_face = 1 + k + ((1 + ncol) if color_counts else 0)
        if 3 <= k <= 64 and 0 <= ncol <= 4 and nf * per_face <= len(words):
            block = words[: nf * per_face].reshape(nf, per_face)
            if (block[:, 0] == k).all() and (not color_counts or (block[:, k + 1] == ncol).all()):
                tris = _fan(block[:, 1 : k + 1].astype(np.int64))
                used = nf * per_face
    if tris is None:  # general path: faces of mixed sizes / colours
        out: dict[int, list[np.ndarray]] = {}
        i = 0
        for f in range(nf):
            if i >= len(words):
                return f"the file ends in face {f} of {nf}"
            k = int(words[i])
            if k < 1 or i + 1 + k > len(words):
                return f"face {f} has an impossible vertex count {k}"
            idx = words[i + 1 : i + 1 + k]
            i += 1 + k
            if color_counts:
                if i >= len(words) or not 0 <= int(words[i]) <= 4:
                    return f"face {f} has an impossible colour count"
                i += 1 + int(words[i])
            if k < 3:
                skipped += 1
                continue
            out.setdefault(k, []).append(np.asarray(idx, dtype=np.int64))
        used = i
        parts = [_fan(np.stack(v)) for v in out.values()]
        tris = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    if len(tris) and (tris.min() < 0 or tris.max() >= nv):
        return "a face refers to a vertex that does not exist"
    leftover = data[fstart + 4 * used :]
    return vertices, tris, skipped, 0 if not leftover.strip() else len(leftover)


def _read_binary_off(data: bytes, name: str) -> tuple[trimesh.Trimesh, list[str]]:
    """Geomview binary OFF (see the module docstring) → Trimesh (not yet cleaned) and notes."""
    m = _OFF_BINARY.match(data)
    assert m is not None
    st, color, normal, four, ndim = (g is not None for g in m.groups()[:5])
    if ndim:
        raise SkullError(f"{name}: binary nOFF (vertices of another dimension) is not supported; "
                         "save the mesh as a 3D PLY, STL, OBJ or OFF")
    dim = 4 if four else 3
    stride = dim + 3 * normal + 4 * color + 2 * st
    layouts = ((">", True, None),
               (">", False, "without per-face colour counts"),
               ("<", True, "little-endian (Geomview's binary OFF is big-endian)"),
               ("<", False, "little-endian and without per-face colour counts"))
    reasons: list[str] = []
    chosen = None
    for endian, color_counts, note in layouts:
        got = _parse_binary_off(data, m.end(), stride, dim, endian, color_counts)
        if isinstance(got, str):
            reasons.append(got)
            continue
        if got[3] == 0:  # the whole file is used: this is the layout
            chosen = (got, note)
            break
        chosen = chosen or (got, note)
    if chosen is None:
        raise SkullError(f"{name} is not a readable binary OFF file ({reasons[0]}); re-export it, "
                         "e.g. as binary PLY or STL")
    (vertices, tris, skipped, leftover), note = chosen
    notes = []
    if note:
        notes.append(f"{name}: binary OFF read as {note}")
    if leftover:
        notes.append(f"{name}: ignored {leftover} bytes after the last face of the binary OFF")
    if skipped:
        notes.append(f"{name}: ignored {skipped} faces with fewer than 3 vertices")
    return trimesh.Trimesh(vertices=vertices, faces=tris, process=False), notes


def _load_with_trimesh(data: bytes, fmt: str, name: str) -> trimesh.Trimesh:
    try:
        mesh = trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types on malformed input
        raise SkullError(f"could not read {name} as a {fmt.upper()} mesh ({_one_line(exc)}); "
                         f"check the file; {_FORMAT_HELP}") from exc
    if isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) and len(mesh.vertices):
        return mesh
    # Nothing with faces: say whether it is a point cloud or nothing at all.
    try:
        raw = trimesh.load(io.BytesIO(data), file_type=fmt, process=False)
        geoms = list(raw.geometry.values()) if isinstance(raw, trimesh.Scene) else [raw]
        n_points = sum(len(getattr(g, "vertices", ())) for g in geoms)
    except Exception:  # only a diagnosis
        n_points = 0
    if n_points:
        raise SkullError(
            f"{name} has {n_points} points but no faces (a point cloud); skullsearch needs a "
            "surface mesh: reconstruct one first (e.g. MeshLab: Surface Reconstruction: Screened "
            "Poisson) and save it as PLY, STL, OBJ or OFF")
    raise SkullError(f"{name} contains no mesh (no vertices or faces); is it really a "
                     f"{fmt.upper()} file? {_FORMAT_HELP}")


def _clean(mesh: trimesh.Trimesh, name: str, fmt: str) -> tuple[trimesh.Trimesh, list[str]]:
    """Drop faces on NaN/inf vertices, merge duplicate vertices, remove degenerate and duplicate
    faces and unreferenced vertices; warn about what was repaired and about open / non-manifold
    surfaces (accepted: scans are open)."""
    warnings: list[str] = []
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= len(vertices):
        raise SkullError(f"{name} is corrupt: a face refers to a vertex that does not exist; "
                         "re-export the mesh")
    finite = np.isfinite(vertices).all(axis=1)
    n_bad = 0
    if not finite.all():
        bad = ~finite[faces].all(axis=1)
        n_bad = int(bad.sum())
        if n_bad >= MAX_NONFINITE_FACE_FRACTION * len(faces) or n_bad == len(faces):
            raise SkullError(
                f"{name} is corrupt: {n_bad} of {len(faces)} faces use vertices with NaN or "
                f"infinite coordinates ({int((~finite).sum())} vertices); re-export the mesh")
        if n_bad:
            _warn(warnings, f"{name}: dropped {n_bad} faces touching {int((~finite).sum())} vertices "
                            "with NaN or infinite coordinates")
        faces = faces[~bad]
    # Texture seams split vertices on purpose (OBJ with uv); STL stores every triangle's corners
    # separately: merging those is reading, not repairing.
    split_by_format = fmt == "stl" or getattr(mesh.visual, "uv", None) is not None
    mesh = trimesh.Trimesh(vertices=np.where(finite[:, None], vertices, 0.0), faces=faces,
                           process=False)

    repaired = []
    n0 = len(mesh.vertices)
    mesh.remove_unreferenced_vertices()
    n_unref = n0 - len(mesh.vertices) - (int((~finite).sum()) if not finite.all() and n_bad else 0)
    n1 = len(mesh.vertices)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    n_merged = n1 - len(mesh.vertices)
    if n_merged and not split_by_format:
        repaired.append(f"merged {n_merged} duplicate vertices")
    ok = mesh.nondegenerate_faces()
    if not ok.all():
        repaired.append(f"removed {int((~ok).sum())} degenerate faces")
        mesh.update_faces(ok)
    ok = mesh.unique_faces()
    if not ok.all():
        repaired.append(f"removed {int((~ok).sum())} duplicate faces")
        mesh.update_faces(ok)
    n2 = len(mesh.vertices)
    mesh.remove_unreferenced_vertices()
    n_unref += n2 - len(mesh.vertices)
    if n_unref:
        repaired.append(f"removed {n_unref} unreferenced vertices")
    if len(mesh.faces) == 0:
        raise SkullError(f"{name} has no usable faces (all are degenerate); re-export the mesh")
    if repaired:
        _warn(warnings, f"{name}: repaired the mesh: {', '.join(repaired)}")

    edges = np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges[:, 0] * len(mesh.vertices) + edges[:, 1], return_counts=True)
    n_open, n_nonmanifold = int((counts == 1).sum()), int((counts > 2).sum())
    if n_open:
        _warn(warnings, f"{name}: the mesh is open ({n_open} boundary edges); accepted (scans "
                        "usually are), but landmarks next to holes snap less reliably")
    if n_nonmanifold:
        _warn(warnings, f"{name}: {n_nonmanifold} non-manifold edges (shared by more than two "
                        "faces); accepted")
    return mesh, warnings


def _unit_name(units: str) -> str:
    key = _UNIT_ALIASES.get(str(units).strip().lower().rstrip("."))
    if key is None:
        raise SkullError(f"unknown units {units!r}; use one of: {', '.join(UNITS_MM)}")
    return key


def _check_size(mesh: trimesh.Trimesh, units: str | None, name: str) -> str:
    """The units the mesh is in, after refusing sizes no skull has."""
    diag = float(np.linalg.norm(mesh.extents))
    lo, hi = SKULL_DIAGONAL_MM
    if units is None:
        if diag < 1.0:
            raise SkullError(
                f"{name} is {diag:.3g} units across (bounding-box diagonal): it looks like metres "
                "(a skull is about 0.2-0.35 m across); pass --units m (Python: units='m') to read "
                "it in metres")
        if 10.0 <= diag <= 50.0:
            raise SkullError(
                f"{name} is {diag:.3g} units across (bounding-box diagonal): it looks like "
                "centimetres (a skull is about 20-35 cm across); pass --units cm (Python: "
                "units='cm') to read it in centimetres")
        units = "mm"
    diag_mm = diag * UNITS_MM[units]
    if not lo <= diag_mm <= hi:
        fits = [u for u, f in UNITS_MM.items() if u != units and lo <= diag * f <= hi]
        hint = (f"if the file is in {fits[0]}, pass --units {fits[0]}" if fits else
                "check that the file is a whole skull at real scale")
        raise SkullError(
            f"{name} is {diag_mm:.4g} mm across (bounding-box diagonal, read in {units}), which "
            f"is implausible for a skull (an adult skull is about 180-200 mm long, ~200-350 mm "
            f"across); {hint}")
    return units


def _mesh_from_bytes(data: bytes, path: Path, units: str | None
                     ) -> tuple[trimesh.Trimesh, str, list[str]]:
    name = path.name
    if units is not None:
        units = _unit_name(units)
    if not data.strip():
        raise SkullError(f"{path} is empty; {_FORMAT_HELP}")
    what = _not_a_mesh(data)
    if what:
        raise SkullError(f"{name} is {what}, not a mesh; {_FORMAT_HELP}"
                         + ("; segment the skull from the CT and export its surface (e.g. 3D "
                            "Slicer: Segment Editor, then Export to STL)" if "DICOM" in what else ""))
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        sniffed = _sniff_format(data)
        if sniffed is None:
            raise SkullError(f"{name}: unsupported mesh format {path.suffix or '(no extension)'}; "
                             f"{_FORMAT_HELP}")
        fmt = sniffed
    notes: list[str] = []
    if fmt == "off" and _OFF_BINARY.match(data):
        mesh, notes = _read_binary_off(data, name)
    else:
        mesh = _load_with_trimesh(data, fmt, name)
    warnings: list[str] = []
    for note in notes:
        _warn(warnings, note)
    mesh, repairs = _clean(mesh, name, fmt)
    warnings += repairs
    units = _check_size(mesh, units, name)
    if UNITS_MM[units] != 1.0:
        mesh.apply_scale(UNITS_MM[units])
    return mesh, units, warnings


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    try:
        p = Path(os.fspath(path)).expanduser()
    except TypeError as exc:
        raise SkullError(f"{what}: expected a file path, got {type(path).__name__}") from exc
    if not p.exists():
        raise SkullError(f"{what} {p} does not exist; check the path")
    if not p.is_file():
        raise SkullError(f"{what} {p} is not a file")
    return p


def read_mesh(path: str | os.PathLike, units: str | None = None
              ) -> tuple[trimesh.Trimesh, str, list[str]]:
    """Read a skull mesh and convert it to millimetres.

    ``path``: PLY, STL, OBJ or OFF, ASCII or binary (a scene of several meshes is concatenated).
    ``units``: "mm", "cm" or "m"; ``None`` checks the size and refuses a file that looks like
    metres or centimetres (or no skull at all), naming the ``--units`` that fixes it.

    Returns (trimesh.Trimesh in mm, the units the file was read in, warnings about repairs).
    Raises :class:`SkullError` for a missing, empty, unreadable or implausible file.
    """
    p = _existing_file(path, "skull mesh")
    return _mesh_from_bytes(p.read_bytes(), p, units)


# ------------------------------------------------------------------------------------ landmarks


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


_EXTRA_ALIASES: dict[str, tuple[str, ...]] = {
    "ss": ("A point", "point A", "A-point"),
    "sm": ("B point", "point B", "B-point"),
    "pr": ("supradentale",),
    "mso": ("supraorbital",),
    "mio": ("infraorbital",),
    "ac": ("alare", "alar"),
    "sC": ("supra canine",),
    "iC": ("infra canine",),
    "sM2": ("supramolar", "supra molar 2"),
    "iM2": ("inframolar", "infra molar 2"),
    "mr": ("ramus",),
    "mmb": ("mandibular border",),
}


def _build_aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for key in MIDLINE + BILATERAL:
        for alias in (key, LONG_NAMES[key], *_EXTRA_ALIASES.get(key, ())):
            norm = _norm(alias)
            assert table.get(norm, key) == key, f"alias {alias!r} is ambiguous"
            table[norm] = key
    return table


#: Normalised alias (lower case, only letters and digits) → midline key or bilateral base key.
LANDMARK_ALIASES: dict[str, str] = _build_aliases()
_SIDES = {"l": "l", "left": "l", "lt": "l", "r": "r", "right": "r", "rt": "r"}


def landmark_key(name: str) -> str | None:
    """The pair key a landmark name means (``"Zygion left"`` → ``"zy_l"``), or None if unknown.

    Case, spaces, underscores and hyphens are ignored; a side is ``l``/``r``/``left``/``right``
    before or after the name (``zy-L``, ``zyL``, ``left zygion``, ``zygion_l``).
    """
    name = str(name).strip()
    if name in SOFT_TISSUE_NAMES:
        return name
    tokens = [t for t in re.split(r"[^0-9a-z]+", name.lower()) if t]
    side = None
    if len(tokens) > 1 and tokens[-1] in _SIDES:
        side, tokens = _SIDES[tokens[-1]], tokens[:-1]
    elif len(tokens) > 1 and tokens[0] in _SIDES:
        side, tokens = _SIDES[tokens[0]], tokens[1:]
    body = "".join(tokens)
    if side is None:
        base = LANDMARK_ALIASES.get(body)
        if base in MIDLINE:
            return base
        # a side glued to the name: "zyL", "zygionleft", "leftzygion"
        for word, s in sorted(_SIDES.items(), key=lambda kv: -len(kv[0])):
            rests = [body[: -len(word)]] if body.endswith(word) else []
            if len(word) > 1 and body.startswith(word):
                rests.append(body[len(word) :])
            for rest in rests:
                if LANDMARK_ALIASES.get(rest) in BILATERAL:
                    return f"{LANDMARK_ALIASES[rest]}_{s}"
        return None
    base = LANDMARK_ALIASES.get(body)
    return f"{base}_{side}" if base in BILATERAL else None


def _xyz(values, label: str, src: str) -> np.ndarray:
    try:
        point = np.asarray([float(str(v).strip().replace(",", ".")) if isinstance(v, str) else float(v)
                            for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        point = np.zeros(0)
    if point.shape != (3,) or not np.isfinite(point).all():
        raise SkullLandmarkError(f"{src}: landmark {label!r} has coordinates {values!r}; expected "
                                 "three finite numbers x, y, z")
    return point


def _entries_from_json(obj, src: str) -> list[tuple[str, object]]:
    """(name, coordinates) pairs from the JSON shapes accepted (see :func:`read_landmarks`)."""
    if isinstance(obj, Mapping):
        if "landmarks" in obj:
            return _entries_from_json(obj["landmarks"], src)
        if "markups" in obj:  # 3D Slicer markups (.mrk.json)
            return [(cp.get("label", ""), cp.get("position"))
                    for markup in obj["markups"] for cp in markup.get("controlPoints", ())
                    if cp.get("positionStatus", "defined") != "missing"]
        out = []
        for name, value in obj.items():
            if value is None:  # explicitly absent (partial skull)
                continue
            if isinstance(value, Mapping):
                value = [value.get(c) for c in "xyz"]
            out.append((str(name), value))
        return out
    if isinstance(obj, list):
        out = []
        for item in obj:
            if not isinstance(item, Mapping):
                raise SkullLandmarkError(f"{src}: expected a list of {{\"name\": ..., \"x\": ..., "
                                         f"\"y\": ..., \"z\": ...}} objects, got {item!r}")
            if item.get("active", True) in (False, 0, "0", "false"):
                continue
            name = next((item[k] for k in ("name", "label", "id") if k in item), None)
            if name is None:
                raise SkullLandmarkError(f"{src}: landmark entry {item!r} has no \"name\"")
            coords = next((item[k] for k in ("position", "xyz", "coordinates", "point") if k in item),
                          [item.get(c) for c in "xyz"])
            out.append((str(name), coords))
        return out
    raise SkullLandmarkError(f"{src}: expected {_LANDMARK_HELP}")


_HEADER_NAME = ("name", "label", "landmark", "landmarkname", "point", "pointname", "id")
_HEADER_AXES = {c: {c, f"{c}mm", f"pos{c}", f"position{c}", f"coord{c}", f"{c}coord"} for c in "xyz"}


_ABSENT = ("", "nan", "na", "n/a", "-", "none", "null")


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "."))
    except ValueError:
        return False
    return True


def _entries_from_csv(text: str, src: str) -> list[tuple[str, object]]:
    """Rows ``name,x,y,z`` (``;`` or tab also separate; ``#`` starts a comment; an optional header
    names the columns, also Slicer's ``# columns = id,x,y,z,...,label``)."""
    lines: list[tuple[int, str]] = []
    header: list[str] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            m = re.match(r"#\s*columns\s*=\s*(.*)", stripped, re.I)
            if m:
                header = [h.strip() for h in m.group(1).split(",")]
            continue
        if stripped:
            lines.append((lineno, stripped))
    if not lines:
        return []
    first = lines[0][1]
    sep = next((s for s in (";", "\t", ",") if s in first), None)
    out = []
    cols = None
    if header is not None:
        cols = _header_columns(header)
    for i, (lineno, line) in enumerate(lines):
        if sep is None:
            parts = line.split()
            fields = [" ".join(parts[:-3]), *parts[-3:]] if len(parts) >= 4 else parts
        else:
            fields = [f.strip() for f in next(csv.reader([line], delimiter=sep))]
            if fields and "#" in fields[-1]:
                fields[-1] = fields[-1].split("#", 1)[0].strip()
        if i == 0 and cols is None:
            cols = _header_columns(fields)
            if cols is not None:
                continue
        where = f"{src} line {lineno}"
        if cols is not None:
            if len(fields) <= max(cols):
                raise SkullLandmarkError(f"{where}: expected {max(cols) + 1} columns, got {line!r}")
            coords = [fields[c] for c in cols[1:]]
            if not all(c.strip().lower() in _ABSENT for c in coords):
                out.append((fields[cols[0]], coords, where))
        elif len(fields) >= 4 and all(c.strip().lower() in _ABSENT for c in fields[1:4]):
            continue  # a name without coordinates: absent (partial skull)
        elif len(fields) >= 4 and not _is_number(fields[0]) and all(map(_is_number, fields[1:4])):
            out.append((fields[0], fields[1:4], where))
        elif len(fields) == 4 and all(map(_is_number, fields[:3])) and not _is_number(fields[3]):
            out.append((fields[3], fields[:3], where))
        else:
            raise SkullLandmarkError(f"{where}: expected name,x,y,z, got {line!r}")
    return out


def _header_columns(fields: list[str]) -> list[int] | None:
    """Column indices (name, x, y, z) if ``fields`` is a header row, else None."""
    norm = [_norm(re.sub(r"[(\[].*?[)\]]", "", f)) for f in fields]
    axes = [next((i for i, f in enumerate(norm) if f in _HEADER_AXES[c]), None) for c in "xyz"]
    if None in axes:
        return None
    name = next((norm.index(h) for h in _HEADER_NAME if h in norm), None)
    if name is None:
        raise SkullLandmarkError(f"CSV header {fields!r} has x, y, z but no name column; call the "
                                 "column with the landmark names 'name'")
    return [name, *axes]


def _entries_from_pp(data: bytes, src: str) -> list[tuple[str, object]]:
    """MeshLab picked points: ``<point x=".." y=".." z=".." name=".." active="1"/>``."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise SkullLandmarkError(f"{src} is not a MeshLab picked-points (.pp) XML file "
                                 f"({_one_line(exc)})") from exc
    points = list(root.iter("point"))
    if not points and root.tag != "PickedPoints":
        raise SkullLandmarkError(f"{src} has no <point> elements; expected MeshLab picked points")
    out = []
    for el in points:
        if el.get("active", "1").strip().lower() in ("0", "false"):
            continue
        out.append((el.get("name", ""), [el.get(c) for c in "xyz"]))
    return out


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _resolve(entries: list, src: str) -> dict[str, np.ndarray]:
    """Names → pair keys (all unknown names reported at once), duplicates refused, coordinates
    checked; returned in :data:`SOFT_TISSUE_NAMES` order."""
    found: dict[str, tuple[str, np.ndarray]] = {}
    unknown, sideless = [], []
    for entry in entries:
        name, coords = entry[0], entry[1]
        where = entry[2] if len(entry) > 2 else src
        key = landmark_key(name)
        if key is None:
            base = LANDMARK_ALIASES.get(_norm(str(name)))
            (sideless if base in BILATERAL else unknown).append(str(name))
            continue
        point = _xyz(coords if isinstance(coords, (list, tuple, np.ndarray)) else [coords], name, where)
        if key in found:
            raise SkullLandmarkError(
                f"{src}: landmark {key!r} is given twice (as {found[key][0]!r} and {name!r}); "
                "keep one")
        found[key] = (str(name), point)
    problems = []  # every bad name in one error
    if sideless:
        problems.append(
            f"bilateral landmark(s) {', '.join(map(repr, sideless))} need a side: add _l or "
            "_r (the subject's left or right), e.g. zy_l, 'zygion left'")
    if unknown:
        problems.append(
            f"unknown skull landmark(s) {', '.join(map(repr, unknown))}; valid names are: "
            f"{' '.join(SOFT_TISSUE_NAMES)} (or anatomical names such as 'pogonion', 'nasion', "
            "'zygion left')")
    if problems:
        raise SkullLandmarkError(f"{src}: " + "; and ".join(problems))
    return {k: found[k][1] for k in SOFT_TISSUE_NAMES if k in found}


def read_landmarks(path_or_dict: str | os.PathLike | Mapping
                   ) -> tuple[dict[str, np.ndarray], str | None]:
    """Read skull landmarks: ({pair key: (3,) float64}, sha256 of the file bytes or None).

    Accepted: a dict or JSON file ``{"pg": [x, y, z], ...}`` (also ``{"landmarks": {...}}``, a list
    of ``{"name": .., "x": .., "y": .., "z": ..}`` and 3D Slicer ``.mrk.json``); CSV ``name,x,y,z``
    with or without a header, ``,`` ``;`` or tab separated, ``#`` comments (Slicer ``.fcsv`` too);
    MeshLab picked points ``.pp`` (points with ``active="0"`` are skipped). Names are pair keys or
    aliases (see :func:`landmark_key`). Coordinates are returned as written (mesh units).
    Raises :class:`SkullLandmarkError` (a :class:`SkullError`) for unknown or duplicate names,
    bad coordinates or an empty file.
    """
    if isinstance(path_or_dict, Mapping):
        src = "landmark dict"
        entries = _entries_from_json(path_or_dict, src)
        sha = None
    else:
        p = _existing_file(path_or_dict, "landmark file")
        src = p.name
        data = p.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        lower = p.name.lower()
        head = data.lstrip()[:1]
        if lower.endswith(".pp") or (not lower.endswith((".json", ".csv", ".txt", ".fcsv", ".tsv"))
                                     and head == b"<"):
            entries = _entries_from_pp(data, src)
        elif lower.endswith(".json") or (not lower.endswith((".csv", ".txt", ".fcsv", ".tsv"))
                                         and head in (b"{", b"[")):
            try:
                obj = json.loads(_decode(data))
            except json.JSONDecodeError as exc:
                raise SkullLandmarkError(f"{src} is not valid JSON ({_one_line(exc)}); expected "
                                         f"{_LANDMARK_HELP}") from exc
            entries = _entries_from_json(obj, src)
        else:
            entries = _entries_from_csv(_decode(data), src)
    if not entries:
        raise SkullLandmarkError(f"{src} contains no landmarks; expected {_LANDMARK_HELP}")
    return _resolve(entries, src), sha


def _sidecars(mesh_path: Path) -> list[Path]:
    base = mesh_path.with_suffix("")
    return [p for p in (base.parent / (base.name + s) for s in LANDMARK_SIDECARS) if p.is_file()]


def find_landmark_file(mesh_path: str | os.PathLike) -> Path | None:
    """The landmark file next to ``skull.<ext>``: ``skull.landmarks.json``, ``skull.landmarks.csv``,
    ``skull.pp``, ``skull_picked_points.pp`` (then ``skull.mrk.json``, ``skull.fcsv``), or None."""
    found = _sidecars(Path(os.fspath(mesh_path)))
    return found[0] if found else None


# ----------------------------------------------------------------------------------------- skull


def _canonical_sha(landmarks: Mapping[str, np.ndarray]) -> str:
    text = json.dumps({k: [float(c) for c in v] for k, v in landmarks.items()}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(key: str) -> str:
    """``"zy_l"`` → ``"zy_l (zygion, left)"``."""
    if key[-2:] in ("_l", "_r") and key[:-2] in BILATERAL:
        return f"{key} ({LONG_NAMES[key[:-2]]}, {'left' if key.endswith('_l') else 'right'})"
    return f"{key} ({LONG_NAMES[key]})"


def _snap(mesh: trimesh.Trimesh, landmarks: dict[str, np.ndarray], snap_mm: float,
          max_mm: float, src: str, name: str, warnings: list[str]) -> dict[str, np.ndarray]:
    keys = list(landmarks)
    points = np.stack([landmarks[k] for k in keys])
    try:
        closest, dist, _ = trimesh.proximity.closest_point(mesh, points)
    except ImportError as exc:  # pragma: no cover - rtree is a dependency
        raise DependencyError(f"snapping landmarks needs rtree ({exc}); pip install rtree") from exc
    far = [(k, d) for k, d in zip(keys, dist, strict=True) if d > max_mm]
    if far:
        listed = ", ".join(f"{k} {d:.1f} mm" for k, d in far)
        raise SkullError(
            f"landmark(s) in {src} lie far from the surface of {name} ({listed}; the limit is "
            f"{max_mm:g} mm): check those coordinates; if most landmarks are far, they are in "
            "another coordinate frame or other units than the mesh: pick or export them on this "
            "same mesh")
    out = {}
    for k, c, d in zip(keys, closest, dist, strict=True):
        if d > snap_mm:
            _warn(warnings, f"landmark {_describe(k)} was {d:.1f} mm off the surface of {name}: "
                            "snapped to the closest surface point")
            out[k] = np.asarray(c, dtype=np.float64)
        else:
            out[k] = landmarks[k]
    return out


def read_skull(path: str | os.PathLike, landmarks: str | os.PathLike | Mapping | None = None,
               units: str | None = None, snap_mm: float = 2.0,
               max_snap_mm: float = MAX_LANDMARK_DISTANCE_MM) -> dict:
    """Read a skull mesh (see :func:`read_mesh`) and its landmarks (see :func:`read_landmarks`):
    the fields of a :class:`~skullsearch.retrieval.skull.Skull` (``Skull.load`` builds one).

    ``landmarks``: a file, a dict, or ``None`` to use the sidecar found by
    :func:`find_landmark_file`. Landmark coordinates are in the mesh's units and converted with
    it. A landmark farther than ``snap_mm`` from the surface is moved to the closest surface
    point (with a warning); one farther than ``max_snap_mm`` is refused.
    Records the mesh path and sha256 of its bytes, the landmark path and sha256 (for a dict: of
    its canonical JSON), the units and every warning.
    """
    if snap_mm < 0:
        raise ValueError(f"snap_mm must be >= 0, got {snap_mm}")
    max_snap_mm = max(max_snap_mm, snap_mm)
    p = _existing_file(path, "skull mesh")
    data = p.read_bytes()
    mesh, units_used, warnings = _mesh_from_bytes(data, p, units)

    lm_path: Path | None = None
    if landmarks is None:
        found = _sidecars(p)
        if not found:
            raise SkullError(
                f"no landmarks for {p.name}: put them next to it in {p.with_suffix('').name}"
                f".landmarks.json (e.g. {{\"pg\": [x, y, z], \"zy_l\": [x, y, z]}}), "
                f"{p.with_suffix('').name}.landmarks.csv (rows name,x,y,z) or MeshLab "
                f"{p.with_suffix('').name}.pp, or pass --landmarks FILE")
        lm_path = found[0]
        if len(found) > 1:
            _warn(warnings, f"several landmark files next to {p.name}: using {found[0].name}, "
                            f"ignoring {', '.join(f.name for f in found[1:])}")
        raw, lm_sha = read_landmarks(lm_path)
    elif isinstance(landmarks, Mapping):
        raw, _ = read_landmarks(landmarks)
        lm_sha = _canonical_sha(raw)
    else:
        lm_path = Path(os.fspath(landmarks))
        raw, lm_sha = read_landmarks(lm_path)
    src = lm_path.name if lm_path is not None else "the landmark dict"

    factor = UNITS_MM[units_used]
    points = {k: v * factor for k, v in raw.items()}
    points = _snap(mesh, points, snap_mm, max_snap_mm, src, p.name, warnings)
    return dict(mesh=mesh, landmarks=points, path=os.fspath(path), sha256=hashlib.sha256(data).hexdigest(),
                landmarks_path=os.fspath(lm_path) if lm_path is not None else None,
                landmarks_sha256=lm_sha, units=units_used, warnings=warnings)
