"""The GP dynamics model: exact posterior, agreement with gpytorch, restarts, sparse mode, Cholesky
recovery, linearisation and particle rollouts."""

from __future__ import annotations

import logging

import gpytorch
import numpy as np
import pytest
import torch

from forethought.models.capabilities import LINEARIZE, PREDICT, PROPAGATE, ROLLOUT
from forethought.models.dynamics_model import DynamicsModel
from forethought.models.gp import CholeskyError, GPConfig, GPModel, exact_computations, minimize_lbfgs, robust_cholesky
from forethought.robots.trial import Trial

DT = torch.float64
STATES, ACTIONS = ("cart", "pole", "d_cart", "d_pole"), ("force",)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cartpole_like_trials(seed: int, count: int, T: int = 30, noise: float = 0.0) -> list[Trial]:
    """A damped cart-pole-like system (pole angle 0 hangs), random forces, optional measurement noise."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(count):
        x = np.zeros((T + 1, 4))
        x[0] = rng.normal(0.0, 0.3, 4)
        u = rng.uniform(-10.0, 10.0, (T, 1))
        for t in range(T):
            c, th, dc, dth = x[t]
            ddc = 0.5 * u[t, 0] - 0.1 * dc + 0.3 * np.sin(th) * dth**2
            ddth = -16.0 * np.sin(th) - np.cos(th) * ddc - 0.2 * dth
            x[t + 1] = [c + 0.1 * dc, th + 0.1 * dth, dc + 0.1 * ddc, dth + 0.1 * ddth]
        x = x + noise * rng.standard_normal(x.shape)
        trials.append(Trial(x, u, np.arange(T + 1) * 0.1, np.zeros(T + 1), STATES, ACTIONS, 0.1))
    return trials


@pytest.fixture(scope="module")
def model() -> GPModel:
    gp = GPModel(STATES, ACTIONS, GPConfig(angle_states=["pole"], restarts=1, max_iter=60))
    # Measurement noise of 1e-2 keeps K's condition number near 1e5, so that the plain computation
    # it is compared with is itself accurate to far better than 1e-8.
    gp.fit(cartpole_like_trials(0, 3, noise=1e-2))
    return gp


def plain_posterior(X, Y, ell, sf2, sn2, Z):
    """The textbook exact GP posterior (numpy, linear solves), one output at a time: mean and latent var."""
    means, variances = [], []
    for a in range(Y.shape[0]):
        def k(A, B):
            d = (A[:, None, :] - B[None, :, :]) / ell[a]
            return sf2[a] * np.exp(-0.5 * (d**2).sum(-1))

        K = k(X, X) + sn2[a] * np.eye(len(X))
        kz = k(Z, X)
        means.append(kz @ np.linalg.solve(K, Y[a]))
        variances.append(sf2[a] - np.einsum("ij,ji->i", kz, np.linalg.solve(K, kz.T)))
    return np.stack(means, 1), np.stack(variances, 1)


def test_gp_is_a_dynamics_model(model):
    assert isinstance(model, DynamicsModel)
    assert model.input_dim == 6  # cart, d_cart, d_pole, sin pole, cos pole, force


def test_predictions_match_a_plain_exact_gp(model):
    test = cartpole_like_trials(5, 1)[0]
    x, u = test.states[:-1], test.actions
    mean, var = model.predict(x, u)
    X, Y = model._X.numpy(), model._Y.numpy()
    Z = model.features(torch.as_tensor(x), torch.as_tensor(u)).numpy()
    f_mean, f_var = plain_posterior(X, Y, model.lengthscales.numpy(), model.signal_var.numpy(),
                                    model.noise_var.numpy(), Z)
    np.testing.assert_allclose(mean, x + f_mean, rtol=0, atol=1e-8)
    np.testing.assert_allclose(var, f_var + model.noise_var.numpy(), rtol=0, atol=1e-8)
    assert np.sqrt(np.mean((mean - test.states[1:]) ** 2)) < 0.1  # and it has learnt the dynamics


def test_predictions_agree_with_gpytorchs_posterior(model):
    """The hyperparameters the model was fitted with are the ones it predicts with: no hidden scaling."""
    test = cartpole_like_trials(6, 1)[0]
    x, u = test.states[:-1], test.actions
    Z = model.features(torch.as_tensor(x), torch.as_tensor(u))
    E = len(STATES)
    with torch.no_grad(), exact_computations(), gpytorch.settings.fast_pred_var(False):
        latent = model.gp(Z.expand(E, -1, -1))
        f_mean, f_var = model.posterior(Z)
    np.testing.assert_allclose(f_mean.numpy(), latent.mean.T.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(f_var.numpy(), latent.variance.T.numpy(), rtol=0, atol=1e-6)


def test_more_restarts_never_fit_worse():
    trials = cartpole_like_trials(1, 2, noise=1e-3)
    one = GPModel(STATES, ACTIONS, GPConfig(angle_states=["pole"], restarts=0, max_iter=40)).fit(trials)
    many = GPModel(STATES, ACTIONS, GPConfig(angle_states=["pole"], restarts=3, max_iter=40)).fit(trials)
    assert many["nlml"] <= one["nlml"] + 1e-9


def test_noise_floor_holds_on_noiseless_data():
    floor = 1e-6
    gp = GPModel(STATES, ACTIONS, GPConfig(angle_states=["pole"], restarts=0, max_iter=40, noise_floor=floor))
    gp.fit(cartpole_like_trials(2, 2))
    assert torch.all(gp.noise_var >= floor)


def test_sparse_mode_switches_on_and_matches_a_plain_projected_process_posterior():
    trials = cartpole_like_trials(3, 4, noise=1e-3)  # 120 transitions
    gp = GPModel(STATES, ACTIONS, GPConfig(angle_states=["pole"], restarts=0, max_iter=40, inducing=50))
    info = gp.fit(trials)
    assert info["sparse"] == 1 and gp.inputs.shape == (50, 6) and gp.beta.shape == (4, 50)
    test = cartpole_like_trials(7, 1)[0]
    x, u = test.states[:-1], test.actions
    predicted, _ = gp.predict(x, u)
    assert np.sqrt(np.mean((predicted - test.states[1:]) ** 2)) < 0.1

    # Against the textbook formulas, at hyperparameters that keep K_uu well conditioned (the fitted
    # ones make it nearly singular, and the plain inverse would be the inaccurate side).
    std = gp._X.std(0)
    gp.set_hyperparameters(lengthscales=0.3 * std.expand(4, -1), noise_var=torch.full((4,), 1e-2, dtype=DT))
    Z = gp.features(torch.as_tensor(x), torch.as_tensor(u)).numpy()
    X, Y, U = gp._X.numpy(), gp._Y.numpy(), gp.inputs.numpy()
    ell, sf2, sn2 = gp.lengthscales.numpy(), gp.signal_var.numpy(), gp.noise_var.numpy()
    with torch.no_grad():
        mean, var = (t.numpy() for t in gp.posterior(torch.as_tensor(Z)))
    for a in range(4):
        def k(A, B):
            d = (A[:, None, :] - B[None, :, :]) / ell[a]
            return sf2[a] * np.exp(-0.5 * (d**2).sum(-1))

        Kuu = k(U, U) + gp.jitter * np.eye(len(U))
        Kuf, Kzu = k(U, X), k(Z, U)
        Sigma = np.linalg.inv(Kuu + Kuf @ Kuf.T / sn2[a])
        np.testing.assert_allclose(mean[:, a], Kzu @ Sigma @ Kuf @ Y[a] / sn2[a], rtol=0, atol=1e-8)
        inv_k = np.linalg.inv(Kuu) - Sigma
        np.testing.assert_allclose(var[:, a], sf2[a] - np.einsum("ij,jk,ik->i", Kzu, inv_k, Kzu), rtol=0, atol=1e-8)


def test_model_declares_what_it_offers():
    assert GPModel.capabilities == {PREDICT, LINEARIZE, ROLLOUT, PROPAGATE}
    assert GPModel.learned and GPModel.fit_on == "all_trials"


def test_linearize_matches_finite_differences_of_the_posterior_mean(model):
    rng = np.random.default_rng(0)
    x, u = rng.normal(0.0, 0.3, (6, 4)), rng.uniform(-10.0, 10.0, (6, 1))
    A, B, c, Sigma = model.linearize(x, u)
    assert (A.shape, B.shape, c.shape, Sigma.shape) == ((6, 4, 4), (6, 4, 1), (6, 4), (6, 4, 4))
    # Everything is float64: with h = 1e-4 central differences are good to ~1e-8 (truncation and
    # rounding alike), against entries of order 1.
    h = 1e-4
    A_fd = np.stack([(model.predict(x + h * e, u)[0] - model.predict(x - h * e, u)[0]) / (2 * h) for e in np.eye(4)], -1)
    B_fd = ((model.predict(x, u + h)[0] - model.predict(x, u - h)[0]) / (2 * h))[..., None]
    np.testing.assert_allclose(A, A_fd, rtol=0, atol=1e-6)
    np.testing.assert_allclose(B, B_fd, rtol=0, atol=1e-6)
    mean, var = model.predict(x, u)
    np.testing.assert_allclose(np.einsum("bij,bj->bi", A, x) + np.einsum("bij,bj->bi", B, u) + c, mean, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(Sigma, var[:, :, None] * np.eye(4))
    single = model.linearize(x[2], u[2])
    assert single[0].shape == (4, 4)
    for batched, alone in zip((A, B, c, Sigma), single):
        np.testing.assert_allclose(batched[2], alone, rtol=0, atol=1e-12)


def test_rollout_samples_the_predictive_distribution(model):
    x0 = np.array([0.1, 0.2, -0.3, 0.5])
    U = np.array([[[3.0], [-2.0]]])
    P = 20000
    X = model.rollout(torch.tensor(x0, dtype=torch.float32).expand(P, 4),
                      torch.tensor(U, dtype=torch.float32).expand(P, 2, 1), torch.Generator().manual_seed(0))
    assert X.shape == (P, 3, 4) and X.dtype == torch.float32 and torch.isfinite(X).all()
    mean, var = model.predict(x0.astype(np.float32).astype(np.float64), U[0, 0])
    step = X[:, 1].double().numpy()
    # Sampling error: 5 standard errors on the mean; the variance's relative error is ~sqrt(2 / P) = 1%.
    assert np.all(np.abs(step.mean(axis=0) - mean) < 5 * np.sqrt(var / P) + 1e-6)
    np.testing.assert_allclose(step.var(axis=0), var, rtol=0.06)
    # The second step starts from each particle's own sample: its spread exceeds the one-step noise.
    assert np.all(X[:, 2].double().var(dim=0).numpy() > model.noise_var.numpy())
    again = model.rollout(torch.tensor(x0, dtype=torch.float32).expand(P, 4),
                          torch.tensor(U, dtype=torch.float32).expand(P, 2, 1), torch.Generator().manual_seed(0))
    assert torch.equal(X, again)


def test_save_and_load_give_the_same_predictions(model, tmp_path):
    path = tmp_path / "gp.pt"
    model.save(path)
    loaded = GPModel.load(path)
    test = cartpole_like_trials(8, 1)[0]
    for a, b in zip(model.predict(test.states[:-1], test.actions), loaded.predict(test.states[:-1], test.actions)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_bad_input_gets_one_clear_error(model, tmp_path):
    with pytest.raises(ValueError, match=r"GPModel: x must be \(B, 4\)"):
        model.predict(np.zeros((3, 3)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.full(4, np.nan), np.zeros(1))
    with pytest.raises(ValueError, match="angle_states"):
        GPModel(STATES, ACTIONS, GPConfig(angle_states=["elbow"]))
    bad = cartpole_like_trials(0, 1)[0]
    bad.states[3, 1] = np.nan
    with pytest.raises(ValueError, match="trial 0 has NaN"):
        GPModel(STATES, ACTIONS).fit([bad])
    with pytest.raises(ValueError, match="no entries named"):
        GPModel(STATES + ("elbow",), ACTIONS).fit(cartpole_like_trials(0, 1))
    with pytest.raises(FileNotFoundError, match="no such GP model file"):
        GPModel.load(tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="not been fitted"):
        GPModel(STATES, ACTIONS).predict(np.zeros(4), np.zeros(1))


# -- Cholesky failures do not end a run -------------------------------------------------------------------


def test_failed_cholesky_grows_jitter_and_logs(caplog):
    v = torch.randn(6, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    singular = v @ v.T - 1e-9 * torch.eye(6, dtype=DT)  # rank 2 and slightly indefinite
    with caplog.at_level(logging.WARNING, logger="forethought.models.gp"):
        L, jitter = robust_cholesky(singular, "a test matrix")
    assert jitter > 1e-9
    torch.testing.assert_close(L @ L.T, singular + jitter * torch.eye(6, dtype=DT))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) >= 2 and all("a test matrix" in m for m in messages)  # every retry is logged
    with pytest.raises(CholeskyError, match="a test matrix"):
        robust_cholesky(-torch.eye(3, dtype=DT), "a test matrix")


def test_model_with_singular_kernel_matrix_still_predicts(caplog):
    """Duplicated transitions and no noise make K singular: the cache adds jitter, logs, and carries on."""
    trial = cartpole_like_trials(4, 1, T=20)[0]
    gp = GPModel(STATES, ACTIONS, GPConfig(angle_states=["pole"], restarts=0, max_iter=10, noise_floor=0.0))
    gp.fit([trial, trial])
    with caplog.at_level(logging.WARNING, logger="forethought.models.gp"):
        gp.set_hyperparameters(noise_var=torch.zeros(4, dtype=DT))
    assert gp.jitter > 0 and any("Cholesky" in r.getMessage() for r in caplog.records)
    mean, var = gp.predict(trial.states[:-1], trial.actions)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var))
    np.testing.assert_allclose(mean, trial.states[1:], atol=1e-3)


def test_lbfgs_survives_a_loss_that_fails_in_places():
    """A step into a region where the loss cannot be evaluated is backed off, and the best point kept."""
    x = torch.tensor([3.0], dtype=DT)

    def loss():
        if x.item() < 0.5:
            raise torch.linalg.LinAlgError("cholesky: the factorization could not be completed")
        return (x - 1.0).pow(2).sum() * 10.0

    x.requires_grad_(True)
    result = minimize_lbfgs(loss, [x], max_iter=50)
    assert abs(x.item() - 1.0) < 1e-4 and result.value < 1e-6


def test_fit_command_builds_the_gp_by_name():
    """`forethought fit --model gp` builds a default GPModel for the trials' names and fits it."""
    from forethought.scripts.fit import build_model

    trials = cartpole_like_trials(9, 2, T=20, noise=1e-3)
    gp = build_model("gp", trials)
    assert isinstance(gp, GPModel) and gp.state_names == STATES and gp.action_names == ACTIONS
    gp.fit(trials)
    mean, var = gp.predict(trials[0].states[:-1], trials[0].actions)
    assert mean.shape == (20, 4) and np.all(var > 0)
