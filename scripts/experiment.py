"""Experiment files: YAML validated into dataclasses, and the robot and controller they name.

An experiment = robot + task + controller + loop settings:

    robot:      {scene: so101_reach, control_steps: 10, init_qpos_std: 0.02}  or  {dm_control: cartpole:swingup}
    task:       {horizon: 150, cost: {...}, conditions: [{target: [0.2, 0.0, 0.1]}]}
    controller: {type: ik_reach, ...parameters of that controller}
    loop:       {iterations: 1, samples: 1, seed: 0}

`forethought run` resolves a shipped name (scripts/configs/NAME.yaml), a YAML path, or
"dmc:DOMAIN:TASK" (a seeded random policy on that dm_control task).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forethought.controllers.controller import Task
from forethought.robots.config import ConfigError, from_mapping, load_yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# controller type -> "module:builder"; a builder is build(params: dict, robot, task: Task) -> Controller.
CONTROLLERS: dict[str, str] = {
    "random": "forethought.controllers.policy:build_random",
    "ik_reach": "forethought.controllers.ik_reach:build_ik_reach",
    "ilqr_mpc": "forethought.controllers.mpc:build_ilqr_mpc",
    "gps": "forethought.controllers.gps:build_gps",
    "mdgps": "forethought.controllers.gps:build_mdgps",
    "nn_policy": "forethought.controllers.nn_policy:build_nn_policy",
    "pets": "forethought.controllers.pets:build_pets",
    "predictive_sampling": "forethought.controllers.predictive_sampling:build_predictive_sampling",
    "pilco": "forethought.controllers.pilco:build_pilco",
}


@dataclass
class RobotConfig:
    scene: str | None = None
    dm_control: str | None = None
    control_steps: int | None = None
    init_qpos_std: float | list[float] | None = None
    init_qvel_std: float | list[float] | None = None

    def __post_init__(self) -> None:
        if (self.scene is None) == (self.dm_control is None):
            raise ValueError("give exactly one of 'scene' (an MJCF scene) or 'dm_control' (DOMAIN:TASK)")


@dataclass
class TaskConfig:
    horizon: int
    cost: dict = field(default_factory=dict)
    conditions: list[dict] = field(default_factory=lambda: [{}])

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")
        if not self.conditions:
            raise ValueError("conditions must list at least one condition (use [{}] for one plain start)")


@dataclass
class LoopConfig:
    iterations: int = 1
    samples: int = 1
    seed: int = 0
    video: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.samples < 1:
            raise ValueError("iterations and samples must be at least 1")


@dataclass
class Experiment:
    name: str
    robot: RobotConfig
    task: TaskConfig
    controller: dict = field(default_factory=lambda: {"type": "random"})
    loop: LoopConfig = field(default_factory=LoopConfig)
    description: str = ""
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shipped_experiments() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_experiment(name: str) -> Experiment:
    """A shipped name, a YAML path or "dmc:DOMAIN:TASK" -> Experiment; ConfigError naming file and key."""
    if name.startswith("dmc:"):
        return Experiment(
            name=name.replace(":", "-"),
            robot=RobotConfig(dm_control=name[len("dmc:") :]),
            task=TaskConfig(horizon=200),
            source=name,
        )
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown experiment '{name}': not a shipped name ({', '.join(shipped_experiments())}), "
                "a YAML path or dmc:DOMAIN:TASK"
            )
    data = load_yaml(path)
    data.setdefault("name", path.stem)
    experiment = from_mapping(Experiment, data, f"{path}:")
    experiment.source = str(path)
    controller_type = experiment.controller.get("type")
    if controller_type not in CONTROLLERS:
        raise ConfigError(
            f"{path}: controller.type: unknown controller {controller_type!r} (known: {', '.join(sorted(CONTROLLERS))})"
        )
    if experiment.robot.dm_control is not None and experiment.robot.dm_control.count(":") != 1:
        raise ConfigError(f"{path}: robot.dm_control: expected DOMAIN:TASK, got {experiment.robot.dm_control!r}")
    return experiment


def make_robot(config: RobotConfig):
    """The robot an experiment names (a MuJoCo scene or a dm_control task)."""
    if config.dm_control is not None:
        from forethought.sim.dmc_robot import DmControlRobot

        return DmControlRobot(config.dm_control)
    from forethought.sim.mujoco_robot import MujocoRobot

    return MujocoRobot(
        config.scene,
        control_steps=config.control_steps,
        init_qpos_std=config.init_qpos_std,
        init_qvel_std=config.init_qvel_std,
    )


def make_task(experiment: Experiment) -> Task:
    return Task(
        horizon=experiment.task.horizon,
        cost=dict(experiment.task.cost),
        conditions=tuple(dict(c) for c in experiment.task.conditions),
        scene=experiment.robot.scene,
        seed=experiment.loop.seed,
    )


def make_controller(experiment: Experiment, robot, task: Task):
    """Build the experiment's controller; ConfigError naming the key for bad parameters."""
    params = dict(experiment.controller)
    kind = params.pop("type", "random")
    module_name, builder_name = CONTROLLERS[kind].split(":")
    builder = getattr(importlib.import_module(module_name), builder_name)
    try:
        return builder(params, robot, task)
    except ConfigError as err:
        raise ConfigError(f"{experiment.source}: controller ({kind}): {err}") from None
