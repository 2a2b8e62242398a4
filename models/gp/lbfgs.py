"""L-BFGS on autograd gradients that backs off where the loss cannot be evaluated: the GP's
hyperparameters and PILCO's policy are both fitted with it."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import scipy.optimize
import torch

from forethought.models.gp.kernel import DTYPE
from forethought.robots.progress import Progress


class Minimum(NamedTuple):
    """The best loss seen, how many evaluations it took and how the optimiser stopped."""

    value: float
    evaluations: int
    message: str


def minimize_lbfgs(loss: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], max_iter: int,
                   until_max_iter: bool = False, progress: Progress | None = None) -> Minimum:
    """Minimise loss() over the tensors `params` in place: scipy's L-BFGS-B on autograd gradients.

    A loss that is not finite or whose evaluation fails with a linear-algebra error counts as +inf,
    so the line search backs off; the params end at the best point seen. until_max_iter: ignore the
    convergence tests on small steps and gradients and stop only after max_iter iterations (or when
    the line search fails), for losses whose gradients are small while far from converged.
    progress: told each evaluation (counted on from where it stands) and the best value so far.
    """
    params = list(params)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    best = {"value": math.inf, "x": torch.cat([p.detach().reshape(-1) for p in params]).clone()}
    evaluated_before = progress.done if progress is not None else 0
    evaluations = 0

    def assign(x: torch.Tensor) -> None:
        with torch.no_grad():
            for p, chunk, shape in zip(params, torch.split(x, sizes), shapes):
                p.copy_(chunk.reshape(shape))

    def fun(x_np: np.ndarray):
        nonlocal evaluations
        evaluations += 1
        if progress is not None:
            progress.update(evaluated_before + evaluations, best=best["value"])
        x = torch.as_tensor(x_np, dtype=DTYPE)
        assign(x)
        for p in params:
            p.grad = None
        try:
            value = loss()
            if not torch.isfinite(value):
                raise FloatingPointError
            grads = torch.autograd.grad(value, params, allow_unused=True)
        except (FloatingPointError, RuntimeError, np.linalg.LinAlgError, ValueError) as err:
            if not isinstance(err, FloatingPointError) and not is_numerical(err):
                raise
            return math.inf, np.zeros_like(x_np)
        g = torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1) for p, gr in zip(params, grads)])
        if not torch.all(torch.isfinite(g)):
            return math.inf, np.zeros_like(x_np)
        v = float(value.detach())
        if v < best["value"]:
            best["value"], best["x"] = v, x.clone()
        return v, g.numpy().astype(np.float64)

    x0 = best["x"].numpy().astype(np.float64)
    options = {"maxiter": max_iter, "maxfun": 2 * max_iter}
    if until_max_iter:
        options.update(ftol=0.0, gtol=0.0)
    result = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options=options)
    assign(best["x"])
    return Minimum(best["value"], int(result.nfev), str(result.message))


def is_numerical(err: Exception) -> bool:
    """Failures that a bad step in hyperparameter or policy space can cause (not programming errors)."""
    if type(err).__name__ in ("NotPSDError", "LinAlgError", "_LinAlgError"):
        return True
    text = str(err).lower()
    return any(word in text for word in ("cholesky", "singular", "positive-definite"))
