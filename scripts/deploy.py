"""`forethought deploy` and `forethought calibrate`: the servo arm on the command line (`emulate`
serves an emulated one: scripts/emulate.py).

    forethought emulate --arm so101                       # prints a port; an arm answers on it
    forethought calibrate --arm so101 --port PORT         # records ~/.forethought/calibration/so101.yaml
    forethought deploy EXPERIMENT --arm so101 --port PORT # runs the experiment's controller on the arm

`deploy` builds the experiment's controller on the arm's MuJoCo scene for the experiment's task
(so101_reach, koch_reach, ...), runs it on the servo arm at the scene's control rate through the
safety layer, logs trials as `forethought run` does, and prints the loop's rate statistics. When
a servo stops answering or reports a fault, torque goes off on every servo, the trial logged so
far is kept, and the command ends with one line that names the servo.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np
import yaml

from forethought.robots.arm_description import ArmDescription, arm_names, load_arm, make_bus
from forethought.robots.calibration import Calibration, CalibrationError, measure_calibration
from forethought.robots.config import ConfigError
from forethought.robots.realtime import realtime_thread
from forethought.robots.robot import ActionError
from forethought.robots.safety import SafetyStop, Terminated, exit_signals_raise
from forethought.robots.servo_arm import ServoArm
from forethought.robots.servo_bus import DEFAULT_TIMEOUT_MARGIN_MS, BusError, ServoBus
from forethought.robots.servo_wire import usb_latency_timer_ms
from forethought.robots.trial import Trial, rollout
from forethought.robots.trial_log import TrialWriter
from forethought.scripts.experiment import build_parts, load_experiment, make_robot
from forethought.scripts.run import (
    Progress, RunResult, TrialSlot, judge_trial, judgement_text, make_cost, new_run_folder, run_loop, write_outputs,
)
from forethought.sim.scenes import scene_names

EXIT_FAILED = 1  # the arm stopped: a servo failed or reported a fault, or the controller sent NaN
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def default_calibration_path(arm: str) -> Path:
    """$FORETHOUGHT_HOME/calibration/ARM.yaml (FORETHOUGHT_HOME defaults to ~/.forethought)."""
    home = Path(os.environ.get("FORETHOUGHT_HOME", Path.home() / ".forethought"))
    return home / "calibration" / f"{arm}.yaml"


def check_usb_latency(port: str, allow_slow: bool) -> None:
    """ConfigError when the port's USB latency timer would stretch every bus exchange past a period."""
    latency = usb_latency_timer_ms(port)
    if latency is None or latency <= 2 or allow_slow:
        return
    device = Path(os.path.realpath(port)).name
    raise ConfigError(
        f"{port}: the USB latency timer is {latency:.0f} ms, which stalls every read; set it to 1 ms with "
        f"`echo 1 | sudo tee /sys/bus/usb-serial/devices/{device}/latency_timer` (or pass --allow-slow-usb)"
    )


# -- deploy ----------------------------------------------------------------------------------------

@dataclass
class DeployResult(RunResult):
    """A run's trials, learning curve and diagnostics, plus the loop statistics and reach errors per
    trial; no folder after a dry run."""

    folder: Path | None = None
    trials: list[Trial] = field(default_factory=list)
    loop: list[dict] = field(default_factory=list)
    periods_ms: list[np.ndarray] = field(default_factory=list)  # each trial's loop periods (the clock's), ms
    reach_error_m: list[float] = field(default_factory=list)
    reach_by_trial: list[float | None] = field(default_factory=list)


class ArmStopped(RuntimeError):
    """The run ended early; the message is the one line to show, naming the servo or the reason."""

    def __init__(self, message: str, exit_code: int, result: DeployResult):
        super().__init__(message)
        self.exit_code, self.result = exit_code, result


def task_scene(arm: ArmDescription, experiment_scene: str) -> str:
    """`arm`'s scene for the task of an experiment's scene: "so101_reach" -> "koch_reach" on the Koch."""
    stem = Path(experiment_scene).stem
    task = stem.split("_", 1)[1] if "_" in stem else stem
    name = f"{arm.name}_{task}"
    if name not in scene_names():
        raise ConfigError(f"arm {arm.name} has no scene for the task '{task}' of scene {stem} (expected {name})")
    return name


def _arm_experiment(experiment, arm: ArmDescription):
    """The experiment moved onto `arm`'s scene for the same task."""
    if experiment.robot.scene is None:
        raise ConfigError(f"{experiment.source}: robot: deploy needs an experiment on an arm scene, not a dm_control task")
    robot = dataclasses.replace(experiment.robot, scene=task_scene(arm, experiment.robot.scene))
    return dataclasses.replace(experiment, robot=robot)


