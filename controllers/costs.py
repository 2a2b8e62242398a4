"""Costs with derivatives for trajectory optimisation, declared in the experiment YAML.

A `Cost` is a weighted sum of terms. It gives, for a batch of states x (B, n) and actions
u (B, m), the value l (B,) and the derivatives l_x (B, n), l_u (B, m), l_xx (B, n, n),
l_uu (B, m, m), l_ux (B, m, n), in float64. A call without actions (u None) is the terminal
cost. `cost(x, u) -> float` on a single pair makes a Cost usable as `rollout`'s cost.

Every derivative is exact except the Hessian of the site-distance term, which is Gauss-Newton
(J^T H_p J: the curvature of the kinematics itself is left out, so the Hessian stays positive
semi-definite); its gradient is exact.

YAML schema (the experiment's `task.cost`):

    cost:
      terms:
        - type: site_distance        # distance of an MJCF site to a target point
          site: ee                   # site name in the scene (default "ee")
          target: target             # [x, y, z] m, or the name of a condition key (default "target")
          target_state: [block:x, block:y, block:z]   # instead of target: a point taken from the state,
          offset: [0, -0.03, 0]      # plus this offset (m; or a condition key), e.g. behind a block
          norm: quadratic            # 0.5 |r|^2, or smooth_abs: sqrt(|r|^2 + smoothing^2) - smoothing
          smoothing: 0.01            # m, for smooth_abs
        - type: state                # 0.5 sum_i w_i e_i^2, e_i = x_i - target_i
          weights: {d_shoulder_pan: 0.01}   # state name -> weight
          target: {block:x: 0.2}     # state name -> value (default 0), or the name of a condition key
                                     # holding a list in the order of `weights`
          angles: [pole]             # these e_i enter as 2 (1 - cos e_i) (wrap-around safe)
        - type: saturating           # 1 - exp(-d^2 / (2 sigma^2)) as in PILCO, d^2 as for `state`
          weights: {cart: 1.0, pole: 1.0}
          target: {pole: 3.14159}
          angles: [pole]
          sigma: 0.25
        - type: action               # 0.5 sum_j w_j (u_j - c_j)^2
          weights: 0.001             # a number, a list (m) or {action name: weight}
          center: [0, 0]             # a list (m), or "state": c_j = the state entry named like action j
        - type: joint_limits         # 0.5 sum_i w_i v_i^2, v_i how far x_i is past [lower + margin, upper - margin]
          names: [shoulder_pan]      # default: every limited hinge/slide joint of the scene
          lower: [-2.0]              # default: the scene's joint ranges
          upper: [2.0]
          margin: 0.05

Every term also takes:
    weight: weight of the running cost (default 1);
    final_weight: weight in the terminal cost (default: `weight`; 0 for `action`, which has none);
    ramp: how the running weight grows over a horizon of T steps: constant (default),
        linear ((t+1)/T), quadratic (((t+1)/T)^2) or final_only (0: the term counts only at the end).
Without a time index (a single cost(x, u) call) the ramp is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from forethought.robots.config import ConfigError
from forethought.robots.robot import RobotSpec

RAMPS = ("constant", "linear", "quadratic", "final_only")


@dataclass
class CostDerivatives:
    """Value and derivatives of a cost at B points: l (B,), l_x (B, n), l_u (B, m), l_xx (B, n, n),
    l_uu (B, m, m), l_ux (B, m, n). Terminal rows have zero action derivatives."""

    l: np.ndarray
    l_x: np.ndarray
    l_u: np.ndarray
    l_xx: np.ndarray
    l_uu: np.ndarray
    l_ux: np.ndarray

    @classmethod
    def zeros(cls, B: int, n: int, m: int) -> "CostDerivatives":
        return cls(
            np.zeros(B), np.zeros((B, n)), np.zeros((B, m)), np.zeros((B, n, n)), np.zeros((B, m, m)), np.zeros((B, m, n))
        )


class Term:
    """One cost term. `uses_action` terms contribute to running costs only.

    value(x (B, n), u (B, m)) -> (B,); add_to(d, x, u, scale (B,)) adds scale * (value and
    derivatives) into d in place.
    """

    uses_action = False

    def value(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def add_to(self, d: CostDerivatives, x: np.ndarray, u: np.ndarray, scale: np.ndarray) -> None:
        raise NotImplementedError


class WeightedDistance:
    """d^2(x) = sum_i w_i e_i^2 with e_i = x[index_i] - target_i; angle entries add w_i 2 (1 - cos e_i).

    The angle form equals e^2 near e = 0 and is the squared chord between the two angles, so a
    pole at +pi and at -pi is at the same distance from its target.
    """

    def __init__(self, index, weights, target, angle):
        self.index = np.asarray(index, dtype=np.intp)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.target = np.asarray(target, dtype=np.float64)
        self.angle = np.asarray(angle, dtype=bool)

    def evaluate(self, x: np.ndarray, derivatives: bool = True):
        """d2 (B,), and with derivatives the gradient (B, k) and diagonal Hessian (B, k) w.r.t. x[:, index]."""
        e = x[:, self.index] - self.target
        w, a = self.weights, self.angle
        sq = np.where(a, 2.0 * (1.0 - np.cos(e)), e * e)
        d2 = sq @ w
        if not derivatives:
            return d2, None, None
        g = np.where(a, 2.0 * np.sin(e), 2.0 * e) * w
        h = np.where(a, 2.0 * np.cos(e), 2.0) * w
        return d2, g, h


class StateCost(Term):
    """0.5 d^2(x) with d^2 a WeightedDistance: quadratic in the state (angles wrapped)."""

    def __init__(self, distance: WeightedDistance):
        self.distance = distance

    def value(self, x, u):
        return 0.5 * self.distance.evaluate(x, derivatives=False)[0]

    def add_to(self, d, x, u, scale):
        d2, g, h = self.distance.evaluate(x)
        i = self.distance.index
        d.l += scale * 0.5 * d2
        d.l_x[:, i] += scale[:, None] * 0.5 * g
        d.l_xx[:, i, i] += scale[:, None] * 0.5 * h


class SaturatingCost(Term):
    """PILCO's 1 - exp(-d^2 / (2 sigma^2)): quadratic near the target, 1 far from it."""

    def __init__(self, distance: WeightedDistance, sigma: float):
        self.distance, self.sigma = distance, float(sigma)

    def value(self, x, u):
        d2 = self.distance.evaluate(x, derivatives=False)[0]
        return 1.0 - np.exp(-d2 / (2.0 * self.sigma**2))

    def add_to(self, d, x, u, scale):
        d2, g, h = self.distance.evaluate(x)
        i = self.distance.index
        s2 = 2.0 * self.sigma**2
        E = np.exp(-d2 / s2)
        a = scale * E / s2  # d l / d d^2, scaled
        d.l += scale * (1.0 - E)
        d.l_x[:, i] += a[:, None] * g
        d.l_xx[:, i, i] += a[:, None] * h
        d.l_xx[:, i[:, None], i[None, :]] -= (a / s2)[:, None, None] * g[:, :, None] * g[:, None, :]


