"""The project's MJCF scenes: they load, stay stable under random actions, and carry the physical
parameters they claim (PILCO's cart-pole and pendulum; the SO-101 and Koch arms' published chains,
masses and tool frames, the SO-101's STS3215 servos)."""

from typing import NamedTuple

import mujoco
import numpy as np
import pytest
from scipy.optimize import least_squares

from forethought.controllers.policy import RandomPolicy
from forethought.robots.arm_description import load_arm
from forethought.robots.trial import rollout
from forethought.sim.kinematics import ArmKinematics
from forethought.sim.mujoco_robot import MujocoRobot
from forethought.sim.scenes import scene_names

ARM_SCENES = ["so101_reach", "so101_push", "so101_peg"]
ARM_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


def body_pos(model, data, name):
    return data.xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)]


@pytest.mark.parametrize("scene", scene_names())
def test_scene_stays_stable_for_ten_seconds_of_random_actions(scene):
    robot = MujocoRobot(scene)
    steps = int(round(10.0 / robot.spec.dt))
    trial = rollout(robot, RandomPolicy(robot.spec, seed=1), steps, seed=0)  # raises if MuJoCo goes unstable
    assert np.all(np.isfinite(trial.states))
    model = robot.model
    for j in range(model.njnt):
        if model.jnt_limited[j]:
            q = trial.states[:, model.jnt_qposadr[j]]
            low, high = model.jnt_range[j]
            assert np.all((q > low - 0.05) & (q < high + 0.05)), f"joint {model.joint(j).name} left its range"
    velocities = trial.states[:, model.nq :]
    assert np.abs(velocities).max() < 100.0


@pytest.mark.parametrize("scene", ARM_SCENES + ["koch_reach", "cartpole", "pendulum"])
def test_task_scenes_are_listed_and_have_a_home_keyframe(scene):
    assert scene in scene_names()
    model = MujocoRobot(scene).model
    assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, "home") >= 0
    assert "so101_arm" not in scene_names()  # a part, not a scene


# -- PILCO's cart-pole and pendulum ---------------------------------------------------------------


def pilco_cartpole_acceleration(x, dx, theta, dtheta, f, M=0.5, m=0.5, l=0.6, b=0.1, g=9.82):
    """PILCO's cart-pole ODE (uniform pole of length l, theta = 0 hanging): (ddx, ddtheta)."""
    s, c = np.sin(theta), np.cos(theta)
    ddx = (2 * m * l * dtheta**2 * s + 3 * m * g * s * c + 4 * f - 4 * b * dx) / (4 * (M + m) - 3 * m * c**2)
    ddtheta = (-3 * m * l * dtheta**2 * s * c - 6 * (M + m) * g * s - 6 * (f - b * dx) * c) / (4 * l * (M + m) - 3 * m * l * c**2)
    return np.array([ddx, ddtheta])


def test_cartpole_has_pilcos_parameters():
    robot = MujocoRobot("cartpole")
    model = robot.model
    assert robot.spec.state_names == ("cart", "pole", "d_cart", "d_pole")
    assert robot.spec.dt == pytest.approx(0.1)
    np.testing.assert_allclose([robot.spec.action_low[0], robot.spec.action_high[0]], [-10.0, 10.0])
    assert model.body("cart").mass[0] == pytest.approx(0.5)
    assert model.body("pole").mass[0] == pytest.approx(0.5)
    assert model.body("pole").ipos[2] == pytest.approx(-0.3)  # centre of a 0.6 m rod, hanging at home
    assert model.body("pole").inertia[0] == pytest.approx(0.5 * 0.6**2 / 12)
    assert model.joint("cart").damping[0] == pytest.approx(0.1)
    assert not model.jnt_limited[model.joint("cart").id]  # no end stop on the rail
    np.testing.assert_allclose(model.geom("pole").size[1] * 2, 0.6)  # the drawn pole is the physical one
    np.testing.assert_allclose(model.opt.gravity, [0, 0, -9.82])


