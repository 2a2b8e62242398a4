"""A servo bus emulator on a pseudo-terminal: the vendor SDKs talk to it as to a real arm.

`BusEmulator(arm, scene_file)` opens a pseudo-terminal in raw mode (`port` is the path to give a driver) and
answers the arm's protocol byte for byte: Feetech STS (checksum) or Dynamixel Protocol 2.0
(CRC-16, byte stuffing); ping, read, write, sync read and sync write on the control-table
addresses of the STS3215, XL430 and XL330 (see `servo_bus.SERVO_MODELS`). A pseudo-terminal
ignores the baud rate, so replies are held back for the time the bytes would take on the wire
(10 bits a byte at the arm's baud rate) plus each servo's return delay.

The servos move the arm's MuJoCo scene (`scene`, robots/servo_scene.py), stepped in real time: a
goal position written to the bus becomes the position actuator's target, present positions and
velocities are the joints'. Torque off leaves a joint free but held by its gearbox's friction, the
torque limit bounds the actuator's force, and the homing offset shifts what the servo reports, as
on the real servos. Each servo is
mounted with an encoder offset and a direction (`ServoMount`), which is what calibration finds.

A reality gap (`sim.reality.reality_emulator`, `forethought emulate --reality FILE`) changes the
physics behind the bus: the servo parameters and payload in the MjModel given as `model`, goals
that pass a `goal_path` (latency, the servo's sampling, backlash) on their way to the actuators, and
`encoder_noise` on the present positions. Without one the servos move the scene itself.
`goal_writes` records the goal positions the servos took, the last GOAL_WRITES_KEPT of them:
(time.monotonic(), joint index, ticks).

Like servos on a real bus it answers only while the host listens: an instruction with a newer
one already waiting is obeyed but not answered, and replies stop when the host sends something
new (on the wire they would collide). An instruction with too few parameters gets no reply (a
Dynamixel servo asked alone answers a data length error); a packet it cannot answer is recorded
in `errors` and never ends the serving thread.

Faults (`Fault`): corrupted replies at a rate, replies lost at a rate, a servo that stops answering (it still obeys
writes), overheating or overload (status bits set, the servo drops its torque), a voltage sag.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

import mujoco
import numpy as np

from forethought.robots import servo_packets as sp
from forethought.robots.arm_description import ArmDescription
from forethought.robots.emulated_servo import AMBIENT_C, OVERHEAT_C, EmulatedServo, Fault, ServoMount, random_mounts
from forethought.robots.servo_scene import ServoScene
from forethought.robots.servo_wire import BITS_PER_BYTE, RETURN_DELAY_UNIT_S
from forethought.robots.servo_models import ServoFault

GOAL_WRITES_KEPT = 600_000  # about half an hour of a 6-servo arm at 50 Hz
# Parameter bytes (Feetech; twice as many on Dynamixel, whose addresses and lengths are 16-bit) an
# instruction needs before its data: start and length, or start alone for a write.
_MIN_PARAMS = {sp.INST_READ: 2, sp.INST_WRITE: 1, sp.INST_SYNC_READ: 2, sp.INST_SYNC_WRITE: 2}
USB_TICK_S = 1e-3  # a USB serial adapter's latency timer at its usual 1 ms setting
DXL_DATA_LENGTH_ERROR = 5  # Protocol 2.0 status error number: the instruction's length is wrong


class BusEmulator:
    """The arm's servos on a pseudo-terminal, moving the arm's MuJoCo scene in real time.

    scene_file: the MJCF file of a scene with the arm (its joints and position actuators named
    like the arm's joints). mounts: one ServoMount per joint (default: random_mounts(seed)).
    faults: injected as given
    (timed ones count from the first torque on). A context manager that serves in a thread;
    `serve(stop)` serves in the calling thread. `events` records (time.monotonic(), kind, servo
    id, value) for torque changes and faults.
    """

    def __init__(
        self,
        arm: ArmDescription,
        scene_file: str | Path,
        mounts: Sequence[ServoMount] | None = None,
        faults: Sequence[Fault] = (),
        seed: int = 0,
        model: mujoco.MjModel | None = None,
        goal_path=None,
        encoder_noise: float = 0.0,
    ):
        self.arm = arm
        mounts = list(mounts) if mounts is not None else random_mounts(len(arm.joints), seed)
        if len(mounts) != len(arm.joints):
            raise ValueError(f"{len(mounts)} mounts for the {len(arm.joints)} joints of {arm.name}")
        self._rng = np.random.default_rng(seed)
        # The physics behind the bus, and its lock: the protocol reads and moves the scene under it.
        self.scene = ServoScene(arm, scene_file, model=model, goal_path=goal_path, encoder_noise=encoder_noise,
                                seed=seed)
        self._lock = self.scene.lock
        self._servos = [
            EmulatedServo(j.servo_id, j.model, mount, j.name, arm.min_voltage, self.scene.angle(i))
            for i, (j, mount) in enumerate(zip(arm.joints, mounts))
        ]
        self._by_id = {s.servo_id: s for s in self._servos}
        for i, servo in enumerate(self._servos):
            self._apply_torque(i, servo)
        # Bounded: `forethought emulate` may serve for hours at 300 goal writes a second.
        self.goal_writes: deque[tuple[float, int, int]] = deque(maxlen=GOAL_WRITES_KEPT)
        self.voltage = arm.supply_voltage
        self.corrupt_rate = 0.0
        self.drop_rate = 0.0
        self.malformed = 0  # instruction packets with too few parameters, ignored or refused
        self.dropped = 0  # replies the drop fault swallowed
        self.errors: list[str] = []  # packets whose handling raised (a bug in the emulator)
        self.superseded = 0  # replies not sent because the host had sent a newer instruction
        self._pending_faults: list[Fault] = []
        self._torque_first_on: float | None = None
        self.events: list[tuple[float, str, int | None, float | None]] = []
        self.replies = 0
        for fault in faults:
            self.inject(fault)
        if arm.protocol == "feetech":
            self._decode, self._encode = sp.feetech_decode, sp.feetech_encode
        else:
            self._decode, self._encode = sp.dxl_decode, sp.dxl_encode
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def model(self) -> mujoco.MjModel:
        return self.scene.model

    @property
    def data(self) -> mujoco.MjData:
        return self.scene.data

    # -- running -------------------------------------------------------------------------------
    def __enter__(self) -> "BusEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "BusEmulator":
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve, args=(self._stop,), name="bus-emulator", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def serve(self, stop: threading.Event) -> None:
        """Answer instruction packets until `stop` is set."""
        buf = bytearray()
        while not stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.005)
            self._activate_due_faults()
            if not ready:
                # Keep the scene at the wall clock while the bus is quiet, so that a request never
                # waits for a long catch-up.
                with self._lock:
                    self.scene.advance(time.monotonic())
                continue
            try:
                chunk = os.read(self._master, 4096)
            except OSError:
                break
            arrived = time.monotonic()
            buf += chunk
            packets = []
            while buf:
                decoded = self._decode(buf)
                if decoded.consumed == 0:
                    break
                del buf[: decoded.consumed]
                if decoded.packet is not None:
                    packets.append((decoded.packet, decoded.consumed))
            for k, (packet, n_bytes) in enumerate(packets):
                # An instruction with another one already behind it is obeyed but not answered:
                # the host has moved on (it gave up waiting), and on a real bus the replies would
                # collide with the newer instruction.
                try:
                    self._answer(packet, n_bytes, arrived, superseded=k < len(packets) - 1)
                except OSError:
                    return  # the pseudo-terminal closed under a reply
                except Exception as err:  # noqa: BLE001
                    # A packet the emulator could not answer is a bug to report, but the bus
                    # must go on serving: a real servo does not die of a strange packet.
                    self.errors.append(f"{packet}: {type(err).__name__}: {err}")

    # -- the protocol --------------------------------------------------------------------------
    def _answer(self, packet: sp.Packet, n_bytes: int, arrived: float, superseded: bool = False) -> None:
        with self._lock:
            self.scene.advance(time.monotonic())
            replies = self._replies_to(packet)
        if superseded:
            self.superseded += len(replies)  # the host has sent a newer instruction: this one goes unanswered
            return
        # When each reply is complete on the wire: after the instruction, each servo's return delay
        # and its own bytes, one after the other.
        t = arrived + n_bytes * BITS_PER_BYTE / self.arm.baudrate
        due: list[tuple[float, bytes]] = []
        for servo, reply in replies:
            if servo.silent:
                continue
            if self.drop_rate and self._rng.random() < self.drop_rate:
                self.dropped += 1  # a reply that never comes: the line stays quiet for its time
                continue
            if self.corrupt_rate and self._rng.random() < self.corrupt_rate:
                reply = self._corrupt(reply)
            t += RETURN_DELAY_UNIT_S * servo.get("return_delay") + len(reply) * BITS_PER_BYTE / self.arm.baudrate
            due.append((t, reply))
        # Sent as a USB adapter delivers them: its latency timer fires within a tick of the first
        # complete reply, and what is complete by then goes in one write (fewer wake-ups, so a
        # loaded machine delays the answer less; never before the bytes would be on the wire).
        while due:
            tick = due[0][0] + USB_TICK_S
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self._host_talking():
                self.superseded += len(due)  # the host sent a new instruction: stop answering this one
                return
            ready = [reply for at, reply in due if at <= max(tick, time.monotonic())]
            due = due[len(ready):]
            os.write(self._master, b"".join(ready))
            self.replies += len(ready)

    def _host_talking(self) -> bool:
        """Whether a new instruction from the host is waiting to be read."""
        ready, _, _ = select.select([self._master], [], [], 0)
        return bool(ready)

    def _corrupt(self, reply: bytes) -> bytes:
        out = bytearray(reply)
        i = int(self._rng.integers(2, len(out)))
        out[i] ^= 1 << int(self._rng.integers(0, 8))
        return bytes(out)

    def _replies_to(self, packet: sp.Packet) -> list[tuple[EmulatedServo, bytes]]:
        dxl = self.arm.protocol == "dynamixel"
        p, inst = packet.params, packet.code
        if len(p) < _MIN_PARAMS.get(inst, 0) * (2 if dxl else 1):
            # Too few parameters for the instruction: a Dynamixel servo answers a packet sent to
            # it alone with a data length error; a Feetech servo and any broadcast stay silent.
            self.malformed += 1
            servo = self._by_id.get(packet.servo_id)
            if dxl and servo is not None and inst in (sp.INST_READ, sp.INST_WRITE, sp.INST_PING):
                return [(servo, self._status(servo, b"", DXL_DATA_LENGTH_ERROR))]
            return []
        if inst == sp.INST_SYNC_WRITE:
            start, length, body = (_u16(p, 0), _u16(p, 2), p[4:]) if dxl else (p[0], p[1], p[2:])
            for k in range(0, len(body) - length, length + 1):  # an id and its `length` bytes each
                servo = self._by_id.get(body[k])
                if servo is not None:
                    self._write(servo, start, body[k + 1 : k + 1 + length])
            return []
        if inst == sp.INST_SYNC_READ:
            start, length, ids = (_u16(p, 0), _u16(p, 2), p[4:]) if dxl else (p[0], p[1], p[2:])
            return [(self._by_id[i], self._status(self._by_id[i], self._read(self._by_id[i], start, length)))
                    for i in ids if i in self._by_id]
        targets = self._servos if packet.servo_id == sp.BROADCAST_ID else [self._by_id.get(packet.servo_id)]
        replies = []
        for servo in (s for s in targets if s is not None):
            if inst == sp.INST_PING:
                data = servo.model.model_number.to_bytes(2, "little") + b"\x2e" if dxl else b""
                replies.append((servo, self._status(servo, data)))
            elif inst == sp.INST_READ:
                start, length = (_u16(p, 0), _u16(p, 2)) if dxl else (p[0], p[1])
                replies.append((servo, self._status(servo, self._read(servo, start, length))))
            elif inst == sp.INST_WRITE:
                start, data = (_u16(p, 0), p[2:]) if dxl else (p[0], p[1:])
                refused = self._write(servo, start, data)
                replies.append((servo, self._status(servo, b"", refused)))
        # A broadcast instruction gets no status packets (except a broadcast ping, not used here).
        return [] if packet.servo_id == sp.BROADCAST_ID else replies

    def _status(self, servo: EmulatedServo, data: bytes, error_number: int = 0) -> bytes:
        if self.arm.protocol == "dynamixel":
            error = error_number | (0x80 if servo.faults else 0)
            return self._encode(servo.servo_id, sp.DXL_INST_STATUS, bytes([error]) + data)
        return self._encode(servo.servo_id, servo.status_bits(), data)

    def _read(self, servo: EmulatedServo, start: int, length: int) -> bytes:
        self._refresh(servo)
        return bytes(servo.table[start : start + length])

    def _write(self, servo: EmulatedServo, start: int, data: bytes) -> int:
        """Store data at start; 0, or the Protocol 2.0 error number when the servo refuses."""
        model = servo.model
        if start + len(data) > len(servo.table):
            return 7 if model.protocol == "dynamixel" else 0  # no such address: refused / ignored
        if start < model.eeprom_end:
            if "lock" in model.registers and servo.get("lock") == 1:
                return 0  # Feetech: EEPROM writes while locked do not stick
            if model.protocol == "dynamixel" and servo.torque_on:
                return 7  # access error: EEPROM is writable with torque off only
        was_on = servo.torque_on
        servo.table[start : start + len(data)] = data
        i = self._servos.index(servo)
        touched = set(range(start, start + len(data)))
        regs = model.registers
        if regs["torque_enable"].address in touched and servo.torque_on != was_on:
            if servo.torque_on and servo.faults & (ServoFault.OVERHEAT | ServoFault.OVERLOAD):
                servo.set("torque_enable", 0)  # a servo in shutdown keeps its torque off
            else:
                self.scene.torque_switched(i, servo.goal_angle())  # a servo holds its goal from then on
                self._apply_torque(i, servo)
                self.events.append((time.monotonic(), "torque", servo.servo_id, float(servo.torque_on)))
                if servo.torque_on and self._torque_first_on is None:
                    self._torque_first_on = time.monotonic()
                if not any(s.torque_on for s in self._servos):
                    self.scene.all_torque_off()
        if touched & set(range(regs["goal_position"].address, regs["goal_position"].address + regs["goal_position"].size)):
            self._take_goal(i, servo)
        if touched & {regs["torque_limit"].address, regs["torque_limit"].address + 1}:
            self._apply_torque(i, servo)
        return 0

    # -- the servos on the scene ---------------------------------------------------------------------
    def _take_goal(self, i: int, servo: EmulatedServo) -> None:
        """Servo i's goal position register changed: record it, and send it towards the actuator."""
        self.goal_writes.append((time.monotonic(), i, servo.get("goal_position")))
        self.scene.send_goal(i, servo.goal_angle())

    def received_goals(self) -> np.ndarray:
        """(W, m) goal ticks of every sync write that set all servos' goals, in order (from `goal_writes`)."""
        m, rows, row = len(self._servos), [], {}
        for _, i, ticks in self.goal_writes:
            if i in row:  # a write that set only some servos; start over
                row = {}
            row[i] = ticks
            if len(row) == m:
                rows.append([row[j] for j in range(m)])
                row = {}
        return np.array(rows, dtype=np.int64).reshape(-1, m)

    def _apply_torque(self, i: int, servo: EmulatedServo) -> None:
        # The torque limit register scales the servo's stall torque.
        fraction = servo.get("torque_limit") / servo.model.torque_limit_full_scale
        self.scene.set_torque(i, servo.torque_on, servo.model.stall_torque, fraction)

    def _refresh(self, servo: EmulatedServo) -> None:
        """Write the present_* registers and the status from the scene's current state."""
        q, qd, force = self.scene.reading(self._servos.index(servo))
        model = servo.model
        direction = servo.mount.direction
        servo.set("present_position", servo.present_ticks(q))
        servo.set("present_velocity", int(round(direction * qd * servo.ticks_per_rad / model.velocity_unit)))
        servo.set("present_load", int(round(direction * force / model.stall_torque / model.load_unit)))
        servo.set("present_voltage", int(round(self.voltage / model.voltage_unit)))
        hot = ServoFault.OVERHEAT in servo.faults
        servo.set("present_temperature", int(OVERHEAT_C if hot else AMBIENT_C))
        if self.voltage < servo.get("min_voltage_limit") * model.voltage_unit:
            servo.faults |= ServoFault.VOLTAGE
        servo.set("status", servo.status_bits())

    # -- the outside world: hands, faults ---------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        """(m,) the arm's true joint angles, rad."""
        return self.scene.joint_positions()

    def site_pos(self, name: str, at_torque_off: bool = False) -> np.ndarray | None:
        """(3,) world position of site `name`, m: now, or (at_torque_off) when the last servo's
        torque went off (None if it has not)."""
        return self.scene.site_pos(name, at_torque_off)

    def set_pose(self, pose: str | Sequence[float]) -> None:
        """Put the arm in a pose by hand at once: a calibration pose name or (m,) joint angles."""
        q = self.arm.calibration_poses[pose] if isinstance(pose, str) else np.asarray(pose, dtype=np.float64)
        self.move_by_hand(lambda t: q, 0.0)

    def move_by_hand(self, trajectory: Callable[[float], np.ndarray], duration: float) -> None:
        """Move the arm along trajectory(t) -> (m,) rad for t in [0, duration] s, then let go."""
        with self._lock:
            free = [i for i, servo in enumerate(self._servos) if not servo.torque_on]
            self.scene.move_by_hand(trajectory, duration, free)

    def sweep(self, seconds_per_joint: float = 1.0) -> float:
        """Move each joint by hand through its described range, one after the other; returns the duration."""
        trajectory, duration = self.scene.sweep_trajectory(seconds_per_joint)
        self.move_by_hand(trajectory, duration)
        return duration

    def inject(self, fault: Fault) -> None:
        """Apply a fault now, or at its time after the first torque on."""
        if fault.at is not None:
            with self._lock:
                self._pending_faults.append(fault)
            return
        with self._lock:
            if fault.kind == "corrupt":
                self.corrupt_rate = float(fault.value)
            elif fault.kind == "drop":
                self.drop_rate = float(fault.value)
            elif fault.kind == "voltage":
                self.voltage = float(fault.value)
            else:
                servo = self._by_id.get(fault.servo_id)
                if servo is None:
                    raise ValueError(f"fault '{fault.kind}': no servo {fault.servo_id} on {self.arm.name}")
                if fault.kind == "silent":
                    servo.silent = True
                else:
                    servo.faults |= ServoFault.OVERHEAT if fault.kind == "overheat" else ServoFault.OVERLOAD
                    servo.set("torque_enable", 0)
                    self._apply_torque(self._servos.index(servo), servo)
            self.events.append((time.monotonic(), fault.kind, fault.servo_id, fault.value))

    def clear_faults(self) -> None:
        with self._lock:
            self.corrupt_rate, self.drop_rate, self.voltage = 0.0, 0.0, self.arm.supply_voltage
            self._pending_faults.clear()
            for servo in self._servos:
                servo.silent, servo.faults = False, ServoFault.NONE

    def _activate_due_faults(self) -> None:
        if not self._pending_faults or self._torque_first_on is None:
            return
        now = time.monotonic()
        with self._lock:
            due = [f for f in self._pending_faults if now >= self._torque_first_on + f.at]
            self._pending_faults = [f for f in self._pending_faults if f not in due]
        for fault in due:
            self.inject(Fault(fault.kind, fault.servo_id, fault.value))

    def torque(self) -> list[bool]:
        """Whether each servo's torque is on, in joint order."""
        with self._lock:
            return [s.torque_on for s in self._servos]


def _u16(data: bytes, at: int) -> int:
    return data[at] | (data[at + 1] << 8)
