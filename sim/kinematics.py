"""Forward kinematics, Jacobians and inverse kinematics of a site on an arm, read from its MJCF.

MuJoCo does the kinematics (no hand-written link tables), so the same code serves every arm scene,
on hardware as in simulation. Each ArmKinematics works on its own MjData: calling it never
disturbs a simulation running on the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import mujoco
import numpy as np

from forethought.robots.config import ConfigError
from forethought.sim.scenes import scene_path


_ONE_DOF = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))


class IKSolution(NamedTuple):
    """q: (k,) rad, within the joint limits; residual: distance (m) of the site from the target at q."""

    q: np.ndarray
    residual: float


def load_model(scene: str | Path | mujoco.MjModel) -> mujoco.MjModel:
    """A scene name, an MJCF path or an MjModel -> MjModel; ValueError naming the file if it does not load."""
    if isinstance(scene, mujoco.MjModel):
        return scene
    path = scene_path(scene)
    try:
        return mujoco.MjModel.from_xml_path(str(path))
    except ValueError as err:
        raise ConfigError(f"{path}: MuJoCo could not load the scene: {err}") from None


def chain_joints(model: mujoco.MjModel, body: int) -> list[int]:
    """Ids of the hinge and slide joints between the world and `body`, root first."""
    joints = []
    while body > 0:
        start, count = model.body_jntadr[body], model.body_jntnum[body]
        for j in reversed(range(start, start + count)):
            if model.jnt_type[j] in _ONE_DOF:
                joints.append(j)
        body = model.body_parentid[body]
    return joints[::-1]


class ArmKinematics:
    """Position and Jacobian of one site as a function of k joint angles (the other joints fixed).

    scene: a scene name, an MJCF path or an MjModel.
    site: the site whose world position is wanted (default "ee").
    joints: names of the hinge/slide joints that are the inputs q, in this order; default: those on
        the chain from the world to the site, root first.
    Joints not in `joints` stay at the scene's "home" keyframe (else the model's qpos0).
    """

    def __init__(self, scene: str | Path | mujoco.MjModel, site: str = "ee", joints: Sequence[str] | None = None):
        self.model = load_model(scene)
        model = self.model
        self.site = site
        self.site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site)
        if self.site_id < 0:
            known = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_SITE, i) or "" for i in range(model.nsite)]
            known = ", ".join(n for n in known if n) or "none"
            raise ValueError(f"no site named '{site}' in the scene (its sites: {known})")
        if joints is None:
            ids = chain_joints(model, model.site_bodyid[self.site_id])
        else:
            ids = [self._joint_id(name) for name in joints]
        if not ids:
            raise ValueError(f"site '{site}' moves with no hinge or slide joint")
        self.joint_ids = np.array(ids, dtype=np.intp)
        self.joint_names = tuple(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in ids)
        self.qpos_index = model.jnt_qposadr[self.joint_ids]
        self.dof_index = model.jnt_dofadr[self.joint_ids]
        limited = model.jnt_limited[self.joint_ids].astype(bool)
        self.lower = np.where(limited, model.jnt_range[self.joint_ids, 0], -np.inf)
        self.upper = np.where(limited, model.jnt_range[self.joint_ids, 1], np.inf)

        # Bodies the joints move: the subtrees of the bodies that carry them.
        carriers = set(model.jnt_bodyid[self.joint_ids].tolist())
        self._moved_body = np.array([any(self._descends(b, c) for c in carriers) for b in range(model.nbody)])

        home = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, "home")
        self.reference_qpos = (model.key_qpos[home] if home >= 0 else model.qpos0).copy()
        self.home = self.reference_qpos[self.qpos_index].copy()
        self._data = mujoco.MjData(model)
        self._data.qpos[:] = self.reference_qpos
        self._jacp = np.zeros((3, model.nv))

    def _descends(self, body: int, ancestor: int) -> bool:
        while body > 0 and body != ancestor:
            body = self.model.body_parentid[body]
        return body == ancestor

    def _joint_id(self, name: str) -> int:
        j = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if j < 0:
            raise ValueError(f"no joint named '{name}' in the scene")
        if self.model.jnt_type[j] not in _ONE_DOF:
            raise ValueError(f"joint '{name}' is not a hinge or slide joint")
        return j

    @property
    def k(self) -> int:
        return len(self.joint_ids)

    def _check(self, q, batched: bool) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        shape = "(B, k)" if batched else "(k,)"
        if q.ndim != (2 if batched else 1) or q.shape[-1] != self.k:
            raise ValueError(f"joint angles must have shape {shape} with k = {self.k} ({', '.join(self.joint_names)}), got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("joint angles contain NaN or inf")
        return q

    def _place(self, q: np.ndarray, jacobian: bool) -> None:
        data = self._data
        data.qpos[self.qpos_index] = q
        mujoco.mj_kinematics(self.model, data)
        if jacobian:
            mujoco.mj_comPos(self.model, data)  # the Jacobian needs the com-based motion subspaces

    # -- one configuration -------------------------------------------------------------------
    def site_position(self, q) -> np.ndarray:
        """q: (k,) -> the site's world position (3,) m."""
        self._place(self._check(q, batched=False), jacobian=False)
        return self._data.site_xpos[self.site_id].copy()

    def site_jacobian(self, q) -> np.ndarray:
        """q: (k,) -> d(site position)/dq (3, k), m/rad."""
        return self._position_and_jacobian(self._check(q, batched=False))[1]

    # -- batches ------------------------------------------------------------------------------
    def site_positions(self, q) -> np.ndarray:
        """q: (B, k) -> positions (B, 3) m."""
        q = self._check(q, batched=True)
        out = np.empty((len(q), 3))
        for b, qb in enumerate(q):
            self._place(qb, jacobian=False)
            out[b] = self._data.site_xpos[self.site_id]
        return out

    def site_positions_and_jacobians(self, q) -> tuple[np.ndarray, np.ndarray]:
        """q: (B, k) -> positions (B, 3) m and Jacobians (B, 3, k) m/rad."""
        q = self._check(q, batched=True)
        p = np.empty((len(q), 3))
        J = np.empty((len(q), 3, self.k))
        for b, qb in enumerate(q):
            p[b], J[b] = self._position_and_jacobian(qb)
        return p, J

    def arm_contacts(self, q) -> int:
        """q: (k,) -> how many contacts a body moved by the joints makes with the scene at q."""
        self._place(self._check(q, batched=False), jacobian=False)
        mujoco.mj_collision(self.model, self._data)
        contact, body = self._data.contact, self.model.geom_bodyid
        return int(np.sum(self._moved_body[body[contact.geom1]] | self._moved_body[body[contact.geom2]]))

    # -- inverse kinematics --------------------------------------------------------------------
    def solve_ik(
        self,
        target,
        q0=None,
        tolerance: float = 1e-4,
        max_iterations: int = 200,
        damping: float = 1e-2,
        max_step: float = 0.2,
        restarts: int = 0,
        seed: int = 0,
        accept: Callable[[np.ndarray], bool] | None = None,
    ) -> IKSolution:
        """Joint angles that put the site at `target` (3,) m, by damped least squares from q0 (k,).

        Each iteration steps dq = J^T (J J^T + damping^2 I)^-1 (target - p), at most `max_step` rad
        per joint, then clamps q to the joint limits; it stops once the site is within `tolerance` m.
        The damping (m) keeps steps bounded near singularities and at the edge of the workspace, where
        the answer is the reachable point nearest the target. q0 defaults to the home pose.
        When the search from q0 ends farther than `tolerance` (stuck at a joint limit) or at an
        answer that `accept(q)` rejects (say, one where the arm touches the table), up to `restarts`
        more start from angles drawn uniformly within the limits (seeded). Returns the first answer
        within tolerance and accepted, else the closest one found.
        """
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (3,) or not np.all(np.isfinite(target)):
            raise ValueError(f"IK target must be 3 finite numbers (m), got {target!r}")
        q = self.home if q0 is None else self._check(q0, batched=False)
        rng = np.random.default_rng(seed)
        low = np.where(np.isfinite(self.lower), self.lower, self.home - np.pi)
        high = np.where(np.isfinite(self.upper), self.upper, self.home + np.pi)
        best = None
        for attempt in range(restarts + 1):
            start = q if attempt == 0 else rng.uniform(low, high)
            found = self._descend(target, start, tolerance, max_iterations, damping, max_step)
            if found.residual <= tolerance and (accept is None or accept(found.q)):
                return found
            if best is None or found.residual < best.residual:
                best = found
        return best

    def _descend(self, target, q, tolerance, max_iterations, damping, max_step) -> IKSolution:
        q = np.clip(q, self.lower, self.upper)
        lam2 = damping * damping
        for _ in range(max_iterations):
            p, J = self._position_and_jacobian(q)
            error = target - p
            if np.linalg.norm(error) <= tolerance:
                break
            dq = J.T @ np.linalg.solve(J @ J.T + lam2 * np.eye(3), error)
            dq *= min(1.0, max_step / max(np.abs(dq).max(), 1e-12))
            q = np.clip(q + dq, self.lower, self.upper)
        residual = float(np.linalg.norm(target - self.site_position(q)))
        return IKSolution(q, residual)

    def _position_and_jacobian(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._place(q, jacobian=True)
        mujoco.mj_jacSite(self.model, self._data, self._jacp, None, self.site_id)
        return self._data.site_xpos[self.site_id].copy(), self._jacp[:, self.dof_index].copy()
