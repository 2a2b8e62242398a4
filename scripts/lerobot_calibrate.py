"""`forethought calibrate --from-lerobot FILE.json [--arm so101|koch] [--out YAML]`: a LeRobot
calibration file converted into forethought's (robots/lerobot_calibration.py says how)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from forethought.robots.config import ConfigError
from forethought.robots.lerobot_calibration import convert_calibration, load_lerobot_calibration, matched_motors, \
    resolve_arm, zero_ticks


def lerobot_calibrate_main(args: argparse.Namespace, default_path) -> int:
    """Convert args.from_lerobot for args.arm (default: the arm its folder names) and write it to
    args.out (default: default_path(arm name)); never touches the LeRobot file."""
    source = load_lerobot_calibration(args.from_lerobot)
    arm = resolve_arm(source, args.arm)
    calibration = convert_calibration(source, arm)
    out = Path(args.out) if args.out else default_path(arm.name)
    if out.resolve() == Path(args.from_lerobot).resolve():
        raise ConfigError(f"--out: {out} is the LeRobot file itself; write the converted calibration elsewhere")
    calibration.save(out)
    print(f"{source.source}: LeRobot calibration of {arm.name} ({arm.source}); joint zero at LeRobot's zero "
          "(mid of the recorded range; gripper: range_min), homing offsets kept")
    for motor, j in zip(matched_motors(source, arm), calibration.joints):
        print(f"  {j.name:14s} id {j.servo_id}  homing offset {j.homing_offset:+5d}  zero at tick "
              f"{zero_ticks(motor):7.1f}  range [{np.degrees(j.range_min):+7.1f}, {np.degrees(j.range_max):+7.1f}] deg")
    print(f"calibration: {out}")
    return 0
