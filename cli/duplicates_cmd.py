"""``skullsearch near-duplicates``: the faces flagged at ingest as near an earlier face. Parses,
calls the library, prints."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from skullsearch.cli.app import GalleryOption, app, out


@app.command("near-duplicates")
def near_duplicates_cmd(
    gallery: GalleryOption,
    max_distance: Annotated[
        float | None, typer.Option(help="Only pairs at most this far apart (shape-code L2).")
    ] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    limit: Annotated[int, typer.Option(min=0, help="Rows shown in the table.")] = 50,
):
    """List faces flagged at ingest as near-duplicates of an earlier face (closest first)."""
    from skullsearch import Gallery

    result = Gallery.open(gallery).near_duplicates(max_distance)
    if csv_out:
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(result, buf)
        out.file.write(buf.getvalue().decode())
        return
    table = Table(title=f"{result.num_rows} near-duplicate face(s)")
    for name in ("face_id", "path", "near_duplicate_of", "duplicate_path", "distance"):
        table.add_column(name, justify="right" if name == "distance" else "left")
    for row in result.slice(0, limit).to_pylist():
        table.add_row(str(row["face_id"]), str(row["path"]), str(row["near_duplicate_of"]),
                      str(row["duplicate_path"]), f"{row['distance']:.3f}")
    out.print(table)
