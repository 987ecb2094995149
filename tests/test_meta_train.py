"""Meta-training by evolution strategies: the ES step climbs, antithetic children share everything but their
actions, a run resumes bit for bit, the command line writes a policy the REINFORCE controller loads; on Ray
actors a run computes what it computes in the process, and a lost actor costs its pair, not the generation.

The Ray tests share the module's local cluster of 2 CPUs (``ray_cluster``): two actors of one CPU each.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ala_gym.agents import checkpoints
from ala_gym.agents import meta_train as meta_train_module
from ala_gym.agents.meta_train import (
    ChildOutcomes,
    EvaluationsLostError,
    MetaTrainConfig,
    MetaTrainer,
    RayEvaluators,
    action_uniform_generator,
    centered_ranks,
    config_record,
    es_gradient,
    evaluation_groups,
    generation_plan,
    generation_plans,
    inverse_cdf_actions,
    main,
    meta_train,
    perturbations,
    provenance,
    run_children,
    unflatten,
)
from ala_gym.agents.reinforce import PairPolicy, ReinforceController
from ala_gym.core.machine import source_digest

TINY_ENV = dict(device="cpu", batch_size=32, eval_points=2, eval_stride=5, val_subsample=200)


class EnvsProxy:
    """The vector env a trainer made, passed through but for the methods a test's subclass replaces."""

    def __init__(self, envs) -> None:
        self.envs = envs

    def __getattr__(self, name: str):
        return getattr(self.envs, name)


def tiny(**overrides) -> MetaTrainConfig:
    return MetaTrainConfig(**{"horizon": (40, 60), "population": 2, "generations": 2, "hidden": 8,
                              "env_kwargs": TINY_ENV, **overrides})  # fmt: skip


def test_the_es_step_climbs_a_known_quadratic() -> None:
    """Maximise -|theta - target|^2 with antithetic ES and Adam: theta ends near the target."""
    generator = torch.Generator().manual_seed(0)
    target = torch.tensor([1.0, -2.0, 0.5])
    theta = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=0.05)
    sigma = 0.1
    for _ in range(300):
        noise = torch.randn(8, 3, generator=generator)
        candidates = [theta.detach() + sign * sigma * eps for eps in noise for sign in (1.0, -1.0)]
        fitness = np.array([-float(((c - target) ** 2).sum()) for c in candidates])
        optimizer.zero_grad()
        theta.grad = -es_gradient(fitness, noise, sigma)
        optimizer.step()
    assert float((theta.detach() - target).norm()) < 0.15


def test_centered_ranks_ignore_the_scale() -> None:
    np.testing.assert_allclose(centered_ranks(np.array([3.0, -1e9, 10.0])), [0.0, -0.5, 0.5])
    np.testing.assert_allclose(centered_ranks(np.array([-np.inf, 1.0])), [-0.5, 0.5])  # a diverged child ranks last


def test_a_tied_pair_adds_nothing_with_average_ranks() -> None:
    """Pair 0's children tie (pair 1's diverged both): by position each such pair adds ``-eps_i / (2P - 1)`` in
    rank units, with average ranks nothing; the untied pair 2 counts the same either way."""
    fitness = np.array([0.9, 0.9, -np.inf, -np.inf, 0.5, 0.8])
    noise = torch.eye(3)
    np.testing.assert_allclose(centered_ranks(fitness, "average"), [0.4, 0.4, -0.4, -0.4, -0.1, 0.1])
    average = es_gradient(fitness, noise, sigma=1.0, ties="average")
    by_position = es_gradient(fitness, noise, sigma=1.0)
    np.testing.assert_allclose(average.numpy(), [0.0, 0.0, -0.2 / 6], atol=1e-7)
    np.testing.assert_allclose(by_position.numpy(), [-0.2 / 6] * 3, atol=1e-7)
    with pytest.raises(ValueError, match="rank_ties must be one of position, average, loss"):
        tiny(rank_ties="mean")


def test_the_loss_orders_equal_metrics_alone() -> None:
    """With ``ties="loss"`` the metric ranks first: a child of better metric ranks higher whatever its loss.
    Among equal metrics the lower validation loss ranks higher; equal in both (the diverged pair, or two
    children without a loss) they share their mean rank."""
    fitness = np.array([0.9, 0.9, -np.inf, -np.inf, 0.5, 0.8])
    losses = np.array([0.30, 0.20, np.inf, np.inf, 0.01, 9.0])
    np.testing.assert_allclose(centered_ranks(fitness, "loss", losses), [0.3, 0.5, -0.4, -0.4, -0.1, 0.1])
    np.testing.assert_allclose(centered_ranks(np.array([1.0, 1.0]), "loss", np.array([np.nan, np.nan])), [0.0, 0.0])
    # A child without a loss (none was measured) ranks below an equal one with a loss, however high that loss.
    np.testing.assert_allclose(centered_ranks(np.array([1.0, 1.0]), "loss", np.array([np.nan, 50.0])), [-0.5, 0.5])
    # Pair 0's minus child (0.20) trained the better-calibrated model: the estimate moves against eps_0.
    gradient = es_gradient(fitness, torch.eye(3), sigma=1.0, ties="loss", losses=losses)
    np.testing.assert_allclose(gradient.numpy(), [-0.2 / 6, 0.0, -0.2 / 6], atol=1e-7)
    with pytest.raises(ValueError, match="pass one loss per value"):
        centered_ranks(fitness, "loss")


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_the_es_gradient_is_the_rank_difference_of_each_pair_over_2_p_sigma(sigma: float) -> None:
    """``sum_i (R(theta + sigma eps_i) - R(theta - sigma eps_i)) eps_i / (2 P sigma)`` in centred ranks ``R``: a
    finite difference over the step taken, so that the estimate scales as ``1 / sigma``, not its direction alone."""
    fitness = np.array([3.0, 0.0, 1.0, 2.0])  # centred ranks 1/2, -1/2, -1/6, 1/6: pair differences 1, -1/3
    noise = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    expected = (1.0 * noise[0] - noise[1] / 3) / (2 * 2 * sigma)
    torch.testing.assert_close(es_gradient(fitness, noise, sigma), expected)


def test_antithetic_children_differ_only_by_their_actions() -> None:
    """With no perturbation the two children of a pair are the same run, bit for bit (same weights, batches and
    action uniforms); different pairs differ; with a perturbation the pair's children differ."""
    config = tiny(population=2)
    trainer = MetaTrainer(config)
    plan = generation_plan(config, 0)
    assert plan["env_seeds"][0] == plan["env_seeds"][1] != plan["env_seeds"][2] == plan["env_seeds"][3]
    theta = trainer.theta.detach()
    same, phi, loss, diverged = run_children(trainer.policy, [theta] * 4, plan, config)
    assert phi[0] == phi[1] and np.isfinite(phi).all() and not diverged.any()
    assert same[0] == same[1] and same[2] == same[3] and same[0] != same[2]
    # The fitness of an error-rate task is the negated error: higher is better for the search.
    assert np.all((-1.0 <= same) & (same <= 0.0)) and same.min() < 0.0
    assert loss[0] == loss[1] and loss[2] == loss[3] and loss[0] != loss[2] and np.all((loss > 0) & np.isfinite(loss))
    noise = perturbations(trainer.policy, 1, 0)[0]
    apart = run_children(trainer.policy, [theta + 3.0 * noise, theta - 3.0 * noise] * 2, plan, config)
    assert apart.fitness[0] != apart.fitness[1]


