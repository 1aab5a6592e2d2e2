"""Detector calibration (:mod:`skullsearch.encoder.calibrate`) on real renders of the default
model: points read back through the rasterizer's buffers, the skin mask, and the calibration
with a "detector" that returns the model's own projected landmarks — which must give back the
model's own embedding (to the pixel's size), deterministically for a seed. (The dlib and mesh
calibrations' determinism is in test_ict_model.py and test_mesh.py.)"""

import numpy as np
import pytest
import torch

from skullsearch.encoder import calibrate as cal
from skullsearch.encoder.render import face_camera, render_mesh
from skullsearch.errors import LandmarkError

PHOTOS, SIZE, YAW = 6, 256, 20.0


@pytest.fixture(scope="module")
def on_skin(default_model):
    return cal.skin_triangles(default_model)


@pytest.fixture(scope="module")
def mean_render(default_model):
    """The mean face, frontal, and its camera and 68 landmarks (68, 3) mm."""
    verts = default_model.v_template.astype(np.float64)
    cam = face_camera(yaw_deg=0.0, size=SIZE, distance=600.0, fov_mm=300.0,
                      center=np.array([0.0, -30.0, 0.0]))
    with torch.no_grad():
        lm = default_model.landmarks68(batch_size=1)[0].double().numpy()
    return render_mesh(verts, default_model.faces, cam), cam, lm, verts


def _pixel_index(uv):
    """A continuous image position (pixel corners at integers) in a detector's convention
    (pixel centres at integers), as read_back takes it."""
    return np.asarray(uv) - 0.5


def test_skin_triangles_mark_the_outer_skin(default_model, on_skin):
    assert on_skin.shape == (default_model.n_faces,) and on_skin.dtype == bool
    assert 0.3 < on_skin.mean() < 1.0  # most of the head, not the eyes or the mouth's inside
    faces = np.flatnonzero(on_skin)[:10]
    np.testing.assert_array_equal(np.flatnonzero(cal.skin_triangles(default_model, faces)), faces)


def test_the_nose_tip_reads_back_onto_a_skin_triangle_under_it(mean_render, on_skin, default_model):
    r, cam, lm, verts = mean_render
    nose = _pixel_index(cam.project(lm[30:31])[:, :2])  # iBUG 30
    ok, tri, bary = cal.read_back(r, nose, on_skin)
    assert ok.tolist() == [True] and on_skin[tri[0]]
    row, col = np.round(nose[0, ::-1]).astype(int)
    assert tri[0] == r.face_id[row, col]
    np.testing.assert_array_equal(bary[0], r.bary[row, col])
    # the surface point read back is the nose tip, to about a pixel (≈ 1.2 mm here)
    p = bary[0] @ verts[default_model.faces[tri[0]]]
    assert np.linalg.norm(p - lm[30]) < 2.0


def test_background_and_non_skin_pixels_read_back_not_ok(mean_render, on_skin):
    r, _, _, _ = mean_render
    non_skin = np.argwhere((r.face_id >= 0) & ~on_skin[np.maximum(r.face_id, 0)])
    assert len(non_skin), "the frontal render shows some non-skin triangle (the eyes)"
    row, col = non_skin[0]
    pts = np.array([[2.0, 2.0], [col, row], [-50.0, 1e4]])  # corner, an eye, far outside (clipped)
    ok, tri, _ = cal.read_back(r, pts, on_skin)
    assert ok.tolist() == [False, False, False]
    assert tri[0] == -1 and tri[1] == r.face_id[row, col] and tri[2] == r.face_id[-1, 0]


def _truthful_detector(model, photos, seed, max_yaw, size):
    """A detector that returns the model's own 68 landmarks of each calibration render, projected
    by the render's camera: the renders are rebuilt as calibrate_embedding makes them (the same
    seed draws the same heads and cameras) and matched by their pixels."""
    rng = np.random.default_rng(seed)
    truth = []
    shape = np.random.default_rng(seed).standard_normal((photos, model.n_shape)) * model.shape_std
    with torch.no_grad():
        lms = model.landmarks68(shape=torch.as_tensor(shape, dtype=torch.float32)).double().numpy()
    for (render, cam), lm in zip(cal._render_set(model, photos, rng, max_yaw, size), lms, strict=True):
        truth.append((render.image, _pixel_index(cam.project(lm)[:, :2])))
    calls = []

    def detect(image):
        (match,) = [k for k, (im, _) in enumerate(truth) if np.array_equal(im, image)]
        calls.append(match)
        return [(np.array([0.0, 0.0, size, size]), truth[match][1])]

    return detect, calls