def test_cartpole_accelerations_are_pilcos_ode():
    model = MujocoRobot("cartpole").model
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, dx, theta, dtheta = rng.normal(size=4) * [1.0, 2.0, 3.0, 5.0]
        f = rng.uniform(-10, 10)
        data.qpos[:], data.qvel[:], data.ctrl[:] = [x, theta], [dx, dtheta], [f]
        mujoco.mj_forward(model, data)
        np.testing.assert_allclose(data.qacc, pilco_cartpole_acceleration(x, dx, theta, dtheta, f), rtol=1e-9, atol=1e-9)


def test_pendulum_has_pilcos_parameters_and_ode():
    robot = MujocoRobot("pendulum")
    model = robot.model
    assert robot.spec.state_names == ("pole", "d_pole")
    assert robot.spec.dt == pytest.approx(0.1)
    np.testing.assert_allclose([robot.spec.action_low[0], robot.spec.action_high[0]], [-2.5, 2.5])
    m, l, b, g = 1.0, 1.0, 0.01, 9.82
    assert model.body("pole").mass[0] == pytest.approx(m)
    data = mujoco.MjData(model)
    rng = np.random.default_rng(1)
    for _ in range(20):
        theta, dtheta, u = rng.normal() * 3, rng.normal() * 5, rng.uniform(-2.5, 2.5)
        data.qpos[:], data.qvel[:], data.ctrl[:] = [theta], [dtheta], [u]
        mujoco.mj_forward(model, data)
        expected = (u - b * dtheta - m * g * l * np.sin(theta) / 2) / (m * l**2 / 3)
        assert data.qacc[0] == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("scene", ["cartpole", "pendulum"])
def test_pole_hangs_at_home_and_starts_with_small_noise(scene):
    robot = MujocoRobot(scene)
    starts = np.array([robot.reset(seed=s) for s in range(200)])
    pole = robot.spec.state_names.index("pole")
    assert abs(starts[:, pole].mean()) < 0.03
    assert starts[:, pole].std() == pytest.approx(0.1, rel=0.2)
    mujoco.mj_resetDataKeyframe(robot.model, robot.data, 0)
    mujoco.mj_forward(robot.model, robot.data)
    pivot_z = body_pos(robot.model, robot.data, "pole")[2]
    centre_z = robot.data.xipos[robot.model.body("pole").id][2]
    assert centre_z < pivot_z - 0.25


# -- the arms: the published chains ----------------------------------------------------------------


class PublishedBody(NamedTuple):
    """One body of a published arm model, in its parent's frame: pos (m), quat (w x y z); its joint
    turns about `axis` (in the body's frame) by `direction` times the scene's angle, within `range`
    (rad, the scene's angle); mass (kg), com (m) and inertia (3x3, kg m^2 about the com) in its frame."""

    parent: str | None
    pos: tuple
    quat: tuple
    joint: str | None
    axis: tuple
    direction: int
    range: tuple | None
    mass: float
    com: tuple
    inertia: np.ndarray


def full_inertia(ixx, iyy, izz, ixy, ixz, iyz):
    return np.array([[ixx, ixy, ixz], [ixy, iyy, iyz], [ixz, iyz, izz]])


def quat_matrix(quat):
    w, x, y, z = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def principal_inertia(quat, diagonal):
    R = quat_matrix(quat)
    return R @ np.diag(diagonal) @ R.T


def axis_rotation(axis, angle):
    k = np.asarray(axis, dtype=np.float64)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


