"""How fast iLQR-MPC plans on the arm, how one iLQR iteration grows with the horizon, how well it reaches.

mpc_hz: replans per second of wall time of iLQR-MPC on the arm reach experiment (`arm-reach-ilqr`:
horizon 50 steps at 50 Hz, one iteration per tick), the first tick (its warm-up iterations) left
out; reach_error_m: the end-effector's final distance to the target after the run, worst over the
targets; iteration_ms_T{50,100,200}: one full iLQR iteration (rollout, linearisation, cost
derivatives, backward pass, line search) at three horizons, median of repeats.
Everything runs on the calling thread (one core).
"""

from __future__ import annotations

import os
import time

import numpy as np

from forethought.controllers.costs import build_cost
from forethought.controllers.ilqr import ILQR
from forethought.controllers.mpc import ILQRMPCConfig
from forethought.robots.config import from_mapping
from forethought.robots.trial import rollout
from forethought.scripts.experiment import build_parts, load_experiment

EXPERIMENT = "arm-reach-ilqr"


class _TimedPolicy:
    """A policy that records how long each act() after the first takes."""

    def __init__(self, policy):
        self.policy, self.ticks = policy, []

    def reset(self) -> None:
        self.policy.reset()

    def act(self, x, t):
        started = time.perf_counter()
        u = self.policy.act(x, t)
        if t > 0:
            self.ticks.append(time.perf_counter() - started)
        return u


def _mpc_runs(experiment, conditions: int):
    """(tick seconds after the first, final end-effector errors m by the task's goal) over the first
    `conditions` conditions."""
    parts = build_parts(experiment)
    robot, task, model = parts.robot, parts.task, parts.model
    ticks: list[float] = []
    errors: list[float] = []
    with robot:
        for c in range(conditions):
            task.apply(c, robot, [model])
            policy = _TimedPolicy(parts.controller.policy(c))
            trial = rollout(robot, policy, task.horizon, seed=c)
            ticks += policy.ticks
            errors.append(task.judge(trial, c).value)
    return np.array(ticks), np.array(errors)


def _iteration_ms(experiment, horizon: int, repeats: int) -> float:
    """Median ms of one iLQR iteration at `horizon` steps from a partly optimised reach trajectory."""
    parts = build_parts(experiment)
    robot, task, model = parts.robot, parts.task, parts.model
    config = from_mapping(ILQRMPCConfig, {k: v for k, v in experiment.controller.items() if k != "type"}, "controller:")
    with robot:
        task.apply(0, robot, [model])
        x0 = robot.reset(seed=0)
        spec = robot.spec
    cost = build_cost(task.cost, spec, task.scene, task.conditions[0])
    solver = ILQR(model, cost, spec.action_low, spec.action_high, config.ilqr)
    hold = np.array([spec.state_names.index(a) for a in spec.action_names])
    U = solver.solve(x0, np.tile(x0[hold], (horizon, 1)), max_iterations=3).U
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        solver.solve(x0, U, max_iterations=1)
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def run_bench_ilqr(quick: bool = False) -> tuple[dict, dict]:
    """Metrics mpc_hz, mpc_tick_ms_p95, reach_error_m, iteration_ms_T50/T100/T200 (see the module docstring)."""
    experiment = load_experiment(EXPERIMENT)
    conditions = 1 if quick else 3
    ticks, errors = _mpc_runs(experiment, conditions)
    metrics = {
        "mpc_hz": float(1.0 / ticks.mean()),
        "mpc_tick_ms_p95": float(1e3 * np.percentile(ticks, 95)),
        "reach_error_m": float(errors.max()),
    }
    repeats = 3 if quick else 10
    for horizon in (50, 100, 200):
        metrics[f"iteration_ms_T{horizon}"] = _iteration_ms(experiment, horizon, repeats)
    metrics["iteration_growth_T200_over_T50"] = metrics["iteration_ms_T200"] / metrics["iteration_ms_T50"]
    config = {
        "experiment": EXPERIMENT,
        "scene": experiment.robot.scene,
        "targets": conditions,
        "trial_steps": experiment.task.horizon,
        "model": experiment.model,
        "controller": {k: v for k, v in experiment.controller.items() if k != "ilqr"},
        "iteration_repeats": repeats,
        # Timings depend on what else the machine runs: its 1-minute load average when done.
        "load_average_1min": os.getloadavg()[0],
    }
    return metrics, config
