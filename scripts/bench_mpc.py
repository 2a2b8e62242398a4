"""`forethought bench mpc`: how fast the sampling planners choose an action through the ensemble,
and how many trials PETS needs to swing up the cart-pole.

Timing settings (issue's reference, as mbrl-lib's PETS on cart-pole): an ensemble of 5 members with
3 hidden layers of 200, TSinf with 20 particles; CEM with horizon 15, population 350, 5 iterations;
iCEM at horizon 15 with its default budget; MPPI with population 1000 and horizon 30. One CPU thread.
The ensemble is fitted on a random cart-pole trial so that its normalisation is realistic.

Next to each time stands its floor: the network's multiply-adds for one action (particle-steps
counted during a plan, times the multiply-adds of one step through one member) at the rate this
thread reaches in a batched matrix product of the hidden layers' shape, the best over a few row
counts (`ROWS`), over torch's product and the compiled kernel's (`network_kernel`), and over
readings before the planners and after each (`matmul_gflops_readings`). No planner can choose an
action faster than that with this network on this core; the gap (`*_over_floor`, time over floor)
is activations, sampling and cost. `*_over_floor` is the median over the plans of each plan's time
over the floor at the peak read right before and after it (the better reading), as `bench ilqr`
does for its iterations: the machine's speed moves between minutes, and the peak moves with it.
`*_over_floor_quartiles` and `*_over_floor_ci95` (the median's 95% bootstrap interval) say how far
the plans' ratios spread about it. `*_over_best_floor` sets the median time against the floor at
the best reading of the whole run (`*_network_floor_ms`) instead. `*_cpu_over_floor` sets the
plan's CPU time against the floor in CPU time (the matrix-product rate per CPU second), which
others' load does not swing.
`*_activation_floor_ms` is the network's activations (one per hidden unit and particle-step) at
the rate the activation reaches in place on a hidden layer, and `*_over_floor_with_activations`
the time over both floors together: what is left above it is the first and last layers' and the
sampling's own work, and the passes between them.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch

from forethought.controllers.costs import build_planning_cost
from forethought.controllers.policy import RandomPolicy
from forethought.controllers.samplers import make_planner
from forethought.models.ensemble import EnsembleConfig, EnsembleModel, native_bfloat16, network_kernel
from forethought.robots.trial import rollout
from forethought.scripts.bench_learning import distribution_metrics, learning_over_seeds
from forethought.scripts.experiment import load_experiment, make_robot, make_task
from forethought.scripts.sweep_summary import distribution

EXPERIMENT = "cartpole-swingup-pets"
PLANNER_SETTINGS = {
    "cem": dict(horizon=15, population=350, particles=20, iterations=5, elites=35),
    "icem": dict(horizon=15, particles=20),
    "mppi": dict(horizon=30, population=1000, particles=20),
}


def plan_times(planner, states: np.ndarray, repeats: int, cpu: bool = False,
               probe: Callable[[], float] | None = None) -> tuple[list[float], list[float]]:
    """Seconds of wall time (CPU time with cpu=True) of planner.plan over consecutive ticks from the
    given states, and with `probe` the core's peak rate read right before and right after each plan,
    the better of the two (else no rates)."""
    H, m = planner.config.horizon, planner.m
    U = np.zeros((H, m))
    plan = planner.plan(states[0], U, 0)  # warm-up: allocations, caches
    clock = time.process_time if cpu else time.perf_counter
    times, rates = [], []
    before = probe() if probe else None
    for t in range(repeats):
        U = np.concatenate([plan.U[1:], plan.U[-1:]])
        start = clock()
        plan = planner.plan(states[(t + 1) % len(states)], U, t + 1)
        times.append(clock() - start)
        if probe:
            after = probe()
            rates.append(max(before, after))
            before = after
    return times, rates


def time_per_action(planner, states: np.ndarray, repeats: int, cpu: bool = False) -> float:
    """Median wall time in ms of planner.plan over consecutive ticks from the given states (its CPU
    time with cpu=True)."""
    return 1e3 * statistics.median(plan_times(planner, states, repeats, cpu)[0])


class CountingDynamics:
    """A BatchedDynamics that counts the particle-steps (rows x steps) it rolls out."""

    def __init__(self, dynamics):
        self.dynamics, self.device, self.particle_steps = dynamics, dynamics.device, 0

    def rollout(self, x0: torch.Tensor, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.particle_steps += U.shape[0] * U.shape[1]
        return self.dynamics.rollout(x0, U, generator)


ROWS = (300, 600, 1400)
"""Rows a member at which the rates are measured: the best of them is the core's peak (the product
runs fastest where a layer stays in the level-2 cache)."""


def matmul_rate(dynamics, rows: tuple[int, ...] = ROWS, repeats: int = 20, cpu: bool = False) -> float:
    """Multiply-adds per second of a product at the ensemble's hidden-layer shape, (k, r, w) x
    (k, w, w) for r in `rows`, in its planning dtype on this thread: the best of `repeats` at each,
    the best over `rows` and over the products this core has for it (torch.bmm, and the compiled
    kernel's product without activation where planning runs the kernel), per CPU second with cpu=True.
    """
    clock = time.thread_time if cpu else time.perf_counter
    weight = dynamics.weights[1]
    k, width, out_width = weight.shape
    products = {"torch": lambda h, out: torch.bmm(h, weight, out=out)}
    if getattr(dynamics, "kernel", None) is not None:
        bare = network_kernel.PackedNetwork([weight], [None])  # one layer: no activation, float32 out
        products["kernel"] = lambda h, out: bare.forward(h, out)
    rate = 0.0
    for name, product in products.items():
        for r in rows:
            h = torch.randn(k, r, width).to(weight.dtype)
            if name == "kernel" and width % 2:  # the kernel reads an odd width's pair padded with a zero
                h = torch.cat([h, torch.zeros(k, r, 1, dtype=h.dtype)], dim=2)
            out = torch.empty(k, r, out_width, dtype=weight.dtype if name == "torch" else torch.float32)
            best = float("inf")
            for _ in range(repeats):
                start = clock()
                product(h, out)
                best = min(best, clock() - start)
            rate = max(rate, k * r * width * out_width / best)
    return rate


def activation_rate(dynamics, rows: tuple[int, ...] = ROWS, repeats: int = 20) -> float:
    """Elements per second of the ensemble's activation, in place on a (k, r, w) hidden layer for r
    in `rows`, in its planning dtype on this thread (the best of `repeats` at each, the best over
    `rows`)."""
    k, _, width = dynamics.weights[1].shape
    rate = 0.0
    for r in rows:
        h = torch.randn(k, r, width).to(dynamics.dtype)
        best = float("inf")
        for _ in range(repeats):
            x = h.clone()
            start = time.perf_counter()
            dynamics.activation(x)
            best = min(best, time.perf_counter() - start)
        rate = max(rate, k * r * width / best)
    return rate


def particle_steps(planner, dynamics, state: np.ndarray) -> int:
    """Rows x steps the planner rolls through the model for one action from `state`."""
    counting = CountingDynamics(dynamics)
    planner.dynamics = counting
    try:
        planner.plan(state, np.zeros((planner.config.horizon, planner.m)), 0)
    finally:
        planner.dynamics = dynamics
    return counting.particle_steps


def network_floor_ms(steps: int, dynamics, rate: float) -> float:
    """The network's multiply-adds for `steps` particle-steps, in ms at `rate`."""
    per_step = sum(w.shape[1] * w.shape[2] for w in dynamics.weights)  # one row through one member
    return 1e3 * steps * per_step / rate


def activation_floor_ms(steps: int, dynamics, rate: float) -> float:
    """The network's activations (one per hidden unit) for `steps` particle-steps, in ms at `rate`."""
    return 1e3 * steps * sum(w.shape[2] for w in dynamics.weights[:-1]) / rate


def planning_speed(repeats: int, dtype: str) -> tuple[dict, dict]:
    experiment = load_experiment(EXPERIMENT)
    with make_robot(experiment.robot) as robot:
        task = make_task(experiment, robot)
        trial = rollout(robot, RandomPolicy(robot.spec, 0), task.horizon, seed=0)
    cost = build_planning_cost(task.cost, robot.spec, task.scene, task.conditions[0])
    config = EnsembleConfig(members=5, hidden=[200, 200, 200], max_epochs=20, min_steps=0, planning_dtype=dtype,
                            angle_states=list(experiment.model.get("angle_states", [])))
    model = EnsembleModel(trial.state_names, trial.action_names, config)
    model.fit([trial])
    dynamics = model.dynamics("tsinf")
    # The peak is read before the planners and after each: the best reading is the core's rate, so
    # that a slow minute when it is read does not raise the floors (it moved by a sixth between runs).
    rates, cpu_rates = [matmul_rate(dynamics)], [matmul_rate(dynamics, cpu=True)]
    act_rate = activation_rate(dynamics)
    timed = {}
    for kind, settings in PLANNER_SETTINGS.items():
        planner = make_planner(kind, dynamics, cost, robot.spec.action_low, robot.spec.action_high,
                               **settings)
        # Each plan beside the peak read (the same reading, 0.2 s) right before and after it, as
        # `bench ilqr` sets each iteration against the floor read after it: this machine's speed
        # moves by a fifth from one minute to the next, and a plan in a slow one set against the best
        # minute's peak reads as slow code. CPU time beside wall time: others' load on a shared
        # machine does not stretch it.
        times, beside = plan_times(planner, trial.states, repeats, probe=lambda: matmul_rate(dynamics))
        timed[kind] = (times, beside, time_per_action(planner, trial.states, repeats, cpu=True),
                       particle_steps(planner, dynamics, trial.states[0]))
        rates.append(matmul_rate(dynamics))
        cpu_rates.append(matmul_rate(dynamics, cpu=True))
    rate, cpu_rate = max(rates), max(cpu_rates)
    metrics = {}
    for kind, (times, beside, cpu_ms, steps) in timed.items():
        ms = metrics[f"{kind}_ms_per_action"] = 1e3 * statistics.median(times)
        floor = metrics[f"{kind}_network_floor_ms"] = network_floor_ms(steps, dynamics, rate)
        ratios = [1e3 * t / network_floor_ms(steps, dynamics, r) for t, r in zip(times, beside)]
        metrics[f"{kind}_over_floor"] = statistics.median(ratios)
        # How far the plans spread about it: on a shared machine a few seconds' slow stretch moves a
        # median of ten plans, and the quartiles and the median's interval show how much.
        spread = distribution(ratios)
        metrics[f"{kind}_over_floor_quartiles"] = [spread["q25"], spread["q75"]]
        metrics[f"{kind}_over_floor_ci95"] = spread["ci95"]
        metrics[f"{kind}_over_best_floor"] = ms / floor
        metrics[f"{kind}_cpu_over_floor"] = cpu_ms / (floor * rate / cpu_rate)
        # The activations are the network's work too: the floor with them at their own best rate.
        activations = metrics[f"{kind}_activation_floor_ms"] = activation_floor_ms(steps, dynamics, act_rate)
        metrics[f"{kind}_over_floor_with_activations"] = ms / (floor + activations)
    config = {"planning_dtype": str(dynamics.dtype).replace("torch.", ""), "matmul_gflops": 2e-9 * rate,
              "matmul_gflops_readings": [2e-9 * r for r in rates], "activation_g_per_s": 1e-9 * act_rate,
              "network_kernel": dynamics.kernel is not None}
    return metrics, config


def run_bench_mpc(quick: bool = False, learning: bool | None = None, max_trials: int = 20,
                  seeds: int = 3) -> tuple[dict, dict]:
    """Metrics: {cem,icem,mppi}_ms_per_action, _network_floor_ms, _over_floor (with _quartiles and _ci95 over
    the plans), _over_best_floor, _cpu_over_floor,
    _activation_floor_ms and _over_floor_with_activations (and *_float32 variants when bfloat16 is native), and
    unless quick (or learning=False) pets_trials_to_success for seeds 0 to seeds-1 (None: not within
    max_trials), run as a sweep (a local Ray, one CPU per seed), with its distribution over the seeds
    that succeeded (pets_trials_to_success_median, _quartiles, _ci95), pets_success_rate and
    pets_failed_runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        repeats = 3 if quick else 10
        metrics, config = planning_speed(repeats, "auto")
        if config["planning_dtype"] == "bfloat16" and not quick:
            full, full_config = planning_speed(repeats, "float32")
            metrics.update({f"{key}_float32": value for key, value in full.items()})
            config["float32"] = {key: full_config[key] for key in ("matmul_gflops", "activation_g_per_s")}
        if learning if learning is not None else not quick:
            results, setting = learning_over_seeds(EXPERIMENT, range(seeds), max_trials)
            metrics["pets_trials_to_success"] = [r.first_success for r in results]
            metrics.update(distribution_metrics("pets_trials_to_success", setting))
            metrics["pets_success_rate"] = setting["success_rate"]
            metrics["pets_failed_runs"] = len(setting["failed"])
            config["pets_seeds"] = list(range(seeds))
        config.update(
            experiment=EXPERIMENT,
            ensemble={"members": 5, "hidden": [200, 200, 200], "propagation": "tsinf"},
            planners=PLANNER_SETTINGS,
            repeats=repeats,
            torch_threads=1,
            native_bfloat16=native_bfloat16(torch.device("cpu")),
            max_trials=max_trials,
        )
        return metrics, config
    finally:
        torch.set_num_threads(threads)
