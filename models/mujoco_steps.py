"""MuJoCo one control period at a time with no Python per period, and per-step Jacobians over threads.

`SimulatorModel.predict` on one row goes through shape checks, six assignments into MjData and a
concatenation of the result: on the SO-101 arm that was twice the physics step itself. iLQR steps
one row at a time in its rollouts and line search, so `PeriodStepper` sets a period's whole input
(time, qpos, qvel, a zero warm start, ctrl) with one `mj_setState` and reads the result with one
`mj_getState`, in a compiled loop over the periods (models/mujoco_native.py) that also forms the
feedback and clips it. The physics is the same as `SimulatorModel._step`'s, bit for bit: the same
fields are set (the clock, which nothing in the dynamics reads, starts at 1 s so that a reset shows).

`jacobians_per_step` computes the per-physics-step `mjd_transitionFD` along a trajectory, the
rows split into contiguous chunks, one per thread, each chunk one compiled loop that holds no GIL,
so the chunks run on as many cores as are free.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import mujoco
import numpy as np

from forethought.models.mujoco_native import addresses, closed_loop_periods, transition_jacobians

_S = mujoco.mjtState
# What one period takes in, in mj_setState's order: time, qpos, qvel, qacc_warmstart, ctrl.
SET_SPEC = int(_S.mjSTATE_TIME | _S.mjSTATE_QPOS | _S.mjSTATE_QVEL | _S.mjSTATE_WARMSTART | _S.mjSTATE_CTRL)
GET_SPEC = int(_S.mjSTATE_QPOS | _S.mjSTATE_QVEL)
# MuJoCo's warnings for a simulation it found unstable (and reset): bad qpos, qvel, qacc.
UNSTABLE = slice(int(mujoco.mjtWarning.mjWARN_BADQPOS), int(mujoco.mjtWarning.mjWARN_BADQACC) + 1)
CLOCK_START = 1.0
_NO_GAINS = np.empty((0, 0, 0))  # what the compiled loop takes for K and the bounds in open loop
_NO_BOUNDS = np.empty(0)


class PeriodStepper:
    """Steps `data` one control period (`control_steps` physics steps) at a time from (n,) states.

    A period that MuJoCo found unstable (it resets the simulation, and with it the clock) gives NaN.
    """

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, control_steps: int):
        self.model, self.data, self.control_steps = model, data, int(control_steps)
        self.n, self.nv, self.m = model.nq + model.nv, model.nv, model.nu
        self._in = np.zeros(mujoco.mj_stateSize(model, SET_SPEC))
        self._in[0] = CLOCK_START
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
        feedback = K is not None
        if feedback:
            X_ref, K = np.ascontiguousarray(X_ref, dtype=np.float64), np.ascontiguousarray(K, dtype=np.float64)
            low = np.full(self.m, -np.inf) if low is None else np.asarray(low, dtype=np.float64)
            high = np.full(self.m, np.inf) if high is None else np.asarray(high, dtype=np.float64)
        else:
            X_ref, K, low, high = X, _NO_GAINS, _NO_BOUNDS, _NO_BOUNDS
        m, d = addresses(self.model, self.data)
        closed_loop_periods(m, d, self._in, SET_SPEC, GET_SPEC, 1, 1 + self.n + self.nv, self.control_steps,
                            self._end, 1e-9 * self._end, X, U_out, X_ref, K, low, high, feedback)
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
    if model.na:  # mjd_transitionFD's A would then be (2 nv + na) square: more than A_tan's rows hold
        raise ValueError("jacobians_per_step: actuators with activations (na > 0) are not supported")
    A_tan = np.empty((T, 2 * nv, 2 * nv))
    B_tan = np.empty((T, 2 * nv, m))
    set_size = mujoco.mj_stateSize(model, SET_SPEC)
    x = np.ascontiguousarray(x, dtype=np.float64)
    u = np.ascontiguousarray(u, dtype=np.float64)
    x_next = np.empty(x.shape)  # C order: the compiled loop writes each row through its address
    n = x.shape[1]

    def chunk(rows: range) -> None:
        data = data_of_thread()
        m_ptr, d_ptr = addresses(model, data)
        transition_jacobians(m_ptr, d_ptr, np.zeros(set_size), SET_SPEC, GET_SPEC, 1, 1 + n + nv, x, u, rows.start,
                             rows.stop, control_steps, epsilon, centred, data.warning.number, UNSTABLE.start,
                             UNSTABLE.stop, A_tan, B_tan, x_next)

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
