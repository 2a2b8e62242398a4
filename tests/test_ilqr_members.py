"""iLQR through every member of the ensemble: the stacked model steps each copy by its own member
and linearises exactly, the cost averaged over the copies has the derivatives of its value, and
the planner hands the MPC policy a plan on the real state."""

from __future__ import annotations

import numpy as np

from forethought.controllers.costs import build_cost
from forethought.controllers.ilqr_members import MeanOverCopiesCost, MembersILQRPlanner
from forethought.robots.robot import RobotSpec
from tests.test_ensemble import linearizable_model


SPEC = RobotSpec("servo", ("p", "v"), ("p",), np.array([-3.0]), np.array([3.0]), dt=0.1)


def angle_cost():
    """Over (p, v): the chord from p = 1 (an angle), velocity, a terminal weight, and an action term."""
    return build_cost({"terms": [
        {"type": "state", "weights": {"p": 2.0, "v": 0.3}, "target": {"p": 1.0}, "angles": ["p"], "final_weight": 5.0},
        {"type": "action", "weights": 0.1}]}, SPEC)


def test_member_stack_steps_each_copy_by_its_own_member_and_linearizes_it():
    model = linearizable_model()  # two elites of three members, an angle, a relative action
    stack = model.member_stack()
    assert (stack.k, stack.n, stack.m) == (2, 4, 1)
    rng = np.random.default_rng(1)
    x = np.stack([rng.uniform(-2, 2, 6), rng.uniform(-1, 1, 6)], axis=1)
    u = x[:, :1] + 0.3 * rng.standard_normal((6, 1))
    members, _ = model.predict_members(x, u)  # (k, B, n), each elite from the same state
    mean, var = stack.predict(stack.stack(x), u)
    np.testing.assert_allclose(mean.reshape(6, 2, 2).transpose(1, 0, 2), members, rtol=0, atol=1e-5)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # the members differ: the check is not vacuous
    np.testing.assert_array_equal(var, 0.0)
    # Copies apart: copy e moves from its own state.
    xs = np.concatenate([x, x[::-1]], axis=1)
    A, B, c, _ = stack.linearize(xs, u)
    assert np.abs(A[:, :2, 2:]).max() == 0.0 and np.abs(A[:, 2:, :2]).max() == 0.0  # block-diagonal
    h = 3e-3
    A_fd = np.stack([(stack.predict(xs + h * e, u)[0] - stack.predict(xs - h * e, u)[0]) / (2 * h) for e in np.eye(4)], -1)
    B_fd = ((stack.predict(xs, u + h)[0] - stack.predict(xs, u - h)[0]) / (2 * h))[..., None]
    np.testing.assert_allclose(A, A_fd, rtol=0, atol=2e-3)  # tolerance as test_ensemble's, for the same reason
    np.testing.assert_allclose(B, B_fd, rtol=0, atol=2e-3)
    assert np.abs(B).max() > 0.1
    np.testing.assert_allclose(np.einsum("bij,bj->bi", A, xs) + np.einsum("bij,bj->bi", B, u) + c,
                               stack.predict(xs, u)[0], rtol=0, atol=1e-12)


def test_cost_over_copies_is_the_members_mean_with_its_own_derivatives():
    cost = angle_cost()
    mean_cost = MeanOverCopiesCost(cost, 3)
    rng = np.random.default_rng(2)
    T = 4
    Xc = rng.normal(size=(3, T + 1, 2))
    U = rng.normal(size=(T, 1))
    X = Xc.transpose(1, 0, 2).reshape(T + 1, 6)
    expected = np.mean([cost.trajectory_costs(Xc[e], U) for e in range(3)])
    np.testing.assert_allclose(mean_cost.trajectory_costs(X, U), expected, rtol=1e-12)
    np.testing.assert_allclose(mean_cost.trajectory_costs(X[None], U[None]), [expected], rtol=1e-12)
    d = mean_cost.trajectory_derivatives(X, U)
    np.testing.assert_allclose(d.l.sum(), expected, rtol=1e-12)
    h = 1e-6
    grad_x = np.zeros_like(X)
    for idx in np.ndindex(X.shape):
        e = np.zeros_like(X)
        e[idx] = h
        grad_x[idx] = (mean_cost.trajectory_costs(X + e, U) - mean_cost.trajectory_costs(X - e, U)) / (2 * h)
    np.testing.assert_allclose(d.l_x, grad_x, rtol=1e-5, atol=1e-7)
    grad_u = np.array([(mean_cost.trajectory_costs(X, U + h * e) - mean_cost.trajectory_costs(X, U - h * e)) / (2 * h)
                       for e in np.eye(T)[:, :, None]])
    np.testing.assert_allclose(d.l_u[:T, 0], grad_u, rtol=1e-5, atol=1e-7)
    # The Hessian in x: block-diagonal, each block its copy's own over k.
    single = cost.trajectory_derivatives(Xc[1], U)
    np.testing.assert_allclose(d.l_xx[:, 2:4, 2:4], single.l_xx / 3, rtol=1e-12)
    assert np.abs(d.l_xx[:, :2, 2:]).max() == 0.0


def test_planner_through_the_members_plans_on_the_real_state():
    model = linearizable_model()
    cost = angle_cost()
    planner = MembersILQRPlanner(model.member_stack(), cost, SPEC.action_low, SPEC.action_high, horizon=8,
                                 first_iterations=20)
    x0 = np.array([0.0, 0.0])
    plan = planner.plan(x0, np.zeros((8, 1)), 0)
    assert plan.U.shape == (8, 1) and plan.X.shape == (9, 2) and plan.K.shape == (8, 1, 2)
    np.testing.assert_allclose(plan.X[0], x0)
    start = MeanOverCopiesCost(cost, 2).trajectory_costs(planner.inner.solver.rollout(np.tile(x0, 2), np.zeros((8, 1))),
                                                        np.zeros((8, 1)))
    assert plan.cost < start  # iLQR improved on holding still
