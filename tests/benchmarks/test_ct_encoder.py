"""benchmarks/ct_encoder.py's measuring parts on the default model's own meshes (offline; no
/work/shared needed): ICP recovers a known motion, the model's best face for a skin made by the
model is that face, the streak band's smoothing holds every other vertex."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from benchmark_scripts import load


@pytest.fixture(scope="module")
def ce():
    return load("ct_encoder")


@pytest.fixture(scope="module")
def skin_of(default_model):
    """A face of the model as a trimesh 'skin' (the whole head), its shape (90,) and the region."""
    from skullsearch.encoder.face_model import face_region

    rng = np.random.default_rng(4)
    shape = rng.standard_normal(default_model.n_shape) * 0.8
    with torch.no_grad():
        v = default_model.rest_vertices(shape=torch.as_tensor(shape[None], dtype=torch.float32))[0]
    v = v.double().numpy()
    return trimesh.Trimesh(v, default_model.faces, process=False), shape, face_region(default_model)


def _rot(deg, axis):
    return trimesh.transformations.rotation_matrix(np.radians(deg), axis)


def test_icp_undoes_a_small_rigid_motion(ce, skin_of):
    skin, _, region = skin_of
    pts = skin.vertices[region]
    motion = _rot(4.0, [0, 1, 0]) @ _rot(-3.0, [1, 0, 0])
    motion[:3, 3] = [2.0, -3.0, 1.5]
    moved = ce._apply(np.linalg.inv(motion), pts)
    m, d = ce.icp(moved, skin, np.ones(len(pts), bool))
    assert np.mean(d) < 0.1, np.mean(d)
    np.testing.assert_allclose(m, motion, atol=0.02)
    _, d_sim = ce.icp(moved * 1.03, skin, np.ones(len(pts), bool), scale=True)
    assert np.mean(d_sim) < 0.15  # a similarity ICP also takes out the scale


def test_the_models_best_face_for_its_own_face_is_that_face(ce, default_model, skin_of):
    skin, shape, region = skin_of
    alpha = ce.oracle_shape(default_model, skin, region, np.ones(default_model.n_vertices, bool), iters=6,
                            noise_mm=0.1)
    err = ce.face_errors(default_model, skin, alpha[None], region)["rigid"][0]
    e_mean = ce.face_errors(default_model, skin, np.zeros((1, default_model.n_shape)), region)
    mean = e_mean["rigid"][0]
    bands = ce.face_bands(default_model, region)
    assert list(bands) == ["forehead", "brows_to_eyes", "eyes_to_nose_base", "nose_base_to_mouth",
                           "below_mouth"]
    counts = np.array([b.sum() for b in bands.values()])
    assert counts.sum() == region.sum() and (counts > 100).all()  # the bands split the region
    by_band = np.array([e_mean["bands"][k][0] for k in bands])
    np.testing.assert_allclose((by_band * counts).sum() / counts.sum(), mean, rtol=1e-9)
    assert err < 0.3 and err < 0.2 * mean, (err, mean)  # closest-point correspondences slide a little
    assert np.corrcoef(alpha[:20], shape[:20])[0, 1] > 0.6  # the surface fixes the face, not each coefficient


def test_the_streak_band_smoothing_moves_only_the_band(ce, skin_of):
    skin, _, _ = skin_of
    v = skin.vertices.copy()
    rng = np.random.default_rng(0)
    spiky = skin.copy()
    band = (v[:, 1] > -60) & (v[:, 1] < -50)
    spiky.vertices = v + band[:, None] * rng.normal(0, 3.0, v.shape)
    out = ce.smooth_band(spiky, (-60.0, -50.0), iters=20)
    np.testing.assert_array_equal(out.vertices[~band], spiky.vertices[~band])
    nb = [list(n) for n in skin.vertex_neighbors]

    def rough(m):  # how far each band vertex lies from its neighbours' mean
        w = m.vertices
        return np.mean([np.linalg.norm(w[i] - w[nb[i]].mean(0)) for i in np.flatnonzero(band)])

    assert rough(out) < 0.3 * rough(spiky), (rough(out), rough(spiky))


def test_the_lights_raised_keep_their_sides(ce):
    assert ce.lights() == list(ce.LIGHTS)
    for (x, y, z), (x0, _, z0), up in zip(ce.lights((35.0, 55.0)), ce.LIGHTS, (35.0, 55.0), strict=True):
        assert (x, z) == (x0, z0)
        assert np.degrees(np.arctan2(y, np.hypot(x, z))) == pytest.approx(up)


def test_crop_keeps_the_faces_near_the_points(ce, skin_of):
    skin, _, region = skin_of
    part = ce.crop(skin, skin.vertices[region], margin=5.0)
    assert 0 < len(part.faces) < len(skin.faces)
    lo, hi = skin.vertices[region].min(0) - 5.0, skin.vertices[region].max(0) + 5.0
    assert np.all(part.vertices >= lo - 1e-9) and np.all(part.vertices <= hi + 1e-9)


def test_the_refinement_can_start_from_a_given_shape(ce, default_model, skin_of, tmp_path):
    """fit_codes(start_shape=...): renders of a model face, refined from its true shape, stay
    nearer that shape than the refinement from the landmark fit, and report their energy."""
    from skullsearch.encoder.fitting import FitConfig
    from skullsearch.encoder.photometric import PhotometricConfig

    skin, shape, _ = skin_of
    paths = ce.render_photos(skin, tmp_path, [0.0])
    pcfg = PhotometricConfig(steps=20)
    runs = {}
    for name, start in (("fit", None), ("truth", shape)):
        info = {}
        shapes, names, _, _ = ce.fit_codes(default_model, paths, "dlib", FitConfig(), photometric=pcfg,
                                           start_shape=start, info=info)
        assert len(names) == len(paths) and np.isfinite(info["energy"]) and info["energy"] >= 0
        terms = info["energy_terms"]
        assert set(terms) == {"landmarks", "photometric", "landmarks_reprojection", "landmarks_edges",
                              "landmarks_prior", "shading_r2"}
        assert all(v >= 0 for k, v in terms.items() if k != "shading_r2") and terms["shading_r2"] <= 1
        parts = terms["landmarks_reprojection"] + terms["landmarks_edges"] + terms["landmarks_prior"]
        assert parts == pytest.approx(terms["landmarks"], abs=2e-4)  # each rounded to 4 places
        groups = info["landmark_residual_iod"]
        from _common import LANDMARK_GROUPS

        assert set(groups) == {"all", *LANDMARK_GROUPS} and all(0 <= v < 1 for v in groups.values())
        runs[name] = shapes
    std = default_model.shape_std[: shapes.shape[1]]
    off = {k: np.linalg.norm((v - shape[: v.shape[1]]) / std, axis=1).mean() for k, v in runs.items()}
    assert off["truth"] < 0.5 * off["fit"]


def test_the_cnn_codes_on_the_detected_boxes_and_their_shared_shape(ce, default_model, skin_of, tmp_path):
    """fit_codes(cnn=...): one code per found photo from the checkpoint's network, no fit; shared:
    every photo gets the photos' mean shape code."""
    from skullsearch.encoder.cnn import EncoderCNN, save_checkpoint
    from skullsearch.encoder.fitting import FitConfig

    torch.manual_seed(0)
    net = EncoderCNN.for_model(default_model)
    with torch.no_grad():  # an untrained head's outputs, made large enough to differ per photo
        net.head.weight.mul_(20.0)
    ckpt = save_checkpoint(tmp_path / "cnn.pt", net.eval())
    paths = ce.render_photos(skin_of[0], tmp_path, [-10.0, 10.0])
    own, names, dist, res = ce.fit_codes(default_model, paths, "dlib", FitConfig(), cnn=ckpt)
    shared, _, _, _ = ce.fit_codes(default_model, paths, "dlib", FitConfig(), cnn=ckpt, shared=True)
    assert len(names) == len(paths) == len(own) and dist is None and np.isnan(res)
    assert not np.allclose(own[0], own[1])  # each photo its own code
    assert np.allclose(shared, own.mean(0), atol=1e-6)


