"""iLQR / LQG on any model that can be linearised: the LQR backward pass, box-constrained DDP, the solver.

`lqr_backward` is the Riccati recursion for a time-varying linear system with a quadratic cost
expansion, as a pure function (guided policy search reuses it with its KL-augmented cost); its
per-step loop is compiled (controllers/riccati_steps.py). Action
bounds enter as in box-constrained DDP (Tassa, Mansard and Todorov 2014): at every step the
feed-forward term solves the box-constrained QP on the Q-function (controllers/box_qp.py)
and the feedback gains act on the free actions only, so the solution respects the bounds
instead of being clipped after the fact.

`ILQR` iterates linearise -> backward pass -> line search, with Levenberg-Marquardt regularisation
(mu added to Q_uu; raised when Q_uu is not positive definite or no step is accepted, lowered after
each accepted one), a backtracking line search over step sizes that accepts a step only when the
cost drops and the actual reduction is at least `min_reduction_ratio` of the one the quadratic
model expects, and stopping on small relative improvement, small feed-forward (gradient), no
expected reduction, the regulariser passing its maximum, a time budget or the iteration cap.
A rollout that turns NaN is never accepted; a NaN initial rollout raises DivergenceError. Its result is a `LinearGaussianPolicy` with covariance inv(Q_uu): the LQG policy
that guided policy search needs (with additive process noise the gains are those of the
noise-free problem, by certainty equivalence).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from forethought.controllers.box_qp import box_qp
from forethought.controllers.costs import Cost, CostDerivatives
from forethought.controllers.linear_gaussian import LinearGaussianPolicy
from forethought.controllers.riccati_steps import NOT_POSITIVE_DEFINITE, OUTSIDE_BOUNDS, riccati_sweep, value_step
from forethought.models.dynamics_model import require


class BackwardPassError(ArithmeticError):
    """Q_uu was not positive definite at step `t` (raise the regularisation and retry)."""

    def __init__(self, t: int):
        super().__init__(f"Q_uu is not positive definite at step {t}")
        self.t = t


class DivergenceError(RuntimeError):
    """A trajectory optimisation cannot go on: the rollout or its cost is NaN or infinite."""


# -- The backward pass -------------------------------------------------------------------------


@dataclass
class BackwardPass:
    """Gains and value function of one backward pass.

    K (T, m, n), k (T, m): du = k_t + K_t dx; Q_uu (T, m, m) as regularised and used for the
    gains, Q_uu_inv its inverse (the LQG covariance); V_x (T+1, n), V_xx (T+1, n, n);
    expected: (dV1, dV2) so that a step of size alpha is expected to change the cost by
    alpha dV1 + alpha^2 dV2; free (T, m): actions not held at a bound.
    """

    K: np.ndarray
    k: np.ndarray
    Q_uu: np.ndarray
    Q_uu_inv: np.ndarray
    V_x: np.ndarray
    V_xx: np.ndarray
    expected: tuple[float, float]
    free: np.ndarray


def lqr_backward(
    A,
    B,
    cost: CostDerivatives,
    c=None,
    regularization: float = 0.0,
    du_low=None,
    du_high=None,
    k_init=None,
) -> BackwardPass:
    """Riccati recursion for dx' = A_t dx + B_t du + c_t with cost expansion `cost` (T+1 rows, row T terminal).

    A: (T, n, n), B: (T, n, m), c: (T, n) or None (a rollout of the model itself has none);
    regularization: mu added to the diagonal of Q_uu; du_low, du_high: (T, m) bounds on du (the
    action bounds minus the nominal actions), None for none; k_init: (T, m) warm start of the
    box QPs (the previous feed-forward). Raises BackwardPassError when Q_uu + mu I is not
    positive definite.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    T, n, m = B.shape
    if A.shape != (T, n, n):
        raise ValueError(f"lqr_backward: A must be ({T}, {n}, {n}), got {A.shape}")
    if cost.l_x.shape != (T + 1, n) or cost.l_u.shape != (T + 1, m):
        raise ValueError(f"lqr_backward: cost needs {T + 1} rows of n={n}, m={m}, got l_x {cost.l_x.shape}, l_u {cost.l_u.shape}")
    bounded = du_low is not None
    # Augmented coordinates s = (dx, 1) and z = (dx, 1, du) carry the value's gradient and the
    # affine term c inside one matrix each: V~ = [[V_xx, V_x], [V_x^T, .]], and
    # Q~ = L~_t + F~_t^T V~ F~_t with F~_t = [[A, c, B], [0, 1, 0]]. Everything that does not
    # depend on V~ is formed for all steps at once.
    p = n + 1
    F = np.zeros((T, p, p + m))
    F[:, :n, :n], F[:, :n, p:] = A, B
    if c is not None:
        F[:, :n, n] = c
    F[:, n, n] = 1.0
    L = np.zeros((T, p + m, p + m))
    L[:, :n, :n] = cost.l_xx[:T]
    L[:, p:, :n] = cost.l_ux[:T]
    L[:, :n, p:] = np.swapaxes(cost.l_ux[:T], 1, 2)
    L[:, p:, p:] = cost.l_uu[:T]
    L[:, :n, n] = L[:, n, :n] = cost.l_x[:T]
    L[:, p:, n] = L[:, n, p:] = cost.l_u[:T]
    if bounded:
        # Copies: the compiled sweep takes writable C-ordered arrays (one compiled variant).
        du_low = np.array(np.broadcast_to(du_low, (T, m)), dtype=np.float64)
        du_high = np.array(np.broadcast_to(du_high, (T, m)), dtype=np.float64)
    else:
        du_low = du_high = np.empty((T, m))

    G_all = np.zeros((T, m, p))  # [K | k]
    Q_all = np.empty((T, p + m, p + m))  # Q~ per step: R = [Q_ux | Q_u] and Q_uu are its blocks
    Q_uu_inv_all = np.empty((T, m, m))
    free_all = np.ones((T, m), dtype=bool)
    V = np.empty((T + 1, p, p))
    V[T, :n, :n], V[T, :n, n], V[T, n, :n], V[T, n, n] = cost.l_xx[T], cost.l_x[T], cost.l_x[T], 0.0
    # The compiled sweep stops where a step needs Python: there the box QP gives the step's gains,
    # the value goes on with them, and the sweep resumes one step earlier.
    t = T - 1
    while t >= 0:
        t, status = riccati_sweep(F, L, V, Q_all, G_all, Q_uu_inv_all, float(regularization), t, du_low, du_high, bounded)
        if status == NOT_POSITIVE_DEFINITE:
            raise BackwardPassError(t)
        if status == OUTSIDE_BOUNDS:
            Q, G = Q_all[t], G_all[t]
            R = Q[p:, :p]
            box = box_qp(Q[p:, p:] + regularization * np.eye(m), R[:, n], du_low[t], du_high[t],
                         None if k_init is None else k_init[t])
            G[:] = 0.0
            G[:, n] = box.x
            G[box.free, :n] = -box.H_free_inv @ R[box.free, :n]
            free_all[t] = box.free
            value_step(Q, G, V[t])
            t -= 1
    R_all = Q_all[:, p:, :p]
    Q_uu_all = Q_all[:, p:, p:].copy()
    K, k = G_all[:, :, :n], G_all[:, :, n]
    dV1 = float(np.einsum("tm,tm->", k, R_all[:, :, n]))
    dV2 = 0.5 * float(np.einsum("tm,tmj,tj->", k, Q_uu_all, k))
    Q_uu_all += regularization * np.eye(m)
    return BackwardPass(
        np.ascontiguousarray(K), np.ascontiguousarray(k), Q_uu_all, Q_uu_inv_all,
        V[:, :n, n].copy(), V[:, :n, :n].copy(), (dV1, dV2), free_all,
    )


