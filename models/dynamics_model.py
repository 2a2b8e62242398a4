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


def require(model: object, capability: str, controller: str) -> None:
    """Raise MissingCapability unless `model` has the method `capability` that `controller` needs."""
    if not callable(getattr(model, capability, None)):
        raise MissingCapability(
            f"{controller} needs a model with `{capability}`, and {type(model).__name__} has none"
        )
