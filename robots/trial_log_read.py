"""Reading trial logs (`load_trial`, `load_trials`), in bounded time whatever the file holds.

Before libhdf5 sees a file, its bytes are checked (`hdf5_layout.check_file`: size against the
superblock, checksums, global heaps, attribute values); then it is opened the one way that cannot
retry forever: plainly for a finished or cleanly closed file; for a partial file whose writer died,
plainly through a view that clears its open-for-writing mark (in SWMR mode libhdf5 skips its
truncation check and retries failed reads for many minutes); in SWMR mode only for a writer that
still runs, in this process (whose open file libhdf5 shares), or in a child process with a deadline
when the writer is another process. Attributes and dataset shapes are checked before any dataset
is read (`trial_log_checks`). Every failure is a TrialLogError naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import h5py
import numpy as np

from forethought.robots.hdf5_layout import FileCheck, FlagsClearedView, LayoutError, check_file, truncation
from forethought.robots.trial import Trial
from forethought.robots.trial_log_checks import (
    ATTRIBUTES,
    TrialLogError,
    check_finite,
    check_format,
    datasets_of,
    hdf5_errors,
    one_line,
    open_datasets,
    read_header,
    read_rows,
    rows_to_read,
)
from forethought.robots.trial_writer_lock import writer_alive, writing_here

if TYPE_CHECKING:
    from forethought.robots.lerobot_dataset import LeRobotOptions

PARTIAL_SUFFIX = ".partial.h5"
# Seconds a child process may take over a partial file whose writer runs in another process.
LIVE_READ_DEADLINE_S = 60.0
# A running writer may be caught mid-flush (a superblock half written, its end-of-file address
# ahead of the file): the checks of its file are repeated for this long (s) before they count.
LIVE_CHECK_RETRY_S = 2.0
# How far (bytes) the superblock of a writer killed mid-flush may run ahead of its file: libhdf5
# grows a file by its 1 MiB raw data and 2 KiB metadata blocks and a flush's chunks. Farther, the
# file was cut short.
MAX_UNFLUSHED_TAIL = 64 * 2**20


def load_trial(path: str | Path) -> Trial:
    """Read one trial file; a partial file gives the steps it holds consistently, complete=False.

    Raises TrialLogError, naming the file, when it is not a readable trial log.
    """
    path = Path(path)
    if writing_here(path):
        check = _check(path, retry_s=LIVE_CHECK_RETRY_S)
        return _read(path, check, swmr=check.superblock.left_open)
    if writer_alive(path):
        return _read_in_child(path)
    # The file of a writer that died mid-flush may end before its superblock says; what it holds
    # is read (FlagsClearedView). Any other file that ends early was cut short.
    check = _check(path, allow_missing=True)
    sb = check.superblock
    died_mid_flush = sb.left_open and sb.version >= 2 and check.missing <= MAX_UNFLUSHED_TAIL
    if check.missing and not died_mid_flush:
        raise TrialLogError(f"{path}: damaged trial log ({_truncated(check)})")
    try:
        return _read(path, check, swmr=False)
    except TrialLogError as err:
        if check.missing:
            raise TrialLogError(f"{err}; {_truncated(check)}") from None
        raise


def _truncated(check: FileCheck) -> str:
    return truncation(check.size, check.superblock.eof)


def _check(path: Path, retry_s: float = 0.0, allow_missing: bool = False) -> FileCheck:
    """check_file(path), repeated for up to `retry_s` seconds while it fails (a whole file unless
    `allow_missing`)."""
    give_up = time.monotonic() + retry_s
    while True:
        try:
            check = check_file(path, ATTRIBUTES)
            if allow_missing or not check.missing:
                return check
            problem = _truncated(check)
        except LayoutError as err:
            problem = str(err)
        except OSError as err:
            raise TrialLogError(f"{path}: cannot read the trial log ({err.strerror or one_line(err)})") from None
        if time.monotonic() >= give_up:
            raise TrialLogError(f"{path}: damaged trial log ({problem})")
        time.sleep(0.05)


def _read(path: Path, check: FileCheck, swmr: bool) -> Trial:
    """Read a checked file: in SWMR mode if `swmr`, else plainly (through a view that clears the
    open-for-writing mark of a file whose writer died)."""
    with contextlib.ExitStack() as stack:
        with hdf5_errors(path):
            if swmr:
                if not check.superblock.swmr_readable:
                    raise TrialLogError(f"{path}: the trial log is open for writing, not in SWMR mode")
                f = stack.enter_context(h5py.File(path, "r", swmr=True))
            elif check.superblock.left_open and check.superblock.version >= 2:
                f = stack.enter_context(h5py.File(stack.enter_context(FlagsClearedView(path, check)), "r"))
            else:
                f = stack.enter_context(h5py.File(path, "r"))
        names = datasets_of(check_format(f, path))
        header = read_header(f, path)
        datasets = open_datasets(f, path, header, names)
        T = rows_to_read(datasets, path, header.complete)
        rows = {"states": T + 1, "actions": T, "requested_actions": T, "timestamps": T + 1,
                "costs": T + 1 if header.complete else T}
        arrays = {name: read_rows(datasets[name], rows[name], path, header.complete) for name in names}
    # A version 1 log holds one action per step, the request clipped to the bounds: it stands for both.
    arrays.setdefault("requested_actions", arrays["actions"])
    if header.complete:
        check_finite(arrays, path)
        states, actions, requested, stamps, costs = (arrays[name] for name in _ORDER)
    else:
        prefix = _consistent_prefix(*(arrays[name] for name in _ORDER))
        if prefix is None:
            raise TrialLogError(f"{path}: partial trial log holds no steps")
        states, actions, requested, stamps, costs = prefix
    return Trial(
        states, actions, stamps, costs, header.state_names, header.action_names, header.dt, header.metadata,
        header.complete, requested,
    )


_ORDER = ("states", "actions", "requested_actions", "timestamps", "costs")


def _consistent_prefix(states, actions, requested, stamps, costs):
    """The steps of a partial log on which all datasets agree (None if none); no terminal cost (NaN).

    states, stamps: (T+1, ...); actions, requested, costs: (T, ...), the rows all datasets hold.
    """
    steps = len(actions)
    # Rows whose data never reached the disk read as the NaN fill value.
    written = np.isfinite(stamps[1 : steps + 1]) & np.all(np.isfinite(actions[:steps]), axis=1)
    written &= np.all(np.isfinite(requested[:steps]), axis=1)
    written &= np.all(np.isfinite(states[1 : steps + 1]), axis=1)
    steps = int(np.argmin(written)) if not written.all() else steps
    states, actions, requested, stamps = states[: steps + 1], actions[:steps], requested[:steps], stamps[: steps + 1]
    costs = np.append(costs[:steps], np.nan)
    if not (np.all(np.isfinite(states[0])) and np.isfinite(stamps[0])):
        # x0 was never given to the writer (or its row is damaged): the trial starts at its first logged state.
        if steps == 0:
            return None
        states, actions, requested, stamps, costs = states[1:], actions[1:], requested[1:], stamps[1:], costs[1:]
    return states, actions, requested, stamps, costs


# -- A partial file whose writer runs in another process --------------------------------------------
# Only SWMR mode reads it consistently, and in SWMR mode libhdf5 retries a damaged file's reads for
# many minutes, out of reach of any exception: so a child process reads it, under a deadline.
_CHILD = (
    "import sys\n"
    "from forethought.robots.trial_log_read import read_in_child\n"
    "sys.exit(read_in_child(sys.argv[1], sys.argv[2]))\n"
)
_CHILD_PROBLEM = 2  # the child's exit status for a TrialLogError, printed on its stdout


def _read_in_child(path: Path, deadline_s: float | None = None) -> Trial:
    deadline_s = LIVE_READ_DEADLINE_S if deadline_s is None else deadline_s
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trial.npz"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            child = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path), str(out)],
                capture_output=True, text=True, timeout=deadline_s, env=env,
            )
        except subprocess.TimeoutExpired:
            raise TrialLogError(
                f"{path}: reading the trial log took over {deadline_s:g} s (its writer runs in another process; "
                f"the file may be damaged)"
            ) from None
        if child.returncode == _CHILD_PROBLEM:
            raise TrialLogError(child.stdout.strip())
        if child.returncode < 0:
            raise TrialLogError(f"{path}: damaged trial log (libhdf5 died reading it, signal {-child.returncode})")
        if child.returncode:
            raise RuntimeError(f"reading {path} in a child process failed:\n{child.stderr}")
        with np.load(out, allow_pickle=False) as saved:
            return Trial(
                saved["states"], saved["actions"], saved["timestamps"], saved["costs"],
                tuple(str(s) for s in saved["state_names"]), tuple(str(s) for s in saved["action_names"]),
                float(saved["dt"]), json.loads(str(saved["metadata"])), bool(saved["complete"]),
                saved["requested_actions"],
            )


def read_in_child(path: str, out: str) -> int:
    """The child's work: read `path` in SWMR mode and save the trial to `out` (.npz, no pickles)."""
    try:
        check = _check(Path(path), retry_s=LIVE_CHECK_RETRY_S)
        trial = _read(Path(path), check, swmr=check.superblock.left_open)
    except TrialLogError as err:
        print(err)
        return _CHILD_PROBLEM
    np.savez(
        out, states=trial.states, actions=trial.actions, requested_actions=trial.requested_actions,
        timestamps=trial.timestamps, costs=trial.costs,
        state_names=np.array(trial.state_names, dtype=str), action_names=np.array(trial.action_names, dtype=str),
        dt=trial.dt, metadata=json.dumps(trial.metadata), complete=trial.complete,
    )
    return 0


