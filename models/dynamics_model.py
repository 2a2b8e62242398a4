"""The contract every dynamics model meets, and the error for a model that lacks a capability."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from forethought.robots.trial import Trial


class MissingCapability(TypeError):
    """A controller asked a model for something it does not offer (e.g. iLQR on a model without `linearize`)."""


@runtime_checkable
class DynamicsModel(Protocol):
    """x_{t+1} ~ p(. | x_t, u_t), learned from trials or known.

    Shapes: x (B, n), u (B, m); a single (n,) / (m,) pair is accepted too and gives unbatched outputs.
    """

    def fit(self, trials: Sequence[Trial]) -> dict:
        """Fit on trials; returns diagnostics (losses, times)."""

    def predict(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (B, n) and variance (B, n) of the next state."""

    def save(self, path: str | Path) -> None: ...


def as_batch(x, u, n: int, m: int, who: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """x (B, n) and u (B, m) as float64 batches, and whether a single (n,), (m,) pair was given;
    ValueError naming `who` for any other shape."""
    x = np.asarray(x, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    single = x.ndim == 1
    x2, u2 = np.atleast_2d(x), np.atleast_2d(u)
    if x2.ndim != 2 or x2.shape[1] != n or u2.shape != (len(x2), m):
        raise ValueError(f"{who}: x must be (B, {n}) and u (B, {m}), got {x.shape} and {u.shape}")
    return x2, u2, single


def require(model: object, capability: str, controller: str) -> None:
    """Raise MissingCapability unless `model` has the method `capability` that `controller` needs."""
    if not callable(getattr(model, capability, None)):
        raise MissingCapability(
            f"{controller} needs a model with `{capability}`, and {type(model).__name__} has none"
        )
