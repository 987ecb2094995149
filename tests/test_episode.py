"""The episode rules and the class-pair features on made-up evaluations, without training: Eq. 4's discounting
over a step's evaluations, Eq. 5's sign reward of its improvement, the evaluation schedule's offsets, divergence
through a non-finite evaluation alone, and each pair's Eq. 7 features and credit. The env tests meet these rules through real children, where ``eval_points=1`` or an
improvement's sign alone would hide a wrong weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ala_gym.core.metrics import Evaluation
from ala_gym.envs.class_pairs import ClassPairSettings, ClassPairTask
from ala_gym.envs.episode import Episode, EpisodeSettings
from ala_gym.envs.task import LossTask


class OneRowTask(LossTask):
    """One loss parameter in [-1, 1]; its statistics are the evaluation's metric twice."""

    statistics_bound = 1.0

    def __init__(self) -> None:
        self.initial_values = np.zeros(1)
        self.step_sizes = np.full(1, 0.1)
        self.bounds = (-1.0, 1.0)
        self.loss = lambda outputs, labels: outputs.sum()
        self.values = self.initial_values.copy()

    def set_values(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64)

    def row_statistics(self, evaluation: Evaluation) -> np.ndarray:
        return np.full((1, 2), evaluation.metric)

    def row_metric(self, evaluation: Evaluation) -> np.ndarray:
        return np.full(1, evaluation.metric)

    def info(self, evaluation: Evaluation) -> dict:
        return {}


def error(value: float, loss: float = 0.5) -> Evaluation:
    return Evaluation(metric=value, higher_is_better=False, statistics={"nll": loss})


def episode(**rules) -> Episode:
    settings = dict(total_iterations=100, steps_per_action=10, reward="sign", gamma=0.9, eval_points=2,
                    eval_stride=5, history=2, divergence_penalty=-5.0)  # fmt: skip
    return Episode(EpisodeSettings(**{**settings, **rules}), OneRowTask(), higher_is_better=False, worst=1.0)


def test_the_schedule_weights_the_step_end_most() -> None:
    """Two evaluations 5 iterations apart ending at the step's last iteration: offsets K - j of 5, then 0."""
    assert episode().settings.schedule(0) == [(5, 5), (5, 0)]
    assert episode(eval_points=3, eval_stride=3).settings.schedule(0) == [(4, 6), (3, 3), (3, 0)]
    assert episode().settings.schedule(95) == [(5, 0)]  # the last step is cut to the budget: one evaluation left


def test_the_reward_is_the_sign_of_the_discounted_metric_improvement() -> None:
    """Eq. 4: M = (0.9^5 * 0.5 + 0.9^0 * 0.3) / (0.9^5 + 1); the step's reward is the sign of M_prev - M (an error
    rate), and ``val_metric_discounted`` reports M."""
    run = episode(reward="raw")
    run.begin(error(0.6), 0)
    run.apply_action(np.array([1]))
    assert run.plan(0) == [5, 5]
    for index, value in enumerate((0.5, 0.3)):
        assert run.record_chunk(index, 1.0, error(value))
    _, reward, terminated, info = run.finish(10)
    discounted = (0.9**5 * 0.5 + 0.3) / (0.9**5 + 1)
    assert info["val_metric_discounted"] == pytest.approx(discounted)
    assert reward == pytest.approx(0.6 - discounted) and not terminated
    # Each row's credit is discounted the same way over the step's evaluations (not the last one alone).
    np.testing.assert_allclose(info["row_improvement"], [0.6 - discounted])
    # The next step improves on M, not on the last evaluation (0.3): an error of 0.33 both times is still a gain.
    signed = episode()
    signed.begin(error(0.6), 0)
    for step, values in enumerate(((0.5, 0.3), (0.33, 0.33), (0.4, 0.4))):
        signed.apply_action(np.array([1]))
        signed.plan(10 * step)
        for index, value in enumerate(values):
            signed.record_chunk(index, 1.0, error(value))
        _, reward, _, _ = signed.finish(10 * (step + 1))
        assert reward == [1.0, 1.0, -1.0][step]


