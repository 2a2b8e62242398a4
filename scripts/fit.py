"""`forethought fit --model tvlg|gp|ensemble TRIALS_OR_RUN... [--model-config YAML] [--out MODEL]`
(`--model mujoco` identifies the scene itself: scripts/fit_scene.py).

Loads logged trials (trial files, or run folders holding them), holds some out, fits the chosen
model on the rest, and reports how well it predicts the held-out trials: one step ahead, and open
loop over growing horizons from the logged actions. Writes the model, a JSON report and a plot of
predicted against actual trajectories. The model's settings come from --model-config, else from
the run folder's experiment when its controller builds this kind of model, else its defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from forethought.models.prediction import (
    PredictionReport,
    default_horizons,
    evaluate_predictions,
    predict_one_step,
    predict_open_loop,
)
from forethought.models.registry import MODELS, model_entry
from forethought.models.registry import build_model as registry_build
from forethought.models.registry import model_settings as registry_settings
from forethought.robots.config import ConfigError, from_mapping, load_yaml
from forethought.robots.robot import RobotSpec
from forethought.robots.trial import Trial
from forethought.robots.trial_log import json_default
from forethought.scripts.status_line import StatusLine, show_progress

if TYPE_CHECKING:
    from forethought.robots.lerobot_dataset import LeRobotOptions


def model_class(name: str) -> type:
    """The class of the models registered as `name` (models/registry.py); ConfigError for an unknown name."""
    return model_entry(name, "--model").model_class


def settings_class(name: str) -> type:
    """The settings dataclass of the model registered as `name`."""
    return model_entry(name, "--model").load("settings")


def run_settings(name: str, folder: Path) -> tuple[Any, str] | None:
    """Settings of model `name` from the experiment in run folder `folder` (its config.yaml) when its
    `model:` section is of that type: (settings, "FOLDER/config.yaml: model"), else None. The seed
    is the section's, else the experiment's, as the experiment loop seeds its model."""
    path = folder / "config.yaml"
    if not path.is_file():
        return None
    experiment = load_yaml(path)
    section = experiment.get("model")
    if not isinstance(section, dict) or section.get("type") != name:
        return None
    loop = experiment.get("loop") if isinstance(experiment.get("loop"), dict) else {}
    seed = loop.get("seed", 0)
    where = f"{path}: model"
    settings = registry_settings(name, {k: v for k, v in section.items() if k != "type"}, where,
                                 seed=seed if isinstance(seed, int) else None)
    return settings, where


def model_settings(name: str, model_config: str | None, runs: Sequence[Path]) -> tuple[Any, str | None]:
    """The settings to build model `name` with and where they come from: the YAML file
    `model_config`, else the experiment of the first run folder (see run_settings), else the
    defaults (source None). ConfigError naming the file and key for a bad file or setting."""
    cls = settings_class(name)
    if model_config is not None:
        return from_mapping(cls, load_yaml(model_config), f"{model_config}:"), model_config
    found = run_settings(name, Path(runs[0])) if runs and Path(runs[0]).is_dir() else None
    return found or (cls(), None)


def lerobot_options(args: argparse.Namespace) -> "LeRobotOptions":
    """How to read LeRobot datasets among the paths (--lerobot-calibration, --lerobot-units, --arm)."""
    from forethought.robots.lerobot_dataset import LeRobotOptions

    return LeRobotOptions(getattr(args, "lerobot_calibration", None), getattr(args, "lerobot_units", None),
                          getattr(args, "arm", None))


def load_logged(
    paths: Sequence[str], lerobot: "LeRobotOptions | None" = None
) -> tuple[dict[str, list[Trial]], list[str]]:
    """The trials of trial files, run folders, folders of run folders and LeRobot datasets (read with
    `lerobot`, a LeRobotOptions), grouped by run folder or dataset, and the damaged files and
    episodes skipped (each said on stderr); ConfigError saying what was looked for and what was
    found when no trial loads."""
    from forethought.robots.trial_log import load_trials, trial_paths

    by_run: dict[str, list[Trial]] = {}
    problems: list[str] = []
    for run, files in group_by_run(trial_paths(paths)).items():
        loaded, skipped = load_trials(files, lerobot)
        problems += skipped
        if loaded:
            by_run[str(run)] = loaded
            first = loaded[0].metadata
            if first.get("source") == "lerobot":
                print(f"{run}: {len(loaded)} LeRobot episodes as {first['arm']} trials, joints read in "
                      f"{first['lerobot_units']} (--lerobot-units) with {first['lerobot_calibration']}",
                      file=sys.stderr)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not by_run:
        looked = ("trial files (*.h5) in each folder, its trials/ folder, and the trials/ folders of its subfolders, "
                  "or a LeRobot dataset (meta/info.json)")
        found = f"{len(problems)} damaged trial files" if problems else what_is_there(paths)
        raise ConfigError(f"no trials could be loaded from {', '.join(map(str, paths))}: looked for {looked}; "
                          f"found {found}")
    if len(by_run) > 1:
        print(f"trials from {len(by_run)} runs: " + ", ".join(f"{Path(r).name} ({len(t)})" for r, t in by_run.items()),
              file=sys.stderr)
    return by_run, problems


def run_folder_of(trial_file: Path) -> Path:
    """The run folder a trial file belongs to (RUN/trials/trial_0001.h5 -> RUN), else its folder; a
    LeRobot dataset folder is its own."""
    if trial_file.is_dir():
        return trial_file
    folder = trial_file.parent
    return folder.parent if folder.name == "trials" else folder


def output_folder(run: Path) -> Path:
    """Where a fit writes by default: the run folder, or for a LeRobot dataset (left untouched)
    runs/lerobot_NAME in the working folder."""
    from forethought.robots.lerobot_dataset import is_lerobot_dataset

    return Path("runs") / f"lerobot_{Path(run).resolve().name}" if is_lerobot_dataset(run) else Path(run)


def group_by_run(files: Sequence[Path]) -> dict[Path, list[Path]]:
    """Trial files grouped by run folder, in the order found."""
    runs: dict[Path, list[Path]] = {}
    for path in files:
        runs.setdefault(run_folder_of(path), []).append(path)
    return runs


def what_is_there(paths: Sequence[str]) -> str:
    """For the error when no trial loads: what the given folders hold instead of trial files."""
    seen = []
    for path in map(Path, paths):
        if not path.is_dir():
            seen.append(f"{path} is a file")
            continue
        entries = sorted(path.iterdir())
        folders = [p.name for p in entries if p.is_dir()]
        files = [p.name for p in entries if p.is_file()]
        shown = lambda names: ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")  # noqa: E731
        parts = ([f"{len(folders)} folders without trials ({shown(folders)})"] if folders else []) + (
            [f"{len(files)} other files ({shown(files)})"] if files else [])
        seen.append(f"{path} holds " + (" and ".join(parts) if parts else "nothing"))
    return "; ".join(seen)


def build_model(name: str, trials: Sequence[Trial], config: Any = None):
    """A fresh model of kind `name` for the trials' states and actions, built from `config` (its
    settings; None: the defaults)."""
    first = trials[0]
    spec = RobotSpec(str(first.metadata.get("robot", "logged trials")), first.state_names, first.action_names,
                     np.full(len(first.action_names), -np.inf), np.full(len(first.action_names), np.inf), first.dt)
    return registry_build(name, config if config is not None else settings_class(name)(), spec,
                          first.metadata.get("scene"))


def common_horizon(trials: Sequence[Trial], horizon: int | None = None) -> list[Trial]:
    """Trials of one horizon (a time-varying model fits one), saying what it drops: with `horizon`,
    the first `horizon` steps of every trial at least that long; without, the most common horizon."""
    if horizon is not None:
        if horizon < 1:
            raise ConfigError(f"--horizon must be at least 1, got {horizon}")
        kept = [t.prefix(horizon) for t in trials if t.horizon >= horizon]
        if not kept:
            raise ConfigError(f"--horizon {horizon}: no trial is that long (the longest has "
                              f"{max(t.horizon for t in trials)} steps)")
        if len(kept) < len(trials):
            print(f"skipped: {len(trials) - len(kept)} trials shorter than {horizon} steps", file=sys.stderr)
        return kept
    horizons = [t.horizon for t in trials]
    keep = max(set(horizons), key=lambda h: (horizons.count(h), h))
    dropped = len(trials) - horizons.count(keep)
    if dropped:
        print(f"skipped: {dropped} trials whose horizon differs from {keep} steps (--horizon cuts "
              "trials to a common length instead)", file=sys.stderr)
    return [t for t in trials if t.horizon == keep]


def split_trials(trials: Sequence[Trial], heldout: float, seed: int) -> tuple[list[Trial], list[Trial]]:
    """A seeded split into (train, held-out); at least one trial on each side."""
    if len(trials) < 2:
        raise ConfigError(f"need at least 2 trials to hold some out, got {len(trials)}")
    if not 0 < heldout < 1:
        raise ConfigError(f"--heldout must lie strictly between 0 and 1, got {heldout}")
    order = np.random.default_rng(seed).permutation(len(trials))
    k = int(np.clip(round(heldout * len(trials)), 1, len(trials) - 1))
    return [trials[i] for i in order[k:]], [trials[i] for i in order[:k]]


def plot_error_by_horizon(report: PredictionReport, path: Path) -> Path:
    """Held-out open-loop RMSE against the horizon, per state and over all states."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, errors in report.state_rmse.items():
        ax.plot(report.horizons, errors, marker=".", lw=1, alpha=0.7, label=name)
    ax.plot(report.horizons, report.rmse, color="black", lw=2.5, marker="o", label="all states")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("prediction horizon (steps)")
    ax.set_ylabel("held-out RMSE (state units)")
    ax.set_title("open-loop prediction error by horizon")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="TRIALS_OR_RUN",
                        help="trial files (*.h5), run folders, folders of run folders (as --out fills them), "
                        "or LeRobotDataset v3 folders")
    parser.add_argument("--model", required=True, help=f"the model to fit ({', '.join(sorted(MODELS))})")
    parser.add_argument(
        "--model-config", metavar="YAML",
        help="YAML mapping of the model's settings (the keys of its settings, e.g. EnsembleConfig for ensemble; "
        "the report's model_settings reproduce a fit). Default: the `model:` section of the experiment of the "
        "first run folder when it is of this type, else the model's defaults",
    )
    parser.add_argument("--out", help="where to save the model (default: models/MODEL.SUFFIX in the first run folder)")
    parser.add_argument("--heldout", type=float, default=0.2, help="fraction of trials held out (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the sampled predictions")
    parser.add_argument("--particles", type=int, default=32, help="particles for open-loop predictions (default 32)")
    parser.add_argument("--horizon", type=int, metavar="STEPS",
                        help="time-varying models: fit the first STEPS steps of every trial at least that long "
                        "(default: the trials of the most common length)")
    parser.add_argument("--scene", help="mujoco: the nominal scene to identify (default: the run folder's robot.scene)")
    parser.add_argument("--validate", nargs="+", metavar="TRIALS_OR_RUN",
                        help="mujoco: trials to report on, held out in place of a --heldout share of the trials")
    parser.add_argument("--lerobot-calibration", metavar="FILE.json",
                        help="LeRobot datasets: the arm's LeRobot calibration (default: the one file LeRobot keeps "
                        "for the dataset's robot_type)")
    parser.add_argument("--lerobot-units", choices=["degrees", "range"],
                        help="LeRobot datasets: how the body joints were recorded, degrees or -100..100 of their "
                        "range (default: LeRobot's current default, degrees on SO-101, range on Koch)")
    parser.add_argument("--arm", help="LeRobot datasets: so101, koch or an arm YAML (default: from robot_type)")


