"""A trajectory-sampling step's work around the network on AVX-512 (`sampling_kernel.c`): the normal
draws, the next states and the next step's input features.

At PETS' settings that work took about a tenth of a CEM or MPPI plan as the numba passes of
`sampling_step` and torch's normal generator (docs/notes/floors.md): the passes go a row at a time,
and the draws (two million floats a CEM plan, at 300 million a second) went through memory that
the network's weights push out of the level-2 cache every step. Here the rows go sixteen lanes at
a time, and the draws are Philox4x32-10's, made where they are used. The arithmetic is the numba
passes', operation for operation, and gives their numbers bit for bit.

Philox is counter-based: a draw is a function of (key, stream, index). A rollout takes one key from
the planner's torch generator (`key_from`), and its steps are streams, so the draws are reproducible
from the generator as torch's are.

Where the extension did not build or the CPU lacks AVX-512, `available()` is false and rollouts run
the numba passes with torch's draws (`EnsembleDynamics`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from forethought.models.ensemble.network_kernel import PackedNetwork

try:
    from forethought.models.ensemble import _planning_kernels
except ImportError:  # built optionally (setup.py): no C compiler where the package was installed
    _planning_kernels = None

LANES = 16
"""The widest state, action and feature row the kernels take (one vector of float32)."""


def _word(value: int) -> int:
    """A key or stream as the unsigned 64-bit word the kernels take (modulo 2^64)."""
    return value & (2**64 - 1)


def available() -> bool:
    """Whether the compiled kernels are installed and this CPU runs them."""
    return _planning_kernels is not None and _planning_kernels.sampling_supported()


def fits(n: int, m: int, width: int) -> bool:
    """Whether states of n, actions of m and feature rows of `width` numbers fit the kernels' vectors."""
    return max(n, m, width) <= LANES


def key_from(generator: torch.Generator) -> int:
    """A 64-bit key drawn from `generator` (one draw: the generator moves on as with any other)."""
    return _word(int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64, generator=generator)))


def _check(name: str, a: np.ndarray, dtype, shape: tuple) -> None:
    if a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
        raise ValueError(f"{name}: a C-contiguous {np.dtype(dtype)} array of shape {shape} is wanted, got {a.dtype} "
                         f"{a.shape}{'' if a.flags.c_contiguous else ' not contiguous'}")


def _require() -> None:
    if not available():
        raise RuntimeError("the compiled sampling kernels are not available here (sampling_kernel.available())")


def fill(out: np.ndarray, key: int, stream: int, start: int = 0) -> np.ndarray:
    """out (any shape) float32, filled with the standard normals start, start + 1, ... of (key,
    stream) in order; returns out. Streams are independent of each other for a key; key and stream
    are taken modulo 2^64."""
    _require()
    _check("out", out, np.float32, out.shape)
    if not out.flags.writeable or start < 0:
        raise ValueError("fill takes a writeable array and a start >= 0")
    _planning_kernels.fill(out.ctypes.data, start, out.size, _word(key), _word(stream))
    return out


