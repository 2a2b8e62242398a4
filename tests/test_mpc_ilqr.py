"""Receding-horizon MPC and iLQR-MPC: warm starts, feedback between replans, failures, and the tasks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from forethought.controllers.costs import build_cost
from forethought.controllers.ilqr import BackwardPassError, DivergenceError
from forethought.controllers.mpc import FirstFailure, ILQRPlanner, MPCError, Plan, RecedingHorizonPolicy

from test_ilqr import PENDULUM_COST, PENDULUM_SPEC, Pendulum


class RecordingPlanner:
    """Wraps a planner; records the warm starts it gets and fails on the ticks in `fail` (raise or NaN)."""

    def __init__(self, inner, fail: dict[int, str] | None = None):
        self.inner, self.fail, self.horizon = inner, fail or {}, inner.horizon
        self.warm_starts: dict[int, np.ndarray] = {}

    def plan(self, x0, U_init, t):
        self.warm_starts[t] = U_init.copy()
        how = self.fail.get(t)
        if how in RAISES:
            RAISES[how]()
        plan = self.inner.plan(x0, U_init, t)
        if how == "nan":
            plan = Plan(np.full_like(plan.U, np.nan), plan.X, plan.K, float("nan"))
        if how == "infinite cost":
            plan = Plan(plan.U, plan.X, plan.K, float("inf"))
        if how == "short plan":
            plan = Plan(plan.U[1:], plan.X, plan.K, plan.cost)
        return plan


def _raise(err: BaseException):
    def raise_it():
        raise err
    return raise_it


# How a planner fails: numerically (a failed solve, counted), or by a bug (it propagates).
RAISES = {
    "raise": _raise(DivergenceError("the rollout went NaN")),
    "backward pass": _raise(BackwardPassError(3)),
    "numpy cholesky": lambda: np.linalg.cholesky(-np.eye(2)),
    "torch cholesky": lambda: torch.linalg.cholesky(-torch.eye(2, dtype=torch.float64)),
    "key error": _raise(KeyError("horizon")),
    "value error": _raise(ValueError("operands could not be broadcast together")),
    "runtime error": _raise(RuntimeError("mat1 and mat2 shapes cannot be multiplied")),
    "attribute error": _raise(AttributeError("'NoneType' object has no attribute 'U'")),
}
NUMERICAL = ["raise", "nan", "infinite cost", "backward pass", "numpy cholesky", "torch cholesky"]
BUGS = ["key error", "value error", "runtime error", "attribute error", "short plan"]


def pendulum_planner(horizon=40, **kwargs):
    cost = build_cost(PENDULUM_COST, PENDULUM_SPEC)
    return ILQRPlanner(Pendulum(), cost, [-3.0], [3.0], horizon, **kwargs)


def run(policy, steps, x0=(0.1, 0.0)):
    model = Pendulum()
    x = np.array(x0)
    xs, us = [x], []
    policy.reset()
    for t in range(steps):
        u = policy.act(x, t)
        x = model.predict(x[None], u[None])[0][0]
        xs.append(x)
        us.append(u)
    return np.array(xs), np.array(us)


def test_ilqr_mpc_swings_the_pendulum_up_and_holds_it():
    policy = RecedingHorizonPolicy(pendulum_planner(horizon=80), PENDULUM_SPEC)
    xs, us = run(policy, 140)
    error = np.abs(np.arctan2(np.sin(xs[-20:, 0] - np.pi), np.cos(xs[-20:, 0] - np.pi)))
    assert np.max(error) < 0.05
    assert np.all(np.abs(us) <= 3.0)
    assert policy.stats["replans"] == 140 and policy.stats["failures"] == 0


def test_warm_start_is_the_last_plan_shifted():
    planner = RecordingPlanner(pendulum_planner(horizon=10))
    policy = RecedingHorizonPolicy(planner, PENDULUM_SPEC, replan_every=3)
    plans = {}
    model, x = Pendulum(), np.array([0.1, 0.0])
    for t in range(7):
        u = policy.act(x, t)
        plans[t] = policy.plan
        x = model.predict(x[None], u[None])[0][0]
    assert sorted(planner.warm_starts) == [0, 3, 6]
    np.testing.assert_array_equal(planner.warm_starts[0], np.zeros((10, 1)))  # middle of the bounds
    U0 = plans[0].U
    np.testing.assert_array_equal(planner.warm_starts[3], np.concatenate([U0[3:], np.repeat(U0[-1:], 3, axis=0)]))


def test_closed_loop_warm_start_rolls_the_last_plans_feedback_policy_out_from_the_measured_state():
    planner = pendulum_planner(horizon=10, first_iterations=20, closed_loop_warm_start=True)
    first = planner.plan(np.array([np.pi - 0.1, 0.0]), np.zeros((10, 1)), 0)  # near upright: no action at a bound
    model = Pendulum()
    shifted = np.concatenate([first.U[1:], first.U[-1:]])
    # On the plan's own next state the feedback adds nothing: the shifted actions, up to the clip.
    np.testing.assert_allclose(planner._closed_loop(first.X[1], 1)[1][:-1], np.clip(shifted, -3, 3)[:-1], atol=1e-9)
    # Off it, the first action is corrected by the plan's gain, and the rest follow the model.
    x = first.X[1] + np.array([0.02, -0.05])
    X_warm, warm = planner._closed_loop(x, 1)
    np.testing.assert_allclose(warm[0], np.clip(first.U[1] + first.K[1] @ (x - first.X[1]), -3, 3), atol=1e-12)
    assert np.abs(warm[0] - first.U[1]).max() > 1e-3
    x_next = model.predict(x[None], warm[:1])[0][0]
    np.testing.assert_allclose(warm[1], np.clip(first.U[2] + first.K[2] @ (x_next - first.X[2]), -3, 3), atol=1e-12)
    # Its states are the model's rollout of its actions, which the solve at tick 1 starts from (not
    # from the warm start it is handed) without rolling them out again.
    np.testing.assert_array_equal(X_warm, planner.solver.rollout(x, warm))
    planner.plan(x, np.zeros((10, 1)), 1)
    assert planner.last_result.iterations[0]["cost"] <= planner.solver._costs(X_warm, warm)


def test_feedback_gains_act_between_replans():
    policy = RecedingHorizonPolicy(pendulum_planner(horizon=20), PENDULUM_SPEC, replan_every=5)
    model, x = Pendulum(), np.array([np.pi - 0.05, 0.0])  # balancing: torques well inside the bounds
    u0 = policy.act(x, 0)
    plan = policy.plan
    x = model.predict(x[None], u0[None])[0][0] + np.array([0.02, -0.1])  # a push the plan did not foresee
    u1 = policy.act(x, 1)
    expected = np.clip(plan.U[1] + plan.K[1] @ (x - plan.X[1]), -3.0, 3.0)
    np.testing.assert_allclose(u1, expected)
    assert policy.stats["replans"] == 1
    assert not np.allclose(u1, plan.U[1])


@pytest.mark.parametrize("how", NUMERICAL)
def test_a_failed_solve_keeps_the_last_good_plan(how):
    planner = RecordingPlanner(pendulum_planner(horizon=20), fail={2: how, 3: how})
    policy = RecedingHorizonPolicy(planner, PENDULUM_SPEC)
    model, x = Pendulum(), np.array([0.1, 0.0])
    for t in range(2):
        x = model.predict(x[None], policy.act(x, t)[None])[0][0]
    good = policy.plan
    u2 = policy.act(x, 2)
    assert policy.plan is good and policy.stats["failures"] == 1
    np.testing.assert_allclose(u2, np.clip(good.U[1] + good.K[1] @ (x - good.X[1]), -3, 3))
    assert np.all(np.isfinite(u2))
    x = model.predict(x[None], u2[None])[0][0]
    policy.act(x, 3)
    assert policy.stats["failures"] == 2 and "tick 3" in policy.stats["last_failure"]
    policy.act(x, 4)  # the planner recovers
    assert policy.plan is not good and policy.plan_tick == 4


@pytest.mark.parametrize("how", BUGS)
def test_a_bug_in_the_planner_propagates_and_is_not_a_failed_solve(how):
    planner = RecordingPlanner(pendulum_planner(horizon=10), fail={2: how})
    policy = RecedingHorizonPolicy(planner, PENDULUM_SPEC)
    x = np.array([0.1, 0.0])
    policy.act(x, 0)
    policy.act(x, 1)
    with pytest.raises((KeyError, ValueError, RuntimeError, AttributeError)):
        policy.act(x, 2)
    assert policy.stats["failures"] == 0


def test_the_first_failed_solve_of_a_run_is_logged_when_it_happens(caplog):
    first = FirstFailure()
    policies = [RecedingHorizonPolicy(RecordingPlanner(pendulum_planner(horizon=10), fail={2: "raise", 4: "nan"}),
                                      PENDULUM_SPEC, first_failure=first) for _ in range(2)]
    x = np.array([0.1, 0.0])
    with caplog.at_level(logging.WARNING, logger="forethought.controllers.mpc"):
        for t in range(2):
            policies[0].act(x, t)
        assert caplog.records == []
        policies[0].act(x, 2)
        (record,) = caplog.records
        assert "tick 2" in record.getMessage() and "DivergenceError" in record.getMessage()
        for t in range(3, 6):
            policies[0].act(x, t)
        for t in range(6):  # the run's second policy fails too: counted, not logged again
            policies[1].act(x, t)
    assert len(caplog.records) == 1
    assert [p.stats["failures"] for p in policies] == [2, 2]


def test_no_plan_at_all_is_an_error_not_an_action():
    planner = RecordingPlanner(pendulum_planner(horizon=5), fail={0: "raise"})
    policy = RecedingHorizonPolicy(planner, PENDULUM_SPEC)
    with pytest.raises(MPCError, match="no plan to follow.*DivergenceError"):
        policy.act(np.array([0.1, 0.0]), 0)
    planner = RecordingPlanner(pendulum_planner(horizon=3), fail={t: "raise" for t in range(1, 10)})
    policy = RecedingHorizonPolicy(planner, PENDULUM_SPEC)
    x = np.array([0.1, 0.0])
    for t in range(3):
        policy.act(x, t)
    with pytest.raises(MPCError, match="last good plan ended"):
        policy.act(x, 3)
    with pytest.raises(MPCError, match="finite"):
        policy.act(np.array([np.nan, 0.0]), 4)


# -- the shipped experiments, MuJoCo as the model -------------------------------------------------


def shipped_parts(name: str, **task_changes):
    """A shipped experiment's robot, task (with `task_changes`), model and controller."""
    import dataclasses

    from forethought.scripts.experiment import load_experiment, make_controller, make_model, make_robot, make_task

    experiment = load_experiment(name)
    robot = make_robot(experiment.robot)
    task = dataclasses.replace(make_task(experiment, robot), **task_changes)
    model = make_model(experiment, robot)
    return robot, task, model, make_controller(experiment, robot, task, model)


