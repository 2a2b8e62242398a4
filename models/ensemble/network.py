"""The ensemble's networks: E Gaussian MLPs in one batched pass, and the input and target scaling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}
ACTIVATIONS_IN_PLACE = {"silu": partial(F.silu, inplace=True), "relu": torch.relu_, "elu": F.elu_, "tanh": torch.tanh_}

def soft_bound_logvar(raw: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Squash raw log-variances smoothly into (lower, upper) as in PETS."""
    logvar = upper - F.softplus(upper - raw)
    return lower + F.softplus(logvar - lower)


class EnsembleNetwork(torch.nn.Module):
    """E Gaussian MLPs evaluated together: z (E, B, d_in) -> mean, log-variance (E, B, d_out)."""

    def __init__(
        self,
        members: int,
        d_in: int,
        d_out: int,
        hidden: Sequence[int],
        activation: str,
        logvar_bounds: tuple[float, float],
        generator: torch.Generator,
    ):
        super().__init__()
        widths = [d_in, *hidden, 2 * d_out]
        self.d_out = d_out
        self.activation = ACTIVATIONS[activation]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            w = torch.empty(members, fan_in, fan_out)
            # PETS' initialisation: truncated normal with std 1 / (2 sqrt(fan_in)).
            torch.nn.init.trunc_normal_(w, std=1.0 / (2.0 * math.sqrt(fan_in)), a=-2.0 / math.sqrt(fan_in),
                                        b=2.0 / math.sqrt(fan_in), generator=generator)
            self.weights.append(torch.nn.Parameter(w))
            self.biases.append(torch.nn.Parameter(torch.zeros(members, 1, fan_out)))
        self.min_logvar = torch.nn.Parameter(torch.full((members, 1, d_out), float(logvar_bounds[0])))
        self.max_logvar = torch.nn.Parameter(torch.full((members, 1, d_out), float(logvar_bounds[1])))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = z
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = self.activation(h)
        mean, raw = h[..., : self.d_out], h[..., self.d_out :]
        return mean, soft_bound_logvar(raw, self.min_logvar, self.max_logvar)


@dataclass
class Normaliser:
    """Affine statistics in float64: mean and std per column.

    A constant column gets std `constant_std`: 1 for inputs (so an unseen value stays moderate
    after normalisation), tiny for targets (so the network's output for a quantity that never
    changed in the data is scaled to practically zero).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, data: np.ndarray, constant_std: float) -> "Normaliser":
        mean = data.mean(axis=0)
        std = data.std(axis=0)
        std = np.where(std < 1e-12, constant_std, std)
        return cls(mean.astype(np.float64), std.astype(np.float64))
