"""The compiled bfloat16 network (models/ensemble/network_kernel.c): its layers against float64
arithmetic on the same bfloat16 operands, SiLU's edge cases against torch's, every tile shape and
remainder, whole networks against the torch products planning ran before, and NaN kept to its row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from forethought.models.ensemble import network_kernel

pytestmark = pytest.mark.skipif(not network_kernel.available(),
                                reason="the compiled kernel is not built here or this CPU lacks AVX512-BF16")


def random_layer(k: int, R: int, K: int, N: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(k, R, K, generator=g).bfloat16()
    w = (torch.randn(k, K, N, generator=g) / K**0.5).bfloat16()
    b = (0.3 * torch.randn(k, 1, N, generator=g)).bfloat16()
    return h, w, b


# Shapes that reach every tile: 64-wide blocks, 16-wide columns with a masked last vector, the
# 8-wide tail, row counts that leave each remainder of 6 and of 12, odd K (a padded pair).
SHAPES = [(5, 300, 200, 200), (2, 13, 7, 200), (3, 7, 201, 8), (1, 1, 3, 5), (2, 23, 64, 37), (1, 11, 9, 80)]


@pytest.mark.parametrize("k,R,K,N", SHAPES)
def test_a_layer_is_the_float32_sum_rounded_once(k, R, K, N):
    h, w, b = random_layer(k, R, K, N, seed=K + N)
    exact = torch.baddbmm(b.double(), h.double(), w.double())
    # float32 sums of bfloat16 products: within float32's accumulation error of the float64 sum.
    linear = network_kernel.layer(h, w, b, silu=False, out_dtype=torch.float32)
    scale = torch.bmm(h.double().abs(), w.double().abs()) + b.double().abs()
    assert torch.all((linear.double() - exact).abs() <= 1e-6 * scale)
    # SiLU, narrowed to bfloat16 once: within bfloat16's rounding (2^-8 relative) and the
    # activation's own 1.4e-4, of SiLU of the exact sum.
    activated = network_kernel.layer(h, w, b, silu=True, out_dtype=torch.bfloat16)
    target = F.silu(exact)
    error = (activated.double() - target).abs()
    assert torch.all(error <= (2.0**-8 + 2e-4) * target.abs() + 1e-6 * scale)


def test_silu_matches_torch_over_every_bfloat16_value():
    bits = torch.arange(0, 2**16, dtype=torch.int32).to(torch.int16)
    x = bits.view(torch.bfloat16)
    # Each value through an identity layer: h = (x, 0), w = [[1], [0]].
    h = torch.stack([x, torch.zeros_like(x)], dim=-1)[None]
    w = torch.tensor([[[1.0], [0.0]]], dtype=torch.bfloat16)
    ours = network_kernel.layer(h, w, None, silu=True, out_dtype=torch.bfloat16)[0, :, 0].double()
    theirs = F.silu(x.double())
    nan = torch.isnan(theirs)
    assert torch.equal(torch.isnan(ours), nan)  # NaN stays NaN, -inf gives NaN
    finite = torch.isfinite(theirs)
    assert torch.equal(ours[~nan & ~finite], theirs[~nan & ~finite])  # inf gives inf
    # VDPBF16PS flushes subnormal inputs to zero; above them, within one rounding and the
    # activation's error, or (deep in the negative tail, SiLU under 1e-30) practically zero.
    normal = finite & (x.double().abs() >= 2.0**-126)
    close = (ours - theirs).abs() <= (2.0**-8 + 2e-4) * theirs.abs()
    tiny = (ours.abs() < 1e-30) & (theirs.abs() < 1e-30)
    assert torch.all((close | tiny)[normal])
    # Almost all of them are the correctly rounded value itself.
    exact = theirs.to(torch.bfloat16).double()
    assert (ours[normal & (theirs.abs() > 1e-30)] == exact[normal & (theirs.abs() > 1e-30)]).double().mean() > 0.95


@pytest.mark.parametrize("k,R,K,N", SHAPES[:3])
def test_a_prescaled_layer_passes_on_log2e_times_silu(k, R, K, N):
    h, w, b = random_layer(k, R, K, N, seed=K * N)
    exact = torch.baddbmm(b.double(), h.double(), w.double())
    # Weights and bias times -log2(e), rounded to float32 sums of bfloat16 products as any layer's.
    ws, bs = network_kernel.prescaled([w, w], [b, None])
    ours = network_kernel.layer(h, ws[0], bs[0], silu=True, prescaled=True, out_dtype=torch.float32).double()
    target = -network_kernel.LOG2E * F.silu(exact)
    scale = torch.bmm(h.double().abs(), w.double().abs()) + b.double().abs()
    # The activation's 1.4e-4 and bfloat16's rounding of the rescaled weights (2^-9 of each product).
    assert torch.all((ours - target).abs() <= 2e-4 * target.abs() + 2.0**-8 * scale)
    # Mostly much closer than that bound: the rescaled weights' roundings mostly cancel.
    assert torch.median((ours - target).abs() / (target.abs() + 1e-30)) < 2e-3


def packed(dims: list[int], k: int, seed: int) -> tuple[network_kernel.PackedNetwork, list, list]:
    g = torch.Generator().manual_seed(seed)
    weights = [(torch.randn(k, a, b, generator=g) / a**0.5).bfloat16() for a, b in zip(dims[:-1], dims[1:])]
    biases = [None] + [(0.3 * torch.randn(k, 1, b, generator=g)).bfloat16() for b in dims[2:]]
    return network_kernel.PackedNetwork(weights, biases), weights, biases


@pytest.mark.parametrize("dims,R", [([7, 200, 200, 200, 8], 300), ([5, 33, 17], 1), ([8, 201, 31, 6], 13)])
def test_the_network_chains_its_layers_member_by_member(dims, R):
    k = 3
    network, weights, biases = packed(dims, k, seed=R)
    g = torch.Generator().manual_seed(1)
    h0 = torch.zeros(k, R, network.input_width, dtype=torch.bfloat16)
    h0[..., : dims[0]] = torch.randn(k, R, dims[0], generator=g)
    out = network.forward(h0, torch.empty(k, R, dims[-1]))
    # The same layers one at a time through `layer`, their sums prescaled as the network packs them:
    # the chaining, the scratch buffers and an odd width's padding change nothing.
    h = h0[..., : dims[0]]
    for i, (w, b) in enumerate(zip(*network_kernel.prescaled(weights, biases))):
        last = i == len(weights) - 1
        h = network_kernel.layer(h, w, b, silu=not last, prescaled=not last,
                                 out_dtype=torch.float32 if last else torch.bfloat16)
    assert torch.equal(out, h)
    # And near the float64 network on the same inputs (bfloat16 activations: a few ulp after layers).
    x = h0[..., : dims[0]].double()
    for i, (w, b) in enumerate(zip(weights, biases)):
        x = torch.bmm(x, w.double()) + (0.0 if b is None else b.double())
        x = x if i == len(weights) - 1 else F.silu(x)
    assert torch.max(torch.abs(out.double() - x)) < 0.03 * x.abs().max()


def test_a_nan_row_stays_in_its_row_and_bad_shapes_are_refused():
    network, _, _ = packed([7, 64, 64, 8], k=2, seed=3)
    h0 = torch.zeros(2, 20, network.input_width, dtype=torch.bfloat16)
    h0[..., :7] = torch.randn(2, 20, 7)
    clean = network.forward(h0, torch.empty(2, 20, 8))
    h0[1, 5, 2] = float("nan")
    out = network.forward(h0, torch.empty(2, 20, 8))
    assert torch.isnan(out[1, 5]).all()
    keep = torch.ones(2, 20, dtype=torch.bool)
    keep[1, 5] = False
    assert torch.equal(out[keep], clean[keep])
    with pytest.raises(ValueError, match="forward takes"):
        network.forward(h0.float(), torch.empty(2, 20, 8))
    with pytest.raises(ValueError, match="forward takes"):
        network.forward(h0, torch.empty(2, 20, 7))
    with pytest.raises(ValueError, match="do not chain"):
        network_kernel.PackedNetwork([torch.zeros(1, 4, 8), torch.zeros(1, 9, 2)], [None, None])


@pytest.mark.parametrize("propagation", ["tsinf", "ts1"])
def test_planning_rollouts_through_the_kernel_are_nearer_float32_than_torch_bfloat16(propagation):
    from tests.test_sampling_step import pendulum_model

    model = pendulum_model("bfloat16", propagation)
    bfloat16 = model.dynamics(propagation, "bfloat16")
    assert bfloat16.kernel is not None
    bfloat16.draws = "torch"  # the torch steps' draws, for the comparison
    calls = []
    forward = bfloat16.kernel.forward
    bfloat16.kernel.forward = lambda h0, out: calls.append(h0.shape) or forward(h0, out)
    rng = np.random.default_rng(1)
    B, H = 40, 8
    x0 = torch.tensor(rng.uniform(-1, 1, (B, 3)), dtype=torch.float32)
    U = torch.tensor(rng.uniform(-1, 1, (B, H, 1)), dtype=torch.float32)

    def run(dynamics, fused: bool) -> torch.Tensor:
        dynamics.fused = fused
        return dynamics.rollout(x0, U, torch.Generator().manual_seed(3))

    kernel = run(bfloat16, True)
    assert len(calls) == H
    torch_bfloat16 = run(bfloat16, False)
    float32 = run(model.dynamics(propagation, "float32"), False)
    # The same draws on all three; the kernel rounds each activation once, after its SiLU, where
    # torch's bfloat16 products round before and after it.
    assert torch.isfinite(kernel).all()
    assert (kernel - float32).abs().mean() < (torch_bfloat16 - float32).abs().mean()


def test_chunks_in_one_call_are_the_chunks_one_by_one_and_planning_uses_them():
    network, _, _ = packed([7, 40, 40, 6], k=3, seed=4)
    g = torch.Generator().manual_seed(5)
    h0 = torch.zeros(4, 3, 9, network.input_width, dtype=torch.bfloat16)
    h0[..., :7] = torch.randn(4, 3, 9, 7, generator=g)
    together = network.forward(h0, torch.empty(4, 3, 9, 6))
    for c in range(4):
        assert torch.equal(together[c], network.forward(h0[c].contiguous(), torch.empty(3, 9, 6)))

    from tests.test_sampling_step import pendulum_model

    model = pendulum_model("bfloat16", "ts1")
    dynamics = model.dynamics("ts1", "bfloat16")
    dynamics.chunk_rows = 4  # 30 rows over 3 elites: 3 chunks of up to 4 slots a member
    lower, upper, _ = dynamics._variance_bounds
    upper[:] = np.array([[-1.0], [-4.0], [-7.0]], dtype=np.float32)  # each member's own noise, to tell them apart
    rng = np.random.default_rng(4)
    x0 = torch.tensor(rng.uniform(-1, 1, (30, 3)), dtype=torch.float32)
    U = torch.tensor(rng.uniform(-1, 1, (30, 5, 1)), dtype=torch.float32)
    X = dynamics.rollout(x0, U, torch.Generator().manual_seed(1))
    kernel, dynamics.kernel = dynamics.kernel, None
    torch_products = dynamics.rollout(x0, U, torch.Generator().manual_seed(1))  # same chunks, same draws
    dynamics.kernel = kernel
    step = (torch_products[:, 1:] - torch_products[:, :-1]).abs().mean()
    assert torch.max(torch.abs(X - torch_products)) < 0.1 * step  # bfloat16 roundings; a wrong block is a step off
