"""``skullsearch similar`` and ``skullsearch persons``: faces by who they are. Parses, calls the
library, prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skullsearch.cli.common import GalleryOption, Table, app, out, write_csv


def _num(x) -> str:
    return "" if x is None else f"{x:.3f}"


@app.command("similar")
def similar_cmd(
    photo: Annotated[Path, typer.Argument(help="A photo of a face.")],
    gallery: GalleryOption,
    top: Annotated[int, typer.Option(min=1, help="How many faces to list.")] = 10,
    by: Annotated[str, typer.Option(
        help="Rank by person (dlib's person descriptor: who it is), shape (the fitted 3D face's shape "
             "code) or auto (person where the gallery has descriptors).")] = "auto",
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
):
    """Faces of the gallery most like the largest face in a photo, by person descriptor.

    Ranked by the person descriptor (who it is), with the shape-code distance beside it."""
    import pyarrow as pa

    from skullsearch import Gallery

    rows = Gallery.open(gallery).similar_to_photo(photo, top=top, by=by)
    if csv_out:
        cols = ("rank", "face_id", "person_distance", "distance", "by", "person", "path")
        write_csv(pa.table({c: [r[c] for r in rows] for c in cols}))
        return
    ranked = rows[0]["by"] if rows else by
    table = Table(title=f"faces like {photo.name} (ranked by {ranked})")
    for c, wide in (("rank", False), ("face id", False), ("person distance", False),
                    ("shape distance", False), ("person", True), ("photo", True)):
        table.add_column(c, overflow="fold" if wide else "ellipsis", no_wrap=not wide,
                         justify="right" if c.endswith("distance") else "left")
    for r in rows:
        table.add_row(str(r["rank"]), str(r["face_id"]), _num(r["person_distance"]), _num(r["distance"]),
                      str(r["person"] or ""), str(r["path"]))
    out.print(table)


@app.command("persons")
def persons_cmd(
    gallery: GalleryOption,
    threshold: Annotated[float | None, typer.Option(
        min=0.0, help="Person-descriptor distance under which two faces may be one person "
                      "(dlib's network: 0.6 ≈ same person; default 0.5, stricter).")] = None,
    neighbours: Annotated[int, typer.Option(min=1, help="Neighbours linked per face.")] = 20,
    min_size: Annotated[int, typer.Option(min=1, help="List groups of at least this many faces.")] = 2,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print every face's group as CSV.")] = False,
    limit: Annotated[int, typer.Option(min=0, help="Faces shown in the table.")] = 50,
    refit: Annotated[Path | None, typer.Option(
        help="Also write a person gallery here: each group of ≥ 2 faces refitted with one shared "
             "shape from its photos (the paper's Eq. 2 without labels), the other faces as they "
             "are; query it like any gallery.")] = None,
    uncertainty: Annotated[bool, typer.Option(
        help="With --refit: keep each person's fit uncertainty (for query --uncertainty).")] = False,
):
    """Group the gallery's faces by person from their descriptors (no labels needed).

    Saves the groups (SQL view person_groups), lists them largest first; --refit: the person gallery."""
    from skullsearch import Gallery

    g = Gallery.open(gallery)
    groups = g.group_persons(threshold, neighbours)
    if refit is not None:
        rep = g.refit_persons(refit, min_size=max(2, min_size), uncertainty=uncertainty)
        out.print(f"wrote the person gallery {refit}: {rep.persons} persons — {rep.groups_refit} "
                  f"groups ({rep.faces_refit} faces) refitted with one shape each, {rep.carried} "
                  f"faces carried over ({rep.seconds:.1f} s)", highlight=False)
    listed = g.person_groups(min_size)
    if csv_out:
        write_csv(listed)
        return
    sizes = groups.column("group_size").to_numpy()
    n_groups = len(set(groups.column("person_group").to_pylist()))
    table = Table(title=f"{groups.num_rows} faces in {n_groups} person group(s); "
                        f"{int((sizes >= min_size).sum())} faces in groups of ≥ {min_size}")
    for c, wide in (("group", False), ("faces", False), ("face id", False), ("label", True), ("photo", True)):
        table.add_column(c, overflow="fold" if wide else "ellipsis", no_wrap=not wide)
    for r in listed.slice(0, limit).to_pylist():
        table.add_row(str(r["person_group"]), str(r["group_size"]), str(r["face_id"]),
                      str(r["person"] or ""), str(r["path"]))
    out.print(table)
