"""Arm descriptions (robots/arms/NAME.yaml): which servo drives which joint, and what is safe.

One description per arm, shared by the hardware driver, the bus emulator and the arm's MuJoCo
scene: the joints carry the scene's joint names and limits (rad), their servo ids and models; the
safety section bounds how fast goals and joints may move and when a servo's temperature or the
supply voltage stops the arm. `calibration_poses` are the poses `forethought calibrate` asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forethought.robots.config import ConfigError, load_yaml
from forethought.robots.servo_bus import BusServo, ServoBus
from forethought.robots.servo_models import ServoModel, servo_model

ARM_DIR = Path(__file__).resolve().parent / "arms"


@dataclass(frozen=True)
class JointDescription:
    """A joint and its servo. lower, upper: rad; torque_limit: fraction of the servo's stall torque."""

    name: str
    servo_id: int
    model: ServoModel
    lower: float
    upper: float
    torque_limit: float = 1.0


@dataclass(frozen=True)
class ArmDescription:
    """An arm: its joints in action order, its bus and scene, and its safety bounds.

    max_goal_rate: rad/s, the fastest a goal may change (the per-tick cap is this times dt);
    max_velocity: rad/s, a joint measured faster than this is braked;
    stale_window: s a servo's last valid state may stand in for reads it did not answer (those
    ticks are marked stale and the goals held) before the arm is declared lost (safety.stale_window);
    min_voltage: V, max_temperature: deg C, beyond which the arm stops;
    calibration_poses: pose name -> (m,) joint angles in rad ("home" and "rotated").
    """

    name: str
    protocol: str
    baudrate: int
    scene: str
    joints: tuple[JointDescription, ...]
    supply_voltage: float
    min_voltage: float
    max_temperature: float
    max_goal_rate: float
    max_velocity: float
    calibration_poses: dict[str, np.ndarray]
    source: str = ""
    stale_window: float = 0.1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def lower(self) -> np.ndarray:
        return np.array([j.lower for j in self.joints])

    @property
    def upper(self) -> np.ndarray:
        return np.array([j.upper for j in self.joints])

    def bus_servos(self) -> list[BusServo]:
        return [BusServo(j.name, j.servo_id, j.model) for j in self.joints]


def arm_names() -> list[str]:
    return sorted(p.stem for p in ARM_DIR.glob("*.yaml"))


def load_arm(name: str | Path) -> ArmDescription:
    """A shipped arm name ("so101", "koch") or a YAML path -> ArmDescription; ConfigError naming the key."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = ARM_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown arm '{name}' (known: {', '.join(arm_names())}, or a YAML path)")
    data = load_yaml(path)
    where = str(path)

    def need(mapping: dict, key: str, kind, at: str):
        if key not in mapping:
            raise ConfigError(f"{where}: {at}{key}: required key is missing")
        value = mapping[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise ConfigError(f"{where}: {at}{key}: expected {kind.__name__}, got {value!r}")
        return value

    known = {"name", "protocol", "baudrate", "scene", "joints", "supply_voltage", "min_voltage",
             "max_temperature", "safety", "calibration_poses"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
    protocol = need(data, "protocol", str, "")
    joints = []
    raw_joints = need(data, "joints", list, "")
    if not raw_joints:
        raise ConfigError(f"{where}: joints: at least one joint is needed")
    for i, raw in enumerate(raw_joints):
        at = f"joints[{i}]."
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: joints[{i}]: expected a mapping, got {raw!r}")
        extra = sorted(set(raw) - {"name", "id", "model", "lower", "upper", "torque_limit"})
        if extra:
            raise ConfigError(f"{where}: {at}{extra[0]}: unknown key")
        try:
            model = servo_model(need(raw, "model", str, at))
        except KeyError as err:
            raise ConfigError(f"{where}: {at}model: {err.args[0]}") from None
        if model.protocol != protocol:
            raise ConfigError(f"{where}: {at}model: {model.name} speaks {model.protocol}, the arm's bus is {protocol}")
        joint = JointDescription(
            name=need(raw, "name", str, at),
            servo_id=need(raw, "id", int, at),
            model=model,
            lower=need(raw, "lower", float, at),
            upper=need(raw, "upper", float, at),
            torque_limit=float(raw.get("torque_limit", 1.0)),
        )
        if not joint.lower < joint.upper:
            raise ConfigError(f"{where}: {at}lower must be below upper")
        if not 0.0 < joint.torque_limit <= 1.0:
            raise ConfigError(f"{where}: {at}torque_limit must be in (0, 1], got {joint.torque_limit}")
        joints.append(joint)
    names = [j.name for j in joints]
    if len(set(names)) != len(names) or len({j.servo_id for j in joints}) != len(joints):
        raise ConfigError(f"{where}: joints: names and ids must be unique")
    safety = data.get("safety", {})
    if not isinstance(safety, dict):
        raise ConfigError(f"{where}: safety: expected a mapping")
    unknown = sorted(set(safety) - {"max_goal_rate", "max_velocity", "stale_window"})
    if unknown:
        raise ConfigError(f"{where}: safety.{unknown[0]}: unknown key")
    stale_window = need(safety, "stale_window", float, "safety.") if "stale_window" in safety else 0.1
    if not 0.0 <= stale_window <= 1.0:
        raise ConfigError(f"{where}: safety.stale_window: expected seconds in [0, 1], got {stale_window}")
    poses = {}
    for pose, values in need(data, "calibration_poses", dict, "").items():
        arr = np.asarray(values, dtype=np.float64) if isinstance(values, list) else None
        if arr is None or arr.shape != (len(joints),):
            raise ConfigError(f"{where}: calibration_poses.{pose}: expected {len(joints)} angles in rad")
        poses[pose] = arr
    for pose in ("home", "rotated"):
        if pose not in poses:
            raise ConfigError(f"{where}: calibration_poses.{pose}: required key is missing")
    return ArmDescription(
        name=need(data, "name", str, ""),
        protocol=protocol,
        baudrate=need(data, "baudrate", int, ""),
        scene=need(data, "scene", str, ""),
        joints=tuple(joints),
        supply_voltage=need(data, "supply_voltage", float, ""),
        min_voltage=need(data, "min_voltage", float, ""),
        max_temperature=need(data, "max_temperature", float, ""),
        max_goal_rate=need(safety, "max_goal_rate", float, "safety."),
        max_velocity=need(safety, "max_velocity", float, "safety."),
        calibration_poses=poses,
        source=where,
        stale_window=stale_window,
    )


def make_bus(arm: ArmDescription, port: str, **options) -> ServoBus:
    """The ServoBus for the arm's protocol on `port` (options: retries, latency_ms, timeout_margin_ms)."""
    if arm.protocol == "feetech":
        from forethought.robots.feetech_bus import FeetechBus

        return FeetechBus(port, arm.bus_servos(), arm.baudrate, **options)
    if arm.protocol == "dynamixel":
        from forethought.robots.dynamixel_bus import DynamixelBus

        return DynamixelBus(port, arm.bus_servos(), arm.baudrate, **options)
    raise ConfigError(f"{arm.source}: protocol: unknown protocol '{arm.protocol}' (known: feetech, dynamixel)")
