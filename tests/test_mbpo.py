"""SAC and MBPO: the squashed policy, the replay buffer, the saved network policy, the experiment
files, and learning at small sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forethought.controllers.mbpo import MBPOParams
from forethought.controllers.nn_policy import MLPPolicy, build_nn_policy
from forethought.controllers.sac import ActionScale, ReplayBuffer, SACAgent, SACConfig
from forethought.robots.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_squashed_log_probability_matches_the_density_of_the_actions():
    """log pi(a) of a tanh-squashed Gaussian against a histogram of the actions drawn (1-D)."""
    agent = SACAgent(1, 1, SACConfig(hidden=[8]))
    x = torch.full((50_000, 1), 0.3)
    a, logp = agent.sample(x, torch.Generator().manual_seed(0))
    counts, edges = np.histogram(a[:, 0].numpy(), bins=20, range=(-0.95, 0.95))
    density = counts / (len(a) * (edges[1] - edges[0]))
    centres = 0.5 * (edges[1:] + edges[:-1])
    # The same policy's log-density at the bin centres: invert the squash and add the Jacobian.
    with torch.no_grad():
        mu, log_std = agent._heads(agent._z(x[:1]))
    pre = np.arctanh(centres)
    expected = np.exp(-0.5 * ((pre - float(mu)) / float(log_std.exp())) ** 2) / (math.sqrt(2 * math.pi) * float(log_std.exp()))
    expected /= 1 - centres**2
    busy = density > 0.05
    assert np.allclose(density[busy], expected[busy], rtol=0.1)
    # and the log-probabilities the update uses agree with that density where the draws fall
    rows = np.abs(a[:, 0].numpy()) < 0.9
    pre_a = np.arctanh(a[rows, 0].numpy().astype(np.float64))
    direct = (-0.5 * ((pre_a - float(mu)) / float(log_std.exp())) ** 2 - float(log_std) - 0.5 * math.log(2 * math.pi)
              - np.log(1 - np.tanh(pre_a) ** 2))
    assert np.allclose(logp[rows].numpy(), direct, atol=2e-3)


def test_replay_buffer_keeps_the_newest_rows_and_samples_only_filled_ones():
    buffer = ReplayBuffer(5, 2, 1)
    for start in (0, 3):
        x = torch.arange(start, start + 3, dtype=torch.float32)[:, None].expand(3, 2)
        buffer.add(x, torch.zeros(3, 1), x[:, 0], x + 1)
    assert buffer.size == 5
    assert sorted(buffer.x[:, 0].tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]  # row 0 was overwritten
    x, a, r, x_next = buffer.sample(500, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert torch.equal(r, x[:, 0]) and torch.equal(x_next, x + 1)  # rows stay together
    small = ReplayBuffer(2, 1, 1)
    small.add(torch.arange(4.0)[:, None], torch.zeros(4, 1), torch.arange(4.0), torch.zeros(4, 1))
    assert sorted(small.x[:, 0].tolist()) == [2.0, 3.0]


def test_rollout_schedule_is_janners_linear_ramp():
    params = MBPOParams(rollout_schedule=[2, 12, 1, 6])
    assert [params.rollout_length(t) for t in (0, 2, 7, 12, 30)] == [1, 1, 4, 6, 6]


def test_sac_learns_the_best_action_of_a_contextual_bandit():
    """gamma near 0 makes Q the reward: r = -(a - s/2)^2 for states s in [-1, 1]; the mean action
    must follow s/2 (within 0.15 everywhere) after 600 small updates."""
    agent = SACAgent(1, 1, SACConfig(hidden=[32, 32], gamma=0.01, lr=3e-3, batch_size=128, init_alpha=0.01, seed=1))
    g = torch.Generator().manual_seed(0)
    s = torch.rand(4096, 1, generator=g) * 2 - 1
    a = torch.rand(4096, 1, generator=g) * 2 - 1
    r = -((a - s / 2) ** 2)[:, 0]
    agent.set_scaling(s.numpy())
    for _ in range(600):
        rows = torch.randint(4096, (128,), generator=g)
        agent.update(s[rows], a[rows], r[rows], s[rows])
    probe = torch.linspace(-0.9, 0.9, 7)[:, None]
    assert torch.max(torch.abs(agent.mean_action(probe) - probe / 2)) < 0.15


def test_the_saved_policy_is_the_agents_mean_and_loads_as_a_network_policy(tmp_path):
    """export -> save -> MLPPolicy.load (weights only) gives the agent's mean action in the robot's
    bounds, angles fed as (sin, cos), and runs as `controller: {type: nn_policy}`."""
    from forethought.controllers.controller import Task
    from forethought.sim.mujoco_robot import MujocoRobot

    robot = MujocoRobot("pendulum")
    spec = robot.spec
    scale = ActionScale(spec.action_low, spec.action_high)
    agent = SACAgent(spec.n, spec.m, SACConfig(hidden=[16, 16]), angles=[0])
    agent.set_scaling(np.random.default_rng(0).normal(size=(50, 2)))
    x = np.random.default_rng(1).normal(0, 3, size=(20, 2))
    expected = scale.to_robot(agent.mean_action(x).double().numpy())
    agent.export(scale, {"features": []}).save(tmp_path / "nn_policy.pt")
    policy = MLPPolicy.load(tmp_path / "nn_policy.pt")
    assert np.allclose(policy.mean(x), expected, atol=1e-5)
    assert np.all(policy.mean(x * 40) <= spec.action_high) and np.all(policy.mean(x * 40) >= spec.action_low)
    # one turn more is the same pole position, so the same action
    assert np.allclose(policy.mean(x + [2 * np.pi, 0.0]), policy.mean(x), atol=1e-9)
    controller = build_nn_policy({"path": str(tmp_path / "nn_policy.pt")}, robot, Task(horizon=5))
    assert np.allclose(controller.policy(0).act(x[0], 0), expected[0], atol=1e-5)
    robot.close()


@pytest.mark.parametrize(("controller", "model", "message"), [
    ("{type: mbpo, hiden: [8]}", "{type: ensemble}", "controller \\(mbpo\\): unknown key 'hiden'"),
    ("{type: mbpo, real_ratio: 2}", "{type: ensemble}", "real_ratio must be in \\[0, 1\\]"),
    ("{type: mbpo}", "{type: gp}", "controller mbpo: the controller needs the ensemble model"),
    ("{type: sac}", "{type: ensemble}", "the controller uses no model"),
    ("{type: sac, angle_states: [pol]}", "{type: none}", "angle_states: 'pol' is not a state"),
])
def test_bad_settings_get_one_line_naming_file_and_key(tmp_path, controller, model, message):
    from forethought.scripts.experiment import build_parts, load_experiment

    path = tmp_path / "bad.yaml"
    path.write_text(f"robot: {{scene: pendulum}}\ntask: {{horizon: 5, cost: {{terms: [{{type: state, weights: {{pole: 1.0}}}}]}}}}\n"
                    f"model: {model}\ncontroller: {controller}\n")
    with pytest.raises(ConfigError, match=message) as info:
        build_parts(load_experiment(str(path)))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


LIFT = """
robot: {scene: pendulum}
task:
  horizon: 20
  cost: {terms: [{type: state, weights: {pole: 1.0, d_pole: 0.01}, target: {pole: 0.6}}]}
  goal: {type: state_distance, states: [pole], target: {pole: 0.6}, within: 0.1, at: final}
