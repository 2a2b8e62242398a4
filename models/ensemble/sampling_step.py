"""A trajectory-sampling step's work around the network, fused into two numba passes on CPU.

Between one step's products and the next there is only a few numbers per particle: the delta and
log-variance heads, the sampled next state and the next step's input features. As torch operations
they are some twenty small calls a step, each dearer in dispatch than in arithmetic (about 15% of
an iCEM plan at the PETS settings, docs/notes/floors.md). Here they are two passes over the particles:

- `write_features`: each member-major slot's input row (state without angles, sin and cos of the
  angles, action or action minus its state, a constant 1) in the network's dtype;
- `sample_next_states`: the log-variance bounded as the network bounds it (PETS' two softplus),
  and the next state x + delta + exp(log std) * noise.

The states stay in slot order, one contiguous (slots, n) block a step, so that both passes read
and write memory in order however large the population (`EnsembleDynamics._rollout_fused`).

Both take float32 arrays or bfloat16 bit arrays for the network's side (`bfloat16_bits`), and do
their arithmetic in float32 as the torch version (`EnsembleDynamics` on other devices) does. Their
exp, softplus, sin and cos are written out in float32 arithmetic, not libm calls, so that loops of
them vectorise: at MPPI's 20,000 particles a step the two passes take about 4% of a plan.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from forethought.models.ensemble.bfloat16_bits import as_float32, f32_as_u32, stored, u32_as_f32

_LOG2E = np.float32(1.4426950408889634)
# ln 2 = hi + lo, hi with few enough bits that k * hi is exact for the k that occur.
_LN2_HI, _LN2_LO = np.float32(0.693145751953125), np.float32(1.428606765330187e-06)
_MAGIC = np.float32(1.5 * 2**23)  # an integer-valued float added to it lands in the low mantissa bits


@njit(inline="always")
def _exp(x: np.float32) -> np.float32:
    """e^x in float32 within a few ulp, from arithmetic alone so that loops of it vectorise: x = k ln 2
    + r with |r| <= ln 2 / 2, e^r by its Taylor polynomial to r^7 (error under 1e-8), times 2^k
    written into the exponent bits (2^(k-1) and a doubling for k = 128, whose power float32 lacks).
    0 below -87.3, where e^x is subnormal; inf above float32's largest; NaN for NaN."""
    if x != x:
        return x
    if x > np.float32(89.0):
        return np.float32(np.inf)
    if x < np.float32(-87.3):
        return np.float32(0.0)
    k = (x * _LOG2E + _MAGIC) - _MAGIC  # round to nearest
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.float32(1.0 / 5040.0)
    for c in (1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0):
        p = p * r + np.float32(c)
    top = k > np.float32(127.0)
    if top:
        k = k - np.float32(1.0)
    scale = u32_as_f32(np.uint32(f32_as_u32(k + _MAGIC) - f32_as_u32(_MAGIC) + np.uint32(127)) << np.uint32(23))
    y = p * scale
    return y + y if top else y


@njit(inline="always")
def _softplus(z: np.float32) -> np.float32:
    """log(1 + e^z) = max(z, 0) + log1p(u), u = e^-|z| in (0, 1], with log1p(u) = 2 atanh(s),
    s = u / (2 + u) <= 1/3, by its series to s^15 (relative error under 1e-8): exact for small u,
    where the 1 would swallow it."""
    u = _exp(-abs(z))
    s = u / (np.float32(2.0) + u)
    s2 = s * s
    q = np.float32(1.0 / 15.0)
    for c in (1.0 / 13.0, 1.0 / 11.0, 1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0):
        q = q * s2 + np.float32(c)
    return max(z, np.float32(0.0)) + np.float32(2.0) * s * q


_2_OVER_PI = np.float32(0.6366197723675814)
# pi/2 in three parts, the first two short enough that k times them is exact for |k| < 2^12.
_PIO2_1, _PIO2_2, _PIO2_3 = np.float32(1.5703125), np.float32(4.8375129699707031e-04), np.float32(7.5497899548918822e-08)