Z = (0, 0, 1)
# The SO-101 (TheRobotStudio/SO-ARM100, Simulation/SO101/so101_new_calib.xml, as in
# ../shared/anchors/so101-published-model.md; its "lower_arm" is ours, its "moving_jaw_so101_v1" our
# "moving_jaw"). Each joint turns about its body's z, in the published direction.
SO101 = {
    "base": PublishedBody(None, (0, 0, 0), (1, 0, 0, 0), None, Z, 1, None, 0.147, (0.0137179, -5.19711e-05, 0.0334843),
                          full_inertia(0.000114686, 0.000136117, 0.000130364, -4.59787e-07, 4.97151e-06, 9.75275e-08)),
    "shoulder": PublishedBody("base", (0.0388353, 0, 0.0624), (0, 0, -1, 0), "shoulder_pan", Z, 1, (-1.91986, 1.91986), 0.100006,
                              (-0.0307604, -1.66727e-05, -0.0252713),
                              full_inertia(8.3759e-05, 8.10403e-05, 2.39783e-05, 7.55525e-08, -1.16342e-06, 1.54663e-07)),
    "upper_arm": PublishedBody("shoulder", (-0.0303992, -0.0182778, -0.0542), (0.5, -0.5, -0.5, -0.5), "shoulder_lift", Z, 1,
                               (-1.74533, 1.74533), 0.103, (-0.0898471, -0.00838224, 0.0184089),
                               full_inertia(4.08002e-05, 0.000147318, 0.000142487, -1.97819e-05, -4.03016e-08, 8.97326e-09)),
    "lower_arm": PublishedBody("upper_arm", (-0.11257, -0.028, 0), (0.707107, 0, 0, 0.707107), "elbow_flex", Z, 1, (-1.69, 1.69),
                               0.104, (-0.0980701, 0.00324376, 0.0182831),
                               full_inertia(2.87438e-05, 0.000159844, 0.00014529, 7.41152e-06, 1.26409e-06, -4.90188e-08)),
    "wrist": PublishedBody("lower_arm", (-0.1349, 0.0052, 0), (0.707107, 0, 0, -0.707107), "wrist_flex", Z, 1, (-1.65806, 1.65806),
                           0.079, (-0.000103312, -0.0386143, 0.0281156),
                           full_inertia(3.68263e-05, 2.5391e-05, 2.1e-05, 1.7893e-08, -5.28128e-08, 3.6412e-06)),
    "gripper": PublishedBody("wrist", (0, -0.0611, 0.0181), (0.0172091, -0.0172091, 0.706897, 0.706897), "wrist_roll", Z, 1,
                             (-2.74385, 2.84121), 0.087, (0.000213627, 0.000245138, -0.025187),
                             full_inertia(2.75087e-05, 4.33657e-05, 3.45059e-05, -3.35241e-07, -5.7352e-06, -5.17847e-08)),
    "moving_jaw": PublishedBody("gripper", (0.0202, 0.0188, -0.0234), (0.707107, 0.707107, 0, 0), "gripper", Z, 1,
                                (-0.17453, 1.74533), 0.012, (-0.00157495, -0.0300244, 0.0192755),
                                full_inertia(6.61427e-06, 1.89032e-06, 5.28738e-06, -3.19807e-07, -5.90717e-09, -1.09945e-07)),
}
SO101_TOOL = ((-0.0079, -0.000218121, -0.0981274), (0.707107, 0, 0.707107, 0))  # "gripperframe" in the gripper body

