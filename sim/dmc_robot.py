"""Any dm_control suite task as a Robot, named "domain:task" (e.g. "cartpole:swingup").

State: the task's observations flattened in the order the task returns them (dm_control keeps an
ordered dict), each array row-major; names "key" for scalars and "key:i" for entries. The cost of a
step is minus the task's reward for it (available as `last_cost` right after `step`).
"""

from __future__ import annotations

import numpy as np

from forethought.robots.robot import RobotSpec, check_action


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


class DmControlRobot:
    """A dm_control suite task. `physics` is the task's Physics handle (the simulator as a model)."""

    def __init__(self, task: str, seed: int | None = None):
        from dm_control import suite

        parts = task.split(":")
        if len(parts) != 2 or (parts[0], parts[1]) not in suite.ALL_TASKS:
            raise ValueError(f"unknown dm_control task '{task}'; `forethought list` shows them as domain:task")
        self.task_name = task
        self.env = suite.load(parts[0], parts[1], task_kwargs={"random": seed})
        self.physics = self.env.physics
        action = self.env.action_spec()
        observation = self.env.reset().observation
        self.spec = RobotSpec(
            name=f"dmc:{task}",
            state_names=_flat_names(observation),
            action_names=tuple(f"action:{i}" for i in range(action.shape[0])),
            action_low=np.broadcast_to(action.minimum, action.shape),
            action_high=np.broadcast_to(action.maximum, action.shape),
            dt=float(self.env.control_timestep()),
            metadata={"dm_control_task": task},
        )
        self.interventions: dict[str, int] = {"clipped": 0}
        self._reset_time = self.physics.data.time
        self.last_cost = float("nan")

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.env.task.random.seed(seed)
        self.interventions = {"clipped": 0}
        self.last_cost = float("nan")
        observation = self.env.reset().observation
        self._reset_time = self.physics.data.time
        return _flatten(observation)

    def step(self, u) -> np.ndarray:
        u, clipped = check_action(self.spec, u)
        self.interventions["clipped"] += int(clipped)
        timestep = self.env.step(u)
        self.last_cost = -float(timestep.reward or 0.0)
        return _flatten(timestep.observation)

    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return self.physics.data.time - self._reset_time

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "DmControlRobot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
