"""Offscreen rendering: frames show the scene and follow the trajectory; videos are written and readable."""

import imageio.v3 as iio
import mujoco
import numpy as np
import pytest

from forethought.robots.trial import Trial
from forethought.sim.mujoco_robot import MujocoRobot
from forethought.sim.render import render_frames, render_trial_video, write_video
from forethought.sim.scenes import scene_names

# A blue arm swinging about y and a red mocap target, with no camera of its own.
SCENE = """
<mujoco>
  <visual><headlight ambient="0.4 0.4 0.4" diffuse="0.6 0.6 0.6"/></visual>
  <worldbody>
    <geom type="plane" size="5 5 0.1" rgba="0.5 0.5 0.5 1"/>
    <body name="link" pos="0 0 0.5">
      <joint name="hinge" type="hinge" axis="0 1 0"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03" rgba="0 0 1 1"/>
    </body>
    <body name="target" mocap="true" pos="0.3 0 0.2">
      <geom type="sphere" size="0.04" rgba="1 0 0 1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
</mujoco>
"""


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_string(SCENE)


def colour_mask(frame: np.ndarray, channel: int) -> np.ndarray:
    """Pixels where `channel` clearly dominates the other two."""
    f = frame.astype(int)
    others = [c for c in range(3) if c != channel]
    return (f[..., channel] > 100) & (f[..., channel] > 2 * f[..., others].max(axis=-1))


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def test_the_framing_camera_shows_the_arm_and_the_target_and_frames_follow_the_joints(model):
    qpos = np.array([[0.0], [0.0], [-1.2]])
    frames = render_frames(model, qpos, width=160, height=120)
    assert len(frames) == 3 and frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8
    assert frames[0].std() > 10  # not a blank image
    arm, target = colour_mask(frames[0], 2), colour_mask(frames[0], 0)
    assert arm.sum() > 30 and target.sum() > 10  # both in view
    np.testing.assert_array_equal(frames[0], frames[1])  # same configuration, same picture
    moved = colour_mask(frames[2], 2)
    assert np.linalg.norm(centroid(moved) - centroid(arm)) > 5  # the arm swung in the picture


def test_mocap_positions_move_the_target_in_the_picture(model):
    home = render_frames(model, np.zeros((1, 1)), width=160, height=120)[0]
    moved = render_frames(model, np.zeros((1, 1)), width=160, height=120, mocap_pos=[[0.0, 0.0, 0.9]])[0]
    assert np.linalg.norm(centroid(colour_mask(home, 0)) - centroid(colour_mask(moved, 0))) > 5


def test_bad_trajectories_and_cameras_are_named(model):
    with pytest.raises(ValueError, match=r"shape \(T, 1\)"):
        render_frames(model, np.zeros(3))
    with pytest.raises(ValueError, match="no camera named 'wrist'"):
        render_frames(model, np.zeros((1, 1)), camera="wrist")
    trial = Trial(np.zeros((2, 2)), np.zeros((1, 1)), [0, 0.1], [0, 0], ("cart", "d_cart"), ("u",), 0.1)
    with pytest.raises(ValueError, match="do not begin with the scene's qpos"):
        render_frames(model, trial)


@pytest.mark.skipif("so101_reach" not in scene_names(), reason="no arm reach scene")
def test_an_arm_trial_becomes_a_readable_mp4_at_its_own_rate(tmp_path):
    robot = MujocoRobot("so101_reach")
    x0 = robot.reset(seed=0)
    states = np.repeat(x0[None], 13, axis=0)
    states[:, 1] += np.linspace(0, 0.8, 13)  # shoulder_lift sweeps
    dt = 0.05
    trial = Trial(states, np.zeros((12, robot.spec.m)), np.arange(13) * dt, np.zeros(13),
                  robot.spec.state_names, robot.spec.action_names, dt)
    path = render_trial_video(robot.model, trial, tmp_path / "last_trial.mp4", width=160, height=120)
    assert path == tmp_path / "last_trial.mp4"
    video = iio.imread(path, index=None)
    assert video.shape == (13, 120, 160, 3)
    assert iio.immeta(path)["fps"] == pytest.approx(20)
    assert video[0].std() > 10 and np.abs(video[-1].astype(int) - video[0]).mean() > 1  # the arm moved
    # At 100 Hz the video keeps every fourth state: 25 fps, still real time.
    fast = Trial(states, trial.actions, np.arange(13) * 0.01, np.zeros(13), trial.state_names, trial.action_names, 0.01)
    path = render_trial_video(robot.model, fast, tmp_path / "fast.mp4", width=160, height=120)
    assert iio.imread(path, index=None).shape[0] == 4 and iio.immeta(path)["fps"] == pytest.approx(25)


def test_write_video_writes_an_mp4_that_imageio_reads_back(tmp_path):
    frames = [np.full((48, 64, 3), 40 * i, dtype=np.uint8) for i in range(6)]
    path = write_video(frames, tmp_path / "clip.mp4", fps=12)
    assert path == tmp_path / "clip.mp4"
    video = iio.imread(path, index=None)
    assert video.shape == (6, 48, 64, 3)
    np.testing.assert_allclose(video[:, 24, 32, 0], [0, 40, 80, 120, 160, 200], atol=6)


def test_without_a_working_ffmpeg_the_video_falls_back_to_a_gif(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/bin/false")  # an ffmpeg that exits at once
    frames = [np.full((48, 64, 3), 40 * i, dtype=np.uint8) for i in range(4)]
    path = write_video(frames, tmp_path / "clip.mp4", fps=10)
    assert path == tmp_path / "clip.gif" and not (tmp_path / "clip.mp4").exists()
    gif = iio.imread(path, index=None)
    assert gif.shape[0] == 4
    assert iio.immeta(path)["duration"] == 100  # ms per frame at 10 fps
