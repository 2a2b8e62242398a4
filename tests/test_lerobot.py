"""LeRobot interop: `forethought calibrate --from-lerobot` and LeRobotDataset v3 folders as trials.

The calibration files and datasets are built here to LeRobot's layout (huggingface/lerobot:
motors_bus.MotorCalibration written as JSON; datasets/utils.py paths, Parquet through pyarrow),
from joint trajectories known in radians, so the conversions are checked against the truth.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forethought.robots.arm_description import load_arm
from forethought.robots.calibration import Calibration
from forethought.robots.lerobot_dataset import LeRobotOptions, load_lerobot_dataset
from forethought.robots.trial_log_read import load_trials, trial_paths

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
# A calibration as LeRobot's SO-101 follower writes it: homing offsets (sign-magnitude range on
# Feetech), the recorded ranges in ticks (wrist_roll turns fully: 0..4095).
SO101 = {
    "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1470, "range_min": 758, "range_max": 3292},
    "shoulder_lift": {"id": 2, "drive_mode": 0, "homing_offset": 157, "range_min": 812, "range_max": 3211},
    "elbow_flex": {"id": 3, "drive_mode": 0, "homing_offset": -1126, "range_min": 903, "range_max": 3130},
    "wrist_flex": {"id": 4, "drive_mode": 0, "homing_offset": 1960, "range_min": 885, "range_max": 3221},
    "wrist_roll": {"id": 5, "drive_mode": 0, "homing_offset": -1081, "range_min": 0, "range_max": 4095},
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": 1183, "range_min": 2031, "range_max": 3476},
}
KOCH = {
    "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": 1024, "range_min": 0, "range_max": 4095},
    "shoulder_lift": {"id": 2, "drive_mode": 0, "homing_offset": -2048, "range_min": 1305, "range_max": 2900},
    "elbow_flex": {"id": 3, "drive_mode": 0, "homing_offset": 3072, "range_min": 1010, "range_max": 3010},
    "wrist_flex": {"id": 4, "drive_mode": 0, "homing_offset": -5120, "range_min": 800, "range_max": 3300},
    "wrist_roll": {"id": 5, "drive_mode": 0, "homing_offset": 11, "range_min": 0, "range_max": 4095},
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": 2000, "range_min": 1990, "range_max": 3000},
}
FPS = 30


def cli(*argv) -> int:
    from forethought.scripts.cli import main

    return main([*map(str, argv)])


def write_calibration(path: Path, motors: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(motors, indent=4))  # as draccus.dump writes it
    return path


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: content hash and mtime (ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- calibrate --from-lerobot -------------------------------------------------------------------------
def lerobot_degrees(ticks, motor: dict) -> np.ndarray:
    """LeRobot's MotorNormMode.DEGREES reading of `ticks`."""
    mid = (motor["range_min"] + motor["range_max"]) / 2
    return (np.asarray(ticks, dtype=np.float64) - mid) * 360 / 4095


