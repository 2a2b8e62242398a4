"""LQR backward pass, box QP and iLQR: the DARE gain, monotone cost, exact bounds, clear failures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from forethought.controllers.costs import CostDerivatives, build_cost
from forethought.controllers import ilqr as ilqr_module
from forethought.controllers.box_qp import box_qp
from forethought.controllers.ilqr import ILQR, DivergenceError, ILQRConfig, lqr_backward
from forethought.controllers.linear_gaussian import LinearGaussianPolicy
from forethought.models.dynamics_model import MissingCapability
from forethought.robots.robot import RobotSpec


class LinearModel:
    """x' = A x + B u + c, batched."""

    def __init__(self, A, B, c=None):
        self.A, self.B = np.asarray(A), np.asarray(B)
        self.c = np.zeros(len(A)) if c is None else np.asarray(c)

    def predict(self, x, u):
        mean = x @ self.A.T + u @ self.B.T + self.c
        return mean, np.zeros_like(mean)

    def linearize(self, x, u):
        T, n = x.shape
        return (np.broadcast_to(self.A, (T, n, n)), np.broadcast_to(self.B, (T, n, u.shape[1])),
                np.broadcast_to(self.c, (T, n)), np.zeros((T, n, n)))


class Pendulum:
    """Torque-driven pendulum, theta = 0 hanging; semi-implicit Euler at dt; analytic Jacobians."""

    dt, g_l, damping = 0.05, 9.81, 0.1

    def predict(self, x, u):
        th, w = x[:, 0], x[:, 1]
        w_next = w + self.dt * (-self.g_l * np.sin(th) - self.damping * w + u[:, 0])
        mean = np.stack([th + self.dt * w_next, w_next], axis=1)
        return mean, np.zeros_like(mean)

    def linearize(self, x, u):
        T, dt = len(x), self.dt
        dw_dth = -dt * self.g_l * np.cos(x[:, 0])
        dw_dw = 1.0 - dt * self.damping
        A = np.empty((T, 2, 2))
        A[:, 1, 0], A[:, 1, 1] = dw_dth, dw_dw
        A[:, 0, 0], A[:, 0, 1] = 1.0 + dt * dw_dth, dt * dw_dw
        B = np.empty((T, 2, 1))
        B[:, 1, 0], B[:, 0, 0] = dt, dt * dt
        return A, B, np.zeros((T, 2)), np.zeros((T, 2, 2))


PENDULUM_SPEC = RobotSpec("pendulum", ("theta", "d_theta"), ("torque",), [-3.0], [3.0], Pendulum.dt)
PENDULUM_COST = {
    "terms": [
        {"type": "state", "weights": {"theta": 1.0, "d_theta": 0.1}, "target": {"theta": 3.14159265}, "angles": ["theta"], "final_weight": 1000.0},
        {"type": "action", "weights": 0.01},
    ]
}


def quadratic_derivatives(Q, R, T, Q_final=None) -> CostDerivatives:
    n, m = len(Q), len(R)
    d = CostDerivatives.zeros(T + 1, n, m)
    d.l_xx[:] = Q
    d.l_uu[:T] = R
    if Q_final is not None:
        d.l_xx[T] = Q_final
    return d


def test_first_gain_equals_the_infinite_horizon_lqr_gain():
    rng = np.random.default_rng(3)
    n, m, T = 4, 2, 400
    A = np.eye(n) + 0.1 * rng.normal(size=(n, n))
    B = 0.2 * rng.normal(size=(n, m))
    Q = np.diag([1.0, 2.0, 0.5, 0.1])
    R = np.array([[0.3, 0.05], [0.05, 0.2]])
    back = lqr_backward(np.broadcast_to(A, (T, n, n)), np.broadcast_to(B, (T, n, m)), quadratic_derivatives(Q, R, T))
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K_inf = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    assert np.max(np.abs(back.K[0] - K_inf)) < 1e-6
    assert np.max(np.abs(back.V_xx[0] - P)) < 1e-6 * np.max(np.abs(P))
    np.testing.assert_allclose(back.Q_uu[0], R + B.T @ P @ B, rtol=1e-9)
    np.testing.assert_allclose(back.Q_uu_inv[0] @ back.Q_uu[0], np.eye(m), atol=1e-12)


