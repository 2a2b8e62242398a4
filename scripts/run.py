"""The experiment loop: run a controller's policies on a robot, log and judge every trial, refit the
model, update the controller, repeat.

Per iteration: each condition is set on the robot and on the planning model alike (the task's
`apply`), `loop.samples` trials of the controller's policy for it run and are logged and judged by
the task's goal; then a learned model is refitted (on every trial so far, or on the last
iteration's for a model that keeps its history in a prior: models/capabilities.py), after its
one-step errors on the new trials are measured; then the controller updates.

A run folder holds config.yaml (the resolved experiment), trials/trial_NNNN.h5, summary.json,
plots and a video of the last trial (scripts/run_outputs.py), models/ (the fitted model and
what the controller saves), and checkpoint.pt after every iteration but the last, from which
`forethought run --resume` continues a stopped run (scripts/checkpoint.py).
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml

from forethought.models.prediction import one_step_errors
from forethought.models.registry import MODELS
from forethought.robots.trial import Policy, Trial, rollout
from forethought.robots.trial_log import TrialWriter, save_trial
from forethought.scripts.experiment import Experiment, build_parts, make_robot
from forethought.scripts.report import write_report
from forethought.scripts.run_outputs import write_outputs
from forethought.scripts.status_line import StatusLine, show_progress

LOG = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run has done so far (kept as it goes, so that a stop keeps it too).

    learning_curve: [iteration][sample] total cost; successes, goal_values: each trial's judgement
    by the task's goal (empty without one); diagnostics: each update's; model_errors: (iteration,
    per-state one-step error over the spread of the change (n,)) of a learned model on each new
    iteration's trials before its refit."""

    folder: Path
    trials: list[Trial]
    learning_curve: list[list[float]] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    goal_values: list[float] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    model_errors: list[tuple[int, list[float]]] = field(default_factory=list)


