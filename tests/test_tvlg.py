"""Time-varying linear-Gaussian fits: recovery of a known system, the GMM prior, the model API
(per-condition fits, time steps, rollouts, persistence)."""

import json

import numpy as np
import pytest
import torch

from forethought.models.capabilities import LINEARIZE, PREDICT, ROLLOUT
from forethought.models.tvlg import GMMPrior, TVLGConfig, TVLGModel, fit_tvlg
from forethought.robots.trial import Trial

T, N_STATE, N_ACTION, NOISE = 20, 4, 2, 0.05


def known_system(seed: int = 0):
    """A_t, B_t, c_t that drift smoothly over time."""
    rng = np.random.default_rng(seed)
    base = np.eye(N_STATE) + 0.1 * rng.standard_normal((N_STATE, N_STATE))
    gain = 0.5 * rng.standard_normal((N_STATE, N_ACTION))
    A = np.stack([base + 0.05 * np.sin(0.3 * t) * np.eye(N_STATE) for t in range(T)])
    B = np.stack([gain * (1 + 0.2 * np.cos(0.2 * t)) for t in range(T)])
    c = np.full((T, N_STATE), 0.1)
    return A, B, c


def sample(system, trials: int, seed: int):
    """States (N, T+1, n) and actions (N, T, m) under random exploratory actions."""
    A, B, c = system
    rng = np.random.default_rng(seed)
    states = np.empty((trials, T + 1, N_STATE))
    actions = 0.5 * rng.standard_normal((trials, T, N_ACTION))
    states[:, 0] = 0.3 * rng.standard_normal((trials, N_STATE))
    for t in range(T):
        noise = NOISE * rng.standard_normal((trials, N_STATE))
        states[:, t + 1] = states[:, t] @ A[t].T + actions[:, t] @ B[t].T + c[t] + noise
    return states, actions


def gain_error(dynamics, system) -> float:
    A, B, _ = system
    return float(max(np.abs(dynamics.A - A).max(), np.abs(dynamics.B - B).max()))


def as_trials(states, actions):
    names_x = tuple(f"x{i}" for i in range(N_STATE))
    names_u = tuple(f"u{i}" for i in range(N_ACTION))
    return [
        Trial(x, u, np.arange(T + 1) * 0.1, np.zeros(T + 1), names_x, names_u, 0.1)
        for x, u in zip(states, actions)
    ]


