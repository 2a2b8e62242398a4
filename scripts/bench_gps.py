"""`forethought bench gps`: guided policy search on the arm, reach and peg insertion.

Runs the shipped experiments arm-reach-gps, arm-peg-gps and arm-peg-mdgps through the experiment
loop (samples per condition, the local models refitted, then an update), without writing run
folders, and measures by each experiment's own goal (task.goal):

- reach_iterations: the first iteration whose samples end with the end-effector within 2 cm of
  the target on average over conditions (iteration 1 samples the initial controllers);
- peg_success_rate: the fraction of the last iteration's samples that reach the goal (the peg tip
  within 5 mm of the hole's bottom); peg_iterations: the first iteration where that fraction
  reaches 0.9;
- mdgps_heldout_success: the neural-network policy alone, without noise, on hole positions it
  was not trained on;
- samples_used: trials run on the robot in all three.

With `--seeds N` each of the three experiments also runs over seeds 0 to N-1 as a sweep (a local
Ray, one CPU per run), judged by its own goal: {reach,peg,mdgps}_seeds_success_rate (the seeds
with a trial that reached it), _seeds_final_success_rate (the last iteration's trials that did,
averaged over seeds), _seeds_iterations_to_success_median, _quartiles and _ci95 (the first
iteration with a success, over the seeds that had one), _seeds_failed_runs; seeds_wall_s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

EXPERIMENTS = {"reach": "arm-reach-gps", "peg": "arm-peg-gps", "mdgps": "arm-peg-mdgps"}
REACH_TOLERANCE_M = 0.02
PEG_TOLERANCE_M = 0.005
# Hole-bottom positions between the training holes of arm-peg-mdgps (a 2 cm grid), 1 cm off it.
HELDOUT_HOLES = [[0.19, -0.07], [0.21, -0.05], [0.19, -0.05], [0.21, -0.07], [0.20, -0.05]]
HELDOUT_SEEDS = (0, 1)


def train(name: str, iterations: int | None, conditions: int | None = None):
    """Run experiment `name` through the experiment loop for `iterations` (default: its own), on its
    first `conditions` conditions (default: all), without a run folder. Returns (parts, goal values
    per iteration [iteration][trial] in m, diagnostics)."""
    from forethought.robots.trial import rollout
    from forethought.scripts.experiment import build_parts, load_experiment
    from forethought.scripts.run import RunResult, judge_trial, make_cost, run_loop

    experiment = load_experiment(name)
    if iterations:
        experiment.loop.iterations = iterations
    if conditions:
        experiment.task.conditions = experiment.task.conditions[:conditions]
    parts = build_parts(experiment)
    robot, task, model = parts.robot, parts.task, parts.model
    costs = [make_cost(experiment, robot, condition) for condition in task.conditions]
    result = RunResult(Path("."), [])

    def run_trial(slot, policy):
        trial = rollout(robot, policy, task.horizon, slot.seed, costs[slot.condition], slot.metadata)
        judge_trial(task, trial, slot.condition, result)
        return trial

    run_loop(experiment, task, parts.controller, lambda c: task.apply(c, robot, [model]), run_trial, result,
             None, model)
    per_iteration = len(task.conditions) * experiment.loop.samples
    values = np.reshape(result.goal_values, (-1, per_iteration))
    return parts, values, result.diagnostics


def first_iteration(values: list[float], passes: Callable[[float], bool]) -> int | None:
    """1-based index of the first value that passes, None if none does."""
    return next((i + 1 for i, v in enumerate(values) if passes(v)), None)


def over_seeds(names: dict[str, str], iterations: dict[str, int | None], seeds: int) -> dict:
    """The experiments `names` ({key: experiment}) over seeds 0 to seeds-1, one sweep each on one
    local Ray, each for `iterations[key]` iterations (None: its own): the metrics of the module
    docstring's last paragraph."""
    import tempfile

    import ray

    from forethought.scripts.bench_learning import distribution_metrics
    from forethought.scripts.sweep import execute, plan_sweep, start_ray

    metrics: dict = {}
    started = time.perf_counter()
    owned = start_ray(None, None)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for key, name in names.items():
                fixed = {"loop.iterations": iterations[key]} if iterations[key] else {}
                plan = plan_sweep(name, list(range(seeds)), {}, 1, Path(scratch) / key, fixed=fixed)
                setting = execute(plan).summary["settings"][0]
                metrics[f"{key}_seeds_success_rate"] = setting["success_rate"]
                metrics[f"{key}_seeds_final_success_rate"] = setting["final_success_rate"]
                metrics.update(distribution_metrics(f"{key}_seeds_iterations_to_success", setting,
                                                    "iterations_to_success"))
                metrics[f"{key}_seeds_failed_runs"] = len(setting["failed"])
    finally:
        if owned:
            ray.shutdown()
    metrics["seeds_wall_s"] = time.perf_counter() - started
    return metrics


