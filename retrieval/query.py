"""Skull → ranked candidates: extended landmarks, FAISS shortlist, exact scores, audit log.

    gallery = skullsearch.Gallery.open("missing_persons")
    skull = skullsearch.Skull.load("case17.ply")
    result = skullsearch.query(gallery, skull, top=20)
    result.to_pandas()
    skullsearch.history(gallery); skullsearch.rerun(gallery, result.query_id)

1. The skull's landmarks are pushed out by the tissue table's depths (extended landmarks).
2. They are aligned (similarity, present landmarks only) to the face model's mean soft-tissue
   points and searched in the gallery's shortlist index with the absent landmarks masked out:
   exact masked L2 on flat indexes.
3. Every shortlisted face is scored exactly (:mod:`skullsearch.retrieval.score`): S, likelihood,
   per-landmark distances, transform; ranked by S (ties by likelihood) or by likelihood.
4. A calibrated rank says how extreme each score is against the gallery: the same scores for a
   fixed random sample of the gallery's faces; ``calibrated`` = share of that sample scoring at
   least as well (small is good).
5. The query is written to the gallery's audit log (``audit/*.json``): inputs and their hashes,
   parameters, tissue table, versions, the gallery's shards at the time, and the results; a
   recorded query re-runs on the same shards and gives the same answer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.index import vectors
from skullsearch.index.gallery import Gallery
from skullsearch.index.store import GalleryError
from skullsearch.retrieval.audit import json_plain, load_record, record_query
from skullsearch.retrieval.extended import ExtendedLandmarks, export_pegs, extend
from skullsearch.retrieval.score import ScoreConfig, rank_order, score

#: Default shortlist size, set by measurement against exhaustive exact scoring (every face scored once per
#: query, every shortlist size read off that pass, the default re-checked through query_points itself):
#:   python benchmarks/query_speed.py --gallery G1M --faces 1000000 --queries 10 --exhaustive-queries 30 \
#:   --shortlists 250,500,1000,2000,10000,50000
#: On 1M synthetic faces (30 queries; the default re-checked 30/30) the top 10 ranked by likelihood
#: (1/σ²-weighted shortlist) equals the exhaustive top 10 in 100 % from 250, and the best face by S is the
#: exhaustive best in 97 % at 250 and 100 % from 500; on 100k faces (200 queries, --seed 0 and 1, sizes up to
#: 100,000) the best face by S in 98.5 % at 250–1,000 and 99 % at 2,000, the likelihood top 10 in 100 % from
#: 1,000. 2,000 is the smallest size meeting both at both scales, and keeps the median warm query at
#: 383–393 ms on 1M faces. The top 10 ranked by S (the default ranking) beyond rank 1 is NOT reproduced by
#: any shortlist much smaller than the gallery: 0 % at 2,000 and 17 % at 50,000 of 1M; 5 % at 2,000, 77.5 %
#: at 50,000 of 100k. Those runners-up are chance: two measurements of one skull share 0.4 of their 9 S
#: runners-up on average (benchmarks/score_stability.py, 100k faces, 40 skulls; likelihood 2.7 of 9), so no
#: geometric shortlist can predict them. For the exact S top 10 score every face (exhaustive=True: 24 s
#: per query at 1M on this 2-core CPU, 48 s on one core; galleries up to EXHAUSTIVE_AUTO_FACES faces are
#: scored so by default).
DEFAULT_SHORTLIST = 2000
CALIBRATION_SAMPLE = 2000
#: How a query ranks: "s" (the paper's score S, ties by likelihood), "likelihood" (the Gaussian
#: log-likelihood of the landmarks' distances) or "surface" (each extended landmark's distance to
#: the face's skin instead of to its annotated point: :mod:`skullsearch.retrieval.surface`).
RANKINGS = ("s", "likelihood", "surface")


@dataclass
class Candidate:
    """One ranked face: ids, catalog fields, scores, per-landmark detail and the transform.
    shortlist_distance: the shortlist search's masked L2 to the query (mm, canonical frame; when
    ranking by likelihood, weighted by 1/σ² with weights of mean 1, see :func:`shortlist_weights`).
    surface_likelihood, surface_mm (36, None where absent): ranked by surface only
    (:mod:`skullsearch.retrieval.surface`: each extended landmark's distance to the face's skin)."""

    rank: int
    face_id: int
    person: str | None
    path: str | None
    s: float
    matched: int
    present: int
    likelihood: float
    calibrated: float
    rms_mm: float
    shortlist_distance: float
    distance_mm: list[float | None]
    matched_flags: list[bool]
    scale: float
    rotation: list[list[float]]
    translation: list[float]
    surface_likelihood: float | None = None
    surface_mm: list[float | None] | None = None

    def landmark_table(self) -> list[dict]:
        """Per landmark: name, distance (mm or None where absent), matched."""
        return [{"landmark": n, "distance_mm": d, "matched": m}
                for n, d, m in zip(SOFT_TISSUE_NAMES, self.distance_mm, self.matched_flags, strict=True)]


@dataclass
class QueryResult:
    """A query's answer: ``candidates`` best first, the skull's extended landmarks used (whole:
    :class:`~skullsearch.retrieval.extended.ExtendedLandmarks`, with their table), parameters,
    and the audit record id (None when not recorded). ``target`` (36, 3) mm, ``present`` (36,)
    and ``sd`` (36,) mm are the extended landmarks' points, mask and SDs."""

    candidates: list[Candidate]
    extended: ExtendedLandmarks
    params: dict
    query_id: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def target(self) -> np.ndarray:
        return self.extended.points

    @property
    def present(self) -> np.ndarray:
        return self.extended.present

    @property
    def sd(self) -> np.ndarray:
        return self.extended.sd

    def to_dicts(self) -> list[dict]:
        return [asdict(c) for c in self.candidates]

    def to_pandas(self):
        import pandas as pd

        cols = ["rank", "face_id", "person", "path", "s", "matched", "present", "likelihood",
                "calibrated", "rms_mm", "scale"]
        if any(c.surface_likelihood is not None for c in self.candidates):
            cols.insert(cols.index("calibrated"), "surface_likelihood")
        return pd.DataFrame([{k: getattr(c, k) for k in cols} for c in self.candidates], columns=cols)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps({"query_id": self.query_id, "params": self.params, "warnings": self.warnings,
                           "present": [n for n, p in zip(SOFT_TISSUE_NAMES, self.present, strict=True) if p],
                           "candidates": self.to_dicts()}, indent=indent, default=json_plain)


