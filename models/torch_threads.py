"""Small float64 algebra on one torch thread."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_torch_thread():
    """Run the block on one torch thread, then restore the previous count.

    A GP fit or a moment-matched rollout is thousands of operations on tensors of a few to a few
    hundred thousand entries: splitting them over threads gains little, and on a machine whose
    cores are busy a second thread that is not scheduled stalls every operation: on a loaded 2-core
    machine PILCO's first arm-reach update took 45 s on one thread and had not ended after 15
    minutes on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def on_one_torch_thread(function):
    """Decorate a method or function to run on one torch thread (see one_torch_thread)."""
    import functools

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with one_torch_thread():
            return function(*args, **kwargs)

    return wrapped
