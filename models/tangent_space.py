"""MuJoCo's tangent space and the qpos coordinates of a state: Jacobians from one to the other.

MuJoCo's derivatives (mjd_transitionFD, mj_differentiatePos) are in the tangent space of the
state, 2 nv wide; a model's state is qpos then qvel, nq + nv wide. They differ at quaternions (free
and ball joints): four coordinates in qpos, three in the tangent. A quaternion q moves as
q exp(w/2) for a local rotation w, so dq = L(q)[:, 1:] w / 2 and w = 2 L(q)^T[1:] dq (the component
of dq along q, a change of norm, is no motion).

`quat_joints`: (qpos address, dof address) of every quaternion of the model, from `quaternion_joints`.
"""

from __future__ import annotations

from typing import Callable

import mujoco
import numpy as np


def quaternion_joints(model: mujoco.MjModel) -> list[tuple[int, int]]:
    """(qpos address, dof address) of every quaternion: a free joint's follows its position."""
    free, ball = int(mujoco.mjtJoint.mjJNT_FREE), int(mujoco.mjtJoint.mjJNT_BALL)
    return [
        (int(model.jnt_qposadr[j]) + 3 * (kind == free), int(model.jnt_dofadr[j]) + 3 * (kind == free))
        for j, kind in enumerate(int(k) for k in model.jnt_type)
        if kind in (free, ball)
    ]


def quat_left(q: np.ndarray) -> np.ndarray:
    """(B, 4, 4) matrices L(q) with q * p = L(q) p for quaternions q (B, 4) as (w, x, y, z)."""
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack(
        [
            np.stack([w, -x, -y, -z], axis=1),
            np.stack([x, w, -z, y], axis=1),
            np.stack([y, z, w, -x], axis=1),
            np.stack([z, -y, x, w], axis=1),
        ],
        axis=1,
    )


def tangent_maps(x: np.ndarray, nq: int, nv: int, quat_joints) -> tuple[np.ndarray, np.ndarray]:
    """E_in (T, 2nv, n): d(tangent)/d(state) and E_out (T, n, 2nv): d(state)/d(tangent) at states x (T, n)."""
    T, n = len(x), nq + nv
    E_in = np.zeros((T, 2 * nv, n))
    E_out = np.zeros((T, n, 2 * nv))
    E_in[:, nv:, nq:] = np.eye(nv)
    E_out[:, nq:, nv:] = np.eye(nv)
    quat_q = {q for qa, _ in quat_joints for q in range(qa, qa + 4)}
    quat_v = {v for _, va in quat_joints for v in range(va, va + 3)}
    plain_q = [i for i in range(nq) if i not in quat_q]
    plain_v = [i for i in range(nv) if i not in quat_v]
    E_in[:, plain_v, plain_q] = 1.0
    E_out[:, plain_q, plain_v] = 1.0
    for qa, va in quat_joints:
        L = quat_left(x[:, qa : qa + 4])
        E_out[:, qa : qa + 4, va : va + 3] = 0.5 * L[:, :, 1:]
        E_in[:, va : va + 3, qa : qa + 4] = 2.0 * np.swapaxes(L, 1, 2)[:, 1:, :]
    return E_in, E_out


def to_qpos_coordinates(A_tan: np.ndarray, B_tan: np.ndarray, x: np.ndarray, x_next: np.ndarray, nq: int,
                        nv: int, quat_joints) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-space A (T, 2nv, 2nv), B (T, 2nv, m) about states x (T, n) with next states x_next
    -> A (T, n, n), B (T, n, m) in qpos coordinates."""
    E_in, _ = tangent_maps(x, nq, nv, quat_joints)
    _, E_out = tangent_maps(x_next, nq, nv, quat_joints)
    return E_out @ A_tan @ E_in, E_out @ B_tan


def jacobians_over_period(
    model: mujoco.MjModel,
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    u: np.ndarray,
    epsilon: float,
    centred: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tangent-space A (T, 2nv, 2nv), B (T, 2nv, m) by differences over the whole control period,
    every perturbation in one batch through predict(x (B, n), u (B, m)) -> x' (B, n); and x' (T, n).

    For integrators mjd_transitionFD does not support (RK4). Positions are perturbed with
    mj_integratePos and compared with mj_differentiatePos, so quaternions stay on their manifold.
    """
    nq, nv, m, T, eps = model.nq, model.nv, u.shape[1], len(x), epsilon
    n = nq + nv
    k = 2 * nv + m
    signs = (1.0, -1.0) if centred else (1.0,)
    S = len(signs)
    rows_x = np.repeat(x[:, None, None, :], S, axis=1).repeat(k, axis=2)  # (T, S, k, n)
    rows_u = np.repeat(u[:, None, None, :], S, axis=1).repeat(k, axis=2)
    for side, sign in enumerate(signs):
        for j in range(nv):
            for t in range(T):
                mujoco.mj_integratePos(model, rows_x[t, side, j, :nq], np.eye(nv)[j], sign * eps)
            rows_x[:, side, nv + j, nq + j] += sign * eps
        for j in range(m):
            rows_u[:, side, 2 * nv + j, j] += sign * eps
    x_next = predict(x, u)
    out = predict(rows_x.reshape(-1, n), rows_u.reshape(-1, m)).reshape(T, S, k, n)
    if not centred:  # compare with the unperturbed next state
        out = np.concatenate([out, np.broadcast_to(x_next[:, None, None, :], (T, 1, k, n))], axis=1)
    # d(tangent of the next state) / d(perturbation), one column per perturbation.
    D = np.empty((T, 2 * nv, k))
    velocity = np.empty(nv)
    for t in range(T):
        for j in range(k):
            mujoco.mj_differentiatePos(model, velocity, 1.0, out[t, 1, j, :nq], out[t, 0, j, :nq])
            D[t, :nv, j] = velocity
        D[t, nv:] = (out[t, 0, :, nq:] - out[t, 1, :, nq:]).T
    D /= eps * (2.0 if centred else 1.0)
    return D[:, :, : 2 * nv], D[:, :, 2 * nv :], x_next
