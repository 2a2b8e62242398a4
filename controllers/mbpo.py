"""SAC alone (`type: sac`) and MBPO (`type: mbpo`, Janner et al. 2019) in the experiment loop.

Both learn per environment step, and both do it in the loop's `update` after each trial: the trial's
transitions go to the replay buffer, then `updates_per_step` x (the trial's steps) gradient steps
follow, the same count an agent updating inside every step would take (the policy of a trial is
fixed while it runs, as it is between the model refits of MBPO's own code). SAC alone samples its
batches from the real transitions. MBPO, after the loop has refitted the ensemble on every trial
so far (every N = horizon x samples real steps), first branches `rollout_batch` x (the trial's
steps) rollouts of k steps from real states drawn from the replay buffer, each step through a
member drawn at random for each row (the ensemble's TS1 kernel, models/ensemble/planning.py) with
actions from the current policy, rewarded by the task's cost; then its batches take `real_ratio`
of their rows from the real transitions and the rest from the model buffer. k follows Janner's
schedule [a, b, k_a, k_b]: k_a up to trial a, k_b from trial b, linear between. The model buffer
holds `retain_trials` trials' worth of rollouts at the current k.

Rewards are -reward_scale x the task's cost: the running cost l(x_t, u_t) of `task.cost`'s terms
(controllers/costs), or a dm_control task's own reward r(x_{t+1}, u_t) with `task.cost: reward`
(controllers/reward_cost.py). Real transitions take the cost their trial logged, which is the same.

A trial acts with: uniform random actions for the first `random_trials` trials; the policy's mean
on every `evaluate_every`-th trial (0: never); else actions drawn from the policy (exploration).
All of them are experience. The trained policy is saved as RUN/models/nn_policy.pt, a network
policy (controllers/nn_policy.py) that `deploy --policy RUN` and `controller: {type: nn_policy}` run.

MB-MF fine-tuning (Nagabandi et al. 2018): `init_policy: PATH` names a saved network policy (a
distilled planner's RUN/models/nn_policy.pt); it acts in the first `random_trials` trials instead
of uniform random actions, and the actor's mean is fitted to its actions at those trials' states
(`init_steps` Adam steps) before SAC's first update, which then goes on from there.

    controller:
      type: mbpo
      angle_states: [pole]        # states fed to the networks as (sin, cos)
      features: []                # condition keys the policy sees (e.g. [target] for several targets)
      hidden: [64, 64]            # ...and the other SAC settings (controllers/sac.py: SACConfig)
      updates_per_step: 20        # G
      rollout_batch: 50           # branched rollouts started per real step
      rollout_schedule: [1, 10, 1, 5]
      retain_trials: 5
      real_ratio: 0.05
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from forethought.controllers.nn_policy import POLICY_FILE, MLPPolicy, condition_features
from forethought.controllers.sac import ActionScale, ReplayBuffer, SACAgent, SACConfig
from forethought.robots.config import ConfigError, from_mapping
from forethought.robots.trial import Trial

# Updates whose batches are drawn and gathered at once (bounds their memory: CHUNK x batch rows).
CHUNK = 200


@dataclass
class SACParams:
    """The loop's side of SAC: updates_per_step (G); random_trials: trials of uniform random actions
    first; evaluate_every: every such trial acts with the policy's mean (0: never); angle_states:
    state names fed as (sin, cos); features: condition keys appended to the policy's inputs;
    buffer_size: real transitions kept; init_policy: a saved network policy (nn_policy.pt, e.g. a
    distilled planner's) that acts in the first random_trials trials instead of uniform random
    actions and that the actor's mean is fitted to on their states before SAC's first update
    (MB-MF fine-tuning); init_steps: gradient steps of that fit."""

    updates_per_step: int = 1
    random_trials: int = 1
    evaluate_every: int = 0
    angle_states: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    buffer_size: int = 1_000_000
    init_policy: str | None = None
    init_steps: int = 1000

    def __post_init__(self) -> None:
        if self.updates_per_step < 0 or self.random_trials < 1 or self.evaluate_every < 0 or self.buffer_size < 1:
            raise ValueError("updates_per_step and evaluate_every must be non-negative, random_trials and "
                             "buffer_size at least 1")
        if self.init_steps < 0:
            raise ValueError(f"init_steps must be non-negative, got {self.init_steps}")


@dataclass
class MBPOParams(SACParams):
    """MBPO's settings on top of SAC's (module docstring)."""

    updates_per_step: int = 20
    rollout_batch: int = 50
    rollout_schedule: list[float] = field(default_factory=lambda: [1, 10, 1, 5])
    retain_trials: int = 5
    real_ratio: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rollout_batch < 1 or self.retain_trials < 1:
            raise ValueError("rollout_batch and retain_trials must be at least 1")
        if len(self.rollout_schedule) != 4 or self.rollout_schedule[2] < 1 or self.rollout_schedule[3] < 1:
            raise ValueError(f"rollout_schedule: expected [trial_a, trial_b, k_a, k_b] with k at least 1, "
                             f"got {self.rollout_schedule}")
        if not 0.0 <= self.real_ratio <= 1.0:
            raise ValueError(f"real_ratio must be in [0, 1], got {self.real_ratio}")

    def rollout_length(self, trials: int) -> int:
        """k after `trials` real trials (Janner et al.'s linear schedule)."""
        a, b, k_a, k_b = self.rollout_schedule
        share = 0.0 if b <= a else min(max((trials - a) / (b - a), 0.0), 1.0)
        return max(1, int(round(k_a + share * (k_b - k_a))))


def split_params(params: dict, kind: type, where: str = "") -> tuple:
    """A controller section -> (its loop settings `kind`, SACConfig); unknown keys named with both sets."""
    own = {f.name for f in dataclasses.fields(kind)}
    agent = {f.name for f in dataclasses.fields(SACConfig)}
    unknown = sorted(set(params) - own - agent)
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' (known: {', '.join(sorted(own | agent))})")
    return (from_mapping(kind, {k: v for k, v in params.items() if k in own}, "controller:"),
            from_mapping(SACConfig, {k: v for k, v in params.items() if k in agent}, "controller:"))


class SACPolicy:
    """One condition's Policy: `mode` "random" (uniform in the bounds), "init" (the initial network
    policy's mean, clipped to the bounds), "sample" (drawn from the agent's policy) or "mean"; draws
    from a generator seeded at every reset by (seed, resets so far)."""

    def __init__(self, agent: SACAgent, scale: ActionScale, features: np.ndarray, mode: str, seed: int,
                 init: MLPPolicy | None = None):
        self.agent, self.scale, self.features, self.mode, self.seed, self.init = agent, scale, features, mode, seed, init
        self._resets = 0
        self.reset()

    def reset(self) -> None:
        self._resets += 1
        self._rng = np.random.default_rng([self.seed, self._resets])
        self._generator = torch.Generator().manual_seed(int(self._rng.integers(2**62)))

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        if self.mode == "random":
            return self.scale.to_robot(self._rng.uniform(-1.0, 1.0, len(self.scale.mid)))
        if self.mode == "init":
            u = self.init.mean(np.asarray(x, dtype=np.float64), self.features if self.init.f else None)
            return np.clip(u, self.scale.mid - self.scale.half, self.scale.mid + self.scale.half)
        z = np.concatenate([np.asarray(x, dtype=np.float64), self.features])[None]
        a = self.agent.sample(z, self._generator)[0] if self.mode == "sample" else self.agent.mean_action(z)
        return self.scale.to_robot(a[0].double().numpy())


class SACController:
    """SAC alone: learns from the real transitions only (module docstring)."""

    def __init__(self, params: SACParams, config: SACConfig, spec, task, step_cost=None):
        self.params, self.spec, self.task = params, spec, task
        unknown = [a for a in params.angle_states if a not in spec.state_names]
        if unknown:
            raise ConfigError(f"angle_states: {unknown[0]!r} is not a state of the robot ({', '.join(spec.state_names)})")
        self.features = [condition_features(c, params.features) for c in task.conditions]
        f = len(self.features[0])
        angles = [spec.state_names.index(a) for a in params.angle_states]
        self.scale = ActionScale(spec.action_low, spec.action_high)
        self.agent = SACAgent(spec.n, spec.m, dataclasses.replace(config, seed=config.seed + task.seed), angles, f)
        self.real = ReplayBuffer(params.buffer_size, spec.n + f, spec.m)
        self.generator = torch.Generator().manual_seed(task.seed)
        self.step_cost = step_cost
        self.init = None if params.init_policy is None else load_init_policy(params.init_policy, spec, f, angles)
        self.trials_seen = 0
        self._runs = 0
        self._init_fit: dict[str, float] = {}  # the initial policy's fit, for the update's diagnostics

    def mode(self) -> str:
        if self.trials_seen < self.params.random_trials:
            return "random" if self.init is None else "init"
        every = self.params.evaluate_every
        return "mean" if every and (self.trials_seen + 1) % every == 0 else "sample"

    def policy(self, condition: int) -> SACPolicy:
        self._runs += 1
        return SACPolicy(self.agent, self.scale, self.features[condition], self.mode(),
                         self.task.seed * 1_000_003 + 1000 * self._runs + condition, self.init)

    def add_trials(self, trials: Sequence[Sequence[Trial]]) -> int:
        """Put the trials' transitions in the replay buffer; returns how many steps they had."""
        steps = 0
        for c, group in enumerate(trials):
            for trial in group:
                T = len(trial.actions)
                f = np.broadcast_to(self.features[c], (T + 1, len(self.features[c])))
                z = np.concatenate([trial.states, f], axis=1)
                r = -self.agent.config.reward_scale * trial.costs[:T]
                keep = np.isfinite(z[:-1]).all(1) & np.isfinite(z[1:]).all(1) & np.isfinite(r) & np.isfinite(trial.actions).all(1)
                self.real.add(z[:-1][keep], self.scale.to_policy(trial.actions[keep]), r[keep], z[1:][keep])
                steps += T
        if not self.agent.scaled and self.real.size:
            self.agent.set_scaling(self.real.x[: self.real.size].double().numpy())
            if self.init is not None:  # the first trials acted with it: its actions are the buffer's
                x, a = self.real.x[: self.real.size], self.real.a[: self.real.size]
                self._init_fit = self.agent.imitate(x, a, self.params.init_steps, self.generator)
        return steps

    def batches(self, count: int) -> tuple[torch.Tensor, ...]:
        """`count` batches from the real transitions, stacked: x, x_next (count, B, n + f), a (count,
        B, m), r (count, B). One draw of count x B rows: the rows `count` draws of B in turn give."""
        rows = self.real.draw(count * self.agent.config.batch_size, self.generator)
        return self.real.take(rows.view(count, -1))

    def gradient_steps(self, count: int) -> dict[str, float]:
        """`count` SAC updates on batches from `batches()`; the last one's losses and the time they took.
        The batches are drawn and gathered CHUNK at a time (their features made at once), the updates
        then run in turn: the same steps as drawing each batch just before its update."""
        started = time.perf_counter()
        last: dict = {}
        for first in range(0, count, CHUNK):
            last = self.agent.update_many(*self.batches(min(CHUNK, count - first)))
        return {**{k: float(v) for k, v in last.items()}, "policy_updates": float(count),
                "policy_update_s": time.perf_counter() - started}

    def update(self, trials: Sequence[Sequence[Trial]]) -> dict[str, float]:
        steps = self.add_trials(trials)
        self.trials_seen += sum(len(group) for group in trials)
        diagnostics = self.gradient_steps(self.params.updates_per_step * steps)
        diagnostics.update(alpha=self.agent.alpha, real_transitions=float(self.real.size), **self._init_fit)
        self._init_fit = {}
        return diagnostics

    def checkpoint_state(self) -> dict:
        """What a run's checkpoint keeps (scripts/checkpoint.py), so that a resumed run goes on as the
        uninterrupted one: the agent (networks, temperature, optimiser, scaling), the replay buffer,
        the batch generator, the trials seen and the policies handed out (their seeds)."""
        return {"agent": self.agent.state(), "real": self.real.state(), "generator": self.generator,
                "trials_seen": self.trials_seen, "runs": self._runs}

    def restore_checkpoint(self, state: dict) -> None:
        self.agent.load(state["agent"])
        real = ReplayBuffer.from_state(state["real"])
        if real.capacity != self.real.capacity:
            raise ConfigError(f"checkpoint: its replay buffer holds {real.capacity} transitions, "
                              f"buffer_size is {self.real.capacity}")
        self.real, self.generator = real, state["generator"]
        self.trials_seen, self._runs = int(state["trials_seen"]), int(state["runs"])

    def save(self, folder: str | Path) -> list[Path]:
        """Write the policy's mean to folder/nn_policy.pt (`deploy --policy`, `controller: {type: nn_policy}`)."""
        if not self.agent.scaled:
            return []
        names = {"states": list(self.spec.state_names), "actions": list(self.spec.action_names),
                 "features": list(self.params.features), "trained_by": type(self).__name__}
        path = Path(folder) / POLICY_FILE
        self.agent.export(self.scale, names).save(path)
        return [path]


def load_init_policy(path: str, spec, f: int, angles: list[int]) -> MLPPolicy:
    """`init_policy`: the saved network policy, checked against the robot, the features and the
    angle states (ConfigError naming the key)."""
    if not Path(path).is_file():
        raise ConfigError(f"init_policy: no such file {path}")
    mlp = MLPPolicy.load(path)
    if (mlp.n, mlp.m, mlp.f) != (spec.n, spec.m, f):
        raise ConfigError(f"init_policy: {path} takes {mlp.n} states and {mlp.f} features to {mlp.m} actions; "
                          f"here there are {spec.n} states, {f} features (`features`) and {spec.m} actions")
    return mlp


class StepCost:
    """The cost of transitions (x, u, x_next) (B,) float64 in condition c: the running cost of the
    task's terms at (x, u), or minus a dm_control task's reward at (x_next, u)."""

    def __init__(self, robot, task):
        from forethought.controllers.costs import build_cost

        if task.cost == "reward":
            from forethought.controllers.reward_cost import reward_cost

            reward = reward_cost(robot)
            self._costs = [lambda x, u, x_next: reward.value(x_next, u)] * len(task.conditions)
        elif isinstance(task.cost, dict) and task.cost:
            costs = [build_cost(task.cost, robot.spec, task.scene, c) for c in task.conditions]
            self._costs = [lambda x, u, x_next, cost=cost: cost.value(x, u) for cost in costs]
        else:
            raise ConfigError("needs the task's `cost` (its terms, or `reward` on a dm_control task): it is the reward")

    def __call__(self, condition: int, x: np.ndarray, u: np.ndarray, x_next: np.ndarray) -> np.ndarray:
        return np.asarray(self._costs[condition](x, u, x_next), dtype=np.float64)


class MBPOController(SACController):
    """MBPO: SAC on branched rollouts of the ensemble from real states (module docstring)."""

    def __init__(self, params: MBPOParams, config: SACConfig, spec, task, model, step_cost: StepCost):
        super().__init__(params, config, spec, task, step_cost)
        self.model = model
        self.model_buffer: ReplayBuffer | None = None
        self._starts: list[list[np.ndarray]] = [[] for _ in task.conditions]  # real states per condition

    def checkpoint_state(self) -> dict:
        """SAC's state, the model buffer and the real states rollouts start from (the ensemble is the
        run's model, which the checkpoint keeps on its own)."""
        return {**super().checkpoint_state(), "starts": self._starts,
                "model_buffer": None if self.model_buffer is None else self.model_buffer.state()}

    def restore_checkpoint(self, state: dict) -> None:
        super().restore_checkpoint(state)
        self._starts = [list(states) for states in state["starts"]]
        saved = state["model_buffer"]
        self.model_buffer = None if saved is None else ReplayBuffer.from_state(saved)

    def _model_capacity(self, steps: int, k: int) -> int:
        return max(1, self.params.rollout_batch * steps * k * self.params.retain_trials)

    def _resize_model_buffer(self, capacity: int) -> None:
        """A model buffer of `capacity` rows keeping the newest rows of the old one (Janner's resize
        when k changes)."""
        old = self.model_buffer
        if old is not None and old.capacity == capacity:
            return
        self.model_buffer = ReplayBuffer(capacity, self.real.x.shape[1], self.spec.m)
        if old is not None and old.size:
            order = (old._next - old.size + torch.arange(old.size)) % old.capacity  # oldest first
            self.model_buffer.add(old.x[order], old.a[order], old.r[order], old.x_next[order])

    @torch.no_grad()
    def branch(self, count: int, k: int) -> int:
        """`count` k-step rollouts of the policy through the ensemble from real states into the model
        buffer, each condition's share from its own states; returns the transitions added."""
        kernel = self.model.dynamics("ts1", "float32")
        sizes = np.array([sum(len(s) for s in states) for states in self._starts], dtype=np.float64)
        mid, half = (torch.as_tensor(v, dtype=torch.float32) for v in (self.scale.mid, self.scale.half))
        added = 0
        for c, states in enumerate(self._starts):
            share = int(round(count * sizes[c] / sizes.sum()))
            if not share:
                continue
            pool = np.concatenate(states)
            rows = torch.randint(len(pool), (share,), generator=self.generator).numpy()
            x = torch.as_tensor(pool[rows], dtype=torch.float32)
            f = torch.as_tensor(self.features[c], dtype=torch.float32).expand(share, -1)
            for _ in range(k):
                z = torch.cat([x, f[: len(x)]], dim=1)
                a, _ = self.agent.sample(z, self.generator, log_prob=False)
                u = mid + half * a
                x_next = kernel.rollout(x, u[:, None], self.generator)[:, 1]
                cost = self.step_cost(c, x.double().numpy(), u.double().numpy(), x_next.double().numpy())
                keep = torch.as_tensor(np.isfinite(cost)) & torch.isfinite(x_next).all(dim=1)
                r = -self.agent.config.reward_scale * torch.as_tensor(cost, dtype=torch.float32)
                self.model_buffer.add(z[keep], a[keep], r[keep], torch.cat([x_next, f[: len(x)]], dim=1)[keep])
                added += int(keep.sum())
                x = x_next[keep]
                if not len(x):
                    break
        return added

    def batches(self, count: int) -> tuple[torch.Tensor, ...]:
        """`count` batches of `real_ratio` real rows and the rest imagined, stacked as SACController's.
        The rows are drawn batch by batch, real then imagined (the generator's order of one batch at
        a time), and gathered once per buffer."""
        size = self.agent.config.batch_size
        n_real = int(round(size * self.params.real_ratio))
        if self.model_buffer is None or self.model_buffer.size == 0:
            n_real = size
        draws = [(self.real.draw(n_real, self.generator) if n_real else None,
                  self.model_buffer.draw(size - n_real, self.generator) if n_real < size else None) for _ in range(count)]
        parts = []
        if n_real:
            parts.append(self.real.take(torch.stack([real for real, _ in draws])))
        if n_real < size:
            parts.append(self.model_buffer.take(torch.stack([imagined for _, imagined in draws])))
        return tuple(torch.cat(columns, dim=1) for columns in zip(*parts))

    def update(self, trials: Sequence[Sequence[Trial]]) -> dict[str, float]:
        for c, group in enumerate(trials):
            self._starts[c].extend(np.asarray(t.states[:-1], dtype=np.float64) for t in group)
        steps = self.add_trials(trials)
        self.trials_seen += sum(len(group) for group in trials)
        if not getattr(self.model, "fitted", False):
            return {}
        k = self.params.rollout_length(self.trials_seen)
        self._resize_model_buffer(self._model_capacity(steps, k))
        started = time.perf_counter()
        added = self.branch(self.params.rollout_batch * steps, k)
        rollout_s = time.perf_counter() - started
        diagnostics = self.gradient_steps(self.params.updates_per_step * steps)
        diagnostics.update(
            alpha=self.agent.alpha, rollout_length=float(k), rollout_s=rollout_s, imagined_transitions=float(added),
            real_transitions=float(self.real.size),
            step_ms=1000.0 * (rollout_s + diagnostics["policy_update_s"]) / max(steps, 1), **self._init_fit,
        )
        self._init_fit = {}
        return diagnostics


def build_sac(params: dict, robot, task, model=None) -> SACController:
    """Controller `type: sac` (module docstring; SAC's settings in controllers/sac.py)."""
    loop, config = split_params(params, SACParams)
    if task.cost != "reward" and not (isinstance(task.cost, dict) and task.cost):
        raise ConfigError("sac needs the task's `cost` (its terms, or `reward` on a dm_control task): it is the reward")
    return SACController(loop, config, robot.spec, task)


def build_mbpo(params: dict, robot, task, model) -> MBPOController:
    """Controller `type: mbpo` on the ensemble (module docstring)."""
    from forethought.controllers.mpc import check_model_states

    check_model_states(model, robot.spec)
    loop, config = split_params(params, MBPOParams)
    return MBPOController(loop, config, robot.spec, task, model, StepCost(robot, task))