def shortlist_weights(present: np.ndarray, sd: np.ndarray, cfg: ScoreConfig, rank_by: str) -> np.ndarray:
    """Per-landmark weights (36,) of the masked shortlist search (0 where absent, mean 1 over the
    present ones). Ranking by likelihood: 1/σ_i² (the likelihood's own weights, σ_i² = SD_i² +
    σ_place²), so that the shortlist orders faces nearly as the likelihood will. Ranking by S:
    plain masked L2 (1 where present): S counts matches after a robust refit, which no fixed
    weighting predicts better (benchmarks/query_speed.py measures both)."""
    present = np.asarray(present, bool)
    if rank_by in ("likelihood", "surface"):  # (an absent landmark may have no SD at all: NaN there, 0 here)
        w = np.where(present, 1.0 / np.where(present, cfg.sigma(sd), 1.0) ** 2, 0.0)
    else:
        w = present.astype(np.float64)
    return w / max(w[present].mean(), 1e-12) if present.any() else w


#: Galleries up to this many faces are scored exhaustively unless a shortlist size is given: the exact
#: ranking for about 0.4 s of scoring on one core (≈ 40 µs per face), so a small collection never
#: depends on the shortlist.
EXHAUSTIVE_AUTO_FACES = 10_000
#: Faces per chunk of exhaustive scoring (each chunk is read from its shard and scored on its own).
EXHAUSTIVE_CHUNK = 65536
#: Exhaustive passes over more faces than this run on one process per core (CPU scoring; each
#: process starts in a few seconds, as it imports skullsearch), smaller ones in this process.
EXHAUSTIVE_PROCESS_FACES = 200_000


