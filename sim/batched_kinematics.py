"""A site's forward kinematics and Jacobian in torch, for whole batches of joint angles at once.

ArmKinematics asks MuJoCo for one configuration at a time, which is what inverse kinematics needs.
Costs evaluate thousands of states per call (the sampling planners) or a trajectory of them at a
time (iLQR), and there that Python loop becomes most of the time. `BatchedSiteKinematics` composes
the same chain of rigid transforms that mj_kinematics does (each body's offset from its parent, then
its joints about their anchors), read from the same MjModel, on tensors of any batch shape and of
any floating dtype.

Only the input joints (ArmKinematics' hinges and slides) vary; everything between two of them is
one constant transform, folded once here in float64. A joint on the chain that is not an input
(another hinge or slide, and every ball or free joint, which ArmKinematics cannot take as an input)
is held at the scene's reference pose (the "home" keyframe, else qpos0), exactly as ArmKinematics
holds it: a ball joint as the fixed rotation of its reference quaternion about its anchor, a free
joint (MuJoCo allows one only on a top-level body) as its body's fixed world pose. This is the one
place where such chains are handled; no cost falls back to MuJoCo row by row.
"""

from __future__ import annotations

import mujoco
import numpy as np
import torch

from forethought.sim.kinematics import ArmKinematics

_HINGE, _SLIDE = int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)
_BALL, _FREE = int(mujoco.mjtJoint.mjJNT_BALL), int(mujoco.mjtJoint.mjJNT_FREE)


def _rotation(quat: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix of a MuJoCo quaternion (w, x, y, z)."""
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat))
    return mat.reshape(3, 3)


def _skew(axis: np.ndarray) -> np.ndarray:
    """(3, 3) cross-product matrix of a unit axis (3,)."""
    x, y, z = axis
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation by angle rad about the unit axis (3,), float64."""
    K = _skew(axis)
    return np.eye(3) + np.sin(angle) * K + (1.0 - np.cos(angle)) * (K @ K)


class _Frame:
    """A rigid transform (R (3, 3), p (3,)) in float64: x -> R x + p."""

    def __init__(self, R=None, p=None):
        self.R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64)
        self.p = np.zeros(3) if p is None else np.asarray(p, dtype=np.float64)

    def then(self, R=None, p=None) -> "_Frame":
        """This transform composed with x -> R x + p (applied first, in the local frame)."""
        R = np.eye(3) if R is None else R
        p = np.zeros(3) if p is None else p
        return _Frame(self.R @ R, self.p + self.R @ p)