model: {type: ensemble, members: 3, hidden: [32, 32], angle_states: [pole], batch_size: 32, min_steps: 200, max_steps: 400}
controller:
  type: mbpo
  angle_states: [pole]
  hidden: [32, 32]
  updates_per_step: 10
  gamma: 0.9
  lr: 0.003
  reward_scale: 10.0
  batch_size: 128
  rollout_batch: 20
  rollout_schedule: [1, 4, 1, 3]
  evaluate_every: 2
loop: {iterations: 4, samples: 1, seed: 0, video: false}
"""


def test_mbpo_learns_to_hold_the_pendulum_lifted_and_saves_a_deployable_policy(tmp_path):
    """Small MBPO on the pendulum (hold the pole at 0.6 rad, 2 s trials): one random trial, then after
    two more the fourth trial (the policy's mean) costs under 0.4 of the random one (seed 0: 0.18 on
    one thread and on two; seeds 1, 2, 3: 0.17, 0.26, 0.39, so only seed 0 is asserted), and the
    saved network policy loads (weights only) and acts within the torque bound."""
    from forethought.controllers.nn_policy import MLPPolicy
    from forethought.scripts.experiment import load_experiment
    from forethought.scripts.run import run_experiment

    path = tmp_path / "lift.yaml"
    path.write_text(LIFT)
    result = run_experiment(load_experiment(str(path)), tmp_path / "runs", render_video=False)
    costs = [curve[0] for curve in result.learning_curve]
    assert len(costs) == 4 and costs[3] < 0.4 * costs[0], costs
    assert result.diagnostics[1]["imagined_transitions"] > 0 and result.diagnostics[1]["policy_updates"] == 200
    policy = MLPPolicy.load(result.folder / "models" / "nn_policy.pt")
    x = result.trials[-1].states[:-1]
    assert np.all(np.abs(policy.mean(x)) <= 2.5 + 1e-9)  # the pendulum's torque bound


def test_sac_alone_learns_from_each_trials_steps_and_acts_random_then_mean_then_sampled():
    """SAC's update takes G x (the trial's steps) gradient steps on its real transitions; its trials
    act randomly first, then with the mean on every `evaluate_every`-th, drawing actions otherwise."""
    from forethought.controllers.controller import Task
    from forethought.controllers.costs import build_cost
    from forethought.controllers.mbpo import build_sac
    from forethought.robots.trial import rollout
    from forethought.sim.mujoco_robot import MujocoRobot

    robot = MujocoRobot("pendulum")
    task = Task(horizon=10, cost={"terms": [{"type": "state", "weights": {"pole": 1.0}}]})
    controller = build_sac({"updates_per_step": 2, "evaluate_every": 2, "hidden": [8], "batch_size": 16}, robot, task)
    cost = build_cost(task.cost, robot.spec)
    modes, diagnostics = [], []
    for i in range(3):
        policy = controller.policy(0)
        modes.append(policy.mode)
        trial = rollout(robot, policy, task.horizon, seed=i, cost=cost)
        diagnostics.append(controller.update([[trial]]))
    robot.close()
    assert modes == ["random", "mean", "sample"]
    assert [d["policy_updates"] for d in diagnostics] == [20.0, 20.0, 20.0]
    assert diagnostics[-1]["real_transitions"] == 30.0
    # the mean policy repeats itself; a drawn one does not
    mean = controller.policy(0)
    mean.mode = "mean"
    x = np.array([0.3, -0.2])
    assert np.array_equal(mean.act(x, 0), mean.act(x, 1))
    mean.mode = "sample"
    assert not np.array_equal(mean.act(x, 0), mean.act(x, 1))


def _filled_mbpo(batch_size: int = 32):
    """An MBPO controller on the pendulum with random real and imagined transitions in its buffers."""
    from forethought.controllers.controller import Task
    from forethought.controllers.mbpo import MBPOController
    from forethought.sim.mujoco_robot import MujocoRobot

    robot = MujocoRobot("pendulum")
    spec = robot.spec
    robot.close()
    task = Task(horizon=10, cost={"terms": [{"type": "state", "weights": {"pole": 1.0}}]})
    controller = MBPOController(MBPOParams(angle_states=["pole"], real_ratio=0.25),
                                SACConfig(hidden=[16, 16], batch_size=batch_size), spec, task, None, None)
    g = torch.Generator().manual_seed(0)
    controller.real.add(torch.randn(300, 2, generator=g), torch.rand(300, 1, generator=g) * 2 - 1,
                        torch.randn(300, generator=g), torch.randn(300, 2, generator=g))
    controller._resize_model_buffer(1000)
    controller.model_buffer.add(torch.randn(700, 2, generator=g), torch.rand(700, 1, generator=g) * 2 - 1,
                                torch.randn(700, generator=g), torch.randn(700, 2, generator=g))
    controller.agent.set_scaling(controller.real.x[:300].double().numpy())
    return controller


def test_batched_updates_take_the_steps_of_one_batch_at_a_time_bit_for_bit():
    """gradient_steps (batches drawn and featurised at once, fused Adam fed the gradients directly)
    against the updates as they ran before (each batch drawn before its update, .backward() and
    torch.optim.Adam(fused=True)): the same parameters, temperature and targets to the bit."""
    import copy

    from forethought.scripts.bench_policies import reference_gradient_steps

    controller = _filled_mbpo()
    before = copy.deepcopy(controller.agent)
    optimiser = torch.optim.Adam(before._params, lr=before.config.lr, fused=True)
    drawn = controller.generator.get_state()
    torch.manual_seed(7)
    controller.gradient_steps(25)
    controller.generator.set_state(drawn)
    torch.manual_seed(7)
    reference_gradient_steps(controller, before, optimiser, 25)
    after = controller.agent
    pairs = [*zip(after._params, before._params), *zip(after._target_params, before._target_params)]
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not torch.equal(after._critic_params[0], after._target_params[0])  # they did move


def test_an_initial_network_policy_acts_first_and_the_actor_starts_as_it(tmp_path):
    """MB-MF fine-tuning: with `init_policy` (a saved network policy, as a distillation run writes)
    the first trial acts with that policy's mean, and before SAC's first update the actor's mean is
    fitted to it on that trial's states: afterwards it acts within 0.1 N m of it there, where its
    actions span 3.6 N m (the largest gap 0.05, 0.06, 0.02, 0.02 N m for agent seeds 0-3). A policy
    for other features is refused in one line naming the key."""
    from forethought.controllers.controller import Task
    from forethought.controllers.costs import build_cost
    from forethought.controllers.mbpo import build_sac
    from forethought.robots.trial import rollout
    from forethought.sim.mujoco_robot import MujocoRobot

    rng = np.random.default_rng(0)
    x = rng.uniform([-np.pi, -6.0], [np.pi, 6.0], size=(500, 2))
    u = 2.4 * np.tanh(2.0 * x[:, 1:] + 0.5)  # pushes along the velocity: the pole swings ever wider
    mlp = MLPPolicy(2, 1, 0, names={"features": []}, angles=[0])
    mlp.config.epochs = 30
    mlp.fit(x, None, u, np.broadcast_to(np.eye(1), (500, 1, 1)))
    mlp.save(tmp_path / "nn_policy.pt")

    robot = MujocoRobot("pendulum")
    task = Task(horizon=40, cost={"terms": [{"type": "state", "weights": {"pole": 1.0}}]})
    controller = build_sac({"init_policy": str(tmp_path / "nn_policy.pt"), "init_steps": 1500, "lr": 0.001, "updates_per_step": 0,
                            "hidden": [32, 32], "angle_states": ["pole"], "batch_size": 64}, robot, task)
    policy = controller.policy(0)
    assert policy.mode == "init"
    trial = rollout(robot, policy, task.horizon, seed=0, cost=build_cost(task.cost, robot.spec))
    assert np.allclose(trial.actions, np.clip(mlp.mean(trial.states[:-1]), -2.5, 2.5), atol=1e-9)
    diagnostics = controller.update([[trial]])
    assert diagnostics["init_loss_end"] < 0.1 * diagnostics["init_loss_start"]
    states = trial.states[:-1]
    learned = controller.scale.to_robot(controller.agent.mean_action(states).double().numpy())
    assert np.max(np.abs(learned - np.clip(mlp.mean(states), -2.5, 2.5))) < 0.1
    with pytest.raises(ConfigError, match="init_policy: .* takes 2 states and 0 features"):
        build_sac({"init_policy": str(tmp_path / "nn_policy.pt"), "features": ["target"]}, robot,
                  Task(horizon=5, cost=task.cost, conditions=[{"target": [1.0]}]))
    robot.close()
