"""bfloat16 values as their 16-bit patterns inside numba kernels: widened to float32 exactly, and
float32 narrowed to bfloat16 with round-to-nearest-even, as torch converts them.

numba has no bfloat16 type, so the planning kernels see a bfloat16 tensor as uint16 bits
(`bits_of`) and move between the two widths with shifts. `as_float32` and `stored` make one kernel
serve float32 arrays and bfloat16 bit arrays alike (numba compiles one version for each).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, types
from numba.extending import intrinsic, overload


def _bitcast(source, target):
    """An intrinsic reinterpreting a 32-bit value's bits as another 32-bit type."""

    @intrinsic
    def cast(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(target))

        return target(source), codegen

    return cast


u32_as_f32 = _bitcast(types.uint32, types.float32)
f32_as_u32 = _bitcast(types.float32, types.uint32)


@njit(inline="always")
def widen(bits: np.uint16) -> np.float32:
    """The float32 of a bfloat16 bit pattern (exact: bfloat16 is float32's upper half)."""
    return u32_as_f32(np.uint32(bits) << np.uint32(16))


@njit(inline="always")
def round_bits(bits: np.uint32) -> np.uint16:
    """The upper half of a float32's bits rounded to nearest even: its bfloat16, for a number or an
    infinity. A NaN's payload could carry into the sign here: `narrow` sorts NaN out first."""
    return np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(inline="always")
def narrow(x: np.float32) -> np.uint16:
    """The bfloat16 bits of x rounded to nearest even; NaN gives torch's quiet NaN (0x7FC0)."""
    if x != x:
        return np.uint16(0x7FC0)
    return round_bits(f32_as_u32(np.float32(x)))


def as_float32(value):
    """A stored element as float32: widened from bfloat16 bits (uint16), converted otherwise."""


@overload(as_float32)
def _as_float32(value):
    if value == types.uint16:
        return lambda value: widen(value)
    return lambda value: np.float32(value)


def stored(x, array):
    """x as an element of `array`: bfloat16 bits for a uint16 array, the array's dtype otherwise."""


@overload(stored)
def _stored(x, array):
    if array.dtype == types.uint16:
        return lambda x, array: narrow(np.float32(x))
    dtype = array.dtype
    return lambda x, array: dtype(x)


def bits_of(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as the numpy array a kernel takes: a bfloat16 one as its uint16 bits (shared
    memory, no copy), any other as itself."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()