class BatchedSiteKinematics:
    """p(q): joint angles (..., k) -> the site's world position (..., 3) m, in q's floating dtype;
    the same map as ArmKinematics.site_positions (its joints as inputs, the chain's other joints at
    the reference pose). `position_and_jacobian(q)` gives that position and dp/dq (..., 3, k) m/rad
    (m/m for a slide).

    device: where the computation runs (q is moved there); None: q's own device.
    """

    def __init__(self, kinematics: ArmKinematics, device: str | torch.device | None = None):
        model = kinematics.model
        self.k = kinematics.k
        self.device = None if device is None else torch.device(device)
        reference = kinematics.reference_qpos
        body = int(model.site_bodyid[kinematics.site_id])
        chain = []
        while body > 0:
            chain.append(body)
            body = int(model.body_parentid[body])
        inputs = {int(j): i for i, j in enumerate(kinematics.joint_ids)}
        # Walk the chain root first, folding every constant transform into `frame`; each input
        # joint closes a segment: (the constant before it, hinge?, unit axis, input index, qpos0).
        segments: list[tuple[_Frame, bool, np.ndarray, int, float]] = []
        frame = _Frame()
        for b in reversed(chain):
            frame = frame.then(_rotation(model.body_quat[b]), model.body_pos[b])
            for j in range(model.body_jntadr[b], model.body_jntadr[b] + model.body_jntnum[b]):
                kind, adr = int(model.jnt_type[j]), int(model.jnt_qposadr[j])
                anchor = np.asarray(model.jnt_pos[j], dtype=np.float64)
                if kind == _FREE:  # qpos is the body's world pose (position, quaternion)
                    frame = _Frame(_rotation(reference[adr + 3 : adr + 7]), reference[adr : adr + 3])
                    continue
                if kind == _BALL:  # qpos is the rotation itself (not relative to qpos0), about the anchor
                    frame = frame.then(None, anchor).then(_rotation(reference[adr : adr + 4])).then(None, -anchor)
                    continue
                axis = np.asarray(model.jnt_axis[j], dtype=np.float64)
                axis = axis / np.linalg.norm(axis)
                zero = float(model.qpos0[adr])  # MuJoCo turns or slides a joint by qpos - qpos0
                if j not in inputs:
                    angle = float(reference[adr]) - zero
                    if kind == _HINGE:
                        frame = frame.then(None, anchor).then(_axis_angle(axis, angle)).then(None, -anchor)
                    else:
                        frame = frame.then(None, axis * angle)
                    continue
                if kind == _HINGE:  # the segment ends at the anchor; the rotation turns about it
                    segments.append((frame.then(None, anchor), True, axis, inputs[j], zero))
                    frame = _Frame(None, -anchor)
                else:
                    segments.append((frame, False, axis, inputs[j], zero))
                    frame = _Frame()
        frame = frame.then(None, model.site_pos[kinematics.site_id])
        self._segments = segments
        self._site = frame
        self._cast: dict = {}

    def _constants(self, dtype: torch.dtype, device: torch.device):
        """The folded chain as tensors of this dtype on this device, made once each.

        Segment j maps x -> R_j Rot_j(x) + t_j, with (R_j, t_j) constant and Rot_j the joint's
        motion (a slide: x + d k_j). A hinge's R_j Rot_j(a) = A_j + cos a B_j + sin a C_j by
        Rodrigues' formula, with A_j = R_j k k^T, B_j = R_j (I - k k^T), C_j = R_j [k]x; a slide's
        R_j is A_j (B_j = C_j = 0).
        """
        key = (dtype, device)
        if key not in self._cast:
            A, B, C = [], [], []
            for f, hinge, axis, _, _ in self._segments:
                P = np.outer(axis, axis) if hinge else np.eye(3)
                A.append(f.R @ P)
                B.append(f.R @ (np.eye(3) - P))
                C.append(f.R @ _skew(axis) if hinge else np.zeros((3, 3)))

            def tensor(a, shape):
                return torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(shape), device=device).to(dtype)

            ABC = tensor([A, B, C], (3, -1, 3, 3))
            self._cast[key] = {
                "ABC": ABC,  # (3, J, 3, 3)
                "rows": ABC.permute(1, 3, 0, 2).reshape(-1, 3, 9),  # v -> [A v, B v, C v] (J, 3, 9)
                "t": tensor([f.p for f, *_ in self._segments], (-1, 3)),
                "axes": tensor([axis for _, _, axis, _, _ in self._segments], (-1, 3)),
                "hinge": [hinge for _, hinge, _, _, _ in self._segments],
                "order": torch.as_tensor([index for *_, index, _ in self._segments], dtype=torch.long, device=device),
                "zero": tensor([zero for *_, zero in self._segments], (-1,)),
                "site": tensor(self._site.p, (3,)),
            }
        return self._cast[key]

    def _input(self, q: torch.Tensor):
        """q on the device, floating; the constants; each segment's angle (or slide) from qpos0 (..., J)."""
        if q.shape[-1] != self.k:
            raise ValueError(f"joint angles must end in k = {self.k}, got shape {tuple(q.shape)}")
        if self.device is not None:
            q = q.to(self.device)
        if not q.is_floating_point():
            q = q.to(torch.get_default_dtype())
        chain = self._constants(q.dtype, q.device)
        return q, chain, q[..., chain["order"]] - chain["zero"]

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        """q (..., k) -> the site's world position (..., 3) m.

        From the site back to the world (v <- R_j Rot_j v + t_j): matrix-vector products only,
        which on a planner's batch is about four times faster than composing the frames forwards."""
        q, chain, angle = self._input(q)
        c, s = torch.cos(angle), torch.sin(angle)
        v = chain["site"].expand(*q.shape[:-1], 3)
        for j in reversed(range(len(chain["hinge"]))):
            W = v @ chain["rows"][j]  # (..., 9): A_j v, B_j v, C_j v
            if chain["hinge"][j]:
                v = W[..., 0:3] + c[..., j, None] * W[..., 3:6] + s[..., j, None] * W[..., 6:9] + chain["t"][j]
            else:
                v = W[..., 0:3] + (chain["ABC"][0, j] @ chain["axes"][j]) * angle[..., j, None] + chain["t"][j]
        return v

    def position_and_jacobian(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (..., k) -> position (..., 3) m (as `self(q)`) and Jacobian dp/dq (..., 3, k).

        Column j is k_j x (p - o_j) for a hinge and k_j for a slide, with k_j and o_j the joint's
        world axis and anchor, found by composing the frames from the world forwards."""
        site = self(q)
        q, chain, angle = self._input(q)
        batch = q.shape[:-1]
        c, s = torch.cos(angle)[..., None, None], torch.sin(angle)[..., None, None]
        A, B, C = chain["ABC"]
        G = A + c * B + s * C  # (..., J, 3, 3): every segment's R_j Rot_j at once
        R = p = None  # the world frame so far
        world_axes, origins = [], []
        for j, hinge in enumerate(chain["hinge"]):
            if R is None:
                p, R = chain["t"][j].expand(*batch, 3), G[..., j, :, :]
            else:
                p = p + R @ chain["t"][j]
                R = R @ G[..., j, :, :]
            world_axes.append(R @ chain["axes"][j])  # a hinge's rotation leaves its own axis in place
            origins.append(p)
            if not hinge:
                p = p + world_axes[-1] * angle[..., j, None]
        J = torch.zeros(*batch, 3, self.k, dtype=q.dtype, device=q.device)
        if world_axes:
            world_axes, origins = torch.stack(world_axes, dim=-2), torch.stack(origins, dim=-2)
            hinge = torch.as_tensor(chain["hinge"], device=q.device)[:, None]
            columns = torch.where(hinge, torch.linalg.cross(world_axes, site[..., None, :] - origins, dim=-1), world_axes)
            J[..., chain["order"]] = columns.transpose(-1, -2)
        return site, J