def test_the_fitness_of_a_higher_is_better_task_is_its_metric_as_it_is() -> None:
    """AUCPR: not negated, so the search raises it."""
    config = tiny(population=1, tasks=("ALA-Digits-AUCPR-v0",))
    trainer = MetaTrainer(config)
    outcomes = run_children(trainer.policy, [trainer.theta.detach()] * 2, generation_plan(config, 0), config)
    assert np.all((0.0 < outcomes.fitness) & (outcomes.fitness <= 1.0)), outcomes.fitness


def test_a_flat_vector_unflattens_into_the_policys_own_parameters() -> None:
    """``unflatten`` inverts ``parameters_to_vector``: each child runs the policy of the very vector it was given."""
    policy = PairPolicy(24, 8, torch.Generator().manual_seed(0))
    params = unflatten(policy, torch.nn.utils.parameters_to_vector(policy.parameters()))
    assert list(params) == [name for name, _ in policy.named_parameters()]
    assert all(torch.equal(params[name], parameter) for name, parameter in policy.named_parameters())


def test_actions_come_from_the_inverse_cdf_and_never_one_of_probability_zero() -> None:
    thirds = torch.zeros(5, 3)
    uniforms = torch.tensor([0.0, 0.3, 1 / 3, 0.5, 0.99])
    assert inverse_cdf_actions(thirds, uniforms).tolist() == [0, 0, 1, 1, 2]
    # Action 0 has probability 0 (action 2 too): even a uniform of exactly 0 takes action 1.
    impossible_ends = torch.tensor([[-torch.inf, 0.0, -torch.inf]]).expand(3, 3)
    assert inverse_cdf_actions(impossible_ends, torch.tensor([0.0, 0.5, 1 - 2**-24])).tolist() == [1, 1, 1]
    # A uniform above a last cumulative probability that rounding left below 1 is the last action...
    assert inverse_cdf_actions(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([1.5])).tolist() == [2]
    # ... of positive probability: here action 2's has underflowed to 0 and float32 leaves the sum at 1 - 2**-24.
    underflow = torch.tensor([[0.0, -9.995, -200.0]])
    assert F.softmax(underflow, -1)[0, 2] == 0 and F.softmax(underflow, -1).cumsum(-1)[0, 1] < 1 - 2**-25
    assert inverse_cdf_actions(underflow, torch.tensor([1 - 2**-24])).tolist() == [1]
    # Over many uniforms, each action is taken at its probability.
    logits = torch.tensor([0.2, -1.0, 1.0]).log_softmax(-1).expand(60_000, 3)
    drawn = inverse_cdf_actions(logits, torch.rand(60_000, generator=torch.Generator().manual_seed(0)))
    frequencies = torch.bincount(drawn, minlength=3) / 60_000
    assert torch.allclose(frequencies, logits[0].exp(), atol=0.01), frequencies


def test_a_pair_acts_on_the_same_uniforms_whatever_its_evaluation(monkeypatch) -> None:
    """Pair 1's children take the same first actions beside pair 0 as in an evaluation of their own: an evaluation
    draws the whole generation's action uniforms and keeps its own pairs' rows, not the first rows."""
    config = tiny(population=2)
    trainer = MetaTrainer(config)
    plan, vectors = generation_plan(config, 0), [trainer.theta.detach()] * 4
    make_vec = meta_train_module.gym.make_vec
    first_actions: list[np.ndarray] = []

    class Stop(Exception):
        pass

    class FirstStepOnly(EnvsProxy):
        def step(self, actions):
            first_actions.append(np.asarray(actions))
            raise Stop

    monkeypatch.setattr(
        meta_train_module.gym, "make_vec", lambda *args, **kwargs: FirstStepOnly(make_vec(*args, **kwargs))
    )
    for pairs in (range(0, 2), range(1, 2)):
        with pytest.raises(Stop):
            run_children(trainer.policy, vectors[2 * pairs.start : 2 * pairs.stop], plan, config, pairs)
    whole, alone = first_actions
    np.testing.assert_array_equal(alone, whole[2:])
    assert not np.array_equal(whole[0], whole[2])  # the pairs' uniforms differ


def test_the_trainer_climbs_the_fitness_of_the_children_it_runs(monkeypatch) -> None:
    """The whole generation loop moves theta uphill: with each child's fitness a known quadratic of the parameter
    vector it ran (``run_children`` patched), the first generation moves theta along the true gradient's direction
    and ten bring it nearer the optimum (in some hundred dimensions, by Adam steps of ``lr`` at most)."""
    config = tiny(population=8, sigma=0.05, lr=0.05, generations=10)
    trainer = MetaTrainer(config)
    target = trainer.theta.detach() + 1.0

    def quadratic(policy, vectors, plan, *_):
        fitness = np.array([-float(((vector - target) ** 2).sum()) for vector in vectors])
        return ChildOutcomes(fitness, np.zeros(len(vectors)), np.ones(len(vectors)), np.zeros(len(vectors), dtype=bool))

    monkeypatch.setattr(meta_train_module, "run_children", quadratic)
    start = trainer.theta.detach().clone()
    trainer.step()
    assert float(torch.dot(trainer.theta.detach() - start, target - start)) > 0
    for _ in range(9):
        trainer.step()
    assert float((trainer.theta.detach() - target).norm()) < 0.97 * float((start - target).norm())


def test_a_generation_draws_from_the_seed_alone() -> None:
    config = tiny(tasks=("ALA-Digits-v0", "ALA-Digits-AUCPR-v0"), horizon=(40, 400))
    plans = [generation_plan(config, g) for g in range(6)]
    assert plans == [generation_plan(config, g) for g in range(6)]
    assert all(p["total_iterations"] % config.steps_per_action == 0 and 40 <= p["total_iterations"] <= 400 for p in plans)
    assert {p["task"] for p in plans} == set(config.tasks)
    # Another seed draws other children and noise, in the first task's plan and the others' alike.
    other = tiny(tasks=config.tasks, horizon=config.horizon, seed=1, tasks_per_generation=2)
    for mine, theirs in zip(generation_plans(tiny(tasks=config.tasks, horizon=config.horizon, tasks_per_generation=2), 0),
                            generation_plans(other, 0)):  # fmt: skip
        assert mine["env_seeds"] != theirs["env_seeds"] and mine["noise_seed"] != theirs["noise_seed"]


