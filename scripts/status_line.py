"""How long work reads on the command line: one status line rewritten in place on a terminal, plain
lines in a log.

On a terminal, `StatusLine.show` rewrites the line at most a few times a second and `finish` ends
it with a line that stays. Anywhere else (a file, a pipe, a CI log) no carriage return is written:
`show` prints nothing but what `show_every_s` lets through as plain lines (default: nothing), and
`finish` prints its line.

`ProgressHandler` turns the reports of `forethought.robots.progress` (fits, policy optimisation)
into the same: running reports on the status line (or a plain line every `log_interval_s` in a
log), totals as lines.
"""

from __future__ import annotations

import logging
import sys
import time

_WIDTH = 60  # a finished line pads to this, so that it covers the status before it


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class StatusLine:
    """show(text) rewrites the line; finish(text) ends it; clear() blanks it.

    stream: where it writes (default: sys.stderr at the time of writing); interval_s: the least time
    between two rewrites on a terminal; show_every_s: off a terminal, the least time between two
    running reports printed as plain lines (None: print none, only what `finish` gives).
    """

    def __init__(self, stream=None, interval_s: float = 0.25, show_every_s: float | None = None):
        self._stream, self.interval_s, self.show_every_s = stream, float(interval_s), show_every_s
        self._last = -float("inf")
        self._shown = False  # something is on the terminal line that a finish or clear must cover

    @property
    def stream(self):
        # Resolved at use: a stream bound at import would outlive a replaced sys.stderr.
        return self._stream or sys.stderr

    @property
    def terminal(self) -> bool:
        return is_terminal(self.stream)

    def show(self, text: str, force: bool = False) -> None:
        """Rewrite the line with `text`, unless it was rewritten less than interval_s ago (and not
        `force`); off a terminal, print it as a line when show_every_s has passed (force aside)."""
        now = time.monotonic()
        if self.terminal:
            if force or now - self._last >= self.interval_s:
                self._last = now
                self._shown = True
                self.stream.write("\r" + text)
                self.stream.flush()
        elif self.show_every_s is not None and now - self._last >= self.show_every_s:
            self._last = now
            self.stream.write(text.strip() + "\n")
            self.stream.flush()

    def finish(self, text: str) -> None:
        """Replace the line with `text` and move to the next (off a terminal: print `text`)."""
        if self.terminal:
            self.stream.write("\r" + text.ljust(_WIDTH) + "\n")
            self._shown = False
        else:
            self.stream.write(text.strip() + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Blank the line and leave the cursor at its start (nothing off a terminal)."""
        if self.terminal and self._shown:
            self.stream.write("\r" + " " * _WIDTH + "\r")
            self.stream.flush()
            self._shown = False


class ProgressHandler(logging.Handler):
    """Shows `forethought.robots.progress` reports on a StatusLine: running ones rewrite it, final ones stay."""

    def __init__(self, line: StatusLine):
        super().__init__(logging.DEBUG)
        self.line = line

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = "  " + record.getMessage()
            if getattr(record, "progress_final", True):
                self.line.finish(text)
            else:
                self.line.show(text + "   ")
        except Exception:  # a handler never raises into the work it reports on
            self.handleError(record)


def show_progress(line: StatusLine | None = None) -> ProgressHandler:
    """Show the progress reports of this process on `line` (default: a StatusLine on stderr that
    prints a running report every 10 s in a log): on a terminal as the status line, in a log as
    plain lines, each total as a line. A second call points the one handler at the new line."""
    from forethought.robots.progress import LOGGER

    line = line or StatusLine(show_every_s=10.0)
    for handler in LOGGER.handlers:
        if isinstance(handler, ProgressHandler):
            handler.line = line
            return handler
    handler = ProgressHandler(line)
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    return handler
