"""An experiment's Cost as the batched torch function that sampling planners rank candidates with.

`TrajectoryCost(cost, device)` is cost(X (B, H+1, n), U (B, H, m)) -> (B,): the running cost of
each step (with the term's ramp over the planning horizon) plus the terminal cost of the last
state, the same totals as `Cost.trajectory_costs` (the same terms' `value` and the same
`trajectory_total`), computed in float32 on the planner's device (planners evaluate about 10^5
state-action pairs per iteration).
"""

from __future__ import annotations

import torch

from forethought.controllers.costs.cost import Cost
from forethought.controllers.costs.reader import build_cost
from forethought.controllers.costs.schedule import trajectory_total
from forethought.robots.robot import RobotSpec


class TrajectoryCost:
    """Total cost of batches of trajectories under a Cost: callable(X (B, H+1, n), U (B, H, m)) -> (B,).

    dtype: what the terms compute in (float32; bfloat16 works, at its 3 significant digits).
    """

    def __init__(self, cost: Cost, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.cost = cost
        self.device = torch.device(device)
        self.dtype = dtype

    @property
    def terms(self):
        return self.cost.terms

    @torch.no_grad()
    def __call__(self, X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        if X.dtype != self.dtype or X.device != self.device:  # a call fewer where they already are
            X = X.to(self.device, self.dtype)
        if U.dtype != self.dtype or U.device != self.device:
            U = U.to(self.device, self.dtype)
        if any(w.term.uses_action for w in self.cost.terms):
            U_rows = torch.cat([U, U.new_zeros(U.shape[:-2] + (1, U.shape[-1]))], dim=-2)
        else:  # no term reads the actions: no copy of them (two operations fewer between rollouts)
            U_rows = U.new_zeros(()).expand(*U.shape[:-2], U.shape[-2] + 1, U.shape[-1])
        return trajectory_total(self.cost.terms, X, U_rows)


def build_planning_cost(cfg: dict, spec: RobotSpec, scene=None, condition: dict | None = None,
                        device: str | torch.device = "cpu") -> TrajectoryCost:
    """The planning cost of an experiment's `task.cost` (schema: controllers.costs); ConfigError naming bad keys."""
    return TrajectoryCost(build_cost(cfg, spec, scene, condition), device)
