"""Reading skull meshes and their landmarks (retrieval/skull_io.py).

The "skull" is an icosphere scaled to 180 x 140 x 200 mm; every file is written here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skullsearch.encoder.soft_tissue import BILATERAL, LONG_NAMES, MIDLINE, SOFT_TISSUE_NAMES
from skullsearch.errors import LandmarkError, SkullError, SkullsearchError
from skullsearch.retrieval.skull import Skull, load_skull
from skullsearch.retrieval.skull_io import (
    LANDMARK_ALIASES,
    find_landmark_file,
    landmark_key,
    read_landmarks,
    read_mesh,
)

# ------------------------------------------------------------------------------------ helpers


def skull_mesh(scale: float = 1.0) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=3)
    mesh.apply_scale(np.array([90.0, 70.0, 100.0]) * scale)
    return mesh


SKULL = skull_mesh()
#: A few landmarks on the surface of SKULL (vertices), in mm.
VERTEX_OF = {"pg": 0, "n": 5, "zy_l": 17, "zy_r": 40, "go_l": 100, "ss": 200}
ON_SURFACE = {k: SKULL.vertices[i].copy() for k, i in VERTEX_OF.items()}


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def export(mesh: trimesh.Trimesh, path: Path, file_type: str) -> Path:
    return write(path, mesh.export(file_type=file_type))


def binary_off(vertices, faces, *, endian: str = ">", color_counts: bool = True,
               colors: int = 0, header: bytes = b"OFF BINARY\n") -> bytes:
    """Geomview binary OFF: big-endian int32 nv nf ne, float32 xyz, per face int32 count,
    int32 indices, int32 colour count + float32 colours (when color_counts)."""
    out = [header, struct.pack(f"{endian}3i", len(vertices), len(faces), 0)]
    out.append(np.asarray(vertices, dtype=f"{endian}f4").tobytes())
    for face in faces:
        out.append(struct.pack(f"{endian}{len(face) + 1}i", len(face), *face))
        if color_counts:
            out.append(struct.pack(f"{endian}i", colors))
            out.append(struct.pack(f"{endian}{colors}f", *([0.5] * colors)))
    return b"".join(out)


def assert_same_surface(mesh: trimesh.Trimesh, expected: trimesh.Trimesh, atol: float = 1e-4):
    assert len(mesh.vertices) == len(expected.vertices)
    assert len(mesh.faces) == len(expected.faces)
    # vertex order may change (STL is unindexed): compare as point sets
    order_a = np.lexsort(np.round(mesh.vertices, 3).T)
    order_b = np.lexsort(np.round(expected.vertices, 3).T)
    np.testing.assert_allclose(mesh.vertices[order_a], expected.vertices[order_b], atol=atol)
    np.testing.assert_allclose(mesh.area, expected.area, rtol=1e-5)


def landmark_json(points: dict) -> str:
    return json.dumps({k: [float(c) for c in v] for k, v in points.items()})


# ------------------------------------------------------------------------------- mesh formats


@pytest.mark.parametrize("file_type, ext", [
    ("ply", "ply"),          # binary little-endian
    ("ply_ascii", "ply"),
    ("stl", "stl"),          # binary
    ("stl_ascii", "stl"),
    ("obj", "obj"),
    ("off", "off"),          # ASCII
])
def test_format_round_trip(tmp_path, file_type, ext):
    if file_type == "ply_ascii":
        path = write(tmp_path / "skull.ply", trimesh.exchange.ply.export_ply(SKULL, encoding="ascii"))
    else:
        path = export(SKULL, tmp_path / f"skull.{ext}", file_type)
    mesh, units, warnings = read_mesh(path)
    assert units == "mm"
    assert warnings == []  # a clean closed mesh: nothing repaired (STL's split corners are not a repair)
    assert_same_surface(mesh, SKULL)


@pytest.mark.parametrize("layout", ["spec", "colours", "quads", "comment", "little_endian_pmp"])
def test_binary_off(tmp_path, layout):
    vertices, faces, expected = SKULL.vertices, SKULL.faces.tolist(), SKULL
    kwargs: dict = {}
    if layout == "colours":
        kwargs = {"colors": 4}
    elif layout == "quads":  # a cube of quads, scaled to skull size
        expected = trimesh.creation.box(extents=(180, 140, 200))
        vertices = np.array([[x, y, z] for x in (-90, 90) for y in (-70, 70) for z in (-100, 100)], float)
        faces = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    elif layout == "comment":
        kwargs = {"header": b"OFF BINARY  # written by a test\n"}
    elif layout == "little_endian_pmp":
        kwargs = {"endian": "<", "color_counts": False}
    path = write(tmp_path / "skull.off", binary_off(vertices, faces, **kwargs))
    mesh, units, warnings = read_mesh(path)
    assert units == "mm"
    assert_same_surface(mesh, expected, atol=1e-3)
    if layout == "little_endian_pmp":
        assert any("little-endian" in w for w in warnings)
    else:
        assert warnings == []


def test_binary_off_truncated(tmp_path):
    data = binary_off(SKULL.vertices, SKULL.faces.tolist())
    path = write(tmp_path / "skull.off", data[: len(data) // 2])
    with pytest.raises(SkullError, match="binary OFF"):
        read_mesh(path)


def test_scene_of_two_meshes_is_concatenated(tmp_path):
    other = SKULL.copy()
    other.apply_translation([30.0, 0.0, 0.0])
    text = (trimesh.exchange.stl.export_stl_ascii(SKULL)
            + trimesh.exchange.stl.export_stl_ascii(other).replace("solid", "solid mandible", 1))
    assert isinstance(trimesh.load(write(tmp_path / "two.stl", text), process=False), trimesh.Scene)
    mesh, _, _ = read_mesh(tmp_path / "two.stl")
    assert len(mesh.faces) == 2 * len(SKULL.faces)
    assert len(mesh.vertices) == 2 * len(SKULL.vertices)


def test_unknown_extension_is_sniffed(tmp_path):
    path = export(SKULL, tmp_path / "skull.mesh", "ply")
    mesh, _, _ = read_mesh(path)
    assert len(mesh.faces) == len(SKULL.faces)


# -------------------------------------------------------------------------------------- units


@pytest.mark.parametrize("unit, factor", [("m", 1e-3), ("cm", 0.1)])
def test_wrong_units_refused_with_hint_and_converted_on_request(tmp_path, unit, factor):
    path = export(skull_mesh(factor), tmp_path / "skull.ply", "ply")
    with pytest.raises(SkullError, match=f"--units {unit}\\b") as info:
        read_mesh(path)
    assert "\n" not in str(info.value)
    mesh, units, _ = read_mesh(path, units=unit)
    assert units == unit
    np.testing.assert_allclose(mesh.extents, [180, 140, 200], rtol=1e-6)


@pytest.mark.parametrize("scale", [5.0, 0.015])  # 1.5 m across; 4.5 mm across
def test_implausible_size_refused(tmp_path, scale):
    path = export(skull_mesh(scale), tmp_path / "skull.ply", "ply")
    with pytest.raises(SkullError, match="implausible.*180-200 mm"):
        read_mesh(path)


def test_explicit_units_still_checked(tmp_path):
    path = export(skull_mesh(1e-3), tmp_path / "skull.ply", "ply")  # metres, but user says mm
    with pytest.raises(SkullError, match="if the file is in m, pass --units m"):
        read_mesh(path, units="mm")
    with pytest.raises(SkullError, match="unknown units 'inch'"):
        read_mesh(path, units="inch")
    assert read_mesh(path, units="Metres")[1] == "m"


# ---------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(SkullError, match="does not exist"):
        read_mesh(tmp_path / "nope.ply")


@pytest.mark.parametrize("ext", ["ply", "stl", "obj", "off"])
def test_empty_file(tmp_path, ext):
    with pytest.raises(SkullError, match="is empty"):
        read_mesh(write(tmp_path / f"skull.{ext}", b""))


@pytest.mark.parametrize("ext", ["ply", "stl", "obj", "off", "txt"])
def test_text_file(tmp_path, ext):
    path = write(tmp_path / f"notes.{ext}", "Case 17, found 2019.\nNo mesh in here.\n")
    with pytest.raises(SkullError) as info:
        read_mesh(path)
    assert "PLY, STL, OBJ and OFF" in str(info.value)


@pytest.mark.parametrize("name", ["photo.png", "photo.stl"])
def test_png_bytes(tmp_path, name):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    with pytest.raises(SkullError, match="PNG image, not a mesh"):
        read_mesh(write(tmp_path / name, png))


def test_point_cloud(tmp_path):
    path = write(tmp_path / "scan.ply", trimesh.PointCloud(SKULL.vertices).export(file_type="ply"))
    with pytest.raises(SkullError, match=r"642 points but no faces \(a point cloud\).*reconstruct"):
        read_mesh(path)


def test_nan_vertex_faces_dropped_with_warning(tmp_path):
    mesh = SKULL.copy()
    mesh.vertices[3] = np.nan  # touches 5-6 of 1280 faces (< 1 %)
    path = export(mesh, tmp_path / "skull.ply", "ply")
    got, _, warnings = read_mesh(path)
    assert np.isfinite(got.vertices).all()
    assert len(got.faces) == len(SKULL.faces) - int((SKULL.faces == 3).any(axis=1).sum())
    assert any("NaN" in w for w in warnings)


def test_many_nan_vertices_refused(tmp_path):
    mesh = SKULL.copy()
    mesh.vertices[::10] = np.nan
    with pytest.raises(SkullError, match="NaN or infinite"):
        read_mesh(export(mesh, tmp_path / "skull.ply", "ply"))


def test_degenerate_duplicate_unreferenced_repaired(tmp_path, caplog):
    n = len(SKULL.vertices)
    a, b, c = SKULL.faces[0]
    vertices = np.vstack([SKULL.vertices, SKULL.vertices[a], [500.0, 0.0, 0.0]])  # dup + unreferenced
    faces = np.vstack([SKULL.faces, [[a, a, b], [n, b, c]]])  # degenerate; a face on the duplicate
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    path = write(tmp_path / "skull.ply", trimesh.exchange.ply.export_ply(mesh, encoding="ascii"))
    with caplog.at_level(logging.WARNING, logger="skullsearch.retrieval.skull_io"):
        got, _, warnings = read_mesh(path)
    assert len(got.vertices) == n
    (repair,) = [w for w in warnings if "repaired" in w]
    for what in ("duplicate vertices", "degenerate faces", "unreferenced vertices"):
        assert what in repair
    assert repair in caplog.text
    assert not any("open" in w for w in warnings)


def test_open_mesh_accepted_with_warning(tmp_path):
    mesh = SKULL.copy()
    mesh.update_faces(np.arange(len(mesh.faces)) >= 10)
    got, _, warnings = read_mesh(export(mesh, tmp_path / "scan.ply", "ply"))
    assert len(got.faces) == len(SKULL.faces) - 10
    assert any("open" in w and "boundary edges" in w for w in warnings)


def test_bad_face_index(tmp_path):
    text = "OFF\n3 1 0\n0 0 0\n100 0 0\n0 200 0\n3 0 1 7\n"
    with pytest.raises(SkullError):
        read_mesh(write(tmp_path / "skull.off", text))


def test_errors_are_skullsearch_errors():
    assert issubclass(SkullError, SkullsearchError)


# ------------------------------------------------------------------------------ landmark files


EXPECTED = {"pg": [1.5, 2.0, 3.0], "n": [-4.0, 5.25, 6.0], "zy_l": [7.0, 8.0, -9.5]}


def check(points):
    assert list(points) == [k for k in SOFT_TISSUE_NAMES if k in EXPECTED]
    for k, v in EXPECTED.items():
        assert points[k].shape == (3,) and points[k].dtype == np.float64
        np.testing.assert_array_equal(points[k], v)


@pytest.mark.parametrize("name, text", [
    ("a.landmarks.json", json.dumps(EXPECTED)),
    ("b.json", json.dumps({"landmarks": EXPECTED, "units": "mm"})),
    ("c.json", json.dumps([{"name": k, "x": x, "y": y, "z": z} for k, (x, y, z) in EXPECTED.items()])),
    ("d.json", json.dumps({"pg": {"x": 1.5, "y": 2, "z": 3}, "n": [-4, 5.25, 6], "zy_l": [7, 8, -9.5],
                           "me": None})),
    ("e.csv", "name,x,y,z\npg,1.5,2,3\nn,-4,5.25,6\nzy_l,7,8,-9.5\n"),
    ("f.csv", "pg,1.5,2,3\nn,-4,5.25,6\nzy_l,7,8,-9.5\n"),
    ("g.csv", "# picked in MeshLab\nLandmark;X (mm);Y (mm);Z (mm)\npg;1,5;2;3\nn;-4;5,25;6\n"
              "# left side\nzy_l;7;8;-9,5\nme;;;\n"),
    ("h.txt", "pogonion 1.5 2 3\nnasion -4 5.25 6\nleft zygion 7 8 -9.5\n"),
    ("i.csv", "pg\t1.5\t2\t3\nn\t-4\t5.25\t6\nzy_l\t7\t8\t-9.5\n"),
    ("j.fcsv", "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
               "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
               "m_1,1.5,2,3,0,0,0,1,1,1,0,pg,,\nm_2,-4,5.25,6,0,0,0,1,1,1,0,n,,\n"
               "m_3,7,8,-9.5,0,0,0,1,1,1,0,zy_l,,\n"),
    ("k.mrk.json", json.dumps({"markups": [{"controlPoints": [
        {"label": k, "position": v} for k, v in EXPECTED.items()]}]})),
    ("l.pp", '<!DOCTYPE PickedPoints>\n<PickedPoints>\n <DocumentData><DataFileName name="s.ply"/>'
             '</DocumentData>\n <point x="1.5" y="2" z="3" name="pg" active="1"/>\n'
             ' <point x="-4" y="5.25" z="6" name="Nasion" active="1"/>\n'
             ' <point x="99" y="99" z="99" name="go_l" active="0"/>\n'
             ' <point x="7" y="8" z="-9.5" name="zy-L" active="1"/>\n</PickedPoints>\n'),
])
def test_landmark_file_formats(tmp_path, name, text):
    path = write(tmp_path / name, text)
    points, sha = read_landmarks(path)
    check(points)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


def test_landmark_dict():
    points, sha = read_landmarks({"Pogonion": np.array([1.5, 2, 3]), "n": (-4, 5.25, 6),
                                  "zygion left": [7, 8, -9.5]})
    check(points)
    assert sha is None


@pytest.mark.parametrize("alias, key", [
    ("pogonion", "pg"), ("Nasion", "n"), ("zygion left", "zy_l"), ("left zygion", "zy_l"),
    ("zygion_l", "zy_l"), ("zy-L", "zy_l"), ("zyL", "zy_l"), ("ZY_R", "zy_r"), ("Zygion (right)", "zy_r"),
    ("prosthion", "pr"), ("subspinale", "ss"), ("A point", "ss"), ("supramentale", "sm"),
    ("B-point", "sm"), ("gnathion", "gn"), ("menton", "me"), ("glabella", "g"), ("vertex", "v"),
    ("opisthocranion", "op"), ("rhinion", "rhi"), ("mid-nasal", "mn"), ("mid-philtrum", "mp"),
    ("infradentale", "id"), ("gonion right", "go_r"), ("mid-supraorbital L", "mso_l"),
    ("supraorbital_r", "mso_r"), ("mid-infraorbital left", "mio_l"), ("infraorbital R", "mio_r"),
    ("alare l", "ac_l"), ("alar curvature right", "ac_r"), ("supracanine l", "sC_l"),
    ("infracanine r", "iC_r"), ("supra-M2 left", "sM2_l"), ("infra-M2 right", "iM2_r"),
    ("mid-ramus l", "mr_l"), ("mid-mandibular border r", "mmb_r"), ("sc_l", "sC_l"),
    ("SM2R", "sM2_r"), ("mrl", "mr_l"), ("mr_l", "mr_l"), ("sm", "sm"), ("pr", "pr"),
])
def test_aliases(alias, key):
    assert landmark_key(alias) == key


def test_every_pair_key_and_long_name_resolves():
    for key in SOFT_TISSUE_NAMES:
        assert landmark_key(key) == key
        assert landmark_key(key.upper()) == key
    for key in MIDLINE:
        assert landmark_key(LONG_NAMES[key]) == key
    for key in BILATERAL:
        assert landmark_key(f"{LONG_NAMES[key]} left") == f"{key}_l"
        assert landmark_key(f"right {LONG_NAMES[key]}") == f"{key}_r"
    assert set(LANDMARK_ALIASES.values()) == set(MIDLINE) | set(BILATERAL)


def test_unknown_name_lists_valid_names(tmp_path):
    text = json.dumps({"pg": [1, 2, 3], "nosetip": [1, 2, 3], "pogonion l": [0, 0, 0]})
    path = write(tmp_path / "lm.json", text)
    with pytest.raises(SkullError, match="unknown skull landmark") as info:
        read_landmarks(path)
    message = str(info.value)
    assert "'nosetip'" in message and "'pogonion l'" in message
    assert "valid names are: " + " ".join(SOFT_TISSUE_NAMES) in message
    assert isinstance(info.value, LandmarkError)  # callers catching LandmarkError still work


def test_bilateral_without_side(tmp_path):
    with pytest.raises(SkullError, match="'zygion'.*need a side"):
        read_landmarks(write(tmp_path / "lm.csv", "zygion,1,2,3\n"))


def test_every_bad_name_is_reported_at_once(tmp_path):
    """A sideless bilateral name and an unknown name in one file: one error names both."""
    with pytest.raises(SkullError) as info:
        read_landmarks(write(tmp_path / "lm.csv", "zygion,1,2,3\nnasion_tip,4,5,6\npg,0,0,1\n"))
    message = str(info.value)
    assert "'zygion'" in message and "need a side" in message
    assert "'nasion_tip'" in message and "unknown skull landmark" in message


def test_duplicate_name(tmp_path):
    with pytest.raises(SkullError, match="'pg' is given twice.*'pg'.*'Pogonion'"):
        read_landmarks(write(tmp_path / "lm.csv", "pg,1,2,3\nPogonion,1,2,3\n"))


@pytest.mark.parametrize("text", ['{"pg": [1, 2]}', '{"pg": ["a", 1, 2]}', '{"pg": [1, 2, NaN]}',
                                  "not json at all {"])
def test_bad_coordinates(tmp_path, text):
    with pytest.raises(SkullError):
        read_landmarks(write(tmp_path / "lm.json", text))


@pytest.mark.parametrize("name, text", [("lm.json", "{}"), ("lm.csv", "# nothing\n"),
                                        ("lm.pp", "<PickedPoints></PickedPoints>")])
def test_no_landmarks(tmp_path, name, text):
    with pytest.raises(SkullError, match="contains no landmarks"):
        read_landmarks(write(tmp_path / name, text))


def test_bad_csv_row(tmp_path):
    with pytest.raises(SkullError, match="line 2: expected name,x,y,z"):
        read_landmarks(write(tmp_path / "lm.csv", "pg,1,2,3\npg 1 2\n"))


def test_missing_landmark_file(tmp_path):
    with pytest.raises(SkullError, match="landmark file .* does not exist"):
        read_landmarks(tmp_path / "nope.json")


# ------------------------------------------------------------------------------- load_skull


def test_load_skull_records_everything(tmp_path):
    mesh_path = export(SKULL, tmp_path / "case17.ply", "ply")
    lm_path = write(tmp_path / "case17.landmarks.json", landmark_json(ON_SURFACE))
    skull = Skull.load(mesh_path)
    assert isinstance(skull, Skull)
    assert skull.path == str(mesh_path)
    assert skull.sha256 == hashlib.sha256(mesh_path.read_bytes()).hexdigest()
    assert skull.landmarks_path == str(lm_path)
    assert skull.landmarks_sha256 == hashlib.sha256(lm_path.read_bytes()).hexdigest()
    assert skull.units == "mm" and skull.warnings == []
    assert set(skull.landmarks) == set(ON_SURFACE)
    for k, v in ON_SURFACE.items():
        np.testing.assert_allclose(skull.landmarks[k], v)
    points, present = skull.landmark_array()
    assert present.sum() == len(ON_SURFACE) == skull.n_present


@pytest.mark.parametrize("sidecar", ["case17.landmarks.json", "case17.landmarks.csv", "case17.pp",
                                     "case17_picked_points.pp"])
def test_sidecar_discovery(tmp_path, sidecar):
    mesh_path = export(SKULL, tmp_path / "case17.stl", "stl")
    x, y, z = ON_SURFACE["pg"]
    text = {".json": landmark_json({"pg": ON_SURFACE["pg"]}), ".csv": f"pg,{x},{y},{z}\n",
            ".pp": f'<PickedPoints><point x="{x}" y="{y}" z="{z}" name="pg"/></PickedPoints>'}
    write(tmp_path / sidecar, text[Path(sidecar).suffix])
    assert find_landmark_file(mesh_path) == tmp_path / sidecar
    skull = load_skull(mesh_path)
    assert list(skull.landmarks) == ["pg"]
    assert skull.landmarks_path == str(tmp_path / sidecar)


def test_several_sidecars_first_wins_with_warning(tmp_path):
    mesh_path = export(SKULL, tmp_path / "s.ply", "ply")
    write(tmp_path / "s.landmarks.json", landmark_json({"pg": ON_SURFACE["pg"]}))
    write(tmp_path / "s.pp", '<PickedPoints><point x="0" y="0" z="0" name="n"/></PickedPoints>')
    skull = load_skull(mesh_path)
    assert list(skull.landmarks) == ["pg"]
    assert any("ignoring s.pp" in w for w in skull.warnings)


def test_no_landmarks_at_all(tmp_path):
    mesh_path = export(SKULL, tmp_path / "case17.ply", "ply")
    assert find_landmark_file(mesh_path) is None
    with pytest.raises(SkullError, match=r"case17\.landmarks\.json.*--landmarks FILE"):
        load_skull(mesh_path)


def test_snapping(tmp_path, caplog):
    mesh_path = export(SKULL, tmp_path / "s.ply", "ply")
    normals = SKULL.vertex_normals
    given = dict(ON_SURFACE)
    given["pg"] = ON_SURFACE["pg"] + 5.0 * normals[VERTEX_OF["pg"]]   # 5 mm out: snapped
    given["n"] = ON_SURFACE["n"] + 1.0 * normals[VERTEX_OF["n"]]      # 1 mm out: kept as given
    with caplog.at_level(logging.WARNING, logger="skullsearch.retrieval.skull_io"):
        skull = load_skull(mesh_path, landmarks=given)
    _, dist, _ = trimesh.proximity.closest_point(skull.mesh, skull.landmarks["pg"][None])
    assert dist[0] < 1e-6
    assert np.linalg.norm(skull.landmarks["pg"] - ON_SURFACE["pg"]) < 1.0
    np.testing.assert_array_equal(skull.landmarks["n"], given["n"])
    (warning,) = skull.warnings
    assert "pg (pogonion)" in warning and "snapped" in warning
    assert float(warning.split(" was ")[1].split(" mm")[0]) == pytest.approx(5.0, abs=0.3)
    assert warning in caplog.text

    given["zy_l"] = ON_SURFACE["zy_l"] + 30.0 * normals[VERTEX_OF["zy_l"]]
    with pytest.raises(SkullError, match=r"zy_l 3\d\.\d mm.*limit is 20 mm.*another coordinate frame"):
        load_skull(mesh_path, landmarks=given)


def test_landmarks_converted_with_mesh_units(tmp_path):
    mesh_path = export(skull_mesh(0.1), tmp_path / "s.ply", "ply")  # centimetres
    in_cm = {k: v / 10.0 for k, v in ON_SURFACE.items()}
    skull = load_skull(mesh_path, landmarks=in_cm, units="cm")
    assert skull.units == "cm" and skull.warnings == []
    np.testing.assert_allclose(skull.mesh.extents, [180, 140, 200], rtol=1e-6)
    for k, v in ON_SURFACE.items():
        np.testing.assert_allclose(skull.landmarks[k], v, atol=1e-9)


def test_dict_landmarks_hash_is_canonical(tmp_path):
    mesh_path = export(SKULL, tmp_path / "s.ply", "ply")
    a = load_skull(mesh_path, landmarks=ON_SURFACE)
    reordered = {("Pogonion" if k == "pg" else k): v.tolist() for k, v in reversed(list(ON_SURFACE.items()))}
    b = load_skull(mesh_path, landmarks=reordered)
    assert a.landmarks_path is None
    assert a.landmarks_sha256 == b.landmarks_sha256 and len(a.landmarks_sha256) == 64


def test_landmark_file_in_other_units_refused(tmp_path):
    mesh_path = export(SKULL, tmp_path / "s.ply", "ply")
    lm = write(tmp_path / "lm.json", landmark_json({k: v / 1000 for k, v in ON_SURFACE.items()}))
    with pytest.raises(SkullError, match="far from the surface"):
        load_skull(mesh_path, landmarks=lm)


# ---------------------------------------------------------------------------------- properties


ENTRIES = [("pg", (1.5, 2.0, 3.0)), ("Nasion", (-4.0, 5.25, 6.0)), ("zy-L", (7.0, 8.0, -9.5)),
           ("right gonion", (0.0, -1.0, 2.0)), ("sM2_r", (3.0, 3.0, 3.0)), ("B point", (9.0, 0.0, 1.0))]


def _render(entries, fmt: str) -> tuple[str, str]:
    if fmt == "json":
        return "lm.json", json.dumps({n: list(p) for n, p in entries})
    if fmt == "json_list":
        return "lm.json", json.dumps([{"name": n, "x": x, "y": y, "z": z} for n, (x, y, z) in entries])
    if fmt == "csv":
        return "lm.csv", "name,x,y,z\n" + "".join(f"{n},{x},{y},{z}\n" for n, (x, y, z) in entries)
    return "lm.pp", "<PickedPoints>" + "".join(
        f'<point x="{x}" y="{y}" z="{z}" name="{n}" active="1"/>' for n, (x, y, z) in entries
    ) + "</PickedPoints>"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=st.permutations(ENTRIES), fmt=st.sampled_from(["json", "json_list", "csv", "pp"]))
def test_reading_is_independent_of_order(order, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        name, text = _render(ENTRIES, fmt)
        reference, _ = read_landmarks(write(Path(tmp) / name, text))
        name, text = _render(order, fmt)
        shuffled, _ = read_landmarks(write(Path(tmp) / ("p_" + name), text))
    assert list(shuffled) == list(reference)  # always SOFT_TISSUE_NAMES order
    for k in reference:
        np.testing.assert_array_equal(shuffled[k], reference[k])


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(SOFT_TISSUE_NAMES), data=st.data())
def test_alias_spellings(key, data):
    """Any casing, separator and side spelling of a key or its long name resolves to the key."""
    base, side = (key[:-2], key[-1]) if key[-2:] in ("_l", "_r") and key[:-2] in BILATERAL else (key, None)
    word = data.draw(st.sampled_from([base, LONG_NAMES[base]]))
    word = "".join(c.upper() if data.draw(st.booleans()) else c.lower() for c in word)
    word = word.replace(" ", data.draw(st.sampled_from([" ", "_", "-", ""])))
    if side is not None:
        side_word = data.draw(st.sampled_from([side, side.upper(), {"l": "left", "r": "right"}[side]]))
        sep = data.draw(st.sampled_from([" ", "_", "-"]))
        word = data.draw(st.sampled_from([f"{word}{sep}{side_word}", f"{side_word}{sep}{word}"]))
    assert landmark_key(word) == key
