"""PETS (Chua et al. 2018): a probabilistic ensemble, trajectory sampling and sampling MPC.

The loop: the first iteration runs a seeded random policy; after each iteration `update` fits the
ensemble on every transition seen so far (after measuring how well the previous model predicted
the new trials), and `policy(c)` plans every step through the ensemble with CEM, iCEM, MPPI or
random shooting on condition c's cost.

In an experiment file:

    controller:
      type: pets
      propagation: tsinf
      planner: {kind: cem, horizon: 15, population: 350, particles: 20, iterations: 5, elites: 35}
      ensemble: {members: 5, hidden: [200, 200, 200], angle_states: [pole]}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from forethought.controllers.mpc import RecedingHorizonPolicy, initial_action
from forethought.controllers.costs import build_planning_cost
from forethought.controllers.policy import RandomPolicy
from forethought.controllers.samplers import PLANNERS, PlanningCost, make_planner, planner_settings
from forethought.models.ensemble import PROPAGATIONS, EnsembleConfig, EnsembleModel, gaussian_nll
from forethought.robots.config import ConfigError, from_mapping
from forethought.robots.robot import RobotSpec
from forethought.robots.trial import Trial


@dataclass
class PetsConfig:
    """ensemble: the EnsembleConfig; planner: {kind: cem|icem|mppi|random_shooting, ...its settings};
    propagation: tsinf, ts1 or expectation; initial_action: the first plan's warm start, "middle"
    (of the action bounds), "hold" (position targets at the current joint positions) or a list of
    m numbers; seed: for the random trial, the ensemble and the planners (default: the
    experiment's seed)."""

    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    planner: dict = field(default_factory=lambda: {"kind": "cem"})
    propagation: str = "tsinf"
    initial_action: str | list[float] = "middle"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.propagation not in PROPAGATIONS:
            raise ValueError(f"unknown propagation '{self.propagation}' (known: {', '.join(PROPAGATIONS)})")
        if self.ensemble.seed != EnsembleConfig.seed:
            raise ValueError("ensemble: seed: set the controller's `seed` instead (it seeds every part)")
        planner_settings(self.planner)


def model_errors(model: EnsembleModel, trials: Sequence[Trial], horizon: int) -> tuple[dict[str, float], np.ndarray]:
    """How well `model` predicts trials it has not seen: one-step NLL and RMSE, open-loop RMSE, and
    per state (n,) the one-step RMSE over the spread (std) of that state's one-step change in the
    data the model was fitted on (near 1 or above: no better than predicting the average change,
    as for an unlearned contact); `one_step_nrmse` is its mean over the states.

    The open-loop error follows each trial's logged actions for `horizon` steps from every start
    through the mixture mean, as the planner's predictions do.
    """
    xs = np.concatenate([t.states[:-1] for t in trials])
    us = np.concatenate([t.actions for t in trials])
    ys = np.concatenate([t.states[1:] for t in trials])
    mean, var = model.predict(xs, us)
    squared = (mean - ys) ** 2
    per_state = np.sqrt(squared.mean(axis=0)) / model.target_stats.std
    result = {
        "one_step_nll": gaussian_nll(mean, var, ys),
        "one_step_rmse": float(np.sqrt(squared.mean())),
        "one_step_nrmse": float(np.mean(per_state)),
    }
    errors = []
    for trial in trials:
        T = trial.horizon
        steps = min(horizon, T)
        x = trial.states[: T - steps + 1].copy()
        for k in range(steps):
            x, _ = model.predict(x, trial.actions[k : T - steps + 1 + k])
        errors.append((x - trial.states[steps:]) ** 2)
    result[f"open_loop_rmse_{horizon}"] = float(np.sqrt(np.mean(np.concatenate(errors))))
    return result, per_state


class PetsController:
    """The PETS Controller: random first trials, then MPC through an ensemble refitted on all data."""

    def __init__(self, spec: RobotSpec, costs: Sequence[PlanningCost], config: PetsConfig, seed: int = 0):
        self.spec = spec
        self._initial = initial_action(config.initial_action, spec)
        self.costs = list(costs)
        self.config = config
        self.seed = int(config.seed if config.seed is not None else seed)
        ensemble = dataclasses.replace(config.ensemble, seed=self.seed)
        self.model = EnsembleModel(spec.state_names, spec.action_names, ensemble)
        self.trials: list[Trial] = []
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.state_errors: list[tuple[int, np.ndarray]] = []  # (iteration, per-state errors on its new trials)

    def policy(self, condition: int):
        """A seeded random policy until the ensemble has data, then MPC on condition's cost."""
        seed = self.seed * 1_000_003 + 1009 * self.iteration + condition
        if not self.model.fitted:
            return RandomPolicy(self.spec, seed)
        kind, settings = planner_settings(self.config.planner)
        planner = make_planner(
            kind,
            self.model.dynamics(self.config.propagation),
            self.costs[condition],
            self.spec.action_low,
            self.spec.action_high,
            seed=seed,
            **settings,
        )
        return RecedingHorizonPolicy(planner, self.spec, initial_action=self._initial)

    def update(self, trials: Sequence[Sequence[Trial]]) -> dict[str, float]:
        """Measure the current model on the new trials, then refit it on every trial so far."""
        new = [trial for group in trials for trial in group]
        diagnostics: dict[str, float] = {}
        if self.model.fitted and new:
            kind, settings = planner_settings(self.config.planner)
            horizon = int(settings.get("horizon", PLANNERS[kind][1].horizon))
            errors, per_state = model_errors(self.model, new, horizon)
            diagnostics.update(errors)
            self.state_errors.append((self.iteration + 1, per_state))
        self.trials.extend(new)
        fit = self.model.fit(self.trials)
        diagnostics.update(
            transitions=float(fit["transitions"]),
            fit_epochs=float(fit["epochs"]),
            fit_s=float(fit["fit_s"]),
            holdout_mse=float(fit["holdout_mse_elites"]),
            holdout_nll=float(fit["holdout_nll_elites"]),
        )
        self.iteration += 1
        self.history.append(diagnostics)
        return diagnostics

    def save(self, folder: str | Path) -> None:
        """Write the ensemble (ensemble.pt) and a plot of its prediction errors (model_error.png):
        overall per iteration, and per state (state_errors) as a grid."""
        folder = Path(folder)
        self.model.save(folder / "ensemble.pt")
        measured = [(i + 1, h) for i, h in enumerate(self.history) if "one_step_rmse" in h]
        if not measured:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from matplotlib.colors import LogNorm
        from matplotlib.ticker import MaxNLocator

        names = list(self.spec.state_names)
        fig, (ax, grid) = plt.subplots(
            1, 2, figsize=(12, max(4.0, 0.22 * len(names) + 1.5)), gridspec_kw={"width_ratios": [1, 1.2]}
        )
        keys = [k for k in measured[0][1] if (k.endswith("rmse") or "rmse_" in k) and k != "one_step_nrmse"]
        for key in keys:
            ax.plot([i for i, _ in measured], [h[key] for _, h in measured], marker="o", label=key.replace("_", " "))
        ax.set_yscale("log")
        ax.set_xlabel("iteration (model fitted on the trials before it)")
        ax.set_ylabel("prediction error on the new trials")
        ax.legend()
        # Per state, the one-step error over the spread of the state's change: which states the
        # model has learned (well below 1) and which it has not (1 and above).
        iterations = [i for i, _ in self.state_errors]
        errors = np.stack([e for _, e in self.state_errors], axis=1)
        image = grid.imshow(
            np.clip(errors, 1e-3, 1e2), aspect="auto", cmap="viridis", norm=LogNorm(1e-2, 10.0), interpolation="nearest",
            extent=(iterations[0] - 0.5, iterations[-1] + 0.5, len(names) - 0.5, -0.5),
        )
        grid.set_yticks(range(len(names)), names, fontsize=7)
        grid.set_xlabel("iteration")
        for axis in (ax, grid):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        grid.set_title("one-step error / spread of the change", fontsize=9)
        fig.colorbar(image, ax=grid)
        fig.tight_layout()
        fig.savefig(folder / "model_error.png", dpi=120)
        plt.close(fig)


def build_pets(params: dict, robot, task) -> PetsController:
    """The `pets` controller of an experiment: params from its YAML `controller` section."""
    config = from_mapping(PetsConfig, params, "pets:")
    if not task.cost:
        raise ConfigError("pets plans with the task's `cost`, and this experiment declares none")
    device = config.ensemble.device
    costs = [build_planning_cost(task.cost, robot.spec, task.scene, c, device) for c in task.conditions]
    return PetsController(robot.spec, costs, config, task.seed)
