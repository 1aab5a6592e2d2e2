"""Re-synthesize a query's winning faces so that they pass through the skull's extended landmarks.

    result = skullsearch.reconstruct(skull, gallery, candidates=3, out="case17-recon/")
    result = skullsearch.reconstruct(skull, query_result, gallery=gallery, method="fit")
    for r in result:
        r.face_id, r.method, r.s_before, r.s_after, r.vertices_skull      # (V, 3) mm skull frame

For each of the top candidates of a query (run first, and recorded in the audit log, when a
gallery is given):

1. **Which regions.** The candidate's neutral face is superimposed on the extended landmarks
   (:func:`skullsearch.retrieval.score.score`: S before, per-landmark distances, the bounded
   similarity face → skull); every face region (:mod:`.regions`) holding an unmatched landmark is
   revised; the rest is kept where the candidate had it.
2. **Definite regions** (forehead, back of the head) are pinned to the skull: each of their
   vertices, placed on the skull by the candidate's transform, goes to the closest skull surface
   point pushed out along the outward normal by the tissue table's glabella (g) depth (normals:
   the triangle's, oriented by :func:`~skullsearch.retrieval.extended.outward_normals` at a
   sample of the points); a vertex farther than :data:`DEFINITE_MAX_MM` from its target (no
   skull there: a partial skull, the neck), or well off the surface on the side the normal
   points away from (a rim, a hole), has no target. F3DMM-GC pulls every definite vertex with a
   target; GII-GC keeps the surface outside the revised regions and their seam exactly the
   candidate's, so there only revised (or seam) definite vertices follow their targets.
3. **Re-synthesis**, in the candidate's face frame (extended landmarks brought there by the
   inverse of the candidate's transform): ``method="fit"`` is F3DMM-GC (:mod:`.fit`, the
   paper's baseline, no GAN); ``"gan"`` is GII-GC (the paper's method, helper module
   ``inpaint.gii``; needs an inpainter trained for the gallery: ``skullsearch train inpainter``);
   ``"auto"`` takes gan when an inpainter is trained, else fit, and the result's ``note`` says
   which and why.
4. **After.** The new face is scored again (S after, distances, a new transform), placed in the
   skull's frame by that transform, rendered (normalized render, :mod:`.raster`), and with
   ``out=DIR`` written as ``face_<id>.ply`` (skull frame, mm), ``face_<id>.png`` and
   ``reconstruction.json`` (see the README and :meth:`ReconstructionResult.to_dict`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.errors import SkullsearchError

#: A definite-region vertex farther than this from its skull target has none (no skull there).
DEFINITE_MAX_MM = 12.0
#: Points of the definite regions at which the outward normal is estimated robustly.
NORMAL_SAMPLES = 24
METHODS = ("auto", "gan", "fit")


class ReconstructionError(SkullsearchError):
    """A reconstruction cannot run: bad arguments, a query without candidates, no gallery to read
    the codes from, a method that is not available."""


@dataclass
class Reconstruction:
    """One re-synthesized candidate.

    rank, face_id, person: the candidate; method: "fit" or "gan"; code (228,) the new face code
    (shape, expression, jaw pose; camera and light kept); vertices_face (V, 3) float32 mm in the
    model's face frame; vertices_skull (V, 3) float32 mm in the skull's frame (placed by the
    after-transform); s_before / s_after, matched_before / matched_after, present; per landmark
    (36 each, SOFT_TISSUE_NAMES order): distance_mm_before / distance_mm_after (None where
    absent), matched_flags_before / matched_flags_after; revised_regions: names; revised (V,)
    bool; losses: one dict per iteration; iterations; seconds (this candidate's share); scale,
    rotation (3, 3), translation (3,): the after-transform face → skull; render (1, S, S)
    float32 normalized render of the result; mesh_path / render_path / profile_path once written
    (the profile: the skull's midsagittal section with this face's,
    :func:`~skullsearch.retrieval.profile.profile_image`).
    """

    rank: int
    face_id: int
    person: str | None
    method: str
    code: np.ndarray
    vertices_face: np.ndarray
    vertices_skull: np.ndarray
    s_before: float
    s_after: float
    matched_before: int
    matched_after: int
    present: int
    distance_mm_before: list
    distance_mm_after: list
    matched_flags_before: list
    matched_flags_after: list
    revised_regions: list[str]
    revised: np.ndarray
    losses: list[dict]
    iterations: int
    seconds: float
    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    render: np.ndarray | None = None
    mesh_path: str | None = None
    render_path: str | None = None
    profile_path: str | None = None

    def to_dict(self) -> dict:
        """The candidate's entry of ``reconstruction.json``."""
        return {
            "rank": self.rank, "face_id": self.face_id, "person": self.person, "method": self.method,
            "mesh": self.mesh_path, "render": self.render_path, "profile": self.profile_path,
            "s_before": self.s_before, "s_after": self.s_after,
            "matched_before": self.matched_before, "matched_after": self.matched_after,
            "present": self.present,
            "distance_mm_before": self.distance_mm_before, "distance_mm_after": self.distance_mm_after,
            "matched_flags_before": self.matched_flags_before,
            "matched_flags_after": self.matched_flags_after,
            "revised_regions": list(self.revised_regions),
            "revised_vertices": int(np.sum(self.revised)),
            "losses": self.losses, "iterations": self.iterations, "seconds": round(self.seconds, 4),
            "transform_after": {"scale": self.scale, "rotation": np.asarray(self.rotation).tolist(),
                                "translation": np.asarray(self.translation).tolist(),
                                "maps": "face frame -> skull frame: x' = scale * R x + t"},
            "code": [float(v) for v in self.code],
        }


@dataclass
class ReconstructionResult:
    """The reconstructions, best-ranked candidate first (iterable, indexable, len()).

    candidates: list of :class:`Reconstruction`; method_requested: "auto", "gan" or "fit";
    note: which method ran and why; query_id: the audit record of the query (None when not
    recorded); skull_path / skull_sha256; target (36, 3) mm extended landmarks (skull frame,
    NaN where absent), present (36,) bool; g_depth_mm: the definite regions' offset;
    tissue_table: its name; out: the folder written (or None); faces (F, 3) the triangles.
    """

    candidates: list[Reconstruction]
    method_requested: str
    note: str
    query_id: str | None
    skull_path: str | None
    skull_sha256: str | None
    target: np.ndarray
    present: np.ndarray
    g_depth_mm: float
    tissue_table: str | None
    faces: np.ndarray
    out: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter(self.candidates)

    def __len__(self) -> int:
        return len(self.candidates)

    def __getitem__(self, i) -> Reconstruction:
        return self.candidates[i]

    def to_dict(self) -> dict:
        """The content of ``reconstruction.json``."""
        from skullsearch.meta import __version__

        return {
            "format": "skullsearch-reconstruction", "version": 1, "skullsearch": __version__,
            "query_id": self.query_id, "skull": {"path": self.skull_path, "sha256": self.skull_sha256},
            "method_requested": self.method_requested, "note": self.note,
            "landmarks": list(SOFT_TISSUE_NAMES),
            "present": [bool(p) for p in self.present],
            "extended_landmarks_mm": [None if not p else [float(v) for v in row]
                                      for row, p in zip(self.target, self.present, strict=True)],
            "g_depth_mm": self.g_depth_mm, "tissue_table": self.tissue_table,
            "frame": "meshes in the skull's frame, millimetres",
            "warnings": list(self.warnings),
            "candidates": [c.to_dict() for c in self.candidates],
        }


# ------------------------------------------------------------------------------ the entry point
def reconstruct(skull, gallery_or_result, *, candidates: int = 3, method: str = "auto",
                inpainter=None, out: str | os.PathLike | None = None, score_config=None,
                gallery=None, tissue_table: str | None = None, sex: str | None = None,
                top: int | None = None, shortlist: int | None = None, record: bool = True,
                fit_weights=None, iterations: int | None = None, jaw: bool = False,
                expression: bool = True, render_size: int = 128, starts: int = 4,
                seed: int = 0, leave_out=()) -> ReconstructionResult:
    """Re-synthesize the top ``candidates`` faces of a query for a skull (module docstring).

    skull: a :class:`~skullsearch.Skull` or a mesh path (landmarks found next to it);
    gallery_or_result: a :class:`~skullsearch.Gallery` or its folder (queried first, recorded
    when ``record``) or a :class:`~skullsearch.QueryResult` of this skull (then give
    ``gallery=`` too: the codes are read from it); method: "auto", "gan" or "fit";
    inpainter: an ``Inpainter`` or checkpoint path for gan (default: the gallery's trained
    one); out: folder to write; score_config: the :class:`~skullsearch.ScoreConfig` (default:
    the query's); tissue_table / sex / top / shortlist / leave_out: passed to the query (and the
    table gives the g depth; leave_out: landmarks not to score nor pass through); fit_weights /
    jaw / expression: F3DMM-GC options
    (:func:`.fit.f3dmm_gc`; without the expression the landmarks measured to need large shape
    coefficients); iterations: F3DMM-GC's re-weighting rounds (default 12) or GII-GC's most
    Adam steps (default 100); 0 or None: that default; starts / seed: GII-GC's random starts;
    render_size: side of the normalized renders (px, ≥ 16).
    """
    from skullsearch.index.gallery import Gallery
    from skullsearch.retrieval.query import QueryResult, query
    from skullsearch.retrieval.score import ScoreConfig
    from skullsearch.retrieval.skull import Skull

    if method not in METHODS:
        raise ReconstructionError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not isinstance(candidates, (int, np.integer)) or candidates < 1:
        raise ReconstructionError(f"candidates must be a whole number ≥ 1, got {candidates!r}")
    if iterations is not None and (not isinstance(iterations, (int, np.integer)) or iterations < 0):
        raise ReconstructionError(f"iterations must be a whole number ≥ 1 (0 or None: the method's "
                                  f"default), got {iterations!r}")
    if not isinstance(starts, (int, np.integer)) or starts < 1:
        raise ReconstructionError(f"starts (GII-GC's random starts) must be a whole number ≥ 1, "
                                  f"got {starts!r}")
    if not isinstance(render_size, (int, np.integer)) or render_size < 16:
        raise ReconstructionError(f"render_size must be a whole number of pixels ≥ 16, got {render_size!r}")
    if not isinstance(skull, Skull):
        if isinstance(skull, (str, os.PathLike)):
            skull = Skull.load(skull)
        else:
            raise ReconstructionError("skull must be a skullsearch.Skull or the path of a skull mesh")
    if isinstance(gallery_or_result, (str, os.PathLike)):
        gallery_or_result = Gallery.open(gallery_or_result)
    if isinstance(gallery_or_result, Gallery):
        gallery = gallery_or_result
        result = query(gallery, skull, top=max(int(candidates), top or 0), shortlist=shortlist,
                       tissue_table=tissue_table, sex=sex, score_config=score_config, record=record,
                       leave_out=leave_out)
    elif isinstance(gallery_or_result, QueryResult):
        result = gallery_or_result
        if leave_out:
            raise ReconstructionError("leave_out is the query's: pass it to query() (a QueryResult keeps "
                                      "the landmarks it left out), or pass the gallery here instead")
        if gallery is None:
            raise ReconstructionError("a QueryResult does not hold the faces' codes: pass the gallery it "
                                      "came from as gallery=... (or pass the gallery instead of the result)")
        if isinstance(gallery, (str, os.PathLike)):
            gallery = Gallery.open(gallery)
    else:
        raise ReconstructionError("reconstruct needs a Gallery (it is queried first) or a QueryResult "
                                  f"(with gallery=...), not {type(gallery_or_result).__name__}")
    if not result.candidates:
        raise ReconstructionError("the query has no candidates (an empty gallery, or no face within the "
                                  "shortlist): add faces to the gallery or check the skull's landmarks")
    params = result.params or {}
    if score_config is None:
        score_config = ScoreConfig(**params["score"]) if params.get("score") else ScoreConfig()
    ext = result.extended
    if not np.isfinite(ext.g_depth):  # points given without a table: the table named, or the default
        from dataclasses import replace

        from skullsearch.retrieval.tissue import load_table

        table = load_table(tissue_table if tissue_table is not None else params.get("tissue_table"),
                           sex=sex if sex is not None else params.get("sex"))
        g = table.row("g")[0]
        ext = replace(ext, g_depth=float(g if np.isfinite(g) else load_table().row("g")[0]),
                      table_name=ext.table_name or table.name)
    model = gallery.face_model
    chosen, note, inp = _choose_method(method, inpainter, gallery, model)

    cands = result.candidates[: int(candidates)]
    ids = np.array([c.face_id for c in cands], np.int64)
    codes = np.asarray(gallery.codes(ids), np.float32)
    opts = _Options(fit_weights=fit_weights, iterations=iterations, jaw=jaw, expression=expression,
                    starts=starts, seed=seed, render_size=render_size)
    recs, warnings = _run(model, skull, codes, gallery.soft_tissue(ids), ext, score_config, chosen, inp, opts)
    for rec, c in zip(recs, cands, strict=True):
        rec.rank, rec.face_id, rec.person = c.rank, c.face_id, c.person
    res = ReconstructionResult(
        candidates=recs, method_requested=method, note=note, query_id=result.query_id,
        skull_path=skull.path, skull_sha256=skull.sha256,
        target=np.where(ext.present[:, None], ext.points, np.nan), present=np.asarray(ext.present, bool),
        g_depth_mm=float(ext.g_depth), tissue_table=ext.table_name, faces=model.faces,
        warnings=list(result.warnings) + warnings)
    if out is not None:
        write_reconstruction(res, out, skull=skull, extended=ext)
    return res


def _choose_method(method: str, inpainter, gallery, model):
    """(method that runs, note, Inpainter or None)."""
    gan = _gan_api()
    if method == "fit":
        return "fit", "F3DMM-GC (direct fit of the face code) as requested", None
    if gan is None:
        if method == "gan":
            raise ReconstructionError("the GAN inpainter (GII-GC) is not available in this installation; "
                                      "use --method fit")
        return "fit", "F3DMM-GC used: the GAN inpainter (GII-GC) is not available in this installation", None
    load_inpainter, missing_error = gan["load_inpainter"], gan["InpainterMissingError"]
    try:
        if inpainter is None:
            inp = load_inpainter(gallery, model=model)
        elif isinstance(inpainter, (str, os.PathLike)):
            inp = load_inpainter(inpainter, model=model)
        else:
            inp = inpainter
            if hasattr(inp, "check_model"):
                inp.check_model(model)
    except missing_error as e:
        if method == "gan":
            raise
        return "fit", f"F3DMM-GC used (GII-GC needs a trained inpainter): {e}", None
    how = "as requested" if method == "gan" else "an inpainter is trained for this gallery"
    return "gan", f"GII-GC (GAN inpainting) used: {how}", inp


def _gan_api() -> dict | None:
    """Helper B's GII-GC, when its modules are present (guarded import)."""
    try:
        from skullsearch.inpaint.gan import InpainterMissingError, load_inpainter
        from skullsearch.inpaint.gii import gii_gc
    except ImportError:
        return None
    return {"gii_gc": gii_gc, "load_inpainter": load_inpainter,
            "InpainterMissingError": InpainterMissingError}


# ------------------------------------------------------------------------------ the core
def to_face_frame(points: np.ndarray, scale, rotation, translation) -> np.ndarray:
    """Invert the score's face → skull similarity (x' = s·R·x + t): points (C, n, 3) or (n, 3)
    skull frame → (C, n, 3) face frame, per candidate; scale (C,), rotation (C, 3, 3),
    translation (C, 3)."""
    p = np.asarray(points, np.float64)
    s, r, t = np.asarray(scale, np.float64), np.asarray(rotation, np.float64), np.asarray(translation)
    if p.ndim == 2:
        p = np.broadcast_to(p, (len(s),) + p.shape)
    return np.einsum("cji,cnj->cni", r, p - t[:, None, :]) / s[:, None, None]


def definite_targets(mesh, vertices_skull: np.ndarray, definite: np.ndarray, depth_mm: float,
                     max_mm: float = DEFINITE_MAX_MM, seed: int = 0) -> np.ndarray:
    """Skull-frame targets of the definite-region vertices: the closest skull surface point plus
    ``depth_mm`` along the outward normal.

    mesh: the skull (trimesh, mm); vertices_skull (C, V, 3) the candidates' vertices placed on the
    skull; definite (V,) bool. Returns (C, V, 3) mm skull frame, NaN where not definite, where
    the target is farther than ``max_mm`` from the vertex (no skull there), or where the vertex
    lies more than half the depth behind the surface point's normal (the wrong side).
    """
    import trimesh
    from scipy.spatial import cKDTree

    from skullsearch.retrieval.extended import outward_normals

    c, n_v, _ = vertices_skull.shape
    out = np.full((c, n_v, 3), np.nan)
    idx = np.nonzero(definite)[0]
    if len(idx) == 0:
        return out
    pts = vertices_skull[:, idx].reshape(-1, 3)
    closest, _, tri = trimesh.proximity.closest_point(mesh, pts)
    fn = np.asarray(mesh.face_normals)[tri]
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(closest), size=min(NORMAL_SAMPLES, len(closest)), replace=False)
    ref = outward_normals(mesh, closest[sample])
    ok = np.isfinite(ref).all(1)
    if ok.any():
        _, j = cKDTree(closest[sample][ok]).query(closest)
        fn = fn * np.where((fn * ref[ok][j]).sum(1) < 0, -1.0, 1.0)[:, None]
    tgt = closest + depth_mm * fn
    # no target where it is far from the vertex, or where the normal points away from a vertex
    # well off the surface (the wrong side: a rim, a hole, a thin wall)
    off = pts - closest
    gap = np.linalg.norm(off, axis=1)
    wrong_side = ((off * fn).sum(1) < 0) & (gap > 0.5 * depth_mm)
    far = np.linalg.norm(tgt - pts, axis=1) > max_mm
    tgt[far | wrong_side] = np.nan
    out[:, idx] = tgt.reshape(c, len(idx), 3)
    return out


