"""MuJoCo's C functions called from compiled loops: control periods and per-step Jacobians without Python between the calls.

iLQR steps the arm one control period at a time in its rollouts and line search, and takes one
mjd_transitionFD per state for its derivatives. Each of these is a few microseconds of physics,
and the Python around each call (binding the arguments, the feedback u = U + K (x - X_ref), the
clip) cost about as much again. Here the loops are compiled with numba and call MuJoCo's C API
directly (the shared library that the `mujoco` package ships and its bindings call): the same
functions on the same mjModel and mjData (`_address`, the bindings' raw pointers), so the physics
is the same bit for bit, and the loops hold no GIL, so the derivative chunks of `jacobians_per_step`
run on several cores at once.

The C signatures are those of MuJoCo 3's `mujoco.h` (pointers passed as integers):
mj_step(m, d); mj_setState(m, d, state, spec); mj_getState(m, d, state, spec);
mjd_transitionFD(m, d, eps, centred, A, B, C, D).
"""

from __future__ import annotations

import glob
import os

import mujoco
import numpy as np
from llvmlite import binding
from numba import njit, types


def _library_path() -> str:
    """The MuJoCo shared library inside the `mujoco` package (libmujoco.so.X / libmujoco.X.dylib / mujoco.dll)."""
    folder = os.path.dirname(mujoco.__file__)
    found = sorted(glob.glob(os.path.join(folder, "libmujoco*")) + glob.glob(os.path.join(folder, "mujoco.dll")))
    if not found:
        raise ImportError(f"no MuJoCo shared library in {folder}: the mujoco package is incomplete")
    return found[0]


# The symbols resolve by name when the compiled loops are linked (and when they load from numba's
# disk cache), so the library is made visible to the JIT's linker first.
binding.load_library_permanently(_library_path())
_pointer = types.intp
mj_step = types.ExternalFunction("mj_step", types.void(_pointer, _pointer))
mj_setState = types.ExternalFunction("mj_setState", types.void(_pointer, _pointer, _pointer, types.int32))
mj_getState = types.ExternalFunction("mj_getState", types.void(_pointer, _pointer, _pointer, types.int32))
mjd_transitionFD = types.ExternalFunction(
    "mjd_transitionFD", types.void(_pointer, _pointer, types.float64, types.uint8, _pointer, _pointer, _pointer, _pointer)
)

_S = mujoco.mjtState
TIME_SPEC = int(_S.mjSTATE_TIME)


def addresses(model: mujoco.MjModel, data: mujoco.MjData) -> tuple[int, int]:
    """The raw mjModel* and mjData* of the bindings' objects (valid while they live)."""
    return model._address, data._address


@njit(nogil=True, cache=True)
def _set_input(state_in: np.ndarray, x_at: int, x: np.ndarray, u_at: int, u: np.ndarray) -> None:
    """Writes a state x (n,) at x_at and an action u (m,) at u_at of mj_setState's vector."""
    for j in range(x.shape[0]):
        state_in[x_at + j] = x[j]
    for a in range(u.shape[0]):
        state_in[u_at + a] = u[a]


@njit(nogil=True, cache=True)
def closed_loop_periods(m: int, d: int, state_in: np.ndarray, set_spec: int, get_spec: int, x_at: int, u_at: int,
                        steps: int, end: float, tolerance: float, X: np.ndarray, U_out: np.ndarray,
                        X_ref: np.ndarray, K: np.ndarray, low: np.ndarray, high: np.ndarray, feedback: bool) -> None:
    """Rolls X (T+1, n) on from X[0] (the rest of X NaN on entry) under U_out (T, m), in place.

    Per period t: u_t = clip(U_out[t] + K[t] (X[t] - X_ref[t]), low, high) when feedback (written
    back into U_out), else U_out[t]; state_in (mj_setState's vector for set_spec, the clock at
    CLOCK_START) gets x at x_at and u at u_at; `steps` mj_steps; qpos and qvel back into X[t + 1]
    (get_spec). A period whose clock does not end at `end` (MuJoCo reset an unstable simulation)
    leaves X[t + 1:] NaN.
    """
    T, n = U_out.shape[0], X.shape[1]
    m_u = U_out.shape[1]
    state_ptr = state_in.ctypes.data
    clock = np.empty(1)
    x_next = np.empty(n)
    for t in range(T):
        u = U_out[t]
        if feedback:
            for a in range(m_u):
                du = 0.0
                for j in range(n):
                    du += K[t, a, j] * (X[t, j] - X_ref[t, j])
                v = u[a] + du
                if v < low[a]:  # comparisons, not min/max: a NaN stays NaN, as with np.maximum
                    v = low[a]
                elif v > high[a]:
                    v = high[a]
                u[a] = v
        _set_input(state_in, x_at, X[t], u_at, u)
        mj_setState(m, d, state_ptr, set_spec)
        for _ in range(steps):
            mj_step(m, d)
        mj_getState(m, d, clock.ctypes.data, TIME_SPEC)
        if abs(clock[0] - end) > tolerance:
            return
        mj_getState(m, d, x_next.ctypes.data, get_spec)
        for j in range(n):
            X[t + 1, j] = x_next[j]


@njit(nogil=True, cache=True)
def transition_jacobians(m: int, d: int, state_in: np.ndarray, set_spec: int, get_spec: int, x_at: int, u_at: int,
                         x: np.ndarray, u: np.ndarray, first: int, stop: int, steps: int, epsilon: float,
                         centred: bool, warnings: np.ndarray, unstable_from: int, unstable_to: int,
                         A_tan: np.ndarray, B_tan: np.ndarray, x_next: np.ndarray) -> None:
    """Rows first..stop-1: A_tan[t], B_tan[t] of one control period (`steps` physics steps) about
    x[t] (n,), u[t] (m,), composed from one mjd_transitionFD per physics step (A = A_k ... A_1,
    B = sum_s A_k ... A_{s+1} B_s), and x_next[t] (NaN where MuJoCo warned of instability:
    warnings[unstable_from:unstable_to], a view of mjData's warning counters, reset per row)."""
    m_u = u.shape[1]
    nx = A_tan.shape[1]
    state_ptr = state_in.ctypes.data
    A_s = np.empty((nx, nx))
    B_s = np.empty((nx, m_u))
    A_acc = np.empty((nx, nx))
    B_acc = np.empty((nx, m_u))
    flag = np.uint8(1 if centred else 0)
    for t in range(first, stop):
        _set_input(state_in, x_at, x[t], u_at, u[t])
        mj_setState(m, d, state_ptr, set_spec)
        warnings[:] = 0
        if steps == 1:
            mjd_transitionFD(m, d, epsilon, flag, A_tan[t].ctypes.data, B_tan[t].ctypes.data, 0, 0)
            mj_step(m, d)
        else:
            A_acc[:, :] = np.eye(nx)
            B_acc[:, :] = 0.0
            for _ in range(steps):
                mjd_transitionFD(m, d, epsilon, flag, A_s.ctypes.data, B_s.ctypes.data, 0, 0)
                A_acc[:, :] = A_s @ A_acc
                B_acc[:, :] = A_s @ B_acc + B_s
                mj_step(m, d)
            A_tan[t] = A_acc
            B_tan[t] = B_acc
        mj_getState(m, d, x_next[t].ctypes.data, get_spec)
        for w in range(unstable_from, unstable_to):
            if warnings[w] != 0:
                x_next[t, :] = np.nan
                break
