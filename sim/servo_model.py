"""The MuJoCo side of an arm's position servos: per-servo joint and actuator parameters and a
payload at the tool, read from a compiled scene and written into its MjSpec.

A servo is a position actuator on a hinge joint (gain kp, bias -kp q - kv qdot). What the servo
and its gears add to the joint is the joint's damping (back-EMF), armature (the rotor's inertia
through the gear) and frictionloss (dry friction of the gear train). A payload is a point mass
in its own welded body at a site of the tool ("payload"). The reality gap (sim.reality) and
system identification (models.scene_identification) both change these numbers and nothing else,
through `write_servo_parameters`, the one place they are written into a scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from forethought.robots.config import ConfigError
from forethought.sim.scenes import scene_path

PAYLOAD_BODY = "payload"
# Radius (m) of the solid sphere whose inertia a payload gets: small, a point mass in effect.
PAYLOAD_RADIUS = 0.01
JOINT_FIELDS = ("damping", "armature", "frictionloss")
ACTUATOR_FIELDS = ("kp", "kv")
FIELDS = JOINT_FIELDS + ACTUATOR_FIELDS
UNITS = {"damping": "N m s/rad", "armature": "kg m^2", "frictionloss": "N m", "kp": "N m/rad", "kv": "N m s/rad"}


@dataclass(frozen=True)
class ServoParameters:
    """One entry per servo, in actuator order.

    actuators, joints: the position actuators and the hinge joints they drive; damping (N m s/rad),
    armature (kg m^2), frictionloss (N m): the joints'; kp (N m/rad), kv (N m s/rad): the
    actuators' stiffness and velocity feedback; payload: kg at site `payload_site` (0: none).
    """

    actuators: tuple[str, ...]
    joints: tuple[str, ...]
    damping: np.ndarray
    armature: np.ndarray
    frictionloss: np.ndarray
    kp: np.ndarray
    kv: np.ndarray
    payload: float = 0.0
    payload_site: str = "ee"

    def __post_init__(self) -> None:
        m = len(self.joints)
        for name in FIELDS:
            value = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if value.shape != (m,):
                raise ValueError(f"servo parameters: {name} must have {m} entries, got {value.shape}")
            if not np.all(np.isfinite(value)) or np.any(value < 0):
                raise ValueError(f"servo parameters: {name} must be finite and not negative, got {value.tolist()}")
            object.__setattr__(self, name, value)
        if not np.isfinite(self.payload) or self.payload < 0:
            raise ValueError(f"servo parameters: payload must be a mass (kg) not below 0, got {self.payload}")

    @property
    def m(self) -> int:
        return len(self.joints)

    def as_dict(self) -> dict:
        """JSON-ready: per field a mapping joint -> value; the payload in kg and its site."""
        out = {name: dict(zip(self.joints, map(float, getattr(self, name)))) for name in FIELDS}
        out["payload"] = float(self.payload)
        out["payload_site"] = self.payload_site
        return out


def load_spec(scene: str | Path) -> mujoco.MjSpec:
    """A scene name or MJCF path -> its MjSpec; ValueError naming the file when MuJoCo refuses it."""
    path = scene_path(scene)
    try:
        return mujoco.MjSpec.from_file(str(path))
    except ValueError as err:
        raise ConfigError(f"{path}: MuJoCo could not load the scene: {err}") from None


def compile_spec(spec: mujoco.MjSpec, where: str = "scene") -> mujoco.MjModel:
    try:
        return spec.compile()
    except ValueError as err:
        raise ConfigError(f"{where}: MuJoCo could not compile the scene: {err}") from None


def is_position_servo(model: mujoco.MjModel, actuator: int) -> bool:
    """Whether actuator `actuator` is a position servo on a hinge joint (gain kp, bias -kp q - kv qdot)."""
    return (
        model.actuator_trntype[actuator] == int(mujoco.mjtTrn.mjTRN_JOINT)
        and model.jnt_type[model.actuator_trnid[actuator, 0]] == int(mujoco.mjtJoint.mjJNT_HINGE)
        and model.actuator_gaintype[actuator] == int(mujoco.mjtGain.mjGAIN_FIXED)
        and model.actuator_biastype[actuator] == int(mujoco.mjtBias.mjBIAS_AFFINE)
        and model.actuator_gainprm[actuator, 0] > 0
        and np.isclose(model.actuator_biasprm[actuator, 1], -model.actuator_gainprm[actuator, 0])
    )


def servo_joints(model: mujoco.MjModel, where: str = "scene") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(actuator names, joint names) of the scene's servos; ValueError unless every actuator is one."""
    actuators, joints = [], []
    for a in range(model.nu):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, a) or f"actuator{a}"
        if not is_position_servo(model, a):
            raise ValueError(f"{where}: actuator '{name}' is not a position servo on a hinge joint")
        actuators.append(name)
        joints.append(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, model.actuator_trnid[a, 0]))
    if not actuators:
        raise ValueError(f"{where}: the scene has no actuators")
    return tuple(actuators), tuple(joints)


