"""Guided policy search: KL-constrained LQG updates on fitted local models, and the GPS controllers.

The trajectory distribution of a linear-Gaussian controller p(u_t|x_t) = N(K_t x_t + k_t, C_t) on
time-varying linear-Gaussian dynamics is Gaussian. Each update minimises its expected cost subject
to KL(p_new || p_anchor) <= epsilon (Levine & Abbeel 2014). The Lagrangian, divided by the dual
variable eta, is a maximum-entropy LQR problem with the cost l / eta - log p_anchor(u|x), so the
shared LQR backward pass solves it and the new covariance is inv(Q_uu). A bracketing search over
log(eta) meets the bound; epsilon follows the predicted and actual improvement.

Trajectory-centric GPS anchors each update to the previous controller of its condition; mirror
descent GPS (Montgomery & Levine 2016) anchors it to the linearised neural-network policy and
then trains that policy on the new controllers by precision-weighted regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from forethought.controllers.costs import CostDerivatives
from forethought.controllers.ilqr import BackwardPassError, lqr_backward
from forethought.controllers.linear_gaussian import LinearGaussianPolicy
from forethought.controllers.nn_policy import MLPPolicy, MLPPolicyConfig, NNPolicy, condition_features
from forethought.models.tvlg import LinearGaussianDynamics
from forethought.robots.config import ConfigError, from_mapping


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



# -- Controllers --------------------------------------------------------------------------------
@dataclass
class GPSConfig:
    """Settings of the GPS controllers (the `controller:` section of an experiment).

    kl_step: KL bound per time step for an iteration (the bound is kl_step * T * multiplier);
    min_step_mult, max_step_mult: limits of the adapted multiplier;
    init_std: std of the initial controller's exploration noise, in the action's units.
    The local models are the experiment's `model: {type: tvlg, ...}`.
    """

    kl_step: float = 0.2
    min_step_mult: float = 0.01
    max_step_mult: float = 10.0
    init_std: float = 0.1

    def __post_init__(self) -> None:
        if not (self.kl_step > 0 and self.init_std > 0 and 0 < self.min_step_mult <= 1 <= self.max_step_mult):
            raise ValueError("kl_step and init_std must be positive, and min_step_mult <= 1 <= max_step_mult")


class SamplingPolicy(LinearGaussianPolicy):
    """A stochastic LinearGaussianPolicy whose noise is fresh at every reset.

    The experiment loop draws several samples from one policy object; each reset seeds the
    noise from (seed, number of resets so far), so the samples differ and a rerun repeats them.
    """

    def reset(self) -> None:
        self._resets = getattr(self, "_resets", -1) + 1
        self._rng = np.random.default_rng([self.seed, self._resets])


def sampling_policy(gains: LinearGaussianGains, seed: int) -> SamplingPolicy:
    return SamplingPolicy(gains.K, gains.k, gains.C, precision=np.linalg.inv(gains.C), stochastic=True, seed=seed)


@dataclass
class ConditionState:
    """What GPS keeps per condition between iterations."""

    gains: LinearGaussianGains
    eta: float = 1.0
    step_mult: float = 1.0
    # (expected cost of the sampled policy, of the new controller) under the last fit
    previous: tuple[float, float] | None = None


def hold_gains(hold: np.ndarray, horizon: int, n: int, std: float) -> LinearGaussianGains:
    """The initial controller: hold the action `hold` (m,), with exploration noise of std `std`."""
    m = hold.shape[0]
    return LinearGaussianGains(
        np.zeros((horizon, m, n)), np.tile(hold, (horizon, 1)), np.tile(std**2 * np.eye(m), (horizon, 1, 1))
    )


def stack_condition(trials, n: int, m: int, horizon: int, condition: int) -> tuple[np.ndarray, np.ndarray]:
    """states (N, T+1, n) and actions (N, T, m) of one condition's trials, checked."""
    if not trials:
        raise ValueError(f"GPS: condition {condition} has no trials in this iteration")
    for trial in trials:
        if trial.states.shape != (horizon + 1, n) or trial.actions.shape != (horizon, m):
            raise ValueError(
                f"GPS: condition {condition}: trials must have states ({horizon + 1}, {n}) and actions ({horizon}, {m}), "
                f"got {trial.states.shape} and {trial.actions.shape}"
            )
    return np.stack([t.states for t in trials]), np.stack([t.actions for t in trials])


