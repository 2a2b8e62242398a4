"""A sampling step's work around the network on AVX-512 (models/ensemble/sampling_kernel.c): the
normal draws (Philox4x32-10 through Box-Muller) against Philox's published answers and a float64
reading of the same words, their distribution, streams and keys apart; the features and the
sampled next states bit for bit as the numba passes give them; planning rollouts that sample what
torch's draws sample."""

import numpy as np
import pytest
import torch
from scipy import stats

from forethought.models.ensemble import sampling_kernel, sampling_step

pytestmark = pytest.mark.skipif(not sampling_kernel.available(), reason="needs the compiled kernels and AVX-512")

MASK = np.uint64(0xFFFFFFFF)


def philox(counter: list, key: list) -> list:
    """Philox4x32-10 in numpy (uint64 holding 32-bit words): the reference the kernel is held to."""
    c = [np.asarray(x, dtype=np.uint64) for x in counter]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0, p1 = c[0] * np.uint64(0xD2511F53), c[2] * np.uint64(0xCD9E8D57)
        c = [((p1 >> np.uint64(32)) ^ c[1] ^ k0) & MASK, p1 & MASK, ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & MASK, p0 & MASK]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & MASK, (k1 + np.uint64(0xBB67AE85)) & MASK
    return [int(x) if x.ndim == 0 else x for x in c]


