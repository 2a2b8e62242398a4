"""Predictive sampling: the sampling planners with MuJoCo itself as the model, as in MuJoCo MPC.

Nothing is learned. Every tick the planner (CEM, iCEM, MPPI or random shooting) samples action
sequences, rolls each out on a copy of the scene and keeps the best; the robot applies the first
action. With the true dynamics a deterministic rollout needs one particle, the default here.
Each iteration rolls its whole population over the horizon in one `mujoco.rollout` call
(SimulatorModel.rollout), so planning time is mostly physics: population x horizon x control_steps
physics steps per iteration.

In an experiment file:

    controller:
      type: predictive_sampling
      planner: {kind: icem, horizon: 15, population: 64, elites: 8, iterations: 2}
      model_timestep: null     # physics step of the planning copy in s (null: the scene's)
      model_threads: null      # MuJoCo threads per batch of rollouts (null: torch's thread count)
      initial_action: hold
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from forethought.controllers.mpc import MPCController, initial_action, scene_model
from forethought.controllers.costs import build_planning_cost
from forethought.controllers.samplers import make_planner, planner_settings
from forethought.robots.config import from_mapping


@dataclass
class PredictiveSamplingConfig:
    """planner: {kind: cem|icem|mppi|random_shooting, ...its settings} (particles default to 1);
    replan_every: ticks between plans; model_timestep: physics step of the planning model in s (the
    control period must be a whole number of them; coarser is cheaper); model_frictionloss: keep the
    joints' dry friction in the planning model; model_threads: MuJoCo threads that share each
    batch of rollouts (default: torch's thread count, which `forethought run --threads` sets);
    initial_action: "middle", "hold" or a list of m numbers; seed: of the planners (default: the
    experiment's seed)."""

    planner: dict = field(default_factory=lambda: {"kind": "icem"})
    replan_every: int = 1
    model_timestep: float | None = None
    model_frictionloss: bool = True
    model_threads: int | None = None
    initial_action: str | list[float] = "middle"
    seed: int | None = None

    def __post_init__(self) -> None:
        self.planner = {"particles": 1, **self.planner}
        planner_settings(self.planner)
        if self.replan_every < 1:
            raise ValueError(f"replan_every must be at least 1, got {self.replan_every}")
        if self.model_threads is not None and self.model_threads < 1:
            raise ValueError(f"model_threads must be at least 1, got {self.model_threads}")


def build_predictive_sampling(params: dict, robot, task) -> MPCController:
    """Controller `type: predictive_sampling`: params as PredictiveSamplingConfig; needs a MuJoCo scene."""
    cfg = from_mapping(PredictiveSamplingConfig, params, "controller:")
    threads = cfg.model_threads or torch.get_num_threads()
    model = scene_model("predictive_sampling", robot, task, cfg.model_timestep, cfg.model_frictionloss, threads=threads)
    spec = robot.spec
    costs = [build_planning_cost(task.cost, spec, task.scene, condition) for condition in task.conditions]
    kind, settings = planner_settings(cfg.planner)
    seed = int(cfg.seed if cfg.seed is not None else task.seed)
    handed_out = itertools.count(1)

    def planner_for(condition: int):
        # A fresh stream for every policy, fixed by the seed and the order of the policies.
        return make_planner(kind, model, costs[condition], spec.action_low, spec.action_high,
                            seed=seed * 1_000_003 + 1009 * next(handed_out) + condition, **settings)

    return MPCController(spec, planner_for, cfg.replan_every, initial_action(cfg.initial_action, spec))
