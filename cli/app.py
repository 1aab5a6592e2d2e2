"""The ``skullsearch`` command. Parses, calls the library, shows with rich; no logic here."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from skullsearch.cli.common import (
    FaceModelOption,
    GalleryOption,
    LandmarksOption,
    LeaveOutOption,
    Table,
    TableOption,
    UnitsOption,
    _chosen_model,
    _load_model,
    _progress,
    app,
    err,
    model_app,
    out,
    output_file,
    rich_progress,
    train_app,
    write_csv,
    write_text,
)
from skullsearch.errors import SkullsearchError


@model_app.command("info")
def model_info(face_model: FaceModelOption = None):
    """Describe the face model: size, components, landmark coverage, units, licence."""
    model = _load_model(face_model)
    facts = model.describe()
    table = Table(title=facts.pop("name"), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in facts.items():
        if isinstance(value, tuple):
            value = " × ".join(str(v) for v in value)
        table.add_row(key, str(value))
    out.print(table)


@model_app.command("export")
def model_export(
    out_path: Annotated[
        Path, typer.Argument(metavar="OUT", help="Output mesh (.ply, .obj, .stl, .glb, .off).")
    ],
    face_model: FaceModelOption = None,
    markers: Annotated[bool, typer.Option(help="Add small spheres at the landmarks.")] = True,
):
    """Write the mean face with its 68 landmarks (blue) and 36 soft-tissue points (red)."""
    from skullsearch.encoder.export import export_face

    model = _load_model(face_model)
    path = export_face(model, out_path, markers=markers)
    out.print(f"wrote {path} ({model.n_vertices} vertices, mm, y up, z out of the face)")


@model_app.command("convert")
def model_convert(
    src: Annotated[Path, typer.Argument(help="A FLAME .pkl (or .npz).")],
    dst: Annotated[Path, typer.Argument(help="Output skullsearch .npz.")],
    landmarks: Annotated[Path | None, typer.Option(help="Landmark embedding file.")] = None,
):
    """Convert a FLAME file once to skullsearch's .npz (mm, annotated, no pickle)."""
    from skullsearch import FaceModel

    model = FaceModel.load(src, landmarks=landmarks)
    model.save(dst)
    out.print(f"wrote {dst} (fingerprint {model.fingerprint[:16]})")


