"""MuJoCo as a known dynamics model: exact prediction and finite-difference linearisation.

The state is qpos then qvel, as MujocoRobot's; the action is the actuator controls held for one
control period of `control_steps` physics steps.

Linearisation composes one `mujoco.mjd_transitionFD` per physics step along the period
(A = A_k ... A_1, B = sum_s A_k ... A_{s+1} B_s). That is cheaper than finite differences over the
whole period: mjd_transitionFD skips the position stage for velocity and control perturbations,
so one step's Jacobians cost about 12 steps rather than the 1 + 2 nv + nu a plain difference
needs; and each difference stays within one step's nonlinearity. For the RK4 integrator, which
mjd_transitionFD does not support, the differences are taken over the whole period instead, every
perturbation of every row in one batched rollout. Centred differences double the cost and are
optional. Free and ball joints are handled by mapping MuJoCo's tangent-space
Jacobians to and from the quaternion coordinates of qpos (models/tangent_space.py).

A planning model may step more coarsely than the robot (`timestep`), as MPC on MuJoCo usually
does: fewer physics steps per control period make prediction and linearisation proportionally
cheaper.

A scene may declare an action delay (the custom numeric "forethought_action_delay", s, which
identification writes): a goal acts that long after the state it answers was measured.
`action_delay` holds it and `advance(x, u, seconds)` predicts the state over it under the goal
still in force; `controllers.delay.DelayCompensated` plans from that predicted state.

A rollout that MuJoCo finds unstable (it resets the simulation when accelerations blow up)
predicts NaN for that row, never a plausible state.

`rollout` rolls a batch of whole action sequences through one `mujoco.rollout` call: the
BatchedDynamics of the sampling planners (predictive sampling).

An experiment's `model: {type: mujoco}` builds one through models/simulator_config.py.
"""

from __future__ import annotations

import copy
import json
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout

from forethought.models.capabilities import LINEARIZE, PREDICT, ROLLOUT
from forethought.models.dynamics_model import as_batch
from forethought.models.mujoco_steps import CLOCK_START as _CLOCK_START
from forethought.models.mujoco_steps import UNSTABLE as _UNSTABLE
from forethought.models.mujoco_steps import PeriodStepper, ThreadPools, jacobians_per_step
from forethought.models.tangent_space import jacobians_over_period, quaternion_joints, to_qpos_coordinates
from forethought.robots.config import ConfigError
from forethought.sim.fixtures import SceneFixtures
from forethought.sim.scenes import scene_path

if TYPE_CHECKING:  # torch is imported when rollout is called: iLQR on this model never needs it
    import torch

_FULL = mujoco.mjtState.mjSTATE_FULLPHYSICS
# What batched rollouts take at every physics step: the controls, then the mocap bodies' poses
# (rollout resets each row's data, so a moved mocap body has to ride along with the controls).
_CONTROL_AND_MOCAP = int(
    mujoco.mjtState.mjSTATE_CTRL | mujoco.mjtState.mjSTATE_MOCAP_POS | mujoco.mjtState.mjSTATE_MOCAP_QUAT
)
# Rollouts start their clock at _CLOCK_START rather than at 0: MuJoCo's reset of an unstable
# simulation sets the time to 0, so the clock of a reset row is off even when the reset came in the
# first step.
# Batches at least this large step through mujoco.rollout (one C call); smaller ones through
# mj_step, whose per-call overhead is lower than rollout's setup.
_ROLLOUT_MIN_BATCH = 8


DELAY_NUMERIC = "forethought_action_delay"


def scene_delay(model: mujoco.MjModel) -> float:
    """The action delay (s) a scene declares (custom numeric "forethought_action_delay"), else 0."""
    i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, DELAY_NUMERIC)
    return float(model.numeric_data[model.numeric_adr[i]]) if i >= 0 else 0.0


def _declared_control_steps(model: mujoco.MjModel) -> int:
    i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, "forethought_control_steps")
    return int(model.numeric_data[model.numeric_adr[i]]) if i >= 0 else 1