# The Koch v1.1 (s1lent4gnt/koch-v1-1, simulation/follower.urdf: frames and axis lines; MuJoCo
# Menagerie's low_cost_robot_arm: masses, centres of mass, inertias, joint ranges; the base is the
# URDF's base link). The URDF's link frames are parallel; the scene's directions are the SO-101's,
# so shoulder_lift, elbow_flex, wrist_flex and gripper turn against the URDF's axes (direction -1),
# and Menagerie's ranges are flipped where its axis is the URDF's (all of those but the elbow's).
I = (1, 0, 0, 0)
KOCH = {
    "base": PublishedBody(None, (0, 0, 0), I, None, Z, 1, None, 0.024929, (0.052562, 0.0056915, 0.0023276),
                          full_inertia(3.8411e-05, 1.0987e-05, 4.9192e-05, -2.3161e-06, 1.8015e-07, 1.4265e-07)),
    "shoulder": PublishedBody("base", (0.012, 0, 0.0409), I, "shoulder_pan", (0, 0, -1), 1, (-2.2, 2.2), 0.05014,
                              (0.011924, -0.00048792, 0.013381),
                              principal_inertia((-0.0190903, 0.705417, 0.0178052, 0.708312), (1.44921e-05, 1.2371e-05, 7.59138e-06))),
    "upper_arm": PublishedBody("shoulder", (0, -0.0209, 0.0154), I, "shoulder_lift", (0, 1, 0), -1, (-0.6, 1.57), 0.050177,
                               (0.0011747, 0.02097, 0.071547),
                               principal_inertia((0.998768, 2.01447e-05, 0.0496266, 0.000367169), (3.73065e-05, 3.3772e-05, 7.94901e-06))),
    "lower_arm": PublishedBody("upper_arm", (-0.0148, 0.0065, 0.1083), I, "elbow_flex", (0, 1, 0), -1, (-1.57, 1.45), 0.06379,
                               (-0.05537, 0.014505, 0.0028659),
                               principal_inertia((8.17663e-05, 0.710999, -4.16983e-05, 0.703193), (2.45081e-05, 2.2231e-05, 7.34061e-06))),
    "wrist": PublishedBody("lower_arm", (-0.10048, 5e-05, 0.0026999), I, "wrist_flex", (0, 1, 0), -1, (-2.0, 2.0), 0.019805,
                           (-0.02652, 0.019195, -9.0614e-06),
                           principal_inertia((0.707361, 0.706812, 0.00580344, 0.00484124), (2.95813e-06, 2.8759e-06, 1.07787e-06))),
    "gripper": PublishedBody("wrist", (-0.045, 0.013097, 0), I, "wrist_roll", (1, 0, 0), 1, (-3.14, 3.14), 0.029277,
                             (-0.019091, 0.0053379, 0.00018011),
                             principal_inertia((0.105295, 0.703509, -0.0986543, 0.695885), (8.11303e-06, 7.14908e-06, 3.27429e-06))),
    "moving_jaw": PublishedBody("gripper", (-0.01315, -0.0075, 0.0145), I, "gripper", (0, 0, -1), -1, (-0.032, 1.6), 0.012831,
                                (-0.02507, 0.0010817, -0.01414),
                                principal_inertia((0.528148, 0.5474, 0.466496, 0.451436), (3.49922e-06, 2.45768e-06, 1.4645e-06))),
}
# Menagerie's fingertip pads: the static one in the gripper body, the moving one in the jaw's.
KOCH_PADS = ((-0.0668, 0.0105, 0.00045), (-0.0535, 0.0113, -0.01395))

ARMS = {"so101": (SO101, ["so101_reach", "so101_push", "so101_peg"]), "koch": (KOCH, ["koch_reach"])}


def published_frames(bodies, angles, base_rotation, base_position):
    """World (R (3, 3), p (3,)) of every body at `angles` (joint name -> the scene's angle, rad),
    with the base body at (base_rotation, base_position)."""
    frames = {}
    for name, body in bodies.items():  # parents first
        if body.parent is None:
            R, p = base_rotation, base_position
        else:
            R_parent, p_parent = frames[body.parent]
            R, p = R_parent @ quat_matrix(body.quat), p_parent + R_parent @ np.asarray(body.pos, dtype=np.float64)
        if body.joint:
            R = R @ axis_rotation(body.axis, body.direction * angles[body.joint])
        frames[name] = (R, p)
    return frames