def test_calibrating_on_the_models_own_landmarks_gives_them_back(default_model):
    detect, calls = _truthful_detector(default_model, PHOTOS, 3, YAW, SIZE)
    emb, rep = cal.calibrate_embedding(default_model, photos=PHOTOS, seed=3, max_yaw=YAW, size=SIZE,
                                       detect=detect, min_samples=3)
    assert calls == list(range(PHOTOS))  # every render seen once, in order
    assert rep.photos == rep.found == PHOTOS
    inner = list(cal.INNER)
    assert (rep.samples[inner] >= 3).all() and (rep.samples[:17] == 0).all()
    # each calibrated point within ~1 mm (a pixel is ~1.2 mm) of the model's own point
    assert np.median(rep.shift_mm[inner]) < 0.6 and rep.shift_mm[inner].max() < 1.5
    assert (rep.spread_mm[inner] < 2.0).all() and (rep.spread_mm[:17] == 0).all()
    # the jaw line (not calibrated) keeps the model's own surface points exactly
    own = default_model._landmarks68_points()
    np.testing.assert_array_equal(emb.static_faces[:17], own.faces[:17])
    np.testing.assert_array_equal(emb.static_bary[:17], own.bary[:17])
    assert (rep.shift_mm[:17] < 1e-4).all()
    assert "calibrated on 6 untextured renders (seed 3" in emb.source
    # the embedding's points are where the report says: on the mean face, shift_mm from the old
    tmpl = default_model.v_template.astype(np.float64)
    new = (tmpl[default_model.faces[emb.static_faces]] * np.asarray(emb.static_bary)[..., None]).sum(1)
    with torch.no_grad():
        old = default_model.landmarks68(batch_size=1)[0].double().numpy()
    np.testing.assert_allclose(np.linalg.norm(new - old, axis=1), rep.shift_mm, atol=1e-4)


def test_a_biased_detector_moves_the_points_by_its_bias(default_model):
    """A detector that puts every point 4 px too low: the calibrated points move down the face
    (−y on the mean face) by about 4 px worth of millimetres — the bias is measured, not kept."""
    detect, _ = _truthful_detector(default_model, PHOTOS, 3, YAW, SIZE)

    def low(image):
        ((box, pts),) = detect(image)
        return [(box, pts + (0.0, 4.0))]

    emb, rep = cal.calibrate_embedding(default_model, photos=PHOTOS, seed=3, max_yaw=YAW, size=SIZE,
                                       detect=low, min_samples=3, points=range(27, 36))  # the nose
    tmpl = default_model.v_template.astype(np.float64)
    new = (tmpl[default_model.faces[emb.static_faces]] * np.asarray(emb.static_bary)[..., None]).sum(1)
    with torch.no_grad():
        old = default_model.landmarks68(batch_size=1)[0].double().numpy()
    dy = (new - old)[27:36, 1]
    assert (dy < -2.0).all() and (dy > -9.0).all()  # 4 px ≈ 4–6 mm at these distances
    others = [k for k in range(68) if not 27 <= k < 36]
    assert (rep.shift_mm[others] < 1e-4).all() and (rep.samples[others] == 0).all()


def test_the_calibration_is_deterministic_for_a_seed(default_model):
    def run(seed):
        detect, _ = _truthful_detector(default_model, 3, seed, YAW, SIZE)
        return cal.calibrate_embedding(default_model, photos=3, seed=seed, max_yaw=YAW, size=SIZE,
                                       min_samples=2, detect=detect)

    (a, rep_a), (b, rep_b) = run(8), run(8)
    np.testing.assert_array_equal(a.static_faces, b.static_faces)
    np.testing.assert_array_equal(a.static_bary, b.static_bary)
    np.testing.assert_array_equal(rep_a.shift_mm, rep_b.shift_mm)
    c, _ = run(9)
    assert not np.array_equal(a.static_bary, c.static_bary)  # other renders, other samples


def test_too_few_samples_keep_the_models_own_points(default_model):
    detect, _ = _truthful_detector(default_model, 2, 1, YAW, SIZE)
    emb, rep = cal.calibrate_embedding(default_model, photos=2, seed=1, max_yaw=YAW, size=SIZE,
                                       detect=detect, min_samples=3)
    own = default_model._landmarks68_points()
    assert rep.found == 2 and (rep.samples <= 2).all()
    np.testing.assert_array_equal(emb.static_faces, own.faces)
    np.testing.assert_array_equal(emb.static_bary, own.bary)
    assert (rep.spread_mm == 0).all()


def test_a_model_without_an_embedding_cannot_be_calibrated(default_model, monkeypatch):
    monkeypatch.setattr(default_model, "landmarks", None)
    with pytest.raises(LandmarkError, match="68-point embedding"):
        cal.calibrate_embedding(default_model, photos=1, detect=lambda image: [])


def test_dlib_puts_the_brows_on_a_textured_face_where_the_source_annotates_them(default_model):
    """The real dlib on textured renders (brows painted by the source's annotation) puts its brow
    points on them, by the source's brow line; on untextured renders it guesses them lower, on
    the brow ridge's shading — what the shipped embedding was calibrated on. Deterministic."""
    from skullsearch.encoder.render import anatomical_landmarks

    brows = list(range(17, 27))

    def brow_points(texture):
        emb, rep = cal.calibrate_embedding(default_model, photos=8, seed=2, points=brows,
                                           min_samples=3, texture=texture)
        tmpl = default_model.v_template.astype(np.float64)
        pts = (tmpl[default_model.faces[emb.static_faces]] * np.asarray(emb.static_bary)[..., None]).sum(1)
        return pts[brows], rep, emb

    src = anatomical_landmarks(default_model)[brows]
    bare, _, _ = brow_points(False)
    painted, rep, emb = brow_points(True)
    assert rep.found >= 6 and "textured renders (seed 2" in emb.source
    assert np.median(painted[:, 1] - bare[:, 1]) > 3.0  # higher on the face, by millimetres
    assert np.median(np.abs(painted[:, 1] - src[:, 1])) < np.median(np.abs(bare[:, 1] - src[:, 1]))
    again, _, _ = brow_points(True)
    np.testing.assert_array_equal(again, painted)
