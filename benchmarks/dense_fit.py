"""Do a dense detector's points help the fit find a face's identity? (synthetic: renders of the
default model, truth from the same model.)

Two measures, each the identity error (fitted neutral face against the true one over the face
region, similarity-aligned) as a ratio to the mean face's error, for each dense weight
``FitConfig.w_dense`` (0 = the 68 landmarks alone):

- **oracle**: the model's own 68 and dense points of ``--faces`` faces from the prior, projected
  by a known camera, plus ``--noise`` px of Gaussian noise: what the dense term can give when the
  points follow the face exactly;
- **mesh**: renders of ``--faces`` faces (yaw ±40°, pitch, light, skin tone, a little
  expression) through the real decoder, MediaPipe's face mesh and the batched fit, with the
  mesh's 478 points read onto the model by its packaged calibration
  (``encoder/data/dense-mesh-*.npz``); also each weight's fit time as a ratio to the 68 alone
  (one run).

    python benchmarks/dense_fit.py [--faces 120] [--weights 0 1 5] [--noise 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, identity_errors, random_faces, render_photos

from skullsearch import FaceModel
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.encode import detect_faces, fit_faces
from skullsearch.encoder.face_model import face_region
from skullsearch.encoder.fitting import (
    FitConfig,
    camera_rotation,
    dense_rig_for,
    fit_landmarks,
    project,
    rig_for,
)
from skullsearch.encoder.images import read_images
from skullsearch.encoder.mesh import MeshDetector


def oracle(model, mask, n: int, weights, noise: float, rng) -> dict:
    """Identity ratio per weight when the 68 and dense points are the model's own, projected."""
    shape, _, _ = random_faces(model, n, rng)
    rig = rig_for(model, detector="mesh")
    drig, _ = dense_rig_for(model, "mesh")
    rest = torch.zeros(n, 3 * rig.n_joints)
    zero_e = torch.zeros(n, rig.n_expression)
    with torch.no_grad():
        lm3, _ = rig.points(shape, zero_e, rest)
        d3, _ = drig.points(shape, zero_e, rest)
        turn = rng.uniform(-1, 1, (n, 3)) * np.radians([10.0, 40.0, 5.0])
        rot = camera_rotation(torch.tensor(turn, dtype=torch.float32))
        trans = torch.tensor(np.c_[rng.normal(0, 10, (n, 2)), rng.uniform(500, 700, n)], dtype=torch.float32)
        focal, center = torch.full((n,), 1.2 * 512.0), torch.full((n, 2), 256.0)
        lm2 = project(lm3, rot, trans, focal, center).numpy()
        dd2 = project(d3, rot, trans, focal, center).numpy()
    lm2 = lm2 + rng.normal(0, noise, lm2.shape)
    dd2 = dd2 + rng.normal(0, noise, dd2.shape)
    out = {}
    for w in weights:
        res = fit_landmarks(model, lm2, np.full((n, 2), 512.0), config=FitConfig(w_dense=w), rig=rig,
                            dense=dd2, dense_rig=drig)
        err, err0 = identity_errors(model, mask, code_layout.split(res.codes).shape[:, :90], shape.numpy())
        out[str(w)] = round(float(err.mean() / err0.mean()), 3)
    return out


def mesh(model, mask, n: int, weights, rng) -> dict:
    """Identity ratio and fit time per weight on renders through MediaPipe's face mesh."""
    shape, expr, pose = random_faces(model, n, rng, expr_scale=0.1)
    folder = Path(tempfile.mkdtemp(prefix="skullsearch-dense-"))
    paths = render_photos(model, folder, shape, expr, pose, rng, max_yaw=40.0)
    faces, _ = detect_faces(read_images(paths), MeshDetector(max_faces=1), all_faces=False)
    idx = np.array([int(Path(f.image).stem[5:]) for f in faces])
    ratio, seconds = {}, {}
    for w in weights:
        mine = copy.deepcopy(faces)
        t = time.perf_counter()
        fit_faces(model, mine, config=FitConfig(w_dense=w))
        seconds[str(w)] = time.perf_counter() - t
        fitted = code_layout.split(np.stack([f.code for f in mine])).shape[:, :90]
        err, err0 = identity_errors(model, mask, fitted, shape.numpy()[idx])
        ratio[str(w)] = round(float(err.mean() / err0.mean()), 3)
    base = seconds[str(weights[0])]
    return {"faces_found": len(faces), "photos": n, "identity_ratio": ratio,
            "fit_ms_per_face": {k: round(1e3 * v / max(len(faces), 1), 2) for k, v in seconds.items()},
            "fit_time_ratio": {k: round(v / base, 2) for k, v in seconds.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=120)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 5.0])
    ap.add_argument("--noise", type=float, default=1.0, help="oracle: landmark noise, px")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    model = FaceModel.default()
    mask = face_region(model)
    if dense_rig_for(model, "mesh")[0] is None:
        raise SystemExit("the default model has no dense calibration for the mesh "
                         "(skullsearch model calibrate --detector mesh)")
    rng = np.random.default_rng(a.seed)
    emit({"synthetic": True, "faces": a.faces, "weights": a.weights, "seed": a.seed,
          "oracle_noise_px": a.noise,
          "oracle_identity_ratio": oracle(model, mask, a.faces, a.weights, a.noise, rng),
          "mesh": mesh(model, mask, a.faces, a.weights, rng)})


if __name__ == "__main__":
    main()