class ActionCost(Term):
    """0.5 sum_j w_j (u_j - c_j)^2, c a constant or (center "state") the state entries named like the actions."""

    uses_action = True

    def __init__(self, weights, center=None, state_index=None):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.center = None if center is None else np.asarray(center, dtype=np.float64)
        self.state_index = None if state_index is None else np.asarray(state_index, dtype=np.intp)

    def _error(self, x, u):
        if self.state_index is not None:
            return u - x[:, self.state_index]
        return u if self.center is None else u - self.center

    def value(self, x, u):
        e = self._error(x, u)
        return 0.5 * (e * e) @ self.weights

    def add_to(self, d, x, u, scale):
        e = self._error(x, u)
        w = self.weights
        we = scale[:, None] * w * e
        m = len(w)
        j = np.arange(m)
        d.l += scale * 0.5 * ((e * e) @ w)
        d.l_u += we
        d.l_uu[:, j, j] += scale[:, None] * w
        s = self.state_index
        if s is not None:
            d.l_x[:, s] -= we
            d.l_xx[:, s, s] += scale[:, None] * w
            d.l_ux[:, j, s] -= scale[:, None] * w


class JointLimitCost(Term):
    """0.5 sum_i w_i v_i^2 with v_i = how far x_i is below lower_i + margin or above upper_i - margin.

    A soft barrier: zero well inside the limits, quadratic from `margin` inside them on, and finite
    beyond them (an infeasible guess still has a gradient pointing back).
    """

    def __init__(self, index, lower, upper, margin: float, weights=1.0):
        self.index = np.asarray(index, dtype=np.intp)
        self.low = np.asarray(lower, dtype=np.float64) + margin
        self.high = np.asarray(upper, dtype=np.float64) - margin
        self.weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), self.index.shape)

    def _violation(self, x):
        q = x[:, self.index]
        return np.minimum(q - self.low, 0.0) + np.maximum(q - self.high, 0.0)

    def value(self, x, u):
        v = self._violation(x)
        return 0.5 * (v * v) @ self.weights

    def add_to(self, d, x, u, scale):
        v = self._violation(x)
        i, w = self.index, self.weights
        d.l += scale * 0.5 * ((v * v) @ w)
        d.l_x[:, i] += scale[:, None] * w * v
        d.l_xx[:, i, i] += scale[:, None] * w * (v != 0.0)


