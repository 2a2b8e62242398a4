"""MuJoCo as a model: predictions equal the robot's steps, Jacobians match differences, rollouts
equal successive predictions, threads, files."""

from __future__ import annotations

import threading

import mujoco
import numpy as np
import pytest
import torch

from forethought.controllers.samplers import BatchedDynamics, as_dynamics
from forethought.models.dynamics_model import DynamicsModel
from forethought.models.simulator import SimulatorModel
from forethought.robots.config import ConfigError
from forethought.sim.mujoco_robot import MujocoRobot

SCENE = "koch_reach"

# A pusher on a slide joint and a free box on the floor: quaternion coordinates and contact.
PUSH_XML = """
<mujoco>
  <option timestep="0.005"/>
  <worldbody>
    <geom type="plane" size="1 1 0.1"/>
    <body name="pusher" pos="0 0 0.05">
      <joint name="slide" type="slide" axis="1 0 0" damping="1"/>
      <geom type="sphere" size="0.03" mass="0.5"/>
    </body>
    <body name="box" pos="0.1 0.01 0.05">
      <freejoint name="box"/>
      <geom type="box" size="0.04 0.04 0.04" mass="0.2"/>
    </body>
  </worldbody>
  <actuator><motor joint="slide" ctrlrange="-5 5"/></actuator>
</mujoco>
"""


# A 1 kg slider whose unlimited motor (gear 1000) can demand an acceleration past MuJoCo's limit
# (1e10): MuJoCo then finds the simulation unstable and resets it.
BLOWUP_XML = """
<mujoco>
  <option timestep="0.01"/>
  <worldbody>
    <body>
      <joint name="x" type="slide" axis="1 0 0" damping="1"/>
      <geom type="sphere" size="0.05" mass="1"/>
    </body>
  </worldbody>
  <actuator><motor joint="x" gear="1000"/></actuator>
</mujoco>
"""


# Six boxes stacked in contact (24 contacts) with too little arena memory for their constraints:
# MuJoCo warns that the constraint buffer is full and drops some, but the simulation goes on.
STACK_XML = (
    '<mujoco><size memory="24K"/><worldbody><geom type="plane" size="1 1 0.1"/>'
    '<body pos="1 0 0.05"><joint name="x" type="slide" axis="1 0 0"/>'
    '<geom type="sphere" size="0.02" mass="1" contype="0" conaffinity="0"/></body>'
    + "".join(f'<body pos="0 0 {0.0299 + 0.0598 * i:.4f}"><freejoint/><geom type="box" size="0.03 0.03 0.03"/></body>' for i in range(6))
    + '</worldbody><actuator><motor joint="x"/></actuator></mujoco>'
)