def _score_chunk(path: str, a: int, b: int, number: int, target, present, sd, cfg: ScoreConfig,
                 rank_by: str, keep: int, normals=None, device: str | None = None):
    """One chunk of an exhaustive pass: faces a..b of the shard whose soft-tissue array is
    ``path``. Returns (face ids, S, likelihood) of its best ``keep`` (also run in worker processes)."""
    from skullsearch.index import store

    pts = np.asarray(np.load(path, mmap_mode="r")[a:b])
    sc = score(pts, target, present, sd, cfg, device=device, normals=normals)
    best = rank_order(sc, rank_by)[:keep]
    return store.face_id(number, np.arange(a, b, dtype=np.int64)[best]), sc.s[best], sc.likelihood[best]


def _gpu_device() -> str | None:
    """"cuda" when torch is installed and sees a GPU, else None."""
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


def auto_exhaustive(gallery: Gallery, shortlist: int | None, max_shard: int | None = None) -> bool:
    """Whether a query without an explicit choice scores every face: when no shortlist size is
    given and the gallery (shards up to ``max_shard``) has at most :data:`EXHAUSTIVE_AUTO_FACES`
    faces."""
    if shortlist:
        return False
    return sum(s.faces for s in gallery.shards()
               if max_shard is None or s.number <= max_shard) <= EXHAUSTIVE_AUTO_FACES


def exhaustive_candidates(gallery: Gallery, target: np.ndarray, present: np.ndarray, sd: np.ndarray,
                          cfg: ScoreConfig, rank_by: str, keep: int, max_shard: int | None = None,
                          progress=None, device: str | None = "auto",
                          workers: int | None = None) -> np.ndarray:
    """Score every face of the gallery (shards up to ``max_shard``) exactly and return the ids
    (≤ keep,) int64 of the best ``keep`` by the ranking, best first: the exhaustive answer, which a
    shortlist only approximates. Chunks of :data:`EXHAUSTIVE_CHUNK` faces are read from their shard
    and scored (a face's scores do not depend on its chunk, so neither does the answer); progress(done,
    total) is called after each. device: "auto" scores on the GPU when torch sees one (the torch
    twin of the scorer, same matches), else in numpy; None: numpy; or a torch device. On a CPU,
    passes over more than :data:`EXHAUSTIVE_PROCESS_FACES` faces run on ``workers`` processes
    (default: the CPU count; threads were measured not to help, the scorer holds the GIL between
    its small array steps). Cost on a CPU: about 40–60 µs per face per core."""
    import os

    if device == "auto":
        device = _gpu_device()
    chunk = EXHAUSTIVE_CHUNK if device is None else EXHAUSTIVE_CHUNK * 16  # a GPU wants large batches
    shards = [s for s in gallery.shards() if max_shard is None or s.number <= max_shard]
    jobs = [(str(s.file(gallery.path, "soft.npy")), a, min(a + chunk, s.faces), s.number)
            for s in shards for a in range(0, s.faces, chunk)]
    total = sum(s.faces for s in shards)
    workers = workers or os.cpu_count() or 1
    rest = (target, present, sd, cfg, rank_by, keep, _normals(gallery, cfg))
    if device is None and total > EXHAUSTIVE_PROCESS_FACES and workers > 1 and len(jobs) > 1:
        import concurrent.futures as cf
        import multiprocessing
        import warnings

        def results():
            started = 0
            try:
                with cf.ProcessPoolExecutor(min(workers, len(jobs)),
                                            mp_context=multiprocessing.get_context("spawn")) as pool:
                    # (in job order: the answer does not depend on which process ends first)
                    for part in pool.map(_score_chunk, *zip(*[(*job, *rest) for job in jobs], strict=True)):
                        started += 1
                        yield part
            except cf.process.BrokenProcessPool:
                warnings.warn("skullsearch: the scoring processes stopped (a script that queries must "
                              "guard its entry point with `if __name__ == \"__main__\":`); scoring the "
                              "remaining faces in this process", RuntimeWarning, stacklevel=2)
                for job in jobs[started:]:
                    yield _score_chunk(*job, *rest)
    else:
        def results():
            for job in jobs:
                yield _score_chunk(*job, *rest, device=device)

    parts, done = [], 0
    for job, part in zip(jobs, results(), strict=True):
        parts.append(part)
        done += job[2] - job[1]
        if progress is not None:
            progress(done, total)
    if not parts:
        return np.zeros(0, np.int64)
    ids, s, ll = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.lexsort((-ll, -s)) if rank_by == "s" else np.lexsort((-s, -ll))
    return ids[order[:keep]]


