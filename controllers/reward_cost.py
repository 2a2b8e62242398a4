"""A dm_control task's own reward as the cost (`task.cost: reward`), on states a model predicts.

dm_control rewards a step by the physics state it reaches and the action that got there: the
robot logs costs[t] = -r(x_{t+1}, u_t). `RewardCost` evaluates r on any physics states (qpos, qvel:
the robot's `state: physics`) by the task itself: each row's qpos, qvel and ctrl are set on an
MjData that shares the task's MjModel (so it sees what each episode sets there, such as the
reacher's target), MuJoCo's forward pass fills in what the reward reads (positions, sensors), and
the task's `get_reward` gives the value. The same reward, then, as the robot's, on the states the
planning copy of the physics or a learned model (an ensemble on the physics state) predicts.

    RewardCost.value(x (B, n), u (B, m)) -> (B,)     minus the reward, float64 numpy
    RewardCost(x, u) -> float                         the same for one pair
    RewardTrajectoryCost(X (B, H+1, n), U (B, H, m)) -> (B,)
        the sampling planners' cost: -sum_t r(X[:, t+1], U[:, t]), a float64 torch tensor (a reward
        can lie far below float32's range, and the planners rank by it), NaN for a row with a
        non-finite state or action (the planners rank it last).

What it costs: a task's reward is Python over one physics state, about 0.1 ms a state (70-215 ms
per 1000 states for cartpole:swingup, reacher:easy and point_mass:easy on a busy 2-core machine),
of which MuJoCo's forward pass is about a tenth; the rest is the task's own Python (dm_control's
`rewards.tolerance` alone is ~40 us a call), which nothing here can make cheaper without rewriting
the task's reward. What is kept cheap around it: one MjData, reused for every row (no allocation
and no copy of the physics per state); rows with a non-finite state or action are skipped; the
planners' initial state, which every candidate shares and no reward is given for, is never
evaluated. A planner on this cost should keep population x horizon x iterations (x particles on a
learned model) to a few thousand states per tick.

iLQR and the other derivative-based controllers are refused: the reward has no derivatives, and
finite differences of it (about 50 evaluations per step for a Hessian in the cart-pole's 4 + 1
dimensions: 0.7-1 s per iLQR iteration over a 1 s horizon of 100 steps, against a 10 ms control
period) cost far more than an MPC tick has; a sparse reward (the reacher's) has no slope to find.
"""

from __future__ import annotations

import mujoco
import numpy as np
import torch

from forethought.robots.config import ConfigError


class RewardCost:
    """Minus the reward of dm_control task `task` at physics states, on a copy of `physics` that shares
    its MjModel (the module docstring). x: (B, nq + nv) qpos then qvel; u: (B, nu) the actions taken."""

    def __init__(self, task, physics):
        self.task = task
        self.physics = physics.copy(share_model=True)
        self._model, self._data = self.physics.model.ptr, self.physics.data.ptr
        self.nq, self.nv, self.m = self._model.nq, self._model.nv, self._model.nu
        self.n = self.nq + self.nv

    def rewards(self, x, u) -> np.ndarray:
        """The task's reward (B,) at each state x (B, n) reached by action u (B, m); NaN where a row is not finite."""
        x = np.asarray(x, dtype=np.float64)
        u = np.asarray(u, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n or u.shape != (len(x), self.m):
            raise ValueError(f"reward cost: needs x (B, {self.n}) and u (B, {self.m}), got {x.shape} and {u.shape}")
        out = np.full(len(x), np.nan)
        model, data, task, physics, nq = self._model, self._data, self.task, self.physics, self.nq
        for b in np.flatnonzero(np.isfinite(x).all(axis=1) & np.isfinite(u).all(axis=1)):
            data.qpos[:] = x[b, :nq]
            data.qvel[:] = x[b, nq:]
            data.ctrl[:] = u[b]
            mujoco.mj_forward(model, data)
            out[b] = task.get_reward(physics)
        return out

    def value(self, x, u) -> np.ndarray:
        """Minus the reward (B,) at states x (B, n) reached by actions u (B, m)."""
        return -self.rewards(x, u)

    def __call__(self, x, u) -> float:
        """Minus the reward at one state x (n,) reached by action u (m,)."""
        return float(self.value(np.reshape(x, (1, -1)), np.reshape(u, (1, -1)))[0])


class RewardTrajectoryCost:
    """The sampling planners' cost from a RewardCost: callable(X (B, H+1, n), U (B, H, m)) -> (B,)
    = -sum_t r(X[:, t+1], U[:, t]), float64 on `device`."""

    def __init__(self, reward: RewardCost, device: str | torch.device = "cpu"):
        self.reward, self.device = reward, torch.device(device)

    @torch.no_grad()
    def __call__(self, X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        B, H, m = U.shape
        x = X[:, 1:].detach().cpu().double().numpy().reshape(B * H, -1)
        u = U.detach().cpu().double().numpy().reshape(B * H, m)
        total = self.reward.value(x, u).reshape(B, H).sum(axis=1)
        return torch.as_tensor(total, dtype=torch.float64, device=self.device)


def reward_cost(robot) -> RewardCost:
    """The RewardCost of a dm_control robot whose state is the physics state; ConfigError otherwise."""
    env = getattr(robot, "env", None)
    if env is None or not hasattr(env, "task") or not hasattr(robot, "physics"):
        raise ConfigError("cost: reward is a dm_control task's own reward, and the robot is no dm_control task")
    if getattr(robot, "state", None) != "physics":
        raise ConfigError("cost: reward evaluates the task's reward on its physics state: set robot.state: physics")
    return RewardCost(env.task, robot.physics)
