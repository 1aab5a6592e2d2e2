"""benchmarks/ct_identification.py's measuring parts on the default model's own faces (offline;
no /work/shared needed): its ranks are an exhaustive query's over a gallery of the same faces, a
skull made from a face finds that face first, and the distractors' renders follow the seed."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load

from skullsearch import Gallery
from skullsearch.encoder import code as code_layout
from skullsearch.index.synth import add_synthetic_faces
from skullsearch.retrieval.extended import ExtendedLandmarks


@pytest.fixture(scope="module")
def cid():
    return load("ct_identification")


def _skull_of(points: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Extended landmarks of a face's soft-tissue points (36, 3): each moved by ~ the table's SD
    and a rigid motion; all present."""
    from skullsearch.retrieval.tissue import load_table

    sd = np.asarray(load_table().sd, np.float64)
    sd = np.where(np.isfinite(sd), sd, 1.5)
    moved = points + rng.standard_normal(points.shape) * 0.5 * sd[:, None]
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return moved @ rot.T + [5.0, -20.0, 40.0], np.ones(36, bool), sd


def test_ranks_are_an_exhaustive_querys_order(cid, default_model, tmp_path):
    from skullsearch.retrieval.query import query_points

    rng = np.random.default_rng(0)
    shapes = rng.standard_normal((40, default_model.n_shape)) * np.asarray(default_model.shape_std)
    pts = cid.soft_points(default_model, shapes)
    target, present, sd = _skull_of(pts[7], rng)
    # the probe ranked against the other 39 faces, as in the benchmark
    r = cid.ranks(pts[7:8], np.delete(pts, 7, 0), target, present, sd)
    assert r["rank_s"] == [1] and r["rank_likelihood"] == [1] and r["percentile_s"] == [0.0]
    # and a gallery of all 40, queried exhaustively: the same faces in the same order
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    s = np.zeros((40, code_layout.N_SHAPE), np.float32)
    s[:, : shapes.shape[1]] = shapes[:, : code_layout.N_SHAPE]
    ids = add_synthetic_faces(g, code_layout.pack(shape=s))
    np.testing.assert_allclose(g.soft_tissue(ids), pts, atol=1e-4)  # the points ingest stores
    for rank_by in ("s", "likelihood", "surface"):
        res = query_points(g, target, present, sd, top=40, exhaustive=True, rank_by=rank_by)
        order = [int(np.flatnonzero(ids == c.face_id)[0]) for c in res.candidates]
        for probe in (3, 7, 21, 35):  # each face's rank among the others is its place in the query
            got = cid.ranks(pts[probe:probe + 1], np.delete(pts, probe, 0), target, present, sd,
                            surface=(default_model, shapes[probe:probe + 1], np.delete(shapes, probe, 0)))
            assert got[f"rank_{rank_by}"] == [order.index(probe) + 1]
    g.close()


def test_the_mean_face_and_summary(cid, default_model):
    rng = np.random.default_rng(1)
    pts = cid.soft_points(default_model, rng.standard_normal((30, 20)) * 2.0)  # (a short code is padded)
    assert pts.shape == (30, 36, 3)
    mean = cid.soft_points(default_model, np.zeros((1, default_model.n_shape)))
    target, present, sd = _skull_of(pts[0], rng)
    r = cid.ranks(np.concatenate([pts[:1], mean]), pts[1:], target, present, sd)
    assert r["rank_likelihood"][0] == 1 and 1 <= r["rank_likelihood"][1] <= 30
    s = cid.summary({"rank_s": [3, 1, 9], "rank_likelihood": [2, 2, 5]})
    assert s == {"rank_s_median": 3.0, "rank_s_best": 1, "rank_likelihood_median": 2.0,
                 "rank_likelihood_best": 2}


def test_the_distractors_are_rendered_by_the_seed(cid, default_model, tmp_path):
    out = []
    for k in range(2):
        folder = tmp_path / f"d{k}"
        shapes = cid.distractor_photos(default_model, folder, 2, [-10.0, 10.0], np.random.default_rng(5))
        out.append((shapes, [p.read_bytes() for p in sorted(folder.glob("*.png"))]))
    assert out[0][0].shape == (2, default_model.n_shape) and len(out[0][1]) == 2
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert out[0][1] == out[1][1]  # the same pixels
    from skullsearch.encoder.images import read_images

    (img, _) = read_images(sorted((tmp_path / "d0").glob("*.png")))
    assert img.pixels.shape == (512, 512, 3) and img.pixels.std() > 10  # a face, not a blank


