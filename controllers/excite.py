"""Excitation for system identification: every servo's position goal a multi-sine about a center pose.

Each joint gets its own `sines` frequencies, log-spaced over `band` and interleaved with the other
joints' (no two joints share one, so their effects can be told apart), each a whole number of
periods over the trial, with amplitudes falling as 1/sqrt(f) and seeded random phases. Each
joint's sum is scaled to its amplitude, which is first cut to keep `margin` from the joint's
limits (the robot's action bounds, the calibrated limits on hardware, and the scene's ranges)
and to keep the goal's rate under `max_rate`. The goals start where the arm is and fade into the
excitation about the center over `ramp` seconds, so that the first goal is the arm's own pose, and
fade out to the center over the last `ramp` seconds (the trial ends at rest, at the center). Each
condition may give its own `center`.
The goals are checked against the scene before anything moves: if the tool site would come
within `clearance` of the table's height (z = 0) or the arm would touch the scene, all amplitudes
shrink until it does not. The actions are position goals like any other controller's, so on
hardware they pass the safety layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import mujoco
import numpy as np

from forethought.robots.config import ConfigError, from_mapping
from forethought.sim.kinematics import ArmKinematics, load_model
from forethought.sim.servo_model import servo_joints

# How far each shrink of the amplitudes goes, and how many shrinks before giving up.
_SHRINK, _MAX_SHRINKS = 0.85, 20


@dataclass
class ExciteConfig:
    """amplitude: rad, peak excursion of each joint's goal from the center (one value, or one per
    actuator); band: [low, high] Hz of the sines; sines: how many per joint; center: (m,) rad, for
    conditions that give none (default: the scene's home goals); margin: rad kept from each joint's limits; max_rate: rad/s,
    the fastest any goal moves; ramp: s of fading in from the arm's pose; clearance: m, the lowest
    the site may come above z = 0; site: the tool site checked for clearance."""

    amplitude: float | list[float] = 0.5
    band: list[float] = field(default_factory=lambda: [0.1, 2.0])
    sines: int = 6
    center: list[float] | None = None
    margin: float = 0.15
    max_rate: float = 3.0
    ramp: float = 2.0
    clearance: float = 0.04
    site: str = "ee"

    def __post_init__(self) -> None:
        if len(self.band) != 2 or not 0 < self.band[0] < self.band[1]:
            raise ValueError(f"band must be [low, high] Hz with 0 < low < high, got {self.band}")
        if self.sines < 1:
            raise ValueError(f"sines must be at least 1, got {self.sines}")
        amplitude = np.atleast_1d(np.asarray(self.amplitude, dtype=np.float64))
        if np.any(amplitude < 0) or not np.all(np.isfinite(amplitude)):
            raise ValueError(f"amplitude must be finite and not negative, got {self.amplitude}")
        for name in ("margin", "clearance", "ramp"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.max_rate > 0:
            raise ValueError(f"max_rate must be positive, got {self.max_rate}")


def multisine(horizon: int, dt: float, m: int, band, sines: int, seed: int) -> np.ndarray:
    """(horizon, m) zero-mean sums of sines with unit peak, one column per joint, over t = k dt.

    The frequencies are harmonics of 1 / (horizon dt), `sines` per joint (fewer when the band holds
    too few harmonics of a short trial), log-spaced over `band` (Hz)
    and dealt out in turn, so no two joints share one; amplitudes go as 1/sqrt(f), phases are seeded.
    """
    base = 1.0 / (horizon * dt)
    low = max(1, int(np.ceil(band[0] / base)))
    high = max(low, int(np.floor(min(band[1], 0.5 / dt) / base)))
    sines = min(sines, (high - low + 1) // m)  # a short trial holds fewer
    if sines < 1:
        raise ValueError(f"the band {band} Hz holds {high - low + 1} harmonics of a {horizon * dt:g} s trial; "
                         f"at least one for each of {m} joints is needed: widen it or lengthen the trial")
    wanted = m * sines
    # Log-spaced, distinct harmonics: spread evenly in log, then pushed apart where rounding collides.
    harmonics = np.round(np.geomspace(low, high, wanted)).astype(int)
    for i in range(1, wanted):
        harmonics[i] = max(harmonics[i], harmonics[i - 1] + 1)
    harmonics = np.minimum(harmonics, high - np.arange(wanted)[::-1])
    rng = np.random.default_rng(seed)
    t = np.arange(horizon) * dt
    out = np.empty((horizon, m))
    for j in range(m):
        f = harmonics[j::m] * base
        phase = rng.uniform(0, 2 * np.pi, len(f))
        signal = (np.sin(2 * np.pi * f[None, :] * t[:, None] + phase) / np.sqrt(f)).sum(axis=1)
        out[:, j] = signal / np.abs(signal).max()
    return out


class ExcitePolicy:
    """Goals u_t = base_t + w_t A s_t: s (T, m) unit multi-sines, A (m,) amplitudes, w a smooth
    envelope that rises over the first `ramp_steps` and falls to 0 over the last, base going from
    the measured pose at t = 0 to `center` as w rises (the last goal is the center)."""

    def __init__(self, center, amplitude, signal, joint_index, ramp_steps: int, low, high):
        self.center = np.asarray(center, dtype=np.float64)
        self.amplitude = np.asarray(amplitude, dtype=np.float64)
        self.signal = np.asarray(signal, dtype=np.float64)
        self.joint_index = np.asarray(joint_index, dtype=np.intp)
        self.ramp_steps = int(ramp_steps)
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self._start: np.ndarray | None = None

    def _smooth(self, steps: int) -> float:
        """smoothstep of steps / ramp_steps: 0 to 1 without a jump in the goal's rate at either end."""
        s = min(1.0, max(steps, 0) / self.ramp_steps) if self.ramp_steps > 0 else 1.0
        return s * s * (3.0 - 2.0 * s)

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        if self._start is None or t == 0:
            self._start = np.clip(np.asarray(x, dtype=np.float64)[self.joint_index], self.low, self.high)
        rise = self._smooth(t)
        envelope = min(rise, self._smooth(len(self.signal) - 1 - t))
        base = self._start + (self.center - self._start) * rise
        u = base + envelope * self.amplitude * self.signal[min(t, len(self.signal) - 1)]
        return np.clip(u, self.low, self.high)


class ExciteController:
    """One excitation per condition: about the condition's `center` (else the config's, else the
    scene's home goals), with its own phases (the task's seed plus the condition's index).

    robot: a robot with the arm's actuators as actions (a MuJoCo scene's `model`, or a servo arm with
    the scene named by `scene`); horizon: steps per trial (the sines fit whole periods into it).
    """

    checkpoint_attributes: tuple[str, ...] = ()  # nothing changes between iterations (scripts/checkpoint.py)

    def __init__(self, config: ExciteConfig, robot, scene, horizon: int, seed: int = 0,
                 centers: Sequence | None = None):
        spec = robot.spec
        model = getattr(robot, "model", None)
        model = model if model is not None else (load_model(scene) if scene is not None else None)
        if model is None:
            raise ValueError("excite needs the arm's MuJoCo scene (the robot's `scene`)")
        actuators, joints = servo_joints(model)
        if len(actuators) != spec.m:
            raise ValueError(f"the scene has {len(actuators)} servos, the robot {spec.m} actions")
        missing = [j for j in joints if j not in spec.state_names]
        if missing:
            raise ValueError(f"joint '{missing[0]}' is not in the robot's state")
        self.spec, self.joints, self.config, self.dt = spec, joints, config, spec.dt
        self.joint_index = np.array([spec.state_names.index(j) for j in joints], dtype=np.intp)
        jid = model.actuator_trnid[:, 0]
        limited = model.jnt_limited[jid].astype(bool)
        self.low = np.maximum(spec.action_low, np.where(limited, model.jnt_range[jid, 0], -np.inf))
        self.high = np.minimum(spec.action_high, np.where(limited, model.jnt_range[jid, 1], np.inf))
        if not np.all(np.isfinite(self.low) & np.isfinite(self.high)):
            raise ValueError("excite needs every servo's limits (action bounds or joint ranges)")
        self.kinematics = ArmKinematics(model, site=config.site)
        self._chain = np.array([joints.index(n) for n in self.kinematics.joint_names], dtype=np.intp)
        key = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, "home")
        home = model.key_ctrl[key] if key >= 0 else model.qpos0[model.jnt_qposadr[jid]]
        self.ramp_steps = int(round(config.ramp / spec.dt))
        self.centers, self.signals, self.amplitudes = [], [], []
        for c, center in enumerate(centers if centers is not None else [None]):
            center = self._center(center if center is not None else config.center if config.center is not None else home)
            signal = multisine(horizon, spec.dt, spec.m, config.band, config.sines, seed + c)
            rate = np.abs(np.diff(signal, axis=0)).max(axis=0) / spec.dt  # rad/s at unit amplitude
            room = np.minimum(center - self.low, self.high - center) - config.margin
            requested = np.broadcast_to(np.asarray(config.amplitude, dtype=np.float64), (spec.m,))
            amplitude = np.minimum(np.minimum(requested, room), config.max_rate / np.maximum(rate, 1e-12))
            self.centers.append(center)
            self.signals.append(signal)
            self.amplitudes.append(self._clear(center, amplitude, signal))

    def _center(self, center) -> np.ndarray:
        center = np.asarray(center, dtype=np.float64).reshape(-1)
        margin = self.config.margin
        if center.shape != (self.spec.m,):
            raise ValueError(f"center must have {self.spec.m} entries ({', '.join(self.joints)}), got {center.size}")
        outside = (center < self.low + margin) | (center > self.high - margin)
        if np.any(outside):
            j = int(np.argmax(outside))
            raise ValueError(f"center: {self.joints[j]} at {center[j]:.3f} rad is within margin {margin} rad "
                             f"of its limits [{self.low[j]:.3f}, {self.high[j]:.3f}]")
        return center

    def _clear(self, center: np.ndarray, amplitude: np.ndarray, signal: np.ndarray) -> np.ndarray:
        """The amplitudes, shrunk until every goal keeps the site `clearance` above the table and the
        arm off the scene."""
        for _ in range(_MAX_SHRINKS):
            chain = (center + amplitude * signal)[:, self._chain]
            heights = self.kinematics.site_positions(chain)[:, 2]
            touching = heights.min() < self.config.clearance or any(
                self.kinematics.arm_contacts(q) for q in chain[:: max(1, len(chain) // 400)])
            if not touching:
                return amplitude
            amplitude = amplitude * _SHRINK
        raise ValueError(f"no amplitude keeps site '{self.config.site}' {self.config.clearance} m above the table "
                         f"about the center {np.round(center, 3).tolist()}: choose a higher center")

    def policy(self, condition: int) -> ExcitePolicy:
        return ExcitePolicy(self.centers[condition], self.amplitudes[condition], self.signals[condition],
                            self.joint_index, self.ramp_steps, self.low, self.high)

    def update(self, trials) -> dict[str, float]:
        """Nothing to learn; reports the largest amplitude (rad)."""
        return {"max_amplitude_rad": float(max(a.max() for a in self.amplitudes))}


def build_excite(params: dict, robot, task, model=None) -> ExciteController:
    """The `excite` controller of an experiment (no model): params from its `controller` section, a
    center from each condition's `center` (rad, one per actuator) where it gives one."""
    config = from_mapping(ExciteConfig, params, "excite:")
    try:
        return ExciteController(config, robot, task.scene, task.horizon, task.seed,
                                [c.get("center") for c in task.conditions])
    except ValueError as err:
        raise ConfigError(str(err)) from None
