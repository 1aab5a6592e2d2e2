"""The Levenberg-Marquardt fit: analytic Jacobians against autograd, the shared-shape solve
against the dense joint system, and the fit against the Adam schedule it replaces."""

import numpy as np
import pytest
import torch
from landmark_photos import landmark_photos
from torch_threads import one_thread

from skullsearch.encoder import code as code_layout
from skullsearch.encoder import levenberg as lev
from skullsearch.encoder.fitting import (
    JAW,
    MARCHING,
    FitConfig,
    LandmarkRig,
    _edge_lengths,
    camera_rotation,
    delaunay_edges,
    fit_energy,
    fit_landmarks,
    model_landmarks_px,
    project,
)
from skullsearch.errors import SkullsearchError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The fits here are small: one thread, as ingest runs them (two threads on a loaded 2-core
    machine spend most of their time waiting for each other)."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def rig64(default_model):
    return LandmarkRig(default_model, 90, 90, dtype=torch.float64)


def _state(rig, b, seed):
    g = torch.Generator().manual_seed(seed)
    std = torch.cat([rig.expr_std, rig.shape_std])  # the tables' coefficient order [δ, α]
    c = torch.randn(b, len(std), generator=g, dtype=rig.v0.dtype) * std * 0.5
    jaw = torch.randn(b, 3, generator=g, dtype=rig.v0.dtype) * 0.2
    pick = torch.randint(0, rig.cand_local.shape[1], (b, len(MARCHING)), generator=g)
    return c, jaw, pick


def _per_face(jac, b):
    """autograd's (out..., b, in) Jacobian of a sum over faces → (b, out..., in)."""
    return torch.stack([jac[..., i, :] for i in range(b)])


@pytest.mark.parametrize("posedirs", [False, True])
def test_landmark_jacobians_equal_autograd(rig64, posedirs):
    rig = rig64
    if posedirs:  # FLAME files have pose-corrective blend shapes, the open model does not
        rig = LandmarkRig(rig64.model, 90, 90, dtype=torch.float64)
        g = torch.Generator().manual_seed(5)
        rig.posedirs = torch.randn(9 * (rig.n_joints - 1), 3 * len(rig.v0), generator=g,
                                   dtype=torch.float64)
        rig.jaw_posedirs = rig.posedirs[9 * (JAW - 1): 9 * JAW].contiguous()
    t = lev.PointTables.of(rig)
    b, e = 3, rig.n_expression
    c, jaw, pick = _state(rig, b, 0)
    pts, parts = t.forward(c, jaw)
    # the tables' points are the rig's jaw-skinned points
    lm, cand = rig.points_jaw(c[:, e:], c[:, :e], jaw)
    assert torch.allclose(pts[:, :68], lm, atol=1e-9)
    assert torch.allclose(pts[:, 68:].reshape(cand.shape), cand, atol=1e-9)
    rows = lev.effective_rows(t, pick, MARCHING)
    bi = torch.arange(b)[:, None]

    def landmarks(x):  # x = [jaw, c] → (b, 68, 3) summed over faces
        return t.forward(x[:, 3:], x[:, :3])[0][bi, rows].sum(0)

    want = _per_face(torch.autograd.functional.jacobian(landmarks, torch.cat([jaw, c], 1)), b)
    got = lev.landmark_jacobian(t, c, jaw, parts, rows)
    assert got.shape == (b, 68, 3, 3 + c.shape[1])
    assert (got - want).abs().max() < 1e-9 * want.abs().max()

    # the camera: rotation (right Jacobian of SO(3)), translation, and the moving point
    g = torch.Generator().manual_seed(1)
    rotvec = torch.randn(b, 3, generator=g, dtype=torch.float64) * 0.4
    trans = torch.tensor([[5.0, -20.0, 600.0]], dtype=torch.float64).expand(b, 3)
    focal = torch.full((b,), 600.0, dtype=torch.float64)
    center = torch.full((b, 2), 256.0, dtype=torch.float64)
    pe = pts[bi, rows]
    m, jcam = lev.projection_jacobian(pe, camera_rotation(rotvec), rotvec, trans, focal)
    cam = _per_face(torch.autograd.functional.jacobian(
        lambda y: project(pe, camera_rotation(y[:, :3]), y[:, 3:], focal, center).sum(0),
        torch.cat([rotvec, trans], 1)), b)
    assert (jcam - cam).abs().max() < 1e-9 * cam.abs().max()
    # the chained projection Jacobian of the fit equals m · dL
    juv = lev.landmark_uv_jacobian(t, jaw, parts, rows, m, MARCHING)
    assert (juv - m @ got).abs().max() < 1e-9 * juv.abs().max()
    chained = _per_face(torch.autograd.functional.jacobian(
        lambda x: project(t.forward(x[:, 3:], x[:, :3])[0][bi, rows], camera_rotation(rotvec), trans,
                          focal, center).sum(0), torch.cat([jaw, c], 1)), b)
    assert (juv - chained).abs().max() < 1e-8 * chained.abs().max()


