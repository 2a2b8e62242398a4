"""`forethought report RUN_FOLDER...`: one self-contained report.html of a run, to open from the file system.

The page holds the experiment (its description and resolved config), the success table (every
trial judged by the task's goal, as summary.json records it), the learning curve, the cost by term,
the last trial's joints and its video, the learned model's prediction errors where the run had one,
the updates' diagnostics, and the machine the report was written on. Figures are PNGs embedded as
data URIs: the run's own plots when the folder has them, else drawn here from summary.json and the
trial logs; the video stays beside the page (last_trial.mp4, linked relatively), so the folder can
be moved or copied whole. `forethought run` writes the report at the end of every run.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import io
import json
from pathlib import Path

import yaml

from forethought.robots.config import ConfigError

REPORT_NAME = "report.html"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
tr.success td.verdict { background: #d9f2d9; } tr.missed td.verdict { background: #f8d7d7; }
img { max-width: 100%; border: 1px solid #eee; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
.note { color: #666; font-size: 0.9em; }
"""


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _image(section_id: str, title: str, png: bytes | None, missing: str) -> str:
    """A section with one embedded figure, or a note saying why there is none."""
    body = (f'<img alt="{html.escape(title)}" src="{_png_uri(png)}">' if png is not None
            else f'<p class="note">{html.escape(missing)}</p>')
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{body}</section>'


def _table(headers: list[str], rows: list[list], table_id: str = "", row_classes: list[str] | None = None) -> str:
    def cell(value, tag: str) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))
        css = "" if isinstance(value, (int, float)) and not isinstance(value, bool) else ' class="text"'
        if tag == "td" and text in ("success", "missed"):
            css = ' class="verdict"'
        return f"<{tag}{css}>{html.escape(text)}</{tag}>"

    head = "".join(cell(h, "th") for h in headers)
    classes = row_classes or [""] * len(rows)
    body = "".join(
        (f'<tr class="{css}">' if css else "<tr>") + "".join(cell(v, "td") for v in row) + "</tr>"
        for row, css in zip(rows, classes)
    )
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _existing_png(folder: Path, name: str) -> bytes | None:
    path = folder / name
    return path.read_bytes() if path.is_file() else None


def _success_rows(summary: dict, trials: list) -> tuple[list[list], list[str]]:
    """One row per trial: index, iteration, condition, sample, total cost, the goal's value and verdict."""
    costs = [c for group in summary.get("learning_curve", []) for c in group]
    success, values = summary.get("success", []), summary.get("goal_values", [])
    rows, classes = [], []
    for i in range(summary.get("trials", len(costs))):
        meta = trials[i].metadata if i < len(trials) else {}
        verdict = None if i >= len(success) else ("success" if success[i] else "missed")
        rows.append([i, meta.get("iteration", ""), meta.get("condition", ""), meta.get("sample", ""),
                     costs[i] if i < len(costs) else None, values[i] if i < len(values) else None, verdict])
        classes.append(verdict or "")
    return rows, classes


def _learning_curve_png(folder: Path, summary: dict) -> bytes | None:
    curve = summary.get("learning_curve") or []
    if not curve:
        return None
    existing = _existing_png(folder, "learning_curve.png")
    if existing is not None:
        return existing
    from forethought.scripts.plots import learning_curve_figure

    successes = None
    flat = summary.get("success")
    if flat is not None and len(flat) == sum(len(group) for group in curve):
        it = iter(flat)
        successes = [[next(it) for _ in group] for group in curve]
    return _figure_png(learning_curve_figure(curve, successes=successes))


def _cost_terms(folder: Path, summary: dict, trials: list) -> tuple[bytes | None, str]:
    """The cost-by-term figure and a table of each trial's cost per term."""
    terms = summary.get("cost_terms")
    if not terms:
        return None, '<p class="note">The task has no cost of terms (a dm_control reward, or no cost).</p>'
    labels, per_trial = terms["terms"], terms["per_trial"]
    png = _existing_png(folder, "cost_terms.png")
    if png is None:
        from forethought.scripts.plots import cost_terms_figure

        iterations = [int(trials[i].metadata.get("iteration", 0)) if i < len(trials) else 0 for i in range(len(per_trial))]
        png = _figure_png(cost_terms_figure(labels, per_trial, iterations))
    table = _table(["trial", *labels], [[i, *row] for i, row in enumerate(per_trial)], "cost-terms-table")
    return png, table


