"""MPC distillation: a network policy trained by DAgger on a planner's actions at the states it visits.

A planning controller (iLQR-MPC, sampling MPC: an MPCController) acts well and slowly; the network
MLPPolicy (controllers/nn_policy.py) acts in a fraction of a millisecond. `distill:` on a planning
controller's section wraps it in a DistillController (Ross et al. 2011's DAgger, the planner as the
expert, as in Nagabandi et al. 2018's model-based initialisation):

- the planner itself acts for the first `expert_iterations` iterations (its own actions are its
  labels: the trials' requested actions);
- after that the network acts, and every state it visits is labelled with the planner's action
  there: the planner's receding-horizon policy is replayed along the trial's states (x_t at tick t,
  warm-started from its own last plan as when it acts);
- each update adds the new (state, condition features, planner action) samples to everything
  labelled so far and fits the network on all of them with MLPPolicy.fit (the trainer MDGPS uses).

The network takes the condition's `features` (e.g. the reach target) beside the state, so one
network serves every condition. It is saved as RUN/models/nn_policy.pt, which
`controller: {type: nn_policy, path: ...}` and `forethought deploy --policy RUN` run alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from forethought.controllers.mpc import MPCController
from forethought.controllers.nn_policy import MLPPolicy, MLPPolicyConfig, NNPolicy, condition_features
from forethought.robots.config import ConfigError, from_mapping


@dataclass
class DistillConfig:
    """The `distill:` section of a planning controller.

    features: condition keys the network takes beside the state (e.g. [target]); expert_iterations:
    loop iterations in which the planner acts itself (at least 1; a learned model's random first
    trials count, and are labelled by the planner once the model is fitted); noise_std: std of the
    Gaussian noise on the network's actions in its training trials (in the action's units; 0: none),
    which widens the states it visits and labels; it is also the saved policy's action std (0.01
    when 0) for `nn_policy` with noise: true. hidden, epochs, batch_size, lr, weight_decay: the
    network and its fit (MLPPolicyConfig).
    """

    features: list[str] = field(default_factory=list)
    expert_iterations: int = 1
    noise_std: float = 0.0
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-5

    def __post_init__(self) -> None:
        if self.expert_iterations < 1:
            raise ValueError(f"expert_iterations must be at least 1, got {self.expert_iterations}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be non-negative, got {self.noise_std}")


class DistillController:
    """DAgger around a planning controller `expert` (see the module docstring).

    task: the experiment's Task (its conditions are set on `model` before the planner labels);
    features: (C, f) per condition; mlp: the network to train; noise_std: as in DistillConfig.
    inputs (N, n), input_features (N, f), labels (N, m): every labelled sample so far.
    """

    checkpoint_attributes = ("mlp", "iteration", "inputs", "input_features", "labels", "_runs")

    def __init__(self, expert: MPCController, task, model, features: np.ndarray, mlp: MLPPolicy,
                 expert_iterations: int = 1, noise_std: float = 0.0, seed: int = 0):
        self.expert, self.task, self.model, self.mlp = expert, task, model, mlp
        self.features = np.asarray(features, dtype=np.float64).reshape(len(task.conditions), -1)
        if self.features.shape[1] != mlp.f:
            raise ValueError(f"distill: the network takes {mlp.f} features, the conditions give {self.features.shape[1]}")
        self.expert_iterations, self.noise_std, self.seed = int(expert_iterations), float(noise_std), int(seed)
        self.iteration = 0
        self._runs = 0
        self.inputs = np.zeros((0, mlp.n))
        self.input_features = np.zeros((0, mlp.f))
        self.labels = np.zeros((0, mlp.m))

    @property
    def network_acts(self) -> bool:
        """Whether this iteration's trials are the network's (else the planner's)."""
        return self.mlp.trained and self.iteration >= self.expert_iterations

    def policy(self, condition: int):
        if not self.network_acts:
            # Before a learned model's first fit the planner hands out random policies: not labels.
            self._own_labels = self._expert_ready()
            return self.expert.policy(condition)
        self._own_labels = False
        self._runs += 1
        seed = int(np.random.SeedSequence([self.seed, self._runs, condition]).generate_state(1)[0])
        return NNPolicy(self.mlp, self.features[condition], noise=self.noise_std > 0, seed=seed)

    def _expert_ready(self) -> bool:
        return not (getattr(self.model, "learned", False) and not getattr(self.model, "fitted", True))

    def expert_actions(self, condition: int, states: np.ndarray) -> np.ndarray:
        """The planner's actions (T, m) at states (T+1, n) of a trial in `condition`, visited in order."""
        self.task.apply(condition, None, [] if self.model is None else [self.model])
        policy = self.expert.policy(condition)
        policy.reset()
        return np.stack([policy.act(x, t) for t, x in enumerate(states[:-1])])

    def update(self, trials: Sequence[Sequence]) -> dict[str, float]:
        """Label this iteration's trials, add them to the data and refit the network on all of it."""
        if not self._expert_ready():
            raise RuntimeError("distill: the planner's model is not fitted, so it cannot label states")
        relabel = not getattr(self, "_own_labels", False)
        started, labelled = time.perf_counter(), 0
        x, f, u, gaps = [], [], [], []
        for c, group in enumerate(trials):
            for trial in group:
                states = trial.states
                if relabel:
                    labels = self.expert_actions(c, states)
                    labelled += len(labels)
                    if self.mlp.trained:  # the network's own mean action, without its exploration noise
                        mean = self.mlp.mean(states[:-1], self.features[c])
                        gaps.append(np.linalg.norm(mean - labels, axis=1))
                else:
                    labels = trial.requested_actions
                x.append(states[:-1])
                f.append(np.tile(self.features[c], (len(labels), 1)))
                u.append(labels)
        label_s = time.perf_counter() - started
        self.inputs = np.concatenate([self.inputs, *x])
        self.input_features = np.concatenate([self.input_features, *f])
        self.labels = np.concatenate([self.labels, *u])
        std = self.noise_std if self.noise_std > 0 else 0.01
        precision = np.broadcast_to(np.eye(self.mlp.m) / std**2, (len(self.labels), self.mlp.m, self.mlp.m))
        fit = self.mlp.fit(self.inputs, self.input_features, self.labels, precision)
        self.iteration += 1
        diagnostics = {"policy_loss": fit["loss_end"], "samples": float(fit["samples"])}
        if gaps:
            # DAgger's on-policy error: how far the network's mean actions were from the planner's where
            # it went, before the refit.
            diagnostics["expert_gap"] = float(np.mean(np.concatenate(gaps)))
        if labelled:
            diagnostics["label_ms"] = 1e3 * label_s / labelled
        expert = self.expert.report([]) or {}
        diagnostics.update({f"expert_{k}": v for k, v in expert.items()})
        return diagnostics

    def save(self, folder: str | Path) -> list[Path]:
        """Write the network to folder/nn_policy.pt (run it alone with `controller: {type: nn_policy}`)."""
        return self.mlp.save_in(folder)


def build_distill(params: dict, expert, kind: str, robot, task, model) -> DistillController:
    """`distill: {features: [target], ...}` (fields of DistillConfig) on the planning controller
    `expert` that the rest of the section (type `kind`) built."""
    if not isinstance(expert, MPCController):
        raise ConfigError(f"distill: is an option of a planning controller (ilqr_mpc, sampling_mpc), not of {kind}")
    config = from_mapping(DistillConfig, params, "distill")
    spec = robot.spec
    features = np.stack([condition_features(c, config.features) for c in task.conditions])
    network = MLPPolicyConfig(config.hidden, config.epochs, config.batch_size, config.lr, config.weight_decay, task.seed)
    names = {"state_names": list(spec.state_names), "action_names": list(spec.action_names),
             "features": list(config.features), "distilled_from": kind}
    mlp = MLPPolicy(spec.n, spec.m, features.shape[1], network, names)
    return DistillController(expert, task, model, features, mlp, config.expert_iterations, config.noise_std, task.seed)
