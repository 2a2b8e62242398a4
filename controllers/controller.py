"""What the experiment loop asks of a controller: a policy per condition, and an update from trials."""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Task:
    """What an experiment asks for, as builders of controllers see it.

    horizon: steps per trial; cost: the experiment's cost mapping (see controllers.costs.build_cost);
    conditions: one mapping per initial condition (e.g. {"target": [x, y, z]}), at least one;
    scene: the MJCF scene name or path when the robot is a MuJoCo scene, else None;
    seed: the experiment's seed, for everything random in the controller.
    """

    horizon: int
    cost: dict = field(default_factory=dict)
    conditions: tuple[dict, ...] = ({},)
    scene: str | None = None
    seed: int = 0
