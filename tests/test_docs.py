"""The README and the docs stay true: the README's commands run as pasted, its generated blocks are
current, the how-tos' examples run, and the results render from benchmark JSON.

A fenced shell block of the README whose first line is `# hardware` (an arm, or the emulator in a
second terminal), `# display` (opens a window) or `# long` (minutes or more) is not run here; every
other block runs, in order, in a fresh folder, as a person pasting it after `make demo` would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "docs" / "examples"
SKIP_MARKERS = ("# hardware", "# display", "# long")

sys.path.insert(0, str(ROOT / "docs" / "tools"))

import bench_results  # noqa: E402
import readme_blocks  # noqa: E402


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_marks_what_it_does_not_run():
    blocks = shell_blocks(README.read_text())
    marked = [b for b in blocks if b.startswith(SKIP_MARKERS)]
    assert marked and len(marked) < len(blocks)
    for block in blocks:  # a comment first line is a marker: only the known ones
        first = block.splitlines()[0]
        if first.startswith("#"):
            assert first.startswith(SKIP_MARKERS), first


def test_readme_commands_run_as_pasted(tmp_path):
    """Every unmarked shell block, in order, in a fresh folder whose .venv is this one."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    ran = 0
    for block in shell_blocks(README.read_text()):
        if block.startswith(SKIP_MARKERS):
            continue
        if "runs/" in block and not (tmp_path / "runs").exists():  # what `make demo` leaves
            subprocess.run(["forethought", "run", "arm-reach-ilqr", "--out", "runs"], cwd=tmp_path, env=env,
                           check=True, capture_output=True, timeout=900)
        done = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"README block failed:\n{block}\n{done.stderr[-3000:]}"
        ran += 1
    assert ran >= 3
    reports = list(tmp_path.glob("runs/arm-reach-ilqr-*/report.html"))
    assert reports and list(tmp_path.glob("runs/arm-reach-ilqr-*/models/tvlg.npz"))


def test_readme_generated_blocks_are_current():
    """The matrix as `forethought list matrix` prints it, the results as bench/*.json has them
    (`make docs` regenerates both before `make test` runs the tests)."""
    assert readme_blocks.stale(README.read_text()) == []


def test_matrix_block_is_what_the_command_prints():
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "forethought"), "list", "matrix"], capture_output=True,
                         text=True, check=True).stdout
    assert out in README.read_text()


def test_results_render_from_benchmark_json(tmp_path):
    from forethought.scripts.bench import run_benchmark, write_result

    assert "No benchmark results here yet" in bench_results.readme_table(bench_results.load_results(tmp_path)[0])
    assert "no results to show" in bench_results.results_page(*bench_results.load_results(tmp_path))
    write_result(run_benchmark("sim", quick=True), tmp_path / "sim.json")
    (tmp_path / "broken.json").write_text("{not json")
    results, skipped = bench_results.load_results(tmp_path)
    machine = results[0]["machine"]
    table = bench_results.readme_table(results)
    row = next(line for line in table.splitlines() if "`sim`" in line)
    assert "steps/s" in row and machine["cpu_kernels"] in row and f"`{machine['commit']}`" in row
    page = bench_results.results_page(results, skipped)
    assert "`arm_steps_per_s`" in page and machine["cpu_kernels"] in page and "broken.json" in page
    assert json.loads((tmp_path / "sim.json").read_text())["machine"]["commit"] == machine["commit"]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_howto_example_runs(example, tmp_path):
    page = next((ROOT / "docs" / "howto").glob(f"{example[:-3].replace('_', '-')}.md"))
    assert f'--8<-- "{example}"' in page.read_text()  # the page shows the very file that runs here
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY",)}
    done = subprocess.run([sys.executable, str(EXAMPLES / example)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_result_beside_a_revision_shows_its_ratio(tmp_path):
    result = {"name": "ilqr", "metrics": {"mpc_hz": 250.0, "reach_error_m": 1e-4},
              "against": {"commit": "e3f5c7243b6e", "rounds": 3, "metrics": {"mpc_hz": 100.0, "reach_error_m": 1e-4},
                          "ratio": {"mpc_hz": 2.5, "reach_error_m": 1.0}, "per_round": {}},
              "config": {}, "machine": {"commit": "98fb7f05b93c"}}
    (tmp_path / "ilqr.json").write_text(json.dumps(result))
    results, _ = bench_results.load_results(tmp_path)
    row = next(line for line in bench_results.readme_table(results).splitlines() if "replans" in line)
    assert "250 Hz (2.50x `e3f5c72`'s)" in row
    page = bench_results.results_page(results, [])
    assert "| `mpc_hz` | 250 | 100 | 2.5 |" in page and "3 alternating rounds beside commit `e3f5c7243b6e`" in page
