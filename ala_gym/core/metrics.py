"""Evaluators: a metric with its direction and named statistics, computed on the device in one pass.

An evaluator turns a model's outputs on a split into an :class:`Evaluation`: the metric the episode's
reward (Eqs. 4-5) is built on, whether higher is better, and named statistics for observations and
logs. Only scalars and small ``C x C`` arrays go back to the host.

The classification functions take logits ``[..., S, C]`` and the split's labels ``[S]``: leading dimensions
are models evaluated on the same split (the batched children), and every result keeps them, so N children
cost one pass of each kernel and one host copy (:meth:`ClassificationEvaluator.evaluate_many`) instead of N.

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


def _class_major(logits: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., S, C]`` as a view ``[..., C, S]``: reductions over ten classes run many times faster on a
    CPU along a middle dimension than along the last one, and the stacked forwards of the batched children
    give their outputs in this layout (:mod:`ala_gym.core.batched`), so the view is contiguous there."""
    return logits.transpose(-1, -2)


def _predicted(logits: torch.Tensor) -> torch.Tensor:
    """The top-1 class ``[..., S]``, the first of tied maxima (as ``argmax``)."""
    return _class_major(logits).max(dim=-2).indices


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Right top-1 predictions ``[..., S]``. A row with a non-finite logit counts as wrong (a diverged model is
    not right by accident)."""
    return (_predicted(logits) == labels) & torch.isfinite(_class_major(logits)).all(dim=-2)


def error_rate(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 error (non-finite rows count as wrong)."""
    return 1.0 - _correct(logits, labels).float().mean(-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy (non-finite rows count as wrong)."""
    return _correct(logits, labels).float().mean(-1)


def _neg_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``-log_softmax`` over the classes, ``[..., S, C]``."""
    return -F.log_softmax(_class_major(logits.float()), dim=-2).transpose(-1, -2)


def _nll(neg_log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of each sample's ``-log p_y`` over the samples: ``[...]``."""
    return neg_log_probs.gather(-1, labels.expand(neg_log_probs.shape[:-1]).unsqueeze(-1)).mean((-2, -1))


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the predictions (the usual "validation loss")."""
    return _nll(_neg_log_probs(logits), labels)


def average_precision_per_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One-vs-rest average precision of each class (``[C]``), exact, from the softmax scores; NaN for a class
    absent from ``labels``. Zero for every other class if any logit is non-finite (a diverged child ranks nothing).

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

    if logits.dim() > 2:  # torchmetrics ranks one model's scores at a time
        return torch.stack([average_precision_per_class(model_logits, labels) for model_logits in logits])
    finite = torch.isfinite(logits).all()
    scores = torch.softmax(torch.where(finite, logits, torch.zeros_like(logits)).double(), dim=1)
    per_class = multiclass_average_precision(scores, labels, logits.shape[1], average="none", validate_args=False)
    per_class = torch.where(finite, per_class, torch.zeros_like(per_class))
    # torchmetrics gives NaN for an absent class, but -0.0 for the second of two: set here, whatever it gives.
    present = class_counts(labels, logits.shape[1]) > 0
    return torch.where(present, per_class, torch.full_like(per_class, float("nan"))).float()


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many of ``labels`` fall in each of ``num_classes`` classes, as floats (exact below 2**24), on the labels'
    device: ``torch.bincount`` would read the labels' range back to the host first, a wait on a GPU at every
    evaluation."""
    ones = torch.ones_like(labels, dtype=torch.float32)
    return ones.new_zeros(num_classes).index_add_(0, labels, ones)


def macro_over_present(per_class: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean of ``per_class`` (``[..., C]``) over the classes present in ``labels``; 0 where none is."""
    present = class_counts(labels, per_class.shape[-1]) > 0
    return torch.where(present, per_class, torch.zeros_like(per_class)).sum(-1) / present.sum().clamp_min(1)


def aucpr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AUCPR: average precision one-vs-rest, macro mean over the classes present in ``labels``.

    torchmetrics' ``average="macro"`` drops an absent class with a warning; the mean is taken here over the
    same classes, silently (a small validation split may miss a class, and the envs' checks treat warnings
    as errors). 0 (the worst value) for non-finite logits.
    """
    return macro_over_present(average_precision_per_class(logits, labels), labels)


@dataclass(frozen=True)
class Metric:
    """A classification metric of logits and labels, with its direction."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    higher_is_better: bool
    worst: float
    """The value a diverged child scores (its test and final validation metric)."""


def finite_or(value: float, fallback: float) -> float:
    """``value``, or ``fallback`` where it is NaN or infinite: what a diverged child reports in place of NaN."""
    return float(value) if np.isfinite(value) else fallback


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


def confusion_statistics(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int, neg_log_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 7: ``C[i, j]`` = mean over validation samples of class ``i`` of ``-log f_j(x)`` (``[..., C, C]``).

    Classes absent from ``labels`` get a row of ``log(num_classes)`` (the uniform prediction's value).
    ``neg_log_probs``, ``-log_softmax(logits)`` where the caller has it already, saves computing it again.
    """
    if neg_log_probs is None:
        neg_log_probs = _neg_log_probs(logits)
    sums = neg_log_probs.new_zeros(*neg_log_probs.shape[:-2], num_classes, num_classes)
    sums.index_add_(-2, labels, neg_log_probs)
    counts = class_counts(labels, num_classes)
    stats = sums / counts.clamp_min(1.0)[:, None]
    return torch.where(counts[:, None] > 0, stats, torch.full_like(stats, float(np.log(num_classes))))


def correct_soft_labels(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``S[i]`` = mean predicted distribution over the samples of class ``i`` that the model classifies
    correctly (the soft labels of online label smoothing, Zhang et al., IEEE TIP 2021); a class with no
    correct sample gets its one-hot row. ``[..., C, C]``."""
    probs = F.softmax(_class_major(logits.float()), dim=-2).transpose(-1, -2)
    correct = (_predicted(probs) == labels).float()
    sums = probs.new_zeros(*probs.shape[:-2], num_classes, num_classes).index_add_(-2, labels, probs * correct[..., None])
    counts = correct.new_zeros(*correct.shape[:-1], num_classes).index_add_(-1, labels, correct)
    one_hot = torch.eye(num_classes, device=logits.device)
    return torch.where(counts[..., None] > 0, sums / counts.clamp_min(1.0)[..., None], one_hot)


def class_metric(
    logits: torch.Tensor, labels: torch.Tensor, confusion: torch.Tensor, metric: str, correct: torch.Tensor | None = None
) -> torch.Tensor:
    """The metric restricted to each class (``[..., C]``): per-class error or accuracy, per-class NLL (the
    diagonal of the Eq. 7 statistics), or for ``"aucpr"`` each class's one-vs-rest average precision, which
    ranks all samples. Classes absent from ``labels`` get 0 (NLL: ``log C``). ``correct``, the caller's
    ``_correct(logits, labels)``, saves computing it again."""
    if metric == "nll":
        return torch.diagonal(confusion, dim1=-2, dim2=-1)
    num_classes = confusion.shape[-1]
    if metric == "aucpr":
        return torch.nan_to_num(average_precision_per_class(logits, labels), nan=0.0)
    hits = (_correct(logits, labels) if correct is None else correct).float()
    hits = hits if metric == "accuracy" else 1.0 - hits
    sums = hits.new_zeros(*hits.shape[:-1], num_classes).index_add_(-1, labels, hits)
    return sums / class_counts(labels, num_classes).clamp_min(1)


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
    """Outputs and labels of a split in, :class:`Evaluation` out.

    An evaluator may also define ``evaluate_many(outputs, labels)``, the outputs of N models stacked along a
    first dimension in, N evaluations out (as :meth:`ClassificationEvaluator.evaluate_many`); the batched
    children are then evaluated by one call (:func:`evaluate_models`) instead of one per child.
    """

    higher_is_better: bool
    worst: float
    """The metric's worst value: what a diverged child scores."""

    # Positional-only: an evaluator names the outputs as it likes (logits, embeddings).
    def __call__(self, outputs: torch.Tensor, labels: torch.Tensor, /) -> Evaluation: ...


def evaluate_models(evaluator: Evaluator, outputs: torch.Tensor, labels: torch.Tensor) -> list[Evaluation]:
    """One :class:`Evaluation` per model of ``outputs`` (stacked along the first dimension) on one split: by the
    evaluator's ``evaluate_many`` where it has one, else one call per model."""
    many = getattr(evaluator, "evaluate_many", None)
    if many is not None:
        return many(outputs, labels)
    return [evaluator(model_outputs, labels) for model_outputs in outputs]


class ClassificationEvaluator:
    """Metric ``metric`` (a key of :data:`METRICS`), error, cross-entropy, Eq. 7 statistics and the per-class
    metric of ``num_classes``-way logits, with a single device-to-host copy (one for several models, too:
    :meth:`evaluate_many`)."""

    def __init__(self, num_classes: int, metric: str = "error") -> None:
        self.num_classes, self.name, self.metric = num_classes, metric, get_metric(metric)
        self.higher_is_better, self.worst = self.metric.higher_is_better, self.metric.worst

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> Evaluation:
        return self.evaluate_many(logits.unsqueeze(0), labels)[0]

    def evaluate_many(self, logits: torch.Tensor, labels: torch.Tensor) -> list[Evaluation]:
        """One :class:`Evaluation` per model of logits ``[N, S, C]`` on the same split (labels ``[S]``): what N
        calls compute, by N-wide kernels and one device-to-host copy."""
        num_classes = self.num_classes
        neg_log_probs = _neg_log_probs(logits)
        confusion = confusion_statistics(logits, labels, num_classes, neg_log_probs)
        correct = _correct(logits, labels)
        # What error_rate, accuracy and mean_nll compute, from the predictions and log-probabilities in hand.
        hit_rate, nll = correct.float().mean(-1), _nll(neg_log_probs, labels)
        known = {"error": 1.0 - hit_rate, "accuracy": hit_rate, "nll": nll}
        per_class = class_metric(logits, labels, confusion, self.name, correct)
        if self.name == "aucpr":  # the macro mean of the per-class values: the scores are ranked once per class
            metric = macro_over_present(per_class, labels)
        else:
            metric = known[self.name] if self.name in known else self.metric.fn(logits, labels)
        scalars = torch.stack([metric, known["error"], nll], dim=1)
        soft_labels = correct_soft_labels(logits, labels, num_classes)
        packed = torch.cat([scalars, confusion.flatten(1), soft_labels.flatten(1), per_class], dim=1)
        return [self._unpack(row) for row in packed.double().cpu().numpy()]

    def _unpack(self, packed: np.ndarray) -> Evaluation:
        num_classes = self.num_classes
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
    scale, so that steps evaluated at different iterations compare: the first step's ``M_0`` (the initial model, one
    evaluation) against a weighted mean of several, and a shortened last step. Between two steps with the same
    evaluation offsets the sign reward of Eq. 5 is the same with or without it.
    """
    weights = np.power(gamma, np.asarray(offsets, dtype=np.float64))
    discounted = np.tensordot(weights, np.asarray(values, dtype=np.float64), axes=1) / weights.sum()
    return float(discounted) if np.ndim(discounted) == 0 else discounted
