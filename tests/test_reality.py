"""The reality gap: its YAML file, the MuJoCo parameters it writes into a scene, and RealityArm's
delay line, servo sampling, backlash and encoder noise."""

import mujoco
import numpy as np
import pytest

from forethought.robots.config import ConfigError
from forethought.robots.trial import rollout
from forethought.robots.trial_log import TrialWriter, load_trial
from forethought.sim.mujoco_robot import MujocoRobot
from forethought.sim.reality import GoalPath, RealityArm, Reality, load_reality, reality_model
from forethought.sim.scenes import SCENE_DIR, scene_path
from forethought.sim.servo_model import PAYLOAD_BODY, servo_parameters

SCENE = "so101_reach"
HOME = np.array([0.0, -0.4, 0.5, 1.0, 0.0, 0.3])


def write(tmp_path, text: str):
    path = tmp_path / "reality.yaml"
    path.write_text(text)
    return path


def test_the_shipped_reality_differs_in_every_listed_parameter():
    reality = load_reality(SCENE_DIR / "so101_reality.yaml")
    assert set(reality.changes) == {"damping", "armature", "frictionloss", "kp", "kv"}
    assert reality.backlash["all"] > 0 and reality.payload.mass > 0 and reality.encoder_noise.std > 0
    assert reality.servo_period > 0 and reality.latency > 0


@pytest.mark.parametrize("text, where", [
    ("dampin: {scale: 2}", "unknown key 'dampin'"),
    ("damping: {scale: 2, value: 1}", "damping: give exactly one"),
    ("kp: {elbow_flex: {scale: -1}}", "kp.elbow_flex: scale must be positive"),
    ("kp: {elbow_flex: {scal: 2}}", "kp.elbow_flex: unknown key 'scal'"),
    ("damping: 2", "damping: expected"),
    ("backlash: {wrist_flex: -0.5}", "backlash.wrist_flex: expected a play in deg"),
    ("encoder_noise: {std: 1, unit: rad}", "encoder_noise: unit must be deg or ticks"),
    ("latency: -0.01", "latency: expected seconds"),
    ("payload: {mass: 0.05, site: nowhere}", "payload.site: the scene has no site 'nowhere'"),
    ("armature: {elbw: {scale: 2}}", "armature.elbw: the scene has no servo joint 'elbw'"),
])
def test_a_bad_reality_file_is_one_line_naming_the_file_and_key(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        reality_model(SCENE, load_reality(path))
    message = str(err.value)
    assert str(path) in message and where in message and "\n" not in message


def test_the_reality_writes_its_parameters_into_the_scene(tmp_path):
    path = write(tmp_path, "damping: {scale: 2}\narmature: {all: {scale: 1.5}, gripper: {value: 0.01}}\n"
                           "frictionloss: {value: 0.1}\nkp: {shoulder_lift: {scale: 0.5}}\nkv: {scale: 3}\n"
                           "payload: 0.05\n")
    nominal = servo_parameters(mujoco.MjModel.from_xml_path(str(scene_path(SCENE))))
    model = reality_model(SCENE, load_reality(path))
    real = servo_parameters(model)
    np.testing.assert_allclose(real.damping, 2 * nominal.damping)
    np.testing.assert_allclose(real.armature, [*1.5 * nominal.armature[:5], 0.01])
    np.testing.assert_allclose(real.frictionloss, 0.1)
    np.testing.assert_allclose(real.kp, nominal.kp * [1, 0.5, 1, 1, 1, 1])
    np.testing.assert_allclose(real.kv, 3 * nominal.kv)
    assert real.payload == pytest.approx(0.05)
    # The payload hangs at the tool site: the arm's mass grows by it, in the gripper's subtree.
    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, PAYLOAD_BODY)
    site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "ee")
    assert model.body_parentid[body] == model.site_bodyid[site]
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    np.testing.assert_allclose(data.xipos[body], data.site_xpos[site], atol=1e-9)


def test_without_a_reality_the_plant_is_the_scene_step_for_step():
    rng = np.random.default_rng(0)
    with RealityArm(SCENE) as real, MujocoRobot(SCENE) as plain:
        np.testing.assert_array_equal(real.reset(seed=4), plain.reset(seed=4))
        for _ in range(40):
            u = HOME + rng.uniform(-0.4, 0.4, 6)
            np.testing.assert_array_equal(real.step(u), plain.step(u))


