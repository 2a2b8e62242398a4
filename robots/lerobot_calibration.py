"""LeRobot calibration files (SO-101, Koch) read and converted into a forethought `Calibration`.

LeRobot (huggingface/lerobot, `MotorsBus`) writes one JSON file per arm,
`~/.cache/huggingface/lerobot/calibration/robots/ROBOT_TYPE/ID.json`, mapping each motor name to

    {"id": 1, "drive_mode": 0, "homing_offset": -1470, "range_min": 758, "range_max": 3292}

homing_offset is the value written into the servo's Homing_Offset register (Feetech STS:
present = actual - offset, sign-magnitude with the sign in bit 11; Dynamixel X: present = actual +
offset, 4-byte two's complement), chosen so that the pose the arm stood in ("middle of its range")
reads half a turn; range_min, range_max are the present positions (ticks, after that offset) met
while every joint was swept through its range (0 and 4095 for the joints that turn fully).

LeRobot reports a body joint as `(ticks - mid) * 360 / 4095` degrees (mid = the middle of the range)
or as -100..100 over the range, the gripper as 0..100 over its range. So LeRobot's zero of a body
joint is the middle of its recorded range, and its positive sense is that of growing ticks; the
published SO-101 model, whose chain our scenes take, reads 0 where LeRobot's degrees read 0.

The conversion keeps LeRobot's homing offsets (the servos need no rewrite, and ticks read by
forethought are the ticks LeRobot recorded) and sets, per joint:

    direction = +1; home_ticks, home_angle: q = 0 at mid (body joints) or at range_min (gripper:
    jaw closed, LeRobot's 0); range_min, range_max: the recorded range in rad, less `range_margin`
    at each end and never beyond the arm description's limits (as `measure_calibration` does).

`drive_mode` only flips LeRobot's -100..100 and 0..100 values of a Feetech motor in software (its
degrees are never flipped; on Dynamixel it is the servo's own reverse bit, already in the ticks):
it matters when reading a dataset (lerobot_dataset), not for the calibration.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forethought.robots.arm_description import ArmDescription, load_arm
from forethought.robots.calibration import TWO_PI, Calibration, JointCalibration
from forethought.robots.config import ConfigError

FIELDS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")
# LeRobot's robot types (the calibration folder's name, a dataset's info.json robot_type) -> our arm.
ROBOT_TYPES = {
    "so101_follower": "so101", "so101_leader": "so101", "so100_follower": "so101", "so100_leader": "so101",
    "so_follower": "so101", "so_leader": "so101", "koch_follower": "koch", "koch_leader": "koch",
}
# A motor's norm mode in LeRobot: how its dataset values relate to its ticks.
DEGREES, RANGE_M100_100, RANGE_0_100 = "degrees", "range_m100_100", "range_0_100"
GRIPPER = "gripper"
# Ticks a turn of the servos LeRobot's SO-101 and Koch drive; its degrees take 360 deg as one tick
# less (`max_res` = resolution - 1), 0.024 % more than a true degree.
LEROBOT_RESOLUTION = 4096


@dataclass(frozen=True)
class LeRobotMotor:
    """One motor of a LeRobot calibration file; homing_offset, range_min, range_max: ticks."""

    name: str
    motor_id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int

    @property
    def mid(self) -> float:
        """Ticks where LeRobot's degrees and -100..100 read 0."""
        return (self.range_min + self.range_max) / 2.0


@dataclass(frozen=True)
class LeRobotCalibration:
    """A LeRobot calibration file: its motors by name (as in the file) and where it came from."""

    motors: dict[str, LeRobotMotor]
    source: str

    def arm_guess(self) -> str | None:
        """The arm the file's folder names (LeRobot keeps them under robots/ROBOT_TYPE/), if any."""
        return ROBOT_TYPES.get(Path(self.source).parent.name)


def load_lerobot_calibration(path: str | Path) -> LeRobotCalibration:
    """Read a LeRobot calibration JSON; ConfigError naming the file and the motor/key that is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the file ({err})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a JSON object of motor name -> calibration, got {type(data).__name__}")
    if "motor_names" in data or "calib_mode" in data:
        raise ConfigError(f"{path}: LeRobot's calibration format from before its hardware API redesign of June 2025 "
                          "(motor_names, calib_mode): "
                          "recalibrate with a current lerobot, or with forethought calibrate --arm ARM --port PORT")
    motors = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {name}: expected an object with {', '.join(FIELDS)}, got {entry!r}")
        missing = [f for f in FIELDS if f not in entry]
        if missing:
            raise ConfigError(f"{path}: {name}.{missing[0]}: required key is missing")
        bad = [f for f in FIELDS if not isinstance(entry[f], int) or isinstance(entry[f], bool)]
        if bad:
            raise ConfigError(f"{path}: {name}.{bad[0]}: expected an integer, got {entry[bad[0]]!r}")
        motor = LeRobotMotor(str(name), entry["id"], entry["drive_mode"], entry["homing_offset"],
                             entry["range_min"], entry["range_max"])
        if motor.drive_mode not in (0, 1):
            raise ConfigError(f"{path}: {name}.drive_mode: expected 0 or 1, got {motor.drive_mode}")
        if not motor.range_min < motor.range_max:
            raise ConfigError(f"{path}: {name}: range_min ({motor.range_min}) must be below range_max "
                              f"({motor.range_max})")
        motors[str(name)] = motor
    return LeRobotCalibration(motors, str(path))


def resolve_arm(calibration: LeRobotCalibration, arm: str | Path | None) -> ArmDescription:
    """The arm description named by `arm`, else the one the file's folder names; ConfigError if neither."""
    name = arm if arm is not None else calibration.arm_guess()
    if name is None:
        raise ConfigError(f"{calibration.source}: which arm is this? give --arm so101 or --arm koch "
                          f"(LeRobot's files under robots/so101_follower/ or robots/koch_follower/ say so themselves)")
    return load_arm(name)


