"""KL-constrained LQG updates of linear-Gaussian controllers on time-varying linear-Gaussian models.

The trajectory distribution of a linear-Gaussian controller p(u_t|x_t) = N(K_t x_t + k_t, C_t) on
time-varying linear-Gaussian dynamics is Gaussian. Each update minimises its expected cost subject
to KL(p_new || p_anchor) <= epsilon (Levine & Abbeel 2014). The Lagrangian, divided by the dual
variable eta, is a maximum-entropy LQR problem with the cost l / eta - log p_anchor(u|x), so the
shared LQR backward pass solves it and the new covariance is inv(Q_uu). A bracketing search over
log(eta) meets the bound; epsilon follows the predicted and actual improvement. Pure functions of
arrays; the GPS controllers (controllers/gps.py) hold the state between iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forethought.controllers.costs import CostDerivatives
from forethought.controllers.ilqr import BackwardPassError, lqr_backward
from forethought.models.tvlg import LinearGaussianDynamics


@dataclass(frozen=True)
class QuadraticCost:
    """A per-step quadratic model of the cost in absolute coordinates z = (x, u):

    l_t(z) ~= const[t] + g[t] . z + 0.5 z' H[t] z for t <= T; at t = T only the x block is used.
    H: (T+1, n+m, n+m); g: (T+1, n+m); const: (T+1,).
    """

    H: np.ndarray
    g: np.ndarray
    const: np.ndarray


@dataclass(frozen=True)
class LinearGaussianGains:
    """u_t ~ N(K[t] x_t + k[t], C[t]): K (T, m, n), k (T, m), C (T, m, m), absolute coordinates."""

    K: np.ndarray
    k: np.ndarray
    C: np.ndarray

    @property
    def horizon(self) -> int:
        return self.k.shape[0]


# -- Trajectory distributions -------------------------------------------------------------------
def trajectory_gaussians(dynamics: LinearGaussianDynamics, gains: LinearGaussianGains) -> tuple[np.ndarray, np.ndarray]:
    """Marginals N(mu[t], Sigma[t]) over z_t = (x_t, u_t) of the controller on the dynamics.

    Returns mu: (T+1, n+m), Sigma: (T+1, n+m, n+m); the action part at t = T is zero.
    """
    T, n, m = dynamics.B.shape
    mu = np.zeros((T + 1, n + m))
    Sigma = np.zeros((T + 1, n + m, n + m))
    mean_x, cov_x = dynamics.x0_mean, dynamics.x0_cov
    for t in range(T + 1):
        mu[t, :n], Sigma[t, :n, :n] = mean_x, cov_x
        if t == T:
            break
        K = gains.K[t]
        mu[t, n:] = K @ mean_x + gains.k[t]
        Sigma[t, n:, :n] = K @ cov_x
        Sigma[t, :n, n:] = Sigma[t, n:, :n].T
        Sigma[t, n:, n:] = K @ cov_x @ K.T + gains.C[t]
        F = np.concatenate([dynamics.A[t], dynamics.B[t]], axis=1)
        mean_x = F @ mu[t] + dynamics.c[t]
        cov_x = F @ Sigma[t] @ F.T + dynamics.Sigma[t]
        cov_x = 0.5 * (cov_x + cov_x.T)
    return mu, Sigma


def expected_cost(cost: QuadraticCost, mu: np.ndarray, Sigma: np.ndarray) -> float:
    """E[sum_t l_t(z_t)] for z_t ~ N(mu[t], Sigma[t]) under the quadratic cost model."""
    quadratic = np.einsum("ti,tij,tj->t", mu, cost.H, mu) + np.einsum("tij,tji->t", cost.H, Sigma)
    return float(np.sum(cost.const + np.einsum("ti,ti->t", cost.g, mu) + 0.5 * quadratic))


def sampled_cost(cost: QuadraticCost, states: np.ndarray, actions: np.ndarray) -> float:
    """Expected cost under the cost model of the Gaussian fitted to samples (N, T+1, n), (N, T, m)."""
    m = actions.shape[2]
    z = np.concatenate([states, np.concatenate([actions, np.zeros((len(actions), 1, m))], axis=1)], axis=2)
    mu = z.mean(axis=0)
    deviation = z - mu
    Sigma = np.einsum("itj,itk->tjk", deviation, deviation) / len(z)
    return expected_cost(cost, mu, Sigma)


def policy_kl(new: LinearGaussianGains, old: LinearGaussianGains, mu_x: np.ndarray, Sigma_x: np.ndarray) -> np.ndarray:
    """E_{x_t ~ N(mu_x[t], Sigma_x[t])} KL(new(u|x_t) || old(u|x_t)) per step: (T,).

    With x_t distributed as under `new`, the sum over steps is the KL divergence between the two
    trajectory distributions on the same dynamics and initial states.
    """
    T, m = new.k.shape
    kl = np.empty(T)
    for t in range(T):
        precision = np.linalg.inv(old.C[t])
        dK = new.K[t] - old.K[t]
        dmean = dK @ mu_x[t] + new.k[t] - old.k[t]
        kl[t] = 0.5 * (
            np.trace(precision @ new.C[t])
            + dmean @ precision @ dmean
            + np.trace(dK.T @ precision @ dK @ Sigma_x[t])
            - m
            + np.linalg.slogdet(old.C[t])[1]
            - np.linalg.slogdet(new.C[t])[1]
        )
    return kl


# -- The KL-constrained LQG update --------------------------------------------------------------
@dataclass(frozen=True)
class KLUpdate:
    """What one KL-constrained update found.

    gains: the new controller; eta: the dual variable; kl: KL(new || anchor) over the trajectory;
    bound: the epsilon it had to meet; expected_cost: the new controller's expected cost under
    the model; searched: backward passes the dual search took; within_bound: kl <= 1.1 * bound.
    """

    gains: LinearGaussianGains
    eta: float
    kl: float
    bound: float
    expected_cost: float
    searched: int

    @property
    def within_bound(self) -> bool:
        return self.kl <= 1.1 * self.bound


class DualSearchError(ArithmeticError):
    """No dual variable in range gives a controller within the KL bound."""


def lqg_step(
    dynamics: LinearGaussianDynamics, cost: QuadraticCost, anchor: LinearGaussianGains, eta: float
) -> LinearGaussianGains | None:
    """The maximum-entropy LQR controller for the cost l / eta - log anchor(u|x).

    The problem is exactly linear-quadratic, so it is solved in absolute coordinates (the
    backward pass carries the dynamics' offsets c_t) and needs no nominal trajectory.
    Returns None when Q_uu is not positive definite at this eta.
    """
    T, n, m = dynamics.B.shape
    # -log anchor(u|x) = 0.5 (u - K x - k)' P (u - K x - k) + const, added to l / eta.
    P = np.linalg.inv(anchor.C)
    PK, Pk = P @ anchor.K, np.einsum("tij,tj->ti", P, anchor.k)
    H, g = cost.H / eta, cost.g / eta
    l_xx = H[:, :n, :n].copy()
    l_xx[:T] += np.swapaxes(anchor.K, 1, 2) @ PK
    l_x = g[:, :n].copy()
    l_x[:T] += np.einsum("tmn,tm->tn", anchor.K, Pk)
    l_uu, l_ux, l_u = np.zeros((T + 1, m, m)), np.zeros((T + 1, m, n)), np.zeros((T + 1, m))
    l_uu[:T] = H[:T, n:, n:] + P
    l_ux[:T] = H[:T, n:, :n] - PK
    l_u[:T] = g[:T, n:] - Pk
    derivatives = CostDerivatives(np.zeros(T + 1), l_x, l_u, l_xx, l_uu, l_ux)
    try:
        solved = lqr_backward(dynamics.A, dynamics.B, derivatives, c=dynamics.c)
    except BackwardPassError:
        return None
    C = 0.5 * (solved.Q_uu_inv + np.swapaxes(solved.Q_uu_inv, 1, 2))
    return LinearGaussianGains(solved.K, solved.k, C)


def kl_constrained_update(
    dynamics: LinearGaussianDynamics,
    cost: QuadraticCost,
    anchor: LinearGaussianGains,
    bound: float,
    eta: float = 1.0,
    tolerance: float = 0.1,
    eta_range: tuple[float, float] = (1e-8, 1e16),
    max_searches: int = 60,
) -> KLUpdate:
    """Minimise the expected cost subject to KL(new || anchor) <= bound over the trajectory.

    The dual variable eta is bracketed by factors of 10 from the given start, then bisected in
    log space until the KL lies within `tolerance` (relative) of the bound. When even the
    smallest eta stays inside the bound the constraint is inactive and that solution is taken.
    """
    if not bound > 0:
        raise ValueError(f"the KL bound must be positive, got {bound}")
    low, high = eta_range
    searched = 0
    solutions: dict[float, tuple[LinearGaussianGains, float]] = {}

    def kl_at(value: float) -> float:
        nonlocal searched
        searched += 1
        gains = lqg_step(dynamics, cost, anchor, value)
        if gains is None:
            return np.inf  # eta too small for a convex problem: treat as too large a step
        mu, Sigma = trajectory_gaussians(dynamics, gains)
        n = dynamics.A.shape[1]
        kl = float(policy_kl(gains, anchor, mu[:, :n], Sigma[:, :n, :n]).sum())
        solutions[value] = (gains, kl)
        return kl

    def accept(value: float) -> KLUpdate:
        gains, kl = solutions[value]
        mu, Sigma = trajectory_gaussians(dynamics, gains)
        return KLUpdate(gains, value, kl, bound, expected_cost(cost, mu, Sigma), searched)

    eta = float(np.clip(eta, low, high))
    kl = kl_at(eta)
    if abs(kl - bound) <= tolerance * bound:
        return accept(eta)
    # Bracket: too_small has KL above the bound, too_large below it.
    if kl > bound:
        too_small = eta
        while kl > bound and eta < high:
            too_small, eta = eta, min(eta * 10, high)
            kl = kl_at(eta)
        if kl > bound:
            raise DualSearchError(f"KL-constrained update: no eta up to {high:g} meets the bound {bound:g}")
        too_large = eta
    else:
        too_large = eta
        while kl < bound and eta > low:
            too_large, eta = eta, max(eta / 10, low)
            kl = kl_at(eta)
        if kl <= bound:
            return accept(eta)  # the constraint is inactive
        too_small = eta
    if abs(kl - bound) <= tolerance * bound:
        return accept(eta)
    for _ in range(max_searches):
        eta = float(np.sqrt(too_small * too_large))
        kl = kl_at(eta)
        if abs(kl - bound) <= tolerance * bound:
            return accept(eta)
        if kl > bound:
            too_small = eta
        else:
            too_large = eta
    return accept(too_large)


def step_size_multiplier(previous: float, predicted: float, actual: float, low: float = 0.1, high: float = 5.0) -> float:
    """How much to scale the KL step after an iteration (Levine & Abbeel 2014).

    previous: the old controller's expected cost under the old fit; predicted: the new
    controller's under the old fit; actual: the new controller's under the fit to its own samples.
    Modelling the cost as quadratic in the step, the best next step is the last one times
    predicted improvement / (2 (predicted - actual improvement)), clipped to [low, high].
    """
    predicted_improvement = previous - predicted
    actual_improvement = previous - actual
    multiplier = predicted_improvement / (2 * max(predicted_improvement - actual_improvement, 1e-4))
    return float(np.clip(multiplier, low, high))


# -- Cost models from samples -------------------------------------------------------------------
def cost_expansion(cost, states: np.ndarray, actions: np.ndarray) -> QuadraticCost:
    """The quadratic model of `cost` that GPS optimises, from sampled trajectories.

    states: (N, T+1, n); actions: (N, T, m). The cost is expanded to second order at every
    sample and the expansions are averaged, each re-centred on the samples' mean, so the model
    reflects the cost where the samples went rather than only at their mean.
    """
    N, T1, n = states.shape
    T, m = T1 - 1, actions.shape[2]
    d = n + m
    H, g, const = np.zeros((T + 1, d, d)), np.zeros((T + 1, d)), np.zeros(T + 1)
    # Every sample's every step in one call (rows t < T running, row T terminal), then step by step.
    every = cost.trajectory_derivatives(states, actions)
    per_step = [a.reshape(N, T + 1, *a.shape[1:]) for a in (every.l, every.l_x, every.l_u, every.l_xx, every.l_uu,
                                                            every.l_ux)]
    for t in range(T + 1):
        terminal = t == T
        x = states[:, t]
        u = None if terminal else actions[:, t]
        l, l_x, l_u, l_xx, l_uu, l_ux = (a[:, t] for a in per_step)
        z = x if terminal else np.concatenate([x, u], axis=1)
        grad = l_x if terminal else np.concatenate([l_x, l_u], axis=1)
        hess = l_xx if terminal else np.block([[l_xx, np.swapaxes(l_ux, 1, 2)], [l_ux, l_uu]])
        hess = 0.5 * (hess + np.swapaxes(hess, 1, 2))
        center = z.mean(axis=0)
        offset = center - z  # (N, d')
        # Each sample's expansion evaluated at the mean, and its slope there.
        value = l + np.einsum("bi,bi->b", grad, offset) + 0.5 * np.einsum("bi,bij,bj->b", offset, hess, offset)
        slope = grad + np.einsum("bij,bj->bi", hess, offset)
        mean_hess, mean_slope = hess.mean(axis=0), slope.mean(axis=0)
        k = z.shape[1]
        # Re-express l(z) ~ value + slope.(z - center) + 0.5 (z - center)' H (z - center) in absolute z.
        H[t, :k, :k] = mean_hess
        g[t, :k] = mean_slope - mean_hess @ center
        const[t] = value.mean() - mean_slope @ center + 0.5 * center @ mean_hess @ center
    return QuadraticCost(H, g, const)