@pytest.mark.parametrize("horizon, expected", [((59, 59), 40), ((60, 60), 60), ((1, 5), 20)])
def test_a_drawn_horizon_rounds_down_to_a_multiple_of_k_and_k_at_least(horizon: tuple[int, int], expected: int) -> None:
    """With K = 20 a horizon of 59 iterations runs 40, and one below K runs K: every child takes a decision."""
    config = tiny(horizon=horizon, steps_per_action=20)
    assert {generation_plan(config, g)["total_iterations"] for g in range(4)} == {expected}


def test_several_tasks_a_generation_average_their_own_estimates(monkeypatch) -> None:
    """With two tasks a generation, each runs its own children (its own horizon and seeds) under the same
    perturbations, and theta moves along the mean of the two tasks' estimates, each ranked among its own children."""
    config = tiny(tasks=("ALA-Digits-v0", "ALA-Digits-AUCPR-v0"), tasks_per_generation=2, generations=1)
    plans = generation_plans(config, 0)
    assert plans[0] == generation_plan(config, 0)  # one task a generation draws what it always drew
    assert {plan["task"] for plan in plans} == set(config.tasks) and plans[0]["env_seeds"] != plans[1]["env_seeds"]
    assert [generation_plans(replace(config, tasks_per_generation=1), g) for g in range(3)] == [
        [generation_plan(config, g)] for g in range(3)
    ]
    # Fitness by task, on a scale a thousand times larger for one of them: ranks make the scale irrelevant.
    fitness = {"ALA-Digits-v0": np.array([3.0, 3.0, 1.0, 2.0]), "ALA-Digits-AUCPR-v0": np.array([0.0, 1e3, 3e3, 2e3])}
    phi, loss = np.zeros(4), np.ones(4)
    monkeypatch.setattr(meta_train_module, "run_children",
                        lambda policy, vectors, plan, *_: ChildOutcomes(fitness[plan["task"]], phi, loss, phi > 0))  # fmt: skip
    trainer = MetaTrainer(config)
    theta = trainer.theta.detach().clone()
    entries = trainer.step()
    assert [entry["task"] for entry in entries] == [plan["task"] for plan in plans] and trainer.history == entries
    assert all(entry["generation"] == 1 for entry in entries)
    assert [entry["tied_pairs"] for entry in entries] == [1, 0]  # the digits task's first pair tied
    noise = perturbations(trainer.policy, config.population, plans[0]["noise_seed"])
    expected = MetaTrainer(config)
    expected.theta.grad = -(es_gradient(fitness[plans[0]["task"]], noise, config.sigma)
                            + es_gradient(fitness[plans[1]["task"]], noise, config.sigma)) / 2  # fmt: skip
    expected.optimizer.step()
    assert torch.allclose(trainer.theta, expected.theta) and not torch.equal(trainer.theta, theta)
    with pytest.raises(ValueError, match="tasks_per_generation must be between 1 and the 2 distinct tasks"):
        replace(config, tasks_per_generation=3)


@pytest.mark.parametrize("rank_ties", ["average", "loss"])
def test_the_trainer_ranks_ties_as_configured_with_each_childs_own_loss(monkeypatch, rank_ties: str) -> None:
    """A generation whose first pair ties on fitness: theta moves along the estimate of the configured tie rule,
    with the validation losses in the children's order, which here differs from the positional rule's."""
    config = tiny(generations=1, rank_ties=rank_ties)
    # Child 0 wins the tie on its lower loss, where the positional rule ranks child 1 (the later) above it.
    fitness, loss = np.array([3.0, 3.0, 1.0, 2.0]), np.array([0.2, 0.5, 1.0, 1.0])
    monkeypatch.setattr(meta_train_module, "run_children",
                        lambda *_args, **_kwargs: ChildOutcomes(fitness, np.zeros(4), loss, np.zeros(4, dtype=bool)))  # fmt: skip
    trainer = MetaTrainer(config)
    trainer.step()
    noise = perturbations(trainer.policy, config.population, generation_plan(config, 0)["noise_seed"])
    moved = {}
    for rule in ("position", rank_ties):
        expected = MetaTrainer(config)
        expected.theta.grad = -es_gradient(fitness, noise, config.sigma, rule, loss)
        expected.optimizer.step()
        moved[rule] = expected.theta.detach()
    assert torch.equal(trainer.theta.detach(), moved[rank_ties]) and not torch.equal(moved[rank_ties], moved["position"])


def test_a_searched_subset_is_perturbed_and_moved_alone() -> None:
    """Under ``searched="action-head"`` or ``"action-bias"`` the perturbations are those of ``"all"`` at the head's
    parameters (the last ones) or its biases, and zero elsewhere; a generation moves those alone, away from a
    near-constant initial policy."""
    config = tiny(searched="action-bias", init_no_change=0.5, generations=1, sigma=0.3)
    trainer = MetaTrainer(config)
    initial = trainer.theta.detach().clone()
    output = trainer.policy.net[-1]
    probabilities = torch.softmax(trainer.policy(torch.randn(5, 24)), dim=-1)
    assert torch.allclose(probabilities[..., 1], torch.full((5,), 0.5), atol=0.02)  # "no change" at 1/2 everywhere
    every = perturbations(trainer.policy, 3, 7)
    for searched, count in (("action-bias", output.bias.numel()), ("action-head", output.bias.numel() + output.weight.numel())):
        subset = perturbations(trainer.policy, 3, 7, searched)
        start = len(initial) - count
        assert torch.equal(subset[:, start:], every[:, start:]) and not subset[:, :start].any()
    trainer.step()
    moved = torch.nonzero(trainer.theta.detach() != initial).flatten()
    assert len(moved) > 0 and bool((moved >= len(initial) - output.bias.numel()).all())
    with pytest.raises(ValueError, match="searched must be one of all, action-head, action-bias"):
        tiny(searched="head")


def test_a_search_starts_from_a_saved_policy_of_its_size(tmp_path) -> None:
    """``init_policy`` names a shipped policy or a policy file: theta starts at its weights; another size, a missing
    name or a second initial policy is a one-line error."""
    from ala_gym.agents.reinforce import library_policy

    trainer = MetaTrainer(tiny(init_policy="without-digits", hidden=32))
    saved = torch.load(library_policy("without-digits"), weights_only=True)["state_dict"]
    expected = torch.nn.utils.parameters_to_vector([saved[name] for name, _ in trainer.policy.named_parameters()])
    assert torch.equal(trainer.theta.detach(), expected)
    fresh = MetaTrainer(tiny(hidden=32))
    assert not torch.equal(fresh.theta.detach(), expected)
    trainer.save_policy(tmp_path / "start.pt")
    from_file = MetaTrainer(tiny(init_policy=str(tmp_path / "start.pt"), hidden=32))
    assert torch.equal(from_file.theta.detach(), expected)
    with pytest.raises(ValueError, match="not 24 and 8; pass --hidden 32"):
        MetaTrainer(tiny(init_policy="without-digits"))
    with pytest.raises(ValueError, match="no shipped policy 'nonesuch'"):
        MetaTrainer(tiny(init_policy="nonesuch", hidden=32))
    with pytest.raises(ValueError, match="pass one of them"):
        tiny(init_policy="without-digits", init_no_change=0.5)
    with pytest.raises(SystemExit) as exited:
        main(["--init-policy", "nonesuch", "--save", str(tmp_path / "never.pt")])
    assert exited.value.code == 2 and not (tmp_path / "never.pt").exists()


