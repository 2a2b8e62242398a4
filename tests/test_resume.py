"""Runs that resume: a run killed after an iteration and resumed with `forethought run --resume` ends
with the trials of a run that was not interrupted, bit for bit (same seed, same thread count)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from forethought.robots.trial_log_read import load_trial
from forethought.scripts import checkpoint
from forethought.scripts.cli import main
from forethought.scripts.experiment import experiment_from_data, load_experiment
from forethought.scripts.run import run_experiment

# PILCO on the pendulum, small enough for seconds per iteration: three iterations of 15 steps.
PILCO = {
    "name": "pilco-resume",
    "robot": {"scene": "pendulum"},
    "task": {
        "horizon": 15,
        "cost": {"terms": [{"type": "saturating", "weights": {"pole": 1.0}, "target": {"pole": 3.141592653589793},
                            "angles": ["pole"], "sigma": 0.25}]},
        "goal": {"type": "state_distance", "states": ["pole"], "target": {"pole": 3.141592653589793},
                 "angles": ["pole"], "within": 0.1, "at": "final", "seconds": 0.5},
    },
    "model": {"type": "gp", "angle_states": ["pole"], "restarts": 0},
    "controller": {"type": "pilco", "start": {"mean": [0, 0], "std": 0.1}, "policy": {"kind": "rbf", "basis": 5},
                   "optimiser": {"max_iter": 10}},
    "loop": {"iterations": 3, "samples": 1, "seed": 3, "video": False},
}


def trials_of(folder: Path) -> list:
    return [load_trial(p) for p in sorted((folder / "trials").glob("trial_*.h5"))]


def assert_same_trials(a: Path, b: Path) -> None:
    """Every trial's states, actions and costs equal bit for bit, and its place in the loop."""
    ta, tb = trials_of(a), trials_of(b)
    assert len(ta) == len(tb) > 0
    for x, y in zip(ta, tb):
        for name in ("states", "actions", "costs"):
            assert np.array_equal(getattr(x, name), getattr(y, name), equal_nan=True), name
        for key in ("iteration", "condition", "sample", "goal"):
            assert x.metadata.get(key) == y.metadata.get(key), key


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "forethought.scripts.cli", "run", *args]


