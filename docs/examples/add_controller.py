"""How-to: add a controller (docs/howto/add-controller.md). `make test` runs this file."""

import numpy as np

from forethought.controllers.costs import build_cost
from forethought.robots.config import ConfigError


class HeldActionPolicy:
    """Each tick: `candidates` random actions, each held for `steps` control periods through the
    model's `predict`; the action whose predicted cost is least is applied."""

    def __init__(self, model, cost, spec, candidates: int, steps: int, seed: int):
        self.model, self.cost, self.spec = model, cost, spec
        self.candidates, self.steps, self.seed = candidates, steps, seed
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        U = self.rng.uniform(self.spec.action_low, self.spec.action_high, (self.candidates, self.spec.m))
        X = np.repeat(x[None], self.candidates, axis=0)   # (K, n)
        total = np.zeros(self.candidates)
        for _ in range(self.steps):
            total += self.cost.value(X, U)
            X, _ = self.model.predict(X, U)
        total += self.cost.value(X)                        # terminal
        return U[np.argmin(total)]


class HeldActionController:
    """The loop's Controller: a policy per condition; nothing to learn from the trials."""

    def __init__(self, model, costs, spec, candidates: int, steps: int, seed: int):
        self.model, self.costs, self.spec = model, costs, spec
        self.candidates, self.steps, self.seed = candidates, steps, seed

    def policy(self, condition: int) -> HeldActionPolicy:
        return HeldActionPolicy(self.model, self.costs[condition], self.spec, self.candidates, self.steps,
                                self.seed + condition)

    def update(self, trials) -> dict[str, float]:
        return {}


def build_held_action(params: dict, robot, task, model) -> HeldActionController:
    """`controller: {type: held_action, candidates: 64, steps: 5}` on the experiment's model."""
    settings = {"candidates": 64, "steps": 5}
    for key, value in params.items():
        if key not in settings:
            raise ConfigError(f"unknown key '{key}' (known: {', '.join(settings)})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
        settings[key] = value
    costs = [build_cost(task.cost, robot.spec, task.scene, condition) for condition in task.conditions]
    return HeldActionController(model, costs, robot.spec, seed=task.seed, **settings)


EXPERIMENT = """
robot: {{scene: {scene}}}
task:
  horizon: 25
  cost:
    terms:
      - {{type: state, weights: {{x: 1.0, y: 1.0, d_x: 0.1, d_y: 0.1}}, target: {{x: 0.3, y: -0.2}}}}
      - {{type: action, weights: 0.001}}
  goal: {{type: state_distance, states: [x, y], target: [0.3, -0.2], within: 0.03}}
model: {model}
controller: {{type: held_action, candidates: 64, steps: 5}}
loop: {{iterations: 1, samples: 1, seed: 0, video: false}}
"""


if __name__ == "__main__":
    import json
    import tempfile
    from pathlib import Path

    from forethought.controllers.registry import CONTROLLERS, ControllerEntry
    from forethought.models.capabilities import PREDICT
    from forethought.scripts.experiment import load_experiment
    from forethought.scripts.run import run_experiment

    # The one line that registers it (in controllers/registry.py for a controller of the project).
    CONTROLLERS["held_action"] = ControllerEntry("add_controller:build_held_action", (PREDICT,),
                                                 "random actions held over a few steps, the best applied")

    scene = Path(__file__).with_name("slider.xml")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slider-held-action.yaml"
        path.write_text(EXPERIMENT.format(scene=scene, model="{type: mujoco}"))
        run = run_experiment(load_experiment(str(path)), Path(tmp) / "runs")
        summary = json.loads((run.folder / "summary.json").read_text())
        print(f"goal reached: {summary['success']}, final distance {summary['goal_values'][0]:.3f}")
        assert summary["success"] == [True]

        # Without a model that predicts, the experiment is refused when it loads, in one line.
        path.write_text(EXPERIMENT.format(scene=scene, model="{type: none}"))
        try:
            load_experiment(str(path))
        except ConfigError as err:
            print(err)
            assert "model none x controller held_action: the controller plans on a model" in str(err)
        else:
            raise AssertionError("a controller that needs `predict` loaded without a model")
