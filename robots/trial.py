"""A trial: what one run of a policy on a robot produced, and `rollout` that makes one."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from typing import Callable, Protocol

import numpy as np

from forethought.robots.robot import Robot


def package_version() -> str:
    try:
        return _metadata.version("forethought")
    except _metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Trial:
    """One trial, time-major.

    states: (T+1, n); actions: (T, m) as the robot applied them (in simulation clipped to the
    bounds; on a servo arm the goals written to the bus after the safety layer); requested_actions:
    (T, m) what the controller asked for (default: the actions); timestamps: (T+1,) s since the trial started (the robot's
    `time()`: simulated time in simulation, the wall clock on hardware);
    costs: (T+1,) running cost l(x_t, u_t) for t < T and terminal cost at T (NaN where none);
    metadata: JSON-serialisable (robot, task, controller, seed, created, version, interventions, ...).
    complete: False for a trial recovered from a log that was still being written.
    """

    states: np.ndarray
    actions: np.ndarray
    timestamps: np.ndarray
    costs: np.ndarray
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    dt: float
    metadata: dict = field(default_factory=dict)
    complete: bool = True
    requested_actions: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.states = np.asarray(self.states, dtype=np.float64)
        self.actions = np.asarray(self.actions, dtype=np.float64)
        requested = self.actions if self.requested_actions is None else self.requested_actions
        self.requested_actions = np.array(requested, dtype=np.float64)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        self.costs = np.asarray(self.costs, dtype=np.float64)
        self.state_names = tuple(self.state_names)
        self.action_names = tuple(self.action_names)
        T = len(self.actions)
        n, m = len(self.state_names), len(self.action_names)
        if self.states.shape != (T + 1, n):
            raise ValueError(f"trial states must be ({T + 1}, {n}), got {self.states.shape}")
        if self.actions.shape != (T, m) or self.requested_actions.shape != (T, m):
            raise ValueError(f"trial actions and requested actions must be ({T}, {m}), got {self.actions.shape} "
                             f"and {self.requested_actions.shape}")
        if self.timestamps.shape != (T + 1,) or self.costs.shape != (T + 1,):
            raise ValueError(f"trial timestamps and costs must be ({T + 1},)")

    @property
    def horizon(self) -> int:
        """T, the number of actions."""
        return len(self.actions)

    @property
    def total_cost(self) -> float:
        return float(np.nansum(self.costs))

    def prefix(self, steps: int) -> "Trial":
        """The trial's first `steps` actions and the states around them (0 < steps <= horizon); the
        cost at the cut is NaN, as it was a running cost, not a terminal one."""
        if not 0 < steps <= self.horizon:
            raise ValueError(f"prefix needs 0 < steps <= {self.horizon}, got {steps}")
        costs = self.costs[: steps + 1].copy()
        if steps < self.horizon:
            costs[steps] = np.nan
        return Trial(self.states[: steps + 1], self.actions[:steps], self.timestamps[: steps + 1], costs,
                     self.state_names, self.action_names, self.dt, dict(self.metadata), self.complete,
                     self.requested_actions[:steps])


class Policy(Protocol):
    def act(self, x: np.ndarray, t: int) -> np.ndarray: ...

    def reset(self) -> None: ...


class StepSink(Protocol):
    """Where rollout reports each step as it happens (the trial log's writer)."""

    def start(self, x0: np.ndarray) -> None: ...

    def append(self, x_next: np.ndarray, u: np.ndarray, timestamp: float, cost: float,
               requested: np.ndarray | None = None) -> None: ...


CostFn = Callable[[np.ndarray, "np.ndarray | None"], float]


def rollout(
    robot: Robot,
    policy: Policy,
    horizon: int,
    seed: int | None = None,
    cost: CostFn | None = None,
    metadata: dict | None = None,
    sink: StepSink | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Trial:
    """Run `policy` on `robot` for `horizon` steps from `robot.reset(seed)`.

    cost(x, u) gives the running cost, cost(x, None) the terminal one. `sink`, if given, receives
    every step as it happens (so a crash loses nothing already flushed); `on_step(t)` is called
    after step t for progress. The robot's interventions end up in the trial's metadata.
    The trial's actions are what the robot applied (`applied_action` after each step: the goals
    written to the bus on a servo arm), its requested_actions what the policy asked for; the
    running cost is charged on the applied action.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    spec = robot.spec
    x = np.asarray(robot.reset(seed=seed), dtype=np.float64)
    policy.reset()
    states = np.empty((horizon + 1, spec.n))
    actions = np.empty((horizon, spec.m))
    requested = np.empty((horizon, spec.m))
    stamps = np.empty(horizon + 1)
    costs = np.full(horizon + 1, np.nan)
    states[0], stamps[0] = x, 0.0
    if sink is not None:
        sink.start(x)
    for t in range(horizon):
        asked = np.asarray(policy.act(x, t), dtype=np.float64)
        x_next = np.asarray(robot.step(asked), dtype=np.float64)
        u = applied_action(robot, asked)
        if cost is not None:
            costs[t] = cost(x, u)
        actions[t], requested[t], states[t + 1], stamps[t + 1] = u, asked, x_next, robot.time()
        if sink is not None:
            sink.append(x_next, u, stamps[t + 1], costs[t], asked)
        x = x_next
        if on_step is not None:
            on_step(t)
    if cost is not None:
        costs[horizon] = cost(x, None)
    meta = {
        "robot": spec.name,
        "seed": seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "version": package_version(),
        "interventions": dict(robot.interventions),
    }
    meta.update(metadata or {})
    return Trial(states, actions, stamps, costs, spec.state_names, spec.action_names, spec.dt, meta,
                 requested_actions=requested)


def applied_action(robot: Robot, asked: np.ndarray) -> np.ndarray:
    """(m,) what `robot`'s last step applied: its `applied_action` where it keeps one, else `asked`
    clipped to the spec's bounds (what every robot does with an action at least)."""
    applied = getattr(robot, "applied_action", None)
    if applied is None:
        return np.clip(asked, robot.spec.action_low, robot.spec.action_high)
    return np.array(applied, dtype=np.float64)
