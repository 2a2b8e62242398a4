"""What a run folder holds besides its trials: summary.json, the plots and the video of the last trial.

summary.json: the experiment, whether the run completed, the learning curve ([iteration][sample]
total cost), the goal and each trial's judgement by it (`success`, `goal_values`, `success_rate`
per iteration, `first_success_iteration`), the cost by term, the updates' diagnostics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from forethought.robots.trial import Trial
from forethought.robots.trial_log import json_default


def cost_by_term(costs: Sequence, trials: Sequence[Trial]) -> dict | None:
    """{"terms": labels (K,), "per_trial": (N, K)}: each term's part of each trial's logged cost,
    given the cost of each condition (make_cost's); None when they are no Cost (a dm_control reward)."""
    if not costs or not all(hasattr(c, "term_costs") for c in costs):
        return None
    per_trial = [costs[int(t.metadata.get("condition", 0))].term_costs(t.states, t.actions).tolist() for t in trials]
    labels = [w.label or f"{i} {type(w.term).__name__}" for i, w in enumerate(costs[0].terms)]
    return {"terms": labels, "per_trial": per_trial}


def success_summary(task, result) -> dict:
    """The goal and each trial's judgement: {"goal", "success" (N,), "goal_values" (N,),
    "success_rate" per iteration, "first_success_iteration" (1-based, None if none)}; {} without a goal."""
    if task.goal is None:
        return {}
    iterations = [int(t.metadata.get("iteration", 0)) for t in result.trials]
    rates = []
    for i in range(max(iterations) + 1 if iterations else 0):
        mine = [s for s, it in zip(result.successes, iterations) if it == i]
        rates.append(sum(mine) / len(mine) if mine else None)
    first = next((i + 1 for i, rate in enumerate(rates) if rate), None)
    return {"goal": task.goal.describe(), "success": list(result.successes), "goal_values": list(result.goal_values),
            "success_rate": rates, "first_success_iteration": first}


def write_outputs(experiment, task, robot, result, video: bool, complete: bool = True, costs: Sequence = ()) -> None:
    """summary.json (`complete`: false for a run stopped before its last iteration), plots, and a
    video of the last trial for MuJoCo scenes. costs: each condition's cost, for the cost by term
    (summary.json `cost_terms`, cost_terms.png)."""
    from forethought.scripts.plots import plot_cost_terms, plot_learning_curve, plot_model_errors, plot_trial

    folder = result.folder
    summary = {
        "experiment": experiment.name,
        "complete": complete,
        "trials": len(result.trials),
        "learning_curve": result.learning_curve,
        "final_cost": result.trials[-1].total_cost,
        **success_summary(task, result),
        "diagnostics": result.diagnostics,
    }
    terms = cost_by_term(costs, result.trials)
    if terms is not None:
        summary["cost_terms"] = terms
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default))
    plot_trial(result.trials[-1], folder / "trajectories.png")
    if len(result.learning_curve) > 1:
        successes = None
        if task.goal is not None:
            per_iteration = [len(costs_) for costs_ in result.learning_curve]
            flat = iter(result.successes)
            successes = [[next(flat) for _ in range(k)] for k in per_iteration]
        plot_learning_curve(result.learning_curve, folder / "learning_curve.png", successes=successes)
    if result.model_errors:
        plot_model_errors(result.model_errors, list(robot.spec.state_names), folder / "model_error.png")
    if terms is not None and len(terms["terms"]) > 1:
        iterations = [int(t.metadata.get("iteration", i)) for i, t in enumerate(result.trials)]
        plot_cost_terms(terms["terms"], terms["per_trial"], iterations, folder / "cost_terms.png")
    if video and hasattr(robot, "model"):
        write_video_or_warn(robot, result.trials[-1], folder / "last_trial.mp4")


def write_video_or_warn(robot, trial: Trial, path: Path) -> Path | None:
    """The trial's video, or one warning line on stderr saying why there is none (no OpenGL backend
    here, a GL context that fails, no video encoder): a run's other outputs never depend on it."""
    from forethought.sim.gl_backend import HOW_TO_ENABLE, rendering_unavailable

    why = rendering_unavailable()
    if why is None:
        import mujoco

        from forethought.sim.render import render_trial_video

        try:
            return render_trial_video(robot.model, trial, path, mocap_pos=robot.data.mocap_pos.copy())
        except (mujoco.FatalError, ImportError, RuntimeError, OSError) as err:  # GL platform or encoder failures
            why = f"rendering failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): {HOW_TO_ENABLE}"
    print(f"warning: no video: {why}", file=sys.stderr)
    return None