def _normals(gallery: Gallery, cfg: ScoreConfig) -> np.ndarray | None:
    """The face model's skin normals at its soft-tissue points (36, 3) when the likelihood reads
    an SD along the skin (``cfg.tangent_sd_mm``), else None."""
    return gallery.face_model.soft_tissue_normals() if cfg.tangent_sd_mm > 0 else None


def face_scores(gallery: Gallery, face_ids, target, present, sd, cfg: ScoreConfig,
                uncertainty: bool = False):
    """Exact :class:`~skullsearch.retrieval.score.Scores` of gallery faces against extended
    landmarks; with uncertainty, the likelihood counts each face's fit uncertainty
    (:meth:`Gallery.tissue_covariance`); with ``cfg.tangent_sd_mm``, an SD along the skin."""
    cov = gallery.tissue_covariance(face_ids) if uncertainty else None
    return score(gallery.soft_tissue(face_ids), target, present, sd, cfg, face_cov=cov,
                 normals=_normals(gallery, cfg))


def calibration_scores(gallery: Gallery, target, present, sd, cfg: ScoreConfig, sample_size: int,
                       seed: int, max_shard: int | None, uncertainty: bool = False, surface: bool = False):
    """The scores of a query's calibration sample — a fixed random sample of the gallery's faces
    (``sample_size``, ``seed``, shards up to ``max_shard``), scored as the candidates are — or
    None for an empty gallery. A calibrated rank compares a candidate's score with these. With
    ``surface``: (scores, the sample's surface likelihoods (n,))."""
    sample = gallery.sample_ids(sample_size, seed=seed, max_shard=max_shard)
    if not len(sample):
        return None
    sc = face_scores(gallery, sample, target, present, sd, cfg, uncertainty)
    if not surface:
        return sc
    return sc, surface_scores(gallery, sample, sc, target, present, sd, cfg)[1]


def surface_scores(gallery: Gallery, face_ids, scores, target, present, sd, cfg: ScoreConfig):
    """Each extended landmark's distance to the skin of gallery faces placed by their point
    scores' transforms (``scores``), (n, 36) mm (NaN where absent), and their surface likelihoods
    (n,) (:mod:`skullsearch.retrieval.surface`)."""
    from skullsearch.encoder import code as code_layout
    from skullsearch.retrieval import surface

    shapes = np.asarray(gallery.codes(face_ids), np.float64)[:, code_layout.SLICES["shape"]]
    return surface.surface_scores(gallery.face_model, shapes, scores, target, present, cfg.sigma(sd),
                                  cfg.scale_bound)


