"""`forethought fit --model tvlg|gp|ensemble TRIALS_OR_RUN... [--model-config YAML] [--out MODEL]`.

Loads logged trials (trial files, or run folders holding them), holds some out, fits the chosen
model on the rest, and reports how well it predicts the held-out trials: one step ahead, and open
loop over growing horizons from the logged actions. Writes the model, a JSON report and a plot of
predicted against actual trajectories. The model's settings come from --model-config, else from
the run folder's experiment when its controller builds this kind of model, else its defaults.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from forethought.robots.config import ConfigError, from_mapping, load_yaml
from forethought.robots.trial import Trial
from forethought.robots.trial_log import json_default
from forethought.scripts.status_line import StatusLine, show_progress


class RegisteredModel(NamedTuple):
    """A model `fit` can build. model: "module:Class", which builds from `config` (given state_names
    and action_names when it asks for them) and offers fit(trials), predict(x, u) (plus t= when it
    has `time_varying`), save(path) and load(path); suffix: of its saved file; settings:
    "module:Class" of its config dataclass; controller: (types, key): the experiment controllers (by
    type) that build this model from the settings under `key`, or None."""

    model: str
    suffix: str
    settings: str
    controller: tuple[tuple[str, ...], str] | None = None


MODELS: dict[str, RegisteredModel] = {
    "tvlg": RegisteredModel(
        "forethought.models.tvlg:TVLGModel", ".npz", "forethought.models.tvlg:TVLGConfig", (("gps", "mdgps"), "dynamics")
    ),
    "gp": RegisteredModel("forethought.models.gp:GPModel", ".pt", "forethought.models.gp:GPConfig", (("pilco",), "model")),
    "ensemble": RegisteredModel(
        "forethought.models.ensemble:EnsembleModel", ".pt", "forethought.models.ensemble:EnsembleConfig",
        (("pets",), "ensemble"),
    ),
}


class ModelNotAvailable(KeyError):
    """A model name that is not registered."""


def _imported(spec: str):
    module_name, name = spec.split(":")
    return getattr(importlib.import_module(module_name), name)


def model_class(name: str):
    """The class registered as `name`, imported on first use."""
    if name not in MODELS:
        raise ModelNotAvailable(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    return _imported(MODELS[name].model)


def settings_class(name: str) -> type:
    """The config dataclass of the model registered as `name`."""
    model_class(name)  # names an unknown model
    return _imported(MODELS[name].settings)


def run_settings(name: str, folder: Path) -> tuple[Any, str] | None:
    """Settings of model `name` from the experiment in run folder `folder` (its config.yaml), when
    its controller builds this kind of model: (config, "FOLDER/config.yaml: controller.KEY"), else None."""
    section = MODELS[name].controller
    path = folder / "config.yaml"
    if section is None or not path.is_file():
        return None
    kinds, key = section
    experiment = load_yaml(path)
    controller = experiment.get("controller")
    if not isinstance(controller, dict) or controller.get("type") not in kinds or key not in controller:
        return None
    where = f"{path}: controller.{key}"
    settings = from_mapping(settings_class(name), controller[key], where)
    # The controller seeds its model with its own seed, else the experiment's: so does the fit.
    loop = experiment.get("loop") if isinstance(experiment.get("loop"), dict) else {}
    seed = controller.get("seed", loop.get("seed", 0))
    return (replace(settings, seed=seed) if isinstance(seed, int) else settings), where


def model_settings(name: str, model_config: str | None, runs: Sequence[Path]) -> tuple[Any, str | None]:
    """The settings to build model `name` with and where they come from: the YAML file
    `model_config`, else the experiment of the first run folder (see run_settings), else the
    defaults (source None). ConfigError naming the file and key for a bad file or setting."""
    cls = settings_class(name)
    if model_config is not None:
        return from_mapping(cls, load_yaml(model_config), f"{model_config}:"), model_config
    found = run_settings(name, Path(runs[0])) if runs and Path(runs[0]).is_dir() else None
    return found or (cls(), None)


def run_folder_of(trial_file: Path) -> Path:
    """The run folder a trial file belongs to (RUN/trials/trial_0001.h5 -> RUN), else its folder."""
    folder = trial_file.parent
    return folder.parent if folder.name == "trials" else folder


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
    config dataclass; None: the defaults)."""
    cls = model_class(name)
    wants = inspect.signature(cls).parameters
    names = {"state_names": trials[0].state_names, "action_names": trials[0].action_names}
    return cls(**{key: value for key, value in names.items() if key in wants}, config=config)


