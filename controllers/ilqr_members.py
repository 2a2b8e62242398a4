"""iLQR-MPC through every member of an ensemble: the mean of the members' costs, not the cost of
their mean (ilqr_mpc with `through: members`).

The plan is one action sequence; its cost is the mean over the elites of the cost of the
trajectory each elite predicts under it (models.ensemble.members.MemberStack: k copies of the
state, each stepped by its own member). For a quadratic cost that is the cost of the members'
mean trajectory plus the cost of their spread about it, so the planner pays for motion the
members disagree on and keeps to what they agree on. iLQR runs unchanged on the stacked state
(k n); the plan handed to the MPC policy is the members' mean trajectory, with the feedback
gain on the one real state (the sum of the copies' gains: every copy starts at it).
"""

from __future__ import annotations

import numpy as np

from forethought.controllers.costs import Cost
from forethought.controllers.costs.cost import CostDerivatives
from forethought.controllers.mpc import ILQRPlanner, Plan


class MeanOverCopiesCost:
    """`cost` (over states (n,)) averaged over k copies of the state stacked as (k n,): the
    trajectory calls iLQR makes (trajectory_costs, trajectory_derivatives), float64."""

    def __init__(self, cost: Cost, k: int):
        self.cost, self.k = cost, int(k)
        self.n, self.m = cost.n * self.k, cost.m

    def _copies(self, X: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X (..., T+1, k n), U (..., T, m) -> (..., k, T+1, n), (..., k, T, m)."""
        X = np.asarray(X, dtype=np.float64)
        U = np.asarray(U, dtype=np.float64)
        Xc = np.moveaxis(X.reshape(X.shape[:-1] + (self.k, self.cost.n)), -2, -3)
        Uc = np.broadcast_to(U[..., None, :, :], U.shape[:-2] + (self.k,) + U.shape[-2:])
        return Xc, Uc

    def trajectory_costs(self, X, U) -> np.ndarray:
        """Mean over the copies of each trajectory's total cost: (B,) from (B, T+1, k n), (B, T, m)."""
        Xc, Uc = self._copies(X, U)
        return self.cost.trajectory_costs(Xc, Uc).mean(axis=-1)

    def trajectory_derivatives(self, X, U) -> CostDerivatives:
        """Derivatives along one stacked trajectory X (T+1, k n), U (T, m); l_xx is block-diagonal."""
        Xc, Uc = self._copies(X, U)
        k, T1, n = Xc.shape
        d = self.cost.trajectory_derivatives(Xc, Uc)  # rows copy-major: (k (T+1), ...)
        m = self.m

        def per_copy(a: np.ndarray) -> np.ndarray:
            return a.reshape((k, T1) + a.shape[1:]) / k

        l, l_x, l_u = per_copy(d.l), per_copy(d.l_x), per_copy(d.l_u)
        l_xx, l_uu, l_ux = per_copy(d.l_xx), per_copy(d.l_uu), per_copy(d.l_ux)
        out = CostDerivatives.zeros(T1, k * n, m)
        out.l = l.sum(axis=0)
        out.l_x = np.moveaxis(l_x, 0, 1).reshape(T1, k * n)
        out.l_u = l_u.sum(axis=0)
        out.l_uu = l_uu.sum(axis=0)
        out.l_ux = np.moveaxis(l_ux, 0, 2).reshape(T1, m, k * n)
        for e in range(k):
            out.l_xx[:, e * n : (e + 1) * n, e * n : (e + 1) * n] = l_xx[e]
        return out


class MembersILQRPlanner:
    """An MPC planner (controllers.mpc's protocol) that runs `ILQRPlanner` on the ensemble's
    MemberStack with the cost averaged over the members; plans come back on the real state."""

    def __init__(self, stack, cost: Cost, action_low, action_high, horizon: int, iterations: int = 1,
                 first_iterations: int = 50, time_budget_s: float | None = None, config=None,
                 closed_loop_warm_start: bool = False):
        self.stack, self.n = stack, cost.n
        self.inner = ILQRPlanner(stack, MeanOverCopiesCost(cost, stack.k), action_low, action_high, horizon,
                                 iterations, first_iterations, time_budget_s, config, closed_loop_warm_start)
        self.horizon = self.inner.horizon

    def plan(self, x0, U_init, t: int = 0) -> Plan:
        plan = self.inner.plan(self.stack.stack(x0), U_init, t)
        k, n = self.stack.k, self.n
        X = plan.X.reshape(len(plan.X), k, n).mean(axis=1)
        K = None if plan.K is None else plan.K.reshape(plan.K.shape[0], plan.K.shape[1], k, n).sum(axis=2)
        return Plan(U=plan.U, X=X, K=K, cost=plan.cost)