def matched_motors(calibration: LeRobotCalibration, arm: ArmDescription) -> list[LeRobotMotor]:
    """The file's motors in the arm's joint order (same names, same ids); ConfigError naming the difference."""
    where = calibration.source
    missing = [n for n in arm.names if n not in calibration.motors]
    extra = [n for n in calibration.motors if n not in arm.names]
    if missing or extra:
        raise ConfigError(f"{where}: motors {sorted(calibration.motors)} are not the {arm.name} joints "
                          f"{list(arm.names)}" + (f" (missing: {', '.join(missing)})" if missing else "")
                          + (f" (unknown: {', '.join(extra)})" if extra else ""))
    motors = [calibration.motors[n] for n in arm.names]
    for motor, joint in zip(motors, arm.joints):
        if motor.motor_id != joint.servo_id:
            raise ConfigError(f"{where}: {motor.name}.id: {motor.motor_id}, but the {arm.name} description "
                              f"({arm.source}) drives {joint.name} with servo {joint.servo_id}: give --arm a copy of "
                              f"it with your ids")
        model = joint.model
        reg = model.registers["homing_offset"]
        limit = (1 << reg.sign_bit) - 1 if reg.sign_bit is not None else (1 << (8 * reg.size - 1)) - 1
        if abs(motor.homing_offset) > limit:
            raise ConfigError(f"{where}: {motor.name}.homing_offset: {motor.homing_offset} does not fit the "
                              f"{model.name}'s register (at most {limit} either way)")
        if model.resolution != LEROBOT_RESOLUTION:
            raise ConfigError(f"{where}: {motor.name}: {model.name} has {model.resolution} ticks a turn; LeRobot's "
                              f"conversion here assumes {LEROBOT_RESOLUTION}")
    return motors


def zero_ticks(motor: LeRobotMotor) -> float:
    """Ticks (present position, LeRobot's homing offset in the servo) where the joint reads 0 rad."""
    return float(motor.range_min) if motor.name == GRIPPER else motor.mid


def convert_calibration(
    calibration: LeRobotCalibration, arm: ArmDescription, range_margin: float = 0.02
) -> Calibration:
    """A LeRobot calibration as forethought's (see the module's docstring for the conventions)."""
    joints = []
    for motor, joint in zip(matched_motors(calibration, arm), arm.joints):
        res = joint.model.resolution
        zero = zero_ticks(motor)
        home_ticks = int(np.floor(zero))
        # The zero may fall between two ticks (mid of an odd span): home_angle carries the half tick.
        home_angle = (home_ticks - zero) * TWO_PI / res
        low = (motor.range_min - zero) * TWO_PI / res
        high = (motor.range_max - zero) * TWO_PI / res
        range_min, range_max = max(low + range_margin, joint.lower), min(high - range_margin, joint.upper)
        if not range_min < range_max:
            raise ConfigError(
                f"{calibration.source}: {motor.name}: the recorded range "
                f"[{np.degrees(low):+.0f}, {np.degrees(high):+.0f}]"
                f" deg from LeRobot's zero misses the {arm.name} joint's limits [{np.degrees(joint.lower):+.0f}, "
                f"{np.degrees(joint.upper):+.0f}] deg: record a calibration with forethought calibrate"
            )
        joints.append(JointCalibration(
            joint.name, joint.servo_id, joint.model.name, 1, int(motor.homing_offset), home_ticks,
            float(home_angle), float(range_min), float(range_max),
        ))
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Calibration(arm.name, tuple(joints), created)


def lerobot_calibration_dir() -> Path:
    """Where LeRobot keeps calibrations: $HF_LEROBOT_CALIBRATION, else $HF_LEROBOT_HOME/calibration,
    else $HF_HOME/lerobot/calibration (HF_HOME defaults to ~/.cache/huggingface)."""
    if os.environ.get("HF_LEROBOT_CALIBRATION"):
        return Path(os.environ["HF_LEROBOT_CALIBRATION"]).expanduser()
    home = os.environ.get("HF_LEROBOT_HOME")
    if home:
        return Path(home).expanduser() / "calibration"
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return hf_home / "lerobot" / "calibration"


def find_lerobot_calibration(robot_type: str, where: str) -> Path:
    """The one calibration LeRobot keeps for `robot_type` (robots/ROBOT_TYPE/*.json); ConfigError
    naming `where` (what needs it) when there is none or several."""
    folder = lerobot_calibration_dir() / "robots" / robot_type
    found = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    listed = f": {', '.join(p.name for p in found)}" if found else ""
    raise ConfigError(f"{where}: give its arm's LeRobot calibration with --lerobot-calibration FILE.json "
                      f"({len(found)} files in {folder}{listed})")
