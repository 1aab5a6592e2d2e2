"""The case report: one self-contained HTML file for a recorded query, readable with no network.

    path = skullsearch.report("missing_persons", "20261201T101500Z-1a2b3c4d", "case17.html",
                              reconstruction="case17-recon/", top=5)

What is in it (every number from the gallery's audit record or a re-run of it):

- the query's inputs and their sha256 (the skull file is hashed again and compared), the
  parameters, the tissue table, the versions, the record's own sha256;
- the ranked candidates with photo thumbnails embedded (JPEG, base64; a placeholder says so where
  a face has no photo, synthetic faces, or the file is gone);
- for the top candidates, an interactive 3D view (three.js, vendored from npm and inlined: see
  ``inpaint/assets/README.md``) of the skull (decimated to ``max_skull_faces``), the candidate's
  face aligned to it by the scoring transform, the extended landmarks (green: matched, red:
  unmatched) with the per-landmark distance table;
- S and the likelihood of the candidates against the gallery's score distribution (the fixed
  calibration sample of the query), as an inline SVG;
- the re-synthesized faces when a reconstruction folder is given (``reconstruction.json``, see
  :func:`read_reconstruction`).

The recorded query is re-run on the shards it saw (:func:`skullsearch.retrieval.query.rerun`) to
get the per-landmark detail and transforms; the report says whether the re-run reproduced the
recorded answer. All user text (paths, person names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skullsearch.encoder.soft_tissue import FACE_POINT_NAMES, SOFT_TISSUE_NAMES, base_key
from skullsearch.errors import SkullsearchError

ASSETS = Path(__file__).resolve().parent / "assets"
THREE_VERSION = "0.181.0"
#: sha256 of the vendored files (inpaint/assets/README.md): checked before they are inlined.
THREE_SHA256 = {
    "three.core.min.js": "295a28f4a9786dd24a2a357a4ce90921eb041127e53a508335b9a0556c1e0875",
    "three.module.min.js": "ff29585116898cc56ddeb871764f2c8edf02cc2ca5b7521056f332d11053b799",
}
MAX_SKULL_FACES = 30_000
THUMB_PX = 112


class ReportError(SkullsearchError):
    """The report cannot be built: unknown query, unreadable reconstruction folder, bad output path."""


def e(x) -> str:
    """HTML-escape anything (None → empty)."""
    return "" if x is None else html.escape(str(x), quote=True)


# ------------------------------------------------------------------------------ mesh helpers
def decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int = MAX_SKULL_FACES
             ) -> tuple[np.ndarray, np.ndarray]:
    """Vertex-clustering decimation: vertices (n, 3), faces (m, 3) int → at most ``max_faces``
    faces. Vertices are merged per cell of a cubic grid (the cell size found by bisection), each
    cell's vertex at the mean of its members; faces that collapse or repeat are dropped.
    Returns (vertices (k, 3) float64, faces (≤ max_faces, 3) int64); the mesh unchanged when
    it is already small enough."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if len(f) <= max_faces:
        return v, f
    lo = v.min(0)
    extent = float((v.max(0) - lo).max()) or 1.0

    def cluster(cell: float):
        key = np.floor((v - lo) / cell).astype(np.int64)
        _, inverse = np.unique(key, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        nf = inverse[f]
        ok = (nf[:, 0] != nf[:, 1]) & (nf[:, 1] != nf[:, 2]) & (nf[:, 0] != nf[:, 2])
        nf = nf[ok]
        if len(nf):  # faces merged onto the same three cells: keep one
            first = np.unique(np.sort(nf, axis=1), axis=0, return_index=True)[1]
            nf = nf[np.sort(first)]
        return inverse, nf

    small, large = extent / 4096, extent / 4  # small: too many faces; large: few enough
    best = cluster(large)
    for _ in range(18):
        mid = math.sqrt(small * large)
        inverse, nf = cluster(mid)
        if len(nf) <= max_faces:
            large, best = mid, (inverse, nf)
        else:
            small = mid
        if large / small < 1.02:
            break
    inverse, nf = best
    used = np.unique(nf)
    counts = np.bincount(inverse, minlength=inverse.max() + 1).astype(np.float64)
    centres = np.zeros((inverse.max() + 1, 3))
    np.add.at(centres, inverse, v)
    centres /= np.maximum(counts, 1)[:, None]
    remap = np.full(inverse.max() + 1, -1, np.int64)
    remap[used] = np.arange(len(used))
    return centres[used], remap[nf]


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _positions(v: np.ndarray) -> dict:
    """Vertices (n, 3) → {q: base64 uint16 (little-endian), origin, step}: quantized over the box
    (error ≤ step / 2, about 0.002 mm for a 250 mm head)."""
    v = np.asarray(v, np.float64)
    lo, hi = v.min(0), v.max(0)
    step = np.where(hi > lo, (hi - lo) / 65535.0, 1.0)
    q = np.clip(np.rint((v - lo) / step), 0, 65535).astype("<u2")
    return {"q": _b64(q), "origin": lo.round(6).tolist(), "step": step.tolist()}


def _index(f: np.ndarray, n_vertices: int) -> dict:
    wide = n_vertices > 65535
    return {"idx": _b64(np.asarray(f).astype("<u4" if wide else "<u2")), "wide": wide}


def _mesh(v: np.ndarray, f: np.ndarray) -> dict:
    return {**_positions(v), **_index(f, len(v))}


# ------------------------------------------------------------------------------ photos
def thumbnail(path: str | None, gallery_dir: Path | None = None,
              px: int = THUMB_PX) -> tuple[str | None, str]:
    """(data: URL of a JPEG thumbnail or None, note). Looks for ``path`` as given, then relative
    to the gallery folder; no photo (synthetic faces), a missing or unreadable file → None and
    the reason."""
    if not path or str(path).startswith("synth://"):
        return None, "synthetic face: no photo"
    from PIL import Image, UnidentifiedImageError

    candidates = [Path(path)]
    if gallery_dir is not None and not Path(path).is_absolute():
        candidates.append(gallery_dir / path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return None, "photo file not found"
    try:
        return _data_url(found, px, "JPEG"), ""
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"photo unreadable ({type(exc).__name__})"


def _data_url(path: Path, px: int, fmt: str) -> str:
    """A data: URL of the image at ``path`` shrunk to fit px × px: "JPEG" (RGB, EXIF orientation
    applied: photos) or "PNG" (RGBA: renders). Raises what Pillow raises for a bad file."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB") if fmt == "JPEG" else im.convert("RGBA")
        return _image_data_url(im, px, fmt)


def _image_data_url(im, px: int, fmt: str) -> str:
    """A data: URL of a PIL image (RGB for "JPEG") shrunk to fit px × px, as :func:`_data_url`."""
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 82} if fmt == "JPEG" else {"optimize": True}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _png_data_url(path: Path, px: int = 320) -> str | None:
    """A render as a PNG data: URL, or None when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        return _data_url(path, px, "PNG")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


# ------------------------------------------------------------------------------ reconstruction
@dataclass
class Reconstruction:
    """A reconstruction folder read back: the JSON (``data``), per candidate its mesh (vertices
    (n, 3), faces (m, 3) in the skull's frame, or None), render and midsagittal profile (data:
    URLs or None), and the problems found (missing files), for the report to show."""

    folder: Path
    data: dict
    meshes: dict[int, tuple[np.ndarray, np.ndarray] | None] = field(default_factory=dict)
    renders: dict[int, str | None] = field(default_factory=dict)
    profiles: dict[int, str | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_reconstruction(folder: str | os.PathLike) -> Reconstruction:
    """Read a folder written by ``skullsearch reconstruct`` (``reconstruction.json`` with
    ``candidates``: rank, face_id, method, mesh, render, s_before/s_after, matched_before/after,
    present, distances, revised_regions, losses, iterations, seconds; meshes in the skull's
    frame, mm)."""
    import trimesh

    folder = Path(folder)
    meta = folder / "reconstruction.json"
    if not meta.is_file():
        raise ReportError(f"{folder} is not a reconstruction folder (no reconstruction.json); "
                          "run `skullsearch reconstruct` first or leave out --reconstruction")
    try:
        data = json.loads(meta.read_text())
        cands = data["candidates"]
        ids = [int(c["face_id"]) for c in cands]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{meta} is malformed ({exc!r}); write it again with "
                          "`skullsearch reconstruct`") from None
    rec = Reconstruction(folder, data)
    root = folder.resolve()

    def inside(name: str) -> Path | None:
        """The folder's own file ``name``; None for a path that leaves the folder."""
        p = (folder / str(name)).resolve()
        return p if p.is_relative_to(root) else None

    for fid, c in zip(ids, cands, strict=True):
        rec.meshes[fid] = None
        if c.get("mesh"):
            p = inside(c["mesh"])
            try:
                if p is None:
                    raise ValueError("outside the reconstruction folder")
                m = trimesh.load(p, force="mesh", process=False)
                rec.meshes[fid] = (np.asarray(m.vertices), np.asarray(m.faces))
            except Exception as exc:  # noqa: BLE001 - any unreadable mesh is reported, not fatal
                rec.problems.append(f"face {fid}: mesh {c['mesh']} unreadable ({type(exc).__name__}: {exc})")
        rec.renders[fid] = None
        if c.get("render"):
            p = inside(c["render"])
            url = None if p is None else _png_data_url(p)
            if url is None:
                rec.problems.append(f"face {fid}: render {c['render']} missing or unreadable")
            rec.renders[fid] = url
        rec.profiles[fid] = None
        if c.get("profile"):  # (folders written before the profile images have none)
            p = inside(c["profile"])
            url = None if p is None else _png_data_url(p, px=720)
            if url is None:
                rec.problems.append(f"face {fid}: profile {c['profile']} missing or unreadable")
            rec.profiles[fid] = url
    return rec


# ------------------------------------------------------------------------------ SVG plot
def _histogram_svg(title: str, ref: np.ndarray, marks: list[tuple[str, float, bool]], lo: float, hi: float,
                   bins: int = 24, width: int = 460, height: int = 170, fmt: str = "{:.2f}") -> str:
    """A histogram of ``ref`` (the gallery's sample) on [lo, hi] with vertical marks
    (label, value, highlighted) for the candidates."""
    ref = np.asarray(ref, np.float64)
    ref = ref[np.isfinite(ref)]
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(np.clip(ref, lo, hi), bins=bins, range=(lo, hi))
    pad_l, pad_r, pad_t, pad_b = 36, 10, 22, 30
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    top = max(int(counts.max()) if len(counts) else 1, 1)
    x = lambda val: pad_l + (val - lo) / (hi - lo) * w  # noqa: E731
    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">',
           f'<text x="{pad_l}" y="14" class="pt">{e(title)}</text>']
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        bh = c / top * h
        out.append(f'<rect x="{x(a):.1f}" y="{pad_t + h - bh:.1f}" width="{max(x(b) - x(a) - 1, 0.5):.1f}" '
                   f'height="{bh:.1f}" fill="#b8bec6"/>')
    out.append(f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#444"/>')
    for val in np.linspace(lo, hi, 5):
        out.append(f'<text x="{x(val):.1f}" y="{pad_t + h + 14}" class="ax" text-anchor="middle">'
                   f'{e(fmt.format(val))}</text>')
    out.append(f'<text x="{pad_l - 4}" y="{pad_t + 8}" class="ax" text-anchor="end">{top}</text>')
    for k, (label, val, hot) in enumerate(sorted(marks, key=lambda m: m[2])):
        if not np.isfinite(val):
            continue
        xv = x(min(max(val, lo), hi))
        colour = "#c0392b" if hot else "#2c6fbb"
        out.append(f'<line x1="{xv:.1f}" y1="{pad_t}" x2="{xv:.1f}" y2="{pad_t + h}" stroke="{colour}" '
                   f'stroke-width="{2 if hot else 1}"/>')
        if hot or k < 6:
            right = xv > pad_l + w - 30  # near the right edge: label on the line's left
            anchor = "end" if right else "start"
            out.append(f'<text x="{xv + (-2 if right else 2):.1f}" y="{pad_t + 10 + 10 * (k % 3)}" '
                       f'class="ax" fill="{colour}" text-anchor="{anchor}">{e(label)}</text>')
    out.append(f'<text x="{pad_l + w}" y="{height - 2}" class="ax" text-anchor="end">grey: {len(ref)} '
               'gallery faces (calibration sample); lines: candidates</text></svg>')
    return "".join(out)


def _loss_svg(losses: list[dict], width: int = 260, height: int = 90) -> str:
    vals = [(int(r.get("iteration", i)), float(r["total"])) for i, r in enumerate(losses)
            if isinstance(r, dict) and r.get("total") is not None and math.isfinite(float(r["total"]))]
    if len(vals) < 2:
        return ""
    it = np.array([a for a, _ in vals], float)
    lv = np.array([b for _, b in vals], float)
    x = 30 + (it - it.min()) / max(np.ptp(it), 1e-9) * (width - 40)
    y = 10 + (lv.max() - lv) / max(np.ptp(lv), 1e-12) * (height - 30)
    y = height - 20 - (y - 10)
    pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y, strict=True))
    return (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<polyline points="{pts}" fill="none" stroke="#2c6fbb" stroke-width="1.5"/>'
            f'<text x="30" y="{height - 5}" class="ax">iteration {int(it.min())}–{int(it.max())}; loss '
            f'{lv[0]:.4g} → {lv[-1]:.4g}</text></svg>')


