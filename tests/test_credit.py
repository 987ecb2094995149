"""Non-myopic credit of the bundled REINFORCE: multi-step returns, episodic leave-one-out credit, warm-up runs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

import ala_gym.agents
from ala_gym.agents.reinforce import (
    WARMUP_SEED_OFFSET,
    PendingReturns,
    ReinforceConfig,
    ReinforceController,
    Transition,
    episodic_signs,
    mean_entropy,
)

TINY = dict(total_iterations=60, steps_per_action=20, batch_size=32, eval_points=2, eval_stride=5, val_subsample=200,
            device="cpu")  # fmt: skip


def test_returns_on_a_hand_built_reward_sequence() -> None:
    """horizon 3, gamma 0.5: G_t = r_t + r_{t+1} / 2 + r_{t+2} / 4, complete two steps later, cut at the end."""
    returns = PendingReturns(num_envs=1, horizon=3, discount=0.5)
    rewards = [1.0, -1.0, 0.0, 1.0, 1.0]
    complete = []
    for step, reward in enumerate(rewards):
        ended = step == len(rewards) - 1
        done = returns.add(np.array([0]), [f"a{step}"], np.array([[reward]]), np.array([ended]))
        complete.append([(payload, float(ret[0])) for _, payload, ret in done])
    assert complete == [
        [],
        [],
        [("a0", 1.0 - 0.5 + 0.0)],
        [("a1", -1.0 + 0.0 + 0.25)],
        [("a2", 0.0 + 0.5 + 0.25), ("a3", 1.0 + 0.5), ("a4", 1.0)],  # the episode ended: the rest, cut short
    ]


def test_a_horizon_of_one_returns_each_reward_as_it_is() -> None:
    returns = PendingReturns(num_envs=2, horizon=1, discount=0.9)
    rewards = np.array([[1.0, -1.0], [0.0, 1.0]])
    done = returns.add(np.array([0, 1]), ["x", "y"], rewards, np.array([False, False]))
    assert [(child, payload) for child, payload, _ in done] == [(0, "x"), (1, "y")]
    assert all(np.array_equal(ret, row) for (_, _, ret), row in zip(done, rewards))


def test_returns_are_kept_per_child() -> None:
    returns = PendingReturns(num_envs=2, horizon=2, discount=1.0)
    assert returns.add(np.array([0, 1]), ["a", "b"], np.array([[1.0], [5.0]]), np.array([False, False])) == []
    # Child 1 skips a step (it finished elsewhere): child 0's return completes alone.
    done = returns.add(np.array([0]), ["c"], np.array([[2.0]]), np.array([False]))
    assert [(child, payload, float(ret[0])) for child, payload, ret in done] == [(0, "a", 3.0)]


def test_episodic_credit_is_the_sign_against_the_other_childrens_mean() -> None:
    scores = np.array([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    np.testing.assert_array_equal(episodic_signs(scores), [[1, 0], [-1, 0], [0, 0]])
    np.testing.assert_array_equal(episodic_signs(np.array([[4.0]])), [[0.0]])  # no other child to compare with
    # A diverged child scores one below the others, not level with the worst: of two, it loses and the other wins.
    np.testing.assert_array_equal(episodic_signs(np.array([[0.2], [0.5]]), np.array([False, True])), [[1], [-1]])


def test_episodic_scores_rank_the_better_child_up_and_divergence_last() -> None:
    """Lower error is better: the child with the lowest final validation error gets +1, a diverged one -1 even
    where its last validation error was the best (it diverged afterwards)."""
    controller = ReinforceController(ReinforceConfig(episodic_weight=1.0, pair_credit=False), num_envs=3)
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    controller.begin(envs, seed=0)
    controller.begin_episode(envs)
    observations = np.zeros((3, 55, 24), dtype=np.float32)
    actions = np.ones((3, 55), dtype=np.int64)
    infos = {"final_val_metric": np.array([0.1, 0.3, 0.05]), "_final_val_metric": np.ones(3, bool),
             "val_metric": np.array([0.4, 0.2, 0.05]), "diverged": np.array([False, False, True]),
             "row_improvement": np.zeros((3, 55))}  # fmt: skip
    controller._track_run(np.arange(3), observations, actions, infos, np.ones(3, bool))
    assert controller.diverged.tolist() == [False, False, True]
    # The score is the full split's final metric, not the last subsample's (which orders 0 and 1 the other way).
    np.testing.assert_allclose(controller.scores[:, 0], [-0.1, -0.3, -0.05])
    signs = episodic_signs(controller.scores, controller.diverged)
    assert signs[0, 0] == 1 and signs[2, 0] == -1
    assert episodic_signs(controller.scores)[2, 0] == 1  # without the divergence rule its score would win
    # A child whose run was cut short has no final metric: its last subsample's stands in.
    controller._track_run(np.arange(3), observations, actions, {**infos, "_final_val_metric": np.array([True, False, True])},
                          np.ones(3, bool))  # fmt: skip
    np.testing.assert_allclose(controller.scores[:, 0], [-0.1, -0.2, -0.05])
    envs.close()


def test_pair_credit_scores_sum_each_pairs_improvement_over_the_run() -> None:
    """Under ``pair_credit`` a child's episodic score on a pair is the sum of that pair's improvements at every step
    of its run, not the last step's."""
    controller = ReinforceController(ReinforceConfig(episodic_weight=1.0), num_envs=2)
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    controller.begin(envs, seed=0)
    envs.close()
    observations, actions = np.zeros((2, 55, 24), dtype=np.float32), np.ones((2, 55), dtype=np.int64)
    improvements = [np.full((2, 55), 0.5), np.full((2, 55), -0.2)]
    for improvement, ended in zip(improvements, (False, True)):
        infos = {"row_improvement": improvement, "diverged": np.zeros(2, bool)}
        controller._track_run(np.arange(2), observations, actions, infos, np.full(2, ended))
    np.testing.assert_allclose(controller.scores, np.full((2, 55), 0.3))
    assert [len(decisions) for decisions in controller.decisions] == [2, 2]


