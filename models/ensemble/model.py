"""The probabilistic ensemble as a dynamics model: data, training, prediction, linearisation,
rollouts and persistence.

Each member maps features of (x_t, u_t) to a Gaussian over x_{t+1} - x_t. Inputs and targets are
normalised with statistics computed in float64; angles named in the config are fed as (sin, cos).
Training follows PETS: a bootstrap of the data per member, Gaussian negative log-likelihood with
learned soft bounds on the log-variance plus their penalty, a held-out split with early stopping
that keeps each member's best weights, and elites chosen by held-out loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from forethought.models.capabilities import LINEARIZE, PREDICT, ROLLOUT
from forethought.models.dynamics_model import as_batch
from forethought.models.ensemble.config import EnsembleConfig, native_bfloat16, resolve_device
from forethought.models.ensemble.network import EnsembleNetwork, Normaliser
from forethought.models.ensemble.planning import EnsembleDynamics

if TYPE_CHECKING:
    from forethought.models.ensemble.members import MemberStack
from forethought.models.jacobians import row_jacobians
from forethought.models.torch_file import as_tensor, load_torch_file
from forethought.robots.config import ConfigError
from forethought.robots.progress import Progress
from forethought.robots.trial import Trial


def gaussian_nll(mean: np.ndarray, var: np.ndarray, target: np.ndarray) -> float:
    """Mean over rows of the Gaussian negative log-likelihood of target (B, n), summed over dims."""
    var = np.maximum(var, 1e-300)
    per_row = 0.5 * (np.log(2 * np.pi * var) + (target - mean) ** 2 / var).sum(axis=-1)
    return float(per_row.mean())


class EnsembleModel:
    """x_{t+1} ~ N(x_t + mean, var) from a probabilistic ensemble; a DynamicsModel.

    state_names, action_names: what the model's states and actions are (checked against trials).
    Offers predict, linearize (through the elites' mean, by autograd) and rollout (trajectory
    sampling for the sampling planners); refitted on every trial so far.
    """

    capabilities = frozenset({PREDICT, LINEARIZE, ROLLOUT})
    learned = True
    fit_on = "all_trials"

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
        self._dynamics_cache: dict[tuple[str, str], EnsembleDynamics] = {}

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
        given = len(x)
        held = self.holdout_rows(given)
        if cfg.mirror:  # each transition's mirror image, held out with it when it is held out
            x, u, delta = np.concatenate([x, -x]), np.concatenate([u, -u]), np.concatenate([delta, -delta])
            held = np.concatenate([held, held])
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
            "transitions": int(given),  # as given, without their mirror images
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

    def linearize(self, x, u) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The next state about each row as A x + B u + c with noise covariance Sigma, float64:
        A (B, n, n), B (B, n, m), c (B, n), Sigma (B, n, n); a single (n,), (m,) pair gives unbatched
        outputs.

        A and B are the derivatives, by autograd, of the elites' mean next state (the mixture mean
        that predict returns and the planners follow) through the float32 network, as exact as its
        float32 arithmetic (about 1e-6 relative; float64 took twice as long); c puts
        predict's mean at the row itself; Sigma is predict's variance on the diagonal.
        """
        x2, u2, single = self._check_inputs(x, u)
        mean, var = self.predict(x2, u2)
        kernel = self.dynamics("expectation", "float32")
        A, B = (j.double().cpu().numpy() for j in row_jacobians(kernel.mean_step, self._to_tensor(x2), self._to_tensor(u2)))
        c = mean - np.einsum("bij,bj->bi", A, x2) - np.einsum("bij,bj->bi", B, u2)
        Sigma = var[:, :, None] * np.eye(self.n)
        return (A[0], B[0], c[0], Sigma[0]) if single else (A, B, c, Sigma)

    def member_stack(self) -> "MemberStack":
        """The elites side by side as one model over k copies of the state (models.ensemble.members):
        what iLQR plans on to weigh each member's own prediction."""
        from forethought.models.ensemble.members import MemberStack

        return MemberStack(self)

    def rollout(self, x0: torch.Tensor, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """States (B, H+1, n) float32 on `device` from x0 (B, n) under actions U (B, H, m): particles
        carried through the elites by the config's `propagation` in its `planning_dtype`; random
        draws only from `generator`."""
        return self.dynamics().rollout(x0, U, generator)

    def dynamics(self, propagation: str | None = None, dtype: str | None = None) -> EnsembleDynamics:
        """The planning kernel for `propagation` and `dtype` (default: the config's), cached until
        the next fit."""
        if not self.fitted:
            raise RuntimeError("the ensemble has not been fitted: call fit(trials) first")
        propagation = propagation or self.config.propagation
        dtype = dtype or self.config.planning_dtype
        if dtype == "auto":
            dtype = "bfloat16" if native_bfloat16(self.device) else "float32"
        key = (propagation, dtype)
        if key not in self._dynamics_cache:
            self._dynamics_cache[key] = EnsembleDynamics(self, propagation, dtype)
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
            **self.checkpoint_state(),
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "EnsembleModel":
        """Read a model written by `save`; device overrides the saved one. ConfigError naming the file
        when it is damaged, not an ensemble or holds pickled objects (only tensors and plain data are read)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ensemble model file not found: {path}")
        state = load_torch_file(path, "an ensemble model file", tag=("format", "forethought.ensemble/1"))
        try:
            config = dict(state["config"])
            if device is not None:
                config["device"] = device
            model = cls(state["state_names"], state["action_names"], EnsembleConfig(**config))
            model.restore_checkpoint(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:  # missing entries, wrong shapes
            raise ConfigError(f"{path}: a damaged ensemble model file ({type(err).__name__}: {err})") from None
        return model

    def checkpoint_state(self) -> dict:
        """Weights, normalisation, elites and the generator's state, as plain data and tensors."""
        return {
            "network": {k: v.cpu() for k, v in self.network.state_dict().items()},
            "input_stats": None if self.input_stats is None else _stats(self.input_stats),
            "target_stats": None if self.target_stats is None else _stats(self.target_stats),
            "elites": self.elites.tolist(),
            "holdout_mse": self.holdout_mse.tolist(),
            "generator": self._generator.get_state(),
        }

    def restore_checkpoint(self, state: dict) -> None:
        """Put back what `checkpoint_state` (or a saved file) holds, on a model of the same config."""
        self.network.load_state_dict(state["network"])
        for name in ("input_stats", "target_stats"):
            stats = state[name]
            if stats is not None:
                setattr(self, name, Normaliser(np.asarray(stats["mean"], dtype=np.float64),
                                               np.asarray(stats["std"], dtype=np.float64)))
        self.elites = np.asarray(state["elites"], dtype=np.int64)
        # Files from before early stopping went by squared error hold no held-out MSE.
        self.holdout_mse = np.asarray(state.get("holdout_mse", self.holdout_mse), dtype=np.float64)
        self._generator.set_state(state["generator"])
        self._dynamics_cache.clear()


def _stats(normaliser: Normaliser) -> dict[str, torch.Tensor]:
    """A Normaliser as tensors (a file of tensors and plain data loads with weights_only=True)."""
    return {"mean": as_tensor(normaliser.mean), "std": as_tensor(normaliser.std)}
