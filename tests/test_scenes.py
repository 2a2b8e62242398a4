"""The project's MJCF scenes: they load, stay stable under random actions, and carry the physical
parameters they claim (PILCO's cart-pole and pendulum, an SO-101-like arm with STS3215-like servos)."""

import mujoco
import numpy as np
import pytest
from scipy.optimize import least_squares

from forethought.controllers.policy import RandomPolicy
from forethought.robots.arm_description import load_arm
from forethought.robots.trial import rollout
from forethought.sim.kinematics import ArmKinematics
from forethought.sim.mujoco_robot import MujocoRobot
from forethought.sim.scenes import scene_names, scene_path

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


@pytest.mark.parametrize("scene", ARM_SCENES + ["cartpole", "pendulum"])
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


# -- the SO-101-like arm --------------------------------------------------------------------------


@pytest.mark.parametrize("scene", ARM_SCENES)
def test_arm_scenes_name_joints_and_servos_like_lerobot(scene):
    robot = MujocoRobot(scene)
    assert robot.spec.action_names == ARM_JOINTS
    assert robot.spec.state_names[:6] == ARM_JOINTS
    assert robot.spec.dt == pytest.approx(0.02)
    arm = load_arm("so101")  # the hardware description shares the scene's limits
    np.testing.assert_allclose(robot.spec.action_low, arm.lower)
    np.testing.assert_allclose(robot.spec.action_high, arm.upper)
    model = robot.model
    for name, lower, upper in zip(arm.names, arm.lower, arm.upper):
        np.testing.assert_allclose(model.joint(name).range, [lower, upper])


def test_arm_masses_lengths_and_servos_are_close_to_the_so101():
    model = MujocoRobot("so101_reach").model
    base = model.body("base").id
    assert 0.6 <= model.body_subtreemass[base] <= 0.8
    servos = [g.mass for g in mujoco.MjSpec.from_file(str(scene_path("so101_reach"))).geoms if g.name.endswith("servo")]
    assert servos == pytest.approx([0.055] * 6)
    assert np.rad2deg(model.joint("shoulder_pan").range[1]) == pytest.approx(110, abs=1)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)  # zero pose

    def axis_point(joint):
        return data.xanchor[model.joint(joint).id]

    assert np.linalg.norm(axis_point("elbow_flex") - axis_point("shoulder_lift")) == pytest.approx(0.116, abs=1e-6)
    assert np.linalg.norm(axis_point("wrist_flex") - axis_point("elbow_flex")) == pytest.approx(0.135, abs=1e-6)
    jaw = model.geom("static_jaw")
    jaw_tip = data.geom_xpos[jaw.id][0] + jaw.size[0]
    assert jaw_tip - axis_point("wrist_flex")[0] == pytest.approx(0.10, abs=1e-6)
    for name in ARM_JOINTS[:5]:
        a = model.actuator(name)
        np.testing.assert_allclose(a.forcerange, [-2.94, 2.94])
        assert -a.biasprm[1] == pytest.approx(a.gainprm[0])  # a position servo
    assert model.actuator("gripper").forcerange[1] < 2.94


def test_servos_settle_a_step_without_ringing():
    robot = MujocoRobot("so101_reach")
    x = robot.reset(seed=0)
    home = x[:6]
    for j in range(5):
        robot.set_state(np.concatenate([home, np.zeros(6)]))
        goal = home.copy()
        goal[j] += 0.5
        path = np.array([robot.step(goal)[j] for _ in range(25)])  # 0.5 s
        assert abs(path[-1] - goal[j]) < 0.03, ARM_JOINTS[j]  # gravity sag only
        assert path.max() - path[-1] < 0.01, f"{ARM_JOINTS[j]} overshoots"
        assert np.all(np.abs(path[10:] - path[-1]) < 0.01), f"{ARM_JOINTS[j]} has not settled in 0.2 s"
        assert np.abs(robot.get_state()[6:12]).max() < 0.05


@pytest.mark.parametrize("scene", ARM_SCENES)
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

    fit = least_squares(lambda p: kinematics.site_position(angles(p)) - tip, x0=[np.arctan2(tip[1], tip[0]), 0.0, 0.6])
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
