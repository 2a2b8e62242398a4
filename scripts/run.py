"""The experiment loop: run a controller's policies on a robot, log every trial, update, repeat.

A run folder holds config.yaml (the resolved experiment), trials/trial_NNNN.h5, summary.json
(the learning curve and the controller's diagnostics), plots and a video of the last trial.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import yaml

from forethought.robots.trial import Policy, Trial, rollout
from forethought.robots.trial_log import TrialWriter, json_default
from forethought.scripts.experiment import Experiment, make_controller, make_robot, make_task
from forethought.scripts.status_line import StatusLine, show_progress


@dataclass
class RunResult:
    folder: Path
    trials: list[Trial]
    learning_curve: list[list[float]] = field(default_factory=list)  # [iteration][sample] total cost
    diagnostics: list[dict] = field(default_factory=list)


def new_run_folder(root: Path, name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = root / f"{name}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = root / f"{name}-{stamp}-{suffix}"
    (folder / "trials").mkdir(parents=True)
    return folder


def apply_condition(robot, condition: dict) -> None:
    """Set what a condition fixes on a simulated robot: the reach target, the hole, the initial state."""
    if "target" in condition and hasattr(robot, "set_mocap_pos"):
        try:
            robot.set_mocap_pos("target", condition["target"])
        except ValueError:
            pass  # scenes without a target marker take the target through the cost alone
    if "hole" in condition and hasattr(robot, "place_site"):
        robot.place_site("hole_bottom", condition["hole"])
    if ("qpos" in condition or "qvel" in condition) and hasattr(robot, "set_initial_state"):
        robot.set_initial_state(condition.get("qpos"), condition.get("qvel"))


def make_cost(experiment: Experiment, robot, condition: dict):
    """The per-step cost logged with each trial: the experiment's cost, or minus a dm_control reward."""
    if experiment.task.cost:
        from forethought.controllers.costs import build_cost

        return build_cost(experiment.task.cost, robot.spec, experiment.robot.scene, condition)
    if hasattr(robot, "last_cost"):
        return lambda x, u: robot.last_cost if u is not None else float("nan")
    return None


class Progress:
    """The experiment loop's progress: trial and step on a terminal's status line; each trial's
    result and each update as a line with its time (the only lines in a log: no carriage returns).
    The models' and controllers' own progress reports (fits, policy optimisation) go to the same
    line while an update runs."""

    def __init__(self, total_trials: int, horizon: int, stream=None):
        self.total, self.horizon = total_trials, horizon
        self.line = StatusLine(stream, show_every_s=10.0)
        show_progress(self.line)
        self.done = 0
        self._started = time.perf_counter()

    def step(self, t: int) -> None:
        self.line.show(f"  trial {self.done + 1}/{self.total}  step {t + 1}/{self.horizon}   ", force=t == self.horizon - 1)

    def trial_done(self, message: str) -> None:
        self.done += 1
        self.line.finish(f"{message}  ({time.perf_counter() - self._started:.1f} s)")
        self._started = time.perf_counter()

    def updating(self, iteration: int, iterations: int) -> None:
        """Say that the controller is updating (a model fit can take minutes) until `updated`."""
        self._update = f"update after iteration {iteration + 1}/{iterations}"
        self.line.show(f"  {self._update}...", force=True)

    def updated(self, seconds: float) -> None:
        """End the update's line with the time it took."""
        self.line.finish(f"{self._update}: done in {seconds:.1f} s")
        self._started = time.perf_counter()


@dataclass
class TrialSlot:
    """One trial's place in the loop, and what its log records about it."""

    index: int  # trials before it in this run
    iteration: int
    condition: int
    sample: int
    seed: int
    metadata: dict


def run_loop(
    experiment: Experiment,
    task,
    controller,
    prepare: Callable[[dict], None],
    run_trial: Callable[[TrialSlot, Policy], Trial],
    result: RunResult,
    progress: Progress | None = None,
) -> None:
    """The experiment loop: per iteration, `loop.samples` trials of each condition's policy, then one
    controller update. prepare(condition) sets the robot up for a condition before its policy is
    asked for; run_trial(slot, policy) runs and logs one trial. `result` gathers the trials, the
    learning curve and the update diagnostics as they come, so that they survive a stop. `progress`
    shows each update as it starts."""
    loop = experiment.loop
    index = 0
    for iteration in range(loop.iterations):
        by_condition: list[list[Trial]] = []
        for c, condition in enumerate(task.conditions):
            prepare(condition)
            policy = controller.policy(c)
            samples = []
            for s in range(loop.samples):
                meta = {
                    "task": experiment.name,
                    "controller": experiment.controller.get("type", "random"),
                    "condition": c,
                    "iteration": iteration,
                    "sample": s,
                }
                slot = TrialSlot(index, iteration, c, s, loop.seed * 100_003 + index, meta)
                trial = run_trial(slot, policy)
                samples.append(trial)
                result.trials.append(trial)
                index += 1
            by_condition.append(samples)
        result.learning_curve.append([t.total_cost for group in by_condition for t in group])
        if progress is not None:
            progress.updating(iteration, loop.iterations)
        started = time.perf_counter()
        diagnostics = dict(controller.update(by_condition) or {})
        diagnostics["update_s"] = time.perf_counter() - started
        if progress is not None:
            progress.updated(diagnostics["update_s"])
        result.diagnostics.append(diagnostics)


