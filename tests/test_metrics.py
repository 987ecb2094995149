"""Metrics, Eq. 7 confusion statistics, and the discounted metric of Eq. 4."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ala_gym.core.metrics import (
    METRICS,
    ClassificationEvaluator,
    accuracy,
    confusion_statistics,
    discounted_metric,
    error_rate,
    improvement,
    mean_nll,
)


def test_confusion_statistics_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    stats = confusion_statistics(logits, labels, 3).numpy()
    neg_log_probs = -torch.log_softmax(logits, dim=1).numpy()
    expected = np.stack(
        [
            (neg_log_probs[0] + neg_log_probs[1]) / 2,  # class 0: mean over its two samples
            neg_log_probs[2],
            np.full(3, math.log(3)),  # class 2 has no sample: the uniform prediction's value
        ]
    )
    np.testing.assert_allclose(stats, expected, rtol=1e-6)


def test_confusion_statistics_square() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 0, 1])
    stats = confusion_statistics(logits, labels, 2).numpy()
    # Class 0 rows: probabilities (1/4, 3/4) and (1/2, 1/2).
    expected = [
        [(math.log(4) + math.log(2)) / 2, (math.log(4 / 3) + math.log(2)) / 2],
        [math.log(4 / 3), math.log(4)],
    ]
    np.testing.assert_allclose(stats, expected, rtol=1e-6)


def test_error_rate_counts_non_finite_rows_as_wrong() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [float("nan"), 0.0], [float("inf"), 0.0]])
    labels = torch.tensor([0, 0, 1, 0])
    # Row 0 right, row 1 wrong, rows 2-3 non-finite: 3 wrong of 4 (argmax of the inf row is 0 = its label).
    assert float(error_rate(logits, labels)) == pytest.approx(0.75)
    assert float(error_rate(torch.full((3, 2), float("nan")), torch.zeros(3, dtype=torch.int64))) == 1.0


def test_classification_evaluator_packs_metric_direction_and_statistics() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 5, generator=generator), torch.randint(0, 5, (50,), generator=generator)
    for metric, fn, higher in (("error", error_rate, False), ("nll", mean_nll, False), ("accuracy", accuracy, True)):
        result = ClassificationEvaluator(5, metric)(logits, labels)
        assert result.metric == pytest.approx(float(fn(logits, labels)), rel=1e-6)
        assert result.higher_is_better is higher
        assert result.statistics["error"] == pytest.approx(float(error_rate(logits, labels)), rel=1e-6)
        assert result.loss == result.statistics["nll"] == pytest.approx(float(mean_nll(logits, labels)), rel=1e-6)
        np.testing.assert_allclose(result.confusion, confusion_statistics(logits, labels, 5).numpy(), rtol=1e-6)
        assert result.finite
    nan_row = logits.where(torch.arange(50)[:, None] != 3, torch.nan)
    assert not ClassificationEvaluator(5)(nan_row, labels).finite
    with pytest.raises(ValueError, match="accuracy"):
        ClassificationEvaluator(5, "auc")


def test_class_metric_of_accuracy_complements_error() -> None:
    generator = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(60, 4, generator=generator), torch.randint(0, 4, (60,), generator=generator)
    error, right = (ClassificationEvaluator(4, m)(logits, labels) for m in ("error", "accuracy"))
    np.testing.assert_allclose(right.class_metric, 1.0 - error.class_metric, atol=1e-7)
    assert right.metric == pytest.approx(1.0 - error.metric, abs=1e-7)


def test_improvement_follows_the_direction() -> None:
    assert improvement(0.3, 0.2, METRICS["error"].higher_is_better) == pytest.approx(0.1)
    assert improvement(0.7, 0.8, METRICS["accuracy"].higher_is_better) == pytest.approx(0.1)
    assert improvement(1.0, 2.0, METRICS["nll"].higher_is_better) == -1.0
    assert METRICS["accuracy"].worst == 0.0 and METRICS["error"].worst == 1.0


def test_discounted_metric() -> None:
    gamma = 0.9
    values, offsets = [0.5, 0.3, 0.2], [20, 10, 0]
    weights = np.array([gamma**20, gamma**10, 1.0])
    assert discounted_metric(values, offsets, gamma) == pytest.approx(float(weights @ values / weights.sum()))
    assert discounted_metric([0.4], [0], gamma) == pytest.approx(0.4)
    assert discounted_metric([0.2, 0.6], [5, 5], gamma) == pytest.approx(0.4)  # equal offsets: plain mean
    assert discounted_metric([1.0, 0.0], [1, 0], 1.0) == pytest.approx(0.5)
