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


def test_planning_cost_equals_the_experiment_cost_on_batches():
    from forethought.controllers.planning_cost import build_planning_cost
    from forethought.robots.robot import RobotSpec

    spec = RobotSpec("cartpole", ("cart", "pole", "d_cart", "d_pole"), ("force",), [-10.0], [10.0], 0.1)
    cfg = {"terms": [
        {"type": "saturating", "weights": {"cart": 3.0, "pole": 0.36, "d_pole": 0.01}, "target": {"pole": 3.14159},
         "angles": ["pole"], "sigma": 0.25, "final_weight": 20.0, "ramp": "linear"},
        {"type": "state", "weights": {"cart": 0.5, "d_cart": 0.1}, "target": {"cart": 0.2}, "ramp": "quadratic"},
        {"type": "action", "weights": 0.01, "center": [1.0]},
        {"type": "joint_limits", "names": ["cart"], "lower": [-0.5], "upper": [0.5], "margin": 0.1, "weight": 3.0},
    ]}
    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 2.0, (64, 13, 4))
    U = rng.uniform(-10, 10, (64, 12, 1))
    expected = build_cost(cfg, spec).trajectory_costs(X, U)
    got = build_planning_cost(cfg, spec)(torch.tensor(X, dtype=torch.float32), torch.tensor(U, dtype=torch.float32))
    assert np.allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_planning_cost_evaluates_end_effector_terms_through_the_kinematics():
    from forethought.controllers.planning_cost import build_planning_cost

    with MujocoRobot("so101_reach") as robot:
        spec = robot.spec
    cfg = {"terms": [{"type": "site_distance", "site": "ee", "target": "target", "final_weight": 5.0},
                     {"type": "action", "weights": 0.01, "center": "state"}]}
    condition = {"target": [0.2, 0.05, 0.12]}
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (6, 4, spec.n))
    U = rng.uniform(-1, 1, (6, 3, spec.m))
    expected = build_cost(cfg, spec, "so101_reach", condition).trajectory_costs(X, U)
    cost = build_planning_cost(cfg, spec, "so101_reach", condition)
    Xt = torch.tensor(X, dtype=torch.float32)
    got = cost(Xt, torch.tensor(U, dtype=torch.float32)).numpy()
    assert np.allclose(got, expected, rtol=1e-4)
    Xt[2, 1, 0] = float("nan")  # a diverged prediction costs NaN, never a number
    got = cost(Xt, torch.tensor(U, dtype=torch.float32)).numpy()
    assert np.isnan(got[2]) and np.all(np.isfinite(np.delete(got, 2)))


def test_a_site_behind_a_ball_joint_is_costed_through_mujoco(tmp_path):
    from forethought.controllers.planning_cost import build_planning_cost
    from forethought.robots.robot import RobotSpec

    scene = tmp_path / "ball.xml"
    scene.write_text(
        '<mujoco><worldbody><body><joint name="swivel" type="ball"/><geom size="0.05"/>'
        '<body pos="0 0 0.2"><joint name="hinge" axis="0 1 0"/><geom size="0.03"/><site name="ee" pos="0 0 0.2"/>'
        "</body></body></worldbody></mujoco>"
    )
    spec = RobotSpec("ball", ("hinge", "d_hinge"), ("u",), [-1.0], [1.0], 0.02)
    cfg = {"terms": [{"type": "site_distance", "site": "ee", "target": [0.1, 0.0, 0.3]}]}
    X = np.random.default_rng(4).uniform(-1, 1, (5, 4, 2))
    U = np.zeros((5, 3, 1))
    cost = build_planning_cost(cfg, spec, str(scene))
    assert cost.terms[0][1] is None  # no torch form for this chain
    got = cost(torch.tensor(X, dtype=torch.float32), torch.tensor(U, dtype=torch.float32)).numpy()
    assert np.allclose(got, build_cost(cfg, spec, str(scene)).trajectory_costs(X, U), rtol=1e-5)


def test_planning_cost_puts_the_hand_behind_a_block_as_the_experiment_cost_does():
    from forethought.controllers.planning_cost import build_planning_cost

    with MujocoRobot("so101_push") as robot:
        spec = robot.spec
    cfg = {"terms": [{"type": "site_distance", "site": "ee", "target_state": ["block:x", "block:y", "block:z"],
                      "offset": [-0.01, 0.044, 0.0], "norm": "smooth_abs", "smoothing": 0.01, "weight": 10.0,
                      "final_weight": 3.0}]}
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, (6, 5, spec.n))
    U = rng.uniform(-1, 1, (6, 4, spec.m))
    expected = build_cost(cfg, spec, "so101_push").trajectory_costs(X, U)
    got = build_planning_cost(cfg, spec, "so101_push")(torch.tensor(X, dtype=torch.float32), torch.tensor(U, dtype=torch.float32))
    assert np.allclose(got.numpy(), expected, rtol=1e-4)
