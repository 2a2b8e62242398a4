"""An iteration's rollouts on Ray (`forethought run --workers N`): the samples x conditions of one
iteration run side by side on N Ray actors, each with its own robot, and come back in the loop's
order, so that the run logs, judges and learns from the very trials a serial run gives.

What makes them the same: each rollout's seed is its place in the run (the loop's scheme: the
trial's index), each condition is set afresh on the robot before its rollout (the task's `apply`),
and the policy of sample s is the condition's policy as the serial loop holds it before its s-th
trial. That holds for controllers that say so (`parallel_rollouts = True`: GPS, MDGPS), whose
policies draw their noise from a generator seeded at every reset by (seed, resets so far): the
policy of sample s is a copy reset s times. Ray is started as a sweep starts it (scripts/sweep.py
`start_ray`): a local Ray of its own with N CPUs, or the Ray this process has already started.
"""

from __future__ import annotations

import copy
from typing import Sequence

from forethought.robots.config import ConfigError
from forethought.robots.trial import Policy, Trial


class RolloutWorker:
    """A Ray actor's state: the experiment's robot, task and costs, built once (experiment: the
    resolved experiment, Experiment.as_dict(); threads: torch threads, those of the run)."""

    def __init__(self, experiment: dict, threads: int):
        from forethought.sim.gl_backend import choose_gl_backend

        choose_gl_backend()  # before mujoco is imported in this worker
        import torch

        from forethought.scripts.experiment import experiment_from_data, make_robot, make_task
        from forethought.scripts.run import make_cost

        torch.set_num_threads(threads)
        self.experiment = experiment_from_data(experiment, experiment.get("source") or experiment["name"])
        self.robot = make_robot(self.experiment.robot)
        self.task = make_task(self.experiment, self.robot)
        self.costs = [make_cost(self.experiment, self.robot, c) for c in self.task.conditions]

    def run(self, condition: int, policy: Policy, seed: int, metadata: dict) -> Trial:
        from forethought.robots.trial import rollout

        self.task.apply(condition, self.robot)
        return rollout(self.robot, policy, self.task.horizon, seed, self.costs[condition], metadata)


def check_workers(workers: int, controller) -> None:
    """ConfigError unless `controller` can run an iteration's rollouts side by side."""
    if workers < 1:
        raise ConfigError(f"--workers: expected at least 1, got {workers}")
    if not getattr(type(controller), "parallel_rollouts", False):
        raise ConfigError(f"--workers: {type(controller).__name__} cannot run its rollouts side by side "
                          "(gps and mdgps can)")


def policy_for_sample(policy: Policy, sample: int) -> Policy:
    """The condition's policy as the serial loop holds it before its trial `sample`: a copy reset
    `sample` times (rollout resets it once more)."""
    own = copy.deepcopy(policy)
    for _ in range(sample):
        own.reset()
    return own


class RayRollouts:
    """`workers` Ray actors (RolloutWorker) for one run; `run` takes an iteration's rollouts,
    [(condition, policy, seed, metadata)] in the loop's order, and returns their trials in it."""

    def __init__(self, experiment: dict, workers: int, threads: int):
        import ray

        from forethought.scripts.sweep import start_ray

        self.started = start_ray(None, workers)
        actor = ray.remote(RolloutWorker).options(num_cpus=1)
        self.actors = [actor.remote(experiment, threads) for _ in range(workers)]

    def run(self, rollouts: Sequence[tuple[int, Policy, int, dict]]) -> list[Trial]:
        import ray

        refs = [self.actors[i % len(self.actors)].run.remote(c, policy, seed, meta)
                for i, (c, policy, seed, meta) in enumerate(rollouts)]
        return ray.get(refs)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        if self.started:
            ray.shutdown()
