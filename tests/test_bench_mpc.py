"""`bench mpc`'s floor: it counts what a planner rolls through the ensemble in one action."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forethought.controllers.samplers import make_planner
from forethought.models.ensemble import EnsembleConfig, EnsembleModel
from forethought.scripts.bench_mpc import network_floor_ms



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
    rate = 1e6  # multiply-adds per second
    floor = network_floor_ms(planner, dynamics, np.zeros(2), rate)
    # Features (p, v, f, 1) -> 16 -> 16 -> mean and log-variance of 2 states.
    per_step = 4 * 16 + 16 * 16 + 16 * 4
    assert floor == pytest.approx(1e3 * (2 * 10 * 3 * 4) * per_step / rate)
    assert planner.dynamics is dynamics  # the counting wrapper is gone again