@model_app.command("calibrate")
def model_calibrate(
    dst: Annotated[Path | None, typer.Argument(
        help="dlib: the output skullsearch .npz (the model with its calibrated embedding). mesh: "
             "the 68-point embedding file, its dense calibration written beside it (default: the "
             "cache folder, where fits find them).")] = None,
    face_model: FaceModelOption = None,
    photos: Annotated[int, typer.Option(help="Renders of faces from the model's prior.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the renders (the result is deterministic).")] = 0,
    detector: Annotated[str, typer.Option(help="The detector to calibrate for: dlib or mesh.")] = "dlib",
    pose: Annotated[bool, typer.Option(
        "--pose", help="dlib's embedding per yaw bin (FitConfig.pose_embedding), written to DST "
                       "(default: the cache folder).")] = False,
    texture: Annotated[bool, typer.Option(
        "--texture", help="dlib's embedding on textured renders (brows, lips, eyes painted where the "
                          "model's source annotates them; FitConfig.textured_embedding), written to "
                          "DST (default: the cache folder).")] = False,
    jaw: Annotated[bool, typer.Option(
        "--jaw", help="where dlib draws its jaw line against the model's silhouette, by perspective "
                      "and yaw (FitConfig.jaw_calibration), and how far each of its 68 points "
                      "scatters (FitConfig.landmark_weights), written to DST (default: the cache "
                      "folder).")] = False,
):
    """Calibrate the model's 68-point embedding to a detector: where it puts its points on renders
    of the model's faces — dlib's inner 51 (its jaw line follows the silhouette), all 68 of the
    mesh's (its contour is on the surface), and for the mesh also where its 468 face points land
    (the fit's dense term, FitConfig.w_dense). The default model ships calibrated to both, and with
    dlib's per-yaw-bin (--pose) and textured (--texture) embeddings and its jaw line's offsets
    from the silhouette (--jaw)."""
    import numpy as np

    from skullsearch.encoder import calibrate as cal

    if photos < 1:
        raise typer.BadParameter("--photos must be at least 1")
    if detector not in ("dlib", "mesh"):
        raise typer.BadParameter("--detector must be dlib or mesh")
    model = _load_model(face_model)
    if jaw:
        if detector != "dlib" or pose or texture:
            raise typer.BadParameter("--jaw calibrates dlib's jaw line on its own (not with --pose, "
                                     "--texture or mesh, whose contour is on the surface)")
        dst, jc = cal.calibrate_jaw_file(model, photos=photos, seed=seed, dst=dst)
        out.print(f"wrote {dst}: dlib found {jc.found}/{jc.photos} renders; its jaw line lies inward of "
                  f"the silhouette by {jc.inward_near:.3f} inter-ocular distances within 0.6 m, "
                  f"{jc.inward_far:.3f} beyond 1 m (median); offsets RMS {jc.rms_before:.3f} -> "
                  f"{jc.rms_after:.3f} after the calibration; the 68 points scatter by "
                  f"{jc.sigma_calibrated.min():.3f}-{jc.sigma_calibrated.max():.3f} (RMS per "
                  f"coordinate, the jaw line calibrated)", highlight=False)
        return
    if texture:
        if detector != "dlib" or pose:
            raise typer.BadParameter("--texture calibrates dlib's static embedding (not --pose or mesh)")
        dst, rep = cal.calibrate_textured(model, photos=photos, seed=seed, dst=dst)
        inner = rep.shift_mm[17:]
        out.print(f"wrote {dst}: dlib found {rep.found}/{rep.photos} textured renders; inner points "
                  f"{np.median(inner):.1f} mm from the model's embedding (median; brows "
                  f"{np.median(rep.shift_mm[17:27]):.1f})", highlight=False)
        return
    if pose:
        if detector != "dlib":
            raise typer.BadParameter("--pose calibrates dlib's points (the mesh's are fixed on the surface)")
        dst, pe = cal.calibrate_pose(model, photos=photos, seed=seed, dst=dst)
        shifts = ", ".join(f"{lo:g}…{hi:g}°: {np.median(s[17:]):.1f}" for lo, hi, s in
                           zip(pe.yaw_edges[:-1], pe.yaw_edges[1:], pe.shift_mm, strict=True))
        out.print(f"wrote {dst}: dlib found {int(pe.found.sum())}/{photos} renders (per bin "
                  f"{pe.found.tolist()}); inner points per bin from the all-pose ones, median mm: {shifts}",
                  highlight=False)
        return
    if detector == "mesh":
        dst, dense_dst, rep, dense = cal.calibrate_mesh(model, photos=photos, seed=seed, dst=dst)
        out.print(f"wrote {dst}: the mesh found {rep.found}/{rep.photos} renders; its 68 points "
                  f"{np.median(rep.shift_mm):.1f} mm from the model's embedding (median; inner "
                  f"{np.median(rep.shift_mm[17:]):.1f}, contour {np.median(rep.shift_mm[:17]):.1f})",
                  highlight=False)
        out.print(f"wrote {dense_dst}: {len(dense.index)} of its 468 face points land on the skin "
                  f"consistently (median spread {np.median(dense.spread_mm[dense.index]):.1f} mm)",
                  highlight=False)
        return
    if dst is None:
        raise typer.BadParameter("give the output .npz for the dlib-calibrated model")
    emb, rep = cal.calibrate_embedding(model, photos=photos, seed=seed)
    model.landmarks = emb
    model.meta["landmarks68"] = f"inner 51 calibrated to dlib on {rep.found} renders (seed {seed})"
    model.save(dst)
    inner = rep.shift_mm[17:]
    out.print(f"wrote {dst}: dlib found {rep.found}/{rep.photos} renders; inner points moved "
              f"{np.median(inner):.1f} mm (median, max {inner.max():.1f})", highlight=False)


