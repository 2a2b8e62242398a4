"""PILCO (Deisenroth and Rasmussen, ICML 2011): policy search through a GP dynamics model.

The loop: the first trial runs uniformly random actions; after every trial the experiment loop
fits the GP (models.gp: `model: {type: gp}`, the only model that propagates moments) on all
transitions so far, then `update` improves the policy (controllers.rbf_policy) by L-BFGS
on the predicted value J = sum_{t=1..H} E[c(x_t)], where x_0 ~ N(start mean, start cov) and every
step is moment matched: policy, GP, and the expected saturating cost, all exact in the moments
and differentiated by autograd. The angles' (sin, cos) moments are matched once per predicted state
and shared by policy, GP and cost (as PILCO's propagate does) rather than matched in each: on the
cart-pole a rollout with its gradient takes about a quarter less time. The next trial runs the
improved policy on the robot.

The cost is the experiment's own (controllers.costs): PILCO takes its `saturating` terms,
1 - exp(-d^2 / (2 sigma^2)) with d^2 = sum_i w_i e_i^2 and angle entries as the chord 2 (1 - cos e_i),
whose expectation under a Gaussian is closed-form once the angles are moment matched to (sin, cos)
pairs (d^2 is then quadratic in them). Term weights, final weights and ramps apply as in the cost.

In an experiment file:

    model: {type: gp, states: [cart, pole, d_cart, d_pole], actions: [force],   # what PILCO learns
            angle_states: [pole], restarts: 1, inducing: 300}                    # (default: all)
    controller:
      type: pilco
      hold: {}                                 # values for the other actions (default: middle of bounds)
      start: {mean: [0, 0, 0, 0], std: 0.1}    # x_0 (default: the robot's, else the trials' first states)
      policy: {kind: rbf, basis: 50, lengthscale: 1.0}
      optimiser: {max_iter: 150, first_restarts: 2}
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from forethought.controllers.costs import Cost, SaturatingCost, build_cost
from forethought.controllers.rbf_policy import LinearPolicy, RBFPolicy, SaturatedPolicy
from forethought.models.gp import GPModel, is_numerical, minimize_lbfgs
from forethought.models.torch_threads import one_torch_thread
from forethought.models.moment_matching import augment_with_trig, augment_with_trig_moments
from forethought.robots.config import ConfigError, from_mapping
from forethought.robots.progress import Progress
from forethought.robots.robot import RobotSpec
from forethought.robots.trial import Trial

log = logging.getLogger(__name__)

DTYPE = torch.float64
POLICY_KINDS = ("rbf", "linear")


@dataclass
class PolicyConfig:
    """kind: rbf or linear; basis: RBF centres; lengthscale: the RBF length-scales' start."""

    kind: str = "rbf"
    basis: int = 10
    lengthscale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy.kind: unknown policy '{self.kind}' (known: {', '.join(POLICY_KINDS)})")
        if self.basis < 1 or not self.lengthscale > 0:
            raise ValueError("policy: basis must be >= 1 and lengthscale > 0")


@dataclass
class OptimiserConfig:
    """max_iter: L-BFGS iterations per policy optimisation; restarts: fresh random policies optimised
    besides the current one at every update, the one with the lowest predicted cost kept (0: PILCO's
    own warm-started search only); first_restarts: the same at the first update only, where no
    policy has been learned yet and one poor random start would set the course of every later
    warm-started search (None: as `restarts`)."""

    max_iter: int = 150
    restarts: int = 0
    first_restarts: int | None = None

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ValueError(f"optimiser.max_iter must be at least 1, got {self.max_iter}")
        if self.restarts < 0 or (self.first_restarts is not None and self.first_restarts < 0):
            raise ValueError(f"optimiser.restarts and first_restarts must not be negative, "
                             f"got {self.restarts} and {self.first_restarts}")


@dataclass
class StartConfig:
    """The start state distribution N(mean, diag(std^2)) in the order of `states`; std a number or a list."""

    mean: list[float]
    std: float | list[float]


@dataclass
class PilcoConfig:
    """See the module docstring. The states and actions PILCO learns are the GP's (the experiment's
    `model: {type: gp, states, actions}`); hold: the other actions' values; seed: for the random
    trial and the policy's start (default: the experiment's)."""

    hold: dict = field(default_factory=dict)
    start: StartConfig | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    seed: int | None = None


