"""The ensemble's planning kernel: whole batches of action sequences rolled through the elites.

Input and target normalisation are folded into the first and last layers once per fit, so a
planning step is one gather, k-way batched matmuls and one sample; the same folded weights give
the differentiable mixture mean that `EnsembleModel.linearize` differentiates.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from forethought.models.ensemble.bfloat16_bits import bits_of
from forethought.models.ensemble.config import DTYPES, PROPAGATIONS
from forethought.models.ensemble.network import ACTIVATIONS, ACTIVATIONS_IN_PLACE, soft_bound_logvar
from forethought.models.ensemble.sampling_step import sample_next_states, write_features
from forethought.models.ensemble.silu_bfloat16 import planning_silu_

if TYPE_CHECKING:
    from forethought.models.ensemble.model import EnsembleModel


class EnsembleDynamics:
    """Rollouts of whole batches of action sequences through the elites (a BatchedDynamics), and the
    elites' mean next state as a differentiable function (`mean_step`).

    propagation: "tsinf" (each trajectory keeps one member for the whole rollout), "ts1" (a fresh
    member every step), or "expectation" (the mean over members, no sampling). Members are assigned
    to trajectories at random in near-equal shares, so a batch of any size works. Input and target
    normalisation are folded into the first and last layers, and a constant input feature carries the
    first layer's bias, so a step is one gather, k-way batched matmuls and one sample.
    """

    def __init__(self, model: "EnsembleModel", propagation: str, dtype: str = "float32"):
        if propagation not in PROPAGATIONS:
            raise ValueError(f"unknown propagation '{propagation}' (known: {', '.join(PROPAGATIONS)})")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{dtype}' (known: {', '.join(DTYPES)})")
        self.propagation = propagation
        self.model = model
        self.device = model.device
        self.dtype = DTYPES[dtype]
        self.n, self.m = model.n, model.m
        self.activation = ACTIVATIONS_IN_PLACE[model.config.activation]
        if model.config.activation == "silu" and self.dtype == torch.bfloat16 and self.device.type == "cpu":
            self.activation = planning_silu_  # its arithmetic is a planning step's largest cost after the products
        self.activation_out_of_place = ACTIVATIONS[model.config.activation]
        net = model.network
        elites = torch.as_tensor(model.elites, device=self.device)
        self.k = len(elites)
        f64 = dict(dtype=torch.float64, device=self.device)
        in_mean = torch.as_tensor(model.input_stats.mean, **f64)
        in_std = torch.as_tensor(model.input_stats.std, **f64)
        out_mean = torch.as_tensor(model.target_stats.mean, **f64)
        out_std = torch.as_tensor(model.target_stats.std, **f64)
        weights = [w.detach()[elites].double() for w in net.weights]
        biases = [b.detach()[elites].double() for b in net.biases]
        # z = (f - mean) / std  =>  z W + b = f (W / std) + (b - (mean / std) W); the bias rides on a 1 feature.
        w0 = weights[0] / in_std[None, :, None]
        b0 = biases[0] - torch.einsum("d,kdh->kh", in_mean / in_std, weights[0])[:, None, :]
        weights[0] = torch.cat([w0, b0], dim=1)
        # The mean head outputs delta directly: columns scaled by the target std, shifted by its mean.
        scale = torch.cat([out_std, torch.ones_like(out_std)])
        shift = torch.cat([out_mean, torch.zeros_like(out_mean)])
        weights[-1] = weights[-1] * scale
        biases[-1] = biases[-1] * scale + shift
        self.weights = [w.to(self.dtype).contiguous() for w in weights]
        self.biases = [b.to(self.dtype).contiguous() for b in biases[1:]]
        self.min_logvar = net.min_logvar.detach()[elites].float()
        self.max_logvar = net.max_logvar.detach()[elites].float()
        self.log_std_scale = torch.log(out_std).float()
        self._buffers: dict[int, list[torch.Tensor]] = {}
        # On CPU a step's work around the products runs as two numba passes (`_rollout_fused`); the
        # torch steps stay for other devices, and as the reference the fused passes are tested against.
        self.fused = self.device.type == "cpu"
        self._angle_idx = torch.as_tensor(model._angle_idx, device=self.device)
        self._plain_idx = torch.as_tensor(model._plain_idx, device=self.device)
        self._action_ref = torch.as_tensor(model._action_ref, device=self.device)
        self._action_rel = torch.as_tensor(model._action_rel, dtype=torch.float32, device=self.device)
        self._relative = bool(model._action_rel.any())
        # The same, as the numba passes of `_rollout_fused` take them.
        self._feature_layout = (model._plain_idx.astype(np.int64), model._angle_idx.astype(np.int64),
                                model._action_ref.astype(np.int64), model._action_rel.astype(np.float32))
        self._variance_bounds = tuple(np.ascontiguousarray(a.cpu().numpy().reshape(shape), dtype=np.float32) for a, shape in
                                      ((self.min_logvar, (self.k, self.n)), (self.max_logvar, (self.k, self.n)),
                                       (self.log_std_scale, (self.n,))))

    def _features(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """(x without angles, sin and cos of angles, u or u - x, 1) in the network's dtype."""
        ang = x[..., self._angle_idx]
        if self._relative:
            u = u - self._action_rel * x[..., self._action_ref]
        ones = torch.ones_like(u[..., :1])
        return torch.cat([x[..., self._plain_idx], torch.sin(ang), torch.cos(ang), u, ones], dim=-1).to(self.dtype)

    def _workspace(self, R: int) -> list[torch.Tensor]:
        """Buffers (k, R, width) for the input features and every layer's output, reused across steps
        and calls.

        Allocating megabyte-sized activations afresh at every layer costs more than the layer's
        activation function on CPU (each new block is page-faulted in again).
        """
        if R not in self._buffers:
            if len(self._buffers) >= 8:
                self._buffers.clear()
            widths = [self.weights[0].shape[1]] + [w.shape[-1] for w in self.weights]
            self._buffers[R] = [torch.empty(self.k, R, w, dtype=self.dtype, device=self.device) for w in widths]
        return self._buffers[R]

    def _products(self, f: torch.Tensor) -> torch.Tensor:
        """f (k, R, d+1) -> the last layer's output (k, R, 2n) in the kernel's dtype: delta mean in
        target units, then the raw log-variance. Held in the workspace until the next call."""
        buffers = self._workspace(f.shape[1])[1:]
        h = self.activation(torch.bmm(f, self.weights[0], out=buffers[0]))
        for w, b, out in zip(self.weights[1:-1], self.biases[:-1], buffers[1:-1]):
            h = self.activation(torch.baddbmm(b, h, w, out=out))
        return torch.baddbmm(self.biases[-1], h, self.weights[-1], out=buffers[-1])

    def _network(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f (k, R, d+1) -> delta mean (k, R, n), log std (k, R, n), float32."""
        out = self._products(f).float()
        logvar = soft_bound_logvar(out[..., self.n :], self.min_logvar, self.max_logvar)
        return out[..., : self.n], 0.5 * logvar + self.log_std_scale

    def mean_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The elites' mean next state (B, n) for x (B, n), u (B, m), in the kernel's dtype.

        Differentiable (no workspace, nothing in place); rows are independent, so the Jacobian of
        row b's output depends on row b alone.
        """
        f = self._features(x.to(self.dtype), u.to(self.dtype))
        h = f.expand(self.k, *f.shape)
        h = self.activation_out_of_place(torch.matmul(h, self.weights[0]))
        for w, b in zip(self.weights[1:-1], self.biases[:-1]):
            h = self.activation_out_of_place(torch.baddbmm(b, h, w))
        # The mean head only: the first n output columns.
        delta = torch.baddbmm(self.biases[-1][..., : self.n], h, self.weights[-1][..., : self.n])
        return x.to(self.dtype) + delta.mean(dim=0)

    def _assignment(self, B: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """A random member for each of B rows, in near-equal shares (counts differ by at most one).

        Returns order (k*R,): the row in each member-major slot (member e owns slots e*R .. e*R+R-1;
        a few slots repeat a row to pad), inverse (B,): the slot that holds each row's result, and R.
        """
        k = self.k
        R = math.ceil(B / k)
        perm = torch.randperm(B, generator=generator, device=self.device)
        # Deal the shuffled rows out to the members like cards: row perm[s] goes to member s % k.
        dealt = torch.cat([perm, perm[: k * R - B]]).view(R, k)
        order = dealt.t().reshape(-1)
        s = torch.arange(B, device=self.device)
        inverse = torch.empty_like(perm)
        inverse[perm] = (s % k) * R + s // k
        return order, inverse, R

    @torch.no_grad()
    def rollout(self, x0: torch.Tensor, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """States (B, H+1, n) from x0 (B, n) under actions U (B, H, m), float32 on `device`."""
        B, H, _ = U.shape
        X = torch.empty(B, H + 1, self.n, device=self.device)
        X[:, 0] = x = x0
        if self.propagation == "expectation":
            for t in range(H):
                f = self._features(x, U[:, t]).expand(self.k, B, -1)
                delta, _ = self._network(f)
                x = X[:, t + 1] = x + delta.mean(dim=0)
            return X
        order, inverse, R = self._assignment(B, generator)
        if self.fused:
            return self._rollout_fused(X, U, generator, order, inverse, R)
        # Rows stay in member-major slot order between steps; TS1 deals them out afresh each step.
        xs, Us = x0[order], U[order]
        for t in range(H):
            if t > 0 and self.propagation == "ts1":
                order, inverse, R = self._assignment(B, generator)
                xs, Us = x[order], U[order]
            f = self._features(xs, Us[:, t]).view(self.k, R, -1)
            delta, log_std = self._network(f)
            noise = torch.randn(self.k, R, self.n, generator=generator, device=self.device)
            xs = xs + (delta + torch.exp(log_std) * noise).view(self.k * R, self.n)
            x = X[:, t + 1] = xs[inverse]
        return X

    def _rollout_fused(self, X: torch.Tensor, U: torch.Tensor, generator: torch.Generator, order: torch.Tensor,
                       inverse: torch.Tensor, R: int) -> torch.Tensor:
        """`rollout` on CPU with the work around the products in two numba passes (`sampling_step`):
        the same draws from `generator` in the same order, the same arithmetic in float32.

        X (B, H+1, n) float32 with X[:, 0] set, filled in place; U (B, H, m); order, inverse, R: the
        first step's assignment (`_assignment`).
        """
        B, H, _ = U.shape
        states, actions = X.numpy(), U.to(torch.float32).contiguous().numpy()
        features = self._workspace(R)[0]
        rows = bits_of(features).reshape(self.k * R, -1)
        slots, keep = order.numpy(), inverse.numpy()
        for t in range(H):
            if t > 0 and self.propagation == "ts1":
                order, inverse, R = self._assignment(B, generator)
                slots, keep = order.numpy(), inverse.numpy()
            write_features(states, actions, t, slots, *self._feature_layout, rows)
            out = self._products(features)
            noise = torch.randn(self.k, R, self.n, generator=generator, device=self.device)
            sample_next_states(bits_of(out), noise.numpy(), *self._variance_bounds, slots, keep, states, t)
        return X
