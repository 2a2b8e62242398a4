"""Whether the arm stays up on a noisy bus: iLQR-MPC deployed on each emulated arm for minutes.

`forethought bench servo_soak [--minutes N] [--corrupt RATE] [--drop RATE] [--arm ARM]`: per arm
(SO-101 and Koch, or the one named), the emulator starts in its own process, the arm is
calibrated through it on a clean bus, then the faults are typed into the emulator as a user
would (`fault corrupt:RATE`, `fault drop:RATE`: replies corrupted, replies that never come) and
`forethought deploy arm-reach-ilqr --realtime` runs with the default timeouts for N minutes at 50 Hz
(its three targets, one trial each, N / 3 minutes apiece; the loop at real-time priority where the
OS allows it, below the emulator's, as a robot's host would run it; the kernel's tty workers, which
hand the pseudo-terminal's bytes over, at SCHED_FIFO 7, between the two: robots/realtime.py).
Reported per arm: ticks, lost-arm exits (and the message of the first), the bus's retries, corrupt
and timed-out tries and servo replies given up on, stale ticks and the longest run of them, the
histogram of stale runs, the period's p50 and p99 over every period of the run (and each trial's
p99 weighted by its ticks, the worst trial's p99, the max) and overruns, the controller's p99, the
worst reach error, and the CPU seconds the hypervisor took from the machine meanwhile
(`host_steal_s`, where Linux counts them: on a virtual machine, time no priority inside it can
keep). SIGTERM or Ctrl-C stops it cleanly (exit 143 or 130).
--quick: 1 minute.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from forethought.robots.arm_description import load_arm, make_bus
from forethought.robots.config import ConfigError
from forethought.scripts.bench import host_steal_s
from forethought.scripts.bench_servo import (
    MPC_EXPERIMENT,
    calibrate_through,
    emulator_priority,
    start_emulator,
    stop_emulator,
)

ARMS = ("so101", "koch")
TICKS_PER_MINUTE = 50 * 60


def soak(arm_name: str, minutes: float, corrupt: float, drop: float, seed: int = 1, chunk_minutes: float = 1.0) -> dict:
    """One arm's soak; see the module docstring. The run is `deploy`ed a chunk at a time (three
    trials of chunk_minutes / 3 each), on the one calibrated emulator; after each chunk the totals
    so far go to stderr as one JSON line, so that a soak cut short still says what it saw."""
    from forethought.robots.safety import Terminated
    from forethought.scripts.deploy import EXIT_INTERRUPTED, EXIT_TERMINATED, ArmStopped, deploy
    from forethought.scripts.experiment import load_experiment

    arm = load_arm(arm_name)
    process, port = start_emulator(arm_name, "--seed", str(seed))
    lost, message, loops, periods, reach = 0, None, [], [], []
    started, steal_before = time.monotonic(), host_steal_s()
    try:
        calibration = calibrate_through(process, arm, port)
        for kind, rate in (("corrupt", corrupt), ("drop", drop)):
            if rate:
                process.stdin.write(f"fault {kind}:{rate}\n")
                process.stdin.flush()
        time.sleep(0.1)
        left = minutes
        while left > 1e-9 and not lost:
            chunk = min(chunk_minutes, left)
            left -= chunk
            experiment = load_experiment(MPC_EXPERIMENT)
            trials = len(experiment.task.conditions) * experiment.loop.iterations * experiment.loop.samples
            experiment.task.horizon = max(1, int(round(chunk * TICKS_PER_MINUTE / trials)))
            bus = make_bus(arm, port)
            with tempfile.TemporaryDirectory() as out:
                try:
                    result = deploy(experiment, arm, port, calibration, Path(out), stream=io.StringIO(), bus=bus,
                                    realtime=True)
                except ArmStopped as stopped:
                    # The soak was stopped, not the arm lost.
                    if stopped.exit_code == EXIT_INTERRUPTED:
                        raise KeyboardInterrupt from None
                    if stopped.exit_code == EXIT_TERMINATED:
                        raise Terminated("signal 15") from None
                    result, lost, message = stopped.result, 1, str(stopped)
                    # What the bus saw last, for the notes: the failed tries before the loss.
                    for event in list(bus.retry_log)[-40:]:
                        print(json.dumps({"arm": arm_name, "retry": event.as_dict()}), file=sys.stderr)
            tries = list(bus.retry_log)
            late_ms = [e.waited_ms for e in tries]
            print(json.dumps({"arm": arm_name, "chunk_bus": dict(bus.stats), "failed_tries": len(tries),
                              "failed_try_ms_max": max(late_ms, default=None)}), file=sys.stderr, flush=True)
            loops += [stats for stats in result.loop if stats.get("ticks")]
            periods += [p for p in result.periods_ms if p.size]
            reach += list(result.reach_error_m)
            summary = _summary(loops, periods, reach, lost, message, started, steal_before)
            print(json.dumps({"arm": arm_name, **summary}), file=sys.stderr, flush=True)
    finally:
        stop_emulator(process)
    return _summary(loops, periods, reach, lost, message, started, steal_before)


def _summary(loops: list[dict], periods: list, reach: list[float], lost: int, message: str | None,
             started: float, steal_before: float | None) -> dict:
    runs: dict[str, int] = {}
    for stats in loops:
        for length, count in stats["stale_runs"].items():
            runs[length] = runs.get(length, 0) + count
    total = lambda key: int(sum(stats[key] for stats in loops))  # noqa: E731
    worst = lambda key: max((stats[key] for stats in loops), default=None)  # noqa: E731
    ticks = total("ticks")
    return {
        "ticks": ticks,
        "trials": len(loops),
        "lost_arm_exits": lost,
        "lost_arm_message": message,
        "retries": total("bus_retries"),
        "corrupt_tries": total("bus_corrupt"),
        "timed_out_tries": total("bus_timeouts"),
        "replies_given_up": total("bus_missing"),
        "stale_ticks": total("stale_ticks"),
        "longest_stale_ticks": worst("longest_stale_ticks"),
        "stale_runs": dict(sorted(runs.items(), key=lambda item: int(item[0]))),
        # Over every period of every trial (the loop clock's), and each trial's own p99 weighted by its ticks.
        "period_p50_ms": float(np.percentile(np.concatenate(periods), 50)) if periods else None,
        "period_p99_ms": float(np.percentile(np.concatenate(periods), 99)) if periods else None,
        "period_p99_trial_weighted_ms": _weighted(loops, "period_p99_ms"),
        "period_p99_worst_trial_ms": worst("period_p99_ms"),
        "period_max_ms": worst("period_max_ms"),
        "overruns": total("overruns"),
        "controller_p99_ms": worst("controller_p99_ms"),
        "bus_read_p99_ms": worst("bus_read_p99_ms"),
        "reach_error_m": max(reach, default=None),
        "wall_minutes": (time.monotonic() - started) / 60.0,
        # CPU time the hypervisor took from the machine meanwhile (a virtual machine's host at work):
        # no priority inside the machine keeps a loop on time through it.
        "host_steal_s": None if steal_before is None else host_steal_s() - steal_before,
    }


def _weighted(loops: list[dict], key: str) -> float | None:
    ticks = sum(stats["ticks"] for stats in loops)
    return sum(stats[key] * stats["ticks"] for stats in loops) / ticks if ticks else None


def run_bench_servo_soak(quick: bool = False, minutes: float | None = None, corrupt: float = 0.02,
                         drop: float = 0.0, arm: str | None = None) -> tuple[dict, dict]:
    minutes = (1.0 if quick else 10.0) if minutes is None else float(minutes)
    if not minutes > 0:
        raise ConfigError(f"servo_soak: --minutes must be positive, got {minutes}")
    for name, rate in (("corrupt", corrupt), ("drop", drop)):
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"servo_soak: --{name} must be a rate in [0, 1], got {rate}")
    arms = ARMS if arm is None else (arm,)
    metrics = {}
    import torch

    from forethought.robots.realtime import tty_workers_realtime
    from forethought.robots.safety import exit_signals_raise

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the controller shares the cores with the emulator's process
    try:
        # The pseudo-terminal stands for the servos' wire and USB adapter, which no host load holds
        # back: its bytes are handed over by the kernel's workers, raised like the emulator.
        # SIGTERM as an exception, so that the emulator stops and the workers are put back.
        with exit_signals_raise(), tty_workers_realtime() as tty_workers:
            for name in arms:
                for key, value in soak(name, minutes, corrupt, drop).items():
                    metrics[f"{name}_{key}"] = value
    finally:
        torch.set_num_threads(threads)
    config = {
        "minutes_per_arm": minutes, "corrupt": corrupt, "drop": drop, "arms": list(arms), "control_dt_s": 0.02,
        "experiment": MPC_EXPERIMENT, "timeouts": "default (wire time + return delays + 2 x USB latency + margin)",
        "emulator": f"separate process, pty, {emulator_priority()}", "tty_workers": tty_workers,
        "deploy": "--realtime", "torch_threads": 1, "stale_window_s": {name: load_arm(name).stale_window for name in arms},
    }
    return metrics, config
