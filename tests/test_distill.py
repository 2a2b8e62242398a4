"""MPC distillation (controllers/distill.py): DAgger on iLQR-MPC's actions for the arm reach."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from forethought.robots.config import ConfigError
from forethought.robots.trial import rollout
from forethought.scripts.deploy import use_policy
from forethought.scripts.experiment import build_parts, load_experiment
from forethought.scripts.run import run_experiment


def small_distill(iterations: int):
    """arm-reach-distill at a small size: two of its targets, 1 s trials, a smaller network."""
    experiment = load_experiment("arm-reach-distill")
    experiment.task.horizon = 50
    experiment.task.conditions = experiment.task.conditions[:2]
    experiment.loop.iterations = iterations
    experiment.loop.video = False
    experiment.controller["distill"] = dict(experiment.controller["distill"], hidden=[64, 64], epochs=200)
    return experiment


def test_the_distilled_network_reaches_the_planners_targets_alone(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_experiment(small_distill(iterations=6), tmp_path, render_video=False)
    finally:
        torch.set_num_threads(threads)
    # The planner's own trials (iteration 1) are its labels; each later iteration's states are
    # labelled by replaying the planner along them: 50 labels per trial, all kept.
    diagnostics = result.diagnostics
    assert [d["samples"] for d in diagnostics[:3]] == [100.0, 200.0, 300.0]
    assert "expert_gap" not in diagnostics[0] and all(d["expert_gap"] > 0 for d in diagnostics[1:3])
    # DAgger's on-policy error (the network's mean actions against the planner's where the network
    # went) falls: measured 0.28 rad after the first refit, 0.053 and 0.061 after the fourth (seeds 0, 1).
    gaps = [d["expert_gap"] for d in diagnostics if "expert_gap" in d]
    assert len(gaps) == 4 and gaps[-1] < 0.5 * gaps[0], gaps
    # The saved network, run alone as `deploy --policy RUN` runs it, from 8 starts it did not learn
    # from: measured median final distance 1.9 and 3.6 mm (seeds 0, 1; OpenBLAS Haswell, one thread),
    # the worst 19 and 10 mm; the first network, fitted to the planner's own trials only, ends 70 to
    # 100 mm away.
    experiment = small_distill(iterations=1)
    use_policy(experiment, result.folder)
    parts = build_parts(experiment)
    distances = []
    with parts.robot as robot:
        for c in range(2):
            for start in range(4):
                parts.task.apply(c, robot)
                trial = rollout(robot, parts.controller.policy(c), parts.task.horizon, seed=100 + c + 10 * start)
                distances.append(parts.task.judge(trial, c).value)
    assert np.median(distances) < 0.01 and max(distances) < 0.05, np.round(distances, 4)


def test_distill_is_an_option_of_planning_controllers_only(tmp_path):
    experiment = load_experiment("arm-reach-distill")
    experiment.controller["distill"] = dict(experiment.controller["distill"], layers=3)
    with pytest.raises(ConfigError, match=r"controller \(ilqr_mpc\): distill: unknown key 'layers'"):
        build_parts(experiment)
    experiment.controller["distill"] = {"features": ["hole"]}
    with pytest.raises(ConfigError, match="no 'hole'"):
        build_parts(experiment)
    experiment.controller["distill"] = {"expert_iterations": 0}
    with pytest.raises(ConfigError, match="expert_iterations must be at least 1"):
        build_parts(experiment)
    ik = load_experiment("arm-reach-ik")
    ik.controller = {"type": "ik_reach", "distill": {"features": ["target"]}}
    with pytest.raises(ConfigError, match="distill: is an option of a planning controller .* not of ik_reach"):
        build_parts(ik)


def test_a_network_that_acts_is_labelled_by_the_planner_at_the_states_it_visits():
    experiment = small_distill(iterations=2)
    experiment.task = dataclasses.replace(experiment.task, horizon=10)
    parts = build_parts(experiment)
    controller = parts.controller
    robot, task = parts.robot, parts.task
    with robot:
        task.apply(0, robot, [parts.model])
        expert_trial = rollout(robot, controller.policy(0), 10, seed=0)
        controller.update([[expert_trial], []])
        assert controller.network_acts
        task.apply(0, robot, [parts.model])
        network_trial = rollout(robot, controller.policy(0), 10, seed=1)
    labels = controller.expert_actions(0, network_trial.states)
    # The planner's first action from the network's start is its own action from there: the same
    # warm-up iterations from the same state.
    task.apply(0, robot, [parts.model])
    first = controller.expert.policy(0).act(network_trial.states[0], 0)
    np.testing.assert_allclose(labels[0], first)
    assert labels.shape == (10, robot.spec.m) and not np.allclose(labels, network_trial.actions)
    np.testing.assert_array_equal(controller.labels, expert_trial.requested_actions)
