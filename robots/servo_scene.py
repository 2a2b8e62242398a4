"""The arm's MuJoCo scene as its servos move it, stepped to the wall clock: the physics behind
`BusEmulator` (robots/bus_emulator.py), which speaks the servos' protocol over it.

Each of the arm's joints is bound to its position actuator. A goal becomes the actuator's target
(through a reality's `goal_path`: latency, the servo's sampling, backlash), torque off leaves the
joint free but held by its gearbox, the torque limit bounds the actuator's force, and a hand can
move the arm (calibration poses, sweeps). The scene advances in real time: `advance(now)` steps it
up to time.monotonic() `now`. `lock` guards it; the bus emulator holds it while it answers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import mujoco
import numpy as np

from forethought.robots.arm_description import ArmDescription

MAX_CATCH_UP_S = 0.5  # a scene left behind (the host paused) skips ahead past this much


class ServoScene:
    """The arm's scene driven by servos: goals in, joint readings out, stepped to the wall clock.

    scene_file: the MJCF file of a scene with the arm (its joints and position actuators named
    like the arm's joints); model: the MjModel to use instead (a reality's). goal_path: a
    sim.reality.GoalPath between the goal registers and the actuators (None: goals act at once);
    encoder_noise: std of the noise on present positions, rad. seed: the noise's and the goal
    path's phase's generator.
    """

    def __init__(
        self,
        arm: ArmDescription,
        scene_file: str | Path,
        model: mujoco.MjModel | None = None,
        goal_path=None,
        encoder_noise: float = 0.0,
        seed: int = 0,
    ):
        self.arm = arm
        if model is not None:
            self.model = model
        else:
            try:
                self.model = mujoco.MjModel.from_xml_path(str(scene_file))
            except ValueError as err:
                raise ValueError(f"{scene_file}: MuJoCo could not load the arm's scene: {err}") from None
        self.data = mujoco.MjData(self.model)
        home = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_KEY, "home")
        if home >= 0:
            mujoco.mj_resetDataKeyframe(self.model, self.data, home)
        mujoco.mj_forward(self.model, self.data)
        self._bind_joints()
        for i in range(len(self.qpos_adr)):
            self.hold(i)
        self.goal_path = goal_path
        self.encoder_noise = float(encoder_noise)
        self._noise_rng = np.random.default_rng([int(seed), 7])
        if goal_path is not None:
            goal_path.reset(self.data.ctrl[self.act], phase=int(self._noise_rng.integers(goal_path.period_steps)))
        # qpos when the last servo's torque went off: after it the arm creeps under its own weight.
        self.qpos_at_torque_off: np.ndarray | None = None
        self._hand: tuple[Callable[[float], np.ndarray], float, float] | None = None
        self.lock = threading.RLock()
        self.steps = 0
        self._t0 = time.monotonic()

    def _bind_joints(self) -> None:
        """Each joint's qpos and dof address and its actuator; the actuators' gains and the joints'
        friction as the scene has them (with torque on)."""
        model = self.model
        self.qpos_adr, self.dof_adr, self.act = [], [], []
        for name in self.arm.names:
            joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            act = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
            if joint < 0 or act < 0:
                raise ValueError(f"{self.arm.source}: the arm's scene has no joint and actuator named '{name}'")
            self.qpos_adr.append(model.jnt_qposadr[joint])
            self.dof_adr.append(model.jnt_dofadr[joint])
            self.act.append(act)
        self._gain = model.actuator_gainprm[self.act].copy()
        self._bias = model.actuator_biasprm[self.act].copy()
        self._friction = model.dof_frictionloss[self.dof_adr].copy()
        self._damping = model.dof_damping[self.dof_adr].copy()
        scene_limit = np.abs(model.actuator_forcerange[self.act]).min(axis=1)
        self._force_limit = np.where(model.actuator_forcelimited[self.act] > 0, scene_limit, np.inf)

    # -- what the servos do to it ------------------------------------------------------------------
    def angle(self, i: int) -> float:
        """Joint i's angle now, rad (no encoder noise)."""
        return float(self.data.qpos[self.qpos_adr[i]])

    def hold(self, i: int) -> None:
        """Joint i's actuator targets where the joint is."""
        self.data.ctrl[self.act[i]] = self.data.qpos[self.qpos_adr[i]]

    def send_goal(self, i: int, angle: float) -> None:
        """Joint i's servo took goal `angle`, rad: towards the actuator (through the goal path)."""
        if self.goal_path is not None:
            self.goal_path.send(angle, self.steps, index=[i])
        else:
            self.data.ctrl[self.act[i]] = angle

    def torque_switched(self, i: int, goal: float) -> None:
        """Joint i's torque went on or off with goal `goal`, rad: the servo holds it from now."""
        self.data.ctrl[self.act[i]] = goal
        if self.goal_path is not None:
            self.goal_path.hold(i, goal)

    def set_torque(self, i: int, on: bool, stall: float, limit_fraction: float = 1.0) -> None:
        """Joint i's servo with torque on (force up to `limit_fraction` of its stall torque `stall`,
        N m, and the scene's force limit) or off (free, held by its gearbox)."""
        model, act, dof = self.model, self.act[i], self.dof_adr[i]
        if on:
            model.actuator_gainprm[act] = self._gain[i]
            model.actuator_biasprm[act] = self._bias[i]
            model.dof_frictionloss[dof] = self._friction[i]
            model.dof_damping[dof] = self._damping[i]
            # The scene's force limit is the stall torque at the arm's supply voltage.
            limit = min(stall * limit_fraction, self._force_limit[i])
            model.actuator_forcelimited[act] = 1
            model.actuator_forcerange[act] = (-limit, limit)
        else:
            # Free, but a geared servo does not backdrive under the arm's own weight. MuJoCo's
            # friction loss is a soft constraint that lets a loaded joint creep; the gearbox's
            # viscous drag (stall torque per 0.01 rad/s) holds it.
            model.actuator_gainprm[act] = 0.0
            model.actuator_biasprm[act] = 0.0
            model.dof_frictionloss[dof] = max(self._friction[i], 0.5 * stall)
            model.dof_damping[dof] = max(self._damping[i], 100.0 * stall)

    def all_torque_off(self) -> None:
        """The last servo's torque went off: remember where the arm was."""
        self.qpos_at_torque_off = self.data.qpos.copy()

    def reading(self, i: int) -> tuple[float, float, float]:
        """Joint i's (angle rad with the encoder's noise, velocity rad/s, actuator force N m) now."""
        q, qd = self.data.qpos[self.qpos_adr[i]], self.data.qvel[self.dof_adr[i]]
        if self.encoder_noise > 0:
            q = q + self.encoder_noise * self._noise_rng.standard_normal()
        return float(q), float(qd), float(self.data.actuator_force[self.act[i]])

    # -- time ----------------------------------------------------------------------------------------
    def advance(self, now: float) -> None:
        """Step the scene up to wall-clock time `now` (at most MAX_CATCH_UP_S of catching up)."""
        dt = self.model.opt.timestep
        due = int((now - self._t0) / dt) - self.steps
        max_catch_up = int(MAX_CATCH_UP_S / dt)
        if due > max_catch_up:
            self._t0 += (due - max_catch_up) * dt
            due = max_catch_up
        for _ in range(max(due, 0)):
            if self.goal_path is not None:
                self.data.ctrl[self.act] = self.goal_path.target(self.steps)
            if self._hand is not None:
                self._follow_hand(self._t0 + (self.steps + 1) * dt)
            else:
                mujoco.mj_step(self.model, self.data)
            self.steps += 1

    def _follow_hand(self, t: float) -> None:
        trajectory, t_start, t_end = self._hand
        q = trajectory(min(t, t_end) - t_start)
        for i, adr in enumerate(self.qpos_adr):
            self.data.qpos[adr] = q[i]
        self.data.qvel[:] = 0.0
        mujoco.mj_forward(self.model, self.data)
        self.data.time += self.model.opt.timestep
        if t >= t_end:
            self._hand = None

    # -- the outside world -------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        """(m,) the arm's true joint angles, rad."""
        with self.lock:
            self.advance(time.monotonic())
            return np.array([self.data.qpos[a] for a in self.qpos_adr])

    def site_pos(self, name: str, at_torque_off: bool = False) -> np.ndarray | None:
        """(3,) world position of site `name`, m: now, or (at_torque_off) when the last servo's
        torque went off (None if it has not)."""
        site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, name)
        if site < 0:
            raise ValueError(f"the arm's scene has no site named '{name}'")
        with self.lock:
            if not at_torque_off:
                self.advance(time.monotonic())
                return self.data.site_xpos[site].copy()
            if self.qpos_at_torque_off is None:
                return None
            then = mujoco.MjData(self.model)
            then.qpos[:] = self.qpos_at_torque_off
            mujoco.mj_kinematics(self.model, then)
            return then.site_xpos[site].copy()

    def move_by_hand(self, trajectory: Callable[[float], np.ndarray], duration: float,
                     free: Sequence[int] = ()) -> None:
        """Move the arm along trajectory(t) -> (m,) rad for t in [0, duration] s, then let go; the
        joints `free` (torque off) keep no target of their own."""
        with self.lock:
            now = time.monotonic()
            self.advance(now)
            self._hand = (trajectory, now, now + duration)
            self._follow_hand(now)
            for i in free:
                self.hold(i)

    def sweep_trajectory(self, seconds_per_joint: float = 1.0) -> tuple[Callable[[float], np.ndarray], float]:
        """Each joint by hand through its described range, one after the other: (trajectory(t) ->
        (m,) rad, duration s)."""
        start = self.joint_positions()
        lower = self.arm.lower + 0.01
        upper = self.arm.upper - 0.01
        m = len(start)

        def trajectory(t: float) -> np.ndarray:
            q = start.copy()
            j = min(int(t / seconds_per_joint), m - 1)
            s = min(t / seconds_per_joint - j, 1.0)
            # start -> lower, a pause there, -> upper, a pause there, -> start; piecewise linear
            points = [start[j], lower[j], lower[j], upper[j], upper[j], start[j]]
            x = 5.0 * s
            k = min(int(x), 4)
            q[j] = points[k] + (points[k + 1] - points[k]) * (x - k)
            return q

        return trajectory, seconds_per_joint * m
