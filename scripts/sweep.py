"""`forethought sweep EXPERIMENT --seeds 0-9 [--set KEY=V1,V2 ...]`: an experiment over seeds x
settings, each run a Ray task with its own run folder, then a summary over the seeds.

The sweep folder (`--out`, default runs/sweep-NAME) holds a folder per setting and in it a run
folder per seed (seed-N/: what `forethought run` writes, plus run.log, and sweep_run.json, the
run's record, once it has finished or failed), and the summary: sweep.json, sweep.md, sweep.csv,
learning_curves.png, success_rate.png (scripts/sweep_summary.py).

Ray runs the runs: a local Ray started for the sweep with the machine's CPUs (or `--cpus`), or an
existing cluster given by `--address` (then the sweep folder must be on a file system that every
node sees). Each run asks Ray for `--cpus-per-run` CPUs and uses as many torch threads. A run that
fails is recorded with its error and the others go on. The same command again resumes: runs that
finished are kept, a run cut off after a checkpoint goes on from it (`forethought run --resume`),
the others (never started, cut off before their first checkpoint, failed) run again from their start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forethought.robots.config import ConfigError
from forethought.scripts.sweep_grid import (
    Setting, base_mapping, check_builds, parse_seeds, parse_set, resolve, settings_of,
)
from forethought.scripts.sweep_run import RunSpec, failed_record, finished_record, run_one, write_record


LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2


@dataclass
class SweepPlan:
    """A validated sweep: the experiment's name, the settings with their resolved experiments, the
    seeds, the CPUs of each run and the sweep folder."""

    name: str
    settings: list[tuple[Setting, dict]]
    seeds: list[int]
    cpus_per_run: int
    out: Path

    def runs(self) -> list[RunSpec]:
        """Every setting x seed, settings in grid order, then seeds."""
        specs = []
        for setting, experiment in self.settings:
            for seed in self.seeds:
                config = {**experiment, "loop": {**experiment["loop"], "seed": seed}}
                folder = self.out / setting.folder / f"seed-{seed}"
                specs.append(RunSpec(setting.name, seed, str(folder.resolve()), config, self.cpus_per_run))
        return specs


def plan_sweep(experiment: str, seeds: list[int], grid: dict[str, list[Any]], cpus_per_run: int = 1,
               out: Path | None = None, fixed: dict[str, Any] | None = None) -> SweepPlan:
    """Validate a sweep before anything runs: each --set key alone with each of its values, then
    every setting built once. fixed: values every setting takes ({dotted key: value}, as a
    benchmark fixes loop.iterations). ConfigError (one line naming the key) for anything refused."""
    if not seeds:
        raise ConfigError("--seeds: no seeds")
    if cpus_per_run < 1:
        raise ConfigError(f"--cpus-per-run: expected at least 1, got {cpus_per_run}")
    base, path = base_mapping(experiment)
    fixed = {"loop.video": False, **(fixed or {})}
    for key, values in grid.items():
        for value in values:
            resolve(base, path, {**fixed, key: value}, [key])
    settings = []
    for setting in settings_of(grid):
        values = {**fixed, **dict(setting.values)}
        resolved = resolve(base, path, values, [k for k, _ in setting.values])
        check_builds(resolved, dict(setting.values))
        settings.append((setting, resolved.as_dict()))
    folders = [s.folder for s, _ in settings]
    if len(set(folders)) != len(folders):
        raise ConfigError("--set: two settings write to the same folder name; give values that differ in letters "
                          "or digits")
    name = settings[0][1]["name"]
    return SweepPlan(name, settings, list(seeds), cpus_per_run,
                     Path(out) if out is not None else Path("runs") / f"sweep-{name}")


@dataclass
class SweepResult:
    """What a sweep leaves: each run's record (in plan order), how many ran now (the others were
    kept from an earlier invocation), the summary and the files written."""

    records: list[dict]
    ran: int
    summary: dict
    files: list[Path] = field(default_factory=list)


def start_ray(address: str | None, cpus: int | None) -> bool:
    """Connect to Ray: the cluster at `address`, else a new local Ray with `cpus` CPUs (default:
    the machine's). Returns whether it started it (then the sweep shuts it down); a Ray already
    started in this process is used as it is. The process keeps its own SIGTERM and SIGINT
    handlers: ray.init installs its own, which would outlive the sweep."""
    import logging
    import signal

    import ray

    if ray.is_initialized():
        return False
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        if address:
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
            except (ConnectionError, RuntimeError) as err:
                raise ConfigError(f"--address {address}: {str(err).splitlines()[0]} (a cluster with token "
                                  "authentication, Ray's default, also needs RAY_AUTH_MODE=token and its token here)") from None
        else:
            # address="local": a Ray of its own, never one that another user started on this machine. Its
            # object store holds only runs' specs and records (kilobytes): a small one leaves the memory
            # of a shared machine to the runs. Its workers run at the sweep's own priority: Ray's default
            # nice 15 keeps a driver responsive beside its workers, but here the workers are the whole
            # sweep, and niced they get a few per cent of a core beside any busy process.
            ray.init(address="local", num_cpus=cpus or os.cpu_count(), include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level=logging.WARNING, log_to_driver=True,
                     _system_config={"worker_niceness": 0})
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    return True


def time_left(durations: list[float], pending: int, slots: int) -> str:
    """'~3 min' from the mean time of the runs finished so far; '?' before the first."""
    if not durations:
        return "?"
    seconds = sum(durations) / len(durations) * pending / max(1, min(slots, pending))
    return f"~{seconds:.0f} s" if seconds < 120 else f"~{seconds / 60:.0f} min"


def execute(plan: SweepPlan, address: str | None = None, cpus: int | None = None, stream=None) -> SweepResult:
    """Run the runs of `plan` that have not finished, on Ray (start_ray), then write the summary.
    Progress (runs done, running, failed; time left) on the project's status line; a line per run."""
    from forethought.scripts.status_line import StatusLine, show_progress
    from forethought.scripts.sweep_summary import summarize, write_summary

    specs = plan.runs()
    plan.out.mkdir(parents=True, exist_ok=True)
    records: dict[int, dict] = {}
    for i, spec in enumerate(specs):
        kept = finished_record(spec)
        if kept is not None:
            records[i] = kept
    todo = [i for i in range(len(specs)) if i not in records]
    line = StatusLine(stream, show_every_s=10.0)
    show_progress(line)
    if records:
        line.finish(f"sweep {plan.name}: {len(records)} of {len(specs)} runs finished before; "
                    f"{len(todo)} to run")
    if todo:
        _run_on_ray(plan, specs, todo, records, line, address, cpus)
    ordered = [records[i] for i in range(len(specs))]
    settings = [(s.name, dict(s.values)) for s, _ in plan.settings]
    goal = next((r["goal"] for r in ordered if r.get("goal")), None)  # as summary.json states it
    summary = summarize(plan.name, goal, settings, ordered, plan.seeds)
    files = write_summary(plan.out, summary, ordered)
    failed = sum(r["status"] != "done" for r in ordered)
    line.finish(f"sweep {plan.name}: {len(ordered) - failed} runs done, {failed} failed; summary in "
                f"{plan.out / 'sweep.md'}")
    return SweepResult(ordered, len(todo), summary, files)


def _run_on_ray(plan: SweepPlan, specs: list[RunSpec], todo: list[int], records: dict[int, dict], line,
                address: str | None, cpus: int | None) -> None:
    """Submit the runs `todo` as Ray tasks, gather their records as they end (writing each to its
    folder), and keep the status line up to date."""
    import ray
    from ray.exceptions import RayError

    from forethought.robots.progress import Progress

    started_ray = start_ray(address, cpus)
    try:
        total_cpus = int(ray.cluster_resources().get("CPU", 0))
        if total_cpus < plan.cpus_per_run:
            raise ConfigError(f"--cpus-per-run {plan.cpus_per_run}: the Ray cluster has {total_cpus} CPUs")
        slots = total_cpus // plan.cpus_per_run
        task = ray.remote(run_one).options(num_cpus=plan.cpus_per_run, max_retries=1)
        pending = {task.remote(specs[i]): i for i in todo}
        durations: list[float] = []
        failed = 0
        progress = Progress(f"sweep {plan.name}", total=len(specs), unit="runs")
        progress.update(len(records), running=min(slots, len(pending)), failed=failed, left="?")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        record = ray.get(ref)
                    except RayError as err:  # the worker died or Ray gave up: the run's error, not the sweep's
                        record = failed_record(specs[i], f"{type(err).__name__}: {str(err).splitlines()[0]}")
                    write_record(specs[i], record)
                    records[i] = record
                    if record["status"] == "done":
                        durations.append(record["wall_s"])
                        rate = record.get("success_rate")
                        judged = "" if not rate else (
                            f", goal reached at iteration {record['first_success_iteration']}"
                            if record["first_success_iteration"] else ", goal not reached")
                        line.finish(f"  {specs[i].setting} seed {specs[i].seed}: done in {record['wall_s']:.1f} s, "
                                    f"final cost {record['final_cost']:.4g}{judged}")
                    else:
                        failed += 1
                        line.finish(f"  {specs[i].setting} seed {specs[i].seed}: failed: {record['error']} "
                                    f"({Path(specs[i].folder) / 'error.txt'})")
                progress.update(len(records), running=min(slots, len(pending)), failed=failed,
                                left=time_left(durations, len(pending), slots))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        line.clear()
        progress.finish(running=0, failed=failed, left="0 s")
    finally:
        if started_ray:
            ray.shutdown()


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="a shipped name (forethought list), a YAML path, or dmc:DOMAIN:TASK")
    p.add_argument("--seeds", default="0-9", help="seeds to run each setting with: 0-9, 0,3,5 or 0-3,7 (default: 0-9)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                   help="a dotted key of the experiment file and its values (repeat for a grid): "
                        "--set controller.horizon=20,30 --set loop.samples=1,2")
    p.add_argument("--address", help="an existing Ray cluster (ray start's address; default: a local Ray "
                                     "started for the sweep)")
    p.add_argument("--cpus", type=int, help="CPUs of the local Ray (default: the machine's)")
    p.add_argument("--cpus-per-run", type=int, default=1,
                   help="CPUs each run gets from Ray, and its torch threads (default: 1)")
    p.add_argument("--out", help="the sweep folder (default: runs/sweep-NAME); the same folder again resumes")


def sweep_main(args: argparse.Namespace) -> int:
    plan = plan_sweep(args.experiment, parse_seeds(args.seeds), parse_set(args.set), args.cpus_per_run,
                      Path(args.out) if args.out else None)
    if args.cpus is not None and args.cpus < 1:
        raise ConfigError(f"--cpus: expected at least 1, got {args.cpus}")
    if args.cpus is not None and args.address:
        raise ConfigError("--cpus: sets the CPUs of a local Ray; a cluster (--address) has its own")
    print(f"sweep {plan.name}: {len(plan.settings)} settings x {len(plan.seeds)} seeds -> {plan.out}",
          file=sys.stderr)
    started = time.perf_counter()
    result = execute(plan, args.address, args.cpus)
    print(f"sweep folder: {plan.out} ({result.ran} runs in {time.perf_counter() - started:.0f} s)")
    return 0 if all(r["status"] == "done" for r in result.records) else 1
