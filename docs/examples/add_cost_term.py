"""How-to: add a cost term (docs/howto/add-cost-term.md). `make test` runs this file."""

import numpy as np

from forethought.controllers.costs import Cost, CostDerivatives, Term, Weighted, build_cost
from forethought.controllers.ilqr import ILQR, ILQRConfig
from forethought.models.simulator import SimulatorModel
from forethought.sim.mujoco_robot import MujocoRobot


class DeadbandCost(Term):
    """0.5 sum_i w_i max(0, |x_i - c_i| - r)^2: free within r of the target, quadratic beyond.

    index: (k,) state entries; target: (k,) c in the states' units; radius: r; weights: (k,) w.
    """

    def __init__(self, index, target, radius, weights):
        self.index = np.asarray(index)
        self.target = np.asarray(target, dtype=np.float64)
        self.radius = float(radius)
        self.weights = np.asarray(weights, dtype=np.float64)

    def _excess(self, x):
        e = x[:, self.index] - self.target               # (B, k)
        return np.maximum(np.abs(e) - self.radius, 0.0), np.sign(e)

    def value(self, x, u):
        excess, _ = self._excess(x)
        return 0.5 * (excess**2) @ self.weights          # (B,)

    def add_to(self, d: CostDerivatives, x, u, scale):
        excess, sign = self._excess(x)
        d.l += scale * (0.5 * (excess**2) @ self.weights)
        d.l_x[:, self.index] += scale[:, None] * self.weights * excess * sign
        curvature = self.weights * (excess > 0)           # the Hessian is diagonal
        k = np.arange(len(self.index))
        d.l_xx[:, self.index[k], self.index[k]] += scale[:, None] * curvature


def check_gradient(cost: Cost, x: np.ndarray, u: np.ndarray, eps: float = 1e-6) -> float:
    """Largest difference between l_x and central finite differences of the value."""
    analytic = cost.derivatives(x, u).l_x
    numeric = np.zeros_like(x)
    for i in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, i] = eps
        numeric[:, i] = (cost.value(x + step, u) - cost.value(x - step, u)) / (2 * eps)
    return float(np.abs(analytic - numeric).max())


if __name__ == "__main__":
    from pathlib import Path

    scene = Path(__file__).with_name("slider.xml")
    robot = MujocoRobot(scene)
    spec = robot.spec                                    # states x, y, d_x, d_y; actions fx, fy
    goal = np.array([0.3, -0.2])
    # Terms combine with weights like the YAML ones: the new term, plus a built-in action term.
    action = build_cost({"terms": [{"type": "action", "weights": 0.001}]}, spec, scene).terms[0]
    cost = Cost(spec.n, spec.m, [
        Weighted(DeadbandCost([0, 1], goal, radius=0.01, weights=[1.0, 1.0]), weight=1.0, final_weight=10.0,
                 label="deadband x, y"),
        action,
    ])

    rng = np.random.default_rng(0)
    x, u = rng.normal(0.0, 0.3, (64, spec.n)), rng.normal(0.0, 1.0, (64, spec.m))
    assert check_gradient(cost, x, u) < 1e-6

    # iLQR on the scene itself brings the mass into the dead band.
    model = SimulatorModel(scene)
    x0 = robot.reset(seed=0)
    result = ILQR(model, cost, spec.action_low, spec.action_high, ILQRConfig(max_iterations=50)).solve(
        x0, np.zeros((25, spec.m)))
    final = result.X[-1, :2]
    print(f"final position {final.round(3)}, {np.abs(final - goal).max() * 1000:.1f} mm from the goal per axis")
    assert np.abs(final - goal).max() < 0.02