@model_app.command("train-identity-prior")
def model_train_identity_prior(
    face_model: FaceModelOption = None,
    out_path: Annotated[Path | None, typer.Option(
        "--out", help="Output .npz (default: the file packaged for the model, in the installation).")] = None,
    renders: Annotated[int, typer.Option(min=200, help="Renders of faces from the model's prior.")] = 4000,
    seed: Annotated[int, typer.Option(
        help="Seed of the renders (deterministic for a seed and --workers).")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Rendering processes.")] = 1,
    texture: Annotated[bool, typer.Option(
        help="Textured renders (brows, lips, eyes, blotches, sometimes a beard) instead of one skin colour.")]
    = False,
):
    """Learn the identity prior (person descriptor → shape) from renders of the model's faces
    through the real dlib detector; see the README's identity section for its domain limit."""
    from skullsearch.encoder.identity_prior import packaged_path, train_identity_prior

    model = _load_model(face_model)
    prog, update = _progress("train-identity-prior", unit="faces")
    with prog:
        prior = train_identity_prior(model, renders=renders, seed=seed, workers=workers,
                                     model_path=face_model, texture=texture,
                                     progress=lambda d, t: update({"done": d, "total": t}))
    path = prior.save(out_path or packaged_path(model))
    m = prior.meta
    out.print(f"wrote {path}: {m['found']}/{m['renders']} renders found by dlib; held-out R² of the first "
              f"shape components {m['held_out_r2_first5']}; domain limit {prior.domain_limit:.1f}",
              highlight=False)


@app.command("encode")
def encode_cmd(
    photos: Annotated[list[Path], typer.Argument(help="Photos or folders (searched recursively).")],
    face_model: FaceModelOption = None,
    detector: Annotated[str, typer.Option(
        help="Landmark detector: dlib (offline), mesh (MediaPipe, optional install), fan, pts.")] = "dlib",
    export_mesh: Annotated[
        Path | None, typer.Option(help="Write each face as a mesh (PLY) into this folder.")
    ] = None,
    light: Annotated[bool, typer.Option(help="Also estimate the lighting (SH) of each photo.")] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every face (code, landmarks) as JSON.")
    ] = None,
    same_person: Annotated[
        bool, typer.Option(help="All photos show one person: fit one shared shape (paper Eq. 2).")
    ] = False,
    cnn: Annotated[
        Path | None, typer.Option(help="A trained CNN encoder checkpoint to seed the fit.")
    ] = None,
    descriptors: Annotated[bool, typer.Option(
        help="Also compute each face's person descriptor (dlib's 128-d face recognition vector).")] = False,
    identity_prior: Annotated[bool, typer.Option(
        help="Fit with the shape predicted from the person descriptor (the model's packaged identity "
             "prior; learned on renders: real photos are usually outside its domain, see README).")] = False,
    identity_prior_file: Annotated[Path | None, typer.Option(
        help="An identity prior file (skullsearch model train-identity-prior) instead of the packaged one.")
    ] = None,
    uncertainty: Annotated[bool, typer.Option(
        help="Also give each face's fit uncertainty (the posterior covariance of its 36 soft-tissue "
             "points, mm², in --json as tissue_cov).")] = False,
    photometric: Annotated[bool, typer.Option(
        help="Refine each fit with the photo's shading (a dense cue to the face's depths; about 1 s "
             "per face; assumes one skin colour under a smooth light, see README).")] = False,
):
    """Photos → 3D faces: detect 68 landmarks and fit a face code to every face."""
    import json

    from skullsearch.encoder.encode import encode, export_faces, image_paths

    output_file(json_out, "--json")
    model = _load_model(face_model)
    paths = image_paths(photos)
    if not paths:
        raise SkullsearchError("no photos given (folders are searched for .jpg .png .bmp .tif .webp)")
    with err.status(f"encoding {len(paths)} photo(s)…") if err.is_terminal else nullcontext():
        prior = identity_prior_file or (True if identity_prior else None)
        result = encode(paths, model=model, detector=detector, light=light, cnn=cnn,
                        person=["one"] * len(paths) if same_person else None, descriptors=descriptors,
                        identity_prior=prior, uncertainty=uncertainty, photometric=photometric)
    table = Table(title=f"{len(result.faces)} face(s) in {len(paths)} photo(s)")
    for col in ("photo", "face", "score", "residual px", "yaw°", "quality"):
        table.add_column(col, justify="right" if col not in ("photo", "quality") else "left")
    for f in result.faces:
        table.add_row(Path(f.image).name, str(f.face_index), f"{f.score:.2f}", f"{f.residual_px:.2f}",
                      f"{f.yaw_deg:+.0f}", ", ".join(f.quality) or "ok")
    out.print(table)
    if result.failures:
        fails = Table(title=f"{len(result.failures)} photo(s) not used")
        fails.add_column("photo")
        fails.add_column("reason")
        fails.add_column("detail")
        for f in result.failures:
            fails.add_row(Path(f.path).name, f.reason, f.detail)
        out.print(fails)
    if export_mesh is not None:
        written = export_faces(model, result.faces, export_mesh)
        out.print(f"wrote {len(written)} mesh(es) to {export_mesh}")
    if json_out is not None:
        write_text(json_out, json.dumps({"faces": [f.to_dict() for f in result.faces],
                                        "failures": [vars(f) for f in result.failures]}, indent=1))
        out.print(f"wrote {json_out}")


