"""Offscreen rendering of a MuJoCo scene along a trajectory, and writing the frames as a video.

Rendering needs an OpenGL context; without a display `forethought.sim` selects Mesa's software
renderer (MUJOCO_GL=osmesa) before MuJoCo loads, unless MUJOCO_GL is already set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import imageio
import imageio.v3 as iio
import mujoco
import numpy as np

from forethought.robots.trial import Trial
from forethought.sim.mujoco_robot import state_names


def _qpos_sequence(model: mujoco.MjModel, trajectory: Trial | np.ndarray) -> np.ndarray:
    """(T, nq) joint positions from a trial (states = qpos then qvel) or an array whose rows begin with qpos."""
    if isinstance(trajectory, Trial):
        expected = state_names(model)[: model.nq]
        if trajectory.state_names[: model.nq] != expected:
            raise ValueError(
                f"the trial's states do not begin with the scene's qpos {list(expected)[:4]}..., "
                f"got {list(trajectory.state_names[:4])}..."
            )
        return trajectory.states[:, : model.nq]
    qpos = np.asarray(trajectory, dtype=np.float64)
    if qpos.ndim != 2 or qpos.shape[1] < model.nq or len(qpos) == 0:
        raise ValueError(f"qpos sequence must have shape (T, {model.nq}) or wider, got {qpos.shape}")
    if not np.all(np.isfinite(qpos[:, : model.nq])):
        raise ValueError("qpos sequence has NaN or infinite values")
    return qpos[:, : model.nq]


def framing_camera(model: mujoco.MjModel, data: mujoco.MjData) -> mujoco.MjvCamera:
    """A free camera looking at the centre of the scene's bodies (mocap targets included), from the side.

    Only body origins count, not the world's geoms, so a large floor does not push the camera away.
    """
    points = data.xpos[1:]
    if len(points) == 0:
        points = np.zeros((1, 3))
    low, high = points.min(axis=0), points.max(axis=0)
    camera = mujoco.MjvCamera()
    camera.type = mujoco.mjtCamera.mjCAMERA_FREE
    camera.lookat[:] = (low + high) / 2
    # The bounding box of body origins misses the outer geoms: add a margin, and keep a minimum size.
    camera.distance = 2.2 * max(float(np.linalg.norm(high - low)), 0.15)
    camera.azimuth, camera.elevation = 135.0, -25.0
    return camera


def _camera(model: mujoco.MjModel, data: mujoco.MjData, camera) -> mujoco.MjvCamera | int | str:
    """The camera to render from: the given one, else the scene's first, else a framing free camera."""
    if camera is None:
        return 0 if model.ncam > 0 else framing_camera(model, data)
    if isinstance(camera, str) and mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        raise ValueError(f"no camera named '{camera}' in the scene (it has {names})")
    if isinstance(camera, (int, np.integer)) and not 0 <= camera < model.ncam:
        raise ValueError(f"camera index {camera} out of range: the scene has {model.ncam} cameras")
    return camera


def render_frames(
    model: mujoco.MjModel,
    trajectory: Trial | np.ndarray,
    camera=None,
    width: int = 640,
    height: int = 480,
    mocap_pos: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Render the scene at each joint configuration of `trajectory`.

    trajectory: a Trial whose states begin with qpos, or an array (T, >= nq) whose rows begin with qpos.
    camera: a camera name or index in the scene, an mjvCamera, or None for the scene's first camera
        (a free camera framing the scene when it has none).
    mocap_pos: (nmocap, 3) m, positions of the mocap bodies (a reach target), default the scene's.
    Returns T frames (height, width, 3) uint8. The scene's offscreen buffer grows to fit width x height.
    """
    qpos = _qpos_sequence(model, trajectory)
    data = mujoco.MjData(model)
    if mocap_pos is not None:
        mocap_pos = np.asarray(mocap_pos, dtype=np.float64)
        if mocap_pos.shape != (model.nmocap, 3):
            raise ValueError(f"mocap_pos must have shape ({model.nmocap}, 3), got {mocap_pos.shape}")
        data.mocap_pos[:] = mocap_pos
    data.qpos[:] = qpos[0]
    mujoco.mj_forward(model, data)
    view = _camera(model, data, camera)
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    frames = []
    with mujoco.Renderer(model, height=height, width=width) as renderer:
        for q in qpos:
            data.qpos[:] = q
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera=view)
            frames.append(renderer.render().copy())
    return frames


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> Path:
    """Write frames (H, W, 3) uint8 as an MP4 (H.264) at `path`, or as a GIF beside it when ffmpeg fails.

    Returns the path written: `path`, or `path` with the suffix .gif.
    """
    if len(frames) == 0:
        raise ValueError(f"{path}: no frames to write")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".gif":
        try:
            # yuv420p wants even sides; macro_block_size=2 pads at most one pixel instead of rescaling.
            with imageio.get_writer(
                path, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                macro_block_size=2, ffmpeg_log_level="error",
            ) as writer:
                for frame in frames:
                    writer.append_data(np.asarray(frame, dtype=np.uint8))
            # The writer does not check how ffmpeg exited: probe the file it should have left.
            if not path.is_file() or path.stat().st_size == 0:
                raise OSError("ffmpeg wrote nothing")
            iio.immeta(path)
            return path
        except Exception:  # a missing or failing ffmpeg raises OSError, IndexError, RuntimeError, ...
            path.unlink(missing_ok=True)
            path = path.with_suffix(".gif")
    iio.imwrite(path, np.stack(frames).astype(np.uint8), extension=".gif", duration=1000.0 / fps, loop=0)
    return path


def render_trial_video(
    model: mujoco.MjModel,
    trial: Trial,
    path: str | Path,
    camera=None,
    width: int = 640,
    height: int = 480,
    max_fps: float = 30.0,
    mocap_pos: np.ndarray | None = None,
) -> Path:
    """Render `trial` in real time (states subsampled to at most max_fps) and write it; returns the file."""
    qpos = _qpos_sequence(model, trial)
    stride = max(1, int(np.ceil(1.0 / (trial.dt * max_fps))))
    frames = render_frames(model, qpos[::stride], camera, width, height, mocap_pos)
    return write_video(frames, path, fps=1.0 / (trial.dt * stride))