def run_condition(robot, task, model, controller, c: int, seed: int):
    """One trial of condition c with the task's condition set on robot and model; (trial, judgement)."""
    from forethought.robots.trial import rollout

    task.apply(c, robot, [model])
    trial = rollout(robot, controller.policy(c), task.horizon, seed=seed)
    return trial, task.judge(trial, c)


def reachable_targets(count: int, seed: int) -> np.ndarray:
    """End-effector positions of random joint angles, kept above the table in front of the arm."""
    from forethought.sim.kinematics import ArmKinematics

    kinematics = ArmKinematics("so101_reach", site="ee")
    rng = np.random.default_rng(seed)
    targets = []
    while len(targets) < count:
        p = kinematics.site_position(rng.uniform(0.6 * kinematics.lower, 0.6 * kinematics.upper))
        if 0.1 <= p[0] <= 0.3 and abs(p[1]) <= 0.15 and 0.03 <= p[2] <= 0.25:
            targets.append(p)
    return np.array(targets)


def test_arm_reach_ilqr_ends_within_half_a_millimetre_of_10_random_targets():
    targets = reachable_targets(10, seed=7)
    # 1.2 s of simulated time at 50 Hz: well within the 2 s asked for, and quicker to test. The
    # bench (`forethought bench ilqr`, the full horizon) ends 0.1 mm from its targets; these end
    # 0.20 to 0.27 mm away (measured on OpenBLAS SkylakeX, one thread): 0.5 mm is about twice that.
    robot, task, model, controller = shipped_parts(
        "arm-reach-ilqr", horizon=60, conditions=tuple({"target": list(p)} for p in targets))
    errors = []
    with robot:
        for c in range(len(targets)):
            _, judgement = run_condition(robot, task, model, controller, c, seed=c)
            errors.append(judgement.value)
        diagnostics = controller.update([])
    assert max(errors) < 5e-4, np.round(errors, 6)
    assert diagnostics["solve_failures"] == 0 and diagnostics["replans"] == 10 * task.horizon


