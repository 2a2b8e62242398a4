"""dm_control suite tasks behind the Robot interface."""

import numpy as np
import pytest

from forethought.controllers.policy import RandomPolicy
from forethought.robots.robot import ActionError
from forethought.robots.trial import rollout
from forethought.sim.dmc_robot import DmControlRobot, dmc_task_names


@pytest.mark.parametrize("task", ["cartpole:swingup", "reacher:easy", "walker:walk"])
def test_suite_tasks_run_reproducibly(task):
    trials = []
    for _ in range(2):
        with DmControlRobot(task) as robot:
            cost = lambda x, u: robot.last_cost if u is not None else float("nan")  # noqa: E731
            trials.append(rollout(robot, RandomPolicy(robot.spec, seed=1), 15, seed=4, cost=cost))
    a, b = trials
    assert a.states.shape == (16, len(a.state_names))
    np.testing.assert_array_equal(a.states, b.states)
    assert np.all(a.costs[:-1] <= 0.0) and np.isnan(a.costs[-1])  # cost = -reward, rewards in [0, 1]
    assert a.dt > 0
    np.testing.assert_allclose(a.timestamps, a.dt * np.arange(16), rtol=1e-9)  # simulated time


def test_state_names_follow_the_observation_order():
    with DmControlRobot("cartpole:balance") as robot:
        assert robot.spec.state_names == ("position:0", "position:1", "position:2", "velocity:0", "velocity:1")
        with pytest.raises(ActionError):
            robot.step(np.zeros(2))


def test_unknown_task_is_a_clear_error():
    assert "cartpole:swingup" in dmc_task_names()
    with pytest.raises(ValueError, match="unknown dm_control task 'cartpole:fly'"):
        DmControlRobot("cartpole:fly")


@pytest.mark.parametrize("task", ["cartpole:swingup", "reacher:easy", "walker:walk"])
def test_forethought_run_logs_a_seeded_random_trial(task, tmp_path, capsys):
    from forethought.robots.trial_log import load_trials
    from forethought.scripts.cli import main

    runs = []
    for out in ("a", "b"):
        assert main(["run", f"dmc:{task}", "--horizon", "8", "--no-video", "--seed", "3", "--out", str(tmp_path / out)]) == 0
        assert "update after iteration 1/1: done in " in capsys.readouterr().err
        trials, problems = load_trials(sorted((tmp_path / out).glob("*/trials/*.h5")))
        assert not problems and len(trials) == 1
        runs.append(trials[0])
    a, b = runs
    assert a.actions.shape[0] == 8 and a.metadata["controller"] == "random"
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.actions, b.actions)
