"""One status line on a terminal stream (stderr by default), rewritten in place at most a few
times a second, for work that runs for minutes: trials, controller updates, model fits."""

from __future__ import annotations

import sys
import time

_WIDTH = 60  # a finished line pads to this, so that it covers the status before it


class StatusLine:
    """show(text) rewrites the line; finish(text) ends it; clear() blanks it."""

    def __init__(self, stream=None, interval_s: float = 0.25):
        self._stream, self.interval_s = stream, float(interval_s)
        self._last = -float("inf")

    @property
    def stream(self):
        # Resolved at use: a stream bound at import would outlive a replaced sys.stderr.
        return self._stream or sys.stderr

    def show(self, text: str, force: bool = False) -> None:
        """Rewrite the line with `text`, unless it was rewritten less than interval_s ago (and not `force`)."""
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            self.stream.write("\r" + text)
            self.stream.flush()

    def finish(self, text: str) -> None:
        """Replace the line with `text` and move to the next."""
        self.stream.write("\r" + text.ljust(_WIDTH) + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Blank the line and leave the cursor at its start."""
        self.stream.write("\r" + " " * _WIDTH + "\r")
        self.stream.flush()
