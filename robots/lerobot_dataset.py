"""LeRobotDataset v3.0 folders read as trials (`forethought fit DATASET`), the folder left untouched.

The layout (huggingface/lerobot, datasets/utils.py and docs/source/lerobot-dataset-v3.mdx):

    meta/info.json                          codebase_version "v3.0", fps, robot_type, features:
                                            name -> {dtype, shape, names}
    meta/episodes/chunk-000/file-000.parquet  one row per episode: episode_index, length, ...
    data/chunk-000/file-000.parquet           one row per frame, many episodes per file:
                                            observation.state (list of k floats), action (k),
                                            timestamp (s), episode_index, frame_index, index, ...

An episode of L frames becomes a trial of T = L - 1 steps: states are the frames' observed joints
(rad) and their velocities, actions the goals sent at frames 0..L-2 (the last frame's action has
no next state). Values go to radians through LeRobot's own normalisation, undone with its
calibration file (lerobot_calibration): a body joint's value is degrees `(ticks - mid) * 360 /
4095` or -100..100 over its recorded range (`--lerobot-units`), the gripper's 0..100 over its
range; the ticks then become joint angles with the converted calibration. LeRobot records no
velocities: they are the same filtered difference of positions that the servo arm's
velocity_source="difference" computes, so a model fitted here plans on the arm run that way.

Bad input raises TrialLogError (a file's content) or ConfigError (the options), one line naming
the file: a missing key or column, a wrong shape, names that are not the arm's joints. An episode
that cannot become a trial (a gap in its frames, non-finite values, one frame) is skipped and said.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forethought.robots.arm_description import ArmDescription
from forethought.robots.config import ConfigError
from forethought.robots.lerobot_calibration import (
    DEGREES,
    GRIPPER,
    LEROBOT_RESOLUTION,
    RANGE_0_100,
    RANGE_M100_100,
    ROBOT_TYPES,
    LeRobotMotor,
    convert_calibration,
    find_lerobot_calibration,
    load_lerobot_calibration,
    matched_motors,
    resolve_arm,
)
from forethought.robots.servo_arm import smoothed_difference
from forethought.robots.trial import Trial
from forethought.robots.trial_log_checks import TrialLogError, one_line

INFO = Path("meta") / "info.json"
COLUMNS = ("observation.state", "action", "timestamp", "episode_index", "frame_index")
# --lerobot-units -> the norm mode of the body joints (the gripper is always 0..100).
UNITS = {"degrees": DEGREES, "range": RANGE_M100_100}
# LeRobot's default norm mode of the body joints, per arm: SO followers record degrees since
# lerobot's "always use degrees" change (Feb 2026), -100..100 before; Koch records -100..100.
DEFAULT_UNITS = {"so101": "degrees", "koch": "range"}
# The servo arm's velocity_source="difference" filter constant (ServoArm's velocity_smoothing default).
VELOCITY_SMOOTHING = 0.5


@dataclass(frozen=True)
class LeRobotOptions:
    """How to read LeRobot datasets: calibration, a LeRobot calibration JSON (default: the one LeRobot
    keeps for the dataset's robot_type); units, "degrees" or "range" for the body joints (default:
    LeRobot's default for the arm); arm, an arm name or YAML (default: from the robot_type)."""

    calibration: str | None = None
    units: str | None = None
    arm: str | None = None


@dataclass
class LeRobotEpisodes:
    """What a dataset gave: its trials, the episodes skipped (one line each) and how it was read."""

    trials: list[Trial]
    problems: list[str]
    arm: str
    units: str
    calibration: str


def is_lerobot_dataset(path: str | Path) -> bool:
    """A folder that holds meta/info.json."""
    return (Path(path) / INFO).is_file()


def read_info(root: Path) -> dict:
    """meta/info.json, checked for what the trials need; TrialLogError naming the file and key."""
    path = root / INFO
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise TrialLogError(f"{path}: cannot read the file ({one_line(err)})") from None
    except json.JSONDecodeError as err:
        raise TrialLogError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(info, dict):
        raise TrialLogError(f"{path}: expected a JSON object, got {type(info).__name__}")
    for key in ("codebase_version", "fps", "features"):
        if key not in info:
            raise TrialLogError(f"{path}: {key}: required key is missing")
    version = info["codebase_version"]
    if not isinstance(version, str) or not version.startswith("v3"):
        raise TrialLogError(f"{path}: codebase_version: {version!r}: forethought reads LeRobotDataset v3 "
                            "(convert older ones with lerobot's convert_dataset_v21_to_v30)")
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise TrialLogError(f"{path}: fps: expected a positive number, got {fps!r}")
    if not isinstance(info["features"], dict):
        raise TrialLogError(f"{path}: features: expected an object of feature name -> {{dtype, shape, names}}")
    for name in ("observation.state", "action"):
        feature_names(info, name, path)
    return info


def feature_names(info: dict, name: str, path: Path) -> list[str]:
    """The joint names of a vector feature ("shoulder_pan.pos" -> "shoulder_pan"), checked against its shape."""
    feature = info["features"].get(name)
    if not isinstance(feature, dict):
        raise TrialLogError(f"{path}: features.{name}: required key is missing")
    shape = feature.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] > 0):
        raise TrialLogError(f"{path}: features.{name}.shape: expected [k], got {shape!r}")
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:  # older datasets: {"motors": [...]}
        names = next(iter(names.values()))
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise TrialLogError(f"{path}: features.{name}.names: expected a list of {shape[0]} motor names, got {names!r}")
    if len(names) != shape[0]:
        raise TrialLogError(f"{path}: features.{name}: {len(names)} names for shape {shape}")
    return [n.removesuffix(".pos") for n in names]