def test_a_run_from_a_policy_file_resumes_after_the_file_is_gone(tmp_path) -> None:
    """A resumed search takes theta from its checkpoint, so the file it started from may have moved; the run then
    ends where the uninterrupted one does."""
    MetaTrainer(tiny(init_no_change=0.5)).save_policy(tmp_path / "start.pt")
    config = tiny(init_policy=str(tmp_path / "start.pt"))
    straight = meta_train(config)
    meta_train(replace(config, generations=1), tmp_path / "state.pt")
    (tmp_path / "start.pt").unlink()
    resumed = meta_train(config, tmp_path / "state.pt")
    assert resumed.generation == 2 and torch.equal(resumed.theta, straight.theta)


def test_an_interrupted_run_resumes_bit_for_bit(tmp_path, global_rng_unchanged) -> None:
    config = tiny()
    with global_rng_unchanged():
        straight = meta_train(config)
    first = meta_train(tiny(generations=1), tmp_path / "state.pt")  # stopped after one generation
    # As an earlier version wrote it, without pairs_per_evaluation: the default, which computes what it did.
    checkpoint = torch.load(tmp_path / "state.pt", weights_only=True)
    del checkpoint["config"]["pairs_per_evaluation"]
    torch.save(checkpoint, tmp_path / "state.pt")
    resumed = meta_train(config, tmp_path / "state.pt", log_dir=str(tmp_path / "logs"))
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    assert resumed.generation == 2 and torch.equal(resumed.theta, straight.theta)
    assert resumed.wall_seconds > first.wall_seconds > 0  # the run's cost adds up across the resume
    assert [entry["fitness_mean"] for entry in resumed.history] == [entry["fitness_mean"] for entry in straight.history]
    # What a resume refuses names its fix: the settings that differ, a count below the generations run.
    with pytest.raises(checkpoints.CheckpointError, match=r"another configuration \(sigma 0.05 -> 0.1\)"):
        meta_train(tiny(sigma=0.1), tmp_path / "state.pt")
    with pytest.raises(checkpoints.CheckpointError, match="has run 2 generations, more than --generations 1"):
        meta_train(tiny(generations=1), tmp_path / "state.pt")
    (tmp_path / "damaged.pt").write_bytes((tmp_path / "state.pt").read_bytes()[:100])
    with pytest.raises(checkpoints.CheckpointError, match=r"pass the --state file a meta-training run wrote \(a path that does not exist yet starts a new search\)"):
        meta_train(config, tmp_path / "damaged.pt")


def test_the_children_act_on_uniforms_of_their_own_not_the_perturbations(tmp_path) -> None:
    # torch.randn transforms its stream's uniforms: the perturbations' stream would hand the children the very
    # uniforms the first pairs' perturbations are made of, so that the fitness differences correlate with them.
    policy = MetaTrainer(tiny()).policy
    noise_seed = 12345
    uniforms = torch.rand(64, generator=torch.Generator().manual_seed(noise_seed))
    own = torch.rand(64, generator=action_uniform_generator(noise_seed))
    shared = torch.rand(64, generator=action_uniform_generator(noise_seed, "perturbations"))
    assert torch.equal(shared, uniforms) and not torch.isclose(own, uniforms).any()
    # The own stream's seed, as documented: [noise_seed, 1] through numpy's SeedSequence.
    (derived,) = np.random.SeedSequence([noise_seed, 1]).generate_state(1, np.uint64)
    assert torch.equal(own, torch.rand(64, generator=torch.Generator().manual_seed(int(derived))))
    # Box-Muller on the shared stream's first 16 uniforms gives the first perturbation's first coordinates.
    first = perturbations(policy, 1, noise_seed)[0, :8]
    u1, u2 = 1 - uniforms[:8], uniforms[8:16]
    assert torch.allclose(first, torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2), atol=1e-5)
    # A run of the perturbations' stream, as the shipped policies ran, computes otherwise than one of its own.
    assert not torch.equal(meta_train(tiny()).theta, meta_train(tiny(action_uniforms="perturbations")).theta)
    # A checkpoint written before the setting existed ran with the perturbations' stream: resumed as such only.
    meta_train(tiny(generations=1, action_uniforms="perturbations"), tmp_path / "state.pt")
    checkpoint = torch.load(tmp_path / "state.pt", weights_only=True)
    del checkpoint["config"]["action_uniforms"]
    torch.save(checkpoint, tmp_path / "state.pt")
    with pytest.raises(checkpoints.CheckpointError, match=r"another configuration \(action_uniforms 'perturbations' -> 'own'\)"):
        meta_train(tiny(), tmp_path / "state.pt")
    assert meta_train(tiny(action_uniforms="perturbations"), tmp_path / "state.pt").generation == 2
    with pytest.raises(ValueError, match="action_uniforms must be one of own, perturbations"):
        tiny(action_uniforms="shared")


def test_the_command_line_checks_where_it_writes_before_the_search_and_stops_cleanly(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "a-file").write_text("")
    wrongs = {
        "--save policy.json: name a .pt file": ["--save", str(tmp_path / "policy.json")],
        "is no writable folder": ["--save", str(tmp_path / "a-file" / "policy.pt")],
        "--state": ["--save", str(tmp_path / "p.pt"), "--state", str(tmp_path / "a-file" / "state.pt")],
        "--state p.pt is a file --save writes": ["--save", str(tmp_path / "p.pt"), "--state", str(tmp_path / "p.pt")],
        "--state p.json is a file --save writes": ["--save", str(tmp_path / "p.pt"), "--state", str(tmp_path / "p.json")],
    }
    monkeypatch.setattr(meta_train_module, "meta_train", lambda *args: pytest.fail("searched despite bad input"))
    for message, wrong in wrongs.items():
        with pytest.raises(SystemExit) as caught:
            main(wrong)
        err = capsys.readouterr().err
        assert caught.value.code == 2 and message.replace(str(tmp_path) + "/", "") in err.replace(str(tmp_path) + "/", "")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(meta_train_module, "meta_train", interrupted)  # Ctrl-C during a generation
    with pytest.raises(SystemExit) as caught:
        main(["--save", str(tmp_path / "p.pt"), "--state", str(tmp_path / "s.pt")])
    err = capsys.readouterr().err
    assert caught.value.code == 130 and "Traceback" not in err
    assert "interrupted; the same command resumes from the last finished generation in --state" in err


