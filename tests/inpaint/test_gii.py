"""GII-GC: each loss term on hand-made inputs, and a run on the tiny trained GAN."""

import numpy as np
import pytest
import torch
from tiny_gan import one_thread

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.fitting import code_vertices
from skullsearch.errors import SkullsearchError
from skullsearch.inpaint.gan import InpainterCheckpointError, canonical_codes
from skullsearch.inpaint.gii import (
    LOSS_KEYS,
    GIIWeights,
    context_loss,
    definite_loss,
    geometry_loss,
    gii_gc,
    hole_weights,
    prior_loss,
)


# ---------------------------------------------------------------------------------- W (Eq. 3)
def test_hole_weights_inside_the_image():
    hole = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    hole[0, 0, 2, 2] = True
    w = hole_weights(hole, window=3)[0, 0].numpy()
    expect = np.zeros((5, 5))
    expect[1:4, 1:4] = 1 / 9  # the 8 neighbours see 1 hole pixel among 9
    expect[2, 2] = 0.0  # a hole pixel is not context
    np.testing.assert_allclose(w, expect, atol=1e-7)


def test_hole_weights_at_the_border_count_only_pixels_in_the_image():
    hole = np.zeros((1, 1, 4, 4), bool)
    hole[0, 0, 0, 0] = True
    w = hole_weights(hole, window=3)[0, 0].numpy()
    assert w[0, 0] == 0
    np.testing.assert_allclose([w[0, 1], w[1, 0], w[1, 1]], [1 / 6, 1 / 6, 1 / 9], atol=1e-7)
    assert np.all(w[2:, :] == 0) and np.all(w[:, 2:] == 0)
    with pytest.raises(ValueError, match="odd"):
        hole_weights(hole, window=4)


def test_hole_weights_grow_towards_a_large_hole():
    hole = np.zeros((1, 1, 16, 16), bool)
    hole[..., :, :8] = True  # the left half is missing
    w = hole_weights(hole, window=7)[0, 0].numpy()
    row = w[8]
    assert np.all(row[:8] == 0)
    np.testing.assert_allclose(row[8:12], [3 / 7, 2 / 7, 1 / 7, 0.0], atol=1e-6)
    assert np.all(row[11:] == 0)


# ---------------------------------------------------------------------------------- context
def test_context_loss_ignores_the_hole_and_weights_by_w():
    hole = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    hole[0, 0, 2, 2] = True
    w = hole_weights(hole, window=3)
    y = torch.zeros(1, 1, 5, 5)
    g = y.clone().repeat(2, 1, 1, 1)
    g[0, 0, 2, 2] = 1.0  # differs only inside the hole
    g[1, 0, 2, 1] = 1.0  # one kept neighbour wrong by 1
    loss = context_loss(g, y, w)
    assert loss.shape == (2,)
    assert float(loss[0]) == 0.0
    np.testing.assert_allclose(float(loss[1]), (1 / 9) / (8 / 9), rtol=1e-6)
    g[1, 0, 0, 0] = 1.0  # far from the hole: W = 0, no effect
    np.testing.assert_allclose(float(context_loss(g, y, w)[1]), 1 / 8, rtol=1e-6)


def test_context_loss_without_a_hole_is_zero():
    w = hole_weights(torch.zeros(1, 1, 8, 8), window=7)
    assert float(context_loss(torch.rand(3, 1, 8, 8), torch.rand(1, 1, 8, 8), w).abs().max()) == 0.0


# ---------------------------------------------------------------------------------- prior (Eq. 4)
def test_prior_loss_is_log_one_minus_d_and_decreases_with_d():
    logits = torch.linspace(-6, 6, 25)
    p = prior_loss(logits)
    np.testing.assert_allclose(p.numpy(), torch.log(1 - torch.sigmoid(logits)).numpy(), rtol=1e-4,
                               atol=1e-6)
    assert torch.all(p[1:] < p[:-1])
    assert torch.isfinite(prior_loss(torch.tensor([80.0]))).all()  # stable where D → 1