class SiteDistanceCost(Term):
    """Distance of an MJCF site to a target: 0.5 |r|^2 or sqrt(|r|^2 + a^2) - a, r = p_site(q) - target.

    kinematics: gives the site's world position p (3,) m and its Jacobian (3, k) w.r.t. q, the
    state entries at `q_index` (k,) (sim.kinematics.ArmKinematics). The target is a fixed point
    (3,) or, with `target_index` (3,), the state entries there (a block's position) plus `offset` (3,) m.
    The Hessian is Gauss-Newton: G^T H_r G with G = dr/dx; the gradient is exact.
    """

    def __init__(self, kinematics, q_index, target=None, target_index=None, norm: str = "quadratic", smoothing: float = 0.01, offset=None):
        if (target is None) == (target_index is None):
            raise ValueError("give exactly one of target and target_index")
        if norm not in ("quadratic", "smooth_abs"):
            raise ValueError(f"norm must be quadratic or smooth_abs, got {norm!r}")
        self.kinematics = kinematics
        self.q_index = np.asarray(q_index, dtype=np.intp)
        self.target = None if target is None else np.asarray(target, dtype=np.float64).reshape(3)
        self.target_index = None if target_index is None else np.asarray(target_index, dtype=np.intp)
        self.offset = np.zeros(3) if offset is None else np.asarray(offset, dtype=np.float64).reshape(3)
        self.norm, self.smoothing = norm, float(smoothing)

    def _residual(self, x, jacobians: bool):
        q = x[:, self.q_index]
        finite = np.all(np.isfinite(q), axis=1)
        p = np.full((len(x), 3), np.nan)  # a NaN state costs NaN, which optimisers reject
        J = np.full((len(x), 3, len(self.q_index)), np.nan) if jacobians else None
        if jacobians:
            p[finite], J[finite] = self.kinematics.site_positions_and_jacobians(q[finite])
        else:
            p[finite] = self.kinematics.site_positions(q[finite])
        goal = self.target if self.target_index is None else x[:, self.target_index] + self.offset
        return p - goal, J

    def _norm(self, r):
        r2 = np.einsum("bi,bi->b", r, r)
        if self.norm == "quadratic":
            return 0.5 * r2, r2
        s = np.sqrt(r2 + self.smoothing**2)
        return s - self.smoothing, s

    def value(self, x, u):
        r, _ = self._residual(x, jacobians=False)
        return self._norm(r)[0]

    def add_to(self, d, x, u, scale):
        r, J = self._residual(x, jacobians=True)
        l, s = self._norm(r)
        # G = dr/dx restricted to the entries it touches: [J, -I] (target from the state) or J.
        if self.target_index is not None:
            G = np.concatenate([J, np.broadcast_to(-np.eye(3), (len(r), 3, 3))], axis=2)
            index = np.concatenate([self.q_index, self.target_index])
        else:
            G, index = J, self.q_index
        if self.norm == "quadratic":  # gradient r, Hessian I in r
            g_r = r
            GtHG = np.einsum("bki,bkj->bij", G, G)
        else:  # gradient r / s, Hessian (I - r r^T / s^2) / s in r
            g_r = r / s[:, None]
            Gg = np.einsum("bki,bk->bi", G, g_r)
            GtHG = (np.einsum("bki,bkj->bij", G, G) - Gg[:, :, None] * Gg[:, None, :]) / s[:, None, None]
        d.l += scale * l
        d.l_x[:, index] += scale[:, None] * np.einsum("bij,bi->bj", G, g_r)
        d.l_xx[:, index[:, None], index[None, :]] += scale[:, None, None] * GtHG