# ------------------------------------------------------------------------------ the report
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _vendored(name: str) -> str:
    p = ASSETS / name
    try:
        data = p.read_bytes()
    except OSError:
        raise ReportError(f"the report's viewer asset {p} is missing; reinstall skullsearch "
                          "(or run inpaint/assets/update.sh in a source checkout)") from None
    want = THREE_SHA256.get(name)
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise ReportError(f"{p} does not match its recorded sha256 (inpaint/assets/README.md); "
                          "run inpaint/assets/update.sh to restore it")
    text = data.decode("utf-8")
    if "</script" in text.lower():
        raise ReportError(f"{p} contains '</script' and cannot be inlined")
    return text


def _json_for_script(obj) -> str:
    """JSON safe inside a <script> block: every '<' written as \\u003c (and no NaN)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _fmt(v, spec: str = ".2f", none: str = "—") -> str:
    if v is None:
        return none
    try:
        f = float(v)
    except (TypeError, ValueError):
        return e(v)
    return none if not math.isfinite(f) else format(f, spec)


def _xyz(p) -> str:
    if p is None or p[0] is None or not all(math.isfinite(float(c)) for c in p):
        return "—"
    return ", ".join(f"{float(c):.1f}" for c in p)


def _kv_table(rows: list[tuple[str, object]], raw: bool = False) -> str:
    body = "".join(f"<tr><th>{e(k)}</th><td>{v if raw else e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", json.dumps(v) if isinstance(v, dict | list) else v))
    return out


def _points(arr) -> list:
    """(36, 3) with NaN / None rows → list of [x, y, z] or None (JSON)."""
    out = []
    for p in arr:
        if p is None or p[0] is None or not np.all(np.isfinite(np.asarray(p, float))):
            out.append(None)
        else:
            out.append([round(float(c), 3) for c in p])
    return out


def build_report(gallery, query_id: str, out, reconstruction=None, top: int = 5, result=None,
                 max_skull_faces: int = MAX_SKULL_FACES, sensitivity=None) -> Path:
    """Write the case report of a recorded query to ``out`` (an .html file); returns its path.

    gallery: a Gallery or its folder; query_id: an id of the gallery's audit log
    (``skullsearch history``); reconstruction: a folder written by ``skullsearch reconstruct``
    (optional); top: how many candidates get a 3D view and a distance table (the ranked table
    lists all that the query kept); result: the live :class:`QueryResult` of that query, to
    skip the re-run (``query --report``); sensitivity: True to rank every candidate again under
    :data:`~skullsearch.retrieval.sensitivity.VARIANTS` (about four queries more) and show its rank
    range, or the dict :func:`~skullsearch.rank_sensitivity` returned for this result (``query
    --sensitivity --report``). Raises :class:`ReportError` /
    :class:`~skullsearch.GalleryError` with the fix for an unknown query or a bad folder.
    """
    from skullsearch.index.gallery import Gallery
    from skullsearch.retrieval.audit import load_record
    from skullsearch.retrieval.query import aligned_faces, rerun
    from skullsearch.retrieval.score import ScoreConfig

    if top < 1:
        raise ReportError(f"--top must be at least 1, got {top}")
    g = gallery if isinstance(gallery, Gallery) else Gallery.open(gallery)
    record = load_record(g, query_id)
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"the report is an HTML file: give an output name ending in .html, not {out.name}")
    recon = read_reconstruction(reconstruction) if reconstruction is not None else None

    if result is not None and result.query_id == query_id:
        reproduced = "live result of this query (not re-run)"
        same = True
    else:
        result, same = rerun(g, query_id)
        reproduced = ("re-run on the recorded shards: same answer as recorded" if same else
                      "re-run on the recorded shards gave a DIFFERENT answer than recorded")
    cands = result.candidates
    shown = cands[:top]
    p = record["params"]
    cfg = ScoreConfig(**p["score"])
    sd = np.asarray(result.sd, np.float64)
    eta = cfg.thresholds(np.nan_to_num(sd, nan=0.0))

    notes: list[str] = []
    skull_mesh, skull_file_state = _skull_again(record["skull"], notes)
    if not same:
        notes.append(reproduced)
    aligned = aligned_faces(g, shown)  # (the shown faces on the skull: the 3D view's and the profile's)
    scene, skull_faces_info = _scene(g, record, shown, aligned, skull_mesh, recon, max_skull_faces)
    ref = _calibration_scores(g, p, result, cfg)
    profile = _profile_url(g, skull_mesh, result, shown, aligned[0], notes)

    spread = sensitivity if isinstance(sensitivity, dict) else None
    if sensitivity is True:
        from skullsearch.retrieval.sensitivity import rank_sensitivity

        spread = rank_sensitivity(g, result)
    html_text = _render(g, record, result, shown, cands, ref, eta, recon, notes, reproduced,
                        skull_file_state, skull_faces_info, scene, profile, spread)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(html_text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise ReportError(f"cannot write {out}: {exc}") from None
    return out


def _profile_url(g, skull_mesh, result, shown: list, verts: np.ndarray, notes: list) -> str | None:
    """The skull's midsagittal profile with the best candidate's face (``verts`` (n, V, 3) mm: the
    shown faces placed by their scoring transforms; :func:`~skullsearch.retrieval.profile.
    draw_profile`) as a PNG data: URL; None without the skull mesh, or where the landmarks do not
    tell the midline (said in ``notes``)."""
    import trimesh

    from skullsearch.retrieval.extended import ExtendedLandmarkError
    from skullsearch.retrieval.profile import draw_profile

    if skull_mesh is None or result.extended is None:
        return None
    faces = []
    if shown:
        faces = [(f"#{shown[0].rank} face {shown[0].face_id}, placed by its superimposition",
                  trimesh.Trimesh(verts[0], g.face_model.faces, process=False))]
    try:
        im = draw_profile(skull_mesh, result.extended, faces)
    except ExtendedLandmarkError as exc:
        notes.append(f"no midsagittal profile: {exc}")
        return None
    return _image_data_url(im, 900, "PNG")


def _skull_again(sk: dict, notes: list) -> tuple[object, str]:
    """(the skull mesh read again from its recorded path when its sha256 still matches, else None;
    what the file is now). What the 3D view has to leave out goes into ``notes``."""
    from skullsearch.retrieval.skull_io import read_mesh

    if not (sk.get("path") and Path(sk["path"]).is_file()):
        notes.append("the skull file is no longer at its recorded path: the 3D view shows the landmarks only")
        return None, "not found"
    now_sha = _sha256_file(Path(sk["path"]))
    if now_sha != sk.get("sha256"):
        notes.append("the skull file changed after the query: the 3D view shows the landmarks only")
        return None, f"CHANGED since the query (sha256 now {now_sha})"
    try:
        mesh, _, _ = read_mesh(sk["path"], units=sk.get("units"))
    except SkullsearchError as exc:
        notes.append(f"the skull mesh could not be read again: {exc}")
        mesh = None
    return mesh, "unchanged (sha256 matches)"


def _scene(g, record: dict, shown: list, aligned, skull_mesh, recon,
           max_skull_faces: int) -> tuple[dict, str]:
    """The 3D view's data (extended and skull landmarks, pegs, the decimated skull, the shown
    candidates' aligned faces — ``aligned``: :func:`~skullsearch.retrieval.query.aligned_faces` of
    them —, re-synthesized faces, the camera) and a line on the skull mesh."""
    verts, pts = aligned
    model = g.face_model
    ext_pts = _points(record["extended"]["points"])
    skull_lm = [record["skull"]["landmarks"].get(n) for n in SOFT_TISSUE_NAMES]
    skull_pts = _points([x if x is not None else [None] * 3 for x in skull_lm])
    scene: dict = {"names": list(SOFT_TISSUE_NAMES), "extended": ext_pts,
                   "skull_points": [q for q in skull_pts if q],
                   "pegs": [[a, b] for a, b in zip(skull_pts, ext_pts, strict=True) if a and b],
                   "skull": None, "candidates": [], "reconstructions": {},
                   "face_index": _index(model.faces, model.n_vertices)}
    skull_faces_info = "—"
    if skull_mesh is not None:
        dv, df = decimate(np.asarray(skull_mesh.vertices), np.asarray(skull_mesh.faces), max_skull_faces)
        scene["skull"] = _mesh(dv, df)
        skull_faces_info = f"{len(skull_mesh.faces):,} faces, shown with {len(df):,}"
    for k, c in enumerate(shown):
        scene["candidates"].append({
            "rank": c.rank, "face_id": c.face_id, "face": _positions(verts[k]), "points": _points(pts[k]),
            "matched": [None if d is None else bool(m)
                        for d, m in zip(c.distance_mm, c.matched_flags, strict=True)]})
    if recon is not None:
        for fid, mesh in recon.meshes.items():
            if mesh is not None and any(c.face_id == fid for c in shown):
                scene["reconstructions"][str(fid)] = _mesh(*decimate(*mesh, max_skull_faces))
    # camera: centre and size of what is shown; the top candidate's face frame as the view basis
    cloud = [np.asarray([q for q in ext_pts if q], float).reshape(-1, 3)]
    if len(verts):
        cloud.append(verts[0])
    if skull_mesh is not None:
        cloud.append(np.asarray(skull_mesh.vertices))
    cloud = np.concatenate([c for c in cloud if len(c)]) if any(len(c) for c in cloud) else np.zeros((1, 3))
    centre = (cloud.min(0) + cloud.max(0)) / 2
    scene["centre"] = centre.round(3).tolist()
    scene["radius"] = float(max(np.linalg.norm(cloud - centre, axis=1).max(), 1.0))
    rot = np.asarray(shown[0].rotation) if shown else np.eye(3)
    scene["basis"] = [rot[:, 0].tolist(), rot[:, 1].tolist(), rot[:, 2].tolist()]
    return scene, skull_faces_info


def _calibration_scores(g, p: dict, result, cfg):
    """The scores of the query's calibration sample, as its calibrated rank used them
    (:func:`~skullsearch.retrieval.query.calibration_scores` with the recorded parameters)."""
    from skullsearch.retrieval.query import calibration_scores

    return calibration_scores(g, result.target, result.present, result.sd, cfg, p["calibration_sample"],
                              p["seed"], p["max_shard"], bool(p.get("uncertainty")))


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:18px 26px;color:#1d1f22;background:#fff}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccd;padding-bottom:3px}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0}
td,th{padding:3px 8px;border-bottom:1px solid #e2e4e8;text-align:left;
vertical-align:top}th{background:#f3f4f6;font-weight:600}table.kv th{width:230px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;word-break:break-all}
.note{background:#fff5d6;border:1px solid #e8c867;padding:6px 10px;margin:8px 0;border-radius:4px}
.ok{color:#1a7f37}.bad{color:#c0392b;font-weight:600}
.thumb{width:72px;height:72px;object-fit:cover;border-radius:3px;display:block}
.ph{width:72px;height:72px;background:#eceef1;border:1px dashed #a9afb8;border-radius:3px;font-size:10.5px;
color:#555;display:flex;align-items:center;justify-content:center;text-align:center;line-height:1.2}
#viewer{width:100%;height:520px;display:block;border:1px solid #ccd;border-radius:4px;cursor:grab;
touch-action:none}
#viewer-controls{margin:6px 0}#viewer-controls label{margin-right:14px}
#cand-buttons button{margin:0 6px 6px 0;padding:4px 10px;border:1px solid #99a;background:#fff;
border-radius:3px;
cursor:pointer}#cand-buttons button.on{background:#2c6fbb;color:#fff;border-color:#2c6fbb}
.m{color:#1a7f37;font-weight:600}.u{color:#c0392b;font-weight:600}.legend span{margin-right:14px}
.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px;vertical-align:-1px}
.plot text.pt{font:600 12px system-ui,sans-serif}.plot text.ax{font:10px system-ui,sans-serif}
.recon{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start;border-bottom:1px solid #e2e4e8;
padding:8px 0}
footer{margin-top:30px;color:#666;font-size:12px}
@media print{#viewer,#viewer-controls,#cand-buttons{display:none}.cand-detail{display:block!important}}
"""


