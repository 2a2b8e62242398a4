"""Arm kinematics through MuJoCo (FK, Jacobians, IK) and the IK reach controller on the simulated arm."""

import mujoco
import numpy as np
import pytest
import torch

from forethought.controllers.controller import Task
from forethought.controllers.ik_reach import IKReachConfig, IKReachController, build_ik_reach
from forethought.robots.config import ConfigError
from forethought.robots.trial import rollout
from forethought.sim.batched_kinematics import BatchedSiteKinematics
from forethought.sim.kinematics import ArmKinematics
from forethought.sim.mujoco_robot import MujocoRobot

ARM = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")


def random_angles(kinematics, rng, count):
    return rng.uniform(kinematics.lower, kinematics.upper, size=(count, kinematics.k))


@pytest.mark.parametrize("scene, site", [("so101_reach", "ee"), ("so101_push", "ee"), ("so101_peg", "peg_tip"), ("koch_reach", "ee")])
def test_forward_kinematics_is_mujocos_site_position(scene, site):
    kinematics = ArmKinematics(scene, site=site)
    assert kinematics.joint_names == ARM
    model = kinematics.model
    data = mujoco.MjData(model)
    q = random_angles(kinematics, np.random.default_rng(0), 20)
    batch = kinematics.site_positions(q)
    for qb, pb in zip(q, batch):
        data.qpos[:] = kinematics.reference_qpos
        data.qpos[kinematics.qpos_index] = qb
        mujoco.mj_forward(model, data)
        expected = data.site(site).xpos
        np.testing.assert_allclose(kinematics.site_position(qb), expected, atol=1e-9, rtol=0)
        np.testing.assert_allclose(pb, expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("site", ["ee", "peg_tip"])
def test_jacobian_matches_finite_differences(site):
    kinematics = ArmKinematics("so101_peg", site=site)
    rng = np.random.default_rng(1)
    q = random_angles(kinematics, rng, 10)
    positions, jacobians = kinematics.site_positions_and_jacobians(q)
    np.testing.assert_allclose(positions, kinematics.site_positions(q), atol=1e-12)
    h = 1e-6
    for qb, Jb in zip(q, jacobians):
        numeric = np.stack(
            [(kinematics.site_position(qb + h * e) - kinematics.site_position(qb - h * e)) / (2 * h) for e in np.eye(kinematics.k)],
            axis=1,
        )
        np.testing.assert_allclose(kinematics.site_jacobian(qb), numeric, atol=1e-8)
        np.testing.assert_allclose(Jb, numeric, atol=1e-8)
    # The end-effector site (the arm's published tool frame) lies 7.9 mm off the wrist_roll axis:
    # rolling swings it on that radius.
    if site == "ee":
        np.testing.assert_allclose(np.linalg.norm(jacobians[:, :, ARM.index("wrist_roll")], axis=1), 0.0079, atol=1e-4)


def test_a_subset_of_joints_gives_those_columns_with_the_others_held_at_home():
    full = ArmKinematics("so101_reach")
    part = ArmKinematics("so101_reach", joints=["elbow_flex", "shoulder_lift"])
    assert part.joint_names == ("elbow_flex", "shoulder_lift")
    q = full.home.copy()
    q[[2, 1]] = [0.3, -0.2]
    np.testing.assert_allclose(part.site_position([0.3, -0.2]), full.site_position(q), atol=1e-12)
    np.testing.assert_allclose(part.site_jacobian([0.3, -0.2]), full.site_jacobian(q)[:, [2, 1]], atol=1e-12)


@pytest.mark.parametrize("scene, site, joints", [
    ("so101_reach", "ee", None), ("so101_peg", "peg_tip", None), ("koch_reach", "ee", None),
    ("so101_reach", "ee", ["shoulder_lift", "elbow_flex"]),  # the other joints held at home
])
def test_batched_kinematics_in_torch_give_mujocos_site_positions(scene, site, joints):
    kinematics = ArmKinematics(scene, site=site, joints=joints)
    q = random_angles(kinematics, np.random.default_rng(2), 200)
    batched = BatchedSiteKinematics(kinematics)(torch.tensor(q, dtype=torch.float32).view(10, 20, -1))
    assert batched.shape == (10, 20, 3) and batched.dtype == torch.float32
    np.testing.assert_allclose(batched.reshape(200, 3).numpy(), kinematics.site_positions(q), atol=1e-6)
    q[3, 1] = np.nan  # a diverged state has no position
    assert torch.isnan(BatchedSiteKinematics(kinematics)(torch.tensor(q, dtype=torch.float32))[3]).all()


def test_kinematics_leave_a_running_simulation_alone():
    robot = MujocoRobot("so101_reach")
    x = robot.reset(seed=0)
    for _ in range(5):
        x = robot.step(x[:6] + 0.1)
    before = (robot.data.qpos.copy(), robot.data.site_xpos.copy(), robot.data.time)
    kinematics = ArmKinematics(robot.model)  # shares the model, not the data
    kinematics.site_positions_and_jacobians(random_angles(kinematics, np.random.default_rng(2), 5))
    kinematics.solve_ik([0.2, 0.1, 0.1])
    np.testing.assert_array_equal(robot.data.qpos, before[0])
    np.testing.assert_array_equal(robot.data.site_xpos, before[1])
    assert robot.data.time == before[2]


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="no site named 'tip'"):
        ArmKinematics("so101_reach", site="tip")
    with pytest.raises(ValueError, match="no joint named 'knee'"):
        ArmKinematics("so101_reach", joints=["knee"])
    with pytest.raises(ValueError, match="joint 'block' is not a hinge or slide joint"):
        ArmKinematics("so101_push", joints=["block"])
    with pytest.raises(FileNotFoundError, match="unknown scene 'so999'"):
        ArmKinematics("so999")
    kinematics = ArmKinematics("so101_reach")
    with pytest.raises(ValueError, match=r"shape \(k,\) with k = 5"):
        kinematics.site_position(np.zeros(6))
    with pytest.raises(ValueError, match=r"shape \(B, k\)"):
        kinematics.site_positions(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        kinematics.site_jacobian([0, np.nan, 0, 0, 0])
    with pytest.raises(ValueError, match="IK target"):
        kinematics.solve_ik([0.1, 0.2])


def test_ik_reaches_points_the_arm_can_reach_and_stays_within_the_limits():
    kinematics = ArmKinematics("so101_reach")
    rng = np.random.default_rng(3)
    for q in random_angles(kinematics, rng, 30):
        target = kinematics.site_position(q)
        solution = kinematics.solve_ik(target, restarts=20, seed=0)
        assert solution.residual < 1e-4
        np.testing.assert_allclose(kinematics.site_position(solution.q), target, atol=1e-4)
        assert np.all(solution.q >= kinematics.lower) and np.all(solution.q <= kinematics.upper)


def test_ik_of_an_unreachable_point_returns_the_nearest_reach_and_its_residual():
    kinematics = ArmKinematics("so101_reach")
    solution = kinematics.solve_ik([1.0, 0.0, 0.1])
    reach = np.linalg.norm(kinematics.site_position(solution.q) - [1.0, 0.0, 0.1])
    assert solution.residual == pytest.approx(reach)
    # Outstretched, the arm ends about 0.44 m from the pan axis: 0.56 m short.
    assert 0.5 < solution.residual < 0.6
    assert np.all(solution.q >= kinematics.lower) and np.all(solution.q <= kinematics.upper)


def test_ik_restarts_when_the_answer_is_rejected():
    kinematics = ArmKinematics("so101_reach")
    target = kinematics.site_position(kinematics.home + [0.4, 0.2, -0.1, 0.1, 0.0])
    first = kinematics.solve_ik(target)
    other = kinematics.solve_ik(target, restarts=20, accept=lambda q: abs(q[0] - first.q[0]) > 0.5 or abs(q[1] - first.q[1]) > 0.5)
    assert other.residual < 1e-4
    assert np.abs(other.q - first.q).max() > 0.5


# -- the IK reach controller on the simulated arm ------------------------------------------------


def reachable_targets(kinematics, count, seed):
    """Site positions of random joint angles within the limits, with the arm clear of the table
    (and the path there from home clear too), the end effector at least 3 cm above the table."""
    rng = np.random.default_rng(seed)
    home, targets = kinematics.home, []
    while len(targets) < count:
        q = rng.uniform(kinematics.lower, kinematics.upper)
        steps = int(np.ceil(np.abs(q - home).max() / 0.05))
        path = [home + (q - home) * s / steps for s in range(1, steps + 1)]
        target = kinematics.site_position(q)
        if target[2] > 0.03 and all(kinematics.arm_contacts(p) == 0 for p in path):
            targets.append(target)
    return targets


def distance_to(robot, states, target):
    out = []
    for x in states:
        robot.set_state(x)
        out.append(np.linalg.norm(robot.site_pos("ee") - target))
    return np.array(out)


def test_ik_reach_brings_the_end_effector_within_1_cm_of_ten_random_targets():
    robot = MujocoRobot("so101_reach")
    targets = reachable_targets(ArmKinematics(robot.model), 10, seed=0)
    controller = IKReachController(IKReachConfig(), robot, targets)
    rate_step = IKReachConfig().rate * robot.spec.dt
    for c, target in enumerate(targets):
        robot.set_mocap_pos("target", target)
        trial = rollout(robot, controller.policy(c), horizon=125, seed=c)  # 2.5 s
        error = distance_to(robot, trial.states, target)
        assert error[-1] < 0.01, f"target {c} {target}: {error[-1] * 1e3:.1f} mm away"
        assert error[-25:].max() < 0.01  # and it stays there
        steps = np.abs(np.diff(np.vstack([trial.states[0, :6], trial.actions]), axis=0))
        assert steps[:, :5].max() <= rate_step + 0.02  # targets move smoothly (plus the small integral term)
        np.testing.assert_allclose(trial.actions[:, 5], trial.states[0, 5])  # the gripper holds
        assert trial.metadata["interventions"]["clipped"] == 0
    assert controller.update([[trial]] * len(targets))["reach_error_m"] > 0


def test_integral_action_removes_the_servos_gravity_sag():
    robot = MujocoRobot("so101_reach")
    target = np.array([0.30, 0.0, 0.12])  # far out: the shoulder holds the most weight
    without = IKReachController(IKReachConfig(integral_gain=0.0), robot, [target])
    with_integral = IKReachController(IKReachConfig(), robot, [target])
    robot.set_mocap_pos("target", target)
    sag = distance_to(robot, rollout(robot, without.policy(0), 100, seed=0).states[-1:], target)[0]
    held = distance_to(robot, rollout(robot, with_integral.policy(0), 100, seed=0).states[-1:], target)[0]
    assert sag > 0.005 and held < 0.001


def test_ik_reach_policy_is_deterministic_and_resets():
    robot = MujocoRobot("so101_reach")
    controller = IKReachController(IKReachConfig(rate=1.0), robot, [[0.2, -0.1, 0.15]])
    policy = controller.policy(0)
    first = rollout(robot, policy, 60, seed=4)
    second = rollout(robot, policy, 60, seed=4)
    np.testing.assert_array_equal(first.actions, second.actions)
    np.testing.assert_array_equal(first.states, second.states)


def test_build_from_an_experiment_uses_the_conditions_targets():
    robot = MujocoRobot("so101_reach")
    task = Task(horizon=10, conditions=({"target": [0.2, 0.05, 0.12]}, {"target": [0.15, -0.1, 0.2]}), scene="so101_reach")
    controller = build_ik_reach({"rate": 1.5}, robot, task)
    assert controller.config.rate == 1.5
    for target, goal in zip(controller.targets, controller.goals):
        np.testing.assert_allclose(controller.kinematics.site_position(goal[:5]), target, atol=1e-3)
    # No target in the conditions: the scene's own target site.
    plain = build_ik_reach({}, robot, Task(horizon=10, scene="so101_reach"))
    np.testing.assert_allclose(plain.targets[0], robot.model.key_mpos[0])


def test_build_rejects_bad_parameters_and_robots_with_one_line():
    robot = MujocoRobot("so101_reach")
    task = Task(horizon=10, scene="so101_reach")
    with pytest.raises(ConfigError, match="unknown key 'speed'"):
        build_ik_reach({"speed": 2}, robot, task)
    with pytest.raises(ConfigError, match="rate must be positive"):
        build_ik_reach({"rate": 0}, robot, task)
    with pytest.raises(ConfigError, match=r"target \[1.0, 0.0, 0.1\] is out of reach of site 'ee'"):
        build_ik_reach({}, robot, Task(horizon=10, conditions=({"target": [1.0, 0.0, 0.1]},)))
    with pytest.raises(ConfigError, match="actuator 'force' is not a joint position servo"):
        build_ik_reach({}, MujocoRobot("cartpole"), task)
    with pytest.raises(ConfigError, match="needs a MuJoCo arm scene"):
        build_ik_reach({}, object(), task)


@pytest.mark.parametrize("scene, site, joints", [
    ("so101_peg", "peg_tip", None), ("koch_reach", "ee", None), ("so101_reach", "ee", ["elbow_flex", "shoulder_lift"]),
])
def test_batched_kinematics_in_float64_give_mujocos_positions_and_jacobians(scene, site, joints):
    kinematics = ArmKinematics(scene, site=site, joints=joints)
    q = random_angles(kinematics, np.random.default_rng(3), 30)
    p, J = BatchedSiteKinematics(kinematics).position_and_jacobian(torch.tensor(q).view(5, 6, -1))
    assert p.dtype == J.dtype == torch.float64 and J.shape == (5, 6, 3, kinematics.k)
    expected_p, expected_J = kinematics.site_positions_and_jacobians(q)
    np.testing.assert_allclose(p.reshape(30, 3).numpy(), expected_p, atol=1e-12, rtol=0)
    np.testing.assert_allclose(J.reshape(30, 3, -1).numpy(), expected_J, atol=1e-12, rtol=0)
