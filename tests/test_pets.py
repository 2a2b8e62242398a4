"""The PETS controller through the Robot interface: it learns, repeats exactly, and reports its model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forethought.controllers.controller import Task
from forethought.controllers.costs import build_cost
from forethought.controllers.pets import build_pets
from forethought.controllers.policy import RandomPolicy
from forethought.robots.config import ConfigError
from forethought.robots.trial import rollout
from forethought.sim.mujoco_robot import MujocoRobot

torch.set_num_threads(1)

PARAMS = {
    "planner": {"kind": "cem", "horizon": 10, "population": 100, "particles": 5, "iterations": 3, "elites": 10},
    "ensemble": {"members": 3, "hidden": [64, 64], "max_epochs": 100, "min_steps": 0, "planning_dtype": "float32"},
}


def run_pets(robot, task, iterations: int, params: dict = PARAMS):
    controller = build_pets(dict(params), robot, task)
    cost = build_cost(task.cost, robot.spec, task.scene, task.conditions[0])
    trials = []
    for i in range(iterations):
        policy = controller.policy(0)
        trial = rollout(robot, policy, task.horizon, seed=i, cost=cost)
        trials.append(trial)
        controller.update([[trial]])
    return controller, trials


def test_first_policy_is_random_then_mpc_reaches_the_goal(slider):
    robot, task = slider
    controller = build_pets(dict(PARAMS), robot, task)
    assert isinstance(controller.policy(0), RandomPolicy)
    controller, trials = run_pets(robot, task, 4)
    final = [np.linalg.norm(t.states[-1, :2] - task.conditions[0]["goal"]) for t in trials]
    assert final[-1] < 0.03, final
    assert trials[-1].total_cost < 0.5 * trials[0].total_cost
    assert controller.history[-1]["one_step_rmse"] < 0.01


def test_same_seed_same_trials(slider):
    robot, task = slider
    _, a = run_pets(robot, task, 2)
    _, b = run_pets(robot, task, 2)
    _, c = run_pets(robot, Task(**{**task.__dict__, "seed": 1}), 2)
    for x, y in zip(a, b):
        assert np.array_equal(x.states, y.states) and np.array_equal(x.actions, y.actions)
    assert not np.array_equal(a[1].actions, c[1].actions)


def test_update_measures_the_model_and_save_writes_model_and_plot(slider, tmp_path):
    robot, task = slider
    controller, _ = run_pets(robot, task, 3)
    first, later = controller.history[0], controller.history[-1]
    assert "one_step_rmse" not in first  # nothing to measure before the first fit
    for key in ("one_step_nll", "one_step_rmse", "open_loop_rmse_10", "holdout_nll", "transitions"):
        assert np.isfinite(later[key])
    assert later["transitions"] == 75
    # Per state, the error is well below the spread of the state's change: the slider is learned.
    iteration, per_state = controller.state_errors[-1]
    assert iteration == 3 and per_state.shape == (robot.spec.n,)
    assert np.all(per_state < 0.5) and later["one_step_nrmse"] == pytest.approx(per_state.mean())
    controller.save(tmp_path / "run")
    assert (tmp_path / "run" / "ensemble.pt").is_file()
    assert (tmp_path / "run" / "model_error.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "params, message",
    [
        ({"planer": {}}, "unknown key 'planer'"),
        ({"planner": {"kind": "cmaes"}}, "unknown kind 'cmaes'"),
        ({"planner": {"kind": "icem", "temperature": 1.0}}, "unknown key 'temperature' for icem"),
        ({"planner": {"kind": "cem", "population": 10, "elites": 20}}, "elites"),
        ({"propagation": "ts3"}, "unknown propagation 'ts3'"),
        ({"ensemble": {"hidden": "wide"}}, "ensemble.hidden: expected a list"),
        ({"planner": {"kind": "cem", "seed": 3}}, "planner: seed: set the controller's `seed`"),
        ({"ensemble": {"seed": 3}}, "ensemble: seed: set the controller's `seed`"),
    ],
)
def test_bad_parameters_name_the_key(slider, params, message):
    robot, task = slider
    with pytest.raises(ConfigError, match=message):
        build_pets(params, robot, task)