def test_ranks_with_the_fits_uncertainty(cid, default_model):
    """With covariances the likelihood under Σ_tissue + Σ_face ranks too: a distractor made very
    uncertain where the probe is sure no longer beats it."""
    rng = np.random.default_rng(2)
    shapes = rng.standard_normal((12, default_model.n_shape)) * np.asarray(default_model.shape_std)
    pts = cid.soft_points(default_model, shapes)
    target, present, sd = _skull_of(pts[0], rng)
    zero = np.zeros((1, 36, 3, 3))
    dis_cov = np.repeat(np.eye(3)[None, None] * 0.01, 11, 0).repeat(36, 1)
    r = cid.ranks(pts[:1], pts[1:], target, present, sd, zero, dis_cov)
    assert r["rank_likelihood_cov"] == [1] and r["percentile_likelihood_cov"] == [0.0]
    assert "rank_likelihood_cov" not in cid.ranks(pts[:1], pts[1:], target, present, sd)
    assert cid.summary(r)["rank_likelihood_cov_best"] == 1


def test_rigid_rms_ignores_a_rigid_motion(cid):
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((36, 3)) * 30
    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    moved = ref @ rot.T + [3.0, 1.0, -7.0]
    noisy = ref + rng.standard_normal(ref.shape)
    got = cid.rigid_rms(np.stack([moved, noisy]), ref)
    assert got[0] < 1e-9 and 1.4 < got[1] < np.sqrt(3)  # (the fit absorbs a little of the noise)


def test_the_synthetic_baseline_finds_exact_faces_first(cid, default_model):
    """Encoded = true faces: each skull's own face ranks near the top, well above the mean face."""
    rng = np.random.default_rng(4)
    true = rng.standard_normal((40, default_model.n_shape)) * np.asarray(default_model.shape_std)
    out = cid.synthetic_baseline(default_model, true, true, np.ones(36, bool), rng, queries=10)
    assert out["queries"] == 10
    assert out["own_face_percentile_likelihood_median"] < 5 < out["mean_face_percentile_likelihood_median"]
    assert out["own_face_top_10pct_likelihood"] >= 0.7 and out["own_face_top_10pct_s"] >= 0.7
    assert out["true_face_percentile_likelihood_median"] == out["own_face_percentile_likelihood_median"]
    # a correspondence gap as large as a real head's (~10 mm a landmark) added to every skull: the
    # same draws, the own (= true) face now ranks lower
    gap = np.random.default_rng(5).standard_normal((36, 3)) * 6.0
    rng = np.random.default_rng(4)
    true = rng.standard_normal((40, default_model.n_shape)) * np.asarray(default_model.shape_std)
    gapped = cid.synthetic_baseline(default_model, true, true, np.ones(36, bool), rng, queries=10,
                                    offset=gap)
    key = "true_face_percentile_likelihood_median"
    assert out[key] == 0.0 and gapped[key] > 3.0, (out, gapped)


