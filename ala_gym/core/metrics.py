"""Evaluators: a metric with its direction and named statistics, computed on the device in one pass.

An evaluator turns a model's outputs on a split into an :class:`Evaluation`: the metric the episode's
reward (Eqs. 4-5) is built on, whether higher is better, and named statistics for observations and
logs. Only scalars and small ``C x C`` arrays go back to the host.

:class:`ClassificationEvaluator` serves the classification tasks (metrics ``"error"``, ``"nll"``,
``"accuracy"``, ``"aucpr"``; statistics ``"error"``, ``"nll"``, ``"confusion"`` (Eq. 7)) and the per-class
metric the per-pair credit is computed from. A metric that needs more than logits and labels (Recall@k
over embeddings) is another :class:`Evaluator` returning its own named statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn import functional as F


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Right top-1 predictions. A row with a non-finite logit counts as wrong (a diverged model is not right
    by accident)."""
    return (logits.argmax(dim=1) == labels) & torch.isfinite(logits).all(dim=1)


def error_rate(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 error (non-finite rows count as wrong)."""
    return 1.0 - _correct(logits, labels).float().mean()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy (non-finite rows count as wrong)."""
    return _correct(logits, labels).float().mean()


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the predictions (the usual "validation loss")."""
    return F.cross_entropy(logits, labels)


def average_precision_per_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One-vs-rest average precision of each class (``[C]``), exact, from the softmax scores; NaN for a class
    absent from ``labels``. All zeros if any logit is non-finite (a diverged child ranks nothing).

    torchmetrics' ``multiclass_average_precision`` (``thresholds=None``: every distinct score is a threshold,
    as scikit-learn's ``average_precision_score``). The scores are passed as probabilities, always: given
    raw outputs, torchmetrics applies the softmax only when some value lies outside [0, 1], and the softmax
    reorders a class's scores across samples, so logits of an untrained model (all within [0, 1]) would be
    ranked differently from the same model's probabilities. Double precision keeps the scores' order and the
    sums exact to the tests' 1e-6 against scikit-learn; for a validation subsample of 1,000 images it costs
    milliseconds, once per evaluation.
    """
    # Imported here: torchmetrics takes seconds to import, and only the AUCPR metric needs it.
    from torchmetrics.functional.classification import multiclass_average_precision

    finite = torch.isfinite(logits).all()
    scores = torch.softmax(torch.where(finite, logits, torch.zeros_like(logits)).double(), dim=1)
    per_class = multiclass_average_precision(scores, labels, logits.shape[1], average="none", validate_args=False)
    return torch.where(finite, per_class, torch.zeros_like(per_class)).float()


def aucpr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AUCPR: average precision one-vs-rest, macro mean over the classes present in ``labels``.

    torchmetrics' ``average="macro"`` drops an absent class with a warning; the mean is taken here over the
    same classes, silently (a small validation split may miss a class, and the envs' checks treat warnings
    as errors). 0 (the worst value) for non-finite logits.
    """
    per_class = average_precision_per_class(logits, labels)
    present = torch.bincount(labels, minlength=logits.shape[1]) > 0
    return torch.where(present, per_class, torch.zeros_like(per_class)).sum() / present.sum().clamp_min(1)


@dataclass(frozen=True)
class Metric:
    """A classification metric of logits and labels, with its direction."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    higher_is_better: bool
    worst: float
    """The value a diverged child scores (its test and final validation metric)."""


def improvement(old: Any, new: Any, higher_is_better: bool) -> Any:
    """How much ``new`` is better than ``old`` under a metric's direction (positive = better), for scalars
    or arrays alike."""
    return new - old if higher_is_better else old - new


METRICS = {
    "error": Metric(error_rate, higher_is_better=False, worst=1.0),
    "nll": Metric(mean_nll, higher_is_better=False, worst=float("inf")),
    "accuracy": Metric(accuracy, higher_is_better=True, worst=0.0),
    "aucpr": Metric(aucpr, higher_is_better=True, worst=0.0),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {sorted(METRICS)}")
    return METRICS[name]


def confusion_statistics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 7: ``C[i, j]`` = mean over validation samples of class ``i`` of ``-log f_j(x)``.

    Classes absent from ``labels`` get a row of ``log(num_classes)`` (the uniform prediction's value).
    """
    neg_log_probs = -F.log_softmax(logits.float(), dim=1)
    sums = torch.zeros(num_classes, num_classes, device=logits.device).index_add_(0, labels, neg_log_probs)
    counts = torch.bincount(labels, minlength=num_classes).float()
    stats = sums / counts.clamp_min(1.0)[:, None]
    return torch.where(counts[:, None] > 0, stats, torch.full_like(stats, float(np.log(num_classes))))


def correct_soft_labels(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``S[i]`` = mean predicted distribution over the samples of class ``i`` that the model classifies
    correctly (the soft labels of online label smoothing, Zhang et al., IEEE TIP 2021); a class with no
    correct sample gets its one-hot row."""
    probs = F.softmax(logits.float(), dim=1)
    correct = (probs.argmax(dim=1) == labels).float()
    sums = torch.zeros(num_classes, num_classes, device=logits.device).index_add_(0, labels, probs * correct[:, None])
    counts = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, correct)
    one_hot = torch.eye(num_classes, device=logits.device)
    return torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], one_hot)


