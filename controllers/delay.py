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

from collections import deque

import numpy as np


class DelayCompensated:
    """`policy` acting on the state `model.advance` predicts `delay` s after the measured one, under
    the goals this policy gave that are still in force then (a goal given at tick j acts from
    j dt + delay to (j + 1) dt + delay). On the first tick it acts on the measured state itself: the
    goal then in force is the robot's start pose, not one of ours; a goal older than the first is
    taken to be the first.

    low, high: (m,) the action bounds the robot clips to (the goals in force are the clipped ones).
    """

    def __init__(self, policy, model, delay: float, low: np.ndarray, high: np.ndarray):
        if not delay > 0.0:
            raise ValueError(f"DelayCompensated: the delay must be positive, got {delay}")
        self.policy, self.model, self.delay = policy, model, float(delay)
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        dt = model.dt
        whole = int(np.floor(self.delay / dt + 1e-9))
        rest = self.delay - whole * dt
        # (how many ticks back, seconds) in the order they act from now on: the oldest goal in force
        # for the remainder of the delay, then one whole period for each later goal.
        self.segments = ([(whole + 1, rest)] if rest > 1e-9 * dt else []) + [(k, dt) for k in range(whole, 0, -1)]
        self._given: deque[np.ndarray] = deque(maxlen=whole + 1)

    def __getattr__(self, name):  # stats, plan, ...: the policy's
        return getattr(self.policy, name)

    def reset(self) -> None:
        self.policy.reset()
        self._given.clear()

    def predicted(self, x: np.ndarray) -> np.ndarray:
        """The state (n,) `delay` s after x (n,) under the goals in force (x itself before any goal)."""
        if not self._given:
            return x
        ahead = x
        for back, seconds in self.segments:
            goal = self._given[-min(back, len(self._given))]
            ahead = self.model.advance(ahead, goal, seconds)
        return ahead if np.all(np.isfinite(ahead)) else x  # unstable prediction: plan from the measurement

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if t == 0:
            self._given.clear()
        u = np.asarray(self.policy.act(self.predicted(x), t), dtype=np.float64)
        self._given.append(np.clip(u, self.low, self.high))
        return u


def compensate_delay(policy, model, low, high):
    """`policy` wrapped in DelayCompensated when `model` declares an action delay, else itself."""
    delay = float(getattr(model, "action_delay", 0.0) or 0.0)
    if delay <= 0.0 or not hasattr(model, "advance"):
        return policy
    return DelayCompensated(policy, model, delay, low, high)
