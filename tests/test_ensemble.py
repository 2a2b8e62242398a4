"""The probabilistic ensemble: calibrated uncertainty, trajectory sampling, linearisation,
reproducibility, persistence."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from forethought.models.capabilities import LINEARIZE, PREDICT, ROLLOUT
from forethought.models.ensemble import EnsembleConfig, EnsembleModel, gaussian_nll
from forethought.robots.config import ConfigError
from forethought.robots.trial import Trial


SMALL = dict(hidden=[64, 64], batch_size=64, max_epochs=60, patience=8, min_steps=0, planning_dtype="float32")


def heteroscedastic_data(rng: np.random.Generator, N: int, low: float = -1.0, high: float = 1.0):
    """x' - x = smooth function of (x, u) plus noise whose std grows with |x0| (0.01 .. 0.1)."""
    x = rng.uniform(low, high, (N, 2))
    u = rng.uniform(low, high, (N, 1))
    mean = np.stack([0.2 * x[:, 1], 0.3 * np.sin(2 * x[:, 0]) + 0.2 * u[:, 0]], axis=1)
    std = 0.01 + 0.09 * np.abs(x[:, :1])
    return x, u, mean + std * rng.standard_normal((N, 2))


def fitted(seed: int = 0, N: int = 1500, **overrides) -> EnsembleModel:
    rng = np.random.default_rng(seed)
    model = EnsembleModel(["p", "v"], ["f"], EnsembleConfig(**{**SMALL, "seed": seed, **overrides}))
    model.fit_arrays(*heteroscedastic_data(rng, N))
    return model


def test_nll_beats_deterministic_mlp_and_epistemic_spread_grows_outside_the_data():
    rng = np.random.default_rng(0)
    x, u, d = heteroscedastic_data(rng, 1500)
    model = EnsembleModel(["p", "v"], ["f"], EnsembleConfig(**SMALL))
    model.fit_arrays(x, u, d)

    # A deterministic MLP of the same size, trained on squared error; its Gaussian has the
    # training residual variance per output (the maximum-likelihood constant).
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2)
    )
    inputs = torch.tensor(np.hstack([x, u]), dtype=torch.float32)
    targets = torch.tensor(d, dtype=torch.float32)
    optimiser = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    for _ in range(60):
        for rows in torch.randperm(len(x)).split(64):
            optimiser.zero_grad()
            torch.mean((mlp(inputs[rows]) - targets[rows]) ** 2).backward()
            optimiser.step()
    with torch.no_grad():
        residual_var = ((mlp(inputs) - targets) ** 2).mean(dim=0).double().numpy()

    xt, ut, dt = heteroscedastic_data(np.random.default_rng(1), 2000)
    mean, var = model.predict(xt, ut)
    ensemble_nll = gaussian_nll(mean - xt, var, dt)
    with torch.no_grad():
        mlp_mean = mlp(torch.tensor(np.hstack([xt, ut]), dtype=torch.float32)).double().numpy()
    mlp_nll = gaussian_nll(mlp_mean, np.broadcast_to(residual_var, mlp_mean.shape), dt)
    assert ensemble_nll < mlp_nll - 0.2, (ensemble_nll, mlp_nll)

    # Epistemic spread: members agree inside the box of the data, disagree far outside it.
    inside = model.epistemic_variance(xt, ut).mean()
    outside = model.epistemic_variance(xt + 3.0, ut).mean()
    assert outside > 20 * inside, (inside, outside)


def test_fit_reports_holdout_early_stopping_and_elites(caplog):
    model = fitted(members=4, elites=2, max_epochs=400, patience=3)
    with caplog.at_level(logging.DEBUG, logger="forethought.progress"):
        diag = model.fit_arrays(*heteroscedastic_data(np.random.default_rng(5), 600))
    assert diag["epochs"] < 400  # stopped early on the held-out loss
    reports = [r for r in caplog.records if r.name == "forethought.progress"]
    assert reports[0].progress_done == 1 and not reports[0].progress_final  # progress as it trains
    final = reports[-1]
    assert final.progress_final and final.progress_done == final.progress_total == diag["epochs"]
    assert f"steps {diag['steps']}" in final.getMessage()
    assert 90 <= diag["holdout_transitions"] <= 150  # about a fifth of 600
    losses = np.array(diag["holdout_mse"])
    assert sorted(diag["elites"]) == sorted(np.argsort(losses)[:2].tolist())
    assert model.input_stats.mean.dtype == np.float64 and model.target_stats.std.dtype == np.float64


