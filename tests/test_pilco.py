"""PILCO: the expected saturating cost, the policies, the controller's loop, and learning a pendulum swing-up."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forethought.controllers.controller import Task
from forethought.controllers.costs import build_cost
from forethought.controllers.pilco import (
    ExpectedCost,
    PilcoPolicy,
    build_pilco,
    expected_saturating_cost,
    predict_trajectory,
)
from forethought.controllers.rbf_policy import LinearPolicy, RBFPolicy
from forethought.models.moment_matching import augment_with_trig
from forethought.robots.config import ConfigError
from forethought.robots.robot import RobotSpec
from forethought.robots.trial import rollout
from forethought.sim.mujoco_robot import MujocoRobot

DT = torch.float64
CARTPOLE = RobotSpec("cartpole", ("cart", "pole", "d_cart", "d_pole"), ("force",), [-10.0], [10.0], 0.1)
SATURATING = {
    "terms": [
        {"type": "saturating", "weights": {"cart": 1.0, "pole": 0.36}, "target": {"pole": math.pi},
         "angles": ["pole"], "sigma": 0.25}
    ]
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian(D: int, seed: int, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(1, D, dtype=DT, generator=g)
    A = torch.randn(D, D, dtype=DT, generator=g) * scale
    return mean, (A @ A.T + 1e-4 * torch.eye(D, dtype=DT))[None]


# -- the expected saturating cost ----------------------------------------------------------------------


def test_expected_cost_of_a_point_is_the_cost_itself():
    """Same definition as controllers.costs: with no spread the expectation is the cost of the mean."""
    cost = build_cost(SATURATING, CARTPOLE)
    expected = ExpectedCost(cost, CARTPOLE.state_names, CARTPOLE.state_names, horizon=40)
    rng = np.random.default_rng(0)
    for x in rng.normal(0.0, 2.0, (5, 4)):
        value = expected(torch.as_tensor(x).reshape(1, 4), torch.zeros(1, 4, 4, dtype=DT), t=1)
        assert float(value) == pytest.approx(cost(x, np.zeros(1)), abs=1e-12)


def test_expected_cost_matches_monte_carlo_without_angles():
    weights, target = torch.tensor([1.0, 0.5, 2.0], dtype=DT), torch.tensor([0.2, -0.1, 0.0], dtype=DT)
    angle = torch.zeros(3, dtype=torch.bool)
    for seed in range(3):
        mean, cov = gaussian(3, seed)
        mean = 0.3 * mean
        value = expected_saturating_cost(mean, cov, weights, target, angle, sigma=0.5)
        sobol = torch.quasirandom.SobolEngine(3, scramble=True, seed=seed).draw(2**18, dtype=DT).clamp(1e-12, 1 - 1e-12)
        x = mean[0] + torch.special.ndtri(sobol) @ torch.linalg.cholesky(cov[0]).T
        d2 = ((x - target) ** 2 * weights).sum(-1)
        mc = (1 - torch.exp(-d2 / (2 * 0.5**2))).mean()
        assert float(value) == pytest.approx(float(mc), abs=1e-3)


def test_expected_cost_with_angles_is_exact_in_the_chord_moments():
    """For an angle the cost is quadratic in (sin, cos): with a narrow spread it matches Monte Carlo closely."""
    weights, target = torch.tensor([0.36], dtype=DT), torch.tensor([math.pi], dtype=DT)
    mean, cov = torch.tensor([[2.9]], dtype=DT), torch.tensor([[[0.01]]], dtype=DT)
    value = expected_saturating_cost(mean, cov, weights, target, torch.tensor([True]), sigma=0.25)
    theta = mean[0, 0] + 0.1 * torch.special.ndtri(torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=DT))
    mc = (1 - torch.exp(-0.36 * 2 * (1 - torch.cos(theta - math.pi)) / (2 * 0.25**2))).mean()
    assert float(value) == pytest.approx(float(mc), abs=2e-3)


def test_gradcheck_expected_cost():
    weights, target = torch.tensor([1.0, 0.36], dtype=DT), torch.tensor([0.1, math.pi], dtype=DT)
    angle = torch.tensor([False, True])
    mean, cov = gaussian(2, 4)
    mean = mean.requires_grad_(True)
    root = torch.linalg.cholesky(cov[0]).requires_grad_(True)

    def f(m, r):
        return expected_saturating_cost(m, (r @ r.T)[None], weights, target, angle, sigma=0.5)

    assert torch.autograd.gradcheck(f, (mean, root), eps=1e-6, atol=1e-7)


def test_cost_weights_and_ramps_follow_the_cost_definition():
    cfg = {"terms": [dict(SATURATING["terms"][0], weight=2.0, final_weight=5.0, ramp="linear")]}
    expected = ExpectedCost(build_cost(cfg, CARTPOLE), CARTPOLE.state_names, CARTPOLE.state_names, horizon=10)
    mean, cov = torch.zeros(1, 4, dtype=DT), 0.01 * torch.eye(4, dtype=DT)[None]
    base = float(ExpectedCost(build_cost(SATURATING, CARTPOLE), CARTPOLE.state_names, CARTPOLE.state_names, 10)(mean, cov, 1))
    assert float(expected(mean, cov, 4)) == pytest.approx(2.0 * 5 / 10 * base)  # running: weight (t+1)/T
    assert float(expected(mean, cov, 10)) == pytest.approx(5.0 * base)  # t = H: the final weight


def test_expected_cost_from_augmented_moments_is_the_same():
    """A rollout hands the cost the state's (sin, cos) moments it has already matched: same value."""
    cfg = {"terms": [dict(SATURATING["terms"][0], weight=2.0, final_weight=5.0, ramp="linear")]}
    expected = ExpectedCost(build_cost(cfg, CARTPOLE), CARTPOLE.state_names, CARTPOLE.state_names, horizon=10)
    angles = torch.tensor([1])
    for seed in range(3):
        mean, cov = gaussian(4, seed)
        aug_mean, aug_cov = augment_with_trig(mean, cov, angles)
        for t in (3, 10):
            assert float(expected.augmented(aug_mean, aug_cov, angles, t)) == pytest.approx(float(expected(mean, cov, t)), abs=1e-12)
    with pytest.raises(ValueError, match="not among the augmented"):
        expected.augmented(mean, cov, torch.tensor([], dtype=torch.long), 1)


