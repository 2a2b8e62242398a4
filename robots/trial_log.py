"""The trial log: one HDF5 file per trial, readable with plain h5py.

Layout of a trial file (all arrays float64, time-major):

    /states        (T+1, n)  x_0 .. x_T, in the units of the robot's state
    /actions       (T, m)    u_0 .. u_{T-1}, as the robot applied them (clipped to its bounds in
                             simulation; on a servo arm the goals written to the bus, after the
                             safety layer's limits, rate limit and brake)
    /requested_actions (T, m) what the controller asked for at each step (format 2 on; a format 1
                             file has /actions only, the requests clipped to the bounds, and reads
                             with requested_actions equal to actions)
    /timestamps    (T+1,)    seconds since the trial started (x_0 at 0): simulated time in simulation,
                             the wall clock on hardware
    /costs         (T+1,)    running cost l(x_t, u_t) for t < T, terminal cost at T; NaN where none
    attributes of the root group:
      format          "forethought.trial"
      format_version  2
      state_names     (n,) strings, action_names (m,) strings
      dt              control period in seconds
      robot, task, controller, created (ISO 8601, UTC), version (forethought's)   strings
      seed            int (absent for an unseeded trial)
      complete        True for a finished trial, False for one still being written
      metadata        the trial's whole metadata as a JSON string

A finished trial `trial_0003.h5` is written atomically (a temporary file in the same folder,
fsync, rename), so it is either absent or whole. While a trial runs, `TrialWriter` logs it to
`trial_0003.partial.h5` in HDF5's single-writer/multiple-reader mode, flushing at least once a
second: if the process dies, even by SIGKILL, every step up to the last flush stays readable.
Finishing the trial replaces the partial file by the finished one. A partial file left by a
crash is marked open for writing; open it with `h5py.File(path, "r", swmr=True)` (or clear the
mark with HDF5's `h5clear -s`). Its datasets may run a few rows past what was flushed, filled
with NaN; `load_trial` keeps the longest prefix on which all of them agree. `load_trial` and
`load_trials` (robots/trial_log_read.py) read any file in bounded time, and a damaged one gives a
TrialLogError naming it.

    import h5py, json
    with h5py.File("trial_0003.h5", "r", swmr=True) as f:
        x, u = f["states"][:], f["actions"][:]
        names = list(f.attrs["state_names"]); meta = json.loads(f.attrs["metadata"])
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import time
from pathlib import Path

import h5py
import numpy as np

from forethought.robots.robot import RobotSpec
from forethought.robots.trial import Trial, package_version
from forethought.robots.trial_log_checks import DATASETS, FORMAT, FORMAT_VERSION, TrialLogError
from forethought.robots.trial_log_read import PARTIAL_SUFFIX, load_trial, load_trials, trial_paths
from forethought.robots.trial_writer_lock import WriterLock

__all__ = ["PARTIAL_SUFFIX", "TrialLogError", "TrialWriter", "json_default", "load_trial", "load_trials",
           "partial_path", "save_trial", "trial_paths"]


def partial_path(path: str | Path) -> Path:
    """Where the trial that will end up at `path` (trial_0003.h5) is logged while it runs."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".h5") + PARTIAL_SUFFIX)


def json_default(value):
    """For json.dumps(default=...): numpy scalars and arrays as numbers and lists, anything else as str."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)  # a log is never lost over an odd metadata value


def _write_attrs(f: h5py.File, state_names, action_names, dt: float, metadata: dict, complete: bool) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["state_names"] = list(state_names)
    f.attrs["action_names"] = list(action_names)
    f.attrs["dt"] = float(dt)
    for key in ("robot", "task", "controller", "created", "version"):
        f.attrs[key] = str(metadata.get(key, ""))
    seed = metadata.get("seed")
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        f.attrs["seed"] = int(seed)
    f.attrs["complete"] = bool(complete)
    f.attrs["metadata"] = json.dumps(metadata, default=json_default)


# -- Finished trials --------------------------------------------------------------------------------
def save_trial(trial: Trial, path: str | Path) -> Path:
    """Write `trial` to `path` atomically: the file is either the old one or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name beside the target (same file system, so the rename is atomic); "x" never clobbers.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with h5py.File(tmp, "x") as f:
            for name in DATASETS:
                f.create_dataset(name, data=getattr(trial, name))
            _write_attrs(f, trial.state_names, trial.action_names, trial.dt, trial.metadata, trial.complete)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- Trials in progress -----------------------------------------------------------------------------