def test_held_out_transitions_stay_out_of_training_as_the_data_grows():
    # Held-out rows carry absurd targets: if any fit trained on them, the predictions would show it.
    model = EnsembleModel(["p", "v"], ["f"], EnsembleConfig(**{**SMALL, "members": 2, "max_holdout": 60}))
    x, u, d = heteroscedastic_data(np.random.default_rng(6), 900)
    held = model.holdout_rows(900)
    assert (model.holdout_rows(300) == held[:300]).all()  # appended data keeps the earlier lots
    assert held.sum() == 60 and held[:300].sum() > 0
    poisoned = np.where(held[:, None], 50.0, d)
    for N in (300, 600, 900):
        diag = model.fit_arrays(x[:N], u[:N], poisoned[:N])
        assert diag["holdout_transitions"] == held[:N].sum()
    mean, _ = model.predict(x[~held], u[~held])
    assert np.abs(mean - x[~held] - d[~held]).max() < 1.0
    assert min(diag["holdout_mse"]) > 100.0  # scored on the poisoned rows, never fitted to them


def test_normalisation_handles_large_offsets_and_constant_inputs():
    rng = np.random.default_rng(2)
    x, u, d = heteroscedastic_data(rng, 800)
    # States far from zero with a constant third input (a resting object) still fit well.
    x_big = np.hstack([x + 1e4, np.full((len(x), 1), 5.0)])
    d_big = np.hstack([d, np.zeros((len(x), 1))])
    model = EnsembleModel(["p", "v", "c"], ["f"], EnsembleConfig(**SMALL))
    model.fit_arrays(x_big, u, d_big)
    xt, ut, dt = heteroscedastic_data(np.random.default_rng(3), 500)
    mean, _ = model.predict(np.hstack([xt + 1e4, np.full((500, 1), 5.0)]), ut)
    rmse = np.sqrt(np.mean((mean[:, :2] - (xt + 1e4) - dt) ** 2))
    assert rmse < 0.08
    assert np.allclose(mean[:, 2], 5.0, atol=1e-6)


def test_same_seed_same_numbers():
    a, b, c = fitted(seed=3, N=400), fitted(seed=3, N=400), fitted(seed=4, N=400)
    x = np.random.default_rng(9).uniform(-1, 1, (50, 2))
    u = np.random.default_rng(9).uniform(-1, 1, (50, 1))
    assert np.array_equal(a.predict(x, u)[0], b.predict(x, u)[0])
    assert not np.allclose(a.predict(x, u)[0], c.predict(x, u)[0])
    x0 = torch.zeros(33, 2)
    U = torch.ones(33, 6, 1) * 0.3
    ra = a.dynamics("tsinf").rollout(x0, U, torch.Generator().manual_seed(1))
    rb = b.dynamics("tsinf").rollout(x0, U, torch.Generator().manual_seed(1))
    rc = a.dynamics("tsinf").rollout(x0, U, torch.Generator().manual_seed(2))
    assert torch.equal(ra, rb) and not torch.equal(ra, rc)


def _near_deterministic(model: EnsembleModel) -> EnsembleModel:
    """Pin every member's variance to ~0 so sampled rollouts show which member made each step."""
    with torch.no_grad():
        model.network.min_logvar.fill_(-40.0)
        model.network.max_logvar.fill_(-39.0)
    model._dynamics_cache.clear()
    return model


