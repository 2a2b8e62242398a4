"""Plots of a run: a trial's joint trajectories and costs, the learning curve, the cost by term,
predictions against truth.

Each `*_figure` function builds a matplotlib Figure (Agg canvas, no pyplot and no global backend
change); each `plot_*` saves one as a PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from forethought.robots.trial import Trial

MAX_PANELS = 12  # beyond this, panels of one kind (joints, other states, actions) merge into one
DPI = 100


def _figure(panels: int, columns: int, panel_size=(4.0, 2.4)) -> tuple[Figure, list]:
    rows = -(-panels // columns)
    fig = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _label(name: str, units: dict[str, str]) -> str:
    return f"{name} ({units[name]})" if name in units else name


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# -- One trial ---------------------------------------------------------------------------------------
def _trial_panels(trial: Trial) -> list[tuple[str, list[int], list[int]]]:
    """(title, state indices, action indices) per panel, grouping kinds of panels while there are too many.

    A joint is a position-like state (its name does not start with "d_") with an action of the same
    name, its position target; other position-like states and the remaining actions come next.
    """
    joints = [(i, trial.action_names.index(name)) for i, name in enumerate(trial.state_names)
              if not name.startswith("d_") and name in trial.action_names]
    joint_names = {trial.state_names[i] for i, _ in joints}
    others = [i for i, name in enumerate(trial.state_names) if not name.startswith("d_") and name not in joint_names]
    actions = [j for j, name in enumerate(trial.action_names) if name not in joint_names]
    groups = [
        ("joints", [([i], [j], trial.state_names[i]) for i, j in joints]),
        ("other states", [([i], [], trial.state_names[i]) for i in others]),
        ("actions", [([], [j], f"action {trial.action_names[j]}") for j in actions]),
    ]
    sizes = [len(panels) for _, panels in groups]
    # Group the least telling kinds first: other states, then actions, then joints.
    for k in (1, 2, 0):
        if sum(sizes) + 1 <= MAX_PANELS:
            break
        sizes[k] = min(sizes[k], 1)
    result = []
    for (title, panels), size in zip(groups, sizes):
        if size == len(panels):
            result += [(name, s, a) for s, a, name in panels]
        else:
            result.append((title, [i for s, _, _ in panels for i in s], [j for _, a, _ in panels for j in a]))
    return result


def trial_figure(trial: Trial, units: dict[str, str] | None = None) -> Figure:
    """Joint positions against time, each with its position target dashed; other position-like states
    (names not starting with "d_") and other actions in their own panels; the cost per step last.

    units: optional unit per state/action name, shown on the axes.
    """
    units = units or {}
    t = np.arange(trial.horizon + 1) * trial.dt
    panels = _trial_panels(trial)
    fig, axes = _figure(len(panels) + 1, columns=min(3, len(panels) + 1))
    title = trial.metadata.get("task") or trial.metadata.get("robot") or "trial"
    fig.suptitle(f"{title}: {trial.horizon} steps of {trial.dt * 1e3:g} ms, total cost {trial.total_cost:.4g}"
                 + ("" if trial.complete else " (incomplete)"))
    for ax, (name, states, actions) in zip(axes, panels):
        colours = {}
        for i in states:
            (line,) = ax.plot(t, trial.states[:, i], label=trial.state_names[i])
            colours[trial.state_names[i]] = line.get_color()
        for j in actions:
            label = trial.action_names[j]
            target = label in colours
            ax.step(t[:-1], trial.actions[:, j], where="post", linestyle="--" if target else "-",
                    color=colours.get(label), label=f"{label} target" if target else label)
        ax.set_title(name)
        only = trial.state_names[states[0]] if states else trial.action_names[actions[0]]
        ax.set_ylabel(_label(only, units) if name in (only, f"action {only}") else name)
    ax = axes[-1]
    ax.plot(t, trial.costs, marker="." if trial.horizon <= 50 else None, color="black")
    ax.set_title("cost per step")
    ax.set_ylabel("cost")
    for ax in axes:
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
        if 1 < len(ax.get_lines()) <= 12:
            ax.legend(fontsize="x-small")
    return fig


def plot_trial(trial: Trial, path: str | Path, units: dict[str, str] | None = None) -> Path:
    """Save trial_figure(trial) as a PNG at `path`."""
    return _save(trial_figure(trial, units), path)


# -- Learning curve ---------------------------------------------------------------------------------
def learning_curve_figure(
    costs_per_iteration: Sequence[Sequence[float]] | Sequence[float],
    success_threshold: float | None = None,
    title: str = "learning curve",
    successes: Sequence[Sequence[bool]] | None = None,
) -> Figure:
    """Total trial cost per iteration: every sample as a dot, their mean as a line and min-max as a band.

    costs_per_iteration: [iteration][sample] total costs (samples may differ in number), or one
    total cost per iteration. success_threshold: a cost below which a trial succeeds, drawn dashed.
    successes: [iteration][sample] the task goal's judgement of each trial: successful trials are
    marked with a green ring, and the title gives the success rate of the last iteration.
    """
    groups = [np.atleast_1d(np.asarray(c, dtype=np.float64)) for c in costs_per_iteration]
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError("learning curve needs at least one cost in every iteration")
    iterations = np.arange(1, len(groups) + 1)
    mean = np.array([np.nanmean(g) for g in groups])
    fig, (ax,) = _figure(1, 1, panel_size=(6.0, 4.0))
    if any(g.size > 1 for g in groups):
        low, high = np.array([np.nanmin(g) for g in groups]), np.array([np.nanmax(g) for g in groups])
        ax.fill_between(iterations, low, high, alpha=0.25, label="min-max over samples")
        xs = np.concatenate([np.full(g.size, i) for i, g in zip(iterations, groups)])
        ax.scatter(xs, np.concatenate(groups), s=10, color="grey", zorder=3, label="samples")
    ax.plot(iterations, mean, marker="o", label="mean" if any(g.size > 1 for g in groups) else "total cost")
    if success_threshold is not None:
        ax.axhline(success_threshold, color="tab:red", linestyle="--", label=f"success threshold ({success_threshold:g})")
    if successes is not None:
        hit = [(i, c) for i, g, ok in zip(iterations, groups, successes) for c, s in zip(g, ok) if s]
        if hit:
            ax.scatter(*zip(*hit), s=60, facecolors="none", edgecolors="tab:green", linewidths=1.5, zorder=4,
                       label="reached the goal")
        last = successes[-1]
        title = f"{title} (goal reached by {sum(last)}/{len(last)} in the last iteration)"
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel("total cost of a trial")
    ax.set_xticks(iterations if len(iterations) <= 20 else iterations[:: -(-len(iterations) // 20)])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_learning_curve(
    costs_per_iteration: Sequence[Sequence[float]] | Sequence[float],
    path: str | Path,
    success_threshold: float | None = None,
    title: str = "learning curve",
    successes: Sequence[Sequence[bool]] | None = None,
) -> Path:
    """Save learning_curve_figure(...) as a PNG at `path`."""
    return _save(learning_curve_figure(costs_per_iteration, success_threshold, title, successes), path)


# -- A learned model's errors -------------------------------------------------------------------------
def model_errors_figure(errors: Sequence[tuple[int, Sequence[float]]], state_names: Sequence[str]) -> Figure:
    """Per state and iteration, a learned model's one-step error on that iteration's new trials over
    the spread of the state's change in the data it was fitted on: which states it has learned (well
    below 1) and which not (1 and above, as for an unlearned contact).

    errors: (iteration, per-state errors (n,)) per measured iteration."""
    from matplotlib.colors import LogNorm

    iterations = [i for i, _ in errors]
    grid = np.clip(np.stack([np.asarray(e, dtype=np.float64) for _, e in errors], axis=1), 1e-3, 1e2)
    fig, (ax,) = _figure(1, 1, panel_size=(max(5.0, 0.4 * len(iterations) + 3.0), max(3.0, 0.22 * len(state_names) + 1.0)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", norm=LogNorm(1e-2, 10.0), interpolation="nearest",
                      extent=(iterations[0] - 0.5, iterations[-1] + 0.5, len(state_names) - 0.5, -0.5))
    ax.set_yticks(range(len(state_names)), state_names, fontsize=7)
    ax.set_xlabel("iteration (model fitted on the trials before it)")
    ax.set_title("one-step error / spread of the change", fontsize=9)
    fig.colorbar(image, ax=ax)
    return fig


def plot_model_errors(errors: Sequence[tuple[int, Sequence[float]]], state_names: Sequence[str], path: str | Path) -> Path:
    """Save model_errors_figure(...) as a PNG at `path`."""
    return _save(model_errors_figure(errors, state_names), path)


# -- Cost by term -----------------------------------------------------------------------------------
def cost_terms_figure(labels: Sequence[str], costs: np.ndarray, iterations: Sequence[int]) -> Figure:
    """Each cost term's part of the total cost of a trial, averaged over each iteration's trials,
    one line per term on a log scale: which part of a task the controller gets right and which not.

    labels: (K,) term names; costs: (N, K) per trial and term; iterations: (N,) each trial's iteration.
    """
    costs = np.asarray(costs, dtype=np.float64)
    iterations = np.asarray(iterations)
    if costs.ndim != 2 or costs.shape[1] != len(labels) or len(costs) == 0 or iterations.shape != (len(costs),):
        raise ValueError(
            f"cost terms need costs (N, {len(labels)}) and iterations (N,), got {costs.shape}, {iterations.shape}"
        )
    steps = np.unique(iterations)
    means = np.array([costs[iterations == i].mean(axis=0) for i in steps])
    fig, (ax,) = _figure(1, 1, panel_size=(9.5, 4.0))
    positive = means[means > 0]
    floor = max(positive.min(), 1e-4 * positive.max()) if positive.size else 1.0
    for k, label in enumerate(labels):
        # Terms below 1e-4 of the largest (a joint limit never reached) sit on the floor.
        ax.plot(steps + 1, np.maximum(means[:, k], floor), marker="o", markersize=3, label=label)
    ax.set_yscale("log")
    ax.set_title("cost by term")
    ax.set_xlabel("iteration")
    ax.set_ylabel("part of a trial's total cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_cost_terms(labels: Sequence[str], costs: np.ndarray, iterations: Sequence[int], path: str | Path) -> Path:
    """Save cost_terms_figure(...) as a PNG at `path`."""
    return _save(cost_terms_figure(labels, costs, iterations), path)


# -- Predictions ------------------------------------------------------------------------------------
def predictions_figure(
    actual: np.ndarray,
    predicted_mean: np.ndarray,
    predicted_std: np.ndarray | None,
    names: Sequence[str],
    dt: float | None = None,
    title: str = "open-loop predictions against the robot",
    units: dict[str, str] | None = None,
) -> Figure:
    """One panel per state dimension: the actual trajectory, the predicted mean and a +-2 std band.

    actual, predicted_mean, predicted_std: (T+1, n) (std None for a deterministic model);
    names: (n,); dt: control period in s (x axis in seconds), else steps; units: per name.
    """
    units = units or {}
    actual = np.asarray(actual, dtype=np.float64)
    mean = np.asarray(predicted_mean, dtype=np.float64)
    if actual.ndim != 2 or mean.shape != actual.shape:
        raise ValueError(f"actual and predicted mean must both be (T+1, n), got {actual.shape} and {mean.shape}")
    std = None if predicted_std is None else np.asarray(predicted_std, dtype=np.float64)
    if std is not None and std.shape != actual.shape:
        raise ValueError(f"predicted std must be {actual.shape} like the actual states, got {std.shape}")
    if len(names) != actual.shape[1]:
        raise ValueError(f"{len(names)} names for {actual.shape[1]} state dimensions")
    n = actual.shape[1]
    t = np.arange(len(actual)) * (dt if dt else 1)
    fig, axes = _figure(n, columns=min(4, n), panel_size=(3.6, 2.4))
    fig.suptitle(title)
    for i, ax in enumerate(axes):
        ax.plot(t, actual[:, i], color="black", zorder=3, label="actual")
        (line,) = ax.plot(t, mean[:, i], color="tab:blue", linestyle="--", label="predicted mean")
        if std is not None:
            ax.fill_between(t, mean[:, i] - 2 * std[:, i], mean[:, i] + 2 * std[:, i], color=line.get_color(),
                            alpha=0.25, label="+-2 std")
        ax.set_title(names[i])
        if names[i] in units:
            ax.set_ylabel(_label(names[i], units))
        ax.set_xlabel("time (s)" if dt else "step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    return fig


def plot_predictions(
    actual: np.ndarray,
    predicted_mean: np.ndarray,
    predicted_std: np.ndarray | None,
    names: Sequence[str],
    path: str | Path,
    dt: float | None = None,
    title: str = "open-loop predictions against the robot",
    units: dict[str, str] | None = None,
) -> Path:
    """Save predictions_figure(...) as a PNG at `path`."""
    return _save(predictions_figure(actual, predicted_mean, predicted_std, names, dt, title, units), path)
