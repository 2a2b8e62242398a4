"""The planning cost: the experiment's cost as the batched torch function sampling planners rank with."""

from __future__ import annotations

import numpy as np
import torch

from forethought.controllers.costs import build_cost
from forethought.sim.mujoco_robot import MujocoRobot


def test_planning_cost_equals_the_experiment_cost_on_batches():
    from forethought.controllers.planning_cost import build_planning_cost
    from forethought.robots.robot import RobotSpec

    spec = RobotSpec("cartpole", ("cart", "pole", "d_cart", "d_pole"), ("force",), [-10.0], [10.0], 0.1)
    cfg = {"terms": [
        {"type": "saturating", "weights": {"cart": 3.0, "pole": 0.36, "d_pole": 0.01}, "target": {"pole": 3.14159},
         "angles": ["pole"], "sigma": 0.25, "final_weight": 20.0, "ramp": "linear"},
        {"type": "state", "weights": {"cart": 0.5, "d_cart": 0.1}, "target": {"cart": 0.2}, "ramp": "quadratic"},
        {"type": "action", "weights": 0.01, "center": [1.0]},
        {"type": "joint_limits", "names": ["cart"], "lower": [-0.5], "upper": [0.5], "margin": 0.1, "weight": 3.0},
    ]}
    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 2.0, (64, 13, 4))
    U = rng.uniform(-10, 10, (64, 12, 1))
    expected = build_cost(cfg, spec).trajectory_costs(X, U)
    got = build_planning_cost(cfg, spec)(torch.tensor(X, dtype=torch.float32), torch.tensor(U, dtype=torch.float32))
    assert np.allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_planning_cost_evaluates_end_effector_terms_through_the_kinematics():
    from forethought.controllers.planning_cost import build_planning_cost

    with MujocoRobot("so101_reach") as robot:
        spec = robot.spec
    cfg = {"terms": [{"type": "site_distance", "site": "ee", "target": "target", "final_weight": 5.0},
                     {"type": "action", "weights": 0.01, "center": "state"}]}
    condition = {"target": [0.2, 0.05, 0.12]}
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (6, 4, spec.n))
    U = rng.uniform(-1, 1, (6, 3, spec.m))
    expected = build_cost(cfg, spec, "so101_reach", condition).trajectory_costs(X, U)
    cost = build_planning_cost(cfg, spec, "so101_reach", condition)
    Xt = torch.tensor(X, dtype=torch.float32)
    got = cost(Xt, torch.tensor(U, dtype=torch.float32)).numpy()
    assert np.allclose(got, expected, rtol=1e-4)
    Xt[2, 1, 0] = float("nan")  # a diverged prediction costs NaN, never a number
    got = cost(Xt, torch.tensor(U, dtype=torch.float32)).numpy()
    assert np.isnan(got[2]) and np.all(np.isfinite(np.delete(got, 2)))


def test_a_site_behind_a_ball_joint_is_costed_through_mujoco(tmp_path):
    from forethought.controllers.planning_cost import build_planning_cost
    from forethought.robots.robot import RobotSpec

    scene = tmp_path / "ball.xml"
    scene.write_text(
        '<mujoco><worldbody><body><joint name="swivel" type="ball"/><geom size="0.05"/>'
        '<body pos="0 0 0.2"><joint name="hinge" axis="0 1 0"/><geom size="0.03"/><site name="ee" pos="0 0 0.2"/>'
        "</body></body></worldbody></mujoco>"
    )
    spec = RobotSpec("ball", ("hinge", "d_hinge"), ("u",), [-1.0], [1.0], 0.02)
    cfg = {"terms": [{"type": "site_distance", "site": "ee", "target": [0.1, 0.0, 0.3]}]}
    X = np.random.default_rng(4).uniform(-1, 1, (5, 4, 2))
    U = np.zeros((5, 3, 1))
    cost = build_planning_cost(cfg, spec, str(scene))
    assert cost.terms[0][1] is None  # no torch form for this chain
    got = cost(torch.tensor(X, dtype=torch.float32), torch.tensor(U, dtype=torch.float32)).numpy()
    assert np.allclose(got, build_cost(cfg, spec, str(scene)).trajectory_costs(X, U), rtol=1e-5)


def test_planning_cost_puts_the_hand_behind_a_block_as_the_experiment_cost_does():
    from forethought.controllers.planning_cost import build_planning_cost

    with MujocoRobot("so101_push") as robot:
        spec = robot.spec
    cfg = {"terms": [{"type": "site_distance", "site": "ee", "target_state": ["block:x", "block:y", "block:z"],
                      "offset": [-0.01, 0.044, 0.0], "norm": "smooth_abs", "smoothing": 0.01, "weight": 10.0,
                      "final_weight": 3.0}]}
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, (6, 5, spec.n))
    U = rng.uniform(-1, 1, (6, 4, spec.m))
    expected = build_cost(cfg, spec, "so101_push").trajectory_costs(X, U)
    got = build_planning_cost(cfg, spec, "so101_push")(torch.tensor(X, dtype=torch.float32), torch.tensor(U, dtype=torch.float32))
    assert np.allclose(got.numpy(), expected, rtol=1e-4)
