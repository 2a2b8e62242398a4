"""Reading an experiment's `task.cost` mapping into a Cost; every error names its key.

`build_cost` checks the list and the keys common to every term (type, weight, final_weight, ramp),
finds the term type in the registry (controllers.costs.term.TERM_TYPES) and lets the type read its
own keys through a `TermReader`, whose errors read `cost.terms[i].key: what is wrong`.
"""

from __future__ import annotations

import math

import numpy as np

from forethought.controllers.costs.cost import Cost
from forethought.controllers.costs.schedule import RAMPS, Weighted
from forethought.controllers.costs.term import TERM_TYPES
from forethought.robots.config import ConfigError
from forethought.robots.robot import RobotSpec

COMMON_KEYS = frozenset({"type", "weight", "final_weight", "ramp"})


class TermReader:
    """Reads one term's mapping `raw`; every error names the key as cost.terms[i].key.

    spec: the robot's (state and action names); condition: the condition whose keys a value may name.
    """

    def __init__(self, raw: dict, where: str, spec: RobotSpec, condition: dict | None):
        self.raw, self.where, self.spec, self.condition = raw, where, spec, condition or {}

    def fail(self, key: str, message: str):
        raise ConfigError(f"{self.where}.{key}: {message}")

    def number(self, key: str, default=None, positive: bool = False) -> float:
        """A finite, non-negative number (positive if asked); `default` when the key is absent."""
        value = self.raw.get(key, default)
        if value is None:
            self.fail(key, "required key is missing")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"expected a finite number, got {value!r}")
        if positive and not value > 0:
            self.fail(key, f"must be positive, got {value!r}")
        if value < 0:
            self.fail(key, f"must not be negative, got {value!r}")
        return float(value)

    def number_value(self, key: str, name: str, value, allow_negative: bool = False) -> float:
        """One entry `name` of a mapping under `key` as a finite number."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"{name}: expected a finite number, got {value!r}")
        if not allow_negative and value < 0:
            self.fail(key, f"{name}: must not be negative, got {value!r}")
        return float(value)

    def vector(self, key: str, size: int | None, value=None) -> np.ndarray:
        """A list of `size` finite numbers (float64), or the name of a condition key that holds one."""
        value = self.raw.get(key) if value is None else value
        if isinstance(value, str):
            if value not in self.condition:
                self.fail(key, f"names the condition key '{value}', which the condition does not give")
            value = self.condition[value]
        try:
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            self.fail(key, f"expected a list of numbers, got {value!r}")
        if size is not None and arr.size != size:
            self.fail(key, f"expected {size} numbers, got {arr.size}")
        if not np.all(np.isfinite(arr)):
            self.fail(key, "has NaN or infinite values")
        return arr

    def state_index(self, key: str, name) -> int:
        """The index of state `name` in the robot's state."""
        if name not in self.spec.state_names:
            self.fail(key, f"unknown state name {name!r} (known: {', '.join(self.spec.state_names)})")
        return self.spec.state_names.index(name)

    def names(self, key: str, default=None) -> list[str]:
        """A list of names; `default` when the key is absent."""
        value = self.raw.get(key, default)
        if value is None:
            self.fail(key, "required key is missing")
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"expected a list of state names, got {value!r}")
        return list(value)


def read_term(i: int, raw, spec: RobotSpec, scene, condition: dict | None) -> Weighted:
    """Term i of `cost.terms`, with its weights and label."""
    where = f"cost.terms[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    kind = raw.get("type")
    if kind not in TERM_TYPES:
        raise ConfigError(f"{where}.type: unknown cost term {kind!r} (known: {', '.join(TERM_TYPES)})")
    term_type = TERM_TYPES[kind]
    known = COMMON_KEYS | term_type.keys
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' for a {kind} term (known: {', '.join(sorted(known))})")
    r = TermReader(raw, where, spec, condition)
    term = term_type.from_config(r, scene)
    weight = r.number("weight", 1.0)
    if term.uses_action and "final_weight" in raw:
        r.fail("final_weight", "an action term has no terminal cost")
    final = 0.0 if term.uses_action else r.number("final_weight", weight)
    ramp = raw.get("ramp", "constant")
    if ramp not in RAMPS:
        r.fail("ramp", f"expected one of {', '.join(RAMPS)}, got {ramp!r}")
    return Weighted(term, weight, final, ramp, term_type.label(i, raw))


def build_cost(cfg: dict, spec: RobotSpec, scene=None, condition: dict | None = None) -> Cost:
    """The Cost that an experiment's `task.cost` mapping declares (schema: controllers.costs).

    spec: the robot's spec (state and action names); scene: the MuJoCo scene name, MJCF path or
    MjModel (needed by site_distance, and by joint_limits without explicit bounds); condition: the
    condition whose keys terms may name (e.g. {"target": [x, y, z]}).
    Raises ConfigError naming the key (cost.terms[i].key) for anything wrong.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"cost: expected a mapping with `terms`, got {cfg!r}")
    unknown = sorted(set(cfg) - {"terms"})
    if unknown:
        raise ConfigError(f"cost: unknown key '{unknown[0]}' (known: terms)")
    raw_terms = cfg.get("terms")
    if not isinstance(raw_terms, list) or not raw_terms:
        raise ConfigError("cost.terms: expected a non-empty list of terms")
    return Cost(spec.n, spec.m, [read_term(i, raw, spec, scene, condition) for i, raw in enumerate(raw_terms)])
