"""Progress of long work: a status line on a terminal, plain lines with times in a log."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

from forethought.robots.progress import LOGGER, Progress
from forethought.scripts.status_line import StatusLine, show_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_rewrites_on_a_terminal_and_prints_plain_lines_elsewhere():
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        line = StatusLine(stream, interval_s=0.0)
        line.show("step 1")
        line.show("step 2")
        line.finish("trial 1 done")
    assert terminal.getvalue() == "\rstep 1\rstep 2\r" + "trial 1 done".ljust(60) + "\n"
    assert log.getvalue() == "trial 1 done\n"  # no running status in a log unless asked for
    log = io.StringIO()
    line = StatusLine(log, show_every_s=0.0)
    line.show("  step 1   ")
    line.finish("done")
    assert log.getvalue() == "step 1\ndone\n"


def test_progress_reports_reach_the_line_and_totals_stay(monkeypatch):
    log = io.StringIO()
    handler = show_progress(StatusLine(log, show_every_s=0.0))
    try:
        with Progress("GP fit on 40 transitions", total=3, unit="iterations") as progress:
            for i in range(3):
                monkeypatch.setattr(progress, "_last", float("-inf"))  # every report passes the rate limit
                progress.update(i + 1, loss=1.0 / (i + 1))
        lines = log.getvalue().splitlines()
    finally:
        LOGGER.removeHandler(handler)
    assert lines[0].startswith("GP fit on 40 transitions: 1/3 iterations, loss 1, ")
    assert lines[-1].startswith("GP fit on 40 transitions: 3/3 iterations, loss 0.3333, ") and lines[-1].endswith(" s")
    assert len(lines) == 4 and "\r" not in log.getvalue()


def test_a_failed_piece_of_work_reports_no_total(caplog):
    with caplog.at_level(logging.DEBUG, logger=LOGGER.name):
        try:
            with Progress("ensemble fit", total=10) as progress:
                progress.update(1)
                raise ArithmeticError
        except ArithmeticError:
            pass
    assert [r.progress_final for r in caplog.records] == [False]


PILCO_SHORT = """
robot: {scene: pendulum}
task:
  horizon: 10
  cost: {terms: [{type: saturating, weights: {pole: 1.0}, target: {pole: 3.14159}, angles: [pole], sigma: 0.25}]}
model: {type: gp, angle_states: [pole], restarts: 0, max_iter: 20}
controller:
  type: pilco
  start: {mean: [0, 0], std: 0.1}
  policy: {kind: rbf, basis: 5}
  optimiser: {max_iter: 5}
loop: {iterations: 2, samples: 1, seed: 0, video: false}
"""


def test_a_pilco_run_logged_to_a_file_states_each_updates_progress(tmp_path):
    """`forethought run ... > log.txt`: no carriage returns; each trial and update a line with its time,
    the GP fit and the policy optimisation each with their totals (the pendulum, shortened)."""
    config = tmp_path / "pilco-short.yaml"
    config.write_text(PILCO_SHORT)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    with open(tmp_path / "log.txt", "w") as log:
        done = subprocess.run([sys.executable, "-c", "import sys; from forethought.scripts.cli import main; sys.exit(main())",
                               "run", str(config), "--out", str(tmp_path / "runs")],
                              stdout=log, stderr=subprocess.STDOUT, env=env, timeout=900)
    text = (tmp_path / "log.txt").read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    lines = text.splitlines()
    for iteration in (1, 2):
        assert any(line.startswith(f"update after iteration {iteration}/2: done in ") for line in lines), text
        assert any(line.startswith(f"iteration {iteration}/2  condition 0  sample 0: cost ") and line.endswith(" s)")
                   for line in lines), text
    assert sum(line.startswith("GP fit on ") and "evaluations" in line for line in lines) >= 2, text
    # the model is refitted after every iteration; the policy is not optimised after the last one
    assert sum(line.startswith("PILCO policy optimisation: ") and "evaluations, best " in line for line in lines) == 1, text