@pytest.mark.parametrize(
    "config",
    [ReinforceConfig(return_horizon=2, discount=0.9), ReinforceConfig(episodic_weight=1.0),
     ReinforceConfig(episodic_weight=0.5, pair_credit=False, warmup_runs=1)],
    ids=["returns", "episodic", "mixed-warmup"],
)
def test_each_credit_trains_the_policy_end_to_end(config: ReinforceConfig, global_rng_unchanged) -> None:
    controller = ReinforceController(config, num_envs=2)
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    logs = []
    with global_rng_unchanged():
        records = controller.run(envs, seed=3, on_step=lambda step, entry: logs.append(entry))
    envs.close()
    assert len(records) == 2 and all(np.isfinite(r.test_metric) for r in records)
    start = ReinforceController(config, num_envs=2)
    start.begin(controller.make_envs("ALA-Digits-v0", **TINY), seed=3)
    moved = [not torch.equal(a, b) for a, b in zip(controller.policy.parameters(), start.policy.parameters())]
    assert any(moved), "the policy never changed"
    if config.episodic_weight:
        assert "episodic_loss" in logs[-1]
    if config.episodic_weight == 1.0:
        assert not any("policy_loss" in entry for entry in logs)  # no per-step update at all


def test_warmup_runs_train_on_other_children_before_the_recorded_run(monkeypatch) -> None:
    seeds = []
    original = ReinforceController.run_episode

    def spy(self, envs, seed, on_step=None):
        seeds.append(seed)
        return original(self, envs, seed, on_step)

    monkeypatch.setattr(ReinforceController, "run_episode", spy)
    controller = ala_gym.agents.CONTROLLERS["reinforce-multi"](num_envs=2, config=ReinforceConfig(warmup_runs=2))
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    controller.run(envs, seed=7)
    assert seeds == [7 + WARMUP_SEED_OFFSET, 7 + 2 * WARMUP_SEED_OFFSET, 7]
    # Frozen, the policy would learn nothing from them: the recorded run alone.
    seeds.clear()
    frozen = ala_gym.agents.CONTROLLERS["reinforce-multi"](num_envs=2, config=ReinforceConfig(warmup_runs=2), train=False)
    frozen.run(envs, seed=7)
    envs.close()
    assert seeds == [7]


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(return_horizon=0), "return_horizon must be an integer >= 1"), (dict(discount=0.0), "discount"),
     (dict(discount=1.5), "discount"), (dict(episodic_weight=1.5), "episodic_weight"),
     (dict(warmup_runs=-1), "warmup_runs must be an integer >= 0"),
     (dict(start_off_diagonal=1.5), "start_off_diagonal must be a finite number in \\[0, 1\\]"),
     (dict(start_off_diagonal=-0.1), "start_off_diagonal must be a finite number in \\[0, 1\\]"),
     (dict(baseline="mean"), "baseline must be one of")],
)  # fmt: skip
def test_bad_credit_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReinforceConfig(**kwargs)