class GPSController:
    """Trajectory-centric guided policy search: one linear-Gaussian controller per condition.

    costs: one cost per condition; initial: (m,) actions the initial controllers hold; model: the
    TVLGModel, which the experiment loop refits on each iteration's samples before `update` (its
    GMM prior on every sample so far, per condition the dynamics on that condition's samples).
    Each `update` models the cost, adapts the step and makes a KL-constrained update per condition.
    `history` keeps every iteration's diagnostics per condition.
    """

    # What changes between iterations, and what a run's checkpoint keeps (scripts/checkpoint.py).
    checkpoint_attributes: tuple[str, ...] = ("conditions", "iteration", "history")
    # Its policies' noise is seeded at every reset (SamplingPolicy, NNPolicy): an iteration's rollouts
    # can run side by side with the trials of a serial run (scripts/rollouts.py).
    parallel_rollouts = True

    def __init__(self, n: int, m: int, horizon: int, costs, initial, model, config: GPSConfig | None = None,
                 seed: int = 0):
        self.n, self.m, self.horizon = n, m, horizon
        self.costs, self.config, self.seed = list(costs), config or GPSConfig(), seed
        self.model = model
        if len(initial) != len(self.costs):
            raise ValueError(f"GPS: {len(self.costs)} costs but {len(initial)} initial actions")
        c = self.config
        self.conditions = [
            ConditionState(hold_gains(np.asarray(hold, dtype=np.float64), horizon, n, c.init_std)) for hold in initial
        ]
        self.iteration = 0
        self.history: list[list[dict]] = []

    def policy(self, condition: int):
        return sampling_policy(self.conditions[condition].gains, self._sample_seed(condition))

    def _sample_seed(self, condition: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.iteration, condition]).generate_state(1)[0])

    def _fit(self, trials) -> list[tuple[np.ndarray, np.ndarray, LinearGaussianDynamics, QuadraticCost]]:
        if len(trials) != len(self.conditions):
            raise ValueError(f"GPS: expected trials for {len(self.conditions)} conditions, got {len(trials)}")
        arrays = [stack_condition(group, self.n, self.m, self.horizon, c) for c, group in enumerate(trials)]
        return [(X, U, self.model.local(c), cost_expansion(cost, X, U))
                for c, ((X, U), cost) in enumerate(zip(arrays, self.costs))]

    def _current_cost(self, X, U, dynamics, model, anchor) -> float:
        """The expected cost of the policy that drew samples X, U, as the step-size rule needs it."""
        mu, Sigma = trajectory_gaussians(dynamics, anchor)
        return expected_cost(model, mu, Sigma)

    def _improve(self, c: int, X, U, dynamics: LinearGaussianDynamics, model: QuadraticCost, anchor: LinearGaussianGains) -> dict:
        """Adapt the step from the last prediction, then update condition c's controller against `anchor`.

        X (N, T+1, n), U (N, T, m): the samples the models were fitted to."""
        state, cfg = self.conditions[c], self.config
        current = self._current_cost(X, U, dynamics, model, anchor)
        if state.previous is not None:
            multiplier = step_size_multiplier(state.previous[0], state.previous[1], current)
            state.step_mult = float(np.clip(state.step_mult * multiplier, cfg.min_step_mult, cfg.max_step_mult))
        bound = cfg.kl_step * self.horizon * state.step_mult
        try:
            update = kl_constrained_update(dynamics, model, anchor, bound, state.eta)
        except DualSearchError:
            # Keep the controller this condition has (documented fallback) and step more carefully.
            state.step_mult = cfg.min_step_mult
            state.previous = None
            return {"expected_cost": current, "predicted_cost": current, "kl": 0.0, "kl_bound": bound,
                    "within_bound": True, "eta": state.eta, "step_mult": state.step_mult, "kept": True}
        state.gains, state.eta, state.previous = update.gains, update.eta, (current, update.expected_cost)
        return {
            "expected_cost": current,
            "predicted_cost": update.expected_cost,
            "kl": update.kl,
            "kl_bound": bound,
            "within_bound": update.within_bound,
            "eta": update.eta,
            "step_mult": state.step_mult,
            "kept": False,
        }

    def update(self, trials) -> dict[str, float]:
        with threadpool_limits(1):  # small matrices: threads only contend
            return self._update(trials)

    def _update(self, trials) -> dict[str, float]:
        records = []
        for c, (X, U, dynamics, model) in enumerate(self._fit(trials)):
            record = self._improve(c, X, U, dynamics, model, self.conditions[c].gains)
            record["sample_cost"] = float(np.mean([t.total_cost for t in trials[c]]))
            records.append(record)
        return self._finish(records)

    def _finish(self, records: list[dict]) -> dict[str, float]:
        self.history.append(records)
        self.iteration += 1
        return {
            "expected_cost": float(np.mean([r["expected_cost"] for r in records])),
            "predicted_cost": float(np.mean([r["predicted_cost"] for r in records])),
            "sample_cost": float(np.mean([r["sample_cost"] for r in records])),
            "kl_over_bound": float(max(r["kl"] / r["kl_bound"] for r in records)),
            "step_mult": float(np.mean([r["step_mult"] for r in records])),
            "kept_controllers": float(sum(r["kept"] for r in records)),
        }