def test_a_run_killed_after_a_checkpoint_and_resumed_ends_with_the_uninterrupted_trials(tmp_path):
    path = tmp_path / "pilco-resume.yaml"
    path.write_text(yaml.safe_dump(PILCO))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    whole = subprocess.run(cli(str(path), "--out", str(tmp_path / "whole"), "--threads", "1", "--no-video"),
                           env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(cli(str(path), "--out", str(out), "--threads", "1", "--no-video"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a timing assertion
        while not list(out.glob("*/checkpoint.pt")):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (folder,) = out.iterdir()
    state = checkpoint.load(folder)
    # Killed within moments of the first checkpoint: a second one would need a whole iteration.
    assert state["iterations"] in (1, 2) and state["trials"] == state["iterations"]
    assert not (folder / "summary.json").exists()
    logged_before = {p.name for p in (folder / "trials").iterdir()}

    resumed = subprocess.run(cli("--resume", str(folder), "--no-video"), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from iteration {state['iterations'] + 1}" in resumed.stderr
    (done,) = (tmp_path / "whole").iterdir()
    assert_same_trials(done, folder)
    summary_a, summary_b = (yaml.safe_load((f / "summary.json").read_text()) for f in (done, folder))
    assert summary_a["learning_curve"] == summary_b["learning_curve"] and summary_b["complete"]
    # Whatever the killed iteration had logged is kept aside, not reused.
    aside = {p.name for p in (folder / "interrupted").rglob("*")} if (folder / "interrupted").exists() else set()
    assert logged_before - {f"trial_{i:04d}.h5" for i in range(state["trials"])} <= aside


class Stop(Exception):
    """Stands for a stop in the middle of a run (in process, where a SIGKILL cannot be survived)."""


def stop_after_checkpoints(monkeypatch, count: int) -> None:
    """Make the run stop right after its `count`-th checkpoint, as a kill there would."""
    real = checkpoint.save
    written = []

    def save(*args, **kwargs):
        path = real(*args, **kwargs)
        written.append(path)
        if len(written) == count:
            raise Stop
        return path

    monkeypatch.setattr(checkpoint, "save", save)


@pytest.mark.parametrize("name, changes", [
    ("arm-reach-gps", {"task.horizon": 12, "loop.iterations": 3, "loop.samples": 2}),
    ("arm-peg-mdgps", {"task.horizon": 12, "loop.iterations": 3, "loop.samples": 2, "controller.epochs": 3,
                       "controller.hidden": [8]}),
    # PETS: iCEM through an ensemble (its weights, normalisers, elites and generator in the checkpoint).
    ("arm-reach-pets", {"task.horizon": 6, "loop.iterations": 3, "model.members": 2, "model.hidden": [16],
                        "model.min_steps": 20, "model.max_steps": 40, "model.max_epochs": 5,
                        "controller.horizon": 3, "controller.population": 16, "controller.elites": 4,
                        "controller.iterations": 1, "controller.particles": 2}),
    # SAC and MBPO: networks, temperature, optimiser moments, replay (and model) buffer, generators.
    ("pendulum-swingup-sac", {"task.horizon": 10, "loop.iterations": 3, "controller.hidden": [16, 16],
                              "controller.batch_size": 32, "controller.updates_per_step": 2}),
    ("pendulum-swingup-mbpo", {"task.horizon": 10, "loop.iterations": 4, "model.members": 2, "model.hidden": [16],
                               "model.min_steps": 20, "model.max_steps": 40, "controller.hidden": [16, 16],
                               "controller.batch_size": 32, "controller.updates_per_step": 2,
                               "controller.rollout_batch": 5, "controller.rollout_schedule": [1, 3, 1, 3]}),
])
def test_learning_runs_resume_in_process_to_the_same_trials(name, changes, tmp_path, monkeypatch):
    data = load_experiment(name).as_dict()
    for key, value in {"loop.video": False, **changes}.items():
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[last] = value
    data["task"]["conditions"] = data["task"]["conditions"][:2]

    def experiment():
        return experiment_from_data(data, f"{name}.yaml")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = run_experiment(experiment(), tmp_path / "whole", render_video=False)
        stop_after_checkpoints(monkeypatch, 1)
        with pytest.raises(Stop):
            run_experiment(experiment(), tmp_path, render_video=False, folder=tmp_path / "stopped")
        monkeypatch.undo()
        assert checkpoint.load(tmp_path / "stopped")["iterations"] == 1
        run_experiment(experiment(), tmp_path, render_video=False, folder=tmp_path / "stopped", resume=True)
    finally:
        torch.set_num_threads(threads)
    assert_same_trials(whole.folder, tmp_path / "stopped")
    if name.startswith("pendulum-swingup-"):  # and the policy the last update left, weight for weight
        from forethought.controllers.nn_policy import POLICY_FILE, MLPPolicy

        a, b = (MLPPolicy.load(f / "models" / POLICY_FILE).net.state_dict() for f in (whole.folder, tmp_path / "stopped"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_finished_run_and_a_folder_without_a_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["run", "--resume", str(tmp_path / "run")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(PILCO))
    (tmp_path / "run" / "summary.json").write_text('{"complete": true}')
    assert main(["run", "--resume", str(tmp_path / "run")]) == 2
    assert "has finished" in capsys.readouterr().err
    assert main(["run", "pendulum-swingup-pilco", "--resume", str(tmp_path / "run")]) == 2
    assert "drop pendulum-swingup-pilco" in capsys.readouterr().err
    (tmp_path / "run" / "summary.json").write_text('{"complete": false}')
    (tmp_path / "run" / checkpoint.FILE).write_bytes(b"not a checkpoint")
    assert main(["run", "--resume", str(tmp_path / "run")]) == 2
    assert "checkpoint.pt: not a readable checkpoint" in capsys.readouterr().err


def test_a_checkpoint_is_plain_data_and_tensors(tmp_path):
    """Every object in a checkpoint is rebuilt from data (weights_only=True reads it), and an object
    of a class outside the project is refused by name rather than pickled."""

    class Holder:
        checkpoint_attributes = ("gen", "arrays", "thing")

        def __init__(self, thing):
            self.gen = np.random.default_rng(5)
            self.arrays = {1: np.arange(3.0), "t": (torch.ones(2), np.float32(2.5))}
            self.thing = thing

    class Result:
        trials: list = []
        learning_curve: list = [[1.0]]
        successes: list = []
        goal_values: list = []
        diagnostics: list = [{}]
        model_errors: list = []

    holder = Holder(None)
    holder.gen.random(3)
    checkpoint.save(tmp_path, 1, Result(), None, holder)
    fresh = Holder(None)
    checkpoint.apply(checkpoint.load(tmp_path), Result(), None, fresh)
    assert fresh.gen.random() == holder.gen.random()
    assert np.array_equal(fresh.arrays[1], np.arange(3.0)) and fresh.arrays["t"][1] == np.float32(2.5)
    with pytest.raises(TypeError, match="controller.thing is a pathlib"):
        checkpoint.save(tmp_path, 1, Result(), None, Holder(Path(".")))
