"""A live view of a run: MuJoCo's passive viewer on the robot's own model and data, synced every step.

`ViewedRobot` wraps a MuJoCo robot (a scene or a dm_control task) and passes everything through to
it; after each `step` it syncs the viewer, which draws the scene from the robot's own MjData (the
target markers included, as each condition moves them) with the trial and step written in a
corner, and then waits out the rest of the control period, so the run plays at the control rate
(never faster; a slower controller shows as it is). The viewer only reads the robot's state: the
trials are the same as without it. Closing the window raises `ViewerClosed` at the next step, which
ends the run as a Ctrl-C does, with the trials so far kept.

The viewer needs a display (X11 or Wayland, or Xvfb) and an OpenGL driver for it; `view_unavailable`
says why not before anything opens.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np


class ViewerClosed(Exception):
    """The viewer's window was closed: the run stops, its trials so far kept."""


def view_unavailable(environ=os.environ) -> str | None:
    """Why no viewer window can open here (one line), or None when it may."""
    if sys.platform.startswith("linux") and not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        return "no display to open the viewer on (DISPLAY is not set; on a server, run under xvfb-run)"
    backend = environ.get("MUJOCO_GL", "").strip().lower()
    if backend in ("egl", "osmesa") or backend in ("disable", "disabled", "off", "false", "0"):
        return f"MUJOCO_GL={environ['MUJOCO_GL']} renders offscreen only: unset it (or set glfw) for the viewer"
    return None


def _frame(viewer, model, data) -> None:
    """Point the viewer's free camera as the scene's first camera looks (the run's video), a little
    farther back so that a window of any shape shows the whole arm; without one, frame the scene's
    bodies and targets. The mouse moves it from there."""
    import mujoco

    from forethought.sim.render import framing_camera

    camera = framing_camera(model, data)
    if model.ncam > 0:
        scratch = mujoco.MjData(model)
        mujoco.mj_forward(model, scratch)
        position = scratch.cam_xpos[0]
        forward = -scratch.cam_xmat[0].reshape(3, 3)[:, 2]  # a camera looks along its -z
        reach = max(float(np.dot(np.asarray(camera.lookat) - position, forward)), 0.1)
        camera.lookat[:] = position + reach * forward
        camera.distance = 1.3 * reach
        camera.azimuth = float(np.degrees(np.arctan2(forward[1], forward[0])))
        camera.elevation = float(np.degrees(np.arcsin(np.clip(forward[2], -1.0, 1.0))))
    with viewer.lock():
        viewer.cam.lookat[:] = camera.lookat
        viewer.cam.distance = camera.distance
        viewer.cam.azimuth, viewer.cam.elevation = camera.azimuth, camera.elevation


class ViewedRobot:
    """`robot` (with `model` and `data`: a MujocoRobot or DmControlRobot) shown live in MuJoCo's
    passive viewer. trials: how many the run will have (for the overlay); realtime: wait out each
    control period (False: as fast as the run goes)."""

    def __init__(self, robot, trials: int | None = None, realtime: bool = True):
        import mujoco.viewer

        why = view_unavailable()
        if why is not None:
            raise RuntimeError(why)
        if not (hasattr(robot, "model") and hasattr(robot, "data")):
            raise ValueError(f"{type(robot).__name__} has no MuJoCo model to view")
        self.robot, self.trials, self.realtime = robot, trials, realtime
        self.trial, self.t = 0, 0
        self._next = 0.0
        before = set(threading.enumerate())
        self.viewer = mujoco.viewer.launch_passive(robot.model, robot.data, show_left_ui=False, show_right_ui=False)
        # The viewer's thread, to wait for on close: it draws from the robot's model and data until it ends.
        self._thread = next((t for t in threading.enumerate() if t not in before), None)
        _frame(self.viewer, robot.model, robot.data)

    def __getattr__(self, name):  # everything else is the robot's
        return getattr(self.robot, name)

    def _show(self) -> None:
        if not self.viewer.is_running():
            raise ViewerClosed("the viewer's window was closed")
        import mujoco

        of = f"/{self.trials}" if self.trials else ""
        self.viewer.set_texts((mujoco.mjtFontScale.mjFONTSCALE_150, mujoco.mjtGridPos.mjGRID_TOPLEFT,
                               f"trial {self.trial}{of}", f"step {self.t}"))
        self.viewer.sync()

    def reset(self, seed: int | None = None) -> np.ndarray:
        x = self.robot.reset(seed=seed)
        self.trial, self.t = self.trial + 1, 0
        self._show()
        self._next = time.perf_counter() + self.robot.spec.dt
        return x

    def step(self, u) -> np.ndarray:
        x = self.robot.step(u)
        self.t += 1
        self._show()
        if self.realtime:
            wait = self._next - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        self._next = max(self._next, time.perf_counter()) + self.robot.spec.dt  # late: the next period from now
        return x

    def close(self) -> None:
        try:
            self.viewer.close()
            if self._thread is not None:
                self._thread.join(timeout=10.0)
        finally:
            self.robot.close()

    def __enter__(self) -> "ViewedRobot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
