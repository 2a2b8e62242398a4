"""`forethought fit`: held-out prediction errors, the model registry and settings, the command on a run folder."""

import json
from pathlib import Path

import numpy as np
import pytest

from forethought.models.ensemble import EnsembleConfig, EnsembleModel
from forethought.models.tvlg import TVLGModel
from forethought.robots.config import ConfigError, from_mapping
from forethought.robots.trial import Trial
from forethought.scripts.fit import (
    build_model,
    default_horizons,
    evaluate_predictions,
    model_class,
    model_settings,
    split_trials,
)


def linear_trials(count: int, horizon: int = 30, seed: int = 0) -> list[Trial]:
    """Trials of a slightly unstable linear system under random actions, with process noise."""
    rng = np.random.default_rng(seed)
    A = np.array([[1.0, 0.1], [0.05, 1.02]])
    B = np.array([[0.0], [0.1]])
    trials = []
    for _ in range(count):
        x = np.empty((horizon + 1, 2))
        u = rng.uniform(-1, 1, (horizon, 1))
        x[0] = rng.normal(0, 0.1, 2)
        for t in range(horizon):
            x[t + 1] = A @ x[t] + B @ u[t] + rng.normal(0, 0.01, 2)
        trials.append(Trial(x, u, np.arange(horizon + 1) * 0.05, np.zeros(horizon + 1), ("p", "v"), ("f",), 0.05))
    return trials


def test_errors_grow_with_horizon():
    trials = linear_trials(30)
    train, heldout = split_trials(trials, 0.2, seed=0)
    assert len(heldout) == 6 and len(train) == 24
    model = build_model("tvlg", train)
    model.fit(train)
    report = evaluate_predictions(model, heldout, default_horizons(30), particles=16, seed=0)
    assert report.horizons == [1, 2, 5, 10, 20]
    assert all(b > a for a, b in zip(report.rmse, report.rmse[1:])), report.rmse
    # One step ahead, the error is the process noise (0.01 per state) plus a small fitting error.
    assert report.one_step_rmse < 0.02
    assert report.rmse[-1] > 3 * report.rmse[0]


def test_normalised_errors_use_the_training_spread_for_a_state_still_in_the_held_out_trials():
    trials = linear_trials(30)
    train, heldout = split_trials(trials, 0.2, seed=0)
    model = build_model("tvlg", train)
    model.fit(train)
    # Held-out trials in which the second state barely moves (an object at rest) from an offset
    # start: its spread there is 1e-6, so normalising by it alone would give errors near 1e4.
    still = []
    for t in heldout:
        x = t.states.copy()
        x[:, 1] = 0.05 + 1e-6 * np.sin(np.arange(len(x)))
        still.append(Trial(x, t.actions, t.timestamps, t.costs, t.state_names, t.action_names, t.dt))
    report = evaluate_predictions(model, still, [1, 5], particles=4, seed=0, reference=train)
    assert max(report.normalised_rmse) < 10, report.normalised_rmse
    alone = evaluate_predictions(model, still, [1, 5], particles=4, seed=0)
    assert max(alone.normalised_rmse) > 100 * max(report.normalised_rmse)


def test_registry_names_missing_models():
    assert model_class("tvlg") is TVLGModel
    with pytest.raises(ConfigError, match="unknown model .pilco."):
        model_class("pilco")


def test_split_checked():
    with pytest.raises(ValueError, match="at least 2 trials"):
        split_trials(linear_trials(1), 0.2, 0)
    with pytest.raises(ValueError, match="--heldout"):
        split_trials(linear_trials(4), 1.0, 0)


