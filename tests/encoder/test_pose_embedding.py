"""Pose-conditioned landmark embeddings: a rig of 68 points per yaw bin, each photo fitted with
its own bin's points (chosen from its camera's yaw after the rigid stage), the calibration that
measures them per bin, their file and lookup, and the settings that switch them on."""

import numpy as np
import pytest
import torch
from torch_threads import one_thread

from skullsearch.encoder import code as code_layout
from skullsearch.encoder import levenberg as lev
from skullsearch.encoder.embeddings import PosePoints, pose_file_name, pose_points, save_pose_embedding
from skullsearch.encoder.fitting import (
    JAW,
    MARCHING,
    FitConfig,
    LandmarkRig,
    camera_rotation,
    fit_energy,
    fit_landmarks,
    model_landmarks_px,
    rig_for,
)
from skullsearch.errors import LandmarkError, SkullsearchError

EDGES = np.array([-90.0, -12.0, 12.0, 90.0])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def bins3(default_model):
    """Three yaw bins: the frontal one the model's own points, the turned ones its inner points
    nose points moved 3 mm (to the subject's left for yaw < −12°, right for > 12°) and snapped to the skin,
    as a detector that drifts with the pose would place them."""
    from skullsearch.encoder.annotate import _skin, surface_points

    m = default_model
    tmpl = m.v_template.astype(np.float64)
    skin, skin_faces = _skin(tmpl, m.faces)
    own = m._landmarks68_points()
    with torch.no_grad():
        pos = m.landmarks68(batch_size=1)[0].double().numpy()
    faces, bary = [], []
    for dx in (3.0, 0.0, -3.0):
        if dx == 0.0:
            faces.append(own.faces.copy())
            bary.append(own.bary.copy())
            continue
        moved = pos.copy()
        moved[27:36, 0] += dx  # the nose drifts sideways (the rest of the face does not)
        tri, b = surface_points(tmpl, m.faces, skin, skin_faces, moved)
        tri[:17], b[:17] = own.faces[:17], own.bary[:17]  # the jaw line marches: not per bin
        faces.append(tri)
        bary.append(b)
    return PosePoints(EDGES, np.concatenate(faces).astype(np.int64),
                      np.concatenate(bary).astype(np.float32))


@pytest.fixture(scope="module")
def pose_rig(default_model, bins3):
    return LandmarkRig(default_model, 90, 90, points=bins3, yaw_edges=bins3.yaw_edges)


def _bin_rig(model, bins3, i):
    sl = slice(68 * i, 68 * i + 68)
    return LandmarkRig(model, 90, 90, points=PosePoints(None, bins3.faces[sl], bins3.bary[sl]))


def test_a_pose_rig_has_its_bins_and_the_frontal_one(pose_rig):
    assert (pose_rig.n_bins, pose_rig.center_bin, pose_rig.n_points) == (3, 1, 204)
    yaws = (-40, -12.5, -11, 0, 11.9, 12, 40)
    rot = camera_rotation(torch.tensor(np.radians([[0.0, y, 0.0] for y in yaws]), dtype=torch.float32))
    assert pose_rig.bins_of(rot).tolist() == [0, 0, 1, 1, 1, 2, 2]
    # a pitched or rolled camera: the yaw alone decides
    tilted = camera_rotation(torch.tensor(np.radians([[15.0, 30.0, 0.0], [0.0, -30.0, 8.0]]),
                                          dtype=torch.float32))
    assert pose_rig.bins_of(tilted).tolist() == [2, 0]


def test_a_rig_of_one_bin_has_no_bins(default_model):
    rig = LandmarkRig(default_model, 90, 90)
    assert rig.n_bins == 1 and rig.center_bin == 0 and rig.bins_of(torch.eye(3)[None]) is None


def test_a_pose_rig_needs_68_marching_points_per_bin(default_model, bins3):
    with pytest.raises(ValueError, match="68 marching landmarks per yaw bin"):
        LandmarkRig(default_model, 90, 90, points=PosePoints(None, bins3.faces[:136], bins3.bary[:136]),
                    yaw_edges=EDGES)
    with pytest.raises(ValueError, match="68 marching landmarks per yaw bin"):
        LandmarkRig(default_model, 90, 90, points=bins3, yaw_edges=EDGES, marching=False)


def test_effective_rows_read_each_faces_bin_and_the_candidates_after_every_bin(pose_rig):
    t = lev.PointTables.of(pose_rig)
    assert t.n_static == 204
    pick = torch.tensor([[0] * 14, [3] * 14])
    rows = lev.effective_rows(t, pick, MARCHING, torch.tensor([2, 0]))
    assert rows[0, 17:].tolist() == list(range(136 + 17, 204))
    assert rows[1, 17:].tolist() == list(range(17, 68))
    m = np.arange(len(MARCHING))
    assert rows[0, list(MARCHING)].tolist() == (204 + m * t.n_cand).tolist()
    assert rows[1, list(MARCHING)].tolist() == (204 + m * t.n_cand + 3).tolist()
    plain = lev.effective_rows(t, pick, MARCHING)  # no bins: the first 68
    assert plain[0, 17:].tolist() == list(range(17, 68))