# ---------------------------------------------------------------------------------- geometry (Eq. 5)
def test_geometry_loss_zero_at_the_target_and_mean_mm_otherwise():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(36, 3)).astype(np.float32) * 50
    present = np.zeros(36, bool)
    present[[0, 5]] = True
    target[7] = np.nan  # an absent landmark's target is ignored
    pts = torch.as_tensor(np.nan_to_num(target)).repeat(2, 1, 1)
    pts[1, 5] += torch.tensor([3.0, 4.0, 0.0])  # 5 mm off
    pts[1, 9] += 100.0  # absent: no effect
    loss = geometry_loss(pts, target, present)
    assert float(loss[0]) < 1e-5
    np.testing.assert_allclose(float(loss[1]), 2.5, rtol=1e-5)
    assert float(geometry_loss(pts, target, np.zeros(36, bool)).abs().max()) == 0.0


def test_geometry_loss_has_a_gradient_towards_the_target():
    target = torch.zeros(36, 3)
    pts = torch.full((1, 36, 3), 2.0, requires_grad=True)
    geometry_loss(pts, target, np.ones(36, bool)).sum().backward()
    assert torch.all(pts.grad > 0)


def test_definite_loss():
    v = torch.zeros(1, 5, 3)
    v[0, 1] = torch.tensor([0.0, 6.0, 8.0])  # 10 mm from its target
    v[0, 3] = 50.0  # definite but without a target (NaN)
    v[0, 4] = 70.0  # not definite
    definite = np.array([True, True, False, True, False])
    target = np.zeros((5, 3), np.float32)
    target[3] = np.nan
    np.testing.assert_allclose(float(definite_loss(v, definite, target)[0]), 5.0, rtol=1e-5)
    assert float(definite_loss(v, None, None)[0]) == 0.0
    assert float(definite_loss(v, definite, np.full((5, 3), np.nan))[0]) == 0.0


def test_blend_weights(default_model):
    from skullsearch.inpaint.gii import blend_weights

    m = default_model
    v = m.v_template
    revise = v[:, 1] > np.percentile(v[:, 1], 80)  # the top of the head
    w = blend_weights(m, revise, 10.0)
    assert w.shape == (m.n_vertices,) and w.dtype == np.float32
    assert np.all(w[revise] == 1) and np.all((w >= 0) & (w <= 1))
    edge = v[revise, 1].min()
    assert np.all(w[v[:, 1] < edge - 10.5] == 0)  # farther than the band (geodesic ≥ straight)
    seam = ~revise & (w > 0)
    assert seam.any() and np.all(w[seam] < 1)
    assert not blend_weights(m, np.zeros(m.n_vertices, bool)).any()
    assert np.all(blend_weights(m, revise, 0.0) == 1)


# ---------------------------------------------------------------------------------- GII-GC
@pytest.fixture(scope="module")
def case(tiny_inpainter):
    """A candidate from the tiny gallery and, as the target, the soft-tissue points of another
    face: the regions of the landmarks farther than 2 mm are revised."""
    from skullsearch.inpaint.regions import face_regions, revised_vertices

    g = tiny_inpainter["gallery"]
    model = g.face_model
    ids = g.sample_ids(2, seed=5)
    codes = g.codes(ids)
    with torch.no_grad():
        pts = model.soft_tissue(shape=torch.as_tensor(codes[:, :90])).numpy()
    present = np.ones(36, bool)
    present[[0, 1]] = False  # op and v (back and top of the head) unknown
    target = pts[1].copy()
    target[~present] = np.nan
    matched = np.linalg.norm(pts[0] - pts[1], axis=1) < 2.0
    regions = face_regions(model)
    revise = revised_vertices(regions, matched, present)
    with torch.no_grad():
        verts = code_vertices(model, codes[1:2])[0].numpy()
    definite_target = np.where(regions.definite[:, None], verts, np.nan)
    return {"model": model, "code": codes[0], "target": target, "present": present, "revise": revise,
            "definite": regions.definite, "definite_target": definite_target}


@pytest.fixture(scope="module")
def result(tiny_inpainter, case):
    with one_thread():
        return gii_gc(case["model"], tiny_inpainter["inpainter"], case["code"], case["target"],
                      case["present"], case["revise"], case["definite"], case["definite_target"],
                      starts=3, iterations=40, seed=0)


