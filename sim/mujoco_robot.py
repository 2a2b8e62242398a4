"""Any MJCF scene as a Robot: state = qpos then qvel, action = actuator controls."""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

from forethought.robots.config import ConfigError
from forethought.robots.robot import RobotSpec, check_action
from forethought.sim.fixtures import SceneFixtures
from forethought.sim.scenes import scene_path


class SimulationError(RuntimeError):
    """The physics went unstable: MuJoCo reported a bad position, velocity or acceleration (and reset
    the state, which must not be logged as where the robot went), or the state is not finite."""


# MuJoCo's warnings for a state it found bad; on each it resets mjData (time and warning counts
# included, then counts the one warning), so the state after the step is a teleport, not physics.
BAD_STATE_WARNINGS = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQACC)


def _custom_numeric(model: mujoco.MjModel, name: str) -> np.ndarray | None:
    for i in range(model.nnumeric):
        if mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_NUMERIC, i) == name:
            start, size = model.numeric_adr[i], model.numeric_size[i]
            return np.array(model.numeric_data[start : start + size])
    return None


def state_names(model: mujoco.MjModel) -> tuple[str, ...]:
    """Names of qpos then qvel entries: hinge/slide "joint" and "d_joint"; free "block:x".."block:qz"."""
    pos, vel = [], []
    for j in range(model.njnt):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) or f"joint{j}"
        kind = model.jnt_type[j]
        if kind == mujoco.mjtJoint.mjJNT_FREE:
            pos += [f"{name}:{c}" for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]
            vel += [f"d_{name}:{c}" for c in ("x", "y", "z", "wx", "wy", "wz")]
        elif kind == mujoco.mjtJoint.mjJNT_BALL:
            pos += [f"{name}:{c}" for c in ("qw", "qx", "qy", "qz")]
            vel += [f"d_{name}:{c}" for c in ("wx", "wy", "wz")]
        else:
            pos.append(name)
            vel.append(f"d_{name}")
    return tuple(pos + vel)


