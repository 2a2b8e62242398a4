"""Cost terms: derivatives against finite differences, ramps, terminal costs, YAML errors."""

from __future__ import annotations

import numpy as np
import pytest

from forethought.controllers.costs import build_cost
from forethought.robots.config import ConfigError
from forethought.robots.robot import RobotSpec

SPEC = RobotSpec(
    name="toy",
    state_names=("cart", "pole", "d_cart", "d_pole"),
    action_names=("cart", "pole"),
    action_low=[-1.0, -1.0],
    action_high=[1.0, 1.0],
    dt=0.05,
)


def relative_error(a, b) -> float:
    # The floor: central differences of a derivative that vanishes leave rounding of about 1e-17.
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / max(np.linalg.norm(np.ravel(b)), 1e-10))


def numeric_derivatives(cost, x, u, h=1e-6):
    """Central differences of the value (gradients) and of the analytic gradients (Hessians) at one row."""

    def grads(x_, u_):
        d = cost.derivatives(x_[None], None if u_ is None else u_[None])
        return d.l_x[0], d.l_u[0]

    def value(x_, u_):
        return cost.value(x_[None], None if u_ is None else u_[None])[0]

    n = len(x)
    l_x = np.array([(value(x + h * e, u) - value(x - h * e, u)) / (2 * h) for e in np.eye(n)])
    l_xx = np.array([(grads(x + h * e, u)[0] - grads(x - h * e, u)[0]) / (2 * h) for e in np.eye(n)])
    if u is None:
        return l_x, None, l_xx, None, None
    m = len(u)
    l_u = np.array([(value(x, u + h * e) - value(x, u - h * e)) / (2 * h) for e in np.eye(m)])
    l_uu = np.array([(grads(x, u + h * e)[1] - grads(x, u - h * e)[1]) / (2 * h) for e in np.eye(m)])
    l_ux = np.array([(grads(x + h * e, u)[1] - grads(x - h * e, u)[1]) / (2 * h) for e in np.eye(n)]).T
    return l_x, l_u, l_xx, l_uu, l_ux


def assert_derivatives_match(cost, x, u, hessian=True):
    d = cost.derivatives(x[None], None if u is None else u[None])
    l_x, l_u, l_xx, l_uu, l_ux = numeric_derivatives(cost, x, u)
    assert relative_error(d.l_x[0], l_x) < 1e-5
    if hessian:
        assert relative_error(d.l_xx[0], l_xx) < 1e-5
    if u is not None:
        assert relative_error(d.l_u[0], l_u) < 1e-5
        if hessian:
            assert relative_error(d.l_uu[0], l_uu) < 1e-5
            if np.any(l_ux != 0):
                assert relative_error(d.l_ux[0], l_ux) < 1e-5
            else:
                assert np.all(d.l_ux[0] == 0)


TERMS = {
    "state": {"type": "state", "weights": {"cart": 2.0, "pole": 1.5, "d_pole": 0.1}, "target": {"cart": 0.3, "pole": 3.0}, "angles": ["pole"]},
    "saturating": {"type": "saturating", "weights": {"cart": 1.0, "pole": 0.7}, "target": {"pole": 3.14159}, "angles": ["pole"], "sigma": 0.6},
    "action": {"type": "action", "weights": [0.3, 0.02], "center": [0.1, -0.2]},
    "action_to_state": {"type": "action", "weights": {"cart": 0.5, "pole": 0.25}, "center": "state"},
    "joint_limits": {"type": "joint_limits", "names": ["cart", "pole"], "lower": [-0.5, -1.0], "upper": [0.5, 1.0], "margin": 0.1, "weights": [3.0, 1.0]},
}


@pytest.mark.parametrize("name", list(TERMS))
def test_term_derivatives_match_finite_differences(name):
    cost = build_cost({"terms": [TERMS[name]]}, SPEC)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.normal(scale=1.0, size=4)
        u = rng.normal(scale=0.5, size=2)
        assert_derivatives_match(cost, x, u)


def test_weighted_sum_running_and_terminal_derivatives():
    terms = [dict(TERMS[k], weight=w) for k, w in zip(TERMS, (1.0, 2.0, 0.5, 0.3, 4.0))]
    terms[0]["final_weight"] = 7.0
    cost = build_cost({"terms": terms}, SPEC)
    x, u = np.array([0.62, 2.1, -0.3, 0.4]), np.array([0.2, -0.7])
    assert_derivatives_match(cost, x, u)
    assert_derivatives_match(cost, x, None)
    singles = [build_cost({"terms": [dict(t, weight=1.0, final_weight=1.0) if t["type"] != "action" else dict(t, weight=1.0)]}, SPEC) for t in terms]
    expected = sum(t.get("weight", 1.0) * c(x, u) for t, c in zip(terms, singles))
    assert cost(x, u) == pytest.approx(expected, rel=1e-12)
    # Terminal: action terms drop out, the state term takes its final_weight.
    expected_final = 7.0 * singles[0](x, None) + 2.0 * singles[1](x, None) + 4.0 * singles[4](x, None)
    assert cost(x, None) == pytest.approx(expected_final, rel=1e-12)