def test_so101_calibration_converts_to_the_lerobot_zero_and_keeps_the_homing_offsets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORETHOUGHT_HOME", str(tmp_path / "home"))
    source = write_calibration(tmp_path / "lerobot" / "calibration" / "robots" / "so101_follower" / "arm.json", SO101)
    before = snapshot(source.parent)
    assert cli("calibrate", "--from-lerobot", source) == 0  # the arm from the file's folder
    out = tmp_path / "home" / "calibration" / "so101.yaml"
    assert f"calibration: {out}" in capsys.readouterr().out
    arm = load_arm("so101")
    calibration = Calibration.load(out, arm)  # for the so101 description: names, ids, models in order
    assert [j.homing_offset for j in calibration.joints] == [SO101[n]["homing_offset"] for n in JOINTS]
    assert all(j.direction == 1 for j in calibration.joints)
    # Body joints: zero where LeRobot's degrees read zero, and the same angles over the range (its
    # degrees take 4095 ticks a turn, a true turn is 4096).
    for i, name in enumerate(JOINTS[:5]):
        motor = SO101[name]
        # (a full turn's two ends are one tick apart on the servo: the map wraps there)
        ticks = np.linspace(motor["range_min"] + 1, motor["range_max"] - 1, 9).round()
        q = np.array([calibration.to_rad(np.where(np.arange(6) == i, t, 2048))[i] for t in ticks])
        np.testing.assert_allclose(q, np.radians(lerobot_degrees(ticks, motor)) * 4095 / 4096, atol=1e-12)
    # The gripper: zero at range_min (LeRobot's 0, jaw closed), opening as its ticks grow.
    g = SO101["gripper"]
    ticks = np.full(6, 2048)
    ticks[5] = g["range_min"]
    assert calibration.to_rad(ticks)[5] == pytest.approx(0.0, abs=1e-12)
    ticks[5] = g["range_min"] + 1024
    assert calibration.to_rad(ticks)[5] == pytest.approx(np.pi / 2)
    # Ranges: the recorded ones less 0.02 rad each end, inside the description's limits.
    pan = SO101["shoulder_pan"]
    half = (pan["range_max"] - pan["range_min"]) / 2 * 2 * np.pi / 4096
    assert calibration.joints[0].range_min == pytest.approx(max(-half + 0.02, arm.lower[0]))
    assert calibration.joints[0].range_max == pytest.approx(min(half - 0.02, arm.upper[0]))
    assert calibration.joints[4].range_min == pytest.approx(arm.lower[4])  # wrist_roll: a full turn, clipped
    assert calibration.range_min[5] == pytest.approx(0.02) and calibration.range_max[5] == pytest.approx(arm.upper[5])
    assert snapshot(source.parent) == before  # LeRobot's file untouched


def test_koch_calibration_converts_with_the_arm_named(tmp_path, capsys):
    source = write_calibration(tmp_path / "my_koch.json", KOCH)
    out = tmp_path / "koch.yaml"
    assert cli("calibrate", "--from-lerobot", source, "--arm", "koch", "--out", out) == 0
    calibration = Calibration.load(out, load_arm("koch"))
    assert [j.model for j in calibration.joints] == ["xl430-w250", "xl430-w250"] + ["xl330-m288"] * 4
    assert calibration.joints[3].homing_offset == -5120  # a 4-byte two's complement register holds it
    mid = (KOCH["elbow_flex"]["range_min"] + KOCH["elbow_flex"]["range_max"]) // 2
    assert calibration.to_rad([2048, 2048, mid + 512, 2048, 2048, 2048])[2] == pytest.approx(np.pi / 4)


BAD_CALIBRATIONS = [
    (lambda c: c["wrist_flex"].pop("range_max"), "wrist_flex.range_max: required key is missing"),
    (lambda c: c["elbow_flex"].update(homing_offset="12"), "elbow_flex.homing_offset: expected an integer"),
    (lambda c: c.pop("gripper"), "missing: gripper"),
    (lambda c: c.update(elbow=c.pop("elbow_flex")), "unknown: elbow"),
    (lambda c: c["shoulder_lift"].update(id=7), "shoulder_lift.id: 7"),
    (lambda c: c["shoulder_pan"].update(range_min=3300), "range_min (3300) must be below range_max"),
    (lambda c: c["shoulder_pan"].update(homing_offset=2500), "does not fit the sts3215's register"),
    (lambda c: c["gripper"].update(drive_mode=2), "gripper.drive_mode: expected 0 or 1"),
]


