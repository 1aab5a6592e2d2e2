"""Validation against real anatomy: CT heads, each a real skull with its own skin.

For every head (``--ct``, default the shared Stanford/UNC CThead) and every face model
(``--models``, default the ICT default and anny):

1. The skull and the skin are extracted from the CT volume as isosurfaces and the skull's
   landmarks are placed automatically from the skull's geometry alone (``benchmarks/_ct.py``:
   midsagittal plane by symmetry, landmarks on the midsagittal profile and the bilateral ones
   from the skull's shape; the skin is never looked at).
2. **(a) extended landmarks**: each landmark pushed out by the T-Table depth along the bone's
   outward normal (:func:`skullsearch.retrieval.extended.extend`, the query's own front end);
   its distance to the real skin, and the share within η (the scorer's match threshold,
   1.5 × the table SD) — all, midline, and midline without the landmarks in the CT's dental
   streak (ss, mp, pr, id: fillings in slices ≈ 75–81 make the lips unreliable).
3. **(b) the pipeline**: a synthetic gallery of ``--faces`` faces drawn from the model's prior
   (``skullsearch synth``), a query (exact scoring of every face), and F3DMM-GC
   (``reconstruct --method fit``) on the best candidate. Each face is compared with the real
   skin over the model's face region (NoW-style: brow to chin, between the zygia): distance of
   every face-region vertex to the skin surface, mean / p90 / max, for
   - ``reconstruction``: the default F3DMM-GC face (the MAP fit: landmarks weighted by 1/σ²)
     as placed on the skull;
   - ``reconstruction_paper``: F3DMM-GC with the paper's re-weighting towards S = 1
     (``FitWeights(landmark_sigma=False)``, bounded by the prior's 99.9 % region);
   - ``mean_face``: the model's mean face placed by the same superimposition (the scorer's
     bounded-scale similarity fit to the extended landmarks);
   - ``candidate``: the best retrieved face as is, placed by its scoring transform.

No default is tuned to these heads: this benchmark reports. GII-GC (the learned inpainter) is
not run here (no trained inpainter ships; see README). Figures depend on the CT's inferred
1 × 1 × 2 mm spacing and on a cadaver's soft tissue.

``--partial``: heads whose scan ends above the teeth (Debian's InVesalius "Cranium":
``benchmarks/ct_cranium.py``): the skull's landmarks down to rhinion, the orbits and zygia (no
jaw), and every face compared with the skin only over the face-region vertices the placed mean
face holds more than 5 mm above the scan's end.

    python benchmarks/ct_validation.py [--ct /work/shared/ct/cthead/cthead.npz ...]
        [--models ict anny] [--faces 5000] [--seed 0] [--partial]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _ct as ct
import numpy as np
import torch
from _common import emit

STREAK = ("ss", "mp", "pr", "id")


def _stats(d: np.ndarray) -> dict:
    return {"mean_mm": round(float(np.mean(d)), 3), "p90_mm": round(float(np.percentile(d, 90)), 3),
            "max_mm": round(float(np.max(d)), 3), "n": int(len(d))}


def skin_distance(skin, points: np.ndarray) -> np.ndarray:
    """(n,) unsigned distance (mm) from points (n, 3) to the skin surface."""
    import trimesh

    _, d, _ = trimesh.proximity.closest_point(skin, np.asarray(points, np.float64))
    return d


def landmark_report(ext, skin, eta: np.ndarray) -> dict:
    """(a): each present extended landmark's distance to the skin and whether it is within η."""
    from skullsearch.encoder.soft_tissue import MIDLINE, SOFT_TISSUE_NAMES

    present = np.asarray(ext.present, bool)
    pos = np.asarray(ext.points, np.float64)
    d = np.full(len(SOFT_TISSUE_NAMES), np.nan)
    d[present] = skin_distance(skin, pos[present])
    per = {n: {"distance_mm": round(float(d[i]), 2), "eta_mm": round(float(eta[i]), 2),
               "within": bool(d[i] < eta[i])}
           for i, n in enumerate(SOFT_TISSUE_NAMES) if present[i]}

    mid = [n for n in MIDLINE if n in per]
    out = {"landmarks": per}
    for label, names in (("all", list(per)), ("midline", mid),
                         ("midline_no_streak", [n for n in mid if n not in STREAK])):
        out[f"within_eta_{label}"] = (round(sum(per[n]["within"] for n in names) / len(names), 3)
                                      if names else None)
        out[f"n_{label}"] = len(names)
    out["mean_distance_mm"] = round(float(np.nanmean(d)), 3)
    return out


