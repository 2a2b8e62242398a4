"""PILCO's dynamics model: one Gaussian process per state dimension, batched, with exact moment matching.

Each output a is an independent GP on the state difference x_{t+1,a} - x_{t,a} with a zero mean and
a squared-exponential kernel with ARD length-scales, all E outputs one batched gpytorch ExactGP in
float64. The inputs are the state, with angles fed as (sin, cos) pairs instead (PILCO's gTrig),
followed by the action: [plain states, sin angles, cos angles, actions]. Nothing is standardised:
the hyperparameters are fitted on, and the posterior predicts, the same raw units.

Hyperparameters come from L-BFGS on the negative log marginal likelihood plus a penalty that keeps
the signal-to-noise ratio and the length-scales (relative to each input's spread) from extremes,
so that the kernel matrix stays well conditioned; the first start is the data's own scales, the
others random perturbations of it, and each output keeps its best start. The noise variance has a
floor. Beyond `inducing` transitions the model turns sparse: a space-filling subset of the inputs
serves as inducing inputs shared by all outputs, the hyperparameters are fitted on it, and the
posterior is the projected-process (DTC/VFE) one given every transition.

After a fit the posterior is cached once: beta (E, N) and iK (E, N, N) such that the posterior mean
is k(x, X) beta and the latent variance signal - k(x, X) iK k(X, x) (for the sparse model X are the
inducing inputs). `propagate` moment-matches a Gaussian over (state, action) through it exactly.
A Cholesky factorisation that fails is retried with growing jitter and the event is logged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import gpytorch
import numpy as np
import torch

from forethought.models.capabilities import LINEARIZE, PREDICT, PROPAGATE, ROLLOUT
from forethought.models.dynamics_model import as_batch
from forethought.models.gp.kernel import (
    DTYPE,
    BatchedGP,
    CholeskyError,
    exact_computations,
    farthest_points,
    robust_cholesky,
    se_kernel,
)
from forethought.models.gp.lbfgs import is_numerical, minimize_lbfgs
from forethought.models.jacobians import row_jacobians
from forethought.models.moment_matching import augment_with_trig, se_moment_match, uncertainty_weights
from forethought.models.torch_file import load_torch_file
from forethought.models.torch_threads import one_torch_thread
from forethought.robots.config import ConfigError
from forethought.robots.progress import Progress
from forethought.robots.trial import Trial

log = logging.getLogger(__name__)


@dataclass
class GPConfig:
    """angle_states: state names fed as (sin, cos) pairs; restarts: random starts besides the data's own
    scales; max_iter: L-BFGS iterations per start; noise_floor: least noise variance (targets' units^2);
    max_snr: signal std / noise std beyond which the penalty rises; max_lengthscale_ratio: how far (as a
    factor either way) a length-scale may stray from its input's std before the penalty rises;
    inducing: number of shared inducing inputs, used once there are more transitions (0: never sparse);
    seed: for the random starts; states, actions: the robot's states and actions the GP models (default:
    all; PILCO learns a policy over a subset, as on the arm)."""

    angle_states: list[str] = field(default_factory=list)
    restarts: int = 2
    max_iter: int = 100
    noise_floor: float = 1e-8
    max_snr: float = 1000.0
    max_lengthscale_ratio: float = 100.0
    inducing: int = 300
    states: list[str] | None = None
    actions: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.restarts < 0 or self.max_iter < 1:
            raise ValueError(f"restarts must be >= 0 and max_iter >= 1, got {self.restarts} and {self.max_iter}")
        if not self.noise_floor >= 0:
            raise ValueError(f"noise_floor must not be negative, got {self.noise_floor}")
        if not (self.max_snr > 1 and self.max_lengthscale_ratio > 1):
            raise ValueError("max_snr and max_lengthscale_ratio must exceed 1")
        if self.inducing < 0:
            raise ValueError(f"inducing must not be negative, got {self.inducing}")


# -- the dynamics model -----------------------------------------------------------------------------


class GPModel:
    """PILCO's GP dynamics model over the named states and actions (see the module docstring).

    state_names, action_names: the model's state x (n,) and action u (m,), looked up by name in the
    trials it is fitted on (so a model may cover part of a robot's state). Offers predict, linearize
    (through the posterior mean, by autograd), rollout (particles sampled from the predictive
    distribution) and propagate (exact moment matching); refitted on every trial so far.
    """

    capabilities = frozenset({PREDICT, LINEARIZE, ROLLOUT, PROPAGATE})
    learned = True
    fit_on = "all_trials"
    device = torch.device("cpu")  # where rollout's tensors live

    def __init__(self, state_names: Sequence[str], action_names: Sequence[str], config: GPConfig | None = None):
        self.state_names = tuple(state_names)
        self.action_names = tuple(action_names)
        self.config = config or GPConfig()
        unknown = [a for a in self.config.angle_states if a not in self.state_names]
        if unknown:
            raise ValueError(f"angle_states {unknown} are not states of the model ({', '.join(self.state_names)})")
        self.n, self.m = len(self.state_names), len(self.action_names)
        angles = [self.state_names.index(a) for a in self.config.angle_states]
        self.angle_index = torch.tensor(angles, dtype=torch.long)
        self.plain_index = torch.tensor([i for i in range(self.n) if i not in angles], dtype=torch.long)
        k = len(angles)
        # GP input z = [plain x, sin, cos, u] from the trig-augmented [x, sin x_a, cos x_a, u].
        self._z_index = torch.cat([self.plain_index, torch.arange(self.n, self.n + 2 * k + self.m)])
        self.input_dim = len(self._z_index)
        self.fitted = False
        self.sparse = False
        self.jitter = 0.0

    # -- data ----------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """GP inputs (B, D) = [plain states, sin angles, cos angles, actions] for x (B, n), u (B, m)."""
        angles = x[..., self.angle_index]
        return torch.cat([x[..., self.plain_index], torch.sin(angles), torch.cos(angles), u], dim=-1)

    def transitions(self, trials: Sequence[Trial]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (x_t, u_t, x_{t+1}) of the trials in the model's names: (N, n), (N, m), (N, n)."""
        if not trials:
            raise ValueError("GP: no trials to fit on")
        xs, us, ys = [], [], []
        for i, trial in enumerate(trials):
            names = list(trial.state_names)
            missing = [s for s in self.state_names if s not in names] + [
                a for a in self.action_names if a not in trial.action_names
            ]
            if missing:
                raise ValueError(f"GP: trial {i} has no entries named {missing}")
            si = [names.index(s) for s in self.state_names]
            ai = [list(trial.action_names).index(a) for a in self.action_names]
            states, actions = trial.states[:, si], trial.actions[:, ai]
            if not (np.all(np.isfinite(states)) and np.all(np.isfinite(actions))):
                raise ValueError(f"GP: trial {i} has NaN or infinite states or actions")
            xs.append(states[:-1])
            us.append(actions)
            ys.append(states[1:])
        return np.concatenate(xs), np.concatenate(us), np.concatenate(ys)

    # -- fitting ---------------------------------------------------------------------------------------
    @one_torch_thread()
    def fit(self, trials: Sequence[Trial]) -> dict:
        """Fit the hyperparameters on the transitions of `trials` and cache the posterior (on one torch
        thread: models.torch_threads).

        Exact model: the marginal likelihood of every transition. Sparse model (more transitions than
        `inducing`): the inducing inputs are a space-filling subset of the inputs (farthest-point
        order in std-scaled input space, so rare states such as the goal region stay covered), the
        hyperparameters maximise the exact marginal likelihood of that subset, and the posterior is
        the projected-process (DTC/VFE) one given every transition.
        The first start is the previous fit's hyperparameters (if any), then the data's own scales,
        then `restarts` random perturbations of them. Returns diagnostics: transitions, sparse (0/1),
        nlml (per fitted transition), fit_s, jitter, and per output the length-scales, signal and noise std.
        """
        start = time.perf_counter()
        x, u, y = self.transitions(trials)
        X = self.features(torch.as_tensor(x, dtype=DTYPE), torch.as_tensor(u, dtype=DTYPE))
        Y = torch.as_tensor(y - x, dtype=DTYPE).T.contiguous()  # (E, N) state differences
        N, cfg = X.shape[0], self.config
        input_std = X.std(dim=0).clamp_min(1e-6) if N > 1 else torch.ones(X.shape[1], dtype=DTYPE)
        self.sparse = cfg.inducing > 0 and N > cfg.inducing
        subset = farthest_points(X / input_std, cfg.inducing) if self.sparse else torch.arange(N)
        X_fit, Y_fit = X[subset], Y[:, subset]

        best_loss, best_state = None, None
        starts = self._starts(X_fit, Y_fit, input_std)
        progress = Progress(f"GP fit on {N} transitions", unit="evaluations")
        for index, (ell, sf, sn) in enumerate(starts):
            progress.values["start"] = f"{index + 1}/{len(starts)}"
            gp = BatchedGP(X_fit.expand(Y.shape[0], -1, -1), Y_fit, cfg.noise_floor)
            self._initialise(gp, ell, sf, sn)
            loss = self._objective(gp, input_std)
            with exact_computations():
                minimize_lbfgs(lambda: loss().sum(), list(gp.parameters()), cfg.max_iter, progress=progress)
                with torch.no_grad():
                    try:
                        per_output = loss()
                    except RuntimeError as err:
                        if not is_numerical(err):
                            raise
                        log.warning("GP fit: start %d ended where the kernel matrix cannot be factorised", index)
                        continue
            state = {k: v.detach().clone() for k, v in gp.state_dict().items()}
            if best_loss is None:
                best_loss, best_state = per_output, state
                continue
            better = per_output < best_loss  # the outputs are independent: each keeps its own best start
            best_loss = torch.where(better, per_output, best_loss)
            for key, _ in gp.named_parameters():  # every parameter is per output: (E, ...)
                mask = better.reshape((-1,) + (1,) * (state[key].dim() - 1))
                best_state[key] = torch.where(mask, state[key], best_state[key])
        if best_state is None:
            raise CholeskyError("GP fit: every start ended where the kernel matrix cannot be factorised")

        self.gp = BatchedGP(X_fit.expand(Y.shape[0], -1, -1), Y_fit, cfg.noise_floor)
        self.gp.load_state_dict(best_state)
        self.gp.eval()
        self._X, self._Y, self._subset = X, Y, subset
        self._cache()
        self.fitted = True
        progress.values.pop("start", None)
        progress.finish(best=float(best_loss.sum()) / X_fit.shape[0])
        return {
            "transitions": N,
            "sparse": int(self.sparse),
            "nlml": float(best_loss.sum()) / X_fit.shape[0],
            "fit_s": time.perf_counter() - start,
            "jitter": self.jitter,
            "lengthscales": self.lengthscales.tolist(),
            "signal_std": self.signal_var.sqrt().tolist(),
            "noise_std": self.noise_var.sqrt().tolist(),
        }

    def _starts(self, X: torch.Tensor, Y: torch.Tensor, input_std: torch.Tensor):
        """(length-scales (D,) or (E, D), signal std (E,), noise std (E,)) to start L-BFGS from."""
        target_std = Y.std(dim=1).clamp_min(1e-6) if Y.shape[1] > 1 else torch.ones(Y.shape[0], dtype=DTYPE)
        starts = []
        if self.fitted and self.lengthscales.shape[1] == X.shape[1]:
            starts.append((self.lengthscales, self.signal_var.sqrt(), self.noise_var.sqrt()))
        starts.append((input_std, target_std, 0.1 * target_std))
        generator = torch.Generator().manual_seed(self.config.seed)
        for _ in range(self.config.restarts):
            noise = torch.randn(2, dtype=DTYPE, generator=generator)
            spread = torch.exp(0.5 * torch.randn(X.shape[1], dtype=DTYPE, generator=generator))
            starts.append((input_std * spread, target_std * math.exp(0.3 * noise[0]), target_std * math.exp(-1.5 + noise[1])))
        return starts

    @staticmethod
    def _initialise(gp: BatchedGP, ell: torch.Tensor, sf: torch.Tensor, sn: torch.Tensor) -> None:
        E = sf.shape[0]
        floor = float(gp.likelihood.noise_covar.raw_noise_constraint.lower_bound)
        gp.covar_module.base_kernel.lengthscale = ell.expand(E, -1).reshape(E, 1, -1).clone()
        gp.covar_module.outputscale = (sf**2).clone()
        gp.likelihood.noise = torch.clamp(sn**2, min=2.0 * floor + 1e-300).reshape(E, 1)

    def _objective(self, gp: BatchedGP, input_std: torch.Tensor):
        """loss() -> (E,): negative log marginal likelihood plus the conditioning penalty."""
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)
        gp.train()
        N = gp.train_targets.shape[-1]
        log_ratio = math.log(self.config.max_lengthscale_ratio)
        log_snr = math.log(self.config.max_snr)

        def loss() -> torch.Tensor:
            output = gp(*gp.train_inputs)
            nlml = -mll(output, gp.train_targets) * N
            ell = torch.log(gp.lengthscales) - torch.log(input_std)
            snr = 0.5 * (torch.log(gp.signal_var) - torch.log(gp.noise_var))
            # A steep but smooth wall: negligible inside the allowed range, dominant beyond it.
            penalty = ((ell / log_ratio) ** 30).sum(-1) + (snr / log_snr) ** 30
            return nlml + penalty

        return loss

    def set_hyperparameters(self, lengthscales: torch.Tensor | None = None, signal_var: torch.Tensor | None = None,
                            noise_var: torch.Tensor | None = None) -> None:
        """Replace some hyperparameters of a fitted model ((E, D), (E,), (E,)) and recompute the posterior."""
        self._require_fit()
        with torch.no_grad():
            E = self.n
            if lengthscales is not None:
                self.gp.covar_module.base_kernel.lengthscale = torch.as_tensor(lengthscales, dtype=DTYPE).reshape(E, 1, -1)
            if signal_var is not None:
                self.gp.covar_module.outputscale = torch.as_tensor(signal_var, dtype=DTYPE).reshape(E)
            if noise_var is not None:
                self.gp.likelihood.noise = torch.as_tensor(noise_var, dtype=DTYPE).reshape(E, 1)
        self._cache()

    def _cache(self) -> None:
        """beta, iK and the moment-matching weights from the fitted hyperparameters (once per fit)."""
        gp, X, Y = self.gp, self._X, self._Y
        with torch.no_grad():
            self.lengthscales = gp.lengthscales.detach().clone()
            self.signal_var = gp.signal_var.detach().clone()
            self.noise_var = gp.noise_var.detach().clone()
            E = Y.shape[0]
            eye_n = torch.eye(X.shape[0], dtype=DTYPE)
            if not self.sparse:
                self.inputs = X
                K = se_kernel(X, X, self.lengthscales, self.signal_var) + self.noise_var[:, None, None] * eye_n
                L, self.jitter = robust_cholesky(K, "the GP kernel matrix")
                self.inv_k = torch.cholesky_inverse(L)
                self.beta = torch.cholesky_solve(Y[..., None], L)[..., 0]
                self._factors = (L, None)
            else:
                Z = X[self._subset]
                self.inputs = Z
                eye_m = torch.eye(Z.shape[0], dtype=DTYPE)
                Kuu = se_kernel(Z, Z, self.lengthscales, self.signal_var)
                Luu, jitter_u = robust_cholesky(Kuu, "the inducing-input kernel matrix")
                Kuf = se_kernel(Z, X, self.lengthscales, self.signal_var)
                sn = self.noise_var.sqrt()[:, None, None]
                A = torch.linalg.solve_triangular(Luu, Kuf, upper=False) / sn  # (E, M, N)
                LB, jitter_b = robust_cholesky(eye_m + A @ A.transpose(-1, -2), "the sparse posterior")
                inv_uu = torch.cholesky_inverse(Luu)
                # beta = Luu^-T B^-1 A y / sn; iK = Kuu^-1 - Luu^-T B^-1 Luu^-1.
                c = torch.cholesky_solve(A @ Y[..., None], LB) / sn
                self.beta = torch.linalg.solve_triangular(Luu.transpose(-1, -2), c, upper=True)[..., 0]
                Linv = torch.linalg.solve_triangular(Luu, eye_m.expand(E, -1, -1), upper=False)
                self.inv_k = inv_uu - Linv.transpose(-1, -2) @ torch.cholesky_solve(Linv, LB)
                self._factors = (Luu, LB)
                self.jitter = max(jitter_u, jitter_b)
            self.inv_k = 0.5 * (self.inv_k + self.inv_k.transpose(-1, -2))
            self.weights = uncertainty_weights(self.beta, self.inv_k)

    # -- prediction ----------------------------------------------------------------------------------
    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError("GP: the model has not been fitted (call fit(trials) first)")

    def posterior(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and latent variance of the state difference at GP inputs z (B, D): (B, E) each."""
        self._require_fit()
        k = se_kernel(self.inputs, z, self.lengthscales, self.signal_var, expanded=True)  # (E, N, B)
        mean = (self.beta[:, None, :] @ k)[:, 0].T
        # k iK k from triangular solves (no explicit inverse): |L^-1 k|^2, less |LB^-1 Luu^-1 k|^2 if sparse.
        first, second = self._factors
        a = torch.linalg.solve_triangular(first, k, upper=False)
        explained = (a * a).sum(-2)
        if second is not None:
            b = torch.linalg.solve_triangular(second, a, upper=False)
            explained = explained - (b * b).sum(-2)
        var = self.signal_var[:, None] - explained
        return mean, var.clamp_min(0.0).T

    def predict(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Next-state mean (B, n) and variance (B, n) (latent plus noise) for x (B, n), u (B, m);
        a single (n,), (m,) pair gives (n,) outputs."""
        self._require_fit()
        x, u, single = as_batch(x, u, self.n, self.m, "GPModel")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(u))):
            raise ValueError("GP: predict got NaN or infinite states or actions")
        with torch.no_grad():
            xt = torch.as_tensor(x, dtype=DTYPE)
            mean, var = self.posterior(self.features(xt, torch.as_tensor(u, dtype=DTYPE)))
            mean, var = (xt + mean).numpy(), (var + self.noise_var).numpy()
        return (mean[0], var[0]) if single else (mean, var)

    def mean_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The posterior mean of the next state (B, n) for x (B, n), u (B, m), float64, differentiable;
        the kernel from exact differences, as in the fit."""
        self._require_fit()
        k = se_kernel(self.inputs, self.features(x, u), self.lengthscales, self.signal_var)  # (E, N, B)
        return x + (self.beta[:, None, :] @ k)[:, 0].T

    def linearize(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The next state about each row as A x + B u + c with noise covariance Sigma, float64:
        A (B, n, n), B (B, n, m), c (B, n), Sigma (B, n, n); a single (n,), (m,) pair gives unbatched
        outputs.

        A and B are the exact derivatives of the posterior mean by autograd; c puts predict's mean at
        the row itself; Sigma is predict's variance (latent plus noise) on the diagonal.
        """
        mean, var = self.predict(x, u)
        x2, u2, single = as_batch(x, u, self.n, self.m, "GPModel")
        A, B = (j.numpy() for j in row_jacobians(self.mean_step, torch.as_tensor(x2), torch.as_tensor(u2)))
        mean, var = np.atleast_2d(mean), np.atleast_2d(var)
        c = mean - np.einsum("bij,bj->bi", A, x2) - np.einsum("bij,bj->bi", B, u2)
        Sigma = var[:, :, None] * np.eye(self.n)
        return (A[0], B[0], c[0], Sigma[0]) if single else (A, B, c, Sigma)

    @torch.no_grad()
    def rollout(self, x0: torch.Tensor, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """States (B, H+1, n) float32 on the CPU from x0 (B, n) under actions U (B, H, m).

        Each particle steps by a draw x_{t+1} ~ N(mean, var) from the GP's predictive distribution
        (latent plus noise variance, independent per state) at its own state and action: one batched
        posterior evaluation (float64) per step, random draws only from `generator`.
        """
        self._require_fit()
        B, H, _ = U.shape
        x = x0.detach().to("cpu", DTYPE)
        actions = U.detach().to("cpu", DTYPE)
        X = torch.empty(B, H + 1, self.n, dtype=torch.float32)
        X[:, 0] = x
        for t in range(H):
            mean, var = self.posterior(self.features(x, actions[:, t]))
            draw = torch.randn(B, self.n, generator=generator, dtype=DTYPE)
            x = x + mean + torch.sqrt(var + self.noise_var) * draw
            X[:, t + 1] = x
        return X

    def propagate(self, mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Moment-match a Gaussian over (x, u) through the model to the next state.

        mean: (B, n+m), cov: (B, n+m, n+m). Returns the next state's mean (B, n), covariance
        (B, n, n) and the input-output covariance Cov[(x, u), x_next] (B, n+m, n). Differentiable.
        The next state is x + f(z) with f the latent GP (no observation noise) at the moment-matched
        Gaussian over the GP inputs z; Cov[(x, u), f] = Cov[(x, u), z] C, exact where z is linear in (x, u).
        """
        self._require_fit()
        nm = self.n + self.m
        aug_mean, aug_cov = augment_with_trig(mean, cov, self.angle_index)
        # [x, u, sin, cos] -> [x, sin, cos, u], the order `propagate_augmented` takes.
        order = torch.cat([torch.arange(self.n), torch.arange(nm, aug_mean.shape[1]), torch.arange(self.n, nm)])
        next_mean, next_cov, cross = self.propagate_augmented(aug_mean[:, order], aug_cov[:, order[:, None], order[None, :]])
        inverse = torch.argsort(order)[:nm]
        return next_mean, next_cov, cross[:, inverse]

    def propagate_augmented(self, mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`propagate` from a Gaussian over y = [x, sin x_a, cos x_a, u] (B, n+2k+m) whose trig entries
        are already moment matched (a rollout matches them once per step, for policy and model alike).

        Returns the next state's mean (B, n), covariance (B, n, n) and Cov[y, x_next] (B, n+2k+m, n).
        """
        self._require_fit()
        n, z = self.n, self._z_index
        delta = se_moment_match(mean[:, z], cov[:, z[:, None], z[None, :]], self.inputs, self.beta,
                                self.lengthscales, self.signal_var, self.weights)
        cross_delta = cov[:, :, z] @ delta.C  # Cov[y, delta]: (B, n+2k+m, n)
        next_mean = mean[:, :n] + delta.mean
        next_cov = cov[:, :n, :n] + delta.cov + cross_delta[:, :n] + cross_delta[:, :n].transpose(-1, -2)
        next_cov = 0.5 * (next_cov + next_cov.transpose(-1, -2))
        return next_mean, next_cov, cov[:, :, :n] + cross_delta

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the fitted model (names, config, training data, hyperparameters) to `path` (.pt)."""
        self._require_fit()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "state_names": list(self.state_names),
            "action_names": list(self.action_names),
            "config": asdict(self.config),
            **self.checkpoint_state(),
        }
        torch.save(state, path)

    def checkpoint_state(self) -> dict:
        """What the fit learned, as plain data and tensors ({} before the first fit): the training
        data, the subset fitted on and the hyperparameters (the posterior is recomputed from them)."""
        if not self.fitted:
            return {}
        return {"sparse": self.sparse, "X": self._X, "Y": self._Y, "subset": self._subset,
                "gp": {k: v.detach() for k, v in self.gp.state_dict().items()}}

    def restore_checkpoint(self, state: dict) -> None:
        """Put back what `checkpoint_state` gave (on a model built with the same names and config)."""
        if not state:
            return
        X, Y, sparse = state["X"], state["Y"], bool(state["sparse"])
        subset = state["subset"]
        self.gp = BatchedGP(X[subset].expand(Y.shape[0], -1, -1), Y[:, subset], self.config.noise_floor)
        self.gp.load_state_dict(state["gp"])
        self.gp.eval()
        self._X, self._Y, self._subset, self.sparse = X, Y, subset, sparse
        self._cache()
        self.fitted = True

    @classmethod
    def load(cls, path: str | Path) -> "GPModel":
        """A model written by `save`; the cached posterior is recomputed from the saved hyperparameters."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GP model file")
        state = load_torch_file(path, "a GP model file")
        try:
            model = cls(state["state_names"], state["action_names"], GPConfig(**state["config"]))
            model.restore_checkpoint({k: state[k] for k in ("sparse", "X", "Y", "subset", "gp")})
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:  # missing entries, wrong shapes
            raise ConfigError(f"{path}: a damaged GP model file ({type(err).__name__}: {err})") from None
        return model