def _thumb_cell(c, gallery_dir: Path) -> str:
    url, why = thumbnail(c.path, gallery_dir)
    if url is not None:
        return f'<img class="thumb" src="{url}" alt="photo of face {c.face_id}">'
    return f'<div class="ph" title="{e(c.path or "")}">{e(why)}</div>'


@dataclass
class _Report:
    """What the report's sections are written from (see :func:`build_report`)."""

    g: object
    record: dict
    result: object
    shown: list
    cands: list
    ref: object
    eta: np.ndarray
    recon: object
    notes: list
    reproduced: str
    skull_file_state: str
    skull_faces_info: str
    scene: dict
    profile: str | None = None
    spread: dict | None = None  # (rank_sensitivity's answer, or None: no rank range column)

    def __post_init__(self):
        from skullsearch.meta import __version__

        self.version = __version__
        self.qid = self.record["query_id"]
        self.sk = self.record["skull"]
        self.p = self.record["params"]
        self.rank_by = self.p.get("rank_by", "s")
        self.present = np.asarray(self.result.present, bool)
        self.tt = self.record["tissue_table"]


def _render(g, record, result, shown, cands, ref, eta, recon, notes, reproduced, skull_file_state,
            skull_faces_info, scene, profile=None, spread=None) -> str:
    r = _Report(g, record, result, shown, cands, ref, eta, recon, notes, reproduced, skull_file_state,
                skull_faces_info, scene, profile, spread)
    parts: list[str] = []
    add = parts.append
    for section in (_head_section, _ranked_section, _view_section, _distribution_section,
                    _reconstruction_section, _inputs_section, _parameters_section, _tissue_section,
                    _versions_section, _scripts_section):
        section(r, add)
    add('</body></html>\n')
    return "".join(parts)


