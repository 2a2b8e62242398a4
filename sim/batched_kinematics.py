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

    def _constants(self, dtype: torch.dtype, device: torch.device) -> dict:
        """The folded chain as tensors of this dtype on this device, made once each.

        Segment j maps x -> R_j Rot_j(x) + t_j, with (R_j, t_j) constant and Rot_j the joint's
        motion by a (rad, or m for a slide: x + a k_j). A hinge's R_j Rot_j = G_j = A_j + cos a B_j
        + sin a C_j with A_j = R_j k k^T, B_j = R_j (I - k k^T), C_j = R_j [k]x (Rodrigues'
        formula); a slide's G_j is R_j (A_j = R_j, B_j = C_j = 0) and its motion adds a R_j k_j.
        Per-segment tensors are kept in lists, so that a pass costs no indexing.
        """
        key = (dtype, device)
        if key not in self._cast:
            def tensor(a, kind=dtype):  # an ordinary tensor even in inference mode, usable by autograd later
                with torch.inference_mode(False):
                    return torch.tensor(np.asarray(a, dtype=np.float64), device=device).to(kind)

            A, BC = [], []  # per segment: A_j (3, 3) as (1, 9); (B_j, C_j) as (2, 9)
            for f, hinge, axis, _, _ in self._segments:
                P = np.outer(axis, axis)
                if hinge:
                    A.append((f.R @ P).reshape(1, 9))
                    BC.append(np.stack([f.R @ (np.eye(3) - P), f.R @ _skew(axis)]).reshape(2, 9))
                else:
                    A.append(f.R.reshape(1, 9))
                    BC.append(np.zeros((2, 9)))
            order = [index for *_, index, _ in self._segments]
            hinges = [hinge for _, hinge, *_ in self._segments]
            self._cast[key] = {
                "A": tensor(np.reshape(A, (-1, 1, 9))),  # (J, 1, 9)
                "BC": tensor(np.reshape(BC, (-1, 2, 9))),  # (J, 2, 9)
                "t": [tensor(f.p).view(3, 1) for f, *_ in self._segments],
                "t_stack": tensor([f.p for f, *_ in self._segments]).view(-1, 3, 1),
                "axis_stack": tensor([axis for _, _, axis, _, _ in self._segments]).view(-1, 3, 1),
                "slides": tensor([0.0 if hinge else 1.0 for _, hinge, *_ in self._segments]),
                "slide_axes": [tensor(f.R @ axis) for f, _, axis, _, _ in self._segments],  # R_j k_j
                "hinges": hinges,
                "order": None if order == list(range(self.k)) else tensor(order, torch.long),
                "zero": None if not any(zero for *_, zero in self._segments) else tensor([zero for *_, zero in self._segments]),
                "site": tensor(self._site.p).view(1, 3, 1),
            }
        return self._cast[key]

    def _segment_maps(self, q: torch.Tensor):
        """q (..., k) as rows (N, k), floating, on the device; the constants; each segment's angle
        (N, J) from qpos0 and its G_j (N, 3, 3), all at once."""
        if q.shape[-1] != self.k:
            raise ValueError(f"joint angles must end in k = {self.k}, got shape {tuple(q.shape)}")
        if self.device is not None:
            q = q.to(self.device)
        if not q.is_floating_point():
            q = q.to(torch.get_default_dtype())
        chain = self._constants(q.dtype, q.device)
        if q.dim() != 2:
            q = q.reshape(-1, self.k)
        angle = q if chain["order"] is None else q[:, chain["order"]]
        if chain["zero"] is not None:
            angle = angle - chain["zero"]
        turn = angle.t()  # (J, N)
        cs = torch.stack([torch.cos(turn), torch.sin(turn)], dim=-1)  # (J, N, 2)
        G = torch.baddbmm(chain["A"], cs, chain["BC"]).view(-1, q.shape[0], 3, 3).unbind(0)  # J of (N, 3, 3)
        return q, chain, angle, G

    def _position(self, chain: dict, angle: torch.Tensor, G) -> torch.Tensor:
        """The site's position (N, 3) from the site back to the world: v <- G_j v + t_j."""
        v = chain["site"].expand(angle.shape[0], 3, 1)
        for j in reversed(range(len(G))):
            v = torch.baddbmm(chain["t"][j], G[j], v)
            if not chain["hinges"][j]:
                v = v + (angle[:, j, None] * chain["slide_axes"][j])[..., None]
        return v.reshape(-1, 3)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        """q (..., k) -> the site's world position (..., 3) m."""
        _, chain, angle, G = self._segment_maps(q)
        return self._position(chain, angle, G).view(*q.shape[:-1], 3)

    def position_and_jacobian(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (..., k) -> position (..., 3) m (as `self(q)`) and Jacobian dp/dq (..., 3, k).

        Column j is k_j x (p - o_j) for a hinge and k_j for a slide, with k_j and o_j the joint's
        world axis and anchor, found by composing the frames from the world forwards."""
        batch = q.shape[:-1]
        q, chain, angle, G = self._segment_maps(q)
        site = self._position(chain, angle, G)
        if not G:  # none of the joints is on the site's chain
            return site.view(*batch, 3), torch.zeros(*batch, 3, self.k, dtype=q.dtype, device=q.device)
        frames = [G[0]]  # each joint's world rotation: R_j = G_0 ... G_j (its own turn leaves its axis)
        for G_j in G[1:]:
            frames.append(torch.bmm(frames[-1], G_j))
        R = torch.stack(frames, dim=1)  # (N, J, 3, 3)
        axes = (R @ chain["axis_stack"]).squeeze(-1)  # (N, J, 3)
        # Anchors: o_0 = t_0, o_j = o_(j-1) + R_(j-1) t_j (+ the slide of joint j-1).
        steps = (R[:, :-1] @ chain["t_stack"][1:]).squeeze(-1)
        if not all(chain["hinges"]):
            steps = steps + axes[:, :-1] * (angle[:, :-1] * chain["slides"][:-1])[..., None]
        origins = torch.cat([chain["t_stack"][:1, :, 0].expand(q.shape[0], 1, 3), steps], dim=1).cumsum(dim=1)
        columns = torch.linalg.cross(axes, site[:, None, :] - origins, dim=-1)
        if not all(chain["hinges"]):
            columns = torch.where(chain["slides"][:, None] > 0, axes, columns)
        columns = columns.transpose(1, 2)  # (N, 3, J)
        if chain["order"] is None:
            jacobian = columns
        else:
            jacobian = torch.zeros(q.shape[0], 3, self.k, dtype=q.dtype, device=q.device)
            jacobian[..., chain["order"]] = columns
        return site.view(*batch, 3), jacobian.reshape(*batch, 3, self.k)