def _turned_photos(model, bins3, seed=3, one_face=False):
    """Noise-free landmarks of 6 faces (or one face, 6 times) at yaws −30 … 30°, each made with
    its own bin's points."""
    rng = np.random.default_rng(seed)
    yaws = np.array([-30.0, -20.0, 0.0, 5.0, 20.0, 30.0])
    n = len(yaws)
    shape = torch.tensor(rng.standard_normal((1 if one_face else n, 90)) * model.shape_std[:90] * 0.7,
                         dtype=torch.float32).expand(n, -1)
    rot = camera_rotation(torch.tensor(np.radians(np.c_[rng.uniform(-5, 5, n), yaws, np.zeros(n)]),
                                       dtype=torch.float32))
    trans = torch.tensor(np.c_[rng.normal(0, 10, (n, 2)), rng.uniform(500, 700, n)], dtype=torch.float32)
    pose = torch.zeros(n, 3 * model.n_joints)
    pose[:, 3 * JAW] = 0.05
    expr = torch.zeros(n, model.n_expression)
    uv = np.zeros((n, 68, 2))
    which = np.searchsorted(EDGES[1:-1], yaws, side="right")
    with torch.no_grad():
        for i in range(3):
            sel = which == i
            rig = _bin_rig(model, bins3, i)
            uv[sel] = model_landmarks_px(rig, shape[sel], expr[sel], pose[sel], rot[sel], trans[sel],
                                         torch.full((int(sel.sum()),), 614.4),
                                         torch.full((int(sel.sum()), 2), 256.0)).numpy()
    return uv, shape.numpy(), np.full((n, 2), 512.0)


def test_each_photo_is_fitted_with_its_own_bins_points(default_model, bins3, pose_rig):
    """One face photographed at six yaws by a detector whose nose points drift with the pose:
    the pose rig fits every photo to the pixel and gives the turned photos the frontal photos'
    face; the frontal embedding alone reads the drift as a different nose."""
    from skullsearch.encoder.face_model import face_region

    m = default_model
    uv, _, sizes = _turned_photos(m, bins3, one_face=True)
    region = face_region(m)
    turned = np.abs([-30.0, -20.0, 0.0, 5.0, 20.0, 30.0]) > 12

    def disagreement(res):  # mean distance (mm) of the turned photos' faces from the frontal ones'
        with torch.no_grad():
            v = m.vertices(shape=torch.as_tensor(code_layout.split(res.codes).shape[:, :90]))[:, region]
        return float((v[turned] - v[~turned].mean(0)).norm(dim=-1).mean())

    posed = fit_landmarks(m, uv, sizes, rig=pose_rig)
    static = fit_landmarks(m, uv, sizes, rig=_bin_rig(m, bins3, 1))
    assert posed.residual_px.max() < 1.0, posed.residual_px
    assert static.residual_px[turned].mean() > posed.residual_px[turned].mean()
    assert disagreement(posed) < 0.7 * disagreement(static), (disagreement(posed), disagreement(static))
    # its energy is the objective: the same bins read from the fitted cameras
    e = fit_energy(m, uv, sizes, posed.codes, rig=pose_rig)
    assert np.all(e[turned] < fit_energy(m, uv, sizes, static.codes, rig=pose_rig)[turned])


def test_identical_bins_fit_as_the_one_embedding(default_model, bins3):
    """A pose rig whose bins all hold the frontal points is the plain fit (to float32 rounding)."""
    m = default_model
    same = PosePoints(EDGES, np.tile(bins3.faces[68:136], 3), np.tile(bins3.bary[68:136], (3, 1)))
    uv, _, sizes = _turned_photos(m, bins3, seed=5)
    a = fit_landmarks(m, uv, sizes, rig=LandmarkRig(m, 90, 90, points=same, yaw_edges=EDGES))
    b = fit_landmarks(m, uv, sizes, rig=_bin_rig(m, bins3, 1))
    np.testing.assert_allclose(a.codes, b.codes, atol=2e-3)


def test_the_adam_path_refuses_a_pose_rig(default_model, bins3, pose_rig):
    uv, _, sizes = _turned_photos(default_model, bins3)
    with pytest.raises(SkullsearchError, match="Levenberg-Marquardt"):
        fit_landmarks(default_model, uv[:1], sizes[:1], rig=pose_rig, config=FitConfig(method="adam"))


# ---------------------------------------------------------------- the file and its lookup
def _save(path, model, bins3, n=3):
    from skullsearch.encoder.calibrate import PoseEmbedding

    pe = PoseEmbedding(EDGES, bins3.faces.reshape(n, 68), bins3.bary.reshape(n, 68, 3),
                       np.array([5, 9, 4]), np.zeros((n, 68)), "test")
    save_pose_embedding(path, model, "dlib", pe)