# -- The solver ---------------------------------------------------------------------------------


@dataclass
class ILQRConfig:
    """Settings of the iLQR solver.

    max_iterations: iteration cap per solve; relative_tolerance: stop when an accepted step lowers
    the cost by less than this fraction; gradient_tolerance: stop when the feed-forward is this
    small (mean over steps of max_j |k_tj| / (|u_tj| + 1), as in Tassa et al.);
    regularization: initial mu (0: plain Newton steps until Q_uu fails to be positive definite);
    regularization_min/max: a raised mu is at least min, a lowered one below min becomes 0, and
    the solve gives up above max; regularization_factor: the base of mu's geometric schedule
    (Tassa, Erez and Todorov 2012);
    step_sizes: line-search step sizes, tried largest first;
    min_reduction_ratio: least actual/expected cost reduction that accepts a step.
    """

    max_iterations: int = 100
    relative_tolerance: float = 1e-5
    gradient_tolerance: float = 1e-5
    regularization: float = 0.0
    regularization_min: float = 1e-6
    regularization_max: float = 1e10
    regularization_factor: float = 1.6
    step_sizes: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 0.001)
    min_reduction_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be at least 1, got {self.max_iterations}")
        if not self.regularization_factor > 1:
            raise ValueError(f"regularization_factor must exceed 1, got {self.regularization_factor}")
        if self.regularization < 0 or not 0 < self.regularization_min <= self.regularization_max:
            raise ValueError("regularization must be non-negative, regularization_min positive and at most regularization_max")
        if not self.step_sizes or any(not 0 < a <= 1 for a in self.step_sizes):
            raise ValueError("step_sizes must be a non-empty list of numbers in (0, 1]")
        self.step_sizes = tuple(sorted(self.step_sizes, reverse=True))


