"""Benchmark results (bench/*.json, as `forethought bench NAME --out` and `make bench` write them) as
Markdown: the docs' results page and the README's results table.

    python docs/tools/bench_results.py          # print the results page

The docs build renders the results page through `on_page_markdown` (this file is an MkDocs hook);
docs/tools/readme_blocks.py puts `readme_table` into the README. Without any bench JSON both say so
and how to make some.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "bench"
PAGE_MARKER = "<!-- bench results -->"

# The numbers the README shows per benchmark: (metric, or a tuple of metrics shown side by side,
# what it measures, unit scale, unit).
HEADLINES: dict[str, list[tuple[str | tuple[str, ...], str, float, str]]] = {
    "sim": [("arm_steps_per_s", "arm scene, control steps per second (one core)", 1.0, "steps/s")],
    "ilqr": [("mpc_hz", "iLQR-MPC replans per second on arm-reach-ilqr", 1.0, "Hz"),
             ("reach_error_m", "iLQR-MPC final reach error, worst of 3 targets", 1000.0, "mm")],
    "gps": [("reach_iterations", "GPS iterations to reach within 2 cm", 1.0, ""),
            ("mdgps_heldout_success", "MDGPS network on held-out holes, success rate", 1.0, "")],
    "distill": [("policy_ms_per_action_median", "iLQR-MPC distilled into a network, per action (one core)", 1.0, "ms")],
    "mpc": [("cem_ms_per_action", "CEM through the ensemble, per action (cart-pole)", 1.0, "ms"),
            ("pets_trials_to_success", "PETS trials to swing the cart-pole up, per seed", 1.0, "")],
    "pilco": [("trials_to_success", "PILCO trials to swing the cart-pole up, per seed", 1.0, "")],
    "learning": [("arm-reach-ilqr-ensemble", "iLQR-MPC on the ensemble, trials to reach within 1 cm, per seed", 1.0, ""),
                 ("pendulum-swingup-mppi-gp", "MPPI on the GP, trials to swing the pendulum up, per seed", 1.0, "")],
    "policies": [("pendulum_step_ratio", "MBPO's steps to swing the pendulum up over SAC's, median of 3 seeds", 1.0, ""),
                 ("arm_mbpo_trials", "MBPO trials of 2 s to reach within 1 cm on the arm", 1.0, "")],
    "sweep": [("ratio", "4 PILCO seeds, 2 at a time on Ray over one at a time, wall time", 1.0, "")],
    "servo_soak": [(("so101_lost_arm_exits", "koch_lost_arm_exits"),
                    "lost-arm exits in an hour, emulated SO-101 and Koch, 2% corrupted and 0.5% lost replies", 1.0, ""),
                   (("so101_period_p99_ms", "koch_period_p99_ms"), "control period p99 in that hour, SO-101 and Koch",
                    1.0, "ms")],
    "servo_loop": [("so101_period_p99_ms", "SO-101 control period p99, emulated bus at 50 Hz", 1.0, "ms"),
                   ("so101_ilqr_mpc_reach_error_m", "iLQR-MPC deployed on the emulated SO-101, worst reach error",
                    1000.0, "mm"),
                   ("so101_ilqr_mpc_100hz_period_p99_ms", "iLQR-MPC deployed at 100 Hz on the emulated SO-101, period p99",
                    1.0, "ms")],
}
MACHINE_KEYS = ("cpu_model", "cpu_count", "torch_threads", "cpu_kernels", "platform", "python", "numpy", "torch",
                "mujoco", "host_steal_s")


def load_results(bench_dir: Path = BENCH_DIR) -> tuple[list[dict], list[str]]:
    """Every bench/*.json in name order, and one line for each file that is not a benchmark result."""
    results, skipped = [], []
    for path in sorted(Path(bench_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            skipped.append(f"{path.name}: not readable JSON ({err})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            skipped.append(f"{path.name}: not a benchmark result (no `metrics`)")
            continue
        data.setdefault("name", path.stem)
        data["file"] = path.name
        results.append(data)
    return results, skipped


def _number(value, scale: float = 1.0, unit: str = "") -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        v = value * scale
        text = f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return f"{text} {unit}".strip()
    if isinstance(value, list):
        return ", ".join(_number(v, scale) for v in value) + (f" {unit}" if unit else "")
    return str(value)


def machine_line(machine: dict) -> str:
    """'AMD EPYC, 2 cores, openblas SkylakeX, torch AVX512' from a result's `machine`."""
    parts = [machine.get("cpu_model") or machine.get("processor") or "unknown CPU"]
    if machine.get("cpu_count"):
        parts.append(f"{machine['cpu_count']} cores")
    if machine.get("cpu_kernels"):
        parts.append(machine["cpu_kernels"])
    return ", ".join(parts)


def _commit(result: dict) -> str:
    return result.get("machine", {}).get("commit") or "unknown"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _against(result: dict, keys: tuple[str, ...]) -> str:
    """' (2.50x e3f5c72's)' where the result was run beside a revision (`bench --against`) and has
    the ratio of a one-number headline; else ''."""
    against = result.get("against")
    if not against or len(keys) != 1 or keys[0] not in against.get("ratio", {}):
        return ""
    return f" ({against['ratio'][keys[0]]:.2f}x `{against['commit'][:7]}`'s)"


def readme_table(results: list[dict]) -> str:
    """The README's table: per benchmark its headline numbers, with machine and commit."""
    if not results:
        return ("No benchmark results here yet: `make bench` measures them into `bench/`, and `make docs` "
                "puts them in this table and on the [results page](docs/results.md).")
    rows = ["| what | number | machine | commit |", "| --- | --- | --- | --- |"]
    for result in results:
        metrics = result["metrics"]
        headlines = HEADLINES.get(result["name"]) or [
            (key, key, 1.0, "") for key, value in metrics.items() if isinstance(value, (int, float))][:2]
        for key, what, scale, unit in headlines:
            keys = key if isinstance(key, tuple) else (key,)
            if all(k in metrics for k in keys):
                value = metrics[keys[0]] if len(keys) == 1 else [metrics[k] for k in keys]
                number = _number(value, scale, unit) + _against(result, keys)
                rows.append(f"| {_cell(what)} (`{result['name']}`) | {_cell(number)} | "
                            f"{_cell(machine_line(result.get('machine', {})))} | `{_commit(result)}` |")
    return "\n".join(rows)


def results_page(results: list[dict], skipped: list[str]) -> str:
    """The docs' results page body: every metric of every benchmark, its settings and machine."""
    if not results:
        text = ("There is no benchmark JSON in `bench/` here, so there are no results to show. "
                "`make bench` runs every benchmark into `bench/NAME.json` (`forethought bench NAME --out "
                "bench/NAME.json` runs one), and `make docs` renders them here and in the README.")
        return text + "".join(f"\n\n- skipped {line}" for line in skipped)
    out = []
    for result in results:
        machine = result.get("machine", {})
        out.append(f"## `{result['name']}`\n")
        out.append(f"From `bench/{result['file']}`, commit `{_commit(result)}`, on {machine_line(machine)}.\n")
        against = result.get("against")
        if against:
            # Run beside an earlier revision (bench --against): medians of both sides and their ratio.
            out.append(f"Medians of {against['rounds']} alternating rounds beside commit `{against['commit']}`.\n")
            out.append(f"| metric | value | at `{against['commit'][:7]}` | ratio |\n| --- | --- | --- | --- |")
            out += [f"| `{key}` | {_cell(_number(value))} | {_cell(_number(against['metrics'].get(key, '')))} | "
                    f"{_cell(_number(against['ratio'].get(key, '')))} |" for key, value in result["metrics"].items()]
        else:
            out.append("| metric | value |\n| --- | --- |")
            out += [f"| `{key}` | {_cell(_number(value))} |" for key, value in result["metrics"].items()]
        config = result.get("config") or {}
        if config:
            out.append("\n??? note \"settings\"\n\n    ```json\n" + "\n".join(
                "    " + line for line in json.dumps(config, indent=2).splitlines()) + "\n    ```\n")
        out.append("\n| machine | |\n| --- | --- |")
        out += [f"| {key} | {_cell(machine[key])} |" for key in MACHINE_KEYS if key in machine]
        out.append("")
    out += [f"- skipped {line}" for line in skipped]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs hook: the results page's marker becomes the rendered results."""
    if PAGE_MARKER in markdown:
        return markdown.replace(PAGE_MARKER, results_page(*load_results()))
    return markdown


def main() -> int:
    print(results_page(*load_results()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
