"""Photometric refinement: a photo's shading moves the fitted face towards the true one.

Photos are real renders (the package's rasterizer, decoded back from PNG), landmarks are the true
faces' own projected points, so the landmark fit is as good as 68 points allow and what the
refinement adds is the shading's."""

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from landmark_photos import use_measured_scatter
from PIL import Image
from torch_threads import one_thread

from skullsearch.encoder import code as code_layout
from skullsearch.encoder.fitting import FitConfig, fit_landmarks, model_landmarks_px, rig_for
from skullsearch.encoder.photometric import PhotometricConfig, refine_photometric, sh9
from skullsearch.encoder.render import face_camera, render_mesh
from skullsearch.errors import SkullsearchError

SIZE = 320


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _png_roundtrip(img: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _shots(model):
    """Three faces from the prior, each shot at yaw −25, 5 and 20° under its own light (seed 11):
    true shapes (9, 90) and each photo's (camera, light direction) (9,)."""
    rng = np.random.default_rng(11)
    shape = np.repeat(rng.standard_normal((3, 90)) * model.shape_std[:90], 3, axis=0)
    shots = []
    for yaw in np.tile([-25.0, 5.0, 20.0], 3):
        cam = face_camera(yaw_deg=yaw, pitch_deg=rng.uniform(-5, 5), size=SIZE, distance=700.0,
                          fov_mm=300.0, center=np.array([0.0, -30.0, 0.0]))
        shots.append((cam, (rng.uniform(-0.5, 0.5), rng.uniform(0.0, 0.5), 1.0)))
    return shape, shots


def _rendered(model, shape, shots, **render) -> tuple[list[np.ndarray], np.ndarray]:
    """The faces (n, 90) rendered by their shots ((camera, light) each; ``render``: more of
    :func:`render_mesh`'s settings) and their exact landmarks (n, 68, 2) px."""
    rig = rig_for(model, 90, model.n_expression)
    with torch.no_grad():
        verts = model.vertices(shape=torch.as_tensor(shape, dtype=torch.float32)).numpy()
    images, lms = [], []
    for i, (v, (cam, light)) in enumerate(zip(verts, shots, strict=True)):
        images.append(render_mesh(v, model.faces, cam, light_dir=light, **render).image)
        with torch.no_grad():
            rot = torch.as_tensor(cam.rotation, dtype=torch.float32)[None]
            trans = torch.as_tensor(cam.translation, dtype=torch.float32)[None]
            uv = model_landmarks_px(rig, torch.as_tensor(shape[i:i + 1], dtype=torch.float32),
                                    torch.zeros(1, model.n_expression), torch.zeros(1, 3 * model.n_joints),
                                    rot, trans, torch.tensor([cam.focal], dtype=torch.float32),
                                    torch.tensor([[SIZE / 2, SIZE / 2]]))
        lms.append(uv[0].numpy())
    return images, np.stack(lms)


@pytest.fixture(scope="module")
def photos(default_model):
    """The faces of :func:`_shots` rendered (encoded as a camera's: gamma 2.2): photos (9,) uint8,
    true shapes (9, 90), exact landmarks (9, 68, 2) px."""
    shape, shots = _shots(default_model)
    images, lms = _rendered(default_model, shape, shots, gamma=2.2)
    return [_png_roundtrip(im) for im in images], shape, lms


def _encoded(lms, fit, n: int, tissue_cov=None) -> list:
    """The first n photos' landmark-fitted faces (:class:`EncodedFace`, images "p0"…) from a
    FitResult, each with its covariance of tissue_cov (n, 36, 3, 3) when given."""
    from skullsearch.encoder.encode import EncodedFace

    return [EncodedFace(image=f"p{i}", sha256="", face_index=0, box=np.zeros(4), score=1.0,
                        landmarks=lms[i], quality=(), yaw_deg=0.0, detector="dlib", image_size=(SIZE, SIZE),
                        code=fit.codes[i].copy(), focal=float(fit.focal[i]),
                        tissue_cov=None if tissue_cov is None else tissue_cov[i]) for i in range(n)]


def _errors(model, codes, shape) -> np.ndarray:
    """Mean vertex error (n,) mm of fitted neutral faces over the face region, similarity-aligned."""
    from skullsearch.encoder.align import align
    from skullsearch.encoder.face_model import face_region

    region = face_region(model)
    with torch.no_grad():
        fit = model.vertices(shape=torch.as_tensor(codes[:, code_layout.SLICES["shape"]])).numpy()[:, region]
        true = model.vertices(shape=torch.as_tensor(shape, dtype=torch.float32)).numpy()[:, region]
    return np.linalg.norm(align(fit, true) - true, axis=-1).mean(1)


def test_sh9_is_the_order_two_basis():
    n = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = sh9(n)
    assert b.shape == (3, 9)
    assert torch.allclose(b[:, 0], torch.ones(3))
    assert torch.allclose(b[0], torch.tensor([1.0, 0, 1, 0, 0, 0, 2, 0, 0]))
    assert torch.allclose(b[1, 8], torch.tensor(1.0)) and torch.allclose(b[2, 8], torch.tensor(-1.0))


def test_shading_moves_each_face_towards_the_truth(default_model, photos):
    """Each photo alone: the landmark fit leaves the depths open, the shading closes part of the gap."""
    m = default_model
    images, shape, lms = photos
    sizes = np.full((len(images), 2), float(SIZE))
    lm = fit_landmarks(m, lms, sizes)
    ref = refine_photometric(m, lm.codes, lms, images, photometric=PhotometricConfig(steps=120))
    before, after = _errors(m, lm.codes, shape), _errors(m, ref.codes, shape)
    assert after.mean() < 0.85 * before.mean(), (before, after)
    assert (after < before).sum() >= 6, (before, after)
    assert ref.history[-1] < ref.history[0]  # the refinement's own energy falls
    assert ref.codes.shape == lm.codes.shape and np.isfinite(ref.codes).all()
    # the landmarks still hold the face (a few pixels, not a drift)
    assert ref.residual_px.max() < 8.0, ref.residual_px


def test_photos_of_one_person_share_the_refined_shape(default_model, photos):
    m = default_model
    images, shape, lms = photos
    person = np.repeat(["a", "b", "c"], 3)
    sizes = np.full((len(images), 2), float(SIZE))
    lm = fit_landmarks(m, lms, sizes, person=person)
    ref = refine_photometric(m, lm.codes, lms, images, person=person, photometric=PhotometricConfig(steps=40))
    s = ref.codes[:, code_layout.SLICES["shape"]].reshape(3, 3, -1)
    assert np.allclose(s, s[:, :1]), "faces of one person must keep one shape"
    assert not np.allclose(s[0, 0], s[1, 0])
    rot = code_layout.SLICES["cam_rot"]
    assert not np.allclose(ref.codes[:, rot], lm.codes[:, rot])


def test_a_photo_that_shows_too_little_face_keeps_its_landmark_fit(default_model, photos):
    """Below min_visible vertices there is no shading term: the refinement is the landmark fit's
    own Adam polish, and the shape stays near the landmark fit's."""
    m = default_model
    images, _, lms = photos
    sizes = np.full((1, 2), float(SIZE))
    lm = fit_landmarks(m, lms[:1], sizes)
    big = PhotometricConfig(steps=20, min_visible=10**6)
    ref = refine_photometric(m, lm.codes, lms[:1], images[:1], photometric=big)
    zero = PhotometricConfig(steps=20, weight=0.0)
    ref0 = refine_photometric(m, lm.codes, lms[:1], images[:1], photometric=zero)
    assert np.allclose(ref.codes, ref0.codes, atol=1e-5)


def test_mismatched_inputs_are_refused(default_model, photos):
    images, _, lms = photos
    with pytest.raises(SkullsearchError, match="one photo and one set of landmarks per code"):
        refine_photometric(default_model, np.zeros((2, code_layout.CODE_SIZE), np.float32), lms[:2],
                           images[:1])


def test_no_faces_is_no_work(default_model):
    out = refine_photometric(default_model, np.zeros((0, code_layout.CODE_SIZE), np.float32),
                             np.zeros((0, 68, 2)), [])
    assert out.codes.shape == (0, code_layout.CODE_SIZE)


def test_surface_normals_are_the_area_weighted_vertex_normals(default_model):
    """The refinement's sparse normals (and their rig's posed vertices) against a plain numpy
    reference on the full mesh of a sampled face: same vertices, same unit normals."""
    from skullsearch.encoder.photometric import _PhotoFit, _surface

    m = default_model
    surf = _surface(m, 2500, 90, m.n_expression, torch.float32)
    rng = np.random.default_rng(3)
    shape = torch.as_tensor(rng.standard_normal((2, 90)) * m.shape_std[:90], dtype=torch.float32)
    expr = torch.zeros(2, m.n_expression)
    with torch.no_grad():
        full = m.vertices(shape=shape, expression=expr).numpy().astype(np.float64)  # (2, V, 3)
        posed = surf.rig.vertices_jaw(shape, expr, torch.zeros(2, 3))
        fake = _PhotoFit.__new__(_PhotoFit)
        fake.mesh = surf
        normals = _PhotoFit.normals(fake, posed).numpy()
    np.testing.assert_allclose(posed.numpy(), full[:, surf.ids], atol=1e-3)
    t = full[:, m.faces]
    fn = np.cross(t[:, :, 1] - t[:, :, 0], t[:, :, 2] - t[:, :, 0])
    acc = np.zeros_like(full)
    for k in range(3):
        for b in range(2):
            np.add.at(acc[b], m.faces[:, k], fn[b])
    used = surf.ids[surf.use.numpy()]
    # a used vertex's normal gathers all its triangles (the rig holds every one around it)
    ref = acc[:, used] / np.linalg.norm(acc[:, used], axis=-1, keepdims=True)
    assert np.einsum("bnc,bnc->bn", normals, ref).min() > 1 - 1e-4
    # and they point out of the face: towards +z (the model's front) on most of the region
    # (its sides and the chin's underside turn away)
    assert (normals[..., 2] > 0).mean() > 0.75


def test_skip_features_reads_no_brow_lip_or_lash_line_vertex(default_model):
    from skullsearch.encoder.face_model import face_region
    from skullsearch.encoder.photometric import _surface
    from skullsearch.encoder.render import feature_mask, texture_regions

    m = default_model
    mask = feature_mask(m)
    r = texture_regions(m)
    assert mask[r.brows > 0.5].all() and mask[r.lips > 0.5].all() and mask[r.lashes > 0.5].all()
    assert not mask[~r.skin].any()
    wider = feature_mask(m, margin_mm=6.0)
    assert (wider >= mask).all() and wider.sum() > mask.sum()
    region = face_region(m)
    assert 0.1 < (mask & region).sum() / region.sum() < 0.4  # the features, not the face
    full = _surface(m, 2500, 90, m.n_expression, torch.float32)
    skip = _surface(m, 2500, 90, m.n_expression, torch.float32, skip_features=True)
    used = skip.ids[skip.use.numpy()]
    assert not mask[used].any() and region[used].all()
    assert mask[full.ids[full.use.numpy()]].any()


def test_the_earlier_refinement_with_the_features_still_moves_faces_towards_the_truth(default_model, photos):
    m = default_model
    images, shape, lms = photos
    sizes = np.full((len(images), 2), float(SIZE))
    lm = fit_landmarks(m, lms, sizes)
    ref = refine_photometric(m, lm.codes, lms, images,
                             photometric=PhotometricConfig(steps=120, skip_features=False))
    before, after = _errors(m, lm.codes, shape), _errors(m, ref.codes, shape)
    assert after.mean() < 0.9 * before.mean(), (before, after)


@pytest.fixture(scope="module")
def painted(default_model, photos):
    """The first person's three photos again, their skin painted with the model's generic
    features in known colours (``_feature_profiles``: its thickest, lowest brows, not the middle
    one the refinement starts from): brows dark, lips red, lash lines darker."""
    from skullsearch.encoder.photometric import _feature_profiles

    m = default_model
    _, shape, lms = photos
    _, shots = _shots(m)
    ratio = np.array([[0.3, 0.28, 0.26], [0.95, 0.6, 0.62], [0.45, 0.45, 0.45]])  # (K, 3)
    prof = _feature_profiles(m)[-1]
    skin = np.array([0.78, 0.62, 0.52])
    albedo = skin * (1 - prof.sum(1, keepdims=True) + prof @ ratio)
    with torch.no_grad():
        verts = m.vertices(shape=torch.as_tensor(shape[:3], dtype=torch.float32)).numpy()
    images = []
    for v, (cam, light) in zip(verts, shots[:3], strict=True):
        render = render_mesh(v, m.faces, cam, albedo=albedo, light_dir=light)
        images.append(_png_roundtrip(render.image))
    return images, shape[:3], lms[:3]


def test_feature_albedo_reads_painted_features_by_their_own_colour(default_model, painted):
    """On photos whose brows and lips are painted as the model's generic features (the thickest,
    lowest brows tried), the features with their own colour explain the photo far better than
    skin (the energy at the landmark fit, each face's brows chosen), and the
    refinement that reads them moves the faces towards the truth; on the same photos the
    features read as skin would pull them the other way, the reason skip_features is on."""
    from skullsearch.encoder.photometric import _feature_profiles

    m = default_model
    prof = _feature_profiles(m)
    assert prof.shape == (9, m.n_vertices, 3) and prof.min() >= 0 and prof.max() <= 1
    assert ((prof[:, :, 0] > 0.5).sum(1) > 50).all() and (prof[:, :, 1] > 0.5).sum() > 50
    assert (prof[-1, :, 0] > 0.5).sum() > 2 * (prof[0, :, 0] > 0.5).sum()  # thick and thin brows
    images, shape, lms = painted
    lm = fit_landmarks(m, lms, np.full((len(images), 2), float(SIZE)))
    energy = {}
    for name, cfg in (("skin", PhotometricConfig(steps=0, skip_features=False)),
                      ("own", PhotometricConfig(steps=0, feature_albedo=True))):
        res = refine_photometric(m, lm.codes, lms, images, photometric=cfg)
        energy[name] = res.terms["photometric"]
    assert energy["own"] < 0.7 * energy["skin"], energy
    own = PhotometricConfig(steps=120, feature_albedo=True)
    ref = refine_photometric(m, lm.codes, lms, images, photometric=own)
    before, after = _errors(m, lm.codes, shape), _errors(m, ref.codes, shape)
    assert after.mean() < 0.9 * before.mean(), (before, after)


def _followed(model, photos, point: int, axis: int, shift: float, fit_config=None, detector=None, **settings):
    """How far (px, along image ``axis``) the refined face's landmark ``point`` follows that point
    alone moved by ``shift`` inter-ocular distances (the landmark term alone: weight 0, 60 steps,
    the other ``settings`` of PhotometricConfig; the fit's config and detector as given), and the
    moved run's landmarks (68, 2) px, the true ones (68, 2) and the inter-ocular distance."""
    images, _, lms = photos
    lm = fit_landmarks(model, lms[:1], np.full((1, 2), float(SIZE)))
    iod = np.linalg.norm(lms[0, 36:42].mean(0) - lms[0, 42:48].mean(0))
    got = []
    for s in (0.0, shift):
        wrong = lms[:1].copy()
        wrong[0, point, axis] += s * iod
        cfg = PhotometricConfig(steps=60, weight=0.0, **settings)
        got.append(refine_photometric(model, lm.codes, wrong, images[:1], photometric=cfg, config=fit_config,
                                      detector=detector).landmarks_px[0])
    return got[1][point, axis] - got[0][point, axis], got[1], lms[0], iod


def test_a_robust_landmark_term_lets_a_wrong_point_pull_less(default_model, photos):
    """One landmark (the nose tip) moved sideways by half the inter-ocular distance: under least
    squares the refined face's nose follows it by pixels, under the Cauchy loss
    (landmark_cauchy) hardly at all; every other point stays put. Weight 0: the landmark term alone."""
    follow = {}
    for c in (0.0, 0.1):
        follow[c], moved, true, iod = _followed(default_model, photos, 30, 0, 0.5, landmark_cauchy=c)
        others = np.delete(np.arange(68), 30)
        assert np.abs(moved[others] - true[others]).max() < 0.1 * iod
    assert follow[0.0] > 1.5, follow  # pixels towards the wrong point
    assert abs(follow[0.1]) < 0.3 * follow[0.0], follow


def test_feature_landmark_weight_lets_a_brow_point_pull_less(default_model, photos):
    """A brow point moved up by a third of the inter-ocular distance: at feature_landmark_weight 1
    the refined face's brow follows it, at 0.1 it follows less, and a nose point (not a feature)
    moved the same way is followed as much at either weight. Weight 0: the landmark term alone."""
    follow = {(point, w): -_followed(default_model, photos, point, 1, -1 / 3, feature_landmark_weight=w)[0]
              for point in (19, 33) for w in (1.0, 0.1)}  # px upwards
    assert follow[19, 1.0] > 1.0, follow
    assert follow[19, 0.1] < 0.6 * follow[19, 1.0], follow
    assert follow[33, 0.1] > 0.8 * follow[33, 1.0], follow
    with pytest.raises(SkullsearchError, match="feature_landmark_weight"):
        PhotometricConfig(feature_landmark_weight=-0.5)


def test_the_refinement_weighs_the_points_as_the_fit_unless_told_not_to(default_model, photos, monkeypatch):
    """A brow point moved up by a third of the inter-ocular distance, the brows measured to
    scatter 5x the other points: with FitConfig.landmark_weights the refined brow follows it far
    less; with the refinement's own landmark_weights off as far as without the weights."""
    sigma = np.full(68, 0.03)
    sigma[17:27] = 0.15
    use_measured_scatter(monkeypatch, sigma)
    on = FitConfig(landmark_weights=True)
    follow = lambda **kw: -_followed(default_model, photos, 19, 1, -1 / 3, **kw)[0]  # noqa: E731 (px up)
    plain = follow()
    assert follow(fit_config=on) == plain  # no detector named: the points as given
    weighted = follow(fit_config=on, detector="test")
    unweighted = follow(fit_config=on, detector="test", landmark_weights=False)
    assert plain > 1.0 and unweighted == pytest.approx(plain, abs=1e-3)
    assert weighted < 0.5 * plain, (weighted, plain)


def test_the_refined_posterior_without_the_shading_is_the_weighted_fits(default_model, photos, monkeypatch):
    """With landmark weights, the refinement's posterior at the fit's state and no photometric
    weight (forward differences) is the weighted Levenberg-Marquardt fit's (analytic), and
    differs from the unweighted one's."""
    m = default_model
    images, _, lms = photos
    sigma = np.linspace(0.02, 0.12, 68)
    use_measured_scatter(monkeypatch, sigma)
    sizes = np.full((len(images), 2), float(SIZE))
    cfg = FitConfig(posterior=True, landmark_weights=True)
    lm = fit_landmarks(m, lms, sizes, config=cfg, detector="test")
    plain = fit_landmarks(m, lms, sizes, config=FitConfig(posterior=True), detector="test")
    ref = refine_photometric(m, lm.codes, lms, images, config=cfg, detector="test",
                             photometric=PhotometricConfig(steps=0, weight=0.0))
    want, got = m.soft_tissue_covariance(lm.shape_cov), m.soft_tissue_covariance(ref.shape_cov)
    np.testing.assert_allclose(got, want, atol=0.01 * np.abs(want).max())
    other = m.soft_tissue_covariance(plain.shape_cov)
    assert np.abs(other - want).max() > 2 * np.abs(got - want).max()  # (the weights are seen)


def test_photo_gamma_reads_the_pixels_as_linear_light():
    from skullsearch.encoder.photometric import _blurred

    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 128, 0
    lin, size = _blurred([img], np.array([0.0]), gamma=2.2)
    raw, _ = _blurred([img], np.array([0.0]))
    assert tuple(lin.shape) == (1, 3, 4, 6) and tuple(size) == (6, 4)
    np.testing.assert_allclose(lin[0, :, 0, 0].numpy(), [1.0, (128 / 255) ** 2.2, 0.0], rtol=1e-5)
    np.testing.assert_allclose(raw[0, :, 0, 0].numpy(), [1.0, 128 / 255, 0.0], rtol=1e-6)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(SkullsearchError, match="photo_gamma"):
            PhotometricConfig(photo_gamma=bad)


def test_refine_faces_reports_the_final_energy_and_skips_faces_without_pixels(default_model, photos):
    """refine_faces returns the final energy's terms, their mean over the faces it refined: a
    photo whose shading is not the model's (its colours scrambled) is explained worse; a face
    without a crop or pixels is left as it is and counts for nothing ({} when none is refined)."""
    from skullsearch.encoder.photometric import refine_faces

    m = default_model
    images, _, lms = photos
    lm = fit_landmarks(m, lms[:2], np.full((2, 2), float(SIZE)))

    def faces(pixels):
        return _encoded(lms, lm, len(pixels))

    cfg = PhotometricConfig(steps=30)
    own = {f"p{i}": images[i] for i in range(2)}
    rng = np.random.default_rng(0)
    scrambled = {k: v[..., rng.permutation(3)][:, ::-1].copy() for k, v in own.items()}  # mirrored
    fs = faces(own)
    terms = refine_faces(m, fs, own, photometric=cfg)
    assert set(terms) >= {"landmarks", "photometric", "shading_r2"} and terms["photometric"] > 0
    assert not np.allclose(fs[0].code, lm.codes[0])
    worse = refine_faces(m, faces(scrambled), scrambled, photometric=cfg)
    assert worse["photometric"] > 1.5 * terms["photometric"], (terms, worse)
    # the model's own shading is nearly all explained, the scrambled photos' far less
    assert terms["shading_r2"] > 0.9 and worse["shading_r2"] < terms["shading_r2"] - 0.2, (terms, worse)
    # R² does not follow the pixels' encoding as the energy does
    raw = refine_faces(m, faces(own), own, photometric=PhotometricConfig(steps=30, photo_gamma=1.0))
    assert abs(raw["shading_r2"] - terms["shading_r2"]) < 0.05, (terms, raw)
    untouched = faces(own)
    assert refine_faces(m, untouched, None, photometric=cfg) == {}  # no crops, no pixels
    assert np.array_equal(untouched[0].code, lm.codes[0])


@pytest.mark.parametrize("share_expression", [False, True])
def test_the_refined_posterior_without_the_shading_is_the_landmark_fits(default_model, photos,
                                                                        share_expression):
    """At the landmark fit's state with no photometric weight, the refinement's posterior (forward
    differences through its own residuals) is the Levenberg-Marquardt fit's (analytic Jacobians),
    a person's photos sharing one (and their expression, when asked)."""
    m = default_model
    images, _, lms = photos
    cfg = FitConfig(posterior=True, share_expression=share_expression)
    person = np.repeat(["a", "b", "c"], 3)
    lm = fit_landmarks(m, lms, np.full((len(images), 2), float(SIZE)), config=cfg, person=person)
    ref = refine_photometric(m, lm.codes, lms, images, config=cfg, person=person,
                             photometric=PhotometricConfig(steps=0, weight=0.0))
    assert np.array_equal(ref.codes, lm.codes) or np.allclose(ref.codes, lm.codes, atol=1e-5)
    want, got = m.soft_tissue_covariance(lm.shape_cov), m.soft_tissue_covariance(ref.shape_cov)
    np.testing.assert_allclose(got, want, atol=0.01 * np.abs(want).max())
    assert np.allclose(ref.shape_cov[0], ref.shape_cov[2])  # one person, one posterior


def test_the_refined_posterior_counts_correlated_photos_as_fewer(default_model, photos):
    """FitConfig.photo_correlation ρ in the refined posterior: a person's three photos' summed
    information (landmarks and shading) is divided by 1 + 2ρ; the codes stay."""
    m = default_model
    images, _, lms = photos
    person = np.repeat(["a", "b", "c"], 3)
    lm = fit_landmarks(m, lms, np.full((len(images), 2), float(SIZE)), config=FitConfig(posterior=True),
                       person=person)
    prior = np.diag(1.0 / m.shape_std[:90].astype(np.float64) ** 2)
    info, codes = {}, {}
    for rho in (0.0, 0.5):
        ref = refine_photometric(m, lm.codes, lms, images, person=person,
                                 config=FitConfig(posterior=True, photo_correlation=rho),
                                 photometric=PhotometricConfig(steps=0))
        info[rho] = np.linalg.inv(ref.shape_cov[0].astype(np.float64)) - prior
        codes[rho] = ref.codes
    np.testing.assert_array_equal(codes[0.5], codes[0.0])
    top = np.linalg.eigh(info[0.0])[1][:, -10:]  # the ten best-seen directions
    ratio = np.diagonal(top.T @ info[0.5] @ top) / np.diagonal(top.T @ info[0.0] @ top)
    np.testing.assert_allclose(ratio, 0.5, rtol=1e-3)


def test_the_shading_narrows_the_posterior_by_its_discount(default_model, photos):
    """The refined faces' soft-tissue points are surer than the landmark fit's, depths included (a
    photo's shading says what 68 points cannot), and less so the more the shading's information
    is discounted; refine_faces hands each face its refined covariance."""
    from skullsearch.encoder.photometric import refine_faces

    m = default_model
    images, _, lms = photos
    images, lms = images[:3], lms[:3]
    cfg = FitConfig(posterior=True)
    lm = fit_landmarks(m, lms, np.full((3, 2), float(SIZE)), config=cfg)
    sd = {}
    for discount in (1.0, 30.0):
        ref = refine_photometric(m, lm.codes, lms, images, config=cfg,
                                 photometric=PhotometricConfig(steps=40, posterior_discount=discount))
        cov = ref.shape_cov.astype(np.float64)
        assert cov.shape == (3, 90, 90) and np.allclose(cov, cov.transpose(0, 2, 1), atol=1e-6)
        assert np.linalg.eigvalsh(cov).min() > 0
        sd[discount] = np.sqrt(np.diagonal(m.soft_tissue_covariance(cov), axis1=-2, axis2=-1)).mean(1)
    before = np.sqrt(np.diagonal(m.soft_tissue_covariance(lm.shape_cov), axis1=-2, axis2=-1)).mean(1)
    assert (sd[1.0] < sd[30.0]).all() and (sd[30.0] < before).all(), (sd, before)  # (3 faces, xyz)
    assert (sd[1.0][:, 2] < 0.6 * before[:, 2]).all(), (sd[1.0], before)  # the depths most of all
    plain = refine_photometric(m, lm.codes, lms, images, photometric=PhotometricConfig(steps=2))
    assert plain.shape_cov is None  # only asked for
    faces = _encoded(lms, lm, 3, m.soft_tissue_covariance(lm.shape_cov))
    refine_faces(m, faces, {f"p{i}": images[i] for i in range(3)}, cfg,
                 PhotometricConfig(steps=40, posterior_discount=30.0))
    got = np.sqrt(np.diagonal(np.stack([f.tissue_cov for f in faces]), axis1=-2, axis2=-1)).mean(1)
    # (read through each face's crop, not the whole photo: near the photos' own, not the same)
    assert (got < before).all() and np.allclose(got, sd[30.0], rtol=0.25), (got, sd[30.0], before)
    with pytest.raises(SkullsearchError, match="posterior_discount"):
        PhotometricConfig(posterior_discount=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on CI)")
def test_the_refinement_on_a_gpu_is_the_cpus(default_model, photos):
    """FitConfig(device="cuda"): the same faces refined on the GPU land where the CPU's do (float
    sums in another order: close, not bit for bit)."""
    m = default_model
    images, shape, lms = photos
    sizes = np.full((len(images), 2), float(SIZE))
    lm = fit_landmarks(m, lms, sizes)
    pcfg = PhotometricConfig(steps=60)
    cpu = refine_photometric(m, lm.codes, lms, images, photometric=pcfg)
    gpu = refine_photometric(m, lm.codes, lms, images, config=FitConfig(device="cuda"), photometric=pcfg)
    std = m.shape_std[:90]
    diff = np.abs(gpu.codes[:, :90] - cpu.codes[:, :90]) / std
    assert diff.max() < 0.05, diff.max()
    assert np.allclose(gpu.residual_px, cpu.residual_px, atol=0.1)


def test_skip_parts_leave_out_the_features_asked_for(default_model):
    """Each feature's mask alone is a part of the whole, the three make it up, and an unknown part
    is refused by name."""
    from skullsearch.encoder.render import FEATURE_PARTS, feature_mask

    m = default_model
    whole = feature_mask(m)
    alone = {p: feature_mask(m, parts=(p,)) for p in FEATURE_PARTS}
    for p, mask in alone.items():
        assert 0 < mask.sum() < whole.sum() and not (mask & ~whole).any(), p
    np.testing.assert_array_equal(alone["brows"] | alone["lips"] | alone["lashes"], whole)
    assert not feature_mask(m, parts=()).any()
    with pytest.raises(SkullsearchError, match="nose"):
        PhotometricConfig(skip_parts=("lips", "nose"))
    with pytest.raises(ValueError, match="nose"):
        feature_mask(m, parts=("nose",))


@settings(max_examples=25, deadline=None)
@given(st.floats(-1.0, 1.0), st.floats(-1.0, 1.0), st.floats(0.2, 1.0), st.floats(0.05, 0.6),
       st.floats(0.2, 1.5), st.integers(0, 2**31 - 1))
def test_light_direction_is_the_directional_light_that_explains_the_brightness(x, y, z, ambient, strength,
                                                                                seed):
    """Brightness a + b·max(0, n·d) over the normals a camera sees (a half sphere): the direction
    comes back within the search's spacing, whatever the light's direction, ambient share and
    strength, and it turns with the surface (the frame's rotation); a constant brightness has none."""
    from scipy.spatial.transform import Rotation

    from skullsearch.encoder.photometric import light_direction

    rng = np.random.default_rng(seed)
    d = np.array([x, y, z]) / np.linalg.norm([x, y, z])
    n = rng.standard_normal((1500, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    n[:, 2] = np.abs(n[:, 2])  # the half the camera sees (z towards it)
    bright = ambient + strength * np.maximum(n @ d, 0) + rng.normal(0, 0.01, len(n))
    w = np.ones(len(n))
    got = light_direction(n, bright, w)
    assert np.degrees(np.arccos(np.clip(got @ d, -1, 1))) < 8.0, (got, d)
    rot = Rotation.from_rotvec(rng.normal(0, 0.5, 3)).as_matrix()
    turned = light_direction(n @ rot.T, bright, w)
    assert np.degrees(np.arccos(np.clip(turned @ (rot @ d), -1, 1))) < 8.0
    assert light_direction(n, np.full(len(n), 0.4), w) is None


def test_cast_shadows_finds_the_shadows_a_face_casts_on_itself(default_model):
    """Faces rendered with the shadows they cast (light from the side and above): with
    cast_shadows the refinement leaves out the vertices in them — those it marks are the
    renderer's own shadows (the light's direction read off the photo), nearly all of them — and
    the refined faces still move towards the truth."""
    from skullsearch.encoder import photometric
    from skullsearch.encoder.fitting import _initial_state, _observations
    from skullsearch.encoder.render import in_shadow, vertex_normals

    m = default_model
    shape, shots = _shots(m)
    shape, shots = shape[::3], shots[::3]  # one shot of each face
    lights = [np.array([-0.6, 0.5, 1.0]), np.array([0.6, 0.3, 1.0]), np.array([0.4, 0.6, 1.0])]
    images, lms = _rendered(m, shape, [(cam, light) for (cam, _), light in zip(shots, lights, strict=True)],
                            gamma=2.2, shadows=True)
    with torch.no_grad():
        verts = m.vertices(shape=torch.as_tensor(shape, dtype=torch.float32)).numpy()
    sizes = np.full((len(images), 2), float(SIZE))
    lm = fit_landmarks(m, lms, sizes)
    cfg, pcfg = FitConfig(), PhotometricConfig(cast_shadows=True)
    frig = rig_for(m, cfg.n_shape, cfg.n_expression, dtype=cfg.dtype)
    obs = _observations(lms, sizes, None, cfg)
    pidx = torch.arange(len(images))
    state = _initial_state(frig, cfg, obs, pidx, len(images), lm.codes.astype(np.float32))
    fit = photometric._PhotoFit(m, frig, cfg, pcfg, obs, pidx, len(images), state, images)
    fit.update_visibility()
    used = fit.surface_ids[fit.use.numpy()]
    for i in range(len(images)):
        nrm = vertex_normals(verts[i], m.faces)[used]
        d = lights[i] / np.linalg.norm(lights[i])
        truth = in_shadow(verts[i], m.faces, verts[i][used], d, normals=nrm) & (nrm @ d > 0)
        marked = fit.shadowed[i].numpy()
        seen = fit.visible[i].numpy() | marked
        assert marked[seen].mean() > 0.03, i  # there are shadows to find
        assert (marked[seen] == truth[seen]).mean() > 0.95, i
        assert not (fit.visible[i] & fit.shadowed[i]).any()  # what is marked is left out
    ref = refine_photometric(m, lm.codes, lms, images,
                             photometric=PhotometricConfig(steps=120, cast_shadows=True))
    before, after = _errors(m, lm.codes, shape), _errors(m, ref.codes, shape)
    assert after.mean() < 0.9 * before.mean(), (before, after)
    assert 0.03 < ref.terms["shadowed"] < 0.3, ref.terms  # the share of the seen vertices left out
    # the light read off the photos: its mean elevation above the head's horizon, as rendered
    up = np.mean([np.degrees(np.arcsin(d[1] / np.linalg.norm(d))) for d in lights])
    assert abs(ref.terms["light_up_deg"] - up) < 8, (ref.terms["light_up_deg"], up)
    plain = refine_photometric(m, lm.codes, lms, images, photometric=PhotometricConfig(steps=2)).terms
    assert "shadowed" not in plain and "light_up_deg" not in plain


def test_tilted_directions_stand_the_angle_off_around_the_light():
    from skullsearch.encoder.photometric import _tilted

    for d in (np.array([0.0, 0.0, 1.0]), np.array([0.3, 0.95, 0.1]) / np.linalg.norm([0.3, 0.95, 0.1])):
        tilted = np.array(_tilted(d, 8.0))
        np.testing.assert_allclose(np.linalg.norm(tilted, axis=1), 1.0)
        np.testing.assert_allclose(np.degrees(np.arccos(tilted @ d)), 8.0, atol=1e-6)
        np.testing.assert_allclose(tilted.mean(0) / np.linalg.norm(tilted.mean(0)), d, atol=1e-9)
    with pytest.raises(SkullsearchError, match="shadow_spread"):
        PhotometricConfig(shadow_spread=-1.0)


def test_confirmed_shadows_are_the_dark_ones_among_the_cast(default_model):
    """shadow_spread widens the candidates (the shadows along directions around the light);
    shadow_confirm keeps of them only those the photo shows dark: on renders with their own
    shadows, under fitted faces that are not the rendered ones, the confirmed marks are the
    renderer's shadow more often than the plain shadow map's, and the spread finds more of it."""
    from skullsearch.encoder import photometric
    from skullsearch.encoder.fitting import _initial_state, _observations
    from skullsearch.encoder.render import in_shadow, vertex_normals

    m = default_model
    shape, shots = _shots(m)
    shape, shots = shape[::3], shots[::3]
    lights = [np.array([-0.6, 1.0, 1.0]), np.array([0.6, 0.9, 1.0]), np.array([0.4, 1.2, 1.0])]  # 35-50° up
    images, lms = _rendered(m, shape, [(cam, light) for (cam, _), light in zip(shots, lights, strict=True)],
                            gamma=2.2, shadows=True)
    with torch.no_grad():
        verts = m.vertices(shape=torch.as_tensor(shape, dtype=torch.float32)).numpy()
    sizes = np.full((len(images), 2), float(SIZE))
    lm = fit_landmarks(m, lms, sizes)  # (the fitted faces are not the rendered ones)
    cfg = FitConfig()
    frig = rig_for(m, cfg.n_shape, cfg.n_expression, dtype=cfg.dtype)
    obs = _observations(lms, sizes, None, cfg)
    pidx = torch.arange(len(images))
    marks, seen = {}, {}
    settings = {"plain": {}, "spread": {"shadow_spread": 8.0}, "confirm": {"shadow_confirm": True},
                "both": {"shadow_confirm": True, "shadow_spread": 8.0}}
    for key, kw in settings.items():
        pcfg = PhotometricConfig(cast_shadows=True, **kw)
        state = _initial_state(frig, cfg, obs, pidx, len(images), lm.codes.astype(np.float32))
        fit = photometric._PhotoFit(m, frig, cfg, pcfg, obs, pidx, len(images), state, images)
        fit.update_visibility()
        marks[key] = fit.shadowed.numpy()
        seen[key] = fit.visible.numpy() | marks[key]
    used = fit.surface_ids[fit.use.numpy()]
    assert (marks["spread"] >= marks["plain"]).all() and (marks["confirm"] <= marks["spread"]).all()
    assert marks["spread"].sum() > marks["plain"].sum() > marks["confirm"].sum() * 0.5 > 0
    hits, count, real = dict.fromkeys(marks, 0), dict.fromkeys(marks, 0), dict.fromkeys(marks, 0)
    for i in range(len(images)):
        nrm = vertex_normals(verts[i], m.faces)[used]
        d = lights[i] / np.linalg.norm(lights[i])
        truth = in_shadow(verts[i], m.faces, verts[i][used], d, normals=nrm) & (nrm @ d > 0)
        for k in marks:
            hits[k] += int((marks[k][i] & truth & seen[k][i]).sum())
            count[k] += int((marks[k][i] & seen[k][i]).sum())
            real[k] += int((truth & seen[k][i]).sum())
    precision = {k: hits[k] / max(count[k], 1) for k in marks}
    recall = {k: hits[k] / max(real[k], 1) for k in marks}
    # here (a run): precision plain 0.89, spread 0.72, confirm 0.96, both 0.88;
    # recall 0.87 / 0.94 / 0.82 / 0.89
    assert precision["confirm"] > precision["plain"] + 0.03, precision  # fewer lit vertices left out
    assert recall["spread"] > recall["plain"] + 0.03, recall  # more of the real shadow among the candidates
    assert precision["both"] > precision["spread"] + 0.1, precision
    assert recall["both"] > recall["plain"], recall


def test_specular_explains_a_highlight(default_model):
    """Faces rendered with a white Blinn-Phong highlight: with the highlight's column
    (specular=16, the light's direction read off the photo) the refined faces explain more of
    their photos' colour than the harmonics alone; the faces still move towards the truth."""
    m = default_model
    shape, shots = _shots(m)
    shape, shots = shape[::3], shots[::3]
    images, lms = _rendered(m, shape, shots, gamma=2.2, specular=0.3, shininess=16.0)
    lm = fit_landmarks(m, lms, np.full((len(images), 2), float(SIZE)))
    plain = refine_photometric(m, lm.codes, lms, images, photometric=PhotometricConfig(steps=60))
    shiny = refine_photometric(m, lm.codes, lms, images,
                               photometric=PhotometricConfig(steps=60, specular=16.0))
    assert shiny.terms["shading_r2"] > plain.terms["shading_r2"] + 0.01, (plain.terms, shiny.terms)
    assert shiny.terms["photometric"] < plain.terms["photometric"]
    assert _errors(m, shiny.codes, shape).mean() < 0.85 * _errors(m, lm.codes, shape).mean()
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(SkullsearchError, match="specular"):
            PhotometricConfig(specular=bad)