def _per_entry(value, size: int, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.full(size, arr[0])
    if arr.size != size:
        raise ConfigError(f"{what} must be a scalar or have {size} entries, got {arr.size}")
    return arr


class MujocoRobot:
    """A MuJoCo scene driven through its actuators.

    scene: a scene name from sim/scenes/ or an MJCF path.
    control_steps: physics steps per control period; default from the scene's custom numeric
        "forethought_control_steps", else 1.
    init_qpos_std, init_qvel_std: std of the Gaussian noise added at reset to the "home" keyframe
        (scalar: hinge and slide joints only; or one value per qpos / qvel entry); default from the
        scene's custom numerics "forethought_init_qpos_std" / "forethought_init_qvel_std", else 0.
    model: the scene already compiled (with changes, as a reality gap makes them), in place of loading it.
    """

    def __init__(
        self,
        scene: str | Path,
        control_steps: int | None = None,
        init_qpos_std=None,
        init_qvel_std=None,
        model: mujoco.MjModel | None = None,
    ):
        self.scene = scene_path(scene)
        try:
            self.model = model if model is not None else mujoco.MjModel.from_xml_path(str(self.scene))
        except ValueError as err:
            raise ConfigError(f"{self.scene}: MuJoCo could not load the scene: {err}") from None
        self.data = mujoco.MjData(self.model)
        model = self.model
        if control_steps is None:
            declared = _custom_numeric(model, "forethought_control_steps")
            control_steps = int(declared[0]) if declared is not None else 1
        if control_steps < 1:
            raise ConfigError(f"{self.scene}: control_steps must be at least 1, got {control_steps}")
        self.control_steps = int(control_steps)

        self._home = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, "home")
        qpos_std = init_qpos_std if init_qpos_std is not None else _custom_numeric(model, "forethought_init_qpos_std")
        qvel_std = init_qvel_std if init_qvel_std is not None else _custom_numeric(model, "forethought_init_qvel_std")
        self._qpos_std = self._qpos_noise_scale(0.0 if qpos_std is None else qpos_std)
        self._qvel_std = _per_entry(0.0 if qvel_std is None else qvel_std, model.nv, "init_qvel_std")
        self._qpos0: np.ndarray | None = None
        self._qvel0: np.ndarray | None = None
        self.fixtures = SceneFixtures(model)
        self._mocap = self.fixtures.mocap_pos.copy()  # (nmocap, 3): where reset puts the mocap bodies

        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i) or f"actuator{i}" for i in range(model.nu)]
        limited = model.actuator_ctrllimited.astype(bool)
        low = np.where(limited, model.actuator_ctrlrange[:, 0], -np.inf)
        high = np.where(limited, model.actuator_ctrlrange[:, 1], np.inf)
        self.spec = RobotSpec(
            name=self.scene.stem,
            state_names=state_names(model),
            action_names=tuple(names),
            action_low=low,
            action_high=high,
            dt=float(model.opt.timestep * self.control_steps),
            metadata={"scene": str(self.scene), "control_steps": self.control_steps},
        )
        self.interventions: dict[str, int] = {"clipped": 0}
        self.applied_action: np.ndarray | None = None
        self._reset_time = 0.0
        self._bad_counts = (0, 0, 0)

    def _qpos_noise_scale(self, std) -> np.ndarray:
        model = self.model
        arr = np.asarray(std, dtype=np.float64).reshape(-1)
        if arr.size != 1:
            return _per_entry(arr, model.nq, "init_qpos_std")
        scale = np.zeros(model.nq)
        for j in range(model.njnt):
            if model.jnt_type[j] in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)):
                scale[model.jnt_qposadr[j]] = arr[0]
        return scale

    # -- Robot -------------------------------------------------------------------------------
    def set_initial_state(self, qpos=None, qvel=None) -> None:
        """Replace the mean initial qpos (nq,) and/or qvel (nv,) that reset() perturbs (None: the scene's)."""
        self._qpos0 = None if qpos is None else _per_entry(qpos, self.model.nq, "initial qpos")
        self._qvel0 = None if qvel is None else _per_entry(qvel, self.model.nv, "initial qvel")

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Home keyframe (or the model defaults) plus seeded noise; returns x0: (nq + nv,)."""
        model, data = self.model, self.data
        if self._home >= 0:
            mujoco.mj_resetDataKeyframe(model, data, self._home)
        else:
            mujoco.mj_resetData(model, data)
        if self._qpos0 is not None:
            data.qpos[:] = self._qpos0
        if self._qvel0 is not None:
            data.qvel[:] = self._qvel0
        rng = np.random.default_rng(seed)
        data.qpos[:] += self._qpos_std * rng.standard_normal(model.nq)
        data.qvel[:] += self._qvel_std * rng.standard_normal(model.nv)
        mujoco.mj_normalizeQuat(model, data.qpos)
        data.mocap_pos[:] = self._mocap
        mujoco.mj_forward(model, data)
        self.interventions = {"clipped": 0}
        self.applied_action = None
        self._bad_counts = self._bad_state_counts()
        self._reset_time = data.time
        return self.get_state()

    def step(self, u) -> np.ndarray:
        """Apply u: (nu,) actuator controls for one control period; returns x_next."""
        u, clipped = check_action(self.spec, u)
        self.interventions["clipped"] += int(clipped)
        self.applied_action = u
        self.data.ctrl[:] = u
        before = self.data.time
        for _ in range(self.control_steps):
            mujoco.mj_step(self.model, self.data)
        self._check_physics(before, self.control_steps)
        return self._checked_state()

    def _check_physics(self, before: float, steps: int) -> None:
        """SimulationError when MuJoCo found the state bad during the `steps` mj_steps since time
        `before` and replaced it. A reset zeroes the time and the warning counts before counting its
        warning: a count that changed, or time that did not advance by `steps` timesteps, is a
        state MuJoCo replaced. (Checked once per control period: per physics step it costs a
        third of the step rate.)"""
        expected = before + (steps - 0.5) * self.model.opt.timestep
        if self._bad_state_counts() != self._bad_counts or not self.data.time > expected:
            raise SimulationError(f"{self.spec.name}: the simulation went unstable after t={before:.3f} s "
                                  f"({self._bad_state_reason()}); MuJoCo reset the state, which is not logged")

    def _checked_state(self) -> np.ndarray:
        """get_state(), or SimulationError when it is not finite."""
        x = self.get_state()
        if not np.all(np.isfinite(x)):
            raise SimulationError(f"{self.spec.name}: the simulation went unstable at t={self.data.time:.3f} s "
                                  "(a non-finite state)")
        return x

    def _bad_state_counts(self) -> tuple[int, ...]:
        return tuple(int(self.data.warning[w].number) for w in BAD_STATE_WARNINGS)

    def _bad_state_reason(self) -> str:
        """MuJoCo's names of the bad-state warnings it counted (e.g. "mjWARN_BADQVEL in dof 0")."""
        named = [f"{w.name} in {'dof' if w != mujoco.mjtWarning.mjWARN_BADQPOS else 'qpos'} {self.data.warning[w].lastinfo}"
                 for w in BAD_STATE_WARNINGS if self.data.warning[w].number]
        return ", ".join(named) or "time went back"

    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return self.data.time - self._reset_time

    def close(self) -> None:
        pass

    def __enter__(self) -> "MujocoRobot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- Scene access ------------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel])

    def set_state(self, x) -> None:
        """Set qpos and qvel from x: (nq + nv,) and recompute derived quantities."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.spec.n,):
            raise ValueError(f"{self.spec.name}: state must have shape ({self.spec.n},), got {x.shape}")
        self.data.qpos[:] = x[: self.model.nq]
        self.data.qvel[:] = x[self.model.nq :]
        mujoco.mj_forward(self.model, self.data)

    def apply_condition(self, index: int, condition: dict) -> None:
        """Set up the scene for a task's condition: its fixtures (sim.fixtures: the target, the hole)
        and its initial state (`qpos`, `qvel`; else the scene's home), each from the scene's defaults."""
        self.fixtures.apply(self.model, self._mocap, condition, self.spec.name)
        self.set_initial_state(condition.get("qpos"), condition.get("qvel"))
        self.data.mocap_pos[:] = self._mocap
        mujoco.mj_forward(self.model, self.data)

    def set_mocap_pos(self, body: str, pos) -> None:
        """Move the mocap body `body` (a target marker) to pos: (3,) m, now and after every reset."""
        body_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, body)
        mocap_id = self.model.body_mocapid[body_id] if body_id >= 0 else -1
        if mocap_id < 0:
            raise ValueError(f"{self.spec.name}: no mocap body named '{body}'")
        self._mocap[mocap_id] = np.asarray(pos, dtype=np.float64).reshape(3)
        self.data.mocap_pos[mocap_id] = self._mocap[mocap_id]
        mujoco.mj_forward(self.model, self.data)

    def place_site(self, name: str, pos) -> None:
        """Move the static body that holds site `name` (a hole, a fixture) so that the site lies at pos: (3,) m."""
        self.fixtures.place_site(self.model, name, pos, self.spec.name)
        mujoco.mj_forward(self.model, self.data)

    def site_pos(self, name: str) -> np.ndarray:
        """World position (3,) m of site `name` at the current state."""
        site_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, name)
        if site_id < 0:
            raise ValueError(f"{self.spec.name}: no site named '{name}'")
        return self.data.site_xpos[site_id].copy()