def test_the_landmark_residual_by_part_of_the_face(ce):
    from _common import LANDMARK_GROUPS

    rng = np.random.default_rng(0)
    detected = rng.uniform(100, 300, (2, 68, 2))
    detected[:, 36:42] = [100.0, 200.0]  # eye centres 100 px apart
    detected[:, 42:48] = [200.0, 200.0]
    fitted = detected.copy()
    fitted[:, 0:17, 0] += 10.0  # the jaw 0.1 IOD off, the rest exact
    r = ce.residual_by_group(fitted, detected)
    assert r["jaw"] == pytest.approx(0.1) and r["all"] == pytest.approx(0.1 * 17 / 68)
    assert all(r[g] == 0 for g in LANDMARK_GROUPS if g != "jaw")


def test_the_skin_texture_is_the_models_albedo_carried_to_the_skin(ce, default_model, skin_of, tmp_path):
    """On a skin that is the model's own face, each skin vertex gets the model's albedo of the
    seed at that vertex (distance 0); the eyeballs get the nearest skin colour, not an iris; the
    textured renders differ from the plain ones and are deterministic."""
    from skullsearch.encoder.render import random_albedo, random_skin_tone, texture_regions

    skin, shape, _ = skin_of
    albedo = ce.skin_texture(default_model, skin, shape, seed=3)
    regions = texture_regions(default_model)
    rng = np.random.default_rng(3)
    tone = random_skin_tone(rng)
    expected = random_albedo(regions, rng, tone)
    np.testing.assert_array_equal(albedo[regions.skin], expected[regions.skin])
    rows = np.dtype((np.void, 3 * 8))  # an eyeball vertex takes a skin vertex's colour (or the tone)
    skin_colours = np.ascontiguousarray(np.vstack([expected[regions.skin], tone])).view(rows).ravel()
    eye_colours = np.ascontiguousarray(albedo[~regions.skin]).view(rows).ravel()
    assert np.isin(eye_colours, skin_colours).all()
    np.testing.assert_array_equal(albedo, ce.skin_texture(default_model, skin, shape, seed=3))
    (tmp_path / "plain").mkdir()
    (tmp_path / "tex").mkdir()
    plain = ce.render_photos(skin, tmp_path / "plain", [0.0])
    tex = ce.render_photos(skin, tmp_path / "tex", [0.0], albedo, 0.1)
    assert len(plain) == len(tex) == len(ce.LIGHTS)
    assert plain[0].read_bytes() != tex[0].read_bytes()


