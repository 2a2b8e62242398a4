"""System identification: the arm-excite data, the delayed controls of the identification's
simulation, and `forethought fit --model mujoco` closing a reality gap on trials logged from RealityArm."""

import json

import mujoco
import numpy as np
import pytest

from forethought.controllers.excite import ExciteConfig, ExciteController, multisine
from forethought.models.registry import build_model, model_settings
from forethought.models.scene_identification import DELAY_NUMERIC, delayed_controls, scene_delay
from forethought.robots.trial import rollout
from forethought.robots.trial_log import TrialWriter
from forethought.scripts.cli import main
from forethought.scripts.experiment import build_parts, load_experiment
from forethought.sim.mujoco_robot import MujocoRobot
from forethought.sim.reality import RealityArm
from forethought.sim.servo_model import servo_parameters

SCENE = "so101_reach"


def test_multisine_gives_each_joint_its_own_frequencies():
    horizon, dt, m = 1000, 0.02, 6
    signal = multisine(horizon, dt, m, [0.1, 2.0], 4, seed=0)
    assert signal.shape == (horizon, m)
    np.testing.assert_allclose(np.abs(signal).max(axis=0), 1.0)
    spectrum = np.abs(np.fft.rfft(signal, axis=0))
    bins = [set(np.flatnonzero(spectrum[:, j] > 0.05 * spectrum[:, j].max())) for j in range(m)]
    assert all(len(b) == 4 for b in bins)
    assert all(not (bins[i] & bins[j]) for i in range(m) for j in range(i + 1, m))
    freqs = np.fft.rfftfreq(horizon, dt)
    assert all(0.1 <= freqs[k] <= 2.0 for b in bins for k in b)
    short = np.abs(np.fft.rfft(multisine(250, dt, m, [0.1, 2.0], 4, seed=0), axis=0))  # 5 s: 9 harmonics
    assert all(np.sum(short[:, j] > 0.05 * short[:, j].max()) == 1 for j in range(m))
    with pytest.raises(ValueError, match="harmonics"):
        multisine(100, dt, m, [0.5, 1.0], 4, seed=0)


def test_arm_excite_stays_within_margins_rate_and_clearance_and_starts_where_the_arm_is():
    experiment = load_experiment("arm-excite")
    assert experiment.task.horizon * 0.02 <= 60.0 and experiment.model == {"type": "none"}
    experiment.task.horizon = 600
    with MujocoRobot(SCENE) as robot:
        parts = build_parts(experiment, robot)
        controller, config = parts.controller, parts.controller.config
        trial = rollout(robot, controller.policy(0), 600, seed=0)
    u = trial.actions
    after = u[controller.ramp_steps : -controller.ramp_steps]
    assert np.all(after >= controller.low + config.margin - 1e-9) and np.all(after <= controller.high - config.margin + 1e-9)
    assert np.abs(np.diff(after, axis=0)).max() / trial.dt <= config.max_rate + 1e-9
    np.testing.assert_allclose(u[0], trial.states[0, :6])  # the first goal is the measured pose
    heights = controller.kinematics.site_positions(trial.states[:, controller._chain])[:, 2]
    assert heights.min() > config.clearance - 0.02  # the goals keep clearance; the joints follow them closely
    excursion = (after - controller.centers[0]).std(axis=0)
    assert np.all(excursion > 0.05)  # every joint moves
    np.testing.assert_allclose(u[-1], controller.centers[0])  # it fades out to the center ...
    assert parts.task.judge(trial, 0).success  # ... where the arm comes to rest: the experiment's goal


def test_excite_shrinks_its_amplitudes_to_keep_the_tool_above_the_table():
    with MujocoRobot(SCENE) as robot:
        low_center = [0.0, -0.4, 0.5, 1.0, 0.0, 0.3]  # home: the tool 8 cm above the table
        controller = ExciteController(ExciteConfig(), robot, SCENE, 1000, centers=[low_center])
        assert controller.amplitudes[0].max() < 0.5
        goals = controller.centers[0] + controller.amplitudes[0] * controller.signals[0]
        assert controller.kinematics.site_positions(goals[:, controller._chain])[:, 2].min() >= 0.04
        with pytest.raises(ValueError, match="choose a higher center"):
            ExciteController(ExciteConfig(center=[0.0, 0.0, 1.2, 1.2, 0.0, 0.3], clearance=0.2), robot, SCENE, 1000)
        with pytest.raises(ValueError, match="within margin"):
            ExciteController(ExciteConfig(center=[1.9, -0.5, 0.0, 0.8, 0.0, 0.5]), robot, SCENE, 1000)