def _vector_column(table, name: str, width: int | None, path: Path) -> np.ndarray:
    """Column `name` as float64: (rows, width) for a list column, (rows,) for a scalar one (width None)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(name).combine_chunks()
    if column.null_count:
        raise TrialLogError(f"{path}: {name}: {column.null_count} rows hold no value")
    is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or \
        pa.types.is_fixed_size_list(column.type)
    if width is None:
        if is_list:  # a scalar stored as a one-element list
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            if len(lengths) and not np.all(lengths == 1):
                raise TrialLogError(f"{path}: {name}: expected one value per row")
            column = column.flatten()
        try:
            return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
        except (TypeError, ValueError, pa.ArrowInvalid) as err:
            raise TrialLogError(f"{path}: {name}: expected numbers ({one_line(err)})") from None
    if not is_list:
        raise TrialLogError(f"{path}: {name}: expected a list of {width} values per row, got {column.type}")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != width)
    if len(wrong):
        raise TrialLogError(f"{path}: {name}: row {wrong[0]} holds {lengths[wrong[0]]} values, "
                            f"meta/info.json says {width}")
    try:
        values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    except (TypeError, ValueError, pa.ArrowInvalid) as err:
        raise TrialLogError(f"{path}: {name}: expected numbers ({one_line(err)})") from None
    return values.reshape(-1, width)


def read_table(path: Path, columns: tuple[str, ...]):
    """The named columns of a Parquet file; TrialLogError naming the file and a missing column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise TrialLogError(f"{path}: column '{missing[0]}' is missing (it has: {', '.join(schema.names)})")
        return pq.read_table(path, columns=list(columns))
    except (OSError, pa.ArrowException) as err:
        raise TrialLogError(f"{path}: not a readable Parquet file ({one_line(err)})") from None


