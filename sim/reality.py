"""A reality gap: how a real arm differs from its nominal scene, defined once in a YAML file, and
`RealityArm`, the simulated arm with that gap behind the Robot interface.

    damping: {scale: 2.0}          # every servo joint ...
    kp: {all: {scale: 0.5}, gripper: {value: 4.0}}   # ... or per joint, `all` for the rest
    armature: {scale: 1.5}         # damping, armature, frictionloss: the joints'; kp, kv: the
    frictionloss: {scale: 3.0}     #   position actuators' stiffness and velocity feedback
    kv: {scale: 1.5}
    backlash: 0.5                  # deg: the total play of each joint's gears (or per joint)
    payload: 0.05                  # kg at the tool site `ee` (or {mass: 0.05, site: ee})
    encoder_noise: {std: 1, unit: ticks}   # on measured joint positions; unit deg or ticks (4096 a turn)
    servo_period: 0.004            # s: the servo samples its goal at this period
    latency: 0.010                 # s: a goal takes effect this long after it is sent

What MuJoCo has (the joint and actuator parameters, the payload as a body) goes into the scene
through sim.servo_model; what it has not lives in the plant: `GoalPath` (a delay line of goals at
physics-step resolution, the servo's sampling of them, the gears' play between the goal and the
actuator's target) and the encoder's noise on the measured joints. Without a reality the plant is
the scene, step for step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import mujoco
import numpy as np

from forethought.robots.config import ConfigError, from_mapping, load_yaml
from forethought.robots.robot import check_action
from forethought.sim.mujoco_robot import MujocoRobot
from forethought.sim.scenes import scene_path
from forethought.sim.servo_model import (
    FIELDS,
    ServoParameters,
    compile_spec,
    load_spec,
    servo_parameters,
    write_servo_parameters,
)

ALL = "all"
TICKS_PER_TURN = 4096


@dataclass(frozen=True)
class Change:
    """A parameter of the real arm: `scale` times the scene's, or `value` in the parameter's units."""

    scale: float | None = None
    value: float | None = None

    def __post_init__(self) -> None:
        if (self.scale is None) == (self.value is None):
            raise ValueError("give exactly one of `scale` or `value`")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.value is not None and not self.value >= 0:
            raise ValueError(f"value must not be negative, got {self.value}")

    def of(self, nominal: float) -> float:
        return nominal * self.scale if self.scale is not None else float(self.value)


@dataclass(frozen=True)
class Payload:
    """mass: kg, a point mass at site `site` of the tool."""

    mass: float = 0.0
    site: str = "ee"

    def __post_init__(self) -> None:
        if not self.mass >= 0:
            raise ValueError(f"mass must not be negative, got {self.mass}")


@dataclass(frozen=True)
class EncoderNoise:
    """std of the Gaussian noise on each measured joint position, in `unit` (deg or ticks, of
    `ticks_per_turn` a turn)."""

    std: float = 0.0
    unit: str = "deg"
    ticks_per_turn: int = TICKS_PER_TURN

    def __post_init__(self) -> None:
        if self.unit not in ("deg", "ticks"):
            raise ValueError(f"unit must be deg or ticks, got {self.unit!r}")
        if not self.std >= 0:
            raise ValueError(f"std must not be negative, got {self.std}")
        if self.ticks_per_turn < 1:
            raise ValueError(f"ticks_per_turn must be positive, got {self.ticks_per_turn}")

    @property
    def std_rad(self) -> float:
        return np.deg2rad(self.std) if self.unit == "deg" else self.std * 2 * np.pi / self.ticks_per_turn


@dataclass
class _RealityFile:
    damping: dict | None = None
    armature: dict | None = None
    frictionloss: dict | None = None
    kp: dict | None = None
    kv: dict | None = None
    backlash: float | dict | None = None
    payload: float | dict | None = None
    encoder_noise: dict | None = None
    servo_period: float = 0.0
    latency: float = 0.0


@dataclass(frozen=True)
class Reality:
    """The differences between a real arm and its nominal scene (module docstring).

    changes: parameter (damping, armature, frictionloss, kp, kv) -> joint name or "all" -> Change;
    backlash: joint name or "all" -> total play in deg; payload; encoder_noise; servo_period,
    latency: s; source: where it was read from, for errors.
    """

    changes: Mapping[str, Mapping[str, Change]] = field(default_factory=dict)
    backlash: Mapping[str, float] = field(default_factory=dict)
    payload: Payload = Payload()
    encoder_noise: EncoderNoise = EncoderNoise()
    servo_period: float = 0.0
    latency: float = 0.0
    source: str = "reality"

    @classmethod
    def from_mapping(cls, data, where: str = "reality") -> "Reality":
        """Validate a mapping (the YAML file's) into a Reality; ConfigError naming `where` and the key."""
        raw = from_mapping(_RealityFile, data, f"{where}:")
        changes = {}
        for name in FIELDS:
            section = getattr(raw, name)
            if section is not None:
                changes[name] = {
                    target: from_mapping(Change, spec, f"{where}: {name}" + ("" if target == ALL else f".{target}"))
                    for target, spec in _per_joint(section, where, name, ("scale", "value")).items()
                }
        backlash = {}
        if raw.backlash is not None:
            for target, deg in _per_joint(raw.backlash, where, "backlash", None).items():
                key = f"{where}: backlash" + ("" if target == ALL else f".{target}")
                if isinstance(deg, bool) or not isinstance(deg, (int, float)) or not deg >= 0:
                    raise ConfigError(f"{key}: expected a play in deg, not negative, got {deg!r}")
                backlash[target] = float(deg)
        payload = raw.payload
        if isinstance(payload, (int, float)) and not isinstance(payload, bool):
            payload = {"mass": payload}
        payload = from_mapping(Payload, payload, f"{where}: payload") if payload is not None else Payload()
        noise = from_mapping(EncoderNoise, raw.encoder_noise, f"{where}: encoder_noise") if raw.encoder_noise else EncoderNoise()
        for key in ("servo_period", "latency"):
            if not getattr(raw, key) >= 0:
                raise ConfigError(f"{where}: {key}: expected seconds, not negative, got {getattr(raw, key)!r}")
        return cls(changes, backlash, payload, noise, raw.servo_period, raw.latency, where)

    # -- against a scene -------------------------------------------------------------------------
    def _targets(self, key: str, targets, joints: tuple[str, ...]) -> None:
        unknown = [t for t in targets if t != ALL and t not in joints]
        if unknown:
            raise ConfigError(f"{self.source}: {key}.{unknown[0]}: the scene has no servo joint '{unknown[0]}' "
                              f"(its joints: {', '.join(joints)})")

    def servo_parameters(self, nominal: ServoParameters) -> ServoParameters:
        """The real arm's servo parameters from the scene's `nominal` ones."""
        values = {}
        for name in FIELDS:
            table = self.changes.get(name, {})
            self._targets(name, table, nominal.joints)
            base = getattr(nominal, name)
            values[name] = np.array([
                (table.get(j) or table.get(ALL) or Change(scale=1.0)).of(base[i]) for i, j in enumerate(nominal.joints)
            ])
        return ServoParameters(nominal.actuators, nominal.joints, payload=self.payload.mass,
                               payload_site=self.payload.site, **values)

    def backlash_rad(self, joints: tuple[str, ...]) -> np.ndarray:
        """(m,) total play of each joint, rad."""
        self._targets("backlash", self.backlash, joints)
        return np.deg2rad([self.backlash.get(j, self.backlash.get(ALL, 0.0)) for j in joints])


def _per_joint(section, where: str, key: str, leaf_keys: tuple[str, ...] | None) -> dict:
    """A section for every joint (a leaf: {scale: 2} or a number) or per joint ({joint: leaf, all: leaf})."""
    if not isinstance(section, dict):
        if leaf_keys is None:
            return {ALL: section}
        raise ConfigError(f"{where}: {key}: expected {{scale: X}}, {{value: X}} or a mapping of joint names to those, "
                          f"got {section!r}")
    if leaf_keys is not None and section and set(section) <= set(leaf_keys):
        return {ALL: section}
    return dict(section)


def load_reality(path: str | Path) -> Reality:
    """Read a reality file; ConfigError naming the file and key for anything wrong in it."""
    return Reality.from_mapping(load_yaml(path), str(path))


def as_reality(reality: Reality | str | Path | None) -> Reality:
    """A Reality, a path to its file, or None (no gap: the scene itself)."""
    if reality is None:
        return Reality(source="no reality")
    return reality if isinstance(reality, Reality) else load_reality(reality)


def reality_model(scene: str | Path, reality: Reality | None = None) -> mujoco.MjModel:
    """The scene with the reality's MuJoCo parameters (joints, actuators, payload) written in."""
    reality = as_reality(reality)
    spec = load_spec(scene)
    nominal = servo_parameters(compile_spec(spec, str(scene)), str(scene))
    params = reality.servo_parameters(nominal)
    if params.payload > 0 and spec.site(params.payload_site) is None:
        raise ConfigError(f"{reality.source}: payload.site: the scene has no site '{params.payload_site}'")
    write_servo_parameters(spec, params, str(scene))
    return compile_spec(spec, str(scene))


class GoalPath:
    """What becomes of the goals sent to m servos before their position loops see them, one physics
    step at a time.

    A goal sent at step s arrives at step s + latency_steps; each servo samples what has arrived
    every period_steps steps (at `phase`); the gears' play lets the actuator's target trail the
    sampled goal by up to half of `backlash` (m,) rad either way (a play operator: the target moves
    only when the goal pushes it). With no latency, a period of one step and no play, the target is
    the last goal sent.
    """

    def __init__(self, m: int, latency_steps: int = 0, period_steps: int = 1, backlash=0.0):
        if latency_steps < 0 or period_steps < 1:
            raise ValueError(f"latency_steps must be >= 0 and period_steps >= 1, got {latency_steps}, {period_steps}")
        self.m, self.latency_steps, self.period_steps = int(m), int(latency_steps), int(period_steps)
        self.half_play = 0.5 * np.broadcast_to(np.asarray(backlash, dtype=np.float64), (self.m,)).copy()
        self.reset(np.zeros(self.m))

    def reset(self, goal, phase: int = 0) -> None:
        """Start with every stage holding `goal` (m,) rad; the servo samples at steps phase + k period."""
        goal = np.asarray(goal, dtype=np.float64).reshape(self.m)
        self._pending: deque[tuple[int, np.ndarray]] = deque()
        self._sent, self._arrived = goal.copy(), goal.copy()
        self._sampled, self._target = goal.copy(), goal.copy()
        self.phase = int(phase) % self.period_steps

    def send(self, goal, step: int, index=None) -> None:
        """Goals written to the bus at physics step `step`: (m,) rad for every servo, or for the
        servos `index` only (a write to some servos; the others keep their last goal)."""
        sent = self._sent.copy()
        if index is None:
            sent[:] = np.asarray(goal, dtype=np.float64).reshape(self.m)
        else:
            sent[np.asarray(index, dtype=np.intp)] = goal
        self._sent = sent
        self._pending.append((int(step) + self.latency_steps, sent))

    def hold(self, index: int, goal: float) -> None:
        """Servo `index` holds `goal` (rad) at every stage from now (its torque just went on: it
        keeps the goal in its register, whatever was on its way before)."""
        self._sent, self._arrived = self._sent.copy(), self._arrived.copy()
        self._sampled, self._target = self._sampled.copy(), self._target.copy()
        for stage in (self._sent, self._arrived, self._sampled, self._target):
            stage[index] = goal
        for _, pending in self._pending:
            pending[index] = goal

    def target(self, step: int) -> np.ndarray:
        """The actuators' targets (m,) rad during physics step `step` (call once per step, in order)."""
        while self._pending and self._pending[0][0] <= step:
            self._arrived = self._pending.popleft()[1]
        if (step - self.phase) % self.period_steps == 0:
            self._sampled = self._arrived
        self._target = np.clip(self._target, self._sampled - self.half_play, self._sampled + self.half_play)
        return self._target.copy()


def goal_path_for(reality: Reality, timestep: float, joints: tuple[str, ...]) -> GoalPath:
    """The reality's GoalPath for servos on `joints` (in that order), at physics step `timestep` (s)."""
    return GoalPath(
        len(joints),
        latency_steps=int(round(reality.latency / timestep)),
        period_steps=max(1, int(round(reality.servo_period / timestep))),
        backlash=reality.backlash_rad(tuple(joints)),
    )


def reality_emulator(arm, scene: str | Path, reality: Reality | str | Path | None = None, **options):
    """A BusEmulator for `arm` (an ArmDescription) whose servos move `scene` with the reality gap
    `reality` (a Reality, its file, or None: the scene itself, as BusEmulator(arm, scene) is).
    options: BusEmulator's (mounts, faults, seed). ConfigError naming the file and key for a bad
    reality file."""
    from forethought.robots.bus_emulator import BusEmulator

    if reality is None:
        return BusEmulator(arm, scene_path(scene), **options)
    reality = as_reality(reality)
    model = reality_model(scene, reality)
    return BusEmulator(arm, scene_path(scene), model=model, **options,
                       goal_path=goal_path_for(reality, model.opt.timestep, tuple(arm.names)),
                       encoder_noise=reality.encoder_noise.std_rad)


class RealityArm(MujocoRobot):
    """An arm scene with a reality gap, behind the Robot interface (spec, reset, step, close).

    scene: a scene name or MJCF path (its actuators all position servos); reality: a Reality, a
    reality file, or None for the scene itself. reset and step return the measured state (joint
    positions with the encoder's noise; velocities as simulated); `get_state()` is the simulation's
    true state, which a real arm does not offer. `received`: (T, m) the goals the plant received
    since the last reset, one row per step (after clipping to the action bounds), the goals its
    servos were sent.
    """

    def __init__(self, scene: str | Path, reality: Reality | str | Path | None = None, control_steps: int | None = None,
                 init_qpos_std=None, init_qvel_std=None):
        self.reality = as_reality(reality)
        super().__init__(scene, control_steps, init_qpos_std, init_qvel_std,
                         model=reality_model(scene, self.reality))
        model = self.model
        params = servo_parameters(model, str(self.scene))
        self.servo_parameters = params
        self.goal_path = goal_path_for(self.reality, model.opt.timestep, params.joints)
        joint_ids = model.actuator_trnid[:, 0]
        self._joint_qpos = model.jnt_qposadr[joint_ids]
        self._noise_std = float(self.reality.encoder_noise.std_rad)
        self.spec.metadata["reality"] = self.reality.source
        self._received: list[np.ndarray] = []
        self._physics_step = 0
        self._rng = np.random.default_rng(0)

    @property
    def received(self) -> np.ndarray:
        """(T, m) goals received since the last reset, rad."""
        return np.array(self._received).reshape(-1, self.spec.m)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """The scene's reset (home keyframe plus seeded noise); the goal path holds the keyframe's
        goals and the servos sample at a seeded phase. Returns the measured x0."""
        super().reset(seed)
        self._rng = np.random.default_rng(None if seed is None else [int(seed), 7])
        self.goal_path.reset(self.data.ctrl, phase=int(self._rng.integers(self.goal_path.period_steps)))
        self._physics_step = 0
        self._received = []
        return self.measure()

    def step(self, u) -> np.ndarray:
        """Send goals u (m,) rad, clipped to the bounds, and run one control period; returns the measured state."""
        u, clipped = check_action(self.spec, u)
        self.interventions["clipped"] += int(clipped)
        self.applied_action = u
        self._received.append(u)
        self.goal_path.send(u, self._physics_step)
        before = self.data.time
        for _ in range(self.control_steps):
            self.data.ctrl[:] = self.goal_path.target(self._physics_step)
            mujoco.mj_step(self.model, self.data)
            self._physics_step += 1
        self._check_physics(before, self.control_steps)
        self._checked_state()
        return self.measure()

    def measure(self) -> np.ndarray:
        """The state as the servos report it: joint positions with the encoder's noise, then velocities."""
        x = self.get_state()
        if self._noise_std > 0:
            x[self._joint_qpos] += self._noise_std * self._rng.standard_normal(len(self._joint_qpos))
        return x