@pytest.mark.parametrize("damage, message", BAD_CALIBRATIONS)
def test_a_malformed_calibration_is_one_line_naming_the_file(tmp_path, capsys, damage, message):
    motors = json.loads(json.dumps(SO101))
    damage(motors)
    source = write_calibration(tmp_path / "robots" / "so101_follower" / "arm.json", motors)
    before = snapshot(tmp_path)
    assert cli("calibrate", "--from-lerobot", source, "--out", tmp_path / "out.yaml") == 2
    one_error_line(capsys.readouterr().err, str(source), message)
    assert snapshot(tmp_path) == before  # nothing written


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"motor_names": ["a"], "calib_mode": ["DEGREE"], "homing_offset": [0]}', "before its hardware API redesign"),
    ("[]", "expected a JSON object"),
])
def test_other_files_are_one_line_too(tmp_path, capsys, text, message):
    source = tmp_path / "robots" / "so101_follower" / "arm.json"
    source.parent.mkdir(parents=True)
    source.write_text(text)
    assert cli("calibrate", "--from-lerobot", source, "--out", tmp_path / "out.yaml") == 2
    one_error_line(capsys.readouterr().err, str(source), message)


def test_the_arm_must_be_known(tmp_path, capsys):
    source = write_calibration(tmp_path / "arm.json", SO101)
    assert cli("calibrate", "--from-lerobot", source) == 2
    one_error_line(capsys.readouterr().err, str(source), "--arm so101 or --arm koch")
    assert cli("calibrate", "--arm", "so101") == 2  # measuring needs the port
    one_error_line(capsys.readouterr().err, "--port is required")


# -- LeRobotDataset v3 ------------------------------------------------------------------------------
def trajectory(episode: int, frames: int) -> np.ndarray:
    """(frames, 6) joint angles in rad, inside the SO-101's limits and the calibration's ranges."""
    t = np.arange(frames) / FPS
    phase = 0.7 * episode
    q = np.stack([0.6 * np.sin(2.0 * t + phase + k) for k in range(5)], axis=1)
    gripper = 0.6 + 0.5 * np.sin(1.5 * t + phase)
    return np.concatenate([q, gripper[:, None]], axis=1)


def lerobot_values(q: np.ndarray, motors: dict, units: str, feetech: bool = True) -> np.ndarray:
    """LeRobot's recorded values of joint angles q: ticks, then its normalisation (drive_mode flips
    the range values of Feetech motors only)."""
    out = np.empty_like(q)
    for j, name in enumerate(JOINTS):
        m = motors[name]
        mid = (m["range_min"] + m["range_max"]) / 2
        span = m["range_max"] - m["range_min"]
        if name == "gripper":
            ticks = m["range_min"] + q[:, j] * 4096 / (2 * np.pi)
            v = (ticks - m["range_min"]) / span * 100
            out[:, j] = 100 - v if m["drive_mode"] and feetech else v
        else:
            ticks = mid + q[:, j] * 4096 / (2 * np.pi)
            if units == "degrees":
                out[:, j] = (ticks - mid) * 360 / 4095
            else:
                v = (ticks - m["range_min"]) / span * 200 - 100
                out[:, j] = -v if m["drive_mode"] and feetech else v
    return out


def feature(names) -> dict:
    return {"dtype": "float32", "shape": [len(names)], "names": [f"{n}.pos" for n in names]}


