"""`forethought bench pilco`: how many trials PILCO needs to swing up the cart-pole, and how fast it is.

Metrics:
- trials_to_success: per seed (0 to N-1, `--seeds N`, default 3), the trials (the random first one
  included) until the first success: pole within 0.1 rad of upright and cart within 0.1 m of centre
  over the final second of a 4 s trial (None: not within max_trials); its distribution over the
  seeds that succeeded: trials_to_success_median, _quartiles, _ci95 (95% bootstrap interval of the
  median); success_rate: the fraction of seeds that succeeded; failed_runs: seeds whose run failed;
- interaction_s: per seed, the seconds of experience used up to and including that trial (None likewise);
- iteration_s: median wall time of one fit-plus-optimise update, over every update of every seed;
- propagate_ms: median wall time of one moment-matched step through a GP with 300 training points,
  6 inputs and 4 outputs (the cart-pole's), forward only; propagate_grad_ms: with its gradient.
One CPU thread per seed; the seeds run as a sweep (scripts/sweep.py: a local Ray, one CPU per run,
as many at a time as the machine has cores). The experiment is the shipped cartpole-swingup-pilco
on the MuJoCo scene.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from forethought.robots.trial import Trial, rollout
from forethought.scripts.bench_learning import distribution_metrics, learning_over_seeds
from forethought.scripts.experiment import build_parts, load_experiment

EXPERIMENT = "cartpole-swingup-pilco"


def propagate_speed(repeats: int) -> dict[str, float]:
    """Median ms of one GP propagate step at 300 cart-pole transitions (6 inputs, 4 outputs)."""
    parts = build_parts(load_experiment(EXPERIMENT))
    policy = parts.controller.policy(0)
    trials: list[Trial] = []
    with parts.robot as robot:
        while sum(t.horizon for t in trials) < 300:
            steps = min(parts.task.horizon, 300 - sum(t.horizon for t in trials))
            trials.append(rollout(robot, policy, steps, seed=len(trials)))
    model = parts.model
    model.fit(trials)
    assert model.inputs.shape == (300, 6) and model.n == 4
    generator = torch.Generator().manual_seed(0)
    D = model.n + model.m
    mean = torch.cat([torch.tensor([[0.0, np.pi / 2, 0.0, 0.0]]), torch.zeros(1, model.m)], dim=1).double()
    root = 0.1 * torch.randn(D, D, dtype=torch.float64, generator=generator)
    cov = (root @ root.T + 0.01 * torch.eye(D, dtype=torch.float64))[None]

    def timed(with_grad: bool) -> float:
        times = []
        for _ in range(repeats + 1):
            m, c = mean.clone().requires_grad_(with_grad), cov.clone().requires_grad_(with_grad)
            start = time.perf_counter()
            if with_grad:
                next_mean, next_cov, _ = model.propagate(m, c)
                (next_mean.sum() + next_cov.sum()).backward()
            else:
                with torch.no_grad():
                    model.propagate(m, c)
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times[1:])  # the first call warms caches

    return {"propagate_ms": timed(False), "propagate_grad_ms": timed(True)}


def run_bench_pilco(quick: bool = False, seeds: int = 3, max_trials: int = 10) -> tuple[dict, dict]:
    """Metrics as in the module docstring, over seeds 0 to seeds-1; quick: the propagate timings only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = propagate_speed(repeats=5 if quick else 30)
        if not quick:
            results, setting = learning_over_seeds(EXPERIMENT, range(seeds), max_trials)
            metrics["trials_to_success"] = [r.first_success for r in results]
            metrics.update(distribution_metrics("trials_to_success", setting))
            metrics["success_rate"] = setting["success_rate"]
            metrics["failed_runs"] = len(setting["failed"])
            metrics["interaction_s"] = [r.interaction_s for r in results]
            updates = [t for r in results for t in r.update_s]
            metrics["iteration_s"] = statistics.median(updates) if updates else None
        experiment = load_experiment(EXPERIMENT)
        config = {
            "experiment": EXPERIMENT,
            "model": experiment.model,
            "controller": experiment.controller,
            "horizon": experiment.task.horizon,
            "seeds": list(range(seeds)),
            "max_trials": max_trials,
            "runs": "a sweep on a local Ray, one CPU each",
            "success": experiment.task.goal,
            "torch_threads": 1,
        }
        return metrics, config
    finally:
        torch.set_num_threads(threads)
