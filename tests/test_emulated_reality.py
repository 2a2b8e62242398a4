"""The bus emulator with a reality gap (`forethought emulate --reality FILE`, `reality_emulator`):
the servos on the pseudo-terminal move the arm that differs from its scene, not the scene."""

import signal
import time

import numpy as np
import pytest

from forethought.robots.arm_description import load_arm, make_bus
from forethought.robots.emulated_servo import ServoMount
from forethought.sim.reality import reality_emulator, reality_model
from forethought.sim.scenes import SCENE_DIR
from forethought.sim.servo_model import servo_parameters
from test_deploy import finish, forethought

pytestmark = pytest.mark.realtime  # the bus emulator answers on the wall clock (pyproject.toml)

ARM = load_arm("so101")
MOUNTS = [ServoMount(2048, 1)] * 6  # ticks = 2048 + q * 4096 / 2 pi on every servo
TICKS_PER_RAD = 4096 / (2 * np.pi)
SHIPPED = SCENE_DIR / "so101_reality.yaml"


def ticks(q) -> list[int]:
    return [int(round(2048 + v * TICKS_PER_RAD)) for v in q]


def reads(bus, count: int) -> np.ndarray:
    """(count, 6) present positions in ticks, read one after the other."""
    return np.array([bus.read_state().position for _ in range(count)])


def test_without_a_reality_the_emulator_is_the_scene():
    with reality_emulator(ARM, ARM.scene, None, mounts=MOUNTS) as emulator:
        assert emulator.scene.goal_path is None and emulator.scene.encoder_noise == 0.0
        with make_bus(ARM, emulator.port, timeout_margin_ms=20.0) as bus:
            positions = reads(bus, 20)
    assert np.all(positions == positions[0])  # a resting arm reads the same ticks every time


def test_the_emulated_arm_has_the_realitys_servos_payload_and_noise():
    nominal = servo_parameters(reality_model(ARM.scene))
    with reality_emulator(ARM, ARM.scene, SHIPPED, mounts=MOUNTS) as emulator:
        with make_bus(ARM, emulator.port, timeout_margin_ms=20.0) as bus:
            bus.write_goals(ticks(emulator.joint_positions()))
            bus.set_torque(True)
            time.sleep(1.0)  # the loaded joints settle under the softer servos and the payload
            params = servo_parameters(emulator.model)
            positions = reads(bus, 200)
    np.testing.assert_allclose(params.kp, 0.5 * nominal.kp)
    np.testing.assert_allclose(params.damping, 2.0 * nominal.damping)
    np.testing.assert_allclose(params.frictionloss, 3.0 * nominal.frictionloss)
    assert params.payload == pytest.approx(0.05)
    # 1 tick of encoder noise on an arm that holds still (the servos hold the pose they were given).
    spread = np.std(np.diff(positions, axis=0), axis=0) / np.sqrt(2)  # white noise: the difference has twice its variance
    assert np.all((spread > 0.6) & (spread < 1.6)), spread
    assert emulator.scene.goal_path.latency_steps == 5 and emulator.scene.goal_path.period_steps == 2


def test_a_goal_acts_after_the_realitys_latency(tmp_path):
    """A long latency (0.5 s) so that a busy machine cannot blur it: the goal has reached the
    actuator only after it, and then the joint goes there."""
    path = tmp_path / "late.yaml"
    path.write_text("latency: 0.5\n")
    with reality_emulator(ARM, ARM.scene, path, mounts=MOUNTS) as emulator:
        with make_bus(ARM, emulator.port, timeout_margin_ms=20.0) as bus:
            start = emulator.joint_positions()
            bus.write_goals(ticks(start))
            bus.set_torque(True)
            time.sleep(0.6)  # the holding goal has arrived
            goal = start + np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
            bus.write_goals(ticks(goal))
            sent = time.monotonic()
            before = emulator.data.ctrl[emulator.scene.act[0]]
            waited = time.monotonic() - sent
            time.sleep(0.9)
            after = emulator.joint_positions()
    assert waited < 0.5
    assert before == pytest.approx(start[0], abs=1e-3)  # not yet at the actuator
    assert after[0] == pytest.approx(goal[0], abs=0.03)  # and then the joint went there


def test_emulate_takes_a_reality_file():
    process = forethought("emulate", "--arm", "so101", "--reality", str(SHIPPED), stdin=__import__("subprocess").PIPE)
    try:
        port = process.stdout.readline().strip()
        with make_bus(ARM, port, timeout_margin_ms=20.0) as bus:
            bus.check_models()
            positions = reads(bus, 50)
    finally:
        process.send_signal(signal.SIGTERM)
        code, _, err = finish(process, timeout=10)
    assert code == 0, err
    assert "reality gap of" in err
    assert np.any(positions != positions[0])  # the encoder's noise: a resting arm's ticks vary


@pytest.mark.parametrize("text, key", [
    ("kp: {scale: -1}\n", "kp"),
    ("backlash: lots\n", "backlash"),
    ("armature: {elbw: {scale: 2}}\n", "armature.elbw"),
    ("latencyy: 0.01\n", "latencyy"),
])
def test_a_bad_reality_file_is_one_line_naming_the_file_and_key(tmp_path, text, key):
    path = tmp_path / "reality.yaml"
    path.write_text(text)
    code, out, err = finish(forethought("emulate", "--arm", "so101", "--reality", str(path)), timeout=60)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(path) in err and key in err, err
