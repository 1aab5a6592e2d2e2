"""Identification against real anatomy: does a real skull find its own person's photos?

Every identification figure elsewhere is synthetic: skulls made from faces of the face model, and
photos of those faces (``identity.py``, ``query_accuracy.py``). Here one real person is the
query and the answer: a CT head (``benchmarks/_ct.py``: the shared Stanford/UNC CThead, or
``--ct`` another head in its npz form, e.g. Debian's Cranium from ``ct_cranium.py``) gives

- the **skull**, whose landmarks are placed automatically from the bone alone and extended by
  the T-Table (the query's own front end: ``ct_validation.ct_skull``,
  :func:`skullsearch.retrieval.extended.extend`), and
- the **person's photos**: portraits of the same head's real skin (``ct_encoder.py``'s renders:
  yaw ``--yaws`` under two lights, 512 px, 0.7 m away, untextured), each through the real decode →
  dlib → fit (``--photometric``: refined by its shading too), each alone (``views``) and all
  with one shared shape (``shared``, paper Eq. 2).

The gallery around them: ``--distractors`` heads drawn from the default model's prior (identity
only, neutral), each photographed once by the same camera at one of the same yaws under one of
the same lights, and encoded the same way (the refined probes among refined distractors). Every
face is scored against the skull exactly as an exhaustive query scores a gallery
(:func:`skullsearch.retrieval.score.score`, ``ScoreConfig()``; neutral soft-tissue points as
ingest stores them), and each probe's **rank** among the distractors is reported, by S and by
likelihood (1 = first; a probe is ranked against the distractors only, not against the other
views of its person), with its percentile.

Beside each rank, ``tissue_rms_to_oracle_mm``: how far the face's soft-tissue points (those the
skull gives) lie from the model's best face's for this skin, rigidly aligned — the encoder's
error where the skull scores it (a proxy truth: the oracle's own error adds to it); the
distractors' median the spread of other faces. ``encoder_at_landmarks`` (also with ``--rescore``)
sharpens it: only on the landmarks the oracle's fit holds (:func:`oracle_landmarks`: not the
vault's, the dental streak's or below a cut scan's end), per landmark, as a ratio to the mean
face's error (``views_over_mean_face``: 1 = the photos place the points no nearer the person
than no photo), beside the same ratio for the distractors against their true faces
(``synthetic_encoded_over_mean_face``: synthetic truth, the same encoder and camera).

``correspondence``: per landmark the skull gives, its extended point's distance to the real skin
and to the model's best face's point for that landmark, placed on the skin: where both lie on
the skin, the distance between them is a disagreement of definition or placement along the
surface (the automatic skull landmarks', the T-Table's direction, the face model's annotation) that
no encoder can remove. Beside them (:func:`skin_rule_points`) the face model's own annotation
rules applied to the real skin itself — no fit, no fixed annotation: where those points too lie
far from the extended ones, it is the two sides' definitions of a point that disagree, not the
model. ``--correspondence-only`` stops there (no photos); ``--profile PNG`` draws the
midsagittal plane with every set of points, for an expert to check.

``synthetic_baseline``: the same protocol with the model's own faces as the persons (synthetic):
skulls made from 200 distractors' true faces (depths off by the table's SD; the landmarks the real
skull gives), each distractor's encoded face ranked among the others — what the real head's
ranks are to be read against; ``synthetic_baseline_with_this_gap``: the same draws with the real
head's correspondence gap (:func:`correspondence_gap`: its extended landmarks minus the model's
points on the best face for its skin, in the model's frame) added to every synthetic skull — how
far that gap alone takes identification, for the encoded faces and for the true ones.

Controls, ranked the same way: ``mean_face`` (the model's mean face: no identity; where the
encoded faces rank no better, the photos carry nothing the skull can use) and ``oracle`` (the
model's best neutral face for this skin, fitted in 3D: what a perfect encoder would give within
the model — where it ranks poorly, the skull side, the landmark placement or the tissue table,
is what fails, not the photos).

One real person per head: each rank is one draw, not a rate. The distractors' faces come from the
model the fit searches (synthetic); the probe's face does not. Reported, nothing tuned.

    python benchmarks/ct_identification.py [--ct NPZ] [--partial --upper-face MM --no-streak]
        [--distractors 1000] [--photometric] [--uncertainty] [--yaws -30 -20 -10 0 10 20 30] [--seed 0]
        [--save NPZ] [--surface]
    python benchmarks/ct_identification.py [--ct NPZ --partial ...] --rescore NPZ
        [--depth-factors 0.4 0.6 ... 1.6] [--leave-out rhi] [--surface]   # the saved faces, ranked again
    python benchmarks/ct_identification.py [--ct NPZ --partial ...] --correspondence-only
        [--profile profile.png]   # where the skull and the face disagree, in a minute
    ... [--midline-forward]   # the midline's tissue laid along the face's forward axis, not the bone normal
    ... --rescore NPZ --sensitivity   # each probe's ranks under query --sensitivity's variants

Measured (README's benchmark table; against the heads' outer skin, ``_ct.outer_air``): on both
real heads a person's photo-encoded faces rank where random faces rank (CThead median 472 / 227
of 954 by S / likelihood, Cranium 318 / 341), where the same protocol's synthetic persons rank at
18–26 % (landmark fit); the model's best face for each real skin ranks first (CThead by S,
Cranium by likelihood); the extended landmarks lie a median 11.5 / 9.3 mm from that face's own
points, and the model's annotation rules on the real skin itself 9.6 / 9.0 mm: the two sides'
definitions, not the model. ``--surface`` ranks by each extended landmark's distance to the skin
(``query --rank-by surface``): CThead's best face stays first, Cranium's falls to 358th.
Refined (``--photometric``): CThead's photos place the 18 scored landmarks the oracle holds 0.79×
the mean face's distance from it (synthetic renders 0.69×) and still rank 619 / 413 — the head's
gap alone takes synthetic persons refined from 1.0 / 0.3 % to 38 / 32 %; Cranium's 1.26× (synthetic
0.58×). ``--midline-forward`` lifts Cranium's best face from 200th to 2nd by S and drops CThead's
from 1st to 224th.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _ct as ct
import ct_encoder as ce
import ct_validation as cv
import numpy as np
import torch
from _common import emit

#: encode this many photos at a time (the refinement holds a batch's crops in memory)
CHUNK = 64


def distractor_photos(model, folder: Path, n: int, yaws, rng) -> np.ndarray:
    """``n`` heads from the model's prior (identity only: shape ~ N(0, σ), neutral), each rendered
    once as the CT skin's portraits are (``ct_encoder.portrait``) at a random one of ``yaws`` under
    a random one of their lights, saved as ``folder/dNNNNN.png``. Returns their shapes (n, S)."""
    from PIL import Image

    shapes = rng.standard_normal((n, model.n_shape)) * np.asarray(model.shape_std, np.float64)
    folder.mkdir(parents=True, exist_ok=True)
    light_list = ce.lights()
    for i in range(n):
        with torch.no_grad():
            v = model.rest_vertices(shape=torch.as_tensor(shapes[i:i + 1], dtype=torch.float32))[0].numpy()
        light = light_list[int(rng.integers(len(light_list)))]
        img, _ = ce.portrait(v, model.faces, float(rng.choice(yaws)), light)
        Image.fromarray(img).save(folder / f"d{i:05d}.png")
    return shapes


def encode(model, paths: list[Path], config, photometric, shared: bool = False):
    """Fitted shapes (m, S) of the photos the detector finds (each photo alone, in chunks; or
    all with one shared shape), with ``config.posterior`` their soft-tissue covariances
    (m, 36, 3, 3) mm² (else None), and which photos they are (m,) (indices into ``paths``)."""
    shapes, covs, found = [np.zeros((0, model.n_shape))], [np.zeros((0, 36, 3, 3))], []
    index = {Path(q).name: i for i, q in enumerate(paths)}
    step = max(len(paths), 1) if shared else CHUNK
    for a in range(0, len(paths), step):
        info: dict = {}
        s, names, _, _ = ce.fit_codes(model, paths[a:a + step], "dlib", config, shared=shared,
                                   photometric=photometric, info=info)
        shapes.append(s)
        found += [index[n] for n in names]
        covs.append(info.get("_tissue_cov", np.zeros((len(s), 36, 3, 3))))
    return (np.concatenate(shapes), np.concatenate(covs) if config.posterior else None,
            np.asarray(found, np.int64))


def soft_points(model, shapes: np.ndarray) -> np.ndarray:
    """Neutral soft-tissue points (n, 36, 3) mm of shape codes (n, ≤S), as ingest stores them."""
    from skullsearch.encoder import code as code_layout
    from skullsearch.index.ingest import neutral_soft_tissue

    s = np.zeros((len(shapes), code_layout.N_SHAPE), np.float32)
    s[:, : shapes.shape[1]] = shapes[:, : code_layout.N_SHAPE]
    return neutral_soft_tissue(model, code_layout.pack(shape=s))


def _above(d_first, d_second, p_first, p_second) -> np.ndarray:
    """(p,) how many distractors rank above each probe by (first, then second) key."""
    return ((d_first[None] > p_first[:, None])
            | ((d_first[None] == p_first[:, None]) & (d_second[None] > p_second[:, None]))).sum(1)


def ranks(probes: np.ndarray, distractors: np.ndarray, target, present, sd, probe_cov=None,
          distractor_cov=None, surface=None, tangent: float = 0.0, normals=None) -> dict:
    """Each probe's rank (1 = first) among the distractors, alone with them: by S (ties by
    likelihood, as :func:`~skullsearch.retrieval.score.rank_order`) and by likelihood (ties by
    S); probes (p, 36, 3), distractors (m, 36, 3) soft-tissue points. Also the probes' S,
    matches and likelihoods. With both covariances ((p | m, 36, 3, 3) mm², the fits' Σ_face):
    ``rank_likelihood_cov``, the likelihood under Σ_tissue + Σ_face (``query --uncertainty``).
    With ``surface`` = (model, probe shapes (p, S), distractor shapes (m, S)): ``rank_surface``,
    by the surface likelihood (:mod:`skullsearch.retrieval.surface`; ``query --rank-by surface``:
    each extended landmark's distance to the face's skin, not to its annotated point). With
    ``tangent`` (mm) and the faces' skin ``normals`` (36, 3): every likelihood with that SD along
    the skin (``query --tangent-sd``)."""
    from skullsearch.retrieval.score import ScoreConfig, score

    cfg = ScoreConfig(tangent_sd_mm=tangent)
    d = score(distractors, target, present, sd, cfg, normals=normals)
    p = score(probes, target, present, sd, cfg, normals=normals)
    m = len(distractors)
    out = {"rank_s": 1 + _above(d.s, d.likelihood, p.s, p.likelihood),
           "rank_likelihood": 1 + _above(d.likelihood, d.s, p.likelihood, p.s)}
    if probe_cov is not None and distractor_cov is not None:
        d_ll = score(distractors, target, present, sd, cfg, face_cov=distractor_cov,
                     normals=normals).likelihood
        p_ll = score(probes, target, present, sd, cfg, face_cov=probe_cov, normals=normals).likelihood
        out["rank_likelihood_cov"] = 1 + _above(d_ll, d.s, p_ll, p.s)
    if surface is not None:
        model, p_shapes, d_shapes = surface
        d_sl = surface_likelihoods(model, d_shapes, d, target, present, sd)
        p_sl = surface_likelihoods(model, p_shapes, p, target, present, sd)
        out["rank_surface"] = 1 + _above(d_sl, d.likelihood, p_sl, p.likelihood)
    for k in list(out):
        out[k.replace("rank", "percentile")] = [round(100 * (r - 1) / m, 1) for r in out[k]]
        out[k] = out[k].tolist()
    return out | {"s": [round(float(x), 3) for x in p.s], "matched": p.matched.tolist(),
                  "likelihood": [round(float(x), 2) for x in p.likelihood]}


def surface_likelihoods(model, shapes: np.ndarray, scores, target, present, sd) -> np.ndarray:
    """(n,) the surface likelihood of faces of shape codes (n, S) placed by their point scores'
    transforms (``scores``: :class:`~skullsearch.retrieval.score.Scores`), as ``query --rank-by
    surface`` ranks them."""
    from skullsearch.retrieval.score import ScoreConfig
    from skullsearch.retrieval.surface import surface_scores

    return surface_scores(model, shapes, scores, target, present, ScoreConfig().sigma(sd))[1]


def aligned_distances(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(n, k) distance mm of each face's points (n, k, 3) to its reference's — one (k, 3) for
    every face, or (n, k, 3) face by face — after the best rigid alignment of the two
    (``ct_encoder._rigid``)."""
    pts = np.asarray(points, np.float64)
    refs = np.broadcast_to(np.asarray(reference, np.float64), pts.shape)
    out = np.empty(pts.shape[:2])
    for i, (p, r) in enumerate(zip(pts, refs, strict=True)):
        out[i] = np.linalg.norm(ce._apply(ce._rigid(p, r, scale=False), p) - r, axis=1)
    return out


def rigid_rms(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(n,) RMS distance mm of each face's points (n, k, 3) to the reference's (k, 3) after the
    best rigid alignment (:func:`aligned_distances`): how far a face's soft-tissue points lie
    from another's."""
    return np.sqrt((aligned_distances(points, reference) ** 2).mean(1))


def oracle_landmarks(model, keep: np.ndarray, radius: float = 5.0) -> np.ndarray:
    """(36,) bool: the soft-tissue points the oracle's fit constrains — every mean-face vertex
    within ``radius`` mm of the point is among the vertices the oracle was fitted to (``keep``
    (V,): the placed head's face region above its cut and outside its dental streak). Elsewhere
    (the vault's op and v, the streak's lips, a cut scan's jaw) the oracle's point is the model's
    guess, and an encoder's distance to it measures nothing."""
    verts = np.asarray(model.v_template, np.float64)
    mean = soft_points(model, np.zeros((1, model.n_shape)))[0].astype(np.float64)
    out = np.zeros(len(mean), bool)
    for i, p in enumerate(mean):
        near = np.linalg.norm(verts - p, axis=1) < radius
        out[i] = bool(near.any() and keep[near].all())
    return out


def landmark_errors(model, sets: dict, reference, use: np.ndarray) -> dict:
    """Where the photos fail, landmark by landmark: each set's faces (name → shape codes (n, S))
    against the reference — the oracle's shape (S,) for every face, or shapes (n, S) face by face
    (the synthetic faces' truths) —, each face rigidly aligned to its reference on the landmarks
    ``use`` (36,) bool. Returns per set the median over its faces of the RMS distance (mm) over
    those landmarks, and of each landmark's distance (mm)."""
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    ref_all = np.asarray(reference, np.float64)
    out = {"landmarks": [n for n, u in zip(SOFT_TISSUE_NAMES, use, strict=True) if u]}
    for name, shapes in sets.items():
        if not len(shapes):  # (no view found)
            continue
        pts = soft_points(model, np.asarray(shapes)).astype(np.float64)[:, use]
        refs = soft_points(model, ref_all if ref_all.ndim == 2 else ref_all[None]).astype(np.float64)[:, use]
        d = aligned_distances(pts, refs)
        out[name] = {"rms_mm": round(float(np.median(np.sqrt((d ** 2).mean(1)))), 2),
                     "per_landmark_mm": [round(float(x), 1) for x in np.median(d, 0)]}
    return out


def encoder_at_landmarks(model, shapes: dict, oracle: np.ndarray, true: np.ndarray, use: np.ndarray) -> dict:
    """The encoder's error where the skull scores a face, on the landmarks ``use`` (36,) bool
    (those present and constrained by the oracle, :func:`oracle_landmarks`): the person's faces
    (``shapes``: ``views``, ``shared`` (n, S)), the mean face and the distractors against the
    oracle (real anatomy, proxy truth); and the distractors' encoded faces and the mean face
    against the distractors' true faces (``true``, row for row with ``shapes["distractors"]``:
    synthetic truth). ``*_over_mean_face``: an encoder's RMS over the mean face's — 1: the
    photos place these points no nearer the person than no photo at all."""
    zero = np.zeros((1, model.n_shape))
    real = landmark_errors(model, shapes | {"mean_face": zero}, oracle, use)
    dis = np.asarray(shapes["distractors"])
    synth = landmark_errors(model, {"encoded": dis, "mean_face": np.repeat(zero, len(dis), 0)}, true, use)
    out = {"landmarks": real.pop("landmarks"), "against_the_oracle": real,
           "synthetic_against_the_truth": {k: v for k, v in synth.items() if k != "landmarks"}}
    mean_rms = real["mean_face"]["rms_mm"]
    for k in ("views", "shared", "distractors"):
        if k in real and mean_rms > 0:
            out[f"{k}_over_mean_face"] = round(real[k]["rms_mm"] / mean_rms, 3)
    out["synthetic_encoded_over_mean_face"] = round(
        synth["encoded"]["rms_mm"] / max(synth["mean_face"]["rms_mm"], 1e-9), 3)
    return out


def synthetic_baseline(model, true_shapes: np.ndarray, encoded: np.ndarray, present: np.ndarray, rng,
                       queries: int = 200, offset: np.ndarray | None = None, surface: bool = False,
                       tangent: float = 0.0) -> dict:
    """The same protocol where the truth is the model's: for ``queries`` of the distractors, a
    skull made from its *true* face (``_common.synthetic_skull_targets``: depths off by the
    table's SD, 1 mm placement; the landmarks ``present`` (36,) the real skull gives) and the rank
    of its *encoded* face among the other distractors; with the ranks of the mean face and of the
    true face itself (a perfect encoder) in the same queries. offset (36, 3) mm, model frame: a
    correspondence gap added to every skull (:func:`correspondence_gap`: a real head's). true_shapes,
    encoded (m, S): the found distractors' true and fitted shapes. Returns the median percentiles
    by S and by likelihood (0 = first), and with ``surface`` by the surface likelihood too;
    ``tangent`` (mm): the likelihood with that SD along the skin."""
    from _common import face_normals, synthetic_skull_targets, table_sd

    sd = table_sd()
    q = min(queries, len(encoded))
    true_pts = soft_points(model, true_shapes[:q])
    targets, _ = synthetic_skull_targets(true_pts, face_normals(model), sd, rng, offset=offset)
    pts = soft_points(model, encoded)
    mean = soft_points(model, np.zeros((1, model.n_shape)))
    keys = ("s", "likelihood") + (("surface",) if surface else ())
    per = {w: {k: [] for k in keys} for w in ("own", "mean", "true")}
    zero = np.zeros((1, encoded.shape[1]))
    normals = model.soft_tissue_normals() if tangent else None  # (once, not per query)
    for k in range(q):
        others = np.delete(pts, k, 0)
        shapes = (model, np.concatenate([encoded[k:k + 1], zero, true_shapes[k:k + 1, :encoded.shape[1]]]),
                  np.delete(encoded, k, 0))
        r = ranks(np.concatenate([pts[k:k + 1], mean, true_pts[k:k + 1]]), others, targets[k], present, sd,
                  surface=shapes if surface else None, tangent=tangent, normals=normals)
        for j, who in enumerate(per):
            for key in per[who]:
                per[who][key].append(r[f"percentile_{key}"][j])
    out = {"queries": q}
    for who, label in (("own", "own_face"), ("mean", "mean_face"), ("true", "true_face")):
        out |= {f"{label}_percentile_{k}_median": float(np.median(v)) for k, v in per[who].items()}
    return out | {f"own_face_top_10pct_{k}": round(float(np.mean(np.asarray(v) < 10)), 3)
                  for k, v in per["own"].items()}


def baselines(model, true_shapes, encoded, present, gap, seed: int, surface: bool = False) -> dict:
    """:func:`synthetic_baseline` as measured (``synthetic_baseline``) and with this head's
    correspondence gap added to every synthetic skull (``synthetic_baseline_with_this_gap``: the
    same draws, so the two differ by the gap alone)."""
    return {"synthetic_baseline": synthetic_baseline(model, true_shapes, encoded, present,
                                                     np.random.default_rng(seed + 1), surface=surface),
            "synthetic_baseline_with_this_gap": synthetic_baseline(
                model, true_shapes, encoded, present, np.random.default_rng(seed + 1), offset=gap,
                surface=surface)}


def gap_vectors(gap: np.ndarray) -> dict:
    """{landmark: [x, y, z] mm} of a :func:`correspondence_gap` (model frame: x to the face's
    left, y up, z out of the face), the present ones: to compare two heads' gaps."""
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    return {n: [round(float(v), 1) for v in g] for n, g in zip(SOFT_TISSUE_NAMES, gap, strict=True)
            if np.isfinite(g).all()}


def model_points_on_skin(model, head, best: np.ndarray) -> np.ndarray:
    """(36, 3) mm, CT frame: the soft-tissue points of the shape ``best`` (the model's best face
    for the skin) placed on the skin by ``head.to_ct``."""
    return ce._apply(head.to_ct, soft_points(model, best[None])[0].astype(np.float64))


def best_face_landmarks(model, best: np.ndarray) -> np.ndarray:
    """(68, 3) mm, model frame: the 68 landmarks of the neutral face of shape ``best``."""
    verts = ce.neutral_faces(model, best[None])[0]
    return model.landmarks68(vertices=torch.as_tensor(verts[None], dtype=torch.float32))[0].double().numpy()


def skin_face(model, head, best: np.ndarray, whole: bool = False):
    """The real skin set up for the face model's annotation rules
    (:func:`skullsearch.encoder.annotate._face_setup`: ``head.full``, in the model's frame — below
    a partial scan's end the mean head grafted there: ``whole``, the rules read every part of the
    mesh, not only its largest; the scan's skin and the graft are two —, framed by the 68
    landmarks of the best face for it, ``best``), once for :func:`skin_rule_points` and
    :func:`dorsum_fractions` (about 12 s on a CT skin); None where the rules find no face there."""
    from skullsearch.encoder import annotate as an

    try:
        return an._face_setup(np.asarray(head.full.vertices, np.float64), np.asarray(head.full.faces),
                              best_face_landmarks(model, best), largest_part=not whole)
    except (ValueError, IndexError) as e:
        print(f"the annotation rules found no face on this skin: {e}", file=sys.stderr)
        return None


def skin_rule_points(head, face) -> np.ndarray:
    """(36, 3) mm, CT frame: the face model's own annotation rules
    (:func:`skullsearch.encoder.annotate.face_positions`: the midsagittal profile's extremes and
    hollows, the nasal dorsum's fractions, rays at the landmarks' proportions) applied to the real
    skin itself (``face``: :func:`skin_face`), each point snapped to the skin; all NaN where a rule
    finds nothing. The extended landmarks' distance to these is the correspondence gap without the
    model's fit and without its fixed annotation (the points placed once on the mean face, carried
    by every face): what remains is where the skull's side (its landmarks, the table's directions
    and depths) and the face's side (the rules) define each point differently."""
    import trimesh

    from skullsearch.encoder.annotate import face_positions
    from skullsearch.errors import LandmarkError

    if face is None:
        return np.full((36, 3), np.nan)
    try:
        pts = face_positions(face)
    except (ValueError, IndexError, LandmarkError) as e:
        print(f"the annotation rules found no point on this skin: {e}", file=sys.stderr)
        return np.full((36, 3), np.nan)
    on_skin, _, _ = trimesh.proximity.closest_point(head.full, pts)
    return ce._apply(head.to_ct, on_skin)


def dorsum_fractions(head, face, ext) -> dict | None:
    """Where along the real skin's nasal dorsum the extended nasion, mid-nasal and rhinion lie: each
    as the fraction of the height from the skin's sellion down to its pronasale (the annotation
    rules' :func:`~skullsearch.encoder.annotate.nasal_dorsum` on ``face``, :func:`skin_face`),
    beside the fractions the face model's annotation places mid-nasal and rhinion at
    (``MID_NASAL_FRACTION``, ``RHINION_FRACTION``), and that height (mm). None where the rules find
    no dorsum or the skull has none of the three."""
    from skullsearch.encoder import annotate as an
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    if face is None:
        return None
    try:
        se, prn = an.nasal_dorsum(face)
    except ValueError:
        return None
    height = float(se[0] - prn[0])
    out = {}
    for name in ("n", "mn", "rhi"):
        i = SOFT_TISSUE_NAMES.index(name)
        if ext.present[i]:
            p = ce._apply(np.linalg.inv(head.to_ct), np.asarray(ext.points, np.float64)[i][None])[0]
            y = float((p - face.origin) @ face.rot[1])
            out[name] = round((float(se[0]) - y) / height, 2)
    if not out:
        return None
    return {"extended": out, "annotation": {"mn": an.MID_NASAL_FRACTION, "rhi": an.RHINION_FRACTION},
            "sellion_to_pronasale_mm": round(height, 1)}


def correspondence_gap(model, head, best: np.ndarray, ext, reference: np.ndarray | None = None) -> np.ndarray:
    """(36, 3) mm, in the face model's frame: where the skull's extended landmarks lie minus
    where the model puts the same points on the best face for this skin (NaN where absent): the
    head's correspondence gap, to add to synthetic skulls (:func:`synthetic_baseline`).
    ``reference`` (36, 3) mm, CT frame: other points to measure the gap from instead (e.g.
    :func:`skin_rule_points`)."""
    if reference is None:
        reference = model_points_on_skin(model, head, best)
    gap = np.asarray(ext.points, np.float64) - reference
    rot = np.asarray(head.to_ct, np.float64)[:3, :3]
    rot = rot / np.cbrt(np.linalg.det(rot))  # (a placement with a scale: its rotation)
    return gap @ rot  # each row Rᵀ g


def correspondence(model, head, best: np.ndarray, ext, skin, eta: np.ndarray,
                   rules: np.ndarray | None = None) -> dict:
    """Where the skull puts each soft-tissue point and where the face model puts it on this very
    face: per present landmark, the extended landmark's distance to the real skin, and to the
    model's best face's point placed on the skin (``head.to_ct``: the ICP of the face region) —
    both on the skin, a distance between them is a disagreement of definition or placement along
    the surface, which no encoder can remove. That distance split along the landmark's tissue
    direction (``along_mm``, signed: + where the model's point lies further out than the extended
    one; what the tissue depth's SD covers) and across it (``across_mm``: along the surface, what
    only the landmark's definition covers). And the tissue this head has there: ``depth_ct_mm``,
    from the skull landmark along its direction to the real skin (the first crossing; null where
    the ray meets no skin), beside the table's depth (``depth_table_mm``). ext: the skull's
    :class:`~skullsearch.retrieval.extended.ExtendedLandmarks` (CT frame); eta (36,). ``rules``
    (36, 3) mm, CT frame (:func:`skin_rule_points`: the model's annotation rules applied to the
    real skin): each extended landmark's distance to that point too (``to_skin_rules_mm``, with
    its part across the tissue direction) and that point's to the model's point
    (``skin_rules_to_model_point_mm``) — the gap split into the two sides' definitions and the
    model's fit and fixed annotation. ``*_aligned_median_mm``: the same medians once the points are
    rigidly superimposed on the extended ones (as a query superimposes a face): what the placement
    of the skin (an ICP of the mean face) does not explain."""
    import trimesh

    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    placed = model_points_on_skin(model, head, best)
    idx = np.flatnonzero(ext.present)
    target, directions = np.asarray(ext.points, np.float64), np.asarray(ext.directions, np.float64)
    _, to_skin, _ = trimesh.proximity.closest_point(skin, target[idx])
    gap = placed[idx] - target[idx]
    apart = np.linalg.norm(gap, axis=1)
    along = (gap * directions[idx]).sum(1)
    across = np.sqrt(np.maximum(apart**2 - along**2, 0.0))
    origin = np.asarray(ext.skull_points, np.float64)[idx]
    hits, ray, _ = skin.ray.intersects_location(origin, directions[idx], multiple_hits=True)
    depth = np.full(len(idx), np.nan)
    for j in range(len(idx)):
        d = np.linalg.norm(hits[ray == j] - origin[j], axis=1)
        if len(d):
            depth[j] = d.min()
    table = np.asarray(ext.depth, np.float64)[idx]

    def mm(x):
        return round(float(x), 1) if np.isfinite(x) else None

    per = {SOFT_TISSUE_NAMES[i]: {"to_skin_mm": mm(s), "to_model_point_mm": mm(d), "along_mm": mm(u),
                                  "across_mm": mm(v), "eta_mm": mm(eta[i]), "depth_ct_mm": mm(c),
                                  "depth_table_mm": mm(t)}
           for i, s, d, u, v, c, t in zip(idx, to_skin, apart, along, across, depth, table, strict=True)}
    def aligned(points: np.ndarray) -> float:  # the median distance once superimposed, as a query does
        m = ce._rigid(points, target[idx], scale=False)
        return round(float(np.median(np.linalg.norm(ce._apply(m, points) - target[idx], axis=1))), 1)

    by_rules = {}
    if rules is not None and np.isfinite(rules[idx]).all():
        off = np.asarray(rules, np.float64)[idx] - target[idx]
        to_rules = np.linalg.norm(off, axis=1)
        rules_along = (off * directions[idx]).sum(1)
        rules_across = np.sqrt(np.maximum(to_rules**2 - rules_along**2, 0.0))
        rules_to_model = np.linalg.norm(placed[idx] - np.asarray(rules, np.float64)[idx], axis=1)
        for name, r, c, m in zip(per, to_rules, rules_across, rules_to_model, strict=True):
            per[name] |= {"to_skin_rules_mm": mm(r), "to_skin_rules_across_mm": mm(c),
                          "skin_rules_to_model_point_mm": mm(m)}
        by_rules = {"to_skin_rules_median_mm": round(float(np.median(to_rules)), 1),
                    "to_skin_rules_across_median_mm": round(float(np.median(rules_across)), 1),
                    "skin_rules_to_model_point_median_mm": round(float(np.median(rules_to_model)), 1),
                    "within_eta_of_skin_rules": int((to_rules < eta[idx]).sum()),
                    "to_skin_rules_aligned_median_mm": aligned(np.asarray(rules, np.float64)[idx])}
    ratio = depth / table
    return {"landmarks": per, **by_rules, "to_model_point_median_mm": round(float(np.median(apart)), 1),
            "to_model_point_aligned_median_mm": aligned(placed[idx]),
            "along_abs_median_mm": round(float(np.median(np.abs(along))), 1),
            "across_median_mm": round(float(np.median(across)), 1),
            "within_eta_of_model_point": int((apart < eta[idx]).sum()),
            "within_eta_along": int((np.abs(along) < eta[idx]).sum()), "n": len(idx),
            "depth_ct_over_table_median": (round(float(np.nanmedian(ratio)), 2) if np.isfinite(ratio).any()
                                           else None)}


#: the midline landmarks :func:`profile` draws
MIDLINE = ("v", "op", "g", "n", "mn", "rhi", "ss", "mp", "pr", "id", "sm", "pg", "gn", "me")


def profile(path, volume, spacing, fit, skin, ext, marks: dict) -> None:
    """Write the midsagittal profile PNG (``_ct.profile_image``, face to the left, 0.25 mm a pixel,
    from the vertex to under the chin): the skull's midline landmarks as placed (yellow), the
    extended ones (cyan) with their tissue directions from the bone, and ``marks`` ({label:
    ((36, 3) mm CT frame, colour)}), each set's present midline points — for an expert's eye.
    fit: the skull's :func:`_ct.fit_skull`."""
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    keep = [i for i, n in enumerate(SOFT_TISSUE_NAMES) if n in MIDLINE and ext.present[i]]
    pts = np.asarray(ext.points, np.float64)
    plane = [(pts[i] - fit["origin"]) @ fit["frame"].T for i in keep]
    ys, zs = [p[1] for p in plane] + [p[0] for p in fit["points"].values()], [p[2] for p in plane]
    crop = (min(ys) - 30, max(ys) + 15, min(zs) - 15, max(zs) + 25)
    sets = [({SOFT_TISSUE_NAMES[i]: pts[i] for i in keep}, (0, 255, 255))]
    sets += [({SOFT_TISSUE_NAMES[i]: p[i] for i in keep if np.isfinite(p[i]).all()}, c)
             for p, c in marks.values()]
    lines = [(ext.skull_points[i], pts[i], (0, 255, 255)) for i in keep]
    ct.profile_image(path, fit, volume, spacing, skin, px=0.25, crop=crop, marks=sets, lines=lines)
    print(f"profile: {path} (cyan extended, " + ", ".join(f"{k}" for k in marks) + ")", file=sys.stderr)


def with_dorsum(model, mn: float, rhi: float):
    """A copy of the model's soft-tissue annotation with mid-nasal and rhinion placed at other
    fractions of the mean face's dorsum (sellion → pronasale height; the annotator's rules,
    :func:`skullsearch.encoder.annotate.soft_tissue_positions`), the other 34 points as shipped:
    a :class:`~skullsearch.encoder.face_data.SurfacePoints` for ``model.soft_tissue_points``."""
    from skullsearch.encoder import annotate as an
    from skullsearch.encoder.face_data import SurfacePoints
    from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES

    shipped = model.soft_tissue_points
    v = np.asarray(model.v_template, np.float64)
    lm = (v[model.meta["source_landmarks68"]] if "source_landmarks68" in model.meta
          else best_face_landmarks(model, np.zeros(model.n_shape)))
    skin, skin_faces = an._skin(v, model.faces)
    pos = an.soft_tissue_positions(v, model.faces, lm, dorsum=(mn, rhi))
    tri, bary = an.surface_points(v, model.faces, skin, skin_faces, pos)
    faces, weights = np.array(shipped.faces), np.array(shipped.bary)
    for name in ("mn", "rhi"):
        i = SOFT_TISSUE_NAMES.index(name)
        faces[i], weights[i] = tri[i], bary[i]
    return SurfacePoints(faces, weights, shipped.names)


def saved_probes(model, saved, label: str) -> dict:
    """A --save file's probe sets of one run (``label``): name → shape codes (n, S) — the person's
    ``views``, their ``shared`` shape, the ``mean_face`` and the ``oracle``."""
    return {"views": np.asarray(saved[f"{label}_views"]), "shared": np.asarray(saved[f"{label}_shared"])[:1],
            "mean_face": np.zeros((1, model.n_shape)), "oracle": np.asarray(saved["oracle"])[None]}


def median_ranks(model, sets: dict, dshapes: np.ndarray, target, present, sd, surface: bool = False,
                 **kw) -> dict:
    """Each non-empty probe set's (name → shape codes (n, S)) median rank among the distractors
    (shape codes ``dshapes`` (m, S)) by S and by likelihood (and by the surface): name → [S,
    likelihood(, surface)]. All sets in one :func:`ranks` call (each probe is ranked against the
    distractors alone), so the distractors are scored once; ``kw``: ranks' tangent and normals."""
    names = [k for k, v in sets.items() if len(v)]
    shapes = np.concatenate([np.asarray(sets[k], np.float64) for k in names])
    r = ranks(soft_points(model, shapes), soft_points(model, dshapes), target, present, sd,
              surface=(model, shapes, dshapes) if surface else None, **kw)
    out, a = {}, 0
    for k in names:
        b = a + len(sets[k])
        out[k] = [float(np.median(r[f"rank_{key}"][a:b])) for key in ("s", "likelihood", "surface")
                  if f"rank_{key}" in r]
        a = b
    return out


def rescore(model, saved, ext, factors, leave_out=(), surface: bool = False, tangents=()) -> dict:
    """The saved faces (``--save``'s arrays: every run's distractors, views, shared shape, and the
    oracle) ranked again without encoding, against the skull's extended landmarks recomputed
    with the table's depths times each factor in ``factors`` (n_i = m_i + k d_i dir_i: a head whose
    tissue is thinner or thicker than the table's all over) and without the landmarks named in
    ``leave_out``. Returns, per run and factor, each probe set's median rank by S and by
    likelihood (and by the surface likelihood, with ``surface``); and for each SD along the skin
    in ``tangents`` (mm; ``query --tangent-sd``), at the table's depths, each set's median rank by
    that likelihood and the synthetic baseline's (``tangent``)."""
    ext = ext.without(leave_out)  # (as query --leave-out does)
    present = np.asarray(ext.present, bool)
    sd = np.asarray(ext.sd, np.float64)
    offset = np.asarray(ext.depth, np.float64)[:, None] * np.asarray(ext.directions, np.float64)
    out = {"landmarks": int(present.sum()), "left_out": list(ext.left_out), "runs": {}}
    normals = model.soft_tissue_normals()
    for label in ("landmark", "refined"):
        if f"{label}_distractors" not in saved:
            continue
        dshapes = np.asarray(saved[f"{label}_distractors"])
        sets = saved_probes(model, saved, label)
        run = out["runs"][label] = {}
        for k in factors:
            target = np.asarray(ext.skull_points, np.float64) + k * offset
            run[f"{k:g}"] = median_ranks(model, sets, dshapes, target, present, sd, surface)
        target = np.asarray(ext.skull_points, np.float64) + offset
        for t in tangents:
            row = {name: r[1] for name, r in median_ranks(model, sets, dshapes, target, present, sd,
                                                          tangent=t, normals=normals).items()}
            true = np.asarray(saved["distractors_true"])[np.asarray(saved[f"{label}_distractors_found"])]
            base = synthetic_baseline(model, true, dshapes, present, np.random.default_rng(1), tangent=t)
            row["synthetic"] = {k: v for k, v in base.items() if "likelihood" in k}
            run.setdefault("tangent", {})[f"{t:g}"] = row
    return out


def sensitivity(model, saved, ext) -> dict:
    """``query --sensitivity`` on the saved faces: per run, each probe set's median rank by S and
    by likelihood under each of :data:`skullsearch.retrieval.sensitivity.VARIANTS` (the skull's
    landmarks laid again as the query lays them: the skull's own forward axis, not the face's),
    beside the plain ranks (``as_is``)."""
    from skullsearch.retrieval.score import ScoreConfig
    from skullsearch.retrieval.sensitivity import VARIANTS, variant

    present = np.asarray(ext.present, bool)
    sd = np.asarray(ext.sd, np.float64)
    normals = model.soft_tissue_normals()
    out = {}
    for label in ("landmark", "refined"):
        if f"{label}_distractors" not in saved:
            continue
        dshapes = np.asarray(saved[f"{label}_distractors"])
        sets = saved_probes(model, saved, label)
        run = out[label] = {}
        for name in ("as_is", *VARIANTS):
            e, cfg = (ext, ScoreConfig()) if name == "as_is" else variant(ext, ScoreConfig(), name)
            run[name] = median_ranks(model, sets, dshapes, e.points, present, sd,
                                     tangent=cfg.tangent_sd_mm, normals=normals)
    return out


def summary(row: dict) -> dict:
    """Median and best rank of a probe set's ranks."""
    out = {}
    for k in ("rank_s", "rank_likelihood", "rank_likelihood_cov", "rank_surface"):
        if k not in row:
            continue
        r = np.asarray(row[k])
        out[f"{k}_median"] = float(np.median(r))
        out[f"{k}_best"] = int(r.min())
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ce.add_head_arguments(p)
    p.add_argument("--partial", action="store_true",
                   help="the scan ends above the teeth (ct_cranium.py's Cranium): the landmarks the cut "
                        "skull holds")
    p.add_argument("--distractors", type=int, default=1000)
    p.add_argument("--photometric", action="store_true",
                   help="also refine every fit by its photo's shading (probes and distractors)")
    p.add_argument("--uncertainty", action="store_true",
                   help="fit with the posterior and also rank by the likelihood with each face's Σ_face "
                        "(rank_likelihood_cov; the controls have none)")
    p.add_argument("--yaws", type=float, nargs="+", default=[-30, -20, -10, 0, 10, 20, 30])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, metavar="NPZ",
                   help="keep every encoded shape (and Σ_face), the oracle and the skull's extended "
                        "landmarks in this file, to score them again without encoding")
    p.add_argument("--rescore", default=None, metavar="NPZ",
                   help="rank the faces a --save file holds again (no encoding), for each of "
                        "--depth-factors and without --leave-out's landmarks")
    p.add_argument("--correspondence-only", action="store_true",
                   help="measure where the skull and the model disagree (the correspondence block) and "
                        "stop: no photos, no encoding (about a minute)")
    p.add_argument("--profile", default=None, metavar="PNG",
                   help="draw the midsagittal profile: CT, bone (red), skin (green), the skull's midline "
                        "landmarks (yellow), the extended landmarks and their directions (cyan), the model's "
                        "points on the best face (blue) and the annotation rules' on the real skin (magenta)")
    p.add_argument("--depth-factors", type=float, nargs="+", default=[1.0],
                   help="with --rescore: the table's depths times each of these")
    p.add_argument("--dorsum-fractions", type=float, nargs=2, default=None, metavar=("MN", "RHI"),
                   help="with --rescore: the model's mid-nasal and rhinion placed at these fractions of its "
                        "dorsum (sellion → pronasale; the annotation's: 0.3 0.6) for every face")
    p.add_argument("--tangent-sd", type=float, nargs="*", default=[], metavar="MM",
                   help="with --rescore: also rank by the likelihood with each of these SDs along the skin "
                        "(query --tangent-sd), the synthetic baseline too")
    p.add_argument("--surface", action="store_true",
                   help="also rank by the surface likelihood (query --rank-by surface: each extended "
                        "landmark's distance to the face's skin, not to its annotated point), the "
                        "synthetic baselines too (about 2 min more a run)")
    p.add_argument("--midline-forward", action="store_true",
                   help="lay the midline landmarks' tissue along the face's forward axis (the placed mean "
                        "face's, in the midsagittal plane) instead of the bone's normal: where the two "
                        "conventions of measuring a depth put the points (with --rescore or alone)")
    p.add_argument("--sensitivity", action="store_true",
                   help="with --rescore: each probe's ranks under query --sensitivity's variants (thinner "
                        "and thicker tissue, the midline laid forward, slack along the skin)")
    p.add_argument("--leave-out", nargs="*", default=[], metavar="LANDMARK",
                   help="with --rescore: score without these landmarks (e.g. those the extension warns of)")
    a = p.parse_args(argv)
    from skullsearch import FaceModel
    from skullsearch.encoder.fitting import FitConfig
    from skullsearch.encoder.photometric import PhotometricConfig
    from skullsearch.retrieval.extended import DIRECTION_LIMIT_DEG, extend
    from skullsearch.retrieval.score import ScoreConfig
    from skullsearch.retrieval.tissue import load_table

    model = FaceModel.from_env()
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    volume, spacing = ct.load_ct(a.ct or ct.CT_HEAD)
    skull_mesh, skin_ct = ct.extract_surfaces(volume, spacing)
    out = {"ct": Path(a.ct or ct.CT_HEAD).name, "distractors": a.distractors, "seed": a.seed,
           "uncertainty": a.uncertainty,
           "yaws": a.yaws, "photometric": a.photometric, "partial": a.partial, "upper_face_mm": a.upper_face}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fit = ct.fit_skull(skull_mesh, partial=a.partial)  # (the skull's frame and midline: the landmarks')
        skull, lms = cv.ct_skull(skull_mesh, a.partial, tmp, fit=fit)
        ext = extend(skull, load_table())
        head = ce.place_head(model, volume, spacing, skin_ct, a.upper_face, no_streak=a.no_streak)
        if a.midline_forward:
            ext = ext.laid_forward(forward=head.to_ct[:3, :3] @ np.array([0.0, 0.0, 1.0]))
        out["midline_forward"] = a.midline_forward
        target, present, sd = ext.points, np.asarray(ext.present, bool), np.asarray(ext.sd, np.float64)
        out["landmarks"] = int(present.sum())
        angle = np.nan_to_num(ext.outward_angle_deg)  # the landmarks the extension warns of
        out["directions_into_the_skull"] = {ext.names[i]: round(float(angle[i])) for i in
                                            np.flatnonzero(present & (angle > DIRECTION_LIMIT_DEG))}
        # each midline landmark's distance from the skull's midline plane (over 10 mm: a warning)
        out["midline_offsets_mm"] = {k: round(v, 1) for k, v in ext.midline_offsets().items()}
        if a.rescore:
            with np.load(a.rescore) as saved:
                saved = dict(saved)
            if not np.array_equal(saved["present"], present):
                raise SystemExit(f"{a.rescore} was saved for another skull (other landmarks): "
                                 "give the --ct and --partial it was saved with")
            if a.dorsum_fractions:  # every face's points (the distractors' too) re-annotated alike
                model.soft_tissue_points = with_dorsum(model, *a.dorsum_fractions)
            out["rescore"] = rescore(model, saved, ext, a.depth_factors, a.leave_out, a.surface,
                                     a.tangent_sd)
            out["rescore"]["dorsum_fractions"] = a.dorsum_fractions
            if a.sensitivity:
                out["rescore"]["sensitivity"] = sensitivity(model, saved, ext.without(a.leave_out))
            gap = correspondence_gap(model, head, saved["oracle"], ext)
            out["rescore"]["gap_model_frame_mm"] = gap_vectors(gap)
            kept = ext.without(a.leave_out).present  # (the baselines score the same landmarks)
            out["rescore"]["baselines"] = {
                label: baselines(model, saved["distractors_true"][saved[f"{label}_distractors_found"]],
                                 saved[f"{label}_distractors"], kept, gap, a.seed, a.surface)
                for label in out["rescore"]["runs"]}
            use = np.asarray(kept, bool) & oracle_landmarks(model, head.keep)
            out["rescore"]["encoder_at_landmarks"] = {
                label: encoder_at_landmarks(
                    model, {"views": saved[f"{label}_views"], "shared": saved[f"{label}_shared"][:1],
                            "distractors": saved[f"{label}_distractors"]},
                    saved["oracle"], saved["distractors_true"][saved[f"{label}_distractors_found"]], use)
                for label in out["rescore"]["runs"]}
            out["seconds"] = round(time.time() - t0, 1)
            emit(json.loads(json.dumps(out)))
            return
        best = ce.oracle_shape(model, head.skin, head.region, ~head.streak & head.upper)
        eta = ScoreConfig().thresholds(sd)
        face = skin_face(model, head, best, whole=a.upper_face is not None)  # (set up once: ~12 s)
        rules = skin_rule_points(head, face)
        out["correspondence"] = correspondence(model, head, best, ext, skin_ct, eta, rules)
        gap = correspondence_gap(model, head, best, ext)
        out["correspondence"]["gap_model_frame_mm"] = gap_vectors(gap)
        out["correspondence"]["gap_to_skin_rules_model_frame_mm"] = gap_vectors(
            correspondence_gap(model, head, best, ext, rules))
        out["correspondence"]["nasal_dorsum_fractions"] = dorsum_fractions(head, face, ext)
        out["correspondence"]["past_rhinion"] = ct.past_rhinion(volume, spacing, fit)
        if a.profile:
            profile(a.profile, volume, spacing, fit, skin_ct, ext, {
                "model": (model_points_on_skin(model, head, best), (90, 140, 255)),
                "rules": (rules, (255, 60, 255))})
        if a.correspondence_only:
            out["seconds"] = round(time.time() - t0, 1)
            emit(json.loads(json.dumps(out)))
            return
        print(f"skull: {present.sum()} extended landmarks; skin placed (RMS {head.rms:.2f} mm); "
              f"{time.time() - t0:.0f} s", file=sys.stderr)
        views = ce.render_photos(head.full, tmp, a.yaws)
        t = time.time()
        dis_true = distractor_photos(model, tmp / "distractors", a.distractors, a.yaws, rng)
        dpaths = sorted((tmp / "distractors").glob("*.png"))
        out["seconds_render"] = round(time.time() - t, 1)
        settings = [("landmark", None)] + ([("refined", PhotometricConfig())] if a.photometric else [])
        out["runs"] = {}
        controls = {"mean_face": np.zeros((1, model.n_shape)), "oracle": best[None]}
        cfg = FitConfig(posterior=a.uncertainty)
        saved = {"target": target, "present": present, "sd": sd, "oracle": best, "distractors_true": dis_true}
        for label, photo in settings:
            t = time.time()
            dis, dis_cov, dis_found = encode(model, dpaths, cfg, photo)
            alone, alone_cov, _ = encode(model, views, cfg, photo)
            shared, shared_cov, _ = encode(model, views, cfg, photo, shared=True)
            dpts = soft_points(model, dis)
            saved |= {f"{label}_distractors": dis, f"{label}_distractors_found": dis_found,
                      f"{label}_views": alone, f"{label}_shared": shared}
            if a.uncertainty:
                saved |= {f"{label}_distractors_cov": dis_cov, f"{label}_views_cov": alone_cov,
                          f"{label}_shared_cov": shared_cov}
            run = {"distractors_found": len(dis), "views": len(views), "views_found": len(alone),
                   "seconds": round(time.time() - t, 1)}
            probes = {"views": (alone, alone_cov), "shared": (shared[:1], None if shared_cov is None
                                                             else shared_cov[:1])}
            probes |= {k: (v, None) for k, v in controls.items()}
            run |= baselines(model, dis_true[dis_found], dis, present, gap, a.seed, a.surface)
            oracle_pts = soft_points(model, best[None])[0]
            run["encoder_at_landmarks"] = encoder_at_landmarks(
                model, {"views": alone, "shared": shared[:1], "distractors": dis}, best, dis_true[dis_found],
                present & oracle_landmarks(model, head.keep))
            run["distractors_tissue_rms_to_oracle_mm_median"] = round(float(np.median(
                rigid_rms(dpts[:, present], oracle_pts[present]))), 2)
            for name, (shapes, cov) in probes.items():
                if len(shapes):
                    pts = soft_points(model, shapes)
                    r = ranks(pts, dpts, target, present, sd, cov, dis_cov,
                              surface=(model, shapes, dis) if a.surface else None)
                    r["tissue_rms_to_oracle_mm"] = [round(float(x), 2) for x in
                                                    rigid_rms(pts[:, present], oracle_pts[present])]
                    run[name] = r | summary(r)
            out["runs"][label] = run
            print(f"{label}: {len(dis)} distractors; views median rank by S "
                  f"{run.get('views', {}).get('rank_s_median')} / by likelihood "
                  f"{run.get('views', {}).get('rank_likelihood_median')}; shared "
                  f"{run.get('shared', {}).get('rank_s')} / {run.get('shared', {}).get('rank_likelihood')}; "
                  f"mean face {run['mean_face']['rank_s']} / {run['mean_face']['rank_likelihood']}; "
                  f"oracle {run['oracle']['rank_s']} / {run['oracle']['rank_likelihood']}; at the oracle's "
                  f"{len(run['encoder_at_landmarks']['landmarks'])} landmarks the views lie "
                  f"{run['encoder_at_landmarks'].get('views_over_mean_face')}× the mean face's distance from "
                  f"it (synthetic: {run['encoder_at_landmarks']['synthetic_encoded_over_mean_face']}×)",
                  file=sys.stderr)
    if a.save:
        np.savez_compressed(a.save, **saved)
    out["seconds"] = round(time.time() - t0, 1)
    emit(json.loads(json.dumps(out)))


if __name__ == "__main__":
    main()
