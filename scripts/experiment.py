"""Experiment files: YAML validated into dataclasses, and the robot, task, model and controller they name.

An experiment = robot + task + model + controller + loop settings, each chosen on its own:

    robot:      {scene: so101_reach, control_steps: 10, init_qpos_std: 0.02}  or  {dm_control: cartpole:swingup}
                (a dm_control robot's `state`: observations, the default, or physics: qpos, qvel)
    task:       {horizon: 150, cost: {...}, goal: {...}, conditions: [{target: [0.2, 0.0, 0.1]}]}
    model:      {type: mujoco | tvlg | gp | ensemble | none, ...settings of that model}
    controller: {type: ilqr_mpc, ...parameters of that controller}
    loop:       {iterations: 1, samples: 1, seed: 0}

The controller must be able to use the model: what it needs (controllers/registry.py) against what
the model offers (models/capabilities.py) is checked when the experiment loads, and a combination
that cannot work is refused in one line. `forethought run` resolves a shipped name
(scripts/configs/NAME.yaml), a YAML path, or "dmc:DOMAIN:TASK" (a seeded random policy on that
dm_control task).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forethought.controllers.controller import Task
from forethought.controllers.registry import CONTROLLERS, MODEL_BOUND
from forethought.models.capabilities import CAPABILITIES, missing
from forethought.models.registry import MODELS, build_model, model_entry, model_settings
from forethought.robots.config import ConfigError, from_mapping, load_yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

NO_MODEL = "none"


@dataclass
class RobotConfig:
    scene: str | None = None
    dm_control: str | None = None
    control_steps: int | None = None
    init_qpos_std: float | list[float] | None = None
    init_qvel_std: float | list[float] | None = None
    state: str | None = None  # a dm_control robot's: observations (default) or physics (qpos, qvel)

    def __post_init__(self) -> None:
        if (self.scene is None) == (self.dm_control is None):
            raise ValueError("give exactly one of 'scene' (an MJCF scene) or 'dm_control' (DOMAIN:TASK)")
        if self.state is not None:
            from forethought.sim.dmc_robot import STATES

            if self.dm_control is None:
                raise ValueError("state: only a dm_control robot chooses its state (a scene's is qpos, qvel)")
            if self.state not in STATES:
                raise ValueError(f"state: expected one of {', '.join(STATES)}, got {self.state!r}")


@dataclass
class TaskConfig:
    horizon: int
    cost: dict | str = field(default_factory=dict)
    goal: dict | None = None
    conditions: list[dict] = field(default_factory=lambda: [{}])

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")
        if not self.conditions:
            raise ValueError("conditions must list at least one condition (use [{}] for one plain start)")
        if isinstance(self.cost, str) and self.cost != "reward":
            raise ValueError(f"cost: expected a mapping of terms or `reward`, got {self.cost!r}")


@dataclass
class LoopConfig:
    """iterations: of the loop (trials per condition and sample; `--trials` overrides); samples:
    trials per condition and iteration; seed: of everything random; video: of the last trial;
    until_success: stop after the first iteration whose trials all reach the task's goal (for
    "trials to success" measurements)."""

    iterations: int = 1
    samples: int = 1
    seed: int = 0
    video: bool = True
    until_success: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.samples < 1:
            raise ValueError("iterations and samples must be at least 1")


@dataclass
class Experiment:
    name: str
    robot: RobotConfig
    task: TaskConfig
    model: dict = field(default_factory=lambda: {"type": NO_MODEL})
    controller: dict = field(default_factory=lambda: {"type": "random"})
    loop: LoopConfig = field(default_factory=LoopConfig)
    description: str = ""
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, seed: int | None = None, trials: int | None = None, horizon: int | None = None) -> None:
        """The command line's --seed, --trials and --horizon in place of the file's (None keeps it);
        ConfigError naming the flag where a count is below 1."""
        for flag, value in (("--trials", trials), ("--horizon", horizon)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if seed is not None:
            self.loop.seed = seed
        if trials is not None:
            self.loop.iterations = trials
        if horizon is not None:
            self.task.horizon = horizon


def shipped_experiments() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


# The first form of experiment files welded each controller to its model; say how to write them now.
OLD_FORMS = {
    "pets": "PETS is sampling MPC on the ensemble: `model: {type: ensemble, ...the old controller.ensemble, "
            "propagation}` and `controller: {type: sampling_mpc, ...the old controller.planner}`",
    "predictive_sampling": "predictive sampling is sampling MPC on MuJoCo: `model: {type: mujoco, timestep, "
                           "frictionloss, threads}` and `controller: {type: sampling_mpc, ...the old controller.planner}`",
}
OLD_KEYS = {
    "model_timestep": "model.timestep", "model_frictionloss": "model.frictionloss", "model_threads": "model.threads",
    "centred_differences": "model.centred", "dynamics": "the `model: {type: tvlg, ...}` section",
    "model": "the `model: {type: gp, ...}` section", "ensemble": "the `model: {type: ensemble, ...}` section",
}


def _refuse_old_form(controller: dict, where: str) -> None:
    kind = controller.get("type")
    if kind in OLD_FORMS:
        raise ConfigError(f"{where}: controller.type: {kind} is written in the old form; {OLD_FORMS[kind]}")
    for key, now in OLD_KEYS.items():
        if key in controller:
            raise ConfigError(f"{where}: controller.{key}: the model is its own section now; move this to {now}")


def check_combination(model_type: str, controller_type: str) -> str | None:
    """Why `controller_type` cannot run on `model_type` (one line), or None when it can."""
    entry = CONTROLLERS[controller_type]
    if not entry.needs:
        return None if model_type == NO_MODEL else "the controller uses no model (set `model: {type: none}`)"
    if model_type == NO_MODEL:
        return "the controller plans on a model (add a `model:` section)"
    bound = MODEL_BOUND.get(controller_type)
    if bound is not None and bound[0] != model_type:
        return f"the controller needs the {bound[0]} model: {bound[1]}"
    lacking = missing(MODELS[model_type].model_class, entry.needs)
    if lacking:
        return f"the controller needs `{lacking[0]}` ({CAPABILITIES[lacking[0]]}), which the model does not offer"
    return None


@dataclass(frozen=True)
class Cell:
    """One model x controller combination: the shipped experiments that use it, or why it cannot work."""

    model: str
    controller: str
    experiments: tuple[str, ...]
    refused: str | None


def combinations() -> list[Cell]:
    """Every model (and `none`) x every controller, with the shipped experiments of each working
    combination and the reason for each refused one."""
    shipped: dict[tuple[str, str], list[str]] = {}
    for name in shipped_experiments():
        data = load_yaml(CONFIG_DIR / f"{name}.yaml")
        key = (data.get("model", {}).get("type", NO_MODEL), data.get("controller", {}).get("type", "random"))
        shipped.setdefault(key, []).append(name)
    return [
        Cell(model, controller, tuple(shipped.get((model, controller), ())), check_combination(model, controller))
        for controller in CONTROLLERS
        for model in (*MODELS, NO_MODEL)
    ]


def experiment_path(name: str) -> Path:
    """The YAML file of a shipped name or a YAML path; ConfigError for an unknown name."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown experiment '{name}': not a shipped name ({', '.join(shipped_experiments())}), "
                "a YAML path or dmc:DOMAIN:TASK"
            )
    return path