@train_app.command("encoder")
def train_encoder_cmd(
    photos: Annotated[list[Path] | None, typer.Argument(help="Training photos or folders.")] = None,
    gallery: Annotated[
        Path | None, typer.Option("--gallery", "-g", help="Train on a gallery's photos instead.")
    ] = None,
    checkpoint: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")] = Path("encoder.pt"),
    face_model: FaceModelOption = None,
    epochs: Annotated[int, typer.Option(help="Passes over the photos.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Faces per step.")] = 32,
    person_from_parent_dir: Annotated[
        bool, typer.Option(help="Photos in one folder show one person (stage 2, paper Eq. 2).")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
):
    """Train the CNN encoder self-supervised (paper Eq. 1; Eq. 2 over photos of one person)."""
    if gallery is not None:
        from skullsearch import Gallery
        from skullsearch.index.train import train_encoder_on_gallery

        _, history = train_encoder_on_gallery(Gallery.open(gallery), checkpoint, epochs=epochs,
                                              batch_size=batch_size, device=device, log=err.print)
    elif photos:
        from skullsearch.encoder.encode import image_paths, train_encoder_on_photos

        paths = image_paths(photos)
        person = [p.parent.name for p in paths] if person_from_parent_dir else None
        _, history = train_encoder_on_photos(paths, checkpoint, model=_load_model(face_model), person=person,
                                             epochs=epochs, batch_size=batch_size, device=device,
                                             log=err.print)
    else:
        raise SkullsearchError("give training photos, or --gallery DIR to train on a gallery's photos")
    out.print(f"wrote {checkpoint}: loss {history[0]['loss']:.4f} → {history[-1]['loss']:.4f} "
              f"in {len(history)} epochs")


@app.command("ingest")
def ingest_cmd(
    inputs: Annotated[
        list[Path], typer.Argument(help="Folders, photos, .txt lists, .parquet/.csv tables (path column).")
    ],
    gallery: GalleryOption,
    face_model: FaceModelOption = None,
    detector: Annotated[str, typer.Option(
        help="Landmark detector: dlib, mesh (MediaPipe), fan, pts.")] = "dlib",
    workers: Annotated[int, typer.Option(help="Detector processes (default: CPU count).")] = 0,
    person_from_parent_dir: Annotated[bool, typer.Option(help="The parent folder names the person.")] = False,
    engine: Annotated[str, typer.Option(help="local (process pool) or ray (Ray Data).")] = "local",
    chunk: Annotated[int, typer.Option(help="Photos per shard (one commit).")] = 256,
    near_duplicate_distance: Annotated[float | None, typer.Option(
        help="Flag faces this close in identity (shape-code L2) to an earlier face (0: off; default 0.4).")
    ] = None,
    near_duplicate_photo_distance: Annotated[float | None, typer.Option(
        help="Flag faces whose photo fingerprint is this close to an earlier face's (0: off; default 0.12).")
    ] = None,
    near_duplicate_person_distance: Annotated[float | None, typer.Option(
        help="Flag faces whose person descriptor is this close to an earlier face's: a re-shot of the "
             "person (0: off; default 0.5).")
    ] = None,
    descriptors: Annotated[bool, typer.Option(
        help="Compute each face's person descriptor (dlib's 128-d face recognition vector) for "
             "similar, persons and the person criterion; --no-descriptors saves its time.")
    ] = True,
    identity_prior: Annotated[bool, typer.Option(
        help="Fit each face with the shape predicted from its person descriptor (learned on renders; "
             "not applied to real photos' descriptors, which lie outside its domain; see README).")
    ] = False,
    uncertainty: Annotated[bool, typer.Option(
        help="Keep each face's fit uncertainty (posterior covariance of its soft-tissue points, 432 "
             "bytes a face) for `query --uncertainty`.")
    ] = False,
    photometric: Annotated[bool, typer.Option(
        help="Refine each fit with the photo's shading (about 1 s a face on one core; assumes one skin "
             "colour under a smooth light, see README).")
    ] = False,
):
    """Add photos to a gallery (created if missing): resumable, idempotent, crash-safe."""
    from skullsearch import Gallery

    model = _chosen_model(face_model)
    g = Gallery.create(gallery, face_model=model, exist_ok=True)
    cuts = {"near_duplicate_distance": near_duplicate_distance,
            "near_duplicate_photo_distance": near_duplicate_photo_distance,
            "near_duplicate_person_distance": near_duplicate_person_distance}
    cuts = {k: v for k, v in cuts.items() if v is not None}
    prog, update = _progress("ingest")
    with prog:
        report = g.ingest(inputs, face_model=model, detector=detector, workers=workers or None,
                          person_from_parent_dir=person_from_parent_dir, engine=engine,
                          chunk_images=chunk, progress=update, descriptors=descriptors,
                          identity_prior=identity_prior or None, uncertainty=uncertainty,
                          photometric=photometric, **cuts)
    table = Table(title=f"ingest into {gallery}", show_header=False)
    for k, v in (("photos seen", report.images_seen), ("already in the gallery", report.images_skipped),
                 ("new photos", report.images_new), ("faces added", report.faces),
                 ("duplicates (same bytes)", report.duplicates),
                 ("near-duplicate faces", report.near_duplicates),
                 ("  of them same photo", report.near_duplicate_photos),
                 ("  of them same person", report.near_duplicate_persons), ("shards written", report.shards),
                 ("photos/s", f"{report.images_per_s:.1f}"), ("seconds", f"{report.seconds:.1f}")):
        table.add_row(k, str(v))
    for reason, n in sorted(report.failures.items()):
        table.add_row(f"failed: {reason}", str(n))
    out.print(table)


@app.command("synth")
def synth_cmd(
    gallery: GalleryOption,
    faces: Annotated[int, typer.Option("--faces", help="How many synthetic faces to add.")] = 10000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    face_model: FaceModelOption = None,
):
    """Add synthetic faces (codes from the model's prior, no photos) for tests and benchmarks."""
    from skullsearch import Gallery
    from skullsearch.index.synth import synth

    model = _chosen_model(face_model)
    g = Gallery.create(gallery, face_model=model, exist_ok=True)
    prog, update = _progress("synth", unit="faces")
    with prog:
        report = synth(g, faces, seed=seed, progress=update)
    out.print(f"added {report.faces} synthetic faces to {gallery} in {report.seconds:.1f} s "
              f"({report.faces / max(report.seconds, 1e-9):,.0f} faces/s)")


@app.command("info")
def info_cmd(gallery: GalleryOption):
    """Describe a gallery: photos, faces, failures by reason, persons, model, indexes, size."""
    from skullsearch import Gallery

    facts = Gallery.open(gallery).info()
    table = Table(show_header=False, title=str(gallery), title_justify="left")
    for k, v in facts.items():
        if k.endswith("on disk"):
            v = f"{v / 1e6:,.1f} MB"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}: {b}" for a, b in v.items()) or "none"
        table.add_row(k, str(v))
    out.print(table)


