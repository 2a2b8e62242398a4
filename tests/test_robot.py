"""The Robot contract on MuJoCo scenes: validation before anything moves, clipping counted, seeds."""

import numpy as np
import pytest

from forethought.controllers.policy import RandomPolicy
from forethought.robots.robot import ActionError, RobotSpec, check_action
from forethought.robots.trial import rollout
from forethought.sim.mujoco_robot import MujocoRobot, SimulationError

SCENE = """
<mujoco>
  <option timestep="0.005"/>
  <custom>
    <numeric name="forethought_control_steps" data="4"/>
    <numeric name="forethought_init_qpos_std" data="0.05"/>
  </custom>
  <worldbody>
    <body name="link">
      <joint name="hinge" type="hinge" axis="0 1 0" damping="0.1"/>
      <geom type="capsule" fromto="0 0 0 0 0 -0.3" size="0.02" mass="0.2"/>
    </body>
    <body name="box" pos="0.5 0 0.1">
      <freejoint name="box"/>
      <geom type="box" size="0.02 0.02 0.02" mass="0.05"/>
    </body>
    <geom type="plane" size="1 1 0.1"/>
  </worldbody>
  <actuator>
    <motor name="torque" joint="hinge" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
  <keyframe>
    <key name="home" qpos="0.3 0.5 0 0.02 1 0 0 0"/>
  </keyframe>
</mujoco>
"""


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "pendulum_and_box.xml"
    path.write_text(SCENE)
    return path


def test_spec_reads_the_scene(scene):
    robot = MujocoRobot(scene)
    assert robot.spec.state_names[:3] == ("hinge", "box:x", "box:y")
    assert robot.spec.state_names[8:10] == ("d_hinge", "d_box:x")
    assert robot.spec.n == 8 + 7 and robot.spec.m == 1
    assert robot.spec.dt == pytest.approx(0.02)
    np.testing.assert_array_equal(robot.spec.action_low, [-1.0])


def test_reset_starts_near_home_and_free_bodies_are_in_the_state(scene):
    robot = MujocoRobot(scene)
    x0 = robot.reset(seed=3)
    assert abs(x0[0] - 0.3) < 0.3 and x0[0] != 0.3  # hinge perturbed
    np.testing.assert_array_equal(x0[1:8], [0.5, 0, 0.02, 1, 0, 0, 0])  # free joint not perturbed
    for _ in range(25):
        x = robot.step([0.0])
    assert x[3] < 0.02  # the box fell onto the floor: its position is in the state


@pytest.mark.parametrize("bad", [[0.1, 0.2], [[0.1]], [np.nan], [np.inf], "x"])
def test_malformed_actions_are_rejected_before_anything_moves(scene, bad):
    robot = MujocoRobot(scene)
    x0 = robot.reset(seed=0)
    with pytest.raises(ActionError, match="pendulum_and_box"):
        robot.step(bad)
    np.testing.assert_array_equal(robot.get_state(), x0)
    assert robot.data.time == 0.0


def test_out_of_range_actions_are_clipped_and_counted(scene):
    robot = MujocoRobot(scene)

    class Pushy:
        def reset(self):
            pass

        def act(self, x, t):
            return np.array([5.0 if t % 2 else 0.5])

    trial = rollout(robot, Pushy(), 10, seed=0)
    assert trial.metadata["interventions"]["clipped"] == 5
    assert np.all(trial.actions <= 1.0)


def test_same_seed_same_trial(scene):
    runs = []
    for _ in range(2):
        robot = MujocoRobot(scene)
        runs.append(rollout(robot, RandomPolicy(robot.spec, seed=7), 30, seed=11))
    np.testing.assert_array_equal(runs[0].states, runs[1].states)
    np.testing.assert_array_equal(runs[0].actions, runs[1].actions)
    # Simulated time, not the time the computer took.
    np.testing.assert_array_equal(runs[0].timestamps, runs[1].timestamps)
    np.testing.assert_allclose(runs[0].timestamps, robot.spec.dt * np.arange(31), rtol=1e-9)
    robot = MujocoRobot(scene)
    other = rollout(robot, RandomPolicy(robot.spec, seed=8), 30, seed=11)
    assert not np.array_equal(other.actions, runs[0].actions)


def test_instability_is_an_error_not_nan(tmp_path):
    path = tmp_path / "unstable.xml"
    path.write_text(
        '<mujoco><option timestep="1"/><worldbody><body><joint name="j" type="slide"/>'
        '<geom size="0.1" mass="1e-9"/></body></worldbody>'
        '<actuator><motor joint="j" gear="1e12"/></actuator></mujoco>'
    )
    robot = MujocoRobot(path)
    robot.reset()
    with pytest.raises(SimulationError):
        for _ in range(50):
            robot.step([1e9])


@pytest.mark.parametrize("gear, warning", [(2e9, "mjWARN_BADQPOS"), (8e9, "mjWARN_BADQVEL")])
def test_a_state_mujoco_reset_is_an_error_not_a_logged_step(tmp_path, gear, warning):
    """A slide pushed by a huge motor passes MuJoCo's limit of 1e10 in position (or, with a faster
    push, in velocity) before its acceleration does: MuJoCo resets the state to the scene's start
    and goes on, and that teleport must not be returned as where the mass went."""
    path = tmp_path / "runaway.xml"
    path.write_text(
        '<mujoco><option timestep="0.01"/><custom><numeric name="forethought_control_steps" data="10"/></custom>'
        '<worldbody><body><joint name="j" type="slide"/><geom size="0.1" mass="1"/></body></worldbody>'
        f'<actuator><motor joint="j" gear="{gear}" ctrlrange="-1 1"/></actuator></mujoco>'
    )
    robot = MujocoRobot(path)
    robot.reset()
    states = []
    with pytest.raises(SimulationError, match=f"{warning}.*reset the state"):
        for _ in range(100):
            states.append(robot.step([1.0]))
    positions = np.array(states)[:, 0]
    assert len(states) > 5 and np.all(np.diff(positions) > 0)  # every returned state is on the runaway path


def test_check_action_names_the_bad_entries():
    spec = RobotSpec("arm", ("q",), ("a", "b"), [-1, -1], [1, 1], 0.1)
    with pytest.raises(ActionError, match=r"\['b'\]"):
        check_action(spec, [0.0, np.nan])
    u, clipped = check_action(spec, [2.0, 0.0])
    assert clipped and u.tolist() == [1.0, 0.0]


def test_unknown_scene_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="unknown scene 'nope'"):
        MujocoRobot("nope")


def test_a_trial_logs_the_clipped_action_applied_and_the_request_beside_it():
    with MujocoRobot("so101_reach") as robot:
        spec = robot.spec

        class Beyond:
            def reset(self):
                pass

            def act(self, x, t):
                return np.where(np.arange(spec.m) % 2 == 0, spec.action_high + 1.0, spec.action_low - 1.0) * (t % 2)

        trial = rollout(robot, Beyond(), 4, seed=0)
        assert robot.interventions["clipped"] == 2
        np.testing.assert_array_equal(robot.applied_action, np.clip(trial.requested_actions[-1], spec.action_low,
                                                                    spec.action_high))
    np.testing.assert_array_equal(trial.actions, np.clip(trial.requested_actions, spec.action_low, spec.action_high))
    assert np.any(trial.actions != trial.requested_actions)
    np.testing.assert_array_equal(trial.requested_actions[1], np.where(np.arange(spec.m) % 2 == 0, spec.action_high + 1.0,
                                                                       spec.action_low - 1.0))
