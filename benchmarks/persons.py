"""Who is who: person descriptors vs shape codes on labelled photos, and the persons grouping.

Photos come either from a folder whose sub-folders name the persons (``--photos DIR``: real
photos, real truth; the labels only score, they never enter the fit) or are rendered
(``--render N``: N default-model heads × ``--per-person`` portraits, yaw ±40°, light, skin tone;
synthetic truth). Every photo is ingested into a fresh gallery through the real path (decode,
dlib, fit, descriptor), each fitted alone. Reported:

- same-vs-different-person pair AUC from the person descriptors and from the shape codes, and the
  descriptor distances of same-person pairs (95th percentile, max) and different-person pairs
  (min, 5th percentile);
- the persons grouping (``Gallery.group_persons``) at thresholds 0.4 / 0.5 / 0.6: pairwise
  precision (two faces put together are one person) and recall (two faces of one person are put
  together), groups found vs persons;
- the ``person`` near-duplicate flags at ingest: how many re-shots were flagged, and how many
  flags join different persons.

    python benchmarks/persons.py --photos /path/to/person_folders
    python benchmarks/persons.py --render 40 --per-person 3
    python benchmarks/persons.py --photos DIR --detector mesh     # MediaPipe's face mesh instead of dlib
    python benchmarks/persons.py --photos DIR --photometric       # fits refined by the photo's shading
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_textured_embedding_argument, auc, emit

from skullsearch import FaceModel, Gallery
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.fitting import FitConfig


def render_people(folder: Path, n: int, per: int, seed: int) -> None:
    import torch
    from PIL import Image

    from skullsearch.encoder.render import random_portrait

    model = FaceModel.from_env()
    rng = np.random.default_rng(seed)
    betas = torch.as_tensor(rng.standard_normal((n, model.n_shape)) * np.asarray(model.shape_std),
                            dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=betas).numpy()
    for i, v in enumerate(verts):
        (folder / f"person{i:03d}").mkdir(parents=True)
        for k in range(per):
            render, _ = random_portrait(v, model.faces, rng, max_yaw=40.0, size=400)
            Image.fromarray(render.image).save(folder / f"person{i:03d}" / f"photo{k}.png")


def pair_scores(g: Gallery) -> dict:
    t = g.faces(columns=["face_id", "path", "descriptor", "code"]).to_pylist()
    t = [r for r in t if r["descriptor"] is not None]
    who = np.array([Path(r["path"]).parent.name for r in t])  # (labels kept out of the fit)
    desc = np.array([r["descriptor"] for r in t], np.float64)
    shape = code_layout.split(np.array([r["code"] for r in t], np.float32)).shape[:, :code_layout.N_SHAPE]
    iu = np.triu_indices(len(t), 1)
    same = who[iu[0]] == who[iu[1]]
    dd = np.linalg.norm(desc[:, None] - desc[None], axis=-1)[iu]
    ds = np.linalg.norm(shape[:, None] - shape[None], axis=-1)[iu]
    out = {"faces": len(t), "persons": int(len(set(who))), "same_pairs": int(same.sum()),
           "auc_descriptor": round(auc(dd[same], dd[~same]), 4),
           "auc_shape_code": round(auc(ds[same], ds[~same]), 4)}
    if same.any():
        out["same_descriptor_p95"] = round(float(np.percentile(dd[same], 95)), 3)
        out["same_descriptor_max"] = round(float(dd[same].max()), 3)
    if (~same).any():
        out["different_descriptor_min"] = round(float(dd[~same].min()), 3)
        out["different_descriptor_p5"] = round(float(np.percentile(dd[~same], 5)), 3)
    return out, {r["face_id"]: p for r, p in zip(t, who, strict=True)}


def grouping(g: Gallery, label: dict, threshold: float) -> dict:
    table = g.group_persons(threshold)
    ids = table.column("face_id").to_numpy()
    grp = table.column("person_group").to_numpy()
    keep = np.array([int(i) in label for i in ids])
    ids, grp = ids[keep], grp[keep]
    who = np.array([label[int(i)] for i in ids])
    iu = np.triu_indices(len(ids), 1)
    same_p, same_g = who[iu[0]] == who[iu[1]], grp[iu[0]] == grp[iu[1]]
    tp = int((same_p & same_g).sum())
    return {"threshold": threshold, "groups": int(len(set(grp.tolist()))),
            "pair_precision": round(tp / max(int(same_g.sum()), 1), 4),
            "pair_recall": round(tp / max(int(same_p.sum()), 1), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, help="a folder of person sub-folders (real truth)")
    ap.add_argument("--render", type=int, default=0, help="render this many default-model heads")
    ap.add_argument("--per-person", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--detector", default="dlib", help="dlib or mesh (MediaPipe)")
    ap.add_argument("--pose-embedding", action="store_true",
                    help="fit dlib's points with its per-yaw-bin embedding (FitConfig.pose_embedding)")
    add_textured_embedding_argument(ap)
    ap.add_argument("--photometric", action="store_true",
                    help="ingest with the photometric refinement (FitConfig.photometric)")
    a = ap.parse_args(argv)
    if (a.photos is None) == (a.render == 0):
        ap.error("give --photos DIR or --render N")
    with tempfile.TemporaryDirectory(prefix="skullsearch-persons-") as tmp:
        folder = a.photos
        if folder is None:
            folder = Path(tmp) / "photos"
            render_people(folder, a.render, a.per_person, a.seed)
        g = Gallery.create(Path(tmp) / "g", face_model=FaceModel.from_env())
        t0 = time.perf_counter()
        # without person labels: each photo fitted alone (labels would share one shape per person)
        rep = g.ingest([folder], workers=a.workers, detector=a.detector,
                       config=FitConfig(pose_embedding=a.pose_embedding, photometric=a.photometric,
                                        textured_embedding=a.textured_embedding))
        scores, label = pair_scores(g)
        flags = g.near_duplicates(criterion="person").to_pylist()
        wrong = sum(1 for f in flags if Path(f["path"]).parent.name != Path(f["duplicate_path"]).parent.name)
        out = {"truth": "real (labelled photos)" if a.photos else "synthetic (renders)",
               "detector": a.detector, "pose_embedding": a.pose_embedding,
               "textured_embedding": a.textured_embedding, "photometric": a.photometric,
               "photos": rep.images_seen, **scores,
               "person_flags": len(flags), "person_flags_joining_different_persons": wrong,
               "grouping": [grouping(g, label, th) for th in (0.4, 0.5, 0.6)],
               "seconds": round(time.perf_counter() - t0, 1)}
        g.close()
    print(f"{out['faces']} faces of {out['persons']} persons ({out['truth']}): pair AUC descriptor "
          f"{out['auc_descriptor']}, shape code {out['auc_shape_code']}; person flags {out['person_flags']} "
          f"({wrong} wrong)")
    for gr in out["grouping"]:
        print(f"  grouping at {gr['threshold']}: {gr['groups']} groups, pair precision "
              f"{gr['pair_precision']}, recall {gr['pair_recall']}")
    emit(out)
    return out


if __name__ == "__main__":
    main()