@pytest.mark.parametrize("arm", ARMS)
def test_the_scene_is_the_arms_published_chain(arm):
    bodies, scenes = ARMS[arm]
    for scene in scenes:
        model = MujocoRobot(scene).model
        data = mujoco.MjData(model)
        # The frames are the published ones, each joint at its body's origin.
        for name, body in bodies.items():
            if body.parent is not None:
                assert model.body(model.body(name).parentid[0]).name == body.parent
                np.testing.assert_allclose(model.body(name).pos, body.pos, atol=1e-9, err_msg=name)
                np.testing.assert_allclose(quat_matrix(model.body(name).quat), quat_matrix(body.quat), atol=1e-6, err_msg=name)
            if body.joint:
                joint = model.joint(body.joint)
                assert joint.bodyid[0] == model.body(name).id
                np.testing.assert_allclose(joint.pos, 0.0, atol=1e-12)
                np.testing.assert_allclose(joint.axis, body.direction * np.asarray(body.axis), atol=1e-12, err_msg=body.joint)
                np.testing.assert_allclose(joint.range, body.range, atol=1e-12, err_msg=body.joint)
                np.testing.assert_allclose(model.actuator(body.joint).ctrlrange, body.range, atol=1e-12, err_msg=body.joint)
            assert model.body(name).mass[0] == pytest.approx(body.mass, abs=1e-9), name
        tool = sum(model.body(b).mass[0] for b in ("peg", "tool") if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, b) >= 0)
        total = model.body_subtreemass[model.body("base").id] - tool  # the peg of so101_peg is not the arm's
        assert total == pytest.approx(sum(b.mass for b in bodies.values()), abs=1e-9)

        # Joint positions and axes, centres of mass and inertias, at zero and anywhere in the ranges.
        joints = [b.joint for b in bodies.values() if b.joint]
        low, high = np.array([model.joint(j).range for j in joints]).T
        rng = np.random.default_rng(0)
        for q in [np.zeros(len(joints))] + list(rng.uniform(low, high, size=(10, len(joints)))):
            data.qpos[[model.joint(j).qposadr[0] for j in joints]] = q
            mujoco.mj_kinematics(model, data)
            mujoco.mj_comPos(model, data)
            base = model.body("base").id
            frames = published_frames(bodies, dict(zip(joints, q)), data.xmat[base].reshape(3, 3), data.xpos[base])
            for name, body in bodies.items():
                R, p = frames[name]
                b = model.body(name).id
                np.testing.assert_allclose(data.xpos[b], p, atol=1e-7, err_msg=name)
                np.testing.assert_allclose(data.xipos[b], p + R @ np.asarray(body.com), atol=1e-7, err_msg=name)
                ximat = data.ximat[b].reshape(3, 3)
                inertia = ximat @ np.diag(model.body_inertia[b]) @ ximat.T
                np.testing.assert_allclose(inertia, R @ body.inertia @ R.T, atol=1e-10, err_msg=name)
                if body.joint:
                    j = model.joint(body.joint).id
                    np.testing.assert_allclose(data.xanchor[j], p, atol=1e-7, err_msg=body.joint)
                    np.testing.assert_allclose(data.xaxis[j], R @ (body.direction * np.asarray(body.axis)), atol=1e-6, err_msg=body.joint)
            if arm == "so101":
                R, p = frames["gripper"]
                np.testing.assert_allclose(data.site_xpos[model.site("ee").id], p + R @ np.asarray(SO101_TOOL[0]), atol=1e-7)
                np.testing.assert_allclose(data.site_xmat[model.site("ee").id].reshape(3, 3), R @ quat_matrix(SO101_TOOL[1]), atol=1e-6)


def test_the_koch_tool_frame_lies_between_the_closed_jaws_tips():
    model = MujocoRobot("koch_reach").model
    site = model.site("ee")
    assert site.bodyid[0] == model.body("gripper").id
    static_pad, moving_pad = np.asarray(KOCH_PADS[0]), np.asarray(KOCH["moving_jaw"].pos) + KOCH_PADS[1]  # jaws closed
    np.testing.assert_allclose(site.pos, (static_pad + moving_pad) / 2, atol=1e-4)
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)  # zero pose: the tool frame is the world's, x out of the hand
    np.testing.assert_allclose(data.site_xmat[site.id].reshape(3, 3), np.eye(3), atol=1e-9)


@pytest.mark.parametrize("scene", ["so101_reach", "koch_reach"])
def test_zero_pose_stands_up_with_forearm_and_hand_level_and_forward(scene):
    model = MujocoRobot(scene).model
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    anchor = {j: data.xanchor[model.joint(j).id] for j in ARM_JOINTS[:5]}
    assert np.allclose(anchor["shoulder_pan"][:2], 0.0, atol=1e-6)  # the pan axis at the origin
    upper = anchor["elbow_flex"] - anchor["shoulder_lift"]
    assert upper[2] > 0.1 and abs(upper[0]) < 0.3 * upper[2]  # the upper arm up
    for a, b in (("elbow_flex", "wrist_flex"), ("wrist_flex", "wrist_roll")):
        assert abs(anchor[b][2] - anchor[a][2]) < 0.006 and anchor[b][0] - anchor[a][0] > 0.04  # level, forward
    # Positive lift, elbow and wrist flex tilt forward and down; positive pan turns right.
    ee_zero = data.site_xpos[model.site("ee").id].copy()
    for joint in ("shoulder_lift", "elbow_flex", "wrist_flex", "shoulder_pan"):
        data.qpos[:] = 0
        data.qpos[model.joint(joint).qposadr[0]] = 0.3
        mujoco.mj_kinematics(model, data)
        ee = data.site_xpos[model.site("ee").id]
        if joint == "shoulder_pan":
            assert ee[1] < -0.05
        else:
            assert ee[2] < ee_zero[2] - 0.02


