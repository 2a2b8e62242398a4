"""`forethought emulate`: an emulated servo arm on a pseudo-terminal, for calibrate and deploy without an arm.

    forethought emulate --arm so101                       # prints a port; an arm answers on it
    forethought emulate --arm so101 --reality FILE        # ... an arm that differs from its scene (sim/reality.py)

Commands on stdin move the arm by hand or inject faults (EMULATOR_COMMANDS).
"""

from __future__ import annotations

import argparse
import sys
import threading

from forethought.robots.arm_description import arm_names, load_arm
from forethought.robots.safety import Terminated, exit_signals_raise

EMULATOR_COMMANDS = """commands on stdin: pose home | pose rotated | pose Q1 Q2 ... (rad) | sweep [SECONDS_PER_JOINT]
                   fault KIND:ARG[@SECONDS] (corrupt:0.02 drop:0.005 silent:3 overheat:6 overload:2 voltage:6.5) | clear | where"""


def add_emulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arm", required=True, help=f"an arm description: {', '.join(arm_names())}, or a YAML path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the servo mounts (encoder offsets, directions) and faults")
    parser.add_argument("--reality", metavar="FILE",
                        help="a reality gap (YAML, sim/reality.py's format: servo parameters, backlash, payload, encoder "
                        "noise, servo period, latency) between the emulated arm and its scene (default: none)")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND:ARG[@SECONDS]",
                        help="inject a fault, at once or SECONDS after torque first goes on: corrupt:RATE, drop:RATE, "
                        "silent:ID, overheat:ID, overload:ID, voltage:VOLTS (repeatable)")


def emulate_main(args: argparse.Namespace) -> int:
    from forethought.robots.emulated_servo import Fault
    from forethought.sim.reality import reality_emulator

    arm = load_arm(args.arm)
    faults = [Fault.parse(text) for text in args.fault]
    emulator = reality_emulator(arm, arm.scene, args.reality, faults=faults, seed=args.seed)
    gap = f" with the reality gap of {args.reality}" if args.reality else ""
    print(emulator.port, flush=True)
    print(f"emulating {arm.name}{gap}: {len(arm.joints)} {arm.protocol} servos on {emulator.port} (Ctrl-C ends); "
          "on a busy machine deploy with --realtime (docs/arms/deploy.md: the kernel's tty workers)",
          file=sys.stderr)
    print(EMULATOR_COMMANDS, file=sys.stderr, flush=True)
    stop = threading.Event()
    threading.Thread(target=_emulator_commands, args=(emulator, stop), daemon=True).start()
    try:
        with exit_signals_raise():
            emulator.serve(stop)
    except (KeyboardInterrupt, Terminated):
        pass
    finally:
        emulator.close()
    return 0


def _emulator_commands(emulator, stop: threading.Event) -> None:
    from forethought.robots.emulated_servo import Fault

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "pose" and len(words) == 2:
                emulator.set_pose(words[1])
            elif words[0] == "pose":
                emulator.set_pose([float(w) for w in words[1:]])
            elif words[0] == "sweep":
                emulator.sweep(float(words[1]) if len(words) > 1 else 1.0)
            elif words[0] == "fault" and len(words) == 2:
                emulator.inject(Fault.parse(words[1]))
            elif words[0] == "clear":
                emulator.clear_faults()
            elif words[0] == "where":
                q = emulator.joint_positions()
                print(" ".join(f"{n}={v:+.3f}" for n, v in zip(emulator.arm.names, q)), file=sys.stderr, flush=True)
            else:
                print(f"unknown command: {line.strip()}\n{EMULATOR_COMMANDS}", file=sys.stderr, flush=True)
        except (KeyError, ValueError) as err:
            print(f"{line.strip()}: {err}", file=sys.stderr, flush=True)
    # stdin closed: keep serving until a signal ends the emulator