class TrialWriter:
    """Logs a running trial step by step (a StepSink for `rollout`), crash-consistently.

    path: where the finished trial goes (trial_0003.h5); the steps go to partial_path(path) until
        `finish`. metadata: the trial's metadata so far (kept by reference: changes made to the dict
        before the writer closes reach the partial file). x0: (n,) the first state, or give it
        later with `start`; a partial file whose x0 was never given loads from its first logged step.
    flush_interval: seconds between flushes (at most 1 s), checked at each `append`, so a fast
        control loop pays for one write per interval rather than one per step.
    """

    def __init__(
        self,
        path: str | Path,
        spec: RobotSpec,
        metadata: dict | None = None,
        x0: np.ndarray | None = None,
        flush_interval: float = 0.5,
    ):
        if not 0 <= flush_interval <= 1:
            raise ValueError(f"flush_interval must be within [0, 1] s, got {flush_interval}")
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.spec = spec
        self.metadata = metadata if metadata is not None else {}
        self.flush_interval = flush_interval
        self._rows: list[tuple[np.ndarray, np.ndarray, float, float, np.ndarray]] = []
        self._steps = 0  # steps written to the datasets
        self._finished = False

        self._defaults = {
            "robot": spec.name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "version": package_version(),
        }
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.partial, "w", libver="latest")
        # Readers tell a running writer (SWMR read) from a dead one (plain read) by this lock.
        self._lock: WriterLock | None = WriterLock(self.partial)
        f, n, m = self._file, spec.n, spec.m

        def growing(name: str, shape: tuple[int, ...]) -> h5py.Dataset:
            # NaN fill: rows whose extent reached the disk before their data read as NaN, not zeros.
            rest = shape[1:]
            return f.create_dataset(name, shape, maxshape=(None, *rest), chunks=(256, *rest), dtype="f8", fillvalue=np.nan)

        self._states, self._actions = growing("states", (1, n)), growing("actions", (0, m))
        self._requested = growing("requested_actions", (0, m))
        self._stamps, self._costs = growing("timestamps", (1,)), growing("costs", (1,))
        self._stamps[0] = 0.0
        self._write_attrs()
        f.swmr_mode = True
        if x0 is not None:
            self.start(x0)
        f.flush()
        self._last_flush = time.monotonic()

    def _write_attrs(self) -> None:
        metadata = {**self._defaults, **self.metadata}
        _write_attrs(self._file, self.spec.state_names, self.spec.action_names, self.spec.dt, metadata, complete=False)

    @property
    def flushed_steps(self) -> int:
        """Steps on disk, readable after a crash."""
        return self._steps

    def start(self, x0: np.ndarray) -> None:
        """Record the first state x0: (n,)."""
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.shape != (self.spec.n,):
            raise ValueError(f"{self.partial}: x0 must have shape ({self.spec.n},), got {x0.shape}")
        self._states[0] = x0

    def append(self, x_next: np.ndarray, u: np.ndarray, timestamp: float, cost: float,
               requested: np.ndarray | None = None) -> None:
        """Log one step: u: (m,) applied at x_t, x_next: (n,), timestamp (s), cost l(x_t, u_t);
        requested: (m,) what the controller asked for (default: u)."""
        if self._finished:
            raise RuntimeError(f"{self.partial}: the trial is already finished")
        x_next, u = np.array(x_next, dtype=np.float64), np.array(u, dtype=np.float64)
        requested = u.copy() if requested is None else np.array(requested, dtype=np.float64)
        if x_next.shape != (self.spec.n,) or u.shape != (self.spec.m,) or requested.shape != (self.spec.m,):
            raise ValueError(
                f"{self.partial}: a step needs x_next ({self.spec.n},), u and requested ({self.spec.m},), "
                f"got {x_next.shape}, {u.shape} and {requested.shape}"
            )
        self._rows.append((x_next, u, float(timestamp), float(cost), requested))
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Write the buffered steps and make them readable after a crash."""
        rows, self._rows = self._rows, []
        if rows:
            start, stop = self._steps, self._steps + len(rows)
            states = np.stack([r[0] for r in rows])
            actions = np.stack([r[1] for r in rows])
            stamps = np.array([r[2] for r in rows], dtype=np.float64)
            costs = np.array([r[3] for r in rows], dtype=np.float64)
            requested = np.stack([r[4] for r in rows])
            self._actions.resize((stop, self.spec.m))
            self._actions[start:stop] = actions
            self._requested.resize((stop, self.spec.m))
            self._requested[start:stop] = requested
            self._states.resize((stop + 1, self.spec.n))
            self._states[start + 1 : stop + 1] = states
            self._stamps.resize((stop + 1,))
            self._stamps[start + 1 : stop + 1] = stamps
            # costs[t] belongs to step t; the last slot waits for the next step or the terminal cost.
            self._costs.resize((stop + 1,))
            self._costs[start:stop] = costs
            self._steps = stop
        self._file.flush()
        self._last_flush = time.monotonic()

    def finish(self, trial: Trial) -> Path:
        """Write the whole `trial` atomically to `path` and remove the partial file."""
        if trial.state_names != self.spec.state_names or trial.action_names != self.spec.action_names:
            raise ValueError(f"{self.path}: the trial's state or action names differ from the robot's")
        self._rows = []
        self._file.close()
        save_trial(trial, self.path)
        self.partial.unlink(missing_ok=True)
        self._release_lock()
        self._finished = True
        return self.path

    def close(self) -> None:
        """Flush and close without finishing: the partial file keeps every step logged."""
        if self._finished:
            return
        try:
            if self._file:  # not already closed by a `finish` that failed
                self.flush()
                self._write_attrs()  # the metadata may have grown while the trial ran
                self._file.close()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "TrialWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
