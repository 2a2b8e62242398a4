"""The time-varying linear-Gaussian policy u_t = K_t x_t + k_t + noise, noise ~ N(0, covariance_t)."""

from __future__ import annotations

import numpy as np


class LinearGaussianPolicy:
    """u_t = K_t x + k_t (+ a draw from N(0, covariance_t) when `stochastic`), for t < T.

    K: (T, m, n); k: (T, m); covariance: (T, m, m) or None (deterministic only).
    X, U: the nominal trajectory (T+1, n), (T, m) the gains were computed around, if any.
    precision: inv(covariance) (T, m, m) when known (iLQR's Q_uu; guided policy search uses it).
    Noise comes from a generator seeded with `seed` at every reset, so a rollout repeats exactly.
    """

    def __init__(self, K, k, covariance=None, X=None, U=None, precision=None, stochastic: bool = False, seed: int = 0):
        self.K = np.asarray(K, dtype=np.float64)
        self.k = np.asarray(k, dtype=np.float64)
        if self.K.ndim != 3 or self.k.shape != self.K.shape[:2]:
            raise ValueError(f"K must be (T, m, n) and k (T, m), got {self.K.shape} and {self.k.shape}")
        T, m, n = self.K.shape
        self.covariance = None if covariance is None else np.asarray(covariance, dtype=np.float64)
        if self.covariance is not None and self.covariance.shape != (T, m, m):
            raise ValueError(f"covariance must be ({T}, {m}, {m}), got {self.covariance.shape}")
        self.precision = None if precision is None else np.asarray(precision, dtype=np.float64)
        self.X = None if X is None else np.asarray(X, dtype=np.float64)
        self.U = None if U is None else np.asarray(U, dtype=np.float64)
        if stochastic and self.covariance is None:
            raise ValueError("a stochastic linear-Gaussian policy needs a covariance")
        self.stochastic, self.seed = stochastic, seed
        self._chol = None if self.covariance is None else np.linalg.cholesky(self.covariance)
        self.reset()

    @classmethod
    def around(cls, X, U, K, **kwargs) -> "LinearGaussianPolicy":
        """The policy u_t = U_t + K_t (x - X_t) about the nominal X (T+1, n), U (T, m)."""
        X, U, K = (np.asarray(a, dtype=np.float64) for a in (X, U, K))
        k = U - np.einsum("tmn,tn->tm", K, X[: len(U)])
        return cls(K, k, X=X, U=U, **kwargs)

    @property
    def horizon(self) -> int:
        return len(self.k)

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        """u_t (m,) for state x (n,); t must be below the horizon T."""
        if not 0 <= t < self.horizon:
            raise ValueError(f"linear-Gaussian policy covers steps 0..{self.horizon - 1}, asked for step {t}")
        u = self.K[t] @ np.asarray(x, dtype=np.float64) + self.k[t]
        if self.stochastic:
            u = u + self._chol[t] @ self._rng.standard_normal(len(u))
        return u