def test_edge_metric_gives_the_normal_equations_of_the_residuals():
    """H = J_uvᵀ M J_uv and g = J_uvᵀ q equal JᵀJ and Jᵀr of the stacked residual rows, with
    each landmark coordinate and edge weighed (FitConfig.landmark_weights)."""
    g = torch.Generator().manual_seed(0)
    b, n = 2, 7
    lm = torch.rand(b, 68, 2, generator=g, dtype=torch.float64) * 100
    uv = lm + torch.randn(b, 68, 2, generator=g, dtype=torch.float64)
    e_np, m_np = delaunay_edges(lm.numpy())
    m_np[1, -5:] = False  # padded edges do not count
    edges, emask = torch.as_tensor(e_np), torch.as_tensor(m_np, dtype=torch.float64)
    obs, fit = _edge_lengths(lm, edges), _edge_lengths(uv, edges)
    k_lmk = torch.tensor([0.3, 0.2], dtype=torch.float64)
    k_edge = torch.tensor([0.5, 0.7], dtype=torch.float64)
    w_lmk = 0.2 + torch.rand(b, 136, generator=g, dtype=torch.float64)  # per coordinate
    w_edge = emask * (0.2 + torch.rand(emask.shape, generator=g, dtype=torch.float64))
    juv = torch.randn(b, 136, n, generator=g, dtype=torch.float64)
    k2 = k_lmk[:, None] ** 2 * w_lmk
    metric, q = lev.edge_metric(uv, edges, w_edge, k2, k_edge, obs, fit)
    q = q + k2 * (uv - lm).reshape(b, -1)

    def residuals(x):  # uv moving along juv
        u = uv + (juv @ x[..., None])[..., 0].reshape(b, 68, 2)
        r_l = k_lmk[:, None] * w_lmk.sqrt() * (u - lm).reshape(b, -1)
        r_e = k_edge[:, None] * w_edge.sqrt() * (obs - _edge_lengths(u, edges))
        return torch.cat([r_l, r_e], 1)

    x0 = torch.zeros(b, n, dtype=torch.float64)
    jac = _per_face(torch.autograd.functional.jacobian(lambda x: residuals(x).sum(0), x0), b)
    r = residuals(x0)
    assert torch.allclose(juv.transpose(1, 2) @ metric @ juv, jac.transpose(1, 2) @ jac, atol=1e-9)
    assert torch.allclose(juv.transpose(1, 2) @ q[..., None], jac.transpose(1, 2) @ r[..., None], atol=1e-9)


