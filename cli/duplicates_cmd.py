"""``skullsearch near-duplicates``: the faces flagged at ingest as near an earlier face. Parses,
calls the library, prints."""

from __future__ import annotations

from typing import Annotated

import typer

from skullsearch.cli.common import GalleryOption, Table, app, out, write_csv


def _num(x) -> str:
    return "" if x is None else f"{x:.3f}"


@app.command("near-duplicates")
def near_duplicates_cmd(
    gallery: GalleryOption,
    criterion: Annotated[
        str | None, typer.Option(help="Only flags of this criterion: photo (another file of the same "
                                      "picture), person (a re-shot of the same person: close person "
                                      "descriptors) or identity (close shape codes).")
    ] = None,
    max_distance: Annotated[
        float | None, typer.Option(help="Only pairs at most this far apart in identity (shape-code L2).")
    ] = None,
    max_photo_distance: Annotated[
        float | None, typer.Option(help="Only pairs at most this far apart by photo fingerprint (L2).")
    ] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    limit: Annotated[int, typer.Option(min=0, help="Rows shown in the table.")] = 50,
):
    """List faces flagged at ingest as near-duplicates of an earlier face, with the criterion.

    Photo matches first, then re-shots of a person, then close shape codes; closest first."""
    from skullsearch import Gallery

    result = Gallery.open(gallery).near_duplicates(max_distance, criterion=criterion,
                                                   max_photo_distance=max_photo_distance)
    if csv_out:
        write_csv(result)
        return
    table = Table(title=f"{result.num_rows} near-duplicate face(s)")
    shown = result.slice(0, limit).to_pylist()
    id_width = max([len(str(r[k])) for r in shown for k in ("face_id", "near_duplicate_of")] + [7])
    for name, wide in (("face_id", False), ("path", True), ("near_duplicate_of", False),
                       ("duplicate_path", True), ("criterion", False), ("photo_distance", False),
                       ("person_distance", False), ("distance", False)):
        table.add_column(name, justify="right" if name.endswith("distance") else "left",
                         overflow="fold" if wide else "ellipsis", no_wrap=not wide,
                         min_width=id_width if name in ("face_id", "near_duplicate_of") else None)
    for row in shown:
        table.add_row(str(row["face_id"]), str(row["path"]), str(row["near_duplicate_of"]),
                      str(row["duplicate_path"]), str(row["criterion"]), _num(row["photo_distance"]),
                      _num(row["person_distance"]), _num(row["distance"]))
    out.print(table)
