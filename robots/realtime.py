"""Real-time scheduling for what must keep time: a control loop, or the emulator standing in for servos.

A servo arm's control loop must read, decide and write every period; on a busy host the kernel's
fair scheduler can hold it back for tens of milliseconds (`bench servo_soak` measured 50-250 ms
ticks beside other work). Real-time scheduling (SCHED_FIFO) runs it ahead of every ordinary
process, as robot middleware does (ros2_control's loop, for one). It needs privilege (root,
CAP_SYS_NICE or an rtprio limit); without it a lower nice value is tried, else nothing, and what was
achieved is said. A SCHED_FIFO thread that never sleeps would hold its core, so only loops that
sleep between ticks should ask for it; the kernel's real-time throttling (by default 5% of each
second left to others) is the guard.

A serial port's bytes reach the reading process through the kernel's tty layer, which hands them
over in a kernel worker (an unbound `kworker/u*` thread) at ordinary priority: a loop and an
emulator both at SCHED_FIFO still wait for that worker. On this project's 2-core machine at load
7.5, 100-byte writes through a pseudo-terminal between two SCHED_FIFO processes took p99 12-18 ms
(max 58); with the unbound workers at SCHED_FIFO, p99 0.19 ms (max 0.34). `tty_workers_realtime`
raises them for a block (root only), as real-time robot hosts raise their interrupt threads.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOOP_RT_PRIORITY = 5  # the control loop: below the emulated servos, which answer it
EMULATOR_RT_PRIORITY = 10
# Above the loop and below the emulator, as a real-time host runs its interrupt threads above its
# control loops: with two loops busy on two cores, workers below them would hold a reply back
# until one of the loops is done with its tick.
TTY_WORKER_RT_PRIORITY = 7
NICE_INSTEAD = -10


def raise_priority(pid: int, rt_priority: int) -> str:
    """Run process or thread `pid` (0: the calling thread) at SCHED_FIFO `rt_priority` where allowed,
    else at nice NICE_INSTEAD, else as it was; returns which ("SCHED_FIFO 10", "nice -10", "normal")."""
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(rt_priority))
        return f"SCHED_FIFO {rt_priority}"
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, pid, NICE_INSTEAD)
        return f"nice {NICE_INSTEAD}"
    except OSError:
        return "normal"


@contextmanager
def realtime_thread(rt_priority: int = LOOP_RT_PRIORITY) -> Iterator[str]:
    """The calling thread at real-time priority for the block (see raise_priority), as it was after;
    yields what was achieved."""
    policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    param = os.sched_getparam(0) if policy is not None else None
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    achieved = raise_priority(0, rt_priority)
    try:
        yield achieved
    finally:
        if achieved.startswith("SCHED_FIFO"):
            os.sched_setscheduler(0, policy, param)
        elif achieved.startswith("nice"):
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)  # raising it back needs no privilege
            except OSError:
                pass


def unbound_kernel_workers(proc: Path = Path("/proc")) -> list[int]:
    """Thread ids of the kernel's unbound workers (`kworker/u*`), which deliver a tty's received bytes."""
    tids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().startswith("kworker/u"):
                tids.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return tids


@contextmanager
def tty_workers_realtime(recheck_s: float = 0.5) -> Iterator[str]:
    """The kernel's unbound workers at SCHED_FIFO TTY_WORKER_RT_PRIORITY for the block, checked again
    every recheck_s s (the kernel starts and ends workers as its load changes) and put back as they
    were after; yields what was achieved ("SCHED_FIFO 7", or "normal" without the privilege)."""
    if not hasattr(os, "sched_setscheduler"):
        yield "normal"
        return
    before: dict[int, tuple[int, int]] = {}  # what this block raised: tid -> (policy, priority)

    def raise_new() -> None:
        for tid in unbound_kernel_workers():
            if tid in before:
                continue
            try:
                state = (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
                if state[0] != os.SCHED_FIFO:
                    os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(TTY_WORKER_RT_PRIORITY))
                    before[tid] = state
            except (ProcessLookupError, PermissionError):
                continue

    def put_back() -> None:
        for tid, (policy, priority) in before.items():
            try:
                os.sched_setscheduler(tid, policy, os.sched_param(priority))
            except (ProcessLookupError, PermissionError):
                pass

    raise_new()
    try:
        workers = unbound_kernel_workers()
        raised = bool(workers) and all(os.sched_getscheduler(tid) == os.SCHED_FIFO for tid in workers)
    except ProcessLookupError:  # a worker ended meanwhile: count what was raised
        raised = bool(before)
    if not raised:  # no privilege (or no such workers)
        put_back()
        yield "normal"
        return
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(recheck_s):
            raise_new()

    watcher = threading.Thread(target=watch, name="tty-workers", daemon=True)
    watcher.start()
    try:
        yield f"SCHED_FIFO {TTY_WORKER_RT_PRIORITY}"
    finally:
        stop.set()
        watcher.join()
        put_back()
