"""Guided policy search: the KL-constrained LQG update, step sizes, the NN policy, the controllers."""

import numpy as np
import pytest
import torch

from forethought.controllers.controller import Task
from forethought.controllers.costs import build_cost
from forethought.controllers.gps import MDGPSController, build_gps, build_mdgps
from forethought.controllers.kl_lqg import (
    DualSearchError,
    LinearGaussianGains,
    QuadraticCost,
    expected_cost,
    kl_constrained_update,
    lqg_step,
    policy_kl,
    sampled_cost,
    step_size_multiplier,
    trajectory_gaussians,
)
from forethought.controllers.nn_policy import MLPPolicy, MLPPolicyConfig, NNPolicy, build_nn_policy
from forethought.models.tvlg import GMMPrior, LinearGaussianDynamics, fit_tvlg
from forethought.robots.config import ConfigError
from forethought.robots.trial import Trial, rollout
from forethought.sim.mujoco_robot import MujocoRobot

T, N_STATE, N_ACTION = 20, 4, 2


def linear_system(seed: int = 0) -> LinearGaussianDynamics:
    rng = np.random.default_rng(seed)
    base = np.eye(N_STATE) + 0.1 * rng.standard_normal((N_STATE, N_STATE))
    gain = 0.5 * rng.standard_normal((N_STATE, N_ACTION))
    A = np.stack([base + 0.05 * np.sin(0.3 * t) * np.eye(N_STATE) for t in range(T)])
    B = np.stack([gain] * T)
    c = np.full((T, N_STATE), 0.1)
    Sigma = np.stack([0.05**2 * np.eye(N_STATE)] * T)
    return LinearGaussianDynamics(A, B, c, Sigma, np.full(N_STATE, 0.5), 0.01 * np.eye(N_STATE))


def quadratic_cost() -> QuadraticCost:
    d = N_STATE + N_ACTION
    H = np.zeros((T + 1, d, d))
    H[:, :N_STATE, :N_STATE] = np.eye(N_STATE)
    H[T, :N_STATE, :N_STATE] *= 10
    H[:T, N_STATE:, N_STATE:] = 0.1 * np.eye(N_ACTION)
    return QuadraticCost(H, np.zeros((T + 1, d)), np.zeros(T + 1))


def initial_gains(std: float = 1.0) -> LinearGaussianGains:
    return LinearGaussianGains(
        np.zeros((T, N_ACTION, N_STATE)), np.zeros((T, N_ACTION)), np.stack([std**2 * np.eye(N_ACTION)] * T)
    )


def sample(system: LinearGaussianDynamics, gains: LinearGaussianGains, trials: int, seed: int):
    """Trajectories of the controller on the true system: states (N, T+1, n), actions (N, T, m)."""
    rng = np.random.default_rng(seed)
    X = np.empty((trials, T + 1, N_STATE))
    U = np.empty((trials, T, N_ACTION))
    X[:, 0] = system.x0_mean + rng.standard_normal((trials, N_STATE)) @ np.linalg.cholesky(system.x0_cov).T
    for t in range(T):
        noise = rng.standard_normal((trials, N_ACTION)) @ np.linalg.cholesky(gains.C[t]).T
        U[:, t] = X[:, t] @ gains.K[t].T + gains.k[t] + noise
        process = rng.standard_normal((trials, N_STATE)) @ np.linalg.cholesky(system.Sigma[t]).T
        X[:, t + 1] = X[:, t] @ system.A[t].T + U[:, t] @ system.B[t].T + system.c[t] + process
    return X, U


def log_policy(gains: LinearGaussianGains, X: np.ndarray, U: np.ndarray) -> np.ndarray:
    """sum_t log p(u_t | x_t) per trajectory."""
    total = np.zeros(X.shape[0])
    for t in range(T):
        diff = U[:, t] - X[:, t] @ gains.K[t].T - gains.k[t]
        precision = np.linalg.inv(gains.C[t])
        total += -0.5 * np.einsum("bi,ij,bj->b", diff, precision, diff) - 0.5 * np.linalg.slogdet(2 * np.pi * gains.C[t])[1]
    return total