def test_correspondence_measures_where_the_skull_and_the_model_disagree(cid, default_model):
    """Targets on the model face's own points (moved into a CT frame) agree with it; one moved
    10 mm along the skin disagrees by 10 mm, still on the skin."""
    import torch
    import trimesh

    ce = cid.ce
    rng = np.random.default_rng(6)
    shape = rng.standard_normal(default_model.n_shape) * np.asarray(default_model.shape_std)
    with torch.no_grad():
        v = default_model.rest_vertices(shape=torch.as_tensor(shape[None], dtype=torch.float32))[0]
    v = v.double().numpy()
    to_ct = trimesh.transformations.rotation_matrix(0.2, [0, 1, 0])
    to_ct[:3, 3] = [4.0, -30.0, 12.0]
    skin = trimesh.Trimesh(ce._apply(to_ct, v), default_model.faces, process=False)
    ones = np.ones(default_model.n_vertices, bool)
    head = ce.PlacedHead(skin, skin, to_ct, 0.0, ones, ones, ~ones, ones)
    target = ce._apply(to_ct, cid.soft_points(default_model, shape[None])[0].astype(np.float64))
    present = np.zeros(36, bool)
    present[[2, 3, 14]] = True  # g, n, mso_l
    names = ("g", "n", "mso_l")
    on_skin, _, _ = trimesh.proximity.closest_point(skin, target[3:4] + [[0.0, 10.0, 0.0]])
    target[3] = on_skin[0]  # n slid along the skin
    _, _, tri = trimesh.proximity.closest_point(skin, target[present])
    directions = np.full((36, 3), np.nan)
    directions[present] = skin.face_normals[tri]  # the skin's normal where each target lies
    depth = np.full(36, 6.0)
    ext = ExtendedLandmarks.from_points(target, present, np.full(36, 2.0))
    ext.directions, ext.depth = directions, depth
    ext.skull_points = np.where(present[:, None], target - depth[:, None] * directions, np.nan)  # 6 mm under
    eta = np.full(36, 3.0)
    out = cid.correspondence(default_model, head, shape, ext, skin, eta)
    assert list(out["landmarks"]) == list(names) and out["n"] == 3
    g = out["landmarks"]["g"]
    assert g["to_model_point_mm"] < 0.05 and g["to_skin_mm"] < 0.05, out
    n = out["landmarks"]["n"]
    assert n["to_skin_mm"] < 0.05 and n["to_model_point_mm"] > 5
    # the slide is along the surface: across the normal, hardly along it
    assert n["across_mm"] > 0.9 * n["to_model_point_mm"], n
    assert abs(n["along_mm"]) < 0.4 * n["to_model_point_mm"], n
    assert abs(np.hypot(n["along_mm"], n["across_mm"]) - n["to_model_point_mm"]) < 0.15  # (rounded to 0.1 mm)
    assert out["within_eta_of_model_point"] == 2 and out["within_eta_along"] >= 2
    # rigidly superimposed (as a query does), the slide is spread over the three points, not
    # taken away: no rigid motion undoes one point's 10 mm slide
    assert out["to_model_point_median_mm"] == 0.0 and out["to_model_point_aligned_median_mm"] > 1.0, out
    # the tissue under each target, along its direction: the 6 mm it was put under
    for r in out["landmarks"].values():
        assert abs(r["depth_ct_mm"] - 6.0) < 0.15 and r["depth_table_mm"] == 6.0, r
    assert out["depth_ct_over_table_median"] == 1.0
    # the gap in the model's frame: n's slide, rotated back (the head turned 0.2 rad about y)
    gap = cid.correspondence_gap(default_model, head, shape, ext)
    own = ce._apply(to_ct, cid.soft_points(default_model, shape[None])[0].astype(np.float64))
    slide = ext.points[3] - own[3]
    np.testing.assert_allclose(gap[3], slide @ to_ct[:3, :3], atol=1e-6)
    assert np.linalg.norm(gap[2]) < 1e-6 and np.isnan(gap[0]).all()  # g on its point; op absent
    vectors = cid.gap_vectors(gap)
    assert list(vectors) == list(names) and vectors["n"] == [round(float(v), 1) for v in gap[3]]


def _saved_run(cid, model):
    """A --save file's arrays for 24 faces of the model (the first the truth, views the first three,
    distractors the last 20) and a skull whose extended landmarks are the truth's points, 4 mm out
    from bone along outward-ish directions: (shapes, truth's points, ext, saved)."""
    rng = np.random.default_rng(3)
    shapes = rng.standard_normal((24, model.n_shape)) * np.asarray(model.shape_std)
    truth = shapes[0]
    pts = cid.soft_points(model, truth[None])[0].astype(np.float64)
    present = np.ones(36, bool)
    ext = ExtendedLandmarks.from_points(pts, present, np.full(36, 2.0))
    centre = pts.mean(0)
    ext.directions = (pts - centre) / np.linalg.norm(pts - centre, axis=1, keepdims=True)  # outward-ish
    ext.depth = np.full(36, 4.0)
    ext.skull_points = pts - 4.0 * ext.directions
    saved = {"landmark_distractors": shapes[4:], "landmark_views": shapes[:3], "landmark_shared": shapes[:1],
             "oracle": truth, "present": present, "distractors_true": shapes[4:],
             "landmark_distractors_found": np.ones(20, bool)}
    return shapes, pts, ext, saved


