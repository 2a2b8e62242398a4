"""How far system identification closes the gap between the SO-101 scene and an arm that differs from
it in every parameter a reality gap lists (sim/scenes/so101_reality.yaml: damping x2, armature
x1.5, frictionloss x3, kp x0.5, kv x1.5, a 50 g payload, 0.5 deg backlash, 1 tick encoder noise,
a 4 ms servo period, 10 ms bus latency), simulated by RealityArm.

1. Data: one `arm-excite` trial (60 s, seed 0) logged from the arm; held out: another (seed 1,
   other phases, 30 s) and the three reaches of `arm-reach-ik` (2 s each) on the same arm.
2. `forethought fit --model mujoco --scene so101_reach TRAIN --validate HELDOUT` on them.
3. `arm-reach-ilqr` on the arm, planning on the nominal scene and on the identified one.

Metrics: rmse_1s_deg_{nominal,identified}_{joint}: held-out open-loop joint RMSE over 1 s windows;
rmse_1s_ratio_max: the worst joint's identified over nominal; rmse_1s_identified_max_deg;
reach_error_mm_{nominal,identified}_{c}: the end effector's final distance to target c as the
task's goal measures it (from the measured joints); reach_error_mm_*_max; fit_seconds, delay_ms,
payload_g. --quick: a 20 s trial, only kp and damping (with payload and delay) fitted, one reach.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


from forethought.robots.trial import rollout
from forethought.robots.trial_log import TrialWriter
from forethought.scripts.experiment import build_parts, load_experiment
from forethought.sim.reality import RealityArm
from forethought.sim.scenes import SCENE_DIR

SCENE = "so101_reach"
REALITY = SCENE_DIR / "so101_reality.yaml"


def log_trials(experiment_name: str, folder: Path, seed: int, horizon: int | None = None) -> list[Path]:
    """Run `experiment_name` (every condition once) on the RealityArm, logging its trials in folder/trials."""
    experiment = load_experiment(experiment_name)
    experiment.loop.seed = seed
    if horizon is not None:
        experiment.task.horizon = horizon
    paths = []
    with RealityArm(SCENE, REALITY) as robot:
        parts = build_parts(experiment, robot)
        for c in range(len(parts.task.conditions)):
            parts.task.apply(c, robot, [parts.model] if parts.model is not None else [])
            path = folder / "trials" / f"trial_{c:04d}.h5"
            meta = {"task": experiment.name, "condition": c, "controller": experiment.controller.get("type")}
            with TrialWriter(path, robot.spec, meta) as writer:
                trial = rollout(robot, parts.controller.policy(c), experiment.task.horizon, seed * 1000 + c,
                                metadata=meta, sink=writer)
                writer.finish(trial)
            paths.append(path)
    return paths


def reach_errors(scene: str | None, conditions: int) -> list[float]:
    """arm-reach-ilqr on the RealityArm planning on `scene` (None: the nominal one): final distances (m)."""
    experiment = load_experiment("arm-reach-ilqr")
    if scene is not None:
        experiment.model["scene"] = scene
    errors = []
    with RealityArm(SCENE, REALITY) as robot:
        parts = build_parts(experiment, robot)
        for c in range(conditions):
            parts.task.apply(c, robot, [parts.model])
            trial = rollout(robot, parts.controller.policy(c), experiment.task.horizon, seed=c)
            errors.append(parts.task.judge(trial, c).value)
    return errors


def run_bench_sysid(quick: bool = False) -> tuple[dict, dict]:
    """Metrics as the module docstring says."""
    from forethought.scripts.fit import add_fit_arguments
    from forethought.scripts.fit_scene import fit_scene_main

    with tempfile.TemporaryDirectory(prefix="bench-sysid-") as tmp:
        root = Path(tmp)
        train = log_trials("arm-excite", root / "excite", seed=0, horizon=1000 if quick else None)
        heldout = log_trials("arm-excite", root / "excite-heldout", seed=1, horizon=500 if quick else 1500)
        heldout += log_trials("arm-reach-ik", root / "reach-ik", seed=0)
        settings = root / "settings.yaml"
        settings.write_text("fields: [kp, damping]\n" if quick else "{}\n")
        out = root / "so101_reach_identified.xml"
        parser = argparse.ArgumentParser()
        add_fit_arguments(parser)
        args = parser.parse_args([*map(str, train), "--model", "mujoco", "--scene", SCENE, "--out", str(out),
                                  "--model-config", str(settings), "--validate", *map(str, heldout)])
        started = time.perf_counter()
        fit_scene_main(args)
        fit_seconds = time.perf_counter() - started
        report = json.loads(out.with_name(f"{out.stem}_report.json").read_text())
        conditions = 1 if quick else 3
        nominal_reach = reach_errors(None, conditions)
        identified_reach = reach_errors(str(out), conditions)

    rmse = report["open_loop_rmse_deg"]
    metrics: dict = {}
    for which in ("nominal", "identified"):
        for joint, value in rmse[which]["1s"].items():
            metrics[f"rmse_1s_deg_{which}_{joint}"] = value
    joints = list(rmse["nominal"]["1s"])
    metrics["rmse_1s_ratio_max"] = max(rmse["identified"]["1s"][j] / rmse["nominal"]["1s"][j] for j in joints)
    metrics["rmse_1s_identified_max_deg"] = max(rmse["identified"]["1s"].values())
    for which, errors in (("nominal", nominal_reach), ("identified", identified_reach)):
        for c, error in enumerate(errors):
            metrics[f"reach_error_mm_{which}_{c}"] = 1e3 * error
        metrics[f"reach_error_mm_{which}_max"] = 1e3 * max(errors)
    ident = report["identification"]
    metrics.update(fit_seconds=fit_seconds, delay_ms=1e3 * ident["delay_s"],
                   payload_g=1e3 * ident["identified"]["payload"], fit_iterations=ident["iterations"])
    config = {
        "scene": SCENE,
        "reality": str(REALITY),
        "train": "arm-excite seed 0" + (" (20 s)" if quick else " (60 s)"),
        "heldout": "arm-excite seed 1 (" + ("10" if quick else "30") + " s), arm-reach-ik (3 x 2 s)",
        "fit_settings": report["settings"],
        "identified": ident["identified"],
        "reach_targets": conditions,
        "load_average_1min": os.getloadavg()[0],
    }
    return metrics, config
