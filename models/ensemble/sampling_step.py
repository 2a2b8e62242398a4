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
their arithmetic in float32 as the torch version (`EnsembleDynamics` on other devices) does.
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
            angle = x[s, angles[i]]
            features[s, p + i] = stored(np.sin(angle), features)
            features[s, p + a + i] = stored(np.cos(angle), features)
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
            for r in range(R):
                logvar = upper - _softplus(upper - column[r])
                logvar = lower + _softplus(logvar - lower)
                column[r] = _exp(half * logvar + scale)
    for e in range(k):
        for r in range(R):
            s = e * R + r
            for i in range(n):
                x_next[s, i] = x[s, i] + (as_float32(out[e, r, i]) + std[e, i, r] * noise[e, r, i])
