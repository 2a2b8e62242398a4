"""MuJoCo one control period at a time with little Python per period, and per-step Jacobians over threads.

`SimulatorModel.predict` on one row goes through shape checks, six assignments into MjData and a
concatenation of the result: on the SO-101 arm that was twice the physics step itself. iLQR steps
one row at a time in its rollouts and line search, so `PeriodStepper` sets a period's whole input
(time, qpos, qvel, a zero warm start, ctrl) with one `mj_setState` and reads the result with one
`mj_getState`. The physics is the same as `SimulatorModel._step`'s, bit for bit: the same fields
are set (the clock, which nothing in the dynamics reads, starts at 1 s so that a reset shows).

`jacobians_per_step` computes the per-physics-step `mjd_transitionFD` along a trajectory, the
rows split into contiguous chunks, one per thread. MuJoCo's bindings release the GIL inside
mjd_transitionFD and mj_step, so the chunks overlap when cores are free; the Python between the
calls (a few microseconds a row) is serialised.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import mujoco
import numpy as np

_S = mujoco.mjtState
# What one period takes in, in mj_setState's order: time, qpos, qvel, qacc_warmstart, ctrl.
SET_SPEC = int(_S.mjSTATE_TIME | _S.mjSTATE_QPOS | _S.mjSTATE_QVEL | _S.mjSTATE_WARMSTART | _S.mjSTATE_CTRL)
GET_SPEC = int(_S.mjSTATE_QPOS | _S.mjSTATE_QVEL)
# MuJoCo's warnings for a simulation it found unstable (and reset): bad qpos, qvel, qacc.
UNSTABLE = slice(int(mujoco.mjtWarning.mjWARN_BADQPOS), int(mujoco.mjtWarning.mjWARN_BADQACC) + 1)
CLOCK_START = 1.0


class PeriodStepper:
    """Steps `data` one control period (`control_steps` physics steps) at a time from (n,) states.

    A period that MuJoCo found unstable (it resets the simulation, and with it the clock) gives NaN.
    """

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, control_steps: int):
        self.model, self.data, self.control_steps = model, data, int(control_steps)
        self.n, self.nv, self.m = model.nq + model.nv, model.nv, model.nu
        self._in = np.zeros(mujoco.mj_stateSize(model, SET_SPEC))
        self._in[0] = CLOCK_START
        self._x = self._in[1 : 1 + self.n]  # views into the input vector: written in place
        self._u = self._in[1 + self.n + self.nv :]
        self._end = CLOCK_START + self.control_steps * model.opt.timestep

    def closed_loop(self, x0: np.ndarray, U: np.ndarray, X_ref: np.ndarray | None = None, K: np.ndarray | None = None,
                    low: np.ndarray | None = None, high: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """States X (T+1, n) from x0 (n,) under u_t = clip(U_t + K_t (x_t - X_ref_t), low, high), and those
        actions (T, m); U alone (open loop) when K is None. Rows after the first unstable period are NaN
        (its action is kept, the later ones are U's)."""
        T = len(U)
        X = np.full((T + 1, self.n), np.nan)
        U_out = np.array(U, dtype=np.float64)
        X[0] = x0
        x, u_in = self._x, self._u
        x[:] = x0
        # The period's calls inlined and bound to locals, the clip as two ufuncs in place (np.clip's
        # result without its wrapper): this loop runs once per step of every rollout and line-search
        # candidate, where each Python-level call costs a tenth of the physics step.
        model, data, spec_in, spec_out, state_in = self.model, self.data, SET_SPEC, GET_SPEC, self._in
        set_state, get_state, step, steps = mujoco.mj_setState, mujoco.mj_getState, mujoco.mj_step, self.control_steps
        end, tolerance = self._end, 1e-9 * self._end
        feedback = K is not None
        if feedback:
            dx = np.empty(self.n)
            du = np.empty(self.m)
            subtract, matmul, maximum, minimum = np.subtract, np.matmul, np.maximum, np.minimum
        for t in range(T):
            u = U_out[t]
            if feedback:
                subtract(x, X_ref[t], out=dx)
                matmul(K[t], dx, out=du)
                u += du
                maximum(u, low, out=u)
                minimum(u, high, out=u)
            u_in[:] = u
            set_state(model, data, state_in, spec_in)
            for _ in range(steps):
                step(model, data)
            get_state(model, data, x, spec_out)
            if abs(data.time - end) > tolerance:
                break
            X[t + 1] = x
        return X, U_out


def jacobians_per_step(
    model: mujoco.MjModel,
    data_of_thread: Callable[[], mujoco.MjData],
    pool: ThreadPoolExecutor | None,
    threads: int,
    x: np.ndarray,
    u: np.ndarray,
    control_steps: int,
    epsilon: float,
    centred: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tangent-space A (T, 2nv, 2nv), B (T, 2nv, m) about each row of x (T, n), u (T, m), composed from
    one mjd_transitionFD per physics step (A = A_k ... A_1, B = sum_s A_k ... A_{s+1} B_s), and the next
    states (T, n) (NaN where MuJoCo found a step unstable). The rows are split over `threads` threads:
    the calling one and pool's; data_of_thread() gives the MjData of the thread that calls it."""
    T, nv, m = len(x), model.nv, model.nu
    A_tan = np.empty((T, 2 * nv, 2 * nv))
    B_tan = np.empty((T, 2 * nv, m))
    x_next = np.empty_like(x)
    set_size = mujoco.mj_stateSize(model, SET_SPEC)

    def chunk(rows: range) -> None:
        data = data_of_thread()
        state = np.zeros(set_size)
        warnings = data.warning.number  # a view into data's counters, taken once (a fresh one costs a microsecond)
        n = len(x[0])
        x_in, u_in = state[1 : 1 + n], state[1 + n + nv :]
        A_s = np.empty((2 * nv, 2 * nv))
        B_s = np.empty((2 * nv, m))
        for t in rows:
            x_in[:] = x[t]
            u_in[:] = u[t]
            mujoco.mj_setState(model, data, state, SET_SPEC)
            warnings[:] = 0
            if control_steps == 1:
                mujoco.mjd_transitionFD(model, data, epsilon, centred, A_tan[t], B_tan[t], None, None)
                mujoco.mj_step(model, data)
            else:
                A_acc, B_acc = np.eye(2 * nv), np.zeros((2 * nv, m))
                for _ in range(control_steps):
                    mujoco.mjd_transitionFD(model, data, epsilon, centred, A_s, B_s, None, None)
                    A_acc = A_s @ A_acc
                    B_acc = A_s @ B_acc + B_s
                    mujoco.mj_step(model, data)
                A_tan[t], B_tan[t] = A_acc, B_acc
            mujoco.mj_getState(model, data, x_next[t], GET_SPEC)
            if warnings[UNSTABLE].any():
                x_next[t] = np.nan

    threads = max(1, min(threads, T))
    if pool is None or threads == 1:
        chunk(range(T))
    else:
        bounds = np.linspace(0, T, threads + 1).round().astype(int)
        futures = [pool.submit(chunk, range(bounds[i], bounds[i + 1])) for i in range(1, threads)]
        chunk(range(bounds[0], bounds[1]))
        for future in futures:
            future.result()
    return A_tan, B_tan, x_next


class ThreadPools:
    """One lazily started pool of `threads - 1` workers per owner (the caller is the other thread)."""

    def __init__(self, threads: int):
        self.threads = int(threads)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def get(self) -> ThreadPoolExecutor | None:
        if self.threads <= 1:
            return None
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="mujoco-fd")
            return self._pool