def test_angle_distance_wraps_around():
    cost = build_cost({"terms": [TERMS["saturating"]]}, SPEC)
    x = np.array([0.0, 3.14159 + 0.2, 0.0, 0.0])
    assert cost(x, None) == pytest.approx(cost(x - np.array([0, 2 * np.pi, 0, 0]), None), rel=1e-12)


def test_ramps_scale_running_weights_over_the_horizon():
    T = 4
    X = np.tile(np.array([1.0, 0.0, 0.0, 0.0]), (T + 1, 1))
    U = np.zeros((T, 2))
    per_step = 0.5  # 0.5 * w * e^2 with w = 1, e = 1
    expected = {
        "constant": per_step * T,
        "linear": per_step * sum((t + 1) / T for t in range(T)),
        "quadratic": per_step * sum(((t + 1) / T) ** 2 for t in range(T)),
        "final_only": 0.0,
    }
    for ramp, running in expected.items():
        cost = build_cost({"terms": [{"type": "state", "weights": {"cart": 1.0}, "final_weight": 10.0, "ramp": ramp}]}, SPEC)
        assert cost.trajectory_costs(X, U) == pytest.approx(running + 10.0 * per_step)
        d = cost.trajectory_derivatives(X, U)
        assert d.l.sum() == pytest.approx(running + 10.0 * per_step)
        assert d.l_x[-1, 0] == pytest.approx(10.0)
    batch = cost.trajectory_costs(np.stack([X, 2 * X]), np.stack([U, U]))
    assert batch.shape == (2,) and batch[1] == pytest.approx(4 * batch[0])


def test_term_costs_split_a_trials_logged_cost():
    terms = [dict(TERMS["state"], ramp="linear", final_weight=3.0), TERMS["action"], TERMS["saturating"]]
    cost = build_cost({"terms": terms}, SPEC)
    rng = np.random.default_rng(0)
    X, U = rng.normal(size=(7, 4)), rng.normal(size=(6, 2))
    X[2] = np.nan  # a step with no finite cost is left out, as Trial.total_cost leaves it out
    # The logged cost: every running step at the full weight (a ramp belongs to planning horizons).
    logged = np.nansum([cost(x, u) for x, u in zip(X[:-1], U)] + [cost(X[-1], None)])
    parts = cost.term_costs(X, U)
    assert parts.shape == (3,) and parts.sum() == pytest.approx(logged, rel=1e-12)
    assert [w.label for w in cost.terms] == ["0 state cart, pole +1", "1 action", "2 saturating cart, pole"]


