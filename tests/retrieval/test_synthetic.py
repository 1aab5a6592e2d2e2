"""Synthetic skulls: the extended landmarks of a skull made under a face land on that face."""

import numpy as np
import pytest

from skullsearch import SOFT_TISSUE_NAMES, Skull
from skullsearch.encoder import code as code_layout
from skullsearch.retrieval.extended import extend
from skullsearch.retrieval.synthetic import synthetic_skull

pytestmark = pytest.mark.slow  # marching-cubes skulls at a fine voxel size


@pytest.fixture(scope="module")
def made(default_model):
    rng = np.random.default_rng(5)
    code = np.zeros(228, np.float32)
    code[code_layout.SLICES["shape"]] = 0.8 * rng.standard_normal(90).astype(np.float32)
    return code, synthetic_skull(default_model, code, rng=rng, rigid_motion=True, voxel_mm=3.0)


def test_extended_landmarks_land_on_the_true_face(made, tmp_path):
    _, sk = made
    assert sk.present.sum() >= 32  # at most the two crease points under the jaw are left out
    skull = Skull.load(sk.save(tmp_path))
    assert set(skull.landmarks) == {n for n, p in zip(SOFT_TISSUE_NAMES, sk.present, strict=True) if p}
    ext = extend(skull)
    err = np.linalg.norm(ext.points - sk.soft_tissue, axis=1)[sk.present]
    assert np.nanmean(err) < 2.0 and np.nanmax(err) < 8.0
    # and the skull is not the face: its landmarks are the tissue depths below it
    depth = np.linalg.norm(sk.soft_tissue - ext.skull_points, axis=1)[sk.present]
    assert np.allclose(depth, sk.depths[sk.present], atol=6.0)


def test_rigid_motion_is_recorded(made, default_model):
    code, sk = made
    from skullsearch.encoder.fitting import code_vertices

    v = code_vertices(default_model, code[None])[0].numpy()
    moved = v @ sk.transform[:3, :3].T + sk.transform[:3, 3]
    assert np.allclose(moved, sk.face_vertices, atol=1e-3)
    assert not np.allclose(sk.transform, np.eye(4))
    # the bone sits inside the face: every bone vertex is closer to the face's centre
    centre = sk.face_vertices.mean(0)
    r_bone = np.linalg.norm(np.asarray(sk.mesh.vertices) - centre, axis=1).max()
    r_face = np.linalg.norm(sk.face_vertices - centre, axis=1).max()
    assert r_bone < r_face


def test_depth_noise_changes_depths(default_model):
    v = default_model.mean_vertices()
    a = synthetic_skull(default_model, vertices=v, depth_noise=1.0, rng=np.random.default_rng(0),
                        voxel_mm=4.0)
    from skullsearch.retrieval.tissue import load_table

    t = load_table()
    z = (a.depths - t.mean) / t.sd
    assert np.std(z) > 0.4 and np.all(a.depths >= 1.0)
    with pytest.raises(ValueError, match="code or vertices"):
        synthetic_skull(default_model)
