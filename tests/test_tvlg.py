"""Time-varying linear-Gaussian fits: recovery of a known system, the GMM prior, the model API."""

import numpy as np
import pytest

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
    assert info["horizon"] == T and info["trials"] == 12
    A, B, c, Sigma = model.linearize(np.zeros((T + 1, N_STATE)), np.zeros((T, N_ACTION)))
    assert A.shape == (T, N_STATE, N_STATE) and B.shape == (T, N_STATE, N_ACTION) and Sigma.shape == (T, N_STATE, N_STATE)
    x, u = np.ones((5, N_STATE)), np.ones((5, N_ACTION))
    mean, var = model.predict(x, u, t=3)
    np.testing.assert_allclose(mean, x @ A[3].T + u @ B[3].T + c[3])
    assert var.shape == (5, N_STATE) and np.all(var > 0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = TVLGModel.load(path)
    np.testing.assert_array_equal(loaded.predict(x, u, t=np.arange(5))[0], model.predict(x, u, t=np.arange(5))[0])
    assert loaded.state_names == model.state_names
    # The loaded prior still works for a fresh fit.
    loaded.fit(as_trials(*sample(system, 2, seed=7)))


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
    with pytest.raises(ValueError, match=r"x \(B, 4\)"):
        model.predict(np.zeros(3), np.zeros(N_ACTION), t=0)
    with pytest.raises(FileNotFoundError, match="not found"):
        TVLGModel.load("/nonexistent/model.npz")