@dataclass
class Weighted:
    """A term with its running weight, terminal weight and ramp (see the module docstring), and a
    label that names it in plots ("2 site_distance ee")."""

    term: Term
    weight: float = 1.0
    final_weight: float = 0.0
    ramp: str = "constant"
    label: str = ""

    def running_scale(self, t: np.ndarray | None, horizon: int | None) -> np.ndarray | float:
        if t is None or self.ramp == "constant":
            return self.weight
        if horizon is None or horizon < 1:
            raise ValueError("a ramped cost needs the horizon along with the time index")
        fraction = (np.asarray(t, dtype=np.float64) + 1.0) / horizon
        if self.ramp == "linear":
            return self.weight * fraction
        if self.ramp == "quadratic":
            return self.weight * fraction**2
        return np.zeros_like(fraction)


class Cost:
    """A weighted sum of terms over states (n,) and actions (m,); see the module docstring.

    Batched calls: value(x, u, t, horizon) -> (B,), derivatives(x, u, t, horizon) -> CostDerivatives,
    with u None for the terminal cost and t (B,) the time index of each row within a horizon (for
    ramps). Trajectory calls: trajectory_derivatives(X (T+1, n), U (T, m)) (row T terminal) and
    trajectory_costs(X (B, T+1, n), U (B, T, m)) -> (B,) totals.
    """

    def __init__(self, n: int, m: int, terms: Sequence[Weighted]):
        self.n, self.m = int(n), int(m)
        self.terms = list(terms)
        for w in self.terms:
            if w.ramp not in RAMPS:
                raise ValueError(f"ramp must be one of {', '.join(RAMPS)}, got {w.ramp!r}")

    def _check(self, x, u):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"cost: states must have shape (B, {self.n}), got {x.shape}")
        if u is not None:
            u = np.asarray(u, dtype=np.float64)
            if u.shape != (len(x), self.m):
                raise ValueError(f"cost: actions must have shape ({len(x)}, {self.m}), got {u.shape}")
        return x, u

    def _scales(self, B: int, running: np.ndarray, t, horizon):
        """Per-term (B,) weights: running rows where `running`, terminal rows elsewhere."""
        scales = []
        for w in self.terms:
            run = np.broadcast_to(w.running_scale(t, horizon), (B,))
            final = 0.0 if w.term.uses_action else w.final_weight
            scales.append(np.where(running, run, final))
        return scales

    def _rows(self, x, u):
        """Actions (zeros on terminal rows) and the mask of running rows."""
        if u is None:
            return np.zeros((len(x), self.m)), np.zeros(len(x), dtype=bool)
        return u, np.ones(len(x), dtype=bool)

    def value(self, x, u=None, t=None, horizon=None) -> np.ndarray:
        """Cost of each row (B,): running with u (B, m), terminal with u None."""
        x, u = self._check(x, u)
        u, running = self._rows(x, u)
        return self._value(x, u, running, t, horizon)

    def _value(self, x, u, running, t, horizon):
        return self._term_values(x, u, running, t, horizon).sum(axis=0)

    def _term_values(self, x, u, running, t, horizon) -> np.ndarray:
        """(terms, B): each term's weighted cost of each row."""
        values = np.zeros((len(self.terms), len(x)))
        for i, (w, scale) in enumerate(zip(self.terms, self._scales(len(x), running, t, horizon))):
            if np.any(scale != 0.0):
                values[i] = scale * w.term.value(x, u)
        return values

    def derivatives(self, x, u=None, t=None, horizon=None) -> CostDerivatives:
        """Value and derivatives at each row; terminal (zero action parts) with u None."""
        x, u = self._check(x, u)
        u, running = self._rows(x, u)
        return self._derivatives(x, u, running, t, horizon)

    def _derivatives(self, x, u, running, t, horizon):
        d = CostDerivatives.zeros(len(x), self.n, self.m)
        for w, scale in zip(self.terms, self._scales(len(x), running, t, horizon)):
            if np.any(scale != 0.0):
                w.term.add_to(d, x, u, scale)
        return d

    def __call__(self, x, u=None) -> float:
        """Running cost of one pair x (n,), u (m,), or the terminal cost of x with u None."""
        x = np.asarray(x, dtype=np.float64).reshape(1, -1)
        u = None if u is None else np.asarray(u, dtype=np.float64).reshape(1, -1)
        return float(self.value(x, u)[0])

    def _trajectory_rows(self, X, U):
        X = np.asarray(X, dtype=np.float64)
        U = np.asarray(U, dtype=np.float64)
        T = U.shape[-2]
        if X.shape[-2:] != (T + 1, self.n) or U.shape[-1] != self.m or X.shape[:-2] != U.shape[:-2]:
            raise ValueError(f"cost: trajectory needs X (..., T+1, {self.n}) and U (..., T, {self.m}), got {X.shape} and {U.shape}")
        lead = X.shape[:-2]
        U_rows = np.concatenate([U, np.zeros(lead + (1, self.m))], axis=-2)
        t = np.broadcast_to(np.arange(T + 1), lead + (T + 1,))
        return X.reshape(-1, self.n), U_rows.reshape(-1, self.m), (t < T).reshape(-1), t.reshape(-1), T

    def trajectory_derivatives(self, X, U) -> CostDerivatives:
        """Derivatives along one trajectory X (T+1, n), U (T, m): rows 0..T-1 running, row T terminal."""
        x, u, running, t, T = self._trajectory_rows(X, U)
        return self._derivatives(x, u, running, t, T)

    def term_costs(self, X, U) -> np.ndarray:
        """Each term's part of a trial's logged cost, X (T+1, n), U (T, m) -> (terms,): its running
        cost at every step at its full weight (as `cost(x, u)` gives it, no ramp) plus its terminal
        cost; steps whose cost is not finite are left out, as Trial.total_cost leaves them out."""
        x, u, running, _, _ = self._trajectory_rows(X, U)
        values = self._term_values(x, u, running, None, None)
        return values[:, np.isfinite(values).all(axis=0)].sum(axis=1)

    def trajectory_costs(self, X, U) -> np.ndarray:
        """Total cost of each trajectory in X (B, T+1, n), U (B, T, m) -> (B,); or of one (T+1, n) -> ()."""
        x, u, running, t, T = self._trajectory_rows(X, U)
        rows = self._value(x, u, running, t, T)
        return rows.reshape(np.shape(X)[:-2] + (T + 1,)).sum(axis=-1)


