"""Demo data on the default face model (ICT): synthetic portrait photos and a query skull.

    python demo/data.py photos OUT/photos [--persons 12] [--per-person 2] [--seed 0]
    python demo/data.py skull --gallery OUT/gallery --person person_05 --out OUT/case
    python demo/data.py check OUT/query.json --truth OUT/case/truth.json

**What is synthetic here.** The photos are renders (Lambertian, one light, 512 px) of random
heads of the default model (ICT); they go through the real dlib detector and the real encoder in
``skullsearch ingest`` like any photo. The skull is made *under a face of the gallery* — the face
the encoder recovered from that person's first photo — by
:func:`skullsearch.retrieval.synthetic.synthetic_skull` (the inner offset surface of the face at
the 2023 T-Table depths, ±0.5 SD per landmark, under a random rigid motion); it is not an
anatomical skull. Real use: a FLAME file (``--face-model``), real photos, a CT/surface-scan skull
with its landmarks (see the README).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def photos(out: Path, persons: int, per_person: int, seed: int) -> list[Path]:
    """Render ``per_person`` photos (yaw ±25°, varied light and skin tone) of each of ``persons``
    random heads into ``out/person_NN/photo_K.png``."""
    import torch
    from PIL import Image

    from skullsearch import FaceModel
    from skullsearch.encoder.render import face_camera, render_mesh

    model = FaceModel.default()
    rng = np.random.default_rng(seed)
    s = min(model.n_shape, 90)
    shape = torch.as_tensor(rng.standard_normal((persons, s)) * model.shape_std[:s], dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=shape).numpy()
    paths = []
    for i, v in enumerate(verts):
        folder = out / f"person_{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        tone = rng.uniform(0.65, 1.05)
        for k in range(per_person):
            cam = face_camera(yaw_deg=rng.uniform(-25, 25), pitch_deg=rng.uniform(-5, 5), size=512,
                              distance=rng.uniform(550, 800), fov_mm=300, center=np.array([0.0, -30.0, 0.0]))
            light = (rng.uniform(-0.4, 0.4), rng.uniform(0.1, 0.5), 1.0)
            image = render_mesh(v, model.faces, cam, albedo=np.array([0.8, 0.62, 0.5]) * tone,
                                light_dir=light).image
            paths.append(folder / f"photo_{k}.png")
            Image.fromarray(image).save(paths[-1])
    return paths


def skull(gallery: Path, person: str, out: Path, seed: int, depth_noise: float) -> Path:
    """Make the query skull under ``person``'s first face in the gallery; writes
    ``out/skull.ply``, ``out/skull.landmarks.json`` and ``out/truth.json``."""
    import skullsearch
    from skullsearch.retrieval.synthetic import synthetic_skull

    g = skullsearch.Gallery.open(gallery)
    faces = g.faces(columns=["face_id", "person", "path"], as_pandas=True)
    mine = faces[faces["person"] == person].sort_values("path")
    if mine.empty:
        known = sorted(p for p in faces["person"].dropna().unique())
        sys.exit(f"error: no face of person {person!r} in {gallery}; persons: {', '.join(known[:20])}")
    face_id = int(mine["face_id"].iloc[0])
    rng = np.random.default_rng(seed)
    sk = synthetic_skull(g.face_model, g.codes([face_id])[0], depth_noise=depth_noise, rng=rng,
                         rigid_motion=True)
    path = sk.save(out)
    (out / "truth.json").write_text(json.dumps({
        "face_id": face_id, "person": person, "photo": str(mine["path"].iloc[0]),
        "depth_noise_sd": depth_noise, "landmarks": int(sk.present.sum()),
        "note": "synthetic skull made under this gallery face (demo/data.py)"}, indent=1))
    return path


def check(query_json: Path, truth_json: Path) -> bool:
    """Whether the ranked table's first candidate is the person the skull was made under (the
    face itself, or another photo of the same person: those photos are renders of one head, so
    their fitted faces are close and either may come first)."""
    res = json.loads(query_json.read_text())
    truth = json.loads(truth_json.read_text())
    cands = res["candidates"]
    rank = next((c["rank"] for c in cands if c["face_id"] == truth["face_id"]), None)
    ok = bool(cands) and (cands[0]["face_id"] == truth["face_id"] or cands[0]["person"] == truth["person"])
    print(f"true face {truth['face_id']} ({truth['person']}): rank {rank if rank else 'not listed'}; "
          f"rank 1 is {cands[0]['person'] if cands else 'nobody'}"
          f"{' — the true person first, as it should be' if ok else ' — NOT the true person'}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("photos", help="render synthetic portrait photos")
    p.add_argument("out", type=Path)
    p.add_argument("--persons", type=int, default=12)
    p.add_argument("--per-person", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("skull", help="make the query skull under a gallery face")
    s.add_argument("--gallery", type=Path, required=True)
    s.add_argument("--person", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--depth-noise", type=float, default=0.5, help="per-landmark depth error, in table SDs")
    c = sub.add_parser("check", help="is the true face ranked first?")
    c.add_argument("query_json", type=Path)
    c.add_argument("--truth", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "photos":
        print(f"wrote {len(photos(a.out, a.persons, a.per_person, a.seed))} photos to {a.out}")
    elif a.cmd == "skull":
        print(f"wrote {skull(a.gallery, a.person, a.out, a.seed, a.depth_noise)}")
    else:
        return 0 if check(a.query_json, a.truth) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
