"""Guided policy search: the GPS controllers on fitted local models.

Trajectory-centric GPS anchors each condition's KL-constrained LQG update (controllers/kl_lqg.py)
to the previous controller of its condition; mirror descent GPS (Montgomery & Levine 2016) anchors
it to the linearised neural-network policy and then trains that policy on the new controllers by
precision-weighted regression.
"""


from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from forethought.controllers.kl_lqg import (
    DualSearchError,
    LinearGaussianGains,
    QuadraticCost,
    cost_expansion,
    expected_cost,
    kl_constrained_update,
    sampled_cost,
    step_size_multiplier,
    trajectory_gaussians,
)
from forethought.controllers.linear_gaussian import LinearGaussianPolicy
from forethought.controllers.nn_policy import MLPPolicy, MLPPolicyConfig, NNPolicy, condition_features
from forethought.models.tvlg import LinearGaussianDynamics
from forethought.robots.config import ConfigError, from_mapping


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
        return self.mlp.save_in(folder)


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
