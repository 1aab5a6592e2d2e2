"""The fit's posterior covariance (FitConfig(posterior=True)): what it must do as a posterior —
shrink with more photos of a person and grow with the landmark noise, combine photos by adding
their information, and turn into soft-tissue covariances that are symmetric and positive."""

import numpy as np
import pytest
import torch
from torch_threads import one_thread

from skullsearch.encoder.fitting import (
    JAW,
    FitConfig,
    LandmarkRig,
    camera_rotation,
    fit_landmarks,
    model_landmarks_px,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def rig(default_model):
    return LandmarkRig(default_model, 90, 90)


def photos_of_one_head(model, rig, yaws_deg, seed=0, noise_px=0.5):
    """Landmarks (n, 68, 2) px of one random head seen at the given yaws, and image sizes."""
    rng = np.random.default_rng(seed)
    n = len(yaws_deg)
    shape = torch.tensor(rng.standard_normal(model.n_shape) * model.shape_std * 0.7,
                         dtype=torch.float32).expand(n, -1)
    expr = torch.zeros(n, model.n_expression)
    pose = torch.zeros(n, 3 * model.n_joints)
    pose[:, 3 * JAW] = 0.05
    rot = torch.tensor(np.deg2rad([[3.0, y, 0.0] for y in yaws_deg]), dtype=torch.float32)
    trans = torch.tensor([[0.0, -30.0, 600.0]] * n)
    with torch.no_grad():
        uv = model_landmarks_px(rig, shape, expr, pose, camera_rotation(rot), trans,
                                torch.full((n,), 614.4), torch.full((n, 2), 256.0)).numpy()
    return uv + rng.normal(scale=noise_px, size=uv.shape), np.full((n, 2), 512.0)


def test_the_posterior_is_off_by_default_and_symmetric_positive_when_asked(default_model, rig):
    uv, size = photos_of_one_head(default_model, rig, [0.0, 25.0])
    assert fit_landmarks(default_model, uv, size, rig=rig).shape_cov is None
    res = fit_landmarks(default_model, uv, size, rig=rig, config=FitConfig(posterior=True))
    cov = res.shape_cov
    assert cov.shape == (2, 90, 90) and cov.dtype == np.float32
    np.testing.assert_allclose(cov, cov.transpose(0, 2, 1), atol=1e-6 * np.abs(cov).max())
    assert (np.linalg.eigvalsh(cov.astype(np.float64)) > 0).all()
    # never wider than the model's own prior N(0, σ_α²), and narrower where the photo speaks
    var = np.diagonal(cov, axis1=1, axis2=2)
    prior = default_model.shape_std[:90] ** 2
    assert (var <= prior * 1.0001).all()
    assert (var[:, :5] < 0.9 * prior[:5]).all()  # the largest components are seen


def test_more_photos_narrow_it_and_more_landmark_noise_widens_it(default_model, rig):
    uv, size = photos_of_one_head(default_model, rig, [-30.0, 0.0, 30.0], seed=1)
    single = fit_landmarks(default_model, uv, size, rig=rig, config=FitConfig(posterior=True))
    joint = fit_landmarks(default_model, uv, size, person=np.zeros(3), rig=rig,
                          config=FitConfig(posterior=True))
    noisy = fit_landmarks(default_model, uv, size, rig=rig,
                          config=FitConfig(posterior=True, landmark_noise=0.06))
    np.testing.assert_array_equal(joint.shape_cov[0], joint.shape_cov[2])  # one person, one posterior
    tr = lambda c: np.trace(c, axis1=-2, axis2=-1)  # noqa: E731
    assert (tr(joint.shape_cov[0]) < tr(single.shape_cov)).all()
    assert (tr(noisy.shape_cov) > tr(single.shape_cov)).all()


def test_a_person_adds_the_information_of_its_photos(default_model, rig):
    """Two copies of one photo fitted as one person: the data's information (posterior precision
    minus the prior's) is twice one copy's."""
    uv, size = photos_of_one_head(default_model, rig, [10.0], seed=2)
    cfg = FitConfig(posterior=True, photo_correlation=0.0)  # counted as independent
    one = fit_landmarks(default_model, uv, size, rig=rig, config=cfg)
    two = fit_landmarks(default_model, np.concatenate([uv, uv]), np.concatenate([size, size]),
                        person=np.zeros(2), rig=rig, config=cfg)
    prior = np.diag(1.0 / default_model.shape_std[:90].astype(np.float64) ** 2)
    info1 = np.linalg.inv(one.shape_cov[0].astype(np.float64)) - prior
    info2 = np.linalg.inv(two.shape_cov[0].astype(np.float64)) - prior
    # (the two fits stop at slightly different states: the joint one counts the fit's own
    # regularizer once per photo, so their Jacobians differ a little)
    top = np.linalg.eigh(info1)[1][:, -10:]  # the ten best-seen directions
    ratio = np.diagonal(top.T @ info2 @ top) / np.diagonal(top.T @ info1 @ top)
    np.testing.assert_allclose(ratio, 2.0, rtol=0.1)


def test_soft_tissue_covariances_follow_the_shape_posterior(default_model, rig):
    uv, size = photos_of_one_head(default_model, rig, [0.0], seed=3)
    res = fit_landmarks(default_model, uv, size, rig=rig, config=FitConfig(posterior=True))
    cov = default_model.soft_tissue_covariance(res.shape_cov)
    assert cov.shape == (1, 36, 3, 3)
    assert (np.linalg.eigvalsh(cov[0].astype(np.float64)) > -1e-6).all()
    # the same as sampling shapes from the posterior and pushing them through the basis
    p0, basis = default_model.soft_tissue_basis(90)
    rng = np.random.default_rng(0)
    samples = rng.multivariate_normal(np.zeros(90), res.shape_cov[0].astype(np.float64), 20000)
    pts = np.einsum("kis,ns->nki", basis.astype(np.float64), samples)
    emp = np.einsum("nki,nkj->kij", pts, pts) / len(pts)
    np.testing.assert_allclose(emp, cov[0], rtol=0.1, atol=0.05 * np.abs(cov).max())


def test_a_turned_photo_fixes_depths_that_a_frontal_one_leaves_open(default_model, rig):
    """A frontal photo measures widths and heights; depths (z) only through the prior. The same
    head turned 40° gives a narrower depth posterior of its soft-tissue points."""
    uv, size = photos_of_one_head(default_model, rig, [0.0, 40.0], seed=4)
    res = fit_landmarks(default_model, uv, size, rig=rig, config=FitConfig(posterior=True))
    sd = np.sqrt(np.diagonal(default_model.soft_tissue_covariance(res.shape_cov), axis1=-2, axis2=-1)
                 .mean(1))  # (2, 3) x, y, z mm
    assert sd[1, 2] < 0.95 * sd[0, 2], sd


def test_correlated_photos_count_as_fewer(default_model, rig):
    """photo_correlation ρ: K photos of one person count as K / (1 + (K − 1) ρ) independent ones —
    the data information of three copies of one photo at ρ = 0.5 is 1.5 copies', at ρ = 0 three
    copies'; the codes do not change, nor does one photo's posterior."""
    uv, size = photos_of_one_head(default_model, rig, [10.0], seed=5)
    three = (np.concatenate([uv] * 3), np.concatenate([size] * 3))
    prior = np.diag(1.0 / default_model.shape_std[:90].astype(np.float64) ** 2)

    def fitted(n_photos, rho):
        lm, sz = (uv, size) if n_photos == 1 else three
        return fit_landmarks(default_model, lm, sz, person=np.zeros(n_photos), rig=rig,
                             config=FitConfig(posterior=True, photo_correlation=rho))

    info = {}
    for n_photos, rho in ((1, 0.0), (1, 0.5), (3, 0.0), (3, 0.5)):
        res = fitted(n_photos, rho)
        info[n_photos, rho] = np.linalg.inv(res.shape_cov[0].astype(np.float64)) - prior
        if n_photos == 3 and rho:
            np.testing.assert_array_equal(res.codes, fitted(3, 0.0).codes)
    np.testing.assert_allclose(info[1, 0.5], info[1, 0.0], rtol=1e-4, atol=1e-6 * np.abs(info[1, 0.0]).max())
    top = np.linalg.eigh(info[1, 0.0])[1][:, -10:]  # the ten best-seen directions
    seen = lambda m: np.diagonal(top.T @ m @ top)  # noqa: E731
    np.testing.assert_allclose(seen(info[3, 0.5]) / seen(info[3, 0.0]), 0.5, rtol=1e-3)
    np.testing.assert_allclose(seen(info[3, 0.5]) / seen(info[1, 0.0]), 1.5, rtol=0.1)


@pytest.mark.parametrize("rho", [-0.1, 1.0, 2.0])
def test_photo_correlation_outside_0_1_is_refused(rho):
    from skullsearch.errors import SkullsearchError

    with pytest.raises(SkullsearchError, match="photo_correlation"):
        FitConfig(photo_correlation=rho)


def test_the_encoder_fingerprint_does_not_hold_the_photo_correlation():
    from skullsearch.index.ingest import encoder_fingerprint

    base = encoder_fingerprint(FitConfig(), "dlib")
    assert encoder_fingerprint(FitConfig(photo_correlation=0.4), "dlib") == base
