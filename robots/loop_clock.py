"""The control loop's clock: ticks at a fixed period on time.monotonic(), and what they measured.

`ServoArm` (robots/servo_arm.py) waits for each tick before it reads the arm; `stats()` is the
loop's period, jitter and overruns as `loop_stats` and the trial's metadata report them.
"""

from __future__ import annotations

import time

import numpy as np


def sleep_until(deadline: float, spin_s: float = 0.0005) -> None:
    """Sleep until time.monotonic() reaches deadline; the last spin_s by yielding, for precision."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(remaining - spin_s if remaining > spin_s else 0)


class LoopClock:
    """Ticks at a fixed period dt (s) from `start()`; records when each tick really came.

    A tick later than a whole period restarts the schedule from then (an overrun), so one slow
    step does not cause a burst of catch-up ticks.
    """

    def __init__(self, dt: float):
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        self.dt = float(dt)
        self.ticks: list[float] = []
        self.overruns = 0
        self._next = 0.0

    def start(self) -> float:
        now = time.monotonic()
        self.ticks, self.overruns, self._next = [now], 0, now + self.dt
        return now

    def wait(self) -> float:
        sleep_until(self._next)
        now = time.monotonic()
        self.ticks.append(now)
        self._next += self.dt
        if now > self._next:
            self.overruns += 1
            self._next = now + self.dt
        return now

    def stats(self) -> dict[str, float]:
        """Loop statistics in ms: period mean, p50, p99, max, jitter (std); rate in Hz; overruns."""
        periods = np.diff(self.ticks) * 1e3
        if periods.size == 0:
            return {"ticks": 0, "target_period_ms": self.dt * 1e3}
        return {
            "ticks": int(periods.size),
            "target_period_ms": self.dt * 1e3,
            "rate_hz": float(1e3 / periods.mean()),
            "period_mean_ms": float(periods.mean()),
            "period_p50_ms": float(np.percentile(periods, 50)),
            "period_p99_ms": float(np.percentile(periods, 99)),
            "period_max_ms": float(periods.max()),
            "jitter_ms": float(periods.std()),
            "overruns": int(self.overruns),
        }