def test_the_uncertainty_check_against_the_best_face(ce, default_model, skin_of, tmp_path):
    """--uncertainty: fit_codes hands back each face's Σ_face (the refined one's where refined,
    narrower), and the check reads the fitted points' errors under it — exact points are 0 away,
    a face off by many SDs is far outside."""
    from skullsearch.encoder.fitting import FitConfig
    from skullsearch.encoder.photometric import PhotometricConfig

    skin, shape, _ = skin_of
    paths = ce.render_photos(skin, tmp_path, [-20.0])  # (two lights)
    covs = {}
    for name, pcfg in (("fit", None), ("photo", PhotometricConfig(steps=20))):
        info = {}
        shapes, names, _, _ = ce.fit_codes(default_model, paths, "dlib", FitConfig(posterior=True),
                                           photometric=pcfg, info=info)
        assert len(names) == 2 and info["_tissue_cov"].shape == (2, 36, 3, 3)
        covs[name] = info["_tissue_cov"]
        row = ce.uncertainty_check(default_model, shapes, shape[: shapes.shape[1]], covs[name])
        assert row["median_mahalanobis2"] > 0 and 0 <= row["inside_95pct"] <= 1
        assert len(row["predicted_sd_mm_xyz"]) == 3 and all(v > 0 for v in row["error_rms_mm_xyz"])
    depth = {k: np.sqrt(v[..., 2, 2]).mean() for k, v in covs.items()}
    assert depth["photo"] < depth["fit"], depth
    s = shape[: shapes.shape[1]]
    exact = ce.uncertainty_check(default_model, np.repeat(s[None], 2, 0), s, covs["fit"])
    assert exact["median_mahalanobis2"] < 1e-6 and exact["inside_95pct"] == 1.0
    off = np.repeat(s[None] + 4 * default_model.shape_std[: len(s)], 2, 0)
    far = ce.uncertainty_check(default_model, off, s, covs["photo"])
    assert far["inside_95pct"] < 0.5