def test_trajectory_gaussians_match_samples():
    system = linear_system()
    rng = np.random.default_rng(1)
    gains = LinearGaussianGains(0.1 * rng.standard_normal((T, N_ACTION, N_STATE)), rng.standard_normal((T, N_ACTION)), initial_gains(0.3).C)
    mu, Sigma = trajectory_gaussians(system, gains)
    X, U = sample(system, gains, 20000, seed=2)
    np.testing.assert_allclose(mu[:, :N_STATE], X.mean(axis=0), atol=0.02)
    np.testing.assert_allclose(Sigma[T, :N_STATE, :N_STATE], np.cov(X[:, T], rowvar=False), atol=0.03)
    costs = quadratic_cost()
    Z = np.concatenate([X[:, :T], U], axis=2)
    sampled = sum(0.5 * np.einsum("bi,ij,bj->b", Z[:, t], costs.H[t], Z[:, t]) for t in range(T))
    sampled = sampled + 0.5 * np.einsum("bi,ij,bj->b", X[:, T], costs.H[T, :N_STATE, :N_STATE], X[:, T])
    assert expected_cost(costs, mu, Sigma) == pytest.approx(sampled.mean(), rel=0.02)
    assert sampled_cost(costs, X, U) == pytest.approx(sampled.mean(), rel=1e-9)


def test_policy_kl_matches_monte_carlo():
    system = linear_system()
    rng = np.random.default_rng(3)
    old = LinearGaussianGains(0.1 * rng.standard_normal((T, N_ACTION, N_STATE)), 0.3 * rng.standard_normal((T, N_ACTION)), initial_gains(0.5).C)
    new = LinearGaussianGains(old.K + 0.05 * rng.standard_normal(old.K.shape), old.k + 0.1, initial_gains(0.4).C)
    mu, Sigma = trajectory_gaussians(system, new)
    analytic = policy_kl(new, old, mu[:, :N_STATE], Sigma[:, :N_STATE, :N_STATE]).sum()
    X, U = sample(system, new, 40000, seed=4)
    monte_carlo = np.mean(log_policy(new, X, U) - log_policy(old, X, U))
    assert analytic == pytest.approx(monte_carlo, rel=0.03)


def test_large_eta_stays_at_anchor_small_eta_moves_away():
    system, costs, anchor = linear_system(), quadratic_cost(), initial_gains()
    mu, Sigma = trajectory_gaussians(system, anchor)
    kls = []
    for eta in (1e6, 1.0, 1e-2):
        gains = lqg_step(system, costs, anchor, eta)
        m, S = trajectory_gaussians(system, gains)
        kls.append(policy_kl(gains, anchor, m[:, :N_STATE], S[:, :N_STATE, :N_STATE]).sum())
    assert kls[0] < 1e-3 and kls[0] < kls[1] < kls[2]


@pytest.mark.parametrize("bound", [0.5, 5.0, 40.0])
def test_dual_search_meets_bound(bound):
    system, costs, anchor = linear_system(), quadratic_cost(), initial_gains()
    update = kl_constrained_update(system, costs, anchor, bound, eta=1.0)
    assert abs(update.kl - bound) <= 0.1 * bound
    mu, Sigma = trajectory_gaussians(system, anchor)
    assert update.expected_cost < expected_cost(costs, mu, Sigma)


def test_inactive_bound_returns_unconstrained_optimum():
    system, costs, anchor = linear_system(), quadratic_cost(), initial_gains()
    update = kl_constrained_update(system, costs, anchor, 1e9, eta=1.0)
    assert update.kl < 1e9 and update.eta == pytest.approx(1e-8)


def test_unreachable_bound_is_reported():
    system, costs, anchor = linear_system(), quadratic_cost(), initial_gains()
    with pytest.raises(DualSearchError, match="no eta"):
        kl_constrained_update(system, costs, anchor, 1e-3, eta=1e-8, eta_range=(1e-8, 1e-6))


def test_step_size_multiplier():
    # Improvement as predicted: grow the step; worse than before: shrink it to the floor.
    assert step_size_multiplier(10.0, 8.0, 8.0) == 5.0
    assert step_size_multiplier(10.0, 8.0, 12.0) == pytest.approx(2.0 / (2 * 4.0))
    assert step_size_multiplier(10.0, 8.0, 20.0) == 0.1
    assert step_size_multiplier(10.0, 8.0, 9.0) == pytest.approx(1.0)