@dataclass
class _Options:
    """The re-synthesis settings of :func:`reconstruct` (see there)."""

    fit_weights: object = None
    iterations: int | None = None
    jaw: bool = False
    expression: bool = True
    starts: int = 4
    seed: int = 0
    render_size: int = 128


@dataclass
class _Case:
    """What both methods start from, per candidate (C): the score before, the revised vertices
    (C, V) and their region names, the targets in each face's frame (C, 36, 3), the definite
    regions' targets in the face frame (C, V, 3, NaN where none), the vertices to keep (C, V),
    the neutral vertices (C, V, 3), setup seconds, warnings."""

    before: object
    revise: np.ndarray
    revised_names: list
    tgt_face: np.ndarray
    d_face: np.ndarray
    keep: np.ndarray
    base: np.ndarray
    setup_s: float
    warnings: list


def _prepare(model, skull, codes, neutral_points, ext, cfg, regions, seed: int) -> _Case:
    from skullsearch.encoder import code as code_layout
    from skullsearch.encoder.align import apply_similarity
    from skullsearch.inpaint.regions import revised_vertices
    from skullsearch.retrieval.score import score

    t0 = time.perf_counter()
    c = len(codes)
    before = score(neutral_points, ext.points, ext.present, ext.sd, cfg)
    shape = code_layout.split(codes).shape[:, : min(model.n_shape, code_layout.N_SHAPE)]
    with torch.no_grad():
        base = model.vertices(shape=torch.as_tensor(np.ascontiguousarray(shape))).double().numpy()
    revise = np.stack([revised_vertices(regions, before.matched_flags[i], ext.present) for i in range(c)])
    revised_names = [regions.revised_names(before.matched_flags[i], ext.present) for i in range(c)]
    tgt_face = to_face_frame(np.nan_to_num(ext.points), before.scale, before.rotation, before.translation)
    base_skull = apply_similarity(base, before.scale, before.rotation, before.translation)
    warnings = []
    d_skull = definite_targets(skull.mesh, base_skull, regions.definite, ext.g_depth, seed=seed)
    n_known = np.isfinite(d_skull[..., 0]).sum(1)
    if regions.definite.any() and (n_known == 0).any():
        warnings.append("no skull surface near the definite regions (forehead, back of head) for "
                        f"{int((n_known == 0).sum())} candidate(s): they are not pinned")
    d_face = to_face_frame(d_skull.reshape(c, -1, 3), before.scale, before.rotation,
                           before.translation).reshape(d_skull.shape)
    d_face[~np.isfinite(d_skull)] = np.nan
    keep = ~revise & ~np.isfinite(d_face).all(-1)
    return _Case(before, revise, revised_names, tgt_face, d_face, keep, base, time.perf_counter() - t0,
                 warnings)


