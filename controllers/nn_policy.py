"""A neural-network policy u = mu(x, features) trained by precision-weighted regression.

Guided policy search distils its local linear-Gaussian controllers into this policy: the targets
are the controllers' mean actions at the sampled states, each weighted by the controller's
precision inv(C_t), so the network follows closely where a controller is certain and loosely
where it explores. `features` describe the condition the policy acts in (a target or hole
position), so one network serves every condition and can be asked about unseen ones.

The policy is saved to one file and runs alone: `build_nn_policy` is the controller builder for
`controller: {type: nn_policy, path: POLICY.pt}`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from forethought.models.torch_file import as_tensor, load_torch_file
from forethought.robots.config import ConfigError, from_mapping
from forethought.robots.progress import Progress

POLICY_FILE = "nn_policy.pt"  # a run's network policy, in RUN/models/


@dataclass
class MLPPolicyConfig:
    """hidden: widths of the hidden layers (tanh); epochs: passes over the data per fit, in
    minibatches of batch_size; lr: Adam's step size; weight_decay: L2 on the weights; seed: the
    initial weights and minibatch order."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must list positive layer widths, got {self.hidden}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("epochs and batch_size must be at least 1, lr positive, weight_decay non-negative")


class MLPPolicy:
    """The network and its input and output scaling, float64 on the CPU.

    n: state size; m: action size; f: condition features (0 for none).
    cov: (m, m) the policy's action covariance, inv of the mean precision of the targets it fitted.
    angles: indices of states the network sees as (sin, cos) (placed after the other states, before
    the features), so that a pendulum's pole is one input however many turns it has made.
    squash: the output is out_mean + out_std * tanh(network) (within the bounds out_mean +- out_std:
    SAC's squashed policy, controllers/sac.py), instead of out_mean + out_std * network.
    """

    def __init__(self, n: int, m: int, f: int = 0, config: MLPPolicyConfig | None = None, names: dict | None = None,
                 angles: Sequence[int] = (), squash: bool = False):
        self.n, self.m, self.f = n, m, f
        self.angles = [int(i) for i in angles]
        self.squash = bool(squash)
        if any(not 0 <= i < n for i in self.angles) or len(set(self.angles)) != len(self.angles):
            raise ValueError(f"NN policy: angles must be distinct state indices below {n}, got {self.angles}")
        self._plain = [i for i in range(n) if i not in self.angles]
        self.config = config or MLPPolicyConfig()
        self.names = dict(names or {})
        torch.manual_seed(self.config.seed)
        layers: list[torch.nn.Module] = []
        width = n + len(self.angles) + f
        for hidden in self.config.hidden:
            layers += [torch.nn.Linear(width, hidden), torch.nn.Tanh()]
            width = hidden
        layers.append(torch.nn.Linear(width, m))
        self.net = torch.nn.Sequential(*layers).double()
        width_in = n + len(self.angles) + f
        self.in_mean, self.in_std = np.zeros(width_in), np.ones(width_in)
        self.out_mean, self.out_std = np.zeros(m), np.ones(m)
        self.cov = np.eye(m)
        self.trained = False

    def _inputs(self, x: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != self.n:
            raise ValueError(f"NN policy: states must have {self.n} entries, got shape {x.shape}")
        if self.f:
            if features is None:
                raise ValueError(f"NN policy: needs {self.f} condition features")
            features = np.broadcast_to(np.asarray(features, dtype=np.float64), (x.shape[0], self.f))
            x = np.concatenate([x, features], axis=1)
        if not np.all(np.isfinite(x)):
            raise ValueError("NN policy: state or features contain NaN or infinite values")
        return x

    def _embed(self, z: torch.Tensor) -> torch.Tensor:
        """(B, n + f) states and features -> (B, n + len(angles) + f): angles as (sin, cos)."""
        if not self.angles:
            return z
        ang = z[..., self.angles]
        return torch.cat([z[..., self._plain], torch.sin(ang), torch.cos(ang), z[..., self.n :]], dim=-1)

    def _forward(self, z: torch.Tensor) -> torch.Tensor:
        scaled = (self._embed(z) - torch.from_numpy(self.in_mean)) / torch.from_numpy(self.in_std)
        out = self.net(scaled)
        if self.squash:
            out = torch.tanh(out)
        return out * torch.from_numpy(self.out_std) + torch.from_numpy(self.out_mean)

    def mean(self, x: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Mean action (B, m) for states x (B, n) (or (n,) -> (m,)) and features (f,) or (B, f)."""
        single = np.asarray(x).ndim == 1
        with torch.no_grad():
            u = self._forward(torch.from_numpy(self._inputs(x, features))).numpy()
        return u[0] if single else u

    def linearize(self, x: np.ndarray, features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """K (B, m, n) and k (B, m) with mu(x') ~= K x' + k near each state x (B, n)."""
        z = torch.from_numpy(self._inputs(x, features))
        jac = torch.func.vmap(torch.func.jacrev(self._forward))(z)[:, :, : self.n].detach().numpy()
        with torch.no_grad():
            u = self._forward(z).numpy()
        return jac, u - np.einsum("bmn,bn->bm", jac, z[:, : self.n].numpy())

    def fit(self, x: np.ndarray, features: np.ndarray | None, u: np.ndarray, precision: np.ndarray) -> dict:
        """Minimise the mean of (mu(x_i) - u_i)' P_i (mu(x_i) - u_i) over samples.

        x: (N, n); features: (N, f) or None; u: (N, m) target actions; precision: (N, m, m).
        Returns {"loss_start", "loss_end", "samples"}; the loss is in units of the mean precision.
        """
        z = self._inputs(x, features)
        u = np.asarray(u, dtype=np.float64)
        precision = np.asarray(precision, dtype=np.float64)
        N = z.shape[0]
        if u.shape != (N, self.m) or precision.shape != (N, self.m, self.m):
            raise ValueError(f"NN policy: expected targets ({N}, {self.m}) and precisions ({N}, {self.m}, {self.m})")
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(precision))):
            raise ValueError("NN policy: targets or precisions contain NaN or infinite values")
        embedded = self._embed(torch.from_numpy(z)).numpy()
        self.in_mean = embedded.mean(axis=0)
        self.in_std = np.where(embedded.std(axis=0) > 1e-8, embedded.std(axis=0), 1.0)
        self.out_mean, self.out_std = u.mean(axis=0), np.where(u.std(axis=0) > 1e-8, u.std(axis=0), 1.0)
        # Scale precisions to unit mean trace so the step size means the same for any task.
        mean_precision = precision.mean(axis=0)
        weight = precision / (np.trace(mean_precision) / self.m)
        Z, U, W = (torch.from_numpy(a) for a in (z, u, weight))
        generator = torch.Generator().manual_seed(self.config.seed)
        optimiser = torch.optim.Adam(self.net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

        def loss_of(index) -> torch.Tensor:
            error = (self._forward(Z[index]) - U[index]) / torch.from_numpy(self.out_std)
            return torch.einsum("bi,bij,bj->b", error, W[index], error).mean()

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # minibatches of a small network: threads only contend
        try:
            with torch.no_grad():
                start = float(loss_of(slice(None)))
            progress = Progress(f"policy network fit on {N} samples", total=self.config.epochs, unit="epochs")
            for epoch in range(self.config.epochs):
                for index in torch.randperm(N, generator=generator).split(self.config.batch_size):
                    optimiser.zero_grad()
                    loss = loss_of(index)
                    loss.backward()
                    optimiser.step()
                progress.update(epoch + 1, batch_loss=loss.item())
            with torch.no_grad():
                end = float(loss_of(slice(None)))
            progress.finish(loss=end)
        finally:
            torch.set_num_threads(threads)
        self.cov = np.linalg.inv(mean_precision)
        self.cov = 0.5 * (self.cov + self.cov.T)
        self.trained = True
        return {"loss_start": start, "loss_end": end, "samples": N}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "kind": "forethought.nn_policy",
                "sizes": (self.n, self.m, self.f),
                "config": asdict(self.config),
                "names": self.names,
                "state_dict": self.net.state_dict(),
                "scaling": {k: as_tensor(getattr(self, k)) for k in ("in_mean", "in_std", "out_mean", "out_std", "cov")},
                "angles": list(self.angles),
                "squash": self.squash,
            },
            path,
        )

    def save_in(self, folder: str | Path) -> list[Path]:
        """Write the trained network to folder/POLICY_FILE, where `deploy --policy RUN` and
        `controller: {type: nn_policy}` find it (RUN/models/); [] while it is untrained."""
        if not self.trained:
            return []
        path = Path(folder) / POLICY_FILE
        self.save(path)
        return [path]

    @classmethod
    def load(cls, path: str | Path) -> "MLPPolicy":
        """A policy written by `save`; ConfigError naming the file when it is damaged, not a policy
        or holds pickled objects (only tensors and plain data are read)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"NN policy file not found: {path}")
        saved = load_torch_file(path, "an NN policy file", tag=("kind", "forethought.nn_policy"))
        try:
            n, m, f = saved["sizes"]
            policy = cls(n, m, f, MLPPolicyConfig(**saved["config"]), saved["names"],
                         angles=saved.get("angles", ()), squash=saved.get("squash", False))
            policy.net.load_state_dict(saved["state_dict"])
            for key in ("in_mean", "in_std", "out_mean", "out_std", "cov"):
                setattr(policy, key, np.asarray(saved["scaling"][key], dtype=np.float64))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:  # missing entries, wrong shapes
            raise ConfigError(f"{path}: a damaged NN policy file ({type(err).__name__}: {err})") from None
        policy.trained = True
        return policy


class NNPolicy:
    """The Policy (act, reset) of an MLPPolicy in one condition.

    features: (f,) the condition's features; noise: whether to add N(0, cov) exploration noise,
    drawn from a generator seeded at every reset by the seed and the resets so far (the first
    trial's by the seed alone), so successive trials differ, a rerun repeats them, and trial k's
    noise does not depend on how many numbers the trials before it drew (scripts/rollouts.py).
    """

    def __init__(self, mlp: MLPPolicy, features: np.ndarray | None = None, noise: bool = False, seed: int = 0):
        self.mlp, self.noise, self.seed = mlp, noise, seed
        self.features = None if features is None else np.asarray(features, dtype=np.float64)
        self._resets = 0
        self._rng = np.random.default_rng(seed)
        self._chol = np.linalg.cholesky(mlp.cov + 1e-12 * np.eye(mlp.m))

    def reset(self) -> None:
        self._resets += 1
        self._rng = np.random.default_rng(self.seed if self._resets == 1 else [self.seed, self._resets - 1])

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        u = self.mlp.mean(x, self.features)
        if self.noise:
            u = u + self._chol @ self._rng.standard_normal(self.mlp.m)
        return u


def condition_features(condition: dict, keys: Sequence[str]) -> np.ndarray:
    """The numbers a condition gives for `keys`, concatenated: e.g. {"target": [x, y, z]} -> (3,)."""
    parts = []
    for key in keys:
        if key not in condition:
            raise ConfigError(f"condition {condition} has no '{key}' (the policy's features are {list(keys)})")
        value = np.asarray(condition[key], dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(value)):
            raise ConfigError(f"condition key '{key}' is not finite: {condition[key]}")
        parts.append(value)
    return np.concatenate(parts) if parts else np.zeros(0)


@dataclass
class NNPolicyParams:
    """controller: {type: nn_policy, path: POLICY.pt, noise: false}. The features the policy was
    trained on are read from the file and taken from each condition of the experiment."""

    path: str
    noise: bool = False


class NNPolicyController:
    """Runs a saved NN policy alone; `update` learns nothing."""

    checkpoint_attributes = ("_runs",)  # what a run's checkpoint keeps (scripts/checkpoint.py)

    def __init__(self, mlp: MLPPolicy, conditions: Sequence[dict], noise: bool = False, seed: int = 0):
        keys = mlp.names.get("features", [])
        self.mlp, self.noise, self.seed = mlp, noise, seed
        self.features = [condition_features(c, keys) for c in conditions]
        self._runs = 0

    def policy(self, condition: int) -> NNPolicy:
        self._runs += 1
        return NNPolicy(self.mlp, self.features[condition], self.noise, self.seed + 1000 * self._runs + condition)

    def update(self, trials) -> dict[str, float]:
        return {}


def build_nn_policy(params: dict, robot, task, model=None) -> NNPolicyController:
    config = from_mapping(NNPolicyParams, params, "controller:")
    mlp = MLPPolicy.load(config.path)
    if (mlp.n, mlp.m) != (robot.spec.n, robot.spec.m):
        raise ConfigError(
            f"{config.path}: the policy takes {mlp.n} states to {mlp.m} actions, the robot has {robot.spec.n} and {robot.spec.m}"
        )
    return NNPolicyController(mlp, task.conditions, config.noise, task.seed)
