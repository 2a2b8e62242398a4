"""A sweep's grid: the seeds, the settings (`--set KEY=V1,V2`: dotted paths into the experiment
file, each with its values) and the runs they make, validated before anything runs.

A setting is one combination of the values of every `--set` key; each setting runs with every seed.
The seed of a run is the experiment's `loop.seed` (so the project's one seed scheme derives each
trial's seed and the model's from it); the values are written into the experiment file's mapping at
their dotted path (`controller.optimiser.max_iter`, `task.conditions.0.target`: a number indexes a
list) and the result is validated as `forethought run` validates a file, parts built, so that a bad
key or value is refused in one line before a run starts.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from forethought.robots.config import ConfigError, load_yaml
from forethought.scripts.experiment import (
    Experiment, build_parts, experiment_from_data, experiment_path, load_experiment, make_robot,
)

DEFAULT_SETTING = "default"  # the name (and folder) of the one setting of a sweep without --set
FIXED_KEYS = {"loop.seed": "the seeds come from --seeds", "name": "a run's name is its experiment's"}


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0..9]; '0,3,5' and '0-3,7' too; ConfigError naming --seeds for anything else."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ConfigError(f"--seeds: expected seeds like 0-9 or 0,3,5, got {text!r}")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise ConfigError(f"--seeds: the range {part.strip()} runs backwards")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: a seed is named twice in {text!r}")
    return seeds


def split_values(text: str) -> list[str]:
    """'1,2,[0.1, 0.2]' -> ['1', '2', '[0.1, 0.2]']: commas inside brackets or braces stay."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts]


def parse_set(texts: list[str]) -> dict[str, list[Any]]:
    """`--set KEY=V1,V2` options -> {KEY: [V1, V2]}, each value read as YAML (numbers, true, lists)."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, values = text.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ConfigError(f"--set {text}: expected KEY=V1,V2,... (a dotted key into the experiment file)")
        if key in grid:
            raise ConfigError(f"--set {key}: given twice (list every value in one --set)")
        if key in FIXED_KEYS:
            raise ConfigError(f"--set {key}: not a setting to sweep ({FIXED_KEYS[key]})")
        try:
            grid[key] = [yaml.safe_load(v) for v in split_values(values)]
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: a value is not valid YAML ({getattr(err, 'problem', err)})") from None
    return grid


def set_key(data: dict, key: str, value: Any) -> None:
    """Write `value` at dotted `key` of an experiment mapping (a number indexes a list); a missing
    mapping on the way is made, for validation to accept or refuse. ConfigError naming the key when
    the path runs through something that is neither a mapping nor a list."""
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if not part:
            raise ConfigError(f"--set {key}: an empty part in the key")
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth]) or 'the file'} is a list of "
                                  f"{len(node)}; {part!r} is not an index into it")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and index not in node:
                node[index] = {}
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is {node!r}, not a mapping or a list")
        if last:
            node[index] = value
        else:
            node = node[index]
            if node is None:
                raise ConfigError(f"--set {key}: {where} is empty")


def format_value(value: Any) -> str:
    """A value as a setting's name writes it (YAML flow style, on one line)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


@dataclass(frozen=True)
class Setting:
    """One point of the grid: its values, (dotted key, value) in --set order."""

    values: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """'controller.horizon=20,loop.samples=2', or 'default' without --set."""
        return ",".join(f"{k}={format_value(v)}" for k, v in self.values) or DEFAULT_SETTING

    @property
    def folder(self) -> str:
        """The setting's folder name: its name with anything but letters, digits and .,=+- as '_'."""
        return re.sub(r"[^A-Za-z0-9.,=+-]", "_", self.name)


def settings_of(grid: dict[str, list[Any]]) -> list[Setting]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = list(grid)
    return [Setting(tuple(zip(keys, combo))) for combo in itertools.product(*(grid[k] for k in keys))]


def base_mapping(name: str) -> tuple[dict, Path]:
    """The experiment file's mapping and its path (a dm_control name's as `load_experiment` makes it)."""
    if name.startswith("dmc:"):
        data = dataclasses.asdict(load_experiment(name))
        data.pop("source")
        return data, Path(name)
    path = experiment_path(name)
    return load_yaml(path), path


def resolve(base: dict, path: Path, values: dict[str, Any], named: Sequence[str] = ()) -> Experiment:
    """The experiment with `values` ({dotted key: value}) written into `base`, validated (a key or
    value it refuses: ConfigError naming the keys `named`, the --set keys among them)."""
    data = copy.deepcopy(base)
    for key, value in values.items():
        set_key(data, key, value)
    try:
        return experiment_from_data(data, path)
    except ConfigError as err:
        raise ConfigError(f"--set {', '.join(named)}: {err}" if named else str(err)) from None


def check_builds(experiment: Experiment, values: dict[str, Any]) -> None:
    """Build the experiment's robot, task, model and controller once, so that a setting they refuse
    (an unknown controller parameter) stops the sweep before it starts."""
    try:
        with make_robot(experiment.robot) as robot:
            build_parts(experiment, robot)
    except ConfigError as err:
        raise ConfigError(f"--set {', '.join(values)}: {err}" if values else str(err)) from None