class SimulatorModel:
    """A MuJoCo scene as a DynamicsModel: predict, linearize; nothing to fit.

    scene: a scene name, an MJCF path or an MjModel; control_steps: physics steps per action
    (default: the scene's "forethought_control_steps", else 1); timestep: physics step of the
    model in s (default: the scene's); centred: centred differences in linearize;
    epsilon: finite-difference step; frictionloss: False removes the joints' dry friction from the
    model (a planning model for iLQR: dry friction is a constraint that holds a joint at rest
    against small forces, so finite differences there say the actions do nothing).
    The control period is timestep * control_steps.
    threads: MuJoCo threads that share each batched rollout (one C call, its rows split between them).
    action_delay: s from a state's measurement to the moment the goal that answers it acts (None:
    the scene's "forethought_action_delay", else 0); see `advance`.
    Every thread gets its own MjData, so predict and linearize may be called concurrently.
    """

    capabilities = frozenset({PREDICT, LINEARIZE, ROLLOUT})
    learned = False
    fit_on = "all_trials"

    def __init__(
        self,
        scene,
        control_steps: int | None = None,
        timestep: float | None = None,
        centred: bool = False,
        epsilon: float = 1e-6,
        frictionloss: bool = True,
        threads: int = 1,
        action_delay: float | None = None,
    ):
        if isinstance(scene, mujoco.MjModel):
            self.scene, self.model = None, scene
        else:
            self.scene = scene_path(scene)
            try:
                self.model = mujoco.MjModel.from_xml_path(str(self.scene))
            except ValueError as err:
                raise ValueError(f"{self.scene}: MuJoCo could not load the scene: {err}") from None
        model = self.model
        if model.na > 0:
            raise ValueError("SimulatorModel: actuators with internal state (activations) are not part of the state qpos, qvel")
        if timestep is not None:
            if not timestep > 0:
                raise ValueError(f"SimulatorModel: timestep must be positive, got {timestep}")
            model.opt.timestep = float(timestep)
        if not frictionloss:
            model.dof_frictionloss[:] = 0.0
        self.frictionloss = bool(frictionloss)
        self.action_delay = scene_delay(model) if action_delay is None else float(action_delay)
        if not 0.0 <= self.action_delay < 10.0:
            raise ValueError(f"SimulatorModel: action_delay must be in [0, 10) s, got {self.action_delay}")
        self.control_steps = int(_declared_control_steps(model) if control_steps is None else control_steps)
        if self.control_steps < 1:
            raise ValueError(f"SimulatorModel: control_steps must be at least 1, got {self.control_steps}")
        self.centred, self.epsilon = bool(centred), float(epsilon)
        if threads < 1:
            raise ValueError(f"SimulatorModel: threads must be at least 1, got {threads}")
        self.threads = int(threads)
        self._pools = ThreadPools(self.threads)
        self.dt = model.opt.timestep * self.control_steps
        self.nq, self.nv, self.m = model.nq, model.nv, model.nu
        self.n = model.nq + model.nv
        self._local = threading.local()
        home = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, "home")
        template = mujoco.MjData(model)
        if home >= 0:
            mujoco.mj_resetDataKeyframe(model, template, home)
        self._full_state = np.empty(mujoco.mj_stateSize(model, _FULL))
        mujoco.mj_getState(model, template, self._full_state, _FULL)
        self._full_state[0] = _CLOCK_START
        self._template = template
        self.fixtures = SceneFixtures(model)
        self._quat_joints = quaternion_joints(model)

    # -- per-thread data ------------------------------------------------------------------------
    @property
    def data(self) -> mujoco.MjData:
        """This thread's MjData (mocap bodies and the rest as the scene's home keyframe)."""
        data = getattr(self._local, "data", None)
        if data is None:
            data = self._local.data = mujoco.MjData(self.model)
            mujoco.mj_copyData(data, self.model, self._template)
        return data

    def _rollout_pool(self) -> tuple[mj_rollout.Rollout, list[mujoco.MjData]]:
        """This thread's mujoco.rollout runner over `threads` threads, and an MjData for each of them."""
        pool = getattr(self._local, "pool", None)
        if pool is None:
            datas = [self.data] + [mujoco.MjData(self.model) for _ in range(self.threads - 1)]
            # nthread 0 runs on the calling thread: no pool for a single thread.
            runner = mj_rollout.Rollout(nthread=self.threads if self.threads > 1 else 0)
            pool = self._local.pool = (runner, datas)
        return pool

    def apply_condition(self, index: int, condition: dict) -> None:
        """Plan in the task's condition: its fixtures (sim.fixtures: the target, the hole) from the
        scene's defaults, as the robot has them."""
        self.fixtures.apply(self.model, self._template.mocap_pos, condition, "planning model")
        mujoco.mj_forward(self.model, self._template)
        self._local = threading.local()

    def set_mocap_pos(self, body: str, pos) -> None:
        """Move mocap body `body` to pos (3,) m in the model (for scenes where a mocap body collides)."""
        body_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, body)
        mocap_id = self.model.body_mocapid[body_id] if body_id >= 0 else -1
        if mocap_id < 0:
            raise ValueError(f"SimulatorModel: no mocap body named '{body}'")
        self._template.mocap_pos[mocap_id] = np.asarray(pos, dtype=np.float64).reshape(3)
        self._local = threading.local()

    # -- DynamicsModel ----------------------------------------------------------------------------
    def fit(self, trials) -> dict:
        """Nothing to learn: the scene is the model."""
        return {}

    def _set(self, data: mujoco.MjData, x: np.ndarray, u: np.ndarray) -> None:
        data.time = 0.0
        data.qpos[:] = x[: self.nq]
        data.qvel[:] = x[self.nq :]
        data.ctrl[:] = u
        data.qacc_warmstart[:] = 0.0
        data.warning.number[:] = 0

    def predict(self, x, u) -> tuple[np.ndarray, np.ndarray]:
        """Next states (B, n) after one control period, and zero variance (B, n); NaN rows where unstable.

        A single x (n,), u (m,) gives (n,) outputs.
        """
        x = np.asarray(x, dtype=np.float64)
        u = np.asarray(u, dtype=np.float64)
        if x.shape[-1:] == (self.n,) and u.shape[-1:] == (self.m,) and x.size == self.n and u.size == self.m:
            mean = self._step(self.data, x.reshape(-1), u.reshape(-1)).reshape(x.shape)  # the common case in iLQR
            return mean, np.zeros_like(mean)
        x, u, _ = as_batch(x, u, self.n, self.m, "SimulatorModel")
        if len(x) >= _ROLLOUT_MIN_BATCH:
            mean = self._predict_rollout(x, u)
        else:
            data = self.data
            mean = np.array([self._step(data, x[b], u[b]) for b in range(len(x))])
        return mean, np.zeros_like(mean)

    def closed_loop(self, x0, U, X_ref=None, K=None, low=None, high=None) -> tuple[np.ndarray, np.ndarray]:
        """States (T+1, n) from x0 (n,) under u_t = clip(U_t + K_t (x_t - X_ref_t), low, high) (U (T, m)
        alone when K is None), and the actions (T, m): predict's periods one after another, with less
        Python per period (iLQR's rollouts and line search). NaN from the first unstable period on."""
        stepper = getattr(self._local, "stepper", None)
        if stepper is None:
            stepper = self._local.stepper = PeriodStepper(self.model, self.data, self.control_steps)
        return stepper.closed_loop(np.asarray(x0, dtype=np.float64), U, X_ref, K, low, high)

    def _step(self, data: mujoco.MjData, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """x' (n,) after one control period from x under u (NaN where MuJoCo found it unstable)."""
        self._set(data, x, u)
        for _ in range(self.control_steps):
            mujoco.mj_step(self.model, data)
        if not self._finished(data):
            return np.full(self.n, np.nan)
        return np.concatenate([data.qpos, data.qvel])

    def _finished(self, data: mujoco.MjData) -> bool:
        """Whether the period ran through: MuJoCo resets an unstable simulation and counts a warning."""
        return not data.warning.number[_UNSTABLE].any()

    def advance(self, x, u, seconds: float) -> np.ndarray:
        """The state (n,) `seconds` after x (n,) under controls u (m,): whole physics steps of the
        model, the last one shortened to end on time (a control period's worth at most)."""
        x, u = np.asarray(x, dtype=np.float64).reshape(self.n), np.asarray(u, dtype=np.float64).reshape(self.m)
        if not 0.0 <= seconds <= self.dt + 1e-12:
            raise ValueError(f"SimulatorModel.advance: seconds must be within one control period, got {seconds}")
        if seconds == 0.0:
            return x.copy()
        data, h = self.data, self.model.opt.timestep
        self._set(data, x, u)
        full = int(np.floor(seconds / h + 1e-9))
        for _ in range(full):
            mujoco.mj_step(self.model, data)
        rest = seconds - full * h
        if rest > 1e-9 * h:
            mujoco.mj_step(self._shortened(rest), data)
        if not self._finished(data):
            return np.full(self.n, np.nan)
        return np.concatenate([data.qpos, data.qvel])

    def _shortened(self, timestep: float) -> mujoco.MjModel:
        """This thread's copy of the model with physics step `timestep` (s): other threads may be
        stepping the model itself meanwhile. Dropped with the thread's data when a condition changes it."""
        cached = getattr(self._local, "shortened", None)
        if cached is None or cached[0] != timestep:
            model = copy.deepcopy(self.model)
            model.opt.timestep = timestep
            cached = self._local.shortened = (timestep, model)
        return cached[1]

    def _predict_rollout(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Next states (B, n) from x (B, n) under u (B, m), float64; NaN rows where unstable."""
        return self._rollout_states(x, u[:, None, :])[:, 0]

    def _rollout_states(self, x: np.ndarray, U: np.ndarray) -> np.ndarray:
        """States (B, H, n) after each of the H control periods from x (B, n) under U (B, H, m), float64.

        One mujoco.rollout call over H * control_steps physics steps. A row is NaN from the first
        period in which MuJoCo found it unstable onwards.
        """
        B, H, _ = U.shape
        k = self.control_steps
        init = np.tile(self._full_state, (B, 1))
        init[:, 1 : 1 + self.n] = x
        control = np.repeat(U, k, axis=1)
        mocap = np.concatenate([self._template.mocap_pos.ravel(), self._template.mocap_quat.ravel()])
        control = np.concatenate([control, np.broadcast_to(mocap, (B, H * k, mocap.size))], axis=2)
        runner, datas = self._rollout_pool()
        states, _ = runner.rollout(self.model, datas, init, control, control_spec=_CONTROL_AND_MOCAP)
        ends = states[:, k - 1 :: k]
        out = ends[:, :, 1 : 1 + self.n].copy()
        clock = _CLOCK_START + self.dt * np.arange(1, H + 1)
        # rollout stops a row at MuJoCo's first warning (repeating its last state), so its clock is
        # off from that period on. Instability ends a row for mj_step as well, but other warnings
        # (a full contact buffer, say) do not: such rows are stepped again period by period, as
        # predict steps them, and are NaN from their first unstable period on.
        off = np.abs(ends[:, :, 0] - clock) > 1e-9 * clock[-1]
        raised: set[str] = set()
        for b in np.flatnonzero(off.any(axis=1)):
            out[b], row_raised = self._step_periods(x[b], U[b])
            raised |= row_raised
        if raised:
            warnings.warn(
                f"MuJoCo raised {', '.join(sorted(raised))} in planning rollouts; those rows were stepped one "
                "by one (slower): a full contact or constraint buffer wants a larger <size memory> in the scene",
                RuntimeWarning,
                stacklevel=3,
            )
        return out

    def _step_periods(self, x: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, set[str]]:
        """States (H, n) from x (n,) under U (H, m), one period at a time as predict steps them (NaN
        from the first unstable period on), and the names of MuJoCo's other warnings on the way."""
        data = self.data
        out = np.full((len(U), self.n), np.nan)
        raised: set[str] = set()
        for t, u in enumerate(U):
            x = self._step(data, x, u)
            warned = np.flatnonzero(data.warning.number)
            raised.update(mujoco.mjtWarning(i).name for i in warned if not _UNSTABLE.start <= i < _UNSTABLE.stop)
            if np.isnan(x).any():
                break
            out[t] = x
        return out, raised

    # -- BatchedDynamics (sampling planners) ----------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where rollout's tensors live: the CPU."""
        import torch

        return torch.device("cpu")

    def rollout(self, x0: torch.Tensor, U: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """States (B, H+1, n) float32 on the CPU from x0 (B, n) under U (B, H, m): x0, then the state
        after each control period; a row is NaN from the period in which MuJoCo found it unstable on.

        generator: unused (MuJoCo is deterministic); BatchedDynamics passes one.
        """
        import torch

        x = x0.detach().cpu().double().numpy()
        X = np.empty((len(x), U.shape[1] + 1, self.n), dtype=np.float32)
        X[:, 0] = x
        X[:, 1:] = self._rollout_states(x, U.detach().cpu().double().numpy())
        return torch.from_numpy(X)

    def linearize(self, x, u) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x' ~ A x + B u + c about each row: A (B, n, n), B (B, n, m), c (B, n), Sigma (B, n, n) zero."""
        x, u, single = as_batch(x, u, self.n, self.m, "SimulatorModel")
        if self.model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4:
            A_tan, B_tan, x_next = jacobians_over_period(self.model, lambda x, u: self.predict(x, u)[0], x, u,
                                                         self.epsilon, self.centred)
        else:
            A_tan, B_tan, x_next = self._tangent_jacobians_per_step(x, u)
        if self._quat_joints:
            A, B = to_qpos_coordinates(A_tan, B_tan, x, x_next, self.nq, self.nv, self._quat_joints)
        else:
            A, B = A_tan, B_tan
        c = x_next - np.einsum("tij,tj->ti", A, x) - np.einsum("tij,tj->ti", B, u)
        Sigma = np.zeros((len(x), self.n, self.n))
        if single:
            return A[0], B[0], c[0], Sigma[0]
        return A, B, c, Sigma

    def _tangent_jacobians_per_step(self, x, u):
        """Tangent-space A (T, 2nv, 2nv), B (T, 2nv, m) composed from mjd_transitionFD per physics step,
        the rows over `threads` threads; x' (T, n)."""
        return jacobians_per_step(self.model, lambda: self.data, self._pools.get(), self.threads, x, u,
                                  self.control_steps, self.epsilon, self.centred)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the scene path and settings as JSON (the scene file itself is the model)."""
        if self.scene is None:
            raise ValueError("SimulatorModel: built from an MjModel, it has no scene file to save")
        settings = {
            "model": "simulator",
            "scene": str(self.scene),
            "control_steps": self.control_steps,
            "timestep": float(self.model.opt.timestep),
            "centred": self.centred,
            "epsilon": self.epsilon,
            "frictionloss": self.frictionloss,
            "action_delay": self.action_delay,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2))

    @classmethod
    def load(cls, path) -> "SimulatorModel":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"simulator model file not found: {path}")
        try:
            settings = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not a simulator model file ({err})") from None
        if not isinstance(settings, dict) or settings.get("model") != "simulator":
            raise ConfigError(f"{path}: not a simulator model file")
        missing = [k for k in ("scene", "control_steps", "timestep", "centred", "epsilon", "frictionloss") if k not in settings]
        if missing:
            raise ConfigError(f"{path}: not a complete simulator model file (no {missing[0]!r})")
        return cls(
            settings["scene"],
            control_steps=settings["control_steps"],
            timestep=settings["timestep"],
            centred=settings["centred"],
            epsilon=settings["epsilon"],
            frictionloss=settings["frictionloss"],
            action_delay=settings.get("action_delay"),
        )
