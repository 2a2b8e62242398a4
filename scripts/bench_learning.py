"""Learning measured as the experiment loop runs it: iterations until a shipped experiment's trials
reach its task's goal (the goal stated in the experiment file, as summary.json judges it).

`forethought bench learning` measures the learned-model cells of the models x controllers matrix
(CELLS) this way over seeds 0, 1, 2; `bench mpc` and `bench pilco` measure PETS and PILCO."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from forethought.scripts.experiment import load_experiment
from forethought.scripts.run import run_experiment


@dataclass
class LearningRun:
    """first_success: the first iteration (1-based) with a trial that reached the goal, None if none
    within the iterations run; update_s: each update's wall time; goal_values: each trial's."""

    first_success: int | None
    update_s: list[float] = field(default_factory=list)
    goal_values: list[float] = field(default_factory=list)
    interaction_s: float | None = None


def iterations_to_success(name: str, seed: int, max_iterations: int) -> LearningRun:
    """Run shipped experiment `name` with `seed` until all of an iteration's trials reach its goal
    (at most max_iterations), in a scratch run folder, without video."""
    experiment = load_experiment(name)
    experiment.loop.seed = seed
    experiment.loop.iterations = max_iterations
    experiment.loop.until_success = True
    experiment.loop.video = False
    with tempfile.TemporaryDirectory() as out:
        result = run_experiment(experiment, Path(out), render_video=False)
    first = next((int(t.metadata["iteration"]) + 1 for t in result.trials if t.metadata.get("goal", {}).get("success")),
                 None)
    trials = [t for t in result.trials if first is not None and int(t.metadata["iteration"]) < first]
    interaction = sum(t.horizon * t.dt for t in trials) if first is not None else None
    return LearningRun(first, [d["update_s"] for d in result.diagnostics], list(result.goal_values), interaction)


# The learned-model cells of the models x controllers matrix, each with the most iterations it is
# given to reach its goal (iLQR-MPC on the ensemble within 10 trials, MPPI on the GP within 5).
CELLS: dict[str, int] = {
    "arm-reach-ilqr-ensemble": 10,
    "pendulum-swingup-mppi-gp": 5,
    "pendulum-swingup-ilqr-gp": 5,
    "arm-reach-ilqr-tvlg": 10,
    "arm-reach-sampling-tvlg": 10,
}


def run_bench_learning(quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2),
                       experiments: dict[str, int] | None = None) -> tuple[dict, dict]:
    """Per experiment of CELLS, one seed after another on one torch thread: `NAME` the first iteration
    (1-based, the random first one included) with a trial that reaches the task's goal, per seed
    (None: not within its iterations; each run stops once all of an iteration's trials reach it), and
    `NAME_update_s` the median update. quick: seed 0 only."""
    import statistics

    import torch

    experiments = CELLS if experiments is None else experiments
    seeds = seeds[:1] if quick else seeds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    metrics: dict = {}
    try:
        for name, max_iterations in experiments.items():
            runs = [iterations_to_success(name, seed, max_iterations) for seed in seeds]
            metrics[name] = [r.first_success for r in runs]
            updates = [u for r in runs for u in r.update_s]
            metrics[f"{name}_update_s"] = statistics.median(updates) if updates else None
    finally:
        torch.set_num_threads(threads)
    return metrics, {"seeds": list(seeds), "max_iterations": dict(experiments), "torch_threads": 1}