def test_shared_shape_step_is_the_joint_solve():
    """Faces 0-2 one person, 3 alone, 4-5 another: the Schur-complement step equals the damped
    solve of the whole joint system (shared columns counted once per person)."""
    g = torch.Generator().manual_seed(0)
    b, n_local, n_shared = 6, 4, 3
    n = n_local + n_shared
    x = torch.randn(b, 20, n, generator=g, dtype=torch.float64)
    h = x.transpose(1, 2) @ x + torch.eye(n, dtype=torch.float64)
    grad = torch.randn(b, n, generator=g, dtype=torch.float64)
    pidx = torch.tensor([0, 0, 0, 1, 2, 2])
    lam = torch.tensor([1e-3, 0.1, 1.0], dtype=torch.float64)
    dl, dg = lev.solve_step(h, grad, lam, pidx, 3, n_local)
    # the joint system: each face's own columns, then each person's shared ones
    size = b * n_local + 3 * n_shared
    big, rhs = torch.zeros(size, size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
    for i in range(b):
        cols = list(range(i * n_local, (i + 1) * n_local)) + [
            b * n_local + int(pidx[i]) * n_shared + k for k in range(n_shared)]
        big[np.ix_(cols, cols)] += h[i]
        rhs[cols] += grad[i]
    lam_col = torch.cat([lam[pidx].repeat_interleave(n_local), lam.repeat_interleave(n_shared)])
    big += torch.diag(lam_col * big.diagonal())
    want = -torch.linalg.solve(big, rhs)
    assert torch.allclose(dl.reshape(-1), want[: b * n_local], atol=1e-8)
    assert torch.allclose(dg.reshape(-1), want[b * n_local:], atol=1e-8)
    # every face its own person: the same as one damped solve per face
    dl1, dg1 = lev.solve_step(h, grad, lam[[0, 0, 0, 1, 2, 2]], torch.arange(b), b, n_local)
    damped = h + torch.diag_embed(lam[[0, 0, 0, 1, 2, 2], None] * h.diagonal(dim1=1, dim2=2))
    direct = -torch.linalg.solve(damped, grad[..., None])[..., 0]
    assert torch.allclose(torch.cat([dl1, dg1], 1), direct, atol=1e-8)


def test_fit_energy_is_the_objective_on_the_general_skinning(default_model):
    """fit_energy (the LM's energy on the jaw-only tables) equals the objective written out on
    the general LBS path of the rig."""
    rig = LandmarkRig(default_model, 90, 90)
    shape, uv, size = landmark_photos(default_model, rig, 4, seed=1)
    res = fit_landmarks(default_model, uv, size, rig=rig)
    p = code_layout.split(torch.as_tensor(res.codes))
    cfg = FitConfig()
    with torch.no_grad():
        fit = model_landmarks_px(rig, p.shape, p.expression[:, : rig.n_expression],
                                 p.pose[:, : 3 * rig.n_joints], camera_rotation(p.cam_rot),
                                 p.cam_trans, torch.full((4,), 614.4), torch.full((4, 2), 256.0))
    lm = torch.as_tensor(uv, dtype=torch.float32)
    s2 = (lm[:, 36:42].mean(1) - lm[:, 42:48].mean(1)).norm(dim=-1) ** 2
    e_np, m_np = delaunay_edges(uv)
    edges, emask = torch.as_tensor(e_np), torch.as_tensor(m_np, dtype=torch.float32)
    edge = (((_edge_lengths(lm, edges) - _edge_lengths(fit, edges)) ** 2) * emask).sum(1) / emask.sum(1)
    want = (cfg.w_landmark * ((fit - lm) ** 2).sum(-1).mean(1) / s2 + cfg.w_edge * edge / s2
            + cfg.w_shape * ((p.shape / rig.shape_std) ** 2).sum(1)
            + cfg.w_expression * ((p.expression[:, : rig.n_expression] / rig.expr_std) ** 2).sum(1)
            + cfg.w_pose * (p.pose[:, 3 * JAW: 3 * JAW + 3] ** 2).sum(1))
    got = fit_energy(default_model, uv, size, res.codes, rig=rig)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4)
    assert abs(res.history[-1] - got.mean()) < 1e-6 * got.mean() + 1e-9  # the fit's own record


def test_lm_reaches_a_lower_energy_than_the_adam_schedule(default_model):
    rig = LandmarkRig(default_model, 90, 90)
    _, uv, size = landmark_photos(default_model, rig, 8, seed=2)
    lm = fit_landmarks(default_model, uv, size, rig=rig)
    adam = fit_landmarks(default_model, uv, size, rig=rig, config=FitConfig(method="adam"))
    e_lm = fit_energy(default_model, uv, size, lm.codes, rig=rig)
    e_adam = fit_energy(default_model, uv, size, adam.codes, rig=rig)
    assert (e_lm <= e_adam * 1.001).all(), (e_lm, e_adam)
    assert e_lm.mean() < e_adam.mean()
    # the energy only ever went down (steps that raise it are rejected)
    assert np.all(np.diff(lm.history) <= 1e-9)


