"""Landmark photos without images: random faces of a model projected through random cameras."""

import numpy as np
import torch

from skullsearch.encoder.fitting import JAW, camera_rotation, model_landmarks_px


def landmark_photos(model, rig, n, seed, noise_px=1.0, same=None):
    """n noisy photos of random faces; same (n,) index: photos with equal values show one face
    (shape and expression) through different cameras. Returns the true shapes (n, 90), the
    landmarks (n, 68, 2) px with Gaussian noise of noise_px, the image sizes (n, 2) (512²)."""
    rng = np.random.default_rng(seed)
    shape = torch.tensor(rng.standard_normal((n, 90)) * model.shape_std[:90], dtype=torch.float32)
    expr = torch.tensor(np.clip(rng.standard_normal((n, model.n_expression)) * 0.15, 0, None)
                        * (rng.random((n, model.n_expression)) < 0.2), dtype=torch.float32)
    if same is not None:
        shape, expr = shape[same], expr[same]
    pose = torch.zeros(n, 3 * model.n_joints)
    pose[:, 3 * JAW] = torch.tensor(rng.uniform(0, 0.12, n), dtype=torch.float32)
    rot = torch.tensor(np.deg2rad(np.stack([rng.uniform(-10, 10, n), rng.uniform(-30, 30, n),
                                            rng.uniform(-5, 5, n)], 1)), dtype=torch.float32)
    trans = torch.tensor(np.stack([rng.uniform(-20, 20, n), rng.uniform(-50, -10, n),
                                   rng.uniform(450, 900, n)], 1), dtype=torch.float32)
    with torch.no_grad():
        uv = model_landmarks_px(rig, shape, expr, pose, camera_rotation(rot), trans,
                                torch.full((n,), 614.4), torch.full((n, 2), 256.0)).numpy()
    return shape, uv + rng.normal(scale=noise_px, size=uv.shape), np.full((n, 2), 512.0)


def use_measured_scatter(monkeypatch, sigma) -> None:
    """Every named detector measured to scatter by sigma (68,) (``FitConfig.landmark_weights``):
    a stand-in for :func:`~skullsearch.encoder.fitting.detector_point_sigma` in the fit and the
    photometric refinement."""
    from skullsearch.encoder import fitting, photometric

    def measured(model, detector, cfg):
        return (sigma, sigma) if detector and cfg.landmark_weights else None

    monkeypatch.setattr(fitting, "detector_point_sigma", measured)
    monkeypatch.setattr(photometric, "detector_point_sigma", measured)
