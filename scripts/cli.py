"""The `forethought` command line.

Bad input (a missing file, an unknown key or name, a bad argument, a damaged model or trial file)
is validated where it enters (YAML, arguments, files) and raised as the project's ConfigError (or
TrialLogError for a trial log, FileNotFoundError for a path given): it ends with one line on stderr
naming the thing, and exit status 2. A run that fails (a solver gave up, the simulation went
unstable, a controller asked for a NaN action) ends with one line and exit status 1; nothing already
logged is lost. Any other exception is a bug: the traceback, then one line saying so, exit status 1.
Set FORETHOUGHT_DEBUG=1 to see the traceback of bad input and failed runs too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from forethought.sim.gl_backend import choose_gl_backend

choose_gl_backend()  # before anything below imports mujoco, which reads MUJOCO_GL once

from forethought.robots.config import ConfigError
from forethought.robots.robot import ActionError
from forethought.robots.safety import Terminated
from forethought.robots.trial_log import TrialLogError
from forethought.sim.viewer import ViewerClosed

# Subcommands provided by other modules: name -> ("module", "add_arguments", "main", help).
EXTERNAL_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "fit": ("forethought.scripts.fit", "add_fit_arguments", "fit_main", "fit a dynamics model on logged trials"),
    "deploy": ("forethought.scripts.deploy", "add_deploy_arguments", "deploy_main", "run a controller on a servo arm"),
    "calibrate": ("forethought.scripts.deploy", "add_calibrate_arguments", "calibrate_main", "record a servo arm's joint ranges"),
    "emulate": ("forethought.scripts.emulate", "add_emulate_arguments", "emulate_main", "serve an emulated servo bus on a pseudo-terminal"),
    "report": ("forethought.scripts.report", "add_report_arguments", "report_main", "write a run folder's report.html"),
    "sweep": ("forethought.scripts.sweep", "add_sweep_arguments", "sweep_main", "run an experiment over seeds x settings on Ray"),
}

# Bad input (exit 2, one line). Nothing broader: a ValueError or KeyError from inside is a bug.
USER_ERRORS = (ConfigError, TrialLogError, FileNotFoundError)


def run_errors() -> tuple[type[BaseException], ...]:
    """Failures of a run that are not bad input (exit 1, one line): a solver or the simulation gave
    up, or a controller asked for a NaN action."""
    from forethought.controllers.kl_lqg import DualSearchError
    from forethought.controllers.ilqr import BackwardPassError, DivergenceError
    from forethought.controllers.mpc import MPCError
    from forethought.sim.mujoco_robot import SimulationError

    return (MPCError, DivergenceError, BackwardPassError, DualSearchError, SimulationError, ActionError)


def print_matrix() -> None:
    """The models x controllers matrix: a letter per working cell, listed below with its shipped
    experiments (or what the controller runs on), a number per refused one, listed with its reason."""
    import string

    from forethought.controllers.registry import CONTROLLERS
    from forethought.scripts.experiment import combinations

    cells = combinations()
    models = list(dict.fromkeys(cell.model for cell in cells))
    works: list[str] = []
    reasons: list[str] = []
    rows = []
    for controller in CONTROLLERS:
        row = [controller]
        for cell in (c for c in cells if c.controller == controller):
            if cell.refused is None:
                works.append(", ".join(cell.experiments) or CONTROLLERS[controller].runs_on or "(none shipped)")
                row.append(f"[{string.ascii_lowercase[len(works) - 1]}]")
            else:
                if cell.refused not in reasons:
                    reasons.append(cell.refused)
                row.append(f"no {reasons.index(cell.refused) + 1}")
        rows.append(row)
    header = ["controller \\ model", *models]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("models x controllers (model.type x controller.type):")
    for row in [header, *rows]:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    for i, experiments in enumerate(works):
        print(f"  [{string.ascii_lowercase[i]}] {experiments}")
    for i, reason in enumerate(reasons, 1):
        print(f"  no {i}: {reason}")


def cmd_list(args: argparse.Namespace) -> int:
    from forethought.controllers.registry import CONTROLLERS
    from forethought.models.registry import MODELS
    from forethought.robots.arm_description import arm_names
    from forethought.scripts.bench import BENCHMARKS
    from forethought.scripts.experiment import shipped_experiments
    from forethought.sim.scenes import scene_names

    if args.what == "matrix":
        print_matrix()
        return 0
    sections = {
        "scenes (robot.scene)": scene_names(),
        "experiments (forethought run NAME)": shipped_experiments(),
        "controllers (controller.type)": [f"{name:14s} {entry.summary}" for name, entry in CONTROLLERS.items()],
        "models (model.type, forethought fit --model)": list(MODELS),
        "arms (forethought deploy --arm)": arm_names(),
        "benchmarks (forethought bench NAME)": sorted(BENCHMARKS),
    }
    if args.what in (None, "dmc"):
        from forethought.sim.dmc_robot import dmc_task_names

        sections["dm_control tasks (forethought run dmc:DOMAIN:TASK)"] = dmc_task_names()
    for title, names in sections.items():
        if args.what == "dmc" and not title.startswith("dm_control"):
            continue
        print(f"{title}:")
        for name in names:
            print(f"  {name}")
    if args.what is None:
        print_matrix()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from forethought.scripts.experiment import load_experiment
    from forethought.scripts.run import run_experiment

    if args.resume is not None:
        return resume_run(args)
    if args.experiment is None:
        raise ConfigError("run: name an experiment, or a run folder with --resume")
    experiment = load_experiment(args.experiment)
    experiment.override(seed=args.seed, trials=args.trials, horizon=args.horizon)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    robot = None
    if args.view:
        from forethought.scripts.experiment import make_robot
        from forethought.sim.viewer import ViewedRobot, view_unavailable

        why = view_unavailable()
        if why is not None:
            raise ConfigError(f"--view: {why}")
        conditions = len(experiment.task.conditions)
        robot = ViewedRobot(make_robot(experiment.robot), experiment.loop.iterations * experiment.loop.samples * conditions)
    print(f"running {experiment.name} ({experiment.source}) -> {args.out}", file=sys.stderr)
    try:
        result = run_experiment(experiment, Path(args.out), render_video=False if args.no_video else None, robot=robot,
                                workers=args.workers)
    except ViewerClosed:
        print("forethought run: the viewer was closed; the run stopped with its trials so far kept", file=sys.stderr)
        return 0
    print(f"run folder: {result.folder}")
    return 0


def resume_run(args: argparse.Namespace) -> int:
    """`forethought run --resume RUN_DIR`: the run goes on from its last checkpoint, with the
    experiment of its config.yaml and, unless --threads says otherwise, the torch threads it ran on."""
    import torch

    from forethought.scripts import checkpoint
    from forethought.scripts.run import experiment_of_run, run_experiment

    given = [f"--{k}" for k in ("seed", "trials", "horizon") if getattr(args, k) is not None]
    given = ([args.experiment] if args.experiment else []) + given + (["--view"] if args.view else [])
    if given:
        raise ConfigError(f"--resume: the run's config.yaml is its experiment; drop {' '.join(given)}")
    folder = Path(args.resume)
    experiment = experiment_of_run(folder)
    saved = checkpoint.load(folder)
    threads = args.threads if args.threads is not None else (saved or {}).get("threads")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(int(threads))
    where = f"iteration {saved['iterations'] + 1}" if saved else "its start (no checkpoint yet)"
    print(f"resuming {folder} from {where}", file=sys.stderr)
    result = run_experiment(experiment, folder.parent, render_video=False if args.no_video else None,
                            folder=folder, resume=True, workers=args.workers)
    print(f"run folder: {result.folder}")
    return 0


BENCH_OPTIONS = ("seeds", "minutes", "corrupt", "drop", "arm", "packets")


def cmd_bench(args: argparse.Namespace) -> int:
    from forethought.scripts.bench import run_benchmark, write_result

    options = {key: getattr(args, key) for key in BENCH_OPTIONS if getattr(args, key) is not None}
    if args.against is not None:
        from forethought.scripts.bench import check_benchmark
        from forethought.scripts.bench_against import BenchRunFailed, run_against

        check_benchmark(args.name, options)  # before the revision's first round, not after it
        try:
            result = run_against(args.name, args.quick, options, args.against,
                                 3 if args.rounds is None else args.rounds)
        except BenchRunFailed as err:
            print(f"forethought bench: {err}", file=sys.stderr)
            return err.returncode
    elif args.rounds is not None:
        raise ConfigError("--rounds: only with --against REV")
    else:
        result = run_benchmark(args.name, quick=args.quick, **options)
    write_result(result, Path(args.out) if args.out else None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forethought",
        description="Model-based control for robot arms: run experiments in simulation, fit models "
        "from logged trials, deploy on a low-cost servo arm.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("list", help="list scenes, shipped experiments, controllers, models, benchmarks, "
                                         "dm_control tasks, and the models x controllers matrix")
    p.add_argument("what", nargs="?", choices=["dmc", "matrix"], help="only the dm_control tasks, or only the matrix")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("run", help="run an experiment in simulation and write a run folder")
    p.add_argument("experiment", nargs="?",
                   help="a shipped name (forethought list), a YAML path, or dmc:DOMAIN:TASK (none with --resume)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the interrupted run in RUN_DIR from its last complete iteration (its checkpoint)")
    p.add_argument("--seed", type=int, help="seed for everything random (default: the experiment's)")
    p.add_argument("--out", default="runs", help="folder that receives the run folder (default: runs)")
    p.add_argument("--trials", type=int, help="iterations of the loop (trials per condition and sample)")
    p.add_argument("--horizon", type=int, help="steps per trial (default: the experiment's)")
    p.add_argument("--no-video", action="store_true", help="skip rendering the video of the last trial")
    p.add_argument("--threads", type=int,
                   help="torch threads (default: one per core); 1 when several runs share the cores")
    p.add_argument("--workers", type=int, metavar="N",
                   help="run each iteration's rollouts (samples x conditions) on N Ray workers, with the trials "
                        "of a serial run (gps, mdgps)")
    p.add_argument("--view", action="store_true",
                   help="watch the run live in MuJoCo's viewer (needs a display); closing it stops the run")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("bench", help="run a benchmark and write its JSON")
    p.add_argument("name", help="benchmark name (forethought list)")
    p.add_argument("--out", help="write the JSON result to this file too")
    p.add_argument("--quick", action="store_true", help="a shorter run, for a smoke check")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="seeds 0 to N-1 for the benchmarks that run seeds (pilco, gps, mpc, sweep, learning, policies), run as a sweep on Ray")
    p.add_argument("--minutes", type=float, help="servo_soak: minutes per arm (default 10)")
    p.add_argument("--corrupt", type=float, help="servo_soak: rate of corrupted replies (default 0.02)")
    p.add_argument("--drop", type=float, help="servo_soak: rate of replies that never come (default 0)")
    p.add_argument("--arm", help="servo_soak: one arm only (so101, koch)")
    p.add_argument("--packets", type=int, help="servo_fuzz: mutated packets (default 100,000)")
    p.add_argument("--against", metavar="REV",
                   help="run the same benchmark at git revision REV too, alternating, each in its own process; "
                        "the JSON gets the medians and each number's ratio to REV's")
    p.add_argument("--rounds", type=int, metavar="N", help="with --against: rounds of the two (default 3)")
    p.set_defaults(func=cmd_bench)

    for name, (module_name, add_arguments, main, help_text) in EXTERNAL_COMMANDS.items():
        module = importlib.import_module(module_name)
        p = commands.add_parser(name, help=help_text)
        getattr(module, add_arguments)(p)
        p.set_defaults(func=getattr(module, main))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if os.environ.get("FORETHOUGHT_DEBUG"):
            raise
        print(f"forethought {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except run_errors() as err:
        if os.environ.get("FORETHOUGHT_DEBUG"):
            raise
        print(f"forethought {args.command}: failed: {one_line(err)} (trials logged so far are kept)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"forethought {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"forethought {args.command}: terminated", file=sys.stderr)
        return 143
    except Exception:
        traceback.print_exc()
        print(f"forethought {args.command}: internal error: this is a bug in forethought, not bad input "
              "(the traceback above says where; trials logged so far are kept)", file=sys.stderr)
        return 1


def one_line(err: BaseException) -> str:
    """An error's message on one line (a FileNotFoundError from open() says strerror and the name)."""
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or 'file not found'}"
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