def test_rescore_ranks_the_saved_faces_again(cid, default_model):
    """--rescore: with the table's depths (factor 1) and every landmark, the saved faces rank as
    the run ranked them; a factor moves the targets along their directions; a left-out landmark
    is not scored."""
    shapes, pts, ext, saved = _saved_run(cid, default_model)
    truth, present = shapes[0], saved["present"]
    out = cid.rescore(default_model, saved, ext, [1.0, 1.5], leave_out=["g", "zy"])
    assert out["landmarks"] == 33 and out["left_out"] == ["g", "zy_l", "zy_r"]
    assert list(out["runs"]) == ["landmark"]
    row = out["runs"]["landmark"]["1"]
    dpts = cid.soft_points(default_model, shapes[4:])
    keep = present.copy()
    keep[[2, 22, 23]] = False  # g, zy_l, zy_r
    for name, probe in (("views", shapes[:3]), ("oracle", truth[None])):
        r = cid.ranks(cid.soft_points(default_model, probe), dpts, pts, keep, ext.sd)
        assert row[name] == [float(np.median(r["rank_s"])), float(np.median(r["rank_likelihood"]))]
    assert row["oracle"] == [1.0, 1.0] and row["shared"] == [1.0, 1.0]  # (the truth itself)
    # a factor: the targets the table's depths times it along their directions
    moved = ext.skull_points + 6.0 * ext.directions
    r = cid.ranks(cid.soft_points(default_model, shapes[:3]), dpts, moved, keep, ext.sd)
    got = out["runs"]["landmark"]["1.5"]["views"]
    assert got == [float(np.median(r["rank_s"])), float(np.median(r["rank_likelihood"]))]
    # and by the surface: a third rank, the truth's first
    row = cid.rescore(default_model, saved, ext, [1.0], surface=True)["runs"]["landmark"]["1"]
    assert len(row["views"]) == 3 and row["oracle"] == [1.0, 1.0, 1.0]


