"""A weighted sum of cost terms, in float64 with derivatives: what iLQR, GPS and the trial logs use.

numpy in, numpy out (the solvers work in numpy); each term computes in float64 torch, on one
torch thread (a trajectory's rows are too few to share: see models.torch_threads) and in
inference mode (no autograd bookkeeping: a trajectory's cost is some hundred small operations,
whose dispatch is most of its time), and the weights come from the one schedule
(controllers.costs.schedule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from forethought.controllers.costs.schedule import Weighted, trajectory_total
from forethought.models.torch_threads import one_torch_thread


@dataclass
class CostDerivatives:
    """Value and derivatives of a cost at B points: l (B,), l_x (B, n), l_u (B, m), l_xx (B, n, n),
    l_uu (B, m, m), l_ux (B, m, n). Terminal rows have zero action derivatives."""

    l: np.ndarray
    l_x: np.ndarray
    l_u: np.ndarray
    l_xx: np.ndarray
    l_uu: np.ndarray
    l_ux: np.ndarray

    @classmethod
    def zeros(cls, B: int, n: int, m: int) -> "CostDerivatives":
        return cls(
            np.zeros(B), np.zeros((B, n)), np.zeros((B, m)), np.zeros((B, n, n)), np.zeros((B, m, m)), np.zeros((B, m, n))
        )


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float64 array as a tensor sharing its memory (copied if read-only, which torch cannot share)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class Cost:
    """A weighted sum of terms over states (n,) and actions (m,), float64.

    Batched calls: value(x, u, t, horizon) -> (B,), derivatives(x, u, t, horizon) -> CostDerivatives,
    with u None for the terminal cost and t (B,) the time index of each row within a horizon (for
    ramps). Trajectory calls: trajectory_derivatives(X (T+1, n), U (T, m)) (row T terminal) and
    trajectory_costs(X (B, T+1, n), U (B, T, m)) -> (B,) totals. `cost(x, u) -> float` on a single
    pair (u None: terminal) makes a Cost usable as `rollout`'s cost.
    """

    def __init__(self, n: int, m: int, terms: Sequence[Weighted]):
        self.n, self.m = int(n), int(m)
        self.terms = list(terms)

    def _check(self, x, u):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"cost: states must have shape (B, {self.n}), got {x.shape}")
        if u is not None:
            u = np.asarray(u, dtype=np.float64)
            if u.shape != (len(x), self.m):
                raise ValueError(f"cost: actions must have shape ({len(x)}, {self.m}), got {u.shape}")
        return x, u

    def _rows(self, x, u):
        """Actions (zeros on terminal rows) and whether the rows are running rows."""
        if u is None:
            return np.zeros((len(x), self.m)), False
        return u, True

    @one_torch_thread()
    @torch.inference_mode()
    def value(self, x, u=None, t=None, horizon=None) -> np.ndarray:
        """Cost of each row (B,): running with u (B, m), terminal with u None."""
        x, u = self._check(x, u)
        u, running = self._rows(x, u)
        return self._term_values(x, u, self._row_scales(running, t, horizon, len(x))).sum(axis=0)

    def _row_scales(self, running, t, horizon, rows: int) -> list[np.ndarray]:
        return [w.row_scales(running, t, horizon, rows) for w in self.terms]

    def _term_values(self, x, u, scales) -> np.ndarray:
        """(terms, B): each term's weighted cost of each row, with the terms' weights scales (B,) each."""
        xt, ut = _tensor(x), _tensor(u)
        values = np.zeros((len(self.terms), len(x)))
        for i, (w, scale) in enumerate(zip(self.terms, scales)):
            if np.any(scale != 0.0):
                values[i] = scale * w.term.value(xt, ut).numpy()
        return values

    @one_torch_thread()
    @torch.inference_mode()
    def derivatives(self, x, u=None, t=None, horizon=None) -> CostDerivatives:
        """Value and derivatives at each row; terminal (zero action parts) with u None."""
        x, u = self._check(x, u)
        u, running = self._rows(x, u)
        return self._derivatives(x, u, self._row_scales(running, t, horizon, len(x)))

    def _derivatives(self, x, u, scales) -> CostDerivatives:
        """The terms' derivatives at rows x (B, n), u (B, m), weighted by scales (B,) each."""
        total = CostDerivatives.zeros(len(x), self.n, self.m)
        xt, ut = _tensor(x), _tensor(u)
        for w, scale in zip(self.terms, scales):
            if not np.any(scale != 0.0):
                continue
            d = w.term.derivatives(xt, ut)
            total.l += scale * d.l.numpy()
            total.l_x += scale[:, None] * d.l_x.numpy()
            total.l_xx += scale[:, None, None] * d.l_xx.numpy()
            if w.term.uses_action:  # any other term has zero action derivatives
                total.l_u += scale[:, None] * d.l_u.numpy()
                total.l_uu += scale[:, None, None] * d.l_uu.numpy()
                total.l_ux += scale[:, None, None] * d.l_ux.numpy()
        return total

    @one_torch_thread()
    @torch.inference_mode()
    def __call__(self, x, u=None) -> float:
        """Running cost of one pair x (n,), u (m,), or the terminal cost of x with u None (as
        `value` gives it for one row; a trial logs this at every step, so it skips value's arrays)."""
        x, u = self._check(np.asarray(x, dtype=np.float64).reshape(1, -1), None if u is None else np.asarray(u, dtype=np.float64).reshape(1, -1))
        u, running = self._rows(x, u)
        xt, ut = _tensor(x), _tensor(u)
        total = 0.0
        for w in self.terms:
            scale = float(w.running_scale(None, None)) if running else w.final_weight
            if scale != 0.0:
                total += scale * float(w.term.value(xt, ut)[0])
        return total

    def _check_trajectory(self, X, U):
        X = np.asarray(X, dtype=np.float64)
        U = np.asarray(U, dtype=np.float64)
        T = U.shape[-2]
        if X.shape[-2:] != (T + 1, self.n) or U.shape[-1] != self.m or X.shape[:-2] != U.shape[:-2]:
            raise ValueError(f"cost: trajectory needs X (..., T+1, {self.n}) and U (..., T, {self.m}), got {X.shape} and {U.shape}")
        return X, U, T

    def _trajectory_rows(self, X, U):
        """X (..., T+1, n), U (..., T, m) as rows: states, actions (zero at T), the leading shape, T."""
        X, U, T = self._check_trajectory(X, U)
        lead = X.shape[:-2]
        U_rows = np.concatenate([U, np.zeros(lead + (1, self.m))], axis=-2)
        return X.reshape(-1, self.n), U_rows.reshape(-1, self.m), lead, T

    @one_torch_thread()
    @torch.inference_mode()
    def trajectory_derivatives(self, X, U) -> CostDerivatives:
        """Derivatives along one trajectory X (T+1, n), U (T, m): rows 0..T-1 running, row T terminal."""
        x, u, lead, T = self._trajectory_rows(X, U)
        # Row t's weight is the schedule's weight of step t of the horizon T.
        return self._derivatives(x, u, [np.broadcast_to(w.step_weights(T), lead + (T + 1,)).reshape(-1) for w in self.terms])

    @one_torch_thread()
    @torch.inference_mode()
    def term_costs(self, X, U) -> np.ndarray:
        """Each term's part of a trial's logged cost, X (T+1, n), U (T, m) -> (terms,): its running
        cost at every step at its full weight (as `cost(x, u)` gives it, no ramp) plus its terminal
        cost; steps whose cost is not finite are left out, as Trial.total_cost leaves them out."""
        x, u, lead, T = self._trajectory_rows(X, U)
        running = np.broadcast_to(np.arange(T + 1) < T, lead + (T + 1,)).reshape(-1)
        values = self._term_values(x, u, self._row_scales(running, None, None, len(x)))
        return values[:, np.isfinite(values).all(axis=0)].sum(axis=1)

    @one_torch_thread()
    @torch.inference_mode()
    def trajectory_costs(self, X, U) -> np.ndarray:
        """Total cost of each trajectory in X (B, T+1, n), U (B, T, m) -> (B,); or of one (T+1, n) -> ()."""
        X, U, _ = self._check_trajectory(X, U)
        U_rows = np.concatenate([U, np.zeros(U.shape[:-2] + (1, self.m))], axis=-2)
        return trajectory_total(self.terms, _tensor(X), torch.from_numpy(U_rows)).numpy()
