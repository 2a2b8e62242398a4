"""Predictive sampling: the sampling planners on MuJoCo itself, as an experiment's controller."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forethought.controllers.controller import Task
from forethought.controllers.predictive_sampling import build_predictive_sampling
from forethought.models.simulator import SimulatorModel
from forethought.robots.config import ConfigError
from forethought.robots.trial import rollout

PARAMS = {"planner": {"kind": "icem", "horizon": 10, "population": 40, "elites": 5, "iterations": 2},
          "model_timestep": 0.05}


def run(robot, task, params=PARAMS):
    controller = build_predictive_sampling(dict(params), robot, task)
    trial = rollout(robot, controller.policy(0), task.horizon, seed=0)
    return controller, trial


def test_reaches_the_goal_on_the_true_dynamics_and_reports_its_replans(slider):
    robot, task = slider
    controller, trial = run(robot, task)
    assert np.linalg.norm(trial.states[-1, :2] - [0.3, -0.2]) < 0.03, trial.states[-1]
    stats = controller.update([[trial]])
    assert stats["replans"] == task.horizon and stats["solve_failures"] == 0


def test_the_planner_rolls_whole_sequences_through_the_scene_model(slider):
    robot, task = slider
    planner = build_predictive_sampling(dict(PARAMS), robot, task).policy(0).planner
    assert isinstance(planner.dynamics, SimulatorModel) and planner.dynamics.control_steps == 2


def test_same_seed_same_trial_at_any_thread_count(slider):
    robot, task = slider
    controller, a = run(robot, task)
    assert controller.policy(0).planner.dynamics.threads == torch.get_num_threads()
    _, b = run(robot, task)
    assert np.array_equal(a.actions, b.actions)
    threaded, c = run(robot, task, {**PARAMS, "model_threads": 2})
    assert threaded.policy(0).planner.dynamics.threads == 2
    assert np.array_equal(a.actions, c.actions)  # the rows are independent: threads only share them out


@pytest.mark.parametrize(
    "params, message",
    [
        ({"planner": {"kind": "annealing"}}, "unknown kind 'annealing'"),
        ({"planner": {"kind": "cem", "popsize": 10}}, "unknown key 'popsize' for cem"),
        ({"planner": {"kind": "cem", "seed": 1}}, "set the controller's `seed`"),
        ({"model_timestep": 0.03}, "not a whole number of 0.03 s steps"),
        ({"replan_every": 0}, "replan_every must be at least 1"),
        ({"model_threads": 0}, "model_threads must be at least 1"),
    ],
)
def test_bad_parameters_name_the_key(slider, params, message):
    robot, task = slider
    with pytest.raises(ConfigError, match=message):
        build_predictive_sampling(params, robot, task)


def test_needs_a_scene_and_a_cost(slider):
    robot, task = slider
    with pytest.raises(ConfigError, match="has none"):
        build_predictive_sampling({}, robot, Task(horizon=5, cost=task.cost, conditions=task.conditions))
    with pytest.raises(ConfigError, match="needs the task's `cost`"):
        build_predictive_sampling({}, robot, Task(horizon=5, cost={}, conditions=({},), scene=task.scene))