def test_the_default_iterations_converge(default_model):
    """Every face ends within 0.1 % of the energy that four times the iterations reach (the
    silhouette choice, which can flip between steps, does not leave faces behind)."""
    rig = LandmarkRig(default_model, 90, 90)
    _, uv, size = landmark_photos(default_model, rig, 24, seed=5)
    cfg = FitConfig()
    short = fit_landmarks(default_model, uv, size, rig=rig)
    long = fit_landmarks(default_model, uv, size, rig=rig, config=FitConfig(lm_iters=4 * cfg.lm_iters))
    e_short = fit_energy(default_model, uv, size, short.codes, rig=rig)
    e_long = fit_energy(default_model, uv, size, long.codes, rig=rig)
    assert (e_short <= e_long * 1.005).all() and e_short.mean() <= e_long.mean() * 1.001, e_short / e_long


def test_shared_expression_and_shape_per_person(default_model):
    rig = LandmarkRig(default_model, 90, 90)
    person = np.array([7, 3, 7, 3])
    _, uv, size = landmark_photos(default_model, rig, 4, seed=3, same=person % 2)
    res = fit_landmarks(default_model, uv, size, person=person, rig=rig,
                        config=FitConfig(share_expression=True))
    p = code_layout.split(res.codes)
    np.testing.assert_array_equal(p.shape[0], p.shape[2])
    np.testing.assert_array_equal(p.expression[1], p.expression[3])
    assert not np.allclose(p.shape[0], p.shape[1])
    assert res.residual_px.max() < 2.0  # px: 1 px noise per coordinate


def test_unknown_method_says_what_to_use(default_model):
    rig = LandmarkRig(default_model, 90, 90)
    _, uv, size = landmark_photos(default_model, rig, 1, seed=4)
    with pytest.raises(SkullsearchError, match="'lm' or 'adam'"):
        fit_landmarks(default_model, uv, size, rig=rig, config=FitConfig(method="sgd"))


def test_bad_landmark_batches_are_clear_errors_and_an_empty_batch_is_empty(default_model):
    empty = fit_landmarks(default_model, np.zeros((0, 68, 2)), np.zeros((0, 2)))
    assert empty.codes.shape == (0, 228) and empty.residual_px.shape == (0,)
    lm = np.random.default_rng(0).uniform(100, 300, size=(3, 68, 2))
    lm[1, 5, 0] = np.nan
    with pytest.raises(SkullsearchError, match=r"faces \[1\] have NaN"):
        fit_landmarks(default_model, lm, np.full((3, 2), 400.0))
    with pytest.raises(SkullsearchError, match="68, 2"):
        fit_landmarks(default_model, lm[:, :60], np.full((3, 2), 400.0))


def test_a_surface_contour_rig_fits_its_jaw_line_as_fixed_points(default_model):
    """With marching off (a detector whose contour is fixed on the surface) the fit's landmarks
    are the static embedding's, jaw line included, and landmarks made that way are fitted back."""
    rig = LandmarkRig(default_model, 90, 90, marching=False)
    assert rig.marching == ()
    rng = np.random.default_rng(4)
    n = 3
    shape = torch.tensor(rng.standard_normal((n, 90)) * default_model.shape_std * 0.5, dtype=torch.float32)
    rot = torch.tensor(np.deg2rad([[0.0, y, 0.0] for y in (-25.0, 0.0, 25.0)]), dtype=torch.float32)
    trans = torch.tensor([[0.0, -30.0, 600.0]] * n)
    with torch.no_grad():
        expr = torch.zeros(n, rig.n_expression)
        uv = model_landmarks_px(rig, shape, expr, torch.zeros(n, 3 * default_model.n_joints),
                                camera_rotation(rot), trans, torch.full((n,), 614.4),
                                torch.full((n, 2), 256.0)).numpy()
        static = project(rig.points(shape, expr, torch.zeros(n, 3 * default_model.n_joints))[0],
                         camera_rotation(rot), trans, torch.full((n,), 614.4), torch.full((n, 2), 256.0))
    np.testing.assert_allclose(uv, static.numpy())  # no silhouette choice
    res = fit_landmarks(default_model, uv, np.full((n, 2), 512.0), rig=rig)
    assert res.residual_px.max() < 0.5
    marching = fit_landmarks(default_model, uv, np.full((n, 2), 512.0),
                             rig=LandmarkRig(default_model, 90, 90))
    assert res.residual_px.mean() < marching.residual_px.mean()


