"""Cost terms: each defined once in torch; derivatives against finite differences and autograd,
the planners' float32 (and bfloat16) against float64, ramps, terminal costs, YAML errors, the registry."""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from forethought.controllers.costs import RAMPS, TERM_TYPES, Term, TrajectoryCost, Weighted, build_cost, register
from forethought.controllers.costs.term import autograd_derivatives
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
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / max(np.linalg.norm(np.ravel(b)), 1e-9))


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


def test_a_saturating_term_far_from_its_target_is_one_and_its_closeness_stays_normal():
    term = build_cost({"terms": [TERMS["saturating"]]}, SPEC).terms[0].term
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [30.0, 0.0, 0.0, 0.0], [1e6, 0.0, 0.0, 0.0]], dtype=torch.float32)
    value = term.value(x, torch.zeros(3, 2))
    assert value[1:].tolist() == [1.0, 1.0]  # exactly, as the unclamped exp's 0 or subnormal gives
    d2 = term.distance.evaluate(x)[0]
    assert torch.all(term._closeness(d2) >= torch.finfo(torch.float32).tiny)  # no subnormal: exp's slow path
    far = torch.tensor([[20.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # float64's normal range reaches exp(-708)
    assert term._closeness(term.distance.evaluate(far)[0]).item() == pytest.approx(math.exp(-400 / (2 * 0.6**2)), rel=1e-12)


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


# -- every term: one definition, its derivatives, its precisions ---------------------------------

BALL_SCENE = (
    '<mujoco><worldbody><body pos="0.1 0 0"><joint name="swivel" type="ball" pos="0 0 0.05"/><geom size="0.05"/>'
    '<body pos="0 0 0.2"><joint name="hinge" axis="0 1 0" pos="0 0.1 0"/><geom size="0.03"/>'
    '<site name="ee" pos="0 0 0.2"/></body></body></worldbody>'
    '<keyframe><key name="home" qpos="0.9 0.3 0.2 0.1 0.4"/></keyframe></mujoco>'
)
FREE_SCENE = (
    '<mujoco><worldbody><body pos="0.1 0 0" quat="0.9 0.1 0 0.3"><freejoint name="base"/><geom size="0.05"/>'
    '<body pos="0 0 0.2"><joint name="hinge" axis="0 1 1" ref="0.3"/><joint name="slide" type="slide" axis="1 0 0"/>'
    '<geom size="0.03"/><site name="ee" pos="0 0 0.2"/></body></body></worldbody>'
    '<keyframe><key name="home" qpos="0.3 0.2 0.5 0.9 0.3 0.2 0.1 0.4 0.1"/></keyframe></mujoco>'
)


@functools.lru_cache(maxsize=None)
def setting(name: str):
    """(spec, scene) of a case's robot: the toy cart-pole, an arm scene, or a small chain through a
    ball or free joint (written to a temporary MJCF file)."""
    from forethought.sim.mujoco_robot import MujocoRobot

    if name == "toy":
        return SPEC, None
    if name in ("so101_reach", "so101_push"):
        with MujocoRobot(name) as robot:
            return robot.spec, name
    path = Path(tempfile.mkdtemp()) / f"{name}.xml"
    path.write_text(BALL_SCENE if name == "ball" else FREE_SCENE)
    joints = ("hinge",) if name == "ball" else ("hinge", "slide")
    spec = RobotSpec(name, joints + tuple(f"d_{j}" for j in joints), ("u",), [-1.0], [1.0], 0.02)
    return spec, str(path)


PUSH_TERM = {"type": "site_distance", "site": "ee", "target_state": ["block:x", "block:y", "block:z"],
             "offset": [-0.01, 0.044, 0.0], "norm": "smooth_abs", "smoothing": 0.01}
# (robot, term, condition): every registered term type, each of its forms.
CASES = {
    "state": ("toy", TERMS["state"], None),
    "state_plain": ("toy", {"type": "state", "weights": {"cart": 0.5, "d_cart": 0.1}, "target": {"cart": 0.2}}, None),
    "saturating": ("toy", TERMS["saturating"], None),
    "action": ("toy", TERMS["action"], None),
    "action_to_state": ("toy", TERMS["action_to_state"], None),
    "joint_limits": ("toy", TERMS["joint_limits"], None),
    "site_quadratic": ("so101_reach", {"type": "site_distance", "target": "target"}, {"target": [0.2, 0.05, 0.12]}),
    "site_smooth_abs": ("so101_reach", {"type": "site_distance", "norm": "smooth_abs", "smoothing": 0.02}, {"target": [0.2, 0.05, 0.12]}),
    "site_behind_block": ("so101_push", PUSH_TERM, None),
    "site_ball_joint": ("ball", {"type": "site_distance", "target": [0.1, 0.0, 0.3]}, None),
    "site_free_joint": ("free", {"type": "site_distance", "target": [0.1, 0.0, 0.3], "norm": "smooth_abs"}, None),
}
GAUSS_NEWTON = {"site_distance"}  # terms whose Hessian is not the exact one (their docstring says so)


def case_cost(name: str, **weights):
    robot, term, condition = CASES[name]
    spec, scene = setting(robot)
    return build_cost({"terms": [dict(term, **weights)]}, spec, scene, condition), spec


def case_points(spec, count: int, seed: int = 0):
    """States and actions in the ranges the cases live in: joints within about a radian, the block
    near the hand (m), velocities and actions of order one."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (count, spec.n))
    for i, name in enumerate(spec.state_names):
        if name in ("block:x", "block:y", "block:z"):
            x[:, i] = {"x": 0.2, "y": 0.0, "z": 0.03}[name[-1]] + rng.uniform(-0.05, 0.05, count)
    return x, rng.uniform(-1.0, 1.0, (count, spec.m))


def test_every_registered_term_type_has_cases():
    assert {term["type"] for _, term, _ in CASES.values()} == set(TERM_TYPES)


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_matches_finite_differences(name):
    cost, spec = case_cost(name)
    x, u = case_points(spec, 3, seed=1)
    exact_hessian = CASES[name][1]["type"] not in GAUSS_NEWTON
    for xb, ub in zip(x, u):
        assert_derivatives_match(cost, xb, ub, hessian=exact_hessian)
        assert_derivatives_match(cost, xb, None, hessian=exact_hessian)


@pytest.mark.parametrize("name", list(CASES))
def test_analytic_derivatives_equal_autograd_through_the_value(name):
    """Each term's own derivatives against torch.func's through its `value`; l is the value itself,
    bit for bit (the same code computes it)."""
    cost, spec = case_cost(name)
    term = cost.terms[0].term
    points = case_points(spec, 6, seed=2)
    cost.derivatives(*points)  # first met in the Cost's inference mode: its tensors stay usable by autograd
    x, u = (torch.from_numpy(a) for a in points)
    ours, auto = term.derivatives(x, u), autograd_derivatives(term, x, u)
    assert torch.equal(ours.l, term.value(x, u))
    for field in ("l", "l_x", "l_u") + (() if term.name in GAUSS_NEWTON else ("l_xx", "l_uu", "l_ux")):
        mine = getattr(ours, field)
        if mine is None:  # a term that does not read the action leaves its action blocks out
            assert not term.uses_action and not getattr(auto, field).any()
            continue
        torch.testing.assert_close(mine, getattr(auto, field), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ramp", RAMPS)
@pytest.mark.parametrize("name", list(CASES))
def test_planner_float32_totals_equal_float64_for_every_term_and_ramp(name, ramp):
    weights = {"weight": 2.0, "ramp": ramp}
    if CASES[name][1]["type"] != "action":
        weights["final_weight"] = 7.0
    cost, spec = case_cost(name, **weights)
    B, H = 16, 6
    x, u = case_points(spec, B * (H + 1), seed=3)
    X, U = x.reshape(B, H + 1, spec.n), u[: B * H].reshape(B, H, spec.m)
    expected = cost.trajectory_costs(X, U)
    got = TrajectoryCost(cost)(torch.tensor(X, dtype=torch.float32), torch.tensor(U, dtype=torch.float32))
    assert got.dtype == torch.float32 and got.shape == (B,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-6, atol=1e-6 * np.abs(expected).max())
    # The trajectory totals are the rows' weighted values: running at t < H with the ramp, terminal at H.
    rows = sum(cost.value(X[:, t], U[:, t], np.full(B, t), H) for t in range(H)) + cost.value(X[:, H], None)
    np.testing.assert_allclose(expected, rows, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", list(CASES))
def test_terms_take_any_batch_shape_and_bfloat16(name):
    cost, spec = case_cost(name)
    term = cost.terms[0].term
    x, u = case_points(spec, 24, seed=4)
    exact = term.value(torch.from_numpy(x), torch.from_numpy(u)).numpy()
    one = term.value(torch.from_numpy(x[5]), torch.from_numpy(u[5]))
    assert one.shape == () and float(one) == exact[5]
    shaped = term.value(torch.tensor(x, dtype=torch.float32).view(2, 3, 4, -1), torch.tensor(u, dtype=torch.float32).view(2, 3, 4, -1))
    assert shaped.shape == (2, 3, 4) and shaped.dtype == torch.float32
    np.testing.assert_allclose(shaped.reshape(-1).numpy(), exact, rtol=1e-5, atol=1e-6 * np.abs(exact).max())
    half = term.value(torch.tensor(x, dtype=torch.bfloat16), torch.tensor(u, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: a few parts in a hundred after a handful of operations.
    np.testing.assert_allclose(half.float().numpy(), exact, rtol=0.05, atol=0.02 * np.abs(exact).max())


def test_a_diverged_prediction_costs_nan_for_the_planner():
    cost, spec = case_cost("site_quadratic")
    x, u = case_points(spec, 4 * 4, seed=5)
    X = torch.tensor(x.reshape(4, 4, spec.n), dtype=torch.float32)
    U = torch.tensor(u[:12].reshape(4, 3, spec.m), dtype=torch.float32)
    X[2, 1, 0] = float("nan")
    got = TrajectoryCost(cost)(X, U).numpy()
    assert np.isnan(got[2]) and np.all(np.isfinite(np.delete(got, 2)))


@pytest.mark.parametrize("robot", ["ball", "free"])
def test_a_site_behind_a_ball_or_free_joint_is_where_mujoco_puts_it(robot):
    """The joint is held at the scene's reference pose, as ArmKinematics holds it."""
    from forethought.sim.kinematics import ArmKinematics

    spec, scene = setting(robot)
    cost, _ = case_cost(f"site_{robot}_joint")
    kinematics = ArmKinematics(scene)
    x, u = case_points(spec, 5, seed=6)
    target = np.array([0.1, 0.0, 0.3])
    r = kinematics.site_positions(x[:, : kinematics.k]) - target
    expected = 0.5 * np.sum(r * r, axis=1) if robot == "ball" else np.sqrt(np.sum(r * r, axis=1) + 0.01**2) - 0.01
    np.testing.assert_allclose(cost.value(x, u), expected, rtol=1e-12)


# -- the schedule and the registry -------------------------------------------------------------------


def test_one_schedule_gives_every_consumer_its_weights():
    cost = build_cost({"terms": [{"type": "state", "weights": {"cart": 1.0}, "weight": 2.0, "final_weight": 5.0, "ramp": "linear"},
                                 dict(TERMS["action"], weight=3.0)]}, SPEC)
    state, action = cost.terms
    H = 4
    np.testing.assert_allclose(state.step_weights(H), [0.5, 1.0, 1.5, 2.0, 5.0])
    np.testing.assert_allclose(action.step_weights(H), [3.0, 3.0, 3.0, 3.0, 0.0])
    assert [state.scale(t, H) for t in range(H + 1)] == list(state.step_weights(H))
    assert state.running_scale(None, None) == 2.0  # no horizon: the full running weight
    with pytest.raises(ValueError, match="no terminal cost"):
        Weighted(action.term, 1.0, 2.0)
    with pytest.raises(ValueError, match="ramp must be one of"):
        Weighted(state.term, ramp="steep")


@pytest.fixture
def toy_term_type():
    """A term type added as a new module would add it: a class with `value` and `from_config`,
    registered by its decorator; its derivatives come from autograd."""

    @register("test_quartic", keys=("gain",))
    class Quartic(Term):
        uses_action = True

        def __init__(self, gain: float):
            self.gain = gain

        def value(self, x, u):
            return self.gain * (x[..., 0] * u[..., 0]) ** 2 + torch.cos(x[..., 1]) ** 4

        @classmethod
        def from_config(cls, r, scene):
            return cls(r.number("gain", 1.0))

    yield Quartic
    del TERM_TYPES["test_quartic"]


def test_a_registered_term_type_is_read_differentiated_and_planned_with(toy_term_type):
    cfg = {"terms": [{"type": "test_quartic", "gain": 0.7}]}
    cost = build_cost(cfg, SPEC)
    assert isinstance(cost.terms[0].term, toy_term_type) and cost.terms[0].label == "0 test_quartic"
    x, u = np.array([0.3, -0.4, 0.1, 0.2]), np.array([0.8, -0.5])
    assert cost(x, u) == pytest.approx(0.7 * (0.3 * 0.8) ** 2 + np.cos(-0.4) ** 4)
    assert_derivatives_match(cost, x, u)
    assert cost(x, None) == 0.0  # it reads the action: a running cost only
    X, U = np.random.default_rng(7).normal(size=(3, 5, 4)), np.random.default_rng(8).normal(size=(3, 4, 2))
    np.testing.assert_allclose(TrajectoryCost(cost)(torch.tensor(X, dtype=torch.float32), torch.tensor(U, dtype=torch.float32)).numpy(),
                               cost.trajectory_costs(X, U), rtol=1e-5)
    with pytest.raises(ConfigError, match=r"cost.terms\[0\].gain: expected a finite number"):
        build_cost({"terms": [{"type": "test_quartic", "gain": "big"}]}, SPEC)
    with pytest.raises(ConfigError, match=r"cost.terms\[0\]: unknown key 'sigma' for a test_quartic term"):
        build_cost({"terms": [{"type": "test_quartic", "sigma": 1.0}]}, SPEC)
    with pytest.raises(ValueError, match="registered twice"):
        register("test_quartic")(toy_term_type)


def test_the_distance_takes_chords_for_angles_and_squares_for_the_rest():
    from forethought.controllers.costs.distance import WeightedDistance

    # Entries 0 and 2 plain, 1 and 3 angles (not consecutive: the in-place write goes by index).
    distance = WeightedDistance([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0], [0.5, np.pi, 0.0, 0.0], [False, True, False, True])
    x = torch.tensor([[1.5, -np.pi, 2.0, 0.3], [0.5, 1e20, 0.0, 0.0]], dtype=torch.float32)
    d2, _, _ = distance.evaluate(x)
    expected = 1.0 * 1.0 + 2.0 * 2 * (1 - np.cos(-2 * np.pi)) + 3.0 * 4.0 + 4.0 * 2 * (1 - np.cos(0.3))
    assert float(d2[0]) == pytest.approx(expected, rel=1e-6)
    # A huge but finite angle error is a bounded chord, not a square that overflows float32.
    assert torch.isfinite(d2[1]) and float(d2[1]) <= 2.0 * 2 * 2 + 1e-6
    assert torch.isnan(distance.evaluate(torch.tensor([[0.0, float("inf"), 0.0, 0.0]]))[0]).all()


@pytest.mark.parametrize("name", list(CASES))
def test_a_value_without_autograd_is_the_value_with_it_bit_for_bit(name):
    # Without autograd (a planner's batches) the distance and the saturating closeness run in place.
    cost, spec = case_cost(name)
    x, u = case_points(spec, 2000, seed=3)
    x, u = torch.tensor(x, dtype=torch.float32).view(50, 40, -1), torch.tensor(u, dtype=torch.float32).view(50, 40, -1)
    x[0, 0, 0] = float("nan")
    for w in cost.terms:
        with torch.no_grad():
            planned = w.term.value(x, u)
        tracked = w.term.value(x.clone().requires_grad_(), u)
        same = (planned == tracked.detach()) | (torch.isnan(planned) & torch.isnan(tracked.detach()))
        assert same.all(), name


def test_a_parameter_subtracted_over_a_batch_is_the_plain_subtraction_bit_for_bit():
    from forethought.controllers.costs.distance import WeightedDistance

    distance = WeightedDistance([0, 2, 3], [1.0, 1.0, 1.0], [0.3, -1.7, 2.9], [False, False, True])
    g = torch.Generator().manual_seed(0)
    for shape in [(4,), (5, 4), (1, 4), (3, 7, 4), (2, 3, 6, 4), (0, 7, 4)]:  # an empty batch too
        x = torch.randn(*shape, generator=g) * 10
        taken = distance.take(x, "index")  # a gather: the entries are not consecutive
        (target,) = distance.tensors(x, "target")
        assert torch.equal(distance.difference(taken, "target"), taken - target)
        view = x[..., 1:4]  # a strided view
        assert torch.equal(distance.difference(view, "target"), view - target)
    # The tiled target is kept per number of rows, and the derivatives (autograd, vmap) go through it.
    x = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    d2, _ = distance._value(x)
    (gradient,) = torch.autograd.grad(d2.sum(), x)
    e = (x.detach()[:, [0, 2, 3]] - torch.tensor([0.3, -1.7, 2.9], dtype=torch.float64))
    expected = torch.stack([2 * e[:, 0], 2 * e[:, 1], 2 * torch.sin(e[:, 2])], dim=1)
    assert torch.allclose(gradient[:, [0, 2, 3]], expected) and not gradient[:, 1].any()
