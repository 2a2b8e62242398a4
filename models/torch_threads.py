"""Torch's thread count for a block: one thread for small float64 algebra, a run's CPUs for a run."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block on `count` torch threads, then restore the previous count. A run given some of
    the machine's CPUs (a sweep's run, a benchmark's seed) uses as many threads as it has CPUs: more
    would contend with the runs beside it (see `one_torch_thread`)."""
    if count < 1:
        raise ValueError(f"torch threads must be at least 1, got {count}")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_torch_thread():
    """Run the block on one torch thread, then restore the previous count.

    Work made of many operations on small tensors (a GP fit, a moment-matched rollout; a cost and
    its derivatives along one trajectory) gains little from splitting each operation over threads,
    and on a machine whose cores are busy a second thread that is not scheduled stalls every
    operation: on a loaded 2-core machine the arm reach's first PILCO update took 45 s on one
    thread and had not ended after 15 minutes on two, and the cost of a 100-step arm trajectory
    took 0.3 ms on one thread against 25 to 300 ms on two."""
    return torch_threads(1)
