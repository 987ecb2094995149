"""Evaluation metrics (lower is better) and the validation confusion statistics of Eq. 7.

Everything is computed on the device from one pass over the logits; only scalars and the ``C x C``
statistics go back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F


def error_rate(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 error. A row with a non-finite logit counts as wrong (a diverged model is not right by accident)."""
    correct = (logits.argmax(dim=1) == labels) & torch.isfinite(logits).all(dim=1)
    return 1.0 - correct.float().mean()


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the predictions (the usual "validation loss")."""
    return F.cross_entropy(logits, labels)


METRICS = {"error": error_rate, "nll": mean_nll}
WORST = {"error": 1.0, "nll": float("inf")}
"""The value a metric gives a diverged child (its test and final validation metric)."""


def confusion_statistics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 7: ``C[i, j]`` = mean over validation samples of class ``i`` of ``-log f_j(x)``.

    Classes absent from ``labels`` get a row of ``log(num_classes)`` (the uniform prediction's value).
    """
    neg_log_probs = -F.log_softmax(logits.float(), dim=1)
    sums = torch.zeros(num_classes, num_classes, device=logits.device).index_add_(0, labels, neg_log_probs)
    counts = torch.bincount(labels, minlength=num_classes).float()
    stats = sums / counts.clamp_min(1.0)[:, None]
    return torch.where(counts[:, None] > 0, stats, torch.full_like(stats, float(np.log(num_classes))))


def class_metric(logits: torch.Tensor, labels: torch.Tensor, confusion: torch.Tensor, metric: str) -> torch.Tensor:
    """The metric restricted to each class's samples (``[C]``): per-class error, or per-class NLL, which is
    the diagonal of the Eq. 7 statistics. Classes absent from ``labels`` get the error 0 (NLL: ``log C``)."""
    if metric == "nll":
        return torch.diagonal(confusion)
    num_classes = confusion.shape[0]
    wrong = 1.0 - ((logits.argmax(dim=1) == labels) & torch.isfinite(logits).all(dim=1)).float()
    sums = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, wrong)
    return sums / torch.bincount(labels, minlength=num_classes).clamp_min(1).float()


@dataclass
class Evaluation:
    """One evaluation of a model on a split: host-side scalars, the ``C x C`` confusion statistics and the
    metric per class (what the per-pair credit of the envs is computed from)."""

    metric: float
    loss: float
    confusion: np.ndarray
    class_metric: np.ndarray

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.loss) and np.all(np.isfinite(self.confusion)))


def summarize(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, metric: str = "error") -> Evaluation:
    """Metric, cross-entropy and confusion statistics of ``logits``, with a single device-to-host copy."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
    confusion = confusion_statistics(logits, labels, num_classes)
    scalars = torch.stack([METRICS[metric](logits, labels), mean_nll(logits, labels)])
    per_class = class_metric(logits, labels, confusion, metric)
    packed = torch.cat([scalars, confusion.flatten(), per_class]).double().cpu().numpy()
    squared = num_classes * num_classes
    return Evaluation(
        metric=float(packed[0]),
        loss=float(packed[1]),
        confusion=packed[2 : 2 + squared].reshape(num_classes, num_classes),
        class_metric=packed[2 + squared :],
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
