import pytest
import torch

from forethought.sim.gl_backend import choose_gl_backend

choose_gl_backend()  # a headless machine renders offscreen: chosen before any test imports mujoco

from forethought.controllers.controller import Task  # noqa: E402
from forethought.sim.mujoco_robot import MujocoRobot  # noqa: E402


class _Tripwire:
    """An object whose unpickling creates the file `marker` (what a malicious file could do instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def tripwire(tmp_path):
    """(an object that creates a file when unpickled, that file's path): for files that must not run code."""
    marker = tmp_path / "unpickled"
    return _Tripwire(marker), marker


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (small float64 GP algebra gains nothing from a second one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SLIDER = """
<mujoco>
  <option timestep="0.01"/>
  <custom><numeric name="forethought_control_steps" data="10"/></custom>
  <worldbody>
    <body name="mass">
      <joint name="x" type="slide" axis="1 0 0" damping="1"/>
      <joint name="y" type="slide" axis="0 1 0" damping="1"/>
      <geom type="sphere" size="0.05" mass="1"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="fx" joint="x" ctrlrange="-2 2"/>
    <motor name="fy" joint="y" ctrlrange="-2 2"/>
  </actuator>
</mujoco>
"""


@pytest.fixture
def slider(tmp_path):
    """A 1 kg mass on two damped slides under force control at 10 Hz, and the task of bringing it
    to the goal (0.3, -0.2) in 25 steps: (robot, Task)."""
    path = tmp_path / "slider.xml"
    path.write_text(SLIDER)
    cost = {"terms": [{"type": "state", "weights": {"x": 1.0, "y": 1.0}, "target": "goal"},
                      {"type": "action", "weights": 0.001}]}
    with MujocoRobot(path) as robot:
        yield robot, Task(horizon=25, cost=cost, conditions=({"goal": [0.3, -0.2]},), scene=str(path), seed=0)
