"""Sampling MPC on any model that rolls out batches of action sequences (`type: sampling_mpc`).

CEM, iCEM, MPPI or random shooting (controllers/samplers.py) over a receding horizon, on the
experiment's model: on the ensemble it is PETS (Chua et al. 2018: trajectory sampling through a
probabilistic ensemble refitted on every trial); on MuJoCo itself it is predictive sampling as in
MuJoCo MPC; on the GP, MPPI through the GP's predictive distribution; on TVLG, planning through
time-varying local models. Before a learned model's first fit the policies are seeded random ones.
With `task.cost: reward` on a dm_control task the planners rank by the task's own reward
(controllers/reward_cost.py).

In an experiment file:

    model: {type: ensemble, members: 5, hidden: [200, 200, 200], propagation: tsinf}
    controller:
      type: sampling_mpc
      kind: cem                 # cem | icem | mppi | random_shooting
      horizon: 15               # ...and the other settings of that planner (controllers/samplers.py)
      population: 350
      particles: 20             # default 1 on a model that is not learned (MuJoCo is deterministic)
      replan_every: 1
      initial_action: middle    # middle | hold | a list of m numbers
"""

from __future__ import annotations

from forethought.controllers.mpc import MPCController, check_model_states, initial_action
from forethought.controllers.samplers import make_planner, planner_settings
from forethought.robots.config import ConfigError

CONTROLLER_KEYS = ("replan_every", "initial_action", "seed")


def build_sampling_mpc(params: dict, robot, task, model) -> MPCController:
    """Controller `type: sampling_mpc` on the experiment's model (its settings in the module docstring)."""
    from forethought.controllers.planning_cost import build_planning_cost

    spec = robot.spec
    check_model_states(model, spec)
    planner = {k: v for k, v in params.items() if k not in CONTROLLER_KEYS}
    if not getattr(model, "learned", False):
        planner.setdefault("particles", 1)
    try:
        kind, settings = planner_settings(planner)
    except ValueError as err:
        raise ConfigError(str(err).removeprefix("planner: ")) from None
    replan_every = params.get("replan_every", 1)
    if isinstance(replan_every, bool) or not isinstance(replan_every, int) or replan_every < 1:
        raise ConfigError(f"replan_every: expected an integer of at least 1, got {replan_every!r}")
    seed = params.get("seed", task.seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an integer, got {seed!r}")
    device = getattr(model, "device", "cpu")
    if task.cost == "reward":
        from forethought.controllers.reward_cost import RewardTrajectoryCost, reward_cost

        costs = [RewardTrajectoryCost(reward_cost(robot), device)] * len(task.conditions)
    elif not isinstance(task.cost, dict) or not task.cost:
        raise ConfigError("sampling_mpc needs the task's `cost` (its terms, or `reward` on a dm_control task)")
    else:
        costs = [build_planning_cost(task.cost, spec, task.scene, condition, device) for condition in task.conditions]

    def planner_for(condition: int, planner_seed: int):
        return make_planner(kind, model, costs[condition], spec.action_low, spec.action_high, seed=planner_seed,
                            **settings)

    return MPCController(spec, planner_for, replan_every, initial_action(params.get("initial_action", "middle"), spec),
                         model, seed)
