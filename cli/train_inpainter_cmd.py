"""``skullsearch train inpainter``: train the GAN inpainter (G, D, Ψ_E) on a gallery's faces.
Parses, calls the library, prints with rich."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from skullsearch.cli.common import GalleryOption, Table, err, out, rich_progress, train_app


def _progress():
    """A rich progress bar on a terminal; one plain line per epoch (and every ~10 s of
    rendering) otherwise."""
    if err.is_terminal:
        prog = rich_progress()
        tasks: dict = {}

        def update(ev: dict):
            stage = "render" if ev["stage"] == "render" else "train"
            if stage not in tasks:
                tasks[stage] = prog.add_task("rendering" if stage == "render" else "training",
                                             total=ev["total"], status="")
            status = ""
            if ev["stage"] == "train":
                status = (f"epoch {ev['epoch']}/{ev['epochs']} · D {ev['d_loss']:.3f} · "
                          f"G {ev['g_loss']:.3f} · Ψ_E {ev['encoder_loss']:.1f} mm²")
            elif ev["stage"] == "epoch":
                status = f"epoch {ev['epoch']}/{ev['epochs']} · held-out {ev['val_vertex_rms_mm']:.2f} mm"
            prog.update(tasks[stage], completed=ev["done"], total=ev["total"], status=status)
        return prog, update

    last = [0.0]

    def log_line(ev: dict):
        if ev["stage"] == "render":
            if time.monotonic() - last[0] > 10 or ev["done"] == ev["total"]:
                last[0] = time.monotonic()
                err.print(f"rendering: {ev['done']}/{ev['total']} faces", highlight=False)
        elif ev["stage"] == "epoch":
            err.print(f"epoch {ev['epoch']}/{ev['epochs']}: D {ev['d_loss']:.3f}, G {ev['g_loss']:.3f}, "
                      f"Ψ_E {ev['encoder_loss']:.2f} mm² (vertex RMS {ev['vertex_rms_mm']:.2f} mm, "
                      f"held-out {ev['val_vertex_rms_mm']:.2f} mm), {ev['seconds']:.1f} s", highlight=False,
                      soft_wrap=True)
    return nullcontext(), log_line


@train_app.command("inpainter")
def train_inpainter_cmd(
    gallery: GalleryOption,
    epochs: Annotated[int, typer.Option(help="Passes over the renders.")] = 25,
    faces: Annotated[
        int, typer.Option(help="Train on at most this many faces (a random sample; 0 = all).")
    ] = 20000,
    batch_size: Annotated[int, typer.Option(help="Renders per step.")] = 64,
    checkpoint: Annotated[
        Path | None, typer.Option("--out", help="Checkpoint file (default <gallery>/models/inpainter.pt).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Random seed (face sample, initialization, batches).")] = 0,
    size: Annotated[int, typer.Option(help="Render side in pixels (power of two; paper: 128).")] = 128,
    width: Annotated[int, typer.Option(help="Base channel width of G and D (DCGAN: 64).")] = 64,
):
    """Train the GAN inpainter for GII-GC: G and D on normalized renders of the gallery's faces,
    Ψ_E (render → code) supervised by their known codes."""
    from skullsearch.inpaint.gan import load_inpainter, sidecar_path, train_inpainter

    prog, update = _progress()
    with prog:
        path = train_inpainter(gallery, checkpoint, epochs=epochs, batch_size=batch_size, faces=faces or None,
                               size=size, width=width, seed=seed, device=device, progress=update,
                               log=lambda _: None)
    inp = load_inpainter(path)
    meta, hist = inp.meta, inp.meta["history"]
    first, last = hist[0], hist[-1]
    t = Table(title=f"inpainter for {gallery}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in (
        ("faces", f"{meta['faces']} ({meta['train_faces']} training, {meta['val_faces']} held out)"),
        ("renders", f"{inp.size} × {inp.size} px"), ("epochs", str(meta["epochs"])),
        ("D loss", f"{first['d_loss']:.3f} → {last['d_loss']:.3f}"),
        ("G loss", f"{first['g_loss']:.3f} → {last['g_loss']:.3f}"),
        ("Ψ_E vertex RMS (training)", f"{first['vertex_rms_mm']:.2f} → {last['vertex_rms_mm']:.2f} mm"),
        ("Ψ_E vertex RMS (held out)",
         f"{first['val_vertex_rms_mm']:.2f} → {last['val_vertex_rms_mm']:.2f} mm"),
        ("Ψ_E soft-tissue RMS (held out)", f"{last['val_soft_tissue_rms_mm']:.2f} mm"),
        ("Ψ_E face-proper RMS (held out)", f"{last['val_face_rms_mm']:.2f} mm"),
        ("seconds", f"{meta['seconds']:.1f} (rendering {meta['render_seconds']:.1f})"),
        ("device", meta["device"]),
    ):
        t.add_row(k, v)
    out.print(t)
    out.print(f"wrote {path} (record: {sidecar_path(path).name})", soft_wrap=True, highlight=False)
