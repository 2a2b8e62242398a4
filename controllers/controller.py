"""What the experiment loop asks of a controller: a policy per condition, and an update from trials."""

from __future__ import annotations

from typing import Protocol, Sequence

from forethought.robots.trial import Policy, Trial


class Controller(Protocol):
    """Turns experience into policies.

    The loop runs, for each iteration, `samples` trials of `policy(c)` for every condition c, then
    calls `update` with that iteration's trials (grouped by condition). A controller on a known
    model (iLQR-MPC) ignores the trials; a learning one (PILCO, PETS, GPS) fits and improves.
    """

    def policy(self, condition: int) -> Policy: ...

    def update(self, trials: Sequence[Sequence[Trial]]) -> dict[str, float]:
        """trials[c][i]: sample i of condition c from the iteration just run; returns diagnostics."""