@pytest.mark.parametrize("arm, scene", [("so101", s) for s in ARMS["so101"][1]] + [("koch", "koch_reach")])
def test_arm_descriptions_share_the_scenes_joints_and_limits(arm, scene):
    robot = MujocoRobot(scene)
    assert robot.spec.action_names == ARM_JOINTS
    assert robot.spec.state_names[:6] == ARM_JOINTS
    assert robot.spec.dt == pytest.approx(0.02)
    description = load_arm(arm)
    assert description.names == ARM_JOINTS
    np.testing.assert_allclose(robot.spec.action_low, description.lower)
    np.testing.assert_allclose(robot.spec.action_high, description.upper)
    for name, lower, upper in zip(description.names, description.lower, description.upper):
        np.testing.assert_allclose(robot.model.joint(name).range, [lower, upper])
    # The calibration poses lie within the limits and clear of the table.
    kinematics = ArmKinematics(robot.model)
    for pose in description.calibration_poses.values():
        assert np.all(pose >= description.lower) and np.all(pose <= description.upper)
        assert kinematics.arm_contacts(np.asarray(pose)[:5]) == 0


def test_so101_servos_are_the_published_sts3215s():
    model = MujocoRobot("so101_reach").model
    for name in ARM_JOINTS:
        joint = model.joint(name)
        assert (joint.damping[0], joint.frictionloss[0], joint.armature[0]) == pytest.approx((0.60, 0.052, 0.028))
    for name in ARM_JOINTS[:5]:
        a = model.actuator(name)
        np.testing.assert_allclose(a.forcerange, [-2.94, 2.94])  # the stall torque at 12 V
        assert -a.biasprm[1] == pytest.approx(a.gainprm[0])  # a position servo
        assert 2.94 / a.gainprm[0] == pytest.approx(0.12, abs=0.01)  # at stall 0.12 rad from its goal
    assert model.actuator("gripper").forcerange[1] == pytest.approx(2.94 / 2)  # half torque


def test_servos_settle_a_step_without_ringing():
    robot = MujocoRobot("so101_reach")
    x = robot.reset(seed=0)
    home = x[:6]
    kp = robot.model.actuator_gainprm[:5, 0]
    friction = robot.model.dof_frictionloss[:5]
    for j, step in enumerate([0.5, -0.5, -0.5, -0.5, 0.5]):  # lift, elbow and wrist away from the table
        robot.set_state(np.concatenate([home, np.zeros(6)]))
        goal = home.copy()
        goal[j] += step
        path = np.sign(step) * np.array([robot.step(goal)[j] for _ in range(25)])  # 0.5 s
        assert robot.data.ncon == 0
        # At rest the servo holds gravity's torque with its error (and friction some of it).
        sag = (goal[j] - robot.get_state()[j]) * kp[j]
        assert abs(sag - robot.data.qfrc_bias[j]) < friction[j] + 0.02, ARM_JOINTS[j]
        assert path.max() - path[-1] < 0.005, f"{ARM_JOINTS[j]} overshoots"
        assert np.all(np.abs(path[10:] - path[-1]) < 0.01), f"{ARM_JOINTS[j]} has not settled in 0.2 s"
        assert np.abs(robot.get_state()[6:12]).max() < 0.05


@pytest.mark.parametrize("scene", ARM_SCENES + ["koch_reach"])
def test_home_pose_is_above_the_table_and_touches_nothing(scene):
    kinematics = ArmKinematics(scene)
    assert kinematics.arm_contacts(kinematics.home) == 0
    assert kinematics.site_position(kinematics.home)[2] > 0.05


def test_reach_target_is_a_mocap_marker_that_the_arm_can_reach():
    robot = MujocoRobot("so101_reach")
    model = robot.model
    target = model.site("target")
    assert model.body_mocapid[target.bodyid[0]] >= 0
    assert model.body(target.bodyid[0]).geomnum[0] == 0  # nothing to collide with
    robot.reset(seed=0)
    robot.set_mocap_pos("target", [0.2, -0.1, 0.15])
    np.testing.assert_allclose(robot.site_pos("target"), [0.2, -0.1, 0.15])
    assert ArmKinematics(model).solve_ik(robot.site_pos("target")).residual < 1e-4


