"""Simple policies: seeded uniform random actions."""

from __future__ import annotations

import numpy as np

from forethought.robots.config import ConfigError
from forethought.robots.robot import RobotSpec


class RandomPolicy:
    """u ~ Uniform(action_low, action_high), reproducible from `seed` after each reset."""

    def __init__(self, spec: RobotSpec, seed: int = 0):
        self.spec, self.seed = spec, seed
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        return self._rng.uniform(self.spec.action_low, self.spec.action_high)


class RandomController:
    """The Controller that always answers a seeded random policy (a baseline, and data collection)."""

    checkpoint_attributes = ("seed",)  # what a run's checkpoint keeps (scripts/checkpoint.py)

    def __init__(self, spec: RobotSpec, seed: int = 0):
        self.spec, self.seed = spec, seed

    def policy(self, condition: int) -> RandomPolicy:
        return RandomPolicy(self.spec, self.seed + condition)

    def update(self, trials) -> dict[str, float]:
        self.seed += 1000  # fresh actions in the next iteration, still reproducible
        return {}


def build_random(params: dict, robot, task, model=None) -> RandomController:
    if params:
        raise ConfigError(f"unknown key '{sorted(params)[0]}' (the random controller takes no parameters)")
    return RandomController(robot.spec, task.seed)