# -- Building a cost from the experiment YAML -------------------------------------------------

_COMMON = {"type", "weight", "final_weight", "ramp"}
_KEYS = {
    "site_distance": {"site", "target", "target_state", "offset", "norm", "smoothing"},
    "state": {"weights", "target", "angles"},
    "saturating": {"weights", "target", "angles", "sigma"},
    "action": {"weights", "center"},
    "joint_limits": {"names", "lower", "upper", "margin", "weights"},
}


class _Reader:
    """Reads one term's mapping; every error names the key as cost.terms[i].key."""

    def __init__(self, raw: dict, where: str, spec: RobotSpec, condition: dict | None):
        self.raw, self.where, self.spec, self.condition = raw, where, spec, condition or {}

    def fail(self, key: str, message: str):
        raise ConfigError(f"{self.where}.{key}: {message}")

    def number(self, key: str, default=None, positive: bool = False) -> float:
        value = self.raw.get(key, default)
        if value is None:
            self.fail(key, "required key is missing")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"expected a finite number, got {value!r}")
        if positive and not value > 0:
            self.fail(key, f"must be positive, got {value!r}")
        if value < 0:
            self.fail(key, f"must not be negative, got {value!r}")
        return float(value)

    def vector(self, key: str, size: int | None, value=None) -> np.ndarray:
        value = self.raw.get(key) if value is None else value
        if isinstance(value, str):
            if value not in self.condition:
                self.fail(key, f"names the condition key '{value}', which the condition does not give")
            value = self.condition[value]
        try:
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            self.fail(key, f"expected a list of numbers, got {value!r}")
        if size is not None and arr.size != size:
            self.fail(key, f"expected {size} numbers, got {arr.size}")
        if not np.all(np.isfinite(arr)):
            self.fail(key, "has NaN or infinite values")
        return arr

    def state_index(self, key: str, name) -> int:
        if name not in self.spec.state_names:
            self.fail(key, f"unknown state name {name!r} (known: {', '.join(self.spec.state_names)})")
        return self.spec.state_names.index(name)

    def names(self, key: str, default=None) -> list[str]:
        value = self.raw.get(key, default)
        if value is None:
            self.fail(key, "required key is missing")
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"expected a list of state names, got {value!r}")
        return list(value)

    def distance(self) -> WeightedDistance:
        weights = self.raw.get("weights")
        if not isinstance(weights, dict) or not weights:
            self.fail("weights", f"expected a mapping of state name to weight, got {weights!r}")
        names = list(weights)
        index = [self.state_index("weights", name) for name in names]
        w = np.array([self.number_value("weights", name, weights[name]) for name in names])
        target = self.raw.get("target", {})
        if isinstance(target, dict):
            unknown = sorted(set(target) - set(names))
            if unknown:
                self.fail("target", f"{unknown[0]!r} has no weight in `weights`")
            c = np.array([self.number_value("target", name, target.get(name, 0.0), allow_negative=True) for name in names])
        else:
            c = self.vector("target", len(names))
        angles = self.names("angles", [])
        for name in angles:
            if name not in names:
                self.fail("angles", f"{name!r} has no weight in `weights`")
        return WeightedDistance(index, w, c, [name in angles for name in names])

    def number_value(self, key: str, name: str, value, allow_negative: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"{name}: expected a finite number, got {value!r}")
        if not allow_negative and value < 0:
            self.fail(key, f"{name}: must not be negative, got {value!r}")
        return float(value)


