"""The `action` term: 0.5 sum_j w_j (u_j - c_j)^2, a running cost only (no terminal weight).

    - type: action
      weights: 0.001        # a number, a list (m) or {action name: weight}
      center: [0, 0]        # a list (m), or "state": c_j = the state entry named like action j
"""

from __future__ import annotations

import numpy as np
import torch

from forethought.controllers.costs.reader import TermReader
from forethought.controllers.costs.term import Term, TermDerivatives, register


@register("action", keys=("weights", "center"))
class ActionCost(Term):
    """0.5 sum_j w_j (u_j - c_j)^2, c a constant (m,) or (state_index) the state entries named like
    the actions, e.g. a position target's distance from its joint. Derivatives analytic and exact."""

    uses_action = True

    def __init__(self, weights, center=None, state_index=None):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.center = None if center is None else np.asarray(center, dtype=np.float64)
        self.state_index = None if state_index is None else np.asarray(state_index, dtype=np.intp)

    def _error(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.state_index is not None:
            return u - self.take(x, "state_index")
        (center,) = self.tensors(x, "center")
        return u if center is None else u - center

    def _of_error(self, e: torch.Tensor) -> torch.Tensor:
        (w,) = self.tensors(e, "weights")
        return 0.5 * (e * e) @ w

    def value(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self._of_error(self._error(x, u))

    def derivatives(self, x: torch.Tensor, u: torch.Tensor) -> TermDerivatives:
        e = self._error(x, u)
        w, s = self.tensors(x, "weights", "state_index")
        j = torch.arange(len(self.weights), device=x.device)
        d = TermDerivatives.zeros(x, u, self._of_error(e), action=True)
        we = w * e
        d.l_u[:] = we
        d.l_uu[:, j, j] = w
        if s is not None:
            d.l_x[:, s] = -we
            d.l_xx[:, s, s] = w
            d.l_ux[:, j, s] = -w
        return d

    @classmethod
    def from_config(cls, r: TermReader, scene) -> "ActionCost":
        spec = r.spec
        weights = r.raw.get("weights", 1.0)
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(spec.action_names))
            if unknown:
                r.fail("weights", f"unknown action name {unknown[0]!r} (known: {', '.join(spec.action_names)})")
            w = np.array([r.number_value("weights", a, weights.get(a, 0.0)) for a in spec.action_names])
        elif isinstance(weights, (int, float)) and not isinstance(weights, bool):
            w = np.full(spec.m, r.number("weights", 1.0))
        else:
            w = r.vector("weights", spec.m)
            if np.any(w < 0):
                r.fail("weights", "must not be negative")
        center = r.raw.get("center")
        if center == "state":
            return cls(w, state_index=[r.state_index("center", name) for name in spec.action_names])
        return cls(w, center=None if center is None else r.vector("center", spec.m))