def test_the_goal_path_delays_samples_and_plays():
    # Latency: a goal sent at step 10 acts from step 13 on.
    path = GoalPath(1, latency_steps=3)
    path.reset([0.0])
    targets = []
    for step in range(20):
        if step == 10:
            path.send([1.0], step)
        targets.append(path.target(step)[0])
    assert targets.index(1.0) == 13
    # A write to some servos leaves the others' goals as they were.
    path = GoalPath(3, latency_steps=1)
    path.reset([0.0, 0.0, 0.0])
    path.send([1.0, 2.0, 3.0], 0)
    path.send([5.0], 1, index=[1])
    assert path.target(1).tolist() == [1.0, 2.0, 3.0] and path.target(2).tolist() == [1.0, 5.0, 3.0]
    # The servo's period: what has arrived is sampled at steps phase + k * period only.
    path = GoalPath(1, period_steps=4)
    path.reset([0.0], phase=1)
    seen = []
    for step in range(12):
        path.send([float(step)], step)
        seen.append(path.target(step)[0])
    assert seen == [0.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 9.0, 9.0, 9.0]
    # Backlash: the target trails a goal that reverses by half the play, and moves again only once
    # the goal has crossed the whole play.
    path = GoalPath(1, backlash=0.2)
    path.reset([0.0])
    for step, goal in enumerate([0.5, 0.5, 0.45, 0.35, 0.25]):
        path.send([goal], step)
        target = path.target(step)[0]
    assert target == pytest.approx(0.35)  # 0.5 - 0.1, pushed down by the goal 0.25 + 0.1
    path.send([0.3], 5)
    assert path.target(5)[0] == pytest.approx(0.35)  # inside the play: no motion


def test_latency_shifts_each_goal_by_whole_physics_steps(tmp_path):
    """The plant with 10 ms latency is the scene stepped by hand with each goal 5 physics steps late."""
    path = write(tmp_path, "latency: 0.010\n")
    goals = [HOME + d for d in (0.0, 0.3, -0.2, 0.1)]
    with RealityArm(SCENE, path) as robot:
        robot.reset(seed=1)
        model, data = mujoco.MjModel.from_xml_path(str(scene_path(SCENE))), None
        data = mujoco.MjData(model)
        data.qpos[:], data.qvel[:] = robot.data.qpos, robot.data.qvel
        data.ctrl[:] = robot.data.ctrl
        for u in goals:
            x = robot.step(u)
            for k in range(robot.control_steps):
                if k == 5:
                    data.ctrl[:] = u
                mujoco.mj_step(model, data)
            np.testing.assert_allclose(x, np.concatenate([data.qpos, data.qvel]), atol=1e-12)


def test_encoder_noise_is_on_the_measured_positions_only_and_seeded(tmp_path):
    path = write(tmp_path, "encoder_noise: {std: 2, unit: ticks}\n")
    std = 2 * 2 * np.pi / 4096
    with RealityArm(SCENE, path) as robot:
        errors = []
        for seed in range(3):
            x = robot.reset(seed=seed)
            for _ in range(100):
                x = robot.step(HOME)
                true = robot.get_state()
                errors.append(x[:6] - true[:6])
                np.testing.assert_array_equal(x[6:], true[6:])
        first = [robot.reset(seed=9)] + [robot.step(HOME) for _ in range(3)]
        again = [robot.reset(seed=9)] + [robot.step(HOME) for _ in range(3)]
    np.testing.assert_array_equal(first, again)
    assert np.std(errors) == pytest.approx(std, rel=0.1)


def test_the_logged_actions_are_the_goals_the_plant_received_tick_for_tick(tmp_path):
    """Through rollout and the trial log, with goals the plant must clip and a reality that delays,
    samples and plays them: the log holds what the plant received, step by step."""
    reality = load_reality(SCENE_DIR / "so101_reality.yaml")

    class Wild:
        def reset(self):
            self.rng = np.random.default_rng(3)

        def act(self, x, t):
            return HOME + self.rng.uniform(-4.0, 4.0, 6)  # beyond the joint limits now and then

    with RealityArm(SCENE, reality) as robot:
        path = tmp_path / "trial.h5"
        with TrialWriter(path, robot.spec, {}) as writer:
            trial = rollout(robot, Wild(), 60, seed=0, sink=writer)
            writer.finish(trial)
        received = robot.received
    assert robot.interventions["clipped"] > 0
    logged = load_trial(path)
    assert received.shape == logged.actions.shape == (60, 6)
    np.testing.assert_array_equal(logged.actions, received)
    assert np.all(received >= robot.spec.action_low) and np.all(received <= robot.spec.action_high)
    # What the controller asked for is kept beside it: the same goals before clipping.
    asked = Wild()
    asked.reset()
    requested = np.array([asked.act(None, t) for t in range(60)])
    np.testing.assert_array_equal(logged.requested_actions, requested)
    assert np.any(requested != received)
    assert logged.metadata["robot"] == SCENE


def test_a_reality_object_is_accepted_as_it_is():
    reality = Reality.from_mapping({"kp": {"scale": 0.5}}, "inline")
    with RealityArm(SCENE, reality) as robot:
        np.testing.assert_allclose(robot.servo_parameters.kp[0], 12.5)
        assert robot.spec.metadata["reality"] == "inline"