def write_dataset(root: Path, motors: dict = SO101, units: str = "degrees", episodes: int = 6, frames: int = 41,
                  per_file: int = 3, robot_type: str = "so101_follower", names=JOINTS) -> Path:
    """A LeRobotDataset v3.0 folder: `episodes` episodes of `frames` frames, `per_file` episodes a
    data file, the vectors' columns in the order `names`."""
    order = [JOINTS.index(n) for n in names]
    feetech = not robot_type.startswith("koch")
    info = {
        "codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": episodes,
        "total_frames": episodes * frames, "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200, "fps": FPS, "splits": {"train": f"0:{episodes}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "action": feature(names), "observation.state": feature(names),
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    rows: list[dict] = []
    for e in range(episodes):
        q = trajectory(e, frames + 1)
        state = lerobot_values(q[:-1], motors, units, feetech)[:, order].astype(np.float32)
        action = lerobot_values(q[1:], motors, units, feetech)[:, order].astype(np.float32)  # the goal: the next pose
        for f in range(frames):
            rows.append({"action": action[f].tolist(), "observation.state": state[f].tolist(),
                         "timestamp": np.float32(f / FPS), "frame_index": f, "episode_index": e,
                         "index": e * frames + f, "task_index": 0})
    vector = pa.list_(pa.float32())
    schema = pa.schema([("action", vector), ("observation.state", vector), ("timestamp", pa.float32()),
                        ("frame_index", pa.int64()), ("episode_index", pa.int64()), ("index", pa.int64()),
                        ("task_index", pa.int64())])
    episode_rows = []
    for file_index, first in enumerate(range(0, episodes, per_file)):
        part = [r for r in rows if first <= r["episode_index"] < first + per_file]
        path = root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=schema), path)
        for e in range(first, min(first + per_file, episodes)):
            episode_rows.append({"episode_index": e, "tasks": ["reach"], "length": frames,
                                 "data/chunk_index": 0, "data/file_index": file_index,
                                 "dataset_from_index": e * frames, "dataset_to_index": (e + 1) * frames,
                                 "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), path)
    pq.write_table(pa.Table.from_pylist([{"task_index": 0, "task": "reach"}]), root / "meta" / "tasks.parquet")
    return root


@pytest.mark.parametrize("units", ["degrees", "range"])
def test_dataset_episodes_become_trials_in_joint_radians(tmp_path, units):
    motors = json.loads(json.dumps(SO101))
    motors["elbow_flex"]["drive_mode"] = 1  # flips LeRobot's range values of a Feetech motor, never its degrees
    motors["gripper"]["drive_mode"] = 1
    calibration = write_calibration(tmp_path / "arm.json", motors)
    root = write_dataset(tmp_path / "ds", motors, units, names=JOINTS[::-1])  # columns in another order
    episodes = load_lerobot_dataset(root, LeRobotOptions(str(calibration), units))
    assert len(episodes.trials) == 6 and episodes.problems == [] and episodes.arm == "so101"
    for e, trial in enumerate(episodes.trials):
        q = trajectory(e, 42)
        assert trial.horizon == 40 and trial.dt == pytest.approx(1 / FPS)
        assert trial.state_names == JOINTS + tuple(f"d_{n}" for n in JOINTS) and trial.action_names == JOINTS
        # float32 storage: about 1e-5 deg of a 100 deg value
        np.testing.assert_allclose(trial.states[:, :6], q[:41], atol=2e-5)
        np.testing.assert_allclose(trial.actions, q[1:41], atol=2e-5)
        np.testing.assert_allclose(trial.timestamps, np.arange(41) / FPS, atol=1e-6)
        assert trial.metadata["episode_index"] == e and trial.metadata["lerobot_units"] == units
    # Velocities: the servo arm's velocity_source="difference" filter (smoothing 0.5) of the positions.
    q = trajectory(0, 42)[:41]
    v = np.zeros_like(q)
    for t in range(1, 41):
        v[t] = 0.5 * v[t - 1] + 0.5 * (q[t] - q[t - 1]) * FPS
    np.testing.assert_allclose(episodes.trials[0].states[:, 6:], v, atol=2e-3)


def test_a_koch_dataset_reads_in_range_units_by_default(tmp_path, monkeypatch):
    motors = json.loads(json.dumps(KOCH))
    motors["elbow_flex"]["drive_mode"] = 1  # on Dynamixel the servo's own reverse bit: LeRobot does not flip
    write_calibration(tmp_path / "cal" / "robots" / "koch_follower" / "follower.json", motors)
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path))  # LeRobot's home: calibration/robots/... under it
    root = write_dataset(tmp_path / "koch_ds", motors, "range", robot_type="koch_follower")
    (tmp_path / "cal").rename(tmp_path / "calibration")
    episodes = load_lerobot_dataset(root)
    assert episodes.arm == "koch" and episodes.units == "range" and len(episodes.trials) == 6
    for e, trial in enumerate(episodes.trials):
        np.testing.assert_allclose(trial.states[:, :6], trajectory(e, 42)[:41], atol=2e-5)