def test_cartpole_swingup_ilqr_swings_up_and_holds_within_bounds():
    robot, task, model, controller = shipped_parts("cartpole-swingup-ilqr")
    with robot:
        trial, judgement = run_condition(robot, task, model, controller, 0, seed=3)
        assert robot.interventions["clipped"] == 0  # MPC never asked for more than +-10 N
    pole = trial.states[:, robot.spec.state_names.index("pole")]
    assert abs(pole[0]) < 0.5  # it starts hanging
    assert judgement.success, judgement  # pole within 0.1 rad of upright and cart within 0.1 m over the last second
    assert np.all(np.abs(trial.actions) <= 10.0)


def test_bad_controller_settings_name_the_key():
    from forethought.controllers.controller import Task
    from forethought.controllers.mpc import build_ilqr_mpc
    from forethought.models.simulator_config import MujocoModelConfig, build_scene_model
    from forethought.robots.config import ConfigError
    from forethought.scripts.experiment import load_experiment
    from forethought.sim.mujoco_robot import MujocoRobot

    experiment = load_experiment("arm-reach-ilqr")
    robot = MujocoRobot("so101_reach")
    model = build_scene_model(MujocoModelConfig(), robot.spec, "so101_reach")
    task = Task(horizon=10, cost=experiment.task.cost, conditions=({"target": [0.2, 0.0, 0.1]},), scene="so101_reach")
    with pytest.raises(ConfigError, match="unknown key 'horizn'"):
        build_ilqr_mpc({"horizn": 10}, robot, task, model)
    with pytest.raises(ConfigError, match="iterations must be at least 1"):
        build_ilqr_mpc({"iterations": 0}, robot, task, model)
    with pytest.raises(ConfigError, match="model.timestep: the control period 0.02 s is not a whole number of 0.003 s steps"):
        build_scene_model(MujocoModelConfig(timestep=0.003), robot.spec, "so101_reach")
    with pytest.raises(ConfigError, match="initial_action: expected 6 finite numbers"):
        build_ilqr_mpc({"initial_action": [0.0, 1.0]}, robot, task, model)
    with pytest.raises(ConfigError, match="needs the task's `cost`"):
        build_ilqr_mpc({}, robot, Task(horizon=10, cost={}), model)
    with pytest.raises(ConfigError, match="through: members plans through each member of an ensemble, and the "
                                          "SimulatorModel has no members"):
        build_ilqr_mpc({"through": "members"}, robot, task, model)
    with pytest.raises(ConfigError, match="warm_start must be shifted or closed_loop"):
        build_ilqr_mpc({"warm_start": "open"}, robot, task, model)


def test_arm_push_ilqr_brings_the_block_within_3cm():
    robot, task, model, controller = shipped_parts("arm-push-ilqr")
    with robot:
        trial, judgement = run_condition(robot, task, model, controller, 0, seed=0)
        names = robot.spec.state_names
    goal = np.asarray(task.conditions[0]["block_target"])
    block = trial.states[:, [names.index("block:x"), names.index("block:y")]]
    assert np.linalg.norm(block[0] - goal) > 0.1  # it starts far away
    assert judgement.success and judgement.value < 0.03, judgement
