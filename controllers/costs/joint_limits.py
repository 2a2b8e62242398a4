"""The `joint_limits` term: a soft barrier that keeps joints inside their ranges.

    - type: joint_limits
      names: [shoulder_pan]   # default: every limited hinge/slide joint of the scene
      lower: [-2.0]           # default: the scene's joint ranges
      upper: [2.0]
      margin: 0.05            # rad or m inside the limits where the cost starts
      weights: [1.0]          # per joint (default 1)
"""

from __future__ import annotations

import numpy as np
import torch

from forethought.controllers.costs.reader import TermReader
from forethought.controllers.costs.term import Term, TermDerivatives, register


@register("joint_limits", keys=("names", "lower", "upper", "margin", "weights"))
class JointLimitCost(Term):
    """0.5 sum_i w_i v_i^2 with v_i = how far x_i is below lower_i + margin or above upper_i - margin.

    Zero well inside the limits, quadratic from `margin` inside them on, and finite beyond them (an
    infeasible guess still has a gradient pointing back). Derivatives analytic and exact (the
    Hessian is w_i where v_i != 0, 0 elsewhere).
    """

    def __init__(self, index, lower, upper, margin: float, weights=1.0):
        self.index = np.asarray(index, dtype=np.intp)
        self.low = np.asarray(lower, dtype=np.float64) + margin
        self.high = np.asarray(upper, dtype=np.float64) - margin
        self.weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), self.index.shape).copy()

    def _violation(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.tensors(x, "low", "high")
        q = self.take(x, "index")
        return torch.clamp(q - low, max=0.0) + torch.clamp(q - high, min=0.0)

    def _of_violation(self, v: torch.Tensor) -> torch.Tensor:
        (w,) = self.tensors(v, "weights")
        return 0.5 * (v * v) @ w

    def value(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self._of_violation(self._violation(x))

    def derivatives(self, x: torch.Tensor, u: torch.Tensor) -> TermDerivatives:
        v = self._violation(x)
        i, w = self.tensors(x, "index", "weights")
        d = TermDerivatives.zeros(x, u, self._of_violation(v))
        d.l_x[:, i] = w * v
        d.l_xx[:, i, i] = w * (v != 0.0)
        return d

    @classmethod
    def from_config(cls, r: TermReader, scene) -> "JointLimitCost":
        import mujoco

        from forethought.sim.kinematics import load_model

        names = r.raw.get("names")
        model = load_model(scene) if scene is not None else None
        if names is None:
            if model is None:
                r.fail("names", "required without a scene to read the joint limits from")
            one_dof = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)
                     for j in range(model.njnt) if model.jnt_limited[j] and int(model.jnt_type[j]) in one_dof]
        names = r.names("names", names)
        index = [r.state_index("names", name) for name in names]
        bounds = []
        for key, column in (("lower", 0), ("upper", 1)):
            if key in r.raw:
                bounds.append(r.vector(key, len(names)))
                continue
            if model is None:
                r.fail(key, "required without a scene to read the joint limits from")
            values = []
            for name in names:
                j = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
                if j < 0 or not model.jnt_limited[j]:
                    r.fail(key, f"the scene has no limited joint named {name!r}; give {key} explicitly")
                values.append(model.jnt_range[j, column])
            bounds.append(np.array(values))
        margin = r.number("margin", 0.05)
        weights = r.vector("weights", len(names)) if "weights" in r.raw else 1.0
        return cls(index, bounds[0], bounds[1], margin, weights)
