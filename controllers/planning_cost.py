"""An experiment's Cost as the batched torch function that sampling planners rank candidates with.

`build_planning_cost(cfg, spec, scene, condition)` reads the same `task.cost` mapping as
`costs.build_cost` and returns cost(X (B, H+1, n), U (B, H, m)) -> (B,): the running cost of each
step (with the term's ramp over the planning horizon) plus the terminal cost of the last state, the
same totals as `Cost.trajectory_costs`. State, saturating, action, joint-limit and site-distance
terms run in float32 torch on the planner's device (planners evaluate about 10^5 state-action
pairs per iteration; the end effector goes through `BatchedSiteKinematics`); a site whose chain
holds a ball or free joint is evaluated by the Cost itself in numpy.
"""

from __future__ import annotations

import numpy as np
import torch

from forethought.controllers.costs import (
    ActionCost,
    Cost,
    JointLimitCost,
    SaturatingCost,
    SiteDistanceCost,
    StateCost,
    Weighted,
    WeightedDistance,
    build_cost,
)
from forethought.robots.robot import RobotSpec
from forethought.sim.batched_kinematics import BatchedSiteKinematics


def _tensor(a, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)


class _TorchDistance:
    """WeightedDistance's d^2 in torch: sum_i w_i e_i^2, angle entries 2 (1 - cos e_i)."""

    def __init__(self, distance: WeightedDistance, device):
        self.index = torch.as_tensor(distance.index, device=device)
        self.weights = _tensor(distance.weights, device)
        self.target = _tensor(distance.target, device)
        self.angle = torch.as_tensor(distance.angle, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        e = x[..., self.index] - self.target
        sq = torch.where(self.angle, 2.0 * (1.0 - torch.cos(e)), e * e)
        return sq @ self.weights


def _torch_term(term, device):
    """The term as f(x (..., n), u (..., m)) -> (...) in torch, or None when it has no torch form."""
    if isinstance(term, StateCost):
        distance = _TorchDistance(term.distance, device)
        return lambda x, u: 0.5 * distance(x)
    if isinstance(term, SaturatingCost):
        distance, two_s2 = _TorchDistance(term.distance, device), 2.0 * term.sigma**2
        return lambda x, u: 1.0 - torch.exp(-distance(x) / two_s2)
    if isinstance(term, ActionCost):
        weights = _tensor(term.weights, device)
        center = None if term.center is None else _tensor(term.center, device)
        index = None if term.state_index is None else torch.as_tensor(term.state_index, device=device)

        def action(x, u):
            e = u - x[..., index] if index is not None else (u if center is None else u - center)
            return 0.5 * (e * e) @ weights

        return action
    if isinstance(term, JointLimitCost):
        index = torch.as_tensor(term.index, device=device)
        low, high, weights = (_tensor(a, device) for a in (term.low, term.high, term.weights))

        def limits(x, u):
            q = x[..., index]
            v = torch.clamp(q - low, max=0.0) + torch.clamp(q - high, min=0.0)
            return 0.5 * (v * v) @ weights

        return limits
    if isinstance(term, SiteDistanceCost):
        try:
            return _torch_site_distance(term, device)
        except ValueError:  # a ball or free joint on the chain: MuJoCo's kinematics row by row
            return None
    return None


def _torch_site_distance(term: SiteDistanceCost, device):
    """SiteDistanceCost's value in torch: the site through BatchedSiteKinematics, then its norm."""
    site = BatchedSiteKinematics(term.kinematics, device)
    q_index = torch.as_tensor(term.q_index, device=device)
    target = None if term.target is None else _tensor(term.target, device)
    target_index = None if term.target_index is None else torch.as_tensor(term.target_index, device=device)
    offset, smoothing, quadratic = _tensor(term.offset, device), term.smoothing, term.norm == "quadratic"

    def distance(x, u):
        goal = target if target_index is None else x[..., target_index] + offset
        r2 = ((site(x[..., q_index]) - goal) ** 2).sum(-1)
        return 0.5 * r2 if quadratic else torch.sqrt(r2 + smoothing**2) - smoothing

    return distance


class TrajectoryCost:
    """Total cost of batches of trajectories under a Cost: callable(X (B, H+1, n), U (B, H, m)) -> (B,)."""

    def __init__(self, cost: Cost, device: str | torch.device = "cpu"):
        self.cost = cost
        self.device = torch.device(device)
        self.terms = [(w, _torch_term(w.term, self.device)) for w in cost.terms]
        self._weights: dict[tuple[int, int], tuple[torch.Tensor, float]] = {}

    def _step_weights(self, w: Weighted, H: int) -> tuple[torch.Tensor, float]:
        """Running weight at each of the H steps (the term's ramp) and the terminal weight."""
        key = (H, id(w))
        if key not in self._weights:
            running = np.broadcast_to(w.running_scale(np.arange(H), H), (H,))
            final = 0.0 if w.term.uses_action else w.final_weight
            self._weights[key] = (_tensor(running, self.device), float(final))
        return self._weights[key]

    @torch.no_grad()
    def __call__(self, X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        B, H = U.shape[0], U.shape[1]
        X, U = X.to(self.device, torch.float32), U.to(self.device, torch.float32)
        total = torch.zeros(B, device=self.device)
        # The terminal state goes with a zero action, so that every term sees all H+1 states in one
        # call (the end effector's kinematics once per batch, not twice).
        U_padded = torch.cat([U, torch.zeros(B, 1, U.shape[2], device=self.device)], dim=1)
        for w, term in self.terms:
            running, final = self._step_weights(w, H)
            if term is None:
                total += self._numpy_term(w.term, X, U, running, final)
                continue
            values = term(X, U_padded)
            total += values[:, :H] @ running
            total += final * values[:, H]
        return total

    def _numpy_term(self, term, X, U, running: torch.Tensor, final: float) -> torch.Tensor:
        """The term through its own numpy value(); rows with a non-finite state or action cost NaN."""
        B, n = X.shape[0], X.shape[2]
        x = X.double().cpu().numpy()
        u = np.concatenate([U.double().cpu().numpy(), np.zeros((B, 1, U.shape[2]))], axis=1)
        weights = np.append(running.double().cpu().numpy(), final)
        steps = np.flatnonzero(weights)
        xs, us = x[:, steps].reshape(-1, n), u[:, steps].reshape(len(steps) * B, -1)
        finite = np.isfinite(xs).all(axis=1) & np.isfinite(us).all(axis=1)
        values = np.full(len(xs), np.nan)
        if finite.any():
            values[finite] = term.value(xs[finite], us[finite])
        rows = values.reshape(B, len(steps)) @ weights[steps]
        return torch.as_tensor(rows, dtype=torch.float32, device=self.device)


def build_planning_cost(cfg: dict, spec: RobotSpec, scene=None, condition: dict | None = None,
                        device: str | torch.device = "cpu") -> TrajectoryCost:
    """The planning cost of an experiment's `task.cost` (schema: controllers.costs); ConfigError naming bad keys."""
    return TrajectoryCost(build_cost(cfg, spec, scene, condition), device)
