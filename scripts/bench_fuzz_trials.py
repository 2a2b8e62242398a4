"""How the trial reader takes damaged trial files, and what its checks cost.

10,000 trial files (1,000 with --quick), seeded, from trial_damage.py's catalogue (which the
suite's property tests drive with hypothesis): a finished trial, a partial one whose writer closed
it, or a partial one whose writer died (left marked open), damaged in its bytes or its structure.
Each is read by `load_trial` in a worker process with a deadline, so a hang or a crash is counted,
not suffered. Reported: the count of each outcome (`project_error`: TrialLogError; `loaded`: the
damage left a sound trial; `loaded_unsound` (NaN states, shapes that disagree), `other_exception`,
`timeout`, `crash`: bugs), the time per file, and the first bugs' descriptions. Then `live_*`:
200 (20) damaged partial files read as if their writer still ran in another process (this process
holds its lock): in SWMR mode, in the reader's child process, under a 5 s deadline.

Then the costs on a large trial (30 minutes at 500 Hz, 12 states, 6 actions; 2 minutes with
--quick): `TrialWriter.append` (mean, p99, max: a flush), the byte checks (`check_file`), and
`load_trial` of the file closed, left by a dead writer, and held by a running one.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from forethought.robots import trial_log_read
from forethought.robots.hdf5_layout import check_file
from forethought.robots.robot import RobotSpec
from forethought.robots.trial_log import TrialLogError, TrialWriter, load_trial, partial_path
from forethought.robots.trial_writer_lock import WriterLock
from forethought.scripts.trial_damage import (
    BASES,
    DAMAGE,
    RandomChooser,
    damage,
    damaged_trial_file,
    make_trial_file,
    unsound,
)

# Seconds a worker may take over one file before it counts as hung (a sound read takes milliseconds).
DEADLINE_S = 20.0
# The reader's own deadline for a file whose writer runs in another process (60 s as shipped).
LIVE_DEADLINE_S = 5.0

# -- Reading in a worker with a deadline -------------------------------------------------------------
def _worker(connection, live_deadline_s: float) -> None:
    trial_log_read.LIVE_READ_DEADLINE_S = live_deadline_s
    while (path := connection.recv()) is not None:
        started = time.perf_counter()
        try:
            problem = unsound(load_trial(path))
            outcome, detail = ("loaded", "") if problem is None else ("loaded_unsound", problem)
        except TrialLogError as err:
            outcome, detail = "project_error", str(err)
        except Exception as err:  # counted as a bug, with its message
            outcome, detail = "other_exception", f"{type(err).__name__}: {err}"
        connection.send((outcome, detail, time.perf_counter() - started))


class Reader:
    """A worker process that reads trial files; restarted after a hang or a crash."""

    def __init__(self, live_deadline_s: float = LIVE_DEADLINE_S):
        self._context = multiprocessing.get_context("spawn")
        self._live_deadline_s = live_deadline_s
        self._start()

    def _start(self) -> None:
        self._connection, child = self._context.Pipe()
        self._process = self._context.Process(target=_worker, args=(child, self._live_deadline_s), daemon=True)
        self._process.start()
        child.close()

    def read(self, path: Path, deadline_s: float = DEADLINE_S) -> tuple[str, str, float]:
        """(outcome, detail, seconds): outcome is one of OUTCOMES."""
        self._connection.send(str(path))
        try:
            if self._connection.poll(deadline_s):
                return self._connection.recv()
            outcome = "timeout"
        except (EOFError, OSError):  # the worker died
            outcome = "crash"
        code = self._process.exitcode
        self._process.kill()
        self._process.join()
        self._start()
        return outcome, f"exit code {code}" if outcome == "crash" else "", deadline_s

    def close(self) -> None:
        self._connection.send(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


OUTCOMES = ("project_error", "loaded", "loaded_unsound", "other_exception", "timeout", "crash")


def fuzz(count: int, seed: int = 0, live: bool = False) -> dict:
    """Read `count` damaged trial files; counts by outcome, read times, and the first bugs' descriptions.

    live: the files are partial files of a writer that died, damaged, read while this process holds
    the writer's lock on them, as if the writer still ran (read in SWMR mode, in a child process).
    """
    chooser = RandomChooser(np.random.default_rng(seed))
    outcomes = dict.fromkeys(OUTCOMES, 0)
    examples: list[str] = []
    read_s, make_s = [], 0.0
    reader = Reader()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(count):
                folder = Path(tmp) / f"{i:05d}"
                folder.mkdir()
                started = time.perf_counter()
                if live:
                    path = make_trial_file(folder, "partial_crashed", chooser)
                    kind = chooser.choice(DAMAGE)
                    damage(path, kind, chooser)
                    description = f"live+{kind}"
                else:
                    path, description = damaged_trial_file(folder, chooser)
                make_s += time.perf_counter() - started
                lock = WriterLock(path) if live else None
                try:
                    outcome, detail, seconds = reader.read(path)
                finally:
                    if lock is not None:
                        lock.release()
                outcomes[outcome] += 1
                read_s.append(seconds)
                if outcome not in ("project_error", "loaded") and len(examples) < 25:
                    examples.append(f"#{i} {description}: {outcome} {detail[:300]}")
                shutil.rmtree(folder)
    finally:
        reader.close()
    read_ms = np.array(read_s) * 1e3
    return {
        **{f"files_{name}": value for name, value in outcomes.items()},
        "read_ms_mean": float(read_ms.mean()), "read_ms_p99": float(np.percentile(read_ms, 99)),
        "read_ms_max": float(read_ms.max()), "make_s_total": make_s, "bug_examples": examples,
    }


# -- Costs on a large trial -------------------------------------------------------------------------
HOLD_LOCK = (
    "import sys\n"
    "from pathlib import Path\n"
    "from forethought.robots.trial_writer_lock import WriterLock\n"
    "lock = WriterLock(Path(sys.argv[1]))\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


def _timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def large_trial_costs(folder: Path, minutes: float) -> dict:
    """Costs on a `minutes` long partial log at 500 Hz (12 states, 6 actions): the writer's append,
    and `load_trial` of it closed (plain), left by a dead writer (through FlagsClearedView) and
    held by a running writer in another process (SWMR, in a child), with the byte checks alone."""
    spec = RobotSpec("arm", tuple(f"x{i}" for i in range(12)), tuple(f"u{j}" for j in range(6)),
                     -np.ones(6), np.ones(6), 0.002)
    steps = int(minutes * 60 * 500)
    x, u = np.linspace(0, 1, spec.n), np.zeros(spec.m)
    append_s = np.empty(steps)
    path = folder / "trial_0000.h5"
    crashed = folder / "crashed" / "trial_0000.partial.h5"
    crashed.parent.mkdir()
    with TrialWriter(path, spec, {"task": "large"}, x0=x, flush_interval=0.5) as writer:
        for t in range(steps):
            started = time.perf_counter()
            writer.append(x, u, t * 0.002, 0.0)
            append_s[t] = time.perf_counter() - started
        writer.flush()
        shutil.copyfile(writer.partial, crashed)
    closed = partial_path(path)
    _, check_s = _timed(check_file, closed, trial_log_read.ATTRIBUTES)
    trial, load_s = _timed(load_trial, closed)
    dead, dead_s = _timed(load_trial, crashed)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(crashed)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        if holder.stdout.readline().strip() != "locked":
            raise RuntimeError("the process holding the writer's lock did not start")
        live, live_s = _timed(load_trial, crashed)
    finally:
        holder.kill()
        holder.wait()
    if not trial.horizon == dead.horizon == live.horizon == steps:
        read_back = f"{trial.horizon}, {dead.horizon} and {live.horizon}"
        raise RuntimeError(f"the large trial read back {read_back} of its {steps} steps")
    return {
        "large_trial_steps": steps, "large_trial_mib": os.path.getsize(closed) / 2**20,
        "large_check_file_s": check_s, "large_load_s": load_s, "large_load_dead_writer_s": dead_s,
        "large_load_live_writer_s": live_s,
        "append_us_mean": float(append_s.mean() * 1e6), "append_us_p99": float(np.percentile(append_s, 99) * 1e6),
        "append_us_max": float(append_s.max() * 1e6),
    }


def run_bench_fuzz_trials(quick: bool = False) -> tuple[dict, dict]:
    count, live, minutes = (1000, 20, 2.0) if quick else (10_000, 200, 30.0)
    started = time.perf_counter()
    metrics = fuzz(count, seed=0)
    metrics["fuzz_s"] = time.perf_counter() - started
    metrics.update({f"live_{name}": value for name, value in fuzz(live, seed=1, live=True).items()})
    with tempfile.TemporaryDirectory() as tmp:
        metrics.update(large_trial_costs(Path(tmp), minutes))
    config = {
        "files": count, "live_files": live, "seeds": [0, 1], "deadline_s": DEADLINE_S,
        "live_read_deadline_s": LIVE_DEADLINE_S, "bases": list(BASES), "damage": list(DAMAGE),
        "large_trial_minutes_at_500hz": minutes,
    }
    return metrics, config