def query_points(
    gallery: Gallery,
    target: np.ndarray,
    present: np.ndarray,
    sd: np.ndarray,
    *,
    top: int = 20,
    shortlist: int | None = None,
    rank_by: str = "s",
    score_config: ScoreConfig | None = None,
    calibration_sample: int = CALIBRATION_SAMPLE,
    seed: int = 0,
    max_shard: int | None = None,
    exhaustive: bool | None = None,
    progress=None,
    uncertainty: bool = False,
) -> QueryResult:
    """The query core on extended landmarks: target (36, 3) mm (skull frame), present (36,) bool,
    sd (36,) mm. See the module docstring. exhaustive: score every face instead of a shortlist
    (:func:`exhaustive_candidates`; the exact ranking, slow on large galleries; progress(done,
    total) is called as faces are scored); None: only when no shortlist size is given and the
    gallery has at most :data:`EXHAUSTIVE_AUTO_FACES` faces. uncertainty: the shortlist's and the
    calibration sample's likelihoods use each face's own soft-tissue covariance
    (:meth:`Gallery.tissue_covariance`, faces ingested with ``uncertainty=True``; others keep the
    isotropic term): Σ_tissue + Σ_face (:func:`~skullsearch.retrieval.score.score`). S, the
    matches and the exhaustive pass are unchanged. rank_by "surface": the faces the shortlist holds
    (an exhaustive pass: the ``shortlist`` best by likelihood) ranked by their surface likelihood
    (:mod:`skullsearch.retrieval.surface`; ties by likelihood), the calibration sample alike."""
    cfg = score_config or ScoreConfig()
    present = np.asarray(present, bool)
    if present.sum() < 3:
        raise GalleryError("a query needs at least 3 landmarks with a tissue depth; add landmarks "
                           "to the skull's landmark file")
    if rank_by not in RANKINGS:
        raise GalleryError(f"rank_by must be one of {', '.join(RANKINGS)}, not {rank_by!r}")
    surface = rank_by == "surface"
    point_rank = "likelihood" if surface else rank_by  # (the shortlist and an exhaustive pass)
    if int(top) < 1:
        raise GalleryError(f"top must be at least 1 (got {top}): how many candidates to list")
    if shortlist is not None and int(shortlist) < 0:
        raise GalleryError(f"shortlist must be a positive number of faces (got {shortlist})")
    if exhaustive is None:
        exhaustive = auto_exhaustive(gallery, shortlist, max_shard)
    shortlist = shortlist or DEFAULT_SHORTLIST
    mean = gallery.mean_soft_tissue
    canon = vectors.canonical(np.nan_to_num(np.asarray(target, np.float64))[None], mean, mask=present)
    weights = shortlist_weights(present, sd, cfg, rank_by)
    if exhaustive:
        ids = exhaustive_candidates(gallery, target, present, sd, cfg, point_rank,
                                    max(shortlist, top) if surface else top, max_shard=max_shard,
                                    progress=progress)
        dist = np.zeros(0)
        if len(ids):
            diff = (gallery.canonical(ids).reshape(len(ids), -1, 3) - canon.reshape(1, -1, 3)) ** 2
            dist = (diff.sum(-1) * weights[None]).sum(1)
    else:
        dist, ids = gallery.search_shortlist(canon, weights[None], k=max(shortlist, top), max_shard=max_shard)
        keep = ids[0] >= 0
        ids, dist = ids[0][keep], dist[0][keep]
    ext = ExtendedLandmarks.from_points(target, present, sd)
    if len(ids) == 0:
        return QueryResult([], ext, {"top": top, "shortlist": shortlist, "exhaustive": exhaustive})
    sc = face_scores(gallery, ids, target, present, sd, cfg, uncertainty)
    ref = calibration_scores(gallery, target, present, sd, cfg, calibration_sample, seed, max_shard,
                             uncertainty, surface)
    if surface:
        surf_mm, surf = surface_scores(gallery, ids, sc, target, present, sd, cfg)
        order = np.lexsort((-sc.likelihood, -surf))[:top]
        ref_key = None if ref is None else ref[1] + 1e-9 * ref[0].likelihood
    else:
        order = rank_order(sc, rank_by)[:top]
        ref_key = None if ref is None else (ref.likelihood if rank_by == "likelihood"
                                            else ref.s + 1e-9 * ref.likelihood)
    rows = {r["face_id"]: r for r in gallery.rows(ids[order], columns=("person", "path"))}
    cands = []
    for rank, i in enumerate(order, 1):
        key = (surf[i] + 1e-9 * sc.likelihood[i] if surface else sc.likelihood[i] if rank_by == "likelihood"
               else sc.s[i] + 1e-9 * sc.likelihood[i])
        if ref_key is not None:
            calibrated = float((1 + np.sum(ref_key >= key)) / (1 + len(ref_key)))
        else:
            calibrated = float("nan")
        fid = int(ids[i])
        row = rows.get(fid, {})
        cands.append(Candidate(
            rank=rank, face_id=fid, person=row.get("person"), path=row.get("path"),
            s=float(sc.s[i]), matched=int(sc.matched[i]), present=int(sc.present[i]),
            likelihood=float(sc.likelihood[i]), calibrated=calibrated, rms_mm=float(sc.rms_mm[i]),
            shortlist_distance=float(np.sqrt(max(dist[i], 0))),
            distance_mm=[None if np.isnan(d) else round(float(d), 4) for d in sc.distance_mm[i]],
            matched_flags=[bool(m) for m in sc.matched_flags[i]], scale=float(sc.scale[i]),
            rotation=sc.rotation[i].tolist(), translation=sc.translation[i].tolist(),
            surface_likelihood=float(surf[i]) if surface else None,
            surface_mm=([None if np.isnan(d) else round(float(d), 4) for d in surf_mm[i]] if surface
                        else None)))
    params = {"top": top, "shortlist": None if exhaustive else shortlist, "exhaustive": exhaustive,
              "rank_by": rank_by, "score": cfg.to_dict(),
              "calibration_sample": calibration_sample, "seed": seed, "max_shard": max_shard,
              "uncertainty": bool(uncertainty)}
    return QueryResult(cands, ext, params)