def _resynthesize(model, codes, ext, cfg, case: _Case, regions, method: str, inp, opts: _Options):
    """(new codes (C, 228), vertices (C, V, 3) face frame, soft-tissue points (C, 36, 3), losses,
    iterations, seconds) by F3DMM-GC (``fit``) or GII-GC (``gan``)."""
    from skullsearch.encoder import code as code_layout
    from skullsearch.inpaint.fit import f3dmm_gc

    c = len(codes)
    before = case.before
    if method == "fit":
        res = f3dmm_gc(model, codes, case.tgt_face, ext.present, case.keep, kept_positions=case.base,
                       definite_target=case.d_face, eta=cfg.thresholds(ext.sd)[None] / before.scale[:, None],
                       sigma=cfg.sigma(ext.sd)[None] / before.scale[:, None], weights=opts.fit_weights,
                       iterations=opts.iterations or 12, jaw=opts.jaw, expression=opts.expression)
        return (res.codes, res.vertices.astype(np.float64), res.points.astype(np.float64), res.losses,
                [int(i) for i in res.iterations], [case.setup_s / c + float(s) for s in res.seconds])
    gii = _gan_api()["gii_gc"]
    new_codes, verts, losses, iters, secs = [], [], [], [], []
    for i in range(c):
        t1 = time.perf_counter()
        g = gii(model, inp, codes[i], case.tgt_face[i], ext.present, case.revise[i], regions.definite,
                case.d_face[i], starts=opts.starts, iterations=opts.iterations or 100, seed=opts.seed)
        new_code = np.array(g.code, np.float32)  # canonical: camera and light back from the candidate
        for part in ("cam_rot", "cam_trans", "light"):
            new_code[code_layout.SLICES[part]] = codes[i][code_layout.SLICES[part]]
        new_codes.append(new_code)
        verts.append(np.asarray(g.vertices, np.float64))
        losses.append([_plain_row(r, k) for k, r in enumerate(g.losses)])
        iters.append(int(g.iterations))
        secs.append(case.setup_s / c + time.perf_counter() - t1)
    verts = np.stack(verts)
    with torch.no_grad():
        pts = model.soft_tissue(vertices=torch.as_tensor(verts)).numpy()
    return np.stack(new_codes), verts, pts, losses, iters, secs


