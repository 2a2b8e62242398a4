"""The Riccati recursion's steps, compiled: one call runs the whole backward sweep on small matrices.

The recursion runs once per time step on matrices of a few dozen rows (the arm's Q-function is
19 x 19), where a numpy or LAPACK call costs more than the arithmetic inside it: the sweep as
numpy calls took about 25 us a step around half a microsecond of multiply-adds. Here each step is
plain loops that numba compiles once (cached on disk beside this file), so a sweep costs its
arithmetic. `controllers/ilqr.py`'s `lqr_backward` prepares the augmented matrices for all steps
at once, calls `riccati_sweep`, and handles what needs Python: a step whose feed-forward leaves
its action bounds (the box QP, controllers/box_qp.py), after which `value_step` carries the value
function on with that step's gains and the sweep resumes.

Coordinates as in `lqr_backward`: s = (dx, 1) (p = n + 1 rows) and z = (dx, 1, du) (p + m rows);
per step Q~ = L~_t + F~_t^T V~_{t+1} F~_t, G_t = [K_t | k_t] = -inv(Q_uu + mu I) [Q_ux | Q_u], and
V~_t = Q_ss + G^T Q_uu G + G^T R + R^T G (R = [Q_ux | Q_u], from the unregularised Q-function, so
it holds for any gains), symmetrised.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

DONE, NOT_POSITIVE_DEFINITE, OUTSIDE_BOUNDS = 0, 1, 2


@njit(cache=True, nogil=True)
def value_step(Q: np.ndarray, G: np.ndarray, V_out: np.ndarray) -> None:
    """V_out (p, p) <- the value V~ of the Q-function Q (p+m, p+m) under gains G (m, p), symmetrised."""
    p = V_out.shape[0]
    m = G.shape[0]
    # W = Q_uu G + R, so that G^T Q_uu G + G^T R = G^T W.
    W = np.empty((m, p))
    for a in range(m):
        for j in range(p):
            acc = Q[p + a, j]
            for b in range(m):
                acc += Q[p + a, p + b] * G[b, j]
            W[a, j] = acc
    for i in range(p):
        for j in range(p):
            acc = Q[i, j]
            for a in range(m):
                acc += G[a, i] * W[a, j] + Q[p + a, i] * G[a, j]
            V_out[i, j] = acc
    for i in range(p):
        for j in range(i + 1, p):
            mean = 0.5 * (V_out[i, j] + V_out[j, i])
            V_out[i, j] = mean
            V_out[j, i] = mean


@njit(cache=True, nogil=True)
def riccati_sweep(F: np.ndarray, L: np.ndarray, V: np.ndarray, Q_all: np.ndarray, G_all: np.ndarray,
                  Q_uu_inv_all: np.ndarray, regularization: float, start: int, du_low: np.ndarray,
                  du_high: np.ndarray, check_bounds: bool) -> tuple[int, int]:
    """Steps start, start-1, ..., 0 of the recursion, in place.

    F: (T, p, p+m) augmented dynamics [[A, c, B], [0, 1, 0]]; L: (T, p+m, p+m) augmented cost
    Hessians; V: (T+1, p, p) with V[start+1] set, V[t] written for each step done; Q_all (T, p+m,
    p+m), G_all (T, m, p) and Q_uu_inv_all (T, m, m) written per step; du_low, du_high: (T, m)
    bounds on the feed-forward, read when check_bounds. Returns (t, status): (-1, DONE) after step
    0; (t, NOT_POSITIVE_DEFINITE) when Q_uu + mu I at step t is not positive definite (nothing of
    step t kept); (t, OUTSIDE_BOUNDS) when the feed-forward of step t leaves its bounds (Q, G and
    Q_uu_inv of step t written, V[t] not).
    """
    p = F.shape[1]
    m = F.shape[2] - p
    n = p - 1
    z = p + m
    FV = np.empty((z, p))
    C = np.empty((m, m))  # the Cholesky factor of Q_uu + mu I, lower
    C_inv = np.empty((m, m))
    for t in range(start, -1, -1):
        Ft, Vn, Q, G, Q_uu_inv = F[t], V[t + 1], Q_all[t], G_all[t], Q_uu_inv_all[t]
        # FV = F^T V (F is sparse: skip its zeros), Q = FV F + L.
        FV[:, :] = 0.0
        for k in range(p):
            for i in range(z):
                f = Ft[k, i]
                if f != 0.0:
                    for j in range(p):
                        FV[i, j] += f * Vn[k, j]
        for i in range(z):
            for j in range(z):
                Q[i, j] = L[t, i, j]
            for k in range(p):
                a = FV[i, k]
                for j in range(z):
                    Q[i, j] += a * Ft[k, j]
        # Cholesky of Q_uu + mu I; not positive definite when a pivot is not positive (or NaN).
        for j in range(m):
            s = Q[p + j, p + j] + regularization
            for k in range(j):
                s -= C[j, k] * C[j, k]
            if not s > 0.0:
                return t, NOT_POSITIVE_DEFINITE
            C[j, j] = math.sqrt(s)
            for i in range(j + 1, m):
                s = Q[p + i, p + j]
                for k in range(j):
                    s -= C[i, k] * C[j, k]
                C[i, j] = s / C[j, j]
            for i in range(j):
                C[i, j] = 0.0
        # inv(C) (lower), then inv(Q_uu + mu I) = inv(C)^T inv(C).
        for j in range(m):
            C_inv[j, j] = 1.0 / C[j, j]
            for i in range(j + 1, m):
                s = 0.0
                for k in range(j, i):
                    s -= C[i, k] * C_inv[k, j]
                C_inv[i, j] = s / C[i, i]
            for i in range(j):
                C_inv[i, j] = 0.0
        for i in range(m):
            for j in range(m):
                s = 0.0
                for k in range(max(i, j), m):
                    s += C_inv[k, i] * C_inv[k, j]
                Q_uu_inv[i, j] = s
        # G = -inv(Q_uu + mu I) R with R = Q[p:, :p].
        for a in range(m):
            for j in range(p):
                s = 0.0
                for b in range(m):
                    s -= Q_uu_inv[a, b] * Q[p + b, j]
                G[a, j] = s
        if check_bounds:
            for a in range(m):
                if G[a, n] < du_low[t, a] or G[a, n] > du_high[t, a]:
                    return t, OUTSIDE_BOUNDS
        value_step(Q, G, V[t])
    return -1, DONE
