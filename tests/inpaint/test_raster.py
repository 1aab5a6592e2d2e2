"""Normalized rendering: z-buffer order, silhouettes, the masked channel, batches, the canonical camera."""

import numpy as np
import pytest

from skullsearch.errors import DependencyError
from skullsearch.inpaint.raster import (
    ALBEDO,
    AMBIENT,
    LIGHT_DIR,
    NormalizedCamera,
    normalized_camera,
    pytorch3d_available,
    render,
    render_normalized,
)

CAM = NormalizedCamera(center=(0.0, 0.0, 0.0), ppm=2.0, size=64, z_far=100.0)


def square(half, z, cx=0.0, cy=0.0):
    """Two triangles: vertices (4, 3), faces (2, 3)."""
    v = np.array([[cx - half, cy - half, z], [cx + half, cy - half, z], [cx + half, cy + half, z],
                  [cx - half, cy + half, z]], float)
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def two_squares():
    far_v, far_f = square(10, 0.0, cx=-4)
    near_v, near_f = square(10, 10.0, cx=4)
    return np.concatenate([far_v, near_v]), np.concatenate([far_f, near_f + 4])


@pytest.mark.parametrize("reverse", [False, True])
def test_near_triangles_occlude_far_ones(reverse):
    v, f = two_squares()
    if reverse:  # the order of the triangle list must not matter
        f = f[::-1]
    r = render(v, f, CAM, backend="numpy")
    fid = r.face_id[0]
    near = np.isin(fid, np.nonzero((f >= 4).all(1))[0])
    far = np.isin(fid, np.nonzero((f < 4).all(1))[0])
    # columns: the far square spans x in [-14, 6] mm, the near one [-6, 14] → u in [4, 44] and [20, 60]
    assert near[:, 20:60][12:52].all()          # the overlap u in [20, 44) shows the near square
    assert far[12:52, 4:20].all() and not far[:, 20:].any()
    assert np.allclose(r.depth[0][near], 90.0)  # z_far − z
    assert np.isinf(r.depth[0][fid < 0]).all()


def test_silhouette_of_a_square_and_a_disc():
    v, f = square(10, 0.0)
    r = render(v, f, CAM, backend="numpy")
    assert r.coverage.shape == (1, 1, 64, 64) and r.coverage.sum() == 40 * 40  # 20 mm × 2 px/mm
    rows, cols = np.nonzero(r.coverage[0, 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 51, 12, 51)
    k = 400
    ang = np.linspace(0, 2 * np.pi, k, endpoint=False)
    disc = np.concatenate([[[0.0, 0.0, 0.0]], np.stack([12 * np.cos(ang), 12 * np.sin(ang), 0 * ang], 1)])
    tri = np.stack([np.zeros(k, int), 1 + np.arange(k), 1 + (np.arange(k) + 1) % k], 1)
    d = render(disc, tri, CAM, backend="numpy")
    assert abs(d.coverage.sum() - np.pi * 24**2) < 0.02 * np.pi * 24**2
    # a plane facing the camera is shaded with the canonical light, both windings alike
    light = np.asarray(LIGHT_DIR) / np.linalg.norm(LIGHT_DIR)
    expect = ALBEDO * (AMBIENT + (1 - AMBIENT) * light[2])
    assert np.allclose(d.image[d.coverage], expect, atol=1e-5)
    flipped = render(disc, tri[:, ::-1], CAM, backend="numpy")
    both = flipped.coverage & d.coverage  # pixel centres exactly on the rim may round either way
    assert (flipped.coverage != d.coverage).sum() <= 8 and np.allclose(flipped.image[both], d.image[both])
    assert (d.image[~d.coverage] == 0).all()


def test_masked_channel_and_batches():
    v, f = two_squares()
    mask = np.zeros(len(v), bool)
    mask[4:] = True  # the near square's vertices
    r = render(np.stack([v, v + [0, 0, 0]]), f, CAM, vertex_mask=mask, backend="numpy")
    near = np.isin(r.face_id, [2, 3])
    assert (r.masked[:, 0] == near).all() and r.masked.any()
    assert not render(v, f, CAM, backend="numpy").masked.any()  # no mask, nothing masked
    # a batch renders each mesh as if alone
    w = v + [3.0, -2.0, 0.0]
    both = render(np.stack([v, w]), f, CAM, backend="numpy")
    alone = render(w, f, CAM, backend="numpy")
    assert (both.face_id[1] == alone.face_id[0]).all() and np.allclose(both.image[1], alone.image[0])
    assert not (both.face_id[0] == both.face_id[1]).all()


def test_canonical_camera_and_model_renders(default_model, regions_nose_mask):
    cam = normalized_camera(default_model)
    assert cam is normalized_camera(default_model) and cam.size == 128
    v = default_model.v_template
    r = render_normalized(default_model, np.stack([v, v * 1.05]), vertex_mask=regions_nose_mask,
                          backend="numpy")
    assert r.image.shape == (2, 1, 128, 128) and r.image.dtype == np.float32
    assert 0 <= r.image.min() and r.image.max() <= 1
    assert 0.3 < r.coverage[0].mean() < 0.95
    assert r.coverage[1].sum() > r.coverage[0].sum()  # same camera: a bigger face covers more
    assert r.masked[0].sum() > 20 and (r.masked <= r.coverage).all()
    if not pytorch3d_available():
        assert r.backend == "numpy"
        with pytest.raises(DependencyError, match="pytorch3d"):
            render_normalized(default_model, v, backend="pytorch3d")


@pytest.fixture(scope="module")
def regions_nose_mask(default_model):
    from skullsearch.inpaint.regions import face_regions

    reg = face_regions(default_model)
    return reg.labels == reg.names.index("nose")


def test_caches_are_keyed_by_the_whole_mean_face(default_model):
    """Two models of one topology whose templates differ only past the first vertices get their
    own camera and regions (the key once hashed the template's first 4 kB only)."""
    import copy

    from skullsearch.inpaint.regions import face_regions

    other = copy.copy(default_model)
    v = default_model.v_template.copy()
    v[400:] *= 1.1
    other.v_template = v
    cam, cam2 = normalized_camera(default_model), normalized_camera(other)
    assert cam2 != cam  # its own face proper, its own framing
    assert face_regions(other) is not face_regions(default_model)