def _riccati_reference(A, B, c, d: CostDerivatives, mu: float):
    """The unbounded recursion in its textbook form (Q_x, Q_u, Q_xx, Q_uu, Q_ux per step), plainly."""
    T, n, m = B.shape
    V_x, V_xx = d.l_x[T].copy(), d.l_xx[T].copy()
    K, k = np.empty((T, m, n)), np.empty((T, m))
    for t in range(T - 1, -1, -1):
        V_c = V_x + V_xx @ c[t]  # the affine term moves the expansion point of the value
        Q_x, Q_u = d.l_x[t] + A[t].T @ V_c, d.l_u[t] + B[t].T @ V_c
        Q_xx = d.l_xx[t] + A[t].T @ V_xx @ A[t]
        Q_uu = d.l_uu[t] + B[t].T @ V_xx @ B[t]
        Q_ux = d.l_ux[t] + B[t].T @ V_xx @ A[t]
        H = Q_uu + mu * np.eye(m)
        K[t], k[t] = -np.linalg.solve(H, Q_ux), -np.linalg.solve(H, Q_u)
        V_x = Q_x + K[t].T @ Q_uu @ k[t] + K[t].T @ Q_u + Q_ux.T @ k[t]
        V_xx = Q_xx + K[t].T @ Q_uu @ K[t] + K[t].T @ Q_ux + Q_ux.T @ K[t]
        V_xx = 0.5 * (V_xx + V_xx.T)
    return K, k, V_x, V_xx


