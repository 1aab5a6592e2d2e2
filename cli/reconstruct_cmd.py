"""``skullsearch reconstruct``: re-synthesize a query's winners through the skull's extended
landmarks. Parses, calls the library, prints with rich."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box

from skullsearch.cli.common import (
    GalleryOption,
    LandmarksOption,
    LeaveOutOption,
    Table,
    TableOption,
    UnitsOption,
    app,
    err,
    out,
    output_file,
    write_text,
)


@app.command("reconstruct")
def reconstruct_cmd(
    skull_path: Annotated[Path, typer.Argument(metavar="SKULL", help="Skull mesh (PLY, STL, OBJ, OFF), mm.")],
    gallery: GalleryOption,
    candidates: Annotated[int, typer.Option(help="How many of the query's top faces to re-synthesize.")] = 3,
    method: Annotated[
        str, typer.Option(help="auto (gan when an inpainter is trained, else fit), gan (GII-GC) or fit "
                          "(F3DMM-GC).")
    ] = "auto",
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for the meshes (PLY, skull frame), renders "
                                  "(PNG) and reconstruction.json.")
    ] = None,
    landmarks: LandmarksOption = None,
    units: UnitsOption = None,
    tissue_table: TableOption = None,
    sex: Annotated[str | None, typer.Option(help="Select rows of a sex-specific table.")] = None,
    inpainter: Annotated[
        Path | None, typer.Option(help="Inpainter checkpoint for gan (default: the gallery's trained one).")
    ] = None,
    iterations: Annotated[
        int, typer.Option(help="Iterations (0: the method's default: 12 re-weightings for fit, 100 for gan).")
    ] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write reconstruction.json here too.")
    ] = None,
    fit: Annotated[
        str, typer.Option(help="F3DMM-GC: map (landmarks weighted by their table SDs, one "
                               "solve: the most probable face) or paper (re-weighted towards S = 1).")
    ] = "map",
    leave_out: LeaveOutOption = None,
):
    """Re-synthesize the query's best faces so that they pass through the skull's extended landmarks."""
    from skullsearch import Gallery, Skull
    from skullsearch.inpaint.fit import FitWeights
    from skullsearch.inpaint.reconstruct import reconstruct

    if fit not in ("map", "paper"):
        raise typer.BadParameter("--fit must be map or paper")

    output_file(json_out, "--json")
    g = Gallery.open(gallery)
    skull = Skull.load(skull_path, landmarks=landmarks, units=units)
    with err.status("re-synthesizing…") if err.is_terminal else _null():
        res = reconstruct(skull, g, candidates=candidates, method=method, inpainter=inpainter, out=out_dir,
                          tissue_table=tissue_table, sex=sex, iterations=iterations or None,
                          fit_weights=FitWeights(landmark_sigma=fit == "map"), leave_out=leave_out or ())
    for w in res.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    t = Table(title=f"{skull_path.name} — query {res.query_id}, {int(res.present.sum())} landmarks; "
              "S before→after, distances after (mm)", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("rank", "face id", "method", "S", "matched", "mean", "max", "iter.", "sec"):
        t.add_column(c, justify="left" if c == "method" else "right", no_wrap=True)
    for r in res:
        d = [x for x in r.distance_mm_after if x is not None]
        t.add_row(str(r.rank), str(r.face_id), r.method, f"{r.s_before:.2f}→{r.s_after:.2f}",
                  f"{r.matched_after}/{r.present}", f"{sum(d) / max(len(d), 1):.2f}",
                  f"{max(d, default=0.0):.2f}", str(r.iterations), f"{r.seconds:.1f}")
    out.print(t)
    out.print(res.note, highlight=False)
    if res.out is not None:
        out.print(f"wrote {len(res)} face(s) to {res.out}", highlight=False)
    if json_out is not None:
        write_text(json_out, json.dumps(res.to_dict(), indent=1))
        out.print(f"wrote {json_out}", highlight=False)


def _null():
    from contextlib import nullcontext

    return nullcontext()