def _home_qpos(sim) -> np.ndarray:
    key = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_KEY, "home")
    return sim.model.key_qpos[key].copy() if key >= 0 else sim.model.qpos0.copy()


def _check_scene_matches(sim, arm: ArmDescription, robot: ServoArm) -> None:
    if tuple(sim.spec.action_names) != arm.names:
        raise ConfigError(f"scene {sim.spec.name}: actuators {list(sim.spec.action_names)} are not the joints of arm {arm.name} {list(arm.names)}")
    if tuple(sim.spec.state_names) != robot.spec.state_names:
        extra = [n for n in sim.spec.state_names if n not in robot.spec.state_names]
        raise ConfigError(
            f"scene {sim.spec.name}: its state has entries the arm cannot measure ({', '.join(extra[:4])}...): "
            "deploy runs experiments whose state is the arm's joints"
        )
    if abs(sim.spec.dt - robot.spec.dt) > 1e-9:
        raise ConfigError(f"scene {sim.spec.name}: control period {sim.spec.dt} s differs from the arm's {robot.spec.dt} s")


def deploy(
    experiment,
    arm: ArmDescription,
    port: str,
    calibration: Calibration,
    out_root: Path,
    dry_run: bool = False,
    velocity_source: str = "servo",
    timeout_margin_ms: float = DEFAULT_TIMEOUT_MARGIN_MS,
    stream=None,
    write_phase: float = 0.5,
    bus: ServoBus | None = None,
    realtime: bool = False,
) -> DeployResult:
    """Run `experiment`'s controller on the servo arm; see the module docstring. Progress and
    messages go to `stream` (default stderr).

    Raises ArmStopped (after torque off, with the trials logged so far) when the run ends early.
    bus: the ServoBus to drive the arm through (default: one for the arm on `port`), e.g. to read
    its retry log afterwards. realtime: run each trial's loop at real-time priority where the OS
    allows it (robots/realtime.py; the updates between trials run as before).
    """
    stream = stream or sys.stderr

    experiment = _arm_experiment(experiment, arm)
    sim = make_robot(experiment.robot)
    bus = bus if bus is not None else make_bus(arm, port, timeout_margin_ms=timeout_margin_ms)
    robot = ServoArm(arm, port, calibration, sim.spec.dt, velocity_source=velocity_source, bus=bus,
                     write_phase=write_phase)
    _check_scene_matches(sim, arm, robot)
    home = _home_qpos(sim)
    result = DeployResult(folder=None)

    if dry_run:
        with robot:
            _dry_run(robot, stream)
        return result

    parts = build_parts(experiment, sim)
    task, model, controller = parts.task, parts.model, parts.controller
    models = [model] if model is not None else []
    loop = experiment.loop
    costs = [make_cost(experiment, sim, condition) for condition in task.conditions]
    result.folder = new_run_folder(Path(out_root), f"{experiment.name}-{arm.name}")
    config = experiment.as_dict()
    config["deploy"] = {"arm": arm.name, "port": str(port), "calibration_created": calibration.created}
    (result.folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    progress = Progress(loop.iterations * loop.samples * len(task.conditions), task.horizon, stream)
    stop: tuple[str, int] | None = None

    def prepare(index: int) -> None:
        task.apply(index, sim, models)
        condition = task.conditions[index]
        robot.start_pose = np.asarray(condition.get("qpos", home), dtype=np.float64)[: robot.spec.m]

    def run_trial(slot: TrialSlot, policy) -> Trial:
        condition = task.conditions[slot.condition]
        meta = dict(slot.metadata, arm=arm.name, port=str(port))
        with TrialWriter(result.folder / "trials" / f"trial_{slot.index:04d}.h5", robot.spec, meta) as writer:
            try:
                with realtime_thread() if realtime else nullcontext("normal") as scheduling:
                    meta["scheduling"] = scheduling
                    trial = rollout(robot, policy, task.horizon, slot.seed, costs[slot.condition], meta, writer,
                                    progress.step)
            except BaseException:
                robot.close()  # torque off first, then the writer keeps what was logged
                raise
            finally:
                meta.update(_run_facts(robot))
            trial.metadata.update(_run_facts(robot))
            error = _reach_error(sim, condition, trial.states[-1])
            result.reach_by_trial.append(error)
            if error is not None:
                trial.metadata["reach_error_m"] = error
                result.reach_error_m.append(error)
            judgement = judge_trial(task, trial, slot.condition, result)
            writer.finish(trial)
        result.loop.append(dict(robot.loop_stats(), scheduling=meta["scheduling"]))
        result.periods_ms.append(np.diff(robot.clock.ticks) * 1e3)
        if realtime and slot.index == 0:
            stream.write(f"control loop at {meta['scheduling']} priority" + (
                "" if meta["scheduling"].startswith("SCHED_FIFO") else
                " (real-time scheduling needs root, CAP_SYS_NICE or an rtprio limit)") + "\n")
        reach = f", end effector {error * 1e3:.1f} mm from the target" if error is not None else ""
        progress.trial_done(f"trial {slot.index + 1}: cost {trial.total_cost:.4g}{reach}{judgement_text(judgement)}")
        return trial

    with exit_signals_raise(), robot:
        try:
            run_loop(experiment, task, controller, prepare, run_trial, result, progress, model)
        except (BusError, SafetyStop) as err:
            stop = (str(err), EXIT_FAILED)
        except ActionError as err:
            stop = (f"{err} (the controller's action)", EXIT_FAILED)
        except KeyboardInterrupt:
            stop = ("interrupted", EXIT_INTERRUPTED)
        except Terminated:
            stop = ("terminated", EXIT_TERMINATED)
    # Torque is off here: the arm's `with` closed it on every path above.
    if stop is not None:
        stream.write("\n")  # end the progress line before the message
    if result.trials:
        write_outputs(experiment, task, robot, result, video=False, costs=costs)
    if stop is not None:
        raise ArmStopped(f"{stop[0]}: torque is off; trials so far are in {result.folder / 'trials'}", stop[1], result)
    return result


def _run_facts(robot: ServoArm) -> dict:
    return {
        "interventions": dict(robot.interventions),
        "loop": robot.loop_stats(),
        "bus": dict(robot.bus.stats),
    }


def _reach_error(sim, condition: dict, x_final: np.ndarray) -> float | None:
    """Distance (m) of the end effector from the target at the trial's last state, when the task has both:
    the measured joints put into the scene (`sim`), the site `ee` placed by its kinematics."""
    target = condition.get("target")
    if target is None:
        return None
    try:
        sim.set_state(x_final)
        return float(np.linalg.norm(sim.site_pos("ee") - np.asarray(target, dtype=np.float64)))
    except ValueError:
        return None


def _dry_run(robot: ServoArm, stream) -> None:
    """Check the bus, the servos, the calibration and the limits without moving; print what was found."""
    x = robot.check()
    reading = robot.last_reading
    m = robot.spec.m
    times = []
    for _ in range(50):
        started = time.perf_counter()
        robot.bus.read_state()
        times.append((time.perf_counter() - started) * 1e3)
    print(f"{robot.arm.name} on {robot.spec.metadata['port']}: {m} servos answer with the described models", file=stream)
    limits = robot.safety.limits
    for i, name in enumerate(robot.spec.action_names):
        print(
            f"  {name:14s} {x[i]:+7.3f} rad  limits [{limits.lower[i]:+.3f}, {limits.upper[i]:+.3f}]  "
            f"{reading.voltage[i]:4.1f} V  {reading.temperature[i]:3.0f} C",
            file=stream,
        )
    print(
        f"  sync read of every servo: {np.median(times):.2f} ms median, {np.percentile(times, 99):.2f} ms p99 "
        f"(control period {robot.spec.dt * 1e3:.1f} ms); torque stayed off",
        file=stream,
    )


def format_loop_stats(stats: dict) -> str:
    if not stats.get("ticks"):
        return "loop: no ticks"
    line = (
        f"loop: {stats['rate_hz']:.2f} Hz over {stats['ticks']} ticks (target {stats['target_period_ms']:.1f} ms); "
        f"period mean {stats['period_mean_ms']:.2f} ms, p50 {stats['period_p50_ms']:.2f}, "
        f"p99 {stats['period_p99_ms']:.2f}, max {stats['period_max_ms']:.2f}; jitter {stats['jitter_ms']:.3f} ms; "
        f"{stats['overruns']} overruns"
    )
    if "controller_p50_ms" in stats:
        line += (
            f"; controller {stats['controller_p50_ms']:.1f} ms p50, {stats['controller_p99_ms']:.1f} p99; "
            f"bus read {stats['bus_read_p50_ms']:.1f} ms p50, {stats['bus_read_p99_ms']:.1f} p99"
        )
    if "latency_p50_ms" in stats:
        line += (
            f"; read to write {stats['latency_p50_ms']:.1f} ms p50, {stats['latency_p99_ms']:.1f} p99 "
            f"(goals written at {stats['write_phase']:.2f} of the period, {stats['late_writes']} late)"
        )
    if "stale_ticks" in stats:
        line += (
            f"; bus retries {stats['bus_retries']}, stale ticks {stats['stale_ticks']} "
            f"(longest run {stats['longest_stale_ticks']})"
        )
    return line


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="a shipped experiment name or a YAML path (forethought list)")
    _add_bus_arguments(parser)
    parser.add_argument("--policy", metavar="RUN_DIR",
                        help="deploy the network policy an MDGPS, distillation, SAC or MBPO run saved "
                        "(RUN_DIR/models/nn_policy.pt)")
    parser.add_argument("--calibration", help="calibration YAML (default: $FORETHOUGHT_HOME/calibration/ARM.yaml)")
    parser.add_argument("--out", default="runs", help="folder that receives the run folder (default: runs)")
    parser.add_argument("--trials", type=int, help="iterations of the loop (trials per condition and sample)")
    parser.add_argument("--horizon", type=int, help="steps per trial (default: the experiment's)")
    parser.add_argument("--seed", type=int, help="the experiment's loop seed (default: the experiment's; "
                        "arm-excite: other phases for held-out data)")
    parser.add_argument("--model-scene", metavar="SCENE",
                        help="plan on this scene (model.scene): e.g. the identified one `fit --model mujoco` wrote")
    parser.add_argument("--dry-run", action="store_true", help="check the bus, calibration and limits without moving")
    parser.add_argument("--velocity", choices=["servo", "difference"], default="servo",
                        help="joint velocities from the servos or a filtered difference of positions")
    parser.add_argument("--allow-slow-usb", action="store_true", help="run even with a USB latency timer above 2 ms")
    parser.add_argument("--write-phase", type=float, default=0.5, metavar="F",
                        help="write each goal F of a control period after the reading it answers (default 0.5; "
                        "the controller must decide within it)")
    parser.add_argument("--realtime", action="store_true",
                        help="run each trial's loop at real-time priority (SCHED_FIFO) where the OS allows it, so "
                        "that other work on the machine does not hold the loop back; says what it got")


