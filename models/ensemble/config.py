"""Settings of the ensemble: how it is built, trained and rolled out, and where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from forethought.models.ensemble.network import ACTIVATIONS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROPAGATIONS = ("ts1", "tsinf", "expectation")


@dataclass
class EnsembleConfig:
    """How the ensemble is built, trained and rolled out.

    members: networks in the ensemble; elites: how many of them (best held-out loss) predict and plan
    (default all). hidden: widths of the hidden layers. angle_states: state names fed as (sin, cos).
    relative_actions: feed each action that shares its name with a state as the difference action -
    state (a servo's position target becomes its position error, which its torque follows); other
    actions are fed as they are. mirror: the system is mirror-symmetric about the origin of its
    states and actions (negating every state and action negates the change: the cart-pole about
    its hanging rest, with the pole's angle from hanging), and every transition is trained in its
    mirrored form as well.
    weight_decay: L2 weight on every layer's weights. holdout: fraction of transitions kept out of
    training for early stopping (at most max_holdout; the same transitions in every fit); training
    stops after `patience` epochs in which no member's held-out mean squared error improved by a
    relative `min_improvement`, once it has taken `min_steps` gradient steps (so that the few
    transitions of the first trials still train the networks), and after `max_epochs` epochs (or
    enough epochs for min_steps) or `max_steps` steps at the latest (each fit continues from the
    last one's weights, so a capped fit still builds on all earlier training).
    logvar_min, logvar_max: initial soft bounds on the log-variance (normalised target units);
    logvar_penalty: weight of (sum of upper bounds - sum of lower bounds) in the loss.
    propagation: how `rollout` carries particles through the members: "tsinf" (each particle keeps
    one member for the whole rollout), "ts1" (a fresh member every step) or "expectation" (the mean
    over members, no sampling).
    planning_dtype: precision of the network inside planning rollouts: "float32", "bfloat16" (about
    4 times faster on CPUs with AVX512-BF16 or AMX, accurate to about 3 significant digits; states
    accumulate in float32 either way) or "auto" (bfloat16 where the hardware has it, else float32).
    device: "cpu" or "cuda" (an error when CUDA is not available).
    """

    members: int = 5
    elites: int | None = None
    hidden: list[int] = field(default_factory=lambda: [200, 200, 200])
    activation: str = "silu"
    angle_states: list[str] = field(default_factory=list)
    relative_actions: bool = False
    mirror: bool = False
    learning_rate: float = 1e-3
    weight_decay: float = 5e-5
    batch_size: int = 32
    max_epochs: int = 200
    min_steps: int = 1000
    max_steps: int = 10000
    patience: int = 30
    min_improvement: float = 0.01
    holdout: float = 0.2
    max_holdout: int = 2000
    logvar_min: float = -10.0
    logvar_max: float = 0.5
    logvar_penalty: float = 0.01
    propagation: str = "tsinf"
    planning_dtype: str = "auto"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        self.hidden = [int(h) for h in self.hidden]
        self.angle_states = list(self.angle_states)
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")
        if self.elites is not None and not 1 <= self.elites <= self.members:
            raise ValueError(f"elites must be between 1 and members ({self.members}), got {self.elites}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must list at least one positive width, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{self.activation}' (known: {', '.join(ACTIVATIONS)})")
        if self.propagation not in PROPAGATIONS:
            raise ValueError(f"unknown propagation '{self.propagation}' (known: {', '.join(PROPAGATIONS)})")
        if self.planning_dtype not in (*DTYPES, "auto"):
            raise ValueError(f"unknown planning_dtype '{self.planning_dtype}' (known: auto, {', '.join(DTYPES)})")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("batch_size, max_epochs and patience must be at least 1")
        if self.max_steps < max(1, self.min_steps):
            raise ValueError(f"max_steps ({self.max_steps}) must be at least min_steps ({self.min_steps}) and 1")
        if not self.logvar_min < self.logvar_max:
            raise ValueError(f"logvar_min ({self.logvar_min}) must be below logvar_max ({self.logvar_max})")
        resolve_device(self.device)

    @property
    def n_elites(self) -> int:
        return self.members if self.elites is None else self.elites


def resolve_device(device: str) -> torch.device:
    """torch.device for "cpu" / "cuda[:i]"; ValueError when CUDA is asked for and not available."""
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device '{device}' (use 'cpu' or 'cuda')") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' asked for, but torch finds no CUDA device here")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device '{device}' (use 'cpu' or 'cuda')")
    return resolved


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively (CUDA with bf16, or a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _cpu_has_bfloat16()


@lru_cache(maxsize=1)
def _cpu_has_bfloat16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
