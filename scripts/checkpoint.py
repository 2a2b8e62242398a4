"""A run's checkpoint: what the experiment loop, its learned model and its controller hold after an
iteration, written to RUN/checkpoint.pt so that `forethought run --resume RUN` continues from there.

The file is plain data and tensors (torch.save of dicts, lists, strings, numbers and tensors), read
back with torch.load(weights_only=True): never a pickle of objects. Objects are written as the
name of their class and their attributes, and rebuilt only when the class is the project's own or
torch.nn's (ALLOWED); anything else in the state is a bug, reported with where it sits.

What is saved of an object: the attributes its class names in `checkpoint_attributes` (a learning
controller: its policies, iteration, history; not its model, costs or settings, which the
experiment builds again), or what its `checkpoint_state()` gives where its state is not its
attributes as they are (SAC's and MBPO's: networks, optimiser moments, buffers' filled rows), else
all of its attributes (a model's). Trials are saved as their index
in the run (the run's logged trials are read back). numpy and torch generators keep their state,
so that a resumed run draws the very numbers the uninterrupted one draws.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forethought.models.torch_file import load_torch_file
from forethought.robots.config import ConfigError
from forethought.robots.trial import Trial

FILE = "checkpoint.pt"
FORMAT = 1
ALLOWED = ("forethought.", "torch.nn.modules.")


class Packer:
    """Turns a state into plain data; trials become their index in `trials` (the run's, in order)."""

    def __init__(self, trials: list[Trial]):
        self.trial_index = {id(t): i for i, t in enumerate(trials)}

    def pack(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)) and not isinstance(value, np.generic):
            return value
        if isinstance(value, np.generic):
            return {"__npscalar__": torch.from_numpy(np.asarray(value).copy())}
        if isinstance(value, torch.nn.Parameter):
            return {"__parameter__": value.detach().clone(), "requires_grad": value.requires_grad}
        if isinstance(value, torch.Tensor):
            return {"__tensor__": value.detach().clone()}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"checkpoint: {where} is an array of objects")
            return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value).copy())}
        if isinstance(value, np.random.Generator):
            # The bit generator's state has integers wider than 64 bits: kept as JSON text.
            return {"__np_generator__": json.dumps(value.bit_generator.state)}
        if isinstance(value, torch.Generator):
            return {"__torch_generator__": value.get_state(), "device": str(value.device)}
        if isinstance(value, Trial):
            if id(value) not in self.trial_index:
                raise TypeError(f"checkpoint: {where} is a trial that the run did not log")
            return {"__trial__": self.trial_index[id(value)]}
        if isinstance(value, tuple):
            return {"__tuple__": [self.pack(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.pack(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {"__items__": [[self.pack(k, f"{where} key"), self.pack(v, f"{where}[{k!r}]")]
                                  for k, v in value.items()]}
        if isinstance(value, torch.nn.Module):
            return self._module(value, where)
        return self._object(value, where)

    def _name(self, value: Any, where: str) -> str:
        cls = type(value)
        name = f"{cls.__module__}:{cls.__qualname__}"
        if not cls.__module__.startswith(ALLOWED) or "<locals>" in cls.__qualname__:
            raise TypeError(f"checkpoint: {where} is a {name}, which a checkpoint does not hold")
        return name

    def _module(self, module: torch.nn.Module, where: str) -> dict:
        internal = {"_parameters", "_buffers", "_modules", "training"}
        attrs = {k: v for k, v in vars(module).items() if k not in internal and not k.startswith("_")}
        return {
            "__module__": self._name(module, where),
            "training": module.training,
            "parameters": {k: self.pack(p, f"{where}.{k}") for k, p in module._parameters.items()},
            "buffers": {k: self.pack(b, f"{where}.{k}") for k, b in module._buffers.items()},
            "modules": {k: self.pack(m, f"{where}.{k}") for k, m in module._modules.items()},
            "attrs": {k: self.pack(v, f"{where}.{k}") for k, v in attrs.items()},
        }

    def _object(self, value: Any, where: str) -> dict:
        name = self._name(value, where)
        if not hasattr(value, "__dict__"):
            raise TypeError(f"checkpoint: {where} is a {name} without attributes")
        return {"__object__": name, "attrs": {k: self.pack(v, f"{where}.{k}") for k, v in vars(value).items()}}


def _class(name: str) -> type:
    module, qualname = name.split(":")
    if not module.startswith(ALLOWED):
        raise ConfigError(f"checkpoint: refuses to build a {name}")
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return cls


def unpack(value: Any, trials: list[Trial]) -> Any:
    """The state `pack` wrote, rebuilt (trials: the run's, by index)."""
    if isinstance(value, list):
        return [unpack(v, trials) for v in value]
    if not isinstance(value, dict):
        return value
    if "__npscalar__" in value:
        return value["__npscalar__"].numpy()[()]
    if "__parameter__" in value:
        return torch.nn.Parameter(value["__parameter__"], requires_grad=value["requires_grad"])
    if "__tensor__" in value:
        return value["__tensor__"]
    if "__ndarray__" in value:
        return value["__ndarray__"].numpy()
    if "__np_generator__" in value:
        state = json.loads(value["__np_generator__"])
        generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
        generator.bit_generator.state = state
        return generator
    if "__torch_generator__" in value:
        generator = torch.Generator(device=value["device"])
        generator.set_state(value["__torch_generator__"])
        return generator
    if "__trial__" in value:
        return trials[value["__trial__"]]
    if "__tuple__" in value:
        return tuple(unpack(v, trials) for v in value["__tuple__"])
    if "__items__" in value:
        return {unpack(k, trials): unpack(v, trials) for k, v in value["__items__"]}
    if "__module__" in value:
        module = _class(value["__module__"]).__new__(_class(value["__module__"]))
        torch.nn.Module.__init__(module)
        for k, v in value["attrs"].items():
            object.__setattr__(module, k, unpack(v, trials))
        for k, p in value["parameters"].items():
            module.register_parameter(k, unpack(p, trials))
        for k, b in value["buffers"].items():
            module.register_buffer(k, unpack(b, trials))
        for k, m in value["modules"].items():
            module.add_module(k, unpack(m, trials))
        module.training = value["training"]
        return module
    if "__object__" in value:
        cls = _class(value["__object__"])
        obj = cls.__new__(cls)
        obj.__dict__.update({k: unpack(v, trials) for k, v in value["attrs"].items()})
        return obj
    raise ConfigError(f"checkpoint: an entry with keys {sorted(value)} that no checkpoint writes")


def state_of(obj: Any, packer: Packer, where: str) -> dict:
    """What a checkpoint keeps of `obj` (module docstring), packed: its own `checkpoint_state()`
    where it has one (a model whose parts are not the project's, as the GP's gpytorch modules),
    else the attributes its class names in `checkpoint_attributes`, else all of them."""
    if hasattr(obj, "checkpoint_state"):
        return {"__own__": packer.pack(obj.checkpoint_state(), where)}
    names = getattr(type(obj), "checkpoint_attributes", None)
    attrs = vars(obj) if names is None else {k: getattr(obj, k) for k in names}
    return {k: packer.pack(v, f"{where}.{k}") for k, v in attrs.items()}


def restore(obj: Any, state: dict, trials: list[Trial]) -> None:
    """Put what `state_of` saved back on `obj`, built afresh from the same experiment (a network it
    has keeps its place, and its device: the saved weights are loaded into it)."""
    if "__own__" in state:
        obj.restore_checkpoint(unpack(state["__own__"], trials))
        return
    for k, v in state.items():
        value, current = unpack(v, trials), getattr(obj, k, None)
        if isinstance(current, torch.nn.Module) and type(current) is type(value):
            current.load_state_dict(value.state_dict())
        else:
            object.__setattr__(obj, k, value)


def resumable(controller, model=None) -> str | None:
    """Why a run of this controller on this model cannot be resumed (None when it can): a controller
    says what it keeps by `checkpoint_attributes` (empty for one that keeps nothing) or gives it by
    `checkpoint_state()`/`restore_checkpoint()` (state that is not its attributes as they are); a learned model
    from outside the project keeps its state by `checkpoint_state()`/`restore_checkpoint()`."""
    if getattr(type(controller), "checkpoint_attributes", None) is None and not hasattr(controller, "checkpoint_state"):
        return f"the controller {type(controller).__name__} does not say what it keeps between iterations"
    if (getattr(model, "learned", False) and not hasattr(model, "checkpoint_state")
            and not type(model).__module__.startswith(ALLOWED)):
        return (f"the model {type(model).__name__} is not the project's and has no checkpoint_state() "
                "and restore_checkpoint()")
    return None


def save(folder: Path, iterations: int, result, model, controller) -> Path:
    """Write RUN/checkpoint.pt after `iterations` complete iterations (atomically: a checkpoint on
    disk is a whole one, the previous one until the new one is complete)."""
    packer = Packer(result.trials)
    fields = ("learning_curve", "successes", "goal_values", "diagnostics", "model_errors")
    state = {
        "format": FORMAT,
        "iterations": iterations,
        "trials": len(result.trials),
        "result": {k: packer.pack(getattr(result, k), k) for k in fields},
        "model": state_of(model, packer, "model") if getattr(model, "learned", False) else None,
        "controller": state_of(controller, packer, "controller"),
        "rng": {"numpy": packer.pack(np.random.get_state(legacy=False), "numpy's global generator"),
                "torch": torch.get_rng_state()},
        "threads": torch.get_num_threads(),
    }
    path = Path(folder) / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(folder: Path) -> dict | None:
    """RUN/checkpoint.pt as written (plain data and tensors), or None when the run has none yet."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    state = load_torch_file(path, "a readable checkpoint", tag=("format", FORMAT))
    return state


def apply(state: dict, result, model, controller) -> None:
    """Put a loaded checkpoint's state back: on `result` (whose trials are the run's first
    state["trials"], read from its log), the model, the controller and the global generators."""
    trials = result.trials
    for k, v in state["result"].items():
        setattr(result, k, unpack(v, trials))
    if state["model"] is not None:
        restore(model, state["model"], trials)
    restore(controller, state["controller"], trials)
    np.random.set_state(unpack(state["rng"]["numpy"], trials))
    torch.set_rng_state(state["rng"]["torch"])


def set_aside(folder: Path, keep: int) -> Path | None:
    """Move the trial files of RUN/trials past the first `keep` (the trials of an iteration that a
    stop cut short, a partial one among them) to RUN/interrupted/N/ (N: 1 for the first resume,
    then 2, ...): never deleted, never reused. Returns that folder, or None when nothing moved."""
    import re

    trials = Path(folder) / "trials"
    pattern = re.compile(r"trial_(\d+)\.")
    extra = sorted(p for p in trials.iterdir() if not ((m := pattern.match(p.name)) and int(m.group(1)) < keep
                                                       and p.name.endswith(".h5")
                                                       and not p.name.endswith(".partial.h5")))
    if not extra:
        return None
    aside = Path(folder) / "interrupted"
    n = 1
    while (aside / str(n)).exists():
        n += 1
    target = aside / str(n)
    target.mkdir(parents=True)
    for path in extra:
        os.replace(path, target / path.name)
    return target


def resume_point(folder: Path) -> tuple[dict | None, list[Trial]]:
    """Where a run folder's run goes on: its checkpoint (None when it stopped before the first one:
    the run starts again) and the trials logged up to it, read from its log; the trials logged
    after it are set aside (`set_aside`). ValueError naming the file for a missing or damaged trial."""
    from forethought.robots.trial_log_read import load_trial

    state = load(folder)
    keep = 0 if state is None else int(state["trials"])
    set_aside(folder, keep)
    trials = [load_trial(Path(folder) / "trials" / f"trial_{i:04d}.h5") for i in range(keep)]
    return state, trials
