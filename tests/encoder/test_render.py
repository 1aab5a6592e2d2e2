"""The package's rasterizer and renderer (:mod:`skullsearch.encoder.render`): triangles cover the
pixel centres they should, the nearest surface wins, the triangle/barycentric/depth buffers
locate each pixel's 3D point exactly, the cameras follow the documented convention, and the
synthetic portraits are deterministic for a seed."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skullsearch.encoder.render import (
    Camera,
    anatomical_landmarks,
    face_camera,
    in_shadow,
    pixel_boxes,
    portrait_light,
    random_albedo,
    random_portrait,
    rasterize,
    render_mesh,
    texture_regions,
    vertex_normals,
    vertex_normals_batch,
)

SETTINGS = settings(max_examples=25, deadline=None)


def _centres(h, w):
    """Pixel centres (h, w, 2): pixel (col, row) is sampled at (col + 0.5, row + 0.5)."""
    v, u = np.mgrid[0:h, 0:w]
    return np.stack([u + 0.5, v + 0.5], -1)


# ---------------------------------------------------------------- rasterize


def test_a_triangle_covers_exactly_the_pixel_centres_inside_it():
    # legs along u and v from (2.2, 2.2), length 10: inside ⇔ u ≥ 2.2, v ≥ 2.2, u + v ≤ 14.4
    screen = np.array([[2.2, 2.2, 5.0], [12.2, 2.2, 5.0], [2.2, 12.2, 5.0]])
    face_id, bary, depth = rasterize(screen, np.array([[0, 1, 2]]), 16, 16)
    c = _centres(16, 16)
    inside = (c[..., 0] >= 2.2) & (c[..., 1] >= 2.2) & (c.sum(-1) <= 14.4)
    assert inside.sum() == 55  # 10 + 9 + … + 1
    np.testing.assert_array_equal(face_id >= 0, inside)
    assert (face_id[inside] == 0).all() and (face_id[~inside] == -1).all()
    assert np.isinf(depth[~inside]).all() and (bary[~inside] == 0).all()
    np.testing.assert_allclose(depth[inside], 5.0)


def test_both_windings_are_drawn():
    a = np.array([[1.0, 1.0, 3.0], [9.0, 1.0, 3.0], [1.0, 9.0, 3.0]])
    ccw, _, _ = rasterize(a, np.array([[0, 1, 2]]), 10, 10)
    cw, _, _ = rasterize(a, np.array([[0, 2, 1]]), 10, 10)
    assert (ccw >= 0).sum() > 20
    np.testing.assert_array_equal(ccw >= 0, cw >= 0)


def test_the_nearest_surface_wins_whatever_the_order():
    far = [[0.0, 0.0, 9.0], [20.0, 0.0, 9.0], [0.0, 20.0, 9.0]]
    near = [[4.0, 4.0, 2.0], [14.0, 4.0, 2.0], [4.0, 14.0, 2.0]]
    for order in ([far, near], [near, far]):
        screen = np.array(order[0] + order[1])
        face_id, _, depth = rasterize(screen, np.array([[0, 1, 2], [3, 4, 5]]), 20, 20)
        near_id = 1 if order[1] is near else 0
        assert face_id[6, 6] == near_id and depth[6, 6] == pytest.approx(2.0)
        assert face_id[1, 1] == 1 - near_id and depth[1, 1] == pytest.approx(9.0)


#: a screen-space triangle far behind everything that covers a whole image of up to 100 px
BACKDROP = np.array([[-100.0, -100.0, 1e5], [400.0, -100.0, 1e5], [-100.0, 400.0, 1e5]])


def test_triangles_behind_the_camera_or_not_finite_are_not_drawn():
    screen = np.array([[0.0, 0.0, -1.0], [10.0, 0.0, 2.0], [0.0, 10.0, 2.0],
                       [0.0, 0.0, np.nan], [10.0, 0.0, 2.0], [0.0, 10.0, 2.0], *BACKDROP])
    face_id, _, _ = rasterize(screen, np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]]), 10, 10)
    assert (face_id == 2).all()  # only the backdrop


def test_a_mesh_that_covers_no_pixel_renders_as_background():
    off_screen = np.array([[100.0, 100.0, 1.0], [110.0, 100.0, 1.0], [100.0, 110.0, 1.0]])
    face_id, _, depth = rasterize(off_screen, np.array([[0, 1, 2]]), 10, 10)
    assert (face_id == -1).all() and np.isinf(depth).all()


def test_pixel_boxes_of_invalid_and_off_screen_triangles_are_empty():
    tri = np.array([[[1.0, 1.0], [5.0, 1.0], [1.0, 4.0]],
                    [[1.0, 1.0], [5.0, 1.0], [1.0, 4.0]],
                    [[50.0, 50.0], [60.0, 50.0], [50.0, 60.0]]])
    x0, y0, w, h = pixel_boxes(tri, np.array([True, False, True]), 20, 20)
    # centres 1.5 … 4.5 in u (cols 1–4), 1.5 … 3.5 in v (rows 1–3)
    assert (x0[0], y0[0], w[0], h[0]) == (1, 1, 4, 3)
    assert w[1] * h[1] == 0 and w[2] * h[2] == 0


@st.composite
def _triangles(draw):
    """A random 3D triangle 400–800 mm in front of a 64 × 48 camera, and the camera."""
    pts = np.array(draw(st.lists(st.tuples(st.floats(-60, 60), st.floats(-45, 45), st.floats(-150, 150)),
                                 min_size=3, max_size=3)))
    yaw = draw(st.floats(-40, 40))
    cam = face_camera(yaw_deg=yaw, distance=draw(st.floats(400, 800)), size=(64, 48), fov_mm=200)
    return pts, cam


@SETTINGS
@given(_triangles())
def test_the_buffers_locate_each_pixels_3d_point(tri_cam):
    """Barycentrics sum to 1, and the 3D point they make (perspective-correct) projects onto the
    pixel's centre at the depth buffer's depth."""
    pts, cam = tri_cam
    screen = np.concatenate([cam.project(pts), BACKDROP])  # (the backdrop: see the xfail above)
    face_id, bary, depth = rasterize(screen, np.array([[0, 1, 2], [3, 4, 5]]), cam.width, cam.height)
    assert (face_id >= 0).all()
    hit = face_id == 0
    b = bary[hit]
    assert (b >= -1e-9).all()
    np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-9)
    p3 = b @ pts  # (n, 3) face frame
    back = cam.project(p3)
    np.testing.assert_allclose(back[:, :2], _centres(cam.height, cam.width)[hit], atol=1e-6)
    np.testing.assert_allclose(back[:, 2], depth[hit], rtol=1e-9)


def test_orthographic_barycentrics_are_screen_space():
    screen = np.array([[1.0, 1.0, 2.0], [15.0, 2.0, 40.0], [3.0, 14.0, 9.0]])
    face_id, bary, depth = rasterize(screen, np.array([[0, 1, 2]]), 16, 16, perspective=False)
    hit = face_id >= 0
    np.testing.assert_allclose(bary[hit] @ screen[:, :2], _centres(16, 16)[hit], atol=1e-9)
    np.testing.assert_allclose(depth[hit], bary[hit] @ screen[:, 2], atol=1e-9)


# ---------------------------------------------------------------- cameras


def test_face_camera_frames_the_scene_as_documented():
    cam = face_camera(distance=600.0, size=(400, 300), fov_mm=260.0, center=np.array([0.0, -30.0, 0.0]))
    assert (cam.width, cam.height) == (400, 300) and cam.focal == pytest.approx(400 * 600 / 260)
    c = np.array([0.0, -30.0, 0.0])
    # the centre at the image centre, ``distance`` mm in front; fov_mm wide at the centre's depth
    pts = cam.project(np.array([c, c + (-130, 0, 0), c + (130, 0, 0), c + (0, 20, 0), c + (0, 0, 20)]))
    np.testing.assert_allclose(pts[0], [200, 150, 600], atol=1e-9)
    assert pts[1, 0] == pytest.approx(0.0) and pts[2, 0] == pytest.approx(400.0)
    assert pts[3, 1] < 150  # face frame y up → image v down
    assert pts[4, 2] == pytest.approx(580.0)  # +z faces the camera
    ortho = face_camera(size=400, orthographic=True, fov_mm=200.0)
    assert ortho.orthographic and ortho.focal == pytest.approx(2.0)
    np.testing.assert_allclose(ortho.project(np.array([[50.0, 0.0, 0.0], [50.0, 0.0, 90.0]]))[:, 0], 300.0)


def test_positive_yaw_shows_the_right_cheek():
    """yaw turns the head to the subject's left: the subject's right cheek (−x) comes nearer."""
    cam = face_camera(yaw_deg=30.0)
    right, left = cam.project(np.array([[-60.0, 0.0, 0.0], [60.0, 0.0, 0.0]]))[:, 2]
    assert right < left
    r, lft = face_camera(yaw_deg=-30.0).project(np.array([[-60.0, 0.0, 0.0], [60.0, 0.0, 0.0]]))[:, 2]
    assert r > lft


@SETTINGS
@given(st.floats(-60, 60), st.floats(-30, 30))
def test_face_camera_rotation_is_a_rotation(yaw, pitch):
    r = face_camera(yaw_deg=yaw, pitch_deg=pitch).rotation
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


# ---------------------------------------------------------------- normals and shading


def _square(z=0.0):
    v = np.array([[-50.0, -50.0, z], [50.0, -50.0, z], [50.0, 50.0, z], [-50.0, 50.0, z]])
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def test_vertex_normals_are_unit_and_batched_alike():
    v, f = _square()
    np.testing.assert_allclose(vertex_normals(v, f), np.tile([0, 0, 1.0], (4, 1)), atol=1e-12)
    rng = np.random.default_rng(0)
    vb = rng.normal(size=(3, 4, 3)) * 10
    nb = vertex_normals_batch(vb, f)
    np.testing.assert_allclose(np.linalg.norm(nb, axis=2), 1.0, atol=1e-12)
    for i in range(3):
        np.testing.assert_allclose(nb[i], vertex_normals(vb[i], f), atol=1e-12)


def test_the_specular_highlight_adds_white_where_the_half_vector_meets_the_normal():
    v, f = _square()
    cam = face_camera(size=32, distance=500.0, fov_mm=200.0)
    matte = render_mesh(v, f, cam, albedo=(0.5, 0.25, 0.25), light_dir=(0, 0, 1))
    hit = matte.face_id >= 0
    # light and view both along +z: the half vector is the normal, the highlight its full strength
    shiny = render_mesh(v, f, cam, albedo=(0.5, 0.25, 0.25), light_dir=(0, 0, 1), specular=0.2)
    np.testing.assert_array_equal(shiny.image[hit].astype(int) - matte.image[hit], 51)  # 0.2 · 255
    np.testing.assert_array_equal(shiny.image[~hit], matte.image[~hit])
    # a light behind the surface lights nothing, not even a highlight
    behind = render_mesh(v, f, cam, light_dir=(0, 0, -1), specular=0.5, ambient=0.3)
    dark = render_mesh(v, f, cam, light_dir=(0, 0, -1), ambient=0.3)
    np.testing.assert_array_equal(behind.image, dark.image)


def test_lambertian_shading_and_background():
    v, f = _square()
    cam = face_camera(size=32, distance=500.0, fov_mm=200.0)
    lit = render_mesh(v, f, cam, albedo=(0.5, 0.25, 1.0), light_dir=(0, 0, 1), ambient=0.3)
    hit = lit.face_id >= 0
    assert hit.sum() == 16 * 16  # 100 mm of the 200 mm field: the middle half
    np.testing.assert_array_equal(lit.image[hit], np.tile([128, 64, 255], (hit.sum(), 1)))
    np.testing.assert_array_equal(lit.image[~hit], 255)
    grazing = render_mesh(v, f, cam, albedo=(1.0, 1.0, 1.0), light_dir=(1, 0, 0), ambient=0.3,
                          background=(0, 0, 0))
    np.testing.assert_array_equal(grazing.image[hit], 77)  # only the ambient part: 0.3 · 255
    np.testing.assert_array_equal(grazing.image[~hit], 0)
    # per-vertex albedo is interpolated; a normal facing away from the camera is flipped
    back = render_mesh(v, f[:, ::-1], cam, albedo=np.tile([0.5, 0.25, 1.0], (4, 1)), light_dir=(0, 0, 1))
    np.testing.assert_array_equal(back.image, lit.image)


# ---------------------------------------------------------------- the face model's renders


def test_the_nose_tip_renders_where_it_projects(default_model):
    with torch.no_grad():
        lm = default_model.landmarks68(batch_size=1)[0].double().numpy()
    verts = default_model.v_template.astype(np.float64)
    cam = face_camera(yaw_deg=10.0, size=256, distance=600.0, fov_mm=300.0,
                      center=np.array([0.0, -30.0, 0.0]))
    r = render_mesh(verts, default_model.faces, cam)
    u, v, z = cam.project(lm[30:31])[0]  # iBUG 30: the nose tip
    col, row = int(u), int(v)
    tri = r.face_id[row, col]
    assert tri >= 0
    p = r.bary[row, col] @ verts[default_model.faces[tri]]
    assert np.linalg.norm(p - lm[30]) < 3.0  # one pixel is ~1.2 mm here
    assert r.depth[row, col] == pytest.approx(z, abs=3.0)
    assert (r.face_id[0] == -1).all() and (r.image[0] == 255).all()  # the top row: background


def test_random_portrait_is_deterministic_for_a_seed(default_model):
    verts = default_model.v_template.astype(np.float64)
    a, cam_a = random_portrait(verts, default_model.faces, np.random.default_rng(4), size=96)
    b, cam_b = random_portrait(verts, default_model.faces, np.random.default_rng(4), size=96)
    c, cam_c = random_portrait(verts, default_model.faces, np.random.default_rng(5), size=96)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.face_id, b.face_id)
    np.testing.assert_array_equal(a.bary, b.bary)
    np.testing.assert_array_equal(cam_a.rotation, cam_b.rotation)
    assert cam_a.focal == cam_b.focal and isinstance(cam_a, Camera)
    assert not np.array_equal(a.image, c.image) and cam_a.focal != cam_c.focal
    assert a.image.shape == (96, 96, 3) and a.image.dtype == np.uint8
    # the documented ranges: 0.5–0.9 m to the face's centre, a 260–340 mm field there
    for cam in (cam_a, cam_c):
        d = cam.to_camera(np.array([[0.0, -30.0, 0.0]]))[0, 2]
        assert 500 <= d <= 900 and 260 <= 96 * d / cam.focal <= 340
        assert not cam.orthographic


def test_a_camera_gamma_encodes_the_faces_light_and_leaves_the_background(default_model):
    verts = default_model.v_template.astype(np.float64)
    cam = face_camera(yaw_deg=15.0, size=96, distance=600.0, fov_mm=300.0, center=np.array([0.0, -30.0, 0.0]))
    lin = render_mesh(verts, default_model.faces, cam, light_dir=(0.3, 0.2, 1.0), background=(10, 20, 30))
    enc = render_mesh(verts, default_model.faces, cam, light_dir=(0.3, 0.2, 1.0), background=(10, 20, 30),
                      gamma=2.2)
    hit = lin.face_id >= 0
    np.testing.assert_array_equal(enc.face_id, lin.face_id)
    assert (enc.image[~hit] == (10, 20, 30)).all()
    # pixel = light^(1/2.2): mid-tones brighter, within the 8-bit rounding of the linear render
    want = 255 * (lin.image[hit] / 255.0) ** (1 / 2.2)
    assert np.abs(enc.image[hit] - want).max() <= 2.5
    assert enc.image[hit].mean() > lin.image[hit].mean() + 20
    a, _ = random_portrait(verts, default_model.faces, np.random.default_rng(3), size=64)
    b, _ = random_portrait(verts, default_model.faces, np.random.default_rng(3), size=64, gamma=1.0)
    np.testing.assert_array_equal(a.image, b.image)  # gamma 1: the renders as before it existed


def _elevation_deg(light) -> float:
    light = np.asarray(light, dtype=np.float64)
    return float(np.degrees(np.arcsin(light[1] / np.linalg.norm(light))))


@given(st.integers(0, 2**32 - 1), st.floats(-30, 40), st.floats(0, 45))
@SETTINGS
def test_a_portrait_light_stands_between_the_elevations_asked_for(seed, lo, span):
    light = portrait_light(np.random.default_rng(seed), (lo, lo + span))
    assert lo - 1e-9 <= _elevation_deg(light) <= lo + span + 1e-9
    default = portrait_light(np.random.default_rng(seed))
    assert light[0] == default[0] and light[2] == default[2] == 1.0  # the same side, the same draws
    assert 0 <= _elevation_deg(default) <= 31.0


def test_steeper_lights_keep_the_portraits_draws_and_darken_under_the_nose(default_model):
    verts = default_model.v_template.astype(np.float64)
    rngs = [np.random.default_rng(6) for _ in range(3)]
    low, cam_low = random_portrait(verts, default_model.faces, rngs[0], size=96, shadows=True)
    high, cam_high = random_portrait(verts, default_model.faces, rngs[1], size=96, shadows=True,
                                     light_up=(60.0, 60.0))
    rngs[2].uniform(size=7)  # a portrait's draws: yaw, pitch, distance, field, skin, light x and y
    assert rngs[0].uniform() == rngs[1].uniform() == rngs[2].uniform()  # the same stream after
    np.testing.assert_array_equal(cam_low.rotation, cam_high.rotation)
    np.testing.assert_array_equal(low.face_id, high.face_id)
    assert not np.array_equal(low.image, high.image)
    with pytest.raises(ValueError, match="light_up"):
        portrait_light(np.random.default_rng(0), (50.0, 20.0))
    # a light 60° up leaves more of the face in the ambient light alone (shadows under the brows,
    # nose and lips) than the default's at most ~31°: more of the face's pixels at the darkest level
    hit = low.face_id >= 0
    dark = [float((im.image[hit].mean(1) <= np.percentile(low.image[hit].mean(1), 5)).mean())
            for im in (low, high)]
    assert dark[1] > dark[0], dark


def _ground_and_roof():
    """A 100 mm ground square at z = 0 and a 20 mm roof square over its centre at z = 20 (4
    triangles), and points: under the roof, beside it, 20 mm off in −x, on the roof (4, 3) mm."""
    v = np.array([[-50, -50, 0], [50, -50, 0], [50, 50, 0], [-50, 50, 0],
                  [-10, -10, 20], [10, -10, 20], [10, 10, 20], [-10, 10, 20]], np.float64)
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    p = np.array([[0, 0, 0], [30, 30, 0], [-20, 0, 0], [0, 0, 20]], np.float64)
    return v, f, p


def test_a_roof_shadows_the_ground_under_it_along_the_light():
    v, f, p = _ground_and_roof()
    up = np.tile([0.0, 0.0, 1.0], (4, 1))
    assert in_shadow(v, f, p, np.array([0.0, 0.0, 1.0]), up).tolist() == [True, False, False, False]
    # the light from +x, 45° up: the roof's shadow falls 20 mm towards −x
    assert in_shadow(v, f, p, np.array([1.0, 0.0, 1.0]), up).tolist() == [False, False, True, False]
    # without normals (the bias alone) the same, the surfaces facing the light squarely
    assert in_shadow(v, f, p, np.array([0.0, 0.0, 1.0])).tolist() == [True, False, False, False]


@SETTINGS
@given(st.floats(-np.pi, np.pi), st.floats(-1.2, 1.2), st.floats(-np.pi, np.pi),
       st.floats(-200, 200), st.permutations(range(4)))
def test_shadows_move_with_the_scene_and_follow_the_points(a, b, c, shift, order):
    """A rigid motion of mesh, points and light together, and the points' order, change no point's shadow."""
    from scipy.spatial.transform import Rotation

    v, f, p = _ground_and_roof()
    light = np.array([1.0, 0.0, 1.0])
    want = in_shadow(v, f, p, light, np.tile([0.0, 0.0, 1.0], (4, 1)))
    r = Rotation.from_euler("zyx", [a, b, c]).as_matrix()
    order = list(order)
    got = in_shadow(v @ r.T + shift, f, (p @ r.T + shift)[order], light @ r.T, np.tile(r[:, 2], (4, 1)))
    assert got.tolist() == want[order].tolist()


def test_a_face_in_side_light_casts_shadows_that_only_darken(default_model):
    verts = default_model.v_template.astype(np.float64)
    cam = face_camera(yaw_deg=20.0, size=128, distance=700.0, fov_mm=300.0,
                      center=np.array([0.0, -30.0, 0.0]))
    plain = render_mesh(verts, default_model.faces, cam, light_dir=(-0.9, 0.3, 0.5))
    shaded = render_mesh(verts, default_model.faces, cam, light_dir=(-0.9, 0.3, 0.5), shadows=True)
    hit = plain.face_id >= 0
    np.testing.assert_array_equal(shaded.face_id, plain.face_id)
    darker = shaded.image[hit].astype(int).sum(-1) < plain.image[hit].astype(int).sum(-1) - 3
    assert 0.02 < darker.mean() < 0.4, darker.mean()  # the nose's and the jaw's shadows, not the whole face
    assert (shaded.image[hit].astype(int) <= plain.image[hit].astype(int)).all()
    # a light from the camera's side: hardly a shadow
    front = render_mesh(verts, default_model.faces, cam, light_dir=tuple(-cam.rotation[2]), shadows=True)
    ref = render_mesh(verts, default_model.faces, cam, light_dir=tuple(-cam.rotation[2]))
    assert (np.abs(front.image.astype(int) - ref.image.astype(int)).sum(-1) > 3).mean() < 0.01


def test_random_portrait_images_show_the_mesh_they_buffer(default_model):
    verts = default_model.v_template.astype(np.float64)
    r, cam = random_portrait(verts, default_model.faces, np.random.default_rng(0), size=128)
    hit = r.face_id >= 0
    assert 0.1 < hit.mean() < 0.9
    assert (r.image[~hit] == 255).all() and not (r.image[hit] == 255).all(-1).any()
    np.testing.assert_allclose(r.bary[hit].sum(1), 1.0, atol=1e-9)
    p3 = (r.bary[hit][..., None] * verts[default_model.faces[r.face_id[hit]]]).sum(1)
    np.testing.assert_allclose(cam.project(p3)[:, :2], _centres(128, 128)[hit], atol=1e-6)


def test_camera_yaw_reads_back_the_yaw_a_face_camera_was_made_with():
    from skullsearch.encoder.render import camera_yaw, face_camera

    for yaw, pitch in ((-35.0, 0.0), (0.0, 8.0), (12.5, -10.0), (40.0, 5.0)):
        rot = face_camera(yaw_deg=yaw, pitch_deg=pitch).rotation
        assert float(camera_yaw(rot)) == pytest.approx(yaw, abs=1e-9)
    rots = np.stack([face_camera(yaw_deg=y).rotation for y in (-20.0, 30.0)])
    np.testing.assert_allclose(camera_yaw(rots), [-20.0, 30.0], atol=1e-9)  # batched


def test_yaw_bins_hold_their_lower_edge_and_the_outer_bins_are_open():
    from skullsearch.encoder.render import yaw_bins

    edges = (-90.0, -25.0, -10.0, 10.0, 25.0, 90.0)
    got = yaw_bins(np.array([-120.0, -25.0, -10.0001, -10.0, 0.0, 9.99, 10.0, 25.0, 170.0]), edges)
    assert got.tolist() == [0, 1, 1, 2, 2, 2, 3, 4, 4]
    assert int(yaw_bins(0.0, edges)) == 2


# ---------------------------------------------------------------- synthetic skin texture


def test_texture_regions_lie_where_the_landmarks_say(default_model):
    r = texture_regions(default_model)
    with torch.no_grad():
        lm = default_model.landmarks68(batch_size=1)[0].double().numpy()
    v = r.vertices
    for name in ("brows", "lips", "lashes", "beard", "iris", "pupil"):
        w = getattr(r, name)
        assert w.shape == (default_model.n_vertices,) and w.min() >= 0 and w.max() <= 1, name
        assert (w > 0.5).sum() > 20, name
    brows, lips = v[r.brows > 0.5], v[r.lips > 0.5]
    assert brows[:, 1].min() > lm[36:48, 1].max()  # above the eyes
    assert lips[:, 1].max() < lm[33, 1] and lips[:, 1].min() > lm[8, 1]  # between nose and chin
    assert abs(lips[:, 0].mean()) < 2 and abs(brows[:, 0].mean()) < 2  # symmetric
    assert np.all(np.abs(lips[:, 0]) < np.abs(lm[54, 0] - lm[48, 0]) / 2 + 2)
    assert r.skin[r.brows > 0].all() and not r.skin[r.iris > 0].any()  # eyes: off the skin
    assert (r.pupil > 0.5).sum() < (r.iris > 0.5).sum()


def test_texture_is_placed_by_the_source_annotation_not_the_dlib_calibrated_embedding(default_model):
    """dlib, calibrated on untextured renders, puts the brows ~6 mm under the source's brow line;
    a texture's brows belong on the source's (the anatomy), just under its line."""
    src = anatomical_landmarks(default_model)
    ids = default_model.meta["source_landmarks68"]
    np.testing.assert_array_equal(src, default_model.v_template[ids].astype(np.float64))
    with torch.no_grad():
        fitted = default_model.landmarks68(batch_size=1)[0].double().numpy()
    assert np.median(src[17:27, 1] - fitted[17:27, 1]) > 4.0  # the calibrated brows lie lower
    r = texture_regions(default_model)
    band = r.vertices[r.brows > 0.5]
    line = src[17:27, 1].mean()
    assert line - 6.0 < np.median(band[:, 1]) < line  # under the source's line, by a few mm
    assert np.median(band[:, 1]) > fitted[17:27, 1].mean()  # above the calibrated one
    low = texture_regions(default_model, landmarks=fitted)  # placed by the fitting embedding
    assert np.median(r.vertices[low.brows > 0.5][:, 1]) < np.median(band[:, 1]) - 4.0
    # a model without a source annotation: its fitting embedding
    bare = copy.copy(default_model)
    bare.meta = {k: v for k, v in default_model.meta.items() if k != "source_landmarks68"}
    np.testing.assert_allclose(anatomical_landmarks(bare), fitted, atol=1e-5)


def test_random_albedo_is_deterministic_and_darkens_brows_reddens_lips(default_model):
    r = texture_regions(default_model)
    tone = np.array([0.8, 0.62, 0.5])
    a = random_albedo(r, np.random.default_rng(3), tone)
    b = random_albedo(r, np.random.default_rng(3), tone)
    c = random_albedo(r, np.random.default_rng(4), tone)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (default_model.n_vertices, 3) and a.min() >= 0 and a.max() <= 1
    plain = r.skin & (r.brows == 0) & (r.lips == 0) & (r.lashes == 0) & (r.beard == 0)
    for alb in (a, c):
        skin = alb[plain].mean(0)
        assert alb[r.brows > 0.9].mean() < 0.8 * skin.mean()  # brows darker than the skin
        lips = alb[r.lips > 0.9].mean(0)
        assert lips[0] / lips[1] > 1.2 * skin[0] / skin[1]  # lips redder
        assert alb[r.pupil > 0.9].max() < 0.1  # pupils black
        np.testing.assert_allclose(skin, tone, rtol=0.15)  # the tone, up to blotches and grain


def test_a_textured_portrait_keeps_the_untextured_draws_and_is_found_by_dlib(default_model):
    from skullsearch.encoder.detectors import DlibDetector
    from skullsearch.encoder.images import DecodedImage

    verts = default_model.v_template.astype(np.float64)
    r = texture_regions(default_model)
    plain, cam = random_portrait(verts, default_model.faces, np.random.default_rng(2), 10.0, 400)
    tex, cam_t = random_portrait(verts, default_model.faces, np.random.default_rng(2), 10.0, 400, texture=r)
    again, _ = random_portrait(verts, default_model.faces, np.random.default_rng(2), 10.0, 400, texture=r)
    np.testing.assert_array_equal(cam.rotation, cam_t.rotation)  # the same camera, light, tone
    np.testing.assert_array_equal(plain.face_id, tex.face_id)
    np.testing.assert_array_equal(tex.image, again.image)
    assert np.abs(tex.image.astype(int) - plain.image).max() > 60  # brows, eyes, lips differ
    faces = DlibDetector().detect(DecodedImage("t", tex.image, "", (400, 400), False))
    assert len(faces) == 1
    lm = default_model.landmarks68(batch_size=1)[0].double().numpy()
    uv = cam.project(lm)[:, :2]
    assert np.median(np.linalg.norm(faces[0].landmarks - uv, axis=1)) < 6.0  # px, at ~1.5 px/mm
