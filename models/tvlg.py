"""Time-varying linear-Gaussian dynamics fitted from a batch of trials, with a GMM prior.

Per step t the model is x_{t+1} ~ N(A_t x_t + B_t u_t + c_t, Sigma_t). Each step is fitted from
the N samples (x_t, u_t, x_{t+1}) of the current trials. With few trials that fit is ill-posed, so
a Gaussian mixture over (x_t, u_t, x_{t+1}) fitted on every sample seen so far supplies a
normal-inverse-Wishart prior for each step (Levine & Abbeel 2014): the step's samples pick the
mixture components they belong to, and the mixture moments of those components become the prior
mean and scale matrix, worth `strength` pseudo-observations.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

from forethought.models.capabilities import LINEARIZE, PREDICT, ROLLOUT
from forethought.models.dynamics_model import as_batch
from forethought.robots.config import ConfigError
from forethought.robots.trial import Trial


@dataclass(frozen=True)
class LinearGaussianDynamics:
    """x_{t+1} ~ N(A[t] x_t + B[t] u_t + c[t], Sigma[t]) for t < T, and x_0 ~ N(x0_mean, x0_cov).

    A: (T, n, n); B: (T, n, m); c: (T, n); Sigma: (T, n, n); x0_mean: (n,); x0_cov: (n, n).
    """

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    Sigma: np.ndarray
    x0_mean: np.ndarray
    x0_cov: np.ndarray

    @property
    def horizon(self) -> int:
        return self.A.shape[0]

    def log_likelihood(self, states: np.ndarray, actions: np.ndarray) -> float:
        """Mean log-density per transition of trials states (N, T+1, n), actions (N, T, m)."""
        states, actions = _check_batch(states, actions, self.A.shape[1], self.B.shape[2])
        if states.shape[1] != self.horizon + 1:
            raise ValueError(f"trials have horizon {states.shape[1] - 1}, the model {self.horizon}")
        total = 0.0
        for t in range(self.horizon):
            mean = states[:, t] @ self.A[t].T + actions[:, t] @ self.B[t].T + self.c[t]
            total += _gaussian_logpdf(states[:, t + 1], mean, self.Sigma[t]).sum()
        return total / (states.shape[0] * self.horizon)


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x; mean, cov) for x, mean: (N, d) (or (d,)) and cov: (d, d); returns (N,)."""
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, np.atleast_2d(x - mean).T)
    half_logdet = np.log(np.diag(chol)).sum()
    return -0.5 * (z**2).sum(axis=0) - half_logdet - 0.5 * cov.shape[0] * np.log(2 * np.pi)


