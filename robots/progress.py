"""Progress of long work (model fits, policy optimisation, controller updates), told through logging.

Work that runs for seconds or minutes reports what it has done as it goes, and a total when it
ends. It does not decide how that reads: the command line's handler (scripts/status_line.py) shows
the running reports as a rewritten status line on a terminal and, in a log file, as a plain line
every few seconds; the totals always as a line. A library user sees the totals through the
`forethought.progress` logger at INFO, the running reports at DEBUG.

    with Progress("PILCO policy, condition 0", total=100) as progress:
        for i in range(100):
            ...
            progress.update(i + 1, cost=J)
    # "PILCO policy, condition 0: 100/100, cost 12.3, 38.2 s"
"""

from __future__ import annotations

import logging
import math
import time

LOGGER = logging.getLogger("forethought.progress")

# Running reports are cheap, but a record per L-BFGS evaluation would still be thousands a minute.
_MIN_INTERVAL_S = 0.2


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


class Progress:
    """Reports of one piece of long work: `update` as it goes, `finish` (or leaving the `with`) at the end.

    what: names the work ("GP fit", "ensemble fit"); total: the count `done` runs up to, if known;
    unit: what is counted ("iterations", "epochs"), shown after the count.
    Each record carries `progress_what`, `progress_done`, `progress_total`, `progress_elapsed_s`
    and `progress_final` for handlers that lay them out themselves.
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "", logger: logging.Logger | None = None):
        self.what, self.total, self.unit = what, total, unit
        self.logger = logger or LOGGER
        self.started = time.perf_counter()
        self.done = 0
        self.values: dict = {}
        self._last = -math.inf
        self._finished = False

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def text(self) -> str:
        """'WHAT: DONE/TOTAL UNIT, key value, ..., ELAPSED s'."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [f"{count} {self.unit}".rstrip()]
        parts += [f"{key.replace('_', ' ')} {_format_value(value)}" for key, value in self.values.items()]
        parts.append(f"{self.elapsed_s:.1f} s")
        return f"{self.what}: " + ", ".join(parts)

    def update(self, done: int, **values) -> None:
        """The work has reached `done` (of `total`); values (a loss, a cost) describe where it stands."""
        self.done = int(done)
        self.values.update(values)
        now = time.perf_counter()
        if now - self._last >= _MIN_INTERVAL_S and self.logger.isEnabledFor(logging.DEBUG):
            self._last = now
            self._emit(logging.DEBUG, final=False)

    def finish(self, **values) -> None:
        """Report the total (once): the last count and values, and the time the work took."""
        if self._finished:
            return
        self._finished = True
        self.values.update(values)
        self._emit(logging.INFO, final=True)

    def _emit(self, level: int, final: bool) -> None:
        self.logger.log(level, "%s", self.text(), extra={
            "progress_what": self.what, "progress_done": self.done, "progress_total": self.total,
            "progress_elapsed_s": self.elapsed_s, "progress_final": final,
        })

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.finish()
