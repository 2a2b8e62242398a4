"""Reach a point with an arm's end effector: inverse kinematics once, then smooth joint position targets.

For each target the controller solves the arm's inverse kinematics (sim.kinematics, damped least
squares through the MJCF) and hands out an IKReachPolicy that moves the servos' position targets
from wherever the arm starts to that solution at a bounded joint rate, so that no servo is slammed,
and holds there (the IK keeps to answers whose straight joint-space path from home clears the
table). Position servos sag under gravity (their force is proportional to the error), so
once the targets arrive the policy integrates the remaining joint error into them, like the integral
term of a PI loop around the servos; this needs no model of the servo gains, on hardware as in
simulation. Joints outside the chain to the end effector (the gripper) hold still.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import mujoco
import numpy as np

from forethought.robots.config import ConfigError, from_mapping
from forethought.sim.kinematics import ArmKinematics


@dataclass
class IKReachConfig:
    """target: (3,) m, used by conditions that give none (default: the scene's site "target");
    rate: rad/s, the fastest any joint's position target moves; integral_gain: 1/s, how fast the
    joint error left after arrival is taken out (0 turns it off); integral_limit: rad, the most
    that correction adds to a target; tolerance: m, the largest IK residual accepted for a target;
    site: the end-effector site; gripper: rad, where the gripper is held (default: where it starts)."""

    target: list[float] | None = None
    rate: float = 2.0
    integral_gain: float = 4.0
    integral_limit: float = 0.2
    tolerance: float = 1e-3
    site: str = "ee"
    gripper: float | None = None

    def __post_init__(self) -> None:
        if self.target is not None and (len(self.target) != 3 or not np.all(np.isfinite(self.target))):
            raise ValueError(f"target must be 3 finite numbers (m), got {self.target!r}")
        for name in ("rate", "tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("integral_gain", "integral_limit"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")


class IKReachPolicy:
    """Position targets u (m,) moving at a bounded rate from the measured joints to `goal`, then held.

    goal: (m,) rad, one target per actuator; moving: (m,) bool, False for actuators held where their
    joint starts; joint_index: (m,) the state entry of each actuator's joint; dt: control period (s);
    rate: rad/s, the fastest any target moves (all arrive together, a straight line in joint space);
    integral_gain (1/s) and integral_limit (rad): after arrival, the moving targets add the integral
    of (goal - q), so that the joints themselves come to the goal; low, high: (m,) action bounds.
    """

    def __init__(self, goal, moving, joint_index, dt: float, rate: float, integral_gain: float,
                 integral_limit: float, low, high):
        self.goal = np.asarray(goal, dtype=np.float64)
        self.moving = np.asarray(moving, dtype=bool)
        self.joint_index = np.asarray(joint_index, dtype=np.intp)
        self.dt, self.rate = float(dt), float(rate)
        self.integral_gain, self.integral_limit = float(integral_gain), float(integral_limit)
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self._reference: np.ndarray | None = None
        self._goal = self.goal
        self._integral = np.zeros_like(self.goal)

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        q = np.asarray(x, dtype=np.float64)[self.joint_index]
        if self._reference is None or t == 0:
            self._reference = np.clip(q, self.low, self.high)
            self._goal = np.clip(np.where(self.moving, self.goal, q), self.low, self.high)
            self._integral = np.zeros_like(self.goal)
        left = self._goal - self._reference
        largest, step = np.abs(left).max(), self.rate * self.dt
        if largest > step:
            self._reference = self._reference + left * (step / largest)
        elif largest > 0:
            self._reference = self._goal.copy()
        else:
            error = np.where(self.moving, self._goal - q, 0.0)
            self._integral = np.clip(self._integral + self.integral_gain * self.dt * error, -self.integral_limit, self.integral_limit)
        return np.clip(self._reference + self._integral, self.low, self.high)


def _servo_joints(model: mujoco.MjModel) -> list[int]:
    """The joint id driven by each actuator; ValueError unless every actuator is a joint position servo."""
    joints = []
    for a in range(model.nu):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, a) or f"actuator{a}"
        is_joint = model.actuator_trntype[a] == int(mujoco.mjtTrn.mjTRN_JOINT)
        is_servo = model.actuator_biastype[a] == int(mujoco.mjtBias.mjBIAS_AFFINE) and model.actuator_biasprm[a, 1] < 0
        if not (is_joint and is_servo):
            raise ValueError(f"actuator '{name}' is not a joint position servo; ik_reach drives position servos only")
        joints.append(int(model.actuator_trnid[a, 0]))
    return joints


def scene_target(model: mujoco.MjModel, site: str = "target") -> np.ndarray | None:
    """World position (3,) m of site `site` in the scene's "home" keyframe (mocap included), or None."""
    site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site)
    if site_id < 0:
        return None
    data = mujoco.MjData(model)
    home = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, "home")
    if home >= 0:
        mujoco.mj_resetDataKeyframe(model, data, home)
    mujoco.mj_kinematics(model, data)
    return data.site_xpos[site_id].copy()