def test_the_command_line_writes_a_policy_the_controller_loads(tmp_path, capsys, monkeypatch) -> None:
    import json

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal, while stdout goes to a file
    main(["--generations", "1", "--population", "1", "--hidden", "8", "--horizon", "40,40", "--rank-ties", "average",
          "--env-kwargs", json.dumps(TINY_ENV), "--save", str(tmp_path / "meta.pt")])  # fmt: skip
    # stdout is no terminal: one line per generation on it, no progress bar (though stderr is a terminal).
    assert [json.loads(line)["generation"] for line in capsys.readouterr().out.splitlines()] == [1]
    record = json.loads((tmp_path / "meta.json").read_text())  # what produced the policy, beside it
    assert record["command"].startswith("python -m ala_gym.agents.meta_train --generations 1")
    words = shlex.split(record["command"])  # quoted as a shell reads it
    assert words[-2:] == ["--save", str(tmp_path / "meta.pt")] and json.loads(words[-3]) == TINY_ENV
    assert record["generations"] == 1 and len(record["history"]) == 1 and record["config"]["population"] == 1
    assert record["config"]["rank_ties"] == "average"
    assert record["child_iterations"] == 2 * 40 and record["wall_seconds"] > 0 and record["workers"] == 0
    assert record["source"] == source_digest()  # the code that trained it
    # The file holds the searched weights: those the same search reaches in the process, not its start.
    config = MetaTrainConfig(generations=1, population=1, hidden=8, horizon=(40, 40), rank_ties="average", env_kwargs=TINY_ENV)
    assert {key: record["config"][key] for key in config_record(config)} == config_record(config)
    saved = torch.load(tmp_path / "meta.pt", weights_only=True)["state_dict"]
    searched = meta_train(config)
    weights = torch.nn.utils.parameters_to_vector([saved[name] for name, _ in searched.policy.named_parameters()])
    assert torch.equal(weights, searched.theta.detach())
    assert not torch.equal(weights, MetaTrainer(config).theta.detach())
    controller = ReinforceController.load(tmp_path / "meta.pt", train=False, num_envs=2)
    envs = controller.make_envs("ALA-Digits-v0", total_iterations=40, steps_per_action=20, **TINY_ENV)
    records = controller.run(envs, seed=0)
    envs.close()
    assert len(records) == 2 and all(np.isfinite(r.test_metric) for r in records)
    missing_data = {"ALA-CIFAR10-v0": {"data_root": str(tmp_path / "absent"), "download": False}}
    wrongs = {
        "unknown env id 'ALA-Nothing-v0'": ["--tasks", "ALA-Nothing-v0"],
        "without pairs_per_evaluation": ["--workers", "2"],
        "invalid choice: 'mean'": ["--rank-ties", "mean"],
        "task_kwargs must map env ids": ["--task-kwargs", json.dumps({"ALA-CIFAR10-v0": {}})],
        "CIFAR-10 not found": ["--tasks", "ALA-CIFAR10-v0", "--horizon", "20,20", "--population", "1",
                               "--env-kwargs", json.dumps(TINY_ENV), "--task-kwargs", json.dumps(missing_data)],
    }  # fmt: skip
    for message, wrong in wrongs.items():
        with pytest.raises(SystemExit) as caught:
            main([*wrong, "--save", str(tmp_path / "x.pt")])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and "Traceback" not in err and message in err, err


# ---------------------------------------------------------------------- on Ray actors
on_ray = pytest.mark.usefixtures("ray_cluster", "one_torch_thread")  # one thread: the actors' float order


@on_ray
def test_more_ray_workers_than_the_cluster_has_cpus_are_refused_not_left_pending() -> None:
    with pytest.raises(ValueError, match="3 workers need 3 CPUs but the Ray cluster has 2: lower workers"):
        RayEvaluators(3)


@on_ray
def test_ray_workers_compute_what_the_process_computes_and_resume_bit_for_bit(tmp_path) -> None:
    """Two actors, one pair per evaluation: the same fitness and theta as in the process, generation by
    generation; the Ray run's checkpoint resumes, on one actor, to the in-process run's end."""
    config = tiny(pairs_per_evaluation=1)
    first = meta_train(replace(config, generations=1))
    in_process = meta_train(config)
    ray_first = meta_train(replace(config, generations=1, workers=2), tmp_path / "state.pt")
    assert ray_first.history == first.history and torch.equal(ray_first.theta, first.theta)
    resumed = meta_train(replace(config, workers=1), tmp_path / "state.pt")  # workers: not part of the run
    assert resumed.history == in_process.history and torch.equal(resumed.theta, in_process.theta)
    assert [entry["lost_pairs"] for entry in resumed.history] == [0, 0]


def _reference_losing_pair_0(config: MetaTrainConfig, monkeypatch) -> MetaTrainer:
    """The in-process run of ``config`` whose pair 0 is lost in generation 1: what a Ray run that loses it computes."""
    evaluate = run_children

    def pair_0_lost_in_generation_1(policy, vectors, plan, run_config, pairs=None):
        lost = pairs == range(0, 1) and plan == generation_plan(config, 0)
        return None if lost else evaluate(policy, vectors, plan, run_config, pairs)

    with monkeypatch.context() as patch:
        patch.setattr(meta_train_module, "run_children", pair_0_lost_in_generation_1)
        return meta_train(config)


def _kill_on_submit(monkeypatch, doomed: set[int], after_kill=lambda: None) -> list[tuple[int, object]]:
    """Make each call of a pair in ``doomed`` lose its actor once it went out (``after_kill()`` then runs); returns
    the list that records, per call, its pair and the actor it went to."""
    import ray

    submit = RayEvaluators._submit
    used: list[tuple[int, object]] = []

    def submit_then_kill(self, slot, call):
        ref = submit(self, slot, call)
        used.append((call[-1].start, self.actors[slot]))
        if call[-1].start in doomed:
            doomed.discard(call[-1].start)
            ray.kill(self.actors[slot])
            after_kill()
        return ref

    monkeypatch.setattr(RayEvaluators, "_submit", submit_then_kill)
    return used