def test_the_annotation_rules_on_the_skin_split_the_gap(cid, default_model):
    """On a skin that is the model's own face, the rules' points are the annotator's on that face
    (placed in the CT frame, on the skin); targets on them are 0 mm from them, and the rules'
    distance to the model's fixed points is the annotation's own drift on this face."""
    import torch
    import trimesh

    from skullsearch.encoder.annotate import soft_tissue_positions

    ce = cid.ce
    rng = np.random.default_rng(8)
    shape = rng.standard_normal(default_model.n_shape) * np.asarray(default_model.shape_std) * 0.5
    with torch.no_grad():
        v = default_model.rest_vertices(shape=torch.as_tensor(shape[None], dtype=torch.float32))[0]
    v = v.double().numpy()
    to_ct = trimesh.transformations.rotation_matrix(-0.3, [1, 0, 0])
    to_ct[:3, 3] = [2.0, 15.0, -8.0]
    face = trimesh.Trimesh(v, default_model.faces, process=False)  # the model's frame
    skin = trimesh.Trimesh(ce._apply(to_ct, v), default_model.faces, process=False)  # the CT's
    ones = np.ones(default_model.n_vertices, bool)
    head = ce.PlacedHead(skin, face, to_ct, 0.0, ones, ones, ~ones, ones)
    face_setup = cid.skin_face(default_model, head, shape)
    rules = cid.skin_rule_points(head, face_setup)
    lm = default_model.landmarks68(vertices=torch.as_tensor(v[None], dtype=torch.float32))[0].double().numpy()
    expected = ce._apply(to_ct, soft_tissue_positions(v, default_model.faces, lm))
    names = ["g", "n", "pr", "mso_l", "zy_r"]
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    idx = [SOFT_TISSUE_NAMES.index(n) for n in names]
    _, off_skin, _ = trimesh.proximity.closest_point(skin, rules[idx])
    assert off_skin.max() < 1e-6  # snapped to the skin
    np.testing.assert_allclose(rules[idx], expected[idx], atol=0.5)  # (the rules' points lie on it)
    present = np.zeros(36, bool)
    present[idx] = True
    target = np.where(present[:, None], rules, np.nan)
    _, _, tri = trimesh.proximity.closest_point(skin, target[present])
    directions = np.full((36, 3), np.nan)
    directions[present] = skin.face_normals[tri]
    ext = ExtendedLandmarks.from_points(target, present, np.full(36, 2.0))
    ext.directions, ext.depth = directions, np.full(36, 6.0)
    ext.skull_points = np.where(present[:, None], target - 6.0 * directions, np.nan)
    out = cid.correspondence(default_model, head, shape, ext, skin, np.full(36, 3.0), rules)
    assert list(out["landmarks"]) == names
    assert out["to_skin_rules_median_mm"] == 0.0 and out["within_eta_of_skin_rules"] == 5
    assert out["to_skin_rules_aligned_median_mm"] == 0.0
    fixed = ce._apply(to_ct, cid.soft_points(default_model, shape[None])[0].astype(np.float64))
    for n, i in zip(names, idx, strict=True):
        r = out["landmarks"][n]
        assert r["to_skin_rules_mm"] == 0.0 and r["to_skin_rules_across_mm"] == 0.0
        assert abs(r["skin_rules_to_model_point_mm"] - np.linalg.norm(rules[i] - fixed[i])) < 0.06
        assert r["skin_rules_to_model_point_mm"] == r["to_model_point_mm"]  # the targets are the rules'
    gap = cid.correspondence_gap(default_model, head, shape, ext, rules)
    assert np.abs(gap[idx]).max() < 1e-9 and np.isnan(gap[0]).all()
    # the nasal dorsum: the annotator's own mid-nasal and rhinion sit at its fractions
    nasal = [SOFT_TISSUE_NAMES.index(n) for n in ("n", "mn", "rhi")]
    on = np.zeros(36, bool)
    on[nasal] = True
    nasal_ext = ExtendedLandmarks.from_points(expected, on, np.full(36, 2.0))
    dorsum = cid.dorsum_fractions(head, face_setup, nasal_ext)
    from skullsearch.encoder.annotate import MID_NASAL_FRACTION, RHINION_FRACTION

    assert dorsum["annotation"] == {"mn": MID_NASAL_FRACTION, "rhi": RHINION_FRACTION}
    assert abs(dorsum["extended"]["mn"] - MID_NASAL_FRACTION) <= 0.02
    assert abs(dorsum["extended"]["rhi"] - RHINION_FRACTION) <= 0.02
    assert abs(dorsum["extended"]["n"]) <= 0.02 and 15 < dorsum["sellion_to_pronasale_mm"] < 60
    # without the rules (or where they found nothing) the block has none of their entries
    bare = cid.correspondence(default_model, head, shape, ext, skin, np.full(36, 3.0))
    assert "to_skin_rules_median_mm" not in bare and "to_skin_rules_mm" not in bare["landmarks"]["g"]


def test_the_dorsum_re_annotated(cid, default_model):
    """At the annotation's own fractions the re-annotated mid-nasal and rhinion are the shipped ones;
    at smaller fractions they move up the nose, and the other 34 points stay."""
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    shipped = default_model.soft_tissue(shape=np.zeros((1, default_model.n_shape), np.float32))[0].numpy()
    same = cid.with_dorsum(default_model, 0.3, 0.6)
    higher = cid.with_dorsum(default_model, 0.0, 0.2)
    kept = default_model.soft_tissue_points
    try:
        default_model.soft_tissue_points = same
        a = default_model.soft_tissue(shape=np.zeros((1, default_model.n_shape), np.float32))[0].numpy()
        default_model.soft_tissue_points = higher
        b = default_model.soft_tissue(shape=np.zeros((1, default_model.n_shape), np.float32))[0].numpy()
    finally:
        default_model.soft_tissue_points = kept
    np.testing.assert_allclose(a, shipped, atol=1e-3)
    mn, rhi = SOFT_TISSUE_NAMES.index("mn"), SOFT_TISSUE_NAMES.index("rhi")
    assert b[mn, 1] > shipped[mn, 1] + 3 and b[rhi, 1] > shipped[rhi, 1] + 5  # up the nose (+y)
    others = [i for i in range(36) if i not in (mn, rhi)]
    np.testing.assert_array_equal(b[others], shipped[others])