def default_output(runs: Sequence[Path], model: str) -> Path:
    """models/MODEL.SUFFIX in the first run folder (see output_folder)."""
    return output_folder(Path(runs[0])) / "models" / f"{model}{MODELS[model].suffix}"


def run_report(model, by_run: dict[str, list[Trial]], heldout: Sequence[Trial]) -> list[dict]:
    """Per run: its trials, how many of them were held out, and the held-out one-step RMSE on them."""
    held = {id(t) for t in heldout}
    report = []
    for run, trials in by_run.items():
        mine = [t for t in trials if id(t) in held]
        entry = {"run": run, "trials": len(trials), "heldout_trials": len(mine)}
        if mine:
            mean, _, target = predict_one_step(model, mine)
            entry["heldout_one_step_rmse"] = float(np.sqrt(np.mean((mean - target) ** 2)))
        report.append(entry)
    return report


def fit_main(args: argparse.Namespace) -> int:
    """Run `forethought fit`; returns the exit status."""
    from forethought.robots.trial_log import trial_paths
    from forethought.scripts.plots import plot_predictions

    if args.model == "mujoco":  # the scene itself, identified (models.scene_identification)
        from forethought.scripts.fit_scene import fit_scene_main

        return fit_scene_main(args)
    if args.scene or args.validate:
        raise ConfigError("--scene and --validate are for --model mujoco")
    runs = group_by_run(trial_paths(args.paths))
    # An unknown model or bad settings fail before any loading.
    settings, settings_from = model_settings(args.model, args.model_config, list(runs))
    if settings_from:
        print(f"model settings from {settings_from}", file=sys.stderr)
    by_run, problems = load_logged(args.paths, lerobot_options(args))
    trials = [trial for group in by_run.values() for trial in group]
    if getattr(model_class(args.model), "time_varying", False):
        trials = common_horizon(trials, args.horizon)
    elif args.horizon is not None:
        raise ConfigError(f"--horizon is for time-varying models (tvlg), not {args.model}")
    if args.particles < 1:
        raise ConfigError(f"--particles must be at least 1, got {args.particles}")
    train, heldout = split_trials(trials, args.heldout, args.seed)
    try:
        model = build_model(args.model, train, settings)
    except ConfigError as err:  # settings that do not fit the trials, such as an angle state they lack
        raise ConfigError(f"{settings_from or 'default settings'}: {err}") from None
    transitions = sum(t.horizon for t in train)
    print(f"fitting {args.model} on {len(train)} trials ({transitions} transitions), holding out {len(heldout)}...",
          file=sys.stderr)
    started = time.perf_counter()
    line = StatusLine(show_every_s=10.0)
    show_progress(line)
    info = model.fit(train)
    line.finish(f"fitted in {time.perf_counter() - started:.1f} s; predicting the held-out trials...")
    horizons = default_horizons(min(t.horizon for t in heldout))
    report = evaluate_predictions(model, heldout, horizons, args.particles, args.seed, reference=train)

    out = Path(args.out) if args.out else default_output(list(runs), args.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    shown = heldout[0]
    mean, std = predict_open_loop(
        model, shown.states[None, 0], shown.actions[None], np.zeros(1, dtype=int), args.particles, args.seed
    )
    plot_path = out.with_name(f"{out.stem}_predictions.png")
    plot_predictions(shown.states, mean[0], std[0], list(shown.state_names), plot_path, dt=shown.dt)
    error_plot = plot_error_by_horizon(report, out.with_name(f"{out.stem}_error_by_horizon.png"))
    summary = {
        "model": args.model,
        "model_settings": asdict(settings),
        "model_settings_from": settings_from,
        "train_trials": len(train),
        "heldout_trials": len(heldout),
        "skipped": list(map(str, problems)),
        "runs": run_report(model, by_run, heldout),
        "fit": info,
        "prediction": report.as_dict(),
    }
    report_path = out.with_name(f"{out.stem}_report.json")
    report_path.write_text(json.dumps(summary, indent=2, default=json_default))

    print(f"one-step RMSE {report.one_step_rmse:.4g}, NLL {report.one_step_nll:.4g} (held-out)")
    print("open-loop RMSE by horizon (steps), over all states, normalised by each state's spread, and per state:")
    names = list(report.state_rmse)
    print("horizon  all         normalised  " + "  ".join(f"{n[:10]:>10}" for n in names))
    for i, h in enumerate(report.horizons):
        states = "  ".join(f"{report.state_rmse[n][i]:10.3g}" for n in names)
        print(f"{h:7d}  {report.rmse[i]:<10.4g}  {report.normalised_rmse[i]:<10.4g}  {states}")
    print(f"model: {out}\nreport: {report_path}\nplots: {plot_path}, {error_plot}")
    return 0