@on_ray
def test_a_lost_ray_actor_costs_its_pair_not_the_generation(monkeypatch, capsys) -> None:
    """Four pairs on two actors, the actor of pair 0 killed after its call went out: generation 1 updates on pairs
    1-3, exactly as an in-process run that drops pair 0, the calls that waited (pairs 2 and 3) run on live actors
    (the survivor, and the replacement started in the dead one's place once it runs), and generation 2 never on
    the dead one; once the replacement runs, generation 3 runs on it and the survivor, and generation 4 keeps
    those two. A generation that loses every evaluation raises and leaves theta as it was."""
    config = tiny(pairs_per_evaluation=1, population=4)
    reference = _reference_losing_pair_0(config, monkeypatch)
    assert capsys.readouterr().err.count("warning: generation 1: 1 of 4 antithetic pairs lost") == 1
    # The cost counts the children that trained: the lost pair's two did not finish generation 1.
    horizons = [entry["total_iterations"] for entry in reference.history]
    assert provenance(reference, [])["child_iterations"] == 6 * horizons[0] + 8 * horizons[1]

    doomed: set[int] = {0}  # the pairs whose actor is killed after their call went out
    used = _kill_on_submit(monkeypatch, doomed)  # per call: its pair (one per evaluation) and the actor it went to
    trainer = MetaTrainer(replace(config, workers=2))
    try:
        trainer.step()
        first = list(used)
        trainer.step()
        assert trainer.history == reference.history and torch.equal(trainer.theta, reference.theta)
        assert [entry["lost_pairs"] for entry in json.loads(trainer.state()["history"])] == [1, 0]
        assert "warning: generation 1: 1 of 4 antithetic pairs lost" in capsys.readouterr().err
        assert sorted(pair for pair, _ in first) == [0, 1, 2, 3]
        actor = dict(first)
        killed, survivor = actor[0], actor[1]
        assert killed != survivor and killed not in (actor[2], actor[3])  # the waiting calls went to live actors
        second = {handle for _, handle in used[len(first) :]}
        assert survivor in second and killed not in second
        _replacements_running(trainer.evaluators)
        used.clear()
        trainer.step()
        third = {handle for _, handle in used}
        assert survivor in third and killed not in third and len(third) == 2  # the replacement beside the survivor
        used.clear()
        trainer.step()
        assert {handle for _, handle in used} == third  # a replaced actor is kept, not replaced again

        doomed.update(range(config.population))
        theta = trainer.theta.detach().clone()
        with pytest.raises(EvaluationsLostError, match="generation 5: every evaluation was lost"):
            trainer.step()
        assert trainer.generation == 4 and torch.equal(trainer.theta, theta) and len(trainer.history) == 4
    finally:
        trainer.close()


def _replacements_running(evaluators: RayEvaluators) -> None:
    """Wait until the actors that are starting run (a replacement starts without holding up a generation)."""
    import ray

    refs = [ref for ref, _ in evaluators.starting.values()]
    assert len(ray.wait(refs, num_returns=len(refs), timeout=120)[0]) == len(refs)


@on_ray
def test_a_lone_ray_actor_that_dies_is_replaced_within_the_generation(monkeypatch, capsys) -> None:
    """One actor, killed with pair 0's call: a replacement runs pairs 1-3 in the same generation, so the generation
    loses one pair, not every evaluation, and computes what the in-process run that drops pair 0 computes."""
    config = tiny(pairs_per_evaluation=1, population=4)
    reference = _reference_losing_pair_0(config, monkeypatch)
    capsys.readouterr()
    used = _kill_on_submit(monkeypatch, {0})
    trainer = MetaTrainer(replace(config, workers=1))
    try:
        trainer.step()
        trainer.step()
    finally:
        trainer.close()
    assert trainer.history == reference.history and torch.equal(trainer.theta, reference.theta)
    assert [entry["lost_pairs"] for entry in trainer.history] == [1, 0]
    assert "warning: generation 1: 1 of 4 antithetic pairs lost" in capsys.readouterr().err
    assert [pair for pair, _ in used[:4]] == [0, 1, 2, 3] and used[0][1] not in {handle for _, handle in used[1:]}


@on_ray
def test_a_replacement_the_cluster_cannot_place_leaves_its_calls_to_the_others_and_no_hang(monkeypatch, capsys) -> None:
    """Two actors on two CPUs; pair 0's actor is killed and other work takes its CPU (a lost node's, as the cluster
    sees it). The replacement cannot start: the survivor runs the waiting calls meanwhile, the generation ends with
    one pair lost, and after ACTOR_START_SECONDS the replacement is given up with a warning; the next generation
    starts another and runs on the survivor; once the CPU is free, a replacement runs beside it."""
    import ray

    @ray.remote(num_cpus=1)
    class Squatter:
        def ready(self) -> bool:
            return True

    squatters: list[object] = []

    def take_the_cpu() -> None:
        squatters.append(Squatter.remote())
        ray.get(squatters[-1].ready.remote(), timeout=60)  # placed once the killed actor's CPU is free

    config = tiny(pairs_per_evaluation=1, population=4, generations=4)
    reference = _reference_losing_pair_0(config, monkeypatch)
    capsys.readouterr()
    used = _kill_on_submit(monkeypatch, {0}, take_the_cpu)
    trainer = MetaTrainer(replace(config, workers=2))
    try:
        monkeypatch.setattr(meta_train_module, "ACTOR_START_SECONDS", 3.0)  # the actors that start have started
        trainer.step()
        time.sleep(3.5)  # past the replacement's deadline: the next generation gives it up, then starts another
        trainer.step()
        assert "a replacement Ray actor did not start within 3 s" in capsys.readouterr().err
        evaluators = trainer.evaluators
        assert evaluators.starting and {handle for _, handle in used[4:]} == {used[1][1]}  # gen. 2: the survivor alone
        ray.kill(squatters[0])
        monkeypatch.setattr(meta_train_module, "ACTOR_START_SECONDS", 120.0)  # time to start on a loaded machine
        time.sleep(3.5)  # the start of generation 2 given up too: generation 3 starts one with time to run
        trainer.step()
        _replacements_running(evaluators)
        used.clear()
        trainer.step()
        assert not evaluators.starting and None not in evaluators.actors and len({handle for _, handle in used}) == 2
    finally:
        trainer.close()
    assert trainer.history == reference.history and torch.equal(trainer.theta, reference.theta)
    assert [entry["lost_pairs"] for entry in trainer.history] == [1, 0, 0, 0]


@on_ray
def test_an_error_on_an_actor_reaches_the_command_line_as_its_own_one_line(tmp_path, capsys) -> None:
    """Data missing where the actors look: the user reads the data error itself, as without workers, not Ray's
    wrapper with the remote traceback."""
    missing_data = {"ALA-CIFAR10-v0": {"data_root": str(tmp_path / "absent"), "download": False}}
    with pytest.raises(SystemExit) as caught:
        main(["--tasks", "ALA-CIFAR10-v0", "--horizon", "20,20", "--population", "1", "--workers", "1",
              "--pairs-per-evaluation", "1", "--env-kwargs", json.dumps(TINY_ENV), "--task-kwargs", json.dumps(missing_data),
              "--save", str(tmp_path / "x.pt")])  # fmt: skip
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and "CIFAR-10 not found" in err and "ray::" not in err, err