# ---------------------------------------------------------------- a dense detector's points
@pytest.fixture(scope="module")
def dense_points(default_model):
    """K = 40 surface points spread over the front of the skin (as a dense calibration gives)."""
    from skullsearch.encoder.calibrate import skin_triangles
    from skullsearch.encoder.embeddings import DetectorPoints

    rng = np.random.default_rng(2)
    skin = np.flatnonzero(skin_triangles(default_model))
    front = skin[default_model.v_template[default_model.faces[skin]].mean(1)[:, 2]
                 > np.quantile(default_model.v_template[:, 2], 0.8)]
    tri = rng.choice(front, 40, replace=False)
    bary = rng.dirichlet(np.ones(3), 40).astype(np.float32)
    return DetectorPoints(tri, bary)


@pytest.fixture(scope="module")
def dense_rig(default_model, dense_points):
    return LandmarkRig(default_model, 90, 90, points=dense_points, marching=False)


def test_a_dense_rig_has_k_points_and_jacobians_equal_autograd(default_model, dense_points):
    rig = LandmarkRig(default_model, 90, 90, dtype=torch.float64, marching=False, points=dense_points)
    assert rig.n_points == 40 and rig.cand_local.size == 0
    t = lev.PointTables.of(rig)
    b, e = 2, rig.n_expression
    c, jaw, _ = _state(rig, b, 3)
    pts, parts = t.forward(c, jaw)
    assert pts.shape == (b, 40, 3)
    lm, _ = rig.points_jaw(c[:, e:], c[:, :e], jaw)
    assert torch.allclose(pts, lm, atol=1e-9)
    rows = torch.arange(40).expand(b, 40)
    g = torch.Generator().manual_seed(1)
    rotvec = torch.randn(b, 3, generator=g, dtype=torch.float64) * 0.4
    trans = torch.tensor([[5.0, -20.0, 600.0]], dtype=torch.float64).expand(b, 3)
    focal = torch.full((b,), 600.0, dtype=torch.float64)
    center = torch.full((b, 2), 256.0, dtype=torch.float64)
    m, _ = lev.projection_jacobian(pts, camera_rotation(rotvec), rotvec, trans, focal)
    juv = lev.landmark_uv_jacobian(t, jaw, parts, rows, m, ())
    assert juv.shape == (b, 40, 2, 3 + c.shape[1])
    chained = _per_face(torch.autograd.functional.jacobian(
        lambda x: project(t.forward(x[:, 3:], x[:, :3])[0], camera_rotation(rotvec), trans,
                          focal, center).sum(0), torch.cat([jaw, c], 1)), b)
    assert (juv - chained).abs().max() < 1e-8 * chained.abs().max()
    with pytest.raises(ValueError, match="68 iBUG"):
        LandmarkRig(default_model, 90, 90, points=dense_points, marching=True)


def _project_faces(model, rig, dense_rig, n, seed):
    """Exact 68 and dense points (px) of n faces from the prior under known cameras, and the
    true shapes."""
    rng = np.random.default_rng(seed)
    shape = torch.tensor(rng.standard_normal((n, 90)) * model.shape_std * 0.8, dtype=torch.float32)
    rest, zero_e = torch.zeros(n, 3 * model.n_joints), torch.zeros(n, rig.n_expression)
    rot = camera_rotation(torch.tensor(rng.uniform(-1, 1, (n, 3)) * np.radians([10.0, 35.0, 5.0]),
                                       dtype=torch.float32))
    trans = torch.tensor(np.c_[rng.normal(0, 10, (n, 2)), rng.uniform(500, 700, n)], dtype=torch.float32)
    focal, center = torch.full((n,), 614.4), torch.full((n, 2), 256.0)
    with torch.no_grad():
        lm = project(rig.points(shape, zero_e, rest)[0], rot, trans, focal, center).numpy()
        dd = project(dense_rig.points(shape, zero_e, rest)[0], rot, trans, focal, center).numpy()
    return lm, dd, shape.numpy()