def query(
    gallery: Gallery,
    skull,
    *,
    top: int = 20,
    shortlist: int | None = None,
    tissue_table: str | None = None,
    sex: str | None = None,
    rank_by: str = "s",
    score_config: ScoreConfig | None = None,
    record: bool = True,
    calibration_sample: int = CALIBRATION_SAMPLE,
    exhaustive: bool | None = None,
    progress=None,
    uncertainty: bool = False,
    leave_out=(),
) -> QueryResult:
    """Rank the gallery's faces for a skull (see the module docstring); records the query.
    uncertainty: the likelihood with each face's fit uncertainty (see :func:`query_points`).
    leave_out: landmark names (or a pair's key, ``zy``) not to score — a damaged region, or a
    landmark the extension warns of (:meth:`ExtendedLandmarks.without`; the record keeps them).
    exhaustive: score every face exactly instead of a shortlist (the exact ranking; about 50 µs per
    face per core: 24 s for 1M faces on 2 cores); None: when the gallery has at most
    :data:`EXHAUSTIVE_AUTO_FACES` faces and no shortlist size is given. progress(done, total)
    reports it."""
    from skullsearch.retrieval.tissue import load_table

    table = load_table(tissue_table, sex=sex)
    ext = extend(skull, table).without(leave_out)
    shards = gallery.shards()
    max_shard = max((s.number for s in shards), default=0)
    if exhaustive is None:
        exhaustive = auto_exhaustive(gallery, shortlist, max_shard)
    # live queries search every shard (on GPU when there is one); the record keeps the last
    # shard so that a re-run searches exactly these faces
    result = query_points(gallery, ext.points, ext.present, ext.sd, top=top, shortlist=shortlist,
                          rank_by=rank_by, score_config=score_config,
                          calibration_sample=calibration_sample, exhaustive=exhaustive, progress=progress,
                          max_shard=max_shard if exhaustive else None, uncertainty=uncertainty)
    result.extended = ext
    result.warnings = list(getattr(skull, "warnings", [])) + ext.warnings
    result.params.update({"tissue_table": table.name, "sex": sex, "max_shard": max_shard,
                          "left_out": list(ext.left_out)})
    if record:
        result.query_id = record_query(gallery, skull, table, ext, result)
    return result


# ---------------------------------------------------------------- audit log
def rerun(gallery, query_id: str) -> tuple[QueryResult, bool]:
    """Re-run a recorded query on the shards it saw; returns (result, same answer as recorded)."""
    r = load_record(gallery, query_id)
    ext = ExtendedLandmarks.from_dict(r["extended"])
    p = r["params"]
    result = query_points(
        gallery, ext.points, ext.present, ext.sd, top=p["top"],
        shortlist=p["shortlist"], rank_by=p["rank_by"], score_config=ScoreConfig(**p["score"]),
        calibration_sample=p["calibration_sample"], seed=p["seed"], max_shard=p["max_shard"],
        exhaustive=bool(p.get("exhaustive", False)), uncertainty=bool(p.get("uncertainty", False)))
    result.params.update({"tissue_table": p.get("tissue_table"), "sex": p.get("sex"),
                          "left_out": list(ext.left_out)})
    result.extended = ext
    result.query_id = query_id
    same = [(c.face_id, round(c.s, 9), round(c.likelihood, 6)) for c in result.candidates] == \
        [(x["face_id"], round(x["s"], 9), round(x["likelihood"], 6)) for x in r["results"]]
    return result, same