def test_delayed_controls_hold_each_goal_and_shift_it_by_the_delay():
    goals = np.array([[[0.0], [1.0], [2.0]]])  # the goal before, then two periods' goals
    dt, k = 0.02, 10
    np.testing.assert_allclose(delayed_controls(goals, 0.0, dt, k)[0, :, 0], [1.0] * 10 + [2.0] * 10)
    np.testing.assert_allclose(delayed_controls(goals, 0.006, dt, k)[0, :, 0], [0.0] * 3 + [1.0] * 10 + [2.0] * 7)
    # A delay between physics steps blends the one step where the goal changes: continuous in the delay.
    half = delayed_controls(goals, 0.005, dt, k)[0, :, 0]
    np.testing.assert_allclose(half[:4], [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(half[12], 1.5)


def _log(robot, experiment, folder, seed, horizon):
    """One trial of `experiment` on `robot`, logged in folder/trials (a run folder with its config)."""
    experiment.loop.seed = seed
    parts = build_parts(experiment, robot)
    parts.task.apply(0, robot)
    path = folder / "trials" / "trial_0000.h5"
    (folder / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("robot: {scene: so101_reach}\n")
    with TrialWriter(path, robot.spec, {"task": experiment.name}) as writer:
        writer.finish(rollout(robot, parts.controller.policy(0), horizon, seed, sink=writer))
    return folder


def test_fit_identifies_a_reality_gap_from_an_excite_trial(tmp_path, capsys):
    """A smaller version of the benchmark (docs/sysid.md): an arm whose servos are half as stiff and
    twice as damped as the scene's, 10 ms behind the bus, with 1 tick of encoder noise. Fit kp and
    damping of every joint and the delay on 8 s of arm-excite; on 4 s of another excitation (other
    phases) the identified scene's 1 s open-loop error of every joint is at most a third of the
    nominal scene's and at most 1 deg (measured: about 4 deg before, 0.2 after)."""
    reality = tmp_path / "reality.yaml"
    reality.write_text("kp: {scale: 0.5}\ndamping: {scale: 2}\nlatency: 0.010\nencoder_noise: {std: 1, unit: ticks}\n")
    experiment = load_experiment("arm-excite")
    with RealityArm(SCENE, reality) as robot:
        train = _log(robot, experiment, tmp_path / "excite", seed=0, horizon=400)
        heldout = _log(robot, experiment, tmp_path / "heldout", seed=1, horizon=200)
    settings = tmp_path / "settings.yaml"
    settings.write_text("fields: [kp, damping]\npayload: false\nmax_iterations: 8\n")
    out = tmp_path / "identified" / "so101_identified.xml"
    assert main(["fit", "--model", "mujoco", str(train), "--validate", str(heldout), "--model-config", str(settings),
                 "--out", str(out)]) == 0
    report = json.loads(out.with_name("so101_identified_report.json").read_text())
    nominal, identified = report["open_loop_rmse_deg"]["nominal"]["1s"], report["open_loop_rmse_deg"]["identified"]["1s"]
    for joint in nominal:
        assert identified[joint] <= nominal[joint] / 3 and identified[joint] <= 1.0, (joint, nominal, identified)
    assert set(report["open_loop_rmse_deg"]["identified"]) == {"0.5s", "1s", "2s"}
    assert out.with_name("so101_identified_predictions.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "nominal -> identified" in printed and str(out) in printed

    # The identified scene is a scene like any other: a robot runs it, a planning model plans on it,
    # and it holds what was identified (the delay within a physics step of the latency).
    model = mujoco.MjModel.from_xml_path(str(out))
    params = servo_parameters(model)
    fitted = report["identification"]["identified"]
    np.testing.assert_allclose(params.kp, [fitted["kp"][j] for j in params.joints], rtol=1e-5)  # 6 digits in MJCF
    np.testing.assert_allclose(params.kp / [25, 25, 25, 25, 25, 10], 0.5, rtol=0.25)  # the nominal kp halved
    assert abs(scene_delay(model) - 0.010) < 0.002
    assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, DELAY_NUMERIC) >= 0
    with MujocoRobot(out) as robot:
        robot.reset(seed=0)
        planning = build_model("mujoco", model_settings("mujoco", {"scene": str(out), "timestep": 0.02}, "model"),
                               robot.spec, SCENE)
        assert planning.model.actuator_gainprm[1, 0] == pytest.approx(params.kp[1])


def test_fit_mujoco_refuses_bad_input_in_one_line(tmp_path, capsys):
    with RealityArm(SCENE) as robot:
        run = _log(robot, load_experiment("arm-excite"), tmp_path / "excite", seed=0, horizon=60)
    bad = tmp_path / "bad.yaml"
    bad.write_text("fields: [stiffness]\n")
    held_out = ["--validate", str(run)]
    for argv, message in (
        (["--model-config", str(bad), *held_out], "fields: unknown servo parameter 'stiffness'"),
        (["--scene", "cartpole", *held_out], "is not a position servo"),
        (["--scene", "nowhere", *held_out], "unknown scene 'nowhere'"),
        ([], "give held-out trials with --validate"),  # one trial, nothing to hold out
    ):
        assert main(["fit", "--model", "mujoco", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err, err
    assert main(["fit", "--model", "tvlg", str(run), "--scene", SCENE]) == 2
    assert "--scene and --validate are for --model mujoco" in capsys.readouterr().err
