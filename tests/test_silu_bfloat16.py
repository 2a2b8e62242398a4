"""The planners' bfloat16 SiLU: every bfloat16 input against the exactly rounded SiLU, and the
ensemble's planning kernel on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forethought.models.ensemble import EnsembleConfig, EnsembleModel
from forethought.models.ensemble.network import ACTIVATIONS_IN_PLACE
from forethought.models.ensemble.silu_bfloat16 import silu_bfloat16_

TINY = 1e-30  # below this SiLU's size (inputs under -87 and tiny ones) only its absolute error counts


def ordered(bits: torch.Tensor) -> torch.Tensor:
    """bfloat16 bit patterns (int16) as integers that count ulps across zero."""
    b = bits.int()
    return torch.where(b < 0, -32768 - b, b)


def test_every_bfloat16_input_is_within_one_ulp_of_the_exact_silu():
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    exact = torch.nn.functional.silu(every.double()).to(torch.bfloat16)
    ours = silu_bfloat16_(every.clone())
    finite = torch.isfinite(exact)
    normal = finite & (exact.double().abs() >= TINY)
    ulps = (ordered(ours[normal].view(torch.int16)) - ordered(exact[normal].view(torch.int16))).abs()
    assert ulps.max() <= 1
    assert (ulps > 0).double().mean() < 0.01  # most are the exactly rounded value
    tiny = finite & ~normal
    assert (ours[tiny].double() - exact[tiny].double()).abs().max() <= TINY
    # NaN and the infinities as torch has them: silu(inf) = inf, silu(-inf) = NaN, NaN stays NaN.
    special = ~torch.isfinite(every)
    reference = torch.nn.functional.silu(every[special])
    assert torch.equal(torch.isnan(ours[special]), torch.isnan(reference))
    assert torch.equal(ours[special][~torch.isnan(reference)], reference[~torch.isnan(reference)])


def test_only_contiguous_bfloat16_cpu_tensors_are_taken():
    with pytest.raises(ValueError, match="bfloat16"):
        silu_bfloat16_(torch.zeros(4))
    with pytest.raises(ValueError, match="not contiguous"):
        silu_bfloat16_(torch.zeros(4, 4, dtype=torch.bfloat16).t())


def test_the_bfloat16_planning_kernel_runs_on_it_and_rolls_out_as_with_torchs():
    rng = np.random.default_rng(0)
    config = EnsembleConfig(members=3, hidden=[32, 32], max_epochs=5, min_steps=0, planning_dtype="bfloat16")
    model = EnsembleModel(["p", "v"], ["f"], config)
    x, u = rng.uniform(-1, 1, (400, 2)), rng.uniform(-1, 1, (400, 1))
    model.fit_arrays(x, u, 0.1 * np.tanh(x + u))
    dynamics = model.dynamics("expectation", dtype="bfloat16")
    assert dynamics.activation is silu_bfloat16_
    assert model.dynamics("expectation", dtype="float32").activation is not silu_bfloat16_
    x0 = torch.tensor(rng.uniform(-1, 1, (64, 2)), dtype=torch.float32)
    U = torch.tensor(rng.uniform(-1, 1, (64, 10, 1)), dtype=torch.float32)
    ours = dynamics.rollout(x0, U, torch.Generator())
    dynamics.activation = ACTIVATIONS_IN_PLACE["silu"]
    torchs = dynamics.rollout(x0, U, torch.Generator())
    step = (torchs[:, 1:] - torchs[:, :-1]).abs().mean()
    assert (ours - torchs).abs().max() < 0.05 * step  # one ulp here and there: far below a step