def test_the_entropy_bonus_raises_the_policys_entropy() -> None:
    """With no advantage at all, REINFORCE's loss is the bonus alone: its steps make the policy less certain."""
    controller = ReinforceController(ReinforceConfig(entropy_coef=1.0, init_no_change=0.9), num_envs=1)
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    controller.begin(envs, seed=0)
    envs.close()
    states = torch.rand(8, 55, 24, generator=torch.Generator().manual_seed(0))
    chosen, advantages = torch.ones(8, 55, dtype=torch.long), torch.zeros(8, 55)
    with torch.no_grad():
        before = float(mean_entropy(controller.policy(states)))
    for _ in range(5):
        controller.optimizer.zero_grad()
        controller._policy_loss(states, chosen, advantages).backward()
        controller.optimizer.step()
    with torch.no_grad():
        assert float(mean_entropy(controller.policy(states))) > before


def test_mean_entropy_is_ln_3_for_a_uniform_policy_and_0_for_a_deterministic_one() -> None:
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 100.0, 0.0]]])  # one uniform pair, one deterministic
    torch.testing.assert_close(mean_entropy(logits), torch.tensor(np.log(3) / 2, dtype=torch.float32))
    torch.testing.assert_close(mean_entropy(logits[:, :1]), torch.tensor(np.log(3), dtype=torch.float32))


def test_the_policy_loss_is_minus_the_advantage_weighted_log_probability_over_the_movable_pairs() -> None:
    """REINFORCE's loss, recomputed pair by pair: ``-A log pi(a | s)`` averaged over the movable pairs (the held
    diagonal's 10 pairs of Digits left out) and the batch, minus ``entropy_coef`` times their mean entropy."""
    controller = ReinforceController(ReinforceConfig(entropy_coef=0.5), num_envs=1)
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    controller.begin(envs, seed=0)
    envs.close()
    generator = torch.Generator().manual_seed(0)
    states = torch.rand(4, 55, 24, generator=generator)
    chosen = torch.randint(3, (4, 55), generator=generator)
    advantages = torch.randn(4, 55, generator=generator)
    movable = controller.movable.numpy()
    assert movable.sum() == 45
    states[:, ~movable] *= 50.0  # the held pairs' distributions far from the others': leaving them out shows
    with torch.no_grad():
        loss = float(controller._policy_loss(states, chosen, advantages))
        probabilities = torch.softmax(controller.policy(states), -1).double().numpy()
    terms, entropies = [], []
    for b in range(4):
        for pair in np.flatnonzero(movable):
            p = probabilities[b, pair]
            terms.append(-float(advantages[b, pair]) * np.log(p[int(chosen[b, pair])]))
            entropies.append(-(p * np.log(p)).sum())
    assert loss == pytest.approx(np.mean(terms) - 0.5 * np.mean(entropies), rel=1e-5, abs=1e-6)