@pytest.mark.slow  # trains a tiny inpainter first
def test_gii_gc_lowers_the_total_loss(result):
    first = result.losses[0]["total"]
    best = min(r["total"] for r in result.losses)
    assert best < 0.95 * first
    assert result.start_totals[result.start] == pytest.approx(best, rel=1e-4)
    assert result.start_totals[result.start] == pytest.approx(min(result.start_totals))


@pytest.mark.slow  # trains a tiny inpainter first
def test_gii_gc_result(result, case, tiny_inpainter):
    model, size = case["model"], tiny_inpainter["inpainter"].size
    assert 1 <= len(result.losses) <= 40 and 1 <= result.iterations <= len(result.losses)
    assert 0 <= result.start < 3
    for rec in result.losses:
        assert set(LOSS_KEYS) <= set(rec)
        assert rec["total"] == pytest.approx(sum(rec[k] for k in LOSS_KEYS[1:]), rel=1e-4, abs=1e-6)
    assert result.losses[0]["definite"] > 0  # the definite target is another face's: a real pull
    assert result.code.shape == (code_layout.CODE_SIZE,) and not result.code[90:].any()
    assert result.vertices.shape == (model.n_vertices, 3) and result.vertices.dtype == np.float32
    with torch.no_grad():
        generated = code_vertices(model, result.code[None])[0].numpy()
        candidate = code_vertices(model, canonical_codes(case["code"]))[0].numpy()
    np.testing.assert_allclose(result.generated_vertices, generated, atol=1e-3)
    b = result.blend
    assert np.all(b[case["revise"]] == 1) and (b == 0).any()
    # the kept surface is the candidate's, the revised one the generated face's
    np.testing.assert_allclose(result.vertices[b == 0], candidate[b == 0], atol=1e-3)
    np.testing.assert_allclose(result.vertices[b == 1], generated[b == 1], atol=1e-3)
    assert result.image.shape == result.target_image.shape == (size, size)
    assert result.hole.any() and not result.hole.all()
    assert np.all(result.weights[result.hole] == 0) and result.weights.max() > 0


@pytest.mark.slow  # trains a tiny inpainter first
def test_gii_gc_is_reproducible_and_refuses_another_model(tiny_inpainter, case, result, tmp_path):
    from skullsearch import FaceModel

    from flame_writer import make_synthetic_flame, write_flame_pickle

    with one_thread():
        again = gii_gc(case["model"], tiny_inpainter["inpainter"], case["code"], case["target"],
                       case["present"], case["revise"], case["definite"], case["definite_target"],
                       starts=3, iterations=5, seed=0)
    np.testing.assert_allclose(again.losses[0]["total"], result.losses[0]["total"], rtol=1e-5)
    path = tmp_path / "other.pkl"
    write_flame_pickle(path, make_synthetic_flame(seed=9))
    other = FaceModel.load(path, annotate=False)
    with pytest.raises(InpainterCheckpointError, match="trained for face model"):
        gii_gc(other, tiny_inpainter["inpainter"], case["code"], case["target"], case["present"],
               np.zeros(other.n_vertices, bool), iterations=1, weights=GIIWeights())
    with pytest.raises(SkullsearchError, match="starts ≥ 1"):
        gii_gc(case["model"], tiny_inpainter["inpainter"], case["code"], case["target"], case["present"],
               case["revise"], starts=0)


@pytest.mark.slow  # trains a tiny inpainter first
def test_gii_gc_with_nothing_to_revise_returns_the_candidate(tiny_inpainter, case):
    model = case["model"]
    r = gii_gc(model, tiny_inpainter["inpainter"], case["code"], case["target"], case["present"],
               np.zeros(model.n_vertices, bool), iterations=50)
    with torch.no_grad():
        candidate = code_vertices(model, canonical_codes(case["code"]))[0].numpy()
    assert r.iterations == 0 and len(r.losses) == 1 and r.converged
    np.testing.assert_allclose(r.vertices, candidate, atol=1e-4)
    assert r.losses[0]["geometry_mm"] > 1.0  # the other face's landmarks are still far
