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

from forethought.models.ensemble import network_kernel, sampling_kernel
from forethought.models.ensemble.bfloat16_bits import bits_of
from forethought.models.ensemble.config import DTYPES, PROPAGATIONS
from forethought.models.ensemble.network import ACTIVATIONS, ACTIVATIONS_IN_PLACE, soft_bound_logvar
from forethought.models.ensemble.sampling_step import (deal_slots, sample_next_states, to_row_order, to_slot_order,
                                                       write_features)
from forethought.models.ensemble.silu_bfloat16 import planning_silu_

if TYPE_CHECKING:
    from forethought.models.ensemble.model import EnsembleModel


CHUNK_BYTES = 600_000
"""The size of one hidden layer's activations, all members together, in one pass of the network on
CPU: 300 rows a member of five 200-wide bfloat16 layers, 150 in float32. A chunk stays in a
core's level-2 cache from one layer to the next, where the products run about a tenth faster than
on thousands of rows and the narrow last layer reads its input from cache. At PETS's settings
MPPI plans in 0.90x the time with bfloat16 chunks of 300 rows against 600, and slower with 1000
or 100; in float32, iCEM and MPPI in 0.86x and 0.93x with chunks of 150 rows against none
(docs/notes/floors.md)."""


def deal_slots_torch(perm: torch.Tensor, k: int, C: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`sampling_step.deal_slots` in torch's operations, for devices other than the CPU: the
    shuffled rows perm (B,) dealt out to k members like cards (the j-th goes to member j % k as its
    (j // k)-th slot), in q chunks of k blocks of C slots. Returns order (q*k*C,), inverse (B,)."""
    B = perm.numel()
    j = torch.arange(q * k * C, device=perm.device)
    i = j // k
    slot = ((i // C) * k + j % k) * C + i % C
    order = torch.empty_like(j)
    order[slot] = torch.cat([perm, perm[: q * k * C - B]])
    inverse = torch.empty_like(perm)
    inverse[perm] = slot[:B]
    return order, inverse


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
        self._kernel_buffers: dict[tuple[int, int], tuple] = {}
        widest = max(w.shape[-1] for w in self.weights[:-1])
        self.chunk_rows = max(1, CHUNK_BYTES // (self.k * widest * self.weights[0].element_size()))
        # On CPU a step's work around the products runs as two numba passes (`_rollout_fused`); the
        # torch steps stay for other devices, and as the reference the fused passes are tested against.
        self.fused = self.device.type == "cpu"
        # The SiLU network in bfloat16 runs as one compiled pass where the CPU has AVX512-BF16
        # (`network_kernel`), on one torch thread as the planners run in sweeps and benchmarks.
        self.kernel = None
        if (self.fused and self.dtype == torch.bfloat16 and model.config.activation == "silu"
                and network_kernel.available()):
            # From float64: the first and last layers' weights are rescaled there (`network_kernel.prescaled`).
            self.kernel = network_kernel.PackedNetwork(weights, [None, *biases[1:]])
        # The fused steps' noise: Philox on AVX-512 (`sampling_kernel`, a key a rollout from the planner's
        # generator), else torch's generator, whose draws the torch steps make in the same order.
        self.draws = "philox" if self.fused and sampling_kernel.available() else "torch"
        self._angle_idx = torch.as_tensor(model._angle_idx, device=self.device)
        self._plain_idx = torch.as_tensor(model._plain_idx, device=self.device)
        self._action_ref = torch.as_tensor(model._action_ref, device=self.device)
        self._action_rel = torch.as_tensor(model._action_rel, dtype=torch.float32, device=self.device)
        self._relative = bool(model._action_rel.any())
        # The same, as the numba passes of `_rollout_fused` take them.
        self._feature_layout = (model._plain_idx.astype(np.int64), model._angle_idx.astype(np.int64),
                                model._action_ref.astype(np.int64), model._action_rel.astype(np.float32))
        k, n = self.k, self.n
        bounds = ((self.min_logvar, (k, n)), (self.max_logvar, (k, n)), (self.log_std_scale, (n,)))
        self._variance_bounds = tuple(np.ascontiguousarray(a.cpu().numpy().reshape(shape), dtype=np.float32)
                                      for a, shape in bounds)
        # With the compiled network, the features and the sampling compiled too, Philox's draws made
        # where they are used (`sampling_kernel`), where the model's rows fit its vectors.
        self.step_kernel = None
        if (self.kernel is not None and sampling_kernel.available()
                and sampling_kernel.fits(n, self.m, self.kernel.input_width)):
            self.step_kernel = sampling_kernel.StepKernel(n, self.m, *self._feature_layout, *self._variance_bounds)
        # TSinf through the compiled kernels goes member by member, all steps in one call
        # (`StepKernel.rollout`); the same states as step by step.
        self.member_by_member = True

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

    def _kernel_workspace(self, q: int, C: int) -> tuple[torch.Tensor, torch.Tensor, tuple[np.ndarray, ...]]:
        """For the compiled kernel on q chunks of C slots a member: its input features (q, k, C, even
        width) bfloat16, zeros past the features, its output (q, k, C, 2n) float32, and the variance
        bounds for the q*k blocks (member e's in block c*k + e), reused across steps and calls."""
        key = (q, C)
        if key not in self._kernel_buffers:
            if len(self._kernel_buffers) >= 8:
                self._kernel_buffers.clear()
            lower, upper, scale = self._variance_bounds
            self._kernel_buffers[key] = (
                torch.zeros(q, self.k, C, self.kernel.input_width, dtype=torch.bfloat16),
                torch.empty(q, self.k, C, self.kernel.output_width),
                (np.tile(lower, (q, 1)), np.tile(upper, (q, 1)), scale))
        return self._kernel_buffers[key]

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

    def _assignment(self, B: int, generator: torch.Generator,
                    chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """A random member for each of B rows, in near-equal shares (counts differ by at most one),
        laid out in q chunks of k member blocks of C slots (q = 1 without `chunk`, else the fewest
        chunks with at most `chunk` slots a member).

        Returns order (q*k*C,): the row in each slot (member e owns slots (c*k + e)*C .. +C-1 of
        chunk c; a few slots repeat a row to pad), inverse (B,): the slot that holds each row's
        result, C and q.
        """
        k = self.k
        q = 1 if chunk is None else max(1, math.ceil(B / (k * chunk)))
        C = math.ceil(B / (k * q))
        perm = torch.randperm(B, generator=generator, device=self.device)
        if self.device.type != "cpu":
            return (*deal_slots_torch(perm, k, C, q), C, q)
        order, inverse = torch.empty(q * k * C, dtype=torch.int64), torch.empty(B, dtype=torch.int64)
        deal_slots(perm.numpy(), k, C, q, order.numpy(), inverse.numpy())  # one compiled pass
        return order, inverse, C, q

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
        if self.fused:
            return self._rollout_fused(X, U, generator)
        order, inverse, R, _ = self._assignment(B, generator)
        # Rows stay in member-major slot order between steps; TS1 deals them out afresh each step.
        xs, Us = x0[order], U[order]
        for t in range(H):
            if t > 0 and self.propagation == "ts1":
                order, inverse, R, _ = self._assignment(B, generator)
                xs, Us = x[order], U[order]
            f = self._features(xs, Us[:, t]).view(self.k, R, -1)
            delta, log_std = self._network(f)
            noise = torch.randn(self.k, R, self.n, generator=generator, device=self.device)
            xs = xs + (delta + torch.exp(log_std) * noise).view(self.k * R, self.n)
            x = X[:, t + 1] = xs[inverse]
        return X

    def _rollout_fused(self, X: torch.Tensor, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`rollout` on CPU: the network run on chunks of at most `chunk_rows` rows a member
        (`CHUNK_BYTES`), through torch's products chunk by chunk or through the compiled kernel
        (`network_kernel`) all chunks at once; the work around it in two passes a step, compiled with
        the compiled network (`sampling_kernel`), numba's otherwise (`sampling_step`).

        X (B, H+1, n) float32 with X[:, 0] set, filled; U (B, H, m). The states are kept in slot
        order, a contiguous block a step, and put into row order once at the end (TSinf; member by
        member inside the compiled rollout) or before each new assignment (TS1): read through the
        rows' indices at every step, a population of thousands of rows costs a cache miss per row and
        step. The noise is Philox's (`draws`); with torch's draws and one chunk (up to k * chunk_rows
        rows) they are the torch steps' own, in the same order.
        """
        B, H, _ = U.shape
        order, inverse, C, q = self._assignment(B, generator, self.chunk_rows)
        width = self.k * C  # slots in a chunk
        # numpy's arrays between the kernels: each torch call there costs more in dispatch than in work.
        Xs, Us = X.numpy(), (U if U.dtype == torch.float32 and not U.requires_grad else U.detach().float()).numpy()
        # torch's allocations: 64-byte aligned, as the compiled passes' vectors are (numpy's large ones
        # start 16 bytes into a page, and each vector would straddle two cache lines).
        states = torch.empty(H + 1, q * width, self.n).numpy()
        # Time-major (H, slots, m): a step's actions are one contiguous block, not one value every
        # H*m floats (a cache line a row at thousands of rows).
        steps = torch.empty(H, q * width, self.m).numpy()
        kernel = self.kernel if torch.get_num_threads() == 1 else None
        key = sampling_kernel.key_from(generator) if self.draws == "philox" else None
        compiled = kernel is not None and key is not None and self.step_kernel is not None
        if compiled and self.propagation == "tsinf" and self.member_by_member:
            # The states' trips into slot order and back inside, member by member while in cache.
            dealt = (Xs, np.ascontiguousarray(Us), order.numpy(), inverse.numpy())
            self.step_kernel.rollout(kernel, states, steps, q, C, key, dealt)
            return X
        to_slot_order(Xs, Us, order.numpy(), states[0], steps)
        if kernel is not None:
            # All chunks in one call each: the kernel keeps a member's weights in cache across them.
            features, out, bounds = self._kernel_workspace(q, C)
            outputs = out.numpy().reshape(q * self.k, C, -1)
        else:
            features = self._workspace(C)[0]
        rows = bits_of(features).reshape(-1, features.shape[-1])
        done = 1  # columns of X up to here are filled
        for t in range(H):
            if t > 0 and self.propagation == "ts1":
                to_row_order(states, order.numpy(), inverse.numpy(), Xs, done, t + 1)
                done = t + 1
                order, inverse, C, q = self._assignment(B, generator, self.chunk_rows)
                to_slot_order(Xs[:, t:], Us[:, t:], order.numpy(), states[t], steps[t:])
            x, x_next, u = states[t], states[t + 1], steps[t]
            if compiled:
                self.step_kernel.write_features(x, u, rows)
                kernel.forward(features, out)
                self.step_kernel.sample_next_states(outputs, x, x_next, key, t)
                continue
            if key is None:
                noise = torch.randn(q, self.k, C, self.n, generator=generator, device=self.device).numpy()
            else:  # stream t: each step's draws apart from every other's
                noise = sampling_kernel.fill(np.empty((q, self.k, C, self.n), dtype=np.float32), key, t)
            if kernel is not None:
                write_features(x, u, *self._feature_layout, rows)
                kernel.forward(features, out)
                sample_next_states(outputs, noise.reshape(q * self.k, C, -1), *bounds, x, x_next)
                continue
            for c in range(q):
                part = slice(c * width, (c + 1) * width)
                write_features(x[part], u[part], *self._feature_layout, rows)
                products = self._products(features)
                sample_next_states(bits_of(products), noise[c], *self._variance_bounds, x[part], x_next[part])
        to_row_order(states, order.numpy(), inverse.numpy(), Xs, done, H + 1)
        return X