def read_frames(root: Path, widths: dict[str, int]) -> dict[str, np.ndarray]:
    """Every frame of data/chunk-*/file-*.parquet, files in name order: COLUMNS -> (N, k) or (N,) arrays."""
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    if not files:
        raise TrialLogError(f"{root / 'data'}: no Parquet files (expected data/chunk-000/file-000.parquet, ...)")
    parts: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    for path in files:
        table = read_table(path, COLUMNS)
        for name in COLUMNS:
            parts[name].append(_vector_column(table, name, widths.get(name), path))
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def read_episode_lengths(root: Path) -> dict[int, int] | None:
    """episode_index -> length from meta/episodes/chunk-*/file-*.parquet, or None where the dataset has none."""
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        return None
    lengths: dict[int, int] = {}
    for path in files:
        table = read_table(path, ("episode_index", "length"))
        episodes = _vector_column(table, "episode_index", None, path)
        counts = _vector_column(table, "length", None, path)
        lengths.update({int(e): int(n) for e, n in zip(episodes, counts)})
    return lengths


def values_to_ticks(values: np.ndarray, motors: list[LeRobotMotor], modes: list[str],
                    feetech: bool) -> np.ndarray:
    """(N, m) LeRobot values -> (N, m) ticks (float), undoing its `_normalize` per motor's mode.

    drive_mode flips the -100..100 and 0..100 values of Feetech motors only (LeRobot's
    apply_drive_mode); degrees are never flipped. Ticks are not rounded: LeRobot's reading was.
    """
    ticks = np.empty_like(values)
    for j, (motor, mode) in enumerate(zip(motors, modes)):
        v = values[:, j]
        span = motor.range_max - motor.range_min
        flip = feetech and motor.drive_mode == 1
        if mode == DEGREES:
            ticks[:, j] = v * (LEROBOT_RESOLUTION - 1) / 360.0 + motor.mid
        elif mode == RANGE_M100_100:
            ticks[:, j] = ((-v if flip else v) + 100.0) / 200.0 * span + motor.range_min
        else:
            ticks[:, j] = ((100.0 - v) if flip else v) / 100.0 * span + motor.range_min
    return ticks


def difference_velocity(q: np.ndarray, stamps: np.ndarray, smoothing: float = VELOCITY_SMOOTHING) -> np.ndarray:
    """(L, m) joints at (L,) s -> (L, m) rad/s: ServoArm's velocity_source="difference" filter
    (0 at the first frame, then v = a v + (1 - a) dq / dt, dt at least 0.1 ms)."""
    v = np.zeros_like(q)
    for t in range(1, len(q)):
        v[t] = smoothed_difference(v[t - 1], q[t - 1], q[t], stamps[t] - stamps[t - 1], smoothing)
    return v


def _order(names: list[str], arm: ArmDescription, what: str, path: Path) -> list[int]:
    """Column of each of the arm's joints in a feature whose motors are `names`."""
    if sorted(names) != sorted(arm.names):
        raise TrialLogError(f"{path}: features.{what}.names: {names} are not the {arm.name} joints {list(arm.names)}")
    return [names.index(n) for n in arm.names]


