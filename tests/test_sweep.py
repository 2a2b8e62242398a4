"""`forethought sweep`: seeds x settings on a real local Ray, run folders, the summary, failures, resuming.

One local Ray (2 CPUs) serves the whole module: its start-up is the slow part on two cores. The
runs are the IK reach on the simulated arm with short trials (seconds each).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from forethought.robots.config import ConfigError
from forethought.scripts.bench_learning import learning_over_seeds
from forethought.scripts.cli import main
from forethought.scripts.sweep import execute, plan_sweep
from forethought.scripts.sweep_grid import parse_seeds, parse_set, set_key
from forethought.scripts.sweep_run import RECORD
from forethought.scripts.sweep_summary import distribution
from test_resume import PILCO  # a learning run of seconds (three PILCO iterations)

pytestmark = pytest.mark.xdist_group("ray")  # one Ray at a time on the machine (Makefile)

EXPERIMENT = "arm-reach-ik"
SHORT = {"task.horizon": 20}


@pytest.fixture(scope="module")
def swept(local_ray, tmp_path_factory):
    """2 settings (the IK controller's rate) x 2 seeds, 1 CPU each."""
    out = tmp_path_factory.mktemp("sweep") / "reach"
    plan = plan_sweep(EXPERIMENT, [0, 1], {"controller.rate": [0.2, 1.0]}, 1, out, fixed=SHORT)
    return plan, execute(plan)


def test_seeds_and_settings_parse():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds("5") == [5]
    for bad in ("3-1", "a", "1,1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    assert parse_set(["controller.horizon=20,30", "task.conditions.0.target=[0.2, 0.0, 0.1],[0.1, 0.1, 0.1]"]) == {
        "controller.horizon": [20, 30],
        "task.conditions.0.target": [[0.2, 0.0, 0.1], [0.1, 0.1, 0.1]],
    }
    with pytest.raises(ConfigError, match="loop.seed"):
        parse_set(["loop.seed=1,2"])
    data = {"task": {"conditions": [{"target": [0, 0, 0]}]}}
    set_key(data, "task.conditions.0.target", [1, 2, 3])
    assert data["task"]["conditions"][0]["target"] == [1, 2, 3]


def test_distribution_has_quartiles_and_a_bootstrap_interval_of_the_median():
    values = [3, 4, 4, 5, 9, 2, 6, 4]
    d = distribution(values)
    assert d["n"] == 8 and d["median"] == np.median(values)
    assert (d["q25"], d["q75"]) == tuple(np.percentile(values, [25, 75]))
    assert min(values) <= d["ci95"][0] <= d["median"] <= d["ci95"][1] <= max(values)
    assert distribution(values) == d  # seeded: the same values, the same interval
    assert distribution([]) == {"n": 0, "median": None, "q25": None, "q75": None, "ci95": None}
    assert distribution([7])["ci95"] is None


def test_bad_set_key_is_one_line_and_exit_2(capsys):
    assert main(["sweep", EXPERIMENT, "--seeds", "0-1", "--set", "controller.gian=1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "controller.gian" in err and "unknown key 'gian'" in err


def test_sweep_writes_a_run_folder_per_run_and_a_summary(swept):
    plan, result = swept
    assert result.ran == 4 and [r["status"] for r in result.records] == ["done"] * 4
    for spec in plan.runs():
        folder = spec.folder
        assert os.path.isfile(f"{folder}/summary.json") and os.path.isfile(f"{folder}/run.log")
        assert len(os.listdir(f"{folder}/trials")) == 3  # the reach's three conditions
        assert json.loads(open(f"{folder}/{RECORD}").read())["seed"] == spec.seed
    names = [s["name"] for s in result.summary["settings"]]
    assert names == ["controller.rate=0.2", "controller.rate=1.0"]
    for setting in result.summary["settings"]:
        runs = [r for r in result.records if r["setting"] == setting["name"]]
        reached = [r["first_success_iteration"] for r in runs if r["first_success_iteration"] is not None]
        assert setting["finished"] == 2 and setting["successes"] == len(reached)
        assert setting["success_rate"] == len(reached) / 2
        assert setting["iterations_to_success"]["n"] == len(reached)
        assert setting["final_cost"]["median"] == np.median([r["final_cost"] for r in runs])
    on_disk = json.loads((plan.out / "sweep.json").read_text())
    assert on_disk["settings"] == result.summary["settings"] and on_disk["seeds"] == [0, 1]
    table = (plan.out / "sweep.md").read_text()
    assert all(f"| {name} |" in table for name in names)
    assert len((plan.out / "sweep.csv").read_text().splitlines()) == 3
    assert (plan.out / "learning_curves.png").stat().st_size > 1000
    assert (plan.out / "success_rate.png").stat().st_size > 1000


def test_a_second_invocation_reruns_only_unfinished_runs(swept):
    plan, _ = swept
    specs = plan.runs()
    stamps = {s.folder: os.stat(f"{s.folder}/summary.json").st_mtime_ns for s in specs}
    os.remove(f"{specs[1].folder}/{RECORD}")  # as a run cut off before it finished leaves it
    again = execute(plan)
    assert again.ran == 1 and [r["status"] for r in again.records] == ["done"] * 4
    for spec in specs:
        now = os.stat(f"{spec.folder}/summary.json").st_mtime_ns
        assert (now != stamps[spec.folder]) == (spec is specs[1])
    assert again.records[1]["final_cost"] == pytest.approx(swept[1].records[1]["final_cost"])


def test_a_run_that_fails_is_reported_and_the_others_finish(local_ray, tmp_path, capsys):
    # An initial joint speed of 1e9 rad/s passes validation; the simulation gives up at its first step.
    out = tmp_path / "unstable"
    code = main(["sweep", EXPERIMENT, "--seeds", "0", "--set", "robot.init_qvel_std=0,1.0e+9",
                 "--set", "task.horizon=20", "--out", str(out)])
    assert code == 1
    summary = json.loads((out / "sweep.json").read_text())
    fine, broken = summary["settings"]
    assert fine["finished"] == 1 and not fine["failed"]
    assert broken["finished"] == 0 and broken["failed"][0]["error"].startswith("SimulationError")
    assert "SimulationError" in capsys.readouterr().err
    assert "SimulationError" in (out / "sweep.md").read_text()
    assert any(p.name == "error.txt" for p in out.rglob("error.txt"))


def test_learning_benchmarks_run_their_seeds_as_a_sweep(local_ray):
    runs, setting = learning_over_seeds(EXPERIMENT, [0, 1], 1, fixed=SHORT)
    assert len(runs) == 2 and setting["runs"] == 2
    reached = [r.first_success for r in runs if r.first_success is not None]
    assert setting["successes"] == len(reached) and setting["trials_to_success"]["n"] == len(reached)


def test_only_learning_benchmarks_take_seeds(capsys):
    assert main(["bench", "sim", "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "gps, learning, mpc, pilco" in err


def test_a_finished_run_of_another_experiment_is_refused(swept):
    plan, _ = swept
    other = plan_sweep(EXPERIMENT, [0], {"controller.rate": [0.2]}, 1, plan.out, fixed={"task.horizon": 30})
    with pytest.raises(ConfigError, match="another experiment"):
        execute(other)


def test_a_run_cut_off_after_a_checkpoint_goes_on_from_it(local_ray, tmp_path):
    """A learning run whose sweep was stopped after its second iteration's checkpoint: the sweep's
    next invocation resumes it (`forethought run --resume`), and it ends as it did uninterrupted."""
    import yaml

    from forethought.scripts.checkpoint import load

    path = tmp_path / "pilco-resume.yaml"
    path.write_text(yaml.safe_dump(PILCO))
    plan = plan_sweep(str(path), [1], {}, 1, tmp_path / "sweep")
    first = execute(plan).records[0]
    assert first["status"] == "done" and not first["resumed"]
    folder = plan.runs()[0].folder
    assert load(folder)["trials"] == 2
    # What a stop during the last iteration leaves: no record, no final summary, a partial trial.
    for name in (RECORD, "summary.json"):
        os.remove(f"{folder}/{name}")
    os.replace(f"{folder}/trials/trial_0002.h5", f"{folder}/trials/trial_0002.partial.h5")
    again = execute(plan).records[0]
    assert again["status"] == "done" and again["resumed"]
    assert again["learning_curve"] == first["learning_curve"]
    assert os.listdir(f"{folder}/interrupted/1") == ["trial_0002.partial.h5"]
