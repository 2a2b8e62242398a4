"""How-to: add a cost term (docs/howto/add-cost-term.md). `make test` runs this file."""

import numpy as np
import torch

from forethought.controllers.costs import build_cost
from forethought.controllers.costs.reader import TermReader
from forethought.controllers.costs.term import Term, register
from forethought.controllers.ilqr import ILQR, ILQRConfig
from forethought.controllers.costs import TrajectoryCost
from forethought.models.simulator import SimulatorModel
from forethought.sim.mujoco_robot import MujocoRobot


@register("deadband", keys=("states", "target", "radius"))
class DeadbandCost(Term):
    """0.5 sum_i max(0, |x_i - c_i| - r)^2: free within r of the target, quadratic beyond.

    index: (k,) state entries; target: (k,) c in the states' units; radius: r.
    """

    def __init__(self, index, target, radius: float):
        self.index = np.asarray(index)
        self.target = np.asarray(target, dtype=np.float64)
        self.radius = float(radius)

    def value(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # One definition, in torch: float64 with derivatives (by autograd, unless a term gives its
        # own) for iLQR and GPS, batched float32 for the sampling planners.
        (target,) = self.tensors(x, "target")
        excess = torch.clamp(torch.abs(self.take(x, "index") - target) - self.radius, min=0.0)
        return 0.5 * (excess**2).sum(-1)

    @classmethod
    def from_config(cls, r: TermReader, scene) -> "DeadbandCost":
        names = r.names("states")
        return cls([r.state_index("states", s) for s in names], r.vector("target", len(names)),
                   r.number("radius", positive=True))


if __name__ == "__main__":
    from pathlib import Path

    scene = Path(__file__).with_name("slider.xml")
    robot = MujocoRobot(scene)
    spec = robot.spec                                    # states x, y, d_x, d_y; actions fx, fy
    goal = [0.3, -0.2]
    # Once registered, the term is a YAML type like the built-in ones, with their weights and ramps.
    cost = build_cost({"terms": [
        {"type": "deadband", "states": ["x", "y"], "target": goal, "radius": 0.01, "final_weight": 10.0},
        {"type": "action", "weights": 0.001},
    ]}, spec, scene)

    # Its derivatives (autograd) against central finite differences of its value.
    rng = np.random.default_rng(0)
    x, u = rng.normal(0.0, 0.3, (64, spec.n)), rng.normal(0.0, 1.0, (64, spec.m))
    eps, numeric = 1e-6, np.zeros_like(x)
    for i in range(spec.n):
        step = np.zeros_like(x)
        step[:, i] = eps
        numeric[:, i] = (cost.value(x + step, u) - cost.value(x - step, u)) / (2 * eps)
    assert np.abs(cost.derivatives(x, u).l_x - numeric).max() < 1e-6

    # The planners' batched float32 form is the same definition.
    X, U = rng.normal(0.0, 0.3, (8, 6, spec.n)), rng.normal(0.0, 1.0, (8, 5, spec.m))
    planned = TrajectoryCost(cost)(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(U, dtype=torch.float32))
    assert np.allclose(planned.numpy(), cost.trajectory_costs(X, U), rtol=1e-4)

    # iLQR on the scene itself brings the mass into the dead band.
    model = SimulatorModel(scene)
    x0 = robot.reset(seed=0)
    result = ILQR(model, cost, spec.action_low, spec.action_high, ILQRConfig(max_iterations=50)).solve(
        x0, np.zeros((25, spec.m)))
    final = result.X[-1, :2]
    print(f"final position {final.round(3)}, {np.abs(final - goal).max() * 1000:.1f} mm from the goal per axis")
    assert np.abs(final - goal).max() < 0.02