def test_gps_iterations_on_fitted_models_meet_bounds_and_cost_falls():
    """Samples -> TVLG fit with a GMM prior -> KL update, on a system the controller never sees."""
    system, costs = linear_system(), quadratic_cost()
    gains, prior = initial_gains(), GMMPrior(min_samples_per_cluster=20, seed=0)
    eta, multiplier, previous, true_costs = 1.0, 1.0, None, []
    for iteration in range(8):
        X, U = sample(system, gains, 5, seed=10 + iteration)
        prior.update(X, U)
        fitted = fit_tvlg(X, U, prior)
        mu, Sigma = trajectory_gaussians(fitted, gains)
        current = expected_cost(costs, mu, Sigma)
        if previous is not None:
            multiplier = float(np.clip(multiplier * step_size_multiplier(previous[0], previous[1], current), 0.1, 10))
        update = kl_constrained_update(fitted, costs, gains, 0.5 * T * multiplier, eta)
        assert update.within_bound, (update.kl, update.bound)
        true_mu, true_Sigma = trajectory_gaussians(system, gains)
        true_costs.append(expected_cost(costs, true_mu, true_Sigma))
        previous, gains, eta = (current, update.expected_cost), update.gains, update.eta
    optimum = kl_constrained_update(system, costs, initial_gains(), 1e9)
    assert true_costs[-1] < 1.25 * optimum.expected_cost < 0.05 * true_costs[0]
    # Every iteration improves, up to the sampling noise near the optimum.
    assert all(later <= earlier * 1.1 for earlier, later in zip(true_costs, true_costs[1:])), true_costs


# -- The neural-network policy ------------------------------------------------------------------


def test_precision_weighting_follows_the_certain_target():
    # At the same states, one target wants +1 with precision 100, the other -1 with precision 1.
    rng = np.random.default_rng(0)
    x = np.repeat(rng.uniform(-1, 1, (100, 2)), 2, axis=0)
    u = np.tile([[1.0], [-1.0]], (100, 1))
    precision = np.tile([[[100.0]], [[1.0]]], (100, 1, 1))
    mlp = MLPPolicy(2, 1, 0, MLPPolicyConfig(hidden=[16], epochs=200, seed=0))
    mlp.fit(x, None, u, precision)
    assert mlp.mean(x).mean() == pytest.approx((100 - 1) / 101, abs=0.03)
    assert mlp.cov[0, 0] == pytest.approx(1 / 50.5)