def run_bench_gps(quick: bool = False, experiments: dict[str, str] | None = None,
                  seeds: int | None = None) -> tuple[dict, dict]:
    """Metrics and config of the benchmark; `experiments` replaces entries of EXPERIMENTS (names or YAML
    paths); seeds: also run each experiment over seeds 0 to seeds-1 as a sweep (module docstring)."""
    import torch

    from forethought.controllers.nn_policy import NNPolicy
    from forethought.robots.trial import rollout

    torch.set_num_threads(1)
    started = time.perf_counter()
    reach_iterations, peg_iterations, mdgps_iterations = (3, 3, 2) if quick else (None, None, None)
    metrics: dict = {}
    names = {**EXPERIMENTS, **(experiments or {})}

    _, errors, reach_diag = train(names["reach"], reach_iterations)
    reach_mean = [float(np.mean(e)) for e in errors]
    metrics["reach_iterations"] = first_iteration(reach_mean, lambda e: e < REACH_TOLERANCE_M)
    metrics["reach_final_error_m"] = reach_mean[-1]
    samples = sum(np.size(e) for e in errors)

    _, errors, peg_diag = train(names["peg"], peg_iterations)
    success = [float(np.mean(np.asarray(e) < PEG_TOLERANCE_M)) for e in errors]
    metrics["peg_success_rate"] = success[-1]
    metrics["peg_iterations"] = first_iteration(success, lambda s: s >= 0.9)
    metrics["peg_final_error_m"] = float(np.mean(errors[-1]))
    samples += sum(np.size(e) for e in errors)

    parts, errors, md_diag = train(names["mdgps"], mdgps_iterations)
    controller, robot, task = parts.controller, parts.robot, parts.task
    metrics["mdgps_train_success"] = float(np.mean(np.asarray(errors[-1]) < PEG_TOLERANCE_M))
    samples += sum(np.size(e) for e in errors)
    depth = task.conditions[0]["hole"][2]
    heldout_errors = []
    for x, y in HELDOUT_HOLES:
        condition = {key: value for key, value in task.conditions[0].items()}
        condition["hole"] = [x, y, depth]
        robot.apply_condition(0, condition)
        features = np.array(condition["hole"])
        for seed in HELDOUT_SEEDS:
            trial = rollout(robot, NNPolicy(controller.mlp, features), task.horizon, 10_000 + seed)
            heldout_errors.append(task.goal.judge(trial, condition).value)
    metrics["mdgps_heldout_success"] = float(np.mean(np.asarray(heldout_errors) < PEG_TOLERANCE_M))
    metrics["mdgps_heldout_error_m"] = float(np.mean(heldout_errors))
    metrics["samples_used"] = int(samples)
    all_diagnostics = reach_diag + peg_diag + md_diag
    # the last iteration's diagnostics hold no KL: the loop does not update the controller after it
    metrics["kl_over_bound_max"] = float(max(d["kl_over_bound"] for d in all_diagnostics if "kl_over_bound" in d))
    metrics["wall_s"] = time.perf_counter() - started
    if seeds:
        metrics.update(over_seeds(names, {"reach": reach_iterations, "peg": peg_iterations,
                                          "mdgps": mdgps_iterations}, seeds))
    config = {
        "experiments": names,
        "reach_tolerance_m": REACH_TOLERANCE_M,
        "peg_tolerance_m": PEG_TOLERANCE_M,
        "heldout_holes_xy": HELDOUT_HOLES,
        "heldout_seeds": list(HELDOUT_SEEDS),
        "quick": quick,
        "torch_threads": 1,
        "seeds": list(range(seeds)) if seeds else None,
    }
    return metrics, config