def _advantages_seen(config: ReinforceConfig, num_envs: int) -> tuple[ReinforceController, list, Callable]:
    """A controller ready to update, the advantages of each of its policy updates, and a decision
    ``(child, payload, return)`` of one state and action taken at a given step with a return on every pair."""
    controller = ReinforceController(config, num_envs=num_envs)
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    controller.begin(envs, seed=0)
    envs.close()
    seen, policy_loss = [], controller._policy_loss
    controller._policy_loss = lambda states, chosen, advantages: seen.append(advantages) or policy_loss(states, chosen, advantages)
    state, action = np.zeros((55, 24), dtype=np.float32), np.ones(55, dtype=np.int64)

    def decision(child: int, step: int, ret: float) -> tuple:
        return child, (state, action, state, step), np.full(55, ret)

    return controller, seen, decision


def test_the_leave_one_out_baseline_compares_decisions_of_the_same_step() -> None:
    """At a run's end each child's last ``return_horizon`` decisions complete at once: each is compared with the
    other children's decision of its own step, never with its own child's later return or another step's."""
    controller, seen, decision = _advantages_seen(ReinforceConfig(baseline="loo", return_horizon=2, replay_batch=0), 2)
    complete = [decision(0, 2, 0.0), decision(0, 3, -1.0), decision(1, 2, 2.0), decision(1, 3, 1.0)]
    controller._update_on_returns(complete, weight=1.0)
    torch.testing.assert_close(seen[-1][:, 0], torch.tensor([0.0 - 2.0, -1.0 - 1.0, 2.0 - 0.0, 1.0 + 1.0]))
    # A step that only one child took (the other had stopped) has no other child to compare with: the moving average.
    before = float(controller.baseline[0])
    controller._update_on_returns([decision(0, 4, 3.0)], weight=1.0)
    torch.testing.assert_close(seen[-1][:, 0], torch.tensor([3.0 - before]))


def test_the_moving_average_baseline_is_subtracted_then_follows_the_returns() -> None:
    """Under ``"ema"`` each update's advantage is the return minus the baseline as it stood (replayed transitions
    included), and afterwards the baseline moves ``baseline_rate`` of the way to the fresh returns' mean."""
    controller, seen, decision = _advantages_seen(ReinforceConfig(baseline="ema", baseline_rate=0.5, replay_batch=1), 1)
    controller._update_on_returns([decision(0, 0, 1.0)], weight=1.0)
    torch.testing.assert_close(seen[-1], torch.ones(1, 55))  # the baseline starts at 0
    np.testing.assert_allclose(controller.baseline, 0.5)
    controller._update_on_returns([decision(0, 1, -1.0)], weight=1.0)
    torch.testing.assert_close(seen[-1], torch.stack([torch.full((55,), -1.5), torch.full((55,), 0.5)]))  # fresh, replayed
    np.testing.assert_allclose(controller.baseline, -0.25)
    # Two children's fresh returns: the baseline moves towards their mean.
    controller, _, decision = _advantages_seen(ReinforceConfig(baseline="ema", baseline_rate=0.5, replay_batch=0), 2)
    controller._update_on_returns([decision(0, 0, 1.0), decision(1, 0, 3.0)], weight=1.0)
    np.testing.assert_allclose(controller.baseline, 1.0)


