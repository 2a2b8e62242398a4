"""`forethought bench gps`: guided policy search on the arm, reach and peg insertion.

Runs the shipped experiments arm-reach-gps, arm-peg-gps and arm-peg-mdgps as the experiment
loop does (samples per condition, then an update), without writing run folders, and measures:

- reach_iterations: the first iteration whose samples end with the end-effector within 2 cm of
  the target on average over conditions (iteration 1 samples the initial controllers);
- peg_success_rate: the fraction of the last iteration's samples with the peg tip within 5 mm
  of the hole's bottom; peg_iterations: the first iteration where that fraction reaches 0.9;
- mdgps_heldout_success: the neural-network policy alone, without noise, on hole positions it
  was not trained on;
- samples_used: trials run on the robot in all three.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from forethought.scripts.run import apply_condition

EXPERIMENTS = {"reach": "arm-reach-gps", "peg": "arm-peg-gps", "mdgps": "arm-peg-mdgps"}
REACH_TOLERANCE_M = 0.02
PEG_TOLERANCE_M = 0.005
# Hole-bottom positions between the training holes of arm-peg-mdgps (a 2 cm grid), 1 cm off it.
HELDOUT_HOLES = [[0.19, -0.07], [0.21, -0.05], [0.19, -0.05], [0.21, -0.07], [0.20, -0.05]]
HELDOUT_SEEDS = (0, 1)


def final_distance(robot, trial, site: str, goal) -> float:
    """Distance (m) of `site` from goal (3,) (a point, or a site name) at the trial's last state."""
    robot.set_state(trial.states[-1])
    point = robot.site_pos(goal) if isinstance(goal, str) else np.asarray(goal, dtype=np.float64)
    return float(np.linalg.norm(robot.site_pos(site) - point))


def train(name: str, iterations: int | None, measure: Callable, seed_offset: int = 0):
    """Run experiment `name` for `iterations` (default: its own); measure(robot, condition, trial) -> error.

    Returns (controller, robot, task, errors[iteration][condition][sample], diagnostics per iteration).
    """
    from forethought.robots.trial import rollout
    from forethought.scripts.experiment import load_experiment, make_controller, make_robot, make_task
    from forethought.scripts.run import make_cost

    experiment = load_experiment(name)
    task = make_task(experiment)
    robot = make_robot(experiment.robot)
    controller = make_controller(experiment, robot, task)
    costs = [make_cost(experiment, robot, condition) for condition in task.conditions]
    errors, diagnostics, index = [], [], 0
    for _ in range(iterations or experiment.loop.iterations):
        trials, round_errors = [], []
        for c, condition in enumerate(task.conditions):
            apply_condition(robot, condition)
            policy = controller.policy(c)
            group = []
            for _ in range(experiment.loop.samples):
                group.append(rollout(robot, policy, task.horizon, seed_offset + index, costs[c]))
                index += 1
            round_errors.append([measure(robot, condition, trial) for trial in group])
            trials.append(group)
        errors.append(round_errors)
        diagnostics.append(controller.update(trials))
    return controller, robot, task, errors, diagnostics


def first_iteration(values: list[float], passes: Callable[[float], bool]) -> int | None:
    """1-based index of the first value that passes, None if none does."""
    return next((i + 1 for i, v in enumerate(values) if passes(v)), None)


def run_bench_gps(quick: bool = False, experiments: dict[str, str] | None = None) -> tuple[dict, dict]:
    """Metrics and config of the benchmark; `experiments` replaces entries of EXPERIMENTS (names or YAML paths)."""
    import torch

    from forethought.controllers.nn_policy import NNPolicy
    from forethought.robots.trial import rollout

    torch.set_num_threads(1)
    started = time.perf_counter()
    reach_iterations, peg_iterations, mdgps_iterations = (3, 3, 2) if quick else (None, None, None)
    metrics: dict = {}
    names = {**EXPERIMENTS, **(experiments or {})}

    def reach_error(robot, condition, trial):
        return final_distance(robot, trial, "ee", condition["target"])

    def peg_error(robot, condition, trial):
        return final_distance(robot, trial, "peg_tip", "hole_bottom")

    _, _, _, errors, reach_diag = train(names["reach"], reach_iterations, reach_error)
    reach_mean = [float(np.mean(e)) for e in errors]
    metrics["reach_iterations"] = first_iteration(reach_mean, lambda e: e < REACH_TOLERANCE_M)
    metrics["reach_final_error_m"] = reach_mean[-1]
    samples = sum(np.size(e) for e in errors)

    _, _, _, errors, peg_diag = train(names["peg"], peg_iterations, peg_error)
    success = [float(np.mean(np.asarray(e) < PEG_TOLERANCE_M)) for e in errors]
    metrics["peg_success_rate"] = success[-1]
    metrics["peg_iterations"] = first_iteration(success, lambda s: s >= 0.9)
    metrics["peg_final_error_m"] = float(np.mean(errors[-1]))
    samples += sum(np.size(e) for e in errors)

    controller, robot, task, errors, md_diag = train(names["mdgps"], mdgps_iterations, peg_error)
    metrics["mdgps_train_success"] = float(np.mean(np.asarray(errors[-1]) < PEG_TOLERANCE_M))
    samples += sum(np.size(e) for e in errors)
    depth = task.conditions[0]["hole"][2]
    heldout_errors = []
    for x, y in HELDOUT_HOLES:
        condition = {key: value for key, value in task.conditions[0].items()}
        condition["hole"] = [x, y, depth]
        apply_condition(robot, condition)
        features = np.array(condition["hole"])
        for seed in HELDOUT_SEEDS:
            trial = rollout(robot, NNPolicy(controller.mlp, features), task.horizon, 10_000 + seed)
            heldout_errors.append(final_distance(robot, trial, "peg_tip", "hole_bottom"))
    metrics["mdgps_heldout_success"] = float(np.mean(np.asarray(heldout_errors) < PEG_TOLERANCE_M))
    metrics["mdgps_heldout_error_m"] = float(np.mean(heldout_errors))
    metrics["samples_used"] = int(samples)
    all_diagnostics = reach_diag + peg_diag + md_diag
    metrics["kl_over_bound_max"] = float(max(d["kl_over_bound"] for d in all_diagnostics))
    metrics["wall_s"] = time.perf_counter() - started
    config = {
        "experiments": names,
        "reach_tolerance_m": REACH_TOLERANCE_M,
        "peg_tolerance_m": PEG_TOLERANCE_M,
        "heldout_holes_xy": HELDOUT_HOLES,
        "heldout_seeds": list(HELDOUT_SEEDS),
        "quick": quick,
        "torch_threads": 1,
    }
    return metrics, config
