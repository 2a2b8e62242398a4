"""Probabilistic neural-network ensemble (PETS): E Gaussian MLPs over the state change.

Each member maps features of (x_t, u_t) to a Gaussian over x_{t+1} - x_t. All members run in one
batched pass: a layer's weights are an (E, in, out) tensor applied with `torch.baddbmm`. Inputs and
targets are normalised with statistics computed in float64; angles named in the config are fed as
(sin, cos). Training follows PETS: a bootstrap of the data per member, Gaussian negative
log-likelihood with learned soft bounds on the log-variance plus their penalty, a held-out split
with early stopping that keeps each member's best weights, and elites chosen by held-out loss.

`EnsembleModel.dynamics(propagation)` returns an `EnsembleDynamics` that rolls whole batches of
action sequences forward by trajectory sampling (TS1, TSinf) or by propagating the expectation,
for the sampling planners.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from forethought.models.dynamics_model import as_batch
from forethought.robots.progress import Progress
from forethought.robots.trial import Trial

ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}
ACTIVATIONS_IN_PLACE = {"silu": partial(F.silu, inplace=True), "relu": torch.relu_, "elu": F.elu_, "tanh": torch.tanh_}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROPAGATIONS = ("ts1", "tsinf", "expectation")


@dataclass
class EnsembleConfig:
    """How the ensemble is built and trained.

    members: networks in the ensemble; elites: how many of them (best held-out loss) predict and plan
    (default all). hidden: widths of the hidden layers. angle_states: state names fed as (sin, cos).
    relative_actions: feed each action that shares its name with a state as the difference action -
    state (a servo's position target becomes its position error, which its torque follows); other
    actions are fed as they are.
    weight_decay: L2 weight on every layer's weights. holdout: fraction of transitions kept out of
    training for early stopping (at most max_holdout; the same transitions in every fit); training
    stops after `patience` epochs in which no member's held-out mean squared error improved by a
    relative `min_improvement`, once it has taken `min_steps` gradient steps (so that the few
    transitions of the first trials still train the networks), and after `max_epochs` epochs (or
    enough epochs for min_steps) or `max_steps` steps at the latest (each fit continues from the
    last one's weights, so a capped fit still builds on all earlier training).
    logvar_min, logvar_max: initial soft bounds on the log-variance (normalised target units);
    logvar_penalty: weight of (sum of upper bounds - sum of lower bounds) in the loss.
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


def soft_bound_logvar(raw: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Squash raw log-variances smoothly into (lower, upper) as in PETS."""
    logvar = upper - F.softplus(upper - raw)
    return lower + F.softplus(logvar - lower)


def gaussian_nll(mean: np.ndarray, var: np.ndarray, target: np.ndarray) -> float:
    """Mean over rows of the Gaussian negative log-likelihood of target (B, n), summed over dims."""
    var = np.maximum(var, 1e-300)
    per_row = 0.5 * (np.log(2 * np.pi * var) + (target - mean) ** 2 / var).sum(axis=-1)
    return float(per_row.mean())


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


class EnsembleModel:
    """x_{t+1} ~ N(x_t + mean, var) from a probabilistic ensemble; a DynamicsModel.

    state_names, action_names: what the model's states and actions are (checked against trials).
    """

    def __init__(self, state_names: Sequence[str], action_names: Sequence[str], config: EnsembleConfig | None = None):
        self.state_names = tuple(state_names)
        self.action_names = tuple(action_names)
        self.config = config or EnsembleConfig()
        self.device = resolve_device(self.config.device)
        unknown = [a for a in self.config.angle_states if a not in self.state_names]
        if unknown:
            raise ValueError(f"angle_states {unknown} are not states of the model ({', '.join(self.state_names)})")
        angles = [self.state_names.index(a) for a in self.config.angle_states]
        self._angle_idx = np.array(angles, dtype=np.int64)
        self._plain_idx = np.array([i for i in range(self.n) if i not in angles], dtype=np.int64)
        # Per action: 1 where it is fed relative to the state of its name (then _action_ref is that state).
        named = [a in self.state_names and self.config.relative_actions for a in self.action_names]
        self._action_ref = np.array([self.state_names.index(a) if r else 0 for a, r in zip(self.action_names, named)])
        self._action_rel = np.array(named, dtype=np.float64)
        self._generator = torch.Generator().manual_seed(int(self.config.seed))
        self.network = EnsembleNetwork(
            self.config.members,
            self.d_features,
            self.n,
            self.config.hidden,
            self.config.activation,
            (self.config.logvar_min, self.config.logvar_max),
            self._generator,
        ).to(self.device)
        self.input_stats: Normaliser | None = None
        self.target_stats: Normaliser | None = None
        self.elites = np.arange(self.config.n_elites)
        self.holdout_mse = np.full(self.config.members, np.nan)
        self._dynamics_cache: dict[tuple[str, str], "EnsembleDynamics"] = {}

    @property
    def n(self) -> int:
        return len(self.state_names)

    @property
    def m(self) -> int:
        return len(self.action_names)

    @property
    def d_features(self) -> int:
        return self.n + len(self.config.angle_states) + self.m

    @property
    def fitted(self) -> bool:
        return self.input_stats is not None

    def features(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Network inputs before normalisation: (x without angles, sin, cos of angles, u or u - x)."""
        ang = x[..., self._angle_idx]
        u = u - self._action_rel * x[..., self._action_ref]
        return np.concatenate([x[..., self._plain_idx], np.sin(ang), np.cos(ang), u], axis=-1)

    # ----------------------------------------------------------------- data and fitting

    def transitions(self, trials: Sequence[Trial]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x_t, u_t, x_{t+1} - x_t) stacked over trials, float64, rows with NaN or inf dropped."""
        if len(trials) == 0:
            raise ValueError("fit needs at least one trial")
        xs, us, ds = [], [], []
        for i, trial in enumerate(trials):
            if tuple(trial.state_names) != self.state_names or tuple(trial.action_names) != self.action_names:
                raise ValueError(
                    f"trial {i} has states {list(trial.state_names)} and actions {list(trial.action_names)}; "
                    f"the model was built for {list(self.state_names)} and {list(self.action_names)}"
                )
            xs.append(trial.states[:-1])
            us.append(trial.actions)
            ds.append(trial.states[1:] - trial.states[:-1])
        x, u, d = (np.concatenate(a).astype(np.float64) for a in (xs, us, ds))
        finite = np.isfinite(x).all(1) & np.isfinite(u).all(1) & np.isfinite(d).all(1)
        return x[finite], u[finite], d[finite]

    def fit(self, trials: Sequence[Trial]) -> dict:
        """Train on every transition of `trials` (continuing from the current weights).

        Returns diagnostics: transitions, epochs, steps, seconds, held-out MSE and NLL per member
        (normalised units, as trained) and of the elites, and the elite indices.
        """
        x, u, d = self.transitions(trials)
        return self.fit_arrays(x, u, d)

    def fit_arrays(self, x: np.ndarray, u: np.ndarray, delta: np.ndarray) -> dict:
        """Train on transitions given as arrays x (N, n), u (N, m), delta = x_next - x (N, n); each
        epoch is reported to forethought.robots.progress (epoch, steps, best held-out MSE)."""
        cfg = self.config
        x, u, delta = (np.asarray(a, dtype=np.float64) for a in (x, u, delta))
        if x.ndim != 2 or x.shape[1] != self.n or u.shape != (len(x), self.m) or delta.shape != x.shape:
            raise ValueError(f"fit needs x ({len(x)}, {self.n}), u ({len(x)}, {self.m}), delta like x; "
                             f"got {x.shape}, {u.shape}, {delta.shape}")
        if len(x) < 4:
            raise ValueError(f"fit needs at least 4 finite transitions, got {len(x)}")
        start = time.perf_counter()
        held = self.holdout_rows(len(x))
        hold, train = np.flatnonzero(held), np.flatnonzero(~held)
        n_hold = len(hold)
        f = self.features(x, u)
        self.input_stats = Normaliser.fit(f[train], constant_std=1.0)
        self.target_stats = Normaliser.fit(delta[train], constant_std=1e-6)
        self._dynamics_cache.clear()
        z = self._to_tensor((f - self.input_stats.mean) / self.input_stats.std)
        y = self._to_tensor((delta - self.target_stats.mean) / self.target_stats.std)
        z_train, y_train = z[train], y[train]
        z_hold, y_hold = z[hold], y[hold]

        net, E = self.network, cfg.members
        decay = [{"params": [w], "weight_decay": cfg.weight_decay} for w in net.weights]
        rest = [p for p in net.parameters() if all(p is not w for w in net.weights)]
        optimiser = torch.optim.Adam(decay + [{"params": rest, "weight_decay": 0.0}], lr=cfg.learning_rate)
        boot = torch.randint(len(train), (E, len(train)), generator=self._generator).to(self.device)

        # Early stopping and elites go by the held-out squared error of the mean, not the NLL: the NLL
        # turns upwards within a few epochs (the variances grow confident) while the mean keeps
        # improving for hundreds, so stopping on it leaves the dynamics underfitted.
        best_loss = self._holdout_scores(z_hold, y_hold)[0] if n_hold else None
        best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        epochs = steps = stale = 0
        batches_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
        max_epochs = max(cfg.max_epochs, math.ceil(cfg.min_steps / batches_per_epoch))
        progress = Progress(f"ensemble fit on {len(x)} transitions", total=max_epochs, unit="epochs")
        while epochs < max_epochs and steps < cfg.max_steps:
            shuffle = torch.argsort(torch.rand(E, len(train), generator=self._generator), dim=1).to(self.device)
            idx = torch.gather(boot, 1, shuffle)
            for b in range(0, len(train), cfg.batch_size):
                rows = idx[:, b : b + cfg.batch_size]
                mean, logvar = net(z_train[rows])
                target = y_train[rows]
                nll = (((mean - target) ** 2) * torch.exp(-logvar) + logvar).mean(dim=(1, 2)).sum()
                bounds = cfg.logvar_penalty * (net.max_logvar.sum() - net.min_logvar.sum())
                optimiser.zero_grad(set_to_none=True)
                (nll + bounds).backward()
                optimiser.step()
                steps += 1
            epochs += 1
            loss = None if best_loss is None else self._holdout_scores(z_hold, y_hold)[0]
            progress.update(epochs, steps=steps, held_out_mse=math.nan if loss is None else float(loss.min()))
            if loss is None:
                continue
            improved = (best_loss - loss) / np.abs(best_loss).clip(1e-8) > cfg.min_improvement
            if improved.any():
                best_loss = np.where(improved, loss, best_loss)
                keep = torch.as_tensor(improved, device=self.device)
                for key, value in net.state_dict().items():
                    mask = keep.view(-1, *([1] * (value.dim() - 1)))
                    best_state[key] = torch.where(mask, value.detach(), best_state[key])
                stale = 0
            else:
                stale += 1
                if stale >= cfg.patience and steps >= cfg.min_steps:
                    break
        progress.total = epochs
        progress.finish()
        if best_loss is not None:
            net.load_state_dict(best_state)
            self.holdout_mse, holdout_nll = self._holdout_scores(z_hold, y_hold)
            self.elites = np.sort(np.argsort(self.holdout_mse, kind="stable")[: cfg.n_elites])
        else:
            self.holdout_mse = holdout_nll = np.full(E, np.nan)
            self.elites = np.arange(cfg.n_elites)
        return {
            "transitions": int(len(x)),
            "holdout_transitions": int(n_hold),
            "epochs": epochs,
            "steps": steps,
            "fit_s": time.perf_counter() - start,
            "holdout_mse": [float(v) for v in self.holdout_mse],
            "holdout_nll": [float(v) for v in holdout_nll],
            "holdout_mse_elites": float(np.mean(self.holdout_mse[self.elites])),
            "holdout_nll_elites": float(np.mean(holdout_nll[self.elites])),
            "elites": [int(e) for e in self.elites],
        }

    def holdout_rows(self, N: int) -> np.ndarray:
        """(N,) bool: which of N transitions fit_arrays holds out (about `holdout` of them, at most
        `max_holdout`, never all).

        Row i's lot depends on the seed and i alone, so data that grows by appending trials keeps
        its held-out rows held out in every later fit. The weights carry over from fit to fit; a
        fresh split would score them on transitions they were trained on, and early stopping and
        the elites would go by a flattering loss.
        """
        cfg = self.config
        held = np.random.default_rng(cfg.seed).random(N) < cfg.holdout
        held[np.flatnonzero(held)[cfg.max_holdout :]] = False
        if held.all():
            held[:] = False
        return held

    @torch.no_grad()
    def _holdout_scores(self, z: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per member: mean squared error of the mean and Gaussian NLL (up to constants), normalised units."""
        mean, logvar = self.network(z.expand(self.config.members, *z.shape))
        squared = (mean - y) ** 2
        mse = squared.mean(dim=(1, 2))
        nll = (squared * torch.exp(-logvar) + logvar).mean(dim=(1, 2))
        return mse.double().cpu().numpy(), nll.double().cpu().numpy()

    def _to_tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)

    # ----------------------------------------------------------------- prediction

    def _check_inputs(self, x, u) -> tuple[np.ndarray, np.ndarray, bool]:
        if not self.fitted:
            raise RuntimeError("the ensemble has not been fitted: call fit(trials) first")
        return as_batch(x, u, self.n, self.m, "EnsembleModel")

    @torch.no_grad()
    def predict_members(self, x, u, members: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each member's Gaussian over the next state: means and variances (k, B, n), float64.

        members: which members (default the elites).
        """
        x2, u2, _ = self._check_inputs(x, u)
        members = self.elites if members is None else np.asarray(members)
        z = (self.features(x2, u2) - self.input_stats.mean) / self.input_stats.std
        z = self._to_tensor(z)
        mean, logvar = self.network(z.expand(self.config.members, *z.shape))
        mean = mean[members].double().cpu().numpy()
        var = torch.exp(logvar[members]).double().cpu().numpy()
        mean = x2 + mean * self.target_stats.std + self.target_stats.mean
        return mean, var * self.target_stats.std**2

    def predict(self, x, u) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance (B, n) of the next state under the elites' equally weighted mixture.

        The variance is aleatoric (mean of the members' variances) plus epistemic (variance of their
        means). A single (n,), (m,) pair gives (n,) outputs.
        """
        _, _, single = self._check_inputs(x, u)
        means, variances = self.predict_members(x, u)
        mean = means.mean(axis=0)
        var = variances.mean(axis=0) + means.var(axis=0)
        return (mean[0], var[0]) if single else (mean, var)

    def epistemic_variance(self, x, u) -> np.ndarray:
        """Variance across the elites' means (B, n): how much the members disagree."""
        means, _ = self.predict_members(x, u)
        return means.var(axis=0)

    def dynamics(self, propagation: str = "tsinf", dtype: str | None = None) -> "EnsembleDynamics":
        """Batched rollouts through the elites for planners (cached until the next fit)."""
        if not self.fitted:
            raise RuntimeError("the ensemble has not been fitted: call fit(trials) first")
        dtype = dtype or self.config.planning_dtype
        if dtype == "auto":
            dtype = "bfloat16" if native_bfloat16(self.device) else "float32"
        key = (propagation, dtype)
        if key not in self._dynamics_cache:
            self._dynamics_cache[key] = EnsembleDynamics(self, propagation, key[1])
        return self._dynamics_cache[key]

    # ----------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> None:
        """Write weights, normalisation, elites and config to one torch file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": "forethought.ensemble/1",
            "state_names": list(self.state_names),
            "action_names": list(self.action_names),
            "config": asdict(self.config),
            "network": {k: v.cpu() for k, v in self.network.state_dict().items()},
            "input_stats": None if self.input_stats is None else asdict(self.input_stats),
            "target_stats": None if self.target_stats is None else asdict(self.target_stats),
            "elites": self.elites.tolist(),
            "holdout_mse": self.holdout_mse.tolist(),
            "generator": self._generator.get_state(),
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "EnsembleModel":
        """Read a model written by `save`; device overrides the saved one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ensemble model file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # torch raises several kinds for damaged files
            raise ValueError(f"{path}: not a readable ensemble model ({err})") from None
        if not isinstance(state, dict) or state.get("format") != "forethought.ensemble/1":
            raise ValueError(f"{path}: not a forethought ensemble model file")
        config = dict(state["config"])
        if device is not None:
            config["device"] = device
        model = cls(state["state_names"], state["action_names"], EnsembleConfig(**config))
        model.network.load_state_dict(state["network"])
        for name in ("input_stats", "target_stats"):
            stats = state[name]
            if stats is not None:
                setattr(model, name, Normaliser(np.asarray(stats["mean"]), np.asarray(stats["std"])))
        model.elites = np.asarray(state["elites"], dtype=np.int64)
        # Files from before early stopping went by squared error hold no held-out MSE.
        model.holdout_mse = np.asarray(state.get("holdout_mse", model.holdout_mse), dtype=np.float64)
        model._generator.set_state(state["generator"])
        return model


class EnsembleDynamics:
    """Rollouts of whole batches of action sequences through the elites (a BatchedDynamics).

    propagation: "tsinf" (each trajectory keeps one member for the whole rollout), "ts1" (a fresh
    member every step), or "expectation" (the mean over members, no sampling). Members are assigned
    to trajectories at random in near-equal shares, so a batch of any size works. Input and target
    normalisation are folded into the first and last layers, and a constant input feature carries the
    first layer's bias, so a step is one gather, k-way batched matmuls and one sample.
    """

    def __init__(self, model: EnsembleModel, propagation: str, dtype: str = "float32"):
        if propagation not in PROPAGATIONS:
            raise ValueError(f"unknown propagation '{propagation}' (known: {', '.join(PROPAGATIONS)})")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{dtype}' (known: {', '.join(DTYPES)})")
        self.propagation = propagation
        self.model = model
        self.device = model.device
        self.dtype = DTYPES[dtype]
        self.n, self.m = model.n, model.m
        self.activation = ACTIVATIONS_IN_PLACE[model.config.activation]
        net = model.network
        elites = torch.as_tensor(model.elites, device=self.device)
        self.k = len(elites)
        f64 = dict(dtype=torch.float64, device=self.device)
        in_mean = torch.as_tensor(model.input_stats.mean, **f64)
        in_std = torch.as_tensor(model.input_stats.std, **f64)
        out_mean = torch.as_tensor(model.target_stats.mean, **f64)
        out_std = torch.as_tensor(model.target_stats.std, **f64)
        weights = [w.detach()[elites].double() for w in net.weights]
        biases = [b.detach()[elites].double() for b in net.biases]
        # z = (f - mean) / std  =>  z W + b = f (W / std) + (b - (mean / std) W); the bias rides on a 1 feature.
        w0 = weights[0] / in_std[None, :, None]
        b0 = biases[0] - torch.einsum("d,kdh->kh", in_mean / in_std, weights[0])[:, None, :]
        weights[0] = torch.cat([w0, b0], dim=1)
        # The mean head outputs delta directly: columns scaled by the target std, shifted by its mean.
        scale = torch.cat([out_std, torch.ones_like(out_std)])
        shift = torch.cat([out_mean, torch.zeros_like(out_mean)])
        weights[-1] = weights[-1] * scale
        biases[-1] = biases[-1] * scale + shift
        self.weights = [w.to(self.dtype).contiguous() for w in weights]
        self.biases = [b.to(self.dtype).contiguous() for b in biases[1:]]
        self.min_logvar = net.min_logvar.detach()[elites].float()
        self.max_logvar = net.max_logvar.detach()[elites].float()
        self.log_std_scale = torch.log(out_std).float()
        self._buffers: dict[int, list[torch.Tensor]] = {}
        self._angle_idx = torch.as_tensor(model._angle_idx, device=self.device)
        self._plain_idx = torch.as_tensor(model._plain_idx, device=self.device)
        self._action_ref = torch.as_tensor(model._action_ref, device=self.device)
        self._action_rel = torch.as_tensor(model._action_rel, dtype=torch.float32, device=self.device)
        self._relative = bool(model._action_rel.any())

    def _features(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """(x without angles, sin and cos of angles, u or u - x, 1) in the network's dtype."""
        ang = x[..., self._angle_idx]
        if self._relative:
            u = u - self._action_rel * x[..., self._action_ref]
        ones = torch.ones_like(u[..., :1])
        return torch.cat([x[..., self._plain_idx], torch.sin(ang), torch.cos(ang), u, ones], dim=-1).to(self.dtype)

    def _workspace(self, R: int) -> list[torch.Tensor]:
        """Hidden-layer buffers (k, R, width), reused across steps and calls.

        Allocating megabyte-sized activations afresh at every layer costs more than the layer's
        activation function on CPU (each new block is page-faulted in again).
        """
        if R not in self._buffers:
            if len(self._buffers) >= 8:
                self._buffers.clear()
            self._buffers[R] = [
                torch.empty(self.k, R, w.shape[-1], dtype=self.dtype, device=self.device) for w in self.weights[:-1]
            ]
        return self._buffers[R]

    def _network(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f (k, R, d+1) -> delta mean (k, R, n), log std (k, R, n), float32."""
        buffers = self._workspace(f.shape[1])
        h = self.activation(torch.bmm(f, self.weights[0], out=buffers[0]))
        for w, b, out in zip(self.weights[1:-1], self.biases[:-1], buffers[1:]):
            h = self.activation(torch.baddbmm(b, h, w, out=out))
        out = torch.baddbmm(self.biases[-1], h, self.weights[-1]).float()
        logvar = soft_bound_logvar(out[..., self.n :], self.min_logvar, self.max_logvar)
        return out[..., : self.n], 0.5 * logvar + self.log_std_scale

    def _assignment(self, B: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """A random member for each of B rows, in near-equal shares (counts differ by at most one).

        Returns order (k*R,): the row in each member-major slot (member e owns slots e*R .. e*R+R-1;
        a few slots repeat a row to pad), inverse (B,): the slot that holds each row's result, and R.
        """
        k = self.k
        R = math.ceil(B / k)
        perm = torch.randperm(B, generator=generator, device=self.device)
        # Deal the shuffled rows out to the members like cards: row perm[s] goes to member s % k.
        dealt = torch.cat([perm, perm[: k * R - B]]).view(R, k)
        order = dealt.t().reshape(-1)
        s = torch.arange(B, device=self.device)
        inverse = torch.empty_like(perm)
        inverse[perm] = (s % k) * R + s // k
        return order, inverse, R

    @torch.no_grad()
    def rollout(self, x0: torch.Tensor, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """States (B, H+1, n) from x0 (B, n) under actions U (B, H, m), float32 on `device`."""
        B, H, _ = U.shape
        X = torch.empty(B, H + 1, self.n, device=self.device)
        X[:, 0] = x = x0
        if self.propagation == "expectation":
            for t in range(H):
                f = self._features(x, U[:, t]).expand(self.k, B, -1)
                delta, _ = self._network(f)
                x = X[:, t + 1] = x + delta.mean(dim=0)
            return X
        # Rows stay in member-major slot order between steps; TS1 deals them out afresh each step.
        order, inverse, R = self._assignment(B, generator)
        xs, Us = x0[order], U[order]
        for t in range(H):
            if t > 0 and self.propagation == "ts1":
                order, inverse, R = self._assignment(B, generator)
                xs, Us = x[order], U[order]
            f = self._features(xs, Us[:, t]).view(self.k, R, -1)
            delta, log_std = self._network(f)
            noise = torch.randn(self.k, R, self.n, generator=generator, device=self.device)
            xs = xs + (delta + torch.exp(log_std) * noise).view(self.k * R, self.n)
            x = X[:, t + 1] = xs[inverse]
        return X