@njit(inline="always")
def _sincos(x: np.float32) -> tuple[np.float32, np.float32]:
    """sin x and cos x in float32 from arithmetic alone, so that loops of it vectorise (libm's are
    calls): x = k pi/2 + r with |r| <= pi/4, sin r and cos r by their odd and even polynomials, the
    quadrant k mod 4 choosing and signing them. Within 1e-7 of float64 for |x| <= 1000 (1430 angles
    in 1.0 us against libm's 6.8), within [-1, 1] for any x; NaN for NaN and the infinities."""
    k = (x * _2_OVER_PI + _MAGIC) - _MAGIC  # round to nearest
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    # |r| <= pi/4 where the reduction is exact. Far beyond |x| ~ 1e7 it is not (nor does float32
    # resolve the angle there): r is held to [-1, 1], where both polynomials stay within [-1, 1], so
    # that a diverged particle's features stay bounded (NaN passes: comparisons with it are false).
    r = np.float32(-1.0) if r < np.float32(-1.0) else (np.float32(1.0) if r > np.float32(1.0) else r)
    r2 = r * r
    s = r + r * r2 * (np.float32(-1.6666654611e-1) + r2 * (np.float32(8.3321608736e-3) + r2 * np.float32(-1.9515295891e-4)))
    c = (np.float32(1.0) - np.float32(0.5) * r2
         + r2 * r2 * (np.float32(4.166664568298827e-2) + r2 * (np.float32(-1.388731625493765e-3)
                                                               + r2 * np.float32(2.443315711809948e-5))))
    quadrant = f32_as_u32(k + _MAGIC) & np.uint32(3)
    sin = c if quadrant & np.uint32(1) else s
    cos = s if quadrant & np.uint32(1) else c
    sin = -sin if quadrant & np.uint32(2) else sin
    cos = -cos if (quadrant + np.uint32(1)) & np.uint32(2) else cos
    return sin, cos


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
def write_features(x: np.ndarray, u: np.ndarray, plain: np.ndarray, angles: np.ndarray, action_ref: np.ndarray,
                   action_rel: np.ndarray, features: np.ndarray) -> None:
    """features[s] = the network input of state x[s] and action u[s].

    x (S, n) float32 states, u (S, m) float32 actions; plain (p,), angles (a,) state indices;
    action_ref (m,) the state an action is taken relative to where action_rel (m,) is 1;
    features (S, p + 2a + m + 1) float32 or bfloat16 bits, written.
    """
    p, a, m = plain.size, angles.size, action_ref.size
    for s in range(x.shape[0]):
        for i in range(p):
            features[s, i] = stored(x[s, plain[i]], features)
        for i in range(a):
            sin, cos = _sincos(x[s, angles[i]])
            features[s, p + i] = stored(sin, features)
            features[s, p + a + i] = stored(cos, features)
        for i in range(m):
            value = u[s, i]
            if action_rel[i] != 0.0:
                value = value - action_rel[i] * x[s, action_ref[i]]
            features[s, p + 2 * a + i] = stored(value, features)
        features[s, p + 2 * a + m] = stored(1.0, features)


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
def sample_next_states(out: np.ndarray, noise: np.ndarray, min_logvar: np.ndarray, max_logvar: np.ndarray,
                       log_std_scale: np.ndarray, x: np.ndarray, x_next: np.ndarray) -> None:
    """x_next = x + delta + exp(log std) * noise, slot by slot.

    out (k, R, 2n) the network's output per member-major slot: delta (target units), then the raw
    log-variance (normalised units), float32 or bfloat16 bits; noise (k, R, n) standard normal;
    min_logvar, max_logvar (k, n) the members' bounds; log_std_scale (n,) log of the targets' std;
    x, x_next (k*R, n) float32 states of the slots, x_next written.
    """
    k, R, width = out.shape
    n = width // 2
    half = np.float32(0.5)
    # The standard deviations first, in loops over contiguous memory without branches (they vectorise).
    std = np.empty((k, n, R), dtype=np.float32)
    for e in range(k):
        for r in range(R):
            for i in range(n):
                std[e, i, r] = as_float32(out[e, r, n + i])
    for e in range(k):
        for i in range(n):
            upper, lower, scale, column = max_logvar[e, i], min_logvar[e, i], log_std_scale[i], std[e, i]
            # Three short loops, not one long one: each step's chain of dependent operations is
            # long, and LLVM interleaves short loops' iterations (half the time of one loop).
            for r in range(R):
                column[r] = upper - _softplus(upper - column[r])
            for r in range(R):
                column[r] = lower + _softplus(column[r] - lower)
            for r in range(R):
                column[r] = _exp(half * column[r] + scale)
    for e in range(k):
        for r in range(R):
            s = e * R + r
            for i in range(n):
                x_next[s, i] = x[s, i] + (as_float32(out[e, r, i]) + std[e, i, r] * noise[e, r, i])


