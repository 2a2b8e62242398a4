"""A sweep's summary: per setting, how its runs did over the seeds, as sweep.json, sweep.md and
sweep.csv (the plots: scripts/sweep_plots.py).

Per setting, from each finished run's record (scripts/sweep_run.py):
- success_rate: the fraction of finished runs that reached the task's goal (a trial judged a
  success by it, as summary.json's first_success_iteration says); successes, finished: the counts;
- final_success_rate: the mean over runs of the last iteration's fraction of trials that reached it;
- iterations_to_success, trials_to_success: over the runs that reached the goal, the first
  iteration with a success (1-based) and the trials run up to and including it, each as a
  distribution: n, median, q25, q75 and a 95% bootstrap interval of the median (percentile, 2000
  resamples, seeded: the same records give the same interval);
- final_cost: the distribution of each run's mean cost over its last iteration's trials;
- failed: each failed run's seed and error.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """{"n", "median", "q25", "q75", "ci95": [low, high] of the median} (None where undefined: no
    values; one value has no interval)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return {"n": 0, "median": None, "q25": None, "q75": None, "ci95": None}
    q25, median, q75 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    ci = None
    if x.size > 1:
        if np.ptp(x) == 0:
            ci = [float(x[0]), float(x[0])]
        else:
            from scipy.stats import bootstrap

            res = bootstrap((x,), np.median, confidence_level=0.95, n_resamples=BOOTSTRAP_RESAMPLES,
                            method="percentile", rng=np.random.default_rng(0))
            ci = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    return {"n": int(x.size), "median": median, "q25": q25, "q75": q75, "ci95": ci}


def setting_summary(name: str, values: dict, records: Sequence[dict]) -> dict:
    """The summary of one setting (module docstring) from its runs' records."""
    done = [r for r in records if r["status"] == "done"]
    goal = any(r.get("success_rate") for r in done)
    reached = [r for r in done if r.get("first_success_iteration") is not None]
    finals = [r["final_success_rate"] for r in done if r.get("final_success_rate") is not None]
    return {
        "name": name,
        "values": values,
        "runs": len(records),
        "finished": len(done),
        "successes": len(reached) if goal else None,
        "success_rate": len(reached) / len(done) if goal and done else None,
        "final_success_rate": float(np.mean(finals)) if finals else None,
        "iterations_to_success": distribution([r["first_success_iteration"] for r in reached]),
        "trials_to_success": distribution([r["trials_to_success"] for r in reached]),
        "final_cost": distribution([r["final_cost"] for r in done]),
        "failed": [{"seed": r["seed"], "error": r["error"]} for r in records if r["status"] != "done"],
    }


def summarize(experiment: str, goal: Any, settings: Sequence[tuple[str, dict]], records: Sequence[dict],
              seeds: Sequence[int]) -> dict:
    """sweep.json's content: the experiment, goal and seeds; each setting's summary, in grid order;
    each run's record without its learning curve (`runs`)."""
    runs = [{k: v for k, v in r.items() if k not in ("learning_curve", "update_s")} for r in records]
    return {
        "experiment": experiment,
        "goal": goal,
        "seeds": list(seeds),
        "settings": [setting_summary(name, values, [r for r in records if r["setting"] == name])
                     for name, values in settings],
        "runs": runs,
    }


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.{digits}g}"


def _spread(d: dict) -> str:
    """'4 [3, 5]': the median and its quartiles, '-' without values."""
    return "-" if d["median"] is None else f"{_num(d['median'])} [{_num(d['q25'])}, {_num(d['q75'])}]"


def _interval(d: dict) -> str:
    return "-" if d["ci95"] is None else f"{_num(d['ci95'][0])} to {_num(d['ci95'][1])}"


COLUMNS = ["setting", "runs", "failed", "success rate", "final success", "iterations to success",
           "95% CI (median)", "trials to success", "final cost"]


def table_rows(summary: dict) -> list[list[str]]:
    """One row per setting under COLUMNS: distributions as 'median [q25, q75]'."""
    rows = []
    for s in summary["settings"]:
        rate = "-" if s["success_rate"] is None else f"{s['success_rate']:.2f} ({s['successes']}/{s['finished']})"
        rows.append([s["name"], str(s["runs"]), str(len(s["failed"])), rate, _num(s["final_success_rate"], 2),
                     _spread(s["iterations_to_success"]), _interval(s["iterations_to_success"]),
                     _spread(s["trials_to_success"]), _spread(s["final_cost"])])
    return rows


def markdown_table(summary: dict) -> str:
    """sweep.md: a heading naming the experiment and goal, the table, and each failed run's error."""
    lines = [f"# Sweep of {summary['experiment']}", ""]
    if summary["goal"]:
        lines += [f"Goal: {summary['goal']}. Seeds: {', '.join(map(str, summary['seeds']))}.", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(summary)]
    failures = [(s["name"], f) for s in summary["settings"] for f in s["failed"]]
    if failures:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {name}, seed {f['seed']}: {f['error']}" for name, f in failures]
    return "\n".join(lines) + "\n"


def csv_table(summary: dict) -> str:
    """sweep.csv: one row per setting with the numbers in their own columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    fields = ["iterations_to_success", "trials_to_success", "final_cost"]
    writer.writerow(["setting", "runs", "finished", "failed", "successes", "success_rate", "final_success_rate"]
                    + [f"{f}_{s}" for f in fields for s in ("n", "median", "q25", "q75", "ci95_low", "ci95_high")])
    for s in summary["settings"]:
        row = [s["name"], s["runs"], s["finished"], len(s["failed"]), s["successes"], s["success_rate"],
               s["final_success_rate"]]
        for f in fields:
            d = s[f]
            ci = d["ci95"] or [None, None]
            row += [d["n"], d["median"], d["q25"], d["q75"], ci[0], ci[1]]
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def write_summary(folder: Path, summary: dict, records: Sequence[dict]) -> list[Path]:
    """sweep.json, sweep.md, sweep.csv and the plots into `folder`; returns their paths."""
    from forethought.scripts.sweep_plots import plot_learning_curves, plot_success_rates

    paths = [folder / "sweep.json", folder / "sweep.md", folder / "sweep.csv"]
    paths[0].write_text(json.dumps(summary, indent=2) + "\n")
    paths[1].write_text(markdown_table(summary))
    paths[2].write_text(csv_table(summary))
    curves = {s["name"]: [r["learning_curve"] for r in records if r["setting"] == s["name"] and r["status"] == "done"]
              for s in summary["settings"]}
    paths.append(plot_learning_curves(curves, folder / "learning_curves.png"))
    if any(s["success_rate"] is not None for s in summary["settings"]):
        paths.append(plot_success_rates(summary["settings"], folder / "success_rate.png"))
    return paths
