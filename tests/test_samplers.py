"""Sampling planners on known systems: they reach goals, respect bounds, never choose NaN, repeat exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forethought.controllers import samplers
from forethought.controllers.samplers import (
    ICEMConfig,
    ICEMPlanner,
    MPPIConfig,
    SamplerConfig,
    StepDynamics,
    as_dynamics,
    colored_noise,
    make_planner,
)
from forethought.models.dynamics_model import MissingCapability


DT = 0.1


def point_mass(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """2-D double integrator: state (px, py, vx, vy), action = acceleration."""
    v = x[:, 2:] + DT * u
    return torch.cat([x[:, :2] + DT * v, v], dim=1)


def goal_cost(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    return (X[:, 1:, :2] ** 2).sum((1, 2)) + 0.1 * (X[:, 1:, 2:] ** 2).sum((1, 2)) + 0.01 * (U**2).sum((1, 2))


def run_mpc(planner, x0: np.ndarray, steps: int, step=point_mass) -> np.ndarray:
    x = x0.copy()
    U = np.zeros((planner.config.horizon, planner.m))
    for t in range(steps):
        plan = planner.plan(x, U, t)
        assert plan.U.shape == U.shape
        x = step(torch.tensor(x[None]), torch.tensor(plan.U[:1])).numpy()[0]
        U = np.concatenate([plan.U[1:], plan.U[-1:]])
    return x


SETTINGS = {
    "cem": dict(population=100, elites=10, iterations=4, particles=1),
    "icem": dict(particles=1),
    "mppi": dict(horizon=15, population=300, temperature=0.5, particles=1),
    "random_shooting": dict(population=400, particles=1),
}


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_planners_bring_a_point_mass_to_its_goal(kind):
    planner = make_planner(kind, StepDynamics(point_mass), goal_cost, [-1, -1], [1, 1], **SETTINGS[kind])
    x = run_mpc(planner, np.array([1.0, -0.6, 0.0, 0.0]), 60)
    tolerance = 0.08 if kind == "random_shooting" else 0.03
    assert np.linalg.norm(x[:2]) < tolerance, x
    assert np.linalg.norm(x[2:]) < 0.1, x


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_same_seed_same_plans(kind):
    def plans(seed):
        planner = make_planner(kind, StepDynamics(point_mass), goal_cost, [-1, -1], [1, 1], **SETTINGS[kind], seed=seed)
        U = np.zeros((planner.config.horizon, 2))
        return [planner.plan(np.array([1.0, 0.5, 0.0, 0.0]), U, t).U for t in range(3)]

    a, b, c = plans(0), plans(0), plans(1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def trap_dynamics(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """1-D integrator whose prediction is NaN for any action above 0.5 (a model that blew up)."""
    nxt = x + u
    return torch.where(u > 0.5, torch.full_like(nxt, math.nan), nxt)


def toward_one(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    return ((X[:, 1:, 0] - 1.0) ** 2).sum(1)


def nan_best_cost(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """NaN wherever the first action is negative, where the plain cost would be lowest."""
    cost = (U[:, :, 0] + 1.0).pow(2).sum(1)
    return torch.where(U[:, 0, 0] < 0.0, torch.full_like(cost, math.nan), cost)


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_nan_predictions_or_costs_never_become_the_chosen_action(kind):
    settings = {**SETTINGS[kind], "horizon": 5}
    # Predicted states are NaN above u = 0.5, though larger actions would reach the goal sooner.
    planner = make_planner(kind, StepDynamics(trap_dynamics), toward_one, [-1], [1], **settings)
    for t in range(4):
        plan = planner.plan(np.zeros(1), np.full((5, 1), 0.4), t)
        assert np.all(np.isfinite(plan.U)) and math.isfinite(plan.cost)
        assert plan.U[0, 0] <= 0.5 + 1e-6
    # A cost that is NaN exactly where it would otherwise be lowest.
    planner = make_planner(kind, StepDynamics(point_mass), nan_best_cost, [-1, -1], [1, 1], **{**settings, "seed": 3})
    for t in range(4):
        plan = planner.plan(np.zeros(4), np.full((5, 2), 0.2), t)
        assert plan.U[0, 0] >= 0.0 and math.isfinite(plan.cost)
    # Nothing finite at all: the plan falls back to U_init with an infinite cost.
    everything_nan = lambda X, U: torch.full((X.shape[0],), math.nan)  # noqa: E731
    planner = make_planner(kind, StepDynamics(point_mass), everything_nan, [-1, -1], [1, 1], **settings)
    U_init = np.full((5, 2), 0.25)
    plan = planner.plan(np.zeros(4), U_init, 0)
    assert plan.cost == math.inf and np.array_equal(plan.U, U_init)


def test_a_candidate_with_any_state_or_cost_not_finite_costs_inf_on_either_path():
    # The compiled pass on CPU float32 against the torch reductions other devices run.
    rng = np.random.default_rng(0)
    costs = rng.normal(size=300).astype(np.float32)
    states = rng.normal(size=(300, 64)).astype(np.float32)
    costs[[3, 4]] = [np.nan, -np.inf]
    states[10, 0], states[11, 63], states[12, 7], states[13, 5] = np.nan, np.inf, -np.inf, 3e38
    # A NaN with its sign bit set; the largest finite numbers of both signs and a subnormal stay finite.
    states.view(np.uint32)[14, 9] = 0xFFC00001
    big = np.finfo(np.float32).max
    states[15, 1], states[16, 2], states[17, 3] = big, -big, np.finfo(np.float32).smallest_subnormal
    c, X = torch.tensor(costs), torch.tensor(states)
    finite = torch.isfinite(c) & torch.isfinite(X.amax(dim=1)) & torch.isfinite(X.amin(dim=1))
    expected = torch.where(finite, c, torch.full_like(c, math.inf))
    assert samplers._worst_where_not_finite(costs, states) == int(finite.sum()) == 300 - 6
    assert torch.equal(torch.from_numpy(costs), expected)
    assert np.isinf(costs[[3, 4, 10, 11, 12, 14]]).all() and np.isfinite(costs[[13, 15, 16, 17]]).all()


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_plans_respect_bounds_and_warm_start_is_clipped(kind):
    low, high = np.array([-0.2, -0.1]), np.array([0.3, 0.05])
    planner = make_planner(kind, StepDynamics(point_mass), goal_cost, low, high, **SETTINGS[kind])
    U_init = np.tile([5.0, -5.0], (planner.config.horizon, 1))
    plan = planner.plan(np.array([3.0, 3.0, 0.0, 0.0]), U_init, 0)
    assert np.all(plan.U >= low - 1e-6) and np.all(plan.U <= high + 1e-6)


@pytest.mark.parametrize("kind", ["cem", "icem", "mppi"])
def test_time_budget_stops_before_an_iteration_that_would_overrun_it(kind, fake_clock):
    clock = fake_clock.install(samplers)

    def slow_step(x, u):
        clock.advance(0.002)  # 30 ms per iteration of 15 steps, on the planner's clock
        return point_mass(x, u)

    settings = {**SETTINGS[kind], "horizon": 15, "iterations": 50, "particles": 1, "time_budget_s": 0.1}
    planner = make_planner(kind, StepDynamics(slow_step), goal_cost, [-1, -1], [1, 1], **settings)
    planner.plan(np.ones(4), np.zeros((15, 2)), 0)
    # After 2 iterations (60 ms) a third fits in 100 ms; after 3 (90 ms) a fourth would not.
    assert planner.last_diagnostics["iterations"] == 3
    assert planner.last_diagnostics["plan_s"] == pytest.approx(0.09)
    planner.config.time_budget_s = 0.01  # shorter than one iteration: one always runs
    planner.plan(np.ones(4), np.zeros((15, 2)), 1)
    assert planner.last_diagnostics["iterations"] == 1


def test_population_times_particles_in_one_rollout():
    calls = []

    class Counting:
        device = torch.device("cpu")

        def rollout(self, x0, U, generator):
            calls.append(U.shape[0])
            return StepDynamics(point_mass).rollout(x0, U, generator)

    planner = make_planner("cem", Counting(), goal_cost, [-1, -1], [1, 1], population=30, elites=3, iterations=2,
                           particles=7)
    planner.plan(np.zeros(4), np.zeros((15, 2)), 0)
    assert calls == [210, 210]


def test_icem_population_shrinks_and_elites_carry_over():
    sizes = []

    class Counting:
        device = torch.device("cpu")

        def rollout(self, x0, U, generator):
            sizes.append(U.shape[0])
            return StepDynamics(point_mass).rollout(x0, U, generator)

    config = ICEMConfig(population=100, elites=10, iterations=3, particles=1, keep_elites=0.3, decay=1.25)
    planner = ICEMPlanner(Counting(), goal_cost, [-1, -1], [1, 1], config)
    planner.plan(np.ones(4), np.zeros((15, 2)), 0)
    # 100, then 80 + 3 kept elites, then 64 + 3 kept elites + the mean.
    assert sizes == [100, 83, 68]
    sizes.clear()
    planner.plan(np.ones(4), np.zeros((15, 2)), 1)
    assert sizes[0] == 103  # elites of the previous plan, shifted, join the first iteration


def test_colored_noise_is_unit_variance_and_smooth_for_beta_2():
    g = torch.Generator().manual_seed(0)
    white = colored_noise(0.0, (4000, 1, 30), g, "cpu")
    pink = colored_noise(2.0, (4000, 1, 30), g, "cpu")
    for noise in (white, pink):
        assert abs(float(noise.var()) - 1.0) < 0.1

    def lag1(z):
        return float((z[..., 1:] * z[..., :-1]).mean() / z.var())

    assert abs(lag1(white)) < 0.05
    assert lag1(pink) > 0.7


def test_bad_arguments_are_clear_errors():
    planner = make_planner("cem", StepDynamics(point_mass), goal_cost, [-1, -1], [1, 1], **SETTINGS["cem"])
    with pytest.raises(ValueError, match=r"U_init of shape \(15, 2\)"):
        planner.plan(np.zeros(4), np.zeros((10, 2)), 0)
    with pytest.raises(ValueError, match="x0 with NaN"):
        planner.plan(np.array([0.0, np.nan, 0.0, 0.0]), np.zeros((15, 2)), 0)
    with pytest.raises(ValueError, match="unknown planner 'cme'"):
        make_planner("cme", StepDynamics(point_mass), goal_cost, [-1], [1])
    with pytest.raises(ValueError, match="elites"):
        SamplerConfig(population=10, elites=20)
    with pytest.raises(ValueError, match="temperature"):
        MPPIConfig(temperature=0.0)
    with pytest.raises(MissingCapability, match="rollout"):
        as_dynamics(object())