class MDGPSController(GPSController):
    """Mirror descent GPS: local controllers anchored to a neural-network policy that they train.

    features: (C, f) per condition, the inputs that tell the network which condition it is in.
    Until the network has been trained once, the local controllers are sampled; afterwards the
    network itself (with its covariance as noise). Each update linearises the network along
    each condition's samples, improves a local controller within the KL bound of that
    linearisation, then fits the network to all local controllers by precision-weighted
    regression.
    """

    checkpoint_attributes = (*GPSController.checkpoint_attributes, "mlp")

    def __init__(self, n, m, horizon, costs, initial, model, features, mlp: MLPPolicy, config: GPSConfig | None = None,
                 seed: int = 0):
        super().__init__(n, m, horizon, costs, initial, model, config, seed)
        self.features = np.asarray(features, dtype=np.float64).reshape(len(self.conditions), -1)
        if self.features.shape[1] != mlp.f or (mlp.n, mlp.m) != (n, m):
            raise ValueError(f"MDGPS: the policy takes {mlp.n} states + {mlp.f} features to {mlp.m} actions, "
                             f"the task has {n} + {self.features.shape[1]} to {m}")
        self.mlp = mlp

    def policy(self, condition: int):
        if not self.mlp.trained:
            return super().policy(condition)
        return NNPolicy(self.mlp, self.features[condition], noise=True, seed=self._sample_seed(condition))

    def linearized_policy(self, condition: int, states: np.ndarray) -> LinearGaussianGains:
        """The network as a linear-Gaussian controller over the sampled states (N, T+1, n).

        Per step the gain is the network's Jacobian averaged over the samples, and the offset
        makes the linear controller reproduce the network's mean action over them. A Jacobian
        taken only at the samples' mean state, where no sample went, can be far steeper than
        the network is across the samples, and the anchor then predicts costs the network
        never incurs.
        """
        N, T = states.shape[0], self.horizon
        x = states[:, :T].reshape(N * T, self.n)
        K, k = self.mlp.linearize(x, self.features[condition])
        u = (np.einsum("bmn,bn->bm", K, x) + k).reshape(N, T, self.m)
        K = K.reshape(N, T, self.m, self.n).mean(axis=0)
        k = u.mean(axis=0) - np.einsum("tmn,tn->tm", K, states[:, :T].mean(axis=0))
        return LinearGaussianGains(K, k, np.tile(self.mlp.cov, (T, 1, 1)))

    def _current_cost(self, X, U, dynamics, model, anchor) -> float:
        # The network was sampled: its actual cost is that of its samples. Propagating its
        # linearisation through the fitted model instead can diverge where the fit is poor.
        return sampled_cost(model, X, U)

    def _update(self, trials) -> dict[str, float]:
        fits = self._fit(trials)
        records = []
        for c, (X, U, dynamics, model) in enumerate(fits):
            anchor = self.linearized_policy(c, X) if self.mlp.trained else self.conditions[c].gains
            record = self._improve(c, X, U, dynamics, model, anchor)
            record["sample_cost"] = float(np.mean([t.total_cost for t in trials[c]]))
            records.append(record)
        fit = self.train_policy([X for X, *_ in fits])
        summary = self._finish(records)
        summary["policy_loss"] = fit["loss_end"]
        return summary

    def train_policy(self, states: list[np.ndarray]) -> dict:
        """Fit the network to every condition's new controller at that condition's sampled states."""
        T = self.horizon
        inputs, features, targets, precisions = [], [], [], []
        for c, X in enumerate(states):
            gains = self.conditions[c].gains
            x = X[:, :T]  # (N, T, n)
            inputs.append(x.reshape(-1, self.n))
            features.append(np.tile(self.features[c], (x.shape[0] * T, 1)))
            targets.append((np.einsum("tmn,itn->itm", gains.K, x) + gains.k).reshape(-1, self.m))
            precisions.append(np.tile(np.linalg.inv(gains.C), (x.shape[0], 1, 1)))
        return self.mlp.fit(
            np.concatenate(inputs), np.concatenate(features), np.concatenate(targets), np.concatenate(precisions)
        )

    def save(self, folder: str | Path) -> list[Path]:
        """Write the network to folder/nn_policy.pt (run it alone with `controller: {type: nn_policy}`)."""
        if not self.mlp.trained:
            return []
        path = Path(folder) / "nn_policy.pt"
        self.mlp.save(path)
        return [path]


