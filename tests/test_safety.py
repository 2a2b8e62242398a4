"""The safety layer: goals inside the limits and the per-tick cap whatever the controller sends,
braking, health stops, and signals turned into exceptions."""

import os
import signal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from forethought.robots.safety import SafetyLayer, SafetyLimits, SafetyStop, Terminated, exit_signals_raise
from forethought.robots.servo_bus import BusReading
from forethought.robots.servo_models import ServoFault

M = 4
NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "gripper")
LIMITS = SafetyLimits(
    lower=np.array([-1.9, -1.7, -1.6, 0.0]),
    upper=np.array([1.9, 1.7, 1.6, 1.5]),
    max_step=np.array([0.06, 0.06, 0.05, 0.1]),
    max_velocity=4.0,
    max_temperature=65.0,
    min_voltage=9.5,
)

anything = st.floats(allow_nan=True, allow_infinity=True, width=64)
actions = arrays(np.float64, (M,), elements=anything)
measured = arrays(np.float64, (M,), elements=st.floats(-10, 10))


@settings(max_examples=300, deadline=None)
@given(
    start=arrays(np.float64, (M,), elements=st.floats(-0.02, 1.02)),
    steps=st.lists(st.tuples(actions, measured, measured, st.booleans()), min_size=1, max_size=40),
)
def test_no_goal_leaves_the_limits_or_outruns_the_per_tick_cap(start, steps):
    layer = SafetyLayer(NAMES, LIMITS)
    last = layer.start(LIMITS.lower + start * (LIMITS.upper - LIMITS.lower))  # inside or just outside
    goals = [last]
    for u, present, velocity, watchdog in steps:
        goal = layer.hold(present) if watchdog else layer.filter(u, present, velocity)
        goals.append(goal)
    goals = np.array(goals)
    assert np.all(np.isfinite(goals))
    assert np.all(goals >= LIMITS.lower) and np.all(goals <= LIMITS.upper)
    assert np.all(np.abs(np.diff(goals, axis=0)) <= LIMITS.max_step + 1e-12)
    counted = layer.interventions
    nonfinite = sum(1 for u, _, _, w in steps if not w and not np.all(np.isfinite(u)))
    assert counted["nonfinite"] == nonfinite
    assert counted["watchdog"] == sum(1 for *_, w in steps if w)


def test_a_nan_action_holds_the_last_goal_and_is_counted():
    layer = SafetyLayer(NAMES, LIMITS)
    first = layer.start(np.zeros(M))
    goal = layer.filter([0.01, np.nan, 0.0, 0.0], np.zeros(M), np.zeros(M))
    np.testing.assert_array_equal(goal, first)
    assert layer.interventions["nonfinite"] == 1


def test_clipping_rate_limit_and_velocity_brake_each_count():
    layer = SafetyLayer(NAMES, LIMITS)
    layer.start(np.zeros(M))
    goal = layer.filter([5.0, 0.0, 0.0, 0.0], np.zeros(M), np.zeros(M))
    assert goal[0] == pytest.approx(0.06)  # clipped to 1.9, then capped to one step
    assert layer.interventions["clipped"] == 1 and layer.interventions["rate_limited"] == 1
    # A joint measured too fast has its goal pulled back to where it is.
    goal = layer.filter([0.5, 0.0, 0.0, 0.0], np.array([0.03, 0, 0, 0]), np.array([6.0, 0, 0, 0]))
    assert goal[0] == pytest.approx(0.03)
    assert layer.interventions["velocity"] == 1


def test_an_arm_far_outside_its_limits_refuses_to_start_naming_the_joint():
    layer = SafetyLayer(NAMES, LIMITS)
    with pytest.raises(SafetyStop, match="elbow_flex"):
        layer.start(np.array([0.0, 0.0, 2.0, 0.5]))
    # Just outside (within the start tolerance) starts at the nearest limit.
    np.testing.assert_allclose(layer.start(np.array([0.0, 0.0, 1.65, 0.5])), [0.0, 0.0, 1.6, 0.5])


def _reading(faults=None, temperature=35.0, voltage=12.0) -> BusReading:
    return BusReading(
        position=np.zeros(M, dtype=np.int64), velocity=np.zeros(M), load=np.zeros(M),
        voltage=np.full(M, voltage), temperature=np.full(M, temperature),
        faults=faults or [ServoFault.NONE] * M, time=0.0,
    )


@pytest.mark.parametrize(
    "reading, kind, message",
    [
        (_reading(faults=[ServoFault.NONE] * 3 + [ServoFault.OVERHEAT]), "overheat", "gripper is overheating"),
        (_reading(temperature=70.0), "overheat", "shoulder_pan is overheating"),
        (_reading(faults=[ServoFault.NONE, ServoFault.OVERLOAD, ServoFault.NONE, ServoFault.NONE]), "overload", "shoulder_lift reports overload"),
        (_reading(voltage=8.0), "low_voltage", "8.0 V"),
    ],
)
def test_health_stops_name_the_servo_and_are_counted(reading, kind, message):
    layer = SafetyLayer(NAMES, LIMITS)
    with pytest.raises(SafetyStop, match=message):
        layer.check_health(reading)
    assert layer.interventions[kind] == 1
    layer.check_health(_reading())  # a healthy arm passes


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="below"):
        SafetyLimits(lower=[1.0], upper=[0.0], max_step=[0.1], max_velocity=1.0, max_temperature=60, min_voltage=5)
    with pytest.raises(ValueError, match="positive"):
        SafetyLimits(lower=[0.0], upper=[1.0], max_step=[0.0], max_velocity=1.0, max_temperature=60, min_voltage=5)


def test_sigterm_becomes_an_exception_that_unwinds_with_blocks():
    cleaned = []
    with pytest.raises(Terminated):
        with exit_signals_raise():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between bytecodes
                    pass
            finally:
                cleaned.append(True)
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
