"""How steadily the servo arm's control loop keeps its rate, through the bus emulator.

The emulator runs in its own process (as an arm is its own hardware) and answers at 1 Mbps with
the wire's timing; the arm is calibrated through it, then follows smooth joint targets at 50 Hz
for a while, with clean replies and with 2 % of them corrupted. Reported per arm: whether a sync
read takes the wire's time and the servos' return delays (`*_read_wire_ms`, `*_read_fastest_ms`,
`*_return_delay_added_ms` against `*_return_delay_expected_ms`); the loop
period's mean, p50, p99 and max, its jitter, overruns, and the bus's retries. Then
`forethought deploy arm-reach-ilqr` runs on each emulated arm: `ARM_ilqr_mpc_*` give the worst
trial's loop period (mean, p99), the controller's p50 and p99 time per tick, and the worst final
end-effector error in m; `so101_ilqr_mpc_100hz_*` the same for `arm-reach-ilqr-100hz` (10 ms
periods). The loops run at real-time priority below the emulator's, the kernel's tty workers
raised (robots/realtime.py), with the default timeouts. `ARM_silent_to_torque_off_ms`: how long after a servo stops answering
torque is off on every servo (random actions, through an emulator in the bench's own process).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from forethought.robots.arm_description import load_arm, make_bus
from forethought.robots.calibration import measure_calibration
from forethought.robots.realtime import (
    EMULATOR_RT_PRIORITY,
    NICE_INSTEAD,
    raise_priority,
    realtime_thread,
    tty_workers_realtime,
)
from forethought.robots.safety import exit_signals_raise
from forethought.robots.servo_bus import DEFAULT_TIMEOUT_MARGIN_MS
from forethought.robots.servo_arm import ServoArm

EMULATE = (
    "import argparse, sys\n"
    "from forethought.scripts.emulate import add_emulate_arguments, emulate_main\n"
    "parser = argparse.ArgumentParser()\n"
    "add_emulate_arguments(parser)\n"
    "sys.exit(emulate_main(parser.parse_args(sys.argv[1:])))\n"
)


def emulator_priority() -> str:
    """What raise_priority achieves on this machine (tried on this process's own priority class)."""
    if hasattr(os, "SCHED_FIFO") and os.geteuid() == 0:
        return f"SCHED_FIFO {EMULATOR_RT_PRIORITY}"
    return f"nice {NICE_INSTEAD}" if os.geteuid() == 0 else "normal"


def start_emulator(arm: str, *options: str) -> tuple[subprocess.Popen, str]:
    """`forethought emulate --arm ARM OPTIONS` in a child process; returns (process, port)."""
    process = subprocess.Popen(
        [sys.executable, "-c", EMULATE, "--arm", arm, *options],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
    )
    port = process.stdout.readline().strip()
    if not port.startswith("/dev/"):
        process.kill()
        raise RuntimeError(f"the emulator did not start (it printed {port!r})")
    # Only now, with its imports and scene loaded: a real-time process starting up would hold a
    # core for seconds, and other emulators of the same priority with it.
    raise_priority(process.pid, EMULATOR_RT_PRIORITY)
    return process, port


def stop_emulator(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()


# The default timeouts (from the wire, with DEFAULT_TIMEOUT_MARGIN_MS): the emulator, the loop
# and the tty workers run at real-time priority, as a robot's host would run them.
TIMEOUT_MARGIN_MS = DEFAULT_TIMEOUT_MARGIN_MS
# Deployed through the emulator as a user would (`deploy --realtime`): iLQR-MPC on the arm's own scene.
MPC_EXPERIMENT = "arm-reach-ilqr"
# The same at 100 Hz (10 ms periods).
MPC_100HZ_EXPERIMENT = "arm-reach-ilqr-100hz"


def calibrate_through(process: subprocess.Popen, arm, port: str):
    """Calibrate with the emulator's hands: each pose is asked for on its stdin."""

    def ask(pose: str) -> None:
        process.stdin.write(f"pose {pose}\n")
        process.stdin.flush()
        time.sleep(0.1)

    with make_bus(arm, port, timeout_margin_ms=TIMEOUT_MARGIN_MS) as bus:
        return measure_calibration(bus, arm, ask)


def loop_run(arm_name: str, steps: int, corrupt: float, dt: float = 0.02) -> dict:
    arm = load_arm(arm_name)
    options = ["--fault", f"corrupt:{corrupt}"] if corrupt else []
    process, port = start_emulator(arm_name, "--seed", "1", *options)
    try:
        calibration = calibrate_through(process, arm, port)
        home = arm.calibration_poses["home"]
        bus = make_bus(arm, port, timeout_margin_ms=TIMEOUT_MARGIN_MS)
        with ServoArm(arm, port, calibration, dt, start_pose=home, bus=bus) as robot:
            robot.reset()
            t = np.arange(steps) * dt
            amplitude = 0.25 * np.minimum(arm.upper - home, home - arm.lower)
            with realtime_thread():
                for k in range(steps):
                    robot.step(home + amplitude * np.sin(2 * np.pi * 0.5 * t[k] + np.arange(len(home))))
            stats = robot.loop_stats()
            stats.update({f"bus_{key}": value for key, value in robot.bus.stats.items()})
        return stats
    finally:
        stop_emulator(process)


def mpc_run(arm_name: str, experiment_name: str = MPC_EXPERIMENT, realtime: bool = True) -> dict:
    """`forethought deploy EXPERIMENT` on the emulated arm, the run folder thrown away: the worst
    trial's loop period (mean, p99), the controller's time per tick (p50, p99) and the worst final
    end-effector error (m). realtime: the loop at real-time priority (deploy --realtime)."""
    from forethought.scripts.deploy import deploy
    from forethought.scripts.experiment import load_experiment

    arm = load_arm(arm_name)
    process, port = start_emulator(arm_name, "--seed", "1")
    try:
        calibration = calibrate_through(process, arm, port)
        with tempfile.TemporaryDirectory() as out:
            result = deploy(load_experiment(experiment_name), arm, port, calibration, Path(out),
                            timeout_margin_ms=TIMEOUT_MARGIN_MS, stream=io.StringIO(), realtime=realtime)
    finally:
        stop_emulator(process)
    return {
        "period_mean_ms": max(stats["period_mean_ms"] for stats in result.loop),
        "period_p99_ms": max(stats["period_p99_ms"] for stats in result.loop),
        "controller_p50_ms": max(stats["controller_p50_ms"] for stats in result.loop),
        "controller_p99_ms": max(stats["controller_p99_ms"] for stats in result.loop),
        "reach_error_m": max(result.reach_error_m),
    }


def silent_servo_run(arm_name: str, servo_id: int = 3, at_s: float = 1.2) -> dict:
    """`deploy` with random actions on the emulated arm until servo `servo_id` stops answering at
    `at_s` s: the time from the silence to torque off on every servo (ms, the emulator's clock)."""
    import yaml

    from forethought.robots.bus_emulator import BusEmulator
    from forethought.robots.emulated_servo import Fault
    from forethought.scripts.deploy import ArmStopped, deploy
    from forethought.scripts.experiment import load_experiment
    from forethought.sim.scenes import scene_path

    arm = load_arm(arm_name)
    with BusEmulator(arm, scene_path(arm.scene), seed=1) as emulator, tempfile.TemporaryDirectory() as out:
        with make_bus(arm, emulator.port, timeout_margin_ms=20.0) as bus:
            calibration = measure_calibration(bus, arm, emulator.set_pose)
        emulator.set_pose("home")
        path = Path(out) / "silent.yaml"
        path.write_text(yaml.safe_dump({
            "robot": {"scene": arm.scene}, "task": {"horizon": 1000}, "controller": {"type": "random"},
            "loop": {"iterations": 1, "samples": 1, "seed": 0, "video": False},
        }))
        emulator.inject(Fault("silent", servo_id=servo_id, at=at_s))
        try:
            deploy(load_experiment(str(path)), arm, emulator.port, calibration, Path(out),
                   timeout_margin_ms=TIMEOUT_MARGIN_MS, stream=io.StringIO())
            raise RuntimeError("the run went on past the silent servo")
        except ArmStopped:
            pass
        events = list(emulator.events)
    silent_at = next(t for t, kind, *_ in events if kind == "silent")
    off_at = min(t for t, kind, _, value in events if kind == "torque" and value == 0.0 and t > silent_at)
    return {"silent_to_torque_off_ms": 1e3 * (off_at - silent_at)}


def wire_run(arm_name: str, reads: int = 30) -> dict:
    """Whether the emulator's replies take the wire's time and each servo's return delay: the
    fastest sync read of every servo with return delay 0 and with the factory 500 us, in ms, beside
    the wire time of the request and the replies (the emulator delivers as a USB adapter with a
    1 ms latency timer: up to 1 ms after the wire time, never before)."""
    from forethought.robots.servo_wire import wire_time

    arm = load_arm(arm_name)
    process, port = start_emulator(arm_name, "--seed", "1")
    try:
        with make_bus(arm, port, timeout_margin_ms=TIMEOUT_MARGIN_MS) as bus:
            model = arm.joints[0].model
            k = len(arm.joints)
            status = (6 if arm.protocol == "feetech" else 11) + model.state_block[1]
            request = (8 if arm.protocol == "feetech" else 14) + k
            fastest = {}
            for delay in (0, 250):
                for servo in bus.servos:
                    bus.write_register(servo, "return_delay", delay)
                times = []
                for _ in range(reads):
                    t = time.perf_counter()
                    bus.read_state()
                    times.append(time.perf_counter() - t)
                fastest[delay] = min(times) * 1e3
    finally:
        stop_emulator(process)
    return {
        "read_wire_ms": wire_time(request + k * status, arm.baudrate) * 1e3,
        "read_fastest_ms": fastest[0],
        "return_delay_added_ms": fastest[250] - fastest[0],
        "return_delay_expected_ms": k * 0.5,
    }


def run_bench_servo_loop(quick: bool = False) -> tuple[dict, dict]:
    steps = 250 if quick else 1500
    metrics = {}
    with exit_signals_raise(), tty_workers_realtime() as tty_workers:
        for arm in ("so101", "koch"):
            _arm_metrics(arm, steps, metrics)
    config = {
        "steps": steps, "control_dt_s": 0.02, "baudrate": 1_000_000, "emulator": "separate process, pty",
        "timeout_margin_ms": TIMEOUT_MARGIN_MS, "mpc_experiment": MPC_EXPERIMENT,
        "mpc_100hz_experiment": MPC_100HZ_EXPERIMENT, "scheduling": "loop and deploys at real-time priority",
        "emulator_priority": emulator_priority(), "tty_workers": tty_workers,
    }
    return metrics, config


def _arm_metrics(arm: str, steps: int, metrics: dict) -> None:
    """The bench's measurements on one emulated arm, into metrics."""
    for name, value in wire_run(arm).items():
        metrics[f"{arm}_{name}"] = value
    for name, value in mpc_run(arm).items():
        metrics[f"{arm}_ilqr_mpc_{name}"] = value
    if arm == "so101":
        for name, value in mpc_run(arm, MPC_100HZ_EXPERIMENT).items():
            metrics[f"{arm}_ilqr_mpc_100hz_{name}"] = value
    metrics.update({f"{arm}_{name}": value for name, value in silent_servo_run(arm).items()})
    for corrupt in (0.0, 0.02):
        stats = loop_run(arm, steps, corrupt)
        key = f"{arm}{'_corrupt2pct' if corrupt else ''}"
        for name in ("period_mean_ms", "period_p50_ms", "period_p99_ms", "period_max_ms", "jitter_ms", "overruns",
                     "bus_read_p50_ms", "bus_read_p99_ms", "bus_retries", "bus_corrupt", "bus_timeouts"):
            metrics[f"{key}_{name}"] = stats[name]