def load_experiment(name: str) -> Experiment:
    """A shipped name, a YAML path or "dmc:DOMAIN:TASK" -> Experiment; ConfigError naming file and key."""
    if name.startswith("dmc:"):
        return Experiment(
            name=name.replace(":", "-"),
            robot=RobotConfig(dm_control=name[len("dmc:") :]),
            task=TaskConfig(horizon=200),
            source=name,
        )
    path = experiment_path(name)
    return experiment_from_data(load_yaml(path), path)


def experiment_from_data(data: dict, path: str | Path) -> Experiment:
    """An experiment file's mapping (as read from `path`, which names it in errors; possibly changed,
    as a sweep's settings change it) -> Experiment, validated as `load_experiment` validates a file."""
    path = Path(path)
    data = dict(data)
    data.setdefault("name", path.stem)
    if isinstance(data.get("controller"), dict):
        _refuse_old_form(data["controller"], str(path))
    experiment = from_mapping(Experiment, data, f"{path}:")
    experiment.source = str(path)
    controller_type = experiment.controller.get("type", "random")
    if controller_type not in CONTROLLERS:
        raise ConfigError(
            f"{path}: controller.type: unknown controller {controller_type!r} (known: {', '.join(CONTROLLERS)})"
        )
    model_type = experiment.model.get("type", NO_MODEL)
    if model_type != NO_MODEL:
        model_entry(model_type, f"{path}: model.type")
    problem = check_combination(model_type, controller_type)
    if problem is not None:
        raise ConfigError(f"{path}: model {model_type} x controller {controller_type}: {problem}")
    if experiment.robot.dm_control is not None and experiment.robot.dm_control.count(":") != 1:
        raise ConfigError(f"{path}: robot.dm_control: expected DOMAIN:TASK, got {experiment.robot.dm_control!r}")
    return experiment


