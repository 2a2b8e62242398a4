"""The ensemble's elites side by side: one copy of the state per member, each stepped by its own
member's mean, so that a trajectory optimiser can plan through every member at once.

Through the members' mean a planner sees one averaged motion; where the members disagree (away
from the data) that average can be a motion none of them predicts, and the planner is not told
that it is unsure. Planning on the stack instead (iLQR-MPC with `through: members`) weighs each
member's own trajectory under the same actions, so a plan that only one member believes in
costs what the others predict of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from forethought.models.capabilities import LINEARIZE, PREDICT
from forethought.models.dynamics_model import as_batch

if TYPE_CHECKING:
    from forethought.models.ensemble.model import EnsembleModel


class MemberStack:
    """A DynamicsModel over the stacked state (k n,): k copies of the ensemble's state, copy e
    stepped by elite e's mean (no noise), all under one action (m,).

    predict and linearize as the capabilities define them; A is block-diagonal (copy e's block is
    elite e's Jacobian about copy e), B stacks the members' (k n, m). The elites and weights are
    read from `model` at each call, so a view outlives refits (a change in the number of elites
    changes k, and with it the stacked state's size).
    """

    capabilities = frozenset({PREDICT, LINEARIZE})

    def __init__(self, model: "EnsembleModel"):
        self.model = model

    @property
    def k(self) -> int:
        return len(self.model.elites)

    @property
    def n(self) -> int:
        return self.k * self.model.n

    @property
    def m(self) -> int:
        return self.model.m

    def stack(self, x: np.ndarray) -> np.ndarray:
        """x (..., n) -> (..., k n): the same state in every copy."""
        return np.tile(np.asarray(x, dtype=np.float64), self.k)

    def _step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Next states (B, k, n) from copies x (B, k, n) under u (B, k, m) (one action per copy,
        so that autograd keeps each member's action derivatives apart), float32."""
        kernel = self.model.dynamics("expectation", "float32")
        f = kernel._features(x, u).transpose(0, 1)  # (k, B, d + 1): copy e goes to member e
        h = kernel.activation_out_of_place(torch.bmm(f, kernel.weights[0]))
        for w, b in zip(kernel.weights[1:-1], kernel.biases[:-1]):
            h = kernel.activation_out_of_place(torch.baddbmm(b, h, w))
        n = self.model.n
        delta = torch.baddbmm(kernel.biases[-1][..., :n], h, kernel.weights[-1][..., :n])
        return x + delta.transpose(0, 1)

    def _split(self, x, u):
        """(x (B, k n), u (B, m) float64, the same as tensors (B, k, n), (B, k, m) float32, single)."""
        if not self.model.fitted:
            raise RuntimeError("the ensemble has not been fitted: call fit(trials) first")
        x2, u2, single = as_batch(x, u, self.n, self.m, "MemberStack")
        B, k = len(x2), self.k
        xt = torch.as_tensor(x2.reshape(B, k, self.model.n), dtype=torch.float32, device=self.model.device)
        ut = torch.as_tensor(np.repeat(u2[:, None, :], k, axis=1), dtype=torch.float32, device=self.model.device)
        return x2, u2, xt, ut, single

    @torch.no_grad()
    def predict(self, x, u) -> tuple[np.ndarray, np.ndarray]:
        """Each copy's next state under its member's mean (B, k n), and zero variance."""
        _, _, xt, ut, single = self._split(x, u)
        mean = self._step(xt, ut).reshape(len(xt), self.n).double().cpu().numpy()
        var = np.zeros_like(mean)
        return (mean[0], var[0]) if single else (mean, var)

    def linearize(self, x, u) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A (B, k n, k n) block-diagonal, B (B, k n, m), c (B, k n), Sigma (B, k n, k n) zero,
        by autograd: one backward pass per state entry, all members at once (member e's output
        depends on copy e and its own action copy alone)."""
        x2, u2, xt, ut, single = self._split(x, u)
        B, k, n = xt.shape
        xt, ut = xt.requires_grad_(True), ut.requires_grad_(True)
        with torch.enable_grad():
            out = self._step(xt, ut)
            dx = out.new_empty(B, k, n, n)
            du = out.new_empty(B, k, n, self.m)
            for i in range(n):
                gx, gu = torch.autograd.grad(out[:, :, i].sum(), (xt, ut), retain_graph=i < n - 1)
                dx[:, :, i], du[:, :, i] = gx, gu
        dx, du = dx.double().cpu().numpy(), du.double().cpu().numpy()
        A = np.zeros((B, k * n, k * n))
        for e in range(k):
            A[:, e * n : (e + 1) * n, e * n : (e + 1) * n] = dx[:, e]
        Bm = du.reshape(B, k * n, self.m)
        mean = out.detach().double().cpu().numpy().reshape(B, k * n)
        c = mean - np.einsum("bij,bj->bi", A, x2) - np.einsum("bij,bj->bi", Bm, u2)
        Sigma = np.zeros((B, k * n, k * n))
        return (A[0], Bm[0], c[0], Sigma[0]) if single else (A, Bm, c, Sigma)
