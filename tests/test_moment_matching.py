"""Moment matching against Monte Carlo through the same functions, symmetry and PSD, and gradchecks.

The Monte Carlo draws are scrambled Sobol points (randomised quasi-Monte Carlo, 2^18 of them):
their error is far below the 1e-3 tolerance, which plain draws would need millions to reach.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forethought.controllers.rbf_policy import RBFPolicy
from forethought.models.gp import GPConfig, GPModel
from forethought.models.moment_matching import (
    augment_with_trig_moments,
    se_moment_match,
    sine_saturation,
    trig_moments,
)
from forethought.robots.trial import Trial

DT = torch.float64
SAMPLES = 2**18


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_gaussian(D: int, generator: torch.Generator, scale: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.randn(1, D, dtype=DT, generator=generator) * 0.5
    A = torch.randn(D, D, dtype=DT, generator=generator) * scale / np.sqrt(D)
    return mean, (A @ A.T + 1e-3 * torch.eye(D, dtype=DT))[None]


def sample(mean: torch.Tensor, cov: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """count draws from N(mean (1, D), cov (1, D, D)) by scrambled Sobol points."""
    sobol = torch.quasirandom.SobolEngine(mean.shape[1], scramble=True, seed=seed)
    uniform = sobol.draw(count, dtype=DT).clamp(1e-12, 1 - 1e-12)
    return mean[0] + torch.special.ndtri(uniform) @ torch.linalg.cholesky(cov[0]).T


def cross_cov(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - a.mean(0)).T @ (b - b.mean(0)) / (len(a) - 1)


def assert_close(matched: torch.Tensor, monte_carlo: torch.Tensor, rel: float = 0.02, abs_: float = 1e-3) -> None:
    err = (matched - monte_carlo).abs()
    bound = torch.maximum(rel * monte_carlo.abs(), torch.full_like(err, abs_))
    assert torch.all(err <= bound), f"moment matching {matched} vs Monte Carlo {monte_carlo}"


def assert_symmetric_psd(cov: torch.Tensor) -> None:
    assert torch.allclose(cov, cov.transpose(-1, -2), atol=1e-12)
    assert torch.linalg.eigvalsh(cov).min() > -1e-10


# -- sines and cosines, and the saturation ------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trig_moments_match_monte_carlo(seed):
    g = torch.Generator().manual_seed(seed)
    mean, cov = random_gaussian(3, g, scale=1.5)
    moments = trig_moments(mean, cov)
    w = sample(mean, cov, SAMPLES, seed)
    y = torch.cat([torch.sin(w), torch.cos(w)], dim=1)
    assert_close(moments.mean[0], y.mean(0))
    assert_close(moments.cov[0], torch.cov(y.T))
    assert_close(cov[0] @ moments.C[0], cross_cov(w, y))
    assert_symmetric_psd(moments.cov)


def test_augmented_trig_c_carries_covariances_through_the_angles():
    """Cov[x, (sin, cos)] = Cov[x, angles] @ C, the rule a rollout uses for the action's covariance."""
    g = torch.Generator().manual_seed(3)
    mean, cov = random_gaussian(4, g, scale=1.0)
    index = torch.tensor([1, 3])
    augmented = augment_with_trig_moments(mean, cov, index)
    torch.testing.assert_close(augmented.cov[:, :4, 4:], cov[:, :, index] @ augmented.C, rtol=0, atol=1e-14)
    torch.testing.assert_close(augmented.C, trig_moments(mean[:, index], cov[:, index[:, None], index]).C)


def test_trig_moments_stay_finite_for_huge_variances():
    """An aggressive policy can give its raw output a variance in the thousands: the sines then
    average out (mean 0, variance 1/2), and neither the moments nor their gradients may turn NaN."""
    mean = torch.tensor([[10.8, 32.4]], dtype=DT, requires_grad=True)
    root = torch.tensor([[24.1, 0.0], [72.3, 0.5]], dtype=DT, requires_grad=True)
    moments = trig_moments(mean, (root @ root.T)[None])
    total = moments.mean.sum() + moments.cov.sum() + moments.C.sum()
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(mean.grad).all() and torch.isfinite(root.grad).all()
    torch.testing.assert_close(torch.diagonal(moments.cov[0]), torch.full((4,), 0.5, dtype=DT), rtol=0, atol=1e-9)


