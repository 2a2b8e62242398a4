"""`forethought run --workers N`: an iteration's rollouts on Ray actors give the trials of the serial run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forethought.robots.config import ConfigError
from forethought.scripts.experiment import experiment_from_data, load_experiment
from forethought.scripts.run import run_experiment
from test_resume import assert_same_trials

pytestmark = pytest.mark.xdist_group("ray")  # one Ray at a time on the machine (Makefile)


def tiny(name: str, **changes) -> dict:
    """A shipped experiment cut down to two conditions, short trials and few iterations."""
    data = load_experiment(name).as_dict()
    data["task"]["horizon"] = 12
    data["task"]["conditions"] = data["task"]["conditions"][:2]
    data["loop"].update(iterations=3, samples=2, video=False)
    data["controller"].update(changes)
    return data


@pytest.mark.parametrize("name, changes", [("arm-reach-gps", {}), ("arm-peg-mdgps", {"epochs": 3, "hidden": [8]})])
def test_two_workers_give_the_trials_of_the_serial_run(local_ray, name, changes, tmp_path):
    data = tiny(name, **changes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_experiment(experiment_from_data(data, f"{name}.yaml"), tmp_path / "serial", render_video=False)
        parallel = run_experiment(experiment_from_data(data, f"{name}.yaml"), tmp_path / "parallel",
                                  render_video=False, workers=2)
    finally:
        torch.set_num_threads(threads)
    assert_same_trials(serial.folder, parallel.folder)
    assert serial.learning_curve == parallel.learning_curve
    # The samples of a condition differ (each its own noise), so the comparison above says something.
    first = serial.trials[:2]
    assert not np.array_equal(first[0].actions, first[1].actions)


def test_workers_are_refused_for_a_controller_whose_rollouts_depend_on_their_order(tmp_path):
    data = load_experiment("pendulum-swingup-pilco").as_dict()
    with pytest.raises(ConfigError, match="--workers: PilcoController"):
        run_experiment(experiment_from_data(data, "pilco.yaml"), tmp_path, render_video=False, workers=2)