def test_rescore_with_an_sd_along_the_skin(cid, default_model):
    """--rescore --tangent-sd: per SD, each set's median rank by that likelihood (as ranks gives
    it) and the synthetic baseline's; the truth stays first."""
    shapes, pts, ext, saved = _saved_run(cid, default_model)
    present = saved["present"]
    out = cid.rescore(default_model, saved, ext, [1.0], tangents=[3.0])
    row = out["runs"]["landmark"]["tangent"]["3"]
    assert row["oracle"] == 1.0
    r = cid.ranks(cid.soft_points(default_model, shapes[:3]), cid.soft_points(default_model, shapes[4:]), pts,
                  present, ext.sd, tangent=3.0, normals=default_model.soft_tissue_normals())
    assert row["views"] == float(np.median(r["rank_likelihood"]))
    assert row["synthetic"]["true_face_percentile_likelihood_median"] == 0.0


def test_the_encoders_error_at_the_landmarks(cid, default_model):
    """Where the photos fail, landmark by landmark: faces equal to their truth are 0 mm off (0× the
    mean face's error); faces halfway between the mean and the truth about half the mean face's;
    the oracle's landmarks are those its fitted vertices hold."""
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    m = default_model
    rng = np.random.default_rng(8)
    true = rng.standard_normal((30, m.n_shape)) * np.asarray(m.shape_std)
    oracle = true[0]
    use = np.ones(36, bool)
    exact = cid.encoder_at_landmarks(m, {"views": true[:1], "shared": true[:1], "distractors": true},
                                     oracle, true, use)
    assert exact["views_over_mean_face"] == 0.0 and exact["synthetic_encoded_over_mean_face"] == 0.0
    assert exact["landmarks"] == list(SOFT_TISSUE_NAMES)
    assert len(exact["against_the_oracle"]["views"]["per_landmark_mm"]) == 36
    half = cid.encoder_at_landmarks(m, {"views": oracle[None] / 2, "shared": oracle[None] / 2,
                                        "distractors": true / 2}, oracle, true, use)
    assert 0.4 < half["views_over_mean_face"] < 0.6, half
    assert 0.4 < half["synthetic_encoded_over_mean_face"] < 0.6, half
    # only some landmarks, and none of the views found: their rows are left out
    few = cid.encoder_at_landmarks(m, {"views": np.zeros((0, m.n_shape)), "shared": true[:1],
                                       "distractors": true}, oracle, true, np.arange(36) < 10)
    assert "views_over_mean_face" not in few and len(few["landmarks"]) == 10
    # the oracle holds a landmark only where every vertex around it was fitted
    keep = np.ones(m.n_vertices, bool)
    assert cid.oracle_landmarks(m, keep).all()
    pr = list(SOFT_TISSUE_NAMES).index("pr")
    p = cid.soft_points(m, np.zeros((1, m.n_shape)))[0, pr]
    keep[np.linalg.norm(np.asarray(m.v_template, np.float64) - p, axis=1) < 3.0] = False
    held = cid.oracle_landmarks(m, keep)
    assert not held[pr] and held.sum() >= 30


def test_rescore_under_the_querys_sensitivity_variants(cid, default_model):
    """Each variant's ranks are the probes' ranks against the skull laid as query --sensitivity lays
    it; as_is the plain ranks; the truth, 4 mm out from the bone, keeps first place in each."""
    from skullsearch.retrieval.score import ScoreConfig
    from skullsearch.retrieval.sensitivity import VARIANTS, variant

    shapes, pts, ext, saved = _saved_run(cid, default_model)
    out = cid.sensitivity(default_model, saved, ext)["landmark"]
    assert list(out) == ["as_is", *VARIANTS]
    dpts = cid.soft_points(default_model, shapes[4:])
    assert out["as_is"] == cid.rescore(default_model, saved, ext, [1.0])["runs"]["landmark"]["1"]
    thin, _ = variant(ext, ScoreConfig(), "thin")
    r = cid.ranks(cid.soft_points(default_model, shapes[:3]), dpts, thin.points, ext.present, ext.sd)
    assert out["thin"]["views"] == [float(np.median(r["rank_s"])), float(np.median(r["rank_likelihood"]))]
    assert all(out[v]["oracle"] == [1.0, 1.0] for v in ("as_is", "thin", "thick", "fuzzy"))
