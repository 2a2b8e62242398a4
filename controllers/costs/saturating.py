"""The `saturating` term: PILCO's 1 - exp(-d^2 / (2 sigma^2)), quadratic near the target, 1 far from it.

    - type: saturating
      weights: {cart: 1.0, pole: 1.0}   # d^2 as in controllers.costs.distance
      target: {pole: 3.14159}
      angles: [pole]
      sigma: 0.25                       # the width, in the units of sqrt(d^2)

PILCO (controllers.pilco.ExpectedCost) takes the expectation of this term under a Gaussian state
in closed form from the same parameters (`distance`, `sigma`).
"""

from __future__ import annotations

import math

import torch

from forethought.controllers.costs.distance import WeightedDistance, distance_label
from forethought.controllers.costs.reader import TermReader
from forethought.controllers.costs.term import Term, TermDerivatives, register


@register("saturating", keys=("weights", "target", "angles", "sigma"))
class SaturatingCost(Term):
    """1 - exp(-d^2 / (2 sigma^2)) with d^2 a WeightedDistance. Derivatives analytic, exact but where
    the closeness is held at twice the smallest normal number (`_closeness`)."""

    def __init__(self, distance: WeightedDistance, sigma: float):
        self.distance, self.sigma = distance, float(sigma)

    def _closeness(self, d2: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """exp(-d^2 / (2 sigma^2)): 1 at the target; the term's value is 1 minus this. With in_place
        (not for autograd), computed over d2 itself (the same numbers: d2 / (-2 sigma^2) is
        -d2 / (2 sigma^2)).

        The exponent is held above the log of twice the dtype's smallest normal number (a margin
        for its rounding): exp's results below the smallest are subnormal, at forty times the cost
        (a quarter of an MPPI plan's cost in float32, where most candidates end far from the
        target). 1 minus the closeness is the same either way (1 in float32)."""
        floor = math.log(2.0 * torch.finfo(d2.dtype).tiny)
        if in_place:
            return d2.div_(-2.0 * self.sigma**2).clamp_min_(floor).exp_()
        return torch.exp(torch.clamp_min(-d2 / (2.0 * self.sigma**2), floor))

    def value(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        d2 = self.distance.evaluate(x)[0]
        if torch.is_grad_enabled():
            return 1.0 - self._closeness(d2)
        # Where nothing is differentiated (a planner's batches), in place over a distance no one else
        # holds; 1 - E in one operation.
        return torch.rsub(self._closeness(d2, in_place=True), 1.0)

    def derivatives(self, x: torch.Tensor, u: torch.Tensor) -> TermDerivatives:
        d2, g, h = self.distance.evaluate(x, derivatives=True)
        (i,) = self.distance.tensors(x, "index")
        E = self._closeness(d2)
        s2 = 2.0 * self.sigma**2
        a = E / s2  # d l / d d^2
        d = TermDerivatives.zeros(x, u, 1.0 - E)
        d.l_x[:, i] = a[:, None] * g
        d.l_xx[:, i[:, None], i[None, :]] = torch.diag_embed(a[:, None] * h) - (a / s2)[:, None, None] * g[:, :, None] * g[:, None, :]
        return d

    @classmethod
    def from_config(cls, r: TermReader, scene) -> "SaturatingCost":
        return cls(WeightedDistance.from_config(r), r.number("sigma", positive=True))

    @classmethod
    def label(cls, i: int, raw: dict) -> str:
        return distance_label(i, cls.name, raw)
