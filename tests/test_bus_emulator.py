"""The bus emulator through the vendor SDKs: both protocols answer ping, read, write, sync read
and sync write; the servos move the arm's MuJoCo scene; replies take the wire's time; faults."""

import time

import numpy as np
import pytest

from forethought.robots.arm_description import load_arm, make_bus
from forethought.robots.bus_emulator import BusEmulator
from forethought.robots.emulated_servo import Fault, ServoMount
from forethought.robots.servo_bus import BusError, BusServo, ServoModelMismatch, ServoNotResponding
from forethought.robots.servo_models import ServoFault
from forethought.sim.scenes import scene_path

pytestmark = pytest.mark.realtime  # the bus emulator answers on the wall clock (pyproject.toml)

ARMS = ["so101", "koch"]
# Away from the wrap point, one servo turned the other way round.
MOUNTS = [ServoMount(1000), ServoMount(3000, -1), ServoMount(2048), ServoMount(1500), ServoMount(2600, -1), ServoMount(2048)]
TICKS_PER_RAD = 4096 / (2 * np.pi)
# The emulator shares this process's CPU with the driver; on a loaded test machine it may answer
# tens of ms late, so the driver waits that much longer for a status packet than on a real bus
# (only a silent servo pays for it).
MARGIN_MS = 50.0


def _arm_params(names):
    """One param per arm; an arm whose MuJoCo scene is not installed is skipped."""
    from forethought.sim.scenes import scene_names

    return [
        pytest.param(name, marks=pytest.mark.skipif(load_arm(name).scene not in scene_names(), reason=f"no scene for {name}"))
        for name in names
    ]


@pytest.fixture(params=_arm_params(ARMS))
def rig(request):
    arm = load_arm(request.param)
    with BusEmulator(arm, scene_path(arm.scene), mounts=MOUNTS, seed=3) as emulator:
        bus = make_bus(arm, emulator.port, timeout_margin_ms=MARGIN_MS).open()
        for servo in bus.servos:
            bus.write_register(servo, "return_delay", 0)
        yield arm, emulator, bus
        bus.close()


def test_every_servo_answers_with_its_model(rig):
    arm, emulator, bus = rig
    bus.check_models()
    assert [bus.ping(s) for s in bus.servos] == [j.model.model_number for j in arm.joints]


def test_a_wrong_servo_model_is_named():
    arm = load_arm("koch")
    with BusEmulator(arm, scene_path(arm.scene), mounts=MOUNTS) as emulator:
        servos = arm.bus_servos()
        servos[2] = BusServo(servos[2].name, servos[2].servo_id, arm.joints[0].model)  # says XL430, is XL330
        bus = make_bus(arm, emulator.port, timeout_margin_ms=MARGIN_MS)
        bus.servos = tuple(servos)
        with bus, pytest.raises(ServoModelMismatch, match=r"servo 3 \(elbow_flex\) is model 1200 \(xl330-m288\)"):
            bus.check_models()


def test_sync_read_reports_the_scene(rig):
    arm, emulator, bus = rig
    q = np.array([0.3, -0.4, 0.5, -0.2, 0.7, 0.4])
    emulator.set_pose(q)
    reading = bus.read_state()
    expected = [m.offset + m.direction * qi * TICKS_PER_RAD for m, qi in zip(MOUNTS, q)]
    np.testing.assert_allclose(reading.position, expected, atol=1.0)
    np.testing.assert_allclose(reading.voltage, arm.supply_voltage)
    assert all(f == ServoFault.NONE for f in reading.faults)


def test_goal_positions_written_to_the_bus_move_the_arm(rig):
    arm, emulator, bus = rig
    present = bus.read_state().position
    bus.write_goals(present)
    bus.set_torque(True)
    q0 = emulator.joint_positions()
    goal = present.copy()
    goal[0] += 300  # ticks
    goal[2] -= 200
    bus.write_goals(goal)
    time.sleep(0.8)
    q = emulator.joint_positions()
    assert q[0] - q0[0] == pytest.approx(MOUNTS[0].direction * 300 / TICKS_PER_RAD, abs=0.03)
    assert q[2] - q0[2] == pytest.approx(MOUNTS[2].direction * -200 / TICKS_PER_RAD, abs=0.05)
    np.testing.assert_allclose(bus.read_state().position[[0, 2]], goal[[0, 2]], atol=25)
    bus.torque_off_all(confirm=True)  # the servos' own status packets say it is done
    assert emulator.torque() == [False] * 6


