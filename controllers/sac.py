"""Soft actor-critic (Haarnoja et al. 2018), batched in torch: the learner that SAC alone and MBPO share.

    SACAgent.update(x (B, d_x), a (B, m), r (B,), x_next (B, d_x)) -> diagnostics    one gradient step
    SACAgent.sample(x (B, n), generator) -> (a (B, m), log pi (B,))                  actions in [-1, 1]
    SACAgent.mean_action(x (B, n)) -> (B, m)                                          tanh(mu(x))

- Twin Q-functions held as one batched network (weights (2, in, out), `torch.baddbmm`): both critics
  in one pass, no Python loop over them; target copies follow by Polyak averaging (tau).
- A tanh-squashed Gaussian policy: a tanh MLP gives the mean and log-std of u' ~ N(mu, sigma),
  a = tanh(u') in [-1, 1], mapped to the robot's bounds by `ActionScale`; log pi(a) by the change of
  variables (the softplus form of log(1 - tanh^2), stable for large |u'|).
- The entropy temperature alpha tuned automatically towards `target_entropy` (default -m).
- No terminal states: trials end by time limit, so every transition bootstraps (gamma < 1).

States enter every network as features: angles named in `angle_states` as (sin, cos), then
standardised by statistics frozen at the first update (the random first trials' spread). The
actor's mean head with that scaling is exactly an `MLPPolicy` (controllers/nn_policy.py) with a
tanh output, which is how a trained policy is saved and deployed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class SACConfig:
    """hidden: widths of the actor's (tanh) and the critics' (ReLU) hidden layers; batch_size: rows per
    gradient step; lr: Adam's step size for actor, critics and temperature; gamma: discount per step;
    tau: Polyak rate of the target critics; init_alpha: starting temperature; target_entropy: of the
    policy in nats (None: -m); reward_scale: rewards are -reward_scale * cost; seed: weights and draws."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    init_alpha: float = 0.1
    target_entropy: float | None = None
    reward_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.hidden = [int(h) for h in self.hidden]
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must list positive layer widths, got {self.hidden}")
        if self.batch_size < 1 or not self.lr > 0 or not self.init_alpha > 0 or not self.reward_scale > 0:
            raise ValueError("batch_size must be at least 1; lr, init_alpha and reward_scale positive")
        if not 0.0 < self.gamma < 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"gamma must be in (0, 1) and tau in (0, 1], got {self.gamma} and {self.tau}")


class ActionScale:
    """Between the robot's action bounds and the policy's [-1, 1]: u = mid + half * a."""

    def __init__(self, low, high):
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError("SAC needs finite action bounds with high > low on every action")
        self.mid, self.half = (high + low) / 2, (high - low) / 2

    def to_robot(self, a: np.ndarray) -> np.ndarray:
        return self.mid + self.half * a

    def to_policy(self, u: np.ndarray) -> np.ndarray:
        """Robot actions (B, m) -> [-1, 1], clipped just inside so that atanh stays finite."""
        return np.clip((np.asarray(u, dtype=np.float64) - self.mid) / self.half, -0.999, 0.999)


class StateFeatures:
    """(x, condition features) (B, n + f) -> (B, d): the other states, then angles as (sin, cos), then
    the condition's features: the order MLPPolicy feeds them (controllers/nn_policy.py)."""

    def __init__(self, n: int, angles=(), f: int = 0):
        self.n, self.f = n, f
        self.angles = np.asarray(sorted(int(i) for i in angles), dtype=np.int64)
        self.plain = np.asarray([i for i in range(n) if i not in set(self.angles.tolist())], dtype=np.int64)
        self.d = n + len(self.angles) + f
        self._angles_t, self._plain_t = torch.from_numpy(self.angles), torch.from_numpy(self.plain)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.angles):
            return x
        ang = x[..., self._angles_t]
        return torch.cat([x[..., self._plain_t], torch.sin(ang), torch.cos(ang), x[..., self.n :]], dim=-1)