def test_a_non_finite_evaluation_alone_ends_the_episode_with_the_penalty() -> None:
    """A finite training loss with a NaN validation statistic is divergence: the penalty, the episode ends, and
    the final metrics are the worst values without evaluating."""
    run = episode()
    run.begin(error(0.6), 0)
    run.apply_action(np.array([1]))
    run.plan(0)
    assert run.record_chunk(0, 1.0, error(0.5)) is True
    assert run.record_chunk(1, 1.0, error(0.4, loss=float("nan"))) is False
    _, reward, terminated, info = run.finish(10)
    assert reward == -5.0 and terminated and info["diverged"]
    final = run.final_metrics(lambda split: pytest.fail(f"a diverged child was evaluated on {split}"))
    assert final["test_metric"] == final["final_val_metric"] == 1.0 and final["final_val_loss"] == float("inf")


def test_a_diverged_step_reports_the_worst_metric_and_infinite_losses_never_nan() -> None:
    """What loggers and records read of a diverged step: a NaN metric (an NLL) as the metric's worst value, NaN
    losses as inf."""
    run = episode()
    run.begin(error(0.6), 0)
    run.apply_action(np.array([1]))
    run.plan(0)
    run.record_chunk(0, float("nan"), error(float("nan"), loss=float("nan")))
    _, reward, _, info = run.finish(5)
    assert reward == -5.0 and info["diverged"]
    assert info["val_metric"] == 1.0 and info["val_loss"] == info["train_loss"] == float("inf")


def test_a_model_non_finite_on_validation_from_the_start_observes_the_bound_and_starts_from_the_worst() -> None:
    """Outputs that are NaN on some validation inputs before any training (a log of an input, say) give NaN
    statistics: the first observation holds the statistics' bound instead, the metric to improve on is the
    worst value, and the step that follows (still NaN) ends with the penalty."""
    run = episode()
    observation, info = run.begin(error(float("nan"), loss=float("nan")), 0)
    assert np.isfinite(observation).all() and (observation[:, :4] == OneRowTask.statistics_bound).all()
    assert info["val_metric"] == 1.0 and info["val_loss"] == float("inf")
    run.apply_action(np.array([1]))
    run.plan(0)
    run.record_chunk(0, 1.0, error(0.5))
    _, reward, terminated, _ = run.finish(5)  # against the worst value (1.0): an improvement
    assert reward == 1.0 and not terminated


def test_a_step_after_a_start_at_an_infinite_worst_value_gains_nothing() -> None:
    """Under the NLL the worst value is inf: the first finite step after such a start measures no gain (reward 0,
    row credit 0) rather than an infinite one; the step after it is measured against the finite value."""
    run = Episode(episode(reward="raw").settings, OneRowTask(), higher_is_better=False, worst=float("inf"))
    run.begin(error(float("nan"), loss=float("nan")), 0)
    rewards = []
    for step, value in enumerate((0.5, 0.4)):
        run.apply_action(np.array([1]))
        run.plan(10 * step)
        for index in range(2):
            run.record_chunk(index, 1.0, error(value))
        _, reward, _, info = run.finish(10 * (step + 1))
        rewards.append((reward, float(info["row_improvement"][0])))
    assert rewards[0] == (0.0, 0.0) and rewards[1] == (pytest.approx(0.1), pytest.approx(0.1))


def test_a_non_finite_full_validation_split_gives_an_infinite_final_loss() -> None:
    """A child whose reward subsample stayed finite but whose full validation split holds a non-finite output ends
    with a final validation loss of inf, not NaN."""
    run = episode()
    run.begin(error(0.6), 0)
    final = run.final_metrics(lambda split: error(0.25, loss=float("nan")))
    assert final["final_val_metric"] == 0.25 and final["final_val_loss"] == float("inf")


def test_a_non_finite_training_loss_alone_stops_the_step() -> None:
    """A NaN training loss ends the step at that evaluation even where the evaluation still looks finite: the
    rest of the step's training would be spent on a broken model."""
    run = episode()
    run.begin(error(0.6), 0)
    run.apply_action(np.array([1]))
    run.plan(0)
    assert run.record_chunk(0, float("nan"), error(0.5)) is False
    _, reward, terminated, info = run.finish(5)
    assert reward == -5.0 and terminated and info["diverged"]