def test_the_trial_loader_lists_a_dataset_as_one_more_kind_of_path(tmp_path, monkeypatch):
    calibration = write_calibration(tmp_path / "cal" / "robots" / "so101_follower" / "follower.json", SO101)
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "cal"))  # LeRobot's own calibration folder
    root = write_dataset(tmp_path / "datasets" / "pick")
    assert trial_paths([root]) == [root]
    assert trial_paths([tmp_path / "datasets"]) == [root]  # a folder of datasets, as of runs
    trials, problems = load_trials([root])  # the calibration found where LeRobot keeps it
    assert len(trials) == 6 and problems == []
    assert trials[0].metadata["lerobot_calibration"] == str(calibration)


def test_fit_reads_a_dataset_and_leaves_it_untouched(tmp_path, capsys, monkeypatch):
    calibration = write_calibration(tmp_path / "arm.json", SO101)
    root = write_dataset(tmp_path / "so101_pick", episodes=8, per_file=4)
    before = snapshot(root)
    monkeypatch.chdir(tmp_path)
    assert cli("fit", "--model", "tvlg", "--particles", "4", root, "--lerobot-calibration", calibration) == 0
    captured = capsys.readouterr()
    assert "8 LeRobot episodes as so101 trials, joints read in degrees" in captured.err
    report = json.loads((tmp_path / "runs" / "lerobot_so101_pick" / "models" / "tvlg_report.json").read_text())
    assert report["train_trials"] + report["heldout_trials"] == 8
    # The joints are smooth sines: one step ahead the fitted model errs far below their motion per step.
    per_step = np.abs(np.diff(trajectory(0, 42), axis=0)).mean()
    assert report["prediction"]["one_step_rmse"] < 0.2 * per_step
    assert snapshot(root) == before


def test_a_bad_episode_is_skipped_and_said(tmp_path):
    calibration = write_calibration(tmp_path / "arm.json", SO101)
    root = write_dataset(tmp_path / "ds")
    path = root / "data" / "chunk-000" / "file-001.parquet"
    table = pq.read_table(path)
    keep = [i for i, (e, f) in enumerate(zip(table["episode_index"].to_pylist(), table["frame_index"].to_pylist()))
            if not (e == 4 and f == 10)]
    pq.write_table(table.take(keep), path)
    episodes = (root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    rows = pq.read_table(episodes).to_pylist()
    rows[4]["length"] = 40
    pq.write_table(pa.Table.from_pylist(rows), episodes)
    loaded = load_lerobot_dataset(root, LeRobotOptions(str(calibration)))
    assert [t.metadata["episode_index"] for t in loaded.trials] == [0, 1, 2, 3, 5]
    assert loaded.problems == [f"{root}: episode 4: frame_index is not 0..39 (frames missing or repeated): skipped"]


def _info(root: Path, change) -> Path:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))
    return path


def _data(root: Path, change) -> Path:
    path = root / "data" / "chunk-000" / "file-001.parquet"
    pq.write_table(change(pq.read_table(path)), path)
    return path


def _short_rows(table):
    states = [s[:5] for s in table["observation.state"].to_pylist()]
    return table.set_column(table.schema.get_field_index("observation.state"), "observation.state",
                            pa.array(states, pa.list_(pa.float32())))


def _garbage(root: Path) -> Path:
    path = root / "data" / "chunk-000" / "file-000.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    return path


