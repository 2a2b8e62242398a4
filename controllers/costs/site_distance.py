"""The `site_distance` term: how far an MJCF site (the end effector) is from a target point.

    - type: site_distance
      site: ee                 # site name in the scene (default "ee")
      target: target           # [x, y, z] m, or the name of a condition key (default "target")
      target_state: [block:x, block:y, block:z]   # instead of target: a point taken from the state,
      offset: [0, -0.03, 0]    # plus this offset (m; or a condition key), e.g. behind a block
      norm: quadratic          # 0.5 |r|^2, or smooth_abs: sqrt(|r|^2 + smoothing^2) - smoothing
      smoothing: 0.01          # m, for smooth_abs

The site's position comes from the arm's MJCF through sim.batched_kinematics (chains with ball or
free joints included: see there), in any dtype, batched.
"""

from __future__ import annotations

import numpy as np
import torch

from forethought.controllers.costs.reader import TermReader
from forethought.controllers.costs.term import Term, TermDerivatives, register
from forethought.sim.batched_kinematics import BatchedSiteKinematics

NORMS = ("quadratic", "smooth_abs")


@register("site_distance", keys=("site", "target", "target_state", "offset", "norm", "smoothing"))
class SiteDistanceCost(Term):
    """0.5 |r|^2 or sqrt(|r|^2 + a^2) - a, r = p_site(q) - target, a = smoothing (m).

    kinematics: an ArmKinematics of the site, whose joints are the state entries at `q_index` (k,).
    The target is a fixed point (3,) or, with `target_index` (3,), the state entries there (a
    block's position) plus `offset` (3,) m. A state with NaN joint angles costs NaN.

    Derivatives: the gradient is exact; the Hessian is Gauss-Newton, G^T H_r G with G = dr/dx and
    H_r the norm's Hessian in r: the curvature of the kinematics itself is left out, so the Hessian
    stays positive semi-definite (and is exact where r = 0).
    """

    def __init__(self, kinematics, q_index, target=None, target_index=None, norm: str = "quadratic",
                 smoothing: float = 0.01, offset=None):
        if (target is None) == (target_index is None):
            raise ValueError("give exactly one of target and target_index")
        if norm not in NORMS:
            raise ValueError(f"norm must be quadratic or smooth_abs, got {norm!r}")
        self.kinematics = kinematics
        self.site = BatchedSiteKinematics(kinematics)
        self.q_index = np.asarray(q_index, dtype=np.intp)
        self.target = None if target is None else np.asarray(target, dtype=np.float64).reshape(3)
        self.target_index = None if target_index is None else np.asarray(target_index, dtype=np.intp)
        self.offset = np.zeros(3) if offset is None else np.asarray(offset, dtype=np.float64).reshape(3)
        self.norm, self.smoothing = norm, float(smoothing)

    def _residual(self, x: torch.Tensor, jacobian: bool):
        """r (..., 3) and, with jacobian, dp/dq (..., 3, k)."""
        target, offset = self.tensors(x, "target", "offset")
        q = self.take(x, "q_index")
        p, J = self.site.position_and_jacobian(q) if jacobian else (self.site(q), None)
        goal = target if self.target_index is None else self.take(x, "target_index") + offset
        return p - goal, J

    def _of_residual(self, r: torch.Tensor):
        """The term's value (...) and s: |r|^2 (quadratic) or sqrt(|r|^2 + a^2) (smooth_abs)."""
        r2 = (r * r).sum(-1)
        if self.norm == "quadratic":
            return 0.5 * r2, r2
        s = torch.sqrt(r2 + self.smoothing**2)
        return s - self.smoothing, s

    def value(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self._of_residual(self._residual(x, jacobian=False)[0])[0]

    def derivatives(self, x: torch.Tensor, u: torch.Tensor) -> TermDerivatives:
        r, J = self._residual(x, jacobian=True)
        l, s = self._of_residual(r)
        # G = dr/dx restricted to the entries it touches: [J, -I] (target from the state) or J.
        q_index, target_index = self.tensors(x, "q_index", "target_index")
        if target_index is not None:
            G = torch.cat([J, -torch.eye(3, dtype=x.dtype, device=x.device).expand(r.shape[0], 3, 3)], dim=2)
            index = torch.cat([q_index, target_index])
        else:
            G, index = J, q_index
        GtG = G.transpose(1, 2) @ G
        if self.norm == "quadratic":  # gradient r, Hessian I in r
            g_r, GtHG = r, GtG
        else:  # gradient r / s, Hessian (I - r r^T / s^2) / s in r
            g_r = r / s[:, None]
            Gg = (G.transpose(1, 2) @ g_r[:, :, None])[:, :, 0]
            GtHG = (GtG - Gg[:, :, None] * Gg[:, None, :]) / s[:, None, None]
        d = TermDerivatives.zeros(x, u, l)
        d.l_x[:, index] = (G.transpose(1, 2) @ g_r[:, :, None])[:, :, 0]
        d.l_xx[:, index[:, None], index[None, :]] = GtHG
        return d

    @classmethod
    def from_config(cls, r: TermReader, scene) -> "SiteDistanceCost":
        from forethought.sim.kinematics import ArmKinematics

        if scene is None:
            r.fail("type", "site_distance needs a MuJoCo scene (the robot's `scene`)")
        try:
            kinematics = ArmKinematics(scene, site=r.raw.get("site", "ee"))
        except (ValueError, KeyError) as err:
            r.fail("site", str(err))
        q_index = [r.state_index("site", name) for name in kinematics.joint_names]
        norm = r.raw.get("norm", "quadratic")
        if norm not in NORMS:
            r.fail("norm", f"expected quadratic or smooth_abs, got {norm!r}")
        smoothing = r.number("smoothing", 0.01, positive=True)
        if "target_state" in r.raw:
            if "target" in r.raw:
                r.fail("target_state", "give either target or target_state, not both")
            names = r.names("target_state")
            if len(names) != 3:
                r.fail("target_state", f"expected 3 state names (x, y, z), got {len(names)}")
            index = [r.state_index("target_state", name) for name in names]
            offset = r.vector("offset", 3) if "offset" in r.raw else None
            return cls(kinematics, q_index, target_index=index, norm=norm, smoothing=smoothing, offset=offset)
        if "offset" in r.raw:
            r.fail("offset", "goes with target_state (a point that moves with the state)")
        target = r.vector("target", 3, r.raw.get("target", "target"))
        return cls(kinematics, q_index, target=target, norm=norm, smoothing=smoothing)

    @classmethod
    def label(cls, i: int, raw: dict) -> str:
        return f"{i} {cls.name} {raw.get('site', 'ee')}"
