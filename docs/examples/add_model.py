"""How-to: add a model (docs/howto/add-model.md). `make test` runs this file."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forethought.models.capabilities import LINEARIZE, PREDICT


@dataclass
class LinearConfig:
    """`model: {type: linear, ridge: 1.0e-6}`: the ridge added to the regression's normal equations."""

    ridge: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.ridge >= 0:
            raise ValueError(f"ridge must not be negative, got {self.ridge}")


class LinearModel:
    """x_{t+1} = A x_t + B u_t + c, fitted by least squares on every transition so far.

    predict(x (B, n), u (B, m)) -> (mean (B, n), var (B, n) of the residuals);
    linearize(x, u) -> (A (B, n, n), B (B, n, m), c (B, n), Sigma (B, n, n)).
    """

    capabilities = frozenset({PREDICT, LINEARIZE})
    learned = True              # the loop refits it after every iteration ...
    fit_on = "all_trials"       # ... on every trial so far

    def __init__(self, config: LinearConfig, spec):
        self.config, self.n, self.m = config, spec.n, spec.m
        self.fitted = False     # until then, controllers on it act randomly (seeded)

    def fit(self, trials) -> dict:
        x = np.concatenate([t.states[:-1] for t in trials])
        u = np.concatenate([t.actions for t in trials])
        y = np.concatenate([t.states[1:] for t in trials])
        features = np.hstack([x, u, np.ones((len(x), 1))])            # (N, n + m + 1)
        gram = features.T @ features + self.config.ridge * np.eye(features.shape[1])
        W = np.linalg.solve(gram, features.T @ y)                      # (n + m + 1, n)
        self.A, self.B, self.c = W[: self.n].T, W[self.n : self.n + self.m].T, W[-1]
        self.noise = (y - features @ W).var(axis=0)
        self.fitted = True
        return {"transitions": len(x), "residual_rms": float(np.sqrt(self.noise.mean()))}

    def predict(self, x, u):
        mean = np.asarray(x) @ self.A.T + np.asarray(u) @ self.B.T + self.c
        return mean, np.broadcast_to(self.noise, mean.shape).copy()

    def linearize(self, x, u):
        rows = len(x)
        return (np.broadcast_to(self.A, (rows, self.n, self.n)).copy(),
                np.broadcast_to(self.B, (rows, self.n, self.m)).copy(),
                self.predict(x, u)[0] - np.asarray(x) @ self.A.T - np.asarray(u) @ self.B.T,
                np.broadcast_to(np.diag(self.noise), (rows, self.n, self.n)).copy())

    def save(self, path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, A=self.A, B=self.B, c=self.c, noise=self.noise)


EXPERIMENT = """
robot: {{scene: {scene}}}
task:
  horizon: 25
  cost:
    terms:
      - {{type: state, weights: {{x: 1.0, y: 1.0}}, target: {{x: 0.3, y: -0.2}}, final_weight: 10.0}}
      - {{type: action, weights: 0.001}}
  goal: {{type: state_distance, states: [x, y], target: [0.3, -0.2], within: 0.03}}
model: {{type: linear, ridge: 1.0e-6}}
controller: {{type: ilqr_mpc, horizon: 10, iterations: 2, first_iterations: 20}}
loop: {{iterations: 2, samples: 1, seed: 0, video: false}}
"""


if __name__ == "__main__":
    import json
    import tempfile

    from forethought.models.registry import MODELS, ModelEntry
    from forethought.scripts.experiment import load_experiment
    from forethought.scripts.run import run_experiment

    # The one line that registers it (in models/registry.py for a model of the project).
    MODELS["linear"] = ModelEntry("add_model:LinearModel", "add_model:LinearConfig", ".npz")

    scene = Path(__file__).with_name("slider.xml")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slider-linear.yaml"
        path.write_text(EXPERIMENT.format(scene=scene))
        run = run_experiment(load_experiment(str(path)), Path(tmp) / "runs")
        summary = json.loads((run.folder / "summary.json").read_text())
        print(f"goal reached per iteration: {summary['success']}; "
              f"one-step RMSE of the first fit on the second trial: {summary['diagnostics'][1]['model_one_step_rmse']:.2e}")
        assert summary["success"] == [False, True]     # a random first trial, then iLQR-MPC on the fit
        assert summary["diagnostics"][1]["model_one_step_rmse"] < 1e-3   # the slider is (nearly) linear
        assert (run.folder / "models" / "linear.npz").is_file()