def test_condition_supplies_the_target():
    cfg = {"terms": [{"type": "state", "weights": {"cart": 1.0, "pole": 1.0}, "target": "goal"}]}
    cost = build_cost(cfg, SPEC, condition={"goal": [0.5, -0.5]})
    assert cost(np.array([0.5, -0.5, 3.0, 3.0]), None) == 0.0
    with pytest.raises(ConfigError, match=r"cost.terms\[0\].target: .*'goal'"):
        build_cost(cfg, SPEC, condition={})


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"terms": [{"type": "nope"}]}, r"cost.terms\[0\].type: unknown cost term 'nope'"),
        ({"terms": [{"type": "state", "weights": {"cart": 1.0}, "sigma": 1}]}, r"cost.terms\[0\]: unknown key 'sigma'"),
        ({"terms": [{"type": "state", "weights": {"carts": 1.0}}]}, r"cost.terms\[0\].weights: unknown state name 'carts'"),
        ({"terms": [{"type": "state", "weights": {"cart": float("nan")}}]}, r"cost.terms\[0\].weights: cart: expected a finite number"),
        ({"terms": [{"type": "action", "weights": 1.0, "final_weight": 2.0}]}, r"cost.terms\[0\].final_weight"),
        ({"terms": [{"type": "action", "center": [0.0]}]}, r"cost.terms\[0\].center: expected 2 numbers"),
        ({"terms": [{"type": "saturating", "weights": {"cart": 1.0}}]}, r"cost.terms\[0\].sigma: required"),
        ({"terms": [{"type": "state", "weights": {"cart": 1.0}, "ramp": "steep"}]}, r"cost.terms\[0\].ramp"),
        ({"terms": [{"type": "joint_limits", "names": ["cart"]}]}, r"cost.terms\[0\].lower: required without a scene"),
        ({"terms": []}, r"cost.terms: expected a non-empty list"),
        ({"term": []}, r"cost: unknown key 'term'"),
    ],
)
def test_bad_cost_configs_name_the_key(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_cost(cfg, SPEC)


def test_wrong_shapes_are_rejected():
    cost = build_cost({"terms": [TERMS["state"]]}, SPEC)
    with pytest.raises(ValueError, match=r"states must have shape \(B, 4\)"):
        cost.derivatives(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 2\)"):
        cost.value(np.zeros((2, 4)), np.zeros((2, 3)))


# -- the end-effector term, through the arm's kinematics ------------------------------------------

ARM = "so101_reach"


@pytest.fixture(scope="module")
def arm_spec():
    from forethought.sim.mujoco_robot import MujocoRobot

    return MujocoRobot(ARM).spec


@pytest.mark.parametrize("norm", ["quadratic", "smooth_abs"])
def test_site_distance_gradient_is_exact(arm_spec, norm):
    cfg = {"terms": [{"type": "site_distance", "site": "ee", "norm": norm, "smoothing": 0.02}]}
    cost = build_cost(cfg, arm_spec, ARM, {"target": [0.2, 0.05, 0.1]})
    rng = np.random.default_rng(1)
    for _ in range(4):
        x = np.concatenate([rng.uniform(-1.0, 1.0, 6), rng.normal(size=6)])
        assert_derivatives_match(cost, x, rng.normal(size=6), hessian=False)


@pytest.mark.parametrize("norm", ["quadratic", "smooth_abs"])
def test_site_distance_hessian_is_gauss_newton_and_exact_at_the_target(arm_spec, norm):
    """J^T H_r J: positive semi-definite everywhere, and the true Hessian where the residual vanishes."""
    from forethought.sim.kinematics import ArmKinematics

    kinematics = ArmKinematics(ARM, site="ee")
    index = [arm_spec.state_names.index(name) for name in kinematics.joint_names]
    q = np.array([0.3, 0.2, 0.5, 0.6, 0.1])
    x = np.zeros(arm_spec.n)
    x[index] = q
    target = kinematics.site_position(q)
    cfg = {"terms": [{"type": "site_distance", "target": "goal", "norm": norm, "smoothing": 0.02}]}
    cost = build_cost(cfg, arm_spec, ARM, {"goal": list(target)})
    assert cost(x, None) == pytest.approx(0.0, abs=1e-20)
    assert_derivatives_match(cost, x, np.zeros(arm_spec.m))
    away = x.copy()
    away[index] += 0.3
    d = cost.derivatives(away[None], None)
    J = kinematics.site_jacobian(away[index])
    r = kinematics.site_position(away[index]) - target
    s = np.sqrt(r @ r + 0.02**2)
    H_r = np.eye(3) if norm == "quadratic" else (np.eye(3) - np.outer(r, r) / s**2) / s
    np.testing.assert_allclose(d.l_xx[0][np.ix_(index, index)], J.T @ H_r @ J, atol=1e-12)
    assert np.min(np.linalg.eigvalsh(d.l_xx[0])) > -1e-12


def test_site_distance_to_a_point_in_the_state(arm_spec):
    """A target taken from the state (plus an offset): both the arm and the point get exact gradients."""
    spec = RobotSpec(
        "arm_and_point", arm_spec.state_names + ("p:x", "p:y", "p:z"), arm_spec.action_names,
        arm_spec.action_low, arm_spec.action_high, arm_spec.dt,
    )
    cfg = {"terms": [{"type": "site_distance", "target_state": ["p:x", "p:y", "p:z"], "offset": [0.0, -0.03, 0.0], "norm": "smooth_abs"}]}
    cost = build_cost(cfg, spec, ARM)
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-1, 1, 6), rng.normal(size=6), [0.2, 0.0, 0.05]])
    assert_derivatives_match(cost, x, None, hessian=False)
    nan_state = x.copy()
    nan_state[0] = np.nan
    assert np.isnan(cost.value(np.stack([x, nan_state]), None)[1])


def test_joint_limits_from_the_scene(arm_spec):
    cost = build_cost({"terms": [{"type": "joint_limits", "margin": 0.1}]}, arm_spec, ARM)
    x = np.zeros(arm_spec.n)
    assert cost(x, None) == 0.0
    x[0] = 1.91986 - 0.05  # shoulder_pan 0.05 rad into its 0.1 rad margin (its limit: 1.91986)
    assert cost(x, None) == pytest.approx(0.5 * 0.05**2)
    with pytest.raises(ConfigError, match=r"cost.terms\[0\].site: no site named 'tip'"):
        build_cost({"terms": [{"type": "site_distance", "site": "tip", "target": [0, 0, 0]}]}, arm_spec, ARM)
    with pytest.raises(ConfigError, match=r"cost.terms\[0\].type: site_distance needs a MuJoCo scene"):
        build_cost({"terms": [{"type": "site_distance", "target": [0, 0, 0]}]}, arm_spec, None)
