"""F3DMM-GC: each loss term on hand-made inputs; S = 1 on a reachable target; kept and definite
vertices pull where they should."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from skullsearch.encoder import code as code_layout
from skullsearch.inpaint.fit import FitWeights, f3dmm_gc, loss_terms
from skullsearch.inpaint.reconstruct import to_face_frame
from skullsearch.inpaint.regions import face_regions, revised_vertices
from skullsearch.retrieval.score import ScoreConfig, score
from skullsearch.retrieval.tissue import load_table


def test_each_loss_term_on_hand_made_inputs():
    c, v = 2, 5
    kept_pos = np.random.default_rng(0).normal(size=(c, v, 3))
    verts = kept_pos.copy()
    keep = np.zeros((c, v), bool)
    keep[:, :3] = True
    verts[:, :3] += [2.0, 0.0, 0.0]          # kept vertices 2 mm off: kept = 4 mm²
    verts[:, 3:] += [50.0, 0.0, 0.0]         # free vertices may go anywhere
    target = np.zeros((c, 36, 3))
    points = target.copy()
    present = np.zeros((c, 36), bool)
    present[:, :2] = True
    points[:, :2] += [0.0, 3.0, 4.0]         # two present landmarks 5 mm off: 2 × 25
    points[:, 5] += 100.0                    # an absent one does not count
    d_tgt = np.full((c, v, 3), np.nan)
    d_tgt[:, 3:] = verts[:, 3:] + [0.0, 0.0, 1.0]   # two definite vertices 1 mm off: mean 1
    coeffs = np.array([[1.0, 2.0], [0.0, 3.0]])
    t = loss_terms(verts, points, coeffs, kept_pos, keep, target, present, d_tgt)
    assert np.allclose(t["kept"].numpy(), 4.0)
    assert np.allclose(t["landmarks"].numpy(), 50.0)
    assert np.allclose(t["definite"].numpy(), 1.0)
    assert np.allclose(t["reg"].numpy(), [5.0, 9.0])
    lw = np.ones((c, 36))
    lw[:, 0] = 3.0
    assert np.allclose(loss_terms(verts, points, coeffs, kept_pos, keep, target, present, d_tgt,
                                  landmark_weights=lw)["landmarks"].numpy(), 100.0)
    assert np.allclose(loss_terms(verts, points, coeffs, kept_pos, keep, target, present, None)["definite"]
                       .numpy(), 0.0)
    # torch in, torch out, differentiable
    vt = torch.tensor(verts, requires_grad=True)
    loss_terms(vt, points, coeffs, kept_pos, keep, target, present, d_tgt)["kept"].sum().backward()
    assert torch.allclose(vt.grad[:, :3, 0], torch.full((c, 3), 2 * 2.0 / 3, dtype=torch.float64))


@pytest.fixture(scope="module")
def reachable(default_model):
    """Candidates A (3 faces of the prior) and a target made of another face B's soft-tissue
    points (so the model can reach it) under a rigid motion."""
    m = default_model
    rng = np.random.default_rng(0)
    shapes = rng.standard_normal((4, 90)).astype(np.float32)
    with torch.no_grad():
        pts = m.soft_tissue(shape=torch.as_tensor(shapes)).double().numpy()
    rot = Rotation.random(random_state=1).as_matrix()
    target = pts[0] @ rot.T + [10.0, -50.0, 300.0]
    return shapes[1:], pts[1:], target


def _placed(model, reachable):
    """The reachable case scored and brought into each candidate's face frame: (shapes, pts,
    target, sd, cfg, present, before, revise, tgt_face)."""
    shapes, pts, target = reachable
    sd = load_table().sd
    cfg = ScoreConfig()
    present = np.ones(36, bool)
    before = score(pts, target, present, sd, cfg)
    regions = face_regions(model)
    revise = np.stack([revised_vertices(regions, f, present) for f in before.matched_flags])
    tgt_face = to_face_frame(target, before.scale, before.rotation, before.translation)
    return shapes, pts, target, sd, cfg, present, before, revise, tgt_face


def test_f3dmm_gc_reaches_s_1_on_a_reachable_target(default_model, reachable):
    m = default_model
    shapes, pts, target, sd, cfg, present, before, revise, tgt_face = _placed(m, reachable)
    assert (before.s < 0.9).all()
    # the inverse of the score's transform brings the target back next to each candidate
    assert np.allclose(np.linalg.norm(tgt_face - pts, axis=-1) * before.scale[:, None], before.distance_mm)
    res = f3dmm_gc(m, code_layout.pack(shape=shapes), tgt_face, present, ~revise,
                   eta=cfg.thresholds(sd)[None] / before.scale[:, None],
                   weights=FitWeights(landmark_sigma=False))  # the paper's re-weighting
    after = score(res.points, target, present, sd, cfg)
    assert (after.s == 1.0).all() and res.within_margin.all()
    assert (res.iterations >= 1).all() and all(len(h) == it for h, it in zip(res.losses, res.iterations,
                                                                             strict=True))
    assert all(h[-1]["max_ratio"] <= 0.5 for h in res.losses)
    # the returned code reproduces the returned mesh
    parts = code_layout.split(res.codes)
    with torch.no_grad():
        again = m.vertices(shape=torch.as_tensor(parts.shape[:, :90]),
                           expression=torch.as_tensor(parts.expression[:, : m.n_expression])).numpy()
    assert np.abs(again - res.vertices).max() < 1e-2
    assert np.abs(res.codes[:, code_layout.SLICES["light"]] - 0).max() == 0  # untouched parts stay


def test_the_default_map_fit_weighs_landmarks_by_their_sds(default_model, reachable):
    """The default F3DMM-GC (FitWeights().landmark_sigma): one solve with each landmark weighted by
    1/σ²; it moves the candidates towards the landmarks, less far than the paper's re-weighting
    and with smaller coefficients, and a landmark with a large σ pulls less."""
    m = default_model
    shapes, pts, target, sd, cfg, present, before, revise, tgt_face = _placed(m, reachable)
    args = (m, code_layout.pack(shape=shapes), tgt_face, present, ~revise)
    eta = cfg.thresholds(sd)[None] / before.scale[:, None]
    sigma = cfg.sigma(sd)[None] / before.scale[:, None]
    assert FitWeights().landmark_sigma
    fit = f3dmm_gc(*args, eta=eta, sigma=sigma)
    paper = f3dmm_gc(*args, eta=eta, sigma=sigma, weights=FitWeights(landmark_sigma=False))
    after = score(fit.points, target, present, sd, cfg)
    assert (fit.iterations == 1).all()
    assert after.s.mean() > before.s.mean()
    d_before = np.linalg.norm(pts - tgt_face, axis=-1).mean()
    assert np.linalg.norm(fit.points - tgt_face, axis=-1).mean() < d_before
    n_fit = np.linalg.norm(code_layout.split(fit.codes).shape, axis=1)
    n_paper = np.linalg.norm(code_layout.split(paper.codes).shape, axis=1)
    assert (n_fit <= n_paper + 1e-6).all()
    # a landmark 100× less certain pulls less
    loose = sigma.copy()
    loose[:, 0] *= 100
    fit_loose = f3dmm_gc(*args, eta=eta, sigma=loose)
    d0 = np.linalg.norm(fit.points[:, 0] - tgt_face[:, 0], axis=-1)
    d1 = np.linalg.norm(fit_loose.points[:, 0] - tgt_face[:, 0], axis=-1)
    assert (d1 >= d0 - 1e-6).all() and d1.mean() > d0.mean()


def test_kept_and_definite_vertices_pull(default_model, reachable):
    m = default_model
    shapes, pts, _ = reachable
    codes = code_layout.pack(shape=shapes[:1])
    with torch.no_grad():
        base = m.vertices(shape=torch.as_tensor(shapes[:1])).double().numpy()
    keep = np.ones((1, m.n_vertices), bool)
    # its own points as targets, everything kept: without the prior the fit stays on the candidate
    res = f3dmm_gc(m, codes, pts[:1], np.ones(36, bool), keep, eta=np.full(36, 3.0),
                   weights=FitWeights(reg=1e-6))
    assert np.abs(res.vertices - base).max() < 0.05 and res.iterations[0] == 1
    # the Eq. 1 prior pulls towards the mean face; "stay" pulls towards the candidate's code instead
    prior = f3dmm_gc(m, codes, pts[:1], np.ones(36, bool), keep, eta=np.full(36, 3.0))
    stay = f3dmm_gc(m, codes, pts[:1], np.ones(36, bool), keep, eta=np.full(36, 3.0),
                    weights=FitWeights(reg=0.0, stay=1.0))
    mean_face = m.v_template.astype(float)
    d_prior = np.linalg.norm(prior.vertices[0] - base[0], axis=1).mean()
    assert 0.05 < d_prior < np.linalg.norm(mean_face - base[0], axis=1).mean()
    assert np.abs(stay.vertices - base).max() < 0.05
    assert prior.losses[0][-1]["reg"] < res.losses[0][-1]["reg"] and stay.losses[0][-1]["stay"] < 1e-6
    # the definite regions pushed 3 mm forward (+z) pull the fitted forehead forward
    definite = face_regions(m).definite
    d_tgt = np.full_like(base, np.nan)
    d_tgt[0, definite] = base[0, definite] + [0.0, 0.0, 3.0]
    keep2 = keep & ~definite
    res2 = f3dmm_gc(m, codes, pts[:1], np.ones(36, bool), keep2, definite_target=d_tgt,
                    weights=FitWeights(definite=20.0), eta=np.full(36, 3.0))
    moved = (res2.vertices[0, definite] - base[0, definite])[:, 2].mean()
    assert moved > 1.0
    assert res2.losses[0][-1]["definite"] < 9.0 * 0.5  # from 9 mm² before the fit


def test_jaw_refinement_keeps_the_match(default_model, reachable):
    m = default_model
    shapes, pts, target = reachable
    sd = load_table().sd
    cfg = ScoreConfig()
    present = np.ones(36, bool)
    before = score(pts[:1], target, present, sd, cfg)
    tgt_face = to_face_frame(target, before.scale, before.rotation, before.translation)
    keep = ~revised_vertices(face_regions(m), before.matched_flags[0], present)[None]
    res = f3dmm_gc(m, code_layout.pack(shape=shapes[:1]), tgt_face, present, keep, jaw=True, jaw_steps=4,
                   eta=cfg.thresholds(sd)[None] / before.scale[:, None])
    jaw = res.codes[0, code_layout.SLICES["pose"]][6:9]
    assert np.isfinite(jaw).all() and np.abs(jaw).max() < 0.5
    assert score(res.points, target, present, sd, cfg).s[0] == 1.0
    assert res.iterations[0] > res.losses[0][-2]["iteration"] + 1  # the L-BFGS evaluations are counted
