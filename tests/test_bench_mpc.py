"""`bench mpc`'s floor: it counts what a planner rolls through the ensemble in one action."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forethought.controllers.samplers import make_planner
from forethought.models.ensemble import EnsembleConfig, EnsembleModel
from forethought.scripts.bench_mpc import activation_floor_ms, network_floor_ms, particle_steps, plan_times


@pytest.fixture(scope="module")
def dynamics():
    rng = np.random.default_rng(0)
    x, u = rng.normal(size=(200, 2)), rng.normal(size=(200, 1))
    config = EnsembleConfig(members=2, hidden=[16, 16], max_epochs=2, min_steps=0, planning_dtype="float32")
    model = EnsembleModel(["p", "v"], ["f"], config)
    model.fit_arrays(x, u, 0.1 * np.tanh(x + u))
    return model.dynamics("tsinf")


def cost(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    return (X[:, 1:] ** 2).sum((1, 2))


def test_the_floor_is_every_particle_step_through_one_member(dynamics):
    planner = make_planner("cem", dynamics, cost, [-1.0], [1.0],
                           horizon=4, population=10, particles=3, iterations=2, elites=2)
    steps = particle_steps(planner, dynamics, np.zeros(2))
    assert steps == 2 * 10 * 3 * 4  # iterations x population x particles x horizon
    assert planner.dynamics is dynamics  # the counting wrapper is gone again
    rate = 1e6  # multiply-adds per second
    # Features (p, v, f, 1) -> 16 -> 16 -> mean and log-variance of 2 states.
    per_step = 4 * 16 + 16 * 16 + 16 * 4
    assert network_floor_ms(steps, dynamics, rate) == pytest.approx(1e3 * steps * per_step / rate)
    # One activation per hidden unit: 16 + 16 a particle-step.
    assert activation_floor_ms(steps, dynamics, rate) == pytest.approx(1e3 * steps * 32 / rate)


def test_each_plan_is_set_beside_the_better_peak_reading_around_it(dynamics):
    planner = make_planner("cem", dynamics, cost, [-1.0], [1.0],
                           horizon=4, population=10, particles=3, iterations=2, elites=2)
    readings = iter([5.0, 3.0, 9.0, 1.0, 2.0])
    times, rates = plan_times(planner, np.zeros((6, 2)), 4, probe=lambda: next(readings))
    # One reading before the first plan and one after each: plan i between readings i and i + 1.
    assert len(times) == 4 and rates == [5.0, 9.0, 9.0, 2.0]
    assert plan_times(planner, np.zeros((6, 2)), 2)[1] == []  # no probe, no readings
