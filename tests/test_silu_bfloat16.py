"""The planners' bfloat16 SiLU: every bfloat16 input against the exactly rounded SiLU, and the
ensemble's planning kernel on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forethought.models.ensemble import EnsembleConfig, EnsembleModel
from forethought.models.ensemble.network import ACTIVATIONS_IN_PLACE
from forethought.models.ensemble.silu_bfloat16 import planning_silu_, silu_bfloat16_



def ordered(bits: torch.Tensor) -> torch.Tensor:
    """bfloat16 bit patterns (int16) as integers that count ulps across zero."""
    b = bits.int()
    return torch.where(b < 0, -32768 - b, b)


def test_every_bfloat16_input_is_within_one_ulp_of_the_exact_silu():
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    # The reference: float64 SiLU rounded to bfloat16 (through float32: a double rounding can move
    # a tie by one ulp, within what is asserted).
    exact = torch.nn.functional.silu(every.double()).to(torch.bfloat16)
    ours = silu_bfloat16_(every.clone())
    finite = torch.isfinite(every)
    # Subnormal inputs (SiLU about x / 2) are held to their size only: a CPU flushing subnormals
    # to zero, which some libraries turn on in a process, may round them otherwise.
    subnormal = finite & (every.double().abs() < 2.0**-126)
    counted = finite & ~subnormal & (every.double() >= -87.0)
    ulps = (ordered(ours[counted].view(torch.int16)) - ordered(exact[counted].view(torch.int16))).abs()
    assert ulps.max() <= 1
    assert (ulps > 0).double().mean() < 1e-3  # nearly all are the exactly rounded value
    assert (ours[subnormal].double() - exact[subnormal].double()).abs().max() <= 2.0**-126
    # Below -87 SiLU is under 1e-30 in size: -0 or a tiny negative number.
    below = finite & ~subnormal & ~counted
    assert (ours[below].double() - exact[below].double()).abs().max() <= 1e-30
    assert (ours[below].double() <= 0).all()
    # NaN stays NaN, silu(inf) = inf and silu(-inf) = NaN, as torch's.
    special = ~finite
    reference = torch.nn.functional.silu(every[special])
    assert torch.equal(torch.isnan(ours[special]), torch.isnan(reference))
    assert torch.equal(ours[special][~torch.isnan(reference)], reference[~torch.isnan(reference)])


def test_only_contiguous_bfloat16_cpu_tensors_are_taken():
    with pytest.raises(ValueError, match="bfloat16"):
        silu_bfloat16_(torch.zeros(4))
    with pytest.raises(ValueError, match="not contiguous"):
        silu_bfloat16_(torch.zeros(4, 4, dtype=torch.bfloat16).t())
    weights = torch.ones(4, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(ValueError, match="not differentiable"):
        silu_bfloat16_(weights * 2)


def test_planning_takes_this_pass_on_one_thread_and_torchs_on_more():
    h = (torch.randn(5, 40, 20) * 3).bfloat16()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(planning_silu_(h.clone()), silu_bfloat16_(h.clone()))
        torch.set_num_threads(2)
        assert torch.equal(planning_silu_(h.clone()), torch.nn.functional.silu(h))
    finally:
        torch.set_num_threads(threads)


def test_the_bfloat16_planning_kernel_runs_on_it_and_rolls_out_as_with_torchs():
    rng = np.random.default_rng(0)
    config = EnsembleConfig(members=3, hidden=[32, 32], max_epochs=5, min_steps=0, planning_dtype="bfloat16")
    model = EnsembleModel(["p", "v"], ["f"], config)
    x, u = rng.uniform(-1, 1, (400, 2)), rng.uniform(-1, 1, (400, 1))
    model.fit_arrays(x, u, 0.1 * np.tanh(x + u))
    dynamics = model.dynamics("expectation", dtype="bfloat16")
    assert dynamics.activation is planning_silu_
    assert model.dynamics("expectation", dtype="float32").activation is not planning_silu_
    x0 = torch.tensor(rng.uniform(-1, 1, (64, 2)), dtype=torch.float32)
    U = torch.tensor(rng.uniform(-1, 1, (64, 10, 1)), dtype=torch.float32)
    dynamics.activation = silu_bfloat16_
    ours = dynamics.rollout(x0, U, torch.Generator())
    dynamics.activation = ACTIVATIONS_IN_PLACE["silu"]
    torchs = dynamics.rollout(x0, U, torch.Generator())
    step = (torchs[:, 1:] - torchs[:, :-1]).abs().mean()
    assert (ours - torchs).abs().max() < 0.05 * step  # one ulp here and there: far below a step