def test_a_step_out_of_order_is_refused_by_name() -> None:
    """An action before ``begin()`` or after the episode ended, and ``finish()`` with no evaluation recorded since
    the action (whose training loss would be 0 / 0), each name the call that was missing."""
    run = episode()
    ended = r"^the episode has ended \(or never started\): begin\(\) one before apply_action\(\)$"
    with pytest.raises(RuntimeError, match=ended):
        run.apply_action(np.array([1]))
    run.begin(error(0.6), 0)
    run.apply_action(np.array([1]))
    with pytest.raises(RuntimeError, match=r"^finish\(\) needs at least one record\(\) since apply_action\(\)$"):
        run.finish(0)
    run.plan(0)
    run.record_chunk(0, float("nan"), error(0.5))
    assert run.finish(5)[2]  # diverged: the episode ended
    with pytest.raises(RuntimeError, match=ended):
        run.apply_action(np.array([1]))


def test_a_finished_childs_non_finite_final_metric_scores_the_worst_value() -> None:
    """A child that never diverged can still end with a non-finite metric (an NLL that overflowed on the test
    split): it scores the worst value, as a diverged child does, not NaN; a finite metric is reported as it is."""
    run = episode()
    run.begin(error(0.6), 0)
    final = run.final_metrics(lambda split: error(float("nan")) if split == "test" else error(0.25, loss=0.7))
    assert final["test_metric"] == 1.0 and final["final_val_metric"] == 0.25 and final["final_val_loss"] == 0.7


def test_the_observation_holds_the_history_oldest_first_and_the_change_from_a_moving_average() -> None:
    """Each row: the last ``history`` statistics, oldest first; their relative change from a moving average of
    rate 0.1 (positive when they rose); the task's value; progress. ``train_loss`` is the mean per iteration."""
    run = episode(total_iterations=200)  # progress moves at half the value's pace: the two columns differ
    run.begin(error(0.6), 0)
    observations = []
    for step, (first, last) in enumerate(((0.5, 0.4), (0.35, 0.3))):
        run.apply_action(np.array([2]))
        run.plan(10 * step)
        run.record_chunk(0, 1.0, error(first))
        run.record_chunk(1, 3.0, error(last))
        observation, _, _, info = run.finish(10 * (step + 1))
        observations.append(observation[0])
        assert info["train_loss"] == pytest.approx(0.4)  # 4.0 over 10 iterations
    np.testing.assert_allclose(observations[0][:4], [0.6, 0.6, 0.4, 0.4], rtol=1e-6)
    np.testing.assert_allclose(observations[0][4:6], [(0.4 - 0.6) / 0.6] * 2, rtol=1e-5)
    average = 0.6 + 0.1 * (0.4 - 0.6)
    np.testing.assert_allclose(observations[1][:4], [0.4, 0.4, 0.3, 0.3], rtol=1e-6)
    np.testing.assert_allclose(observations[1][4:6], [(0.3 - average) / average] * 2, rtol=1e-5)
    np.testing.assert_allclose(observations[1][6:], [0.2, 0.1], rtol=1e-6)  # two steps of 0.1; 20 of 200 iterations


def test_the_change_column_is_clipped_at_ten_the_observation_spaces_bound() -> None:
    """A statistic far above its moving average (0.9 against 0.01: a relative change of 89) is observed as a change
    of 10, the bound the observation space declares."""
    from ala_gym.envs.base import episode_spaces

    run = episode()
    run.begin(error(0.01), 0)
    run.apply_action(np.array([1]))
    run.plan(0)
    for index in range(2):
        run.record_chunk(index, 1.0, error(0.9))
    observation, _, _, _ = run.finish(10)
    np.testing.assert_array_equal(observation[0, 4:6], [10.0, 10.0])
    observation_space = episode_spaces(run.settings, run.task)[0]
    assert observation_space.high[0, 4] == 10.0 and observation_space.contains(observation)


