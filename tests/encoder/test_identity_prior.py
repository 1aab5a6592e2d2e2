"""The identity prior: its arithmetic, its domain test, its file, the fit's shape prior, and (slow)
its training on real renders through the real detector."""

import numpy as np
import pytest

from skullsearch.encoder import identity_prior as ip
from skullsearch.encoder.fitting import fit_landmarks
from skullsearch.errors import SkullsearchError


def _prior(model, rng, s=10):
    w = rng.standard_normal((129, s)) * 0.1
    descs = rng.standard_normal((500, 128)) * 0.05
    cov = np.cov(descs.T) + 1e-6 * np.eye(128)
    return ip.IdentityPrior(w, np.full(s, 0.6), descs.mean(0), np.linalg.inv(np.linalg.cholesky(cov)),
                            12.0, model.fingerprint, {"renders": 500}), descs


def test_shape_prior_rows_in_and_out_of_domain(default_model):
    rng = np.random.default_rng(0)
    prior, descs = _prior(default_model, rng)
    far = descs[0] + 5.0  # far outside the training descriptors
    mean, std, applied = prior.shape_prior(np.stack([descs[1], far, np.full(128, np.nan)]),
                                           np.ones(90), scale=0.5)
    assert applied.tolist() == [True, False, False]
    np.testing.assert_allclose(mean[0], np.r_[descs[1], 1.0] @ prior.weights)
    np.testing.assert_allclose(std[0], 0.3)
    assert (mean[1:] == 0).all() and (std[1:] == 1).all()  # the plain prior there
    d = prior.domain_distance(descs)
    assert np.median(d) < prior.domain_limit < prior.domain_distance(far[None])[0]


def test_save_load_and_the_model_check(default_model, anny_model, tmp_path, monkeypatch):
    prior, _ = _prior(default_model, np.random.default_rng(1))
    path = prior.save(tmp_path / "p.npz")
    back = ip.for_model(default_model, path)
    np.testing.assert_allclose(back.weights, prior.weights, rtol=1e-6, atol=1e-7)
    assert back.meta == {"renders": 500} and back.domain_limit == 12.0
    with pytest.raises(SkullsearchError, match="another face model"):
        ip.for_model(anny_model, path)
    (tmp_path / "bad.npz").write_bytes(b"not a prior")
    with pytest.raises(SkullsearchError, match="not an identity prior"):
        ip.IdentityPrior.load(tmp_path / "bad.npz")
    monkeypatch.setattr(ip, "DATA", tmp_path / "none")
    with pytest.raises(SkullsearchError, match="train one"):
        ip.for_model(default_model)


def test_the_fit_follows_a_tight_shape_prior_and_ignores_a_loose_one(default_model):
    """With the same landmarks, a tight prior N(m, 0.01²) puts the shape at m; a prior as wide
    as the plain one gives the plain fit."""
    import torch

    from skullsearch.encoder import code as code_layout
    from skullsearch.encoder.render import face_camera

    rng = np.random.default_rng(2)
    with torch.no_grad():
        v = default_model.vertices(shape=torch.as_tensor(rng.standard_normal((1, 90)), dtype=torch.float32))
        lm3 = default_model.landmarks68(vertices=v)[0].numpy()
    cam = face_camera(yaw_deg=10, size=400, distance=600, fov_mm=300, center=np.array([0.0, -30.0, 0.0]))
    lm = cam.project(lm3)[None, :, :2]
    target = rng.standard_normal((1, 20))
    tight = fit_landmarks(default_model, lm, np.array([[400.0, 400.0]]),
                          shape_prior=(target, np.full((1, 20), 0.01)))
    shape = code_layout.split(tight.codes).shape[0, :20]
    np.testing.assert_allclose(shape, target[0], atol=0.05)
    plain = fit_landmarks(default_model, lm, np.array([[400.0, 400.0]]))
    loose = fit_landmarks(default_model, lm, np.array([[400.0, 400.0]]),
                          shape_prior=(np.zeros((1, 20)), np.asarray(default_model.shape_std[:20])[None]))
    np.testing.assert_allclose(loose.codes, plain.codes, atol=1e-4)
    with pytest.raises(SkullsearchError, match="shape_prior"):
        fit_landmarks(default_model, lm, np.array([[400.0, 400.0]]),
                      shape_prior=(np.zeros((2, 20)), np.ones(20)))


@pytest.mark.slow
def test_training_on_renders_is_deterministic_and_predicts_shape(default_model):
    a = ip.train_identity_prior(default_model, renders=200, seed=3)
    b = ip.train_identity_prior(default_model, renders=200, seed=3)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.meta["found"] > 150 and a.model_fingerprint == default_model.fingerprint
    # even from 170 renders, the first shape components are predicted better than by the prior mean
    assert np.mean(a.meta["held_out_r2_first5"]) > 0.1


def test_encode_with_the_packaged_prior_applies_it_in_domain_only(default_model, tmp_path):
    """On a render of the default model the packaged prior applies (no flag) and moves the shape
    towards its prediction; a face whose descriptor is out of its domain keeps the plain fit and
    is flagged."""
    import torch
    from PIL import Image

    from skullsearch.encoder import code as code_layout
    from skullsearch.encoder.encode import IDENTITY_PRIOR_OUT, encode, fit_faces
    from skullsearch.encoder.render import random_portrait

    prior = ip.for_model(default_model)
    assert prior.meta["found"] > 3000 and prior.domain_limit > 5
    rng = np.random.default_rng(4)
    with torch.no_grad():
        betas = torch.as_tensor(rng.standard_normal((1, 90)), dtype=torch.float32)
        v = default_model.vertices(shape=betas)[0]
    render, _ = random_portrait(v.numpy(), default_model.faces, rng, max_yaw=15, size=360)
    Image.fromarray(render.image).save(tmp_path / "head.png")
    plain = encode([tmp_path / "head.png"], model=default_model, descriptors=True)
    with_prior = encode([tmp_path / "head.png"], model=default_model, identity_prior=True)
    (f,) = with_prior.faces
    assert IDENTITY_PRIOR_OUT not in f.quality and f.descriptor is not None
    pred = prior.predict(f.descriptor[None])[0]

    s_plain = code_layout.split(plain.codes).shape[0, :90]
    s_prior = code_layout.split(with_prior.codes).shape[0, :90]
    assert np.linalg.norm(s_prior - pred) < 0.5 * np.linalg.norm(s_plain - pred)
    # out of domain: the plain fit, flagged
    far = plain.faces[0]
    far.descriptor = far.descriptor + 1.0
    far.quality = ()
    fit_faces(default_model, [far], identity_prior=prior)
    assert IDENTITY_PRIOR_OUT in far.quality
    np.testing.assert_allclose(code_layout.split(far.code[None]).shape[0, :90], s_plain, atol=1e-3)


def test_textured_training_renders_are_painted(default_model):
    """``texture``: the renders get brows, lips and eyes (a render's albedo draws follow its
    shape draw, so the first head is the same head in both): dlib's descriptor of the painted
    head differs from the untextured one's, and the draws stay deterministic for a seed."""
    plain = ip._render_batch((None, 3, 0, 2, 40.0, False))
    painted = ip._render_batch((None, 3, 0, 2, 40.0, True))
    again = ip._render_batch((None, 3, 0, 2, 40.0, True))
    np.testing.assert_array_equal(painted[1], again[1])
    np.testing.assert_array_equal(painted[0][0], plain[0][0])
    assert np.linalg.norm(painted[1][0] - plain[1][0]) > 0.05
