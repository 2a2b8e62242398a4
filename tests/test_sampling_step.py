"""The ensemble's fused sampling step on CPU: its arithmetic against float64 and torch, and its
rollouts against the torch steps it replaces (same draws, same rows, NaN kept to its row)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import njit

from forethought.models.ensemble import EnsembleConfig, EnsembleModel
from forethought.models.ensemble.bfloat16_bits import narrow
from forethought.models.ensemble.planning import deal_slots_torch
from forethought.models.ensemble.sampling_step import _exp, _sincos, _softplus, deal_slots


@njit
def _each(function, x, out):
    for j in range(x.size):
        out[j] = function(x[j])
    return out


def _exp_all(x):
    return _each(_exp, x, np.empty_like(x))


def _softplus_all(x):
    return _each(_softplus, x, np.empty_like(x))


@njit
def _sincos_all(x):
    sin, cos = np.empty_like(x), np.empty_like(x)
    for j in range(x.size):
        sin[j], cos[j] = _sincos(x[j])
    return sin, cos


def _narrow_all(x):
    return _each(narrow, x, np.empty(x.size, dtype=np.uint16))


def test_exp_and_softplus_are_within_a_few_ulp_and_keep_nan_and_the_infinities():
    x = np.linspace(-87.0, 88.7, 400_001, dtype=np.float32)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(_exp_all(x) / exact - 1.0)) < 3e-7  # float32's ulp is 6e-8 to 1.2e-7
    z = np.linspace(-80.0, 80.0, 400_001, dtype=np.float32)
    exact = np.logaddexp(0.0, z.astype(np.float64))
    assert np.max(np.abs(_softplus_all(z) / exact - 1.0)) < 5e-7
    special = np.array([np.nan, np.inf, -np.inf, 100.0, -100.0], dtype=np.float32)
    e = _exp_all(special)
    assert np.isnan(e[0]) and e[1] == np.inf and e[2] == 0.0 and e[3] == np.inf and e[4] == 0.0
    s = _softplus_all(special)
    assert np.isnan(s[0]) and s[1] == np.inf and s[2] == 0.0 and s[3] == 100.0 and 0.0 <= s[4] < 1e-40


def test_sine_and_cosine_are_within_1e7_and_nan_where_libm_has_nan():
    x = np.linspace(-1000.0, 1000.0, 2_000_001, dtype=np.float32)
    sin, cos = _sincos_all(x)
    assert np.max(np.abs(sin - np.sin(x.astype(np.float64)))) < 1e-7
    assert np.max(np.abs(cos - np.cos(x.astype(np.float64)))) < 1e-7
    sin, cos = _sincos_all(np.array([np.nan, np.inf, -np.inf], dtype=np.float32))
    assert np.isnan(sin).all() and np.isnan(cos).all()
    huge = np.array([1e7, -3e9, 3.4e38, -1e30], dtype=np.float32)  # a diverged particle's angles
    sin, cos = _sincos_all(huge)
    assert np.all(np.abs(sin) <= 1.0) and np.all(np.abs(cos) <= 1.0)  # finite, as libm's


def test_narrowing_to_bfloat16_rounds_as_torch_does():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    # Ties (low half 0x8000) both ways, the largest finite values, the infinities and NaNs with payloads.
    bits[:1000] = (bits[:1000] & 0xFFFF0000) | 0x8000
    bits[1000:1004] = [0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000]
    bits[1004:1008] = [0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0x7FC00000]
    x = bits.view(np.float32)
    ours = torch.from_numpy(_narrow_all(x).view(np.int16))
    theirs = torch.from_numpy(x).to(torch.bfloat16)
    nan = torch.isnan(theirs)
    assert torch.equal(torch.isnan(ours.view(torch.bfloat16)), nan)
    assert torch.equal(ours[~nan], theirs.view(torch.int16)[~nan])


def pendulum_model(dtype: str, propagation: str) -> EnsembleModel:
    """A small ensemble over (angle, velocity, position) with an angle state and an action fed
    relative to the state of its name, so that every kind of input feature is in the step."""
    rng = np.random.default_rng(0)
    N = 600
    x = np.stack([rng.uniform(-np.pi, np.pi, N), rng.normal(0, 1, N), rng.uniform(-1, 1, N)], axis=1)
    u = rng.uniform(-1, 1, (N, 1))
    d = np.stack([0.05 * x[:, 1], -0.1 * np.sin(x[:, 0]) + 0.05 * u[:, 0], 0.1 * (u[:, 0] - x[:, 2])], axis=1)
    d += 0.01 * rng.standard_normal(d.shape)
    config = EnsembleConfig(members=5, elites=3, hidden=[32, 32], max_epochs=15, min_steps=0, seed=0,
                            planning_dtype=dtype, propagation=propagation, angle_states=["theta"],
                            relative_actions=True)
    model = EnsembleModel(["theta", "omega", "pos"], ["pos"], config)
    model.fit_arrays(x, u, d)
    return model


@pytest.mark.parametrize("propagation", ["tsinf", "ts1"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_rollout_follows_the_torch_steps(dtype, propagation):
    model = pendulum_model(dtype, propagation)
    dynamics = model.dynamics(propagation, dtype)
    assert dynamics.fused
    # The numba passes around torch's products, as the torch steps have them (the compiled network,
    # which rounds differently, is held to float32 in test_network_kernel.py).
    dynamics.kernel = None
    dynamics.draws = "torch"
    rng = np.random.default_rng(1)
    B, H = 14, 6  # 14 rows over 3 elites: one padding slot
    x0 = torch.tensor(rng.uniform(-1, 1, (B, 3)), dtype=torch.float32)
    U = torch.tensor(rng.uniform(-1, 1, (B, H, 1)), dtype=torch.float32)

    def run(fused: bool, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
        dynamics.fused = fused
        generator = torch.Generator().manual_seed(seed)
        X = dynamics.rollout(x0, U, generator)
        return X, torch.rand(4, generator=generator)

    X, after = run(True)
    reference, reference_after = run(False)
    assert X.shape == (B, H + 1, 3) and X.dtype == torch.float32
    # The same draws in the same order: the generator ends where the torch steps leave it.
    assert torch.equal(after, reference_after)
    # The same arithmetic up to the last bits of exp, log1p, sin and cos (float32), and the
    # bfloat16 roundings those bits can tip (bfloat16).
    step = (reference[:, 1:] - reference[:, :-1]).abs().mean()
    tolerance = 1e-5 if dtype == "float32" else 0.02
    assert torch.max(torch.abs(X - reference)) < tolerance * step
    assert not torch.equal(X, run(True, seed=8)[0])


def test_a_nan_state_stays_in_its_own_row():
    model = pendulum_model("float32", "tsinf")
    dynamics = model.dynamics("tsinf", "float32")
    rng = np.random.default_rng(2)
    x0 = torch.tensor(rng.uniform(-1, 1, (9, 3)), dtype=torch.float32)
    U = torch.tensor(rng.uniform(-1, 1, (9, 4, 1)), dtype=torch.float32)
    clean = dynamics.rollout(x0, U, torch.Generator().manual_seed(0))
    x0[4, 0] = float("nan")
    X = dynamics.rollout(x0, U, torch.Generator().manual_seed(0))
    assert torch.isnan(X[4, 1:]).all(dim=1).any()  # the network's output is NaN from the first step
    assert torch.equal(torch.cat([X[:4], X[5:]]), torch.cat([clean[:4], clean[5:]]))


def test_chunks_deal_rows_evenly_and_keep_every_row():
    dynamics = pendulum_model("float32", "tsinf").dynamics("tsinf", "float32")
    k = dynamics.k
    order, inverse, C, q = dynamics._assignment(1805, torch.Generator().manual_seed(0), chunk=300)
    assert (q, C) == (3, 201) and order.shape == (q * k * C,)
    assert torch.equal(order[inverse], torch.arange(1805))
    member = (inverse // C) % k
    counts = torch.bincount(member, minlength=k)
    assert counts.max() - counts.min() <= 1
    # Without chunks: one member-major block of R rows each, as the torch steps lay them out.
    order, inverse, R, q = dynamics._assignment(1805, torch.Generator().manual_seed(0))
    assert q == 1 and R == 602 and torch.equal(order[inverse], torch.arange(1805))


@pytest.mark.parametrize("B,k,C,q", [(1805, 3, 201, 3), (1805, 3, 602, 1), (7, 5, 2, 1), (20, 5, 1, 4), (1, 2, 1, 1)])
def test_the_compiled_deal_is_torch_s_for_other_devices(B, k, C, q):
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(B))
    order, inverse = torch.empty(q * k * C, dtype=torch.int64), torch.empty(B, dtype=torch.int64)
    deal_slots(perm.numpy(), k, C, q, order.numpy(), inverse.numpy())
    expected = deal_slots_torch(perm, k, C, q)
    assert torch.equal(order, expected[0]) and torch.equal(inverse, expected[1])


def test_chunked_rollouts_sample_what_one_chunk_samples():
    dynamics = pendulum_model("float32", "tsinf").dynamics("tsinf", "float32")
    # 32-wide float32 layers of 3 members: chunks of 600 kB hold 1562 rows a member.
    assert dynamics.chunk_rows == 600_000 // (3 * 32 * 4)
    B, H = 3000, 5
    x0 = torch.tensor([[0.4, -0.3, 0.2]]).expand(B, -1)
    U = torch.full((B, H, 1), 0.3)
    whole = dynamics.rollout(x0, U, torch.Generator().manual_seed(0))
    dynamics.chunk_rows = 7
    chunked = dynamics.rollout(x0, U, torch.Generator().manual_seed(0))
    assert not torch.equal(whole, chunked)
    # Every row starts from the same state under the same actions: the two populations are samples
    # of one distribution, whose mean and spread agree within a few standard errors.
    spread = whole[:, 1:].std(dim=0)
    assert torch.all((whole[:, 1:].mean(dim=0) - chunked[:, 1:].mean(dim=0)).abs() < 5 * spread / B**0.5)
    assert torch.all((chunked[:, 1:].std(dim=0) / spread - 1).abs() < 0.15)
