"""Simple policies: seeded uniform random actions."""

from __future__ import annotations

import numpy as np

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