ROW_ORDER_BYTES = 1_000_000
"""States up to this size are put back into row order row by row (`to_row_order`): they are still in
the level-2 cache from the rollout (1 MB a core on the machines measured; 0.22 against 0.11 ms at
2,000 rows of 16 steps, equal at 7,000)."""


@njit(nogil=True, boundscheck=False, cache=True)
def to_row_order(slots: np.ndarray, order: np.ndarray, inverse: np.ndarray, X: np.ndarray, start: int, stop: int) -> None:
    """X[b, t] = slots[t, inverse[b]] for t in [start, stop): the states of steps start .. stop - 1
    put back from slot order into row order.

    slots (T, S, n) float32; order (S,) the row in each slot, inverse (B,) the slot whose states a
    row takes (a padding slot repeats a row; only inverse's are read); X (B, >= stop, n) float32.
    Slot by slot where the states outgrow the level-2 cache: the reads go in order and each row's
    writes are one contiguous run (through the rows' slots, every read is a cache miss at thousands
    of rows; 2.3 times faster at MPPI's 20,000). Row by row where they fit (`ROW_ORDER_BYTES`): the
    reads hit the cache and the writes go in order (twice as fast at iCEM's 2,000).
    """
    if slots.size * 4 <= ROW_ORDER_BYTES:
        for b in range(X.shape[0]):
            s = inverse[b]
            for t in range(start, stop):
                for i in range(slots.shape[2]):
                    X[b, t, i] = slots[t, s, i]
        return
    for s in range(slots.shape[1]):
        b = order[s]
        if inverse[b] != s:
            continue
        for t in range(start, stop):
            for i in range(slots.shape[2]):
                X[b, t, i] = slots[t, s, i]


@njit(nogil=True, boundscheck=False, cache=True)
def to_slot_order(X: np.ndarray, U: np.ndarray, order: np.ndarray, slots: np.ndarray, actions: np.ndarray) -> None:
    """slots[s] = X[order[s], 0] and actions[t, s] = U[order[s], t]: a rollout's start states and
    actions dealt out to the slots, time-major (`to_row_order` puts the states back).

    X (B, >= 1, n), U (B, H, m) float32; order (S,); slots (S, n), actions (H, S, m) float32, written.
    One pass, each row's actions read as one run (torch's gathers took two passes and 4 ms at
    MPPI's 20,000 rows).
    """
    for s in range(order.size):
        b = order[s]
        for i in range(X.shape[2]):
            slots[s, i] = X[b, 0, i]
        for t in range(U.shape[1]):
            for i in range(U.shape[2]):
                actions[t, s, i] = U[b, t, i]


@njit(nogil=True, boundscheck=False, cache=True)
def deal_slots(perm: np.ndarray, k: int, C: int, q: int, order: np.ndarray, inverse: np.ndarray) -> None:
    """The shuffled rows perm (B,) dealt out to k members like cards, in q chunks of k member blocks
    of C slots: the j-th goes to member j % k as its (j // k)-th slot, rows from the start of perm
    again where q * k * C > B (padding). order (q*k*C,) the row in each slot, inverse (B,) each
    row's slot, int64, written (`EnsembleDynamics._assignment`: one pass, where torch's index
    arithmetic took a dozen calls a rollout)."""
    B = perm.size
    for j in range(q * k * C):
        i = j // k
        slot = ((i // C) * k + j % k) * C + i % C
        row = perm[j] if j < B else perm[j - B]
        order[slot] = row
        if j < B:
            inverse[row] = slot
