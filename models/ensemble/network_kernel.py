"""The ensemble's bfloat16 network in one compiled pass on CPUs with AVX512-BF16 (`network_kernel.c`).

A sampling planner's time is the network's (docs/notes/floors.md, "Samplers"): as torch operations
each hidden layer is a product, a bias pass and an activation pass over memory, and the products
alone ran at about the core's matrix-product peak. Here each output tile's float32 sums stay in
registers from the bias through the products to the SiLU, and are narrowed to bfloat16 once; the
layers run member by member, so that a member's activations (300 rows of 200 in bfloat16, 120 kB)
stay in the level-2 cache from one layer to the next. Its hidden layers' weights and biases are
packed times -log2(e) (`prescaled`): the SiLU starts from the sum it would first multiply by that.

Where the extension did not build or the CPU lacks AVX512-BF16, `available()` is false and planning
runs the network through torch as before (`EnsembleDynamics._products`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

try:
    from forethought.models.ensemble import _planning_kernels
except ImportError:  # built optionally (setup.py): no C compiler where the package was installed
    _planning_kernels = None


def available() -> bool:
    """Whether the compiled kernel is installed and this CPU runs it."""
    return _planning_kernels is not None and _planning_kernels.network_supported()


def _columns(N: int) -> int:
    """N rounded up to a multiple of 16: the packed weights' and biases' row length (whole vectors)."""
    return -(-N // 16) * 16


def pack_pairs(w: torch.Tensor) -> torch.Tensor:
    """w (k, K, N) -> (k, ceil(K/2), N16) int32 in bfloat16: element [e, p, j] holds w[e, 2p, j] in its
    low and w[e, 2p+1, j] in its high 16 bits; rows past K and columns past N (up to N16, the next
    multiple of 16) are zeros."""
    k, K, N = w.shape
    padded = torch.zeros(k, K + K % 2, _columns(N), dtype=torch.bfloat16)
    padded[:, :K, :N] = w.to(torch.bfloat16)
    bits = padded.view(torch.int16).to(torch.int32) & 0xFFFF
    return (bits[:, 0::2] | (bits[:, 1::2] << 16)).contiguous()


def _padded_bias(b: torch.Tensor | None, k: int, N: int) -> torch.Tensor:
    """b (k, 1, N) or None (zeros) -> (k, N16) float32, zeros past N."""
    out = torch.zeros(k, _columns(N))
    if b is not None:
        out[:, :N] = b.reshape(k, N).float()
    return out


def layer(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, silu: bool, out_dtype: torch.dtype,
          prescaled: bool = False) -> torch.Tensor:
    """act(h w + b) for h (k, R, K) bfloat16 on CPU, w (k, K, N), b (k, 1, N) or None: (k, R, N) in
    out_dtype (bfloat16 or float32); act is SiLU with silu, else none. With prescaled (and silu), w
    and b are -log2(e) times a layer's (`prescaled`) and the result is -log2(e) SiLU of its sum, as
    the network's hidden layers compute it. The sums are float32, the result rounded once. For tests
    and benchmarks; planning calls `PackedNetwork.forward`."""
    if not available():
        raise RuntimeError("the compiled network kernel is not available here (network_kernel.available())")
    if (h.dtype != torch.bfloat16 or h.device.type != "cpu" or h.dim() != 3 or w.dim() != 3
            or h.shape[0] != w.shape[0] or h.shape[2] != w.shape[1]):
        raise ValueError(f"layer takes h (k, R, K) bfloat16 on CPU and w (k, K, N), got {tuple(h.shape)} {h.dtype} "
                         f"on {h.device} and {tuple(w.shape)}")
    if out_dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"out_dtype is bfloat16 or float32, not {out_dtype}")
    k, R, K = h.shape
    N = w.shape[2]
    if K % 2:
        h = torch.cat([h, torch.zeros(k, R, 1, dtype=h.dtype)], dim=2)
    h = h.contiguous()
    pairs = pack_pairs(w)
    bias = _padded_bias(b, k, N)
    out = torch.empty(k, R, N, dtype=out_dtype)
    for e in range(k):
        _planning_kernels.layer(h[e].data_ptr(), h.shape[2], pairs[e].data_ptr(), pairs.shape[2], bias[e].data_ptr(),
                                out[e].data_ptr(), N, R, pairs.shape[1], N, (2 if prescaled else 1) if silu else 0,
                                int(out_dtype == torch.float32))
    return out


LOG2E = 1.4426950408889634


def prescaled(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None]) -> tuple[list, list]:
    """The same network with its SiLUs' sums times -log2(e), in float64: each hidden layer's bias
    times -log2(e), the first layer's weights too, the last layer's weights over -log2(e). A hidden
    layer then computes t = -log2(e) z and passes on t / (1 + 2^t) = -log2(e) SiLU(z), whose factor
    the next layer's weights (unchanged) carry over into its own t, and the last layer's take back.
    The output is the same function; the rescaled weights are rounded to bfloat16 after the scaling
    (from float64 where they are given so, as planning gives them)."""
    weights = [w.double() for w in weights]
    biases = [None if b is None else b.double() for b in biases]
    if len(weights) > 1:
        weights[0] = weights[0] * -LOG2E
        weights[-1] = weights[-1] / -LOG2E
        biases[:-1] = [None if b is None else b * -LOG2E for b in biases[:-1]]
    return weights, biases


class PackedNetwork:
    """An ensemble MLP packed for the kernel: SiLU after every layer but the last.

    weights: (k, K_l, N_l) for each layer l, N_l = K_{l+1}; biases: (k, 1, N_l) for each layer, or
    None for one without (the first, whose bias rides on a constant input feature in planning).
    `forward` takes the first layer's input with K_0 rounded up to even (`input_width`) and writes
    the last layer's output as float32. The weights are packed `prescaled` (in bfloat16, rounded
    from the precision they come in): the hidden layers pass on -log2(e) SiLU, the output is the
    network's own.
    """

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None]):
        if not available():
            raise RuntimeError("the compiled network kernel is not available here (network_kernel.available())")
        if len(weights) != len(biases) or not weights:
            raise ValueError(f"one bias a layer: {len(weights)} weights, {len(biases)} biases")
        self.k = weights[0].shape[0]
        for a, b in zip(weights[:-1], weights[1:]):
            if a.shape[2] != b.shape[1] or a.shape[0] != b.shape[0]:
                raise ValueError(f"layer widths do not chain: {tuple(a.shape)} then {tuple(b.shape)}")
        self.input_width = weights[0].shape[1] + weights[0].shape[1] % 2
        self.output_width = weights[-1].shape[2]
        self.hidden_stride = max(w.shape[2] + w.shape[2] % 2 for w in weights[:-1]) if len(weights) > 1 else 2
        scaled, scaled_biases = prescaled(weights, biases)
        self._pairs = [pack_pairs(w) for w in scaled]
        self._biases = [_padded_bias(b, self.k, w.shape[2]) for w, b in zip(scaled, scaled_biases)]
        self._plan = np.array([[p.data_ptr(), p.shape[2], b.data_ptr(), p.shape[1] * p.shape[2], p.shape[1], w.shape[2]]
                               for p, b, w in zip(self._pairs, self._biases, weights)], dtype=np.int64)
        self._scratch: dict[int, torch.Tensor] = {}

    def forward(self, h0: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """h0 (k, R, input_width) or (q, k, R, input_width) bfloat16 -> out (k, R, output_width) or
        (q, k, R, output_width) float32, written; returns out. Both contiguous on CPU; h0's column past
        an odd input width must be zero (a zero weight times NaN is NaN). With q chunks each member
        runs through all of them in turn, so that its weights are read into the cache once."""
        k, R = self.k, h0.shape[-2]
        q = h0.shape[0] if h0.dim() == 4 else 1
        lead = (q, k) if h0.dim() == 4 else (k,)
        if (h0.dtype != torch.bfloat16 or tuple(h0.shape) != (*lead, R, self.input_width) or not h0.is_contiguous()
                or out.dtype != torch.float32 or tuple(out.shape) != (*lead, R, self.output_width)
                or not out.is_contiguous() or h0.device.type != "cpu" or out.device.type != "cpu"):
            raise ValueError(f"forward takes h0 ([q,] {k}, R, {self.input_width}) bfloat16 and out ([q,] {k}, R, "
                             f"{self.output_width}) float32, contiguous on CPU; got {tuple(h0.shape)} {h0.dtype} "
                             f"on {h0.device}, {tuple(out.shape)} {out.dtype} on {out.device}")
        _planning_kernels.forward(h0.data_ptr(), q, k, R, *self.raw(R), out.data_ptr())
        return out

    def raw(self, rows: int) -> tuple[int, int, int, int]:
        """(plan address, layers, scratch address, scratch row length) for the compiled functions that
        run this network on blocks of `rows` rows (`forward`, sampling_kernel.StepKernel.rollout)."""
        scratch = self._scratch.get(rows)
        if scratch is None:
            if len(self._scratch) >= 8:
                self._scratch.clear()
            # Zeros: an odd width's padding column is read (times a zero weight) before it is written.
            scratch = self._scratch[rows] = torch.zeros(2, rows, self.hidden_stride, dtype=torch.bfloat16)
        return self._plan.ctypes.data, len(self._pairs), scratch.data_ptr(), self.hidden_stride
