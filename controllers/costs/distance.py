"""The weighted squared distance of some state entries from their targets, which the `state` and
`saturating` terms (and PILCO's expected cost, through their parameters) are built on.

In YAML (both terms):

    weights: {cart: 1.0, pole: 1.0}   # state name -> weight
    target: {pole: 3.14159}           # state name -> value (default 0), or the name of a condition
                                      # key holding a list in the order of `weights`
    angles: [pole]                    # these e_i enter as 2 (1 - cos e_i) (wrap-around safe)
"""

from __future__ import annotations

import numpy as np
import torch

from forethought.controllers.costs.reader import TermReader
from forethought.controllers.costs.term import TensorParameters


class WeightedDistance(TensorParameters):
    """d^2(x) = sum_i w_i e_i^2 with e_i = x[index_i] - target_i; angle entries add w_i 2 (1 - cos e_i).

    The angle form equals e^2 near e = 0 and is the squared chord between the two angles, so a
    pole at +pi and at -pi is at the same distance from its target.
    index (k,), weights (k,), target (k,), angle (k,) bool: numpy, as read from the YAML.
    """

    def __init__(self, index, weights, target, angle):
        self.index = np.asarray(index, dtype=np.intp)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.target = np.asarray(target, dtype=np.float64)
        self.angle = np.asarray(angle, dtype=bool)
        self._any_angle = bool(self.angle.any())
        # The angle entries' positions in e, to overwrite their squares with their chords in place:
        # no cos over every entry and no select over both forms (a sampling planner's whole batch).
        self.angle_positions = np.flatnonzero(self.angle)

    def evaluate(self, x: torch.Tensor, derivatives: bool = False):
        """d2 (...) of x (..., n); with derivatives also its gradient (..., k) and its (diagonal)
        Hessian (..., k) with respect to x[..., index]; else None for both."""
        if not derivatives:  # in place where nothing is differentiated (a planner's batches)
            return self._value(x, in_place=not torch.is_grad_enabled())[0], None, None
        d2, e = self._value(x)
        w, angle = self.tensors(x, "weights", "angle")
        if not self._any_angle:
            return d2, 2.0 * e * w, (2.0 * w).expand_as(e)
        g = torch.where(angle, 2.0 * torch.sin(e), 2.0 * e) * w
        h = torch.where(angle, 2.0 * torch.cos(e), torch.full_like(e, 2.0)) * w
        return d2, g, h

    def _value(self, x: torch.Tensor, in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """d2 (...) of x (..., n) as e * e @ w, the angle entries' squares replaced by 2 (1 - cos e),
        and e (..., k); with in_place (not for autograd), e is squared where it lies and not returned
        (None): a sampling planner's batch is megabytes, and each new array of it another pass
        through memory (MPPI's cost took 15 against 6 ms in a plan). The same numbers either way."""
        (w,) = self.tensors(x, "weights")
        e = self.difference(self.take(x, "index"), "target")
        chord = None
        if self._any_angle:
            # 2 - 2 cos e is 2 (1 - cos e) to the bit (a product by 2 is exact): one operation fewer.
            chord = torch.cos(self.take(e, "angle_positions")).mul_(-2.0).add_(2.0)
        sq = e.mul_(e) if in_place else e * e
        if chord is not None:
            self.put(sq, "angle_positions", chord)
        return sq @ w, None if in_place else e

    @classmethod
    def from_config(cls, r: TermReader) -> "WeightedDistance":
        """The distance that a term's `weights`, `target` and `angles` declare."""
        weights = r.raw.get("weights")
        if not isinstance(weights, dict) or not weights:
            r.fail("weights", f"expected a mapping of state name to weight, got {weights!r}")
        names = list(weights)
        index = [r.state_index("weights", name) for name in names]
        w = np.array([r.number_value("weights", name, weights[name]) for name in names])
        target = r.raw.get("target", {})
        if isinstance(target, dict):
            unknown = sorted(set(target) - set(names))
            if unknown:
                r.fail("target", f"{unknown[0]!r} has no weight in `weights`")
            c = np.array([r.number_value("target", name, target.get(name, 0.0), allow_negative=True) for name in names])
        else:
            c = r.vector("target", len(names))
        angles = r.names("angles", [])
        for name in angles:
            if name not in names:
                r.fail("angles", f"{name!r} has no weight in `weights`")
        return cls(index, w, c, [name in angles for name in names])


def distance_label(i: int, kind: str, raw: dict) -> str:
    """"0 state cart, pole +1": the type and the first two states it weighs."""
    if not isinstance(raw.get("weights"), dict):
        return f"{i} {kind}"
    names = list(raw["weights"])
    shown = ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")
    return f"{i} {kind} {shown}"