# -- the expected cost --------------------------------------------------------------------------------


class ExpectedCost:
    """E[c(x_t)] for x_t ~ N(mean, cov) over the model's states, for the saturating terms of a Cost.

    cost: a controllers.costs.Cost over the robot's states `robot_states`; model_states: the names of
    the model's state entries (every state a term weighs must be among them); horizon: H, for ramps
    and the final weight at t = H.

    The parameters (the distance's weights, targets and angles, sigma) are the terms' own objects,
    and each step's weight comes from the cost's schedule (`Weighted.scale`). The value cannot be
    the term's `value`: that is c at a point, and E[c(x)] under a Gaussian is not c at the mean;
    its closed form (`expected_saturating_cost`) rewrites the term's d^2 as a quadratic in
    (plain entries, sin and cos of the angles) and integrates the exponential against their moments.
    """

    def __init__(self, cost: Cost, robot_states: Sequence[str], model_states: Sequence[str], horizon: int):
        self.horizon = int(horizon)
        self.terms = []
        model_states = list(model_states)
        for i, weighted in enumerate(cost.terms):
            term = weighted.term
            if not isinstance(term, SaturatingCost):
                raise ConfigError(
                    f"cost.terms[{i}]: PILCO takes saturating terms only (their expectation is closed-form), "
                    f"got {type(term).__name__}"
                )
            distance = term.distance
            names = [robot_states[j] for j in distance.index]
            missing = [s for s in names if s not in model_states]
            if missing:
                raise ConfigError(f"cost.terms[{i}]: weighs states the model does not cover: {missing}")
            index = torch.tensor([model_states.index(s) for s in names], dtype=torch.long)
            self.terms.append((weighted, index, distance, term.sigma))

    def __call__(self, mean: torch.Tensor, cov: torch.Tensor, t: int) -> torch.Tensor:
        """(B,) expected cost at step t (1..H) of x ~ N(mean (B, n), cov (B, n, n))."""
        total = torch.zeros(mean.shape[0], dtype=mean.dtype)
        for weighted, index, distance, sigma in self.terms:
            scale = self._scale(weighted, t)
            if scale == 0.0:
                continue
            angle = torch.as_tensor(distance.angle)
            total = total + scale * expected_saturating_cost(
                mean[:, index], cov[:, index[:, None], index[None, :]],
                torch.as_tensor(distance.weights), torch.as_tensor(distance.target), angle, sigma,
            )
        return total

    def augmented(self, aug_mean: torch.Tensor, aug_cov: torch.Tensor, angles: torch.Tensor, t: int) -> torch.Tensor:
        """`self(mean, cov, t)` from the trig-augmented Gaussian over [x, sin x_angles, cos x_angles]
        (mean (B, n+2k), cov (B, n+2k, n+2k), as `augment_with_trig` gives it), whose (sin, cos)
        moments a rollout has already matched; every angle the cost weighs must be among `angles` (k,)."""
        angles = angles.tolist()
        n = aug_mean.shape[-1] - 2 * len(angles)
        total = torch.zeros(aug_mean.shape[0], dtype=aug_mean.dtype)
        for weighted, index, distance, sigma in self.terms:
            scale = self._scale(weighted, t)
            if scale == 0.0:
                continue
            plain, trig = index[~torch.as_tensor(distance.angle)], index[torch.as_tensor(distance.angle)].tolist()
            if not set(trig) <= set(angles):
                raise ValueError(f"the cost weighs angles {trig} that are not among the augmented ones {angles}")
            slots = torch.tensor([angles.index(i) for i in trig], dtype=torch.long)
            y = torch.cat([plain, n + slots, n + len(angles) + slots])
            goal, v = _goal_and_scales(torch.as_tensor(distance.weights), torch.as_tensor(distance.target),
                                       torch.as_tensor(distance.angle), sigma)
            total = total + scale * saturating_expectation(aug_mean[:, y], aug_cov[:, y[:, None], y[None, :]], goal, v)
        return total

    def _scale(self, weighted, t: int) -> float:
        """The term's weight at step t: its final weight at t = H, its ramped running weight before."""
        return weighted.scale(t, self.horizon)


