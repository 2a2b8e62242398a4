"""Real-time scheduling for what must keep time: a control loop, or the emulator standing in for servos.

A servo arm's control loop must read, decide and write every period; on a busy host the kernel's
fair scheduler can hold it back for tens of milliseconds (`bench servo_soak` measured 50-250 ms
ticks beside other work). Real-time scheduling (SCHED_FIFO) runs it ahead of every ordinary
process, as robot middleware does (ros2_control's loop, for one). It needs privilege (root,
CAP_SYS_NICE or an rtprio limit); without it a lower nice value is tried, else nothing, and what was
achieved is said. A SCHED_FIFO thread that never sleeps would hold its core, so only loops that
sleep between ticks should ask for it; the kernel's real-time throttling (by default 5% of each
second left to others) is the guard.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

LOOP_RT_PRIORITY = 5  # the control loop: below the emulated servos, which answer it
EMULATOR_RT_PRIORITY = 10
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