def use_policy(experiment, run_folder: Path) -> None:
    """`--policy RUN_FOLDER`: the experiment's controller becomes the network policy that run saved
    (an MDGPS run's, a distilled planner's: RUN_FOLDER/models/nn_policy.pt)."""
    from forethought.controllers.nn_policy import POLICY_FILE  # torch: imported only when a policy is deployed

    policy_file = Path(run_folder) / "models" / POLICY_FILE
    if not policy_file.is_file():
        raise FileNotFoundError(f"{run_folder}: no saved network policy (models/nn_policy.pt) in this run folder")
    experiment.controller = {"type": "nn_policy", "path": str(policy_file)}


def deploy_main(args: argparse.Namespace) -> int:
    arm = load_arm(args.arm)
    experiment = load_experiment(args.experiment)
    experiment.override(seed=args.seed, trials=args.trials, horizon=args.horizon)
    if args.model_scene:
        if not isinstance(experiment.model, dict) or experiment.model.get("type") != "mujoco":
            raise ConfigError(f"--model-scene: {experiment.name} does not plan on a MuJoCo scene (its model is "
                              f"{experiment.model.get('type') if isinstance(experiment.model, dict) else experiment.model!r})")
        if not Path(args.model_scene).is_file() and args.model_scene not in scene_names():
            raise FileNotFoundError(f"--model-scene {args.model_scene}: no such scene file or shipped scene")
        experiment.model["scene"] = args.model_scene
    if args.policy:
        use_policy(experiment, Path(args.policy))
    if not 0.0 <= args.write_phase < 1.0:
        raise ConfigError(f"--write-phase must be in [0, 1) of a control period, got {args.write_phase}")
    calibration_path = Path(args.calibration) if args.calibration else default_calibration_path(arm.name)
    if not calibration_path.is_file():
        raise FileNotFoundError(
            f"{calibration_path}: no calibration for arm {arm.name}; record one with "
            f"forethought calibrate --arm {arm.name} --port {args.port}"
        )
    calibration = Calibration.load(calibration_path, arm)
    check_usb_latency(args.port, args.allow_slow_usb)
    margin = _timeout_margin(args)
    print(f"deploying {experiment.name} on {arm.name} at {args.port}", file=sys.stderr)
    try:
        result = deploy(experiment, arm, args.port, calibration, Path(args.out), args.dry_run, args.velocity, margin,
                        write_phase=args.write_phase, realtime=args.realtime)
    except ArmStopped as stopped:
        _print_summary(stopped.result)
        print(f"forethought deploy: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except BusError as err:  # before any trial: the port, a missing servo, a wrong model
        print(f"forethought deploy: {err}", file=sys.stderr)
        return EXIT_FAILED
    except SafetyStop as err:
        print(f"forethought deploy: {err}", file=sys.stderr)
        return EXIT_FAILED
    _print_summary(result)
    return 0


def _print_summary(result: DeployResult) -> None:
    for i, stats in enumerate(result.loop):
        error = result.reach_by_trial[i] if i < len(result.reach_by_trial) else None
        if error is not None:
            print(f"trial {i + 1}: end effector {error * 1e3:.1f} mm from its target (measured joints, the scene's kinematics)")
        print(f"trial {i + 1}: {format_loop_stats(stats)}")
    if result.folder is not None and result.trials:
        summary = {"trials": len(result.trials), "loop": result.loop, "reach_error_m": result.reach_error_m}
        (result.folder / "deploy.json").write_text(json.dumps(summary, indent=2))
        print(f"run folder: {result.folder}")


# -- calibrate ---------------------------------------------------------------------------------------

def _add_bus_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--arm", required=required,
                        help=f"an arm description: {', '.join(arm_names())}, or a YAML path")
    parser.add_argument("--port", required=required,
                        help="the serial port (/dev/ttyUSB0, /dev/ttyACM0, or an emulator's)")
    parser.add_argument("--timeout-margin", type=float, default=DEFAULT_TIMEOUT_MARGIN_MS, metavar="MS",
                        help="how long past its wire time, return delays and USB latency a status packet is "
                        f"waited for (default: {DEFAULT_TIMEOUT_MARGIN_MS:g} ms)")