def test_push_block_rests_on_the_table_within_reach():
    robot = MujocoRobot("so101_push")
    assert robot.spec.state_names[6:13] == ("block:x", "block:y", "block:z", "block:qw", "block:qx", "block:qy", "block:qz")
    x = robot.reset(seed=0)
    for _ in range(50):
        x = robot.step(x[:6])
    block = x[6:9]
    assert block[2] == pytest.approx(0.02, abs=1e-3)  # a 4 cm cube resting on the table top z = 0
    assert robot.model.body("block").mass[0] == pytest.approx(0.05)
    kinematics = ArmKinematics(robot.model)
    target = robot.site_pos("block_target")
    assert target[2] == pytest.approx(0.0, abs=1e-3)
    for point in (block, target):
        assert kinematics.solve_ik(point + [0, 0, 0.01], restarts=10).residual < 1e-4
    # Friction holds the block still while the arm rests; the arm can shove it.
    assert np.linalg.norm(x[6:8] - [0.22, 0.06]) < 1e-3


def peg_down_pose(kinematics, tip):
    """Arm angles (k,) that put peg_tip at `tip` (3,) with the peg pointing straight down."""

    def angles(p):
        pan, lift, elbow = p
        return np.array([pan, lift, elbow, np.pi / 2 - lift - elbow, 0.0])

    fit = least_squares(lambda p: kinematics.site_position(angles(p)) - tip, x0=[-np.arctan2(tip[1], tip[0]), 0.0, 0.6])
    return angles(fit.x)


def test_peg_is_fixed_to_the_gripper_and_fits_the_hole_with_a_few_mm_of_clearance():
    model = MujocoRobot("so101_peg").model
    peg = ArmKinematics(model, site="peg_tip")
    assert peg.joint_names == ARM_JOINTS[:5]  # moves only with the arm: rigidly held
    assert model.site("peg_tip").bodyid[0] == model.geom("peg").bodyid[0]
    assert model.body(model.site("peg_tip").bodyid[0]).parentid[0] == model.body("gripper").id
    radius = model.geom("peg").size[0]
    assert radius == pytest.approx(0.01)
    walls = {name: model.geom(f"hole_wall_{name}") for name in ("left", "right", "front", "back")}
    width_y = (walls["left"].pos[1] - walls["left"].size[1]) - (walls["right"].pos[1] + walls["right"].size[1])
    width_x = (walls["front"].pos[0] - walls["front"].size[0]) - (walls["back"].pos[0] + walls["back"].size[0])
    for width in (width_x, width_y):
        assert 0.002 <= (width - 2 * radius) / 2 <= 0.005

    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    bottom = data.site_xpos[model.site("hole_bottom").id].copy()
    inserted = peg_down_pose(peg, bottom + [0, 0, 0.001])
    np.testing.assert_allclose(peg.site_position(inserted), bottom + [0, 0, 0.001], atol=1e-6)
    assert peg.arm_contacts(inserted) == 0  # all the way in, touching nothing
    off_centre = peg_down_pose(peg, bottom + [0.006, 0, 0.01])
    assert peg.arm_contacts(off_centre) > 0  # 6 mm off centre hits a wall


def test_the_servos_can_lower_the_peg_into_the_hole():
    robot = MujocoRobot("so101_peg")
    peg = ArmKinematics(robot.model, site="peg_tip")
    robot.reset(seed=0)
    bottom = robot.site_pos("hole_bottom")
    above = peg_down_pose(peg, bottom + [0, 0, 0.06])
    inside = peg_down_pose(peg, bottom + [0, 0, 0.002])
    robot.set_state(np.concatenate([above, [0.0], np.zeros(6)]))
    for s in np.linspace(0, 1, 50):  # 1 s down, then 1 s to settle
        robot.step(np.append(above + s * (inside - above), 0.0))
    for _ in range(50):
        robot.step(np.append(inside, 0.0))
    tip = robot.site_pos("peg_tip")
    assert np.linalg.norm(tip[:2] - bottom[:2]) < 0.004
    assert tip[2] - bottom[2] < 0.01  # more than half way into the 20 mm deep hole