@app.command("verify")
def verify_cmd(
    gallery: GalleryOption,
    repair: Annotated[
        bool, typer.Option(help="Fix what can be fixed (leftovers, damaged shards, indexes).")
    ] = False,
):
    """Check catalog ↔ shards ↔ indexes; with --repair, fix them."""
    from skullsearch import Gallery

    res = Gallery.open(gallery).verify(repair=repair)
    for p in res["problems"]:
        out.print(f"[yellow]problem:[/] {p}")
    for r in res["repaired"]:
        out.print(f"[green]repaired:[/] {r}")
    for n in res.get("notes", []):
        out.print(f"note: {n}")
    if res["ok"]:
        out.print("[green]ok[/]: catalog, shards and indexes agree")
    elif not repair:
        raise SkullsearchError("the gallery has problems (above); run `skullsearch verify --repair`")


@app.command("sql")
def sql_cmd(
    query: Annotated[
        str, typer.Argument(help="One read-only statement over the views faces, images, failures.")
    ],
    gallery: GalleryOption,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    limit: Annotated[int, typer.Option(help="Rows shown in the table.")] = 50,
):
    """Read-only DuckDB SQL over the gallery's catalog."""
    from skullsearch import Gallery

    result = Gallery.open(gallery).sql(query)
    if csv_out:
        write_csv(result)
        return
    table = Table(title=f"{result.num_rows} row(s)")
    for name in result.column_names:
        table.add_column(name)
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*(str(v) for v in row.values()))
    out.print(table)