def test_sine_saturation_matches_monte_carlo_and_stays_in_bounds():
    g = torch.Generator().manual_seed(3)
    mean, cov = random_gaussian(2, g, scale=2.0)
    low, high = torch.tensor([-10.0, -1.0], dtype=DT), torch.tensor([10.0, 3.0], dtype=DT)
    moments = sine_saturation(mean, cov, low, high)
    x = sample(mean, cov, SAMPLES, 3)
    u = 0.5 * (high + low) + 0.5 * (high - low) * (9 * torch.sin(x) + torch.sin(3 * x)) / 8
    assert torch.all(u >= low - 1e-12) and torch.all(u <= high + 1e-12)
    assert_close(moments.mean[0], u.mean(0), abs_=1e-2)  # actions of size 10: 1e-3 of their range
    assert_close(moments.cov[0], torch.cov(u.T), abs_=1e-2)
    assert_close(cov[0] @ moments.C[0], cross_cov(x, u), abs_=1e-2)


def test_rbf_network_moments_match_monte_carlo():
    """The raw RBF network is a GP mean: its moments under a Gaussian are exact."""
    policy = RBFPolicy(3, [], [-2.0, -2.0], [2.0, 2.0], basis=8, lengthscale=0.7, seed=4)
    with torch.no_grad():
        policy.targets.mul_(10.0)
    g = torch.Generator().manual_seed(4)
    mean, cov = random_gaussian(3, g)
    with torch.no_grad():
        moments = policy.raw_moment_map()(mean, cov)
        z = sample(mean, cov, SAMPLES, 4)
        v = policy.raw(z)
    assert_close(moments.mean[0], v.mean(0))
    assert_close(moments.cov[0], torch.cov(v.T))
    assert_close(cov[0] @ moments.C[0], cross_cov(z, v))


# -- the GP: propagate against Monte Carlo through the same posterior --------------------------------------


