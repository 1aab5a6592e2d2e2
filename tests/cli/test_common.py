"""What the CLI's command modules share (:mod:`skullsearch.cli.common`): the typer apps, CSV output
of Arrow tables (list and struct columns as JSON text), plain unwrapped output and log lines
instead of progress bars when not on a terminal, the version flag and the model choice."""

import csv
import io
import json
import logging
import time

import pyarrow as pa
import pytest
import rich.table
import typer

from skullsearch.cli import common
from skullsearch.cli.app import main


def _csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_the_app_has_the_model_and_train_groups():
    group = typer.main.get_command(common.app)
    assert {"model", "train"} <= set(group.commands)
    assert not common.out.stderr and common.err.stderr


def test_write_csv_writes_list_and_struct_columns_as_json(capsys):
    table = pa.table({
        "face_id": pa.array([7, 8, 9], pa.int64()),
        "path": ["a/b.jpg", "c, d \"e\".png", None],
        "box": pa.array([[1.5, 2.0, 30.0, 40.0], None, []], pa.list_(pa.float64())),
        "fp": pa.array([[1, 2], [3, 4], None], pa.list_(pa.int32(), 2)),
        "big": pa.array([["x"], [], None], pa.large_list(pa.string())),
        "where": pa.array([{"x": 1, "y": "p"}, None, {"x": 3, "y": None}],
                          pa.struct([("x", pa.int64()), ("y", pa.string())])),
        "tags": pa.array([[("k", 1)], None, []], pa.map_(pa.string(), pa.int64())),
    })
    common.write_csv(table)
    text = capsys.readouterr().out
    rows = _csv_rows(text)
    assert list(rows[0]) == table.column_names
    assert [r["face_id"] for r in rows] == ["7", "8", "9"]
    assert rows[1]["path"] == 'c, d "e".png' and rows[2]["path"] == ""  # quoted; null: empty
    assert json.loads(rows[0]["box"]) == [1.5, 2.0, 30.0, 40.0] and rows[1]["box"] == ""
    assert json.loads(rows[2]["box"]) == []
    assert json.loads(rows[1]["fp"]) == [3, 4] and rows[2]["fp"] == ""
    assert json.loads(rows[0]["big"]) == ["x"] and json.loads(rows[1]["big"]) == []
    assert json.loads(rows[0]["where"]) == {"x": 1, "y": "p"} and rows[1]["where"] == ""
    assert json.loads(rows[2]["where"]) == {"x": 3, "y": None}
    assert json.loads(rows[0]["tags"]) == [["k", 1]]  # a map: its (key, value) pairs


def test_write_csv_of_an_empty_table_is_its_header(capsys):
    common.write_csv(pa.table({"face_id": pa.array([], pa.int64()),
                               "box": pa.array([], pa.list_(pa.float32()))}))
    text = capsys.readouterr().out
    assert text.splitlines() == ['"face_id","box"']


@pytest.fixture
def plain_console(monkeypatch):
    """main_callback changes the shared console and a logger: put both back afterwards."""
    monkeypatch.setattr(common.out, "_width", common.out._width)
    skull_io = logging.getLogger("skullsearch.retrieval.skull_io")
    monkeypatch.setattr(skull_io, "level", skull_io.level)
    return skull_io


def test_output_is_plain_and_unwrapped_when_not_a_terminal(plain_console, capsys):
    assert not common.out.is_terminal  # (captured by pytest, like a pipe)
    common.main_callback(version=False, verbose=False)
    line = "face " + "x" * 300 + " end"
    common.out.print(line)
    assert capsys.readouterr().out == line + "\n"  # one line, never folded to 80 columns
    assert plain_console.level == logging.ERROR  # the skull reader's warnings: in Skull.warnings


def test_a_narrow_tables_title_stays_on_one_line_when_piped(plain_console, capsys):
    common.main_callback(version=False, verbose=False)
    title = "queries recorded in /a/rather/long/gallery/folder/of/the/lab"
    t = common.Table(title=title)
    t.add_column("S")
    t.add_row("0.9")
    common.out.print(t)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].strip() == title  # rich folded it to the table's width, one word a line
    plain = rich.table.Table(title=title)  # rich's own, for contrast
    plain.add_column("S")
    plain.add_row("0.9")
    common.out.print(plain)
    assert capsys.readouterr().out.splitlines()[0].strip() != title


def test_version_prints_the_package_version(capsys):
    from skullsearch.meta import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"skullsearch {__version__}"


def test_progress_off_a_terminal_is_throttled_log_lines(capsys, monkeypatch):
    now = [0.0]
    context, update = common._progress("ingest")
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # a clock the test moves
    with context:
        for t, done, faces, fails in [(100.0, 1, 1, {}),  # the first: shown
                                      (101.0, 2, 2, {}),  # 1 s later: not
                                      (112.0, 3, 2, {"no-face": 1}),  # 11 s after the last shown
                                      (113.0, 4, 3, {"no-face": 1}),  # 1 s: not
                                      (113.5, 5, 4, {"no-face": 1})]:  # the last: always
            now[0] = t
            update({"done": done, "total": 5, "faces": faces, "failures": fails})
    monkeypatch.undo()
    assert capsys.readouterr().err.splitlines() == [
        "ingest: 1/5 photos, 1 faces, failures {}",
        "ingest: 3/5 photos, 2 faces, failures {'no-face': 1}",
        "ingest: 5/5 photos, 4 faces, failures {'no-face': 1}",
    ]
    _, faces = common._progress("synth", unit="faces")
    faces({"done": 10, "total": 10})
    assert capsys.readouterr().err == "synth: 10/10 faces\n"


def test_rich_progress_reports_on_stderr():
    prog = common.rich_progress()
    assert prog.console is common.err and len(prog.columns) == 6
    task = prog.add_task("ingest", total=4, status="")
    prog.update(task, completed=3, status="2 faces")
    assert prog.tasks[0].completed == 3 and prog.tasks[0].fields["status"] == "2 faces"


def test_the_chosen_model_is_none_unless_one_is_asked_for(default_model, monkeypatch, tmp_path):
    monkeypatch.delenv("SKULLSEARCH_FACE_MODEL", raising=False)
    assert common._chosen_model(None) is None
    monkeypatch.setenv("SKULLSEARCH_FACE_MODEL", "ict")
    assert common._chosen_model(None).fingerprint == default_model.fingerprint
    monkeypatch.delenv("SKULLSEARCH_FACE_MODEL")
    saved = default_model.save(tmp_path / "m.npz")
    assert common._chosen_model(saved).fingerprint == default_model.fingerprint