class StepKernel:
    """A step's work around the network for one model's layout, as the numba passes of
    `sampling_step` do it: the layout and the variance bounds are checked once here, the arrays of
    each step cheaply.

    n states, m actions; plain (p,), angles (a,) int64 state indices; action_ref (m,) int64 and
    action_rel (m,) float32 (an action is taken relative to its reference state where action_rel is
    nonzero); min_logvar, max_logvar (members, n) the members' bounds, log_std_scale (n,) the log of
    the targets' std, float32.
    """

    def __init__(self, n: int, m: int, plain: np.ndarray, angles: np.ndarray, action_ref: np.ndarray,
                 action_rel: np.ndarray, min_logvar: np.ndarray, max_logvar: np.ndarray, log_std_scale: np.ndarray):
        _require()
        self.n, self.m, self.members = n, m, min_logvar.shape[0]
        self.width = len(plain) + 2 * len(angles) + m + 1
        if not fits(n, m, self.width):
            raise ValueError(f"states of {n}, actions of {m} and feature rows of {self.width}: each at most {LANES}")
        self._layout = tuple(np.ascontiguousarray(a, dtype=dtype) for a, dtype in
                             ((plain, np.int64), (angles, np.int64), (action_ref, np.int64), (action_rel, np.float32)))
        if len(self._layout[2]) != m or len(self._layout[3]) != m or any(
                len(i) and (i.min() < 0 or i.max() >= n) for i in self._layout[:3]):
            raise ValueError(f"state indices in [0, {n}), and one reference state an action ({m})")
        self._bounds = tuple(np.ascontiguousarray(a, dtype=np.float32) for a in (min_logvar, max_logvar, log_std_scale))
        for name, a, shape in zip(("min_logvar", "max_logvar", "log_std_scale"), self._bounds,
                                  ((self.members, n), (self.members, n), (n,))):
            _check(name, a, np.float32, shape)
        plain, angles, ref, rel = self._layout
        self._layout_args = (plain.ctypes.data, len(plain), angles.ctypes.data, len(angles), ref.ctypes.data,
                             rel.ctypes.data)
        self._bound_args = tuple(a.ctypes.data for a in self._bounds)
        self._noise: dict[int, np.ndarray] = {}
        self._rollout_scratch: dict[tuple, tuple] = {}

    def write_features(self, x: np.ndarray, u: np.ndarray, features: np.ndarray) -> None:
        """features[s] = the network input of state x[s] and action u[s] (as
        `sampling_step.write_features`), then zeros to the row's end. x (S, n), u (S, m) float32;
        features (S, F) float32 or bfloat16 bits (uint16), width <= F <= 16, written."""
        S = x.shape[0]
        _check("x", x, np.float32, (S, self.n))
        _check("u", u, np.float32, (S, self.m))
        if (features.ndim != 2 or features.shape[0] != S or not self.width <= features.shape[1] <= LANES
                or features.dtype not in (np.float32, np.uint16) or not features.flags.c_contiguous):
            raise ValueError(f"features: C-contiguous float32 or bfloat16 bits (uint16) of shape ({S}, F), "
                             f"{self.width} <= F <= {LANES}, got {features.dtype} {features.shape}")
        _planning_kernels.features(x.ctypes.data, u.ctypes.data, S, self.n, self.m, *self._layout_args,
                                  features.ctypes.data, features.shape[1], int(features.dtype == np.uint16))

    def sample_next_states(self, out: np.ndarray, x: np.ndarray, x_next: np.ndarray, key: int, stream: int) -> None:
        """x_next = x + delta + exp(log std) * noise (as `sampling_step.sample_next_states`), noise
        (blocks, R, n) the normals of (key, stream) (`fill`). out (blocks, R, 2n) float32, block b of
        member b % members: delta, then the raw log-variance; x, x_next (blocks * R, n) float32."""
        blocks, R, _ = out.shape
        _check("out", out, np.float32, (blocks, R, 2 * self.n))
        _check("x", x, np.float32, (blocks * R, self.n))
        _check("x_next", x_next, np.float32, (blocks * R, self.n))
        if blocks % self.members:
            raise ValueError(f"{blocks} blocks do not divide among {self.members} members")
        noise = self._noise.get(R)
        if noise is None:  # one block's draws at a time: a few kB, in cache
            noise = self._noise[R] = np.empty(R * self.n, dtype=np.float32)
        _planning_kernels.sample(out.ctypes.data, blocks, R, self.n, self.members, *self._bound_args, x.ctypes.data,
                                x_next.ctypes.data, _word(key), _word(stream), noise.ctypes.data)

    def rollout(self, network: "PackedNetwork", slots: np.ndarray, actions: np.ndarray, chunks: int, rows: int,
                key: int, dealt: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """TSinf rollouts through `network`, member by member, each through every step
        (planning_kernels.c): its weights stay in the level-2 cache for the whole rollout. The same
        states as `write_features`, the network's forward and `sample_next_states` step by step
        with stream t for step t, bit for bit.

        slots (H+1, chunks * members * rows, n) float32, step 0 set, the rest written; actions (H,
        chunks * members * rows, m) float32; slot block c * members + e belongs to member e.
        With dealt = (X, U, order, inverse), X (B, H+1, n) and U (B, H, m) float32 in row order,
        order (S,) the row in each slot and inverse (B,) the slot of each row (int64,
        `sampling_step.deal_slots`): step 0 and the actions are dealt to each member's slots from
        the rows as `sampling_step.to_slot_order` does, and X[:, 1:] written back as `to_row_order`
        does, member by member while its states are in cache.
        """
        H = actions.shape[0]
        S = chunks * self.members * rows
        _check("slots", slots, np.float32, (H + 1, S, self.n))
        _check("actions", actions, np.float32, (H, S, self.m))
        rows_args = (0, 0, 0, 0, 0)
        if dealt is not None:
            X, U, order, inverse = dealt
            B = X.shape[0]
            _check("X", X, np.float32, (B, H + 1, self.n))
            _check("U", U, np.float32, (B, H, self.m))
            _check("order", order, np.int64, (S,))
            _check("inverse", inverse, np.int64, (B,))
            rows_args = (X.ctypes.data, U.ctypes.data, order.ctypes.data, inverse.ctypes.data, B)
        if (network.k != self.members or network.output_width != 2 * self.n
                or not self.width <= network.input_width <= LANES):
            raise ValueError(f"a network of {self.members} members from {self.width} to {LANES} inputs to {2 * self.n} "
                             f"outputs is wanted, got {network.k} from {network.input_width} to {network.output_width}")
        key_ = (chunks, rows, network.input_width)
        scratch = self._rollout_scratch.get(key_)
        if scratch is None:
            if len(self._rollout_scratch) >= 8:
                self._rollout_scratch.clear()
            # features zeroed past the model's width: an odd width's padding column must read zero
            scratch = self._rollout_scratch[key_] = (np.zeros((chunks, rows, network.input_width), dtype=np.uint16),
                                                     np.empty((chunks, rows, 2 * self.n), dtype=np.float32),
                                                     np.empty(rows * self.n, dtype=np.float32))
        features, out, noise = scratch
        _planning_kernels.rollout(slots.ctypes.data, actions.ctypes.data, H, chunks, self.members, rows, self.n, self.m,
                                  *network.raw(rows), features.ctypes.data, network.input_width, out.ctypes.data,
                                  *self._layout_args, *self._bound_args, _word(key), noise.ctypes.data, *rows_args)
