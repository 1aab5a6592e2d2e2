"""The skull of a query (retrieval/skull.py): its landmarks as a (36, 3) array in the fixed
order, and loading through skull_io (whose formats and refusals tests/retrieval/test_skull_io.py
covers). Millimetres."""

import numpy as np
import pytest
import trimesh

from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.errors import SkullError
from skullsearch.retrieval.skull import Skull, load_skull


def test_landmark_array_follows_the_fixed_order_with_nan_where_absent():
    given = {"zy_r": [70.0, 0.0, 10.0], "op": np.array([0.0, -95.0, 20.0]), "pg": (0.0, 80.0, -60.0)}
    skull = Skull(mesh=None, landmarks=given)
    pts, present = skull.landmark_array()
    assert pts.shape == (36, 3) and pts.dtype == np.float64 and present.dtype == bool
    assert list(np.flatnonzero(present)) == sorted(SOFT_TISSUE_NAMES.index(k) for k in given)
    for name, p in given.items():
        np.testing.assert_array_equal(pts[SOFT_TISSUE_NAMES.index(name)], p)
    assert np.isnan(pts[~present]).all()
    assert skull.n_present == 3


def test_an_empty_skull_and_the_defaults():
    skull = Skull(mesh=None, landmarks={})
    pts, present = skull.landmark_array()
    assert not present.any() and np.isnan(pts).all() and skull.n_present == 0
    assert skull.units == "mm" and skull.path is None and skull.sha256 is None
    other = Skull(mesh=None, landmarks={})
    skull.warnings.append("snapped")
    assert other.warnings == []  # each skull has its own warning list


@pytest.fixture()
def sphere_skull(tmp_path):
    """A 100 mm-radius sphere (a plausible skull size) and two landmarks: pg on it, n 5 mm out."""
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=100.0)
    path = tmp_path / "case.ply"
    path.write_bytes(mesh.export(file_type="ply"))
    top = mesh.vertices[np.argmax(mesh.vertices[:, 2])]
    side = mesh.vertices[np.argmax(mesh.vertices[:, 0])]
    return path, {"pg": top.tolist(), "n": (side * 1.05).tolist()}


def test_load_and_load_skull_read_the_same_skull(sphere_skull):
    path, marks = sphere_skull
    a = Skull.load(path, landmarks=marks)
    b = load_skull(path, landmarks=marks)
    assert isinstance(b, Skull) and a.sha256 == b.sha256 and a.path == str(path)
    pa, _ = a.landmark_array()
    pb, present = b.landmark_array()
    np.testing.assert_array_equal(pa, pb)
    assert b.n_present == 2
    i = SOFT_TISSUE_NAMES.index("n")
    assert np.linalg.norm(pb[i]) == pytest.approx(100.0, abs=0.5)  # snapped onto the surface
    assert any("snapped" in w for w in b.warnings)


def test_snap_limits_pass_through_to_the_reader(sphere_skull):
    path, marks = sphere_skull
    kept = Skull.load(path, landmarks=marks, snap_mm=6.0)  # 5 mm off: within the snap distance
    i = SOFT_TISSUE_NAMES.index("n")
    np.testing.assert_allclose(kept.landmark_array()[0][i], marks["n"])
    with pytest.raises(SkullError, match=r"limit is 3 mm"):
        load_skull(path, landmarks=marks, max_snap_mm=3.0)  # (a keyword of read_skull)
