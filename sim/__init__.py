"""Simulated robots: MuJoCo scenes and dm_control tasks behind the Robot interface."""

import os as _os

# Offscreen rendering without a display needs a software GL; set it before mujoco picks one.
if not _os.environ.get("DISPLAY") and "MUJOCO_GL" not in _os.environ:
    _os.environ["MUJOCO_GL"] = "osmesa"
    _os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
