"""`forethought run --view` under Xvfb: the viewer shows the arm and its target, the trials are the
same as without it, and closing the window stops the run with its trials kept."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forethought.robots.trial_log import load_trials
from forethought.scripts.cli import main

pytestmark = pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="no xvfb-run here (make setup installs xvfb)")

HORIZON = "30"  # short trials: what the view shows does not depend on their length

# Runs `forethought run` with --view in a process of its own (on Xvfb's display). At step 20 of
# trial `shoot` it grabs the screen until the viewer has drawn the scene (the arm's yellow and the
# target's red are there), and at step 5 of trial `close` it closes the window.
VIEWED_RUN = textwrap.dedent("""
    import os, sys, time
    from PIL import ImageGrab
    import numpy as np
    from forethought.scripts.cli import main
    from forethought.sim import viewer

    out, shot, shoot, close = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    step = viewer.ViewedRobot.step

    def drawn(image):
        rgb = np.asarray(image.convert("RGB")).astype(int)
        yellow = (rgb[..., 0] > 150) & (rgb[..., 1] > 120) & (rgb[..., 2] < 80)
        red = (rgb[..., 0] > 150) & (rgb[..., 1] < 70) & (rgb[..., 2] < 70)
        return yellow.sum() > 200 and red.sum() > 20

    def watched_step(self, u):
        x = step(self, u)
        if self.trial == shoot and self.t == 20:
            deadline = time.monotonic() + 60
            image = ImageGrab.grab(xdisplay=os.environ["DISPLAY"])
            while not drawn(image) and time.monotonic() < deadline:
                time.sleep(0.2)
                image = ImageGrab.grab(xdisplay=os.environ["DISPLAY"])
            image.save(shot)
        if self.trial == close and self.t == 5:
            self.viewer.close()
        return x

    viewer.ViewedRobot.step = watched_step
    sys.exit(main(["run", "arm-reach-ilqr", "--view", "--horizon", "%s", "--no-video", "--out", out]))
""" % HORIZON)


def viewed_run(tmp_path: Path, name: str, shoot: int, close: int) -> tuple[subprocess.CompletedProcess, Path]:
    out, shot = tmp_path / name, tmp_path / f"{name}.png"
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    done = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 800x600x24", sys.executable, "-c", VIEWED_RUN,
                           str(out), str(shot), str(shoot), str(close)],
                          capture_output=True, text=True, timeout=600, env=env)
    return done, out


def colour_fractions(path: Path) -> tuple[float, float]:
    """Fractions of the screen in the arm's yellow and in the target's red."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    yellow = (rgb[..., 0] > 150) & (rgb[..., 1] > 120) & (rgb[..., 2] < 80)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 70) & (rgb[..., 2] < 70)
    return yellow.mean(), red.mean()


def test_view_shows_the_arm_and_target_and_leaves_the_trials_as_they_are(tmp_path):
    done, out = viewed_run(tmp_path, "viewed", shoot=2, close=0)
    assert done.returncode == 0, done.stderr
    yellow, red = colour_fractions(tmp_path / "viewed.png")
    assert yellow > 0.001 and red > 0.0001, (yellow, red)  # the arm and the target marker on screen
    viewed, problems = load_trials([out])
    assert not problems and len(viewed) == 3

    plain = tmp_path / "plain"
    assert main(["run", "arm-reach-ilqr", "--horizon", HORIZON, "--no-video", "--out", str(plain)]) == 0
    unviewed, _ = load_trials([plain])
    for a, b in zip(viewed, unviewed):
        assert np.array_equal(a.states, b.states) and np.array_equal(a.actions, b.actions)


def test_closing_the_window_stops_the_run_and_keeps_its_trials(tmp_path):
    done, out = viewed_run(tmp_path, "closed", shoot=0, close=2)
    assert done.returncode == 0, done.stderr
    assert "the viewer was closed" in done.stderr
    folder = next(out.iterdir())
    trials, problems = load_trials([folder])
    assert not problems
    assert [t.complete for t in trials] == [True, False]  # the first whole, the second as far as it went
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["complete"] is False and summary["trials"] == 1


def test_view_without_a_display_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["run", "arm-reach-ilqr", "--view", "--out", str(tmp_path)]) == 2
    assert "--view: no display" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
