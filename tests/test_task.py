"""Tasks own their conditions and their goal; experiments say which model and controller go together."""

from __future__ import annotations

import numpy as np
import pytest

from forethought.controllers.goals import Goal
from forethought.models.simulator_config import MujocoModelConfig, build_scene_model
from forethought.robots.config import ConfigError
from forethought.robots.trial import Trial
from forethought.scripts.experiment import check_combination, combinations, load_experiment
from forethought.sim.mujoco_robot import MujocoRobot


def site_world(model, name: str) -> np.ndarray:
    import mujoco

    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    return data.site_xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, name)].copy()


def test_a_condition_is_set_on_the_robot_and_the_planning_model_alike_and_undone_by_the_next():
    """The peg's hole moved by a condition: the planning model (whose rollouts the planners score)
    sees the moved hole as the robot does; a condition that does not set it gives the scene's."""
    from forethought.controllers.controller import Task

    robot = MujocoRobot("so101_peg")
    model = build_scene_model(MujocoModelConfig(), robot.spec, "so101_peg")
    default = site_world(model.model, "hole_bottom")
    moved = default + np.array([0.03, -0.02, 0.0])
    task = Task(horizon=5, conditions=({"hole": moved.tolist(), "qpos": [0.2, -0.5, 0.5, 1.57, 0.0, 0.0]}, {}),
                scene="so101_peg")
    task.apply(0, robot, [model])
    assert np.allclose(site_world(model.model, "hole_bottom"), moved, atol=1e-9)
    assert np.allclose(site_world(robot.model, "hole_bottom"), moved, atol=1e-9)
    assert np.allclose(robot.reset(0)[:6], [0.2, -0.5, 0.5, 1.57, 0.0, 0.0], atol=0.1)
    task.apply(1, robot, [model])
    assert np.allclose(site_world(model.model, "hole_bottom"), default, atol=1e-9)
    assert np.allclose(site_world(robot.model, "hole_bottom"), default, atol=1e-9)
    home = MujocoRobot("so101_peg").reset(0)
    assert np.allclose(robot.reset(0), home)  # no qpos in the condition: the scene's home, not the last one's


def test_the_reach_target_moves_in_the_planning_models_rollouts():
    import torch

    robot = MujocoRobot("so101_reach")
    model = build_scene_model(MujocoModelConfig(), robot.spec, "so101_reach")
    from forethought.controllers.controller import Task

    task = Task(horizon=5, conditions=({"target": [0.25, 0.1, 0.05]},), scene="so101_reach")
    task.apply(0, robot, [model])
    target = model.model.body("target").mocapid[0]
    assert np.allclose(model._template.mocap_pos[target], [0.25, 0.1, 0.05])
    x0 = torch.as_tensor(robot.reset(0), dtype=torch.float32)[None]
    X = model.rollout(x0, torch.zeros(1, 3, robot.spec.m), None)
    assert torch.all(torch.isfinite(X))


def trial_of(states, names, dt=0.1, costs=None) -> Trial:
    states = np.asarray(states, dtype=np.float64)
    T = len(states) - 1
    return Trial(states, np.zeros((T, 1)), np.arange(T + 1) * dt,
                 np.zeros(T + 1) if costs is None else np.asarray(costs, dtype=np.float64), tuple(names), ("u",), dt)


class Spec:
    state_names = ("cart", "pole")


def test_a_state_goal_over_the_final_second_with_a_tolerance_per_state():
    goal = Goal({"type": "state_distance", "states": ["pole", "cart"], "target": {"pole": np.pi},
                 "angles": ["pole"], "within": {"pole": 0.1, "cart": 0.1}, "at": "final", "seconds": 0.3}, Spec, None)
    up = [[0.0, np.pi - 0.05]] * 4
    assert goal.judge(trial_of([[0.0, 0.0]] * 3 + up, Spec.state_names), {}).success
    assert not goal.judge(trial_of([[0.0, 0.0]] * 4 + up[:3], Spec.state_names), {}).success  # up for 0.2 s only
    wrapped = [[0.05, -np.pi + 0.02]] * 5  # -pi is upright too
    judgement = goal.judge(trial_of(wrapped, Spec.state_names), {})
    assert judgement.success and judgement.value == pytest.approx(0.5)  # the cart is half its tolerance away
    assert not goal.judge(trial_of([[0.15, np.pi]] * 5, Spec.state_names), {}).success


def test_a_distance_goal_at_the_end_or_at_any_step_reads_its_target_from_the_condition():
    end = Goal({"type": "state_distance", "states": ["cart"], "target": "spot", "within": 0.03}, Spec, None)
    any_step = Goal({"type": "state_distance", "states": ["cart"], "target": "spot", "within": 0.03, "at": "any"},
                    Spec, None)
    passing = trial_of([[0.0, 0.0], [0.5, 0.0], [0.2, 0.0]], Spec.state_names)
    assert not end.judge(passing, {"spot": [0.5]}).success and any_step.judge(passing, {"spot": [0.5]}).success
    assert end.judge(passing, {"spot": [0.19]}).value == pytest.approx(0.01)


