"""Shared fixtures of the inpaint tests.

``tiny_inpainter``: a GAN inpainter trained once per session on a small synthetic gallery
(160 faces, 64 px renders, narrow networks, 3 epochs: about half a minute on one core).
"""

import pytest
from tiny_gan import TINY, one_thread


@pytest.fixture(scope="session")
def tiny_inpainter(default_model, tmp_path_factory):
    """{"gallery": Gallery, "checkpoint": Path, "inpainter": Inpainter, "events": [progress dicts]}
    for a tiny inpainter trained on a 160-face synthetic gallery (default model)."""
    from skullsearch import Gallery
    from skullsearch.index.synth import synth
    from skullsearch.inpaint.gan import load_inpainter, train_inpainter

    g = Gallery.create(tmp_path_factory.mktemp("inpainter") / "g", face_model=default_model)
    synth(g, TINY["faces"], seed=11)
    events = []
    with one_thread():
        path = train_inpainter(g, epochs=TINY["epochs"], batch_size=TINY["batch_size"],
                               size=TINY["size"], width=TINY["width"],
                               encoder_widths=TINY["encoder_widths"], encoder_lr=TINY["encoder_lr"],
                               seed=TINY["seed"],
                               progress=events.append)
    return {"gallery": g, "checkpoint": path, "inpainter": load_inpainter(g), "events": events}
