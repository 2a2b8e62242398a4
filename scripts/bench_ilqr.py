"""How fast iLQR-MPC plans on the arm, how one iLQR iteration grows with the horizon, how well it reaches.

mpc_hz: replans per second of wall time of iLQR-MPC on the arm reach experiment (`arm-reach-ilqr`:
horizon 50 steps at 50 Hz, one iteration per tick), the first tick (its warm-up iterations) left
out; reach_error_m: the end-effector's final distance to the target after the run, worst over the
targets; iteration_ms_T{50,100,200}: one full iLQR iteration (rollout, linearisation, cost
derivatives, backward pass, line search) at three horizons, median of repeats.

Each iteration time stands beside its floor (`floor_ms_T*`, `iteration_over_floor_T*`): the
MuJoCo steps a finite-difference iteration needs, T states x (n + m + 1) x physics steps per
action (n + m perturbed steps for the derivatives, one nominal step of the rollout), at the
physics step time this core reaches in C (`physics_step_us`: n + m + 1 rollouts of the trajectory's
own T actions in one mujoco.rollout call without threads, right after each iteration; the ratio is
the median over the repeats of each iteration over the floor measured after it), plus
the backward pass's multiply-adds at this core's float64 matrix-product rate (`matmul_gflops`,
one BLAS thread). mjd_transitionFD needs fewer than n + m steps per state (it skips the position
stage for velocity and action perturbations), and the line search may roll out more than once:
the ratio says how far the Python around MuJoCo and the small matrices are from that work.
On a machine that others load, wall time swings with their work: `iteration_cpu_ms_T*`,
`iteration_cpu_over_floor_T*` and `mpc_tick_cpu_ms` set the process's CPU time against the floor's
CPU time instead (with threads, their CPU time adds up).
The model's MuJoCo threads (`model_threads`, torch's thread count) share the derivatives; the
floor is one core's.
"""

from __future__ import annotations

import os
import time

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout
from threadpoolctl import threadpool_limits

from forethought.controllers.costs import build_cost
from forethought.controllers.ilqr import ILQR
from forethought.controllers.mpc import ILQRMPCConfig
from forethought.robots.config import from_mapping
from forethought.robots.trial import rollout
from forethought.scripts.experiment import build_parts, load_experiment

EXPERIMENT = "arm-reach-ilqr"


class _TimedPolicy:
    """A policy that records how long each act() after the first takes: wall and process CPU seconds."""

    def __init__(self, policy):
        self.policy, self.ticks, self.cpu = policy, [], []

    def reset(self) -> None:
        self.policy.reset()

    def act(self, x, t):
        started, cpu = time.perf_counter(), time.process_time()
        u = self.policy.act(x, t)
        if t > 0:
            self.ticks.append(time.perf_counter() - started)
            self.cpu.append(time.process_time() - cpu)
        return u


def _mpc_runs(experiment, conditions: int):
    """(tick seconds after the first, their CPU seconds, final end-effector errors m by the task's goal)
    over the first `conditions` conditions."""
    parts = build_parts(experiment)
    robot, task, model = parts.robot, parts.task, parts.model
    ticks: list[float] = []
    cpu: list[float] = []
    errors: list[float] = []
    with robot:
        for c in range(conditions):
            task.apply(c, robot, [model])
            policy = _TimedPolicy(parts.controller.policy(c))
            trial = rollout(robot, policy, task.horizon, seed=c)
            ticks += policy.ticks
            cpu += policy.cpu
            errors.append(task.judge(trial, c).value)
    return np.array(ticks), np.array(cpu), np.array(errors)