def test_pilco_rejects_costs_it_cannot_take_in_expectation():
    cfg = {"terms": [{"type": "state", "weights": {"cart": 1.0}}]}
    with pytest.raises(ConfigError, match="saturating terms only"):
        ExpectedCost(build_cost(cfg, CARTPOLE), CARTPOLE.state_names, CARTPOLE.state_names, 40)
    with pytest.raises(ConfigError, match="does not cover"):
        ExpectedCost(build_cost(SATURATING, CARTPOLE), CARTPOLE.state_names, ("pole", "d_pole"), 40)


# -- policies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rbf", "linear"])
def test_policy_moments_of_a_point_are_its_action(kind):
    low, high = [-10.0], [10.0]
    policy = RBFPolicy(4, [1], low, high, basis=6, seed=1) if kind == "rbf" else LinearPolicy(4, [1], low, high, seed=1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, dtype=DT, generator=torch.Generator().manual_seed(2)))
    x = np.array([0.1, 2.0, -0.5, 1.0])
    with torch.no_grad():
        mean, cov, cross = policy.moments(torch.as_tensor(x).reshape(1, 4), torch.zeros(1, 4, 4, dtype=DT))
    assert float(mean[0, 0]) == pytest.approx(float(policy.act(x)[0]), abs=1e-12)
    assert float(cov.abs().max()) < 1e-12 and float(cross.abs().max()) < 1e-12
    assert -10.0 <= float(policy.act(x)[0]) <= 10.0


@pytest.mark.parametrize("kind", ["rbf", "linear"])
def test_gradcheck_policy_moments(kind):
    cls = RBFPolicy if kind == "rbf" else LinearPolicy
    policy = cls(3, [0], [-2.0, -1.0], [2.0, 3.0], seed=3)
    mean, cov = gaussian(3, 5)
    mean = mean.requires_grad_(True)
    root = torch.linalg.cholesky(cov[0]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m, r: policy.moments(m, (r @ r.T)[None]), (mean, root), eps=1e-6, atol=1e-7)