def _diagnostics_table(summary: dict) -> str:
    diagnostics = summary.get("diagnostics") or []
    keys = list(dict.fromkeys(k for d in diagnostics for k, v in d.items() if isinstance(v, (int, float))))
    if not keys:
        return '<p class="note">No diagnostics.</p>'
    rows = [[i + 1, *[d.get(k) for k in keys]] for i, d in enumerate(diagnostics)]
    return _table(["update after iteration", *keys], rows, "diagnostics-table")


def _machine() -> dict:
    from forethought.scripts.bench import machine_info

    return machine_info()


def render_report(folder: Path) -> str:
    """The report page of run folder `folder` as one HTML string (the module docstring says what it holds)."""
    from forethought.robots.trial_log import load_trials

    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path}: not a run folder (no summary.json)")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{summary_path}: not valid JSON ({err})") from None
    config_text = (folder / "config.yaml").read_text() if (folder / "config.yaml").is_file() else ""
    config = yaml.safe_load(config_text) if config_text else {}
    trials, problems = load_trials([folder / "trials"]) if (folder / "trials").is_dir() else ([], [])
    name = summary.get("experiment", folder.name)

    parts = [f"<h1>{html.escape(name)}</h1>",
             f'<p class="note">{html.escape(str(folder.resolve()))}; report written '
             f'{_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}</p>']
    if isinstance(config, dict) and config.get("description"):
        parts.append(f"<p>{html.escape(str(config['description']))}</p>")
    if not summary.get("complete", True):
        parts.append('<p><strong>The run stopped early</strong>: this covers the trials it finished.</p>')

    rows, classes = _success_rows(summary, trials)
    goal = summary.get("goal")
    first = summary.get("first_success_iteration")
    headline = (f"Goal: {goal}. Reached by {sum(summary.get('success', []))} of {len(rows)} trials"
                + (f", first in iteration {first}" if first else "")
                + ". The goal value is what the goal measures (m for a site, the states' units for states, "
                  "the reward for a reward goal).") if goal else "The task has no goal."
    parts.append(f'<section id="success"><h2>Success per trial</h2><p>{html.escape(headline)}</p>'
                 + _table(["trial", "iteration", "condition", "sample", "total cost", "goal value", "verdict"],
                          rows, "success-table", classes)
                 + "</section>")
    parts.append(_image("learning-curve", "Learning curve", _learning_curve_png(folder, summary),
                        "No trials finished."))
    png, table = _cost_terms(folder, summary, trials)
    parts.append(_image("cost-terms", "Cost by term", png, "No cost terms.").replace("</section>", table + "</section>"))

    last = _existing_png(folder, "trajectories.png")
    if last is None and trials:
        from forethought.scripts.plots import trial_figure

        last = _figure_png(trial_figure(trials[-1]))
    parts.append(_image("trajectories", "The last trial: joints, actions and cost", last, "No trial logged."))
    if (folder / "last_trial.mp4").is_file():
        parts.append('<section id="video"><h2>Video of the last trial</h2>'
                     '<video controls width="640" src="last_trial.mp4"></video>'
                     '<p class="note">last_trial.mp4, beside this page.</p></section>')

    model_png = _existing_png(folder, "model_error.png")
    if model_png is not None:
        parts.append(_image("model-errors", "The learned model's one-step errors on new trials", model_png, ""))
    parts.append(f'<section id="diagnostics"><h2>Diagnostics of each update</h2>{_diagnostics_table(summary)}</section>')
    if problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
        parts.append(f'<section id="skipped"><h2>Trial files skipped</h2><ul>{items}</ul></section>')
    parts.append(f'<section id="config"><h2>Experiment (resolved config.yaml)</h2><pre>{html.escape(config_text)}</pre></section>')
    machine = _machine()
    parts.append('<section id="machine"><h2>Machine</h2>'
                 + _table(["key", "value"], [[k, str(v)] for k, v in machine.items()], "machine-table") + "</section>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(name)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_report(folder: Path) -> Path:
    """Write `folder`/report.html (render_report) and return its path."""
    path = Path(folder) / REPORT_NAME
    path.write_text(render_report(folder), encoding="utf-8")
    return path


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_folders", nargs="+", metavar="RUN_FOLDER", help="run folders (runs/NAME-YYYYmmdd-HHMMSS)")


def report_main(args: argparse.Namespace) -> int:
    for folder in args.run_folders:
        print(write_report(Path(folder)))
    return 0