def class_metric(logits: torch.Tensor, labels: torch.Tensor, confusion: torch.Tensor, metric: str) -> torch.Tensor:
    """The metric restricted to each class (``[C]``): per-class error or accuracy, per-class NLL (the diagonal
    of the Eq. 7 statistics), or for ``"aucpr"`` each class's one-vs-rest average precision, which ranks all
    samples. Classes absent from ``labels`` get 0 (NLL: ``log C``)."""
    if metric == "nll":
        return torch.diagonal(confusion)
    num_classes = confusion.shape[0]
    if metric == "aucpr":
        return torch.nan_to_num(average_precision_per_class(logits, labels), nan=0.0)
    hits = _correct(logits, labels).float()
    hits = hits if metric == "accuracy" else 1.0 - hits
    sums = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, hits)
    return sums / torch.bincount(labels, minlength=num_classes).clamp_min(1).float()


@dataclass
class Evaluation:
    """One evaluation of a model on a split, on the host: the metric and its direction, named statistics,
    and the metric per class (what the per-pair credit of the envs is computed from)."""

    metric: float
    higher_is_better: bool
    statistics: dict[str, Any] = field(default_factory=dict)
    """Named statistics; classification: ``"error"``, ``"nll"`` (floats), ``"confusion"`` (``C x C``, Eq. 7) and
    ``"soft_labels"`` (``C x C``, :func:`correct_soft_labels`)."""
    class_metric: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def loss(self) -> float:
        """The loss on the split: cross-entropy (``statistics["nll"]``) in classification, ``statistics["loss"]``
        where an evaluator names its own; NaN where the evaluator computes none."""
        return self.statistics.get("nll", self.statistics.get("loss", float("nan")))

    @property
    def confusion(self) -> np.ndarray:
        """Eq. 7 statistics (``statistics["confusion"]``)."""
        return self.statistics["confusion"]

    @property
    def finite(self) -> bool:
        return all(bool(np.all(np.isfinite(value))) for value in self.statistics.values())


class Evaluator(Protocol):
    """Outputs and labels of a split in, :class:`Evaluation` out."""

    higher_is_better: bool
    worst: float
    """The metric's worst value: what a diverged child scores."""

    # Positional-only: an evaluator names the outputs as it likes (logits, embeddings).
    def __call__(self, outputs: torch.Tensor, labels: torch.Tensor, /) -> Evaluation: ...


class ClassificationEvaluator:
    """Metric ``metric`` (a key of :data:`METRICS`), error, cross-entropy, Eq. 7 statistics and the per-class
    metric of ``num_classes``-way logits, with a single device-to-host copy."""

    def __init__(self, num_classes: int, metric: str = "error") -> None:
        self.num_classes, self.name, self.metric = num_classes, metric, get_metric(metric)
        self.higher_is_better, self.worst = self.metric.higher_is_better, self.metric.worst

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> Evaluation:
        num_classes = self.num_classes
        confusion = confusion_statistics(logits, labels, num_classes)
        scalars = torch.stack([self.metric.fn(logits, labels), error_rate(logits, labels), mean_nll(logits, labels)])
        per_class = class_metric(logits, labels, confusion, self.name)
        soft_labels = correct_soft_labels(logits, labels, num_classes)
        packed = torch.cat([scalars, confusion.flatten(), soft_labels.flatten(), per_class]).double().cpu().numpy()
        squared = num_classes * num_classes
        return Evaluation(
            metric=float(packed[0]),
            higher_is_better=self.higher_is_better,
            statistics={
                "error": float(packed[1]),
                "nll": float(packed[2]),
                "confusion": packed[3 : 3 + squared].reshape(num_classes, num_classes),
                "soft_labels": packed[3 + squared : 3 + 2 * squared].reshape(num_classes, num_classes),
            },
            class_metric=packed[3 + 2 * squared :],
        )


def discounted_metric(values: list, offsets: list[int], gamma: float) -> Any:
    """Eq. 4 over the evaluated iterations: weights ``gamma^(K - j)`` normalised to sum to one.

    ``offsets`` are ``K - j`` for each evaluated iteration ``j``; ``values`` are scalars (a float comes
    back) or equal-shaped arrays, such as per-class metrics (an array comes back). Normalising keeps ``M`` on the metric's
    scale; the sign reward of Eq. 5 is unchanged by it.
    """
    weights = np.power(gamma, np.asarray(offsets, dtype=np.float64))
    discounted = np.tensordot(weights, np.asarray(values, dtype=np.float64), axes=1) / weights.sum()
    return float(discounted) if np.ndim(discounted) == 0 else discounted
