"""Controllers and the policies they produce: iLQR/LQG, guided policy search, MPC, PILCO."""

from forethought.controllers.controller import Controller, Task

__all__ = ["Controller", "Task"]
