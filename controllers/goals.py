"""A task's goal, stated in its experiment file, and the judgement of every trial by it.

    task:
      goal: {type: site_distance, site: ee, target: target, within: 0.01}         # at the end
      goal: {type: state_distance, states: [block:x, block:y], target: block_target, within: 0.03}
      goal: {type: state_distance, states: [pole, cart], target: {pole: 3.14159}, angles: [pole],
             within: {pole: 0.1, cart: 0.1}, at: final, seconds: 1.0}                # each within its own
      goal: {type: reward, at_least: 0.8, at: final, seconds: 1.0}                  # mean reward there
      goal: {type: reward, at_least: 1.0, at: any}                                  # at some step

`at`: `end` (the last state; the default), `any` (some state of the trial) or `final` (every state
of the last `seconds` s; for `reward`, their mean). Distances are Euclidean over the named states
(angles wrapped to (-pi, pi]) or between an MJCF site and its target, in the states' units (m for
a site); `within` a number, or per state its own tolerance (every state within its own: the value
judged is the largest error over its tolerance, at most 1); `target` is a list, a mapping of state
name to value (0 for a state it leaves out), or the name of a condition key holding a list. `reward`
reads minus the
trial's logged cost, as a dm_control task logs it. The status line, summary.json, the plots and the
benches report the same judgement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from forethought.robots.config import ConfigError, from_mapping
from forethought.robots.trial import Trial

WHEN = ("end", "any", "final")


@dataclass(frozen=True)
class Judgement:
    """success; value: the measured distance (state units, m for a site) or reward; text: for a status line."""

    success: bool
    value: float
    text: str


@dataclass
class _Goal:
    at: str = "end"
    seconds: float = 1.0

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.at not in WHEN:
            raise ValueError(f"at must be one of {', '.join(WHEN)}, got {self.at!r}")
        if not self.seconds > 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")

    def window(self, trial: Trial) -> slice:
        """The states the goal looks at: the last (end), all (any) or the last `seconds` (final)."""
        if self.at == "end":
            return slice(-1, None)
        if self.at == "any":
            return slice(None)
        steps = max(1, int(round(self.seconds / trial.dt)))
        return slice(-(steps + 1), None)


@dataclass
class _DistanceGoal(_Goal):
    within: float | dict = 0.0
    target: str | list[float] | dict = "target"

    def judge_distances(self, d: np.ndarray, unit_scale: float, unit: str) -> Judgement:
        """d: distances over the window (in units of `within`, 1 for per-state tolerances); success
        by `at` (any: the least; else the largest)."""
        d = np.where(np.isfinite(d), d, np.inf)
        value = float(d.min() if self.at == "any" else d.max())
        if isinstance(self.within, dict):
            return Judgement(value <= 1.0, value, f"{value:.3g} of the tolerance")
        return Judgement(value <= self.within, value, f"{value * unit_scale:.3g} {unit}".strip())

    def target_point(self, condition: dict, size: int, where: str, names: list[str] | None = None) -> np.ndarray:
        value = self.target
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names or []))
            if unknown:
                raise ConfigError(f"{where}.target: {unknown[0]!r} is not among the goal's states")
            value = [value.get(name, 0.0) for name in names]
        if isinstance(value, str):
            if value not in condition:
                raise ConfigError(f"{where}.target: names the condition key '{value}', which a condition does not give")
            value = condition[value]
        point = np.asarray(value, dtype=np.float64).reshape(-1)
        if point.size != size or not np.all(np.isfinite(point)):
            raise ConfigError(f"{where}.target: expected {size} finite numbers, got {value!r}")
        return point


@dataclass
class SiteDistanceGoal(_DistanceGoal):
    """An MJCF site within `within` m of the target point."""

    site: str = "ee"
    kind: ClassVar[str] = "site_distance"

    def prepare(self, spec, scene, where: str):
        from forethought.sim.kinematics import ArmKinematics

        if scene is None:
            raise ConfigError(f"{where}.type: a site_distance goal needs a MuJoCo scene (the robot's `scene`)")
        try:
            kinematics = ArmKinematics(scene, site=self.site)
        except (ValueError, KeyError) as err:
            raise ConfigError(f"{where}.site: {err}") from None
        missing = [j for j in kinematics.joint_names if j not in spec.state_names]
        if missing:
            raise ConfigError(f"{where}.site: the state has no entry for joint {missing[0]!r}")
        index = [spec.state_names.index(j) for j in kinematics.joint_names]

        def distances(states: np.ndarray, condition: dict) -> np.ndarray:
            goal = self.target_point(condition, 3, where)
            return np.linalg.norm(kinematics.site_positions(states[:, index]) - goal, axis=1)

        return distances


@dataclass
class StateDistanceGoal(_DistanceGoal):
    """The named states within `within` of their target (Euclidean, angles wrapped)."""

    states: list[str] = field(default_factory=list)
    angles: list[str] = field(default_factory=list)
    kind: ClassVar[str] = "state_distance"

    def prepare(self, spec, scene, where: str):
        if not self.states:
            raise ConfigError(f"{where}.states: name at least one state")
        for key, names in (("states", self.states), ("angles", self.angles)):
            unknown = [s for s in names if s not in spec.state_names]
            if unknown:
                raise ConfigError(f"{where}.{key}: unknown state {unknown[0]!r} (known: {', '.join(spec.state_names)})")
        stray = [a for a in self.angles if a not in self.states]
        if stray:
            raise ConfigError(f"{where}.angles: {stray[0]!r} is not among `states`")
        index = [spec.state_names.index(s) for s in self.states]
        wrap = np.array([s in self.angles for s in self.states])
        tolerance = None
        if isinstance(self.within, dict):
            unknown = sorted(set(self.within) ^ set(self.states))
            if unknown:
                raise ConfigError(f"{where}.within: give one tolerance per state of `states` ({unknown[0]!r} differs)")
            tolerance = np.array([float(self.within[s]) for s in self.states])
            if not np.all(tolerance > 0):
                raise ConfigError(f"{where}.within: tolerances must be positive")
        if not isinstance(self.target, str):  # a fixed target: check it now
            self.target_point({}, len(index), where, self.states)

        def distances(states: np.ndarray, condition: dict) -> np.ndarray:
            e = states[:, index] - self.target_point(condition, len(index), where, self.states)
            e = np.where(wrap, np.angle(np.exp(1j * e)), e)
            if tolerance is not None:
                return np.max(np.abs(e) / tolerance, axis=1)
            return np.linalg.norm(e, axis=1)

        return distances


@dataclass
class RewardGoal(_Goal):
    """The task's reward (minus the logged cost) at least `at_least`: at the end, at some step, or on
    average over the last `seconds`."""

    at_least: float = 1.0
    kind: ClassVar[str] = "reward"

    def prepare(self, spec, scene, where: str):
        return None


GOALS: dict[str, type] = {g.kind: g for g in (SiteDistanceGoal, StateDistanceGoal, RewardGoal)}


class Goal:
    """A task's goal, ready to judge trials: `judge(trial, condition) -> Judgement`."""

    def __init__(self, section: dict, spec, scene, where: str = "task.goal"):
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: expected a mapping with a `type`, got {section!r}")
        kind = section.get("type")
        if kind not in GOALS:
            raise ConfigError(f"{where}.type: unknown goal {kind!r} (known: {', '.join(GOALS)})")
        self.settings = from_mapping(GOALS[kind], {k: v for k, v in section.items() if k != "type"}, where)
        self.kind, self.where = kind, where
        self._distances = self.settings.prepare(spec, scene, where)

    def check_conditions(self, conditions: Sequence[dict]) -> None:
        """Fail now (ConfigError naming the key) if a condition lacks what the goal reads."""
        if isinstance(self.settings, _DistanceGoal):
            names = None if self.kind == "site_distance" else self.settings.states
            for condition in conditions:
                self.settings.target_point(condition, 3 if names is None else len(names), self.where, names)

    def judge(self, trial: Trial, condition: dict) -> Judgement:
        window = self.settings.window(trial)
        if self._distances is None:
            # A reward per action (T,): the last one, all, or those of the final `seconds`.
            rewards = -trial.costs[:-1] if len(trial.costs) > 1 else -trial.costs
            if self.settings.at == "end":
                rewards = rewards[-1:]
            elif self.settings.at == "final":
                rewards = rewards[-max(1, int(round(self.settings.seconds / trial.dt))):]
            rewards = np.where(np.isfinite(rewards), rewards, -math.inf)
            value = float(rewards.max() if self.settings.at == "any" else rewards.mean())
            return Judgement(value >= self.settings.at_least, value, f"reward {value:.3g}")
        scale, unit = (1000.0, "mm") if self.kind == "site_distance" else (1.0, "")
        return self.settings.judge_distances(self._distances(trial.states[window], condition), scale, unit)

    def describe(self) -> str:
        """One line: what success means."""
        s = self.settings
        when = {"end": "at the end", "any": "at some step", "final": f"over the final {s.seconds:g} s"}[s.at]
        if self.kind == "reward":
            return f"reward at least {s.at_least:g} {when}"
        what = f"site {s.site}" if self.kind == "site_distance" else ", ".join(s.states)
        within = (", ".join(f"{k} {v:g}" for k, v in s.within.items()) if isinstance(s.within, dict)
                  else f"{s.within:g}")
        return f"{what} within {within} of {s.target if isinstance(s.target, str) else 'its target'} {when}"