@dataclass
class ILQRResult:
    """X (T+1, n), U (T, m): the optimised trajectory; cost: its total cost; policy: the LQG policy
    about it; backward: the last backward pass; iterations: per-iteration diagnostics (cost,
    expected_reduction, step, regularization, accepted, ratio); stop: why the solve ended."""

    X: np.ndarray
    U: np.ndarray
    cost: float
    policy: LinearGaussianPolicy
    backward: BackwardPass | None
    iterations: list[dict] = field(default_factory=list)
    stop: str = ""


class ILQR:
    """iLQR with box-constrained DDP on `model` (needs `linearize` and `predict`) and `cost`.

    model.predict(x (B, n), u (B, m)) -> (mean, var) steps the dynamics; model.linearize(x, u)
    -> (A, B, c, Sigma) batched. action_low, action_high: (m,) bounds (infinite for none).
    The regulariser carries over between solves, so an MPC that solves every tick resumes from
    the last one's.
    """

    def __init__(self, model, cost: Cost, action_low, action_high, config: ILQRConfig | None = None):
        require(model, "linearize", "iLQR")
        require(model, "predict", "iLQR")
        self.model, self.cost = model, cost
        self.config = config or ILQRConfig()
        self.low = np.asarray(action_low, dtype=np.float64).reshape(-1)
        self.high = np.asarray(action_high, dtype=np.float64).reshape(-1)
        if self.low.shape != (cost.m,) or self.high.shape != (cost.m,):
            raise ValueError(f"iLQR: action bounds must have shape ({cost.m},)")
        self.regularization = self.config.regularization
        self._mu_step = 1.0
        # A time-varying model (TVLG) is asked with each step's time index, counted from solve's t0.
        self.time_varying = bool(getattr(model, "time_varying", False))
        self._t0 = 0
        # A model that steps a whole (closed-loop) sequence itself (MuJoCo's) saves the Python of
        # one predict call per step in the rollouts and the line search; the arithmetic is the same.
        self._closed_loop = None if self.time_varying else getattr(model, "closed_loop", None)

    def _predict(self, x: np.ndarray, u: np.ndarray, t: int) -> np.ndarray:
        """The model's mean next state (1, n) from x (1, n), u (1, m) at step t of the horizon."""
        if self.time_varying:
            return self.model.predict(x, u, t=self._t0 + t)[0]
        return self.model.predict(x, u)[0]

    def _linearize(self, X: np.ndarray, U: np.ndarray):
        """The model's (A, B, c, Sigma) about each (X[t], U[t]), t = 0..T-1."""
        if self.time_varying:
            return self.model.linearize(X, U, t=self._t0 + np.arange(len(U)))
        return self.model.linearize(X, U)

    # -- rollouts ---------------------------------------------------------------------------
    def rollout(self, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
        """Open-loop states (T+1, n) from x0 under U (T, m)."""
        if self._closed_loop is not None:
            return self._closed_loop(x0, U)[0]
        X = np.full((len(U) + 1, len(x0)), np.nan)
        X[0] = x0
        for t in range(len(U)):
            X[t + 1] = self._predict(X[t : t + 1], U[t : t + 1], t)[0]
            if not np.all(np.isfinite(X[t + 1])):
                break  # the rest stays NaN: no point stepping a broken state
        return X

    def closed_loop_rollout(self, x0: np.ndarray, U: np.ndarray, X_ref: np.ndarray, K: np.ndarray):
        """States X (T+1, n) from x0 (n,) under u_t = clip(U_t + K_t (x_t - X_ref_t)) (U (T, m), X_ref
        (T+1 or T, n), K (T, m, n)), and those actions (T, m). NaN from the first state that is not
        finite on (its action kept, the later ones U's)."""
        if self._closed_loop is not None:
            return self._closed_loop(x0, U, X_ref, K, self.low, self.high)
        X_new, U_new = np.full((len(U) + 1, len(x0)), np.nan), np.array(U, dtype=np.float64)
        X_new[0] = x = x0
        for t in range(len(U)):
            u = np.clip(U[t] + K[t] @ (x - X_ref[t]), self.low, self.high)
            U_new[t] = u
            X_new[t + 1] = x = self._predict(x[None], u[None], t)[0]
            if not np.all(np.isfinite(x)):
                break  # the rest stays NaN
        return X_new, U_new

    def _forward(self, X, U, back: BackwardPass, alpha: float):
        """The line search's rollout u_t = clip(U_t + alpha k_t + K_t (x_t - X_t)): (T+1, n), (T, m)."""
        return self.closed_loop_rollout(X[0], U + alpha * back.k, X, back.K)

    def _costs(self, Xs, Us) -> np.ndarray:
        """Total cost of one trajectory X (T+1, n), U (T, m) as a float, or of a batch (B,); inf where
        the cost or a state is not finite."""
        with np.errstate(all="ignore"):
            if Xs.ndim == 2:  # one trajectory, once per line-search candidate: no arrays around a float
                J = float(self.cost.trajectory_costs(Xs, Us))
                return J if math.isfinite(J) and np.isfinite(Xs).all() else math.inf
            J = self.cost.trajectory_costs(Xs, Us)
            return np.where(np.isfinite(J) & np.all(np.isfinite(Xs), axis=(-2, -1)), J, np.inf)

    # -- iterations -------------------------------------------------------------------------
    def _backward(self, X, U, derivatives, A, B, k_prev):
        """The backward pass, raising mu until Q_uu is positive definite; None if mu passes its maximum."""
        cfg = self.config
        while self.regularization <= cfg.regularization_max:
            try:
                return lqr_backward(
                    A, B, derivatives, None, self.regularization, self.low - U, self.high - U, k_prev
                )
            except BackwardPassError:
                self._raise_regularization()
        return None

    def _raise_regularization(self) -> None:
        """mu <- max(mu * d, mu_min) with d growing geometrically while failures repeat."""
        f = self.config.regularization_factor
        self._mu_step = max(self._mu_step * f, f)
        self.regularization = max(self.regularization * self._mu_step, self.config.regularization_min)

    def _lower_regularization(self) -> None:
        """mu <- mu * d with d shrinking geometrically while successes repeat; 0 once below mu_min."""
        f = self.config.regularization_factor
        self._mu_step = min(self._mu_step / f, 1.0 / f)
        mu = self.regularization * self._mu_step
        self.regularization = mu if mu >= self.config.regularization_min else 0.0

    def _line_search(self, X, U, J, back):
        """(X, U, J, step, ratio) of the largest step size that is accepted, or None."""
        cfg = self.config
        dV1, dV2 = back.expected
        for a in cfg.step_sizes:
            X_new, U_new = self._forward(X, U, back, a)
            J_new = float(self._costs(X_new, U_new))
            expected = -(a * dV1 + a * a * dV2)
            actual = J - J_new
            ratio = actual / expected if expected > 0 else math.copysign(1.0, actual)
            if actual > 0 and ratio >= cfg.min_reduction_ratio:
                return X_new, U_new, J_new, float(a), float(ratio)
        return None

    def solve(self, x0, U_init, max_iterations: int | None = None, time_budget_s: float | None = None,
              t0: int = 0, X_init: np.ndarray | None = None) -> ILQRResult:
        """Optimise the actions (T, m) from x0 (n,), starting from U_init (clipped to the bounds).

        max_iterations overrides the config's cap; time_budget_s stops before an iteration that
        would overrun it (one iteration always runs); t0: the time step of x0 (for a time-varying
        model); X_init: (T+1, n) the model's rollout of U_init (within the bounds) from x0 where the
        caller has it already (MPC's closed-loop warm start), so that it is not rolled out again.
        Raises DivergenceError when the initial rollout or its cost is not finite.
        """
        started = time.perf_counter()
        self._t0 = int(t0)
        cfg = self.config
        cap = cfg.max_iterations if max_iterations is None else int(max_iterations)
        if self.regularization > cfg.regularization_max:  # the last solve gave up: start afresh
            self.regularization, self._mu_step = cfg.regularization, 1.0
        x0 = np.asarray(x0, dtype=np.float64)
        U = np.clip(np.asarray(U_init, dtype=np.float64), self.low, self.high)
        if x0.shape != (self.cost.n,) or U.ndim != 2 or U.shape[1] != self.cost.m:
            raise ValueError(f"iLQR: x0 must be ({self.cost.n},) and U_init (T, {self.cost.m}), got {x0.shape} and {U.shape}")
        if not (np.all(np.isfinite(x0)) and np.all(np.isfinite(U))):
            raise DivergenceError("iLQR: x0 or U_init has NaN or infinite values")
        if X_init is None:
            X = self.rollout(x0, U)
        else:
            X = np.asarray(X_init, dtype=np.float64)
            if X.shape != (len(U) + 1, self.cost.n):
                raise ValueError(f"iLQR: X_init must be ({len(U) + 1}, {self.cost.n}), got {X.shape}")
        J = float(self._costs(X, U))
        if not math.isfinite(J):
            raise DivergenceError("iLQR: the initial rollout or its cost is NaN or infinite")
        history: list[dict] = []
        back = None
        k_prev = None
        stop = "iteration cap"
        derivatives = A = B = None
        iteration_s = 0.0
        for _ in range(cap):
            if time_budget_s is not None and history and time.perf_counter() - started + iteration_s > time_budget_s:
                stop = "time budget"
                break
            iteration_started = time.perf_counter()
            if derivatives is None:
                A, B, _, _ = self._linearize(X[:-1], U)
                derivatives = self.cost.trajectory_derivatives(X, U)
                if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B)) and np.all(np.isfinite(derivatives.l_xx))):
                    raise DivergenceError("iLQR: the linearisation or the cost derivatives are NaN or infinite")
            back = self._backward(X, U, derivatives, A, B, k_prev)
            if back is None:
                stop = "regularization above its maximum"
                break
            k_prev = back.k
            gradient = float(np.mean(np.max(np.abs(back.k) / (np.abs(U) + 1.0), axis=1)))
            record = {"cost": J, "expected_reduction": -(back.expected[0] + back.expected[1]), "step": 0.0,
                      "regularization": self.regularization, "accepted": False, "ratio": float("nan"), "gradient": gradient}
            # A small feed-forward means convergence only when mu is not what keeps it small.
            if gradient < cfg.gradient_tolerance and self.regularization <= cfg.regularization_min:
                history.append(record)
                stop = "small gradient"
                break
            # The quadratic model expects no gain at all (every action held at a bound, or a
            # stationary point): no step size or regularisation can change that.
            if record["expected_reduction"] <= 1e-14 * max(abs(J), 1.0):
                history.append(record)
                stop = "no expected reduction"
                break
            found = self._line_search(X, U, J, back)
            if found is None:
                history.append(record)
                self._raise_regularization()
                if self.regularization > cfg.regularization_max:
                    stop = "regularization above its maximum"
                    break
                iteration_s = time.perf_counter() - iteration_started
                continue
            X, U, J_new, step, ratio = found
            improvement = (J - J_new) / max(abs(J), 1e-12)
            J = J_new
            record.update(cost=J, step=step, accepted=True, ratio=ratio)
            history.append(record)
            derivatives = None
            self._lower_regularization()
            iteration_s = time.perf_counter() - iteration_started
            if improvement < cfg.relative_tolerance:
                stop = "small relative improvement"
                break
        policy = self._policy(X, U, back)
        return ILQRResult(X, U, J, policy, back, history, stop)

    def _policy(self, X, U, back: BackwardPass | None) -> LinearGaussianPolicy:
        T, m = U.shape
        if back is None:
            return LinearGaussianPolicy.around(X, U, np.zeros((T, m, len(X[0]))))
        return LinearGaussianPolicy.around(X, U, back.K, covariance=back.Q_uu_inv, precision=back.Q_uu)