def _head_section(r: _Report, add) -> None:
    """The report's title, summary, notes and contents."""
    g, record, cands, recon, notes, reproduced, qid, sk, present, __version__ = (
        r.g, r.record, r.cands, r.recon, r.notes, r.reproduced, r.qid, r.sk, r.present, r.version)
    add(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>skullsearch case report — '
        f'{e(qid)}</title><meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="generator" content="skullsearch {e(__version__)}"><style>{_CSS}</style></head><body>')
    add(f'<h1>Case report — query <span class="mono">{e(qid)}</span></h1>')
    top1 = cands[0] if cands else None
    built = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    add(f'<p>Skull <code>{e(Path(sk.get("path") or "?").name)}</code>, {int(present.sum())} of '
        f'{len(SOFT_TISSUE_NAMES)} landmarks with a tissue depth, searched in the gallery '
        f'<code>{e(g.path)}</code> ({len(record["gallery"]["shards"])} shard(s)). Query time '
        f'{e(record.get("time"))}; report built {e(built)} by skullsearch {e(__version__)}.')
    if top1 is not None:
        add(f' Best candidate: face <b>{top1.face_id}</b> ({e(top1.person or "no name")}), S = {top1.s:.3f} '
            f'({top1.matched}/{top1.present} matched), calibrated rank {top1.calibrated:.2%}.')
    add(f'</p><p class="{"ok" if "same answer" in reproduced or "live" in reproduced else "bad"}">'
        f'{e(reproduced)}.</p>')
    for n in notes:
        add(f'<div class="note">{e(n)}</div>')
    for w in sk.get("warnings") or []:
        add(f'<div class="note">skull input: {e(w)}</div>')
    ext = r.result.extended  # (the recorded extended landmarks, as re-run or live)
    for w in ext.warnings:
        add(f'<div class="note">extended landmark {e(w)}</div>')
    if ext.left_out:
        add(f'<div class="note">left out of the scoring by the examiner: {e(", ".join(ext.left_out))}</div>')
    add('<p>Scores are evidence for ranking candidates, not an identification: a candidate is a lead '
        'to check by other means (DNA, dental records, circumstances).</p>')
    add('<p>Contents: <a href="#ranked">ranked candidates</a> · <a href="#view">3D superimposition</a> · '
        '<a href="#distribution">scores against the gallery</a>'
        + (' · <a href="#reconstruction">re-synthesized faces</a>' if recon is not None else '')
        + ' · <a href="#inputs">inputs and hashes</a> · <a href="#parameters">parameters</a> · '
        '<a href="#tissue">tissue table</a> · <a href="#versions">versions</a></p>')


