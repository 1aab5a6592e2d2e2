"""Near-duplicate photos: how far apart in identity (shape-code L2, the code index's distance) are
two photos of one face, and how close is the nearest *different* face?

Renders N synthetic faces of the default model (400 px, yaw ±20°, random skin tone); per face:
photo A, photo B of the same face turned ``--yaw-step`` degrees further, and C = A re-saved as a
90 %-size JPEG (other bytes, so sha256 idempotence does not catch it). All go through
``Gallery.ingest`` (real dlib detector and fit; flagging off), then every pair of faces is
measured. The threshold ``index.ingest.NEAR_DUPLICATE_DISTANCE`` should sit between the
same-face distances and the nearest different face.

    python benchmarks/near_duplicates.py [--faces 24] [--yaw-step 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit  # noqa: E402
from PIL import Image  # noqa: E402

from skullsearch import FaceModel, Gallery  # noqa: E402
from skullsearch.index.ingest import NEAR_DUPLICATE_DISTANCE  # noqa: E402
from skullsearch.index.vectors import shape_vectors  # noqa: E402


def render_pairs(model, folder: Path, n: int, yaw_step: float, seed: int) -> None:
    """Photos face{i}_a.png, face{i}_b.png (yaw + yaw_step), face{i}_c.jpg (A re-saved)."""
    from skullsearch.encoder.render import face_camera, render_mesh

    rng = np.random.default_rng(seed)
    betas = torch.tensor(rng.standard_normal((n, 90)), dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=betas).numpy()
    for i, v in enumerate(verts):
        yaw = rng.uniform(-20, 20)
        albedo = np.array([0.8, 0.62, 0.5]) * rng.uniform(0.7, 1.05)
        for tag, y in (("a", yaw), ("b", yaw + yaw_step)):
            cam = face_camera(yaw_deg=y, size=400, distance=600, fov_mm=300,
                              center=np.array([0.0, -30.0, 0.0]))
            image = render_mesh(v, model.faces, cam, albedo=albedo).image
            Image.fromarray(image).save(folder / f"face{i:03d}_{tag}.png")
        a = Image.open(folder / f"face{i:03d}_a.png")
        a.resize((360, 360), Image.LANCZOS).save(folder / f"face{i:03d}_c.jpg", quality=85)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=24)
    ap.add_argument("--yaw-step", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="skullsearch-neardup-"))
    try:
        model = FaceModel.default()
        photos = scratch / "photos"
        photos.mkdir()
        t0 = time.perf_counter()
        render_pairs(model, photos, args.faces, args.yaw_step, args.seed)
        g = Gallery.create(scratch / "gallery", face_model=model)
        rep = g.ingest([photos], near_duplicate_distance=0)
        print(f"{3 * args.faces} photos rendered and ingested in {time.perf_counter() - t0:.1f} s: "
              f"{rep.faces} faces, failures {rep.failures}")
        t = g.faces(columns=["path", "code"])
        names = [Path(p).stem for p in t.column("path").to_pylist()]
        who = np.array([s.split("_")[0] for s in names])
        kind = np.array([s.split("_")[1] for s in names])
        v = shape_vectors(np.stack(t.column("code").to_numpy(zero_copy_only=False))).astype(np.float64)
        d = np.sqrt(np.maximum(((v[:, None] - v[None]) ** 2).sum(-1), 0))
        same = who[:, None] == who[None]
        iu = np.triu_indices(len(v), 1)
        pairs = {"yaw": [], "resave": [], "yaw_resave": []}
        for i, j in zip(*iu, strict=True):
            if same[i, j]:
                k = "".join(sorted(kind[i] + kind[j]))
                pairs[{"ab": "yaw", "ac": "resave", "bc": "yaw_resave"}[k]].append(d[i, j])
        diff = np.where(same, np.inf, d)
        nn_diff = diff.min(1)  # each face's nearest different face
        res = {"faces": args.faces, "yaw_step_deg": args.yaw_step, "photos_ingested": rep.faces,
               "threshold": NEAR_DUPLICATE_DISTANCE}
        for k, x in pairs.items():
            x = np.asarray(x)
            res[f"same_{k}_median"] = round(float(np.median(x)), 4) if len(x) else None
            res[f"same_{k}_max"] = round(float(x.max()), 4) if len(x) else None
            flagged = float(np.mean(x <= NEAR_DUPLICATE_DISTANCE)) if len(x) else None
            res[f"same_{k}_flagged"] = round(flagged, 4) if len(x) else None
            if len(x):
                print(f"same face, {k:10s}: median {np.median(x):.3f}, max {x.max():.3f}; "
                      f"{flagged:.0%} under the threshold {NEAR_DUPLICATE_DISTANCE}")
        res["different_nn_min"] = round(float(nn_diff.min()), 4)
        res["different_nn_p05"] = round(float(np.percentile(nn_diff, 5)), 4)
        res["different_nn_median"] = round(float(np.median(nn_diff)), 4)
        res["different_pairs_flagged"] = int((d[iu][~same[iu]] <= NEAR_DUPLICATE_DISTANCE).sum())
        print(f"nearest different face: min {nn_diff.min():.3f}, 5th percentile "
              f"{np.percentile(nn_diff, 5):.3f}, median {np.median(nn_diff):.3f}; "
              f"{res['different_pairs_flagged']} different-face pairs under the threshold")
        emit(res)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
