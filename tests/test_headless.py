"""A run on a machine without a display: MuJoCo's GL backend is chosen for it, or the run goes on
without a video and says why in one line; output to a log has no carriage returns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forethought.sim import gl_backend


def headless_env(**extra) -> dict:
    """This environment without a display and without a chosen GL backend."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env.update(extra)
    return env


def forethought(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "import sys; from forethought.scripts.cli import main; sys.exit(main())", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


def run_folder(root: Path) -> Path:
    (folder,) = root.iterdir()
    return folder


def test_a_run_without_display_or_mujoco_gl_writes_its_video(tmp_path):
    done = forethought(["run", "arm-reach-ilqr", "--horizon", "10", "--out", str(tmp_path / "runs")],
                       headless_env(), tmp_path)
    assert done.returncode == 0, done.stderr
    folder = run_folder(tmp_path / "runs")
    assert (folder / "last_trial.mp4").stat().st_size > 1000
    assert (folder / "summary.json").is_file() and len(list((folder / "trials").glob("*.h5"))) == 3
    assert "\r" not in done.stderr + done.stdout  # not a terminal: plain lines
    assert "warning" not in done.stderr


def test_without_any_gl_backend_the_run_warns_once_and_writes_everything_else(tmp_path):
    done = forethought(["run", "arm-reach-ilqr", "--horizon", "5", "--out", str(tmp_path / "runs")],
                       headless_env(MUJOCO_GL="disable"), tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "no video" in warnings[0] and "MUJOCO_GL" in warnings[0]
    assert "Traceback" not in done.stderr
    folder = run_folder(tmp_path / "runs")
    assert not (folder / "last_trial.mp4").exists()
    for name in ("summary.json", "config.yaml", "trajectories.png", "cost_terms.png"):
        assert (folder / name).is_file(), name


@pytest.fixture
def fresh_choice(monkeypatch):
    monkeypatch.setattr(gl_backend, "_unavailable", None)
    monkeypatch.setattr(sys, "platform", "linux")


def test_the_first_headless_backend_that_works_is_chosen_egl_first(fresh_choice):
    tried = []

    def probe(backend, code):
        tried.append(backend)
        return backend == "osmesa"

    env = {}
    assert gl_backend.choose_gl_backend(env, probe) == "osmesa"
    assert tried == ["egl", "osmesa"] and env == {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
    env = {}
    assert gl_backend.choose_gl_backend(env, lambda backend, code: True) == "egl" and env["MUJOCO_GL"] == "egl"


def test_a_users_choice_or_a_display_is_left_alone(fresh_choice):
    def probe(backend, code):
        raise AssertionError("no probe when there is nothing to choose")

    env = {"MUJOCO_GL": "glfw"}
    assert gl_backend.choose_gl_backend(env, probe) == "glfw" and env == {"MUJOCO_GL": "glfw"}
    env = {"DISPLAY": ":0"}
    assert gl_backend.choose_gl_backend(env, probe) is None and env == {"DISPLAY": ":0"}


def test_with_no_backend_rendering_is_disabled_with_the_reason_and_the_fix(fresh_choice, monkeypatch):
    env = {}
    assert gl_backend.choose_gl_backend(env, lambda backend, code: False) is None
    assert env["MUJOCO_GL"] == "disable"
    why = gl_backend.rendering_unavailable()
    assert "EGL and OSMesa failed" in why and "libosmesa6" in why and "MUJOCO_GL" in why


def test_the_probes_find_a_backend_on_this_machine():
    """The real probes (ctypes in a subprocess) on this machine, which has Mesa's EGL and OSMesa."""
    works = {backend: gl_backend._probe(backend, code) for backend, code in gl_backend._PROBES}
    assert any(works.values()), works