def _ranked_section(r: _Report, add) -> None:
    """The report's ranked table."""
    g, cands, rank_by = r.g, r.cands, r.rank_by
    by = {"likelihood": "likelihood", "surface": "surface likelihood"}.get(rank_by, "S")
    surface = any(getattr(c, "surface_likelihood", None) is not None for c in cands)
    add(f'<h2 id="ranked">Ranked candidates ({len(cands)}; ranked by {by})</h2>'
        '<table><tr><th class="num">rank</th><th>photo</th><th class="num">face id</th><th>person</th>'
        '<th>photo file</th><th class="num">S</th><th class="num">matched</th><th class="num">likelihood</th>'
        + ('<th class="num">surface</th>' if surface else '')
        + '<th class="num">calibrated</th><th class="num">RMS mm</th><th class="num">scale</th>'
        + ('<th class="num">rank range</th>' if r.spread else '') + '</tr>')
    gdir = Path(g.path)

    def span(c) -> str:
        if c.face_id not in r.spread["range"]:  # (a sensitivity answer of another result)
            return '<td class="num">—</td>'
        best, worst = r.spread["range"][c.face_id]
        worst = worst if worst is not None else f'&gt;{r.spread["depth"]}'
        return f'<td class="num">{best}–{worst}</td>'

    for c in cands:
        add(f'<tr id="cand-{c.face_id}"><td class="num">{c.rank}</td><td>{_thumb_cell(c, gdir)}</td>'
            f'<td class="num">{c.face_id}</td><td>{e(c.person or "")}</td>'
            f'<td><code>{e(c.path or "")}</code></td>'
            f'<td class="num">{c.s:.3f}</td><td class="num">{c.matched}/{c.present}</td>'
            f'<td class="num">{c.likelihood:.1f}</td>'
            + (f'<td class="num">{_fmt(c.surface_likelihood, ".2f")}</td>' if surface else '')
            + f'<td class="num">{_fmt(c.calibrated * 100, ".2f")} %</td>'
            f'<td class="num">{c.rms_mm:.2f}</td><td class="num">{c.scale:.3f}</td>'
            + (span(c) if r.spread else '') + '</tr>')
    add('</table><p>S = matched / present landmarks (a landmark matches when the aligned face point '
        'lies within η of the extended landmark); likelihood = Gaussian log-likelihood of the distances '
        '(σ from the table); '
        + ('surface = robust log-likelihood of each extended landmark\'s distance to the face\'s skin '
           '(not to its annotated point), Σ −log(1 + (d/σ)²); ' if surface else '')
        + 'calibrated = share of the gallery\'s calibration sample scoring at least as '
        'well (small is good).</p>')
    if r.spread:
        from skullsearch.retrieval.sensitivity import VARIANTS

        ran = "; ".join(f"{n}: {VARIANTS[n]}" for n in r.spread["variants"])
        add(f'<p>rank range = the best and worst of this rank and the ranks the same query gives '
            f'({e(ran)}; &gt;{r.spread["depth"]}: beyond that place under one of them). A lead that keeps '
            'its place rests on the skull\'s landmarks; one that does not rests on conventions no skull '
            'settles as much as on the skull.'
            + ''.join(f' No {e(n)} variant: {e(why)}.' for n, why in r.spread["skipped"].items()) + '</p>')


