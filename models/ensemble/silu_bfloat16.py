"""SiLU in place on bfloat16 tensors: the sampling planners' activation, in one vectorised pass.

Each hidden layer of a planning step is a bfloat16 product followed by its activation, and the
activation's arithmetic, not its memory, is what it costs (docs/notes/floors.md, "Samplers"):
torch's in-place SiLU on bfloat16 widens every element, evaluates a full-precision exponential and
narrows it again, 0.22 ms for a (5, 400, 200) layer on this project's reference core. A bfloat16
result needs 8 significant bits, so here x sigmoid(x) = x / (1 + 2^t), t = -x log2(e), takes 2^t
from its integer part (written into the exponent bits) times a degree-4 polynomial of its
fraction (relative error about 5e-6), widening and narrowing by bit shifts: 0.11 ms on one thread.
Every normal bfloat16 input from -87 up gives the exactly rounded SiLU or a neighbour one ulp
away (the exact value for all but 4 of 49,457), a subnormal one a value within the smallest normal
number of it; below -87, where SiLU is under 1e-30 in size, -0 or a tiny negative number; NaN stays NaN (its payload kept, made quiet), inf
gives inf and -inf NaN, as torch's do. Not differentiable.

The pass runs on the calling thread, so `planning_silu_` takes it on one torch thread (as the
planners run in sweeps and benchmarks) and torch's own SiLU, which shares a layer among its
threads, with more.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from forethought.models.ensemble.bfloat16_bits import bits_of, f32_as_u32, round_bits, u32_as_f32, widen

_LOG2E = np.float32(1.4426950408889634)
_MAGIC = np.float32(1.5 * 2**23 + 127)  # integers up to 2^22 added to 1.5 * 2^23 land in its low mantissa bits
# 2^f on [0, 1), least-squares degree 4 (relative error about 5e-6).
_P4, _P3, _P2, _P1 = np.float32(1.3534167e-2), np.float32(5.2011464e-2), np.float32(2.4144275e-1), np.float32(6.9300383e-1)


# No "nnan"/"ninf" in the fast-math flags: NaN and infinities pass through as IEEE arithmetic has them.
@njit(fastmath={"contract", "afn", "reassoc", "arcp"}, nogil=True, boundscheck=False, error_model="numpy",
      cache=True)
def _silu_bits(bits: np.ndarray) -> None:
    """SiLU in place on bfloat16 values held as their bit patterns, bits (N,) uint16."""
    for j in range(bits.size):
        x = widen(bits[j])
        # exp(-x) = 2^t; below -126 the 1 dominates, above 127 it overflows to inf (x / inf = -0).
        t = min(max(x * -_LOG2E, np.float32(-126.0)), np.float32(128.0))
        whole = np.floor(t)
        f = t - whole
        p = (((_P4 * f + _P3) * f + _P2) * f + _P1) * f + np.float32(1.0)
        # whole + 127 as an integer read from the mantissa of whole + 127 + 1.5 * 2^23, not by a
        # float-to-integer conversion, which LLVM leaves undefined for NaN (x is NaN then, and y).
        biased = f32_as_u32(whole + _MAGIC) - np.uint32(0x4B400000)
        y = x / (np.float32(1.0) + u32_as_f32(biased << np.uint32(23)) * p)
        out = f32_as_u32(y)
        # Round to nearest even, as torch narrows float32 to bfloat16. A NaN here carries a bfloat16
        # NaN's payload (low 16 bits zero), so the rounding cannot carry into its sign or exponent.
        bits[j] = round_bits(out)


def silu_bfloat16_(h: torch.Tensor) -> torch.Tensor:
    """SiLU of h in place, h a contiguous bfloat16 CPU tensor of any shape outside autograd; returns h."""
    if h.dtype != torch.bfloat16 or h.device.type != "cpu" or not h.is_contiguous():
        raise ValueError(f"silu_bfloat16_ takes a contiguous bfloat16 CPU tensor, got {h.dtype} on {h.device}"
                         f"{'' if h.is_contiguous() else ', not contiguous'}")
    if h.requires_grad and torch.is_grad_enabled():
        raise ValueError("silu_bfloat16_ is not differentiable: call it under torch.no_grad()")
    _silu_bits(bits_of(h).reshape(-1))
    return h


def planning_silu_(h: torch.Tensor) -> torch.Tensor:
    """SiLU of a contiguous bfloat16 CPU tensor in place: this module's pass on one torch thread,
    torch's own (shared among its threads) with more; returns h."""
    if torch.get_num_threads() == 1:
        return silu_bfloat16_(h)
    return F.silu(h, inplace=True)