def physics_step_s(model, x0: np.ndarray, U: np.ndarray, copies: int) -> tuple[float, float]:
    """Seconds per physics step of the planning model on this core, in C: `copies` rollouts of U's
    actions (T, m) from x0 (n,) in one mujoco.rollout call on the calling thread (as many steps as
    the floor counts, so that the step time and the iteration it is set against see the same load);
    wall and this thread's CPU seconds."""
    steps = copies * len(U) * model.control_steps
    state = np.empty(mujoco.mj_stateSize(model.model, mujoco.mjtState.mjSTATE_FULLPHYSICS))
    mujoco.mj_getState(model.model, model.data, state, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    state[1 : 1 + model.n] = x0
    control = np.repeat(U, model.control_steps, axis=0)[None].repeat(copies, axis=0)
    runner = mj_rollout.Rollout(nthread=0)
    started, cpu = time.perf_counter(), time.thread_time()
    runner.rollout(model.model, [model.data], np.tile(state, (copies, 1)), control)
    return (time.perf_counter() - started) / steps, (time.thread_time() - cpu) / steps


def backward_macs(T: int, n: int, m: int) -> int:
    """Multiply-adds of one lqr_backward at horizon T: per step Q = L + F^T V F with F (n+1, n+1+m),
    the m x m Cholesky inverse, the gains G = -inv(Q_uu) R (m, n+1) and V = Q_ss + G^T Q_uu G + G^T R + R^T G."""
    p = n + 1
    per_step = (p + m) * p * p + (p + m) * p * (p + m) + m**3 + m * m * p + (p * m * m + p * m * p) + p * m * p
    return T * per_step


def matmul_rate(size: int = 256, repeats: int = 10) -> float:
    """Multiply-adds per second of a float64 size x size matrix product on one BLAS thread (best of repeats)."""
    a, b = np.random.default_rng(0).standard_normal((2, size, size))
    out = np.empty((size, size))
    best = float("inf")
    with threadpool_limits(1):
        for _ in range(repeats):
            started = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - started)
    return size**3 / best


def _iteration_ms(experiment, horizon: int, repeats: int, rate: float) -> dict:
    """Median ms of one iLQR iteration at `horizon` steps from a partly optimised reach trajectory,
    its floor (see the module docstring) and the physics step time, measured between the iterations."""
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
    per_state = spec.n + spec.m + 1
    backward_s = backward_macs(horizon, spec.n, spec.m) / rate
    physics_steps = horizon * per_state * model.control_steps
    times, cpu_times, steps, ratios, cpu_ratios = [], [], [], [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        solver.solve(x0, U, max_iterations=1)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu)
        step_s, step_cpu_s = physics_step_s(model, x0, U, per_state)
        steps.append(step_s)
        ratios.append(times[-1] / (physics_steps * step_s + backward_s))
        cpu_ratios.append(cpu_times[-1] / (physics_steps * step_cpu_s + backward_s))
    floor_s = physics_steps * float(np.median(steps)) + backward_s
    return {f"iteration_ms_T{horizon}": 1e3 * float(np.median(times)), f"floor_ms_T{horizon}": 1e3 * floor_s,
            # Each iteration against the floor measured right after it (the load changes in between).
            f"iteration_over_floor_T{horizon}": float(np.median(ratios)),
            f"iteration_cpu_ms_T{horizon}": 1e3 * float(np.median(cpu_times)),
            f"iteration_cpu_over_floor_T{horizon}": float(np.median(cpu_ratios)),
            f"physics_step_us_T{horizon}": 1e6 * float(np.median(steps)), "model_threads": getattr(model, "threads", 1)}


def run_bench_ilqr(quick: bool = False) -> tuple[dict, dict]:
    """Metrics mpc_hz, mpc_tick_ms_p95, reach_error_m, iteration_ms_T50/T100/T200, floor_ms_T*,
    iteration_over_floor_T*, physics_step_us, matmul_gflops (see the module docstring)."""
    experiment = load_experiment(EXPERIMENT)
    conditions = 1 if quick else 3
    ticks, cpu, errors = _mpc_runs(experiment, conditions)
    metrics = {
        "mpc_hz": float(1.0 / ticks.mean()),
        "mpc_tick_cpu_ms": float(1e3 * cpu.mean()),
        "mpc_tick_ms_p95": float(1e3 * np.percentile(ticks, 95)),
        "reach_error_m": float(errors.max()),
    }
    repeats = 3 if quick else 10
    rate = matmul_rate()
    for horizon in (50, 100, 200):
        metrics.update(_iteration_ms(experiment, horizon, repeats, rate))
    metrics["physics_step_us"] = float(np.median([metrics.pop(f"physics_step_us_T{h}") for h in (50, 100, 200)]))
    metrics["matmul_gflops"] = 2e-9 * rate
    threads = metrics.pop("model_threads")
    metrics["iteration_growth_T200_over_T50"] = metrics["iteration_ms_T200"] / metrics["iteration_ms_T50"]
    config = {
        "experiment": EXPERIMENT,
        "scene": experiment.robot.scene,
        "targets": conditions,
        "trial_steps": experiment.task.horizon,
        "model": experiment.model,
        "controller": {k: v for k, v in experiment.controller.items() if k != "ilqr"},
        "iteration_repeats": repeats,
        "model_threads": threads,
        # Timings depend on what else the machine runs: its 1-minute load average when done.
        "load_average_1min": os.getloadavg()[0],
    }
    return metrics, config
