"""The HDF5 trial log: exact round trips, atomic finishing, crash recovery, damaged files skipped."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from forethought.robots import trial_log
from forethought.robots.robot import RobotSpec
from forethought.robots.trial import Trial
from forethought.robots.trial_log import (
    TrialLogError,
    TrialWriter,
    load_trial,
    load_trials,
    partial_path,
    save_trial,
)

SPEC = RobotSpec("toy", ("q0", "q1", "d_q0"), ("u0", "u1"), [-1, -1], [1, 1], 0.002)


def synthetic_trial(T: int = 40, seed: int = 0, **meta) -> Trial:
    rng = np.random.default_rng(seed)
    costs = rng.random(T + 1)
    metadata = {"robot": "toy", "task": "reach", "controller": "random", "seed": seed, "created": "2025-01-01T00:00:00+00:00",
                "version": "0.1.0", "interventions": {"clipped": 3}, **meta}
    return Trial(rng.standard_normal((T + 1, 3)), rng.uniform(-1, 1, (T, 2)), np.arange(T + 1) * 0.002 + 1e-7 * rng.random(T + 1),
                 costs, SPEC.state_names, SPEC.action_names, SPEC.dt, metadata,
                 requested_actions=rng.uniform(-2, 2, (T, 2)))


def assert_same(a: Trial, b: Trial) -> None:
    for name in ("states", "actions", "requested_actions", "timestamps", "costs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.state_names, a.action_names, a.dt) == (b.state_names, b.action_names, b.dt)


def test_a_saved_trial_loads_back_exactly_and_reads_with_plain_h5py(tmp_path):
    trial = synthetic_trial()
    trial.costs[-1] = np.nan  # no terminal cost
    path = save_trial(trial, tmp_path / "trial_0000.h5")
    loaded = load_trial(path)
    assert_same(trial, loaded)
    assert loaded.metadata == trial.metadata and loaded.complete
    with h5py.File(path, "r") as f:
        assert f["states"].shape == (41, 3) and f["actions"].shape == f["requested_actions"].shape == (40, 2)
        assert f["timestamps"].shape == f["costs"].shape == (41,)
        assert list(f.attrs["state_names"]) == ["q0", "q1", "d_q0"] and f.attrs["dt"] == 0.002
        assert (f.attrs["robot"], f.attrs["task"], f.attrs["controller"], f.attrs["seed"]) == ("toy", "reach", "random", 0)
        assert f.attrs["complete"] and f.attrs["format_version"] == 2
        assert json.loads(f.attrs["metadata"])["interventions"] == {"clipped": 3}


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_trial(synthetic_trial(seed=1), tmp_path / "trial_0000.h5")

    def failing_fsync(fd):
        raise OSError("disk failed")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk failed"):
        save_trial(synthetic_trial(seed=2), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial_0000.h5"]
    assert_same(load_trial(path), synthetic_trial(seed=1))


def test_finishing_a_trial_replaces_the_partial_file_by_the_whole_trial(tmp_path):
    trial = synthetic_trial(T=25)
    path = tmp_path / "trials" / "trial_0003.h5"
    with TrialWriter(path, SPEC, {"task": "reach"}, x0=trial.states[0], flush_interval=0) as writer:
        for t in range(trial.horizon):
            writer.append(trial.states[t + 1], trial.actions[t], trial.timestamps[t + 1], trial.costs[t])
            if t == 10:
                assert partial_path(path).exists() and not path.exists()
                assert load_trial(partial_path(path)).horizon == 11
        writer.finish(trial)
    assert [p.name for p in path.parent.iterdir()] == ["trial_0003.h5"]
    loaded = load_trial(path)
    assert_same(trial, loaded)
    assert loaded.complete


def test_an_exception_keeps_every_logged_step_and_the_metadata_added_late(tmp_path):
    trial = synthetic_trial(T=30)
    meta = {"task": "reach", "seed": 7}
    path = tmp_path / "trial_0000.h5"
    with pytest.raises(RuntimeError, match="servo"):
        with TrialWriter(path, SPEC, meta, flush_interval=1.0) as writer:
            writer.start(trial.states[0])
            for t in range(17):
                writer.append(trial.states[t + 1], trial.actions[t], trial.timestamps[t + 1], trial.costs[t])
            meta["stopped"] = "servo 3"  # what a caller learns while the trial unwinds
            raise RuntimeError("servo 3 is not answering")
    assert not path.exists()
    loaded = load_trial(partial_path(path))
    assert not loaded.complete and loaded.horizon == 17
    np.testing.assert_array_equal(loaded.states, trial.states[:18])
    np.testing.assert_array_equal(loaded.actions, trial.actions[:17])
    np.testing.assert_array_equal(loaded.costs[:17], trial.costs[:17])
    assert np.isnan(loaded.costs[17])  # no terminal cost for an unfinished trial
    assert loaded.metadata["stopped"] == "servo 3" and loaded.metadata["seed"] == 7
    assert loaded.metadata["robot"] == "toy"


def test_a_partial_trial_without_its_first_state_starts_at_its_first_logged_state(tmp_path):
    trial = synthetic_trial(T=10)
    path = tmp_path / "trial_0000.h5"
    with TrialWriter(path, SPEC) as writer:
        for t in range(6):
            writer.append(trial.states[t + 1], trial.actions[t], trial.timestamps[t + 1], trial.costs[t])
    loaded = load_trial(partial_path(path))
    assert loaded.horizon == 5
    np.testing.assert_array_equal(loaded.states, trial.states[1:7])
    np.testing.assert_array_equal(loaded.actions, trial.actions[1:6])


def test_a_trial_in_progress_is_flushed_once_per_interval_and_readers_see_its_rows(tmp_path, monkeypatch, fake_clock):
    clock = fake_clock.install(trial_log)
    trial = synthetic_trial(T=30)
    path = tmp_path / "trial_0000.h5"
    with TrialWriter(path, SPEC, x0=trial.states[0], flush_interval=0.5) as writer:
        flushes = []  # steps on disk after each flush
        real_flush = writer.flush
        monkeypatch.setattr(writer, "flush", lambda: (real_flush(), flushes.append(writer.flushed_steps)))
        for t in range(10):  # all within one interval: buffered, not written
            writer.append(trial.states[t + 1], trial.actions[t], trial.timestamps[t + 1], trial.costs[t])
        assert flushes == [] and writer.flushed_steps == 0
        assert load_trial(partial_path(path)).horizon == 0
        clock.now += 0.5
        writer.append(trial.states[11], trial.actions[10], trial.timestamps[11], trial.costs[10])
        assert flushes == [11] and writer.flushed_steps == 11
        seen = load_trial(partial_path(path))
        assert seen.horizon == 11 and not seen.complete
        np.testing.assert_array_equal(seen.states, trial.states[:12])
        for t in range(11, 30):  # one flush per interval, however many steps it holds
            clock.now += 0.125
            writer.append(trial.states[t + 1], trial.actions[t], trial.timestamps[t + 1], trial.costs[t])
        assert flushes == [11, 15, 19, 23, 27]
    assert flushes == [11, 15, 19, 23, 27, 30]  # closing flushed the rest
    assert load_trial(partial_path(path)).horizon == 30


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from forethought.robots.robot import RobotSpec
    from forethought.robots.trial_log import TrialWriter

    path, pause, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    spec = RobotSpec("toy", ("q0", "q1", "d_q0"), ("u0", "u1"), [-1, -1], [1, 1], 0.002)
    def state(t):
        return np.array([np.sin(0.01 * t), np.cos(0.01 * t), 1e-3 * t])
    with TrialWriter(path, spec, {"task": "crash"}, x0=state(0), flush_interval=interval) as writer:
        flushed = 0
        for t in range(10**7):
            writer.append(state(t + 1), np.array([t, -t]) * 1e-6, 0.002 * (t + 1), 0.5 * t)
            if writer.flushed_steps != flushed:
                flushed = writer.flushed_steps
                print(flushed, flush=True)
            if pause:
                time.sleep(pause)
    """
)


