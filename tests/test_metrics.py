"""Metrics, Eq. 7 confusion statistics, and the discounted metric of Eq. 4."""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ala_gym.core.metrics import (
    METRICS,
    ClassificationEvaluator,
    Evaluation,
    accuracy,
    aucpr,
    average_precision_per_class,
    class_metric,
    confusion_statistics,
    correct_soft_labels,
    discounted_metric,
    error_rate,
    evaluate_models,
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
        soft_labels = correct_soft_labels(logits, labels, 5).numpy()
        np.testing.assert_allclose(result.statistics["soft_labels"], soft_labels, rtol=1e-6)
        assert result.finite
    nan_row = logits.where(torch.arange(50)[:, None] != 3, torch.nan)
    assert not ClassificationEvaluator(5)(nan_row, labels).finite
    with pytest.raises(ValueError, match="accuracy"):
        ClassificationEvaluator(5, "auc")


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_evaluate_many_gives_each_models_own_evaluation(metric: str) -> None:
    """The batched children's validation pass: N models at once give what N calls give, bit for bit on the
    same layout (the stacked forwards' class-major view) and to float rounding on a contiguous copy; a
    diverged model and a class absent from the split included."""
    generator = torch.Generator().manual_seed(3)
    class_major = 3 * torch.randn(4, 6, 300, generator=generator)  # [N, C, S], as the stacked forwards give
    class_major[2, :, 7] = torch.nan  # one sample of model 2 diverged
    labels = torch.randint(0, 5, (300,), generator=generator)  # class 5 never occurs
    logits = class_major.transpose(1, 2)
    evaluator = ClassificationEvaluator(6, metric)
    together = evaluator.evaluate_many(logits, labels)
    assert len(together) == 4
    for index, (model, evaluation) in enumerate(zip(logits, together)):
        for alone, exact in ((evaluator(model, labels), True), (evaluator(model.contiguous(), labels), False)):
            check = np.testing.assert_array_equal if exact else partial(np.testing.assert_allclose, rtol=1e-6)
            check(alone.metric, evaluation.metric)
            check(alone.class_metric, evaluation.class_metric)
            for name, value in alone.statistics.items():
                check(value, evaluation.statistics[name])
        assert evaluation.finite is (index != 2)
        if index != 2:
            assert evaluation.loss == pytest.approx(float(F.cross_entropy(model, labels)), rel=1e-6)
            assert evaluation.statistics["error"] == pytest.approx(float((model.argmax(1) != labels).float().mean()))


def test_evaluate_models_calls_evaluate_many_where_an_evaluator_has_it() -> None:
    """Stacked outputs go to an evaluator's ``evaluate_many`` in one call; one without it is called per model."""
    generator = torch.Generator().manual_seed(4)
    outputs, labels = torch.randn(3, 40, 5, generator=generator), torch.randint(0, 5, (40,), generator=generator)
    calls = []

    class PerModel:
        higher_is_better, worst = False, 1.0

        def __call__(self, model_outputs: torch.Tensor, split_labels: torch.Tensor, /) -> Evaluation:
            calls.append(model_outputs.shape)
            return ClassificationEvaluator(5)(model_outputs, split_labels)

    class Together(PerModel):
        def evaluate_many(self, stacked: torch.Tensor, split_labels: torch.Tensor) -> list[Evaluation]:
            calls.append(stacked.shape)
            return ClassificationEvaluator(5).evaluate_many(stacked, split_labels)

    per_model = evaluate_models(PerModel(), outputs, labels)
    assert calls == [torch.Size([40, 5])] * 3
    calls.clear()
    together = evaluate_models(Together(), outputs, labels)
    assert calls == [torch.Size([3, 40, 5])]
    assert [e.metric for e in together] == [e.metric for e in per_model]
    assert [e.metric for e in together] == [float(error_rate(model, labels)) for model in outputs]


def test_class_metric_of_accuracy_complements_error() -> None:
    generator = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(60, 4, generator=generator), torch.randint(0, 4, (60,), generator=generator)
    error, right = (ClassificationEvaluator(4, m)(logits, labels) for m in ("error", "accuracy"))
    np.testing.assert_allclose(right.class_metric, 1.0 - error.class_metric, atol=1e-7)
    assert right.metric == pytest.approx(1.0 - error.metric, abs=1e-7)


@pytest.mark.parametrize("metric", ["error", "accuracy", "nll"])
def test_class_metric_by_hand_with_an_absent_class(metric: str) -> None:
    """Each class's error or accuracy on its own samples, and its NLL (the Eq. 7 diagonal); a class absent from the
    split scores 0 (NLL: ``log C``), not NaN."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])  # predictions 0, 1, 0, 2: class 0 half right, class 1 all wrong, class 2 absent
    neg_log_probs = -torch.log_softmax(logits, dim=1).numpy()
    nll = [neg_log_probs[[0, 1], 0].mean(), neg_log_probs[[2, 3], 1].mean(), math.log(3)]
    expected = {"error": [0.5, 1.0, 0.0], "accuracy": [0.5, 0.0, 0.0], "nll": nll}[metric]
    np.testing.assert_allclose(ClassificationEvaluator(3, metric)(logits, labels).class_metric, expected, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_a_metrics_worst_value_is_no_better_than_any_finite_models(name: str) -> None:
    """``worst``, what a diverged child scores, lies at the bad end of the metric's range: a model guessing at random
    beats it, and a model confidently wrong on every sample does not do worse."""
    generator = torch.Generator().manual_seed(5)
    logits, labels = torch.randn(40, 4, generator=generator), torch.randint(0, 4, (40,), generator=generator)
    wrong = 30.0 * F.one_hot((labels + 1) % 4, 4).float()
    metric = METRICS[name]
    assert improvement(metric.worst, float(metric.fn(logits, labels)), metric.higher_is_better) > 0
    assert improvement(metric.worst, float(metric.fn(wrong, labels)), metric.higher_is_better) >= 0


@pytest.mark.parametrize("seed", range(4))
def test_aucpr_agrees_with_scikit_learn(seed: int) -> None:
    from sklearn.metrics import average_precision_score

    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(400, 10, generator=generator) * 3
    logits[:100] = logits[:100].round()  # tied scores: every distinct score is one threshold in both
    labels = torch.randint(0, 10, (400,), generator=generator)
    scores = torch.softmax(logits.double(), dim=1).numpy()
    expected = [average_precision_score(labels.numpy() == c, scores[:, c]) for c in range(10)]
    np.testing.assert_allclose(average_precision_per_class(logits, labels).numpy(), expected, atol=1e-6)
    assert float(aucpr(logits, labels)) == pytest.approx(float(np.mean(expected)), abs=1e-6)
    result = ClassificationEvaluator(10, "aucpr")(logits, labels)
    assert result.higher_is_better and result.metric == pytest.approx(float(np.mean(expected)), abs=1e-6)
    np.testing.assert_allclose(result.class_metric, expected, atol=1e-6)


def test_aucpr_ranks_probabilities_even_when_logits_lie_in_unit_range() -> None:
    # Logits within [0, 1] must not be ranked as if they were probabilities: the softmax reorders them.
    logits = torch.tensor([[0.9, 0.0, 0.8], [0.5, 0.0, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 0.9]])
    labels = torch.tensor([1, 0, 1, 2])
    probabilities = torch.softmax(logits, dim=1)
    assert logits[:, 0].argsort().tolist() != probabilities[:, 0].argsort().tolist()
    torch.testing.assert_close(
        average_precision_per_class(logits, labels), average_precision_per_class(probabilities.log(), labels)
    )


def test_aucpr_of_non_finite_logits_is_the_worst_value_and_an_absent_class_is_left_out() -> None:
    generator = torch.Generator().manual_seed(7)
    logits, labels = torch.randn(60, 4, generator=generator), torch.randint(0, 3, (60,), generator=generator)
    per_class = average_precision_per_class(logits, labels)
    assert torch.isnan(per_class[3]) and torch.isfinite(per_class[:3]).all()  # class 3 has no sample
    # Two classes, the second absent: torchmetrics alone gives -0.0 there (with a warning), not NaN.
    with pytest.warns(UserWarning, match="No positive samples"):
        assert torch.isnan(average_precision_per_class(logits[:, :2], torch.zeros(60, dtype=torch.int64))[1])
    assert torch.isnan(average_precision_per_class(torch.full((60, 4), torch.nan), labels)[3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchmetrics' own macro average warns about the absent class
        assert float(aucpr(logits, labels)) == pytest.approx(float(per_class[:3].mean()), abs=1e-7)
        assert class_metric(logits, labels, confusion_statistics(logits, labels, 4), "aucpr")[3] == 0.0
    broken = logits.where(torch.arange(60)[:, None] != 5, torch.inf)
    assert float(aucpr(broken, labels)) == METRICS["aucpr"].worst == 0.0
    assert float(aucpr(torch.full((60, 4), torch.nan), labels)) == 0.0
    assert not ClassificationEvaluator(4, "aucpr")(broken, labels).finite  # the envs' divergence check


def test_improvement_follows_the_direction() -> None:
    assert improvement(0.3, 0.2, METRICS["error"].higher_is_better) == pytest.approx(0.1)
    assert improvement(0.7, 0.8, METRICS["accuracy"].higher_is_better) == pytest.approx(0.1)
    assert improvement(1.0, 2.0, METRICS["nll"].higher_is_better) == -1.0
    assert METRICS["accuracy"].worst == 0.0 and METRICS["error"].worst == 1.0
    assert METRICS["aucpr"].higher_is_better and improvement(0.6, 0.7, METRICS["aucpr"].higher_is_better) == pytest.approx(0.1)


def test_discounted_metric() -> None:
    gamma = 0.9
    values, offsets = [0.5, 0.3, 0.2], [20, 10, 0]
    weights = np.array([gamma**20, gamma**10, 1.0])
    assert discounted_metric(values, offsets, gamma) == pytest.approx(float(weights @ values / weights.sum()))
    assert discounted_metric([0.4], [0], gamma) == pytest.approx(0.4)
    assert discounted_metric([0.2, 0.6], [5, 5], gamma) == pytest.approx(0.4)  # equal offsets: plain mean
    assert discounted_metric([1.0, 0.0], [1, 0], 1.0) == pytest.approx(0.5)


def test_correct_soft_labels_average_the_correct_predictions_of_each_class() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 0, 0, 1])  # sample 2 (class 0) is wrong, sample 3 (class 1) is wrong, class 2 absent
    soft = correct_soft_labels(logits, labels, 3)
    probs = torch.softmax(logits, dim=1)
    torch.testing.assert_close(soft[0], (probs[0] + probs[1]) / 2)
    torch.testing.assert_close(soft[1], torch.tensor([0.0, 1.0, 0.0]))  # no correct sample: one-hot
    torch.testing.assert_close(soft[2], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(soft.sum(dim=1), torch.ones(3))


def test_an_evaluation_works_under_a_double_default_dtype() -> None:
    """A caller's ``torch.set_default_dtype(torch.float64)`` changes no count of labels (float32, as before)."""
    logits = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30) % 3
    expected = ClassificationEvaluator(3)(logits, labels)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        evaluation = ClassificationEvaluator(3)(logits, labels)
    finally:
        torch.set_default_dtype(default)
    assert evaluation.metric == expected.metric and np.array_equal(evaluation.confusion, expected.confusion)