def load_lerobot_dataset(root: str | Path, options: LeRobotOptions | None = None) -> LeRobotEpisodes:
    """Every episode of the LeRobotDataset v3 folder `root` as a Trial (see the module's docstring)."""
    root = Path(root)
    options = options or LeRobotOptions()
    info_path = root / INFO
    info = read_info(root)
    robot_type = info.get("robot_type")
    arm_name = options.arm or ROBOT_TYPES.get(str(robot_type))
    if options.calibration is not None:
        lerobot_calibration = load_lerobot_calibration(options.calibration)
    elif str(robot_type) in ROBOT_TYPES:
        lerobot_calibration = load_lerobot_calibration(find_lerobot_calibration(str(robot_type), str(root)))
    else:
        raise ConfigError(f"{info_path}: robot_type {robot_type!r} is none of LeRobot's SO-101 or Koch types "
                          f"({', '.join(sorted(ROBOT_TYPES))}): give --lerobot-calibration FILE.json and --arm")
    arm = resolve_arm(lerobot_calibration, arm_name)
    calibration = convert_calibration(lerobot_calibration, arm)
    motors = matched_motors(lerobot_calibration, arm)
    units = options.units or DEFAULT_UNITS.get(arm.name, "range")
    if units not in UNITS:
        raise ConfigError(f"--lerobot-units: expected one of {', '.join(UNITS)}, got {units!r}")
    modes = [RANGE_0_100 if m.name == GRIPPER else UNITS[units] for m in motors]

    state_order = _order(feature_names(info, "observation.state", info_path), arm, "observation.state", info_path)
    action_order = _order(feature_names(info, "action", info_path), arm, "action", info_path)
    m = len(arm.joints)
    frames = read_frames(root, {"observation.state": m, "action": m})
    lengths = read_episode_lengths(root)
    episodes = frames["episode_index"]
    fps = float(info["fps"])
    feetech = arm.protocol == "feetech"
    trials: list[Trial] = []
    problems: list[str] = []
    found = np.unique(episodes).astype(np.int64)
    if lengths is not None and set(lengths) != set(found.tolist()):
        only_meta = sorted(set(lengths) - set(found.tolist()))
        only_data = sorted(set(found.tolist()) - set(lengths))
        raise TrialLogError(f"{root / 'meta' / 'episodes'}: lists episodes {only_meta[:5]} that data/ lacks"
                            if only_meta else f"{root / 'data'}: holds episodes {only_data[:5]} that "
                            f"meta/episodes does not list")
    for episode in found:
        rows = np.flatnonzero(episodes == episode)
        rows = rows[np.argsort(frames["frame_index"][rows], kind="stable")]
        where = f"{root}: episode {episode}"
        if lengths is not None and lengths[int(episode)] != len(rows):
            raise TrialLogError(f"{root / 'meta' / 'episodes'}: episode {episode} has length "
                                f"{lengths[int(episode)]}, data/ holds {len(rows)} frames of it")
        if not np.array_equal(frames["frame_index"][rows], np.arange(len(rows))):
            problems.append(f"{where}: frame_index is not 0..{len(rows) - 1} (frames missing or repeated): skipped")
            continue
        if len(rows) < 2:
            problems.append(f"{where}: one frame, no step: skipped")
            continue
        state = frames["observation.state"][rows][:, state_order]
        action = frames["action"][rows][:, action_order]
        stamps = frames["timestamp"][rows]
        if not (np.all(np.isfinite(state)) and np.all(np.isfinite(action)) and np.all(np.isfinite(stamps))):
            problems.append(f"{where}: non-finite values: skipped")
            continue
        if np.any(np.diff(stamps) <= 0):
            problems.append(f"{where}: timestamps do not increase: skipped")
            continue
        body = [j for j, mode in enumerate(modes) if mode == RANGE_M100_100]
        if body and max(np.abs(state[:, body]).max(), np.abs(action[:, body]).max()) > 100.0 + 1e-3:
            raise TrialLogError(f"{where}: joint values beyond -100..100, which --lerobot-units range cannot "
                                "hold: recorded in degrees? give --lerobot-units degrees")
        q = calibration.to_rad(values_to_ticks(state, motors, modes, feetech))
        goals = calibration.to_rad(values_to_ticks(action, motors, modes, feetech))
        stamps = stamps - stamps[0]
        metadata = {
            "robot": arm.name, "arm": arm.name, "scene": arm.scene, "source": "lerobot", "dataset": str(root),
            "episode_index": int(episode), "robot_type": robot_type, "lerobot_units": units,
            "lerobot_calibration": lerobot_calibration.source, "velocity_source": "difference",
        }
        trials.append(Trial(
            states=np.concatenate([q, difference_velocity(q, stamps)], axis=1),
            actions=goals[:-1],
            timestamps=stamps,
            costs=np.full(len(rows), np.nan),
            state_names=arm.names + tuple(f"d_{n}" for n in arm.names),
            action_names=arm.names,
            dt=1.0 / fps,
            metadata=metadata,
        ))
    if not trials:
        raise TrialLogError(problems[0].removesuffix(": skipped") + " (no episode could be read)" if problems
                            else f"{root}: no episodes")
    return LeRobotEpisodes(trials, problems, arm.name, units, lerobot_calibration.source)