def reference(count: int, key: int, stream: int) -> np.ndarray:
    """The normals of (key, stream) in float64, from the layout sampling_kernel.c documents."""
    out = []
    for block in range(-(-count // 32)):
        lanes = np.arange(8, dtype=np.uint64) + np.uint64(8 * block)
        c = philox([lanes, np.full(8, stream & 0xFFFFFFFF), np.full(8, stream >> 32), np.zeros(8)],
                   [key & 0xFFFFFFFF, key >> 32])
        radius = np.concatenate([c[0], c[1]]).astype(np.int64)
        angle = np.concatenate([c[2], c[3]]).astype(np.int64)
        u, v = ((radius >> 8) + 0.5) * 2.0**-24, ((angle >> 8) + 0.5) * 2.0**-24
        r, psi = np.sqrt(-2 * np.log(u)), (v - 0.5) * np.pi / 2 + np.pi / 4
        out += [r * np.cos(psi) * np.where(angle & 1, -1, 1), r * np.sin(psi) * np.where(angle & 2, -1, 1)]
    return np.concatenate(out)[:count]


def test_philox_gives_its_published_answers():
    # Random123's known-answer tests for philox4x32_10.
    assert philox([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("count, key, stream", [(32, 0, 0), (77, 2**64 - 5, 2**40 + 3), (1000, 12345, 7)])
def test_every_draw_is_box_muller_of_its_philox_words(count, key, stream):
    drawn = sampling_kernel.fill(np.empty(count, dtype=np.float32), key, stream)
    # float32 arithmetic (log, sqrt, sine and cosine by polynomials) against float64: within 1e-6.
    assert np.max(np.abs(drawn - reference(count, key, stream))) < 1e-6


def test_draws_are_standard_normal_and_streams_and_keys_are_apart():
    x = sampling_kernel.fill(np.empty(2_000_000, dtype=np.float32), 99, 1).astype(np.float64)
    n = len(x)
    assert abs(x.mean()) < 5 / n**0.5 and abs(x.var() - 1) < 5 * 2**0.5 / n**0.5
    assert stats.kstest(x[:500_000], "norm").pvalue > 1e-4
    assert abs(stats.kurtosis(x)) < 5 * (24 / n) ** 0.5  # the tails as a normal's
    # Pairs of one Box-Muller draw are uncorrelated (z0 and z1 of a block sit 16 apart).
    pairs = x[: n // 32 * 32].reshape(-1, 2, 16)
    assert abs(np.corrcoef(pairs[:, 0].ravel(), pairs[:, 1].ravel())[0, 1]) < 5 / (n / 2) ** 0.5
    m = 100_000
    same = sampling_kernel.fill(np.empty(m, dtype=np.float32), 99, 1)
    for other in (sampling_kernel.fill(np.empty(m, dtype=np.float32), 99, 2),
                  sampling_kernel.fill(np.empty(m, dtype=np.float32), 100, 1)):
        assert abs(np.corrcoef(same, other)[0, 1]) < 5 / m**0.5
    # A shorter fill is the start of a longer one, whatever its tail, and one from any start its middle.
    assert np.array_equal(sampling_kernel.fill(np.empty(45, dtype=np.float32), 99, 1), same[:45])
    assert np.array_equal(sampling_kernel.fill(np.empty(70, dtype=np.float32), 99, 1, start=13), same[13:83])


def test_keys_come_from_the_generator_and_bad_arrays_are_refused():
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert sampling_kernel.key_from(a) == sampling_kernel.key_from(b) != sampling_kernel.key_from(a)
    assert 0 <= sampling_kernel.key_from(a) < 2**64
    with pytest.raises(ValueError, match="float32"):
        sampling_kernel.fill(np.empty(8, dtype=np.float64), 1, 1)
    with pytest.raises(ValueError, match="contiguous"):
        sampling_kernel.fill(np.empty((8, 8), dtype=np.float32)[:, 0], 1, 1)
    kernel = step_kernel(n=3, m=1, plain=[0, 2], angles=[1], members=2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="x_next"):
        kernel.sample_next_states(np.zeros((2, 4, 6), np.float32), np.zeros((8, 3), np.float32),
                                  np.zeros((8, 4), np.float32), 1, 1)
    with pytest.raises(ValueError, match="divide"):
        kernel.sample_next_states(np.zeros((3, 4, 6), np.float32), np.zeros((12, 3), np.float32),
                                  np.zeros((12, 3), np.float32), 1, 1)
    with pytest.raises(ValueError, match="features"):
        kernel.write_features(np.zeros((5, 3), np.float32), np.zeros((5, 1), np.float32), np.zeros((5, 17), np.uint16))
    with pytest.raises(ValueError, match="at most 16"):
        sampling_kernel.StepKernel(17, 1, np.arange(17), np.array([], np.int64), np.zeros(1, np.int64),
                                   np.zeros(1, np.float32), np.zeros((1, 17)), np.zeros((1, 17)), np.zeros(17))
    with pytest.raises(ValueError, match="state indices"):
        step_kernel(n=3, m=1, plain=[0, 3], angles=[1], members=2, rng=np.random.default_rng(0))


def step_kernel(n: int, m: int, plain: list, angles: list, members: int, rng: np.random.Generator,
                relative: bool = False) -> sampling_kernel.StepKernel:
    """A StepKernel with random bounds: the members' log-variances between about -8 and 1."""
    ref = np.zeros(m, np.int64)
    rel = np.zeros(m, np.float32)
    if relative:
        ref[0], rel[0] = n - 1, 1.0
    lower = rng.uniform(-8, -4, (members, n)).astype(np.float32)
    upper = rng.uniform(-1, 1, (members, n)).astype(np.float32)
    return sampling_kernel.StepKernel(n, m, np.array(plain, np.int64), np.array(angles, np.int64), ref, rel, lower,
                                      upper, rng.uniform(-2, 1, n).astype(np.float32))


@pytest.mark.parametrize("n, m, plain, angles, relative", [
    (4, 1, [0, 2, 3], [1], False),   # the cart-pole's layout: two rows a vector
    (6, 2, [3, 4, 5], [0, 1, 2], True),  # wider rows, a relative action: one row a vector
    (3, 3, [0, 1, 2], [], False),    # no angles
])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_features_are_the_numba_passes_bit_for_bit(n, m, plain, angles, relative, dtype):
    rng = np.random.default_rng(1)
    kernel = step_kernel(n, m, plain, angles, members=2, rng=rng, relative=relative)
    S = 37  # odd: a last vector part full
    x = (4 * rng.standard_normal((S, n))).astype(np.float32)
    x[0, 0], x[1, -1], x[2, 0] = 1e8, np.nan, np.inf
    u = rng.standard_normal((S, m)).astype(np.float32)
    width = kernel.width
    ours = np.full((S, width + 1), 7, dtype=dtype)
    numba = np.zeros((S, width + 1), dtype=dtype)
    kernel.write_features(x, u, ours)
    sampling_step.write_features(x, u, *kernel._layout, numba)
    assert np.array_equal(ours.view(np.uint8), numba.view(np.uint8))  # and the padding column zeroed


@pytest.mark.parametrize("blocks, members, R, n", [(25, 5, 280, 4), (6, 3, 7, 3), (2, 2, 5, 12), (15, 5, 11, 16),
                                                   (1, 1, 9, 1)])
def test_next_states_are_the_numba_pass_on_the_same_draws_bit_for_bit(blocks, members, R, n):
    rng = np.random.default_rng(2)
    kernel = step_kernel(n, 1, [0], [], members, rng)
    out = (3 * rng.standard_normal((blocks, R, 2 * n))).astype(np.float32)
    out[0, 0, n], out[0, 1, n], out[0, 2, 0] = 200.0, -200.0, np.nan  # bounds' far ends, a NaN delta
    x = rng.standard_normal((blocks * R, n)).astype(np.float32)
    ours, numba = np.empty_like(x), np.empty_like(x)
    kernel.sample_next_states(out, x, ours, key=12345, stream=9)
    noise = sampling_kernel.fill(np.empty((blocks, R, n), dtype=np.float32), 12345, 9)
    lower, upper, scale = kernel._bounds
    q = blocks // members  # the numba pass takes each block's bounds
    sampling_step.sample_next_states(out, noise, np.tile(lower, (q, 1)), np.tile(upper, (q, 1)), scale, x, numba)
    assert np.array_equal(ours.view(np.uint32), numba.view(np.uint32))
    assert np.isnan(ours[2]).any() and np.isfinite(ours[3:]).all()


@pytest.mark.parametrize("B", [50, 60_000])  # row by row in cache, slot by slot past it (ROW_ORDER_BYTES)
def test_states_go_back_to_row_order(B):
    rng = np.random.default_rng(3)
    S, T, n = B + 4, 6, 3
    assert (T * S * n * 4 <= sampling_step.ROW_ORDER_BYTES) == (B == 50)
    perm = rng.permutation(B)
    order = np.concatenate([perm, perm[: S - B]])  # four padding slots repeat rows
    inverse = np.empty(B, np.int64)
    inverse[perm] = np.arange(B)
    slots = rng.standard_normal((T, S, n)).astype(np.float32)
    slots[:, B:] = np.nan  # a padding slot's states must not reach X
    X = np.zeros((B, T, n), np.float32)
    sampling_step.to_row_order(slots, order, inverse, X, 2, 5)
    assert np.array_equal(X[:, 2:5], slots[2:5, inverse].transpose(1, 0, 2))
    assert not X[:, :2].any() and not X[:, 5:].any()


def test_planning_rollouts_on_philox_sample_what_torch_draws_sample():
    from tests.test_sampling_step import pendulum_model

    dynamics = pendulum_model("float32", "tsinf").dynamics("tsinf", "float32")
    assert dynamics.draws == "philox"
    B, H = 3000, 5
    x0 = torch.tensor([[0.4, -0.3, 0.2]]).expand(B, -1)
    U = torch.full((B, H, 1), 0.3)
    philox_rollout = dynamics.rollout(x0, U, torch.Generator().manual_seed(0))
    assert torch.equal(philox_rollout, dynamics.rollout(x0, U, torch.Generator().manual_seed(0)))
    assert not torch.equal(philox_rollout, dynamics.rollout(x0, U, torch.Generator().manual_seed(1)))
    dynamics.draws = "torch"
    torch_rollout = dynamics.rollout(x0, U, torch.Generator().manual_seed(0))
    # Every row starts from the same state under the same actions: two samples of one distribution,
    # whose means and spreads agree within a few standard errors.
    spread = torch_rollout[:, 1:].std(dim=0)
    assert torch.all((philox_rollout[:, 1:].mean(dim=0) - torch_rollout[:, 1:].mean(dim=0)).abs() < 5 * spread / B**0.5)
    assert torch.all((philox_rollout[:, 1:].std(dim=0) / spread - 1).abs() < 5 / (2 * B) ** 0.5)


def test_member_by_member_rollouts_are_the_step_by_step_ones_bit_for_bit():
    from forethought.models.ensemble import network_kernel
    from tests.test_sampling_step import pendulum_model

    if not network_kernel.available():
        pytest.skip("needs AVX512-BF16")
    dynamics = pendulum_model("bfloat16", "tsinf").dynamics("tsinf", "bfloat16")
    assert dynamics.step_kernel is not None and dynamics.member_by_member
    rng = np.random.default_rng(5)
    x0 = torch.tensor(rng.uniform(-1, 1, (41, 3)), dtype=torch.float32)
    U = torch.tensor(rng.uniform(-1, 1, (41, 6, 1)), dtype=torch.float32)
    for chunk_rows in (dynamics.chunk_rows, 4):  # one chunk, and several a member with a short last block
        dynamics.chunk_rows = chunk_rows
        calls = []
        rollout = dynamics.step_kernel.rollout
        dynamics.step_kernel.rollout = lambda *a: calls.append(a) or rollout(*a)
        members = dynamics.rollout(x0, U, torch.Generator().manual_seed(2))
        dynamics.step_kernel.rollout = rollout
        assert len(calls) == 1
        dynamics.member_by_member = False
        steps = dynamics.rollout(x0, U, torch.Generator().manual_seed(2))
        dynamics.member_by_member = True
        assert torch.isfinite(members).all() and torch.equal(members, steps)
    # The rows dealt to the slots inside the call: an index out of range is refused, not followed.
    network, sk, q, C = dynamics.kernel, dynamics.step_kernel, 1, 9
    S, B, H = q * dynamics.k * C, 25, 6
    slots, actions = np.zeros((H + 1, S, 3), np.float32), np.zeros((H, S, 1), np.float32)
    X, Us = np.zeros((B, H + 1, 3), np.float32), np.zeros((B, H, 1), np.float32)
    order, inverse = np.empty(S, np.int64), np.empty(B, np.int64)
    sampling_step.deal_slots(np.arange(B), dynamics.k, C, q, order, inverse)
    sk.rollout(network, slots, actions, q, C, 1, (X, Us, order, inverse))
    assert np.isfinite(X).all() and X[:, 1:].any()
    for bad, match in ((order, "is not a row"), (inverse, "is not the slot")):
        kept = bad[3]
        bad[3] = 10**9
        with pytest.raises(ValueError, match=match):
            sk.rollout(network, slots, actions, q, C, 1, (X, Us, order, inverse))
        bad[3] = kept