def member_rollouts(model: EnsembleModel, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Each member's mean rollout (k, B, H+1, n) in float64 through predict_members."""
    k = len(model.elites)
    X = np.empty((k, len(x0), U.shape[1] + 1, model.n))
    for e in range(k):
        x = x0.copy()
        X[e, :, 0] = x
        for t in range(U.shape[1]):
            x = model.predict_members(x, U[:, t], members=[model.elites[e]])[0][0]
            X[e, :, t + 1] = x
    return X


@pytest.mark.parametrize("batch", [7, 23])
def test_trajectory_sampling_propagations_any_batch_size(batch):
    model = _near_deterministic(fitted(seed=1, N=800))
    rng = np.random.default_rng(4)
    x0 = rng.uniform(-1, 1, (batch, 2))
    U = rng.uniform(-1, 1, (batch, 5, 1))
    per_member = member_rollouts(model, x0, U)  # (k, B, H+1, n)
    xt, Ut = torch.tensor(x0, dtype=torch.float32), torch.tensor(U, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)

    tsinf = model.dynamics("tsinf").rollout(xt, Ut, g).double().numpy()
    assert tsinf.shape == (batch, 6, 2)
    # TSinf: each trajectory is one member's rollout from start to end.
    err = np.abs(per_member - tsinf[None]).max(axis=(2, 3))  # (k, B)
    assert np.all(err.min(axis=0) < 1e-4)
    # Members are shared out in near-equal numbers, whatever the batch size.
    counts = np.bincount(err.argmin(axis=0), minlength=len(model.elites))
    assert counts.max() - counts.min() <= 1 or batch < len(model.elites)

    # TS1: a fresh member each step, so some trajectories match no single member throughout.
    ts1 = model.dynamics("ts1").rollout(xt, Ut, g).double().numpy()
    err1 = np.abs(per_member - ts1[None]).max(axis=(2, 3)).min(axis=0)
    assert np.any(err1 > 1e-3)

    # Expectation: the mean over members, step by step; after one step it equals predict's mean.
    expectation = model.dynamics("expectation").rollout(xt, Ut, g).double().numpy()
    mean, _ = model.predict(x0, U[:, 0])
    assert np.allclose(expectation[:, 1], mean, atol=1e-5)


def servo_data(rng: np.random.Generator, N: int):
    """A position servo with a torque limit: the step follows a saturated position error u - p, and
    the targets u lie near the positions p, as a controller's do."""
    x = np.stack([rng.uniform(-2, 2, N), rng.uniform(-1, 1, N)], axis=1)
    u = x[:, :1] + 0.3 * rng.standard_normal((N, 1))
    error = u[:, 0] - x[:, 0]
    push = np.tanh(8.0 * error)
    d = np.stack([0.05 * push + 0.02 * x[:, 1], push - 0.5 * x[:, 1]], axis=1)
    return x, u, d + 0.005 * rng.standard_normal((N, 2))


def test_relative_actions_feed_the_servo_error_and_rollouts_agree_with_predict():
    rng = np.random.default_rng(0)
    test = servo_data(np.random.default_rng(1), 2000)
    errors = {}
    for relative in (False, True):
        config = EnsembleConfig(**{**SMALL, "relative_actions": relative, "min_steps": 500})
        model = EnsembleModel(["p", "v"], ["p"], config)
        model.fit_arrays(*servo_data(rng, 600))
        mean, _ = model.predict(test[0], test[1])
        errors[relative] = np.sqrt(np.mean((mean - test[0] - test[2]) ** 2))
    # The saturation sits on u - p, a small difference of two large inputs: fed directly, the
    # same few hundred transitions learn it several times better.
    assert errors[True] < 0.5 * errors[False], errors
    x, u = test[0][:5], test[1][:5]
    assert np.allclose(model.features(x, u)[:, -1], u[:, 0] - x[:, 0])
    expectation = model.dynamics("expectation").rollout(
        torch.tensor(x, dtype=torch.float32), torch.tensor(u[:, None], dtype=torch.float32), torch.Generator()
    )
    assert np.allclose(expectation[:, 1].double().numpy(), model.predict(x, u)[0], atol=1e-4)


def test_sampled_noise_matches_predicted_variance():
    model = fitted(seed=2, N=1500)
    x0 = np.array([[0.8, 0.1]])
    U = np.array([[[0.2]]])
    B = 20000
    g = torch.Generator().manual_seed(0)
    X = model.dynamics("tsinf").rollout(
        torch.tensor(x0, dtype=torch.float32).expand(B, 2), torch.tensor(U, dtype=torch.float32).expand(B, 1, 1), g
    )
    samples = X[:, 1].double().numpy()
    mean, var = model.predict(x0, U[:, 0])
    assert np.allclose(samples.mean(axis=0), mean[0], atol=4 * np.sqrt(var[0] / B) + 1e-5)
    assert np.allclose(samples.var(axis=0), var[0], rtol=0.1)


def test_model_declares_what_it_offers():
    assert EnsembleModel.capabilities == {PREDICT, LINEARIZE, ROLLOUT}
    assert EnsembleModel.learned and EnsembleModel.fit_on == "all_trials"


def linearizable_model() -> EnsembleModel:
    """A servo-like ensemble whose features exercise every link of the chain: an angle fed as
    (sin, cos), an action fed relative to its state, two elites of three members."""
    rng = np.random.default_rng(0)
    config = EnsembleConfig(**{**SMALL, "members": 3, "elites": 2, "angle_states": ["p"], "relative_actions": True})
    model = EnsembleModel(["p", "v"], ["p"], config)
    model.fit_arrays(*servo_data(rng, 600))
    return model


def test_linearize_matches_finite_differences_of_predicts_mean():
    model = linearizable_model()
    rng = np.random.default_rng(1)
    x = np.stack([rng.uniform(-2, 2, 8), rng.uniform(-1, 1, 8)], axis=1)
    u = x[:, :1] + 0.3 * rng.standard_normal((8, 1))
    A, B, c, Sigma = model.linearize(x, u)
    assert (A.shape, B.shape, c.shape, Sigma.shape) == ((8, 2, 2), (8, 2, 1), (8, 2), (8, 2, 2))
    assert all(a.dtype == np.float64 for a in (A, B, c, Sigma))
    # Central differences of predict's mean (float32 network, float64 around it; entries up to ~6
    # where the servo's tanh is steep): with h = 3e-3 the truncation contributes ~3e-4 and the
    # float32 rounding ~5e-5 (at h = 1e-2 the truncation alone is 3e-3; at 3e-4 the rounding
    # 4e-4), so 2e-3 absolute separates a right derivative from a wrong one.
    h = 3e-3
    A_fd = np.stack([(model.predict(x + h * e, u)[0] - model.predict(x - h * e, u)[0]) / (2 * h) for e in np.eye(2)], -1)
    B_fd = ((model.predict(x, u + h)[0] - model.predict(x, u - h)[0]) / (2 * h))[..., None]
    np.testing.assert_allclose(A, A_fd, rtol=0, atol=2e-3)
    np.testing.assert_allclose(B, B_fd, rtol=0, atol=2e-3)
    assert np.abs(B).max() > 0.1  # the action moves the state: the check is not of zeros
    mean, var = model.predict(x, u)
    np.testing.assert_allclose(np.einsum("bij,bj->bi", A, x) + np.einsum("bij,bj->bi", B, u) + c, mean, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(Sigma, var[:, :, None] * np.eye(2))
    # Batched equals row by row, and a single pair gives unbatched arrays.
    for i in range(8):
        single = model.linearize(x[i], u[i])
        assert single[0].shape == (2, 2) and single[2].shape == (2,)
        for batched, alone in zip((A, B, c, Sigma), single):
            np.testing.assert_allclose(batched[i], alone, rtol=1e-6, atol=1e-7)


def test_rollout_follows_the_configured_propagation():
    model = fitted(seed=1, N=800, propagation="ts1")
    rng = np.random.default_rng(2)
    xt = torch.tensor(rng.uniform(-1, 1, (12, 2)), dtype=torch.float32)
    Ut = torch.tensor(rng.uniform(-1, 1, (12, 4, 1)), dtype=torch.float32)
    X = model.rollout(xt, Ut, torch.Generator().manual_seed(3))
    assert X.shape == (12, 5, 2) and X.dtype == torch.float32
    assert torch.equal(X, model.dynamics("ts1").rollout(xt, Ut, torch.Generator().manual_seed(3)))
    assert torch.equal(X, model.rollout(xt, Ut, torch.Generator().manual_seed(3)))
    assert not torch.equal(X, model.rollout(xt, Ut, torch.Generator().manual_seed(4)))
    model.config.propagation = "expectation"
    mean, _ = model.predict(xt.double().numpy(), Ut[:, 0].double().numpy())
    np.testing.assert_allclose(model.rollout(xt, Ut, torch.Generator())[:, 1].double().numpy(), mean, atol=1e-5)
    with pytest.raises(ValueError, match="unknown propagation 'ts2'"):
        EnsembleConfig(propagation="ts2")


def test_bfloat16_planning_agrees_with_float32():
    model = fitted(seed=0, N=800)
    rng = np.random.default_rng(1)
    xt = torch.tensor(rng.uniform(-1, 1, (64, 2)), dtype=torch.float32)
    Ut = torch.tensor(rng.uniform(-1, 1, (64, 10, 1)), dtype=torch.float32)
    full = model.dynamics("expectation", dtype="float32").rollout(xt, Ut, torch.Generator())
    half = model.dynamics("expectation", dtype="bfloat16").rollout(xt, Ut, torch.Generator())
    scale = (full[:, 1:] - full[:, :-1]).abs().mean()
    assert (half - full).abs().max() < 0.1 * scale * 10  # within a tenth of a step over 10 steps


def test_fit_on_trials_and_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    trials = []
    for _ in range(3):
        x, u, d = heteroscedastic_data(rng, 60)
        states = np.vstack([x[:1], x[:1] + np.cumsum(d, axis=0)])
        trials.append(Trial(states, u, np.arange(61) * 0.1, np.zeros(61), ("p", "v"), ("f",), 0.1))
    trials[1].states[10, 0] = np.nan  # a damaged row is dropped, not fatal
    model = EnsembleModel(["p", "v"], ["f"], EnsembleConfig(**SMALL))
    diag = model.fit(trials)
    assert diag["transitions"] == 180 - 2
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = EnsembleModel.load(path)
    x = rng.uniform(-1, 1, (20, 2))
    u = rng.uniform(-1, 1, (20, 1))
    for a, b in zip(model.predict(x, u), loaded.predict(x, u)):
        assert np.array_equal(a, b)
    assert np.array_equal(loaded.elites, model.elites)
    # Training continues identically after a reload (the generator state travels with the file).
    model.fit(trials)
    loaded.fit(trials)
    assert np.array_equal(model.predict(x, u)[0], loaded.predict(x, u)[0])


def test_a_model_file_holding_a_pickled_object_is_refused_unrun(tmp_path, tripwire):
    model = EnsembleModel(["p", "v"], ["f"], EnsembleConfig(**SMALL))
    model.fit_arrays(np.zeros((8, 2)), np.zeros((8, 1)), np.zeros((8, 2)))
    path = tmp_path / "model.pt"
    model.save(path)
    saved = torch.load(path, weights_only=True)  # what `save` writes loads without pickles
    saved["input_stats"] = {"mean": tripwire[0], "std": saved["input_stats"]["std"]}
    torch.save(saved, path)
    with pytest.raises(ConfigError, match=r"model.pt: not an ensemble model file: it holds a pickled Python object"):
        EnsembleModel.load(path)
    assert not tripwire[1].exists()


def test_a_file_of_another_kind_or_format_is_refused_by_its_tag(tmp_path):
    from forethought.controllers.nn_policy import MLPPolicy

    model = EnsembleModel(["p", "v"], ["f"], EnsembleConfig(**SMALL))
    model.fit_arrays(np.zeros((8, 2)), np.zeros((8, 1)), np.zeros((8, 2)))
    path = tmp_path / "model.pt"
    model.save(path)
    with pytest.raises(ConfigError, match=r"model.pt: not an NN policy file: its kind is None, this version reads "
                       r"'forethought.nn_policy'"):
        MLPPolicy.load(path)
    saved = torch.load(path, weights_only=True)
    saved["format"] = "forethought.ensemble/2"
    torch.save(saved, path)
    with pytest.raises(ConfigError, match=r"not an ensemble model file: its format is 'forethought.ensemble/2', "
                       r"this version reads 'forethought.ensemble/1'"):
        EnsembleModel.load(path)


def test_bad_input_gets_clear_errors(tmp_path):
    model = EnsembleModel(["p", "v"], ["f"], EnsembleConfig(**SMALL))
    with pytest.raises(RuntimeError, match="not been fitted"):
        model.predict(np.zeros(2), np.zeros(1))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        EnsembleModel.load(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="garbage.pt"):
        EnsembleModel.load(tmp_path / "garbage.pt")
    with pytest.raises(ValueError, match="angle_states"):
        EnsembleModel(["p", "v"], ["f"], EnsembleConfig(angle_states=["theta"]))
    with pytest.raises(ValueError, match="activation"):
        EnsembleConfig(activation="swish2")
    with pytest.raises(ValueError, match="elites"):
        EnsembleConfig(members=3, elites=4)
    other = Trial(np.zeros((3, 2)), np.zeros((2, 1)), np.arange(3.0), np.zeros(3), ("a", "b"), ("f",), 0.1)
    with pytest.raises(ValueError, match="trial 0 has states"):
        model.fit([other])
    fitted_model = fitted(N=200)
    with pytest.raises(ValueError, match=r"EnsembleModel: x must be \(B, 2\)"):
        fitted_model.predict(np.zeros((4, 3)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="propagation"):
        fitted_model.dynamics("ts2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_asked_for_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        EnsembleConfig(device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_like_on_cpu():
    cpu = fitted(seed=0, N=400)
    gpu = fitted(seed=0, N=400, device="cuda")
    x = np.random.default_rng(0).uniform(-1, 1, (30, 2))
    u = np.random.default_rng(1).uniform(-1, 1, (30, 1))
    assert np.allclose(cpu.predict(x, u)[0], gpu.predict(x, u)[0], atol=5e-3)
    X = gpu.dynamics("tsinf").rollout(
        torch.zeros(9, 2, device="cuda"), torch.zeros(9, 4, 1, device="cuda"), torch.Generator(device="cuda")
    )
    assert X.device.type == "cuda" and torch.isfinite(X).all()


def test_mirror_carries_what_one_half_of_the_states_taught_to_the_other():
    """heteroscedastic_data's change is odd in (x, u); trained on x >= 0 alone, the mirrored model
    predicts the unseen half x < 0 (against the noise-free change) clearly better than the
    plain one, and about as well as the half it saw."""
    x, u, d = heteroscedastic_data(np.random.default_rng(0), 400, low=0.0)
    xt, ut, _ = heteroscedastic_data(np.random.default_rng(1), 200, low=0.0)
    change = np.stack([0.2 * xt[:, 1], 0.3 * np.sin(2 * xt[:, 0]) + 0.2 * ut[:, 0]], axis=1)
    errors = {}
    for mirror in (False, True):
        model = EnsembleModel(["p", "v"], ["f"], EnsembleConfig(**{**SMALL, "max_epochs": 20, "mirror": mirror}))
        assert model.fit_arrays(x, u, d)["transitions"] == 400  # counted as given
        errors[mirror] = [np.sqrt(((model.predict(s * xt, s * ut)[0] - s * (xt + change)) ** 2).mean()) for s in (1, -1)]
    assert errors[True][1] < 0.75 * errors[False][1], errors  # 0.15 to 0.66 of it over three seeds
    assert errors[True][1] < 1.5 * errors[True][0], errors  # 0.96 to 1.07 of it