def test_a_scan_cut_above_the_mouth_is_completed_by_the_mean_head(ce, default_model, skin_of):
    """--upper-face: above the line the photos show the skin, below it the mean head; the line
    lies under the nose base by the given mm; the scan's flat end is left out."""
    from skullsearch.encoder.render import anatomical_landmarks

    skin, _, _ = skin_of
    y_cut = ce.upper_face_line(default_model, 3.0)
    assert y_cut == pytest.approx(anatomical_landmarks(default_model)[33, 1] - 3.0)
    head = skin.copy()  # a "CT" of this face, cut 10 mm below the line, in a frame moved by to_ct
    head.update_faces((head.vertices[head.faces][:, :, 1] > y_cut - 10.0).all(1))
    head.remove_unreferenced_vertices()
    to_ct = _rot(10, [0, 1, 0]) @ trimesh.transformations.translation_matrix([3.0, -20.0, 5.0])
    head.apply_transform(to_ct)
    scan_end = ce._apply(to_ct, np.array([[0.0, y_cut - 10.0, 0.0]]))[0, 1]
    out = ce.graft_lower_face(default_model, head, to_ct, y_cut, scan_end)
    v = np.asarray(out.vertices)
    tv = np.asarray(default_model.v_template, np.float64)
    top = v[:, 1] > y_cut + 2.0  # the skin's own vertices, back in the model frame
    _, d_skin, _ = trimesh.proximity.closest_point(skin, v[top])
    assert d_skin.max() < 1e-6
    low = v[v[:, 1] < y_cut - 2.0]  # the mean head's, none of the skin's
    from scipy.spatial import cKDTree

    assert cKDTree(tv).query(low)[0].max() < 1e-9
    assert v[:, 1].min() < y_cut - 100.0  # the whole mean head below: chin and neck


def test_place_head_finds_a_moved_face_and_its_masks(ce, default_model, skin_of):
    """The skin of a face moved into a CT-like frame is placed back (a small RMS); the scored
    vertices are the region's outside the streak's slices (and above the cut with upper_face)."""
    skin, _, region = skin_of
    shape, spacing = (113, 256, 256), (2.0, 1.0, 1.0)
    to_ct = _rot(3, [0, 1, 0]) @ trimesh.transformations.translation_matrix([1.0, -2.0, 30.0])
    head_ct = skin.copy()
    head_ct.apply_transform(to_ct)
    volume = np.zeros(shape, np.int16)
    placed = ce.place_head(default_model, volume, spacing, head_ct)
    assert placed.rms < 3.0, placed.rms  # (the mean face against this face)
    np.testing.assert_array_equal(placed.region, region)
    streak = ce.streak_vertices(default_model, placed.to_ct, shape, spacing)
    np.testing.assert_array_equal(placed.streak, streak)
    np.testing.assert_array_equal(placed.keep, region & ~placed.streak)
    assert len(placed.full.vertices) == len(skin.vertices)  # the whole head, back in the model frame
    cut = ce.place_head(default_model, volume, spacing, head_ct, upper_face=3.0, no_streak=True)
    assert not cut.streak.any() and cut.keep.sum() < region.sum()
    np.testing.assert_array_equal(cut.keep, region & cut.upper)