def _site_distance(r: _Reader, scene) -> Term:
    from forethought.sim.kinematics import ArmKinematics

    if scene is None:
        r.fail("type", "site_distance needs a MuJoCo scene (the robot's `scene`)")
    site = r.raw.get("site", "ee")
    try:
        kinematics = ArmKinematics(scene, site=site)
    except (ValueError, KeyError) as err:
        r.fail("site", str(err))
    q_index = [r.state_index("site", name) for name in kinematics.joint_names]
    norm = r.raw.get("norm", "quadratic")
    if norm not in ("quadratic", "smooth_abs"):
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
        return SiteDistanceCost(kinematics, q_index, target_index=index, norm=norm, smoothing=smoothing, offset=offset)
    if "offset" in r.raw:
        r.fail("offset", "goes with target_state (a point that moves with the state)")
    target = r.vector("target", 3, r.raw.get("target", "target"))
    return SiteDistanceCost(kinematics, q_index, target=target, norm=norm, smoothing=smoothing)


def _action(r: _Reader) -> Term:
    spec = r.spec
    weights = r.raw.get("weights", 1.0)
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(spec.action_names))
        if unknown:
            r.fail("weights", f"unknown action name {unknown[0]!r} (known: {', '.join(spec.action_names)})")
        w = np.array([r.number_value("weights", a, weights.get(a, 0.0)) for a in spec.action_names])
    elif isinstance(weights, (int, float)) and not isinstance(weights, bool):
        w = np.full(spec.m, r.number("weights", 1.0))
    else:
        w = r.vector("weights", spec.m)
        if np.any(w < 0):
            r.fail("weights", "must not be negative")
    center = r.raw.get("center")
    if center == "state":
        index = [r.state_index("center", name) for name in spec.action_names]
        return ActionCost(w, state_index=index)
    return ActionCost(w, center=None if center is None else r.vector("center", spec.m))