def common_horizon(trials: Sequence[Trial]) -> list[Trial]:
    """The trials of the most common horizon (a time-varying model fits one horizon), saying what it drops."""
    horizons = [t.horizon for t in trials]
    keep = max(set(horizons), key=lambda h: (horizons.count(h), h))
    dropped = len(trials) - horizons.count(keep)
    if dropped:
        print(f"skipped: {dropped} trials whose horizon differs from {keep} steps", file=sys.stderr)
    return [t for t in trials if t.horizon == keep]


def split_trials(trials: Sequence[Trial], heldout: float, seed: int) -> tuple[list[Trial], list[Trial]]:
    """A seeded split into (train, held-out); at least one trial on each side."""
    if len(trials) < 2:
        raise ValueError(f"need at least 2 trials to hold some out, got {len(trials)}")
    if not 0 < heldout < 1:
        raise ValueError(f"--heldout must lie strictly between 0 and 1, got {heldout}")
    order = np.random.default_rng(seed).permutation(len(trials))
    k = int(np.clip(round(heldout * len(trials)), 1, len(trials) - 1))
    return [trials[i] for i in order[k:]], [trials[i] for i in order[:k]]


def _predict(model, x: np.ndarray, u: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if getattr(model, "time_varying", False):
        return model.predict(x, u, t=t)
    return model.predict(x, u)


def predict_open_loop(
    model, starts: np.ndarray, actions: np.ndarray, t0: np.ndarray, particles: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate sampled particles through the model under fixed actions.

    starts: (S, n) initial states; actions: (S, H, m); t0: (S,) time index of each start.
    Each step draws x_{k+1} ~ N(mean, var) for every particle, so uncertainty compounds as it does
    on the robot. Returns the particles' mean and std: (S, H+1, n) each.
    """
    rng = np.random.default_rng(seed)
    S, H, _ = actions.shape
    x = np.repeat(starts, particles, axis=0)
    t = np.repeat(np.asarray(t0, dtype=int), particles)
    path = [x.reshape(S, particles, -1)]
    for k in range(H):
        mean, var = _predict(model, x, np.repeat(actions[:, k], particles, axis=0), t + k)
        x = mean + np.sqrt(np.maximum(var, 0.0)) * rng.standard_normal(mean.shape)
        path.append(x.reshape(S, particles, -1))
    stacked = np.stack(path, axis=2)  # (S, P, H+1, n)
    return stacked.mean(axis=1), stacked.std(axis=1)


def predict_one_step(model, trials: Sequence[Trial]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's mean and variance of every logged next state from the logged state and action,
    and the logged next states: (N, n) each, N the trials' transitions in order."""
    x = np.concatenate([t.states[:-1] for t in trials])
    u = np.concatenate([t.actions for t in trials])
    steps = np.concatenate([np.arange(t.horizon) for t in trials])
    mean, var = _predict(model, x, u, steps)
    return mean, var, np.concatenate([t.states[1:] for t in trials])


@dataclass
class PredictionReport:
    """Held-out prediction errors in the state's units and normalised by each state's spread.

    horizons: the open-loop horizons in steps; rmse / normalised_rmse: over all states, one per
    horizon; state_rmse: state name -> one per horizon (positions and velocities apart: on a
    damped arm position errors compound while velocity errors stay bounded);
    one_step_rmse, one_step_nll: from the predicted mean and variance of the next state.
    """

    horizons: list[int]
    rmse: list[float]
    normalised_rmse: list[float]
    state_rmse: dict[str, list[float]]
    one_step_rmse: float
    one_step_nll: float

    def as_dict(self) -> dict:
        return {
            "horizons": self.horizons,
            "rmse": self.rmse,
            "normalised_rmse": self.normalised_rmse,
            "state_rmse": self.state_rmse,
            "one_step_rmse": self.one_step_rmse,
            "one_step_nll": self.one_step_nll,
        }


def evaluate_predictions(
    model,
    heldout: Sequence[Trial],
    horizons: Sequence[int],
    particles: int = 32,
    seed: int = 0,
    starts_per_trial: int = 8,
    reference: Sequence[Trial] = (),
) -> PredictionReport:
    """One-step and open-loop multi-step errors of `model` on held-out trials.

    Normalised errors divide by each state's spread over the held-out and `reference` trials (the
    training ones): a state that barely moves in the few held-out trials (a block at rest) would
    otherwise turn a tiny error into a huge normalised one.
    """
    states = [t.states for t in heldout]
    spread = np.concatenate(states + [t.states for t in reference]).std(axis=0)
    spread = np.where(spread > 1e-9, spread, 1.0)
    mean, var, target = predict_one_step(model, heldout)
    var = np.maximum(var, 1e-12)
    one_step_rmse = float(np.sqrt(np.mean((mean - target) ** 2)))
    nll = 0.5 * np.mean(np.sum((mean - target) ** 2 / var + np.log(2 * np.pi * var), axis=1))

    rmse, normalised, per_state = [], [], []
    shortest = min(t.horizon for t in heldout)
    horizons = [h for h in horizons if 1 <= h <= shortest]
    if not horizons:
        raise ValueError(f"no prediction horizon fits the held-out trials (shortest has {shortest} steps)")
    for h in horizons:
        starts, actions, t0, actual = [], [], [], []
        for trial in heldout:
            first = np.unique(np.linspace(0, trial.horizon - h, starts_per_trial).astype(int))
            for s in first:
                starts.append(trial.states[s])
                actions.append(trial.actions[s : s + h])
                t0.append(s)
                actual.append(trial.states[s + h])
        predicted, _ = predict_open_loop(model, np.array(starts), np.array(actions), np.array(t0), particles, seed)
        error = predicted[:, -1] - np.array(actual)
        rmse.append(float(np.sqrt(np.mean(error**2))))
        normalised.append(float(np.sqrt(np.mean((error / spread) ** 2))))
        per_state.append(np.sqrt(np.mean(error**2, axis=0)))
    names = heldout[0].state_names
    state_rmse = {name: [float(e[i]) for e in per_state] for i, name in enumerate(names)}
    return PredictionReport(list(horizons), rmse, normalised, state_rmse, one_step_rmse, float(nll))


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


def default_horizons(horizon: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to the trial horizon."""
    steps = [h * scale for scale in (1, 10, 100, 1000) for h in (1, 2, 5)]
    return [h for h in steps if h <= horizon]


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="TRIALS_OR_RUN",
                        help="trial files (*.h5), run folders, or folders of run folders (as --out fills them)")
    parser.add_argument("--model", required=True, help=f"the model to fit ({', '.join(sorted(MODELS))})")
    sections = "; ".join(f"for {name}: controller.{m.controller[1]} of a {' or '.join(m.controller[0])} experiment"
                         for name, m in MODELS.items() if m.controller)
    parser.add_argument(
        "--model-config", metavar="YAML",
        help="YAML mapping of the model's settings (the keys of its config, e.g. EnsembleConfig for ensemble; "
        "the report's model_settings reproduce a fit). Default: the settings in the experiment of the run "
        f"folder given first when its controller builds this model ({sections}), else the model's defaults",
    )
    parser.add_argument("--out", help="where to save the model (default: models/MODEL.SUFFIX in the first run folder)")
    parser.add_argument("--heldout", type=float, default=0.2, help="fraction of trials held out (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the sampled predictions")
    parser.add_argument("--particles", type=int, default=32, help="particles for open-loop predictions (default 32)")


def default_output(runs: Sequence[Path], model: str) -> Path:
    """models/MODEL.SUFFIX in the first run folder."""
    return Path(runs[0]) / "models" / f"{model}{MODELS[model].suffix}"


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
    from forethought.robots.trial_log import load_trials, trial_paths
    from forethought.scripts.plots import plot_predictions

    runs = group_by_run(trial_paths(args.paths))
    # An unknown model or bad settings fail before any loading.
    settings, settings_from = model_settings(args.model, args.model_config, list(runs))
    if settings_from:
        print(f"model settings from {settings_from}", file=sys.stderr)
    by_run: dict[str, list[Trial]] = {}
    problems: list[str] = []
    for run, files in runs.items():
        loaded, skipped = load_trials(files)
        problems += skipped
        if loaded:
            by_run[str(run)] = loaded
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not by_run:
        looked = "trial files (*.h5) in each folder, its trials/ folder, and the trials/ folders of its subfolders"
        found = f"{len(problems)} damaged trial files" if problems else what_is_there(args.paths)
        raise ConfigError(f"no trials could be loaded from {', '.join(map(str, args.paths))}: looked for {looked}; "
                          f"found {found}")
    if len(by_run) > 1:
        print(f"trials from {len(by_run)} runs: " + ", ".join(f"{Path(r).name} ({len(t)})" for r, t in by_run.items()),
              file=sys.stderr)
    trials = [trial for group in by_run.values() for trial in group]
    if getattr(model_class(args.model), "time_varying", False):
        trials = common_horizon(trials)
    if args.particles < 1:
        raise ValueError(f"--particles must be at least 1, got {args.particles}")
    train, heldout = split_trials(trials, args.heldout, args.seed)
    try:
        model = build_model(args.model, train, settings)
    except ValueError as err:  # settings that do not fit the trials, such as an angle state they lack
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