# -- Builders for experiment files --------------------------------------------------------------
@dataclass
class MDGPSConfig(GPSConfig):
    """GPSConfig plus the network: features: condition keys fed to it (e.g. [hole]);
    hidden, epochs, batch_size, lr, weight_decay: as in MLPPolicyConfig."""

    features: list[str] = field(default_factory=list)
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-5


def hold_actions(robot, task) -> list[np.ndarray]:
    """Per condition, the actions that hold the robot where it starts.

    An action named like a state entry (a position actuator of that joint) holds that entry's
    initial value (the condition's qpos, else the robot's reset state); any other action holds
    the middle of its bounds (0 when unbounded).
    """
    spec = robot.spec
    x0 = np.asarray(robot.reset(task.seed), dtype=np.float64)
    middle = np.where(np.isfinite(spec.action_low + spec.action_high), 0.5 * (spec.action_low + spec.action_high), 0.0)
    holds = []
    for condition in task.conditions:
        x = x0.copy()
        if "qpos" in condition:
            qpos = np.asarray(condition["qpos"], dtype=np.float64).reshape(-1)
            x[: qpos.size] = qpos
        u = np.array([x[spec.state_names.index(a)] if a in spec.state_names else middle[j] for j, a in enumerate(spec.action_names)])
        holds.append(np.clip(u, spec.action_low, spec.action_high))
    return holds


def _task_costs(robot, task) -> list:
    from forethought.controllers.costs import build_cost

    if not isinstance(task.cost, dict) or not task.cost:
        raise ConfigError("guided policy search needs the task's cost (task.cost)")
    return [build_cost(task.cost, robot.spec, task.scene, condition) for condition in task.conditions]


def build_gps(params: dict, robot, task, model) -> GPSController:
    """controller: {type: gps, kl_step: 0.2, init_std: 0.1, ...} (fields of GPSConfig), on `model: {type: tvlg}`."""
    config = from_mapping(GPSConfig, params, "controller:")
    spec = robot.spec
    return GPSController(spec.n, spec.m, task.horizon, _task_costs(robot, task), hold_actions(robot, task), model,
                         config, task.seed)


def build_mdgps(params: dict, robot, task, model) -> MDGPSController:
    """controller: {type: mdgps, features: [hole], hidden: [64, 64], ...} (fields of MDGPSConfig), on `model: {type: tvlg}`."""
    config = from_mapping(MDGPSConfig, params, "controller:")
    spec = robot.spec
    features = np.stack([condition_features(c, config.features) for c in task.conditions])
    network = MLPPolicyConfig(config.hidden, config.epochs, config.batch_size, config.lr, config.weight_decay, task.seed)
    names = {"state_names": list(spec.state_names), "action_names": list(spec.action_names), "features": list(config.features)}
    mlp = MLPPolicy(spec.n, spec.m, features.shape[1], network, names)
    gps = {f.name: getattr(config, f.name) for f in fields(GPSConfig)}
    return MDGPSController(
        spec.n, spec.m, task.horizon, _task_costs(robot, task), hold_actions(robot, task), model, features, mlp,
        GPSConfig(**gps), task.seed,
    )
