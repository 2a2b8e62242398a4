"""The GP's kernel, its batched gpytorch model and the Cholesky factorisation that survives a
nearly singular kernel matrix."""

from __future__ import annotations

import contextlib
import logging

import gpytorch
import numpy as np
import torch

log = logging.getLogger(__name__)

DTYPE = torch.float64


class CholeskyError(np.linalg.LinAlgError):
    """A matrix that stays indefinite however much jitter is added."""


def robust_cholesky(A: torch.Tensor, what: str, max_tries: int = 10) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of the batch A (..., N, N), adding jitter where it fails.

    The jitter starts at 1e-10 times the mean diagonal and grows tenfold per failed try; every
    retry is logged as a warning naming `what`. Returns (L, largest jitter added, 0.0 if none);
    raises CholeskyError after max_tries.
    """
    L, info = torch.linalg.cholesky_ex(A)
    if not bool((info > 0).any()):
        return L, 0.0
    scale = torch.diagonal(A, dim1=-2, dim2=-1).mean().abs().item() or 1.0
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    jitter = 1e-10 * scale
    for _ in range(max_tries):
        log.warning("Cholesky factorisation of %s failed; retrying with jitter %.1e", what, jitter)
        L, info = torch.linalg.cholesky_ex(A + jitter * eye)
        if not bool((info > 0).any()):
            return L, jitter
        jitter *= 10.0
    raise CholeskyError(f"Cholesky factorisation of {what} failed even with jitter {jitter / 10:.1e}")


def _positive():
    """Positive hyperparameters optimised in log space: every scale is equally easy to reach."""
    return gpytorch.constraints.Positive(transform=torch.exp, inv_transform=torch.log)


class BatchedGP(gpytorch.models.ExactGP):
    """E independent GPs (batch over outputs) with zero mean and scaled SE-ARD kernels.

    train_x: (E, N, D) (the same inputs repeated), train_y: (E, N); noise_floor: least noise variance.
    """

    def __init__(self, train_x, train_y, noise_floor: float):
        E, _, D = train_x.shape
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            batch_shape=torch.Size([E]),
            noise_constraint=gpytorch.constraints.GreaterThan(noise_floor, transform=torch.exp, inv_transform=torch.log),
        )
        super().__init__(train_x, train_y, likelihood)
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=torch.Size([E]))
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.RBFKernel(ard_num_dims=D, batch_shape=torch.Size([E]), lengthscale_constraint=_positive()),
            batch_shape=torch.Size([E]),
            outputscale_constraint=_positive(),
        )
        self.to(DTYPE)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    @property
    def lengthscales(self) -> torch.Tensor:
        return self.covar_module.base_kernel.lengthscale.reshape(self.covar_module.batch_shape[0], -1)

    @property
    def signal_var(self) -> torch.Tensor:
        return self.covar_module.outputscale.reshape(-1)

    @property
    def noise_var(self) -> torch.Tensor:
        return self.likelihood.noise.reshape(-1)


@contextlib.contextmanager
def exact_computations():
    """gpytorch on Cholesky factorisations throughout (no CG, no Lanczos): exact float64 numbers."""
    with gpytorch.settings.max_cholesky_size(10**9), gpytorch.settings.fast_computations(False, False, False):
        yield


def se_kernel(a: torch.Tensor, b: torch.Tensor, lengthscales: torch.Tensor, signal_var: torch.Tensor,
              expanded: bool = False) -> torch.Tensor:
    """SE-ARD kernel matrices (E, A, B) for inputs a (A, D), b (B, D), lengthscales (E, D), signal_var (E,).

    The squared distances come from the differences by default: no cancellation, so K is accurate to
    rounding, as the Cholesky factorisations of a fit want. expanded: from |a|^2 + |b|^2 - 2 a.b
    instead (after centring both on b's mean), one matrix product rather than an (E, A, B, D)
    tensor: several times faster for thousands of points, and within about 1e-12 relative in float64.
    """
    if not expanded:
        scaled = (a[None, :, None, :] - b[None, None, :, :]) / lengthscales[:, None, None, :]
        squared = (scaled * scaled).sum(-1)
    else:
        centre = b.mean(dim=0)
        sa = (a - centre)[None] / lengthscales[:, None, :]
        sb = (b - centre)[None] / lengthscales[:, None, :]
        norms = (sa * sa).sum(-1)[..., None] + (sb * sb).sum(-1)[:, None, :]
        squared = torch.baddbmm(norms, sa, sb.transpose(-1, -2), alpha=-2.0).clamp_min_(0.0)
    return signal_var[:, None, None] * torch.exp(-0.5 * squared)


def farthest_points(X: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (count,) of rows of X (N, D) in farthest-point order: each the farthest from those before,
    starting from the row nearest the mean. Deterministic; covers the data's extremes and gaps."""
    count = min(count, X.shape[0])
    chosen = [int(torch.argmin(((X - X.mean(0)) ** 2).sum(-1)))]
    nearest = ((X - X[chosen[0]]) ** 2).sum(-1)
    for _ in range(count - 1):
        i = int(torch.argmax(nearest))
        chosen.append(i)
        nearest = torch.minimum(nearest, ((X - X[i]) ** 2).sum(-1))
    return torch.tensor(chosen, dtype=torch.long)