BAD_DATASETS = [
    (lambda r: _info(r, lambda i: i.pop("features")), "features: required key is missing"),
    (lambda r: _info(r, lambda i: i.update(codebase_version="v2.1")), "convert older ones"),
    (lambda r: _info(r, lambda i: i.update(fps=0)), "fps: expected a positive number"),
    (lambda r: _info(r, lambda i: i["features"]["action"].update(shape=[5])), "features.action: 6 names for shape [5]"),
    (lambda r: _info(r, lambda i: i["features"].pop("observation.state")),
     "features.observation.state: required key is missing"),
    (lambda r: _info(r, lambda i: i["features"]["action"]["names"].__setitem__(0, "waist.pos")),
     "are not the so101 joints"),
    (lambda r: _data(r, lambda t: t.drop_columns(["action"])), "column 'action' is missing"),
    (lambda r: _data(r, _short_rows), "observation.state: row 0 holds 5 values, meta/info.json says 6"),
    (_garbage, "not a readable Parquet file"),
    (lambda r: (r / "meta" / "info.json").write_text("{"), "meta/info.json: not valid JSON"),
]


@pytest.mark.parametrize("damage, message", BAD_DATASETS)
def test_a_malformed_dataset_is_one_line_naming_the_file(tmp_path, capsys, damage, message):
    calibration = write_calibration(tmp_path / "arm.json", SO101)
    root = write_dataset(tmp_path / "ds")
    named = damage(root) or root
    before = snapshot(root)
    assert cli("fit", "--model", "tvlg", root, "--lerobot-calibration", calibration, "--out", tmp_path / "m.npz") == 2
    one_error_line(capsys.readouterr().err, str(named) if isinstance(named, Path) else str(root), message)
    assert snapshot(root) == before and not (tmp_path / "m.npz").exists()


def test_range_values_beyond_100_point_at_the_units(tmp_path, capsys):
    calibration = write_calibration(tmp_path / "arm.json", SO101)
    root = write_dataset(tmp_path / "ds", units="degrees")
    # Degrees beyond 100 cannot be LeRobot's -100..100: the message says which option fits.
    _data(root, lambda t: t.set_column(0, "action", pa.array([[120.0] * 6] * t.num_rows, pa.list_(pa.float32()))))
    assert cli("fit", "--model", "tvlg", root, "--lerobot-calibration", calibration, "--lerobot-units", "range") == 2
    one_error_line(capsys.readouterr().err, str(root), "give --lerobot-units degrees")


def test_a_dataset_of_an_unknown_robot_asks_for_the_calibration_and_arm(tmp_path, capsys):
    root = write_dataset(tmp_path / "ds", robot_type="aloha")
    assert cli("fit", "--model", "tvlg", root) == 2
    one_error_line(capsys.readouterr().err, str(root / "meta" / "info.json"),
                   "--lerobot-calibration FILE.json and --arm")


def test_scene_identification_says_when_the_frame_rate_does_not_fit_the_scene(tmp_path, capsys):
    calibration = write_calibration(tmp_path / "arm.json", SO101)
    root = write_dataset(tmp_path / "ds")  # 30 fps: not a whole number of the scene's 2 ms steps
    # The scene is the arm's (so101_reach) when --scene does not name one.
    assert cli("fit", "--model", "mujoco", root, "--lerobot-calibration", calibration) == 2
    err = capsys.readouterr().err  # after the line saying how the dataset was read
    one_error_line(err.splitlines()[-1], "forethought fit: error:", "so101_reach: the trials' period",
                   "not a whole number of the scene's 0.002 s steps")
    assert "Traceback" not in err and not (tmp_path / "runs").exists() and not (root / "models").exists()


def test_a_dataset_without_a_calibration_to_find_asks_for_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "none"))
    root = write_dataset(tmp_path / "ds")
    assert cli("fit", "--model", "tvlg", root) == 2
    one_error_line(capsys.readouterr().err, str(root), "--lerobot-calibration FILE.json (0 files in")