def _view_section(r: _Report, add) -> None:
    """The report's 3D view."""
    shown, eta = r.shown, r.eta
    add(f'<h2 id="view">3D superimposition (top {len(shown)})</h2>')
    add('<p class="legend">'
        '<span><i class="dot" style="background:#1fa83a"></i>extended landmark, matched</span>'
        '<span><i class="dot" style="background:#d62828"></i>extended landmark, unmatched</span>'
        '<span><i class="dot" style="background:#555"></i>face point</span>'
        '<span><i class="dot" style="background:#3366cc"></i>skull landmark</span>'
        '<span><i class="dot" style="background:#d9a58a"></i>candidate face</span>'
        '<span><i class="dot" style="background:#7fa6d9"></i>re-synthesized face</span>'
        ' — drag to rotate, wheel to zoom.</p>')
    add('<div id="cand-buttons">' + "".join(
        f'<button type="button" data-k="{k}">#{c.rank} face {c.face_id}</button>'
        for k, c in enumerate(shown))
        + '</div>')
    add('<div id="viewer-controls"><label><input type="checkbox" id="toggle-skull" checked> skull</label>'
        '<label><input type="checkbox" id="toggle-face" checked> candidate face</label>'
        '<label><input type="checkbox" id="toggle-landmarks" checked> landmarks</label>'
        '<label><input type="checkbox" id="toggle-recon" checked> re-synthesized face</label></div>')
    add('<canvas id="viewer" data-rendered="0"></canvas>'
        '<noscript><p class="note">The 3D view needs JavaScript; the tables below have every number.'
        '</p></noscript>')
    for k, c in enumerate(shown):
        add(f'<div class="cand-detail" data-k="{k}"{" hidden" if k else ""}>'
            f'<h3>#{c.rank} face {c.face_id} {e(c.person or "")}: S {c.s:.3f}, '
            f'{c.matched}/{c.present} matched, RMS {c.rms_mm:.2f} mm, scale {c.scale:.3f}</h3>')
        add(f'<table class="dist" data-face="{c.face_id}"><tr><th>landmark</th><th>face point</th>'
            '<th class="num">distance mm</th><th class="num">η mm</th><th>matched</th></tr>')
        for i, (n, d, m) in enumerate(zip(SOFT_TISSUE_NAMES, c.distance_mm, c.matched_flags, strict=True)):
            if d is None:
                continue
            add(f'<tr><td>{e(n)}</td><td>{e(FACE_POINT_NAMES.get(base_key(n), ""))}</td>'
                f'<td class="num">{d:.2f}</td><td class="num">{eta[i]:.2f}</td>'
                f'<td>{"<span class=m>matched</span>" if m else "<span class=u>unmatched</span>"}</td></tr>')
        add('</table></div>')
    if r.profile:
        add(f'<figure id="profile"><img src="{r.profile}" alt="midsagittal profile" style="max-width:640px">'
            '<figcaption>The skull\'s midsagittal section (red; the plane through its midline landmarks) '
            'with the best candidate\'s face placed by its superimposition (green): each midline landmark on '
            'the bone, its tissue direction and its extended point (cyan; red where the direction points '
            'into the skull); 10 mm bar. Bilateral landmarks lie off this plane (the 3D view shows them).'
            '</figcaption></figure>')


