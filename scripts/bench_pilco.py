"""`forethought bench pilco`: how many trials PILCO needs to swing up the cart-pole, and how fast it is.

Metrics:
- trials_to_success: per seed (0, 1, 2), the trials (the random first one included) until the first
  success: pole within 0.1 rad of upright and cart within 0.1 m of centre over the final second of a
  4 s trial (None: not within max_trials);
- interaction_s: per seed, the seconds of experience used up to and including that trial (None likewise);
- iteration_s: median wall time of one fit-plus-optimise update, over every update of every seed;
- propagate_ms: median wall time of one moment-matched step through a GP with 300 training points,
  6 inputs and 4 outputs (the cart-pole's), forward only; propagate_grad_ms: with its gradient.
One CPU thread. The experiment is the shipped cartpole-swingup-pilco on the MuJoCo scene.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from forethought.controllers.costs import build_cost
from forethought.controllers.pilco import PilcoController, build_pilco
from forethought.robots.config import from_mapping, load_yaml
from forethought.robots.trial import Trial, rollout
from forethought.scripts.bench_mpc import swingup_success
from forethought.scripts.experiment import CONFIG_DIR, Experiment, make_robot, make_task

EXPERIMENT = "cartpole-swingup-pilco"


def load_pilco_experiment(name: str = EXPERIMENT) -> Experiment:
    path = CONFIG_DIR / f"{name}.yaml"
    data = load_yaml(path)
    data.setdefault("name", name)
    experiment = from_mapping(Experiment, data, f"{path}:")
    experiment.source = str(path)
    return experiment


def learn_swingup(seed: int, max_trials: int) -> tuple[int | None, float | None, list[float]]:
    """(trials to the first success or None, seconds of experience used or None, update wall times)."""
    experiment = load_pilco_experiment()
    experiment.loop.seed = seed
    task = make_task(experiment)
    params = {k: v for k, v in experiment.controller.items() if k != "type"}
    with make_robot(experiment.robot) as robot:
        controller: PilcoController = build_pilco(params, robot, task)
        cost = build_cost(task.cost, robot.spec, task.scene, task.conditions[0])
        for index in range(max_trials):
            trial = rollout(robot, controller.policy(0), task.horizon, seed * 100_003 + index, cost)
            if swingup_success(trial):
                return index + 1, (index + 1) * task.horizon * robot.spec.dt, _update_times(controller)
            if index + 1 < max_trials:
                controller.update([[trial]])
    return None, None, _update_times(controller)


def _update_times(controller: PilcoController) -> list[float]:
    return [h["iteration_s"] for h in controller.history]


def propagate_speed(repeats: int) -> dict[str, float]:
    """Median ms of one GP propagate step at 300 cart-pole transitions (6 inputs, 4 outputs)."""
    experiment = load_pilco_experiment()
    task = make_task(experiment)
    params = {k: v for k, v in experiment.controller.items() if k != "type"}
    with make_robot(experiment.robot) as robot:
        controller = build_pilco(params, robot, task)
        policy = controller.policy(0)
        trials: list[Trial] = []
        while sum(t.horizon for t in trials) < 300:
            steps = min(task.horizon, 300 - sum(t.horizon for t in trials))
            trials.append(rollout(robot, policy, steps, seed=len(trials)))
    model = controller.model
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


def run_bench_pilco(quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2), max_trials: int = 10) -> tuple[dict, dict]:
    """Metrics as in the module docstring; quick: the propagate timings only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = propagate_speed(repeats=5 if quick else 30)
        if not quick:
            results = [learn_swingup(seed, max_trials) for seed in seeds]
            metrics["trials_to_success"] = [r[0] for r in results]
            metrics["interaction_s"] = [r[1] for r in results]
            updates = [t for r in results for t in r[2]]
            metrics["iteration_s"] = statistics.median(updates) if updates else None
        experiment = load_pilco_experiment()
        config = {
            "experiment": EXPERIMENT,
            "controller": experiment.controller,
            "horizon": experiment.task.horizon,
            "seeds": list(seeds),
            "max_trials": max_trials,
            "success": "pole within 0.1 rad of upright and cart within 0.1 m over the final 1 s",
            "torch_threads": 1,
        }
        return metrics, config
    finally:
        torch.set_num_threads(threads)