def test_fit_command_on_a_run_folder(tmp_path, capsys, monkeypatch):
    """`forethought fit --model tvlg RUN` on a folder the experiment loop wrote (GPS samples)."""
    import argparse
    import json

    from forethought.scripts import experiment
    from forethought.scripts.fit import add_fit_arguments, fit_main
    from forethought.scripts.run import run_experiment

    config = tmp_path / "gps-reach.yaml"
    config.write_text(
        "robot: {scene: so101_reach}\n"
        "task:\n"
        "  horizon: 25\n"
        "  cost: {terms: [{type: site_distance, site: ee, target: target, weight: 100.0}]}\n"
        "  conditions: [{target: [0.20, 0.05, 0.12]}]\n"
        "model: {type: tvlg, clusters: 4, ridge: 1.0e-5}\n"
        "controller: {type: gps, init_std: 0.05}\n"
        "loop: {iterations: 2, samples: 5, seed: 0, video: false}\n"
    )
    run = run_experiment(experiment.load_experiment(str(config)), tmp_path / "runs", render_video=False)
    parser = argparse.ArgumentParser()
    add_fit_arguments(parser)
    args = parser.parse_args([str(run.folder), "--model", "tvlg", "--particles", "8"])
    assert fit_main(args) == 0
    out = capsys.readouterr().out
    assert "one-step RMSE" in out
    report = json.loads((run.folder / "models" / "tvlg_report.json").read_text())
    assert report["train_trials"] == 8 and report["heldout_trials"] == 2
    assert report["prediction"]["horizons"] == [1, 2, 5, 10, 20]
    # Joint-position errors compound over the first steps (velocity errors of the damped servos stay
    # bounded); past 5 steps the servos pull every trial toward its target and the errors level off,
    # in an order that varies with the seed.
    per_state = report["prediction"]["state_rmse"]
    positions = np.mean([errors for name, errors in per_state.items() if not name.startswith("d_")], axis=0)
    assert positions[1] > positions[0] and positions[2] > 1.3 * positions[0], positions
    assert (run.folder / "models" / "tvlg_predictions.png").stat().st_size > 10_000
    assert (run.folder / "models" / "tvlg_error_by_horizon.png").stat().st_size > 10_000
    loaded = TVLGModel.load(run.folder / "models" / "tvlg.npz")
    assert loaded.dynamics.horizon == 25
    # The run's GPS fitted its dynamics with these settings, and so does fit.
    assert (loaded.config.clusters, loaded.config.ridge) == (4, 1e-5)
    assert report["model_settings_from"] == f"{run.folder / 'config.yaml'}: model"

    with pytest.raises(ConfigError, match="unknown model"):
        fit_main(parser.parse_args([str(run.folder), "--model", "nope"]))
    with pytest.raises(FileNotFoundError, match="no such trial file"):
        fit_main(parser.parse_args([str(tmp_path / "missing"), "--model", "tvlg"]))


# A small, fast ensemble: two narrow members and a few gradient steps.
SMALL_ENSEMBLE = "{members: 2, hidden: [16], relative_actions: true, min_steps: 5, max_steps: 10}"


def trials_folder(folder, count: int = 6):
    """`folder`/trials/trial_NNNN.h5 holding linear trials, like a run folder; returns `folder`."""
    from forethought.robots.trial_log import save_trial

    for i, trial in enumerate(linear_trials(count, horizon=10)):
        save_trial(trial, folder / "trials" / f"trial_{i:04d}.h5")
    return folder


def fit_cli(*argv) -> int:
    from forethought.scripts.cli import main

    return main(["fit", "--model", "ensemble", "--particles", "2", *map(str, argv)])


def test_fit_with_model_config_builds_the_model_with_those_settings(tmp_path, capsys):
    run = trials_folder(tmp_path / "run")
    settings = tmp_path / "ensemble.yaml"
    settings.write_text(SMALL_ENSEMBLE + "\n")
    assert fit_cli(run, "--model-config", settings) == 0
    err = capsys.readouterr().err
    assert f"model settings from {settings}" in err and "ensemble fit on" in err  # progress while it trains
    assert "\r" not in err  # not a terminal: plain lines
    config = EnsembleModel.load(run / "models" / "ensemble.pt").config
    assert (config.members, config.hidden, config.relative_actions, config.max_steps) == (2, [16], True, 10)
    report = json.loads((run / "models" / "ensemble_report.json").read_text())
    assert report["model_settings_from"] == str(settings)
    # The report's settings rebuild the same config (the way to reproduce the fit).
    assert from_mapping(EnsembleConfig, report["model_settings"], "report:") == config


@pytest.mark.parametrize(
    "text, message",
    [
        ("{members: 2, hiden: [16]}", "unknown key 'hiden'"),
        ("{members: two}", "members: expected an integer, got 'two'"),
        ("[members, 2]", "expected a mapping at the top level"),
        ("{angle_states: [q]}", "model.angle_states: ['q'] are not modelled states"),
    ],
)
def test_bad_model_config_names_the_file_and_key_and_writes_no_model(tmp_path, capsys, text, message):
    run = trials_folder(tmp_path / "run")
    settings = tmp_path / "ensemble.yaml"
    settings.write_text(text + "\n")
    assert fit_cli(run, "--model-config", settings) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"forethought fit: error: {settings}: ") and message in err[-1], err
    assert not any("fitting" in line for line in err)
    assert not (run / "models").exists()


def test_missing_model_config_is_an_error(tmp_path, capsys):
    run = trials_folder(tmp_path / "run")
    assert fit_cli(run, "--model-config", tmp_path / "nope.yaml") == 2
    assert f"{tmp_path / 'nope.yaml'}: file not found" in capsys.readouterr().err
    assert not (run / "models").exists()


