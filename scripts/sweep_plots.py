"""A sweep's plots: the learning curves of its settings with a band over seeds, and the success rate
per setting. Figures as scripts/plots.py makes them (Agg canvas, no pyplot)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from forethought.scripts.plots import _figure, _save


def learning_curves_figure(curves: dict[str, Sequence[Sequence[Sequence[float]]]]):
    """Per setting, the median over its seeds of each iteration's mean trial cost, with the band
    between the 25th and 75th percentiles. curves: {setting: [run][iteration][trial] cost}; a run
    that stopped early (at its goal) counts for the iterations it ran."""
    fig, (ax,) = _figure(1, 1, panel_size=(6.5, 3.6))
    for name, runs in curves.items():
        if not runs:
            continue
        length = max(len(run) for run in runs)
        grid = np.full((len(runs), length), np.nan)
        for i, run in enumerate(runs):
            grid[i, : len(run)] = [np.mean(costs) for costs in run]
        x = np.arange(1, length + 1)
        counted = ~np.isnan(grid).all(axis=0)
        low, median, high = (np.nanpercentile(grid[:, counted], q, axis=0) for q in (25, 50, 75))
        (line,) = ax.plot(x[counted], median, marker="o", markersize=3, label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(x[counted], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if counted.sum() == 1:  # one iteration: no band to draw, the quartiles as a bar
            ax.errorbar(x[counted], median, yerr=[median - low, high - median], color=line.get_color(), capsize=4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean trial cost")
    ax.set_title("learning curves: median over seeds, band from 25th to 75th percentile", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return fig


def plot_learning_curves(curves: dict[str, Sequence[Sequence[Sequence[float]]]], path: str | Path) -> Path:
    """Save learning_curves_figure(curves) as a PNG at `path`."""
    return _save(learning_curves_figure(curves), path)


def success_rates_figure(settings: Sequence[dict]):
    """A bar per setting: the fraction of its finished runs that reached the goal, labelled k/n."""
    shown = [s for s in settings if s["success_rate"] is not None]
    fig, (ax,) = _figure(1, 1, panel_size=(max(4.0, 1.2 * len(shown) + 1.5), 3.4))
    x = np.arange(len(shown))
    ax.bar(x, [s["success_rate"] for s in shown], color="tab:green", alpha=0.7)
    for i, s in enumerate(shown):
        ax.text(i, s["success_rate"] + 0.02, f"{s['successes']}/{s['finished']}", ha="center", fontsize=8)
    ax.set_xticks(x, [s["name"] for s in shown], rotation=20, ha="right", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("runs that reached the goal")
    ax.set_title("success rate per setting", fontsize=9)
    return fig


def plot_success_rates(settings: Sequence[dict], path: str | Path) -> Path:
    """Save success_rates_figure(settings) as a PNG at `path`."""
    return _save(success_rates_figure(settings), path)