def test_dense_points_that_follow_the_face_make_the_fit_closer(default_model, dense_rig):
    """Points that follow the face's shape carry identity the 68 do not: with them the fitted
    shape is nearer the truth, and more so with more weight; w_dense = 0 is the 68-point fit
    exactly (the default path)."""
    rig = LandmarkRig(default_model, 90, 90, marching=False)
    lm, dd, truth = _project_faces(default_model, rig, dense_rig, 8, 7)
    sizes = np.full((8, 2), 512.0)

    from skullsearch.encoder.face_model import face_region

    region = face_region(default_model)
    with torch.no_grad():
        true_v = default_model.vertices(shape=torch.as_tensor(truth))[:, region]

    def shape_error(w):  # mean distance (mm) of the fitted neutral face's vertices from the truth
        res = fit_landmarks(default_model, lm, sizes, rig=rig, config=FitConfig(w_dense=w),
                            dense=dd, dense_rig=dense_rig)
        with torch.no_grad():
            fitted = default_model.vertices(shape=torch.as_tensor(code_layout.split(res.codes).shape[:, :90]))
        return float((fitted[:, region] - true_v).norm(dim=-1).mean()), res

    e0, r0 = shape_error(0.0)
    e1, _ = shape_error(1.0)
    e5, r5 = shape_error(5.0)
    assert e5 < e1 < e0
    assert e5 < 0.9 * e0, (e0, e1, e5)
    plain = fit_landmarks(default_model, lm, sizes, rig=rig)
    np.testing.assert_array_equal(r0.codes, plain.codes)
    assert r5.landmarks_px.shape == (8, 68, 2)


def test_dense_points_energy_is_the_objective(default_model, dense_rig):
    """The LM's energy with the dense term is what it minimizes: its fit lowers it below the
    68-point fit's codes evaluated with the dense term."""
    from skullsearch.encoder.fitting import _dense_observations, _LMProblem, _observations

    rig = LandmarkRig(default_model, 90, 90, marching=False)
    lm, dd, _ = _project_faces(default_model, rig, dense_rig, 3, 8)
    dd = dd + np.random.default_rng(0).normal(0, 2.0, dd.shape)
    sizes = np.full((3, 2), 512.0)
    cfg = FitConfig(w_dense=3.0)
    with_dense = fit_landmarks(default_model, lm, sizes, rig=rig, config=cfg, dense=dd, dense_rig=dense_rig)
    without = fit_landmarks(default_model, lm, sizes, rig=rig)
    obs = _observations(lm, sizes, None, cfg)
    prob = _LMProblem(rig, cfg, *obs, torch.arange(3), 3, None, _dense_observations(dd, dense_rig, 3, cfg))

    def energy(codes):
        p = code_layout.split(torch.as_tensor(codes))
        with torch.no_grad():
            return prob.energy(dict(cam_rot=p.cam_rot, trans=p.cam_trans, jaw=p.pose[:, 3 * JAW: 3 * JAW + 3],
                                    shape=p.shape[:, :90], expr=p.expression[:, : rig.n_expression]))[0]

    assert (energy(with_dense.codes) < energy(without.codes)).all()


def test_bad_dense_points_are_clear_errors(default_model, dense_rig):
    lm = np.random.default_rng(0).uniform(100, 300, size=(2, 68, 2))
    sizes = np.full((2, 2), 400.0)
    cfg = FitConfig(w_dense=1.0)
    dd = np.random.default_rng(1).uniform(100, 300, size=(2, 40, 2))
    with pytest.raises(SkullsearchError, match="dense_rig_for"):
        fit_landmarks(default_model, lm, sizes, config=cfg, dense=dd)
    with pytest.raises(SkullsearchError, match=r"\(faces=2, 40, 2\)"):
        fit_landmarks(default_model, lm, sizes, config=cfg, dense=dd[:, :30], dense_rig=dense_rig)
    bad = dd.copy()
    bad[1, 3, 0] = np.inf
    with pytest.raises(SkullsearchError, match="NaN or infinite"):
        fit_landmarks(default_model, lm, sizes, config=cfg, dense=bad, dense_rig=dense_rig)
    with pytest.raises(SkullsearchError, match="Levenberg-Marquardt"):
        fit_landmarks(default_model, lm, sizes, config=FitConfig(w_dense=1.0, method="adam"), dense=dd,
                      dense_rig=dense_rig)