class IKReachController:
    """Controller with one IK reach policy per condition; the conditions are targets (3,) m.

    robot: a MuJoCo arm (anything with `spec` and `model`, such as MujocoRobot) whose actuators are
    joint position servos. targets: one (3,) m per condition, None where the condition gives none
    (then config.target, else the scene's site "target"); default: a single such condition. The IK
    is solved here, once per target, from the scene's home pose, keeping only answers whose straight
    joint-space path from home touches nothing (the table); a target the site cannot reach within
    config.tolerance, or only through the scene, is a ValueError naming it.
    """

    checkpoint_attributes: tuple[str, ...] = ()  # nothing changes between iterations (scripts/checkpoint.py)

    def __init__(self, config: IKReachConfig, robot, targets: Sequence | None = None, seed: int = 0):
        self.config = config
        model = robot.model
        spec = robot.spec
        servo_joints = _servo_joints(model)
        self.kinematics = ArmKinematics(model, site=config.site)
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in servo_joints]
        missing = [n for n in names if n not in spec.state_names]
        if missing:
            raise ValueError(f"joint '{missing[0]}' is not in the robot's state")
        self.joint_index = np.array([spec.state_names.index(n) for n in names], dtype=np.intp)
        unactuated = [n for n in self.kinematics.joint_names if n not in names]
        if unactuated:
            raise ValueError(f"joint '{unactuated[0]}' moves the site '{config.site}' but no actuator drives it")
        self._chain_index = np.array([spec.state_names.index(n) for n in self.kinematics.joint_names], dtype=np.intp)
        self._slot = np.array([names.index(n) for n in self.kinematics.joint_names], dtype=np.intp)
        self.spec = spec

        default = config.target if config.target is not None else scene_target(model)
        targets = [None] if targets is None else list(targets)
        if default is None and any(t is None for t in targets):
            raise ValueError("no target: give the conditions (or the controller) a target [x, y, z] in m")
        self.targets = [np.asarray(default if t is None else t, dtype=np.float64) for t in targets]
        self.goals = [self._goal(target, seed) for target in self.targets]

    def _goal(self, target: np.ndarray, seed: int) -> np.ndarray:
        if target.shape != (3,) or not np.all(np.isfinite(target)):
            raise ValueError(f"target must be 3 finite numbers (m), got {target.tolist()}")
        solution = self.kinematics.solve_ik(
            target, tolerance=0.1 * self.config.tolerance, restarts=50, seed=seed, accept=self._clear_path
        )
        where = f"target {np.round(target, 4).tolist()}"
        if solution.residual > self.config.tolerance:
            raise ValueError(
                f"{where} is out of reach of site '{self.config.site}': the nearest point it reaches is "
                f"{solution.residual * 1e3:.1f} mm away"
            )
        if not self._clear_path(solution.q):
            raise ValueError(f"{where} is reachable only with the arm touching the scene on the way")
        goal = np.zeros(self.spec.m)
        goal[self._slot] = solution.q
        return goal

    def _clear_path(self, q: np.ndarray, spacing: float = 0.05) -> bool:
        """Whether the arm touches nothing on the straight joint-space line from home to q (checked
        every `spacing` rad of the joint that moves most)."""
        home = self.kinematics.home
        steps = max(1, int(np.ceil(np.abs(q - home).max() / spacing)))
        return all(self.kinematics.arm_contacts(home + (q - home) * s / steps) == 0 for s in range(1, steps + 1))

    def policy(self, condition: int) -> IKReachPolicy:
        moving = np.zeros(self.spec.m, dtype=bool)
        moving[self._slot] = True
        goal = self.goals[condition].copy()
        if self.config.gripper is not None:
            others = ~moving
            goal[others] = self.config.gripper
            moving[others] = True
        return IKReachPolicy(
            goal, moving, self.joint_index, self.spec.dt, self.config.rate, self.config.integral_gain,
            self.config.integral_limit, self.spec.action_low, self.spec.action_high,
        )

    def update(self, trials) -> dict[str, float]:
        """Nothing to learn; reports the mean distance (m) of the end effector from its target at the end."""
        errors = [
            np.linalg.norm(self.kinematics.site_position(trial.states[-1][self._chain_index]) - self.targets[c])
            for c, group in enumerate(trials)
            for trial in group
        ]
        return {"reach_error_m": float(np.mean(errors))} if errors else {}


def build_ik_reach(params: dict, robot, task, model=None) -> IKReachController:
    """The `ik_reach` controller of an experiment: params from its YAML `controller` section,
    targets from the conditions' "target" (else params' target, else the scene's site "target")."""
    config = from_mapping(IKReachConfig, params, "ik_reach:")
    if not hasattr(robot, "model"):
        raise ConfigError("ik_reach needs a MuJoCo arm scene as the robot")
    targets = [c.get("target") for c in task.conditions]
    try:
        return IKReachController(config, robot, targets, seed=task.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
