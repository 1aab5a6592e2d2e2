"""How far a query's ranking rests on conventions that the skull cannot settle.

A skull's extended landmarks follow from choices no examiner can check on the skull alone: how
thick this person's tissue was (the table gives a population's mean: a lean face, an old one, a
cadaver's shrunken tissue lie under it, a heavy one over it), which way each depth was measured
(square to the bone, as the extension lays it, or parallel to the Frankfort plane, as many
studies measure the midline), and where along the skin the face model and the table each put a
named point. On two real CT heads these variants move the model's best face for the real skin
between 1st and 603rd (CThead) and 60th and 805th (Cranium) by S, and between 1st and 79th, and
not at all, by likelihood (``benchmarks/ct_identification.py --rescore F --sensitivity``).
:func:`rank_sensitivity` re-runs a query under each of :data:`VARIANTS` — the same gallery,
shortlist and scores, the skull's landmarks laid again — and reports where each of its
candidates ranks then: a lead that keeps its place under all of them rests on the skull's
landmarks, not on the conventions; one that drops out of the first hundred under one of them
rests on that convention as much as on the skull.
"""

from __future__ import annotations

from dataclasses import replace

from skullsearch.retrieval.extended import ExtendedLandmarkError, ExtendedLandmarks
from skullsearch.retrieval.score import ScoreConfig

#: name → what each variant changes (the skull's extended landmarks, or the likelihood's reading)
VARIANTS = {
    "thin": "every tissue depth × 0.8 (a lean or old face, a cadaver's tissue)",
    "thick": "every tissue depth × 1.2 (a heavy face)",
    "forward": "the midline face's tissue laid along the skull's forward axis, not square to the bone",
    "fuzzy": "an SD of 3 mm along the skin in the likelihood (a named point placed elsewhere on the skin)",
}
#: the depth factors of the thin and thick variants, and the fuzzy variant's SD along the skin (mm)
THIN, THICK, FUZZY_MM = 0.8, 1.2, 3.0
#: how many places each variant ranks: a candidate beyond them is reported as None ("beyond")
DEPTH = 100


def variant(ext: ExtendedLandmarks, cfg: ScoreConfig, name: str) -> tuple[ExtendedLandmarks, ScoreConfig]:
    """The extended landmarks and score settings of one of :data:`VARIANTS`. Raises
    :class:`~skullsearch.retrieval.extended.ExtendedLandmarkError` where the variant cannot be
    made (landmarks given as points without a skull; no forward axis)."""
    if name == "thin":
        return ext.with_depths(THIN), cfg
    if name == "thick":
        return ext.with_depths(THICK), cfg
    if name == "forward":
        return ext.laid_forward(), cfg
    if name == "fuzzy":
        return ext, replace(cfg, tangent_sd_mm=max(cfg.tangent_sd_mm, FUZZY_MM))
    raise ValueError(f"unknown variant {name!r}: one of {', '.join(VARIANTS)}")


def rank_sensitivity(gallery, result, variants=tuple(VARIANTS), depth: int = DEPTH) -> dict:
    """Each candidate of a query ``result`` (:func:`~skullsearch.query` /
    :func:`~skullsearch.rerun`) ranked again under each variant (:data:`VARIANTS`), with the
    query's gallery shards, shortlist, ranking and score settings; no record is written.

    Returns ``{"variants": [names], "depth": depth, "ranks": {face_id: {variant: rank (1 = first)
    or None (beyond ``depth``, at least the query's own number of candidates)}}, "range": {face_id:
    (best, worst or None)} over the query's own rank and the variants', "skipped": {variant: why}}``.
    Each variant costs about one query."""
    from skullsearch.retrieval.query import query_points

    p = result.params
    depth = max(int(depth), len(result.candidates), 1)  # (every listed candidate can be placed)
    cfg = ScoreConfig(**p["score"]) if isinstance(p.get("score"), dict) else ScoreConfig()
    ranks = {c.face_id: {} for c in result.candidates}
    skipped = {}
    done = []
    for name in variants:
        try:
            ext, vcfg = variant(result.extended, cfg, name)
        except ExtendedLandmarkError as e:
            skipped[name] = str(e)
            continue
        got = query_points(gallery, ext.points, ext.present, ext.sd, top=depth,
                           shortlist=p.get("shortlist"), rank_by=p.get("rank_by", "s"), score_config=vcfg,
                           calibration_sample=0, seed=p.get("seed", 0), max_shard=p.get("max_shard"),
                           exhaustive=bool(p.get("exhaustive", False)),
                           uncertainty=bool(p.get("uncertainty", False)))
        where = {c.face_id: c.rank for c in got.candidates}
        for fid in ranks:
            ranks[fid][name] = where.get(fid)
        done.append(name)
    span = {}
    for c in result.candidates:
        seen = [c.rank] + [ranks[c.face_id][n] for n in done]
        span[c.face_id] = (min(r for r in seen if r is not None),
                           None if any(r is None for r in seen) else max(seen))
    return {"variants": done, "depth": depth, "ranks": ranks, "range": span, "skipped": skipped}
