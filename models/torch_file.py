"""Reading the project's torch files (models, policies) without running code from them.

A torch file is a pickle; `torch.load` without weights_only would run whatever a file in a run
folder names (`deploy --policy RUN_DIR` loads one). The project writes only tensors and plain data
(dicts, lists, tuples, str, int, float, bool, None), so every file is read with weights_only=True,
and one that holds any other Python object is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from forethought.robots.config import ConfigError


def _reason(err: Exception) -> str:
    """One line of torch's (long, multi-line) refusal: the global it would not load, or its operand."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds a pickled Python object ({found.group(1)}), which is not loaded: only tensors and plain data are"
    found = re.search(r"WeightsUnpickler error: \s*(.+)", text)
    if found:
        return found.group(1).strip()
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def load_torch_file(path: str | Path, what: str, tag: tuple[str, str] | None = None) -> dict:
    """The dict saved in `path`, read with weights_only=True; ConfigError naming the file and `what`
    it should be ("an NN policy file") when it is unreadable, holds a pickled object, is no dict, or
    lacks the format `tag` (key, value) its writer stamps on it."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises many kinds for a damaged file (UnpicklingError, RuntimeError, EOFError, ...)
        raise ConfigError(f"{path}: not {what}: {_reason(err)}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: not {what}: it holds a {type(saved).__name__}, not a mapping")
    if tag is not None and saved.get(tag[0]) != tag[1]:
        raise ConfigError(f"{path}: not {what}: its {tag[0]} is {saved.get(tag[0])!r}, this version reads {tag[1]!r}")
    return saved


def as_tensor(value) -> torch.Tensor:
    """A numpy array (or number list) as a CPU float64 tensor, for saving without numpy's pickles."""
    return torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