def make_robot(config: RobotConfig):
    """The robot an experiment names (a MuJoCo scene or a dm_control task)."""
    if config.dm_control is not None:
        from forethought.sim.dmc_robot import DmControlRobot

        return DmControlRobot(config.dm_control, state=config.state or "observations")
    from forethought.sim.mujoco_robot import MujocoRobot

    return MujocoRobot(
        config.scene,
        control_steps=config.control_steps,
        init_qpos_std=config.init_qpos_std,
        init_qvel_std=config.init_qvel_std,
    )


def make_task(experiment: Experiment, robot) -> Task:
    """The experiment's Task for `robot` (its goal checked against the robot's states and scene)."""
    from forethought.controllers.goals import Goal

    cfg = experiment.task
    limit = getattr(robot, "step_limit", None)
    if limit is not None and cfg.horizon > limit:
        raise ConfigError(f"{experiment.source}: task.horizon: a horizon of {cfg.horizon} steps passes the task's "
                          f"time limit of {limit} steps")
    goal = None
    if cfg.goal is not None:
        goal = Goal(cfg.goal, robot.spec, experiment.robot.scene, f"{experiment.source}: task.goal")
        goal.check_conditions(cfg.conditions)
    return Task(
        horizon=cfg.horizon,
        cost=cfg.cost if isinstance(cfg.cost, str) else dict(cfg.cost),
        conditions=tuple(dict(c) for c in cfg.conditions),
        scene=experiment.robot.scene,
        seed=experiment.loop.seed,
        goal=goal,
    )


def make_model(experiment: Experiment, robot):
    """The experiment's dynamics model for `robot` (None for `model: {type: none}`), seeded with the
    experiment's seed unless its section gives one. A model of the scene plans on the robot's MJCF
    scene, or on the MjModel a robot without one offers (`mj_model`: a dm_control task's)."""
    section = dict(experiment.model)
    kind = section.pop("type", NO_MODEL)
    if kind == NO_MODEL:
        return None
    where = f"{experiment.source}: model"
    settings = model_settings(kind, section, where, seed=experiment.loop.seed)
    try:
        scene = experiment.robot.scene if experiment.robot.scene is not None else getattr(robot, "mj_model", None)
        return build_model(kind, settings, robot.spec, scene)
    except ConfigError as err:
        raise ConfigError(f"{experiment.source}: {err}") from None


def make_controller(experiment: Experiment, robot, task: Task, model=None):
    """Build the experiment's controller on `model`; ConfigError naming the key for bad parameters."""
    params = dict(experiment.controller)
    kind = params.pop("type", "random")
    distill = params.pop("distill", None)  # a planning controller's option: DAgger into a network
    builder = CONTROLLERS[kind].load()
    try:
        controller = builder(params, robot, task, model)
        if distill is not None:
            from forethought.controllers.distill import build_distill

            controller = build_distill(distill, controller, kind, robot, task, model)
        return controller
    except ConfigError as err:
        raise ConfigError(f"{experiment.source}: controller ({kind}): {err}") from None


@dataclass
class Parts:
    """What an experiment builds: the robot, its task, the planning model (or None) and the controller."""

    robot: Any
    task: Task
    model: Any
    controller: Any


def build_parts(experiment: Experiment, robot=None) -> Parts:
    """Robot (made here unless given), task, model and controller of `experiment`."""
    robot = make_robot(experiment.robot) if robot is None else robot
    task = make_task(experiment, robot)
    model = make_model(experiment, robot)
    return Parts(robot, task, model, make_controller(experiment, robot, task, model))
