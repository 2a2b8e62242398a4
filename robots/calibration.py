"""Calibration of a servo arm: encoder ticks <-> joint angles, saved as YAML.

Per joint: the homing offset written into the servo, so that the home pose reads mid-turn and the
joint's travel never crosses the encoder's wrap point; the ticks read at home after that offset;
the drive direction (which way the joint turns when the ticks grow); and the range of motion.

    q = home_angle + direction * wrap(ticks - home_ticks) * 2 pi / resolution

`measure_calibration` records all of it with the arm in two poses of the arm description
("home", and "rotated" where every joint has turned a known angle from home, which gives the
direction and checks the scale) and, optionally, while every joint is moved through its range.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from forethought.robots.arm_description import ArmDescription
from forethought.robots.config import ConfigError, load_yaml
from forethought.robots.servo_bus import ServoBus
from forethought.robots.servo_models import ServoModel, servo_model

TWO_PI = 2.0 * np.pi


class CalibrationError(ValueError):
    """A measured calibration that cannot be right (a joint that did not move between the poses, ...)."""


def wrap_ticks(delta, resolution):
    """Tick differences wrapped into [-resolution/2, resolution/2) (resolution: int or per-entry
    array); integer ticks stay integers, fractional ticks (a recording's averages) stay fractional."""
    delta = np.asarray(delta)
    if not np.issubdtype(delta.dtype, np.floating):
        delta = delta.astype(np.int64)
    half = np.asarray(resolution) // 2
    return (delta + half) % resolution - half


def homing_offset_for(model: ServoModel, actual: int) -> int:
    """The homing offset that makes a servo reading `actual` (with offset 0) read mid-turn.

    Where the position wraps within a turn (Feetech) the offset is wrapped to half a turn either
    way and clamped to what the register holds (sign-magnitude with 11 bits: at most 2047), so a
    home pose at the encoder's wrap point cannot overflow it; the tick or so left over is
    absorbed by home_ticks. Where it counts on across turns (Dynamixel) no wrap is wanted: the
    offset moves the home pose to mid-turn of the goal range [0, resolution).
    """
    res = model.resolution
    offset = model.homing_sign * (res // 2 - int(actual))
    if model.position_wraps:
        offset = int(wrap_ticks(offset, res))
    reg = model.registers["homing_offset"]
    if reg.sign_bit is not None:
        limit = (1 << reg.sign_bit) - 1
        offset = max(-limit, min(limit, offset))
    return offset


@dataclass(frozen=True)
class JointCalibration:
    """One joint. direction: +1 or -1; homing_offset, home_ticks: ticks; home_angle, range: rad."""

    name: str
    servo_id: int
    model: str
    direction: int
    homing_offset: int
    home_ticks: int
    home_angle: float
    range_min: float
    range_max: float


@dataclass
class Calibration:
    """Every joint of an arm, in the arm's joint order."""

    arm: str
    joints: tuple[JointCalibration, ...]
    created: str = ""

    def __post_init__(self) -> None:
        self.joints = tuple(self.joints)
        self._resolution = np.array([servo_model(j.model).resolution for j in self.joints])
        self._direction = np.array([j.direction for j in self.joints], dtype=np.float64)
        self._home_ticks = np.array([j.home_ticks for j in self.joints], dtype=np.int64)
        self._home_angle = np.array([j.home_angle for j in self.joints])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def range_min(self) -> np.ndarray:
        return np.array([j.range_min for j in self.joints])

    @property
    def range_max(self) -> np.ndarray:
        return np.array([j.range_max for j in self.joints])

    def to_rad(self, ticks) -> np.ndarray:
        """(..., m) ticks (integers as the servos report them, or fractional) -> (..., m) joint angles in rad."""
        delta = wrap_ticks(np.asarray(ticks) - self._home_ticks, self._resolution)
        return self._home_angle + self._direction * delta * TWO_PI / self._resolution

    def velocity_to_rad(self, ticks_per_s) -> np.ndarray:
        """(m,) ticks/s -> (m,) rad/s."""
        return self._direction * np.asarray(ticks_per_s, dtype=np.float64) * TWO_PI / self._resolution

    def to_ticks(self, q) -> np.ndarray:
        """(m,) joint angles in rad -> (m,) goal ticks, held inside one turn (never across the wrap)."""
        q = np.asarray(q, dtype=np.float64)
        ticks = self._home_ticks + np.rint(self._direction * (q - self._home_angle) * self._resolution / TWO_PI)
        return np.clip(ticks, 0, self._resolution - 1).astype(np.int64)

    # -- YAML --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the calibration as YAML (atomically: a crash leaves the old file or the new one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "arm": self.arm,
            "created": self.created,
            "joints": {j.name: {k: v for k, v in asdict(j).items() if k != "name"} for j in self.joints},
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, arm: ArmDescription | None = None) -> "Calibration":
        """Read a calibration; ConfigError naming the file and key, or the mismatch with `arm`."""
        path = Path(path)
        data = load_yaml(path)
        for key in ("arm", "joints"):
            if key not in data:
                raise ConfigError(f"{path}: {key}: required key is missing")
        if not isinstance(data["joints"], dict) or not data["joints"]:
            raise ConfigError(f"{path}: joints: expected a mapping of joint name to its calibration")
        fields = ("servo_id", "model", "direction", "homing_offset", "home_ticks", "home_angle", "range_min", "range_max")
        joints = []
        for name, entry in data["joints"].items():
            if not isinstance(entry, dict):
                raise ConfigError(f"{path}: joints.{name}: expected a mapping")
            missing = [f for f in fields if f not in entry]
            if missing:
                raise ConfigError(f"{path}: joints.{name}.{missing[0]}: required key is missing")
            try:
                joint = JointCalibration(
                    name=str(name),
                    servo_id=int(entry["servo_id"]),
                    model=servo_model(str(entry["model"])).name,
                    direction=int(entry["direction"]),
                    homing_offset=int(entry["homing_offset"]),
                    home_ticks=int(entry["home_ticks"]),
                    home_angle=float(entry["home_angle"]),
                    range_min=float(entry["range_min"]),
                    range_max=float(entry["range_max"]),
                )
            except (TypeError, ValueError, KeyError) as err:
                raise ConfigError(f"{path}: joints.{name}: {err.args[0] if err.args else err}") from None
            if joint.direction not in (1, -1):
                raise ConfigError(f"{path}: joints.{name}.direction: expected 1 or -1, got {joint.direction}")
            if not joint.range_min < joint.range_max:
                raise ConfigError(f"{path}: joints.{name}: range_min must be below range_max")
            joints.append(joint)
        calibration = cls(str(data["arm"]), tuple(joints), str(data.get("created", "")))
        if arm is not None:
            calibration.check_matches(arm, where=str(path))
        return calibration

    def check_matches(self, arm: ArmDescription, where: str = "calibration") -> None:
        """ConfigError unless this calibration is for `arm`'s joints, ids and models, in order."""
        mine = [(j.name, j.servo_id, j.model) for j in self.joints]
        theirs = [(j.name, j.servo_id, j.model.name) for j in arm.joints]
        if self.arm != arm.name or mine != theirs:
            raise ConfigError(
                f"{where}: this calibration is for arm '{self.arm}' with joints {[m[0] for m in mine]}, "
                f"not for arm '{arm.name}' ({arm.source}); run forethought calibrate --arm {arm.name}"
            )


def apply_calibration(bus: ServoBus, calibration: Calibration) -> None:
    """Write each joint's homing offset into its servo where it differs (torque must be off)."""
    for servo, joint in zip(bus.servos, calibration.joints):
        if bus.read_register(servo, "homing_offset") != joint.homing_offset:
            bus.write_register(servo, "homing_offset", joint.homing_offset)


def measure_calibration(
    bus: ServoBus,
    arm: ArmDescription,
    ask: Callable[[str], None],
    sweep_done: Callable[[], bool] | None = None,
    range_margin: float = 0.02,
    poll_s: float = 0.02,
) -> Calibration:
    """Record a calibration with torque off.

    ask(pose) returns once the arm stands in calibration pose `pose` ("home", then "rotated").
    sweep_done: if given, positions are polled every poll_s until it returns True while every
    joint is moved through its whole range, which becomes the joint's range (less range_margin
    at each end, and never beyond the arm description's limits); otherwise the description's
    limits are the range.
    """
    bus.set_torque(False)
    for servo in bus.servos:
        bus.write_register(servo, "homing_offset", 0)
    home = arm.calibration_poses["home"]
    rotated = arm.calibration_poses["rotated"]

    ask("home")
    actual = bus.read_state().position
    offsets = [homing_offset_for(s.model, a) for s, a in zip(bus.servos, actual)]
    for servo, offset in zip(bus.servos, offsets):
        bus.write_register(servo, "homing_offset", offset)
    home_ticks = bus.read_state().position

    ask("rotated")
    rotated_ticks = bus.read_state().position
    directions = []
    for servo, joint, h, r, q_home, q_rot in zip(bus.servos, arm.joints, home_ticks, rotated_ticks, home, rotated):
        res = servo.model.resolution
        expected = (q_rot - q_home) * res / TWO_PI
        moved = int(wrap_ticks(r - h, res))
        if abs(expected) < 0.05 * res:
            raise CalibrationError(f"{arm.source}: calibration_poses: {joint.name} must turn at least 0.3 rad between home and rotated")
        ratio = moved / expected
        if not 0.8 <= abs(ratio) <= 1.25:
            raise CalibrationError(
                f"{servo.label()} moved {moved} ticks between the home and rotated poses, expected about "
                f"{abs(expected):.0f}: check that the arm stood in both poses"
            )
        directions.append(1 if ratio > 0 else -1)

    joints = [
        JointCalibration(s.name, s.servo_id, s.model.name, d, int(o), int(h), float(q), float(j.lower), float(j.upper))
        for s, j, d, o, h, q in zip(bus.servos, arm.joints, directions, offsets, home_ticks, home)
    ]
    calibration = Calibration(arm.name, tuple(joints), _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if sweep_done is None:
        return calibration

    low = np.full(len(joints), np.inf)
    high = np.full(len(joints), -np.inf)
    while True:
        q = calibration.to_rad(bus.read_state().position)
        low, high = np.minimum(low, q), np.maximum(high, q)
        if sweep_done():
            break
        time.sleep(poll_s)
    joints = [
        JointCalibration(
            j.name, j.servo_id, j.model, j.direction, j.homing_offset, j.home_ticks, j.home_angle,
            float(max(lo + range_margin, a.lower)), float(min(hi - range_margin, a.upper)),
        )
        for j, a, lo, hi in zip(joints, arm.joints, low, high)
    ]
    for j in joints:
        if not j.range_min < j.range_max:
            raise CalibrationError(f"{j.name} hardly moved during the range sweep: move every joint through its range")
    return Calibration(arm.name, tuple(joints), calibration.created)