def test_rig_for_uses_the_pose_file_when_asked_and_there_is_one(default_model, bins3, tmp_path, monkeypatch):
    from skullsearch.encoder import embeddings

    m = default_model
    # (the package ships one for the default model: look in this test's folder only)
    monkeypatch.setattr(embeddings, "pose_paths", lambda model, det: [tmp_path / pose_file_name(model, det)])
    for k in ("_pose_points", "_rig_cache"):
        monkeypatch.setitem(m.__dict__, k, {})
    assert rig_for(m, pose=True).n_bins == 1  # no file: the static embedding
    m.__dict__["_pose_points"].clear()
    _save(tmp_path / pose_file_name(m, "dlib"), m, bins3)
    got = pose_points(m, None)
    np.testing.assert_array_equal(got.faces, bins3.faces)
    np.testing.assert_array_equal(got.yaw_edges, EDGES)
    rig = rig_for(m, pose=True)
    assert rig.n_bins == 3 and rig is rig_for(m, detector="dlib", pose=True)
    assert rig_for(m).n_bins == 1  # off: the static embedding
    assert rig_for(m, detector="mesh", pose=True).marching == ()  # the mesh's points are fixed


def test_a_pose_file_of_another_model_or_shape_says_calibrate_again(default_model, bins3, tmp_path,
                                                                     monkeypatch):
    from skullsearch.encoder import embeddings

    m = default_model
    monkeypatch.setattr(embeddings, "pose_paths", lambda model, det: [tmp_path / pose_file_name(model, det)])
    path = tmp_path / pose_file_name(m, "dlib")
    _save(path, m, bins3)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(path, **{**arrays, "model_fingerprint": "0" * 64})
    with pytest.raises(LandmarkError, match="another face model"):
        pose_points(m, "dlib")
    np.savez(path, **{**arrays, "faces": arrays["faces"][:, :60]})
    with pytest.raises(LandmarkError, match="68 points per yaw bin"):
        pose_points(m, "dlib")


def test_the_encoder_fingerprint_changes_only_when_the_pose_embedding_is_on():
    from skullsearch.index.ingest import encoder_fingerprint

    base = encoder_fingerprint(FitConfig(), "dlib")
    assert encoder_fingerprint(FitConfig(pose_embedding=False), "dlib") == base
    assert encoder_fingerprint(FitConfig(pose_embedding=True), "dlib") != base


# ---------------------------------------------------------------- the calibration
@pytest.mark.slow
def test_calibration_per_bin_on_real_renders_through_dlib(default_model):
    """A handful of real renders through dlib: each bin's points are medians of its renders,
    a bin with too few samples keeps the all-pose point (shift 0), and the result is
    deterministic for a seed."""
    from skullsearch.encoder.calibrate import calibrate_pose_embedding

    pe = calibrate_pose_embedding(default_model, photos=10, seed=1, size=320, min_samples=3)
    assert pe.faces.shape == (5, 68) and pe.bary.shape == (5, 68, 3) and pe.shift_mm.shape == (5, 68)
    assert 0 < pe.found.sum() <= 10
    np.testing.assert_array_equal(pe.shift_mm[:, :17], 0)  # the jaw line is not calibrated
    few = pe.found < 3
    assert np.all(pe.shift_mm[few] == 0)
    again = calibrate_pose_embedding(default_model, photos=10, seed=1, size=320, min_samples=3)
    np.testing.assert_array_equal(again.faces, pe.faces)
    huge = calibrate_pose_embedding(default_model, photos=10, seed=1, size=320, min_samples=1000)
    np.testing.assert_array_equal(huge.shift_mm, 0)  # every bin: the all-pose embedding
    with pytest.raises(ValueError, match="rise through 0"):
        calibrate_pose_embedding(default_model, photos=1, yaw_edges=(5.0, 10.0, 20.0))


def test_projecting_a_pose_rig_directly_is_refused(pose_rig):
    z = torch.zeros(1, 90)
    with pytest.raises(ValueError, match="68 landmarks per yaw bin"):
        model_landmarks_px(pose_rig, z, z, torch.zeros(1, 3 * pose_rig.n_joints), torch.eye(3)[None],
                           torch.tensor([[0.0, 0.0, 600.0]]), torch.full((1,), 600.0), torch.zeros(1, 2))


def test_the_default_model_ships_dlibs_pose_embedding(default_model):
    from skullsearch.encoder.embeddings import pose_paths

    assert pose_paths(default_model, "dlib")[0].exists()  # in the package, not the cache
    pp = pose_points(default_model, "dlib")
    assert pp is not None and pp.faces.shape == (5 * 68,)
    assert list(pp.yaw_edges) == [-90.0, -25.0, -10.0, 10.0, 25.0, 90.0]
    own = default_model._landmarks68_points()
    for i in range(5):  # the jaw line is the model's own in every bin (it marches)
        np.testing.assert_array_equal(pp.faces[68 * i: 68 * i + 17], own.faces[:17])
