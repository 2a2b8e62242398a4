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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

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
    """The DynamicsModel of a time-varying linear-Gaussian fit with a GMM prior over all data seen.

    `fit(trials)` adds the trials to the prior and refits every step from these trials (the GPS
    loop passes one iteration's samples of one condition). Predictions need the time index t.
    """

    time_varying = True

    def __init__(self, config: TVLGConfig | None = None):
        self.config = config or TVLGConfig()
        self.prior = self.config.make_prior()
        self.dynamics: LinearGaussianDynamics | None = None
        self.state_names: tuple[str, ...] = ()
        self.action_names: tuple[str, ...] = ()

    def fit(self, trials: Sequence[Trial]) -> dict:
        """Fit on trials of equal horizon; returns {"trials", "horizon", "clusters", "train_loglik"}."""
        states, actions = trials_to_arrays(trials)
        clusters = self.prior.update(states, actions) if self.prior is not None else 0
        self.dynamics = fit_tvlg(states, actions, self.prior, self.config.ridge)
        self.state_names, self.action_names = trials[0].state_names, trials[0].action_names
        return {
            "trials": len(trials),
            "horizon": self.dynamics.horizon,
            "clusters": clusters,
            "train_loglik": self.dynamics.log_likelihood(states, actions),
        }

    def _require_fit(self) -> LinearGaussianDynamics:
        if self.dynamics is None:
            raise RuntimeError("TVLG model: fit it on trials before using it")
        return self.dynamics

    def predict(self, x: np.ndarray, u: np.ndarray, t=None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of x_{t+1} for x (B, n) or (n,), u (B, m) or (m,), t an int or (B,) ints."""
        dyn = self._require_fit()
        if t is None:
            raise ValueError("TVLG model: predict needs the time step t (the model is time-varying)")
        x = np.asarray(x, dtype=np.float64)
        u = np.asarray(u, dtype=np.float64)
        single = x.ndim == 1
        x, u = np.atleast_2d(x), np.atleast_2d(u)
        n, m = dyn.A.shape[1], dyn.B.shape[2]
        if x.shape[1:] != (n,) or u.shape[1:] != (m,) or x.shape[0] != u.shape[0]:
            raise ValueError(f"TVLG model: expected x (B, {n}) and u (B, {m}), got {x.shape} and {u.shape}")
        steps = np.broadcast_to(np.asarray(t, dtype=int), (x.shape[0],))
        if np.any(steps < 0) or np.any(steps >= dyn.horizon):
            raise ValueError(f"TVLG model: t must lie in [0, {dyn.horizon}), got {t}")
        mean = np.einsum("bij,bj->bi", dyn.A[steps], x) + np.einsum("bij,bj->bi", dyn.B[steps], u) + dyn.c[steps]
        var = np.diagonal(dyn.Sigma[steps], axis1=1, axis2=2).copy()
        return (mean[0], var[0]) if single else (mean, var)

    def linearize(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-step (A (T, n, n), B (T, n, m), c (T, n), Sigma (T, n, n)) along x (T or T+1, n), u (T, m).

        The fit is already linear in each step, so the nominal only has to span the fitted horizon.
        """
        dyn = self._require_fit()
        u = np.asarray(u)
        if u.ndim != 2 or u.shape[0] != dyn.horizon:
            raise ValueError(f"TVLG model: linearize needs actions for its {dyn.horizon} steps, got {u.shape}")
        return dyn.A, dyn.B, dyn.c, dyn.Sigma

    def save(self, path: str | Path) -> None:
        """Write the fit and the prior to one .npz file."""
        dyn = self._require_fit()
        arrays = {f"dynamics_{k}": v for k, v in asdict(dyn).items()}
        if self.prior is not None and self.prior.fitted:
            state = self.prior.state_dict()
            arrays.update({f"prior_{k}": v for k, v in state.items() if k != "config"})
        meta = {"model": "tvlg", "config": asdict(self.config), "state_names": self.state_names, "action_names": self.action_names}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "TVLGModel":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TVLG model file not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("model") != "tvlg":
                raise ValueError(f"{path}: not a TVLG model (holds {meta.get('model')!r})")
            model = cls(TVLGConfig(**meta["config"]))
            model.dynamics = LinearGaussianDynamics(
                **{k[len("dynamics_") :]: data[k] for k in data.files if k.startswith("dynamics_")}
            )
            if model.prior is not None and "prior_means" in data.files:
                for key in ("samples", "weights", "means", "covariances"):
                    setattr(model.prior, key, data[f"prior_{key}"])
        model.state_names, model.action_names = tuple(meta["state_names"]), tuple(meta["action_names"])
        return model


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