def _goal_and_scales(weights, target, angle, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y* (K,) and V = sqrt(diag W) (K,) of `expected_saturating_cost` over y = [plain, sin, cos]."""
    plain, angles = ~angle, angle
    goal = torch.cat([target[plain], torch.sin(target[angles]), torch.cos(target[angles])]).to(torch.float64)
    w = torch.cat([weights[plain], weights[angles], weights[angles]]).to(torch.float64)
    return goal, torch.sqrt(w) / sigma


def expected_saturating_cost(mean, cov, weights, target, angle, sigma: float) -> torch.Tensor:
    """E[1 - exp(-d^2 / (2 sigma^2))] (B,) for e ~ N(mean (B, k), cov (B, k, k)) of the weighed entries.

    d^2 = sum_i weights_i (e_i - target_i)^2, with the entries where `angle` (k,) bool is set entering
    as 2 (1 - cos(e_i - target_i)) = |(sin e_i, cos e_i) - (sin target_i, cos target_i)|^2: d^2 is
    quadratic in y = [plain entries, sin angles, cos angles], whose moments are exact, and
    E[exp(-(y - y*)^T W (y - y*) / 2)] = |I + V S V|^-1/2 exp(-r^T V (I + V S V)^-1 V r / 2)
    with W = V^2 = diag(weights) / sigma^2, S the covariance of y and r = E[y] - y*.
    """
    angle_index = torch.nonzero(angle).reshape(-1)
    plain = torch.nonzero(~angle).reshape(-1)
    k = mean.shape[-1]
    aug_mean, aug_cov = augment_with_trig(mean, cov, angle_index)
    y = torch.cat([plain, torch.arange(k, k + 2 * len(angle_index))])
    goal, v = _goal_and_scales(weights, target, angle, sigma)
    return saturating_expectation(aug_mean[:, y], aug_cov[:, y[:, None], y[None, :]], goal.to(mean.dtype), v.to(mean.dtype))


def saturating_expectation(y_mean: torch.Tensor, y_cov: torch.Tensor, goal: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """E[1 - exp(-|V (y - goal)|^2 / 2)] (B,) for y ~ N(y_mean (B, K), y_cov (B, K, K)), V = diag(v (K,))."""
    A = v[:, None] * y_cov * v[None, :] + torch.eye(len(v), dtype=y_mean.dtype)
    L = torch.linalg.cholesky(A)
    r = ((y_mean - goal) * v)[..., None]
    quad = (r * torch.cholesky_solve(r, L)).sum((-1, -2))
    log_det = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return 1.0 - torch.exp(-0.5 * quad - 0.5 * log_det)


# -- predicted trajectories ----------------------------------------------------------------------------


def predict_trajectory(model: GPModel, policy: SaturatedPolicy, mean0: torch.Tensor, cov0: torch.Tensor,
                       horizon: int, cost: ExpectedCost | None = None):
    """Moment-matched rollout of `policy` through `model` from x_0 ~ N(mean0 (B, n), cov0 (B, n, n)).

    Returns (means (H+1, B, n), covs (H+1, B, n, n), expected costs (H, B) of x_1..x_H, or None without a cost).
    """
    angles = model.angle_index
    if not torch.equal(policy.angle_index, angles):
        raise ValueError(f"the policy's angles {policy.angle_index.tolist()} differ from the model's {angles.tolist()}")
    mean, cov = mean0, cov0
    means, covs, costs = [mean], [cov], []
    policy_moments = policy.augmented_moment_map()
    # The angles' (sin, cos) moments, matched once per state for policy, model and cost alike.
    aug = augment_with_trig_moments(mean, cov, angles)
    for t in range(horizon):
        u_mean, u_cov, xu = policy_moments(aug.mean, aug.cov)
        # Cov[(sin, cos), u] through the angles, as the model's own augmentation of (x, u) has it.
        yu = torch.cat([xu, aug.C.transpose(-1, -2) @ xu[:, angles]], dim=-2)
        joint_mean = torch.cat([aug.mean, u_mean], dim=-1)
        joint_cov = torch.cat(
            [torch.cat([aug.cov, yu], dim=-1), torch.cat([yu.transpose(-1, -2), u_cov], dim=-1)], dim=-2
        )
        mean, cov, _ = model.propagate_augmented(joint_mean, joint_cov)
        means.append(mean)
        covs.append(cov)
        aug = augment_with_trig_moments(mean, cov, angles)
        if cost is not None:
            costs.append(cost.augmented(aug.mean, aug.cov, angles, t + 1))
    return torch.stack(means), torch.stack(covs), (torch.stack(costs) if cost is not None else None)


def optimise_policy(model: GPModel, policy: SaturatedPolicy, cost: ExpectedCost, mean0, cov0, horizon: int,
                    max_iter: int, progress: Progress | None = None) -> dict[str, float]:
    """Improve `policy` in place by L-BFGS on J = sum_{t=1..H} E[c(x_t)]; returns J before and after.
    progress: told each evaluation of J and the best so far."""
    params = [p for p in policy.parameters() if p.requires_grad]

    def value() -> torch.Tensor:
        return predict_trajectory(model, policy, mean0, cov0, horizon, cost)[2].sum()

    start = time.perf_counter()
    with torch.no_grad():
        try:
            before = float(value())
        except (RuntimeError, ValueError) as err:  # a factorisation that fails counts as an infinite cost
            if not is_numerical(err):
                raise
            before = math.inf
    result = minimize_lbfgs(value, params, max_iter, until_max_iter=True, progress=progress)
    return {"predicted_cost_before": before, "predicted_cost": result.value, "evaluations": float(result.evaluations),
            "optimise_s": time.perf_counter() - start}


# -- the controller ----------------------------------------------------------------------------------------


class PilcoPolicy:
    """A robot Policy from a model-state policy: picks the model's states, fills the held actions.

    inner: a SaturatedPolicy on the model's state, or None for uniform random learned actions (seeded).
    """

    def __init__(self, spec: RobotSpec, state_index, action_index, hold: np.ndarray,
                 inner: SaturatedPolicy | None, seed: int = 0):
        self.spec, self.inner, self.seed = spec, inner, seed
        self.state_index = np.asarray(state_index, dtype=np.intp)
        self.action_index = np.asarray(action_index, dtype=np.intp)
        self.hold = np.asarray(hold, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        u = self.hold.copy()
        if self.inner is None:
            u[self.action_index] = self._rng.uniform(self.spec.action_low[self.action_index],
                                                      self.spec.action_high[self.action_index])
        else:
            u[self.action_index] = self.inner.act(np.asarray(x, dtype=np.float64)[self.state_index], t)
        return u


class PilcoController:
    """The PILCO Controller: a random first trial, then fit-and-optimise after every trial.

    spec: the robot's; costs: one controllers.costs.Cost per condition; config: PilcoConfig;
    horizon: H steps per trial; model: the GPModel (fitted by the experiment loop on every trial so
    far before each update; its states and actions are those PILCO learns); start: (mean (n,),
    std (n,)) of x_0 over the model's states, or None to take the mean and spread of the trials'
    first states (std at least 1e-2 where only one trial is known).
    """

    # What changes between iterations, and what a run's checkpoint keeps (scripts/checkpoint.py).
    checkpoint_attributes = ("policies", "trials", "trial_costs", "iteration", "history")

    def __init__(self, spec: RobotSpec, costs: Sequence[Cost], config: PilcoConfig, horizon: int,
                 model: GPModel, seed: int = 0, start: tuple[np.ndarray, np.ndarray] | None = None):
        self.spec, self.config, self.horizon = spec, config, int(horizon)
        self.seed = int(config.seed if config.seed is not None else seed)
        states, actions = list(model.state_names), list(model.action_names)
        for kind, names, known in (("states", states, spec.state_names), ("actions", actions, spec.action_names)):
            unknown = [s for s in names if s not in known]
            if unknown:
                raise ConfigError(f"{kind}: unknown names {unknown} (known: {', '.join(known)})")
        self.state_index = [spec.state_names.index(s) for s in states]
        self.action_index = [spec.action_names.index(a) for a in actions]
        low, high = spec.action_low[self.action_index], spec.action_high[self.action_index]
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ConfigError(f"actions: PILCO's policies need finite bounds, and {spec.name} has infinite ones")
        unknown = sorted(set(config.hold) - set(spec.action_names))
        if unknown:
            raise ConfigError(f"hold: unknown action {unknown[0]!r} (known: {', '.join(spec.action_names)})")
        self.hold = 0.5 * (np.where(np.isfinite(spec.action_low), spec.action_low, 0.0)
                           + np.where(np.isfinite(spec.action_high), spec.action_high, 0.0))
        for name, value in config.hold.items():
            self.hold[spec.action_names.index(name)] = float(value)
        self.model = model
        self.costs = [ExpectedCost(cost, spec.state_names, states, self.horizon) for cost in costs]
        self.start = start
        if start is not None:
            mean, std = (np.asarray(v, dtype=np.float64).reshape(-1) for v in start)
            std = np.broadcast_to(std, mean.shape) if std.size == 1 else std
            if mean.shape != (len(states),) or std.shape != mean.shape:
                raise ConfigError(f"start: mean and std need {len(states)} entries (one per state: {', '.join(states)})")
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
                raise ConfigError(f"start: mean and std must be finite and std not negative, got {mean.tolist()} and {std.tolist()}")
            self.start = (mean, std)
        self.policies: list[SaturatedPolicy | None] = [None] * len(self.costs)
        self.trials: list[Trial] = []
        self.trial_costs: list[float] = []
        self.iteration = 0
        self.history: list[dict[str, float]] = []

    # -- Controller ----------------------------------------------------------------------------------------
    def policy(self, condition: int) -> PilcoPolicy:
        """Uniform random learned actions before the first update, then the optimised policy."""
        seed = self.seed * 1_000_003 + 1009 * self.iteration + condition
        return PilcoPolicy(self.spec, self.state_index, self.action_index, self.hold, self.policies[condition], seed)

    def update(self, trials: Sequence[Sequence[Trial]]) -> dict[str, float]:
        """Optimise each condition's policy through the GP, which the experiment loop has just fitted
        on every trial so far (on one torch thread, see `one_torch_thread`)."""
        with one_torch_thread():
            return self._update(trials)

    def _update(self, trials: Sequence[Sequence[Trial]]) -> dict[str, float]:
        start = time.perf_counter()
        for condition, group in enumerate(trials):
            for trial in group:
                self.trial_costs.append(self.trial_cost(trial, condition))
                self.trials.append(trial)
        mean0, cov0 = self.start_distribution()
        diagnostics: dict[str, float] = {}
        settings = self.config.optimiser
        for c, cost in enumerate(self.costs):
            restarts = settings.restarts
            if self.policies[c] is None and settings.first_restarts is not None:
                restarts = settings.first_restarts
            current = self.policies[c] if self.policies[c] is not None else self._new_policy(mean0, cov0, c, 0)
            candidates = [current] + [self._new_policy(mean0, cov0, c, r + 1) for r in range(restarts)]
            where = "" if len(self.costs) == 1 else f", condition {c}"
            progress = Progress(f"PILCO policy optimisation{where}", unit="evaluations")
            results = []
            for k, policy in enumerate(candidates):
                progress.values["start"] = f"{k + 1}/{len(candidates)}"
                results.append(optimise_policy(self.model, policy, cost, mean0, cov0, self.horizon,
                                               settings.max_iter, progress))
            best = min(range(len(candidates)), key=lambda i: results[i]["predicted_cost"])
            progress.values.pop("start")
            progress.finish(best=results[best]["predicted_cost"])
            self.policies[c] = candidates[best]
            result = dict(results[best], optimise_s=sum(r["optimise_s"] for r in results), kept_start=float(best))
            suffix = "" if len(self.costs) == 1 else f"_{c}"
            diagnostics.update({key + suffix: value for key, value in result.items()})
        diagnostics["iteration_s"] = time.perf_counter() - start
        self.iteration += 1
        self.history.append(diagnostics)
        log.info("PILCO iteration %d: %s", self.iteration, diagnostics)
        return diagnostics

    def trial_cost(self, trial: Trial, condition: int = 0) -> float:
        """The trial's cost as PILCO counts it: sum over t = 1..H of c(x_t) (the final weight at H)."""
        x = torch.as_tensor(trial.states[:, self.state_index], dtype=DTYPE)
        point = torch.zeros(1, x.shape[1], x.shape[1], dtype=DTYPE)
        cost = self.costs[condition]
        return sum(float(cost(x[t : t + 1], point, t)) for t in range(1, trial.horizon + 1))

    @property
    def learning_curve(self) -> dict[str, list[float]]:
        """trial_cost: PILCO's cost of every trial so far, in order (the first is the random one);
        predicted_cost: the value J the model predicted for each optimised policy (one per update,
        the first condition's)."""
        key = "predicted_cost" if len(self.costs) == 1 else "predicted_cost_0"
        return {"trial_cost": list(self.trial_costs), "predicted_cost": [h[key] for h in self.history]}

    # -- pieces ------------------------------------------------------------------------------------------
    def start_distribution(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x_0's mean (1, n) and covariance (1, n, n) over the model's states."""
        if self.start is not None:
            mean, std = self.start
        else:
            firsts = np.stack([t.states[0, self.state_index] for t in self.trials])
            mean = firsts.mean(axis=0)
            std = np.maximum(firsts.std(axis=0), 1e-2) if len(firsts) > 1 else np.full(len(mean), 1e-2)
        mean = torch.as_tensor(mean, dtype=DTYPE).reshape(1, -1)
        cov = torch.diag_embed(torch.as_tensor(np.square(std), dtype=DTYPE)).reshape(1, len(std), len(std))
        return mean, cov

    def _new_policy(self, mean0: torch.Tensor, cov0: torch.Tensor, condition: int, draw: int) -> SaturatedPolicy:
        """A random policy (seeded by the controller's seed, the condition, the iteration and `draw`)."""
        cfg = self.config.policy
        low = self.spec.action_low[self.action_index]
        high = self.spec.action_high[self.action_index]
        seed = ((self.seed * 7919 + condition) * 104_729 + self.iteration) * 101 + draw
        angles = self.model.angle_index.tolist()
        if cfg.kind == "linear":
            return LinearPolicy(self.model.n, angles, low, high, seed=seed)
        policy = RBFPolicy(self.model.n, angles, low, high, basis=cfg.basis, lengthscale=cfg.lengthscale, seed=seed)
        with torch.no_grad():
            z_mean, z_cov, _ = policy.feature_moments(mean0, cov0)
        return RBFPolicy(self.model.n, angles, low, high, basis=cfg.basis, lengthscale=cfg.lengthscale,
                         init_mean=z_mean[0], init_cov=z_cov[0], seed=seed)

    def save(self, folder: str | Path) -> None:
        """Write the GP (gp.pt), the policies (policy_C.pt) and the learning curve (learning_curve.json)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.model.fitted:
            self.model.save(folder / "gp.pt")
        for c, policy in enumerate(self.policies):
            if policy is not None:
                torch.save(policy.state_dict(), folder / f"policy_{c}.pt")
        (folder / "learning_curve.json").write_text(json.dumps(self.learning_curve, indent=2) + "\n")


def start_of(config: PilcoConfig, robot, states) -> tuple[np.ndarray, np.ndarray] | None:
    """x_0's (mean, std) over the model's `states`: the config's `start`, else the robot's own start
    distribution if it declares one (`initial_state_distribution() -> (mean (n,), std (n,))`), else None."""
    if config.start is not None:
        return np.asarray(config.start.mean, dtype=np.float64), np.asarray(config.start.std, dtype=np.float64)
    declared = getattr(robot, "initial_state_distribution", None)
    if not callable(declared):
        return None
    names = list(robot.spec.state_names)
    index = [names.index(s) for s in states if s in names]
    mean, std = declared()
    return np.asarray(mean, dtype=np.float64)[index], np.asarray(std, dtype=np.float64)[index]


def build_pilco(params: dict, robot, task, model) -> PilcoController:
    """The `pilco` controller of an experiment: params from its YAML `controller` section, on its GP."""
    config = from_mapping(PilcoConfig, params, "pilco:")
    if not isinstance(task.cost, dict) or not task.cost:
        raise ConfigError("pilco needs the task's `cost` (its saturating terms)")
    costs = [build_cost(task.cost, robot.spec, task.scene, condition) for condition in task.conditions]
    return PilcoController(robot.spec, costs, config, task.horizon, model, task.seed,
                           start=start_of(config, robot, model.state_names))
