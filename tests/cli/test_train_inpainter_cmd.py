"""``skullsearch train inpainter`` (:mod:`skullsearch.cli.train_inpainter_cmd`): a tiny real run
through the console entry point (24 synthetic faces, 16 px renders, one epoch, a few seconds) —
the default checkpoint place, the summary table, the log lines —, the progress display on and off
a terminal, and the refusals. Training itself is in tests/inpaint/test_gan.py."""

import io
import re
import time

import numpy as np
import pytest
from rich.console import Console
from tiny_gan import one_thread

from skullsearch import Gallery
from skullsearch.cli import common
from skullsearch.cli import train_inpainter_cmd as cmd
from skullsearch.cli.app import main
from skullsearch.index.synth import add_synthetic_faces, synth, synth_codes
from skullsearch.inpaint.gan import default_inpainter_path, load_inpainter, sidecar_path

TINY = ["--epochs", "1", "--size", "16", "--width", "4", "--batch-size", "8"]


@pytest.fixture(scope="module")
def gallery(default_model, tmp_path_factory):
    g = Gallery.create(tmp_path_factory.mktemp("train_inpainter") / "g", face_model=default_model)
    synth(g, 24, seed=1)
    return g.path


def _rows(out: str) -> dict[str, str]:
    """The summary table's rows: {name: value}."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 4:  # '', name, value, ''
            rows[cells[1]] = cells[2]
    return rows


@pytest.mark.slow
def test_a_tiny_run_writes_the_gallerys_inpainter_and_summarizes_it(gallery, capsys):
    with one_thread():
        assert main(["train", "inpainter", "-g", str(gallery), "--faces", "0", *TINY]) == 0
    captured = capsys.readouterr()
    path = default_inpainter_path(gallery)
    assert path == gallery / "models" / "inpainter.pt" and path.is_file() and sidecar_path(path).is_file()
    assert captured.out.strip().splitlines()[-1] == f"wrote {path} (record: inpainter.json)"
    rows = _rows(captured.out)
    inp = load_inpainter(path)
    meta, last = inp.meta, inp.meta["history"][-1]
    assert meta["faces"] == 24  # --faces 0: all of them
    assert rows["faces"] == f"24 ({meta['train_faces']} training, {meta['val_faces']} held out)"
    assert meta["train_faces"] + meta["val_faces"] == 24
    assert rows["renders"] == "16 × 16 px" and rows["epochs"] == "1" and rows["device"] == "cpu"
    assert rows["D loss"].endswith(f"→ {last['d_loss']:.3f}")
    assert rows["Ψ_E vertex RMS (held out)"].endswith(f"→ {last['val_vertex_rms_mm']:.2f} mm")
    assert rows["Ψ_E soft-tissue RMS (held out)"] == f"{last['val_soft_tissue_rms_mm']:.2f} mm"
    assert re.fullmatch(r"[\d.]+ \(rendering [\d.]+\)", rows["seconds"])
    # off a terminal: plain log lines on stderr, the last render count and one line per epoch
    err = captured.err.splitlines()
    assert "rendering: 24/24 faces" in err
    (epoch,) = [ln for ln in err if ln.startswith("epoch ")]
    assert re.fullmatch(r"epoch 1/1: D [\d.]+, G [\d.]+, Ψ_E [\d.]+ mm² \(vertex RMS [\d.]+ mm, "
                        r"held-out [\d.]+ mm\), [\d.]+ s", epoch)


def _events():
    losses = {"d_loss": 0.5, "g_loss": 0.25, "encoder_loss": 3.0, "vertex_rms_mm": 1.5,
              "val_vertex_rms_mm": 1.75}
    return [
        (0.0, {"stage": "render", "done": 1, "total": 3}),
        (5.0, {"stage": "render", "done": 2, "total": 3}),  # 5 s later: not shown
        (6.0, {"stage": "render", "done": 3, "total": 3}),  # the last: always
        (7.0, {"stage": "train", "done": 1, "total": 2, "epoch": 1, "epochs": 2, **losses}),
        (8.0, {"stage": "epoch", "done": 1, "total": 2, "epoch": 1, "epochs": 2, "seconds": 1.3, **losses}),
        (30.0, {"stage": "render", "done": 3, "total": 3}),
    ]


def test_progress_off_a_terminal_is_throttled_log_lines(monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    context, update = cmd._progress()
    with context:
        for t, ev in _events():
            now[0] = 100.0 + t
            update(ev)
    monkeypatch.undo()
    assert capsys.readouterr().err.splitlines() == [
        "rendering: 1/3 faces",
        "rendering: 3/3 faces",
        "epoch 1/2: D 0.500, G 0.250, Ψ_E 3.00 mm² (vertex RMS 1.50 mm, held-out 1.75 mm), 1.3 s",
        "rendering: 3/3 faces",
    ]


def test_progress_on_a_terminal_is_two_bars(monkeypatch):
    term = Console(file=io.StringIO(), force_terminal=True)
    monkeypatch.setattr(cmd, "err", term)
    monkeypatch.setattr(common, "err", term)
    prog, update = cmd._progress()
    for _, ev in _events()[:5]:
        update(ev)
    render, train = prog.tasks
    assert (render.description, render.completed, render.total) == ("rendering", 3, 3)
    assert (train.description, train.completed, train.total) == ("training", 1, 2)
    assert train.fields["status"] == "epoch 1/2 · held-out 1.75 mm"  # the epoch's, after the batch's
    update(_events()[3][1])
    assert prog.tasks[1].fields["status"] == "epoch 1/2 · D 0.500 · G 0.250 · Ψ_E 3.0 mm²"
    assert prog.console is term


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "1"], "at least 1 epoch and 2 renders per batch"),
    (["--faces", "1"], "faces must be at least 2"),
    (["--size", "12"], "power of two"),
])
def test_refusals_are_one_error_line_and_write_nothing(gallery, tmp_path, capsys, args, message):
    out = tmp_path / "x.pt"
    assert main(["train", "inpainter", "-g", str(gallery), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in " ".join(err.split()) and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_gallery_of_one_face_is_refused(default_model, tmp_path, capsys):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    add_synthetic_faces(g, synth_codes(default_model, 1, np.random.default_rng(0)))
    assert main(["train", "inpainter", "-g", str(g.path), *TINY]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and "has 1 face(s)" in err and "skullsearch synth" in err
    assert not default_inpainter_path(g).exists()


@pytest.mark.parametrize("args, message", [
    ([], "--gallery"),
    (["-g", "G", "--epochs", "many"], "--epochs"),
    (["-g", "G", "--faces", "1.5"], "--faces"),
])
def test_bad_arguments_exit_2(capsys, args, message):
    assert main(["train", "inpainter", *args]) == 2
    err = capsys.readouterr().err
    assert "Error" in err and message in err and "Traceback" not in err