@app.command("export")
def export_cmd(
    gallery: GalleryOption,
    parquet: Annotated[Path, typer.Option("--parquet", help="Output Parquet file.")],
):
    """Export the face catalog with codes and soft-tissue points to one Parquet file."""
    from skullsearch import Gallery

    path = Gallery.open(gallery).export(parquet)
    out.print(f"wrote {path}")


@app.command("landmarks")
def landmarks_cmd(
    skull_path: Annotated[Path, typer.Argument(metavar="SKULL", help="Skull mesh (PLY, STL, OBJ, OFF), mm.")],
    landmarks: LandmarksOption = None,
    units: UnitsOption = None,
    tissue_table: TableOption = None,
    sex: Annotated[str | None, typer.Option(help="Select rows of a sex-specific table.")] = None,
    export: Annotated[
        Path | None, typer.Option(help="Write the skull with pegs and extended landmarks (PLY).")
    ] = None,
    profile: Annotated[
        Path | None, typer.Option(help="Draw the skull's midsagittal section with its midline landmarks, "
                                       "their tissue directions and extended points (PNG).")
    ] = None,
):
    """List a skull's landmarks and their extended (soft-tissue) positions."""
    from skullsearch import Skull
    from skullsearch.encoder.soft_tissue import FACE_POINT_NAMES, SOFT_TISSUE_NAMES, base_key
    from skullsearch.retrieval.extended import DIRECTION_LIMIT_DEG, MIDLINE_LIMIT_MM, export_pegs, extend
    from skullsearch.retrieval.tissue import load_table

    skull = Skull.load(skull_path, landmarks=landmarks, units=units)
    table = load_table(tissue_table, sex=sex)
    ext = extend(skull, table)
    for w in skull.warnings + ext.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    t = Table(title=f"{skull_path.name}: {int(ext.present.sum())} of 36 landmarks ({table.name})")
    for c in ("landmark", "face point", "skull x, y, z (mm)", "depth ± SD", "direction", "from outward",
              "off midline", "extended x, y, z"):
        t.add_column(c)
    offsets = ext.midline_offsets()
    for i, name in enumerate(SOFT_TISSUE_NAMES):
        if not ext.present[i]:
            continue
        angle = ext.outward_angle_deg[i]
        off = offsets.get(name)
        t.add_row(name, FACE_POINT_NAMES[base_key(name)], ", ".join(f"{v:.1f}" for v in ext.skull_points[i]),
                  f"{ext.depth[i]:.1f} ± {ext.sd[i]:.1f}", ext.direction_source[i],
                  f"[red]{angle:.0f}°[/]" if angle > DIRECTION_LIMIT_DEG else f"{angle:.0f}°",
                  "" if off is None else (f"[red]{off:+.1f} mm[/]" if abs(off) > MIDLINE_LIMIT_MM
                                          else f"{off:+.1f} mm"),
                  ", ".join(f"{v:.1f}" for v in ext.points[i]))
    out.print(t)
    if export is not None:
        export_pegs(skull, ext, export)
        out.print(f"wrote {export}")
    if profile is not None:
        from skullsearch.retrieval.profile import profile_image

        profile_image(skull, ext, profile)
        out.print(f"wrote {profile}")


