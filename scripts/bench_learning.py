"""Learning measured as the experiment loop runs it: iterations until a shipped experiment's trials
reach its task's goal (the goal stated in the experiment file, as summary.json judges it), over
seeds run as a sweep (on Ray, in parallel where the cores allow), with their distribution."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


@dataclass
class LearningRun:
    """first_success: the first iteration (1-based) with a trial that reached the goal, None if none
    within the iterations run; update_s: each update's wall time; interaction_s: the seconds of
    experience up to and including the first success."""

    first_success: int | None
    update_s: list[float] = field(default_factory=list)
    interaction_s: float | None = None
    error: str | None = None  # a run of a sweep that failed: its error


def learning_over_seeds(name: str, seeds: Sequence[int], max_iterations: int, cpus_per_run: int = 1,
                        out: Path | None = None, fixed: dict | None = None) -> tuple[list[LearningRun], dict]:
    """Run shipped experiment `name` with each seed until all of an iteration's trials reach its goal
    (at most max_iterations), without video, as one sweep (scripts/sweep.py: a local Ray with the
    machine's CPUs, `cpus_per_run` each) in `out` (default: a scratch folder). Returns each seed's
    LearningRun and the sweep's summary of the setting (success_rate, trials_to_success as a
    distribution, ...). fixed: other values every run takes ({dotted key: value}, as --set gives)."""
    from forethought.scripts.sweep import execute, plan_sweep

    with tempfile.TemporaryDirectory() as scratch:
        plan = plan_sweep(name, list(seeds), {}, cpus_per_run, Path(out or scratch) / f"sweep-{name}",
                          fixed={**(fixed or {}), "loop.iterations": max_iterations, "loop.until_success": True})
        result = execute(plan)
    runs = [LearningRun(r.get("first_success_iteration"), [u for u in r.get("update_s") or [] if u is not None],
                        r.get("interaction_s"), r.get("error")) for r in result.records]
    return runs, result.summary["settings"][0]


def distribution_metrics(prefix: str, setting: dict, key: str = "trials_to_success") -> dict:
    """A sweep setting's `key` (a distribution over the seeds that reached the goal) as flat benchmark
    metrics: PREFIX_median, PREFIX_quartiles [q25, q75], PREFIX_ci95 (the median's 95% bootstrap
    interval); None where no seed reached it."""
    d = setting[key]
    return {
        f"{prefix}_median": d["median"],
        f"{prefix}_quartiles": None if d["median"] is None else [d["q25"], d["q75"]],
        f"{prefix}_ci95": d["ci95"],
    }


# The learned-model MPC cells of the models x controllers matrix, each with the most iterations it
# is given to reach its goal (iLQR-MPC on the ensemble within 10 trials, MPPI on the GP within 5).
CELLS: dict[str, int] = {
    "arm-reach-ilqr-ensemble": 10,
    "cartpole-swingup-ilqr-ensemble": 10,
    "pendulum-swingup-mppi-gp": 5,
    "pendulum-swingup-ilqr-gp": 5,
    "arm-reach-ilqr-tvlg": 10,
    "arm-reach-sampling-tvlg": 10,
}


def run_bench_learning(quick: bool = False, seeds: int = 3, experiments: dict[str, int] | None = None) -> tuple[dict, dict]:
    """`forethought bench learning`: per experiment of CELLS, over seeds 0 .. seeds-1 (quick: seed 0
    only), `NAME` the first iteration (1-based, the random first one included) with a trial that
    reaches the task's goal, per seed (None: not within its iterations; each run stops once all of an
    iteration's trials reach it), `NAME_success_rate` and `NAME_update_s`, the median update."""
    import statistics

    experiments = CELLS if experiments is None else experiments
    seeds = 1 if quick else seeds
    metrics: dict = {}
    for name, max_iterations in experiments.items():
        runs, setting = learning_over_seeds(name, range(seeds), max_iterations)
        metrics[name] = [r.first_success for r in runs]
        metrics[f"{name}_success_rate"] = setting["success_rate"]
        updates = [u for r in runs for u in r.update_s]
        metrics[f"{name}_update_s"] = statistics.median(updates) if updates else None
    return metrics, {"seeds": list(range(seeds)), "max_iterations": dict(experiments), "cpus_per_run": 1}
