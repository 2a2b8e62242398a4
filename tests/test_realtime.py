"""Real-time scheduling of a control loop: granted where the OS allows it, and undone after."""

import os
import threading

import pytest

from forethought.robots.realtime import LOOP_RT_PRIORITY, realtime_thread

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="no POSIX scheduling here")


def test_the_thread_runs_real_time_in_the_block_and_as_before_after_it():
    before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority, os.getpriority(os.PRIO_PROCESS, 0))
    seen = {}

    def loop():
        mine = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority, os.getpriority(os.PRIO_PROCESS, 0))
        with realtime_thread() as achieved:
            seen["achieved"] = achieved
            seen["inside"] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
        seen["after"] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority,
                         os.getpriority(os.PRIO_PROCESS, 0))
        seen["mine"] = mine

    # In a thread of its own, as deploy's loop: nothing of it may leak into the rest of the process.
    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    assert seen["achieved"] in (f"SCHED_FIFO {LOOP_RT_PRIORITY}", "nice -10", "normal")
    if seen["achieved"].startswith("SCHED_FIFO"):
        assert seen["inside"] == (os.SCHED_FIFO, LOOP_RT_PRIORITY)
    assert seen["after"][:2] == seen["mine"][:2]
    if not seen["achieved"].startswith("nice"):  # a nice value once lowered may need privilege to restore
        assert seen["after"][2] == seen["mine"][2]
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority,
            os.getpriority(os.PRIO_PROCESS, 0)) == before


def test_the_kernels_tty_workers_run_real_time_in_the_block_and_as_before_after_it():
    from forethought.robots.realtime import TTY_WORKER_RT_PRIORITY, tty_workers_realtime, unbound_kernel_workers

    def states():
        out = {}
        for tid in unbound_kernel_workers():
            try:
                out[tid] = (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
            except ProcessLookupError:
                pass
        return out

    before = states()
    with tty_workers_realtime(recheck_s=0.05) as achieved:
        inside = states()
    after = states()
    if achieved == "normal":  # no privilege (or no such workers): nothing may have changed
        assert not before or all(after.get(t, s) == s for t, s in before.items())
        return
    assert achieved == f"SCHED_FIFO {TTY_WORKER_RT_PRIORITY}"
    # Every worker that was there before (the kernel may start new ones between two checks).
    assert all(inside[t][0] == os.SCHED_FIFO for t in before if t in inside)
    # Put back as they were (workers the kernel ended meanwhile are gone from `after`).
    assert all(after[t] == s for t, s in before.items() if t in after)