def pipeline_report(model, skull, skin, faces: int, seed: int, folder: Path,
                    above: float | None = None) -> dict:
    """(b): query a synthetic gallery, reconstruct the best face, compare three faces to the skin.
    ``above``: the scan ends at this height (CT frame, mm): only the face-region vertices that the
    mean face, placed, holds more than 5 mm above it are compared (the same vertices for every face)."""
    from skullsearch.encoder.align import apply_similarity
    from skullsearch.encoder.face_model import face_region
    from skullsearch.index.gallery import Gallery
    from skullsearch.index.synth import synth
    from skullsearch.inpaint.fit import FitWeights
    from skullsearch.inpaint.reconstruct import reconstruct
    from skullsearch.retrieval.query import aligned_faces, query
    from skullsearch.retrieval.score import ScoreConfig, score

    g = Gallery.create(folder, face_model=model)
    t = time.time()
    synth(g, faces, seed=seed)
    t_synth = time.time() - t
    t = time.time()
    result = query(g, skull, top=5, record=False, exhaustive=True)
    t_query = time.time() - t
    best = result.candidates[0]
    t = time.time()
    rec = reconstruct(skull, result, gallery=g, method="fit", candidates=1, record=False)[0]  # MAP
    t_rec = time.time() - t
    rec_paper = reconstruct(skull, result, gallery=g, method="fit", candidates=1, record=False,
                            fit_weights=FitWeights(landmark_sigma=False))[0]
    region = face_region(model)

    target = np.asarray(result.target, np.float64)
    present = np.asarray(result.present, bool)
    sd = np.asarray(result.sd, np.float64)
    with torch.no_grad():
        mean_pts = model.soft_tissue(batch_size=1).double().numpy()
    sc = score(mean_pts, target, present, sd, ScoreConfig(**(result.params or {}).get("score", {})))
    mean_v = apply_similarity(model.v_template.astype(np.float64), sc.scale[0], sc.rotation[0],
                              sc.translation[0])
    cand_v, _ = aligned_faces(g, [best])
    if above is not None:
        region = region & (mean_v[:, 1] > above + 5.0)
    faces_out = {
        "reconstruction": _stats(skin_distance(skin, np.asarray(rec.vertices_skull)[region])),
        "reconstruction_paper": _stats(skin_distance(skin, np.asarray(rec_paper.vertices_skull)[region])),
        "mean_face": _stats(skin_distance(skin, mean_v[region])),
        "candidate": _stats(skin_distance(skin, cand_v[0][region])),
    }
    faces_out["reconstruction"].update(s=round(rec.s_after, 3), matched=rec.matched_after,
                                       present=rec.present)
    faces_out["reconstruction_paper"].update(s=round(rec_paper.s_after, 3), matched=rec_paper.matched_after)
    faces_out["mean_face"].update(s=round(float(sc.s[0]), 3), matched=int(sc.matched[0]))
    faces_out["candidate"].update(s=round(best.s, 3), matched=int(best.matched))
    return {"faces": faces_out, "gallery_faces": faces, "scored_vertices": int(region.sum()),
            "seconds": {"synth": round(t_synth, 1), "query": round(t_query, 2),
                        "reconstruct": round(t_rec, 1)},
            "reconstruction_closer_than_mean_face":
                faces_out["reconstruction"]["mean_mm"] < faces_out["mean_face"]["mean_mm"]}


def ct_skull(skull_mesh, partial: bool, folder: Path, name: str = "skull", fit=None):
    """The CT's skull as a query's :class:`~skullsearch.retrieval.skull.Skull` (written to
    ``folder`` as ``NAME.ply``) with its landmarks placed automatically from the skull alone
    (``partial``: a skull cut above the teeth; ``fit``: its :func:`_ct.fit_skull`, to reuse), and
    those landmarks ({name: (3,) mm})."""
    from skullsearch.retrieval.skull import Skull

    lms = ct.skull_landmarks(skull_mesh, fit=fit, partial=partial)
    path = Path(folder) / f"{name}.ply"
    skull_mesh.export(path)
    return Skull.load(path, landmarks={k: np.asarray(v).tolist() for k, v in lms.items()}), lms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", nargs="+", default=None, help="CT head npz files (default: the shared CThead)")
    p.add_argument("--models", nargs="+", default=["ict", "anny"])
    p.add_argument("--faces", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partial", action="store_true",
                   help="the scans may end above the teeth (Debian's Cranium: benchmarks/ct_cranium.py): "
                        "the landmarks the skull holds, and the faces compared above the scan's end")
    a = p.parse_args()
    from skullsearch import FaceModel
    from skullsearch.retrieval.extended import extend
    from skullsearch.retrieval.score import ScoreConfig
    from skullsearch.retrieval.tissue import load_table

    heads = [Path(x) for x in (a.ct or [ct.CT_HEAD])]
    out = {"faces": a.faces, "seed": a.seed, "heads": {}}
    table = load_table()
    eta = ScoreConfig().thresholds(np.asarray(table.sd, np.float64))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for head in heads:
            t = time.time()
            volume, spacing = ct.load_ct(head)
            skull_mesh, skin = ct.extract_surfaces(volume, spacing)
            skull, lms = ct_skull(skull_mesh, a.partial, tmp, f"{head.stem}-skull")
            # the last slice ends the scan
            end = ct.slice_height(volume.shape, spacing, volume.shape[0] - 1) if a.partial else None
            t_prep = time.time() - t
            ext = extend(skull, table)
            rep = {"landmarks_placed": sorted(lms), "prepare_seconds": round(t_prep, 1),
                   "extended": landmark_report(ext, skin, eta), "models": {}}
            print(f"{head.name}: {len(lms)} skull landmarks; extended midline within η: "
                  f"{rep['extended']['within_eta_midline']} (without the dental streak "
                  f"{rep['extended']['within_eta_midline_no_streak']})", file=sys.stderr)
            for name in a.models:
                model = FaceModel.builtin(name)
                r = pipeline_report(model, skull, skin, a.faces, a.seed, tmp / f"{head.stem}-{name}", end)
                rep["models"][name] = r
                f = r["faces"]
                print(f"  {name}: reconstruction {f['reconstruction']['mean_mm']:.2f} mm "
                      f"(paper's re-weighting {f['reconstruction_paper']['mean_mm']:.2f}) "
                      f"(p90 {f['reconstruction']['p90_mm']:.2f}), mean face "
                      f"{f['mean_face']['mean_mm']:.2f}, candidate {f['candidate']['mean_mm']:.2f}",
                      file=sys.stderr)
            out["heads"][head.stem] = rep
    emit(json.loads(json.dumps(out)))


if __name__ == "__main__":
    main()
