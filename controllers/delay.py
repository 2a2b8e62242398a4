"""Planning through an action delay: act on the state predicted over the delay.

On an arm a goal acts some time d after the state it answers was measured: the bus's latency, the
loop's write phase, the servo's sampling (an identified scene declares d as its
`forethought_action_delay`). Until then the previous goal still acts. A planner that takes the
measured state as the state its action starts from plans from where the arm was, not from where
it will be when the action takes hold. `DelayCompensated` gives the policy the state predicted d
ahead under the goal still in force (`model.advance`), so that the plan starts where its first
action starts acting.
"""

from __future__ import annotations

import numpy as np


class DelayCompensated:
    """`policy` acting on the state `model.advance` predicts `delay` s after the measured one, under
    the last action this policy gave (on the first tick, the measured state itself: the goal then
    in force is the robot's start pose, not one of ours).

    low, high: (m,) the action bounds the robot clips to (the goal in force is the clipped one).
    """

    def __init__(self, policy, model, delay: float, low: np.ndarray, high: np.ndarray):
        if not 0.0 < delay <= model.dt:
            raise ValueError(f"DelayCompensated: the delay must be within one control period ({model.dt} s), got {delay}")
        self.policy, self.model, self.delay = policy, model, float(delay)
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        self._last: np.ndarray | None = None

    def __getattr__(self, name):  # stats, plan, ...: the policy's
        return getattr(self.policy, name)

    def reset(self) -> None:
        self.policy.reset()
        self._last = None

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if t == 0:
            self._last = None
        ahead = x if self._last is None else self.model.advance(x, self._last, self.delay)
        if not np.all(np.isfinite(ahead)):
            ahead = x  # the prediction went unstable: plan from the measurement
        u = np.asarray(self.policy.act(ahead, t), dtype=np.float64)
        self._last = np.clip(u, self.low, self.high)
        return u


def compensate_delay(policy, model, low, high):
    """`policy` wrapped in DelayCompensated when `model` declares an action delay, else itself."""
    delay = float(getattr(model, "action_delay", 0.0) or 0.0)
    if delay <= 0.0 or not hasattr(model, "advance"):
        return policy
    return DelayCompensated(policy, model, min(delay, model.dt), low, high)