@pytest.mark.parametrize("pause, interval", [(0.002, 0.1), (0.0, 0.0)], ids=["between-flushes", "while-flushing"])
def test_sigkill_mid_trial_leaves_every_flushed_step_readable(tmp_path, pause, interval):
    path = tmp_path / "trial_0000.h5"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(pause), str(interval)], stdout=subprocess.PIPE, text=True
    )
    try:
        reports = []
        deadline = time.monotonic() + 60
        while len(reports) < 5 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            reports.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(reports) == 5, "the writer never flushed"
    assert child.returncode == -signal.SIGKILL
    (trial,), problems = load_trials([tmp_path])
    assert problems == []
    assert not trial.complete and trial.horizon >= reports[-1]
    t = np.arange(trial.horizon + 1)
    expected = np.stack([np.sin(0.01 * t), np.cos(0.01 * t), 1e-3 * t], axis=1)
    np.testing.assert_array_equal(trial.states, expected)
    np.testing.assert_array_equal(trial.actions, np.stack([t[:-1], -t[:-1]], axis=1) * 1e-6)
    np.testing.assert_array_equal(trial.timestamps, 0.002 * t)
    np.testing.assert_array_equal(trial.costs[:-1], 0.5 * t[:-1])
    assert trial.metadata["task"] == "crash"


