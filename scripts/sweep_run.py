"""One run of a sweep, as a Ray task runs it: the experiment loop (scripts/run.py) into the run's own
folder, on as many torch and BLAS threads as the run has CPUs, its output in the folder's run.log.

What it returns (and the sweep keeps in the run folder's sweep_run.json) is the run's record: its
setting and seed, `status` ("done" or "failed", with the error's line; the traceback goes to
error.txt), and for a finished run what the sweep's summary reads, from the run's summary.json:
the learning curve, each iteration's success rate by the task's goal, the first iteration with a
success and the trials run up to it, the final cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

RECORD = "sweep_run.json"


@dataclass(frozen=True)
class RunSpec:
    """What a run needs, sent to its Ray task: the setting's name, the seed, the run folder (on a
    file system every node sees), the resolved experiment (Experiment.as_dict()) and its CPUs."""

    setting: str
    seed: int
    folder: str
    experiment: dict
    cpus: int


def outcome(summary: dict, trials: list) -> dict:
    """What the sweep keeps of a finished run's summary.json (scripts/run_outputs.py) and trials:
    learning_curve [iteration][trial] cost; success_rate per iteration (None without a goal);
    first_success_iteration (1-based, None if none); trials_to_success: trials run up to and
    including that iteration; interaction_s: their seconds of experience; final_cost: mean cost of
    the last iteration's trials; final_success_rate: that iteration's success rate; update_s: each
    update's wall time."""
    curve = summary["learning_curve"]
    first = summary.get("first_success_iteration")
    used = [t for t in trials if first is not None and int(t.metadata.get("iteration", 0)) < first]
    rates = summary.get("success_rate")
    return {
        "complete": summary["complete"],
        "goal": summary.get("goal"),
        "learning_curve": curve,
        "success_rate": rates,
        "first_success_iteration": first,
        "trials_to_success": sum(len(c) for c in curve[:first]) if first is not None else None,
        "interaction_s": sum(t.horizon * t.dt for t in used) if first is not None else None,
        "final_cost": float(sum(curve[-1]) / len(curve[-1])),
        "final_success_rate": rates[-1] if rates else None,
        "update_s": [d.get("update_s") for d in summary.get("diagnostics", [])],
    }


def ray_node() -> str | None:
    """The id of the Ray node this runs on (None outside a Ray task)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


@contextlib.contextmanager
def output_to(path: Path, append: bool = False):
    """Send this process's stdout and stderr to `path` for the block: Python's (the run's lines) and
    the file descriptors' (what MuJoCo's C code prints), then restore them. append: after what the
    file holds (a resumed run's log goes on)."""
    with open(path, "a" if append else "w") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def same_experiment(a: dict, b: dict) -> bool:
    """Whether two resolved experiments (Experiment.as_dict()) run the same: not the file's path
    (written otherwise from another folder), nor its prose."""

    def runs(config: dict) -> dict:
        return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in ("source", "description")}

    return runs(a) == runs(b)


def can_resume(folder: Path, experiment: dict) -> bool:
    """Whether the unfinished run in `folder` goes on from its checkpoint: it has one, its
    config.yaml is this very experiment, and it has not finished (a run that finished without its
    record, as a killed driver leaves it, runs again)."""
    import yaml

    from forethought.scripts.checkpoint import FILE

    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    try:
        finished = json.loads((folder / "summary.json").read_text()).get("complete", False)
    except (OSError, ValueError):
        finished = False
    return ((folder / FILE).is_file() and not finished and isinstance(config, dict)
            and same_experiment(config, experiment))


def run_one(spec: RunSpec) -> dict:
    """Run `spec` into its folder and return its record; a run's error is caught and recorded, so
    that it never stops the sweep. An unfinished run of the same experiment with a checkpoint goes
    on from it (`forethought run --resume`); anything else a run left there is removed first."""
    from threadpoolctl import threadpool_limits

    from forethought.sim.gl_backend import choose_gl_backend

    choose_gl_backend()  # before mujoco is imported in this worker
    from forethought.models.torch_threads import torch_threads
    from forethought.scripts.experiment import experiment_from_data
    from forethought.scripts.run import run_experiment

    started = time.perf_counter()
    folder = Path(spec.folder)
    try:
        resume = can_resume(folder, experiment_from_data(spec.experiment, spec.experiment.get("source")
                                                         or spec.setting).as_dict())
    except Exception:  # a bad experiment: the run fails below, where its error is recorded
        resume = False
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    if resume:
        (folder / "error.txt").unlink(missing_ok=True)  # of an earlier try; this one writes its own
    folder.mkdir(parents=True, exist_ok=True)
    record = {"setting": spec.setting, "seed": spec.seed, "cpus": spec.cpus, "host": socket.gethostname(),
              "node": ray_node(), "resumed": resume}
    try:
        with output_to(folder / "run.log", append=resume), torch_threads(spec.cpus), threadpool_limits(spec.cpus):
            experiment = experiment_from_data(spec.experiment, spec.experiment.get("source") or spec.setting)
            result = run_experiment(experiment, folder.parent, render_video=False, folder=folder, resume=resume)
        summary = json.loads((folder / "summary.json").read_text())
        record.update(status="done", error=None, **outcome(summary, result.trials))
    except Exception as err:  # recorded for the sweep to report; a KeyboardInterrupt still stops the run
        text = str(err).splitlines()[0] if str(err) else ""
        record.update(status="failed", error=f"{type(err).__name__}: {text}".rstrip(": "))
        (folder / "error.txt").write_text(traceback.format_exc())
    record["wall_s"] = time.perf_counter() - started
    return record


def failed_record(spec: RunSpec, error: str) -> dict:
    """The record of a run whose task ended without a record (its worker died, Ray gave up on it)."""
    return {"setting": spec.setting, "seed": spec.seed, "cpus": spec.cpus, "status": "failed", "error": error,
            "wall_s": None}


def write_record(spec: RunSpec, record: dict) -> None:
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps({**record, "config": spec.experiment}, indent=2))
    tmp.replace(folder / RECORD)  # atomic: a record on disk is a whole one


def finished_record(spec: RunSpec) -> dict | None:
    """The record of a run that finished in an earlier invocation with this very experiment, else
    None (never run, unfinished, failed: it runs again). A finished run whose experiment differs
    is refused: its folder belongs to another sweep."""
    from forethought.robots.config import ConfigError

    path = Path(spec.folder) / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("status") != "done":
        return None

    if not same_experiment(record.get("config") or {}, spec.experiment):
        raise ConfigError(f"{path}: this run finished with another experiment (the file or a setting changed); "
                          "sweep into another --out")
    record.pop("config")
    return record
