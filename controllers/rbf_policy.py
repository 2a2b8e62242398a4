"""PILCO's policies: a linear map or an RBF network, squashed into the action bounds by a sine.

A policy acts on the model's state x (n,), with the angles given as (sin, cos) pairs as the GP sees
them: its input is z = [plain states, sin angles, cos angles] (D,). Its raw output is squashed by
u = c + r (9 sin v + sin 3v) / 8 (c the middle of the bounds, r half their width), smooth and
within [low, high] for every v. Under a Gaussian state each policy gives the exact moments of u
after moment matching the angles and the squashing, with the state-action covariance, so that the
whole chain is differentiable in the policy's parameters.

The RBF network is the mean of a GP with unit signal variance, noise 0.01^2, "training inputs" the
centres c_i and "targets" y_i, all of them parameters: v(z) = sum_i beta_i k(z, c_i),
beta = (K + 0.01^2 I)^-1 y, k with per-output ARD length-scales.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from forethought.models.moment_matching import (
    Moments,
    augment_with_trig,
    linear_moments,
    se_moment_match,
    sine_saturation,
)

DTYPE = torch.float64
RBF_NOISE_VAR = 0.01**2


class SaturatedPolicy(torch.nn.Module):
    """u = saturation(raw(z(x))); subclasses give `raw_moments` and `raw` over z (B, D).

    n: the model's state dimension; angle_index: (k,) entries of x that are angles; low, high: (m,)
    finite action bounds.
    """

    def __init__(self, n: int, angle_index, low, high):
        super().__init__()
        low = torch.as_tensor(np.asarray(low, dtype=np.float64))
        high = torch.as_tensor(np.asarray(high, dtype=np.float64))
        if not (torch.all(torch.isfinite(low)) and torch.all(torch.isfinite(high))):
            raise ValueError("a saturated policy needs finite action bounds")
        if torch.any(high <= low):
            raise ValueError("action bounds must have high > low")
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.n, self.m = int(n), low.shape[0]
        angles = torch.as_tensor(list(angle_index), dtype=torch.long)
        self.register_buffer("angle_index", angles)
        self.register_buffer("plain_index", torch.tensor([i for i in range(n) if i not in angles.tolist()], dtype=torch.long))
        k = len(angles)
        self.register_buffer("z_index", torch.cat([self.plain_index, torch.arange(n, n + 2 * k)]))
        self.input_dim = len(self.z_index)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """z (B, D) = [plain states, sin angles, cos angles] for x (B, n)."""
        angles = x[..., self.angle_index]
        return torch.cat([x[..., self.plain_index], torch.sin(angles), torch.cos(angles)], dim=-1)

    def feature_moments(self, mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Moment-matched z for x ~ N(mean (B, n), cov (B, n, n)): mean (B, D), cov (B, D, D), Cov[x, z] (B, n, D)."""
        aug_mean, aug_cov = augment_with_trig(mean, cov, self.angle_index)
        z = self.z_index
        return aug_mean[:, z], aug_cov[:, z[:, None], z[None, :]], aug_cov[:, : self.n, z]

    def raw_moment_map(self) -> Callable[[torch.Tensor, torch.Tensor], Moments]:
        """(z mean (B, D), z cov (B, D, D)) -> Moments of the raw output, with whatever depends on the
        parameters alone computed once (a rollout calls it at every step)."""
        raise NotImplementedError

    def raw(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def moment_map(self) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(mean (B, n), cov (B, n, n)) of x -> moments of u: mean (B, m), cov (B, m, m), Cov[x, u] (B, n, m)."""
        augmented = self.augmented_moment_map()

        def moments(mean: torch.Tensor, cov: torch.Tensor):
            return augmented(*augment_with_trig(mean, cov, self.angle_index))

        return moments

    def augmented_moment_map(self) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Moments of u from the trig-augmented Gaussian over y = [x, sin x_a, cos x_a] (mean (B, n+2k),
        cov (B, n+2k, n+2k), as `augment_with_trig` with this policy's angles gives it): mean (B, m),
        cov (B, m, m) and Cov[x, u] (B, n, m), so that a rollout matches the angles once per step."""
        raw_map = self.raw_moment_map()
        z = self.z_index

        def moments(aug_mean: torch.Tensor, aug_cov: torch.Tensor):
            raw = raw_map(aug_mean[:, z], aug_cov[:, z[:, None], z[None, :]])
            sat = sine_saturation(raw.mean, raw.cov, self.low, self.high)
            return sat.mean, sat.cov, aug_cov[:, : self.n, z] @ (raw.C @ sat.C)

        return moments

    def moments(self, mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Moments of u for x ~ N(mean (B, n), cov (B, n, n)): mean (B, m), cov (B, m, m), Cov[x, u] (B, n, m)."""
        return self.moment_map()(mean, cov)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Actions (B, m) at states x (B, n)."""
        v = self.raw(self.features(x))
        centre, half = 0.5 * (self.high + self.low), 0.5 * (self.high - self.low)
        return centre + half * (9.0 * torch.sin(v) + torch.sin(3.0 * v)) / 8.0

    def act(self, x: np.ndarray, t: int = 0) -> np.ndarray:
        """The action (m,) at state x (n,)."""
        with torch.no_grad():
            return self(torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(1, -1))[0].numpy()

    def reset(self) -> None:
        pass


class LinearPolicy(SaturatedPolicy):
    """u = saturation(W z + b); W (m, D) starts at small random values, b at zero."""

    def __init__(self, n: int, angle_index, low, high, seed: int = 0):
        super().__init__(n, angle_index, low, high)
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(0.01 * torch.randn(self.m, self.input_dim, dtype=DTYPE, generator=generator))
        self.bias = torch.nn.Parameter(torch.zeros(self.m, dtype=DTYPE))

    def raw_moment_map(self):
        return lambda mean, cov: linear_moments(mean, cov, self.weight, self.bias)

    def raw(self, z):
        return z @ self.weight.T + self.bias


class RBFPolicy(SaturatedPolicy):
    """u = saturation(sum_i beta_i k(z, c_i)) with `basis` centres (see the module docstring).

    The centres start as draws from N(init_mean, init_cov) over z (the start state's features, as
    PILCO does), the targets as 0.1 N(0, 1) and the length-scales at `lengthscale`.
    """

    def __init__(self, n: int, angle_index, low, high, basis: int = 10, lengthscale: float = 1.0,
                 init_mean: torch.Tensor | None = None, init_cov: torch.Tensor | None = None, seed: int = 0):
        super().__init__(n, angle_index, low, high)
        if basis < 1 or not lengthscale > 0:
            raise ValueError(f"an RBF policy needs basis >= 1 and lengthscale > 0, got {basis} and {lengthscale}")
        D = self.input_dim
        generator = torch.Generator().manual_seed(seed)
        mean = torch.zeros(D, dtype=DTYPE) if init_mean is None else torch.as_tensor(init_mean, dtype=DTYPE)
        cov = torch.eye(D, dtype=DTYPE) if init_cov is None else torch.as_tensor(init_cov, dtype=DTYPE)
        root = torch.linalg.cholesky(cov + 1e-9 * torch.eye(D, dtype=DTYPE))
        centres = mean + torch.randn(basis, D, dtype=DTYPE, generator=generator) @ root.T
        self.centres = torch.nn.Parameter(centres)
        self.targets = torch.nn.Parameter(0.1 * torch.randn(basis, self.m, dtype=DTYPE, generator=generator))
        self.log_lengthscales = torch.nn.Parameter(torch.full((self.m, D), float(np.log(lengthscale)), dtype=DTYPE))

    def _beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lengthscales (m, D), beta (m, basis))."""
        ell = torch.exp(self.log_lengthscales)
        scaled = (self.centres[None, :, None, :] - self.centres[None, None, :, :]) / ell[:, None, None, :]
        K = torch.exp(-0.5 * (scaled * scaled).sum(-1))
        K = K + RBF_NOISE_VAR * torch.eye(K.shape[-1], dtype=DTYPE)
        beta = torch.linalg.solve(K, self.targets.T[..., None])[..., 0]
        return ell, beta

    def raw_moment_map(self):
        ell, beta = self._beta()
        unit = torch.ones(self.m, dtype=DTYPE)
        return lambda mean, cov: se_moment_match(mean, cov, self.centres, beta, ell, unit)

    def raw(self, z):
        ell, beta = self._beta()
        scaled = (z[None, :, None, :] - self.centres[None, None, :, :]) / ell[:, None, None, :]
        k = torch.exp(-0.5 * (scaled * scaled).sum(-1))  # (m, B, basis)
        return (k @ beta[..., None])[..., 0].T
