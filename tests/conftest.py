import os

import pytest
import torch

from forethought.sim.gl_backend import choose_gl_backend

choose_gl_backend()  # a headless machine renders offscreen: chosen before any test imports mujoco

from forethought.controllers.controller import Task  # noqa: E402
from forethought.models import torch_threads  # noqa: E402
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


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_for_the_suite():
    """The suite runs on one torch thread, whichever tests run and in whatever order (the machine's
    cores are shared, and a second thread that is not scheduled stalls each small operation:
    models/torch_threads.py); the count is restored when the session ends. Test modules never set
    it at import, which would leak into every module collected after them."""
    with torch_threads.one_torch_thread():
        yield


@pytest.fixture(autouse=True)
def restore_global_state():
    """Whatever a test changes of the process's torch thread count and environment variables is
    put back after it, so that no test depends on the ones that ran before it."""
    threads, environ = torch.get_num_threads(), dict(os.environ)
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module, started as a sweep starts its own; the sweeps and
    rollouts of the module find it running. Its modules are xdist_group("ray") (Makefile)."""
    import ray

    from forethought.scripts.sweep import start_ray

    assert start_ray(None, 2)
    yield ray
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (small float64 GP algebra gains nothing from a second one);
    the thread count is restored after it."""
    with torch_threads.one_torch_thread():
        yield


class FakeClock:
    """The `time` module as a planner or logger sees it, advanced by hand: budgets are tested on
    this clock, never on the wall clock (a loaded machine would stretch the real one)."""

    def __init__(self, monkeypatch):
        self.now, self._monkeypatch = 1000.0, monkeypatch

    def perf_counter(self) -> float:
        return self.now

    monotonic = perf_counter

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def install(self, module) -> "FakeClock":
        """Replace `module.time` by this clock for the test."""
        self._monkeypatch.setattr(module, "time", self)
        return self


@pytest.fixture
def fake_clock(monkeypatch):
    """A FakeClock; `fake_clock.install(module)` puts it in place of that module's `time`."""
    return FakeClock(monkeypatch)


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