def test_tensorboard_keeps_a_tasks_curve_when_its_generation_lost_the_other_task(tmp_path, monkeypatch) -> None:
    """Two tasks a generation, the second's evaluations all lost in generation 1 only: the first task's curves stay
    under its own name in both generations, not under the one-task names for generation 1."""
    import torch.utils.tensorboard

    config = tiny(tasks=("ALA-Digits-v0", "ALA-Digits-AUCPR-v0"), tasks_per_generation=2, generations=2)
    fitness, phi, loss = np.array([3.0, 1.0, 2.0, 0.0]), np.zeros(4), np.ones(4)
    second_task_calls = []  # one evaluation per task and generation: the first of the second task's is lost

    def evaluate(policy, vectors, plan, *_) -> ChildOutcomes | None:
        if plan["task"] == "ALA-Digits-AUCPR-v0":
            second_task_calls.append(plan)
            if len(second_task_calls) == 1:
                return None
        return ChildOutcomes(fitness, phi, loss, phi > 0)

    monkeypatch.setattr(meta_train_module, "run_children", evaluate)
    tags: dict[str, list[int]] = {}

    class Recorder:
        def __init__(self, log_dir: str) -> None:
            pass

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            tags.setdefault(tag, []).append(step)

        def close(self) -> None:
            pass

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", Recorder)
    meta_train(config, log_dir=str(tmp_path / "logs"))
    assert tags["meta/ALA-Digits-v0/fitness_mean"] == [1, 2] and tags["meta/ALA-Digits-AUCPR-v0/fitness_mean"] == [2]
    assert "meta/fitness_mean" not in tags


def test_a_task_whose_evaluations_are_all_lost_is_dropped_from_its_generation(monkeypatch, capsys) -> None:
    """Two tasks a generation, every evaluation of the second lost: the generation updates on the first alone, and
    says so; only a generation with nothing left raises."""
    config = tiny(tasks=("ALA-Digits-v0", "ALA-Digits-AUCPR-v0"), tasks_per_generation=2, generations=1)
    fitness, phi, loss = np.array([3.0, 1.0, 2.0, 0.0]), np.zeros(4), np.ones(4)
    monkeypatch.setattr(meta_train_module, "run_children", lambda policy, vectors, plan, *_: (
        None if plan["task"] == "ALA-Digits-AUCPR-v0" else ChildOutcomes(fitness, phi, loss, phi > 0)))  # fmt: skip
    trainer, alone = MetaTrainer(config), MetaTrainer(replace(config, tasks=("ALA-Digits-v0",), tasks_per_generation=1))
    entries = trainer.step()
    assert [entry["task"] for entry in entries] == ["ALA-Digits-v0"] and trainer.generation == 1
    assert "every evaluation of ALA-Digits-AUCPR-v0 lost with its Ray actor, the task dropped" in capsys.readouterr().err
    alone.step()  # the first task's estimate alone: the step of a run of that task only
    assert torch.equal(trainer.theta, alone.theta)


def _quadratic_children(target: torch.Tensor, calls: list[range]):
    """A ``run_children`` whose children's fitness is ``-|vector - target|^2``; it records each call's pairs."""

    def evaluate(policy, vectors, plan, run_config, pairs=None) -> ChildOutcomes:
        pairs = range(run_config.population) if pairs is None else pairs
        calls.append(pairs)
        assert len(vectors) == 2 * len(pairs)
        fitness = np.array([-float(((vector - target) ** 2).sum()) for vector in vectors])
        return ChildOutcomes(fitness, np.zeros(len(vectors)), np.ones(len(vectors)), np.zeros(len(vectors), dtype=bool))

    return evaluate


@pytest.mark.parametrize(
    "pairs_per_evaluation, groups", [(1, [range(0, 1), range(1, 2), range(2, 3)]), (2, [range(0, 2), range(2, 3)])]
)
def test_evaluations_of_a_few_pairs_compute_the_step_of_the_whole_population(
    monkeypatch, pairs_per_evaluation: int, groups: list[range]
) -> None:
    """Three pairs in evaluations of one or two (the last one short): each evaluation gets its own pairs' children,
    and theta moves exactly as when the whole population is one evaluation."""
    config = tiny(population=3, generations=1)
    grouped = replace(config, pairs_per_evaluation=pairs_per_evaluation)
    assert evaluation_groups(grouped) == groups and evaluation_groups(config) == [range(0, 3)]
    whole, apart = MetaTrainer(config), MetaTrainer(grouped)
    calls: list[range] = []
    monkeypatch.setattr(meta_train_module, "run_children", _quadratic_children(whole.theta.detach() + 1.0, calls))
    whole.step()
    apart.step()
    assert calls == [range(0, 3), *groups]
    assert torch.equal(apart.theta, whole.theta) and not torch.equal(whole.theta, MetaTrainer(config).theta)


def test_a_lost_evaluation_drops_its_own_pair_from_the_estimate(monkeypatch, capsys) -> None:
    """In the process as on Ray actors, an evaluation that came back empty costs its pair alone: the estimate is
    that of the other pairs' children with their own perturbations, and the log's fitness summarises the
    children that finished (an unmeasured child's -inf left out)."""
    config = tiny(population=3, pairs_per_evaluation=1, generations=1)
    fitness = {1: [1.0, -np.inf], 2: [3.0, 2.0]}

    def pair_0_lost(policy, vectors, plan, run_config, pairs=None) -> ChildOutcomes | None:
        if pairs.start == 0:
            return None
        return ChildOutcomes(np.array(fitness[pairs.start]), np.zeros(2), np.ones(2), np.zeros(2, dtype=bool))

    monkeypatch.setattr(meta_train_module, "run_children", pair_0_lost)
    trainer = MetaTrainer(config)
    (entry,) = trainer.step()
    noise = perturbations(trainer.policy, config.population, generation_plan(config, 0)["noise_seed"])
    kept = es_gradient(np.array([1.0, -np.inf, 3.0, 2.0]), noise[1:], config.sigma)  # pairs 1 and 2
    torch.testing.assert_close(trainer.theta.grad, -kept)
    assert entry["lost_pairs"] == 1 and entry["fitness_mean"] == 2.0 and entry["fitness_best"] == 3.0
    assert "generation 1: 1 of 3 antithetic pairs lost" in capsys.readouterr().err


