"""Planning through an action delay: SimulatorModel.advance, the scene's declared delay, and MPC
that plans from the state predicted over it (controllers.delay)."""

import mujoco
import numpy as np
import pytest

from forethought.controllers.delay import DelayCompensated, compensate_delay
from forethought.models.simulator import DELAY_NUMERIC, SimulatorModel
from forethought.robots.trial import rollout
from forethought.scripts.experiment import build_parts, load_experiment
from forethought.sim.mujoco_robot import MujocoRobot
from forethought.sim.reality import RealityArm, Reality
from forethought.sim.servo_model import load_spec

SCENE = "so101_reach"


def test_advance_over_a_period_is_predict_and_over_nothing_is_the_state():
    model = SimulatorModel(SCENE)
    with MujocoRobot(SCENE) as robot:
        x = robot.reset(seed=1)
    u = x[:6] + 0.2
    np.testing.assert_array_equal(model.advance(x, u, model.dt), model.predict(x, u)[0])
    np.testing.assert_array_equal(model.advance(x, u, 0.0), x)
    half = model.advance(x, u, 0.5 * model.dt)
    assert 0 < np.abs(half - x).max() < np.abs(model.predict(x, u)[0] - x).max()
    with pytest.raises(ValueError, match="within one control period"):
        model.advance(x, u, 2 * model.dt)


def test_advance_in_a_partial_step_lands_between_whole_steps():
    """A coarse planning model (one 20 ms step a period) advances 10 ms by one shortened step."""
    model = SimulatorModel(SCENE, control_steps=1, timestep=0.02)
    with MujocoRobot(SCENE) as robot:
        x = robot.reset(seed=2)
    u = x[:6] - 0.3
    ten = model.advance(x, u, 0.01)
    assert model.model.opt.timestep == 0.02  # restored
    assert 0 < np.abs(ten - x).max() < np.abs(model.advance(x, u, 0.02) - x).max()


def test_the_planning_model_reads_the_scenes_declared_delay(tmp_path):
    spec = load_spec(SCENE)
    numeric = spec.add_numeric()
    numeric.name, numeric.data = DELAY_NUMERIC, [0.012]
    path = tmp_path / "so101_reach_identified.xml"
    path.write_text(spec.to_xml())
    model = SimulatorModel(mujoco.MjModel.from_xml_path(str(path)))
    assert model.action_delay == pytest.approx(0.012)
    assert SimulatorModel(SCENE).action_delay == 0.0
    assert SimulatorModel(SCENE, action_delay=0.005).action_delay == 0.005


def test_mpc_plans_from_the_state_predicted_over_the_delay():
    experiment = load_experiment("arm-reach-ilqr")
    experiment.model["action_delay"] = 0.015
    with RealityArm(SCENE, Reality.from_mapping({"latency": 0.015}, "latency")) as robot:
        parts = build_parts(experiment, robot)
        policy = parts.controller.policy(0)
        assert isinstance(policy, DelayCompensated) and policy.delay == pytest.approx(0.015)
        seen = []
        inner_act = policy.policy.act
        policy.policy.act = lambda x, t: (seen.append(np.array(x)), inner_act(x, t))[1]
        parts.task.apply(0, robot, [parts.model])
        trial = rollout(robot, policy, 5, seed=0)
    np.testing.assert_array_equal(seen[0], trial.states[0])  # nothing of ours in force yet
    for t in range(1, 5):
        expected = parts.model.advance(trial.states[t], trial.actions[t - 1], 0.015)
        np.testing.assert_allclose(seen[t], expected, atol=1e-12)
        assert np.abs(seen[t] - trial.states[t]).max() > 0


def test_a_model_without_a_delay_leaves_the_policy_alone():
    class Model:
        action_delay, dt = 0.0, 0.02

        def advance(self, x, u, s):
            raise AssertionError("not called")

    policy = object()
    assert compensate_delay(policy, Model(), np.zeros(1), np.ones(1)) is policy
    assert compensate_delay(policy, None, np.zeros(1), np.ones(1)) is policy


def test_a_delay_longer_than_a_period_runs_the_older_goal_first():
    """30 ms at 20 ms a period: a goal given at tick j acts from j dt + 30 ms, so from tick t on the
    goal of t - 2 acts for 10 ms, then that of t - 1 for a whole period."""
    model = SimulatorModel(SCENE)
    with MujocoRobot(SCENE) as robot:
        x = robot.reset(seed=3)
        low, high = robot.spec.action_low, robot.spec.action_high

    class Steps:
        def reset(self):
            self.seen = []

        def act(self, x, t):
            self.seen.append(np.array(x))
            return x[:6] + 0.1 * (t + 1)

    inner = Steps()
    policy = DelayCompensated(inner, model, 0.03, low, high)
    assert policy.segments == [(2, pytest.approx(0.01)), (1, 0.02)]
    policy.reset()
    given = [policy.act(x, t) for t in range(3)]
    np.testing.assert_array_equal(inner.seen[0], x)
    np.testing.assert_array_equal(inner.seen[1], model.advance(model.advance(x, given[0], 0.01), given[0], 0.02))
    expected = model.advance(model.advance(x, np.clip(given[0], low, high), 0.01), np.clip(given[1], low, high), 0.02)
    np.testing.assert_allclose(inner.seen[2], expected, atol=1e-12)