def test_each_update_scales_its_loss_by_its_weight_and_credits_each_child_its_own_sign() -> None:
    """A per-step update weighted ``w`` (``1 - episodic_weight``) takes ``w`` times REINFORCE's loss; the episodic
    update takes ``episodic_weight`` times the loss of every decision of the run, each credited with its own
    child's leave-one-out sign."""
    config = ReinforceConfig(episodic_weight=0.5, pair_credit=False, replay_batch=0)
    controller, seen, decision = _advantages_seen(config, 2)
    child, (state, action, _, _), ret = decision(0, 0, 1.0)
    states, chosen = torch.as_tensor(state[None]).float(), torch.as_tensor(action[None]).long()
    with torch.no_grad():
        expected = 0.5 * float(controller._policy_loss(states, chosen, torch.ones(1, 55)))
    seen.clear()  # the expectation's own call
    logs = controller._update_on_returns([(child, (state, action, state, 0), ret)], weight=0.5)
    assert logs["policy_loss"] == pytest.approx(expected, rel=1e-6)
    # Episodic: child 0 decided twice and ends better than child 1, which decided once.
    controller.decisions = [[(state, action), (state, action)], [(state, action)]]
    controller.scores, controller.diverged = np.array([[2.0] * 55, [1.0] * 55]), np.zeros(2, bool)
    states, chosen = torch.as_tensor(np.stack([state] * 3)).float(), torch.as_tensor(np.stack([action] * 3)).long()
    credit = torch.tensor([1.0, 1.0, -1.0])[:, None].expand(3, 55)
    with torch.no_grad():
        expected = 0.5 * float(controller._policy_loss(states, chosen, credit))
    seen.clear()
    logs = controller._update_on_run()
    torch.testing.assert_close(seen[-1], credit)
    assert logs["episodic_loss"] == pytest.approx(expected, rel=1e-6)


def test_replay_draws_uniformly_from_the_whole_memory_with_the_runs_generator() -> None:
    """Replayed transitions come from anywhere in the memory (not its oldest entries), drawn by the controller's
    own generator: the same seed replays the same transitions."""

    def draws(seed: int) -> list[int]:
        controller = ReinforceController(ReinforceConfig(replay_batch=4), num_envs=1)
        envs = controller.make_envs("ALA-Digits-v0", **TINY)
        controller.begin(envs, seed=seed)
        envs.close()
        assert controller._replay_sample() == []  # nothing to replay yet
        controller.memory.extend(Transition(torch.tensor(i), torch.tensor(0), torch.tensor(0.0), torch.tensor(i), None) for i in range(100))
        return [int(t.state) for _ in range(25) for t in controller._replay_sample()]

    drawn = draws(0)
    assert len(drawn) == 100 and len(set(drawn)) > 40 and max(drawn) >= 90 and min(drawn) < 10
    assert draws(0) == drawn and draws(1) != drawn
    # A memory smaller than the batch: a sample of its size, from every transition, the newest included.
    controller = ReinforceController(ReinforceConfig(replay_batch=4), num_envs=1)
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    controller.begin(envs, seed=0)
    envs.close()
    controller.memory.extend(
        Transition(torch.tensor(i), torch.tensor(0), torch.tensor(0.0), torch.tensor(i), None) for i in range(3)
    )
    samples = [[int(t.state) for t in controller._replay_sample()] for _ in range(20)]
    assert all(len(sample) == 3 for sample in samples) and {i for sample in samples for i in sample} == {0, 1, 2}


def test_a_child_that_finished_adds_nothing_until_the_next_run() -> None:
    """Once a child's episode ended, its later steps (the vector env's reset child) are not this run's: they add
    no transition to learn from; when every child has ended, learning stops until :meth:`begin_episode`."""
    controller = ReinforceController(ReinforceConfig(pair_credit=False), num_envs=2)
    envs = controller.make_envs("ALA-Digits-v0", **TINY)
    controller.begin(envs, seed=0)
    envs.close()
    observations, actions = np.zeros((2, 55, 24), dtype=np.float32), np.ones((2, 55), dtype=np.int64)
    infos = {"diverged": np.zeros(2, bool)}

    def step(dones: list[bool]) -> int:
        before = len(controller.memory)
        controller.learn(observations, actions, np.ones(2), observations, np.array(dones), infos)
        return len(controller.memory) - before

    assert [step([True, False]), step([False, False]), step([False, True]), step([False, False])] == [2, 1, 1, 0]
    controller.begin_episode(envs)
    assert step([False, False]) == 2
