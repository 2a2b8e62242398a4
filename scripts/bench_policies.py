"""`forethought bench policies`: fast network policies from learning, measured.

- Pendulum swing-up, SAC alone (pendulum-swingup-sac) against MBPO (pendulum-swingup-mbpo), the same
  SAC code: environment steps until the first trial that reaches the task's goal, and the run's wall
  time, per seed; each experiment's seeds run as one sweep (scripts/sweep.py, as bench learning runs
  them), every run stopping at its first success. `pendulum_step_ratio`: the median of MBPO's steps
  over the median of SAC's (the bar: at most 1/5).
- Arm reach (arm-reach-mbpo): MBPO's trials until the end effector ends within 1 cm (bar: 50 trials of
  2 s), on the first ARM_SEEDS seeds.
- One MBPO real step at the pendulum's sizes with 20 policy updates: its branched rollouts and the
  updates, on one torch thread, wall and CPU time (bar: 50 ms on one core); the CPU time is what one
  core spends, the wall time also holds what other processes on a shared machine take from it.
- The distilled policy (controllers/distill.py): `bench distill` runs within this one, its metrics
  under "distill_" keys.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


# Where the distilled policy's metrics come from once `bench distill` exists ("module:function",
# function(quick: bool) -> (metrics, config), a benchmark's function); until then they say it is absent.

PENDULUM = {"sac": ("pendulum-swingup-sac", 400), "mbpo": ("pendulum-swingup-mbpo", 40)}
ARM = ("arm-reach-mbpo", 50)
# The arm reach runs on the first ARM_SEEDS seeds: a run that misses takes 50 trials of about 20 s
# of updates each on a busy 2-core machine, three seeds longer than the bench may take there.
ARM_SEEDS = 1


def learning_runs(name: str, seeds: list[int], max_iterations: int, out: Path) -> list[dict]:
    """The sweep records of shipped experiment `name` over `seeds`, each run until its first success
    (at most max_iterations), one CPU each."""
    from forethought.scripts.sweep import execute, plan_sweep

    plan = plan_sweep(name, seeds, {}, 1, out / f"sweep-{name}",
                      fixed={"loop.iterations": max_iterations, "loop.until_success": True})
    return execute(plan).records


def steps_to_success(record: dict, steps_per_trial: int) -> int | None:
    trials = record.get("trials_to_success")
    return None if trials is None else int(trials) * steps_per_trial


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def reference_gradient_steps(controller, agent, optimiser, count: int) -> None:
    """`count` SAC updates as they ran before the batched path (commit ea648df): each batch drawn
    just before its update (real rows, then imagined), its features made per update, the
    critics' detached weights made per update, one backward pass into .grad and
    `torch.optim.Adam(fused=True)`. The same arithmetic as `SACAgent.update_many`, kept to measure
    that path against it in one process and to check that both give the same numbers.

    agent: a copy of the controller's agent (so the controller's own is not moved); optimiser: a
    torch.optim.Adam(fused=True) over agent._params."""
    import math

    import torch

    from forethought.controllers.sac import LOG_STD_MAX, LOG_STD_MIN

    cfg = agent.config
    size = cfg.batch_size
    n_real = int(round(size * controller.params.real_ratio)) if getattr(controller, "model_buffer", None) else size
    for _ in range(count):
        parts = [controller.real.sample(n_real, controller.generator)]
        if n_real < size:
            parts.append(controller.model_buffer.sample(size - n_real, controller.generator))
        x, a, r, x_next = (torch.cat(columns) for columns in zip(*parts))
        B = len(x)
        z_all = agent._z(torch.cat([x, x_next]))
        out = agent.actor(z_all)  # the Sequential, module by module
        mu, log_std = out[..., : agent.m], torch.clamp(out[..., agent.m :], LOG_STD_MIN, LOG_STD_MAX)
        noise = torch.randn(mu.shape)
        pre = mu + torch.exp(log_std) * noise
        a_all = torch.tanh(pre)
        logp_all = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp_all = logp_all - (2 * (math.log(2.0) - pre - torch.nn.functional.softplus(-2 * pre))).sum(-1)
        z, z_next, a_pi, logp = z_all[:B], z_all[B:], a_all[:B], logp_all[:B]
        alpha = agent.log_alpha.exp().detach()
        with torch.no_grad():
            q_next = agent.target(torch.cat([z_next, a_all[B:]], dim=-1)).min(dim=0).values
            y = r + cfg.gamma * (q_next - alpha * logp_all[B:])
        q = agent.critic(torch.cat([z, a], dim=-1))
        critic_loss = 0.5 * ((q - y) ** 2).mean(dim=1).sum()
        q_pi = agent.critic(torch.cat([z, a_pi], dim=-1), agent.critic.detached()).min(dim=0).values
        actor_loss = (alpha * logp - q_pi).mean()
        alpha_loss = -(agent.log_alpha * (logp.detach() + agent.target_entropy).mean())
        optimiser.zero_grad(set_to_none=True)
        (critic_loss + actor_loss + alpha_loss).backward()
        optimiser.step()
        with torch.no_grad():
            torch._foreach_lerp_(agent._target_params, agent._critic_params, cfg.tau)


def mbpo_step_time(updates: int = 20, repeats: int = 20) -> dict:
    """One MBPO real step at pendulum-swingup-mbpo's sizes after one random trial and a model fit:
    its share of branched rollouts (rollout_batch at the schedule's longest k) and `updates` SAC
    updates, on one torch thread. Median wall and CPU milliseconds over `repeats` steps; the same
    step with the updates as they ran before (`reference_gradient_steps`, "mbpo_step_before_"
    keys) alternates with it, so that both see the same load; the load average beside them."""
    import copy
    import os

    import torch

    from forethought.models.torch_threads import one_torch_thread
    from forethought.robots.trial import rollout
    from forethought.scripts.experiment import build_parts, load_experiment
    from forethought.scripts.run import make_cost

    experiment = load_experiment(PENDULUM["mbpo"][0])
    with one_torch_thread():
        parts = build_parts(experiment)
        controller, robot, task = parts.controller, parts.robot, parts.task
        cost = make_cost(experiment, robot, task.conditions[0])
        trials = [rollout(robot, controller.policy(0), task.horizon, seed=i, cost=cost) for i in range(2)]
        parts.model.fit(trials)
        controller.update([trials])  # fills the buffers and sets the input scaling
        k = int(controller.params.rollout_schedule[3])
        before = copy.deepcopy(controller.agent)
        optimiser = torch.optim.Adam(before._params, lr=before.config.lr, fused=True)

        def now_step() -> None:
            controller.branch(controller.params.rollout_batch, k)
            controller.gradient_steps(updates)

        def before_step() -> None:
            controller.branch(controller.params.rollout_batch, k)
            reference_gradient_steps(controller, before, optimiser, updates)

        times: dict = {"now": ([], []), "before": ([], [])}
        load = [os.getloadavg()[0]]
        for i in range(2 * repeats + 2):
            kind, step = ("now", now_step) if i % 2 else ("before", before_step)
            started, started_cpu = time.perf_counter(), time.thread_time()
            step()
            if i >= 2:  # the first of each warms up
                times[kind][0].append(1000 * (time.perf_counter() - started))
                times[kind][1].append(1000 * (time.thread_time() - started_cpu))
        load.append(os.getloadavg()[0])
        robot.close()
        threads = torch.get_num_threads()
    (wall, cpu), (wall_before, cpu_before) = times["now"], times["before"]
    return {"mbpo_step_ms": statistics.median(wall), "mbpo_step_cpu_ms": statistics.median(cpu),
            "mbpo_step_before_ms": statistics.median(wall_before), "mbpo_step_before_cpu_ms": statistics.median(cpu_before),
            "mbpo_step_load_average": load, "mbpo_step_updates": updates, "mbpo_step_rollouts": controller.params.rollout_batch,
            "mbpo_step_rollout_length": k, "mbpo_step_threads": threads}


def distill_metrics(quick: bool) -> dict:
    """`bench distill`'s metrics, run within this one, under "distill_" keys."""
    from forethought.scripts.bench_distill import run_bench_distill

    metrics, _ = run_bench_distill(quick)
    return {f"distill_{k}": v for k, v in metrics.items()}


def run_bench_policies(quick: bool = False, seeds: int = 3) -> tuple[dict, dict]:
    """`forethought bench policies` (module docstring); quick: seed 0 only and no arm reach."""
    from forethought.scripts.experiment import load_experiment

    seed_list = list(range(1 if quick else seeds))
    metrics: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        for kind, (name, max_iterations) in PENDULUM.items():
            experiment = load_experiment(name)
            per_trial = experiment.task.horizon * experiment.loop.samples * len(experiment.task.conditions)
            records = learning_runs(name, seed_list, max_iterations, out)
            metrics[f"pendulum_{kind}_steps"] = [steps_to_success(r, per_trial) for r in records]
            metrics[f"pendulum_{kind}_wall_s"] = [r.get("wall_s") for r in records]
            metrics[f"pendulum_{kind}_steps_median"] = _median(metrics[f"pendulum_{kind}_steps"])
        sac, mbpo = metrics["pendulum_sac_steps"], metrics["pendulum_mbpo_steps"]
        metrics["pendulum_step_ratio"] = (
            None if None in sac or None in mbpo else metrics["pendulum_mbpo_steps_median"] / metrics["pendulum_sac_steps_median"])
        # Per seed, so that one lucky seed cannot carry the claim.
        metrics["pendulum_step_ratio_per_seed"] = [None if s is None or m is None else m / s for s, m in zip(sac, mbpo)]
        if not quick:
            name, max_trials = ARM
            records = learning_runs(name, seed_list[:ARM_SEEDS], max_trials, out)
            metrics["arm_mbpo_trials"] = [r.get("trials_to_success") for r in records]
            metrics["arm_mbpo_wall_s"] = [r.get("wall_s") for r in records]
    metrics.update(mbpo_step_time())
    metrics.update(distill_metrics(quick))
    config = {"seeds": seed_list, "pendulum": {k: {"experiment": n, "max_trials": i} for k, (n, i) in PENDULUM.items()},
              "arm": None if quick else {"experiment": ARM[0], "max_trials": ARM[1], "seeds": seed_list[:ARM_SEEDS]},
              "cpus_per_run": 1}
    return metrics, config
