"""Dynamics models: a GP as in PILCO, time-varying linear-Gaussian, a probabilistic ensemble, MuJoCo itself."""

from forethought.models.dynamics_model import DynamicsModel, MissingCapability, require

__all__ = ["DynamicsModel", "MissingCapability", "require"]
