"""The robot interface every controller runs through: a spec, `reset`, `step`, `close`.

A robot is a MuJoCo scene, a dm_control task or a servo arm; all of them take an action of the
spec's shape, reject malformed ones before anything moves, clip out-of-range ones to the spec
and count every clip in `interventions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class ActionError(ValueError):
    """An action that must not reach a robot: wrong shape, NaN or infinite."""


@dataclass(frozen=True)
class RobotSpec:
    """What a robot's states and actions are.

    action_low, action_high: (m,) bounds in the action's units (N, rad, ...).
    dt: control period in seconds.
    """

    name: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_low: np.ndarray
    action_high: np.ndarray
    dt: float
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        low = np.asarray(self.action_low, dtype=np.float64).reshape(-1)
        high = np.asarray(self.action_high, dtype=np.float64).reshape(-1)
        m = len(self.action_names)
        if low.shape != (m,) or high.shape != (m,):
            raise ValueError(f"{self.name}: action bounds must have shape ({m},), got {low.shape} and {high.shape}")
        if np.any(low > high):
            raise ValueError(f"{self.name}: action_low exceeds action_high")
        if not self.dt > 0:
            raise ValueError(f"{self.name}: dt must be positive, got {self.dt}")
        object.__setattr__(self, "action_low", low)
        object.__setattr__(self, "action_high", high)
        object.__setattr__(self, "state_names", tuple(self.state_names))
        object.__setattr__(self, "action_names", tuple(self.action_names))

    @property
    def n(self) -> int:
        """State dimension."""
        return len(self.state_names)

    @property
    def m(self) -> int:
        """Action dimension."""
        return len(self.action_names)


@runtime_checkable
class Robot(Protocol):
    """A robot that forethought controls, simulated or real.

    `interventions` counts, since the last `reset`, every time the robot (or the safety layer in
    front of it) changed or refused what the controller asked for, by kind ("clipped", ...).
    `applied_action`: (m,) what the last `step` applied (clipped to the bounds in simulation, the
    goal written to the bus after the safety layer on a servo arm); None before the first step.
    """

    spec: RobotSpec
    interventions: dict[str, int]
    applied_action: np.ndarray | None

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a trial; returns x0: (n,)."""

    def step(self, u: np.ndarray) -> np.ndarray:
        """Apply u: (m,) for one control period; returns x_next: (n,)."""

    def time(self) -> float:
        """Seconds since the last reset: the simulation's clock in simulation, the wall clock on hardware."""

    def close(self) -> None:
        """Release the robot (on hardware: torque off)."""

    def __enter__(self) -> "Robot": ...

    def __exit__(self, *exc) -> None: ...


def check_action(spec: RobotSpec, u) -> tuple[np.ndarray, bool]:
    """Validate u against spec and clip it to the bounds.

    Returns (u_clipped: (m,) float64, clipped: whether any element was out of range).
    Raises ActionError, naming the robot, for a wrong shape, NaN or infinity.
    """
    try:
        u = np.asarray(u, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ActionError(f"{spec.name}: action is not numeric ({err})") from None
    if u.shape != (spec.m,):
        raise ActionError(f"{spec.name}: action must have shape ({spec.m},) {list(spec.action_names)}, got {u.shape}")
    if not np.all(np.isfinite(u)):
        bad = [name for name, v in zip(spec.action_names, u) if not np.isfinite(v)]
        raise ActionError(f"{spec.name}: action has NaN or infinite values in {bad}")
    clipped = np.clip(u, spec.action_low, spec.action_high)
    return clipped, bool(np.any(clipped != u))