def test_class_pair_features_are_the_pairs_confusion_statistics_over_log_c() -> None:
    """Row (i, j) sees ``[C_ij, C_ji] / log C`` of Eq. 7 (clipped at 10), and its credit is the error on the
    samples of classes i and j, weighted by their counts."""
    settings = ClassPairSettings(num_classes=3, beta=0.1, loss_form="linear", sigmoid_temperature=1.0, negative_floor=None)
    task = ClassPairTask(settings, np.eye(3), torch.device("cpu"), val_class_counts=np.array([10.0, 30.0, 60.0]))
    confusion = np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 40.0], [0.6, 0.7, 0.8]])
    evaluation = Evaluation(0.3, False, {"confusion": confusion}, class_metric=np.array([0.1, 0.2, 0.4]))
    log_c = np.log(3)
    assert task.pairs.tolist() == [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 2]]
    expected = np.array([[0.1, 0.1], [0.5, 0.2], [0.9, 0.6], [0.3, 0.3], [min(40.0 / log_c, 10.0) * log_c, 0.7],
                         [0.8, 0.8]]) / log_c  # fmt: skip
    np.testing.assert_allclose(task.row_statistics(evaluation), expected)
    np.testing.assert_allclose(task.row_metric(evaluation), [0.1, (10 * 0.1 + 30 * 0.2) / 40, (10 * 0.1 + 60 * 0.4) / 70,
                                                             0.2, (30 * 0.2 + 60 * 0.4) / 90, 0.4])  # fmt: skip


def test_an_adopted_record_gives_the_sources_next_reward() -> None:
    """A child that takes another's weights takes its record of the run too: the next step's reward, per-row credit
    and observation are those the source would get."""
    source, target = episode(), episode()
    source.begin(error(0.2), 0)
    target.begin(error(0.9), 0)
    target.adopt(source)
    results = []
    for run in (source, target):
        run.apply_action(np.array([1]))
        run.plan(0)
        for index, value in enumerate((0.5, 0.25)):
            run.record_chunk(index, 1.0, error(value))
        results.append(run.finish(10))
    (obs_a, reward_a, _, info_a), (obs_b, reward_b, _, info_b) = results
    assert reward_a == reward_b == -1.0  # worse than the source's 0.2; the target's own 0.9 would give +1
    np.testing.assert_array_equal(obs_a[:, :-2], obs_b[:, :-2])  # history and change; the row's value is each task's
    assert info_a["val_metric_discounted"] == info_b["val_metric_discounted"]
    np.testing.assert_array_equal(info_a["row_improvement"], info_b["row_improvement"])  # the per-row credit too


def test_a_pair_of_two_classes_absent_from_the_validation_subsample_gets_no_credit() -> None:
    """Pair (0, 1) has no validation sample: its weights are 0, not 0 / 0, so its credit is 0 and finite; a pair with
    one present class is that class's metric, and a diagonal pair is its class's metric whatever the count."""
    from ala_gym.envs.class_pairs import pair_weights

    pairs = np.array([[0, 0], [0, 1], [0, 2], [2, 2]])
    weights = pair_weights(pairs, np.array([0.0, 0.0, 5.0]))
    np.testing.assert_array_equal(weights, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])


def test_a_pairs_credit_weighs_its_classes_by_their_counts_in_the_validation_subsample() -> None:
    """The per-pair credit weighs the two classes of a pair by how many of the images the reward is measured on
    (the validation subsample, not the whole split) belong to each."""
    import gymnasium as gym

    from ala_gym.envs.class_pairs import pair_weights

    env = gym.make("ALA-Digits-v0", val_subsample=50, device="cpu").unwrapped
    env.reset(seed=0)
    counts = np.bincount(env.val_eval.labels.numpy(), minlength=10)
    assert counts.sum() == 50 and not np.allclose(counts / 50, np.bincount(env.data.val.labels.numpy()) / len(env.data.val))
    np.testing.assert_array_equal(env.val_class_counts, counts)
    np.testing.assert_allclose(env.episode.task.pair_weights, pair_weights(env.episode.task.pairs, counts.astype(np.float64)))
    env.close()
