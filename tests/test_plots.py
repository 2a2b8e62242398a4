"""Plots: PNG files with the trajectories, costs and predictions they claim to show."""

import imageio.v3 as iio
import numpy as np
import pytest

from forethought.robots.trial import Trial
from forethought.scripts.plots import (
    cost_terms_figure,
    learning_curve_figure,
    plot_cost_terms,
    plot_learning_curve,
    plot_predictions,
    plot_trial,
    predictions_figure,
    trial_figure,
)

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex")


def arm_trial(T: int = 30) -> Trial:
    """Three joints tracking sine targets, a block, their velocities."""
    t = np.arange(T + 1) * 0.02
    joints = np.stack([np.sin(2 * t + k) for k in range(3)], axis=1)
    block = np.stack([0.2 + 0.01 * t, np.full_like(t, 0.05)], axis=1)
    states = np.concatenate([joints, block, np.gradient(joints, axis=0), np.zeros((T + 1, 2))], axis=1)
    names = JOINTS + ("block:x", "block:y") + tuple(f"d_{n}" for n in JOINTS) + ("d_block:x", "d_block:y")
    actions = joints[1:] + 0.05
    costs = np.append(np.sum(joints[:-1] ** 2, axis=1), np.nan)
    return Trial(states, actions, t, costs, names, JOINTS, 0.02, {"task": "arm-reach"})


def read_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = iio.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    return image[..., :3]


