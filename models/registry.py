"""The dynamics models an experiment's `model:` section (and `forethought fit --model`) can name.

One line registers a model: its name, the callable that builds it, its settings dataclass and the
suffix of the file it saves to. The builder is a class or function called with `config` (the
settings) and, when its signature asks for them, `spec` (the robot's RobotSpec), `state_names`,
`action_names` and `scene` (the robot's MJCF scene; a dm_control task's MjModel; None otherwise). Modules load on first
use, so naming a model costs nothing until it is built.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from forethought.robots.config import ConfigError, from_mapping


@dataclass(frozen=True)
class ModelEntry:
    """builder, settings: "module:name"; suffix: of the file `save` writes."""

    builder: str
    settings: str
    suffix: str

    def load(self, which: str):
        module_name, name = getattr(self, which).split(":")
        return getattr(importlib.import_module(module_name), name)

    @property
    def model_class(self) -> type:
        """The class of the models the builder returns (its return annotation for a function)."""
        built = self.load("builder")
        if inspect.isclass(built):
            return built
        module_name = self.builder.split(":")[0]
        hint = inspect.signature(built).return_annotation
        return getattr(importlib.import_module(module_name), hint.strip("'\"")) if isinstance(hint, str) else hint


MODELS: dict[str, ModelEntry] = {
    "mujoco": ModelEntry("forethought.models.simulator_config:build_scene_model",
                         "forethought.models.simulator_config:MujocoModelConfig", ".json"),
    "tvlg": ModelEntry("forethought.models.tvlg:TVLGModel", "forethought.models.tvlg:TVLGConfig", ".npz"),
    "gp": ModelEntry("forethought.models.gp:GPModel", "forethought.models.gp:GPConfig", ".pt"),
    "ensemble": ModelEntry("forethought.models.ensemble:EnsembleModel", "forethought.models.ensemble:EnsembleConfig", ".pt"),
}


def model_entry(name: str, where: str = "model.type") -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(f"{where}: unknown model {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name]


def model_settings(name: str, section: dict, where: str, seed: int | None = None) -> Any:
    """The settings dataclass of model `name` from a mapping (the `model:` section without `type`);
    `seed` fills the settings' own seed when the mapping does not give one."""
    cls = model_entry(name).load("settings")
    settings = from_mapping(cls, section, where)
    names = {f.name for f in dataclasses.fields(cls)}
    if seed is not None and "seed" in names and "seed" not in section:
        settings = dataclasses.replace(settings, seed=int(seed))
    return settings


def build_model(name: str, settings: Any, spec, scene=None):
    """A fresh model `name` for a robot with `spec` (and its `scene`: an MJCF name or path, or a
    dm_control task's MjModel), built from its settings.

    Settings with `states` / `actions` lists (the GP's) model those of the robot's only."""
    builder = model_entry(name).load("builder")
    names = {}
    for key, known in (("states", spec.state_names), ("actions", spec.action_names)):
        chosen = getattr(settings, key, None) or known
        unknown = [s for s in chosen if s not in known]
        if unknown:
            raise ConfigError(f"model.{key}: unknown names {unknown} (known: {', '.join(known)})")
        names[key] = tuple(chosen)
    # Angles are named among the modelled states: a name the robot lacks is the settings' fault.
    unknown = [a for a in getattr(settings, "angle_states", None) or () if a not in names["states"]]
    if unknown:
        raise ConfigError(f"model.angle_states: {unknown} are not modelled states (states: {', '.join(names['states'])})")
    offered = {"config": settings, "spec": spec, "state_names": names["states"],
               "action_names": names["actions"], "scene": scene}
    wants = inspect.signature(builder).parameters
    return builder(**{key: value for key, value in offered.items() if key in wants})