def _distribution_section(r: _Report, add) -> None:
    """The report's score distributions against the calibration sample."""
    shown, ref, p = r.shown, r.ref, r.p
    add('<h2 id="distribution">Scores against the gallery</h2>')
    if ref is None:
        add('<p>No calibration sample (empty gallery).</p>')
    else:
        marks_s = [(f"#{c.rank}", c.s, c.rank == 1) for c in shown]
        marks_l = [(f"#{c.rank}", c.likelihood, c.rank == 1) for c in shown]
        lik = np.concatenate([ref.likelihood, [c.likelihood for c in shown]])
        lik = lik[np.isfinite(lik)]
        lo, hi = (float(np.percentile(lik, 0.5)), float(lik.max())) if len(lik) else (0.0, 1.0)
        add('<div style="display:flex;gap:20px;flex-wrap:wrap">')
        add(_histogram_svg("S (matched share)", ref.s, marks_s, 0.0, 1.0, bins=20))
        add(_histogram_svg("likelihood (log)", ref.likelihood, marks_l, lo, hi, fmt="{:.0f}"))
        add('</div>')
        add(f'<p>The gallery\'s distribution is the query\'s calibration sample: {len(ref.s)} faces drawn '
            f'with seed {e(p["seed"])}, scored exactly like the candidates. Median S {np.median(ref.s):.3f}, '
            f'best S in the sample {ref.s.max():.3f}.</p>')


def _reconstruction_section(r: _Report, add) -> None:
    """The report's re-synthesized faces (a reconstruct folder), when given."""
    recon, scene, qid = r.recon, r.scene, r.qid
    if recon is not None:
        rd = recon.data
        add(f'<h2 id="reconstruction">Re-synthesized faces</h2><p>Folder <code>{e(recon.folder)}</code>; '
            f'method requested {e(rd.get("method_requested"))}. {e(rd.get("note") or "")}</p>')
        if rd.get("query_id") not in (None, qid):
            add(f'<div class="note">this reconstruction was made for query {e(rd.get("query_id"))}, '
                f'not {e(qid)}</div>')
        for prob in recon.problems:
            add(f'<div class="note">{e(prob)}</div>')
        for rc in rd["candidates"]:
            fid = int(rc["face_id"])
            url = recon.renders.get(fid)
            img = (f'<img src="{url}" alt="re-synthesized face {fid}" style="max-width:260px">' if url else
                   '<div class="ph" style="width:200px;height:200px">no render</div>')
            regions = ", ".join(str(r) for r in rc.get("revised_regions") or []) or "none"
            add(f'<div class="recon" id="recon-{fid}">{img}<div>'
                f'<h3>#{e(rc.get("rank"))} face {fid} {e(rc.get("person") or "")} — '
                f'{e(rc.get("method"))}</h3>')
            add(_kv_table([
                ("S before → after", f'{_fmt(rc.get("s_before"), ".3f")} → {_fmt(rc.get("s_after"), ".3f")}'),
                ("matched before → after", f'{e(rc.get("matched_before"))} → {e(rc.get("matched_after"))} '
                                           f'of {e(rc.get("present"))}'),
                ("revised regions", e(regions)),
                ("iterations, seconds", f'{e(rc.get("iterations"))}, {_fmt(rc.get("seconds"), ".1f")}'),
                ("mesh", f'<code>{e(rc.get("mesh"))}</code>'
                         + (" (in the 3D view)" if str(fid) in scene["reconstructions"] else "")),
            ], raw=True))
            add(_loss_svg(rc.get("losses") or []))
            if recon.profiles.get(fid):
                add(f'<figure><img src="{recon.profiles[fid]}" alt="midsagittal profile of face {fid}" '
                    'style="max-width:480px"><figcaption>The skull\'s midsagittal section (red) with this '
                    'face\'s (green): each midline landmark on the bone, its tissue direction and its '
                    'extended point (cyan; red where the direction points into the skull); 10 mm bar.'
                    '</figcaption></figure>')
            da, fa = rc.get("distance_mm_after"), rc.get("matched_flags_after")
            db = rc.get("distance_mm_before")
            if da:
                add('<table class="dist-after"><tr><th>landmark</th><th class="num">before mm</th>'
                    '<th class="num">after mm</th><th>matched after</th></tr>')
                for i, n in enumerate(SOFT_TISSUE_NAMES):
                    if i >= len(da) or da[i] is None:
                        continue
                    mflag = fa[i] if fa and i < len(fa) else None
                    before = db[i] if db and i < len(db) else None
                    flag = "" if mflag is None else ("yes" if mflag else "no")
                    add(f'<tr><td>{e(n)}</td><td class="num">{_fmt(before)}</td>'
                        f'<td class="num">{_fmt(da[i])}</td><td>{flag}</td></tr>')
                add('</table>')
            add('</div></div>')


