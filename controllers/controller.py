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
        """trials[c][i]: sample i of condition c from the iteration just run; returns diagnostics.

        Not called after the last iteration, whose policies are never asked for again; a controller
        with diagnostics of its policies worth reporting then offers `report(trials) -> dict`
        (iLQR-MPC's replans and solve times), which must not learn."""


@dataclass(frozen=True)
class Task:
    """What an experiment asks for: it owns its conditions and its goal.

    horizon: steps per trial; cost: the experiment's cost mapping (see controllers.costs.build_cost),
    or "reward" for a dm_control task's own reward; conditions: one mapping per initial condition
    (e.g. {"target": [x, y, z]}), at least one; goal: how each trial is judged (controllers.goals),
    or None; scene: the MJCF scene name or path when the robot is a MuJoCo scene, else None;
    seed: the experiment's seed, for everything random in the controller.
    """

    horizon: int
    cost: dict | str = field(default_factory=dict)
    conditions: tuple[dict, ...] = ({},)
    scene: str | None = None
    seed: int = 0
    goal: object | None = None  # controllers.goals.Goal

    def apply(self, index: int, robot, models: Sequence = ()) -> None:
        """Set condition `index` on the robot and on every planning model alike (what the condition
        does not set comes from the scene's defaults, not from the previous condition)."""
        for target in (robot, *models):
            apply = getattr(target, "apply_condition", None)
            if apply is not None:
                apply(index, self.conditions[index])

    def judge(self, trial: Trial, index: int):
        """The goal's Judgement of a trial run in condition `index`, or None without a goal."""
        return None if self.goal is None else self.goal.judge(trial, self.conditions[index])
