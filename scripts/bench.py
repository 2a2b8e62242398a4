"""`forethought bench NAME`: measure what matters and write it as JSON.

Output: {"name", "metrics": {...}, "config": {...}, "machine": {...}}. Each benchmark is a function
run(quick: bool) -> (metrics, config) in its own module, registered below; one that measures
learning over seeds also takes `seeds` (`--seeds N`: seeds 0 to N-1, run as a sweep).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import platform
from pathlib import Path

from forethought.robots.config import ConfigError

BENCHMARKS: dict[str, str] = {
    "sim": "forethought.scripts.bench_sim:run_bench_sim",
    "ilqr": "forethought.scripts.bench_ilqr:run_bench_ilqr",
    "gps": "forethought.scripts.bench_gps:run_bench_gps",
    "distill": "forethought.scripts.bench_distill:run_bench_distill",
    "mpc": "forethought.scripts.bench_mpc:run_bench_mpc",
    "pilco": "forethought.scripts.bench_pilco:run_bench_pilco",
    "servo_loop": "forethought.scripts.bench_servo:run_bench_servo_loop",
    "servo_soak": "forethought.scripts.bench_servo_soak:run_bench_servo_soak",
    "servo_fuzz": "forethought.scripts.bench_servo_fuzz:run_bench_servo_fuzz",
    "fuzz_trials": "forethought.scripts.bench_fuzz_trials:run_bench_fuzz_trials",
    "sysid": "forethought.scripts.bench_sysid:run_bench_sysid",
    "latency": "forethought.scripts.bench_latency:run_bench_latency",
    "sweep": "forethought.scripts.bench_sweep:run_bench_sweep",
    "learning": "forethought.scripts.bench_learning:run_bench_learning",
    "policies": "forethought.scripts.bench_policies:run_bench_policies",
}


def cpu_kernels() -> str:
    """The matrix kernels this process runs: each BLAS library's core type (OpenBLAS's
    OPENBLAS_CORETYPE: they change a result's last digits) and torch's CPU capability."""
    import torch
    from threadpoolctl import threadpool_info

    blas = sorted({f"{i['internal_api']} {i.get('architecture')}" for i in threadpool_info() if i.get("user_api") == "blas"})
    return ", ".join([*blas, f"torch {torch.backends.cpu.get_cpu_capability()}"])


def source_commit() -> str | None:
    """The git commit of the code that runs (with "-dirty" for uncommitted changes), None outside a checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the platform's processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_steal_s() -> float | None:
    """CPU seconds the hypervisor has taken from this virtual machine since it booted, over all its
    cores (the steal column of Linux's /proc/stat); None where there is no such count."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine_info(steal_since: float | None = None) -> dict:
    """What the benchmark ran on; with steal_since (host_steal_s() when it began) also
    `host_steal_s`: the CPU seconds the hypervisor took from the machine while it ran, over all its
    cores (a timing taken while it took some is the host's as much as the code's)."""
    import numpy
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_kernels": cpu_kernels(),
        "commit": source_commit(),
    }
    steal = host_steal_s()
    if steal_since is not None and steal is not None:
        info["host_steal_s"] = round(steal - steal_since, 2)
    try:
        import mujoco

        info["mujoco"] = mujoco.__version__
    except ImportError:
        pass
    return info


def check_benchmark(name: str, options: dict):
    """The function of benchmark `name`, after a ConfigError for an unknown name or an option it
    does not take."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{name}' (known: {', '.join(sorted(BENCHMARKS))})")
    module_name, function_name = BENCHMARKS[name].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    accepted = inspect.signature(function).parameters
    if "seeds" in options:
        if "seeds" not in accepted:
            takes = [n for n, b in sorted(BENCHMARKS.items()) if "seeds" in inspect.signature(
                getattr(importlib.import_module(b.split(":")[0]), b.split(":")[1])).parameters]
            raise ConfigError(f"--seeds: bench {name} runs no seeds (those that do: {', '.join(takes)})")
        if options["seeds"] < 1:
            raise ConfigError(f"--seeds: expected at least 1, got {options['seeds']}")
    for option in options:
        if option not in accepted:
            raise ConfigError(f"benchmark '{name}' takes no --{option.replace('_', '-')}")
    return function


def run_benchmark(name: str, quick: bool = False, **options) -> dict:
    """Run benchmark `name`; options go to the benchmarks that take them (seeds: how many seeds a
    learning benchmark runs; minutes, corrupt, drop for servo_soak, ...), and one that does not take
    an option given is refused with a ConfigError."""
    function = check_benchmark(name, options)
    steal_before = host_steal_s()
    metrics, config = function(quick=quick, **options)
    return {"name": name, "metrics": metrics, "config": config, "machine": machine_info(steal_before)}


def write_result(result: dict, path: Path | None) -> None:
    text = json.dumps(result, indent=2)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)
