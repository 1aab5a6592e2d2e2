"""One torch thread for small tensor work in tests."""

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Small networks and fits gain nothing from intra-op threads, and on a shared 2-core machine
    the threads' spin-waits make them many times slower: run them on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