class TwinQ(torch.nn.Module):
    """`copies` Q-networks side by side: (x (B, d), a (B, m)) -> Q (copies, B), ReLU hidden layers."""

    def __init__(self, d_in: int, hidden: list[int], copies: int = 2):
        super().__init__()
        widths = [d_in, *hidden, 1]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's initialisation, per copy
            self.weights.append(torch.nn.Parameter(torch.empty(copies, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(torch.nn.Parameter(torch.empty(copies, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, z: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """layers: (weight, bias) pairs to use instead of the parameters (the actor's loss passes
        `detached()`, so that no gradient reaches the critics from it)."""
        return twin_q(z, self.layers() if layers is None else layers)

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (weight, bias) parameter pairs, per layer."""
        return list(zip(self.weights, self.biases))

    def detached(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (weight, bias) pairs detached: they share the parameters' storage, so they follow
        every in-place optimiser step and can be made once."""
        return [(w.detach(), b.detach()) for w, b in zip(self.weights, self.biases)]


def twin_q(z: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """TwinQ's pass through (weight (copies, in, out), bias (copies, 1, out)) pairs: z (B, d) -> (copies, B)."""
    h = z.expand(layers[0][0].shape[0], *z.shape)
    for i, (w, b) in enumerate(layers):
        h = torch.baddbmm(b, h, w)
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h.squeeze(-1)


def tanh_mlp_pass(z: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """`tanh_mlp`'s forward from its (weight, bias) pairs: what the Sequential computes, without its
    per-module Python (hooks, container look-ups), which at SAC's sizes is a sizeable part of a pass."""
    h = z
    for i, (w, b) in enumerate(layers):
        h = torch.nn.functional.linear(h, w, b)
        if i < len(layers) - 1:
            h = torch.tanh(h)
    return h


def tanh_mlp(d_in: int, hidden: list[int], d_out: int) -> torch.nn.Sequential:
    """Linear, Tanh, ..., Linear: the layout of MLPPolicy's network (controllers/nn_policy.py)."""
    layers: list[torch.nn.Module] = []
    width = d_in
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.Tanh()]
        width = h
    layers.append(torch.nn.Linear(width, d_out))
    return torch.nn.Sequential(*layers)


class FusedAdam:
    """Adam over a fixed list of tensors, stepped with gradients handed in: torch's fused CPU kernel,
    the one `torch.optim.Adam(fused=True)` runs, without that class's per-step Python (grouping,
    state look-ups, zeroing .grad), which at SAC's sizes cost more than the kernel. The same
    arithmetic, bit for bit. One step counter serves every tensor (they always step together).

    State (`state()`, `load()`): the first and second moment per tensor and the step count."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = list(params), float(lr), betas, float(eps)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.step_count = torch.zeros((), dtype=torch.float32)  # what torch.optim.Adam(fused=True) keeps

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> None:
        self.step_count.add_(1)
        torch._fused_adam_(self.params, list(grads), self.exp_avg, self.exp_avg_sq, [], [self.step_count] * len(self.params),
                           amsgrad=False, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
                           eps=self.eps, maximize=False, grad_scale=None, found_inf=None)

    def state(self) -> dict:
        return {"exp_avg": [t.clone() for t in self.exp_avg], "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
                "step": self.step_count.clone()}

    def load(self, state: dict) -> None:
        for mine, saved in zip([*self.exp_avg, *self.exp_avg_sq], [*state["exp_avg"], *state["exp_avg_sq"]]):
            mine.copy_(saved)
        self.step_count.copy_(state["step"])


class SACAgent:
    """Actor, twin critics with targets and temperature, and their optimisers, float32 on the CPU.

    n: state size; m: action size; angles: indices of angle states (fed as sin, cos); f: condition
    features appended to each state (the policy's inputs are (B, n + f)).
    """

    def __init__(self, n: int, m: int, config: SACConfig | None = None, angles=(), f: int = 0):
        self.n, self.m, self.f = n, m, f
        self.config = cfg = config or SACConfig()
        torch.manual_seed(cfg.seed)
        self.features = StateFeatures(n, angles, f)
        d = self.features.d
        self.actor = tanh_mlp(d, cfg.hidden, 2 * m)
        self.critic = TwinQ(d + m, cfg.hidden)
        self.target = TwinQ(d + m, cfg.hidden)
        self.target.load_state_dict(self.critic.state_dict())
        self.target.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.init_alpha), requires_grad=True)
        self.target_entropy = -float(m) if cfg.target_entropy is None else float(cfg.target_entropy)
        # One Adam over actor, critics and temperature (their losses do not share parameters).
        self._params = [*self.actor.parameters(), *self.critic.parameters(), self.log_alpha]
        self.optimiser = FusedAdam(self._params, lr=cfg.lr)
        self._critic_params, self._target_params = list(self.critic.parameters()), list(self.target.parameters())
        # The networks' layers as (weight, bias) lists, made once: the passes read them directly.
        self._actor_layers = [(layer.weight, layer.bias) for layer in self.actor if isinstance(layer, torch.nn.Linear)]
        self._critic_layers, self._target_layers = self.critic.layers(), self.target.layers()
        self._critic_detached = self.critic.detached()
        self.in_mean = torch.zeros(d)
        self.in_std = torch.ones(d)
        self.scaled = False  # whether the input statistics are frozen yet
        self.updates = 0

    def set_scaling(self, x: np.ndarray) -> None:
        """Freeze the input standardisation at the spread of inputs x (N, n + f) (the first data).

        The (sin, cos) of angles stay as they are: already within [-1, 1], and a first trial that
        hangs near one angle would scale them by its tiny spread into huge inputs later. A spread
        below 0.1 counts as 0.1, for the same reason (a state the first trials hardly moved)."""
        f = self.features(torch.as_tensor(np.asarray(x), dtype=torch.float64))
        std = f.std(dim=0) if len(f) > 1 else torch.ones(f.shape[1], dtype=torch.float64)
        mean, std = f.mean(dim=0), std.clamp(min=0.1)
        trig = slice(len(self.features.plain), len(self.features.plain) + 2 * len(self.features.angles))
        mean[trig], std[trig] = 0.0, 1.0
        self.in_mean, self.in_std = mean.float(), std.float()
        self.scaled = True

    def _z(self, x: torch.Tensor) -> torch.Tensor:
        return (self.features(x) - self.in_mean) / self.in_std

    def _heads(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = tanh_mlp_pass(z, self._actor_layers)
        mu, log_std = out[..., : self.m], out[..., self.m :]
        return mu, torch.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX)

    def _sample_z(self, z: torch.Tensor, generator: torch.Generator | None = None, log_prob: bool = True):
        mu, log_std = self._heads(z)
        noise = torch.randn(mu.shape, generator=generator)
        pre = mu + torch.exp(log_std) * noise
        a = torch.tanh(pre)
        if not log_prob:
            return a, None
        # log N(pre; mu, std) - sum log(1 - tanh(pre)^2), the latter as 2 (log 2 - pre - softplus(-2 pre)).
        log_prob = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2.0) - pre - torch.nn.functional.softplus(-2 * pre))).sum(-1)
        return a, log_prob

    @torch.no_grad()
    def sample(self, x, generator: torch.Generator | None = None,
               log_prob: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Actions in [-1, 1] (B, m) drawn from the policy at inputs x (B, n + f), and their
        log-probability (B,) (None with log_prob=False: the same actions, for whoever needs only them)."""
        return self._sample_z(self._z(torch.as_tensor(x, dtype=torch.float32)), generator, log_prob)

    @torch.no_grad()
    def mean_action(self, x) -> torch.Tensor:
        """tanh of the mean (B, m): the deterministic action, what the saved policy outputs."""
        return torch.tanh(self._heads(self._z(torch.as_tensor(x, dtype=torch.float32)))[0])

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def update(self, x: torch.Tensor, a: torch.Tensor, r: torch.Tensor, x_next: torch.Tensor) -> dict[str, torch.Tensor]:
        """One gradient step of critics, actor and temperature on a batch: inputs x, x_next (B, n + f),
        actions a (B, m) in [-1, 1], rewards r (B,) (already scaled), float32. Returns the losses and
        the policy's entropy as 0-d tensors (reading them is left to whoever wants them)."""
        return self._step(self._z(torch.cat([x, x_next])), a, r)

    def update_many(self, x: torch.Tensor, a: torch.Tensor, r: torch.Tensor, x_next: torch.Tensor) -> dict[str, torch.Tensor]:
        """U gradient steps, one per batch: x, x_next (U, B, n + f), a (U, B, m), r (U, B). The same
        steps as U calls of `update`, bit for bit, with the inputs' features and standardisation
        made for all U batches at once. Returns the last step's losses."""
        z_all = self._z(torch.cat([x, x_next], dim=1))  # (U, 2B, d): each update's states, then next states
        last: dict[str, torch.Tensor] = {}
        for i in range(len(z_all)):
            last = self._step(z_all[i], a[i], r[i], diagnostics=i == len(z_all) - 1)
        return last

    def _step(self, z_all: torch.Tensor, a: torch.Tensor, r: torch.Tensor, diagnostics: bool = True) -> dict[str, torch.Tensor]:
        """One update from standardised inputs z_all (2B, d): the batch's states, then its next states.

        The three losses are taken at the same parameters and stepped together, as the original SAC
        (softlearning) runs its three training ops in one step: one backward pass and one fused Adam
        step instead of three, which is most of an update's time at these sizes. The actor's loss
        reads the critics through detached weights, so it moves the actor alone."""
        cfg = self.config
        B = len(a)
        a_all, logp_all = self._sample_z(z_all)  # one actor pass for both the policy's and the target's actions
        z, z_next, a_pi, logp = z_all[:B], z_all[B:], a_all[:B], logp_all[:B]
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            q_next = twin_q(torch.cat([z_next, a_all[B:]], dim=-1), self._target_layers).min(dim=0).values
            y = r + cfg.gamma * (q_next - alpha * logp_all[B:])
        q = twin_q(torch.cat([z, a], dim=-1), self._critic_layers)
        critic_loss = 0.5 * ((q - y) ** 2).mean(dim=1).sum()
        q_pi = twin_q(torch.cat([z, a_pi], dim=-1), self._critic_detached).min(dim=0).values
        actor_loss = (alpha * logp - q_pi).mean()
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy).mean())
        # The gradients straight to the optimiser (no .grad to zero and fill): the same numbers.
        self.optimiser.step(torch.autograd.grad(critic_loss + actor_loss + alpha_loss, self._params))
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, cfg.tau)
        self.updates += 1
        if not diagnostics:
            return {}
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), "entropy": -logp.detach().mean()}

    def imitate(self, x: torch.Tensor, a: torch.Tensor, steps: int, generator: torch.Generator) -> dict[str, float]:
        """Fit the actor's mean tanh(mu(x)) to actions a (N, m) in [-1, 1] at inputs x (N, n + f) by
        `steps` Adam steps on batches of batch_size (mean squared error; the log-std head is left
        as it is): the actor starts as the policy that took them. Returns the loss before and after."""
        z = self._z(torch.as_tensor(x, dtype=torch.float32))
        a = torch.as_tensor(a, dtype=torch.float32)
        optimiser = torch.optim.Adam(self.actor.parameters(), lr=self.config.lr)

        def loss(rows) -> torch.Tensor:
            return ((torch.tanh(self._heads(z[rows])[0]) - a[rows]) ** 2).mean()

        with torch.no_grad():
            start = float(loss(slice(None)))
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            loss(torch.randint(len(z), (self.config.batch_size,), generator=generator)).backward()
            optimiser.step()
        with torch.no_grad():
            end = float(loss(slice(None)))
        return {"init_loss_start": start, "init_loss_end": end}

    def state(self) -> dict:
        """What continues training where it stopped (plain data and tensors, for a run's checkpoint):
        the networks, the temperature, the optimiser's moments and step, the input scaling."""
        return {"actor": dict(self.actor.state_dict()), "critic": dict(self.critic.state_dict()),
                "target": dict(self.target.state_dict()), "log_alpha": self.log_alpha.detach().clone(),
                "optimiser": self.optimiser.state(), "in_mean": self.in_mean.clone(), "in_std": self.in_std.clone(),
                "scaled": self.scaled, "updates": self.updates}

    def load(self, state: dict) -> None:
        """Put back what `state()` gave, on an agent built with the same sizes and settings (in place:
        the optimiser and the cached layer lists keep pointing at the same tensors)."""
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.optimiser.load(state["optimiser"])
        self.in_mean, self.in_std = state["in_mean"].clone(), state["in_std"].clone()
        self.scaled, self.updates = bool(state["scaled"]), int(state["updates"])

    def export(self, scale: ActionScale, names: dict | None = None):
        """The actor's mean as an MLPPolicy (float64): u = mid + half * tanh(mean head), the same
        action as `scale.to_robot(mean_action(x))` (controllers/nn_policy.py)."""
        from forethought.controllers.nn_policy import MLPPolicy, MLPPolicyConfig

        policy = MLPPolicy(self.n, self.m, self.f, MLPPolicyConfig(hidden=list(self.config.hidden), seed=self.config.seed),
                           names, angles=self.features.angles.tolist(), squash=True)
        state = {k: v.detach().double().clone() for k, v in self.actor.state_dict().items()}
        last = str(len(self.actor) - 1)
        state[f"{last}.weight"] = state[f"{last}.weight"][: self.m]
        state[f"{last}.bias"] = state[f"{last}.bias"][: self.m]
        policy.net.load_state_dict(state)
        policy.in_mean, policy.in_std = self.in_mean.double().numpy(), self.in_std.double().numpy()
        policy.out_mean, policy.out_std = scale.mid.copy(), scale.half.copy()
        policy.trained = True
        return policy


class ReplayBuffer:
    """The last `capacity` transitions (x (n + f), a (m) in [-1, 1], r, x_next (n + f)), float32
    tensors in a ring; `sample` draws rows uniformly with a torch generator."""

    def __init__(self, capacity: int, d_x: int, m: int):
        if capacity < 1:
            raise ValueError(f"a replay buffer holds at least 1 transition, got capacity {capacity}")
        self.capacity, self.size, self._next = capacity, 0, 0
        self.x = torch.zeros(capacity, d_x)
        self.a = torch.zeros(capacity, m)
        self.r = torch.zeros(capacity)
        self.x_next = torch.zeros(capacity, d_x)

    def add(self, x, a, r, x_next) -> None:
        """Append rows x (B, n + f), a (B, m), r (B,), x_next (B, n + f); the oldest go when full."""
        x, a, r, x_next = (torch.as_tensor(v, dtype=torch.float32) for v in (x, a, r, x_next))
        B = len(x)
        if B > self.capacity:  # only the newest fit
            x, a, r, x_next = x[-self.capacity :], a[-self.capacity :], r[-self.capacity :], x_next[-self.capacity :]
            B = self.capacity
        rows = (self._next + torch.arange(B)) % self.capacity
        self.x[rows], self.a[rows], self.r[rows], self.x_next[rows] = x, a, r, x_next
        self._next = (self._next + B) % self.capacity
        self.size = min(self.size + B, self.capacity)

    def state(self) -> dict:
        """The filled rows and the ring's position (a checkpoint's copy: the empty rows are not kept)."""
        return {"capacity": self.capacity, "size": self.size, "next": self._next,
                **{k: getattr(self, k)[: self.size].clone() for k in ("x", "a", "r", "x_next")}}

    @classmethod
    def from_state(cls, state: dict) -> "ReplayBuffer":
        """The buffer `state()` described, rows in the same places."""
        buffer = cls(int(state["capacity"]), state["x"].shape[1], state["a"].shape[1])
        size = int(state["size"])
        for k in ("x", "a", "r", "x_next"):
            getattr(buffer, k)[:size] = state[k]
        buffer.size, buffer._next = size, int(state["next"])
        return buffer

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` row indices drawn uniformly (with replacement) from the filled rows."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        return torch.randint(self.size, (count,), generator=generator)

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows (any shape of indices, e.g. (U, B)) of x, a, r, x_next."""
        return self.x[rows], self.a[rows], self.r[rows], self.x_next[rows]

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """`count` rows drawn uniformly (with replacement): x, a, r, x_next."""
        return self.take(self.draw(count, generator))
