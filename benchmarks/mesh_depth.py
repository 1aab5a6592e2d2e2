"""How far can MediaPipe's z be trusted? (synthetic: renders of the default model)

The face mesh gives each of its 478 points a *learned* relative depth z besides its image x, y.
Faces drawn from the default model's prior are rendered (perspective, yaw ±``--max-yaw``°, pitch,
light, skin tone) and the mesh runs on each render; every point's x, y is read back onto the skin
through the rasterizer's triangle and barycentric buffers, which gives its true depth in the
camera frame (mm). Per photo, the mesh's z (pixels, x's scale) is related to the true depth by
the least-squares affine map (a scale and an offset: z is relative and in image units), fitted on
the points themselves, then:

- ``corr``: the median over photos of the correlation of z with the true depth;
- ``residual_mm``: the median over photos of the RMS depth error after that map (robust: a
  second fit without the points beyond 3 MADs), over the points read back onto the outer skin,
  and per region (``inner``: brows, eyes, nose, lips; ``oval``: the face's outline points), and
  the median absolute error;
- ``scale_spread``: how much the per-photo scale varies (its IQR over its median): a fit could
  use z only as a shape of depths, with the scale left free, unless it is stable;
- the same for a depth that knows nothing of the photo (the *mean face*'s depths at the same
  points, through the same affine map): what z adds beyond "a face is a face".

    python benchmarks/mesh_depth.py [--photos 60] [--max-yaw 30] [--seed 0]

Needs the ``mesh`` extra (see the README).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import emit

from skullsearch import FaceModel
from skullsearch.encoder.calibrate import read_back, skin_triangles
from skullsearch.encoder.mesh import IBUG68_FROM_MESH, mesh_points
from skullsearch.encoder.render import random_portrait


def affine_residual(z: np.ndarray, depth: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(scale, correlation, residuals (n,)) of depth ≈ scale · z + offset: least squares, then
    once more without the points beyond 3 median absolute deviations (robust to a few points
    read back onto the wrong surface)."""
    a = np.stack([z, np.ones_like(z)], 1)
    coef, *_ = np.linalg.lstsq(a, depth, rcond=None)
    res = depth - a @ coef
    keep = np.abs(res - np.median(res)) <= 3 * np.median(np.abs(res - np.median(res))) + 1e-9
    coef, *_ = np.linalg.lstsq(a[keep], depth[keep], rcond=None)
    return float(coef[0]), float(np.corrcoef(z[keep], depth[keep])[0, 1]), depth - a @ coef


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--max-yaw", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    model = FaceModel.default()
    shape = torch.as_tensor(rng.standard_normal((a.photos, model.n_shape)) * model.shape_std,
                            dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=shape).numpy().astype(np.float64)
    tmpl = model.v_template.astype(np.float64)
    on_skin = skin_triangles(model)
    inner = np.zeros(478, bool)
    inner[list(IBUG68_FROM_MESH[17:])] = True
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL  # (edges)

    oval = np.zeros(478, bool)
    oval[sorted({v for edge in FACEMESH_FACE_OVAL for v in edge})] = True  # the face's outline
    rows = {"mesh": [], "mean_face": []}
    found = 0
    for v in verts:
        render, cam = random_portrait(v, model.faces, rng, a.max_yaw, 512)
        dense = mesh_points(render.image, max_faces=1)
        if not dense:
            continue
        found += 1
        d = dense[0]
        # read back onto the outer skin only (not the background, nor the mouth's or the eyes'
        # inside, where a lip or eyelid point's pixel can land)
        ok, tri, bary = read_back(render, d[:, :2], on_skin)
        bary = bary[ok]
        corners = model.faces[tri[ok]]
        true_pts = (v[corners] * bary[..., None]).sum(1)
        depth = cam.to_camera(true_pts)[:, 2]
        mean_depth = cam.to_camera((tmpl[corners] * bary[..., None]).sum(1))[:, 2]
        for name, z in (("mesh", d[ok, 2]), ("mean_face", mean_depth)):
            scale, corr, res = affine_residual(z, depth)
            rows[name].append({"scale": scale, "corr": corr,
                               "rms_mm": float(np.sqrt((res**2).mean())),
                               "median_abs_mm": float(np.median(np.abs(res))),
                               "inner_rms_mm": float(np.sqrt((res[inner[ok]] ** 2).mean())),
                               "oval_rms_mm": float(np.sqrt((res[oval[ok]] ** 2).mean()))})

    def summary(rs):
        scale = np.array([x["scale"] for x in rs])
        q1, q3 = np.percentile(scale, [25, 75])
        return {"corr": round(float(np.median([x["corr"] for x in rs])), 4),
                "residual_mm": round(float(np.median([x["rms_mm"] for x in rs])), 3),
                "median_abs_residual_mm": round(float(np.median([x["median_abs_mm"] for x in rs])), 3),
                "inner_residual_mm": round(float(np.median([x["inner_rms_mm"] for x in rs])), 3),
                "oval_residual_mm": round(float(np.median([x["oval_rms_mm"] for x in rs])), 3),
                "scale_spread": round(float((q3 - q1) / abs(np.median(scale))), 3)}

    out = {"photos": a.photos, "found": found, "max_yaw": a.max_yaw, "seed": a.seed, "synthetic": True,
           "mesh_z": summary(rows["mesh"]), "mean_face_depth": summary(rows["mean_face"])}
    m, b = out["mesh_z"], out["mean_face_depth"]
    for label, x in (("MediaPipe z", m), ("the mean face's depths alone", b)):
        print(f"{label}: correlation {x['corr']}, RMS after an affine map {x['residual_mm']} mm "
              f"(inner points {x['inner_residual_mm']}, outline {x['oval_residual_mm']}; median |error| "
              f"{x['median_abs_residual_mm']}), per-photo scale spread {x['scale_spread']}")
    print(f"({found}/{a.photos} renders)")
    emit(out)
    return out


if __name__ == "__main__":
    main()