def test_eeprom_needs_torque_off_on_dynamixel_and_the_lock_open_on_feetech(rig):
    arm, emulator, bus = rig
    servo = bus.servos[1]
    bus.write_register(servo, "homing_offset", -321)  # opens and closes the Feetech lock itself
    assert bus.read_register(servo, "homing_offset") == -321
    if arm.protocol == "dynamixel":
        bus.write_register(servo, "torque_enable", 1)
        with pytest.raises(BusError, match="refused the write of homing_offset"):
            bus.write_register(servo, "homing_offset", 5)
    else:
        address = servo.model.registers["homing_offset"].address
        bus._write_raw(servo, address, b"\x05\x00", "homing_offset")  # lock closed: does not stick
        assert bus.read_register(servo, "homing_offset") == -321


def test_overheat_and_overload_set_status_bits_and_drop_torque(rig):
    arm, emulator, bus = rig
    bus.write_goals(bus.read_state().position)
    bus.set_torque(True)
    emulator.inject(Fault("overheat", servo_id=6))
    emulator.inject(Fault("overload", servo_id=2))
    reading = bus.read_state()
    assert ServoFault.OVERHEAT in reading.faults[5] and reading.temperature[5] >= 70
    assert ServoFault.OVERLOAD in reading.faults[1]
    assert reading.faults[0] == ServoFault.NONE
    assert emulator.torque() == [True, False, True, True, True, False]


def test_a_voltage_sag_reads_low_and_sets_the_voltage_bit(rig):
    arm, emulator, bus = rig
    emulator.inject(Fault("voltage", value=arm.min_voltage - 0.5))
    reading = bus.read_state()
    np.testing.assert_allclose(reading.voltage, arm.min_voltage - 0.5, atol=0.051)
    assert all(ServoFault.VOLTAGE in f for f in reading.faults)


def test_a_silent_servo_is_named_quickly_and_still_obeys_torque_off(rig):
    arm, emulator, bus = rig
    bus.write_goals(bus.read_state().position)
    bus.set_torque(True)
    emulator.inject(Fault("silent", servo_id=3))
    reading = bus.read_state(allow_missing=True)  # as the control loop reads: two quiet tries, not four
    assert list(reading.answered()) == [True, True, False, True, True, True]
    assert [(e.missing, e.outcome) for e in bus.retry_log if 3 in e.missing] == [((3,), "timeout")] * 2
    with pytest.raises(ServoNotResponding, match=r"servo 3 \(elbow_flex\) is not answering .* in 4 tries") as caught:
        bus.read_state()
    assert caught.value.names == ("elbow_flex",)
    bus.torque_off_all(confirm=True)  # the servos' own status packets say it is done
    assert emulator.torque() == [False] * 6


def test_corrupted_replies_are_retried(rig):
    arm, emulator, bus = rig
    emulator.inject(Fault("corrupt", value=0.05))
    readings = [bus.read_state() for _ in range(60)]
    assert len(readings) == 60
    assert bus.stats["corrupt"] > 0 and bus.stats["retries"] > 0
    emulator.inject(Fault("corrupt", value=1.0))
    with pytest.raises(ServoNotResponding):
        bus.read_state()


def test_timed_faults_count_from_the_first_torque_on():
    arm = load_arm("koch")
    with BusEmulator(arm, scene_path(arm.scene), mounts=MOUNTS, faults=[Fault.parse("silent:2@0.15")]) as emulator:
        bus = make_bus(arm, emulator.port, timeout_margin_ms=MARGIN_MS).open()
        time.sleep(0.2)
        bus.read_state()  # not armed yet: torque never went on
        bus.write_goals(bus.read_state().position)
        bus.set_torque(True)
        bus.read_state()
        time.sleep(0.25)
        with pytest.raises(ServoNotResponding, match="servo 2"):
            bus.read_state()
        bus.close()
    kinds = [e[1] for e in emulator.events]
    assert kinds.index("silent") > kinds.index("torque")


@pytest.mark.parametrize(
    "text, fault",
    [
        ("corrupt:0.02", Fault("corrupt", value=0.02)),
        ("silent:3@1.5", Fault("silent", servo_id=3, at=1.5)),
        ("voltage:6.5@2", Fault("voltage", value=6.5, at=2.0)),
    ],
)
def test_fault_specs_parse(text, fault):
    assert Fault.parse(text) == fault


@pytest.mark.parametrize("text", ["melt:3", "silent:x", "corrupt:2", "overheat"])
def test_bad_fault_specs_say_what_is_wrong(text):
    with pytest.raises(ValueError, match="fault"):
        Fault.parse(text)
