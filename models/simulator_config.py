"""`model: {type: mujoco}` in an experiment: its settings (`MujocoModelConfig`) and the SimulatorModel
they build on the robot's scene or a dm_control task's physics (`build_scene_model`)."""

from __future__ import annotations

from dataclasses import dataclass

import mujoco

from forethought.models.simulator import SimulatorModel
from forethought.robots.config import ConfigError
from forethought.sim.mujoco_robot import state_names


@dataclass
class MujocoModelConfig:
    """`model: {type: mujoco, ...}`: MuJoCo itself as the planning model.

    scene: the MJCF scene to plan on (a name or path; default: the robot's own `scene`, e.g. an
    identified scene for a robot that runs the nominal one); timestep: the model's physics step in
    s (null: the scene's; the control period must be a whole number of them; coarser is cheaper);
    frictionloss: keep the joints' dry friction (at rest it makes finite differences say the
    actions do nothing, which stalls iLQR: planners on derivatives usually drop it, and the robot
    keeps it); centred: centred differences in linearize; epsilon: their step; threads: MuJoCo
    threads per batched rollout (null: torch's thread count, which `forethought run --threads` sets).
    action_delay: s from a measured state to the moment the goal that answers it acts (null: the
    scene's own, which an identified scene declares; 0 without); MPC on this model plans from the
    state predicted over it (controllers.delay).
    """

    scene: str | None = None
    timestep: float | None = None
    frictionloss: bool = True
    centred: bool = False
    epsilon: float = 1e-6
    threads: int | None = None
    action_delay: float | None = None

    def __post_init__(self) -> None:
        if self.action_delay is not None and not 0 <= self.action_delay < 10:
            raise ValueError(f"action_delay must be seconds in [0, 10), got {self.action_delay}")
        if self.timestep is not None and not self.timestep > 0:
            raise ValueError(f"timestep must be positive, got {self.timestep}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")


def build_scene_model(config: MujocoModelConfig, spec, scene: "str | mujoco.MjModel | None") -> SimulatorModel:
    """The planning model on `config.scene` (else the robot's `scene`: an MJCF scene, or the MjModel of
    a dm_control task) with the robot's control period spec.dt; ConfigError when there is no scene or
    it does not match the robot."""
    scene = config.scene or scene
    if scene is None:
        raise ConfigError("model: a mujoco model plans on a MuJoCo scene: give model.scene, or use a robot with "
                          "`scene` (or a dm_control robot with `state: physics`)")
    threads = config.threads
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    if isinstance(scene, mujoco.MjModel):
        return _task_model(config, spec, scene, threads)
    settings = dict(centred=config.centred, epsilon=config.epsilon, frictionloss=config.frictionloss, threads=threads,
                    action_delay=config.action_delay)
    if config.timestep is None:
        model = SimulatorModel(scene, **settings)
    else:
        steps = spec.dt / config.timestep
        if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
            raise ConfigError(f"model.timestep: the control period {spec.dt} s is not a whole number of {config.timestep} s steps")
        model = SimulatorModel(scene, control_steps=int(round(steps)), timestep=config.timestep, **settings)
    if abs(model.dt - spec.dt) > 1e-9:
        raise ConfigError(f"model: the planning model's control period {model.dt} s differs from the robot's {spec.dt} s")
    if model.n != spec.n or model.m != spec.m:
        raise ConfigError(f"model: the scene's model has n={model.n}, m={model.m}; the robot's n={spec.n}, m={spec.m}")
    return model


def _task_model(config: MujocoModelConfig, spec, model: mujoco.MjModel, threads: int) -> SimulatorModel:
    """The planning model on a dm_control task's own MjModel, shared rather than copied: each episode
    may set things in it (the reacher's target), and the planner must see them. It has its own
    MjData, steps the task's physics step and takes spec.dt / timestep steps per control period
    (dm_control's n_sub_steps)."""
    for key, value, kept in (("timestep", config.timestep, None), ("frictionloss", config.frictionloss, True)):
        if value != kept:
            raise ConfigError(f"model.{key}: a dm_control task's planning model shares the task's MjModel (to see "
                              "what each episode sets in it) and keeps its physics as it is")
    names = state_names(model)
    if tuple(spec.state_names) != names:
        raise ConfigError(f"model: a mujoco model plans on the task's physics state ({', '.join(names)}), and the "
                          "robot's state is not it: set robot.state: physics")
    steps = spec.dt / model.opt.timestep
    if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
        raise ConfigError(f"model: the control period {spec.dt} s is not a whole number of the task's "
                          f"{model.opt.timestep} s physics steps")
    return SimulatorModel(model, control_steps=int(round(steps)), centred=config.centred, epsilon=config.epsilon,
                          threads=threads)
