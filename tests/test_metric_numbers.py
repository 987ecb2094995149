"""Metric learning on small hand-made embeddings with known answers: distances and gradients at coinciding
points, pair means in row blocks and on sets without positive or negative pairs, the mixture on a miner that
draws nothing, Recall@k with non-finite embeddings and at a k outside the default levels, the focal Phi's range,
and the metric-learning task's clipped statistics and diverged-child scores (the env itself: test_metric_env.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ala_gym.core.metric_learning import (
    MIXTURE_EPS,
    DistanceMixtureLoss,
    FocalDistanceLoss,
    RetrievalEvaluator,
    mixture_terms,
    pair_means,
    pairwise_distances,
    retrieval_hits,
)
from ala_gym.core.metrics import Evaluation
from ala_gym.envs.metric_learning import TERMS_CLIP, EmbeddingLossTask

SQRT2 = float(np.sqrt(2.0))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _square() -> torch.Tensor:
    """Four unit vectors 90 degrees apart: neighbours at sqrt(2), opposite points at 2."""
    return torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def _on_circle(degrees: list[float]) -> torch.Tensor:
    radians = np.radians(degrees)
    return torch.tensor(np.stack([np.cos(radians), np.sin(radians)], axis=1), dtype=torch.float32)


# ---------------------------------------------------------------- distances and losses


@pytest.mark.parametrize("loss", [DistanceMixtureLoss, FocalDistanceLoss])
def test_exactly_coinciding_embeddings_have_finite_gradients(loss: type) -> None:
    # Basis vectors normalise exactly, so 2 - 2 <q, q> is exactly 0 on the diagonal and within each class,
    # where the square root has no finite derivative. The floor's square root, 1e-4, rounds to either float32
    # neighbour of 1e-4 depending on the CPU's sqrt, so the bound leaves room beyond it.
    embeddings = torch.eye(3).repeat_interleave(2, dim=0).requires_grad_(True)
    labels = torch.arange(3).repeat_interleave(2)
    distances = pairwise_distances(embeddings.detach())
    assert float(distances[0, 1]) < 1e-3 and float(distances[0, 2]) == pytest.approx(SQRT2)
    value = loss()(embeddings, labels)
    (gradient,) = torch.autograd.grad(value, embeddings)
    assert torch.isfinite(value) and torch.all(torch.isfinite(gradient))
    if loss is DistanceMixtureLoss:  # at init: d+^2 = 0 and every negative at sqrt(2)
        assert float(value.detach()) == pytest.approx(0.5 / (SQRT2 + MIXTURE_EPS), rel=1e-5)


@pytest.mark.parametrize("block", [1, 2, 3, 4, 512])
def test_pair_means_in_row_blocks_exclude_each_items_own_pair(block: int) -> None:
    # Ordered positive pairs (0, 1), (1, 0), (2, 3), (3, 2) are all sqrt(2) apart; of the 8 negative pairs
    # half are sqrt(2) and half 2 apart. An item paired with itself (distance ~0) would lower the positive mean.
    means = pair_means(_square(), torch.tensor([0, 0, 1, 1]), lambda d: d[None], block=block)
    np.testing.assert_allclose(means.numpy(), [[SQRT2, 1 + SQRT2 / 2]], rtol=1e-6)


def test_pair_means_of_a_set_without_positive_or_negative_pairs_is_zero_there() -> None:
    # Every item has one neighbour at 2 and two at sqrt(2) apart.
    mean_distance = (2 + 2 * SQRT2) / 3

    def distance(d: torch.Tensor) -> torch.Tensor:
        return d[None]

    no_positive = pair_means(_square(), torch.tensor([0, 1, 2, 3]), distance, block=2)
    no_negative = pair_means(_square(), torch.tensor([0, 0, 0, 0]), distance, block=2)
    np.testing.assert_allclose(no_positive.numpy(), [[0.0, mean_distance]], rtol=1e-6)
    np.testing.assert_allclose(no_negative.numpy(), [[mean_distance, 0.0]], rtol=1e-6)
    # The losses' statistics stay finite observations on such a set.
    terms = DistanceMixtureLoss().terms(_square(), torch.tensor([0, 1, 2, 3])).numpy()
    assert np.all(terms[:, 0] == 0.0) and np.all(np.isfinite(terms))
    expected = mixture_terms(torch.tensor([SQRT2, SQRT2, 2.0])).mean(dim=1).numpy()
    np.testing.assert_allclose(terms[:, 1], expected, rtol=1e-5)
    focal = FocalDistanceLoss().terms(_square(), torch.tensor([0, 0, 0, 0])).numpy()
    np.testing.assert_allclose(focal, [[mean_distance, 0.0], [0.0, mean_distance]], rtol=1e-6)


def test_mixture_on_a_miner_that_draws_no_triplet_is_a_zero_with_a_graph() -> None:
    def no_triplets(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty

    embeddings = _square().requires_grad_(True)
    value = DistanceMixtureLoss(miner=no_triplets)(embeddings, torch.tensor([0, 0, 1, 1]))
    (gradient,) = torch.autograd.grad(value, embeddings)  # the optimiser's backward pass still works
    assert float(value.detach()) == 0.0 and torch.equal(gradient, torch.zeros_like(gradient))


# ---------------------------------------------------------------- Recall@k


def test_non_finite_embeddings_neither_take_neighbour_slots_nor_count_as_hits() -> None:
    # Item 2 diverged. Cosine similarities of the others: 0 -> 3 is 0, 0 -> 1 is -0.98, 1 -> 3 is 0.2,
    # so the finite ranking is 0: [3, 1], 1: [3, 0], 3: [1, 0] (3 has no finite item of its class).
    embeddings = torch.tensor([[1.0, 0.0], [-1.0, 0.2], [float("nan"), float("nan")], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    hits = retrieval_hits(embeddings, labels, ks=(1, 2, 3))
    expected = [[False, True, True], [False, True, True], [False, False, False], [False, False, False]]
    np.testing.assert_array_equal(hits.numpy(), expected)
    evaluation = RetrievalEvaluator(2, k=2)(embeddings, labels)
    assert evaluation.metric == evaluation.statistics["recall@2"] == 0.5


def test_evaluator_at_a_k_outside_the_default_levels_reports_it() -> None:
    # Angles 0, 10, 15, 80, 105, 115 degrees: the first neighbour of the query's class is at rank 2, 3, 2, 4, 1, 1.
    embeddings = _on_circle([0, 10, 15, 80, 105, 115])
    labels = torch.tensor([1, 0, 1, 0, 1, 1])
    evaluation = RetrievalEvaluator(3, k=3)(embeddings, labels)
    recalls = {k: evaluation.statistics[f"recall@{k}"] for k in (1, 2, 3, 4, 8)}
    assert recalls == pytest.approx({1: 2 / 6, 2: 4 / 6, 3: 5 / 6, 4: 1.0, 8: 1.0})
    assert evaluation.metric == pytest.approx(5 / 6)
    np.testing.assert_allclose(evaluation.class_metric, [0.5, 1.0, 0.0])  # Recall@3 per class; class 2 absent


# ---------------------------------------------------------------- Phi bounds


def test_focal_phi_range_must_start_above_zero() -> None:
    for phi_min, phi_max in [(0.0, 16.0), (-1.0, 16.0), (2.0, 2.0)]:
        with pytest.raises(ValueError, match="need 0 < phi_min < phi_max"):
            FocalDistanceLoss(phi_min=phi_min, phi_max=phi_max)
    assert FocalDistanceLoss(phi_min=0.5, phi_max=8.0).phi.tolist() == [4.0, 4.0]


# ---------------------------------------------------------------- the env task's statistics and scores


def _focal_task() -> EmbeddingLossTask:
    return EmbeddingLossTask("focal", "focal", "margin", 0.1, None, torch.device("cpu"))


def test_row_statistics_are_clipped_to_the_observation_bound() -> None:
    terms = np.array([[12.0, 3.0], [-0.5, TERMS_CLIP + 0.5]])
    evaluation = Evaluation(metric=0.5, higher_is_better=True, statistics={"terms": terms})
    np.testing.assert_array_equal(_focal_task().row_statistics(evaluation), [[TERMS_CLIP, 3.0], [0.0, TERMS_CLIP]])


def test_test_recalls_of_a_diverged_child_are_zero() -> None:
    task = _focal_task()
    assert task.final_info(None) == {f"test_recall@{k}": 0.0 for k in (1, 2, 4, 8)}
    recalls = {f"recall@{k}": k / 10 for k in (1, 2, 4, 8)}
    evaluation = Evaluation(metric=0.1, higher_is_better=True, statistics=recalls)
    assert task.final_info(evaluation) == {f"test_{key}": value for key, value in recalls.items()}
