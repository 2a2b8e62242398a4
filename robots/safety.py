"""The safety layer between every controller and a servo arm's bus.

Every goal a controller asks for passes `SafetyLayer.filter` before it reaches the bus:

- a non-finite action (NaN, inf) is refused whole: the arm holds its last goal;
- the goal is clipped to the calibrated joint limits;
- a joint measured faster than the velocity cap is braked (its goal is pulled to where it is);
- the goal moves at most `max_step` per tick from the last goal.

So every goal that reaches the bus lies inside the limits and within `max_step` of the one before
(the first goal is the arm's own position, which must start inside its limits). `hold` serves the
watchdog: when no action arrives for two periods, the goal is pulled to where the arm is.
`check_health` stops the arm when a servo reports overheating, overload or low voltage.
Every intervention is counted by kind in `interventions`, which goes into the trial's metadata.

`exit_signals_raise` turns SIGTERM (and SIGINT) into exceptions, so that torque goes off through
the same `finally` and `with` blocks as on a normal end or an error.
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from forethought.robots.servo_bus import BusReading
from forethought.robots.servo_models import ServoFault

INTERVENTIONS = (
    "clipped", "rate_limited", "velocity", "nonfinite", "watchdog", "stale", "overheat", "overload", "low_voltage",
)


class SafetyStop(RuntimeError):
    """A servo reported a condition that stops the arm; the message names the servo."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM); a BaseException so that no `except Exception` swallows it."""


@dataclass(frozen=True)
class SafetyLimits:
    """lower, upper: (m,) rad; max_step: (m,) rad per tick; max_velocity: (m,) rad/s;
    max_temperature: deg C; min_voltage: V; start_tolerance: rad a joint may start outside its limits."""

    lower: np.ndarray
    upper: np.ndarray
    max_step: np.ndarray
    max_velocity: np.ndarray
    max_temperature: float
    min_voltage: float
    start_tolerance: float = 0.1

    def __post_init__(self) -> None:
        lower = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        m = lower.shape[0]
        arrays = {}
        for name in ("upper", "max_step", "max_velocity"):
            value = np.broadcast_to(np.asarray(getattr(self, name), dtype=np.float64), (m,)).copy()
            arrays[name] = value
        if not np.all(np.isfinite(lower)) or not np.all(np.isfinite(arrays["upper"])):
            raise ValueError("safety limits must be finite")
        if np.any(lower >= arrays["upper"]):
            raise ValueError("every lower limit must be below its upper limit")
        if np.any(arrays["max_step"] <= 0) or np.any(arrays["max_velocity"] <= 0):
            raise ValueError("max_step and max_velocity must be positive")
        object.__setattr__(self, "lower", lower)
        for name, value in arrays.items():
            object.__setattr__(self, name, value)


