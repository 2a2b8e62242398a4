"""A low-cost servo arm as a Robot: joint position targets in, joint positions and velocities out.

`ServoArm` runs the arm at a fixed rate: `step(u)` sends the goal (after the safety layer) at a
fixed phase of the control period (`write_phase` of a period after the tick whose reading the
controller acted on, or at once when the controller was later than that), waits for the next tick
of the loop clock, reads every servo in one sync read and returns the state. So every goal acts
the same time after the state it answers, a delay the planning model can know; the read-to-write
latency of every step is measured (`latencies`, and its p50/p99 in `loop_stats`).
`applied_action` is the goal as written to the bus (after the safety layer, in the encoder's
ticks, read back in rad): what the trial log records as the action.
The clock starts with the first step (after reset the arm holds its start pose for as long as
the controller takes to decide its first action) and measures its own period and jitter
(`loop_stats`). From then on, a watchdog holds the arm where it is when no new action comes for
two periods. A servo that misses reads stands on its last valid state for up to the arm's stale
window (`ArmDescription.stale_window`): those ticks are marked stale (counted in `loop_stats`) and
the safety layer keeps the last goal; a servo silent for longer is lost. A bus failure, a lost
servo, a servo fault or any
exit (close, an exception, SIGINT, SIGTERM through `safety.exit_signals_raise`) turns torque off
on every servo.

State: (q, qd) with names like the arm's MuJoCo scene ("shoulder_pan", ..., "d_shoulder_pan", ...);
velocities from the servos, or a filtered difference of positions (velocity_source="difference").
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from typing import Sequence

import numpy as np

from forethought.robots.arm_description import ArmDescription, make_bus
from forethought.robots.calibration import Calibration, apply_calibration
from forethought.robots.loop_clock import LoopClock, sleep_until
from forethought.robots.robot import ActionError, RobotSpec
from forethought.robots.safety import SafetyLayer, SafetyLimits, SafetyStop
from forethought.robots.servo_bus import BusError, BusReading, ServoBus, ServoNotResponding


def smoothed_difference(v, q_before, q, elapsed: float, smoothing: float) -> np.ndarray:
    """The velocity_source="difference" estimate: v (m,) rad/s after joints moved from q_before to q
    (m,) rad in `elapsed` s (at least 0.1 ms), low-passed: smoothing * v + (1 - smoothing) * dq / dt."""
    return smoothing * v + (1.0 - smoothing) * (q - q_before) / max(elapsed, 1e-4)


class ServoArm:
    """An arm of `arm` (description) on `port`, calibrated by `calibration`, stepped every dt s.

    start_pose: (m,) rad the arm moves to (at the safety layer's pace) at every reset, or None
    to start where it stands. velocity_source: "servo" or "difference" (first-order filter with
    `velocity_smoothing` in [0, 1)). bus: a ServoBus to use instead of opening one on `port`.
    """

    def __init__(
        self,
        arm: ArmDescription,
        port: str,
        calibration: Calibration,
        dt: float,
        start_pose: Sequence[float] | None = None,
        velocity_source: str = "servo",
        velocity_smoothing: float = 0.5,
        bus: ServoBus | None = None,
        settle_s: float = 2.0,
        start_tolerance: float = 0.05,
        write_phase: float = 0.5,
    ):
        calibration.check_matches(arm)
        if velocity_source not in ("servo", "difference"):
            raise ValueError(f"velocity_source must be 'servo' or 'difference', got {velocity_source!r}")
        if not 0.0 <= velocity_smoothing < 1.0:
            raise ValueError(f"velocity_smoothing must be in [0, 1), got {velocity_smoothing}")
        if not 0.0 <= write_phase < 1.0:
            raise ValueError(f"write_phase must be in [0, 1) of a period, got {write_phase}")
        self.write_phase = float(write_phase)
        self.arm, self.calibration = arm, calibration
        self.bus = bus if bus is not None else make_bus(arm, port)
        names = arm.names
        lower = np.maximum(calibration.range_min, arm.lower)
        upper = np.minimum(calibration.range_max, arm.upper)
        self.safety = SafetyLayer(
            names,
            SafetyLimits(
                lower=lower, upper=upper, max_step=arm.max_goal_rate * dt, max_velocity=arm.max_velocity,
                max_temperature=arm.max_temperature, min_voltage=arm.min_voltage,
            ),
        )
        self.spec = RobotSpec(
            name=arm.name,
            state_names=names + tuple(f"d_{n}" for n in names),
            action_names=names,
            action_low=lower,
            action_high=upper,
            dt=dt,
            metadata={"arm": arm.name, "port": str(port), "protocol": arm.protocol, "velocity_source": velocity_source,
                      "write_phase": self.write_phase},
        )
        self.start_pose = None if start_pose is None else self._pose(start_pose)
        self.velocity_source = velocity_source
        self.velocity_smoothing = float(velocity_smoothing)
        self.settle_s = float(settle_s)
        self.start_tolerance = float(start_tolerance)
        self.clock = LoopClock(dt)
        self._reset_at = time.monotonic()
        self.last_reading: BusReading | None = None
        self.stale_window = float(arm.stale_window)
        self.stale = False  # the last read stood in for a servo that did not answer
        self._missing_since: np.ndarray | None = None  # (k,) time.monotonic() of the first read each servo missed in a row (inf: none)
        self._missed_reads: np.ndarray | None = None  # (k,) reads each servo has missed in a row
        # A servo is lost after missing reads for longer than the window, and at least as many
        # reads as the window holds: a pause of this process (a loaded machine) is not the servo's silence.
        self.stale_reads = max(1, int(np.ceil(self.stale_window / dt - 1e-9)))
        self._stale_ticks = self._stale_run = self._longest_stale = 0
        self._stale_runs: dict[int, int] = {}  # length of a run of stale reads -> how many ended so
        self._bus_at_reset: dict[str, int] = {}
        self.start_error: np.ndarray | None = None
        self._q = self._v = None
        self._lock = threading.RLock()
        self._connected = False
        self._torque_on = False
        self._in_step = False
        self._loop_running = False
        self._controller_s: list[float] = []
        self._read_s: list[float] = []
        self.latencies: list[float] = []  # s from each tick's reading (sync read sent) to the goal's write
        self._read_at = time.monotonic()
        self._late_writes = 0
        self.applied_action: np.ndarray | None = None
        self._last_return = 0.0
        self._holding = False
        self._watchdog_error: BaseException | None = None
        self._watchdog_stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        atexit.register(_close_quietly, weakref.ref(self))

    def _pose(self, pose) -> np.ndarray:
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (self.spec.m,) or not np.all(np.isfinite(pose)):
            raise ValueError(f"{self.arm.name}: a pose must be {self.spec.m} finite joint angles, got {pose}")
        return pose

    @property
    def interventions(self) -> dict[str, int]:
        return self.safety.interventions

    # -- connecting ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the bus, check every servo's model, configure the servos and write the calibration.

        Torque goes off while the servos are configured (EEPROM writes need it off)."""
        if self._connected:
            return
        bus = self.bus.open()
        bus.check_models()
        bus.torque_off_all()
        for servo, joint in zip(bus.servos, self.arm.joints):
            wanted = {
                "return_delay": 0,
                "operating_mode": servo.model.position_mode,
                "torque_limit": int(round(joint.torque_limit * servo.model.torque_limit_full_scale)),
            }
            for role, value in wanted.items():
                if bus.read_register(servo, role) != value:
                    bus.write_register(servo, role, value)
        apply_calibration(bus, self.calibration)
        self._connected = True
        self._read()

    def check(self) -> np.ndarray:
        """A dry run: connect, read every servo, check faults and that the arm is inside its limits.
        Nothing moves; torque stays off. Returns the state."""
        self.connect()
        with self._lock:
            x = self._read()
            self.safety.start(self._q)
        return x

    # -- the Robot interface ----------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Torque on where the arm stands, move to start_pose if set; returns x0: (2m,).

        seed is unused: a real arm starts where it is."""
        self.connect()
        self._stop_watchdog()
        with self._lock:
            self._raise_watchdog_error()
            self._read()
            goal = self.safety.start(self._q)
            self._guarded(lambda: self.bus.write_goals(self.calibration.to_ticks(goal)))
            self._guarded(lambda: self.bus.set_torque(True))
            self._torque_on = True
        if self.start_pose is not None:
            self._move_to(self.start_pose)
        self.safety.reset_counts()
        self.clock = LoopClock(self.spec.dt)
        self._controller_s, self._read_s = [], []
        self.latencies, self._late_writes, self.applied_action = [], 0, None
        self._stale_ticks = self._stale_run = self._longest_stale = 0
        self._stale_runs = {}
        self._bus_at_reset = dict(self.bus.stats)
        with self._lock:
            self._read_at = time.monotonic()
            x = self._read()
        self._loop_running = False
        self._start_watchdog()
        self._reset_at = time.monotonic()
        return x

    def step(self, u) -> np.ndarray:
        """Send u: (m,) joint position targets in rad through the safety layer, wait for the next
        tick, return x_next: (2m,). A non-finite u holds the arm and raises ActionError."""
        try:
            u = np.asarray(u, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ActionError(f"{self.spec.name}: action is not numeric ({err})") from None
        if u.shape != (self.spec.m,):
            raise ActionError(f"{self.spec.name}: action must have shape ({self.spec.m},) {list(self.spec.action_names)}, got {u.shape}")
        with self._lock:
            # A bus failure the watchdog met between steps turned torque off: report that, not the torque.
            self._raise_watchdog_error()
        if not self._torque_on:
            raise RuntimeError(f"{self.spec.name}: reset() the arm before stepping it")
        self._in_step = True
        try:
            first = not self._loop_running
            if first:
                tick = self.clock.start()
                self._loop_running = True
            else:
                self._controller_s.append(time.monotonic() - self._last_return)
                tick = self.clock.ticks[-1]
            write_at = tick + self.write_phase * self.spec.dt
            if time.monotonic() > write_at:
                self._late_writes += 1
            sleep_until(write_at)
            with self._lock:
                self._raise_watchdog_error()
                self._holding = False
                goal = self.safety.keep() if self.stale else self.safety.filter(u, self._q, self._v)
                ticks = self.calibration.to_ticks(goal)
                self._guarded(lambda: self.bus.write_goals(ticks))
                if not first:  # the first goal answers the reading at reset, before the loop's clock
                    self.latencies.append(time.monotonic() - self._read_at)
                self.applied_action = self.calibration.to_rad(ticks)
            if not np.all(np.isfinite(u)):
                bad = [n for n, v in zip(self.spec.action_names, u) if not np.isfinite(v)]
                raise ActionError(f"{self.spec.name}: action has NaN or infinite values in {bad}; the arm holds")
            self.clock.wait()
            with self._lock:
                started = self._read_at = time.monotonic()
                x = self._read()
                self._read_s.append(time.monotonic() - started)
                return x
        finally:
            self._last_return = time.monotonic()
            self._in_step = False

    def time(self) -> float:
        """Wall-clock seconds since the last reset (monotonic)."""
        return time.monotonic() - self._reset_at

    def close(self) -> None:
        """Torque off on every servo and release the port (safe to call more than once)."""
        self._stop_watchdog()
        with self._lock:
            if self.bus.is_open:
                try:
                    self.bus.torque_off_all(confirm=True)
                finally:
                    self._torque_on = False
                    self.bus.close()
            self._connected = False

    def __enter__(self) -> "ServoArm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def loop_stats(self) -> dict[str, float]:
        """The clock's statistics (LoopClock.stats); in ms the p50 and p99 of the time the
        controller took between steps, of the sync read of every servo and of the read-to-write
        latency (from a tick's sync read to the write of the goal that answers it; the first step,
        which answers the reading at reset, left out); late_writes: goals written after their phase
        because the controller took longer; the reads since reset that stood on a servo's last
        valid state (stale_ticks; longest_stale_ticks in a row; stale_runs: run length -> count),
        and the bus's counts since reset (bus_retries, bus_corrupt, bus_timeouts, bus_missing:
        servo replies given up on, bus_late: replies read past the exchange's deadline)."""
        stats = self.clock.stats()
        stats["write_phase"] = self.write_phase
        stats["late_writes"] = int(self._late_writes)
        stats["stale_ticks"] = self._stale_ticks
        stats["longest_stale_ticks"] = self._longest_stale
        runs = dict(self._stale_runs)
        if self._stale_run:
            runs[self._stale_run] = runs.get(self._stale_run, 0) + 1
        stats["stale_runs"] = {str(k): runs[k] for k in sorted(runs)}
        for key in ("retries", "corrupt", "timeouts", "missing", "late"):
            stats[f"bus_{key}"] = self.bus.stats.get(key, 0) - self._bus_at_reset.get(key, 0)
        for name, samples in (("controller", self._controller_s), ("bus_read", self._read_s),
                              ("latency", self.latencies)):
            if samples:
                ms = np.array(samples) * 1e3
                stats[f"{name}_p50_ms"] = float(np.percentile(ms, 50))
                stats[f"{name}_p99_ms"] = float(np.percentile(ms, 99))
        return stats

    # -- internals ---------------------------------------------------------------------------------
    def _read(self) -> np.ndarray:
        """Read every servo (caller holds the lock), check their health, update (q, v)."""
        reading = self._guarded(lambda: self._fill_stale(self.bus.read_state(allow_missing=self.stale_window > 0)))
        self._guarded(lambda: self.safety.check_health(reading))
        q = self.calibration.to_rad(reading.position)
        if self.velocity_source == "servo" or self.last_reading is None or self._q is None:
            v = self.calibration.velocity_to_rad(reading.velocity)
            if self.velocity_source == "difference":
                v = np.zeros_like(q)
        else:
            v = smoothed_difference(self._v, self._q, q, reading.time - self.last_reading.time,
                                    self.velocity_smoothing)
        self.last_reading, self._q, self._v = reading, q, v
        return np.concatenate([q, v])

    def _fill_stale(self, reading: BusReading) -> BusReading:
        """The reading with each servo that did not answer standing on its last valid state, as
        long as the servo has been missing reads for at most stale_window (counted from the first
        read it missed: a pause between reads, as before the first step, is not the servo's
        silence) or fewer reads than the window holds (stale_reads); ServoNotResponding naming the
        servos beyond both, or missing with no state yet."""
        answered = reading.answered()
        if self._missing_since is None or self._missing_since.shape != answered.shape:
            self._missing_since = np.full(answered.shape, np.inf)
            self._missed_reads = np.zeros(answered.shape, dtype=int)
        self._missing_since[answered] = np.inf
        self._missing_since[~answered] = np.minimum(self._missing_since[~answered], reading.time)
        self._missed_reads = np.where(answered, 0, self._missed_reads + 1)
        self.stale = not answered.all()
        if not self.stale:
            if self._stale_run:
                self._stale_runs[self._stale_run] = self._stale_runs.get(self._stale_run, 0) + 1
            self._stale_run = 0
            return reading
        missing_for = reading.time - self._missing_since
        lost = [i for i in np.flatnonzero(~answered) if self.last_reading is None
                or (missing_for[i] > self.stale_window and self._missed_reads[i] >= self.stale_reads)]
        if lost:
            servos = [self.bus.servos[i] for i in lost]
            since = "since the arm connected" if self.last_reading is None else \
                f"for {max(missing_for[i] for i in lost) * 1e3:.0f} ms"
            verb = "is" if len(lost) == 1 else "are"
            raise ServoNotResponding(
                f"{', '.join(s.label() for s in servos)} {verb} not answering on {self.bus.port_name}: "
                f"no valid status packet {since} (stale window {self.stale_window * 1e3:.0f} ms)",
                [s.name for s in servos],
            )
        last = self.last_reading
        keep = ~answered

        def merged(now: np.ndarray, before: np.ndarray) -> np.ndarray:
            return np.where(keep, before, now)

        self._stale_ticks += 1
        self._stale_run += 1
        self._longest_stale = max(self._longest_stale, self._stale_run)
        return BusReading(
            merged(reading.position, last.position), merged(reading.velocity, last.velocity),
            merged(reading.load, last.load), merged(reading.voltage, last.voltage),
            merged(reading.temperature, last.temperature),
            [b if k else a for a, b, k in zip(reading.faults, last.faults, keep)], reading.time, answered,
        )

    def _guarded(self, action):
        """Run a bus action; on a bus failure or a safety stop, torque off everywhere and re-raise."""
        try:
            return action()
        except (BusError, SafetyStop):
            self._emergency_stop()
            raise

    def _emergency_stop(self) -> None:
        try:
            self.bus.torque_off_all()
        except Exception:  # the port itself may be gone; nothing more can be sent then
            pass
        self._torque_on = False

    def _move_to(self, target: np.ndarray) -> None:
        """Walk the goal to target at the safety layer's pace, then let the arm settle."""
        limits = self.safety.limits
        reachable = np.clip(target, limits.lower, limits.upper)
        ticks = int(np.max(np.abs(reachable - self._q) / limits.max_step)) + int(self.settle_s / self.spec.dt) + 1
        clock = LoopClock(self.spec.dt)
        clock.start()
        for _ in range(ticks):
            with self._lock:
                goal = self.safety.filter(target, self._q, self._v)
                self._guarded(lambda: self.bus.write_goals(self.calibration.to_ticks(goal)))
            clock.wait()
            with self._lock:
                self._read()
            settled = np.max(np.abs(self._q - goal)) < self.start_tolerance and np.max(np.abs(self._v)) < 0.05
            if np.array_equal(goal, reachable) and settled:
                break
        self.start_error = self._q - target

    # -- watchdog ----------------------------------------------------------------------------------
    def _start_watchdog(self) -> None:
        self._watchdog_stop.clear()
        self._watchdog = threading.Thread(target=self._watch, name=f"{self.arm.name}-watchdog", daemon=True)
        self._watchdog.start()

    def _stop_watchdog(self) -> None:
        self._watchdog_stop.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=1.0)
        self._watchdog = None

    def _watch(self) -> None:
        dt = self.spec.dt
        while not self._watchdog_stop.wait(dt / 2):
            if self._in_step or self._holding or not self._torque_on or not self._loop_running:
                continue
            if time.monotonic() - self._last_return <= 2 * dt:
                continue
            with self._lock:
                if self._in_step or self._holding or time.monotonic() - self._last_return <= 2 * dt:
                    continue
                try:
                    self._read()
                    goal = self.safety.hold(self._q)
                    self._guarded(lambda: self.bus.write_goals(self.calibration.to_ticks(goal)))
                    self._holding = True
                except Exception as err:  # reported by the next step, after torque went off
                    self._watchdog_error = err
                    return

    def _raise_watchdog_error(self) -> None:
        if self._watchdog_error is not None:
            err, self._watchdog_error = self._watchdog_error, None
            raise err


def _close_quietly(ref: "weakref.ref[ServoArm]") -> None:
    arm = ref()
    if arm is not None:
        try:
            arm.close()
        except Exception:
            pass