def _inputs_section(r: _Report, add) -> None:
    """The report's inputs and their hashes."""
    g, record, skull_file_state, skull_faces_info, qid, sk = (
        r.g, r.record, r.skull_file_state, r.skull_faces_info, r.qid, r.sk)
    tt = record["tissue_table"]
    add('<h2 id="inputs">Inputs and their hashes</h2>')
    add(_kv_table([
        ("skull mesh", f'<code>{e(sk.get("path"))}</code>'),
        ("skull sha256 (recorded)", f'<code>{e(sk.get("sha256"))}</code>'),
        ("skull file now", e(skull_file_state)),
        ("skull units (read as, converted to mm)", e(sk.get("units"))),
        ("mesh in the 3D view", e(skull_faces_info)),
        ("landmark file", f'<code>{e(sk.get("landmarks_path") or "(given as values)")}</code>'),
        ("landmarks sha256", f'<code>{e(sk.get("landmarks_sha256"))}</code>'),
        ("tissue table", f'{e(tt.get("name"))} — <code>{e(tt.get("sha256"))}</code>'),
        ("gallery face model", e(json.dumps(record["gallery"].get("face_model"), sort_keys=True))),
        ("gallery shards searched", e(", ".join(str(s) for s in record["gallery"]["shards"]))),
        ("audit record", f'<code>{e(g.path / "audit" / (qid + ".json"))}</code>'),
        ("audit record sha256", f'<code>{e(record.get("sha256"))}</code>'),
    ], raw=True))


def _parameters_section(r: _Report, add) -> None:
    """The report's parameters."""
    p = r.p
    add('<h2 id="parameters">Parameters</h2>')
    add(_kv_table(_flatten(p)))


def _tissue_section(r: _Report, add) -> None:
    """The report's tissue table."""
    record, eta, scene, present, tt = r.record, r.eta, r.scene, r.present, r.tt
    add(f'<h2 id="tissue">Tissue table: {e(tt.get("name"))}</h2><p>{e(tt.get("source"))}'
        f'{" — filters " + e(json.dumps(tt.get("filters"))) if tt.get("filters") else ""}</p>')
    add('<table><tr><th>landmark</th><th>face point</th><th class="num">depth mm</th>'
        '<th class="num">SD mm</th><th class="num">η mm</th><th>direction</th><th>on this skull</th>'
        '<th>skull point (mm)</th>'
        '<th>extended landmark (mm)</th></tr>')
    names = tt.get("landmarks", list(SOFT_TISSUE_NAMES))
    for i, n in enumerate(SOFT_TISSUE_NAMES):
        j = names.index(n) if n in names else None
        mean = tt["mean_mm"][j] if j is not None else None
        sdv = tt["sd_mm"][j] if j is not None else None
        dirn = tt["direction"][j] if j is not None else None
        lm = record["skull"]["landmarks"].get(n)
        add(f'<tr><td>{e(n)}</td><td>{e(FACE_POINT_NAMES.get(base_key(n), ""))}</td>'
            f'<td class="num">{_fmt(mean, ".1f")}</td><td class="num">{_fmt(sdv, ".1f")}</td>'
            f'<td class="num">{_fmt(eta[i], ".2f") if present[i] else "—"}</td>'
            f'<td>{"surface normal" if dirn is None else e(_xyz(dirn))}</td>'
            f'<td>{"yes" if present[i] else ("no depth" if lm is not None else "missing")}</td>'
            f'<td class="mono">{_xyz(lm)}</td><td class="mono">{_xyz(scene["extended"][i])}</td></tr>')
    add('</table>')


def _versions_section(r: _Report, add) -> None:
    """The report's versions."""
    record, __version__ = r.record, r.version
    add('<h2 id="versions">Versions</h2>')
    add(_kv_table([(f"{k} (at query time)", v) for k, v in sorted(record.get("versions", {}).items())]
                  + [("skullsearch (this report)", __version__), ("three.js (3D view)", THREE_VERSION)]))
    add('<footer>Built by skullsearch from the gallery\'s audit log. Self-contained: opens with no network. '
        f'The 3D view uses three.js {THREE_VERSION} (MIT licence, below), inlined.'
        f'<details><summary>three.js licence</summary><pre>{e(_vendored_licence())}</pre></details></footer>')


def _scripts_section(r: _Report, add) -> None:
    """The report's scripts: data, vendored three.js, viewer."""
    scene = r.scene
    add(f'<script type="application/json" id="scene-data">{_json_for_script(scene)}</script>')
    add(f'<script type="text/plain" id="three-core">{_vendored("three.core.min.js")}</script>')
    add(f'<script type="text/plain" id="three-module">{_vendored("three.module.min.js")}</script>')
    add(f'<script type="module">{_vendored("viewer.js")}</script>')


def _vendored_licence() -> str:
    try:
        return (ASSETS / "three.LICENSE").read_text(encoding="utf-8")
    except OSError:
        return "MIT License, Copyright © 2010-2025 three.js authors"


def report(gallery, query_id: str, out, reconstruction=None, top: int = 5, **kw) -> Path:
    """The case report of a recorded query as one self-contained HTML file; see :func:`build_report`."""
    return build_report(gallery, query_id, out, reconstruction=reconstruction, top=top, **kw)


__all__ = ["report", "build_report", "decimate", "read_reconstruction", "thumbnail", "ReportError",
           "Reconstruction"]
