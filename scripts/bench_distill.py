"""`forethought bench distill`: the arm reach's iLQR-MPC planner distilled into a network (DAgger).

Trains the shipped experiment arm-reach-distill through the experiment loop (no run folder): the
planner (arm-reach-ilqr's iLQR-MPC on the MuJoCo scene) reaches its ten targets, then the network
acts and is refitted on the planner's actions at the states it visits. Then, on one core (torch
and BLAS at one thread):

- policy_success, policy_final_distance_m (per target): the network alone, without noise, from the
  scene's start, judged by the task's goal (within 1 cm at the end), one trial per target;
- policy_ms_per_action_median, _p99: `NNPolicy.act` (state and target in, joint targets out) over
  the states of those trials; planner_ms_per_action_median, _p99: the planner's `act` on the same
  targets (every tick after the first, whose warm-up iterations are left out), and
  planner_final_distance_m: where the planner itself ends;
- deployed_*: `forethought deploy arm-reach-distill --policy RUN --realtime` on the emulated SO-101
  (the bus emulator in its own process, as bench servo_loop starts it) at 50 Hz, one trial per
  target: the loop's own period (deployed_loop_period_p99_ms, _max_ms: between the loop's ticks,
  worst trial, as deploy reports it; deployed_period_p99_ms_per_trial), the period between the
  trials' timestamps (the end of each read, so the bus read's jitter shows in it too: mean, p99,
  how many over 21 ms), the bus read's p99, the scheduling the loop got, the controller's p99 per
  tick (worst trial), the final end-effector distance
  per target (deployed_final_distance_m) and how many end within 1 cm; the 1-minute load average
  when done, for timings on a shared machine;
- dagger_expert_gap_per_iteration: the mean distance (rad) between the network's mean and the planner's
  actions at the states the network visited, before each refit; train_wall_s.

`--quick` trains three DAgger iterations on the first three targets and deploys on those.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np

EXPERIMENT = "arm-reach-distill"
WITHIN_M = 0.01


def policy_runs(mlp, experiment, conditions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network alone on the first `conditions` targets: final distances (m), and the time (s) of
    every act() (repeated over the trials' states)."""
    from forethought.controllers.nn_policy import NNPolicyController
    from forethought.robots.trial import rollout
    from forethought.scripts.experiment import make_robot, make_task

    robot = make_robot(experiment.robot)
    task = make_task(experiment, robot)
    controller = NNPolicyController(mlp, task.conditions)
    distances, states = [], []
    with robot:
        for c in range(conditions):
            task.apply(c, robot)
            trial = rollout(robot, controller.policy(c), task.horizon, seed=c)
            distances.append(task.judge(trial, c).value)
            states.append(trial.states[:-1])
    times = []
    for c in range(conditions):
        policy = controller.policy(c)
        for t, x in enumerate(states[c]):
            started = time.perf_counter()
            policy.act(x, t)
            times.append(time.perf_counter() - started)
    return np.array(distances), np.array(times), np.concatenate(states)


def deployed_runs(run_folder: Path, conditions: int) -> dict:
    """`deploy arm-reach-distill --policy RUN_FOLDER` on the emulated SO-101, one trial per target."""
    from forethought.robots.arm_description import load_arm
    from forethought.scripts.bench_servo import TIMEOUT_MARGIN_MS, calibrate_through, start_emulator, stop_emulator
    from forethought.scripts.deploy import deploy, use_policy
    from forethought.scripts.experiment import load_experiment

    experiment = load_experiment(EXPERIMENT)
    experiment.task.conditions = experiment.task.conditions[:conditions]
    experiment.loop.iterations = 1
    use_policy(experiment, run_folder)
    arm = load_arm("so101")
    process, port = start_emulator("so101", "--seed", "1")
    try:
        calibration = calibrate_through(process, arm, port)
        with tempfile.TemporaryDirectory() as out:
            result = deploy(experiment, arm, port, calibration, Path(out), timeout_margin_ms=TIMEOUT_MARGIN_MS,
                            stream=io.StringIO(), realtime=True)
    finally:
        stop_emulator(process)
    distances = np.array(result.reach_error_m)
    periods = 1e3 * np.concatenate([np.diff(trial.timestamps) for trial in result.trials])
    return {
        "deployed_period_mean_ms": float(periods.mean()),
        "deployed_period_p99_ms": float(np.percentile(periods, 99)),
        "deployed_periods_over_21ms": int(np.sum(periods > 21.0)),
        "deployed_periods": int(len(periods)),
        "deployed_period_p99_ms_per_trial": [stats["period_p99_ms"] for stats in result.loop],
        "deployed_loop_period_p99_ms": max(stats["period_p99_ms"] for stats in result.loop),
        "deployed_loop_period_max_ms": max(stats["period_max_ms"] for stats in result.loop),
        "deployed_bus_read_p99_ms": max(stats["bus_read_p99_ms"] for stats in result.loop),
        "deployed_scheduling": result.loop[0].get("scheduling"),
        "deployed_load_average_1min": os.getloadavg()[0],
        "deployed_controller_p99_ms": max(stats["controller_p99_ms"] for stats in result.loop),
        "deployed_overruns": int(sum(stats["overruns"] for stats in result.loop)),
        "deployed_success": int(np.sum(distances < WITHIN_M)),
        "deployed_final_distance_m": distances.tolist(),
    }


def run_bench_distill(quick: bool = False) -> tuple[dict, dict]:
    """Metrics of the module docstring."""
    import torch
    from threadpoolctl import threadpool_limits

    from forethought.scripts.bench_gps import train
    from forethought.scripts.bench_ilqr import _mpc_runs
    from forethought.scripts.experiment import load_experiment

    experiment = load_experiment(EXPERIMENT)
    conditions = 3 if quick else len(experiment.task.conditions)
    iterations = 4 if quick else experiment.loop.iterations
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            started = time.perf_counter()
            parts, values, diagnostics = train(EXPERIMENT, iterations, conditions)
            train_s = time.perf_counter() - started
            mlp = parts.controller.mlp
            distances, times, _ = policy_runs(mlp, experiment, conditions)
            planner_ticks, _, planner_distances = _mpc_runs(experiment, conditions)
        with tempfile.TemporaryDirectory() as run:
            mlp.save(Path(run) / "models" / "nn_policy.pt")
            deployed = deployed_runs(Path(run), conditions)
    finally:
        torch.set_num_threads(threads)
    metrics = {
        "policy_success": int(np.sum(distances < WITHIN_M)),
        "targets": conditions,
        "policy_final_distance_m": distances.tolist(),
        "policy_ms_per_action_median": 1e3 * float(np.median(times)),
        "policy_ms_per_action_p99": 1e3 * float(np.percentile(times, 99)),
        "planner_ms_per_action_median": 1e3 * float(np.median(planner_ticks)),
        "planner_ms_per_action_p99": 1e3 * float(np.percentile(planner_ticks, 99)),
        "planner_final_distance_m": planner_distances.tolist(),
        **deployed,
        "dagger_expert_gap_per_iteration": [d["expert_gap"] for d in diagnostics if "expert_gap" in d],
        "dagger_final_iteration_success": int(np.sum(values[-1] < WITHIN_M)),
        "labelled_samples": int(len(parts.controller.labels)),
        "train_wall_s": train_s,
    }
    config = {
        "experiment": EXPERIMENT,
        "iterations": iterations,
        "controller": experiment.controller,
        "threads": 1,
        "emulator": "so101, separate process, pty, seed 1",
        # Timings depend on what else the machine runs: its 1-minute load average when done.
        "load_average_1min": os.getloadavg()[0],
    }
    return metrics, config
