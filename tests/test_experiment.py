"""Experiment files: one clear line naming the file and the key for every kind of bad input."""

import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

from forethought.robots.config import ConfigError, from_mapping
from forethought.scripts.cli import main
from forethought.scripts.experiment import load_experiment, shipped_experiments

GOOD = """
robot: {scene: cartpole}
task: {horizon: 5}
controller: {type: random}
loop: {iterations: 1, seed: 3}
"""


@dataclass
class Inner:
    gain: float
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner
    steps: int = 1
    mode: str | None = None


def test_from_mapping_converts_and_fills_defaults():
    cfg = from_mapping(Outer, {"inner": {"gain": 2}}, "f.yaml:")
    assert cfg.inner.gain == 2.0 and isinstance(cfg.inner.gain, float) and cfg.steps == 1


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"gain": 1}, "stepz": 2}, "f.yaml: unknown key 'stepz'"),
        ({"inner": {"gain": "fast"}}, "f.yaml: inner.gain: expected a number"),
        ({"inner": {"gain": 1, "names": "a"}}, "inner.names: expected a list"),
        ({"inner": {"gain": 1}, "steps": 1.5}, "steps: expected an integer"),
        ({"inner": {"gain": 1}, "steps": True}, "steps: expected an integer"),
        ({}, "f.yaml: inner: required key is missing"),
    ],
)
def test_from_mapping_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(Outer, data, "f.yaml:")


