"""The `state` term: 0.5 d^2(x), quadratic in chosen state entries (angles wrapped).

    - type: state
      weights: {d_shoulder_pan: 0.01}   # state name -> weight
      target: {block:x: 0.2}            # as in controllers.costs.distance
      angles: [pole]
"""

from __future__ import annotations

import torch

from forethought.controllers.costs.distance import WeightedDistance, distance_label
from forethought.controllers.costs.reader import TermReader
from forethought.controllers.costs.term import Term, TermDerivatives, register


@register("state", keys=("weights", "target", "angles"))
class StateCost(Term):
    """0.5 d^2(x) with d^2 a WeightedDistance. Derivatives analytic and exact."""

    def __init__(self, distance: WeightedDistance):
        self.distance = distance

    def value(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.distance.evaluate(x)[0]

    def derivatives(self, x: torch.Tensor, u: torch.Tensor) -> TermDerivatives:
        d2, g, h = self.distance.evaluate(x, derivatives=True)
        (i,) = self.distance.tensors(x, "index")
        d = TermDerivatives.zeros(x, u, 0.5 * d2)
        d.l_x[:, i] = 0.5 * g
        d.l_xx[:, i, i] = 0.5 * h
        return d

    @classmethod
    def from_config(cls, r: TermReader, scene) -> "StateCost":
        return cls(WeightedDistance.from_config(r))

    @classmethod
    def label(cls, i: int, raw: dict) -> str:
        return distance_label(i, cls.name, raw)
