"""Simulated robots: MuJoCo scenes and dm_control tasks behind the Robot interface."""

from forethought.sim.gl_backend import choose_gl_backend as _choose_gl_backend

# Before anything of the stack imports mujoco: a headless machine needs an offscreen GL backend.
_choose_gl_backend()
