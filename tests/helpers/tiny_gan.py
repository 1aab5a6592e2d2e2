"""Settings of the tiny test inpainter and a one-thread context for tiny networks."""

from __future__ import annotations

import contextlib

import torch

#: The session's tiny inpainter (tests/inpaint/conftest.py: tiny_inpainter): 160 synthetic faces,
#: 64 px renders, narrow networks, 3 epochs.
TINY = {"faces": 160, "size": 64, "width": 8, "encoder_widths": (8, 16, 32, 32), "epochs": 3,
        "encoder_lr": 3e-3,
        "batch_size": 16, "seed": 0}


@contextlib.contextmanager
def one_thread():
    """Tiny networks gain nothing from intra-op threads, and on a shared 2-core machine the
    threads' spin-waits make them many times slower: run them on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