def test_damaged_files_are_reported_by_name_and_the_others_still_load(tmp_path):
    folder = tmp_path / "run" / "trials"
    good = [save_trial(synthetic_trial(seed=s), folder / f"trial_{s:04d}.h5") for s in range(3)]
    data = good[0].read_bytes()
    (folder / "trial_0010.h5").write_bytes(data[: len(data) // 2])
    (folder / "trial_0011.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "trial_0012.h5").write_bytes(b"")
    with h5py.File(folder / "trial_0013.h5", "w") as f:
        f["states"] = np.zeros((3, 3))
        f.attrs["format"] = "forethought.trial"
    trials, problems = load_trials([tmp_path / "run"])
    assert [t.metadata["seed"] for t in trials] == [0, 1, 2]
    for trial, seed in zip(trials, range(3)):
        assert_same(trial, synthetic_trial(seed=seed))
    assert len(problems) == 4
    for problem, name in zip(problems, ["trial_0010.h5", "trial_0011.h5", "trial_0012.h5", "trial_0013.h5"]):
        assert str(folder / name) in problem and "\n" not in problem
    assert "actions" in problems[3]
    with pytest.raises(TrialLogError, match="trial_0012.h5"):
        load_trial(folder / "trial_0012.h5")


def test_a_partial_file_left_beside_its_finished_trial_is_not_loaded_twice(tmp_path):
    trial = synthetic_trial(T=12)
    path = save_trial(trial, tmp_path / "trial_0000.h5")
    with TrialWriter(path, SPEC, x0=trial.states[0]) as writer:
        writer.append(trial.states[1], trial.actions[0], trial.timestamps[1], trial.costs[0])
    trials, problems = load_trials([path, partial_path(path)])
    assert len(trials) == 1 and trials[0].complete and problems == []


def test_a_missing_path_is_named():
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        load_trials(["/nonexistent/no_such_run"])


def test_a_step_of_the_wrong_shape_is_refused_and_the_logged_steps_stay(tmp_path):
    trial = synthetic_trial(T=5)
    path = tmp_path / "trial_0000.h5"
    with pytest.raises(ValueError, match=r"x_next \(3,\), u and requested \(2,\), got \(3,\), \(3,\) and \(3,\)"):
        with TrialWriter(path, SPEC, x0=trial.states[0]) as writer:
            writer.append(trial.states[1], trial.actions[0], trial.timestamps[1], trial.costs[0])
            writer.append(trial.states[2], np.zeros(3), trial.timestamps[2], trial.costs[1])
    loaded = load_trial(partial_path(path))
    assert loaded.horizon == 1
    np.testing.assert_array_equal(loaded.states, trial.states[:2])


# -- A partial file whose writer runs in another process --------------------------------------------
@pytest.mark.timeout(120, method="thread")
def test_a_trial_being_written_by_another_process_loads_its_flushed_steps(tmp_path):
    path = tmp_path / "trial_0000.h5"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "0.002", "0.05"], stdout=subprocess.PIPE, text=True
    )
    try:
        flushed = [int(child.stdout.readline()) for _ in range(3)][-1]
        (trial,), problems = load_trials([tmp_path])
        assert child.poll() is None, "the writer stopped while the trial was read"
    finally:
        child.kill()
        child.wait()
    assert problems == [] and not trial.complete and trial.horizon >= flushed
    assert trial.metadata["task"] == "crash"


def as_format_1(path):
    """Rewrite a trial file as format 1 had it: no requested_actions."""
    with h5py.File(path, "r+") as f:
        del f["requested_actions"]
        f.attrs["format_version"] = 1
    return path


def test_a_format_1_trial_reads_with_its_actions_as_the_requested_ones(tmp_path):
    trial = synthetic_trial()
    old = load_trial(as_format_1(save_trial(trial, tmp_path / "trial_0000.h5")))
    np.testing.assert_array_equal(old.actions, trial.actions)
    np.testing.assert_array_equal(old.requested_actions, trial.actions)
    assert old.complete and old.metadata == trial.metadata


def test_a_format_2_trial_without_requested_actions_is_refused_by_name(tmp_path):
    path = save_trial(synthetic_trial(), tmp_path / "trial_0000.h5")
    with h5py.File(path, "r+") as f:
        del f["requested_actions"]
    with pytest.raises(TrialLogError, match=f"^{path}: damaged trial log, missing dataset\\(s\\) requested_actions"):
        load_trial(path)


def test_a_partial_trial_keeps_the_requested_actions_of_its_flushed_steps(tmp_path):
    trial = synthetic_trial(T=20)
    path = tmp_path / "trial_0000.h5"
    with TrialWriter(path, SPEC, dict(trial.metadata), x0=trial.states[0], flush_interval=0) as writer:
        for t in range(12):
            writer.append(trial.states[t + 1], trial.actions[t], trial.timestamps[t + 1], trial.costs[t],
                          trial.requested_actions[t])
        writer.append(trial.states[13], trial.actions[12], trial.timestamps[13], trial.costs[12])  # none given
    partial = load_trial(partial_path(path))
    assert partial.horizon == 13 and not partial.complete
    np.testing.assert_array_equal(partial.requested_actions[:12], trial.requested_actions[:12])
    np.testing.assert_array_equal(partial.requested_actions[12], trial.actions[12])  # defaults to the applied one
    old = load_trial(as_format_1(partial_path(path)))
    np.testing.assert_array_equal(old.requested_actions, old.actions)