def _run(model, skull, codes, neutral_points, ext, cfg, method: str, inp, opts: _Options):
    """Re-synthesize candidates (codes (C, 228), neutral soft-tissue points (C, 36, 3)) through the
    skull's extended landmarks ``ext``; returns (Reconstruction list, warnings)."""
    from skullsearch.encoder.align import apply_similarity
    from skullsearch.inpaint.raster import render_normalized
    from skullsearch.inpaint.regions import face_regions
    from skullsearch.retrieval.score import score

    regions = face_regions(model)
    case = _prepare(model, skull, codes, neutral_points, ext, cfg, regions, opts.seed)
    new_codes, verts, pts, losses, iters, secs = _resynthesize(model, codes, ext, cfg, case, regions,
                                                               method, inp, opts)
    before = case.before
    after = score(pts, ext.points, ext.present, ext.sd, cfg)
    v_skull = apply_similarity(verts, after.scale, after.rotation, after.translation)
    renders = render_normalized(model, verts, size=opts.render_size, vertex_mask=case.revise).image

    def dl(d):
        return [None if not np.isfinite(x) else round(float(x), 4) for x in d]

    recs = []
    for i in range(len(codes)):
        recs.append(Reconstruction(
            rank=0, face_id=0, person=None, method=method, code=np.asarray(new_codes[i], np.float32),
            vertices_face=verts[i].astype(np.float32), vertices_skull=v_skull[i].astype(np.float32),
            s_before=float(before.s[i]), s_after=float(after.s[i]),
            matched_before=int(before.matched[i]), matched_after=int(after.matched[i]),
            present=int(before.present[i]),
            distance_mm_before=dl(before.distance_mm[i]), distance_mm_after=dl(after.distance_mm[i]),
            matched_flags_before=[bool(m) for m in before.matched_flags[i]],
            matched_flags_after=[bool(m) for m in after.matched_flags[i]],
            revised_regions=case.revised_names[i], revised=case.revise[i], losses=losses[i],
            iterations=iters[i], seconds=float(secs[i]), scale=float(after.scale[i]),
            rotation=after.rotation[i], translation=after.translation[i], render=renders[i]))
    return recs, case.warnings