def test_run_folder_gives_the_default_settings_of_its_controller(tmp_path, capsys):
    run = trials_folder(tmp_path / "run")
    (run / "config.yaml").write_text(f"model: {{type: ensemble, {SMALL_ENSEMBLE[1:-1]}}}\n")
    assert fit_cli(run) == 0
    source = f"{run / 'config.yaml'}: model"
    assert f"model settings from {source}" in capsys.readouterr().err
    config = EnsembleModel.load(run / "models" / "ensemble.pt").config
    assert (config.members, config.hidden, config.relative_actions) == (2, [16], True)
    assert json.loads((run / "models" / "ensemble_report.json").read_text())["model_settings_from"] == source

    # A bad setting there names the file and key; --model-config takes precedence over it; another
    # controller's experiment gives the model's defaults.
    (run / "config.yaml").write_text("model: {type: ensemble, members: 0.5}\n")
    with pytest.raises(ConfigError, match=r"config.yaml: model.members: expected an integer"):
        model_settings("ensemble", None, [str(run)])
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert model_settings("ensemble", str(empty), [str(run)]) == (EnsembleConfig(), str(empty))
    (run / "config.yaml").write_text("model: {type: tvlg}\n")
    assert model_settings("ensemble", None, [str(run)]) == (EnsembleConfig(), None)
    # The experiment loop seeds its model with the model's own seed, else the experiment's: so does fit.
    (run / "config.yaml").write_text("model: {type: ensemble}\nloop: {seed: 7}\n")
    assert model_settings("ensemble", None, [str(run)])[0].seed == 7
    (run / "config.yaml").write_text("model: {type: ensemble, seed: 3}\nloop: {seed: 7}\n")
    assert model_settings("ensemble", None, [str(run)])[0].seed == 3


def test_fit_on_a_folder_of_run_folders_fits_every_runs_trials(tmp_path, capsys):
    """`forethought fit --model tvlg runs/` on the folder `--out runs` fills: both runs' trials."""
    runs = tmp_path / "runs"
    trials_folder(runs / "reach-a", count=4)
    trials_folder(runs / "reach-b", count=6)
    assert fit_cli(runs) == 0
    assert "trials from 2 runs: reach-a (4), reach-b (6)" in capsys.readouterr().err
    report = json.loads((runs / "reach-a" / "models" / "ensemble_report.json").read_text())
    assert report["train_trials"] + report["heldout_trials"] == 10
    assert [(Path(r["run"]).name, r["trials"]) for r in report["runs"]] == [("reach-a", 4), ("reach-b", 6)]
    assert sum(r["heldout_trials"] for r in report["runs"]) == report["heldout_trials"]
    assert all(np.isfinite(r["heldout_one_step_rmse"]) for r in report["runs"] if r["heldout_trials"])


def test_fit_on_a_folder_without_trials_says_what_it_looked_for_and_found(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "empty-run").mkdir(parents=True)
    (runs / "notes.txt").write_text("not a trial")
    assert fit_cli(runs) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "looked for trial files (*.h5)" in err
    assert "1 folders without trials (empty-run)" in err and "1 other files (notes.txt)" in err


def test_a_time_varying_fit_cuts_trials_of_several_lengths_to_horizon(tmp_path, capsys):
    """Trials of 12, 16 and 20 steps: by default only the most common length is fitted; --horizon 12
    fits the first 12 steps of all of them, and a horizon no trial reaches is one line, exit 2."""
    import json

    from forethought.robots.trial_log import save_trial
    from forethought.scripts.cli import main

    run = tmp_path / "run"
    lengths = [12] * 3 + [16] * 4 + [20] * 3
    for i, horizon in enumerate(lengths):
        save_trial(linear_trials(1, horizon=horizon, seed=i)[0], run / "trials" / f"trial_{i:04d}.h5")
    assert main(["fit", "--model", "tvlg", "--particles", "2", str(run)]) == 0
    assert "skipped: 6 trials whose horizon differs from 16 steps" in capsys.readouterr().err
    report = json.loads((run / "models" / "tvlg_report.json").read_text())
    assert report["train_trials"] + report["heldout_trials"] == 4
    assert main(["fit", "--model", "tvlg", "--particles", "2", "--horizon", "12", str(run)]) == 0
    report = json.loads((run / "models" / "tvlg_report.json").read_text())
    assert report["train_trials"] + report["heldout_trials"] == 10
    assert TVLGModel.load(run / "models" / "tvlg.npz").dynamics.horizon == 12
    assert main(["fit", "--model", "tvlg", "--horizon", "21", str(run)]) == 2
    assert "--horizon 21: no trial is that long (the longest has 20 steps)" in capsys.readouterr().err
    assert main(["fit", "--model", "ensemble", "--horizon", "12", str(run)]) == 2
    assert "--horizon is for time-varying models" in capsys.readouterr().err


def test_a_trial_prefix_keeps_the_first_steps_and_no_terminal_cost():
    trial = linear_trials(1, horizon=10)[0]
    trial.costs[:] = 1.0
    cut = trial.prefix(4)
    assert cut.horizon == 4 and np.array_equal(cut.states, trial.states[:5])
    assert np.array_equal(cut.actions, trial.actions[:4]) and np.isnan(cut.costs[4]) and cut.costs[3] == 1.0
    assert trial.prefix(10).costs[10] == 1.0
    with pytest.raises(ValueError, match="prefix needs"):
        trial.prefix(11)