def servo_parameters(model: mujoco.MjModel, where: str = "scene") -> ServoParameters:
    """The servo parameters of a compiled scene, its payload included (0 without a payload body)."""
    actuators, joints = servo_joints(model, where)
    act = np.arange(model.nu)
    dof = model.jnt_dofadr[model.actuator_trnid[act, 0]]
    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, PAYLOAD_BODY)
    return ServoParameters(
        actuators, joints,
        damping=model.dof_damping[dof].copy(),
        armature=model.dof_armature[dof].copy(),
        frictionloss=model.dof_frictionloss[dof].copy(),
        kp=model.actuator_gainprm[act, 0].copy(),
        kv=-model.actuator_biasprm[act, 2].copy(),
        payload=float(model.body_mass[body]) if body >= 0 else 0.0,
    )


def write_servo_parameters(spec: mujoco.MjSpec, params: ServoParameters, where: str = "scene") -> None:
    """Write `params` into `spec`: the joints' damping, armature and frictionloss, the actuators'
    kp and kv, and the payload body (added at the site on first use; mass 0 keeps it out of physics)."""
    for a_name, j_name, i in zip(params.actuators, params.joints, range(params.m)):
        joint, actuator = spec.joint(j_name), spec.actuator(a_name)
        if joint is None or actuator is None:
            raise ValueError(f"{where}: no joint '{j_name}' driven by an actuator '{a_name}'")
        damping = np.array(joint.damping, dtype=np.float64)
        damping[0] = params.damping[i]
        joint.damping = damping
        joint.armature = float(params.armature[i])
        joint.frictionloss = float(params.frictionloss[i])
        gain, bias = np.array(actuator.gainprm), np.array(actuator.biasprm)
        gain[0], bias[1], bias[2] = params.kp[i], -params.kp[i], -params.kv[i]
        actuator.gainprm, actuator.biasprm = gain, bias
    body = spec.body(PAYLOAD_BODY)
    if body is None:
        if params.payload == 0.0:
            return
        site = spec.site(params.payload_site)
        if site is None:
            raise ValueError(f"{where}: no site '{params.payload_site}' to carry the payload")
        body = site.parent.add_body(name=PAYLOAD_BODY, pos=site.pos, quat=site.quat)
        body.explicitinertial = True
        body.ipos, body.iquat = [0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]
    body.mass = float(params.payload)
    body.inertia = [0.4 * params.payload * PAYLOAD_RADIUS**2] * 3


def model_with(spec: mujoco.MjSpec, params: ServoParameters, where: str = "scene") -> mujoco.MjModel:
    """The scene of `spec` with `params` written in, compiled (spec is changed in place)."""
    write_servo_parameters(spec, params, where)
    return compile_spec(spec, where)
