"""Model-predictive control: the receding-horizon policy around any planner, and iLQR as a planner.

The planner protocol. A planner has `horizon` H (the number of actions it plans; a planner with a
`config.horizon` instead is read from there) and

    plan(x0: (n,), U_init: (H, m), t: int) -> Plan

which improves the warm start U_init from state x0 at control tick t and returns
Plan(U (H, m), X (H+1, n) or None, K (H, m, n) or None, cost). X is the predicted trajectory,
K feedback gains about it (u_j = U_j + K_j (x - X_j)); a planner without them gives None. A
planner keeps to its own time budget per call; it raises (or returns NaN) when it cannot plan.

`RecedingHorizonPolicy` calls the planner every `replan_every` ticks, warm-starts it with the
last plan shifted by the ticks since then (the last action repeated at the end), and between
replans follows the plan, with its feedback gains when it has them. When a solve fails numerically
(a non-finite plan or cost, a failed factorisation, a diverged rollout: `is_failed_solve`), the
policy keeps following the last good plan (the failure is counted in `stats`, and the first one
of the policy's life is logged as a warning when it happens); with no good plan left to follow it
raises MPCError rather than act blindly. Any other exception from the planner, or a plan of the
wrong type or shape, is a bug and propagates.

iLQR-MPC is `ILQRPlanner` (a fixed number of iLQR iterations or a time budget per tick, more
iterations on the first tick) inside a RecedingHorizonPolicy, on any model with `linearize`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from forethought.controllers.costs import build_cost
from forethought.controllers.ilqr import ILQR, BackwardPassError, DivergenceError, ILQRConfig
from forethought.models.gp.lbfgs import is_numerical
from forethought.robots.config import ConfigError, from_mapping
from forethought.robots.robot import RobotSpec


log = logging.getLogger(__name__)


class MPCError(RuntimeError):
    """MPC has no usable plan for the current tick."""


def is_failed_solve(err: BaseException) -> bool:
    """Whether a planner's exception is a numerical failure of the solve (a non-finite value, a
    factorisation that failed, a rollout that diverged) rather than a bug."""
    numerical = (FloatingPointError, np.linalg.LinAlgError, BackwardPassError, DivergenceError)
    return isinstance(err, numerical) or (isinstance(err, (RuntimeError, ValueError)) and is_numerical(err))


@dataclass
class Plan:
    """What a planner returns: U (H, m); X (H+1, n) or None; K (H, m, n) or None; cost: total predicted cost."""

    U: np.ndarray
    X: np.ndarray | None
    K: np.ndarray | None
    cost: float


def planner_horizon(planner) -> int:
    """H of a planner: its `horizon`, or its config's."""
    horizon = getattr(planner, "horizon", None)
    if horizon is None:
        horizon = getattr(getattr(planner, "config", None), "horizon", None)
    if horizon is None:
        raise TypeError(f"{type(planner).__name__} is not a planner: it has no horizon")
    return int(horizon)


class FirstFailure:
    """Logs the first failed solve it is told of, when it happens: one per run, where a controller
    shares one among the policies it hands out; later failures are only counted."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, t: int, problem: str) -> None:
        if not self.seen:
            self.seen = True
            log.warning("MPC: a solve failed at tick %d (%s); following the last good plan "
                        "(later failures are counted in the controller's diagnostics)", t, problem)


def _plan_problem(plan, H: int, m: int, n: int) -> str | None:
    """Why `plan` is numerically unusable (non-finite values), or None; TypeError or ValueError
    for a plan of the wrong type or shape, which is the planner's bug."""
    if not isinstance(plan, Plan):
        raise TypeError(f"the planner returned {type(plan).__name__}, not a Plan")
    if np.shape(plan.U) != (H, m):
        raise ValueError(f"plan U has shape {np.shape(plan.U)}, expected ({H}, {m})")
    if plan.K is not None and (plan.X is None or np.shape(plan.K) != (H, m, n) or np.shape(plan.X) != (H + 1, n)):
        raise ValueError("plan K needs X (H+1, n) and K (H, m, n)")
    if not np.all(np.isfinite(plan.U)):
        return "plan U has NaN or infinite values"
    if plan.K is not None and not (np.all(np.isfinite(plan.K)) and np.all(np.isfinite(plan.X))):
        return "plan X or K has NaN or infinite values"
    if not np.isfinite(plan.cost):
        return f"the plan's cost is {plan.cost}"
    return None