def test_recovery_tightens_with_data():
    system = known_system()
    errors = [gain_error(fit_tvlg(*sample(system, n, seed=1)), system) for n in (10, 40, 160, 640)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    # Estimation error of a regression shrinks like 1/sqrt(N): 64x the data, well under a third the error.
    assert errors[-1] < errors[0] / 3
    assert errors[-1] < 0.03


def test_noise_covariance_recovered():
    system = known_system()
    dynamics = fit_tvlg(*sample(system, 400, seed=2))
    variances = np.diagonal(dynamics.Sigma, axis1=1, axis2=2)
    np.testing.assert_allclose(variances, NOISE**2, rtol=0.35)


def test_prior_beats_no_prior_with_two_trials():
    system = known_system()
    past_x, past_u = sample(system, 30, seed=3)
    fresh_x, fresh_u = sample(system, 2, seed=4)
    heldout = sample(system, 100, seed=5)
    prior = GMMPrior(seed=0)
    prior.update(np.concatenate([past_x, fresh_x]), np.concatenate([past_u, fresh_u]))
    with_prior = fit_tvlg(fresh_x, fresh_u, prior).log_likelihood(*heldout)
    without = fit_tvlg(fresh_x, fresh_u).log_likelihood(*heldout)
    assert with_prior > without + 10
    # And the prior fit is close to the truth: its gains are good to about 0.1.
    assert gain_error(fit_tvlg(fresh_x, fresh_u, prior), system) < 0.15


def test_model_predict_linearize_save_load(tmp_path):
    system = known_system()
    model = TVLGModel(TVLGConfig(seed=1))
    info = model.fit(as_trials(*sample(system, 12, seed=6)))
    assert info["horizon"] == T and info["trials"] == 12 and info["conditions"] == [0]
    x, u = np.ones((5, N_STATE)), np.ones((5, N_ACTION))
    A, B, c, Sigma = model.linearize(x, u, t=3)
    assert A.shape == (5, N_STATE, N_STATE) and B.shape == (5, N_STATE, N_ACTION) and Sigma.shape == (5, N_STATE, N_STATE)
    dyn = model.local(0)
    assert model.dynamics is dyn  # the selected condition's fit, as GPS and `forethought fit` read it
    np.testing.assert_array_equal(A, np.broadcast_to(dyn.A[3], A.shape))
    np.testing.assert_array_equal(Sigma[2], dyn.Sigma[3])
    mean, var = model.predict(x, u, t=3)
    np.testing.assert_allclose(mean, x @ dyn.A[3].T + u @ dyn.B[3].T + dyn.c[3])
    np.testing.assert_allclose(mean, np.einsum("bij,bj->bi", A, x) + np.einsum("bij,bj->bi", B, u) + c)
    assert var.shape == (5, N_STATE) and np.all(var > 0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = TVLGModel.load(path)
    np.testing.assert_array_equal(loaded.predict(x, u, t=np.arange(5))[0], model.predict(x, u, t=np.arange(5))[0])
    assert loaded.state_names == model.state_names
    # The loaded prior still works for a fresh fit.
    loaded.fit(as_trials(*sample(system, 2, seed=7)))


def test_model_declares_what_it_offers():
    assert TVLGModel.capabilities == {PREDICT, LINEARIZE, ROLLOUT}
    assert TVLGModel.learned and TVLGModel.fit_on == "latest_iteration" and TVLGModel.time_varying


def other_system():
    """A second condition's dynamics: the first system with other gains and offsets."""
    A, B, c = known_system(seed=1)
    return A, -B, c - 0.3


def two_condition_trials(per_condition: tuple[int, int], seed: int) -> list[Trial]:
    trials = []
    for condition, (system, count) in enumerate(zip((known_system(), other_system()), per_condition)):
        for trial in as_trials(*sample(system, count, seed=seed + condition)):
            trial.metadata["condition"] = condition
            trials.append(trial)
    return trials


def test_each_condition_gets_its_own_fit_and_the_selected_one_predicts():
    model = TVLGModel(TVLGConfig(seed=0))
    info = model.fit(two_condition_trials((40, 40), seed=11))
    assert info["conditions"] == [0, 1] and info["trials"] == 80
    assert gain_error(model.local(0), known_system()) < 0.15  # 0.05-0.10 over 10 seeds
    assert gain_error(model.local(1), other_system()) < 0.15
    x, u = np.zeros((1, N_STATE)), np.ones((1, N_ACTION))
    model.apply_condition(1, {"target": [0.1, 0.2]})
    assert model.dynamics is model.local(1)
    fit1 = model.local(1)
    mean = model.predict(x, u, t=4)[0]
    np.testing.assert_allclose(mean, u @ fit1.B[4].T + fit1.c[4])
    truth = {name: u @ system[1][4].T + system[2][4] for name, system in (("own", other_system()), ("other", known_system()))}
    assert np.abs(mean - truth["own"]).max() < 0.2 < np.abs(mean - truth["other"]).max()
    model.apply_condition(0)
    np.testing.assert_array_equal(model.linearize(x, u, t=4)[1][0], model.local(0).B[4])
    with pytest.raises(RuntimeError, match="condition 2 has no dynamics"):
        model.local(2)
    # A later fit on one condition's trials refits that condition only.
    before = model.local(1)
    model.fit(as_trials(*sample(known_system(), 10, seed=12)))  # no metadata: condition 0
    assert model.local(1) is before and model.local(0) is not None


def test_per_condition_fits_are_what_gps_fits_by_hand():
    """The model's fit equals GPS's own: the prior updated on every condition's trials in condition
    order, then fit_tvlg per condition with that prior (so GPS can read `local(c)` instead)."""
    trials = two_condition_trials((6, 5), seed=19)
    model = TVLGModel(TVLGConfig(seed=3))
    model.fit(trials[::-1])  # the order trials arrive in does not matter, their conditions do
    prior = TVLGConfig(seed=3).make_prior()
    arrays = [
        (np.stack([t.states for t in trials if t.metadata["condition"] == c]),
         np.stack([t.actions for t in trials if t.metadata["condition"] == c]))
        for c in (0, 1)
    ]
    by_hand = [(X[::-1], U[::-1]) for X, U in arrays]  # each condition's trials in the order the model saw them
    prior.update(np.concatenate([a[0] for a in by_hand]), np.concatenate([a[1] for a in by_hand]))
    for c, (X, U) in enumerate(by_hand):
        expected = fit_tvlg(X, U, prior, TVLGConfig().ridge)
        for a, b in zip(vars(model.local(c)).values(), vars(expected).values()):
            np.testing.assert_array_equal(a, b)


def started_elsewhere(count: int, seed: int, condition: int, shift: float) -> list[Trial]:
    """Trials of the known system from initial states offset by `shift`, tagged with `condition`
    (conditions that share the robot's dynamics, as GPS's initial states or targets do)."""
    states, actions = sample(known_system(), count, seed=seed)
    A, B, c = known_system()
    rng = np.random.default_rng(seed + 100)
    states[:, 0] += shift
    for t in range(T):
        states[:, t + 1] = states[:, t] @ A[t].T + actions[:, t] @ B[t].T + c[t] + NOISE * rng.standard_normal((count, N_STATE))
    trials = as_trials(states, actions)
    for trial in trials:
        trial.metadata["condition"] = condition
    return trials


def test_a_condition_with_one_trial_relies_on_the_prior():
    model = TVLGModel(TVLGConfig(seed=0))
    model.fit(started_elsewhere(20, 20, 0, 0.0) + started_elsewhere(20, 21, 1, 1.0))
    model.fit(started_elsewhere(10, 22, 0, 0.0) + started_elsewhere(1, 23, 1, 1.0))
    # One trial alone cannot determine the gains of a 4-state, 2-action step (0.08-0.19 over 14
    # seeds with the prior; two trials without it are off by about 1).
    assert gain_error(model.local(1), known_system()) < 0.3
    without = TVLGModel(TVLGConfig(prior=False))
    without.fit(started_elsewhere(2, 23, 1, 1.0))
    assert gain_error(without.local(1), known_system()) > 0.5
    with pytest.raises(ValueError, match="at least 2 trials without a prior"):
        without.fit(started_elsewhere(1, 24, 1, 1.0))


def test_steps_beyond_the_fitted_horizon_use_the_last_step():
    model = TVLGModel(TVLGConfig(seed=0))
    model.fit(as_trials(*sample(known_system(), 12, seed=16)))
    x, u = np.ones((3, N_STATE)), np.ones((3, N_ACTION))
    last = model.predict(x, u, t=T - 1)
    for a, b in zip(model.predict(x, u, t=T + 5), last):
        np.testing.assert_array_equal(a, b)
    steps = np.array([0, T - 1, T + 3])
    mean, _ = model.predict(x, u, t=steps)
    for row, t in enumerate([0, T - 1, T - 1]):
        np.testing.assert_array_equal(mean[row], model.predict(x[row], u[row], t=t)[0])
    A, B, c, Sigma = model.linearize(x[0], u[0], t=T + 1)  # a single pair: unbatched
    assert A.shape == (N_STATE, N_STATE) and c.shape == (N_STATE,)
    np.testing.assert_array_equal(A, model.local(0).A[-1])
    with pytest.raises(ValueError, match="must not be negative"):
        model.predict(x, u, t=-1)
    with pytest.raises(ValueError, match="time step"):
        model.linearize(x, u)
    with pytest.raises(ValueError, match="an int or 3 ints"):
        model.predict(x, u, t=[1, 2])


def test_rollout_samples_the_step_gaussian_from_t0():
    model = TVLGModel(TVLGConfig(seed=0))
    model.fit(as_trials(*sample(known_system(), 30, seed=17)))
    dyn = model.local(0)
    P = 20000
    x0 = torch.full((P, N_STATE), 0.2)
    U = torch.full((P, 3, N_ACTION), 0.5)
    X = model.rollout(x0, U, torch.Generator().manual_seed(0), t0=5)
    assert X.shape == (P, 4, N_STATE) and X.dtype == torch.float32
    assert torch.equal(X, model.rollout(x0, U, torch.Generator().manual_seed(0), t0=5))
    assert not torch.equal(X, model.rollout(x0, U, torch.Generator().manual_seed(1), t0=5))
    step = X[:, 1].double().numpy()
    mean = dyn.A[5] @ np.full(N_STATE, 0.2) + dyn.B[5] @ np.full(N_ACTION, 0.5) + dyn.c[5]
    std = np.sqrt(np.diag(dyn.Sigma[5]))
    assert np.all(np.abs(step.mean(axis=0) - mean) < 5 * std / np.sqrt(P) + 1e-6)
    # The full covariance, correlations included, within sampling error (relative ~ sqrt(2 / P)).
    np.testing.assert_allclose(np.cov(step, rowvar=False), dyn.Sigma[5], atol=0.05 * std.max() ** 2)
    # Rows at different steps, and past the horizon, step with their own step's matrices.
    starts = np.array([0, T - 1, T + 7])
    X = model.rollout(torch.zeros(3, N_STATE), torch.ones(3, 1, N_ACTION), torch.Generator(), t0=starts)
    expected = np.stack([dyn.B[t] @ np.ones(N_ACTION) + dyn.c[t] for t in (0, T - 1, T - 1)])
    noise = np.sqrt(np.diagonal(dyn.Sigma[[0, T - 1, T - 1]], axis1=1, axis2=2))
    assert np.all(np.abs(X[:, 1].double().numpy() - expected) < 6 * noise + 1e-6)


def test_save_load_keeps_every_condition_the_selection_and_reads_older_files(tmp_path):
    model = TVLGModel(TVLGConfig(seed=0))
    model.fit(two_condition_trials((10, 10), seed=18))
    model.apply_condition(1)
    model.save(tmp_path / "model.npz")
    loaded = TVLGModel.load(tmp_path / "model.npz")
    assert sorted(loaded.conditions) == [0, 1] and loaded.condition == 1
    for c in (0, 1):
        for a, b in zip(vars(loaded.local(c)).values(), vars(model.local(c)).values()):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.prior.means, model.prior.means)
    # A file written before per-condition fits held one fit under "dynamics_": it is condition 0.
    dyn = model.local(0)
    meta = {"model": "tvlg", "config": vars(TVLGConfig()), "state_names": ["a"], "action_names": ["b"]}
    np.savez(tmp_path / "old.npz", meta=np.array(json.dumps(meta)), **{f"dynamics_{k}": v for k, v in vars(dyn).items()})
    old = TVLGModel.load(tmp_path / "old.npz")
    assert list(old.conditions) == [0] and np.array_equal(old.dynamics.A, dyn.A)
    (tmp_path / "garbage.npz").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.npz"):
        TVLGModel.load(tmp_path / "garbage.npz")


def test_bad_input_named():
    system = known_system()
    states, actions = sample(system, 3, seed=8)
    model = TVLGModel()
    with pytest.raises(RuntimeError, match="fit it"):
        model.predict(np.zeros(N_STATE), np.zeros(N_ACTION), t=0)
    states[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_tvlg(states, actions)
    with pytest.raises(ValueError, match="one horizon"):
        trials = as_trials(*sample(system, 2, seed=9))
        short = Trial(trials[0].states[:5], trials[0].actions[:4], np.arange(5.0), np.zeros(5), trials[0].state_names, trials[0].action_names, 0.1)
        model.fit([trials[1], short])
    model.fit(as_trials(*sample(system, 4, seed=10)))
    with pytest.raises(ValueError, match="time step"):
        model.predict(np.zeros(N_STATE), np.zeros(N_ACTION))
    with pytest.raises(ValueError, match=r"TVLG model: x must be \(B, 4\)"):
        model.predict(np.zeros(3), np.zeros(N_ACTION), t=0)
    with pytest.raises(FileNotFoundError, match="not found"):
        TVLGModel.load("/nonexistent/model.npz")
