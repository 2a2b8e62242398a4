"""System identification of an arm's MuJoCo scene from logged trials.

What is identified: per servo the joint's damping, armature and frictionloss and the position
actuator's kp and kv (sim.servo_model), optionally a payload at the tool site, and the action
delay: the time from a goal's write to its effect (bus latency plus the servo's own sampling).

How: multiple shooting. The trials are cut into segments of `segment` seconds; each segment is
simulated from its logged state under its logged goals, and the residual is every predicted joint
position against the logged one (in degrees, averaged over all of them), plus a weak pull of each
parameter's log towards the nominal scene's (it keeps the few combinations the data cannot tell
apart, such as joint damping against the actuator's kv away from saturation, where they start).
Parameters other than the payload and the delay are log-scales of the nominal values, bounded to
[1/bound, bound]. MuJoCo's own tooling does the work: `mujoco.sysid` holds the parameters
(ParameterDict) and runs the Levenberg-Marquardt of `mujoco.minimize.least_squares`, whose
finite-difference Jacobian is one batched `mujoco.rollout` call per parameter over all segments;
its `calculate_intervals` gives the 95 % confidence interval of each parameter. Each candidate
scene is the nominal MjSpec with the parameters written in (sim.servo_model) and compiled, the
same path that writes the identified scene.

The delay is simulated as the plant has it: a goal logged at tick t acts from t dt + delay on,
the previous one before; within the physics step where it switches, the control is the blend of
the two by the fraction of the step after the switch, so that the residual is continuous in the
delay. The identified scene carries the delay as the custom numeric "forethought_action_delay" (s).

Held-out trials are judged open loop over windows (0.5, 1 and 2 s by default): from the logged
state at the start of each window, under the logged goals, the RMSE of each joint over the
window's steps, in degrees, for the nominal scene (no delay) and the identified one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import mujoco
import numpy as np
from mujoco import minimize
from mujoco import rollout as mj_rollout

from forethought.models.simulator import DELAY_NUMERIC, scene_delay
from forethought.sim.mujoco_robot import state_names as scene_state_names
from forethought.sim.servo_model import (
    FIELDS,
    ServoParameters,
    compile_spec,
    load_spec,
    servo_parameters,
    write_servo_parameters,
)

_FULL = mujoco.mjtState.mjSTATE_FULLPHYSICS
# Residuals are joint position errors in these units (rad -> deg), averaged over all of them.
_DEG = 180.0 / np.pi
# Finite-difference step on every optimisation variable (log-scales, kg, s): large enough to stand
# above the constraint solver's tolerance, small against the parameters' effects.
_FD_STEP = 1e-4
# The fit stops once _STALL iterations together lowered the objective by less than the config's
# tolerance (relative), or a step moved the variables by less than _XTOL of their norm.
_STALL, _XTOL = 3, 1e-4
# Typical size of the payload (kg) and delay (s) variables, for the optimiser's scaling.
_PAYLOAD_SCALE, _DELAY_SCALE = 0.1, 0.01


@dataclass
class IdentificationConfig:
    """What `forethought fit --model mujoco` identifies and how (its --model-config YAML).

    fields: servo parameters fitted per joint (damping, armature, frictionloss, kp, kv);
    joints: the joints whose parameters are fitted (default: every servo's); payload: fit a point
    mass (kg, up to max_payload) at `payload_site`; delay: fit the action delay (s, up to
    max_delay); segment: s, the length of the multiple-shooting segments; bound: each fitted
    parameter stays within [nominal / bound, nominal * bound]; prior: weight of the pull of the
    log-scales towards the nominal values; max_iterations: of Levenberg-Marquardt, which stops
    earlier once three iterations together improve the fit by less than `tolerance` (relative);
    windows: s, the
    open-loop windows of the report; threads: MuJoCo threads per rollout (null: all CPUs).
    """

    fields: list[str] = field(default_factory=lambda: list(FIELDS))
    joints: list[str] | None = None
    payload: bool = True
    payload_site: str = "ee"
    max_payload: float = 0.5
    delay: bool = True
    max_delay: float = 0.05
    segment: float = 1.0
    bound: float = 10.0
    prior: float = 1e-3
    max_iterations: int = 30
    tolerance: float = 0.01
    windows: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    threads: int | None = None

    def __post_init__(self) -> None:
        unknown = [f for f in self.fields if f not in FIELDS]
        if unknown:
            raise ValueError(f"fields: unknown servo parameter {unknown[0]!r} (known: {', '.join(FIELDS)})")
        if not self.segment > 0 or not all(w > 0 for w in self.windows):
            raise ValueError("segment and windows must be positive (s)")
        if not self.bound > 1:
            raise ValueError(f"bound must exceed 1, got {self.bound}")
        for name in ("max_payload", "max_delay"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.prior < 0 or self.max_iterations < 1 or not self.tolerance > 0:
            raise ValueError("prior must not be negative, max_iterations at least 1 and tolerance positive")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")


@dataclass(frozen=True)
class Segments:
    """Pieces of logged trials, each `steps` control periods long.

    x0: (S, n) the logged state at each start; goals: (S, steps + 1, m) rad, the goal logged just
    before the start (the first goal itself at a trial's start), then the segment's own;
    q: (S, steps, m) rad, the logged joint positions after each period; trial, start: (S,) where
    each segment lies.
    """

    x0: np.ndarray
    goals: np.ndarray
    q: np.ndarray
    trial: np.ndarray
    start: np.ndarray

    @property
    def steps(self) -> int:
        return self.q.shape[1]

    def __len__(self) -> int:
        return len(self.x0)


def cut_segments(trials: Sequence, steps: int, joint_index: np.ndarray) -> Segments:
    """Back-to-back segments of `steps` periods from each trial (a trial's remainder is dropped)."""
    x0, goals, q, which, starts = [], [], [], [], []
    for i, trial in enumerate(trials):
        actions = np.concatenate([trial.actions[:1], trial.actions])  # the goal before t = 0: the first
        for s in range(0, trial.horizon - steps + 1, steps):
            x0.append(trial.states[s])
            goals.append(actions[s : s + steps + 1])
            q.append(trial.states[s + 1 : s + steps + 1, joint_index])
            which.append(i)
            starts.append(s)
    if not x0:
        raise ValueError(f"no trial is {steps} steps long: the longest has {max(t.horizon for t in trials)}")
    return Segments(np.array(x0), np.array(goals), np.array(q), np.array(which), np.array(starts))


def delayed_controls(goals: np.ndarray, delay: float, dt: float, control_steps: int) -> np.ndarray:
    """Controls (S, L k, m) at each physics step of segments whose goals (S, L + 1, m) (the one before,
    then one per period of dt s, k physics steps each) act `delay` s after they are written.

    Goal j (1-based: goals[:, j]) acts from (j - 1) dt + delay on; the physics step where one gives
    way to the next gets the blend of the two by the fraction of the step after the switch."""
    S, L1, m = goals.shape
    k = control_steps
    h = dt / k
    i = np.arange((L1 - 1) * k)
    # The goal in force at the start of step i, and the fraction of the step after the next one starts.
    j = np.floor((i * h - delay) / dt + 1e-9).astype(int) + 1
    j = np.clip(j, 0, L1 - 1)
    nxt = np.minimum(j + 1, L1 - 1)
    switch = (j) * dt + delay  # when goal j + 1 (index nxt) starts acting
    f = np.clip(((i + 1) * h - switch) / h, 0.0, 1.0)[None, :, None]
    return (1.0 - f) * goals[:, j] + f * goals[:, nxt]


@dataclass
class Identification:
    """The result. nominal, identified: servo parameters; delay: s (nominal_delay: the scene's own);
    names, x, intervals: the optimisation variables (log-scales, kg, s), their values and 95 %
    half-widths; objective: the mean squared joint error (deg^2, with the prior) before and after;
    iterations; seconds; segments: how many, of how many steps."""

    nominal: ServoParameters
    identified: ServoParameters
    delay: float
    nominal_delay: float
    names: list[str]
    x: np.ndarray
    intervals: np.ndarray
    objective: tuple[float, float]
    iterations: int
    seconds: float
    segments: tuple[int, int]

    def as_dict(self) -> dict:
        variables = {}
        for name, x, half in zip(self.names, self.x, self.intervals):
            entry = {"value": float(x), "ci95_half_width": float(half)}
            if ":" in name:  # a log-scale: say it as a factor on the nominal value too
                entry["scale"] = float(np.exp(x))
            variables[name] = entry
        return {
            "nominal": self.nominal.as_dict(),
            "identified": self.identified.as_dict(),
            "delay_s": self.delay,
            "nominal_delay_s": self.nominal_delay,
            "variables": variables,
            "objective_deg2": {"nominal": self.objective[0], "identified": self.objective[1]},
            "iterations": self.iterations,
            "seconds": self.seconds,
            "segments": {"count": self.segments[0], "steps": self.segments[1]},
        }


class SceneIdentifier:
    """Identifies the servo parameters, payload and delay of `scene` from trials logged on the arm.

    state_names, action_names, dt: the trials' (they must be the scene's qpos, qvel and actuators,
    and dt a whole number of its physics steps).
    """

    def __init__(self, scene: str | Path, config: IdentificationConfig, state_names, action_names, dt: float):
        self.scene, self.config = str(scene), config
        self.spec = load_spec(scene)
        base = compile_spec(self.spec, self.scene)
        self.nominal = servo_parameters(base, self.scene)
        self.nominal_delay = scene_delay(base)
        if tuple(state_names) != scene_state_names(base):
            raise ValueError(f"{self.scene}: the trials' states {list(state_names)} are not the scene's "
                             f"{list(scene_state_names(base))}")
        if tuple(action_names) != self.nominal.actuators:
            raise ValueError(f"{self.scene}: the trials' actions {list(action_names)} are not the scene's servos "
                             f"{list(self.nominal.actuators)}")
        steps = dt / base.opt.timestep
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"{self.scene}: the trials' period {dt} s is not a whole number of the scene's "
                             f"{base.opt.timestep} s steps")
        self.dt, self.control_steps = float(dt), int(round(steps))
        joints = config.joints if config.joints is not None else list(self.nominal.joints)
        unknown = [j for j in joints if j not in self.nominal.joints]
        if unknown:
            raise ValueError(f"joints: the scene has no servo joint {unknown[0]!r} (its: {', '.join(self.nominal.joints)})")
        if config.payload and self.spec.site(config.payload_site) is None:
            raise ValueError(f"payload_site: the scene has no site {config.payload_site!r}")
        self.joint_index = np.array([base.jnt_qposadr[mujoco.mj_name2id(base, mujoco.mjtObj.mjOBJ_JOINT, j)]
                                     for j in self.nominal.joints], dtype=np.intp)
        # The optimisation variables: (field, joint index) log-scales, then payload (kg), then delay (s).
        self.scaled = [(f, self.nominal.joints.index(j)) for f in config.fields for j in joints]
        self.names = [f"{f}:{self.nominal.joints[i]}" for f, i in self.scaled]
        if config.payload:
            self.names.append("payload")
        if config.delay:
            self.names.append("delay")
        self._template = mujoco.MjData(base)
        home = mujoco.mj_name2id(base, mujoco.mjtObj.mjOBJ_KEY, "home")
        if home >= 0:
            mujoco.mj_resetDataKeyframe(base, self._template, home)
        self._state0 = np.empty(mujoco.mj_stateSize(base, _FULL))
        mujoco.mj_getState(base, self._template, self._state0, _FULL)
        self.nq, self.nv = base.nq, base.nv
        threads = config.threads or os.cpu_count() or 1
        self._runner = mj_rollout.Rollout(nthread=threads if threads > 1 else 0)
        self._datas = [mujoco.MjData(base) for _ in range(threads)]

    # -- variables <-> parameters ---------------------------------------------------------------
    def variables(self) -> "mujoco.sysid.ParameterDict":
        """mujoco.sysid's ParameterDict of the variables, at their starting values with bounds."""
        from mujoco import sysid

        bound = float(np.log(self.config.bound))
        params = sysid.ParameterDict()
        for name in self.names[: len(self.scaled)]:
            params.add(sysid.Parameter(name, 0.0, -bound, bound))
        if self.config.payload:
            start = min(max(self.nominal.payload, 0.02 * self.config.max_payload), self.config.max_payload)
            params.add(sysid.Parameter("payload", start, 0.0, self.config.max_payload))
        if self.config.delay:
            start = min(max(self.nominal_delay, 0.5 * self.dt / self.control_steps), self.config.max_delay)
            params.add(sysid.Parameter("delay", start, 0.0, self.config.max_delay))
        return params

    def parameters(self, x: np.ndarray) -> tuple[ServoParameters, float]:
        """The servo parameters and delay (s) of variables x."""
        values = {name: getattr(self.nominal, name).copy() for name in FIELDS}
        for (f, i), v in zip(self.scaled, x):
            values[f][i] = getattr(self.nominal, f)[i] * np.exp(v)
        k = len(self.scaled)
        payload = float(x[k]) if self.config.payload else self.nominal.payload
        delay = float(x[-1]) if self.config.delay else self.nominal_delay
        params = ServoParameters(self.nominal.actuators, self.nominal.joints, payload=max(payload, 0.0),
                                 payload_site=self.config.payload_site if self.config.payload else self.nominal.payload_site,
                                 **values)
        return params, max(delay, 0.0)

    def model(self, params: ServoParameters) -> mujoco.MjModel:
        """The scene with `params` written in, compiled."""
        write_servo_parameters(self.spec, params, self.scene)
        return compile_spec(self.spec, self.scene)

    # -- simulation -------------------------------------------------------------------------------
    def simulate(self, variants: Sequence[tuple[ServoParameters, float]], segments: Segments) -> np.ndarray:
        """Joint positions (V, S, L, m) rad predicted for every segment by each (parameters, delay) variant."""
        S, L = len(segments), segments.steps
        k = self.control_steps
        init = np.tile(self._state0, (S, 1))
        init[:, 1 : 1 + self.nq] = segments.x0[:, : self.nq]
        init[:, 1 + self.nq : 1 + self.nq + self.nv] = segments.x0[:, self.nq :]
        out = np.empty((len(variants), S, L, len(self.joint_index)))
        for v, (params, delay) in enumerate(variants):
            model = self.model(params)
            control = delayed_controls(segments.goals, delay, self.dt, k)
            states, _ = self._runner.rollout([model] * S, self._datas, init, control)
            qpos = states[:, k - 1 :: k, 1 : 1 + self.nq]
            out[v] = qpos[:, :, self.joint_index]
        return out

    def residual(self, x: np.ndarray, segments: Segments) -> np.ndarray:
        """Residuals (R,) for variables x (p,), or (R, B) for a batch x (p, B): the joint errors in
        degrees over sqrt(their count), then sqrt(prior / p) times the log-scales."""
        batch = x.ndim == 2
        X = x if batch else x[:, None]
        variants = [self.parameters(X[:, b]) for b in range(X.shape[1])]
        q = self.simulate(variants, segments)
        errors = (q - segments.q[None]) * _DEG
        n = errors[0].size
        data = errors.reshape(len(variants), -1) / np.sqrt(n)
        k = len(self.scaled)
        prior = np.sqrt(self.config.prior / max(k, 1)) * X[:k].T
        r = np.concatenate([data, prior], axis=1).T
        return r if batch else r[:, 0]

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, trials: Sequence, progress: Callable[[str], None] | None = None) -> Identification:
        """Identify from `trials`; `progress(line)` hears about each iteration."""
        from mujoco import sysid

        started = time.perf_counter()
        steps = max(1, int(round(self.config.segment / self.dt)))
        segments = cut_segments(trials, steps, self.joint_index)
        params = self.variables()
        x0 = params.as_vector()
        scale = np.array([1.0] * len(self.scaled) + [_PAYLOAD_SCALE] * self.config.payload
                         + [_DELAY_SCALE] * self.config.delay)

        def residual_fn(x, _params):
            return [self.residual(x, segments)], None, None

        iterations = 0

        def heard(trace) -> None:
            nonlocal iterations
            iterations = len(trace)
            if progress is not None:
                progress(f"iteration {iterations}: mean squared joint error {2 * trace[-1].objective:.4g} deg^2")
            if len(trace) > _STALL and trace[-1 - _STALL].objective - trace[-1].objective < (
                    self.config.tolerance * trace[-1].objective):
                raise _Converged(trace[-1].candidate[:, 0].copy())

        initial = float(np.sum(self.residual(x0, segments) ** 2))
        try:
            fitted, result = sysid.optimize(
                params, residual_fn, optimizer="mujoco", verbose=False, max_iters=self.config.max_iterations,
                eps=_FD_STEP, xtol=_XTOL, x_scale=scale, iter_callback=heard, output=_Silent(),
            )
            x, jacobian = fitted.as_vector(), result.jac
            final_r = self.residual(x, segments)
        except _Converged as stop:  # stalled: the Jacobian at the last iterate, for the intervals
            x = stop.x
            final_r = self.residual(x, segments)
            bounds = [b.reshape(-1, 1) for b in params.get_bounds()]
            jacobian, _ = minimize.jacobian_fd(lambda v: self.residual(v, segments), x[:, None], final_r[:, None],
                                               _FD_STEP, 0, bounds)
        _, intervals = sysid.calculate_intervals([final_r], jacobian)
        identified, delay = self.parameters(x)
        return Identification(
            self.nominal, identified, delay, self.nominal_delay, list(self.names), x, np.asarray(intervals),
            (initial, float(np.sum(final_r**2))), min(iterations, self.config.max_iterations),
            time.perf_counter() - started, (len(segments), steps),
        )

    # -- judging ------------------------------------------------------------------------------------
    def open_loop(self, params: ServoParameters, delay: float, trials: Sequence, window: float) -> tuple[np.ndarray, Segments]:
        """Predicted joint positions (S, L, m) rad over back-to-back windows of `window` s of `trials`."""
        segments = cut_segments(trials, max(1, int(round(window / self.dt))), self.joint_index)
        return self.simulate([(params, delay)], segments)[0], segments

    def window_rmse(self, params: ServoParameters, delay: float, trials: Sequence) -> dict[str, dict[str, float]]:
        """Per window length ("1s") per joint, the open-loop RMSE (deg) over the windows' steps."""
        out = {}
        for window in self.config.windows:
            predicted, segments = self.open_loop(params, delay, trials, window)
            rmse = np.sqrt(np.mean((predicted - segments.q) ** 2, axis=(0, 1))) * _DEG
            out[f"{window:g}s"] = dict(zip(self.nominal.joints, map(float, rmse)))
        return out

    def write_scene(self, identification: Identification, path: str | Path, note: str = "") -> Path:
        """The nominal scene with the identified parameters and delay, as one MJCF file at `path`."""
        write_servo_parameters(self.spec, identification.identified, self.scene)
        numeric = self.spec.numeric(DELAY_NUMERIC)
        if numeric is None:
            numeric = self.spec.add_numeric()
            numeric.name = DELAY_NUMERIC
        numeric.data = [identification.delay]
        self.spec.comment = (
            f" Identified by `forethought fit --model mujoco` from the scene {self.scene}. {note} "
            f"The servo parameters (joint damping, armature, frictionloss; actuator kp, kv), the payload body "
            f"and the action delay (custom numeric {DELAY_NUMERIC}, s) are identified; the rest is the "
            "nominal scene's. "
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        xml = self.spec.to_xml()
        mujoco.MjModel.from_xml_string(xml)  # what is written must load
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(xml)
        tmp.replace(path)
        return path


class _Converged(Exception):
    """Levenberg-Marquardt has stalled; x: the last iterate (p,)."""

    def __init__(self, x: np.ndarray):
        super().__init__("converged")
        self.x = x


class _Silent:
    """A text sink for mujoco.minimize's own per-iteration printout (progress goes through iter_callback)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