def _timeout_margin(args: argparse.Namespace) -> float:
    if not args.timeout_margin > 0:
        raise ConfigError(f"--timeout-margin must be positive, got {args.timeout_margin}")
    return float(args.timeout_margin)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    # --from-lerobot converts a file instead of measuring: no bus, and the arm may come from the file's folder.
    _add_bus_arguments(parser, required=False)
    parser.add_argument("--from-lerobot", metavar="FILE.json",
                        help="convert a LeRobot calibration file (SO-101 or Koch) instead of measuring the arm")
    parser.add_argument("--out", help="where to write the calibration (default: $FORETHOUGHT_HOME/calibration/ARM.yaml)")
    parser.add_argument("--skip-range", action="store_true",
                        help="take the joint ranges from the arm description instead of recording them")


def calibrate_main(args: argparse.Namespace) -> int:
    if args.from_lerobot:
        from forethought.scripts.lerobot_calibrate import lerobot_calibrate_main

        return lerobot_calibrate_main(args, default_calibration_path)
    for option in ("arm", "port"):
        if getattr(args, option) is None:
            raise ConfigError(f"--{option} is required (or --from-lerobot FILE.json to convert a LeRobot calibration)")
    arm = load_arm(args.arm)
    out = Path(args.out) if args.out else default_calibration_path(arm.name)
    bus = make_bus(arm, args.port, timeout_margin_ms=_timeout_margin(args))

    def ask(pose: str) -> None:
        angles = ", ".join(f"{n} {np.degrees(q):+.0f} deg" for n, q in zip(arm.names, arm.calibration_poses[pose]))
        print(f"Move the arm to the {pose} pose ({angles}), then press Enter.", flush=True)
        sys.stdin.readline()

    sweep_done = None if args.skip_range else _enter_pressed("Move every joint through its whole range, then press Enter.")
    try:
        with bus:
            bus.check_models()
            print(f"{arm.name}: {len(arm.joints)} servos found on {args.port}; torque is off.", flush=True)
            calibration = measure_calibration(bus, arm, ask, sweep_done)
    except (BusError, CalibrationError) as err:
        print(f"forethought calibrate: {err}", file=sys.stderr)
        return EXIT_FAILED
    calibration.save(out)
    for j in calibration.joints:
        print(f"  {j.name:14s} id {j.servo_id}  direction {j.direction:+d}  homing offset {j.homing_offset:+5d}  "
              f"range [{j.range_min:+.3f}, {j.range_max:+.3f}] rad")
    print(f"calibration: {out}")
    return 0


def _enter_pressed(prompt: str):
    """A callable that shows `prompt` on its first call and from then on says whether Enter was pressed."""
    done = threading.Event()
    asked = threading.Event()

    def pressed() -> bool:
        if not asked.is_set():
            asked.set()
            print(prompt, flush=True)
            threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
        return done.is_set()

    return pressed
