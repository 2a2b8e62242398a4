"""`forethought fit --model mujoco [--scene SCENE] TRIALS...`: identify an arm's scene from trials.

Fits the servo parameters, payload and action delay of the scene (models.scene_identification) to
the trials (those of `--validate` are held out instead of a seeded share of the trials), writes
the identified scene (an MJCF file that `robot.scene` or `model.scene` can name), a JSON report and
a plot of predicted against measured joints, and prints each joint's open-loop RMSE over the
report's windows on the held-out trials, before (the nominal scene) and after.
"""

from __future__ import annotations

import json
from dataclasses import asdict
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from forethought.models.scene_identification import IdentificationConfig, SceneIdentifier
from forethought.robots.config import ConfigError, from_mapping, load_yaml
from forethought.robots.trial import Trial
from forethought.robots.trial_log import json_default
from forethought.scripts.fit import lerobot_options, load_logged, output_folder, split_trials
from forethought.scripts.status_line import StatusLine


def run_scene(runs: Sequence[Path]) -> str | None:
    """The `robot.scene` of the experiment in the first run folder that has one."""
    for run in runs:
        path = Path(run) / "config.yaml"
        if path.is_file():
            robot = load_yaml(path).get("robot")
            if isinstance(robot, dict) and robot.get("scene"):
                return str(robot["scene"])
    return None


def plot_joint_predictions(trial: Trial, joints: Sequence[str], windows: dict[str, np.ndarray], steps: int,
                           path: Path) -> Path:
    """Measured joints of `trial` (deg) against each model's open-loop predictions, restarted from the
    measured state every `steps` periods; windows: label -> (S, steps, m) rad predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = len(joints)
    t = np.arange(1, trial.horizon + 1) * trial.dt
    index = [trial.state_names.index(j) for j in joints]
    fig, axes = plt.subplots(m, 1, figsize=(10, 1.8 * m), sharex=True)
    axes = np.atleast_1d(axes)
    for i, ax in enumerate(axes):
        ax.plot(t, np.rad2deg(trial.states[1:, index[i]]), color="black", lw=1.2, label="measured")
        for (label, predicted), color in zip(windows.items(), ("tab:red", "tab:blue", "tab:green")):
            flat = np.rad2deg(predicted[:, :, i].reshape(-1))
            ax.plot(t[: len(flat)], flat, color=color, lw=0.9, alpha=0.85, label=label)
        ax.set_ylabel(f"{joints[i]}\n(deg)", fontsize=8)
        for s in range(steps, trial.horizon, steps):
            ax.axvline(s * trial.dt, color="0.85", lw=0.5, zorder=0)
    axes[0].legend(fontsize=7, ncol=3, loc="upper right")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"open-loop predictions from the measured state every {steps * trial.dt:g} s (held-out trial)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fit_scene_main(args) -> int:
    """Run `forethought fit --model mujoco`; returns the exit status."""
    config = IdentificationConfig()
    if args.model_config:
        config = from_mapping(IdentificationConfig, load_yaml(args.model_config), f"{args.model_config}:")
    by_run, problems = load_logged(args.paths, lerobot_options(args))
    trials = [t for group in by_run.values() for t in group]
    if args.validate:
        validate_runs, more = load_logged(args.validate, lerobot_options(args))
        problems += more
        train, heldout = trials, [t for group in validate_runs.values() for t in group]
    elif len(trials) < 2:
        raise ConfigError("one trial to fit and none to judge the fit on: give held-out trials with --validate "
                          "(another arm-excite run with another --seed, or reach trials)")
    else:
        train, heldout = split_trials(trials, args.heldout, args.seed)
    # A LeRobot dataset has no experiment: its arm's scene (in its trials' metadata) is the nominal one.
    lerobot_scene = next((t.metadata.get("scene") for t in train if t.metadata.get("source") == "lerobot"), None)
    scene = args.scene or run_scene([Path(run) for run in by_run]) or lerobot_scene
    if scene is None:
        raise ConfigError("--scene: the trials' run folders name no scene: give the nominal scene to identify")
    first = train[0]
    try:
        identifier = SceneIdentifier(scene, config, first.state_names, first.action_names, first.dt)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{args.model_config or '--scene'}: {err}") from None
    odd = [t for t in train + heldout if t.state_names != first.state_names or abs(t.dt - first.dt) > 1e-12]
    if odd:
        raise ConfigError(f"the trials differ in their states or period (e.g. {odd[0].metadata.get('robot')}): "
                          "identify from trials of one arm")
    steps = sum(t.horizon for t in train)
    print(f"identifying {scene} ({len(identifier.names)} parameters) from {len(train)} trials "
          f"({steps * first.dt:.0f} s), holding out {len(heldout)}...", file=sys.stderr)
    line = StatusLine(show_every_s=5.0)
    identification = identifier.fit(train, progress=line.show)
    line.finish(f"identified in {identification.seconds:.0f} s ({identification.iterations} iterations)")

    default_out = output_folder(Path(next(iter(by_run)))) / "models" / f"{Path(str(scene)).stem}_identified.xml"
    out = Path(args.out) if args.out else default_out
    if out.suffix != ".xml":
        raise ConfigError(f"--out: the identified scene is an MJCF file (.xml), got {out}")
    sources = ", ".join(sorted({str(r) for r in by_run}))
    identifier.write_scene(identification, out, note=f"Trials: {sources}.")
    nominal = identifier.window_rmse(identifier.nominal, identifier.nominal_delay, heldout)
    identified = identifier.window_rmse(identification.identified, identification.delay, heldout)

    window = 1.0 if 1.0 in config.windows else config.windows[0]
    shown = max(heldout, key=lambda t: t.horizon)
    predictions = {
        "nominal": identifier.open_loop(identifier.nominal, identifier.nominal_delay, [shown], window)[0],
        "identified": identifier.open_loop(identification.identified, identification.delay, [shown], window)[0],
    }
    plot = plot_joint_predictions(shown, identifier.nominal.joints, predictions,
                                  max(1, int(round(window / first.dt))), out.with_name(f"{out.stem}_predictions.png"))
    report = {
        "scene": str(scene),
        "identified_scene": str(out),
        "settings": asdict(config),
        "train_trials": len(train),
        "heldout_trials": len(heldout),
        "skipped": problems,
        "identification": identification.as_dict(),
        "open_loop_rmse_deg": {"nominal": nominal, "identified": identified},
    }
    report_path = out.with_name(f"{out.stem}_report.json")
    report_path.write_text(json.dumps(report, indent=2, default=json_default))

    params = identification.identified
    print(f"delay {identification.delay * 1e3:.1f} ms, payload {params.payload * 1e3:.0f} g; per joint:")
    print("joint           damping  armature  friction        kp        kv")
    for i, joint in enumerate(params.joints):
        print(f"{joint:14s} {params.damping[i]:8.3g}  {params.armature[i]:8.3g}  {params.frictionloss[i]:8.3g}  "
              f"{params.kp[i]:8.3g}  {params.kv[i]:8.3g}")
    print("held-out open-loop joint RMSE (deg), nominal -> identified:")
    print("window  " + "  ".join(f"{j[:13]:>13}" for j in params.joints))
    for key in nominal:
        print(f"{key:6s}  " + "  ".join(f"{nominal[key][j]:5.2f} -> {identified[key][j]:4.2f}" for j in params.joints))
    print(f"scene: {out}\nreport: {report_path}\nplot: {plot}")
    return 0
