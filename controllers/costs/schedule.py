"""The weighting schedule: how much each term counts at each step of a horizon.

A term's running weight is `weight` times its ramp over a horizon of H steps, at step t = 0..H-1:
constant (1), linear ((t+1)/H), quadratic (((t+1)/H)^2) or final_only (0: the term counts only at
the end). Its terminal weight, at t = H, is `final_weight`; an action term has none (0). Without a
horizon (a single cost(x, u) call, a trial's logged cost) the running weight is `weight`.

Every consumer takes its weights from `Weighted`: the float64 Cost (iLQR, GPS, logged costs),
the planners' TrajectoryCost and PILCO's expected cost; `trajectory_total` is the one weighted
sum over a trajectory that both Cost.trajectory_costs and TrajectoryCost return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from forethought.controllers.costs.term import Term

RAMPS = ("constant", "linear", "quadratic", "final_only")


@dataclass
class Weighted:
    """A term with its running weight, terminal weight and ramp, and a label that names it in plots
    ("2 site_distance ee")."""

    term: Term
    weight: float = 1.0
    final_weight: float = 0.0
    ramp: str = "constant"
    label: str = ""
    _steps: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {', '.join(RAMPS)}, got {self.ramp!r}")
        if self.term.uses_action and self.final_weight != 0.0:
            raise ValueError(f"an action term has no terminal cost, got final_weight {self.final_weight}")

    def running_scale(self, t, horizon: int | None) -> np.ndarray | float:
        """Running weight at steps t (0..H-1, an int or an array) of a horizon H; `weight` when t is None."""
        if t is None or self.ramp == "constant":
            return self.weight
        if horizon is None or horizon < 1:
            raise ValueError("a ramped cost needs the horizon along with the time index")
        fraction = (np.asarray(t, dtype=np.float64) + 1.0) / horizon
        if self.ramp == "linear":
            return self.weight * fraction
        if self.ramp == "quadratic":
            return self.weight * fraction**2
        return np.zeros_like(fraction)

    def step_weights(self, horizon: int) -> np.ndarray:
        """(H+1,) weights of steps 0..H of a horizon H: running at 0..H-1, terminal at H."""
        if horizon not in self._steps:
            running = np.broadcast_to(self.running_scale(np.arange(horizon), horizon), (horizon,))
            steps = np.append(running, self.final_weight)
            steps.flags.writeable = False
            self._steps[horizon] = steps
        return self._steps[horizon]

    def scale(self, t: int, horizon: int) -> float:
        """The weight at step t of a horizon H: running before H, terminal at t >= H."""
        return float(self.step_weights(horizon)[min(int(t), horizon)])

    def row_scales(self, running, t, horizon: int | None, rows: int) -> np.ndarray:
        """(rows,) weights of rows that are running (bool or (rows,) bool) at steps t (None, or (rows,)),
        terminal elsewhere."""
        run = self.running_scale(t, horizon)
        if np.ndim(run) == 0 and np.ndim(running) == 0:
            return np.full(rows, run if running else self.final_weight)
        return np.broadcast_to(np.where(running, run, self.final_weight), (rows,))

    def step_tensor(self, horizon: int, like: torch.Tensor) -> torch.Tensor:
        """`step_weights(horizon)` as a tensor in like's dtype on its device (made once each)."""
        key = (horizon, like.dtype, like.device)
        if key not in self._steps:
            with torch.inference_mode(False):  # an ordinary tensor, usable by autograd later
                self._steps[key] = torch.tensor(self.step_weights(horizon), device=like.device).to(like.dtype)
        return self._steps[key]


def trajectory_total(terms: Sequence[Weighted], X: torch.Tensor, U_rows: torch.Tensor) -> torch.Tensor:
    """Total weighted cost of trajectories X (..., T+1, n) under actions U_rows (..., T+1, m) whose
    last row (the terminal state's) is zeros -> (...), in X's dtype: each term's running cost at
    steps 0..T-1 with its ramp over the horizon T, plus its terminal cost at X[..., T, :]. The
    terminal state goes with a zero action so that every term sees all T+1 states in one call (an
    end effector's kinematics once per batch, not twice); action terms weigh it 0. A non-finite
    entry that a weighted term reads makes the total NaN."""
    T = X.shape[-2] - 1
    total = None
    for w in terms:
        if w.step_weights(T).any():
            part = w.term.value(X, U_rows) @ w.step_tensor(T, X)
            total = part if total is None else total + part
    return X.new_zeros(X.shape[:-2]) if total is None else total