def test_task_kwargs_reach_their_task_only_with_data_roots_under_the_data_home(monkeypatch, tmp_path) -> None:
    """A task's own keywords go over ``env_kwargs`` for its children alone, and a relative ``data_root`` (a
    dataset's name, as the record keeps it) is resolved under ``$ALA_GYM_DATA`` where the children train."""
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path))
    (tmp_path / "cifar10-subset").mkdir()
    config = tiny(tasks=("ALA-Digits-v0", "ALA-CIFAR10-v0"),
                  task_kwargs={"ALA-CIFAR10-v0": {"data_root": "cifar10-subset", "batch_size": 16}})  # fmt: skip
    made: dict[str, dict] = {}

    class Stop(Exception):
        pass

    def make_vec(task, num_envs, **kwargs):
        made[task] = kwargs
        raise Stop

    monkeypatch.setattr(meta_train_module.gym, "make_vec", make_vec)
    trainer = MetaTrainer(config)
    for task in config.tasks:
        with pytest.raises(Stop):
            run_children(trainer.policy, [trainer.theta.detach()] * 2, {**generation_plan(config, 0), "task": task}, config)
    assert made["ALA-CIFAR10-v0"]["data_root"] == str(tmp_path / "cifar10-subset")
    assert made["ALA-CIFAR10-v0"]["download"] is False  # a dataset of the data home is never downloaded
    assert made["ALA-CIFAR10-v0"]["batch_size"] == 16 and made["ALA-Digits-v0"]["batch_size"] == TINY_ENV["batch_size"]
    assert "data_root" not in made["ALA-Digits-v0"]
    assert config_record(config)["task_kwargs"]["ALA-CIFAR10-v0"]["data_root"] == "cifar10-subset"
    with pytest.raises(ValueError, match="task_kwargs must map env ids of tasks"):
        tiny(task_kwargs={"ALA-CIFAR10-v0": {}})


@pytest.mark.parametrize("metric, worst", [("error", -1.0), ("nll", -np.inf)])
def test_a_diverged_child_ranks_last(metric: str, worst: float) -> None:
    """A child whose training diverges scores the metric's worst value (an error of 1: fitness -1, the lowest an
    error task gives; an NLL of inf: -inf) and a validation loss of inf, the last rank under every tie rule; the
    generation's log holds that value, never NaN or a float's largest finite value."""
    config = tiny(population=1, env_kwargs={**TINY_ENV, "lr": 1e30, "metric": metric})
    trainer = MetaTrainer(config)
    outcomes = run_children(trainer.policy, [trainer.theta.detach()] * 2, generation_plan(config, 0), config)
    assert np.all(outcomes.fitness == worst) and np.all(outcomes.val_loss == np.inf) and outcomes.diverged.all()
    (entry,) = MetaTrainer(config).step()  # the generation's log counts them
    assert entry["diverged"] == 2 and entry["fitness_mean"] == entry["fitness_best"] == worst


def test_a_child_that_ends_unmeasured_ranks_last(monkeypatch) -> None:
    """A child whose episode ends with no final validation metric in its info (ended by something other than its
    own schedule) has no fitness to rank: it scores -inf, the last rank, never a value that would win."""
    make_vec = meta_train_module.gym.make_vec

    class SecondChildUnmeasured(EnvsProxy):
        def step(self, actions):
            *outcome, infos = self.envs.step(actions)
            if "_final_val_metric" in infos:
                infos["_final_val_metric"] = infos["_final_val_metric"].copy()
                infos["_final_val_metric"][1] = False
            return *outcome, infos

    monkeypatch.setattr(meta_train_module.gym, "make_vec", lambda *args, **kwargs: SecondChildUnmeasured(make_vec(*args, **kwargs)))
    config = tiny(population=1)
    trainer = MetaTrainer(config)
    outcomes = run_children(trainer.policy, [trainer.theta.detach()] * 2, generation_plan(config, 0), config)
    assert -1.0 <= outcomes.fitness[0] <= 0.0 and outcomes.fitness[1] == -np.inf
    assert np.isfinite(outcomes.val_loss[0]) and outcomes.val_loss[1] == np.inf


def test_the_fitness_is_each_childs_final_validation_metric_never_its_test_metric(monkeypatch) -> None:
    """Each child's fitness is minus its env's ``final_val_metric`` (an error: lower is better) and its validation
    loss the env's ``final_val_loss``; the test split, which the env reports beside them, plays no part."""
    make_vec = meta_train_module.gym.make_vec
    finals: dict[int, dict[str, float]] = {}

    class RecordFinals(EnvsProxy):
        def step(self, actions):
            observations, rewards, terminations, truncations, infos = self.envs.step(actions)
            for child in map(int, np.flatnonzero(infos.get("_final_val_metric", []))):
                finals[child] = {key: float(infos[key][child]) for key in ("final_val_metric", "final_val_loss", "test_metric")}
            return observations, rewards, terminations, truncations, infos

    monkeypatch.setattr(meta_train_module.gym, "make_vec", lambda *args, **kwargs: RecordFinals(make_vec(*args, **kwargs)))
    config = tiny(population=2)
    trainer = MetaTrainer(config)
    outcomes = run_children(trainer.policy, [trainer.theta.detach()] * 4, generation_plan(config, 0), config)
    assert sorted(finals) == [0, 1, 2, 3]
    np.testing.assert_array_equal(outcomes.fitness, [-finals[c]["final_val_metric"] for c in range(4)])
    np.testing.assert_array_equal(outcomes.val_loss, [finals[c]["final_val_loss"] for c in range(4)])
    # The two splits score these children differently, so a fitness read from the test split would fail above.
    assert any(finals[c]["test_metric"] != finals[c]["final_val_metric"] for c in range(4))


def test_a_child_that_ends_unmeasured_keeps_no_fitness_from_its_next_episode(monkeypatch) -> None:
    """A child whose episode ends without a final validation metric scores -inf (unmeasured), while its twin runs
    on: the vector env's next episode for it (other seeds, no longer paired) must not lend it a fitness."""
    import gymnasium as gym

    rows, features = gym.make("ALA-Digits-v0").observation_space.shape

    class Scripted:
        """Child 0 ends unmeasured at step 1, and again, measured, at step 2; child 1 ends measured at step 2."""

        def __init__(self) -> None:
            self.steps = 0

        def get_attr(self, name: str) -> list[bool]:
            return [False, False]

        def reset(self, seed=None):
            return np.zeros((2, rows, features), dtype=np.float32), {}

        def step(self, actions):
            self.steps += 1
            ends = np.array([True, False]) if self.steps == 1 else np.array([True, True])
            infos = {"final_val_metric": np.array([0.5, 0.25]), "_final_val_metric": np.array([self.steps > 1] * 2),
                     "final_val_loss": np.ones(2), "diverged": np.zeros(2, dtype=bool), "phi": np.stack([np.eye(10)] * 2)}  # fmt: skip
            return np.zeros((2, rows, features), dtype=np.float32), np.zeros(2), ends, np.zeros(2, dtype=bool), infos

        def close(self) -> None:
            pass

    monkeypatch.setattr(meta_train_module.gym, "make_vec", lambda *args, **kwargs: Scripted())
    config = tiny(population=1)
    trainer = MetaTrainer(config)
    vectors = [trainer.theta.detach()] * 2
    outcomes = run_children(trainer.policy, vectors, generation_plan(config, 0), config)
    assert outcomes.fitness.tolist() == [-np.inf, -0.25]  # an error rate: lower is better, so fitness is its negative