def run_experiment(experiment: Experiment, out_root: Path, render_video: bool | None = None) -> RunResult:
    """Run `experiment`, writing its run folder under out_root; returns the trials and learning curve."""
    task = make_task(experiment)
    loop = experiment.loop
    with make_robot(experiment.robot) as robot:
        # Bad configuration fails here, before a run folder exists.
        controller = make_controller(experiment, robot, task)
        costs = [make_cost(experiment, robot, condition) for condition in task.conditions]
        folder = new_run_folder(Path(out_root), experiment.name)
        (folder / "config.yaml").write_text(yaml.safe_dump(experiment.as_dict(), sort_keys=False))
        result = RunResult(folder, [])
        progress = Progress(loop.iterations * loop.samples * len(task.conditions), task.horizon)

        def run_trial(slot: TrialSlot, policy: Policy) -> Trial:
            path = folder / "trials" / f"trial_{slot.index:04d}.h5"
            with TrialWriter(path, robot.spec, slot.metadata) as writer:
                trial = rollout(
                    robot, policy, task.horizon, slot.seed, costs[slot.condition], slot.metadata, writer, progress.step
                )
                writer.finish(trial)
            progress.trial_done(
                f"iteration {slot.iteration + 1}/{loop.iterations}  condition {slot.condition}  "
                f"sample {slot.sample}: cost {trial.total_cost:.4g}"
            )
            return trial

        try:
            run_loop(
                experiment, task, controller, lambda condition: apply_condition(robot, condition), run_trial, result,
                progress,
            )
        except BaseException:
            # A stop (Ctrl-C, a robot's error) keeps the summary and plots of the trials done so far;
            # not the controller's model, whose last update may have been cut short, nor a video.
            if result.trials:
                try:
                    write_outputs(experiment, robot, result, video=False, complete=False, costs=costs)
                    print(f"\nstopped after {len(result.trials)} trials: summary and plots in {folder}", file=sys.stderr)
                except Exception as err:  # the stop's own error is the one to report
                    print(f"\nstopped; the summary could not be written: {err}", file=sys.stderr)
            raise
        if hasattr(controller, "save"):
            controller.save(folder / "models")
        write_outputs(experiment, robot, result, loop.video if render_video is None else render_video, costs=costs)
    return result


def cost_by_term(costs: Sequence, trials: Sequence[Trial]) -> dict | None:
    """{"terms": labels (K,), "per_trial": (N, K)}: each term's part of each trial's logged cost,
    given the cost of each condition (make_cost's); None when they are no Cost (a dm_control reward)."""
    if not costs or not all(hasattr(c, "term_costs") for c in costs):
        return None
    per_trial = [costs[int(t.metadata.get("condition", 0))].term_costs(t.states, t.actions).tolist() for t in trials]
    labels = [w.label or f"{i} {type(w.term).__name__}" for i, w in enumerate(costs[0].terms)]
    return {"terms": labels, "per_trial": per_trial}


def write_outputs(
    experiment: Experiment, robot, result: RunResult, video: bool, complete: bool = True, costs: Sequence = ()
) -> None:
    """summary.json (`complete`: false for a run stopped before its last iteration), plots, and a
    video of the last trial for MuJoCo scenes. costs: each condition's cost, for the cost by term
    (summary.json `cost_terms`, cost_terms.png)."""
    from forethought.scripts.plots import plot_cost_terms, plot_learning_curve, plot_trial

    folder = result.folder
    summary = {
        "experiment": experiment.name,
        "complete": complete,
        "trials": len(result.trials),
        "learning_curve": result.learning_curve,
        "final_cost": result.trials[-1].total_cost,
        "diagnostics": result.diagnostics,
    }
    terms = cost_by_term(costs, result.trials)
    if terms is not None:
        summary["cost_terms"] = terms
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default))
    plot_trial(result.trials[-1], folder / "trajectories.png")
    if len(result.learning_curve) > 1:
        plot_learning_curve(result.learning_curve, folder / "learning_curve.png")
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
