"""Any dm_control suite task as a Robot, named "domain:task" (e.g. "cartpole:swingup").

State, one of two:
- "observations" (the default): the task's observations flattened in the order the task returns
  them (dm_control keeps an ordered dict), each array row-major; names "key" for scalars and
  "key:i" for entries.
- "physics": the physics state qpos then qvel, named as a MuJoCo scene's (sim.mujoco_robot:
  "joint" and "d_joint"). This is the state a model of the task's physics plans on: MuJoCo itself
  (`mj_model`, shared with the planning copy) or a learned model whose cost is the task's reward.

The cost of a step is minus the task's reward for it (available as `last_cost` right after
`step`). An episode lasts at most `step_limit` steps (the task's time limit over its control
period); dm_control would start a new episode on the next step, so `step` refuses to go past it.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from forethought.robots.config import ConfigError
from forethought.robots.robot import RobotSpec, check_action
from forethought.sim.mujoco_robot import state_names as physics_state_names

STATES = ("observations", "physics")


def dmc_task_names() -> list[str]:
    """Every suite task as "domain:task"."""
    from dm_control import suite

    return [f"{domain}:{task}" for domain, task in suite.ALL_TASKS]


def _flat_names(observation) -> tuple[str, ...]:
    names = []
    for key, value in observation.items():
        size = int(np.asarray(value).size)
        names += [key] if np.ndim(value) == 0 else [f"{key}:{i}" for i in range(size)]
    return tuple(names)


def _flatten(observation) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in observation.values()])


class EpisodeOver(RuntimeError):
    """The task's episode has ended (its time limit): another step would silently start a new one."""


class DmControlRobot:
    """A dm_control suite task. `physics` is the task's Physics handle; `env.task` its Task.

    state: "observations" or "physics" (module docstring).
    """

    def __init__(self, task: str, seed: int | None = None, state: str = "observations"):
        from dm_control import suite

        parts = task.split(":")
        if len(parts) != 2 or (parts[0], parts[1]) not in suite.ALL_TASKS:
            raise ConfigError(f"unknown dm_control task '{task}'; `forethought list` shows them as domain:task")
        if state not in STATES:
            raise ConfigError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        self.task_name, self.state = task, state
        self.env = suite.load(parts[0], parts[1], task_kwargs={"random": seed})
        self.physics = self.env.physics
        if state == "physics" and self.mj_model.na > 0:
            raise ConfigError(f"dm_control task '{task}': its actuators have internal state, which qpos, qvel leave out")
        action = self.env.action_spec()
        observation = self.env.reset().observation
        self.spec = RobotSpec(
            name=f"dmc:{task}",
            state_names=_flat_names(observation) if state == "observations" else physics_state_names(self.mj_model),
            action_names=tuple(f"action:{i}" for i in range(action.shape[0])),
            action_low=np.broadcast_to(action.minimum, action.shape),
            action_high=np.broadcast_to(action.maximum, action.shape),
            dt=float(self.env.control_timestep()),
            metadata={"dm_control_task": task, "state": state},
        )
        # dm_control keeps its step limit private; an episode ends on the step that reaches it.
        limit = float(self.env._step_limit)  # noqa: SLF001
        self.step_limit: int | None = None if math.isinf(limit) else int(math.ceil(limit))
        self.interventions: dict[str, int] = {"clipped": 0}
        self.applied_action: np.ndarray | None = None
        self._reset_time = self.physics.data.time
        self._over = False
        self.last_cost = float("nan")

    @property
    def mj_model(self) -> mujoco.MjModel:
        """The task's MjModel itself (not a copy): what each episode sets in it (the reacher's target,
        say) a planning model that shares it sees too."""
        return self.physics.model.ptr

    def _state(self, observation) -> np.ndarray:
        if self.state == "physics":
            data = self.physics.data
            return np.concatenate([data.qpos, data.qvel]).astype(np.float64)
        return _flatten(observation)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.env.task.random.seed(seed)
        self.interventions = {"clipped": 0}
        self.applied_action = None
        self.last_cost = float("nan")
        observation = self.env.reset().observation
        self._reset_time = self.physics.data.time
        self._over = False
        return self._state(observation)

    def step(self, u) -> np.ndarray:
        if self._over:
            raise EpisodeOver(f"dmc:{self.task_name}: the episode ended after {self.step_limit} steps (the task's "
                              "time limit); reset for another")
        u, clipped = check_action(self.spec, u)
        self.interventions["clipped"] += int(clipped)
        self.applied_action = u
        timestep = self.env.step(u)
        self._over = timestep.last()
        self.last_cost = -float(timestep.reward or 0.0)
        return self._state(timestep.observation)

    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return self.physics.data.time - self._reset_time

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "DmControlRobot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
