"""Probabilistic neural-network ensemble (PETS): E Gaussian MLPs over the state change.

All members run in one batched pass: a layer's weights are an (E, in, out) tensor applied with
`torch.baddbmm` (network). `EnsembleModel` (model) fits, predicts, linearizes through the elites'
mean and rolls particles out; its planning kernel `EnsembleDynamics` (planning) carries whole
batches of action sequences by trajectory sampling (TS1, TSinf) or by propagating the expectation.
"""

from forethought.models.ensemble.config import DTYPES, PROPAGATIONS, EnsembleConfig, native_bfloat16, resolve_device
from forethought.models.ensemble.model import EnsembleModel, gaussian_nll
from forethought.models.ensemble.network import EnsembleNetwork, Normaliser, soft_bound_logvar
from forethought.models.ensemble.planning import EnsembleDynamics

__all__ = [
    "DTYPES",
    "PROPAGATIONS",
    "EnsembleConfig",
    "EnsembleDynamics",
    "EnsembleModel",
    "EnsembleNetwork",
    "Normaliser",
    "gaussian_nll",
    "native_bfloat16",
    "resolve_device",
    "soft_bound_logvar",
]