def aligned_faces(gallery, candidates) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' neutral faces (the code's shape; expression and pose at zero, as scored)
    moved into the skull's frame by their scoring transforms: vertices (n, V, 3) and the stored
    soft-tissue points (n, 36, 3), float64 mm. Batched over the candidates."""
    import torch

    from skullsearch.encoder import code as code_layout
    from skullsearch.encoder.align import apply_similarity
    from skullsearch.encoder.fitting import code_vertices

    model = gallery.face_model
    ids = [c.face_id for c in candidates]
    if not ids:
        return np.zeros((0, model.n_vertices, 3)), np.zeros((0, len(SOFT_TISSUE_NAMES), 3))
    codes = np.array(gallery.codes(ids), np.float32)
    codes[:, code_layout.SLICES["expression"]] = 0.0
    codes[:, code_layout.SLICES["pose"]] = 0.0
    with torch.no_grad():
        verts = code_vertices(model, codes).double().numpy()
    pts = np.asarray(gallery.soft_tissue(ids), np.float64)
    scale = np.array([c.scale for c in candidates], np.float64)
    rot = np.array([c.rotation for c in candidates], np.float64)
    t = np.array([c.translation for c in candidates], np.float64)
    return apply_similarity(verts, scale, rot, t), apply_similarity(pts, scale, rot, t)


def export_candidates(gallery, skull, result: QueryResult, folder, n: int = 5) -> list[Path]:
    """For the top n candidates: the face aligned to the skull (PLY; matched landmarks green,
    unmatched red) and, where the landmarks tell the skull's midline, the skull's midsagittal
    profile with that face's (``profile_rankNN_faceID.png``,
    :func:`~skullsearch.retrieval.profile.profile_image`); and the skull with pegs; returns the
    files written."""
    import trimesh

    from skullsearch.retrieval.profile import profile_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = gallery.face_model
    written = []
    ext = result.extended
    if not np.isfinite(ext.skull_points[ext.present]).all():  # recorded before they were kept whole
        from skullsearch.retrieval.tissue import load_table

        ext = extend(skull, load_table(result.params.get("tissue_table"), sex=result.params.get("sex")))
    written.append(export_pegs(skull, ext, folder / "skull_pegs.ply"))
    profiles = ext.midline_plane() is not None  # (the landmarks tell the skull's midline)
    all_verts, all_pts = aligned_faces(gallery, result.candidates[:n])
    for c, verts, pts in zip(result.candidates[:n], all_verts, all_pts, strict=True):
        parts = [trimesh.Trimesh(verts, model.faces, vertex_colors=[205, 170, 150, 255], process=False)]
        for i in range(len(SOFT_TISSUE_NAMES)):
            if c.distance_mm[i] is None:
                continue
            color = [40, 190, 60, 255] if c.matched_flags[i] else [220, 40, 40, 255]
            ball = trimesh.creation.icosphere(subdivisions=1, radius=1.5)
            ball.apply_translation(pts[i])
            ball.visual.vertex_colors = color
            parts.append(ball)
        path = folder / f"rank{c.rank:02d}_face{c.face_id}.ply"
        trimesh.util.concatenate(parts).export(path)
        written.append(path)
        if profiles:
            face = trimesh.Trimesh(verts, model.faces, process=False)
            written.append(profile_image(skull, ext, folder / f"profile_rank{c.rank:02d}_face{c.face_id}.png",
                                         faces=[(f"#{c.rank} face {c.face_id}, placed by its superimposition",
                                                 face)]))
    return written