def smooth_trials(seed: int, count: int, T: int = 40) -> list[Trial]:
    """A 2-state, 1-action nonlinear system (no angles, so the GP inputs are the Gaussian itself)."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(count):
        x = np.zeros((T + 1, 2))
        x[0] = rng.normal(0.0, 0.5, 2)
        u = rng.uniform(-1.0, 1.0, (T, 1))
        for t in range(T):
            p, v = x[t]
            x[t + 1] = [p + 0.1 * v, v + 0.1 * (-2.0 * np.sin(2.0 * p) - 0.3 * v + u[t, 0])]
        trials.append(Trial(x, u, np.arange(T + 1) * 0.1, np.zeros(T + 1), ("p", "v"), ("u",), 0.1))
    return trials


@pytest.fixture(scope="module")
def fitted_models():
    exact = GPModel(("p", "v"), ("u",), GPConfig(restarts=0, max_iter=60))
    exact.fit(smooth_trials(0, 3))
    sparse = GPModel(("p", "v"), ("u",), GPConfig(restarts=0, max_iter=60, inducing=60, noise_floor=1e-4))
    sparse.fit(smooth_trials(1, 3))
    assert not exact.sparse and sparse.sparse
    return {"exact": exact, "sparse": sparse}


@pytest.mark.parametrize("kind", ["exact", "sparse"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_propagate_matches_monte_carlo_through_the_posterior(fitted_models, kind, seed):
    model = fitted_models[kind]
    g = torch.Generator().manual_seed(10 + seed)
    mean, cov = random_gaussian(3, g, scale=0.6)
    next_mean, next_cov, cross = model.propagate(mean, cov)

    xu = sample(mean, cov, SAMPLES, seed)
    chunks = [model.posterior(model.features(c[:, :2], c[:, 2:])) for c in torch.split(xu, 50_000)]
    f_mean = torch.cat([c[0] for c in chunks])
    f_var = torch.cat([c[1] for c in chunks])
    x_next = xu[:, :2] + f_mean  # the next state's conditional mean; its spread adds E[var f]
    mc_cov = torch.cov(x_next.T) + torch.diag(f_var.mean(0))
    assert_close(next_mean[0], x_next.mean(0))
    assert_close(next_cov[0], mc_cov)
    assert_close(cross[0], cross_cov(xu, x_next))
    assert_symmetric_psd(next_cov)


def test_batched_propagate_equals_one_at_a_time(fitted_models):
    model = fitted_models["exact"]
    g = torch.Generator().manual_seed(7)
    gaussians = [random_gaussian(3, g) for _ in range(4)]
    mean = torch.cat([m for m, _ in gaussians])
    cov = torch.cat([c for _, c in gaussians])
    batched = model.propagate(mean, cov)
    for i, (m, c) in enumerate(gaussians):
        single = model.propagate(m, c)
        for b, s in zip(batched, single):
            torch.testing.assert_close(b[i], s[0], rtol=1e-12, atol=1e-12)


def test_propagate_of_a_point_is_the_posterior_mean(fitted_models):
    """With zero input covariance, moment matching reduces to the GP's own prediction."""
    model = fitted_models["exact"]
    xu = torch.tensor([[0.3, -0.2, 0.5]], dtype=DT)
    next_mean, next_cov, _ = model.propagate(xu, torch.zeros(1, 3, 3, dtype=DT))
    mean, var = model.posterior(model.features(xu[:, :2], xu[:, 2:]))
    torch.testing.assert_close(next_mean, xu[:, :2] + mean, rtol=0, atol=1e-12)
    # The latent variance is a difference of nearly equal terms: agreement to rounding of the signal variance.
    torch.testing.assert_close(torch.diagonal(next_cov[0]), var[0], rtol=0, atol=1e-8)


# -- gradients -------------------------------------------------------------------------------------------


def well_conditioned_model(angle_states: list[str]) -> GPModel:
    """A small GP whose noise floor keeps iK moderate, so that finite differences stay accurate."""
    model = GPModel(("p", "v"), ("u",), GPConfig(angle_states=angle_states, restarts=0, max_iter=20, noise_floor=1e-3))
    model.fit(smooth_trials(2, 1, T=20))
    return model


@pytest.mark.parametrize("angle_states", [[], ["p"]])
def test_gradcheck_propagate(angle_states):
    model = well_conditioned_model(angle_states)
    g = torch.Generator().manual_seed(5)
    mean, cov = random_gaussian(3, g)
    mean = mean.clone().requires_grad_(True)
    root = torch.linalg.cholesky(cov[0]).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m, r: model.propagate(m, (r @ r.T)[None]), (mean, root), eps=1e-6, atol=1e-6)


def test_gradcheck_se_moment_match_in_all_arguments():
    g = torch.Generator().manual_seed(8)
    N, D, E = 6, 2, 2
    inputs = torch.randn(N, D, dtype=DT, generator=g).requires_grad_(True)
    beta = torch.randn(E, N, dtype=DT, generator=g).requires_grad_(True)
    ell = (0.5 + torch.rand(E, D, dtype=DT, generator=g)).requires_grad_(True)
    signal = (0.5 + torch.rand(E, dtype=DT, generator=g)).requires_grad_(True)
    mean, cov = random_gaussian(D, g)
    mean = mean.requires_grad_(True)

    def f(m, x, b, lengthscales, s):
        return se_moment_match(m, cov, x, b, lengthscales, s)

    assert torch.autograd.gradcheck(f, (mean, inputs, beta, ell, signal), eps=1e-6, atol=1e-6)
