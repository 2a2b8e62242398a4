"""report.html: written at the end of every run, self-contained, and what headless Chromium shows of it."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forethought.robots.config import ConfigError
from forethought.scripts.cli import main
from forethought.scripts.experiment import load_experiment
from forethought.scripts.report import write_report
from forethought.scripts.run import run_experiment

from test_sampling_mpc import ENSEMBLE, PETS, PLANNER, slider_experiment

SCREENSHOTS = Path(os.environ["FORETHOUGHT_SCREENSHOTS"]) if os.environ.get("FORETHOUGHT_SCREENSHOTS") else None
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium_screenshot(page: Path, png: Path, tmp_path: Path, size=(1200, 3000)) -> Image.Image:
    """A screenshot of `page` opened from the file system by Debian's headless Chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (make setup installs Debian's chromium)")
    profile = tmp_path / "chromium-profile"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                    f"--screenshot={png}", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return Image.open(png).convert("RGB")


def section(page: str, ident: str) -> str:
    match = re.search(rf'<section id="{ident}">(.*?)</section>', page, re.S)
    assert match, f"no section {ident}"
    return match.group(1)


def embedded_png(fragment: str) -> Image.Image:
    """The PNG a section embeds as a data URI (it must decode and not be blank)."""
    match = re.search(r'src="data:image/png;base64,([^"]+)"', fragment)
    assert match, "no embedded PNG"
    image = Image.open(io.BytesIO(base64.b64decode(match.group(1)))).convert("L")
    assert image.width > 200 and image.height > 150
    assert np.asarray(image).std() > 10  # lines, text and axes, not one flat colour
    return image


def check_report(folder: Path, tmp_path: Path, trials: int) -> Image.Image:
    """The report has the success table (one row per trial, verdicts by the goal), the learning
    curve and the cost terms as embedded PNGs, opens from the file system without anything online,
    and Chromium's screenshot of it is a page of plots and tables, not a blank one."""
    page = (folder / "report.html").read_text()
    summary = json.loads((folder / "summary.json").read_text())
    table = re.search(r'<table id="success-table">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr class=\"(success|missed)\">", table)
    assert len(rows) == trials
    assert [r == "success" for r in rows] == summary["success"]
    embedded_png(section(page, "learning-curve"))
    embedded_png(section(page, "cost-terms"))
    assert 'id="cost-terms-table"' in page and 'id="trajectories"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing to fetch: it opens offline
    for ref in re.findall(r'src="([^"]+)"', page):
        assert ref.startswith("data:") or (folder / ref).is_file()
    shot = chromium_screenshot(folder / "report.html", tmp_path / f"{folder.name}.png", tmp_path)
    if SCREENSHOTS is not None:  # to look at them: FORETHOUGHT_SCREENSHOTS=DIR pytest tests/test_report.py
        shot.save(SCREENSHOTS / f"{folder.name}.png")
    pixels = np.asarray(shot)
    assert shot.size == (1200, 3000)
    not_white = (pixels < 235).any(axis=2)
    assert not_white.mean() > 0.02  # text, tables and plots on the page (a blank one: 0)
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 100  # plots' colours, not a flat page
    # The success table, the learning curve and the cost terms come first: ink in the first screenful.
    assert not_white[:1000].mean() > 0.02
    return shot


def test_arm_reach_ilqr_report(tmp_path):
    experiment = load_experiment("arm-reach-ilqr")
    experiment.task.horizon = 40  # a shorter trial: the report's content does not depend on its length
    run = run_experiment(experiment, tmp_path / "runs")
    assert (run.folder / "report.html").is_file()  # written by the run itself
    check_report(run.folder, tmp_path, trials=3)
    page = (run.folder / "report.html").read_text()
    if (run.folder / "last_trial.mp4").is_file():
        assert '<video controls width="640" src="last_trial.mp4">' in page
    assert "site ee within 0.01 of target at the end" in page
    assert "arm-reach-ilqr" in section(page, "config")
    assert "cpu_kernels" in section(page, "machine")


def test_report_of_several_iterations_uses_the_run_plots(tmp_path):
    """Three iterations of sampling MPC on the slider: the run's learning_curve.png is the one shown."""
    path = slider_experiment(tmp_path, "{type: mujoco, timestep: 0.05}", PLANNER, iterations=3)
    run = run_experiment(load_experiment(path), tmp_path / "runs")
    page = (run.folder / "report.html").read_text()
    png = base64.b64encode((run.folder / "learning_curve.png").read_bytes()).decode()
    assert png in section(page, "learning-curve")
    check_report(run.folder, tmp_path, trials=3)
    assert "replans" in section(page, "diagnostics")


def test_report_of_a_learned_model(tmp_path):
    """PETS on the slider (sampling MPC through the ensemble): the report adds the model's errors."""
    path = slider_experiment(tmp_path, ENSEMBLE, PETS, iterations=3)
    try:
        experiment = load_experiment(path)
    except ConfigError as err:
        pytest.skip(f"the ensemble cannot plan here yet: {err}")
    run = run_experiment(experiment, tmp_path / "runs")
    check_report(run.folder, tmp_path, trials=3)
    page = (run.folder / "report.html").read_text()
    embedded_png(section(page, "model-errors"))
    assert "model_one_step_rmse" in section(page, "diagnostics")


def test_report_command_rewrites_the_page_and_prints_its_path(tmp_path, capsys):
    path = slider_experiment(tmp_path, "{type: mujoco, timestep: 0.05}", PLANNER)
    run = run_experiment(load_experiment(path), tmp_path / "runs")
    (run.folder / "report.html").unlink()
    assert main(["report", str(run.folder)]) == 0
    assert capsys.readouterr().out.strip() == str(run.folder / "report.html")
    assert "success-table" in (run.folder / "report.html").read_text()


def test_report_of_a_folder_that_is_no_run_names_it(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}/summary.json: not a run folder" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json: not valid JSON" in capsys.readouterr().err


def test_report_of_a_run_stopped_early_says_so(tmp_path, monkeypatch):
    """Ctrl-C in the second trial: the run keeps its summary of the first, and the report says it stopped."""
    from forethought.sim.mujoco_robot import MujocoRobot

    step, calls = MujocoRobot.step, []

    def interrupted_step(self, u):
        calls.append(1)
        if len(calls) == 35:
            raise KeyboardInterrupt
        return step(self, u)

    monkeypatch.setattr(MujocoRobot, "step", interrupted_step)
    path = slider_experiment(tmp_path, "{type: mujoco, timestep: 0.05}", PLANNER, iterations=2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_experiment(path), tmp_path / "runs")
    folder = next((tmp_path / "runs").iterdir())
    assert not (folder / "report.html").exists()
    page = write_report(folder).read_text()
    assert "The run stopped early" in page
    assert len(re.findall(r'<tr class="(?:success|missed)">', page)) == 1
