"""Sampling MPC as an experiment's controller, on MuJoCo itself (predictive sampling) and on the
learned ensemble (PETS), through the one experiment loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from forethought.controllers.controller import Task
from forethought.controllers.policy import RandomPolicy
from forethought.models.simulator import SimulatorModel
from forethought.robots.config import ConfigError
from forethought.robots.trial import rollout
from forethought.robots.trial_log import load_trials
from forethought.scripts.experiment import build_parts, load_experiment
from forethought.scripts.run import run_experiment

from conftest import SLIDER

PLANNER = "{type: sampling_mpc, kind: icem, horizon: 10, population: 40, elites: 5, iterations: 2}"


def slider_experiment(tmp_path, model: str, controller: str = PLANNER, iterations: int = 1) -> str:
    """An experiment file for the slider scene (conftest): bring the mass to (0.3, -0.2) in 25 steps."""
    scene = tmp_path / "slider.xml"
    scene.write_text(SLIDER)
    path = tmp_path / "slider.yaml"
    path.write_text(
        f"robot: {{scene: {scene}}}\n"
        "task:\n"
        "  horizon: 25\n"
        "  cost: {terms: [{type: state, weights: {x: 1.0, y: 1.0}, target: goal}, {type: action, weights: 0.001}]}\n"
        "  goal: {type: state_distance, states: [x, y], target: goal, within: 0.03}\n"
        "  conditions: [{goal: [0.3, -0.2]}]\n"
        f"model: {model}\n"
        f"controller: {controller}\n"
        f"loop: {{iterations: {iterations}, samples: 1, seed: 0, video: false}}\n"
    )
    return str(path)


def test_on_mujoco_it_reaches_the_goal_and_reports_its_replans(tmp_path):
    run = run_experiment(load_experiment(slider_experiment(tmp_path, "{type: mujoco, timestep: 0.05}")),
                         tmp_path / "runs")
    summary = json.loads((run.folder / "summary.json").read_text())
    assert summary["success"] == [True] and summary["goal_values"][0] < 0.03
    assert summary["diagnostics"][0]["replans"] == 25 and summary["diagnostics"][0]["solve_failures"] == 0


def test_on_mujoco_the_planner_rolls_whole_sequences_through_the_scene_model(tmp_path):
    parts = build_parts(load_experiment(slider_experiment(tmp_path, "{type: mujoco, timestep: 0.05, threads: 2}")))
    planner = parts.controller.policy(0).planner
    assert planner.dynamics is parts.model and isinstance(parts.model, SimulatorModel)
    assert parts.model.control_steps == 2 and parts.model.threads == 2
    assert planner.config.particles == 1  # MuJoCo is deterministic: one particle unless asked


def test_same_seed_same_trial_at_any_thread_count(tmp_path):
    trials = []
    for threads in (1, 2):
        folder = tmp_path / f"threads{threads}"
        folder.mkdir()
        model = f"{{type: mujoco, timestep: 0.05, threads: {threads}}}"
        run_experiment(load_experiment(slider_experiment(folder, model)), folder / "runs")
        trials.append(load_trials([folder / "runs"])[0][0])
    assert np.array_equal(trials[0].actions, trials[1].actions)  # the rows are independent: threads only share them out


@pytest.mark.parametrize(
    "controller, message",
    [
        ("{type: sampling_mpc, kind: annealing}", "unknown kind 'annealing'"),
        ("{type: sampling_mpc, kind: cem, popsize: 10}", "unknown key 'popsize' for cem"),
        ("{type: sampling_mpc, kind: cem, population: 10, elites: 20}", "elites"),
        ("{type: sampling_mpc, replan_every: 0}", "replan_every"),
        ("{type: sampling_mpc, kind: cem, seed: 1.5}", "seed: expected an integer"),
    ],
)
def test_bad_parameters_name_the_key(tmp_path, controller, message):
    experiment = load_experiment(slider_experiment(tmp_path, "{type: mujoco}", controller))
    with pytest.raises(ConfigError, match=message):
        build_parts(experiment)


def test_a_model_timestep_that_does_not_divide_the_control_period_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a whole number of 0.03 s steps"):
        build_parts(load_experiment(slider_experiment(tmp_path, "{type: mujoco, timestep: 0.03}")))


def test_needs_a_cost(tmp_path, slider):
    from forethought.controllers.sampling_mpc import build_sampling_mpc

    robot, task = slider
    with pytest.raises(ConfigError, match="needs the task's `cost`"):
        build_sampling_mpc({}, robot, Task(horizon=5, cost={}, conditions=({},), scene=task.scene), None)


ENSEMBLE = ("{type: ensemble, members: 3, hidden: [64, 64], max_epochs: 100, min_steps: 0, "
            "planning_dtype: float32, propagation: tsinf}")
PETS = "{type: sampling_mpc, kind: cem, horizon: 10, population: 100, particles: 5, iterations: 3, elites: 10}"


def test_on_the_ensemble_it_acts_randomly_first_then_learns_to_reach_the_goal(tmp_path):
    """PETS: a random first trial, the ensemble refitted on every trial by the loop, CEM through it."""
    experiment = load_experiment(slider_experiment(tmp_path, ENSEMBLE, PETS, iterations=4))
    assert isinstance(build_parts(experiment).controller.policy(0), RandomPolicy)
    torch.manual_seed(0)
    run = run_experiment(experiment, tmp_path / "runs")
    summary = json.loads((run.folder / "summary.json").read_text())
    assert summary["success"][-1], summary["goal_values"]
    assert summary["learning_curve"][-1][0] < 0.5 * summary["learning_curve"][0][0]
    later = summary["diagnostics"][-1]
    assert "model_one_step_rmse" not in summary["diagnostics"][0]  # nothing to measure before the first fit
    assert later["model_one_step_rmse"] < 0.01 and later["model_transitions"] == 100  # refitted on all 4 trials
    assert (run.folder / "models" / "ensemble.pt").is_file()
    assert (run.folder / "model_error.png").stat().st_size > 1000


def test_on_the_ensemble_the_same_seed_gives_the_same_trials(tmp_path):
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        run_experiment(load_experiment(slider_experiment(folder, ENSEMBLE, PETS, iterations=2)), folder / "runs")
        runs.append(load_trials([folder / "runs"])[0])
    for x, y in zip(*runs):
        assert np.array_equal(x.states, y.states) and np.array_equal(x.actions, y.actions)


def test_a_random_policy_before_the_first_fit_is_seeded(tmp_path):
    parts = build_parts(load_experiment(slider_experiment(tmp_path, ENSEMBLE, PETS)))
    a = rollout(parts.robot, parts.controller.policy(0), 5, seed=0)
    parts = build_parts(load_experiment(slider_experiment(tmp_path, ENSEMBLE, PETS)))
    b = rollout(parts.robot, parts.controller.policy(0), 5, seed=0)
    assert np.array_equal(a.actions, b.actions)
