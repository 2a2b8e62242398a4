"""How well a dynamics model predicts trials: one step ahead, and open loop over growing horizons
under the logged actions. Used by `forethought fit` on held-out trials and by the experiment loop on
each iteration's new trials before it refits a learned model.

A time-varying model (`time_varying`) is asked with each transition's time step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from forethought.robots.trial import Trial


def _predict(model, x: np.ndarray, u: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if getattr(model, "time_varying", False):
        return model.predict(x, u, t=t)
    return model.predict(x, u)


def predict_open_loop(
    model, starts: np.ndarray, actions: np.ndarray, t0: np.ndarray, particles: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate sampled particles through the model under fixed actions.

    starts: (S, n) initial states; actions: (S, H, m); t0: (S,) time index of each start.
    Each step draws x_{k+1} ~ N(mean, var) for every particle, so uncertainty compounds as it does
    on the robot. Returns the particles' mean and std: (S, H+1, n) each.
    """
    rng = np.random.default_rng(seed)
    S, H, _ = actions.shape
    x = np.repeat(starts, particles, axis=0)
    t = np.repeat(np.asarray(t0, dtype=int), particles)
    path = [x.reshape(S, particles, -1)]
    for k in range(H):
        mean, var = _predict(model, x, np.repeat(actions[:, k], particles, axis=0), t + k)
        x = mean + np.sqrt(np.maximum(var, 0.0)) * rng.standard_normal(mean.shape)
        path.append(x.reshape(S, particles, -1))
    stacked = np.stack(path, axis=2)  # (S, P, H+1, n)
    return stacked.mean(axis=1), stacked.std(axis=1)


def predict_one_step(model, trials: Sequence[Trial]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's mean and variance of every logged next state from the logged state and action,
    and the logged next states: (N, n) each, N the trials' transitions in order."""
    x = np.concatenate([t.states[:-1] for t in trials])
    u = np.concatenate([t.actions for t in trials])
    steps = np.concatenate([np.arange(t.horizon) for t in trials])
    mean, var = _predict(model, x, u, steps)
    return mean, var, np.concatenate([t.states[1:] for t in trials])


@dataclass
class PredictionReport:
    """Held-out prediction errors in the state's units and normalised by each state's spread.

    horizons: the open-loop horizons in steps; rmse / normalised_rmse: over all states, one per
    horizon; state_rmse: state name -> one per horizon (positions and velocities apart: on a
    damped arm position errors compound while velocity errors stay bounded);
    one_step_rmse, one_step_nll: from the predicted mean and variance of the next state.
    """

    horizons: list[int]
    rmse: list[float]
    normalised_rmse: list[float]
    state_rmse: dict[str, list[float]]
    one_step_rmse: float
    one_step_nll: float

    def as_dict(self) -> dict:
        return {
            "horizons": self.horizons,
            "rmse": self.rmse,
            "normalised_rmse": self.normalised_rmse,
            "state_rmse": self.state_rmse,
            "one_step_rmse": self.one_step_rmse,
            "one_step_nll": self.one_step_nll,
        }


def evaluate_predictions(
    model,
    heldout: Sequence[Trial],
    horizons: Sequence[int],
    particles: int = 32,
    seed: int = 0,
    starts_per_trial: int = 8,
    reference: Sequence[Trial] = (),
) -> PredictionReport:
    """One-step and open-loop multi-step errors of `model` on held-out trials.

    Normalised errors divide by each state's spread over the held-out and `reference` trials (the
    training ones): a state that barely moves in the few held-out trials (a block at rest) would
    otherwise turn a tiny error into a huge normalised one.
    """
    states = [t.states for t in heldout]
    spread = np.concatenate(states + [t.states for t in reference]).std(axis=0)
    spread = np.where(spread > 1e-9, spread, 1.0)
    one_step, _ = one_step_errors(model, heldout)

    rmse, normalised, per_state = [], [], []
    shortest = min(t.horizon for t in heldout)
    horizons = [h for h in horizons if 1 <= h <= shortest]
    if not horizons:
        raise ValueError(f"no prediction horizon fits the held-out trials (shortest has {shortest} steps)")
    for h in horizons:
        starts, actions, t0, actual = [], [], [], []
        for trial in heldout:
            first = np.unique(np.linspace(0, trial.horizon - h, starts_per_trial).astype(int))
            for s in first:
                starts.append(trial.states[s])
                actions.append(trial.actions[s : s + h])
                t0.append(s)
                actual.append(trial.states[s + h])
        predicted, _ = predict_open_loop(model, np.array(starts), np.array(actions), np.array(t0), particles, seed)
        error = predicted[:, -1] - np.array(actual)
        rmse.append(float(np.sqrt(np.mean(error**2))))
        normalised.append(float(np.sqrt(np.mean((error / spread) ** 2))))
        per_state.append(np.sqrt(np.mean(error**2, axis=0)))
    names = heldout[0].state_names
    state_rmse = {name: [float(e[i]) for e in per_state] for i, name in enumerate(names)}
    return PredictionReport(list(horizons), rmse, normalised, state_rmse, one_step["one_step_rmse"],
                            one_step["one_step_nll"])


def default_horizons(horizon: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to the trial horizon."""
    steps = [h * scale for scale in (1, 10, 100, 1000) for h in (1, 2, 5)]
    return [h for h in steps if h <= horizon]


def one_step_errors(model, trials: Sequence[Trial], spread: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """One-step errors of `model` on `trials`: {"one_step_rmse", "one_step_nll", "one_step_nrmse"}
    and per state (n,) the RMSE over `spread` (n,), the std of each state's one-step change in the
    data the model was fitted on (default: in these trials): near 1 or above, the model predicts
    that state no better than its average change, as for an unlearned contact."""
    mean, var, target = predict_one_step(model, trials)
    if spread is None:
        spread = np.concatenate([t.states[1:] - t.states[:-1] for t in trials]).std(axis=0)
    spread = np.where(spread > 1e-12, spread, 1.0)
    squared = (mean - target) ** 2
    per_state = np.sqrt(squared.mean(axis=0)) / spread
    var = np.maximum(var, 1e-12)
    nll = 0.5 * np.mean(np.sum(squared / var + np.log(2 * np.pi * var), axis=1))
    errors = {"one_step_rmse": float(np.sqrt(squared.mean())), "one_step_nll": float(nll),
              "one_step_nrmse": float(per_state.mean())}
    return errors, per_state