def _plain_row(row, k: int) -> dict:
    out = {"iteration": k}
    for key, v in dict(row).items():
        try:
            out[key] = float(v)
        except (TypeError, ValueError):
            out[key] = v
    return out


# ------------------------------------------------------------------------------ output
def write_reconstruction(result: ReconstructionResult, out: str | os.PathLike, skull=None,
                         extended=None) -> Path:
    """Write ``face_<id>.ply`` (skull frame, mm), ``face_<id>.png`` (normalized render), with the
    ``skull`` and its ``extended`` landmarks ``profile_<id>.png`` (the skull's midsagittal section
    with the face's: :func:`~skullsearch.retrieval.profile.profile_image`; where the landmarks do
    not tell the midline, a warning instead) and ``reconstruction.json`` (last, atomically) into
    ``out``; returns the folder."""
    import trimesh

    from skullsearch.encoder.atomic import write_json_atomic
    from skullsearch.inpaint.raster import to_png
    from skullsearch.retrieval.extended import ExtendedLandmarkError
    from skullsearch.retrieval.profile import profile_image

    folder = Path(out)
    draw = skull is not None and extended is not None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for r in result.candidates:
            mesh_name, png_name = f"face_{r.face_id}.ply", f"face_{r.face_id}.png"
            mesh = trimesh.Trimesh(np.asarray(r.vertices_skull, np.float64), result.faces, process=False)
            mesh.export(folder / mesh_name)
            r.mesh_path = mesh_name
            if r.render is not None:
                to_png(r.render, folder / png_name)
                r.render_path = png_name
            r.profile_path = None  # (a result written before keeps no stale name)
            if draw:
                try:
                    profile_image(skull, extended, folder / f"profile_{r.face_id}.png",
                                  faces=[(f"face {r.face_id}, re-synthesized", mesh)])
                    r.profile_path = f"profile_{r.face_id}.png"
                except ExtendedLandmarkError as exc:
                    if f"no profile image: {exc}" not in result.warnings:  # (written twice: said once)
                        result.warnings.append(f"no profile image: {exc}")
                    draw = False
        write_json_atomic(folder / "reconstruction.json", result.to_dict())
    except OSError as e:
        raise ReconstructionError(f"cannot write the reconstruction to {folder}: {e}") from None
    result.out = folder
    return folder