class SafetyLayer:
    """Filters goals for the joints `names` (m of them) under `limits`; counts interventions."""

    def __init__(self, names: Sequence[str], limits: SafetyLimits):
        if len(names) != limits.lower.shape[0]:
            raise ValueError(f"{len(names)} joint names for {limits.lower.shape[0]} limits")
        self.names = tuple(names)
        self.limits = limits
        self.interventions: dict[str, int] = dict.fromkeys(INTERVENTIONS, 0)
        self.last_goal: np.ndarray | None = None

    def reset_counts(self) -> None:
        self.interventions = dict.fromkeys(INTERVENTIONS, 0)

    def start(self, present: np.ndarray) -> np.ndarray:
        """The first goal: the arm's position, which must lie within start_tolerance of the limits."""
        present = np.asarray(present, dtype=np.float64)
        lim = self.limits
        outside = (present < lim.lower - lim.start_tolerance) | (present > lim.upper + lim.start_tolerance)
        if not np.all(np.isfinite(present)) or np.any(outside):
            j = int(np.argmax(outside | ~np.isfinite(present)))
            raise SafetyStop(
                f"{self.names[j]} is at {present[j]:.3f} rad, outside its calibrated range "
                f"[{lim.lower[j]:.3f}, {lim.upper[j]:.3f}]: move it inside by hand (torque off) and start again"
            )
        self.last_goal = np.clip(present, lim.lower, lim.upper)
        return self.last_goal.copy()

    def filter(self, u, present: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        """The goal (m,) rad to send for action u (m,) rad, given the measured present (m,) rad and
        velocity (m,) rad/s. u must have shape (m,); its values may be anything."""
        if self.last_goal is None:
            raise RuntimeError("SafetyLayer.start must give the first goal before filter")
        u = np.asarray(u, dtype=np.float64)
        if u.shape != self.last_goal.shape:
            raise ValueError(f"action must have shape {self.last_goal.shape}, got {u.shape}")
        if not np.all(np.isfinite(u)):
            self.interventions["nonfinite"] += 1
            return self.last_goal.copy()
        lim = self.limits
        target = np.clip(u, lim.lower, lim.upper)
        if np.any(target != u):
            self.interventions["clipped"] += 1
        too_fast = np.abs(np.asarray(velocity, dtype=np.float64)) > lim.max_velocity
        if np.any(too_fast):
            self.interventions["velocity"] += 1
            target = np.where(too_fast, np.asarray(present, dtype=np.float64), target)
        return self._step_towards(target, "rate_limited")

    def hold(self, present: np.ndarray) -> np.ndarray:
        """The goal that holds the arm where it is (as far as the per-tick cap allows); counts 'watchdog'."""
        self.interventions["watchdog"] += 1
        return self._step_towards(np.asarray(present, dtype=np.float64), None)

    def keep(self) -> np.ndarray:
        """The last goal again, whatever the action: the state it would be judged on is stale
        (a servo's reply is missing); counts 'stale'."""
        if self.last_goal is None:
            raise RuntimeError("SafetyLayer.start must give the first goal before keep")
        self.interventions["stale"] += 1
        return self.last_goal.copy()

    def _step_towards(self, target: np.ndarray, count_as: str | None) -> np.ndarray:
        lim = self.limits
        last = self.last_goal
        step = np.clip(target - last, -lim.max_step, lim.max_step)
        if count_as is not None and np.any(np.abs(target - last) > lim.max_step):
            self.interventions[count_as] += 1
        # NaN in `present` (never from a valid reading) would poison the goal: keep the last one there.
        goal = np.where(np.isfinite(step), last + step, last)
        goal = np.clip(goal, lim.lower, lim.upper)
        self.last_goal = goal
        return goal.copy()

    def check_health(self, reading: BusReading) -> None:
        """SafetyStop naming the servo when one reports overheating, overload or low voltage."""
        lim = self.limits
        for name, fault, temp, volt in zip(self.names, reading.faults, reading.temperature, reading.voltage):
            if ServoFault.OVERHEAT in fault or temp >= lim.max_temperature:
                self.interventions["overheat"] += 1
                raise SafetyStop(f"{name} is overheating ({temp:.0f} deg C, limit {lim.max_temperature:.0f}): stopped")
            if ServoFault.OVERLOAD in fault or ServoFault.ELECTRICAL in fault:
                self.interventions["overload"] += 1
                raise SafetyStop(f"{name} reports {fault.describe()}: stopped")
            if ServoFault.VOLTAGE in fault or volt < lim.min_voltage:
                self.interventions["low_voltage"] += 1
                raise SafetyStop(f"{name} sees {volt:.1f} V, below the {lim.min_voltage:.1f} V minimum: stopped")


@contextlib.contextmanager
def exit_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated and SIGINT KeyboardInterrupt (main thread only)."""

    def on_term(signum, frame):
        raise Terminated(f"signal {signum}")

    try:
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
            signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        }
    except ValueError:  # not the main thread: signals go to the main thread's handlers anyway
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