def test_policy_generalises_over_features_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    x, f = rng.uniform(-1, 1, (1500, 3)), rng.uniform(-1, 1, (1500, 2))
    target = lambda x, f: np.stack([x[:, 0] + f[:, 0], np.sin(x[:, 1]) * f[:, 1]], axis=1)  # noqa: E731
    mlp = MLPPolicy(3, 2, 2, MLPPolicyConfig(epochs=60, seed=0), names={"features": ["target"]})
    info = mlp.fit(x, f, target(x, f), np.tile(np.eye(2), (1500, 1, 1)))
    assert info["loss_end"] < 0.02 * info["loss_start"]
    x_new, f_new = rng.uniform(-1, 1, (500, 3)), rng.uniform(-0.8, 0.8, (500, 2))
    assert np.sqrt(np.mean((mlp.mean(x_new, f_new) - target(x_new, f_new)) ** 2)) < 0.05
    # Linearisation agrees with finite differences.
    K, k = mlp.linearize(x_new[:2], f_new[:2])
    step = 1e-6 * np.eye(3)[1]
    numeric = (mlp.mean(x_new[:1] + step, f_new[:1]) - mlp.mean(x_new[:1] - step, f_new[:1])) / 2e-6
    np.testing.assert_allclose(K[0][:, 1], numeric[0], atol=1e-6)
    np.testing.assert_allclose(K[0] @ x_new[0] + k[0], mlp.mean(x_new[0], f_new[0]))
    path = tmp_path / "policy.pt"
    mlp.save(path)
    loaded = MLPPolicy.load(path)
    np.testing.assert_array_equal(loaded.mean(x_new, f_new), mlp.mean(x_new, f_new))
    assert loaded.names["features"] == ["target"]
    (tmp_path / "broken.pt").write_bytes(b"not a policy")
    with pytest.raises(ConfigError, match="broken.pt"):
        MLPPolicy.load(tmp_path / "broken.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        MLPPolicy.load(tmp_path / "missing.pt")


def test_a_policy_file_holding_a_pickled_object_is_refused_unrun(tmp_path, tripwire):
    """`deploy --policy RUN_DIR` loads the folder's policy file: it must not run code from it."""
    mlp = MLPPolicy(3, 2, 0, MLPPolicyConfig(hidden=[4], epochs=1))
    path = tmp_path / "policy.pt"
    mlp.save(path)
    saved = torch.load(path, weights_only=True)
    saved["names"] = tripwire[0]
    torch.save(saved, path)
    with pytest.raises(ConfigError, match=r"policy.pt: not an NN policy file: it holds a pickled Python object"):
        MLPPolicy.load(path)
    assert not tripwire[1].exists()


def test_noisy_policy_differs_between_trials_and_repeats_on_rerun():
    mlp = MLPPolicy(2, 1, 0, MLPPolicyConfig(hidden=[4]))
    mlp.cov = np.array([[0.1]])
    first = NNPolicy(mlp, noise=True, seed=3)
    a = [first.act(np.zeros(2), 0) for _ in range(2)]
    b = [NNPolicy(mlp, noise=True, seed=3).act(np.zeros(2), 0)]
    assert a[0] != a[1] and b[0] == a[0]


def test_mdgps_anchor_is_the_network_averaged_over_the_samples():
    # The KL anchor takes the network's Jacobian averaged over the sampled states at each step,
    # and reproduces the network's mean action there.
    n, m, horizon, samples = 3, 2, 6, 4
    mlp = MLPPolicy(n, m, 1, MLPPolicyConfig(hidden=[8], seed=1))
    controller = MDGPSController(n, m, horizon, [None], [np.zeros(m)], None, [[0.5]], mlp)
    X = np.random.default_rng(0).normal(size=(samples, horizon + 1, n))
    anchor = controller.linearized_policy(0, X)
    K, _ = mlp.linearize(X[:, :horizon].reshape(-1, n), [0.5])
    np.testing.assert_allclose(anchor.K, K.reshape(samples, horizon, m, n).mean(axis=0))
    u = mlp.mean(X[:, :horizon].reshape(-1, n), [0.5]).reshape(samples, horizon, m)
    mean_x = X[:, :horizon].mean(axis=0)
    np.testing.assert_allclose(np.einsum("tmn,tn->tm", anchor.K, mean_x) + anchor.k, u.mean(axis=0), atol=1e-12)
    assert anchor.C.shape == (horizon, m, m)


# -- The controllers on the simulated arm --------------------------------------------------------

REACH_COST = {
    "terms": [
        {"type": "site_distance", "site": "ee", "target": "target", "weight": 100.0, "final_weight": 1000.0},
        {"type": "site_distance", "site": "ee", "target": "target", "norm": "smooth_abs", "smoothing": 0.005,
         "weight": 1.0, "final_weight": 10.0},
        {"type": "action", "weights": 0.1, "center": "state"},
    ]
}
TARGETS = ({"target": [0.20, 0.05, 0.12]}, {"target": [0.18, -0.08, 0.10]})


def tvlg(robot, **settings):
    from forethought.models.registry import build_model, model_settings

    return build_model("tvlg", model_settings("tvlg", settings, "model:", seed=0), robot.spec)


def run_iterations(controller, robot, task, iterations: int, samples: int = 5):
    """The experiment loop in miniature (samples per condition, the local models refitted on them,
    the update); returns the mean final end-effector error of each iteration."""
    costs = [build_cost(task.cost, robot.spec, task.scene, c) for c in task.conditions]
    errors, seed = [], 0
    for _ in range(iterations):
        trials, finals = [], []
        for c, condition in enumerate(task.conditions):
            task.apply(c, robot)
            policy = controller.policy(c)
            group = [rollout(robot, policy, task.horizon, seed + s, costs[c], {"condition": c}) for s in range(samples)]
            seed += samples
            for trial in group:
                robot.set_state(trial.states[-1])
                finals.append(np.linalg.norm(robot.site_pos("ee") - condition["target"]))
            trials.append(group)
        errors.append(float(np.mean(finals)))
        controller.model.fit([trial for group in trials for trial in group])
        controller.update(trials)
    return errors


def test_gps_reaches_targets_on_the_arm():
    robot = MujocoRobot("so101_reach")
    task = Task(horizon=30, cost=REACH_COST, conditions=TARGETS, scene="so101_reach", seed=0)
    controller = build_gps({"kl_step": 0.5}, robot, task, tvlg(robot))
    errors = run_iterations(controller, robot, task, iterations=6)
    assert errors[0] > 0.05 and errors[-1] < 0.02, errors
    records = [r for iteration in controller.history for r in iteration]
    assert all(r["within_bound"] for r in records)
    # The expected cost of the trajectory distribution falls from iteration to iteration (up to
    # 2% of sampling noise once converged), to a tenth of where it started.
    expected = [np.mean([r["expected_cost"] for r in iteration]) for iteration in controller.history]
    assert all(b < 1.02 * a for a, b in zip(expected, expected[1:])), expected
    assert expected[-1] < 0.1 * expected[0]


def test_mdgps_policy_generalises_and_runs_alone(tmp_path):
    robot = MujocoRobot("so101_reach")
    task = Task(horizon=30, cost=REACH_COST, conditions=TARGETS, scene="so101_reach", seed=0)
    controller = build_mdgps({"kl_step": 0.5, "features": ["target"], "epochs": 50}, robot, task, tvlg(robot))
    errors = run_iterations(controller, robot, task, iterations=5)
    assert controller.mlp.trained and errors[-1] < 0.5 * errors[0], errors
    [path] = controller.save(tmp_path)
    # The saved policy alone, through the nn_policy controller, on a target between the two.
    middle = {"target": list(np.mean([c["target"] for c in TARGETS], axis=0))}
    alone = build_nn_policy({"path": str(path)}, robot, Task(horizon=30, conditions=(middle,), scene="so101_reach"))
    robot.set_mocap_pos("target", middle["target"])
    robot.reset(0)
    start = np.linalg.norm(robot.site_pos("ee") - middle["target"])
    trial = rollout(robot, alone.policy(0), 30, seed=0)
    robot.set_state(trial.states[-1])
    assert np.linalg.norm(robot.site_pos("ee") - middle["target"]) < 0.5 * start


def test_builders_reject_bad_parameters():
    robot = MujocoRobot("so101_reach")
    task = Task(horizon=10, cost=REACH_COST, conditions=TARGETS, scene="so101_reach")
    model = tvlg(robot)
    with pytest.raises(ConfigError, match="unknown key 'kl'"):
        build_gps({"kl": 1.0}, robot, task, model)
    with pytest.raises(ConfigError, match="kl_step"):
        build_gps({"kl_step": -1.0}, robot, task, model)
    with pytest.raises(ConfigError, match="task's cost"):
        build_gps({}, robot, Task(horizon=10, conditions=TARGETS, scene="so101_reach"), model)
    with pytest.raises(ConfigError, match="no 'hole'"):
        build_mdgps({"features": ["hole"]}, robot, task, model)
    with pytest.raises(ConfigError, match="model: unknown key 'cluster'"):
        tvlg(robot, cluster=4)
    assert tvlg(robot, prior=False).prior is None
    controller = build_gps({}, robot, task, model)
    names = robot.spec.state_names, robot.spec.action_names
    good = Trial(np.zeros((11, robot.spec.n)), np.zeros((10, robot.spec.m)), np.arange(11.0), np.zeros(11), *names, 0.02)
    short = Trial(np.zeros((10, robot.spec.n)), np.zeros((9, robot.spec.m)), np.arange(10.0), np.zeros(10), *names, 0.02)
    with pytest.raises(ValueError, match="condition 1"):
        controller.update([[good, good], [short, short]])