@app.command("query")
def query_cmd(
    skull_path: Annotated[Path, typer.Argument(metavar="SKULL", help="Skull mesh (PLY, STL, OBJ, OFF), mm.")],
    gallery: GalleryOption,
    top: Annotated[int, typer.Option(help="Candidates to list.")] = 20,
    shortlist: Annotated[int, typer.Option(help="Faces scored exactly (0: the default).")] = 0,
    exhaustive: Annotated[bool | None, typer.Option(
        "--exhaustive/--shortlist-only",
        help="Score every face exactly (the exact ranking; ~25 s per 1M faces on 2 cores), or only the "
             "shortlist (default: every face for galleries up to 10,000 faces).")] = None,
    landmarks: LandmarksOption = None,
    units: UnitsOption = None,
    tissue_table: TableOption = None,
    sex: Annotated[str | None, typer.Option(help="Select rows of a sex-specific table.")] = None,
    rank_by: Annotated[str, typer.Option(
        help="s (the paper's score), likelihood, or surface (each extended landmark's distance to the "
             "face's skin, not to its annotated point: the shortlist re-ranked; slower).")] = "s",
    uncertainty: Annotated[bool, typer.Option(
        help="The likelihood also counts each face's fit uncertainty (faces ingested with "
             "--uncertainty; others keep the plain term).")] = False,
    eta_sd: Annotated[float, typer.Option(help="Match threshold in table SDs.")] = 1.5,
    eta_mm: Annotated[float | None, typer.Option(help="Global match threshold in mm.")] = None,
    scale_bound: Annotated[float, typer.Option(help="Allowed scale change (0.1 = ±10 %, 0 = fixed).")] = 0.1,
    tangent_sd: Annotated[float, typer.Option(
        help="An SD in mm the likelihood allows along the skin at each landmark (the skull's side and "
             "the face model place a named point differently along the skin; 0: off).")] = 0.0,
    sensitivity: Annotated[bool, typer.Option(
        help="Also rank every candidate again with thinner (×0.8) and thicker (×1.2) tissue, the "
             "midline's tissue laid forward instead of square to the bone, and 3 mm of slack along the "
             "skin: its best and worst rank (a lead that holds its place rests on the skull, not on "
             "those conventions). About four queries more.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write the ranked table as CSV.")] = None,
    parquet_out: Annotated[Path | None, typer.Option("--parquet", help="Write the table (Parquet).")] = None,
    export: Annotated[
        Path | None, typer.Option(help="Write aligned faces and the skull with pegs (PLY) here.")
    ] = None,
    export_top: Annotated[int, typer.Option(help="How many candidates --export writes.")] = 5,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the HTML case report here.")
    ] = None,
    leave_out: LeaveOutOption = None,
):
    """Rank the gallery's faces for a skull: shortlist, exact superimposition scores, audit log."""
    from skullsearch import Gallery, ScoreConfig, Skull, query
    from skullsearch.retrieval.query import export_candidates

    for path, option in ((json_out, "--json"), (csv_out, "--csv"), (parquet_out, "--parquet")):
        output_file(path, option)  # (--report makes its folder)
    g = Gallery.open(gallery)
    skull = Skull.load(skull_path, landmarks=landmarks, units=units)
    if tangent_sd < 0:
        raise SkullsearchError(f"--tangent-sd is an SD in mm, 0 or more (got {tangent_sd})")
    cfg = ScoreConfig(eta_sd=eta_sd, eta_mm=eta_mm, scale_bound=scale_bound, tangent_sd_mm=tangent_sd)
    prog = rich_progress() if exhaustive and err.is_terminal else None  # (auto mode: small, fast)
    update = None
    if prog is not None:
        task = prog.add_task("scoring every face", total=g.n_faces, status="")
        update = lambda done, total: prog.update(task, completed=done, total=total)  # noqa: E731
        prog.start()
    try:
        result = query(g, skull, top=top, shortlist=shortlist or None, tissue_table=tissue_table, sex=sex,
                       rank_by=rank_by, score_config=cfg, exhaustive=exhaustive, progress=update,
                       uncertainty=uncertainty, leave_out=leave_out or ())
    finally:
        if prog is not None:
            prog.stop()
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    spread = None
    if sensitivity:
        from skullsearch import rank_sensitivity

        spread = rank_sensitivity(g, result)
        for name, why in spread["skipped"].items():
            err.print(f"[yellow]sensitivity:[/] no {name} variant: {why}", highlight=False)
    t = Table(title=f"{skull_path.name} — {int(result.present.sum())} landmarks, query {result.query_id}")
    id_width = max([len(str(c.face_id)) for c in result.candidates] + [7])
    surface = rank_by == "surface"
    for c in ("rank", "face id", "person", "photo", "S", "matched", "likelihood", "surface", "calibrated",
              "RMS mm", "rank range"):
        if (c == "surface" and not surface) or (c == "rank range" and spread is None):
            continue
        wide = c in ("person", "photo")  # wrap, never cut: rows must stay tellable apart
        t.add_column(c, justify="left" if wide else "right", overflow="fold" if wide else "ellipsis",
                     no_wrap=not wide, min_width=id_width if c == "face id" else None)
    for c in result.candidates:
        cells = [str(c.rank), str(c.face_id), str(c.person or ""), Path(c.path or "").name, f"{c.s:.3f}",
                 f"{c.matched}/{c.present}", f"{c.likelihood:.1f}"]
        cells += [f"{c.surface_likelihood:.2f}"] if surface else []
        cells += [f"{c.calibrated:.2%}", f"{c.rms_mm:.2f}"]
        if spread is not None:
            best, worst = spread["range"][c.face_id]
            cells.append(f"{best}–{worst}" if worst is not None else f"{best}–>{spread['depth']}")
        t.add_row(*cells)
    out.print(t)
    if spread is not None and spread["variants"]:
        out.print(f"rank range: this rank and the ranks with {', '.join(spread['variants'])} "
                  "(skullsearch.retrieval.sensitivity.VARIANTS)")
    df = result.to_pandas()
    if json_out:
        text = result.to_json(indent=1)
        if spread is not None:  # (the rank ranges beside the recorded answer)
            import json

            from skullsearch.retrieval.audit import json_plain

            text = json.dumps(json.loads(text) | {"sensitivity": spread}, indent=1, default=json_plain)
        write_text(json_out, text)
    if csv_out:
        df.to_csv(csv_out, index=False)
    if parquet_out:
        df.to_parquet(parquet_out, index=False)
    if export:
        files = export_candidates(g, skull, result, export, n=export_top)
        out.print(f"wrote {len(files)} file(s) to {export}")
    if report:
        from skullsearch.inpaint.report import report as write_report

        path = write_report(g, result.query_id, report, top=export_top, result=result, sensitivity=spread)
        out.print(f"wrote {path}")


