"""A site's forward kinematics in torch, for whole batches of joint angles at once.

ArmKinematics asks MuJoCo for one configuration at a time, which is what iLQR and inverse
kinematics need. Sampling planners rank tens of thousands of predicted states per action, and
there that Python loop becomes most of the planning time. `BatchedSiteKinematics` composes the
same chain of rigid transforms that mj_kinematics does (each body's offset from its parent, then
its hinge rotations and slide translations about the joints' anchors), read from the same MjModel,
on tensors of any batch shape.
"""

from __future__ import annotations

import mujoco
import numpy as np
import torch

from forethought.sim.kinematics import ArmKinematics

_HINGE, _SLIDE = int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)


def _rotation(quat: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix of a MuJoCo quaternion (w, x, y, z)."""
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, quat / np.linalg.norm(quat))
    return mat.reshape(3, 3)


def _axis_angle(skew: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotations (..., 3, 3) by angle (...) rad about the unit axis whose cross-product matrix is skew (3, 3)."""
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=skew.dtype, device=skew.device)
    return eye + s * skew + (1.0 - c) * (skew @ skew)


class BatchedSiteKinematics:
    """p(q): joint angles (..., k) -> the site's world position (..., 3) m, float32 torch; the same
    map as ArmKinematics.site_positions (its joints as inputs, the chain's other joints at the
    reference pose)."""

    def __init__(self, kinematics: ArmKinematics, device: str | torch.device = "cpu"):
        model = kinematics.model
        self.k = kinematics.k
        self.device = torch.device(device)
        body = int(model.site_bodyid[kinematics.site_id])
        chain = []
        while body > 0:
            chain.append(body)
            body = int(model.body_parentid[body])
        inputs = {int(j): i for i, j in enumerate(kinematics.joint_ids)}
        # Per body on the chain, root first: its offset from the parent, and its joints as
        # (hinge?, axis or its cross-product matrix, anchor, input index or None, fixed offset).
        self._bodies = []
        for b in reversed(chain):
            joints = []
            for j in range(model.body_jntadr[b], model.body_jntadr[b] + model.body_jntnum[b]):
                kind = int(model.jnt_type[j])
                if kind not in (_HINGE, _SLIDE):
                    raise ValueError(f"joint {mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)!r} on the "
                                     f"chain to site '{kinematics.site}' is neither a hinge nor a slide")
                adr = int(model.jnt_qposadr[j])
                # MuJoCo turns a joint by its angle from qpos0 (the joint's `ref`).
                zero = float(model.qpos0[adr])
                fixed = float(kinematics.reference_qpos[adr]) - zero
                axis = self._tensor(model.jnt_axis[j] / np.linalg.norm(model.jnt_axis[j]))
                if kind == _HINGE:
                    x, y, z = axis.tolist()
                    axis = self._tensor(np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]]))
                joints.append((kind == _HINGE, axis, self._tensor(model.jnt_pos[j]), inputs.get(j), zero, fixed))
            self._bodies.append((self._tensor(model.body_pos[b]), self._tensor(_rotation(model.body_quat[b])), joints))
        self._site = self._tensor(model.site_pos[kinematics.site_id])

    def _tensor(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if q.shape[-1] != self.k:
            raise ValueError(f"joint angles must end in k = {self.k}, got shape {tuple(q.shape)}")
        q = q.to(self.device, torch.float32)
        batch = q.shape[:-1]
        R = torch.eye(3, device=self.device).expand(*batch, 3, 3)
        p = torch.zeros(*batch, 3, device=self.device)
        for offset, rotation, joints in self._bodies:
            p = p + R @ offset
            R = R @ rotation
            for hinge, axis, anchor, index, zero, fixed in joints:
                angle = q[..., index] - zero if index is not None else torch.full(batch, fixed, device=self.device)
                if hinge:  # turn about the anchor, which stays put
                    at = p + R @ anchor
                    R = R @ _axis_angle(axis, angle)
                    p = at - R @ anchor
                else:
                    p = p + (R @ axis) * angle[..., None]
        return p + R @ self._site
