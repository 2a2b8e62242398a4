"""The controllers an experiment's `controller: {type: ...}` can name, and what each needs of its model.

One line registers a controller: its name, its builder ("module:function", loaded on first use)
and the model capabilities it needs (models/capabilities.py). A builder is

    build(params: dict, robot, task: Task, model) -> Controller

with `params` the `controller:` section without `type` and `model` the experiment's model (None
for a controller that needs none). A controller that needs nothing takes no model (`model: none`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from forethought.models.capabilities import LINEARIZE, PREDICT, PROPAGATE, ROLLOUT


@dataclass(frozen=True)
class ControllerEntry:
    """builder: "module:function"; needs: model capabilities (empty: the controller uses no model);
    summary: one line for `forethought list`; runs_on: what it runs on when no shipped experiment
    can name it (a saved network, any dm_control task)."""

    builder: str
    needs: tuple[str, ...]
    summary: str
    runs_on: str = ""

    def load(self):
        module_name, name = self.builder.split(":")
        return getattr(importlib.import_module(module_name), name)


CONTROLLERS: dict[str, ControllerEntry] = {
    "ilqr_mpc": ControllerEntry("forethought.controllers.mpc:build_ilqr_mpc", (PREDICT, LINEARIZE),
                                "iLQR over a receding horizon, or once over the whole trial (LQG feedback between)"),
    "sampling_mpc": ControllerEntry("forethought.controllers.sampling_mpc:build_sampling_mpc", (ROLLOUT,),
                                    "CEM, iCEM, MPPI or random shooting over a receding horizon"),
    "pilco": ControllerEntry("forethought.controllers.pilco:build_pilco", (PROPAGATE,),
                             "PILCO policy search through moment matching"),
    "gps": ControllerEntry("forethought.controllers.gps:build_gps", (LINEARIZE,),
                           "trajectory-centric guided policy search (KL-constrained LQG on local models)"),
    "mdgps": ControllerEntry("forethought.controllers.gps:build_mdgps", (LINEARIZE,),
                             "mirror-descent GPS: local LQG controllers distilled into a network"),
    "excite": ControllerEntry("forethought.controllers.excite:build_excite", (), "multi-sine position goals for system identification, no model"),
    "ik_reach": ControllerEntry("forethought.controllers.ik_reach:build_ik_reach", (),
                                "inverse kinematics to the target, no model"),
    "nn_policy": ControllerEntry("forethought.controllers.nn_policy:build_nn_policy", (),
                                 "a trained network policy (MDGPS's, a distilled planner's, SAC's, MBPO's) on its own",
                                 runs_on="a network a run saved (controller.path)"),
    "sac": ControllerEntry("forethought.controllers.mbpo:build_sac", (),
                           "soft actor-critic on the real transitions alone (the model-free baseline)"),
    "mbpo": ControllerEntry("forethought.controllers.mbpo:build_mbpo", (ROLLOUT,),
                            "MBPO: soft actor-critic on short branched rollouts of the ensemble from real states"),
    "random": ControllerEntry("forethought.controllers.policy:build_random", (), "seeded uniform random actions",
                              runs_on="forethought run dmc:DOMAIN:TASK"),
}

# Controllers that need a capability some models offer but whose method is tied to one model, and why.
MODEL_BOUND: dict[str, tuple[str, str]] = {
    "gps": ("tvlg", "guided policy search fits time-varying local models to each iteration's samples"),
    "mdgps": ("tvlg", "guided policy search fits time-varying local models to each iteration's samples"),
    "mbpo": ("ensemble", "MBPO branches its rollouts through a member of the ensemble drawn at random each step"),
}