@app.command("history")
def history_cmd(
    gallery: GalleryOption,
    rerun: Annotated[str | None, typer.Option(help="Re-run this recorded query and compare.")] = None,
):
    """List the gallery's recorded queries (the audit log); --rerun ID re-runs one."""
    import skullsearch

    g = skullsearch.Gallery.open(gallery)
    if rerun:
        result, same = skullsearch.rerun(g, rerun)
        out.print(f"query {rerun}: {'same answer as recorded' if same else '[red]DIFFERENT answer[/]'} "
                  f"(top face {result.candidates[0].face_id if result.candidates else None})")
        if not same:
            raise SkullsearchError(f"re-running {rerun} gave a different answer than recorded")
        return
    t = Table(title=f"queries recorded in {gallery}")
    for c in ("query id", "time", "skull", "landmarks", "table", "top face", "S"):
        t.add_column(c)
    for h in skullsearch.history(g):
        t.add_row(h["query_id"], h["time"], str(h["skull"]), str(h["landmarks"]), str(h["table"]),
                  str(h["top_face"]), f"{h['top_s']:.3f}" if h["top_s"] is not None else "")
    out.print(t)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        app(args=argv, prog_name="skullsearch", standalone_mode=True)
    except SkullsearchError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


from skullsearch.cli import (  # noqa: E402,F401
    duplicates_cmd,
    persons_cmd,
    reconstruct_cmd,
    report_cmd,
    train_inpainter_cmd,
)
