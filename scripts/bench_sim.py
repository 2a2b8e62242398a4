"""How fast the arm scene simulates at its control rate, on one core."""

from __future__ import annotations

import time

import numpy as np

from forethought.sim.mujoco_robot import MujocoRobot


def run_bench_sim(quick: bool = False, scene: str = "so101_reach") -> tuple[dict, dict]:
    """Steps of the arm per second of wall time under smooth random position targets."""
    robot = MujocoRobot(scene)
    steps = 500 if quick else 5000
    rng = np.random.default_rng(0)
    low, high = robot.spec.action_low, robot.spec.action_high
    home = robot.reset(seed=0)[: robot.spec.m]
    # Slowly varying targets keep the arm moving (contacts, actuator forces) like a real task.
    targets = home + np.cumsum(rng.normal(0.0, 0.02, (steps, robot.spec.m)), axis=0)
    targets = np.clip(targets, low, high)
    start = time.perf_counter()
    for u in targets:
        robot.step(u)
    elapsed = time.perf_counter() - start
    steps_per_s = steps / elapsed
    metrics = {"arm_steps_per_s": steps_per_s, "realtime_factor": steps_per_s * robot.spec.dt}
    config = {"scene": scene, "steps": steps, "control_dt_s": robot.spec.dt, "control_steps": robot.control_steps}
    return metrics, config