def new_run_folder(root: Path, name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = root / f"{name}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = root / f"{name}-{stamp}-{suffix}"
    (folder / "trials").mkdir(parents=True)
    return folder


def make_cost(experiment: Experiment, robot, condition: dict):
    """The per-step cost logged with each trial: minus a dm_control task's reward (the task's own
    measure, whatever cost the controller plans with, and what a `reward` goal reads), else the
    experiment's cost."""
    if hasattr(robot, "last_cost"):
        return lambda x, u: robot.last_cost if u is not None else float("nan")
    if isinstance(experiment.task.cost, dict) and experiment.task.cost:
        from forethought.controllers.costs import build_cost

        return build_cost(experiment.task.cost, robot.spec, experiment.robot.scene, condition)
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


def judge_trial(task, trial: Trial, condition: int, result: RunResult):
    """The task goal's Judgement of a trial (None without a goal), kept in the trial's metadata (its
    log) and in `result`."""
    judgement = task.judge(trial, condition)
    if judgement is not None:
        trial.metadata["goal"] = {"success": judgement.success, "value": judgement.value}
        result.successes.append(judgement.success)
        result.goal_values.append(judgement.value)
    return judgement


def judgement_text(judgement) -> str:
    """'  success (3.2 mm)' or '  missed (12 mm)' for a status line; '' without a goal."""
    return "" if judgement is None else f"  {'success' if judgement.success else 'missed'} ({judgement.text})"


def trial_line(slot: TrialSlot, trial: Trial, judgement, iterations: int) -> str:
    """A trial's line: where it is in the loop, its cost and its judgement."""
    return (f"iteration {slot.iteration + 1}/{iterations}  condition {slot.condition}  "
            f"sample {slot.sample}: cost {trial.total_cost:.4g}{judgement_text(judgement)}")


def refit_model(model, task, result: RunResult, by_condition: Sequence[Sequence[Trial]], iteration: int) -> dict:
    """Measure a learned model on the new trials (when fitted), then refit it; returns diagnostics
    prefixed `model_` (its one-step errors on the new trials, and the fit's own numbers)."""
    new = [trial for group in by_condition for trial in group]
    seen = result.trials[: len(result.trials) - len(new)]
    diagnostics: dict[str, float] = {}
    if getattr(model, "fitted", True) and seen:
        spread = np.concatenate([t.states[1:] - t.states[:-1] for t in seen]).std(axis=0)
        errors, per_state = [], []
        for c, group in enumerate(by_condition):
            if group:
                task.apply(c, None, [model])
                e, s = one_step_errors(model, group, spread)
                errors.append((len(group), e))
                per_state.append(s * len(group))
        total = sum(k for k, _ in errors)
        for key in errors[0][1]:
            diagnostics[f"model_{key}"] = float(sum(k * e[key] for k, e in errors) / total)
        result.model_errors.append((iteration + 1, (np.sum(per_state, axis=0) / total).tolist()))
    fit = model.fit(result.trials if model.fit_on == "all_trials" else new)
    for key, value in (fit or {}).items():
        if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            diagnostics[f"model_{key}"] = float(value)
    return diagnostics


def run_loop(
    experiment: Experiment,
    task,
    controller,
    prepare: Callable[[int], None],
    run_trial: Callable[[TrialSlot, Policy], Trial],
    result: RunResult,
    progress: Progress | None = None,
    model=None,
    start: int = 0,
    iteration_done: Callable[[int], None] | None = None,
    run_trials: Callable[[list[tuple[TrialSlot, Policy]]], list[Trial]] | None = None,
) -> None:
    """The experiment loop (module docstring). prepare(c) sets the robot (and the planning model) up
    for condition c before its policy is asked for; run_trial(slot, policy) runs and logs one trial.
    `result` gathers the trials, judgements, learning curve and diagnostics as they come, so that they
    survive a stop. `model`: the experiment's planning model, refitted after each iteration when learned.
    start: iterations already done (a resumed run: `result` holds their trials and the controller and
    model their state); iteration_done(k): called once iteration k's update is done, unless it was
    the last (a run's checkpoint). run_trials(batch): runs and logs an iteration's trials at once
    ([(slot, its own policy)] in the loop's order; scripts/rollouts.py) instead of run_trial."""
    from forethought.scripts.rollouts import policy_for_sample

    loop = experiment.loop
    index = len(result.trials)
    for iteration in range(start, loop.iterations):
        by_condition: list[list[Trial]] = []
        batch: list[tuple[TrialSlot, Policy]] = []
        for c in range(len(task.conditions)):
            prepare(c)
            policy = controller.policy(c)
            samples = []
            for s in range(loop.samples):
                meta = {
                    "task": experiment.name,
                    "controller": experiment.controller.get("type", "random"),
                    "model": experiment.model.get("type", "none"),
                    "condition": c,
                    "iteration": iteration,
                    "sample": s,
                }
                slot = TrialSlot(index, iteration, c, s, loop.seed * 100_003 + index, meta)
                index += 1
                if run_trials is not None:
                    batch.append((slot, policy_for_sample(policy, s)))
                    continue
                trial = run_trial(slot, policy)
                samples.append(trial)
                result.trials.append(trial)
            by_condition.append(samples)
        if batch:
            for (slot, _), trial in zip(batch, run_trials(batch)):
                by_condition[slot.condition].append(trial)
                result.trials.append(trial)
        result.learning_curve.append([t.total_cost for group in by_condition for t in group])
        done = sum(len(group) for group in by_condition)
        reached = loop.until_success and task.goal is not None and all(result.successes[-done:])
        last = reached or iteration == loop.iterations - 1
        if progress is not None:
            progress.updating(iteration, loop.iterations)
        started = time.perf_counter()
        diagnostics: dict = {}
        if model is not None and getattr(model, "learned", False):
            diagnostics.update(refit_model(model, task, result, by_condition, iteration))
        # After the last trials no policy is asked for again: the model is refitted (it is saved
        # with the run), the controller only reports (if it can) instead of learning for nothing.
        if not last:
            diagnostics.update(controller.update(by_condition) or {})
        elif hasattr(controller, "report"):
            diagnostics.update(controller.report(by_condition) or {})
        diagnostics["update_s"] = time.perf_counter() - started
        if progress is not None:
            progress.updated(diagnostics["update_s"])
        result.diagnostics.append(diagnostics)
        if last:
            break
        if iteration_done is not None:
            iteration_done(iteration)


def save_models(experiment: Experiment, model, controller, folder: Path) -> None:
    """models/: the fitted learned model (MODEL.SUFFIX) and whatever the controller saves."""
    kind = experiment.model.get("type", "none")
    if model is not None and getattr(model, "learned", False) and getattr(model, "fitted", True):
        model.save(folder / f"{kind}{MODELS[kind].suffix}")
    if hasattr(controller, "save"):
        controller.save(folder)


def experiment_of_run(folder: Path) -> Experiment:
    """The experiment of the run in `folder` (its config.yaml), to resume it; ConfigError naming
    the folder when it holds no run, or a run that has finished."""
    import json

    from forethought.robots.config import ConfigError
    from forethought.scripts.experiment import experiment_from_data

    folder = Path(folder)
    config = folder / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"--resume {folder}: not a run folder (no config.yaml)")
    try:
        finished = json.loads((folder / "summary.json").read_text()).get("complete", False)
    except (OSError, ValueError):
        finished = False
    if finished:
        raise ConfigError(f"--resume {folder}: the run has finished (summary.json)")
    data = yaml.safe_load(config.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{config}: not an experiment")
    return experiment_from_data(data, data.get("source") or config)


def run_experiment(experiment: Experiment, out_root: Path, render_video: bool | None = None, robot=None,
                   folder: Path | None = None, resume: bool = False, workers: int | None = None) -> RunResult:
    """Run `experiment`, writing its run folder under out_root; returns the trials and learning curve.
    robot: the robot to run on (default: the experiment's, made here; closed at the end either way);
    folder: the run folder itself, which must not hold trials yet (default: NAME-DATE-TIME under
    out_root; a sweep names its runs' folders). resume: go on with the run in `folder` (of this
    experiment) from its checkpoint (scripts/checkpoint.py), or from its start when it has none.
    workers: run each iteration's rollouts on that many Ray actors (scripts/rollouts.py; the same
    trials as without).

    After every iteration but the last, the run's state goes to RUN/checkpoint.pt."""
    from forethought.scripts import checkpoint

    loop = experiment.loop
    with make_robot(experiment.robot) if robot is None else robot as robot:
        # Bad configuration fails here, before a run folder exists.
        parts = build_parts(experiment, robot)
        task, model, controller = parts.task, parts.model, parts.controller
        if workers is not None:
            from forethought.scripts.rollouts import check_workers

            check_workers(workers, controller)
        costs = [make_cost(experiment, robot, condition) for condition in task.conditions]
        saved, done = None, []
        if resume:
            folder = Path(folder)
            (folder / "trials").mkdir(exist_ok=True)
            saved, done = checkpoint.resume_point(folder)
        elif folder is None:
            folder = new_run_folder(Path(out_root), experiment.name)
        else:
            folder = Path(folder)
            (folder / "trials").mkdir(parents=True)
        if not resume:
            (folder / "config.yaml").write_text(yaml.safe_dump(experiment.as_dict(), sort_keys=False))
        result = RunResult(folder, done)
        progress = Progress(loop.iterations * loop.samples * len(task.conditions), task.horizon)
        models = [model] if model is not None else []
        if saved is not None:
            checkpoint.apply(saved, result, model, controller)
            progress.done = len(done)
        why_not = checkpoint.resumable(controller, model)
        if why_not is not None and loop.iterations > 1:
            LOG.info("no checkpoints, so the run cannot be resumed: %s", why_not)

        def iteration_done(iteration: int) -> None:
            if why_not is None:
                checkpoint.save(folder, iteration + 1, result, model, controller)

        def run_trial(slot: TrialSlot, policy: Policy) -> Trial:
            path = folder / "trials" / f"trial_{slot.index:04d}.h5"
            with TrialWriter(path, robot.spec, slot.metadata) as writer:
                trial = rollout(
                    robot, policy, task.horizon, slot.seed, costs[slot.condition], slot.metadata, writer, progress.step
                )
                judgement = judge_trial(task, trial, slot.condition, result)
                writer.finish(trial)
            progress.trial_done(trial_line(slot, trial, judgement, loop.iterations))
            return trial

        pool = None

        def run_trials(batch: list[tuple[TrialSlot, Policy]]) -> list[Trial]:
            trials = pool.run([(slot.condition, policy, slot.seed, slot.metadata) for slot, policy in batch])
            for (slot, _), trial in zip(batch, trials):
                judgement = judge_trial(task, trial, slot.condition, result)
                save_trial(trial, folder / "trials" / f"trial_{slot.index:04d}.h5")
                progress.trial_done(trial_line(slot, trial, judgement, loop.iterations))
            return trials

        try:
            if workers is not None:
                import torch

                from forethought.scripts.rollouts import RayRollouts

                pool = RayRollouts(experiment.as_dict(), workers, torch.get_num_threads())
            run_loop(experiment, task, controller, lambda c: task.apply(c, robot, models), run_trial, result,
                     progress, model, start=0 if saved is None else int(saved["iterations"]),
                     iteration_done=iteration_done, run_trials=None if pool is None else run_trials)
        except BaseException:
            # A stop (Ctrl-C, a robot's error) keeps the summary and plots of the trials done so far;
            # not the models, whose last update may have been cut short, nor a video.
            if result.trials:
                try:
                    write_outputs(experiment, task, robot, result, video=False, complete=False, costs=costs)
                    print(f"\nstopped after {len(result.trials)} trials: summary and plots in {folder}", file=sys.stderr)
                except Exception as err:  # the stop's own error is the one to report
                    print(f"\nstopped; the summary could not be written: {err}", file=sys.stderr)
            raise
        finally:
            if pool is not None:
                pool.close()
        save_models(experiment, model, controller, folder / "models")
        write_outputs(experiment, task, robot, result, loop.video if render_video is None else render_video, costs=costs)
        write_report(folder)
    return result