class RecedingHorizonPolicy:
    """MPC around `planner` (see the module docstring) for a robot with `spec`.

    replan_every: ticks between calls to the planner (1: every tick); initial_action: the warm
    start of the first plan, repeated over the horizon: an (m,) array, a function of x0, or None
    for the middle of the action bounds (0 where unbounded); first_failure: what logs the first
    failed solve (shared by the policies of one run; default: the policy's own). stats: replans, failures (solves
    that raised or returned an unusable plan), last_failure, solve_ms_mean, solve_ms_max.
    """

    def __init__(
        self,
        planner,
        spec: RobotSpec,
        replan_every: int = 1,
        initial_action: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
        first_failure: FirstFailure | None = None,
    ):
        if replan_every < 1:
            raise ValueError(f"replan_every must be at least 1, got {replan_every}")
        self.planner, self.spec, self.replan_every = planner, spec, int(replan_every)
        self.horizon = planner_horizon(planner)
        self.initial_action = initial_action
        self.first_failure = FirstFailure() if first_failure is None else first_failure
        self.reset()

    def reset(self) -> None:
        self.plan: Plan | None = None
        self.plan_tick = 0
        self._solve_s: list[float] = []
        self.stats: dict = {"replans": 0, "failures": 0, "last_failure": ""}

    def _initial(self, x: np.ndarray) -> np.ndarray:
        spec = self.spec
        if callable(self.initial_action):
            u = np.asarray(self.initial_action(x), dtype=np.float64)
        elif self.initial_action is not None:
            u = np.asarray(self.initial_action, dtype=np.float64)
        else:
            low = np.where(np.isfinite(spec.action_low), spec.action_low, 0.0)
            high = np.where(np.isfinite(spec.action_high), spec.action_high, 0.0)
            u = 0.5 * (low + high)
        u = np.clip(u.reshape(spec.m), spec.action_low, spec.action_high)
        return np.tile(u, (self.horizon, 1))

    def _warm_start(self, x: np.ndarray, t: int) -> np.ndarray:
        if self.plan is None:
            return self._initial(x)
        shift = min(t - self.plan_tick, self.horizon)
        U = self.plan.U
        return np.concatenate([U[shift:], np.repeat(U[-1:], shift, axis=0)])

    def _replan(self, x: np.ndarray, t: int) -> None:
        started = time.perf_counter()
        try:
            plan = self.planner.plan(x, self._warm_start(x, t), t)
        except Exception as err:
            if not is_failed_solve(err):
                raise
            plan, problem = None, f"{type(err).__name__}: {err}"
        else:
            problem = _plan_problem(plan, self.horizon, self.spec.m, self.spec.n)
        self._solve_s.append(time.perf_counter() - started)
        self.stats["replans"] += 1
        if problem is None:
            self.plan, self.plan_tick = plan, t
        else:
            self.stats["failures"] += 1
            self.stats["last_failure"] = f"tick {t}: {problem}"
            self.first_failure(t, problem)
        self.stats["solve_ms_mean"] = 1e3 * float(np.mean(self._solve_s))
        self.stats["solve_ms_max"] = 1e3 * float(np.max(self._solve_s))

    def act(self, x: np.ndarray, t: int) -> np.ndarray:
        """The action (m,) for state x (n,) at tick t."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.spec.n,) or not np.all(np.isfinite(x)):
            raise MPCError(f"MPC: state must be a finite ({self.spec.n},) array, got shape {x.shape}")
        if t < self.plan_tick:  # a new trial without reset()
            self.reset()
        if self.plan is None or t - self.plan_tick >= self.replan_every:
            self._replan(x, t)
        if self.plan is None:
            raise MPCError(f"MPC: no plan to follow ({self.stats['last_failure']})")
        j = t - self.plan_tick
        if j >= self.horizon:
            raise MPCError(f"MPC: the last good plan ended {j - self.horizon + 1} ticks ago ({self.stats['last_failure']})")
        plan = self.plan
        u = plan.U[j] if plan.K is None else plan.U[j] + plan.K[j] @ (x - plan.X[j])
        if not np.all(np.isfinite(u)):
            raise MPCError(f"MPC: the plan gives a non-finite action at tick {t}")
        return np.clip(u, self.spec.action_low, self.spec.action_high)


class ILQRPlanner:
    """iLQR as an MPC planner: `iterations` iLQR iterations per tick (`first_iterations` at tick 0),
    stopping early when `time_budget_s` would be overrun; the plan carries iLQR's feedback gains.

    closed_loop_warm_start: start each tick's solve from the last plan's feedback policy rolled
    out on the model from the measured state (u_j = U_j + K_j (x_j - X_j), shifted to this tick)
    instead of the policy's open-loop warm start: where the state has drifted from the plan (an
    unstable system, an inexact model), the open-loop actions fall away from the plan, and a few
    iterations from there may settle on another local optimum."""

    def __init__(
        self,
        model,
        cost,
        action_low,
        action_high,
        horizon: int,
        iterations: int = 1,
        first_iterations: int = 50,
        time_budget_s: float | None = None,
        config: ILQRConfig | None = None,
        closed_loop_warm_start: bool = False,
    ):
        if horizon < 1 or iterations < 1 or first_iterations < 1:
            raise ValueError("horizon, iterations and first_iterations must be at least 1")
        self.solver = ILQR(model, cost, action_low, action_high, config)
        self.horizon, self.iterations, self.first_iterations = int(horizon), int(iterations), int(first_iterations)
        self.time_budget_s = time_budget_s
        self.closed_loop_warm_start = bool(closed_loop_warm_start)
        self.last_result = None
        self._last_plan: tuple[int, Plan] | None = None

    def _closed_loop(self, x0: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray] | None:
        """States (H+1, n) and actions (H, m) of the last plan's feedback policy, shifted to tick t,
        rolled out on the model from x0; None without a last plan with gains, or when the rollout is
        not finite."""
        if self._last_plan is None or self._last_plan[0] >= t or self._last_plan[1].K is None:
            return None
        last_t, plan = self._last_plan
        shift = min(t - last_t, self.horizon)

        def shifted(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a[shift:], np.repeat(a[-1:], shift, axis=0)])

        self.solver._t0 = int(t)  # a time-varying model is asked at this tick's steps
        X, U = self.solver.closed_loop_rollout(np.asarray(x0, dtype=np.float64), shifted(plan.U),
                                               shifted(plan.X[:-1]), shifted(plan.K))
        return (X, U) if np.all(np.isfinite(U)) and np.all(np.isfinite(X)) else None

    def plan(self, x0, U_init, t: int = 0) -> Plan:
        first = t == 0
        X_init = None
        if self.closed_loop_warm_start and not first:
            warm = self._closed_loop(x0, t)
            if warm is not None:  # its states are the rollout of its actions: solve need not repeat it
                X_init, U_init = warm
        result = self.solver.solve(
            x0,
            U_init,
            max_iterations=self.first_iterations if first else self.iterations,
            time_budget_s=None if first else self.time_budget_s,
            t0=t,
            X_init=X_init,
        )
        self.last_result = result
        K = result.backward.K if result.backward is not None else None
        plan = Plan(U=result.U, X=result.X, K=K, cost=result.cost)
        self._last_plan = (t, plan)
        return plan


# -- The experiment controller ------------------------------------------------------------------


@dataclass
class ILQRMPCConfig:
    """The `controller:` section of an ilqr_mpc experiment (type: ilqr_mpc), on any model that can
    predict and linearize (the experiment's `model:`).

    horizon: planned steps (null: the trial's horizon: with replan_every as large, iLQR/LQG on the
    whole trajectory, its feedback gains acting throughout); iterations: iLQR iterations per tick;
    first_iterations: at tick 0; replan_every: ticks between replans (the feedback gains act in
    between); time_budget_s: per-tick limit on the iterations (null: none);
    initial_action: "hold" (joint position targets at the current joint positions: needs every
    action to name a state entry), "middle" (of the action bounds) or a list of m numbers;
    ilqr: the solver's settings (ILQRConfig; iterations and first_iterations replace its
    max_iterations); through: "mean" (iLQR on the model's mean prediction) or "members" (on an
    ensemble: the mean over its members of the cost of each member's own trajectory,
    controllers.ilqr_members); warm_start: each tick's first guess, "shifted" (the last plan's
    actions, shifted) or "closed_loop" (the last plan's feedback policy rolled out on the model
    from the measured state: ILQRPlanner); seed: of the random trials before a learned model's
    first fit (default: the experiment's seed).
    """

    horizon: int | None = 50
    iterations: int = 1
    first_iterations: int = 50
    replan_every: int = 1
    time_budget_s: float | None = None
    initial_action: str | list[float] = "middle"
    ilqr: ILQRConfig = field(default_factory=ILQRConfig)
    through: str = "mean"
    warm_start: str = "shifted"
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("horizon", "iterations", "first_iterations", "replan_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s}")
        if isinstance(self.initial_action, str) and self.initial_action not in ("hold", "middle"):
            raise ValueError(f"initial_action must be hold, middle or a list of numbers, got {self.initial_action!r}")
        if self.through not in ("mean", "members"):
            raise ValueError(f"through must be mean or members, got {self.through!r}")
        if self.warm_start not in ("shifted", "closed_loop"):
            raise ValueError(f"warm_start must be shifted or closed_loop, got {self.warm_start!r}")


def initial_action(setting, spec: RobotSpec):
    """The RecedingHorizonPolicy initial_action for an `initial_action` setting."""
    if setting == "middle":
        return None
    if setting == "hold":
        missing = [a for a in spec.action_names if a not in spec.state_names]
        if missing:
            raise ConfigError(f"initial_action: hold needs every action to name a state entry, and {missing[0]!r} does not")
        index = np.array([spec.state_names.index(a) for a in spec.action_names])
        return lambda x: x[index]
    values = np.asarray(setting, dtype=np.float64)
    if values.shape != (spec.m,) or not np.all(np.isfinite(values)):
        raise ConfigError(f"initial_action: expected {spec.m} finite numbers, got {setting!r}")
    return values


def check_model_states(model, spec: RobotSpec) -> None:
    """A model that plans the robot's actions must model all of the robot's states, in its order (a
    model that takes its names from the trials it is fitted on, as TVLG does, has none before)."""
    names = getattr(model, "state_names", None)
    if names and tuple(names) != tuple(spec.state_names):
        raise ConfigError(f"model: it models the states {list(names)}, and planning needs all of the robot's "
                          f"({', '.join(spec.state_names)})")


class MPCController:
    """The Controller for MPC on a model: one RecedingHorizonPolicy per condition around the planner
    that `planner_for(condition, seed)` builds. On a learned model that has not been fitted yet it
    hands out seeded random policies instead (the trials the first fit learns from).

    update() reports the replanning statistics of the policies handed out since the last update.
    """

    # What changes between iterations (the count that seeds each policy), and what a run's
    # checkpoint keeps (scripts/checkpoint.py); the policies' statistics are reported at each update.
    checkpoint_attributes = ("_handed_out",)

    def __init__(self, spec: RobotSpec, planner_for: Callable[[int, int], object], replan_every: int = 1,
                 initial=None, model=None, seed: int = 0):
        self.spec, self.planner_for = spec, planner_for
        self.replan_every, self._initial = int(replan_every), initial
        self.model, self.seed = model, int(seed)
        self._policies: list[RecedingHorizonPolicy] = []
        self._handed_out = 0
        self._first_failure = FirstFailure()  # the run's first failed solve is logged, whichever policy meets it

    def policy(self, condition: int):
        from forethought.controllers.delay import compensate_delay
        from forethought.controllers.policy import RandomPolicy

        self._handed_out += 1
        # A fresh stream for every policy, fixed by the seed and the order of the policies.
        seed = self.seed * 1_000_003 + 1009 * self._handed_out + condition
        if self.model is not None and getattr(self.model, "learned", False) and not getattr(self.model, "fitted", True):
            return RandomPolicy(self.spec, seed)
        policy = RecedingHorizonPolicy(self.planner_for(condition, seed), self.spec, self.replan_every, self._initial,
                                       self._first_failure)
        self._policies.append(policy)
        # A model that declares an action delay (an identified scene's) plans from the state predicted over it.
        return compensate_delay(policy, self.model, self.spec.action_low, self.spec.action_high)

    def update(self, trials) -> dict[str, float]:
        """Nothing to learn (a learned model is refitted by the experiment loop): the report."""
        return self.report(trials)

    def report(self, trials) -> dict[str, float]:
        """Replanning statistics of the policies handed out since the last report."""
        stats = [p.stats for p in self._policies if p.stats["replans"]]
        self._policies = []
        if not stats:
            return {}
        return {
            "replans": float(sum(s["replans"] for s in stats)),
            "solve_failures": float(sum(s["failures"] for s in stats)),
            "solve_ms_mean": float(np.mean([s["solve_ms_mean"] for s in stats])),
            "solve_ms_max": float(max(s["solve_ms_max"] for s in stats)),
        }


def task_costs(task, spec: RobotSpec, controller: str) -> list:
    """One Cost per condition of the task (controllers.costs); ConfigError when it declares none."""
    if task.cost == "reward":
        raise ConfigError(f"{controller} needs the cost's derivatives, and `cost: reward` (the task's own reward) has "
                          "none: write the cost with its terms, or plan with sampling_mpc")
    if not isinstance(task.cost, dict) or not task.cost:
        raise ConfigError(f"{controller} needs the task's `cost` (its terms)")
    return [build_cost(task.cost, spec, task.scene, condition) for condition in task.conditions]


def build_ilqr_mpc(params: dict, robot, task, model) -> MPCController:
    """Controller `type: ilqr_mpc`: params as ILQRMPCConfig, on the experiment's model."""
    cfg = from_mapping(ILQRMPCConfig, params, "controller:")
    spec = robot.spec
    check_model_states(model, spec)
    costs = task_costs(task, spec, "ilqr_mpc")
    horizon = cfg.horizon or task.horizon
    if cfg.through == "members" and not callable(getattr(model, "member_stack", None)):
        raise ConfigError(f"controller: through: members plans through each member of an ensemble, and the "
                          f"{type(model).__name__} has no members: use through: mean")

    closed_loop = cfg.warm_start == "closed_loop"

    def planner_for(condition: int, seed: int):
        if cfg.through == "members":
            from forethought.controllers.ilqr_members import MembersILQRPlanner

            return MembersILQRPlanner(model.member_stack(), costs[condition], spec.action_low, spec.action_high,
                                      horizon, cfg.iterations, cfg.first_iterations, cfg.time_budget_s, cfg.ilqr,
                                      closed_loop)
        return ILQRPlanner(model, costs[condition], spec.action_low, spec.action_high, horizon,
                           cfg.iterations, cfg.first_iterations, cfg.time_budget_s, cfg.ilqr, closed_loop)

    seed = cfg.seed if cfg.seed is not None else task.seed
    return MPCController(spec, planner_for, cfg.replan_every, initial_action(cfg.initial_action, spec), model, seed)
