"""What a latency between the measured state and the goal's effect does to reaching, and what
planning through it (controllers.delay) changes.

The arm is RealityArm(so101_reach) whose only gap is a bus latency (a goal acts `latency` after the
tick whose state it answers); `arm-reach-ilqr` reaches its three targets planning on the nominal
scene, once ignoring the latency (model.action_delay 0) and once knowing it (model.action_delay =
the latency: the state is predicted over it under the goals in force).

Metrics, per latency L in ms and planning (`ignored`, `known`): reach_final_mm_L_{ignored,known}:
the end effector's final distance to its target, worst of three; reach_mean_1to2s_mm_L_*: its
mean distance over the trial's second second (oscillation and creep), worst of three;
settle_ms_L_*: from when on it stays within 5 mm, worst of three. --quick: 20 ms only.
"""

from __future__ import annotations

import numpy as np

from forethought.robots.trial import rollout
from forethought.scripts.experiment import build_parts, load_experiment
from forethought.sim.reality import RealityArm, Reality

SCENE = "so101_reach"
LATENCIES_MS = (10, 20, 40)
SETTLED_MM = 5.0


def reach(latency: float, known: bool) -> dict[str, float]:
    """arm-reach-ilqr on an arm with `latency` s, planning with it `known` or not: worst-of-three metrics."""
    experiment = load_experiment("arm-reach-ilqr")
    reality = Reality.from_mapping({"latency": latency}, f"latency {latency} s")
    final, mean, settle = [], [], []
    with RealityArm(SCENE, reality) as robot:
        experiment.model["action_delay"] = latency if known else 0.0
        parts = build_parts(experiment, robot)
        for c, condition in enumerate(experiment.task.conditions):
            parts.task.apply(c, robot, [parts.model])
            trial = rollout(robot, parts.controller.policy(c), experiment.task.horizon, seed=c)
            target = np.asarray(condition["target"], dtype=np.float64)
            distance = []
            for x in trial.states:
                robot.set_state(x)
                distance.append(1e3 * np.linalg.norm(robot.site_pos("ee") - target))
            distance = np.array(distance)
            second = int(round(1.0 / robot.spec.dt))
            final.append(distance[-1])
            mean.append(distance[second:].mean())
            outside = np.flatnonzero(distance > SETTLED_MM)
            settle.append(1e3 * robot.spec.dt * (outside[-1] + 1 if outside.size else 0))
    return {"final": max(final), "mean": max(mean), "settle": max(settle)}


def run_bench_latency(quick: bool = False) -> tuple[dict, dict]:
    """Metrics as the module docstring says."""
    metrics: dict[str, float] = {}
    latencies = (20,) if quick else LATENCIES_MS
    for ms in latencies:
        for planning in ("ignored", "known"):
            result = reach(ms * 1e-3, planning == "known")
            metrics[f"reach_final_mm_{ms}_{planning}"] = result["final"]
            metrics[f"reach_mean_1to2s_mm_{ms}_{planning}"] = result["mean"]
            metrics[f"settle_ms_{ms}_{planning}"] = result["settle"]
    return metrics, {"scene": SCENE, "experiment": "arm-reach-ilqr", "latencies_ms": list(latencies),
                     "settled_within_mm": SETTLED_MM}