def test_a_site_goal_measures_the_end_effector_in_metres():
    robot = MujocoRobot("so101_reach")
    x = robot.reset(0)
    robot.set_state(x)
    ee = robot.site_pos("ee")
    goal = Goal({"type": "site_distance", "site": "ee", "target": "target", "within": 0.01}, robot.spec, "so101_reach")
    trial = Trial(x[None].repeat(2, 0), np.zeros((1, robot.spec.m)), [0, 0.02], [0, 0], robot.spec.state_names,
                  robot.spec.action_names, 0.02)
    judgement = goal.judge(trial, {"target": (ee + [0.0, 0.005, 0.0]).tolist()})
    assert judgement.success and judgement.value == pytest.approx(0.005) and judgement.text == "5 mm"


def test_a_reward_goal_reads_minus_the_logged_cost():
    goal = Goal({"type": "reward", "at_least": 0.8, "at": "final", "seconds": 0.2}, Spec, None)
    costs = [-0.1, -0.2, -0.9, -0.85, float("nan")]  # rewards 0.1 0.2 0.9 0.85, no terminal cost
    assert goal.judge(trial_of([[0.0, 0.0]] * 5, Spec.state_names, costs=costs), {}).success
    assert not Goal({"type": "reward", "at_least": 0.8, "at": "final", "seconds": 0.4}, Spec, None).judge(
        trial_of([[0.0, 0.0]] * 5, Spec.state_names, costs=costs), {}).success


@pytest.mark.parametrize(
    "section, message",
    [
        ({"type": "near"}, "task.goal.type: unknown goal 'near'"),
        ({"type": "state_distance", "states": ["tilt"], "within": 0.1}, "task.goal.states: unknown state 'tilt'"),
        ({"type": "state_distance", "states": ["pole"], "within": {"cart": 0.1}}, "task.goal.within: give one"),
        ({"type": "state_distance", "states": ["pole"], "within": 0.1, "at": "later"}, "at must be one of"),
        ({"type": "site_distance", "within": 0.1}, "needs a MuJoCo scene"),
        ({"type": "reward", "at_least": "high"}, "task.goal.at_least: expected a number"),
    ],
)
def test_a_bad_goal_names_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        Goal(section, Spec, None)


def test_a_goal_whose_target_a_condition_lacks_fails_at_load(tmp_path):
    path = tmp_path / "reach.yaml"
    path.write_text("robot: {scene: so101_reach}\ntask: {horizon: 5, goal: {type: site_distance, within: 0.01}, "
                    "conditions: [{}]}\ncontroller: {type: random}\n")
    from forethought.scripts.experiment import make_robot, make_task

    experiment = load_experiment(str(path))
    with pytest.raises(ConfigError, match="task.goal.target: names the condition key 'target'"):
        make_task(experiment, make_robot(experiment.robot))


def test_an_impossible_combination_is_refused_at_load_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("robot: {scene: pendulum}\ntask: {horizon: 5}\nmodel: {type: mujoco}\ncontroller: {type: pilco}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(str(path))
    message = str(info.value)
    assert "\n" not in message and "model mujoco x controller pilco" in message and "`propagate`" in message


@pytest.mark.parametrize(
    "controller, hint",
    [
        ("{type: pets, planner: {kind: cem}}", "PETS is sampling MPC on the ensemble"),
        ("{type: predictive_sampling}", "predictive sampling is sampling MPC on MuJoCo"),
        ("{type: ilqr_mpc, model_timestep: 0.02}", "controller.model_timestep: the model is its own section now; move this to model.timestep"),
        ("{type: gps, dynamics: {clusters: 4}}", "controller.dynamics: the model is its own section now"),
    ],
)
def test_an_old_form_file_says_how_to_write_it_now(tmp_path, controller, hint):
    path = tmp_path / "old.yaml"
    path.write_text(f"robot: {{scene: pendulum}}\ntask: {{horizon: 5}}\ncontroller: {controller}\n")
    with pytest.raises(ConfigError, match=hint):
        load_experiment(str(path))


def test_every_cell_of_the_matrix_is_a_shipped_experiment_or_a_refusal():
    for cell in combinations():
        assert (cell.refused is None) != bool(cell.refused), cell
        for name in cell.experiments:
            experiment = load_experiment(name)
            assert (experiment.model.get("type", "none"), experiment.controller["type"]) == (cell.model, cell.controller)
    assert check_combination("mujoco", "ilqr_mpc") is None
    assert check_combination("none", "ilqr_mpc") == "the controller plans on a model (add a `model:` section)"