def _joint_limits(r: _Reader, scene) -> Term:
    import mujoco

    from forethought.sim.kinematics import load_model

    names = r.raw.get("names")
    model = load_model(scene) if scene is not None else None
    if names is None:
        if model is None:
            r.fail("names", "required without a scene to read the joint limits from")
        names = [
            mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)
            for j in range(model.njnt)
            if model.jnt_limited[j] and int(model.jnt_type[j]) in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
        ]
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
    return JointLimitCost(index, bounds[0], bounds[1], margin, weights)


def _term_label(i: int, kind: str, raw: dict) -> str:
    """A short name for term i of the YAML list: its type and what it measures."""
    if kind == "site_distance":
        return f"{i} site_distance {raw.get('site', 'ee')}"
    if kind in ("state", "saturating") and isinstance(raw.get("weights"), dict):
        names = list(raw["weights"])
        shown = ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")
        return f"{i} {kind} {shown}"
    return f"{i} {kind}"


def build_cost(cfg: dict, spec: RobotSpec, scene=None, condition: dict | None = None) -> Cost:
    """The Cost that an experiment's `task.cost` mapping declares (schema in the module docstring).

    spec: the robot's spec (state and action names); scene: the MuJoCo scene name, MJCF path or
    MjModel (needed by site_distance, and by joint_limits without explicit bounds); condition: the
    condition whose keys terms may name (e.g. {"target": [x, y, z]}).
    Raises ConfigError naming the key (cost.terms[i].key) for anything wrong.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"cost: expected a mapping with `terms`, got {cfg!r}")
    unknown = sorted(set(cfg) - {"terms"})
    if unknown:
        raise ConfigError(f"cost: unknown key '{unknown[0]}' (known: terms)")
    raw_terms = cfg.get("terms")
    if not isinstance(raw_terms, list) or not raw_terms:
        raise ConfigError("cost.terms: expected a non-empty list of terms")
    terms = []
    for i, raw in enumerate(raw_terms):
        where = f"cost.terms[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
        kind = raw.get("type")
        if kind not in _KEYS:
            raise ConfigError(f"{where}.type: unknown cost term {kind!r} (known: {', '.join(_KEYS)})")
        unknown = sorted(set(raw) - _COMMON - _KEYS[kind])
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}' for a {kind} term (known: {', '.join(sorted(_COMMON | _KEYS[kind]))})")
        r = _Reader(raw, where, spec, condition)
        if kind == "site_distance":
            term = _site_distance(r, scene)
        elif kind == "state":
            term = StateCost(r.distance())
        elif kind == "saturating":
            term = SaturatingCost(r.distance(), r.number("sigma", positive=True))
        elif kind == "action":
            term = _action(r)
        else:
            term = _joint_limits(r, scene)
        weight = r.number("weight", 1.0)
        if term.uses_action and "final_weight" in raw:
            r.fail("final_weight", "an action term has no terminal cost")
        final = 0.0 if term.uses_action else r.number("final_weight", weight)
        ramp = raw.get("ramp", "constant")
        if ramp not in RAMPS:
            r.fail("ramp", f"expected one of {', '.join(RAMPS)}, got {ramp!r}")
        terms.append(Weighted(term, weight, final, ramp, _term_label(i, kind, raw)))
    return Cost(spec.n, spec.m, terms)
