"""PILCO's GP dynamics model: the model (fit, predict, linearize, rollout, moment matching), its
kernel and batched gpytorch model, and the L-BFGS that fits it."""

from forethought.models.gp.kernel import (
    DTYPE,
    BatchedGP,
    CholeskyError,
    exact_computations,
    farthest_points,
    robust_cholesky,
    se_kernel,
)
from forethought.models.gp.lbfgs import Minimum, is_numerical, minimize_lbfgs
from forethought.models.gp.model import GPConfig, GPModel

__all__ = [
    "DTYPE",
    "BatchedGP",
    "CholeskyError",
    "GPConfig",
    "GPModel",
    "Minimum",
    "exact_computations",
    "farthest_points",
    "is_numerical",
    "minimize_lbfgs",
    "robust_cholesky",
    "se_kernel",
]
