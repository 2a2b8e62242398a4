"""`forethought bench sweep`: what running seeds side by side on Ray gains over running them one
after another, both measured in this one benchmark run.

The same runs (an experiment over `seeds` seeds, one CPU and one torch thread each) go as two
sweeps (scripts/sweep.py), each on a local Ray of its own: one with 1 CPU (one run at a time), one
with `parallel` CPUs (that many at a time).

Metrics: serial_s and parallel_s, the wall time of each sweep (Ray's start and stop included);
ratio = parallel_s / serial_s (with 2 at a time, 0.5 is the ideal and 1 no gain; the issue's bound
for 4 seeds of pendulum-swingup-pilco 2 at a time on 2 cores is 0.6); identical: whether every
run's learning curve is the same in both sweeps (it must be: the same seed on the same thread
count); failed_runs. quick: the IK reach with 20-step trials instead of PILCO (seconds per run).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

EXPERIMENT = "pendulum-swingup-pilco"
QUICK = ("arm-reach-ik", {"task.horizon": 20})


def run_bench_sweep(quick: bool = False, seeds: int = 4, parallel: int | None = None) -> tuple[dict, dict]:
    """Metrics and config as in the module docstring; parallel: runs at a time (default: the
    machine's cores, at most `seeds`)."""
    import ray

    from forethought.scripts.sweep import execute, plan_sweep

    if ray.is_initialized():  # both sweeps would run on it, whatever CPUs each asks for
        raise RuntimeError("bench sweep starts a Ray of its own for each sweep; this process already runs one")
    name, fixed = QUICK if quick else (EXPERIMENT, {})
    parallel = parallel or min(seeds, os.cpu_count() or 1)
    times, curves, failed = {}, {}, 0
    with tempfile.TemporaryDirectory() as scratch:
        for label, cpus in (("serial", 1), ("parallel", parallel)):
            plan = plan_sweep(name, list(range(seeds)), {}, 1, Path(scratch) / label, fixed=fixed)
            started = time.perf_counter()
            result = execute(plan, cpus=cpus)
            times[label] = time.perf_counter() - started
            curves[label] = [r.get("learning_curve") for r in result.records]
            failed += sum(r["status"] != "done" for r in result.records)
    metrics = {
        "serial_s": times["serial"],
        "parallel_s": times["parallel"],
        "ratio": times["parallel"] / times["serial"],
        "identical": curves["serial"] == curves["parallel"],
        "failed_runs": failed,
    }
    config = {"experiment": name, "settings": fixed, "seeds": list(range(seeds)), "parallel": parallel,
              "cpus_per_run": 1, "torch_threads": 1}
    return metrics, config
