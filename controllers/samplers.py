"""Sampling planners for MPC: CEM, iCEM, MPPI and random shooting on any batched dynamics.

Each planner meets the receding-horizon planner protocol, `plan(x0, U_init, t) -> Plan`, and
evaluates its whole population times `particles` in one batched rollout per iteration. A
candidate's cost is the mean over its particles; a candidate whose predicted states or cost are
NaN or infinite ranks worst and can never be chosen (if every candidate is, the plan falls back
to U_init with cost inf). Samples are clipped to the action bounds; U_init (the previous plan
shifted by one step) warm-starts the search; `time_budget_s` stops iterating once another
iteration would overrun the budget.

The model is anything offering `BatchedDynamics.rollout`: the ensemble's trajectory sampling
(`EnsembleModel.dynamics`), MuJoCo itself (`SimulatorModel.rollout`: predictive sampling on the
true dynamics), a batched step function (`StepDynamics`), or any DynamicsModel with `predict`
(`as_dynamics` steps its mean).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from numba import njit

from forethought.controllers.mpc import Plan
from forethought.models.dynamics_model import MissingCapability

PlanningCost = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""cost(X (B, H+1, n), U (B, H, m)) -> (B,) total cost of each trajectory, float32 torch."""


@runtime_checkable
class BatchedDynamics(Protocol):
    """Rolls batches of action sequences forward: what sampling planners need from a model."""

    device: torch.device

    def rollout(self, x0: torch.Tensor, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """States (B, H+1, n) from x0 (B, n) under U (B, H, m); random draws only from `generator`."""


class StepDynamics:
    """BatchedDynamics from a batched one-step function step(x (B, n), u (B, m)) -> x_next (B, n).

    The function may take and return torch tensors or numpy arrays (numpy ones get float64 inputs,
    as MuJoCo and the other known models want).
    """

    def __init__(self, step: Callable, numpy: bool = False, device: str | torch.device = "cpu"):
        self.step, self.numpy, self.device = step, numpy, torch.device(device)

    @torch.no_grad()
    def rollout(self, x0: torch.Tensor, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        B, H, _ = U.shape
        X = torch.empty(B, H + 1, x0.shape[-1], device=self.device)
        X[:, 0] = x = x0
        for t in range(H):
            if self.numpy:
                nxt = self.step(x.double().cpu().numpy(), U[:, t].double().cpu().numpy())
                x = torch.as_tensor(np.asarray(nxt, dtype=np.float32), device=self.device)
            else:
                x = self.step(x, U[:, t]).float()
            X[:, t + 1] = x
        return X


def as_dynamics(model) -> BatchedDynamics:
    """The BatchedDynamics for a model: itself when it has `rollout`, else its `predict` mean stepped."""
    if isinstance(model, BatchedDynamics):
        return model
    if callable(getattr(model, "predict", None)):
        return StepDynamics(lambda x, u: model.predict(x, u)[0], numpy=True)
    raise MissingCapability(
        "sampling MPC needs a model with `rollout` (BatchedDynamics) or `predict`, "
        f"and {type(model).__name__} has neither"
    )


def colored_noise(beta: float, shape: tuple[int, int, int], generator: torch.Generator, device) -> torch.Tensor:
    """Unit-variance Gaussian noise (N, m, H) whose power spectrum along H falls off as 1/f^beta.

    beta 0 is white noise; larger beta gives smoother action sequences (iCEM). Timmer and Koenig's
    method: random Fourier coefficients scaled by f^(-beta/2) (f at least 1/H), then an inverse real
    FFT, divided by the exact standard deviation that this gives.
    """
    N, m, H = shape
    if beta == 0.0 or H < 2:
        return torch.randn(N, m, H, generator=generator, device=device)
    real_scale, imag_scale = _spectrum_scales(float(beta), H, torch.device(device))
    F = real_scale.shape[-1]
    real = torch.randn(N, m, F, generator=generator, device=device) * real_scale
    imag = torch.randn(N, m, F, generator=generator, device=device) * imag_scale
    return torch.fft.irfft(torch.complex(real, imag), n=H)


@functools.lru_cache(maxsize=32)
def _spectrum_scales(beta: float, H: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors (F,) of `colored_noise`'s real and imaginary Fourier coefficients: f^(-beta/2)
    over the output's standard deviation. The DC term (and the Nyquist term for even H) is real: its
    variance goes into the real part (sqrt 2 times), the imaginary part's factor is 0. Kept per
    (beta, H, device): they are a dozen small operations, a third of an iCEM iteration's own time."""
    f = torch.fft.rfftfreq(H, device=device, dtype=torch.float64).clamp(min=1.0 / H)
    scale = f ** (-beta / 2.0)
    real_terms = [0] + ([len(f) - 1] if H % 2 == 0 else [])
    # Variance of each output sample: a real term adds 2 s^2 / H^2, a complex pair 4 s^2 / H^2.
    weight = torch.full_like(scale, 4.0)
    weight[real_terms] = 2.0
    sigma = torch.sqrt(torch.sum(weight * scale**2)) / H
    real, imag = scale / sigma, scale / sigma
    real[real_terms] *= math.sqrt(2.0)
    imag[real_terms] = 0.0
    return real.float(), imag.float()


@dataclass
class SamplerConfig:
    """Settings shared by the sampling planners.

    horizon: steps planned ahead; population: candidates per iteration; particles: rollouts per
    candidate (trajectory-sampling particles; 1 for a deterministic model); iterations: refinement
    rounds (CEM, iCEM, MPPI); elites: candidates kept to refit the sampling distribution;
    init_std: initial sampling std as a fraction of the half-range of the action bounds;
    momentum: weight of the previous mean and std in each update (CEM, iCEM);
    time_budget_s: stop iterating when another iteration would pass this many seconds (None: off);
    seed: of the planner's torch.Generator.
    """

    horizon: int = 15
    population: int = 350
    particles: int = 20
    iterations: int = 5
    elites: int = 35
    init_std: float = 0.5
    momentum: float = 0.1
    time_budget_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("horizon", "population", "particles", "iterations", "elites"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.elites > self.population:
            raise ValueError(f"elites ({self.elites}) must not exceed population ({self.population})")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s}")


@dataclass
class ICEMConfig(SamplerConfig):
    """iCEM (Pinneri et al. 2020) defaults: a smaller budget than CEM, smoother and with memory.

    noise_beta: colour of the sampling noise (0 white, 2 smooth); decay: the population shrinks as
    population * decay^-i (never below 2 * elites); keep_elites: fraction of the elites carried into
    the next iteration and, shifted by one step, into the next plan.
    """

    population: int = 100
    iterations: int = 3
    elites: int = 10
    noise_beta: float = 2.0
    decay: float = 1.25
    keep_elites: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decay < 1.0:
            raise ValueError(f"decay must be at least 1, got {self.decay}")
        if not 0.0 <= self.keep_elites <= 1.0:
            raise ValueError(f"keep_elites must be in [0, 1], got {self.keep_elites}")
        if self.noise_beta < 0:
            raise ValueError(f"noise_beta must be non-negative, got {self.noise_beta}")


@dataclass
class MPPIConfig(SamplerConfig):
    """MPPI: the plan moves by the cost-weighted average of its perturbations.

    temperature: lambda in the weights exp(-(S - min S) / lambda), in units of the cost;
    noise_beta: colour of the perturbations (0 white).
    """

    horizon: int = 30
    population: int = 1000
    iterations: int = 1
    elites: int = 1
    temperature: float = 1.0
    noise_beta: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


class SamplingPlanner:
    """What every sampling planner shares: bounds, the generator, batched evaluation, the budget."""

    def __init__(self, dynamics, cost: PlanningCost, action_low, action_high, config: SamplerConfig):
        self.dynamics = as_dynamics(dynamics)
        self.cost = cost
        self.config = config
        self.device = self.dynamics.device
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float32).reshape(-1), device=self.device)
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float32).reshape(-1), device=self.device)
        finite = torch.all(torch.isfinite(low) & torch.isfinite(high))
        if low.shape != high.shape or not finite or torch.any(low > high):
            raise ValueError("action bounds must be finite (m,) arrays with low <= high")
        self.low, self.high, self.m = low, high, low.numel()
        self.half_range = (high - low) / 2
        self.generator = torch.Generator(device=self.device).manual_seed(int(config.seed))
        self.last_diagnostics: dict[str, float] = {}
        # A time-varying model (TVLG) rolls out from the time step of the plan's first action.
        self.time_varying = bool(getattr(self.dynamics, "time_varying", False))
        self._t0 = 0

    def _inputs(self, x0, U_init, t: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 and the clipped warm start as tensors, checked; t: the plan's time step (kept for a
        time-varying model's rollouts)."""
        self._t0 = int(t)
        x0 = np.asarray(x0, dtype=np.float64)
        U_init = np.asarray(U_init, dtype=np.float64)
        H = self.config.horizon
        if x0.ndim != 1:
            raise ValueError(f"plan needs x0 of shape (n,), got {x0.shape}")
        if U_init.shape != (H, self.m):
            raise ValueError(f"plan needs U_init of shape ({H}, {self.m}), got {U_init.shape}")
        if not np.all(np.isfinite(x0)):
            raise ValueError("plan got a state x0 with NaN or infinite values")
        if not np.all(np.isfinite(U_init)):
            raise ValueError("plan got U_init with NaN or infinite values")
        x = torch.as_tensor(x0, dtype=torch.float32, device=self.device)
        U = torch.as_tensor(U_init, dtype=torch.float32, device=self.device)
        return x, self.clip(U)

    def clip(self, U: torch.Tensor) -> torch.Tensor:
        """U within the action bounds (NaN stays NaN)."""
        return torch.clamp(U, self.low, self.high)

    def evaluate(self, x0: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean cost over particles (N,), inf where any state or cost is not finite; states
        (N, P, H+1, n); how many of the N costs are finite."""
        N, P = U.shape[0], self.config.particles
        Up = U.repeat_interleave(P, dim=0)
        if self.time_varying:
            X = self.dynamics.rollout(x0.expand(N * P, -1), Up, self.generator, t0=self._t0)
        else:
            X = self.dynamics.rollout(x0.expand(N * P, -1), Up, self.generator)
        with torch.no_grad():
            c = self.cost(X, Up)
            if not isinstance(c, torch.Tensor) or c.device != X.device:
                c = torch.as_tensor(c, device=X.device)
            c = c.view(N, P).mean(dim=1)
        states = X.view(N, -1)
        if c.device.type == "cpu" and c.dtype == states.dtype == torch.float32 and not states.requires_grad:
            # One compiled pass, not seven calls: each torch call right after a rollout runs cold.
            finite = _worst_where_not_finite(c.numpy(), states.numpy())
            return c, X.view(N, P, *X.shape[1:]), finite
        # A row's largest and smallest entries are finite only if all are (both carry a NaN): two
        # reductions, where an isfinite mask and its all() cost 1% of an MPPI plan.
        finite = torch.isfinite(c) & torch.isfinite(states.amax(dim=1)) & torch.isfinite(states.amin(dim=1))
        c = torch.where(finite, c, torch.full_like(c, math.inf))
        return c, X.view(N, P, *X.shape[1:]), int(finite.sum())

    def _within_budget(self, started: float, iteration_s: float) -> bool:
        budget = self.config.time_budget_s
        return budget is None or time.perf_counter() - started + iteration_s <= budget

    def _result(self, U: torch.Tensor, X: torch.Tensor | None, cost: float) -> Plan:
        Xn = None if X is None else X.mean(dim=0).double().cpu().numpy()
        return Plan(U=U.double().cpu().numpy(), X=Xn, K=None, cost=float(cost))


@njit(nogil=True, boundscheck=False, cache=True)
def _worst_where_not_finite(costs: np.ndarray, states: np.ndarray) -> int:
    """costs[i] = inf where costs[i] or any of states[i] is NaN or infinite (`evaluate` on CPU, as
    its torch reductions do elsewhere: between two rollouts each torch call costs more than its work);
    returns how many costs stay finite. costs (N,), states (N, L) float32, C-contiguous. A float32 is
    NaN or infinite where its exponent bits are all ones: their largest over a row is one integer
    reduction, which runs on whole vectors (a float test a state makes a branch an element, seven
    times slower)."""
    bits = states.view(np.uint32)
    finite = 0
    for i in range(costs.size):
        exponent = np.uint32(0)
        for j in range(bits.shape[1]):
            exponent = max(exponent, bits[i, j] & np.uint32(0x7F800000))
        if exponent == np.uint32(0x7F800000) or not np.isfinite(costs[i]):
            costs[i] = np.inf
        else:
            finite += 1
    return finite


def _elites(costs: torch.Tensor, count: int, finite: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` lowest of the `finite` finite costs (fewer when fewer are finite), lowest first,
    and their indices."""
    return torch.topk(costs, min(count, finite), largest=False)


class CEMPlanner(SamplingPlanner):
    """Cross-entropy method (as in PETS): Gaussian over action sequences refitted to the elites.

    Returns the mean of the final distribution; every candidate that shaped it had a finite cost.
    """

    def plan(self, x0, U_init, t: int = 0) -> Plan:
        cfg = self.config
        x, warm = self._inputs(x0, U_init, t)
        mean = warm
        std = (cfg.init_std * self.half_range).expand_as(mean).clone()
        started, iteration_s, done, elite_cost = time.perf_counter(), 0.0, 0, math.inf
        while done < cfg.iterations and (done == 0 or self._within_budget(started, iteration_s)):
            tick = time.perf_counter()
            noise = torch.randn(cfg.population, *mean.shape, generator=self.generator, device=self.device)
            samples = self.clip(mean + std * noise)
            costs, _, finite = self.evaluate(x, samples)
            lowest, chosen = _elites(costs, cfg.elites, finite)
            if len(chosen) > 0:
                elites = samples[chosen]
                mean = cfg.momentum * mean + (1 - cfg.momentum) * elites.mean(dim=0)
                std = cfg.momentum * std + (1 - cfg.momentum) * elites.std(dim=0, unbiased=False)
                elite_cost = float(lowest.mean())
            done += 1
            iteration_s = time.perf_counter() - tick
        self.last_diagnostics = {"iterations": done, "plan_s": time.perf_counter() - started}
        if not math.isfinite(elite_cost):
            return self._result(warm, None, math.inf)
        return self._result(mean, None, elite_cost)


class ICEMPlanner(SamplingPlanner):
    """iCEM: coloured noise, a shrinking population, elites kept across iterations and plans.

    Returns the best candidate evaluated (the mean is tried as a candidate in the last iteration).
    """

    def __init__(self, dynamics, cost, action_low, action_high, config: ICEMConfig | None = None):
        super().__init__(dynamics, cost, action_low, action_high, config or ICEMConfig())
        self._memory: torch.Tensor | None = None  # elites of the last plan
        self._memory_t: int | None = None

    def plan(self, x0, U_init, t: int = 0) -> Plan:
        cfg = self.config
        x, warm = self._inputs(x0, U_init, t)
        mean, H = warm, cfg.horizon
        std = (cfg.init_std * self.half_range).expand_as(mean).clone()
        keep = max(1, int(round(cfg.keep_elites * cfg.elites))) if cfg.keep_elites > 0 else 0
        carried = None
        if keep and self._memory is not None and self._memory_t == t - 1:
            shifted = self._memory[:keep]
            carried = torch.cat([shifted[:, 1:], shifted[:, -1:]], dim=1)
        best_U, best_X, best_cost = None, None, math.inf
        started, iteration_s, done = time.perf_counter(), 0.0, 0
        elites = None
        while done < cfg.iterations and (done == 0 or self._within_budget(started, iteration_s)):
            tick = time.perf_counter()
            size = max(int(cfg.population * cfg.decay ** (-done)), 2 * cfg.elites)
            noise = colored_noise(cfg.noise_beta, (size, self.m, H), self.generator, self.device).transpose(1, 2)
            candidates = [self.clip(mean + std * noise)]
            if carried is not None:
                candidates.append(carried)
            if done == cfg.iterations - 1:
                candidates.append(mean[None])
            samples = torch.cat(candidates)
            costs, X, finite = self.evaluate(x, samples)
            lowest, chosen = _elites(costs, cfg.elites, finite)
            if len(chosen) > 0:
                elites = samples[chosen]
                if (top := float(lowest[0])) < best_cost:
                    best = int(chosen[0])
                    best_cost, best_U, best_X = top, samples[best], X[best]
                mean = cfg.momentum * mean + (1 - cfg.momentum) * elites.mean(dim=0)
                std = cfg.momentum * std + (1 - cfg.momentum) * elites.std(dim=0, unbiased=False)
                carried = elites[:keep] if keep else None
            done += 1
            iteration_s = time.perf_counter() - tick
        self.last_diagnostics = {"iterations": done, "plan_s": time.perf_counter() - started}
        self._memory, self._memory_t = elites, t
        if best_U is None:
            return self._result(warm, None, math.inf)
        return self._result(best_U, best_X, best_cost)


class MPPIPlanner(SamplingPlanner):
    """Model predictive path integral control: U += sum_k w_k eps_k, w = softmax(-S / temperature)."""

    def __init__(self, dynamics, cost, action_low, action_high, config: MPPIConfig | None = None):
        super().__init__(dynamics, cost, action_low, action_high, config or MPPIConfig())

    def plan(self, x0, U_init, t: int = 0) -> Plan:
        cfg = self.config
        x, warm = self._inputs(x0, U_init, t)
        U, std = warm, cfg.init_std * self.half_range
        started, iteration_s, done, weighted_cost = time.perf_counter(), 0.0, 0, math.inf
        while done < cfg.iterations and (done == 0 or self._within_budget(started, iteration_s)):
            tick = time.perf_counter()
            noise = colored_noise(cfg.noise_beta, (cfg.population, self.m, cfg.horizon), self.generator, self.device)
            samples = self.clip(U + std * noise.transpose(1, 2))
            costs, _, finite = self.evaluate(x, samples)
            if finite > 0:
                # Infinite costs get weight exactly 0, so a NaN trajectory never moves the plan.
                weights = torch.softmax(-(costs - costs.min()) / cfg.temperature, dim=0)
                U = self.clip(U + torch.einsum("k,khm->hm", weights, samples - U))
                weighted_cost = float(torch.sum(weights * torch.nan_to_num(costs, posinf=0.0)))
            done += 1
            iteration_s = time.perf_counter() - tick
        self.last_diagnostics = {"iterations": done, "plan_s": time.perf_counter() - started}
        if not math.isfinite(weighted_cost):
            return self._result(warm, None, math.inf)
        return self._result(U, None, weighted_cost)


class RandomShootingPlanner(SamplingPlanner):
    """Uniform random action sequences within the bounds (plus U_init); the best one wins."""

    def plan(self, x0, U_init, t: int = 0) -> Plan:
        cfg = self.config
        x, U = self._inputs(x0, U_init, t)
        started = time.perf_counter()
        uniform = torch.rand(cfg.population - 1, cfg.horizon, self.m, generator=self.generator, device=self.device)
        samples = torch.cat([U[None], self.low + (self.high - self.low) * uniform])
        costs, X, _ = self.evaluate(x, samples)
        self.last_diagnostics = {"iterations": 1, "plan_s": time.perf_counter() - started}
        best = int(torch.argmin(costs))
        if not math.isfinite(float(costs[best])):
            return self._result(U, None, math.inf)
        return self._result(samples[best], X[best], float(costs[best]))


PLANNERS: dict[str, tuple[type[SamplingPlanner], type[SamplerConfig]]] = {
    "cem": (CEMPlanner, SamplerConfig),
    "icem": (ICEMPlanner, ICEMConfig),
    "mppi": (MPPIPlanner, MPPIConfig),
    "random_shooting": (RandomShootingPlanner, SamplerConfig),
}


def planner_settings(planner: dict) -> tuple[str, dict]:
    """(kind, settings) of an experiment's `planner:` mapping, checked now rather than at the first plan.

    A `seed` is refused: the controller's seed drives the planners, so that it alone fixes a run.
    """
    kind = planner.get("kind", "cem")
    if kind not in PLANNERS:
        raise ValueError(f"planner: unknown kind '{kind}' (known: {', '.join(PLANNERS)})")
    settings = {k: v for k, v in planner.items() if k != "kind"}
    if "seed" in settings:
        raise ValueError("planner: seed: set the controller's `seed` instead (it seeds every part)")
    config_cls = PLANNERS[kind][1]
    known = {f.name for f in dataclasses.fields(config_cls)} - {"seed"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"planner: unknown key '{unknown[0]}' for {kind} (known: {', '.join(sorted(known))})")
    config_cls(**settings)
    return kind, settings


def make_planner(kind: str, dynamics, cost: PlanningCost, action_low, action_high, **settings) -> SamplingPlanner:
    """A planner by name ("cem", "icem", "mppi", "random_shooting") with its config built from settings."""
    if kind not in PLANNERS:
        raise ValueError(f"unknown planner '{kind}' (known: {', '.join(PLANNERS)})")
    planner_cls, config_cls = PLANNERS[kind]
    return planner_cls(dynamics, cost, action_low, action_high, config_cls(**settings))
