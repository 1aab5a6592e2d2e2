"""``skullsearch report``: the HTML case report of a recorded query. Parses, calls the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skullsearch.cli.common import GalleryOption, app, out


@app.command("report")
def report_cmd(
    query_id: Annotated[str, typer.Argument(metavar="QUERY_ID", help="A recorded query id.")],
    gallery: GalleryOption,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The report file to write (.html).")] = Path(
        "report.html"),
    reconstruction: Annotated[
        Path | None, typer.Option(help="A folder written by `skullsearch reconstruct`, to include its faces.")
    ] = None,
    top: Annotated[int, typer.Option(help="Candidates with a 3D view and a distance table.")] = 5,
    sensitivity: Annotated[bool, typer.Option(
        help="Add each candidate's rank range (query --sensitivity: thinner and thicker tissue, the "
             "midline laid forward, slack along the skin; about four queries more).")] = False,
):
    """Write one self-contained HTML case report (opens offline) for a recorded query."""
    from skullsearch.inpaint.report import report

    path = report(gallery, query_id, out_path, reconstruction=reconstruction, top=top,
                  sensitivity=sensitivity or None)
    out.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in a browser, no network needed")