def relative_error(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_predict_equals_stepping_the_robot():
    robot = MujocoRobot(SCENE)
    model = SimulatorModel(SCENE)
    assert isinstance(model, DynamicsModel) and model.control_steps == robot.control_steps
    rng = np.random.default_rng(1)
    x = robot.reset(seed=3)
    for _ in range(5):
        u = rng.uniform(robot.spec.action_low, robot.spec.action_high)
        predicted, var = model.predict(x, u)
        x = robot.step(u)
        np.testing.assert_allclose(predicted, x, atol=1e-12)
        assert np.all(var == 0)


def test_batched_predict_uses_rollout_and_agrees_with_single_steps():
    model = SimulatorModel(SCENE)
    rng = np.random.default_rng(2)
    x = rng.normal(scale=0.3, size=(12, model.n))
    u = rng.normal(scale=0.3, size=(12, model.m))
    batch, _ = model.predict(x, u)  # 12 rows: one mujoco.rollout call
    singles = np.array([model.predict(x[i], u[i])[0] for i in range(12)])
    np.testing.assert_allclose(batch, singles, atol=1e-12)


@pytest.mark.parametrize("centred", [False, True])
def test_linearize_matches_differences_over_the_control_period(centred):
    model = SimulatorModel(SCENE, centred=centred)
    rng = np.random.default_rng(0)
    x = rng.normal(scale=0.3, size=(3, model.n))
    u = rng.normal(scale=0.3, size=(3, model.m))
    A, B, c, Sigma = model.linearize(x, u)
    assert A.shape == (3, model.n, model.n) and B.shape == (3, model.n, model.m) and np.all(Sigma == 0)
    h = 1e-6
    for t in range(3):
        A_num = np.stack([(model.predict(x[t] + h * e, u[t])[0] - model.predict(x[t] - h * e, u[t])[0]) / (2 * h) for e in np.eye(model.n)], 1)
        B_num = np.stack([(model.predict(x[t], u[t] + h * e)[0] - model.predict(x[t], u[t] - h * e)[0]) / (2 * h) for e in np.eye(model.m)], 1)
        assert relative_error(A[t], A_num) < 1e-5
        assert relative_error(B[t], B_num) < 1e-5
        # The affine term makes the linearisation exact at the point itself.
        np.testing.assert_allclose(A[t] @ x[t] + B[t] @ u[t] + c[t], model.predict(x[t], u[t])[0], atol=1e-10)


def test_linearize_maps_free_joint_quaternions_to_qpos_coordinates():
    model = SimulatorModel(mujoco.MjModel.from_xml_string(PUSH_XML), control_steps=4)
    assert model.n == 1 + 7 + 1 + 6
    rng = np.random.default_rng(5)
    x = np.zeros(model.n)
    x[0], x[1:4] = 0.02, [0.1, 0.01, 0.3]
    q = rng.normal(size=4)
    x[4:8] = q / np.linalg.norm(q)  # a tumbling box in the air: qpos' quaternion depends on q and w
    x[8:] = rng.normal(scale=2.0, size=7)
    u = np.array([3.0])
    A, B, _, _ = model.linearize(x, u)
    h = 1e-6
    # Perturbations that keep the quaternion unit length to first order: positions, velocities,
    # and rotations q -> q exp(w / 2).
    directions = [np.eye(model.n)[i] for i in (0, 1, 2, 3, *range(8, 15))]
    quat = x[4:8]
    for w in np.eye(3):
        d = np.zeros(model.n)
        d[4:8] = 0.5 * np.array([-quat[1:] @ w, *(quat[0] * w + np.cross(quat[1:], w))])
        directions.append(d)
    for d in directions:
        numeric = (model.predict(x + h * d, u)[0] - model.predict(x - h * d, u)[0]) / (2 * h)
        assert relative_error(A @ d, numeric) < 1e-4
    numeric_B = (model.predict(x, u + h)[0] - model.predict(x, u - h)[0]) / (2 * h)
    assert relative_error(B[:, 0], numeric_B) < 1e-5


@pytest.fixture
def mujoco_warnings():
    """MuJoCo's warnings, collected instead of printed and appended to MUJOCO_LOG.TXT."""
    caught: list[str] = []
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(caught.append)
    yield caught
    mujoco.set_mju_user_warning(previous)


def test_unstable_rows_predict_nan_not_a_reset_state(mujoco_warnings):
    model = SimulatorModel(SCENE)
    x = np.zeros((2, model.n))
    x[1, model.nq :] = 1e12
    u = np.zeros((2, model.m))
    mean, _ = model.predict(x, u)
    assert np.all(np.isfinite(mean[0])) and np.all(np.isnan(mean[1]))
    mean, _ = model.predict(np.tile(x, (5, 1)), np.tile(u, (5, 1)))  # the rollout path
    assert np.all(np.isfinite(mean[0::2])) and np.all(np.isnan(mean[1::2]))
    assert any("unstable" in w for w in mujoco_warnings)


def test_batched_predict_catches_a_reset_in_the_first_physics_step(mujoco_warnings):
    # With one physics step per period, the reset row's clock would read one step, as expected
    # from time 0: rollouts start their clock elsewhere.
    model = SimulatorModel(SCENE, control_steps=1)
    x = np.zeros((8, model.n))
    x[1::2, model.nq :] = 1e12
    mean, _ = model.predict(x, np.zeros((8, model.m)))
    assert np.all(np.isfinite(mean[0::2])) and np.all(np.isnan(mean[1::2]))


def successive_predictions(model: SimulatorModel, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
    """(B, H+1, n): x0 (B, n) and H one-row predict calls per row under U (B, H, m)."""
    X = np.empty((len(x0), U.shape[1] + 1, model.n))
    for b in range(len(x0)):
        X[b, 0] = x = x0[b]
        for t in range(U.shape[1]):
            X[b, t + 1] = x = model.predict(x, U[b, t])[0]
    return X


@pytest.mark.parametrize("scene", ["slider", SCENE])
def test_rollout_equals_successive_predictions(slider, scene):
    model = SimulatorModel(slider[1].scene if scene == "slider" else scene)
    rng = np.random.default_rng(4)
    x0 = torch.tensor(rng.normal(scale=0.2, size=(9, model.n)), dtype=torch.float32)
    U = torch.tensor(rng.uniform(-1.0, 1.0, size=(9, 6, model.m)), dtype=torch.float32)
    X = model.rollout(x0, U, torch.Generator())
    assert X.dtype == torch.float32 and X.device == model.device and X.shape == (9, 7, model.n)
    expected = successive_predictions(model, x0.double().numpy(), U.double().numpy())
    np.testing.assert_allclose(X.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("control_steps, unstable_period", [(3, 2), (1, 0), (1, 3)])
def test_rollout_is_nan_from_the_unstable_period_on_and_other_rows_unaffected(
    mujoco_warnings, control_steps, unstable_period
):
    model = SimulatorModel(mujoco.MjModel.from_xml_string(BLOWUP_XML), control_steps=control_steps)
    rng = np.random.default_rng(6)
    x0 = rng.normal(scale=0.1, size=(3, model.n)).astype(np.float32)
    U = rng.uniform(-0.01, 0.01, size=(3, 5, model.m)).astype(np.float32)
    U[1, unstable_period] = 1e9  # 1e12 N on 1 kg
    X = model.rollout(torch.from_numpy(x0), torch.from_numpy(U)).numpy()
    expected = successive_predictions(model, x0.astype(np.float64), U.astype(np.float64))
    assert np.all(np.isfinite(X[1, : unstable_period + 1])) and np.all(np.isnan(X[1, unstable_period + 1 :]))
    assert np.all(np.isnan(expected[1, unstable_period + 1 :]))
    np.testing.assert_allclose(X[1, : unstable_period + 1], expected[1, : unstable_period + 1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(X[0::2], expected[0::2], rtol=1e-6, atol=1e-6)
    assert any("unstable" in w for w in mujoco_warnings)


def test_rollout_rows_stopped_by_a_full_buffer_are_stepped_as_predict_steps_them(mujoco_warnings):
    # mujoco.rollout ends a row at any of MuJoCo's warnings, mj_step only at instability.
    model = SimulatorModel(mujoco.MjModel.from_xml_string(STACK_XML), control_steps=5)
    x0 = np.tile(np.concatenate([model.model.qpos0, np.zeros(model.nv)]), (8, 1)).astype(np.float32)
    U = np.random.default_rng(2).uniform(-1.0, 1.0, size=(8, 4, model.m)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="mjWARN_CNSTRFULL"):
        X = model.rollout(torch.from_numpy(x0), torch.from_numpy(U)).numpy()
    expected = successive_predictions(model, x0.astype(np.float64), U.astype(np.float64))
    assert np.all(np.isfinite(X))
    np.testing.assert_allclose(X, expected, rtol=1e-6, atol=1e-6)


def test_sampling_planners_use_the_rollout_directly():
    model = SimulatorModel(SCENE)
    assert isinstance(model, BatchedDynamics)
    assert as_dynamics(model) is model


# A slider that runs into a wall carried by a mocap body (both children of the world, so the
# parent filter is off).
WALL_XML = """
<mujoco>
  <option timestep="0.01"><flag filterparent="disable"/></option>
  <worldbody>
    <body>
      <joint name="x" type="slide" axis="1 0 0"/>
      <geom type="sphere" size="0.05" mass="1"/>
    </body>
    <body name="wall" mocap="true" pos="1 0 0"><geom type="box" size="0.01 0.2 0.2"/></body>
  </worldbody>
  <actuator><motor joint="x"/></actuator>
</mujoco>
"""


def test_a_moved_mocap_body_is_where_batched_rollouts_see_it():
    model = SimulatorModel(mujoco.MjModel.from_xml_string(WALL_XML), control_steps=30)
    model.set_mocap_pos("wall", [0.2, 0.0, 0.0])
    x = np.tile([0.0, 2.0], (8, 1))  # at 2 m/s the slider would pass 0.6 m in the period
    batched, _ = model.predict(x, np.zeros((8, 1)))
    single, _ = model.predict(x[0], np.zeros(1))
    np.testing.assert_allclose(batched, np.tile(single, (8, 1)))
    assert batched[0, 0] < 0.2  # stopped by the wall


def test_rollout_threads_give_the_same_states():
    rng = np.random.default_rng(7)
    one, two = SimulatorModel(SCENE), SimulatorModel(SCENE, threads=2)
    x0 = torch.tensor(rng.normal(scale=0.2, size=(33, one.n)), dtype=torch.float32)
    U = torch.tensor(rng.uniform(-1.0, 1.0, size=(33, 5, one.m)), dtype=torch.float32)
    torch.testing.assert_close(two.rollout(x0, U), one.rollout(x0, U), rtol=0, atol=0)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        SimulatorModel(SCENE, threads=0)


def test_threads_each_get_their_own_data():
    model = SimulatorModel(SCENE)
    rng = np.random.default_rng(3)
    xs = rng.normal(scale=0.3, size=(4, 6, model.n))
    us = rng.normal(scale=0.3, size=(4, 6, model.m))
    expected = [model.linearize(xs[i], us[i])[0] for i in range(4)]
    results = [None] * 4

    def work(i):
        for _ in range(3):
            results[i] = model.linearize(xs[i], us[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_save_load_and_fit(tmp_path):
    model = SimulatorModel(SCENE, control_steps=2, timestep=0.01, centred=True)
    assert model.fit([]) == {}
    model.save(tmp_path / "model.json")
    loaded = SimulatorModel.load(tmp_path / "model.json")
    assert (loaded.control_steps, loaded.dt, loaded.centred) == (2, pytest.approx(0.02), True)
    x, u = np.zeros(model.n), np.full(model.m, 0.3)
    np.testing.assert_array_equal(loaded.predict(x, u)[0], model.predict(x, u)[0])
    with pytest.raises(FileNotFoundError, match="simulator model file not found"):
        SimulatorModel.load(tmp_path / "missing.json")
    (tmp_path / "partial.json").write_text('{"model": "simulator", "scene": "cartpole"}')
    with pytest.raises(ConfigError, match=r"partial.json: not a complete simulator model file \(no 'control_steps'\)"):
        SimulatorModel.load(tmp_path / "partial.json")
    with pytest.raises(ValueError, match=r"x must be \(B, 12\) and u \(B, 6\)"):
        model.predict(np.zeros(11), u)


@pytest.mark.parametrize("control_steps, unstable_period", [(3, 2), (1, 0), (1, 3), (1, None)])
def test_closed_loop_steps_as_predict_does_and_is_nan_from_an_unstable_period_on(
    mujoco_warnings, control_steps, unstable_period
):
    model = SimulatorModel(mujoco.MjModel.from_xml_string(BLOWUP_XML), control_steps=control_steps)
    rng = np.random.default_rng(8)
    x0 = rng.normal(scale=0.1, size=model.n)
    U = rng.uniform(-0.01, 0.01, size=(5, model.m))
    if unstable_period is not None:
        U[unstable_period] = 1e9  # 1e12 N on 1 kg
    X, U_out = model.closed_loop(x0, U)
    expected = successive_predictions(model, x0[None], U[None])[0]
    np.testing.assert_array_equal(X, expected)  # the same physics, bit for bit (NaN where unstable)
    np.testing.assert_array_equal(U_out, U)
    if unstable_period is not None:
        assert np.all(np.isnan(X[unstable_period + 1 :])) and np.all(np.isfinite(X[: unstable_period + 1]))


def test_closed_loop_applies_clipped_feedback_about_the_reference():
    model = SimulatorModel(SCENE)
    rng = np.random.default_rng(9)
    T = 6
    x0 = rng.normal(scale=0.1, size=model.n)
    X_ref = rng.normal(scale=0.1, size=(T + 1, model.n))
    U = rng.uniform(-0.5, 0.5, size=(T, model.m))
    K = rng.normal(scale=2.0, size=(T, model.m, model.n))
    low, high = -0.3 * np.ones(model.m), 0.3 * np.ones(model.m)
    X, U_out = model.closed_loop(x0, U, X_ref, K, low, high)
    np.testing.assert_array_equal(X[0], x0)
    for t in range(T):  # the feedback law (to rounding: its sum runs in another order), the physics exactly
        u = np.clip(U[t] + K[t] @ (X[t] - X_ref[t]), low, high)
        np.testing.assert_allclose(U_out[t], u, rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(X[t + 1], model.predict(X[t], U_out[t])[0])
    assert np.any(np.abs(U_out) == 0.3)  # the bounds were met


@pytest.mark.parametrize("control_steps", [1, 3])
def test_linearize_over_threads_equals_one_thread(control_steps):
    rng = np.random.default_rng(10)
    one = SimulatorModel(SCENE, control_steps=control_steps)
    two = SimulatorModel(SCENE, control_steps=control_steps, threads=2)
    x = rng.normal(scale=0.2, size=(11, one.n))
    u = rng.uniform(-0.5, 0.5, size=(11, one.m))
    for a, b in zip(two.linearize(x, u), one.linearize(x, u)):
        np.testing.assert_array_equal(a, b)