def test_a_good_file_loads(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(GOOD)
    experiment = load_experiment(str(path))
    assert experiment.name == "exp" and experiment.task.horizon == 5 and experiment.loop.seed == 3


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "extra: 1\n", "unknown key 'extra'"),
        (GOOD.replace("horizon: 5", "horizon: five"), r"task.horizon: expected an integer"),
        (GOOD.replace("horizon: 5", "horizon: 0"), "horizon must be at least 1"),
        (GOOD.replace("type: random", "type: telepathy"), "controller.type: unknown controller 'telepathy'"),
        (GOOD.replace("{scene: cartpole}", "{scene: cartpole, dm_control: 'cartpole:swingup'}"), "exactly one of"),
        ("robot: [1, 2", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping at the top level"),
    ],
)
def test_bad_files_get_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_experiment(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("model", ["ensemble", "gp"])
def test_an_angle_the_robot_lacks_is_bad_input_naming_the_file_and_key(tmp_path, model):
    from forethought.scripts.experiment import make_model, make_robot

    path = tmp_path / "angles.yaml"
    text = GOOD.replace("{type: random}", "{type: sampling_mpc, kind: mppi}")
    path.write_text(text + f"model: {{type: {model}, angle_states: [theta]}}\n")
    experiment = load_experiment(str(path))
    robot = make_robot(experiment.robot)
    try:
        with pytest.raises(ConfigError, match=r"model.angle_states: \['theta'\] are not modelled states") as info:
            make_model(experiment, robot)
    finally:
        robot.close()
    assert str(path) in str(info.value)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        load_experiment("nope")
    with pytest.raises(ConfigError, match="file not found"):
        load_experiment(str(tmp_path / "missing.yaml"))


def test_command_line_exits_2_with_one_line_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD + "extra: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "forethought.scripts.cli", "run", str(path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("forethought run: error:")
    assert "unknown key 'extra'" in result.stderr
    assert not any(tmp_path.glob("bad-*"))  # nothing half-made

    path.write_text(GOOD)
    result = subprocess.run(
        [sys.executable, "-m", "forethought.scripts.cli", "run", str(path), "--out", str(tmp_path), "--threads", "0"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--threads must be at least 1" in result.stderr


@pytest.mark.parametrize("argv, message", [
    (["--trials", "0"], "--trials must be at least 1, got 0"),
    (["--horizon", "0"], "--horizon must be at least 1, got 0"),
])
def test_a_bad_argument_exits_2_with_one_line(tmp_path, capsys, argv, message):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-video", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"forethought run: error: {message}" and not any("Traceback" in line for line in err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("error", [KeyError("gain"), ValueError("operands could not be broadcast")])
def test_a_bug_inside_a_controller_exits_1_with_its_traceback(tmp_path, capsys, monkeypatch, error):
    """A KeyError or ValueError raised inside is a bug, not the user's bad input: the traceback says where."""
    from forethought.controllers.policy import RandomPolicy

    def broken(self, x, t):
        raise error

    monkeypatch.setattr(RandomPolicy, "act", broken)
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-video"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert f"{type(error).__name__}: " in err
    assert err.strip().splitlines()[-1].startswith("forethought run: internal error: this is a bug in forethought")


@pytest.mark.parametrize("name", shipped_experiments())
def test_every_shipped_experiment_builds_and_runs_two_steps(name):
    """Robot, task (with its goal), model and controller of each shipped experiment, and two steps of
    its first policy with the first condition set on robot and model, judged by the goal."""
    import dataclasses

    from forethought.robots.trial import rollout
    from forethought.scripts.experiment import build_parts
    from forethought.scripts.run import make_cost

    experiment = load_experiment(name)
    parts = build_parts(experiment)
    task = dataclasses.replace(parts.task, horizon=2)
    with parts.robot as robot:
        task.apply(0, robot, [parts.model] if parts.model is not None else [])
        cost = make_cost(experiment, robot, task.conditions[0])
        trial = rollout(robot, parts.controller.policy(0), 2, seed=0, cost=cost)
    assert trial.states.shape == (3, robot.spec.n) and np.all(np.isfinite(trial.states))
    assert experiment.task.goal is not None, "every shipped experiment states its goal"
    judgement = task.judge(trial, 0)
    assert judgement is not None and np.isfinite(judgement.value)


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("list", "run", "bench"):
        assert command in out


def test_a_stopped_run_keeps_the_summary_of_its_trials(tmp_path, monkeypatch, capsys):
    import json

    from forethought.scripts import experiment as experiment_module

    make_controller = experiment_module.make_controller

    def stopped_at_the_second_update(experiment, robot, task, model=None):
        controller = make_controller(experiment, robot, task, model)
        updates = []

        def update(trials):
            updates.append(trials)
            if len(updates) == 2:
                raise KeyboardInterrupt
            return {"measured": 1.0}

        controller.update = update
        return controller

    monkeypatch.setattr(experiment_module, "make_controller", stopped_at_the_second_update)
    path = tmp_path / "stop.yaml"
    path.write_text(GOOD.replace("iterations: 1", "iterations: 4"))
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-video"]) == 130
    err = capsys.readouterr().err
    assert "stopped after 2 trials" in err and err.rstrip().endswith("forethought run: interrupted")
    (folder,) = (tmp_path / "runs").glob("stop-*")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["complete"] is False and summary["trials"] == 2
    assert len(summary["learning_curve"]) == 2 and summary["diagnostics"][0]["measured"] == 1.0
    assert len(list((folder / "trials").glob("*.h5"))) == 2 and (folder / "trajectories.png").is_file()


def test_summary_splits_each_trials_cost_by_term(tmp_path):
    import json

    path = tmp_path / "terms.yaml"
    path.write_text(
        GOOD.replace("iterations: 1", "iterations: 2, samples: 2").replace(
            "task: {horizon: 5}",
            "task:\n  horizon: 5\n  cost:\n    terms:\n"
            "      - {type: state, weights: {pole: 1.0}, target: {pole: 3.14}, final_weight: 10.0}\n"
            "      - {type: action, weights: 0.1}\n",
        )
    )
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-video"]) == 0
    (folder,) = (tmp_path / "runs").glob("terms-*")
    summary = json.loads((folder / "summary.json").read_text())
    terms = summary["cost_terms"]
    assert terms["terms"] == ["0 state pole", "1 action"]
    totals = [sum(parts) for parts in terms["per_trial"]]
    assert np.allclose(totals, np.ravel(summary["learning_curve"]), rtol=1e-12)
    assert all(parts[1] > 0 for parts in terms["per_trial"]) and (folder / "cost_terms.png").is_file()