# -- Many trials ------------------------------------------------------------------------------------
def _run_trial_files(folder: Path) -> list[Path]:
    """A run folder's trial files: those in its trials/ folder, else those in the folder itself."""
    return sorted((folder / "trials").glob("*.h5")) or sorted(folder.glob("*.h5"))


def trial_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Trial files named directly, found in run folders (their trials/ folder, else the folder), or
    in a folder of run folders (each subfolder that holds trials, as `--out runs` fills it); a
    LeRobotDataset folder (meta/info.json), named or a subfolder, is listed as itself.

    Raises FileNotFoundError for a path that does not exist.
    """
    from forethought.robots.lerobot_dataset import is_lerobot_dataset

    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and is_lerobot_dataset(path):
            files.append(path)
        elif path.is_dir():
            found = _run_trial_files(path)
            if not found:
                for run in sorted(p for p in path.iterdir() if p.is_dir()):
                    found += [run] if is_lerobot_dataset(run) else _run_trial_files(run)
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such trial file or run folder")
    return sorted(set(files))


def load_trials(
    paths: Iterable[str | Path], lerobot: "LeRobotOptions | None" = None
) -> tuple[list[Trial], list[str]]:
    """Load trial files, run folders and LeRobotDataset folders, sorted by path; returns (trials, problems).

    A damaged file is skipped and reported as one line naming it in `problems`. A partial file
    whose finished trial also loaded (a crash between the two) is skipped silently. A LeRobot
    dataset gives its episodes, read with `lerobot` (lerobot_dataset.LeRobotOptions, None: the
    defaults); its skipped episodes are problems, a malformed dataset raises TrialLogError or
    ConfigError (it is one thing the user named, not one file among many).
    """
    loaded: dict[Path, list[Trial]] = {}
    problems: list[str] = []
    for path in trial_paths(paths):
        if path.is_dir():  # trial_paths lists no folder but a LeRobot dataset
            from forethought.robots.lerobot_dataset import load_lerobot_dataset

            episodes = load_lerobot_dataset(path, lerobot)
            loaded[path] = episodes.trials
            problems += episodes.problems
            continue
        try:
            loaded[path] = [load_trial(path)]
        except TrialLogError as err:
            problems.append(str(err))
    finished = {path for path in loaded if not path.name.endswith(PARTIAL_SUFFIX)}
    trials = [
        trial for path, found in loaded.items()
        if not (path.name.endswith(PARTIAL_SUFFIX) and _finished_path(path) in finished)
        for trial in found
    ]
    return trials, problems


def _finished_path(partial: Path) -> Path:
    return partial.with_name(partial.name.removesuffix(PARTIAL_SUFFIX) + ".h5")