@pytest.mark.parametrize("seed", range(3))
def test_compiled_recursion_matches_the_textbook_one_with_affine_terms_and_cross_costs(seed):
    rng = np.random.default_rng(seed)
    T, n, m = 12, 5, 3
    A = np.eye(n) + 0.1 * rng.normal(size=(T, n, n))
    B = 0.3 * rng.normal(size=(T, n, m))
    c = 0.1 * rng.normal(size=(T, n))
    M = rng.normal(size=(T + 1, n, n))
    l_xx = M @ np.swapaxes(M, 1, 2) + 0.1 * np.eye(n)
    l_uu = np.tile(0.5 * np.eye(m), (T + 1, 1, 1))
    d = CostDerivatives(np.zeros(T + 1), rng.normal(size=(T + 1, n)), rng.normal(size=(T + 1, m)),
                        l_xx, l_uu, 0.05 * rng.normal(size=(T + 1, m, n)))
    back = lqr_backward(A, B, d, c, regularization=0.2)
    K, k, V_x0, V_xx0 = _riccati_reference(A, B, c, d, 0.2)
    np.testing.assert_allclose(back.K, K, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(back.k, k, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(back.V_x[0], V_x0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(back.V_xx[0], V_xx0, rtol=1e-9, atol=1e-12)


def test_an_indefinite_q_uu_names_its_step_and_regularisation_cures_it():
    rng = np.random.default_rng(4)
    T, n, m = 10, 3, 2
    A, B = np.tile(np.eye(n), (T, 1, 1)), 0.1 * rng.normal(size=(T, n, m))
    d = quadratic_derivatives(np.eye(n), np.eye(m), T)
    d.l_uu[6] = np.diag([1.0, -0.5])  # Q_uu at step 6 has a negative eigenvalue (B^T V B is small)
    with pytest.raises(ilqr_module.BackwardPassError) as failed:
        lqr_backward(A, B, d, regularization=0.0)
    assert failed.value.t == 6
    back = lqr_backward(A, B, d, regularization=1.0)
    assert np.all(np.linalg.eigvalsh(back.Q_uu) > 0)


def test_box_qp_meets_the_kkt_conditions():
    rng = np.random.default_rng(0)
    for trial in range(50):
        m = int(rng.integers(1, 7))
        M = rng.normal(size=(m, m))
        H = M @ M.T + 0.1 * np.eye(m)
        g = 3.0 * rng.normal(size=m)
        low, high = -rng.uniform(0.05, 1.0, m), rng.uniform(0.05, 1.0, m)
        result = box_qp(H, g, low, high, x0=rng.normal(size=m))
        x, grad = result.x, g + H @ result.x
        assert np.all(x >= low) and np.all(x <= high)
        at_low, at_high = x <= low, x >= high
        inside = ~(at_low | at_high)
        assert np.all(np.abs(grad[inside]) < 1e-6)
        assert np.all(grad[at_low] >= -1e-9) and np.all(grad[at_high] <= 1e-9)
        np.testing.assert_allclose(result.H_free_inv, np.linalg.inv(H[np.ix_(result.free, result.free)]), atol=1e-9)


def test_bounded_lqr_holds_the_bounds_without_clipping():
    """A bound-active linear problem: iLQR's actions stay inside the box and its cost beats clipping."""
    A = np.array([[1.0, 0.1], [0.0, 1.0]])
    B = np.array([[0.005], [0.1]])
    spec = RobotSpec("double_integrator", ("p", "v"), ("a",), [-1.0], [1.0], 0.1)
    cost = build_cost({"terms": [{"type": "state", "weights": {"p": 1.0, "v": 0.1}, "final_weight": 50.0}, {"type": "action", "weights": 0.001}]}, spec)
    model = LinearModel(A, B)
    solver = ILQR(model, cost, spec.action_low, spec.action_high, ILQRConfig(max_iterations=50))
    x0 = np.array([3.0, 0.0])
    result = solver.solve(x0, np.zeros((40, 1)))
    assert np.all(result.U >= -1.0) and np.all(result.U <= 1.0)
    assert np.sum(np.abs(result.U) == 1.0) >= 5  # the bound is active for a while
    unbounded = ILQR(model, cost, [-np.inf], [np.inf]).solve(x0, np.zeros((40, 1)))
    clipped = np.clip(unbounded.U, -1.0, 1.0)
    assert result.cost < float(cost.trajectory_costs(solver.rollout(x0, clipped), clipped)) - 1e-3


@pytest.mark.parametrize("seed", range(5))
def test_each_steps_feed_forward_is_the_box_qp_of_its_q_function(seed):
    """With bounds that bind at some steps and not at others, every step's feed-forward solves the
    box QP of the Q-function that the value after it gives (Q_u = l_u + B^T V_x', Q_uu = l_uu +
    B^T V_xx' B), whether or not its bounds bind, and the free flags say which bind."""
    rng = np.random.default_rng(seed)
    T, n, m = 15, 4, 2
    A = np.eye(n) + 0.1 * rng.normal(size=(T, n, n))
    B = 0.2 * rng.normal(size=(T, n, m))
    cost = CostDerivatives(np.zeros(T + 1), 3.0 * rng.normal(size=(T + 1, n)), rng.normal(size=(T + 1, m)),
                           np.tile(np.eye(n), (T + 1, 1, 1)), np.tile(0.1 * np.eye(m), (T + 1, 1, 1)),
                           np.zeros((T + 1, m, n)))
    low, high = -rng.uniform(0.5, 8.0, size=(T, m)), rng.uniform(0.5, 8.0, size=(T, m))
    back = lqr_backward(A, B, cost, None, 1e-3, low, high)
    assert 0 < np.sum(~back.free.all(axis=1)) < T  # some steps clamp, others do not
    for t in range(T):
        Q_u = cost.l_u[t] + B[t].T @ back.V_x[t + 1]
        Q_uu = cost.l_uu[t] + B[t].T @ back.V_xx[t + 1] @ B[t] + 1e-3 * np.eye(m)
        np.testing.assert_allclose(back.Q_uu[t], Q_uu, rtol=1e-10, atol=1e-10)
        expected = box_qp(Q_uu, Q_u, low[t], high[t])
        np.testing.assert_allclose(back.k[t], expected.x, rtol=1e-8, atol=1e-10)
        np.testing.assert_array_equal(back.free[t], expected.free)


def test_ilqr_swings_a_pendulum_up_with_monotone_cost_and_exact_bounds():
    cost = build_cost(PENDULUM_COST, PENDULUM_SPEC)
    solver = ILQR(Pendulum(), cost, [-3.0], [3.0], ILQRConfig(max_iterations=200))
    result = solver.solve(np.array([0.1, 0.0]), np.zeros((100, 1)))  # not exactly hanging: a stationary point
    accepted = [r["cost"] for r in result.iterations if r["accepted"]]
    assert len(accepted) > 5
    assert all(b <= a for a, b in zip(accepted, accepted[1:]))
    assert result.cost == pytest.approx(accepted[-1])
    assert np.all(np.abs(result.U) <= 3.0) and np.max(np.abs(result.U)) == 3.0  # gravity needs more: the swing pumps
    theta = result.X[-1, 0]
    assert abs(np.arctan2(np.sin(theta - np.pi), np.cos(theta - np.pi))) < 0.05
    # The policy reproduces the nominal trajectory on the model, and carries the LQG covariance.
    policy = result.policy
    assert isinstance(policy, LinearGaussianPolicy)
    x = result.X[0]
    for t in range(len(result.U)):
        x = Pendulum().predict(x[None], np.clip(policy.act(x, t), -3, 3)[None])[0][0]
    np.testing.assert_allclose(x, result.X[-1], atol=1e-8)
    np.testing.assert_allclose(policy.covariance[0], np.linalg.inv(result.backward.Q_uu[0]))
    for key in ("cost", "expected_reduction", "step", "regularization"):
        assert all(key in r for r in result.iterations)


def test_a_model_without_linearize_is_refused():
    class PredictOnly:
        def predict(self, x, u):
            return x, np.zeros_like(x)

    cost = build_cost(PENDULUM_COST, PENDULUM_SPEC)
    with pytest.raises(MissingCapability, match="iLQR needs a model with `linearize`, and PredictOnly has none"):
        ILQR(PredictOnly(), cost, [-3.0], [3.0])


def test_nan_rollouts_raise_divergence_and_nan_steps_are_never_accepted():
    class Exploding(Pendulum):
        def predict(self, x, u):
            mean, var = super().predict(x, u)
            mean[np.abs(u[:, 0]) > 1.0] = np.nan  # a large torque "breaks" the model
            return mean, var

    cost = build_cost(PENDULUM_COST, PENDULUM_SPEC)
    solver = ILQR(Exploding(), cost, [-3.0], [3.0], ILQRConfig(max_iterations=30))
    with pytest.raises(DivergenceError, match="initial rollout"):
        solver.solve(np.zeros(2), np.full((40, 1), 2.0))
    result = solver.solve(np.zeros(2), np.zeros((40, 1)))
    assert np.all(np.isfinite(result.X)) and np.isfinite(result.cost)
    assert np.all(np.abs(result.U) <= 1.0)


def test_linear_gaussian_policy_noise_is_seeded():
    T, m, n = 5, 2, 3
    cov = np.broadcast_to(0.1 * np.eye(m), (T, m, m))
    policy = LinearGaussianPolicy(np.zeros((T, m, n)), np.ones((T, m)), covariance=cov, stochastic=True, seed=4)
    first = [policy.act(np.zeros(n), t) for t in range(T)]
    policy.reset()
    assert np.array_equal(first, [policy.act(np.zeros(n), t) for t in range(T)])
    with pytest.raises(ValueError, match="covers steps 0..4, asked for step 5"):
        policy.act(np.zeros(n), 5)


def test_affine_dynamics_give_the_exact_optimum_in_absolute_coordinates():
    """With c_t and the cost expanded about 0 (as guided policy search uses it), the gains' rollout
    equals the minimiser of the total cost found directly by least squares."""
    rng = np.random.default_rng(4)
    n, m, T = 3, 2, 6
    A = np.eye(n) + 0.2 * rng.normal(size=(T, n, n))
    B = rng.normal(size=(T, n, m))
    c = rng.normal(size=(T, n))
    Q, R = np.diag([1.0, 0.5, 2.0]), np.diag([0.3, 0.1])
    target = np.array([1.0, -1.0, 0.5])
    d = quadratic_derivatives(Q, R, T, Q_final=5 * Q)
    d.l_x[:T], d.l_x[T] = -Q @ target, -5 * Q @ target  # 0.5 (x - target)' Q (x - target), expanded at 0
    back = lqr_backward(A, B, d, c=c)
    x0 = rng.normal(size=n)
    xs, us = [x0], []
    for t in range(T):
        us.append(back.K[t] @ xs[-1] + back.k[t])
        xs.append(A[t] @ xs[-1] + B[t] @ us[-1] + c[t])
    # x_t = F_t x0 + G_t U + h_t, stacked, then one least-squares problem in U.
    F, G, h = [np.eye(n)], [np.zeros((n, T * m))], [np.zeros(n)]
    for t in range(T):
        F.append(A[t] @ F[-1])
        Gt = A[t] @ G[-1]
        Gt[:, t * m : (t + 1) * m] += B[t]
        G.append(Gt)
        h.append(A[t] @ h[-1] + c[t])
    rows, rhs = [], []
    for t in range(1, T + 1):
        W = np.sqrt(5 * Q if t == T else Q)
        rows.append(W @ G[t])
        rhs.append(W @ (target - F[t] @ x0 - h[t]))
    rows.append(np.kron(np.eye(T), np.sqrt(R)))
    rhs.append(np.zeros(T * m))
    U_best = np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)[0]
    np.testing.assert_allclose(np.concatenate(us), U_best, atol=1e-9)


@pytest.mark.parametrize("budget, iterations", [(0.035, 3), (0.005, 1)])
def test_time_budget_stops_before_an_iteration_that_would_overrun_it(fake_clock, budget, iterations):
    clock = fake_clock.install(ilqr_module)
    cost = build_cost(PENDULUM_COST, PENDULUM_SPEC)
    solver = ILQR(Pendulum(), cost, [-3.0], [3.0], ILQRConfig(max_iterations=500))
    backward = solver._backward

    def slow_backward(*args):
        clock.advance(0.01)  # 10 ms per iteration on the solver's clock, nothing else takes time
        return backward(*args)

    solver._backward = slow_backward
    result = solver.solve(np.array([0.1, 0.0]), np.zeros((100, 1)), time_budget_s=budget)
    # 0.035 s: after 2 iterations (20 ms) a third fits, after 3 (30 ms) a fourth would not.
    # 0.005 s: shorter than one iteration, and one always runs.
    assert result.stop == "time budget" and len(result.iterations) == iterations
