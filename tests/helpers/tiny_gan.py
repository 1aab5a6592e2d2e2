"""Settings of the tiny test inpainter (and, for its users, the one-thread context)."""

from __future__ import annotations

from torch_threads import one_thread  # noqa: F401  (the inpaint tests import it from here)

#: The session's tiny inpainter (tests/inpaint/conftest.py: tiny_inpainter): 160 synthetic faces,
#: 64 px renders, narrow networks, 3 epochs.
TINY = {"faces": 160, "size": 64, "width": 8, "encoder_widths": (8, 16, 32, 32), "epochs": 3,
        "encoder_lr": 3e-3,
        "batch_size": 16, "seed": 0}