def _check_batch(states, actions, n: int | None = None, m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    states = np.asarray(states, dtype=np.float64)
    actions = np.asarray(actions, dtype=np.float64)
    if states.ndim != 3 or actions.ndim != 3 or states.shape[:1] != actions.shape[:1]:
        raise ValueError(f"expected states (N, T+1, n) and actions (N, T, m), got {states.shape} and {actions.shape}")
    if states.shape[1] != actions.shape[1] + 1:
        raise ValueError(f"states need one more step than actions, got {states.shape} and {actions.shape}")
    if n is not None and states.shape[2] != n or m is not None and actions.shape[2] != m:
        raise ValueError(f"expected n={n} states and m={m} actions, got {states.shape} and {actions.shape}")
    if not (np.all(np.isfinite(states)) and np.all(np.isfinite(actions))):
        raise ValueError("states or actions contain NaN or infinite values")
    return states, actions


def transitions(states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Samples (x_t, u_t, x_{t+1}) of every step of every trial: (N * T, 2n + m)."""
    states, actions = _check_batch(states, actions)
    stacked = np.concatenate([states[:, :-1], actions, states[:, 1:]], axis=2)
    return stacked.reshape(-1, stacked.shape[2])


class GMMPrior:
    """A Gaussian mixture over (x_t, u_t, x_{t+1}) turned into a normal-inverse-Wishart prior per step.

    clusters: the most mixture components (fewer when there are few samples);
    min_samples_per_cluster: samples each component needs; max_samples: the most recent samples kept;
    strength: pseudo-observations the prior is worth in each step's fit; seed: for the mixture's EM.
    """

    def __init__(
        self,
        clusters: int = 8,
        min_samples_per_cluster: int = 40,
        max_samples: int = 20_000,
        strength: float = 1.0,
        seed: int = 0,
    ):
        if clusters < 1 or min_samples_per_cluster < 1 or max_samples < 1 or not strength > 0:
            raise ValueError("GMM prior: clusters, min_samples_per_cluster, max_samples and strength must be positive")
        self.clusters, self.min_samples_per_cluster = clusters, min_samples_per_cluster
        self.max_samples, self.strength, self.seed = max_samples, strength, seed
        self.samples: np.ndarray | None = None
        self.weights: np.ndarray | None = None  # (K,)
        self.means: np.ndarray | None = None  # (K, d)
        self.covariances: np.ndarray | None = None  # (K, d, d)

    @property
    def fitted(self) -> bool:
        return self.means is not None

    def update(self, states: np.ndarray, actions: np.ndarray) -> int:
        """Add the trials' transitions to the sample buffer and refit the mixture; returns its size K."""
        new = transitions(states, actions)
        if self.samples is not None and self.samples.shape[1] != new.shape[1]:
            raise ValueError(f"GMM prior: samples have {new.shape[1]} dimensions, earlier ones {self.samples.shape[1]}")
        buffer = new if self.samples is None else np.concatenate([self.samples, new])
        self.samples = buffer[-self.max_samples :]
        k = int(np.clip(len(self.samples) // self.min_samples_per_cluster, 1, self.clusters))
        with threadpool_limits(1):  # EM on small matrices: threads only contend
            return self._fit_mixture(k)

    def _fit_mixture(self, k: int) -> int:
        from sklearn.mixture import GaussianMixture

        # Standardising keeps EM well-conditioned when positions and velocities differ in scale.
        center, spread = self.samples.mean(axis=0), self.samples.std(axis=0)
        scale = np.where(spread > 1e-8, spread, 1.0)
        mixture = GaussianMixture(
            n_components=k, covariance_type="full", reg_covar=1e-6, max_iter=200, random_state=self.seed
        ).fit((self.samples - center) / scale)
        self.weights = mixture.weights_
        self.means = mixture.means_ * scale + center
        self.covariances = mixture.covariances_ * np.outer(scale, scale)
        return k

    def evaluate(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        """NIW prior for the step whose samples are points (N, d): (mu0 (d,), Phi (d, d), m, n0).

        The components are weighted by the samples' mean log-responsibility, so a step draws its
        prior from the regions of state space its samples visit.
        """
        if not self.fitted:
            raise RuntimeError("GMM prior: update it with trials before evaluating it")
        log_joint = np.stack(
            [np.log(w) + _gaussian_logpdf(points, mu, cov) for w, mu, cov in zip(self.weights, self.means, self.covariances)],
            axis=1,
        )
        log_resp = log_joint - logsumexp(log_joint, axis=1, keepdims=True)
        weights = np.exp(log_resp.mean(axis=0) - logsumexp(log_resp.mean(axis=0)))
        mu0 = weights @ self.means
        spread = self.means - mu0
        cov = np.einsum("k,kij->ij", weights, self.covariances) + np.einsum("k,ki,kj->ij", weights, spread, spread)
        return mu0, self.strength * cov, self.strength, self.strength

    def state_dict(self) -> dict:
        return {
            "config": {
                "clusters": self.clusters,
                "min_samples_per_cluster": self.min_samples_per_cluster,
                "max_samples": self.max_samples,
                "strength": self.strength,
                "seed": self.seed,
            },
            "samples": self.samples,
            "weights": self.weights,
            "means": self.means,
            "covariances": self.covariances,
        }


def fit_tvlg(
    states: np.ndarray,
    actions: np.ndarray,
    prior: GMMPrior | None = None,
    ridge: float = 1e-6,
) -> LinearGaussianDynamics:
    """Fit x_{t+1} ~ N(A_t x_t + B_t u_t + c_t, Sigma_t) per step from N trials.

    states: (N, T+1, n); actions: (N, T, m). Each step's joint Gaussian over (x_t, u_t, x_{t+1}) is
    the empirical one, combined with `prior`'s NIW prior when given (its MAP estimate); `ridge` is
    added to the (x, u) block's diagonal before conditioning on it.
    """
    states, actions = _check_batch(states, actions)
    N, T1, n = states.shape
    if N < 2 and prior is None:
        raise ValueError(f"fitting a time-varying model needs at least 2 trials without a prior, got {N}")
    if ridge < 0:
        raise ValueError(f"ridge must be non-negative, got {ridge}")
    with threadpool_limits(1):  # per-step solves of small matrices: threads only contend
        return _fit_steps(states, actions, prior, ridge)


def _fit_steps(states: np.ndarray, actions: np.ndarray, prior: GMMPrior | None, ridge: float) -> LinearGaussianDynamics:
    N, T1, n = states.shape
    m = actions.shape[2]
    T = T1 - 1
    xu = slice(0, n + m)
    y = slice(n + m, 2 * n + m)
    A, B = np.empty((T, n, n)), np.empty((T, n, m))
    c, Sigma = np.empty((T, n)), np.empty((T, n, n))
    for t in range(T):
        points = np.concatenate([states[:, t], actions[:, t], states[:, t + 1]], axis=1)
        mean, cov = _step_moments(points, prior)
        cov[xu, xu] += ridge * np.eye(n + m)
        gain = np.linalg.solve(cov[xu, xu], cov[xu, y]).T  # [A_t B_t]: (n, n + m)
        A[t], B[t] = gain[:, :n], gain[:, n:]
        c[t] = mean[y] - gain @ mean[xu]
        residual = cov[y, y] - gain @ cov[xu, xu] @ gain.T
        Sigma[t] = 0.5 * (residual + residual.T) + 1e-10 * np.eye(n)
    x0 = states[:, 0]
    x0_cov = np.cov(x0, rowvar=False, bias=True).reshape(n, n) + 1e-8 * np.eye(n)
    return LinearGaussianDynamics(A, B, c, Sigma, x0.mean(axis=0), x0_cov)


def _step_moments(points: np.ndarray, prior: GMMPrior | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) of one step's samples points (N, d), MAP under the prior."""
    N = points.shape[0]
    mean = points.mean(axis=0)
    deviation = points - mean
    empirical = deviation.T @ deviation / N
    if prior is None:
        return mean, empirical
    mu0, Phi, m, n0 = prior.evaluate(points)
    offset = mean - mu0
    posterior_mean = (N * mean + m * mu0) / (N + m)
    posterior_cov = (Phi + N * empirical + (N * m / (N + m)) * np.outer(offset, offset)) / (N + n0)
    return posterior_mean, posterior_cov


@dataclass
class TVLGConfig:
    """Settings of a TVLGModel (`controller.dynamics` of a gps or mdgps experiment, or `forethought fit`).

    ridge: added to each step's (x, u) covariance; prior: fit a GMM prior over all (x, u, x')
    seen, with at most `clusters` components of at least `min_samples_per_cluster` samples each,
    worth `strength` pseudo-observations per step, on the `max_samples` most recent samples.
    """

    ridge: float = 1e-6
    prior: bool = True
    clusters: int = 8
    min_samples_per_cluster: int = 40
    max_samples: int = 20_000
    strength: float = 1.0
    seed: int = 0

    def make_prior(self) -> GMMPrior | None:
        """The GMM prior these settings describe (None when `prior` is off)."""
        if not self.prior:
            return None
        return GMMPrior(self.clusters, self.min_samples_per_cluster, self.max_samples, self.strength, self.seed)


class TVLGModel:
    """The DynamicsModel of time-varying linear-Gaussian fits, one per condition, with a GMM prior
    over all data seen.

    `fit(trials)` adds the trials to the prior and fits each condition's dynamics on its own trials
    (`trial.metadata["condition"]`, default 0); the experiment loop passes the latest iteration's
    trials. `apply_condition` selects the condition that predict, linearize and rollout use;
    `local(c)` is condition c's fit. Every call takes the time step: t, or t0 for rollout. A step at
    or beyond the fitted horizon uses the last fitted step, so that a receding-horizon planner can
    look past the end of the trials the model was fitted on.
    """

    capabilities = frozenset({PREDICT, LINEARIZE, ROLLOUT})
    learned = True
    fit_on = "latest_iteration"
    time_varying = True
    device = torch.device("cpu")  # where rollout's tensors live

    def __init__(self, config: TVLGConfig | None = None):
        self.config = config or TVLGConfig()
        self.prior = self.config.make_prior()
        self.conditions: dict[int, LinearGaussianDynamics] = {}
        self.condition = 0
        self.state_names: tuple[str, ...] = ()
        self.action_names: tuple[str, ...] = ()
        self._noise_factors: dict[int, np.ndarray] = {}

    @property
    def fitted(self) -> bool:
        """Whether any condition has been fitted (a controller on the model acts randomly until then)."""
        return bool(self.conditions)

    @property
    def dynamics(self) -> LinearGaussianDynamics | None:
        """The selected condition's dynamics (None before it has been fitted)."""
        return self.conditions.get(self.condition)

    def fit(self, trials: Sequence[Trial]) -> dict:
        """Fit on trials of equal horizon: the prior on all of them (grouped by condition, in order),
        then each condition's dynamics on its trials; conditions without trials here keep their fit.

        Returns {"trials", "horizon", "clusters", "conditions" (fitted now), "train_loglik" (mean
        log-density per transition of the trials under their condition's fit)}.
        """
        trials_to_arrays(trials)  # one horizon, one set of names, finite numbers
        groups: dict[int, list[Trial]] = {}
        for trial in trials:
            groups.setdefault(int(trial.metadata.get("condition", 0)), []).append(trial)
        arrays = {c: trials_to_arrays(groups[c]) for c in sorted(groups)}
        clusters = 0
        if self.prior is not None:
            states = np.concatenate([a[0] for a in arrays.values()])
            actions = np.concatenate([a[1] for a in arrays.values()])
            clusters = self.prior.update(states, actions)
        loglik = 0.0
        for c, (states, actions) in arrays.items():
            self.conditions[c] = fit_tvlg(states, actions, self.prior, self.config.ridge)
            self._noise_factors.pop(c, None)
            loglik += self.conditions[c].log_likelihood(states, actions) * len(states)
        self.state_names, self.action_names = tuple(trials[0].state_names), tuple(trials[0].action_names)
        return {
            "trials": len(trials),
            "horizon": trials[0].horizon,
            "clusters": clusters,
            "conditions": sorted(arrays),
            "train_loglik": loglik / len(trials),
        }

    def apply_condition(self, index: int, condition: dict | None = None) -> None:
        """Predict, linearize and roll out with condition `index`'s dynamics from now on (the
        condition's settings are not needed: each condition has a fit of its own)."""
        self.condition = int(index)

    def local(self, condition: int) -> LinearGaussianDynamics:
        """Condition `condition`'s fitted dynamics."""
        if condition not in self.conditions:
            fitted = ", ".join(map(str, sorted(self.conditions))) or "none"
            raise RuntimeError(
                f"TVLG model: condition {condition} has no dynamics yet (fitted: {fitted}); fit it on trials of that condition"
            )
        return self.conditions[condition]

    def _steps(self, t, rows: int, horizon: int, call: str) -> np.ndarray:
        """(rows,) time steps from t (an int or (rows,) ints), clamped to the last fitted step."""
        if t is None:
            raise ValueError(f"TVLG model: {call} needs the time step t (the model is time-varying)")
        steps = np.asarray(t)
        if steps.dtype.kind not in "iu" or steps.ndim > 1 or steps.size not in (1, rows):
            raise ValueError(f"TVLG model: t must be an int or {rows} ints, got {t!r}")
        if np.any(steps < 0):
            raise ValueError(f"TVLG model: t must not be negative, got {t!r}")
        return np.minimum(np.broadcast_to(steps.reshape(-1), (rows,)), horizon - 1)

    def _batch(self, x, u, t, call: str):
        dyn = self.local(self.condition)
        n, m = dyn.A.shape[1], dyn.B.shape[2]
        x, u, single = as_batch(x, u, n, m, "TVLG model")
        return dyn, x, u, self._steps(t, len(x), dyn.horizon, call), single

    def predict(self, x: np.ndarray, u: np.ndarray, t=None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance (B, n) of x_{t+1} for x (B, n), u (B, m) at step t (an int or (B,) ints)
        of the selected condition; a single (n,), (m,) pair gives (n,) outputs."""
        dyn, x, u, steps, single = self._batch(x, u, t, "predict")
        mean = np.einsum("bij,bj->bi", dyn.A[steps], x) + np.einsum("bij,bj->bi", dyn.B[steps], u) + dyn.c[steps]
        var = np.diagonal(dyn.Sigma[steps], axis1=1, axis2=2).copy()
        return (mean[0], var[0]) if single else (mean, var)

    def linearize(self, x: np.ndarray, u: np.ndarray, t=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(A (B, n, n), B (B, n, m), c (B, n), Sigma (B, n, n)) of step t (an int or (B,) ints) of the
        selected condition for each row of x (B, n), u (B, m); the fit is linear in each step, so the
        rows only give the batch its size. A single (n,), (m,) pair gives unbatched outputs."""
        dyn, x, _, steps, single = self._batch(x, u, t, "linearize")
        out = (dyn.A[steps], dyn.B[steps], dyn.c[steps], dyn.Sigma[steps])
        return tuple(a[0] for a in out) if single else out

    @torch.no_grad()
    def rollout(self, x0: torch.Tensor, U: torch.Tensor, generator: torch.Generator, t0=0) -> torch.Tensor:
        """States (B, H+1, n) float32 on the CPU from x0 (B, n) under U (B, H, m), the first action
        taken at step t0 (an int or (B,) ints) of the selected condition: each step draws
        x_{t+1} ~ N(A_t x_t + B_t u_t + c_t, Sigma_t) (float64 inside), random draws only from
        `generator`."""
        dyn = self.local(self.condition)
        B, H, _ = U.shape
        if self.condition not in self._noise_factors:
            self._noise_factors[self.condition] = noise_factors(dyn.Sigma)
        f64 = dict(dtype=torch.float64)
        A, Bu, c = (torch.as_tensor(a, **f64) for a in (dyn.A, dyn.B, dyn.c))
        factors = torch.as_tensor(self._noise_factors[self.condition], **f64)
        start = torch.as_tensor(self._steps(t0, B, dyn.horizon, "rollout"))
        x = x0.detach().to("cpu", torch.float64)
        actions = U.detach().to("cpu", torch.float64)
        X = torch.empty(B, H + 1, x.shape[1], dtype=torch.float32)
        X[:, 0] = x
        same = bool((start == start[0]).all())
        for k in range(H):
            draw = torch.randn(B, x.shape[1], generator=generator, **f64)
            if same:  # one step for every row: matrix products with the step's matrices
                t = min(int(start[0]) + k, dyn.horizon - 1)
                x = x @ A[t].T + actions[:, k] @ Bu[t].T + c[t] + draw @ factors[t].T
            else:
                t = torch.clamp(start + k, max=dyn.horizon - 1)
                x = (
                    torch.einsum("bij,bj->bi", A[t], x)
                    + torch.einsum("bij,bj->bi", Bu[t], actions[:, k])
                    + c[t]
                    + torch.einsum("bij,bj->bi", factors[t], draw)
                )
            X[:, k + 1] = x
        return X

    def save(self, path: str | Path) -> None:
        """Write every condition's fit, the selected condition and the prior to one .npz file."""
        if not self.conditions:
            raise RuntimeError("TVLG model: fit it on trials before saving it")
        arrays = {
            f"condition{c}_{k}": v for c, dyn in self.conditions.items() for k, v in asdict(dyn).items()
        }
        if self.prior is not None and self.prior.fitted:
            state = self.prior.state_dict()
            arrays.update({f"prior_{k}": v for k, v in state.items() if k != "config"})
        meta = {
            "model": "tvlg",
            "config": asdict(self.config),
            "state_names": self.state_names,
            "action_names": self.action_names,
            "conditions": sorted(self.conditions),
            "condition": self.condition,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "TVLGModel":
        """A model written by `save` (a file from before per-condition fits holds condition 0); ConfigError
        naming the file when it is unreadable or incomplete."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TVLG model file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in data.files if k != "meta"}
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ConfigError(f"{path}: not a readable TVLG model file ({err})") from None
        if not isinstance(meta, dict) or meta.get("model") != "tvlg":
            held = meta.get("model") if isinstance(meta, dict) else meta
            raise ConfigError(f"{path}: not a TVLG model (holds {held!r})")
        try:
            model = cls(TVLGConfig(**meta["config"]))
            prefixes = {int(c): f"condition{c}_" for c in meta.get("conditions", [])} or {0: "dynamics_"}
            for c, prefix in prefixes.items():
                fields = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
                model.conditions[c] = LinearGaussianDynamics(**fields)
            if model.prior is not None and "prior_means" in arrays:
                for key in ("samples", "weights", "means", "covariances"):
                    setattr(model.prior, key, arrays[f"prior_{key}"])
            model.condition = int(meta.get("condition", 0))
            model.state_names, model.action_names = tuple(meta["state_names"]), tuple(meta["action_names"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path}: not a complete TVLG model file ({err})") from None
        return model


def noise_factors(Sigma: np.ndarray) -> np.ndarray:
    """F (T, n, n) with F_t F_t^T = Sigma_t, from the eigendecomposition with negative rounding
    clipped to zero (a Cholesky factor would fail on a covariance that is singular to rounding)."""
    w, V = np.linalg.eigh(0.5 * (Sigma + np.swapaxes(Sigma, -1, -2)))
    return V * np.sqrt(np.clip(w, 0.0, None))[:, None, :]


def trials_to_arrays(trials: Sequence[Trial]) -> tuple[np.ndarray, np.ndarray]:
    """Stack trials of equal horizon into states (N, T+1, n), actions (N, T, m)."""
    if not trials:
        raise ValueError("no trials to fit on")
    horizons = {t.horizon for t in trials}
    if len(horizons) != 1:
        raise ValueError(f"a time-varying model needs trials of one horizon, got horizons {sorted(horizons)}")
    names = {(t.state_names, t.action_names) for t in trials}
    if len(names) != 1:
        raise ValueError("trials come from robots with different state or action names")
    return _check_batch(np.stack([t.states for t in trials]), np.stack([t.actions for t in trials]))