def assert_has_content(image):
    assert image.std() > 20  # not a blank page
    colours = np.unique(image.reshape(-1, 3) // 32, axis=0)
    assert len(colours) > 8  # lines in several colours, not just text


def drawn(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def test_a_trial_plot_shows_each_joint_with_its_target_and_the_cost_per_step(tmp_path):
    trial = arm_trial()
    path = plot_trial(trial, tmp_path / "plots" / "trajectories.png", units={n: "rad" for n in JOINTS})
    assert_has_content(read_png(path))

    fig = trial_figure(trial, units={n: "rad" for n in JOINTS})
    axes = [ax for ax in fig.axes if ax.get_visible()]
    # Velocities (d_...) are left out; the block's position gets its own panels.
    assert [ax.get_title() for ax in axes] == [*JOINTS, "block:x", "block:y", "cost per step"]
    lift = axes[1]
    position, target = lift.get_lines()[:2]
    np.testing.assert_allclose(position.get_ydata(), trial.states[:, 1])
    np.testing.assert_allclose(position.get_xdata()[-1], 30 * 0.02)  # seconds, from the control period
    np.testing.assert_allclose(target.get_ydata()[: trial.horizon], trial.actions[:, 1])
    assert target.get_linestyle() == "--" and target.get_color() == position.get_color()
    assert lift.get_ylabel() == "shoulder_lift (rad)" and lift.get_xlabel() == "time (s)"
    np.testing.assert_allclose(axes[3].get_lines()[0].get_ydata(), trial.states[:, 3])
    np.testing.assert_allclose(axes[-1].get_lines()[0].get_ydata()[:-1], trial.costs[:-1])
    assert "arm-reach" in fig.get_suptitle()


def test_a_trial_with_many_states_groups_them_into_few_panels(tmp_path):
    rng = np.random.default_rng(0)
    names = tuple(f"obs{i}" for i in range(40))
    trial = Trial(rng.standard_normal((21, 40)), rng.standard_normal((20, 14)), np.arange(21) * 0.01, rng.random(21),
                  names, tuple(f"u{j}" for j in range(14)), 0.01, {}, complete=False)
    fig = trial_figure(trial)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["other states", "actions", "cost per step"]
    assert len(axes[0].get_lines()) == 40 and len(axes[1].get_lines()) == 14
    assert "incomplete" in fig.get_suptitle()
    assert_has_content(read_png(plot_trial(trial, tmp_path / "many.png")))


def test_a_learning_curve_shows_mean_spread_and_the_success_threshold(tmp_path):
    costs = [[9.0, 11.0, 10.0], [6.0, 8.0], [2.0, 3.0, 1.0]]
    path = plot_learning_curve(costs, tmp_path / "learning_curve.png", success_threshold=2.5)
    assert_has_content(read_png(path))

    fig = learning_curve_figure(costs, success_threshold=2.5)
    ax = fig.axes[0]
    mean = next(line for line in ax.get_lines() if line.get_label() == "mean")
    np.testing.assert_allclose(mean.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(mean.get_ydata(), [10.0, 7.0, 2.0])
    threshold = next(line for line in ax.get_lines() if "threshold" in line.get_label())
    np.testing.assert_allclose(threshold.get_ydata(), [2.5, 2.5])
    assert len(ax.collections) == 2  # the min-max band and the samples
    assert ax.get_xlabel() == "iteration" and "cost" in ax.get_ylabel()
    # One cost per iteration: a plain line, no band.
    single = learning_curve_figure([5.0, 4.0, 3.5, 3.0]).axes[0]
    np.testing.assert_allclose(single.get_lines()[0].get_ydata(), [5.0, 4.0, 3.5, 3.0])
    assert len(single.collections) == 0
    with pytest.raises(ValueError, match="every iteration"):
        learning_curve_figure([[1.0], []])


def test_cost_terms_are_averaged_per_iteration_one_line_each(tmp_path):
    costs = [[100.0, 2.0, 0.0], [300.0, 4.0, 0.0], [50.0, 1.0, 1e-9]]
    labels = ["0 state block:x", "1 site_distance ee", "2 joint_limits"]
    assert_has_content(read_png(plot_cost_terms(labels, costs, [0, 0, 1], tmp_path / "cost_terms.png")))
    ax = cost_terms_figure(labels, costs, [0, 0, 1]).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["0 state block:x"].get_xdata(), [1, 2])
    np.testing.assert_allclose(lines["0 state block:x"].get_ydata(), [200.0, 50.0])
    np.testing.assert_allclose(lines["1 site_distance ee"].get_ydata(), [3.0, 1.0])
    # A term that barely counts sits on the floor of the log scale (1e-4 of the largest mean).
    np.testing.assert_allclose(lines["2 joint_limits"].get_ydata(), [0.02, 0.02])
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match=r"costs \(N, 3\)"):
        cost_terms_figure(labels, [[1.0, 2.0]], [0])


def test_predictions_are_drawn_against_the_actual_trajectory_with_their_spread(tmp_path):
    trial = arm_trial(40)
    actual = trial.states[:, :3]
    mean = actual + 0.1 * np.sin(np.arange(41))[:, None]
    std = np.linspace(0.01, 0.2, 41)[:, None] * np.ones(3)
    path = plot_predictions(actual, mean, std, JOINTS, tmp_path / "predictions.png", dt=0.02)
    assert_has_content(read_png(path))

    fig = predictions_figure(actual, mean, std, JOINTS, dt=0.02, units={"elbow_flex": "rad"})
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == list(JOINTS)
    truth, predicted = axes[2].get_lines()
    np.testing.assert_allclose(truth.get_ydata(), actual[:, 2])
    np.testing.assert_allclose(predicted.get_ydata(), mean[:, 2])
    band = axes[2].collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx((mean[:, 2] + 2 * std[:, 2]).max())
    assert axes[2].get_ylabel() == "elbow_flex (rad)" and axes[2].get_xlabel() == "time (s)"
    # A deterministic model has no spread; the picture still differs from one with it.
    without = predictions_figure(actual, mean, None, JOINTS)
    assert not any(ax.collections for ax in without.axes)
    assert without.axes[0].get_xlabel() == "step"
    assert np.abs(drawn(without).astype(int) - drawn(predictions_figure(actual, mean, std, JOINTS))).sum() > 0


def test_predictions_with_mismatched_shapes_are_refused_with_the_shapes(tmp_path):
    actual = np.zeros((11, 3))
    with pytest.raises(ValueError, match=r"\(11, 3\) and \(10, 3\)"):
        plot_predictions(actual, np.zeros((10, 3)), None, JOINTS, tmp_path / "p.png")
    with pytest.raises(ValueError, match="predicted std"):
        plot_predictions(actual, actual, np.zeros((11, 2)), JOINTS, tmp_path / "p.png")
    with pytest.raises(ValueError, match="2 names for 3"):
        plot_predictions(actual, actual, None, JOINTS[:2], tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
