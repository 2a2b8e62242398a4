"""Learning measured as the experiment loop runs it: iterations until a shipped experiment's trials
reach its task's goal (the goal stated in the experiment file, as summary.json judges it)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from forethought.scripts.experiment import load_experiment
from forethought.scripts.run import run_experiment


@dataclass
class LearningRun:
    """first_success: the first iteration (1-based) with a trial that reached the goal, None if none
    within the iterations run; update_s: each update's wall time; goal_values: each trial's."""

    first_success: int | None
    update_s: list[float] = field(default_factory=list)
    goal_values: list[float] = field(default_factory=list)
    interaction_s: float | None = None


def iterations_to_success(name: str, seed: int, max_iterations: int) -> LearningRun:
    """Run shipped experiment `name` with `seed` until all of an iteration's trials reach its goal
    (at most max_iterations), in a scratch run folder, without video."""
    experiment = load_experiment(name)
    experiment.loop.seed = seed
    experiment.loop.iterations = max_iterations
    experiment.loop.until_success = True
    experiment.loop.video = False
    with tempfile.TemporaryDirectory() as out:
        result = run_experiment(experiment, Path(out), render_video=False)
    first = next((int(t.metadata["iteration"]) + 1 for t in result.trials if t.metadata.get("goal", {}).get("success")),
                 None)
    trials = [t for t in result.trials if first is not None and int(t.metadata["iteration"]) < first]
    interaction = sum(t.horizon * t.dt for t in trials) if first is not None else None
    return LearningRun(first, [d["update_s"] for d in result.diagnostics], list(result.goal_values), interaction)