def test_policy_wrapper_selects_states_and_holds_the_other_actions():
    spec = RobotSpec("arm", ("a", "b", "c"), ("u0", "u1"), [-1.0, -2.0], [1.0, 2.0], 0.1)
    inner = LinearPolicy(2, [], [-1.0], [1.0], seed=0)
    with torch.no_grad():
        inner.weight.copy_(torch.tensor([[1.0, 0.0]], dtype=DT))
    wrapped = PilcoPolicy(spec, state_index=[2, 0], action_index=[0], hold=np.array([0.0, 0.7]), inner=inner)
    u = wrapped.act(np.array([0.3, 9.0, 0.5]), 0)
    assert u[1] == 0.7 and u[0] == pytest.approx(float(inner.act(np.array([0.5, 0.3]))[0]))
    random = PilcoPolicy(spec, [0, 1, 2], [0, 1], np.zeros(2), None, seed=4)
    first = [random.act(np.zeros(3), t) for t in range(5)]
    random.reset()
    assert np.array_equal(first, [random.act(np.zeros(3), t) for t in range(5)])  # seeded
    assert all(-1 <= u[0] <= 1 and -2 <= u[1] <= 2 for u in first)


# -- the controller -----------------------------------------------------------------------------------------


def pendulum_gp(robot, **settings):
    from forethought.models.registry import build_model, model_settings

    return build_model("gp", model_settings("gp", {"angle_states": ["pole"], "restarts": 0, **settings}, "model:"),
                       robot.spec)


def test_controller_config_errors_name_the_key():
    robot = MujocoRobot("pendulum")
    task = Task(horizon=10, cost={"terms": [{"type": "saturating", "weights": {"pole": 1.0}, "target": {"pole": math.pi},
                                              "angles": ["pole"], "sigma": 0.5}]}, scene="pendulum")
    model = pendulum_gp(robot)
    with pytest.raises(ConfigError, match="unknown key 'polcy'"):
        build_pilco({"polcy": {}}, robot, task, model)
    with pytest.raises(ConfigError, match="unknown policy 'mlp'"):
        build_pilco({"policy": {"kind": "mlp"}}, robot, task, model)
    with pytest.raises(ConfigError, match="first_restarts must not be negative"):
        build_pilco({"optimiser": {"first_restarts": -1}}, robot, task, model)
    with pytest.raises(ConfigError, match="model.states: unknown names"):
        pendulum_gp(robot, states=["elbow"])
    with pytest.raises(ConfigError, match="start: mean and std need 2 entries"):
        build_pilco({"start": {"mean": [0.0], "std": 0.1}}, robot, task, model)
    with pytest.raises(ConfigError, match="start: mean and std must be finite"):
        build_pilco({"start": {"mean": [0.0, float("nan")], "std": 0.1}}, robot, task, model)


def test_controller_loop_random_then_optimised():
    from forethought.scripts.experiment import build_parts, load_experiment

    experiment = load_experiment("pendulum-swingup-pilco")
    experiment.loop.seed = 3
    experiment.controller["optimiser"] = {**experiment.controller.get("optimiser", {}), "max_iter": 5}
    parts = build_parts(experiment)
    controller, model = parts.controller, parts.model
    first = controller.policy(0)
    assert first.inner is None  # before any update: uniform random actions
    cost = build_cost(parts.task.cost, parts.robot.spec, "pendulum")
    trial = rollout(parts.robot, first, parts.task.horizon, seed=0, cost=cost)
    assert model.fit([trial])["transitions"] == 40  # the experiment loop's refit, before the update
    info = controller.update([[trial]])
    assert info["predicted_cost"] <= info["predicted_cost_before"]
    assert controller.policy(0).inner is controller.policies[0]
    curve = controller.learning_curve
    assert len(curve["trial_cost"]) == 1 and len(curve["predicted_cost"]) == 1
    means, covs, costs = predict_trajectory(controller.model, controller.policies[0], *controller.start_distribution(),
                                            horizon=5, cost=controller.costs[0])
    assert means.shape == (6, 1, 2) and covs.shape == (6, 1, 2, 2) and costs.shape == (5, 1)


def test_pilco_learns_the_pendulum_swing_up(tmp_path):
    """PILCO's pendulum (1 kg, 1 m, torque within 2.5 N m: it must swing up), the shipped experiment
    through the experiment loop: from one random trial, upright over the final second (its goal)
    within 3 trials, and not by the random trial."""
    from forethought.scripts.experiment import load_experiment
    from forethought.scripts.run import run_experiment

    experiment = load_experiment("pendulum-swingup-pilco")
    experiment.loop.iterations, experiment.loop.until_success = 3, True
    run = run_experiment(experiment, tmp_path, render_video=False)
    assert any(run.successes), f"not upright within 3 trials: final-second errors {run.goal_values}"
    assert not run.successes[0]  # the random trial did not do it by chance
