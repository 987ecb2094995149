"""The classification task of ALA: a symmetric Phi of Eq. 6, one row per unordered class pair."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ala_gym.core.losses import PhiLoss, check_phi, class_pairs, matrix_to_pairs, pairs_to_matrix
from ala_gym.core.metrics import Evaluation
from ala_gym.envs.task import LossTask

CONFUSION_CLIP = 10.0  # bound of the normalised confusion statistics (C / log(num_classes))
STEP_SCALINGS = ("row", "entry")


@dataclass(frozen=True)
class ClassPairSettings:
    """How actions move Phi and which form of Eq. 6 it enters (validated by the env that builds them)."""

    num_classes: int
    beta: float
    loss_form: str
    sigmoid_temperature: float
    negative_floor: float | None
    fixed_diagonal: bool = True
    step_scaling: str = "row"

    def step_sizes(self) -> np.ndarray:
        """How far one action moves each pair's entry (the order of ``class_pairs``).

        Off-diagonal entries move by ``beta / (C - 1)`` under ``step_scaling="row"`` (so ``beta`` bounds how
        much one step changes a row's off-diagonal mass, whatever the class count) or by ``beta`` under
        ``"entry"`` (the paper as printed); diagonal entries by ``beta``, or not at all under ``fixed_diagonal``.
        """
        pairs = class_pairs(self.num_classes)
        diagonal = pairs[:, 0] == pairs[:, 1]
        off = self.beta / max(self.num_classes - 1, 1) if self.step_scaling == "row" else self.beta
        return np.where(diagonal, 0.0 if self.fixed_diagonal else self.beta, off)


class ClassPairTask(LossTask):
    """Phi of Eq. 6 as one value per class pair; features from the Eq. 7 confusion statistics.

    Row ``p`` is the pair ``(i, j) = class_pairs(C)[p]``: its value is ``Phi(i, j) = Phi(j, i)`` (in
    ``[-1, 1]``), its statistics ``[C_ij, C_ji]`` of Eq. 7 divided by ``log C`` (the value of a uniform
    prediction), and its credit the metric on the validation samples of classes ``i`` and ``j``.
    """

    bounds = (-1.0, 1.0)
    statistics_bound = CONFUSION_CLIP

    def __init__(
        self, settings: ClassPairSettings, phi_init: np.ndarray, device: torch.device, val_class_counts: np.ndarray
    ) -> None:
        self.settings = settings
        self.num_classes = settings.num_classes
        self.pairs = class_pairs(settings.num_classes)
        self.step_sizes = settings.step_sizes()
        self.pair_weights = pair_weights(self.pairs, np.asarray(val_class_counts, dtype=np.float64))
        self.initial_values = matrix_to_pairs(phi_init)
        self.values = self.initial_values.copy()
        # Phi changes are copied into the loss's tensor (PhiLoss.set_phi), so the loss is never rebuilt.
        phi = torch.tensor(phi_init, dtype=torch.float32, device=device)
        self.loss: PhiLoss = PhiLoss(phi, settings.loss_form, settings.sigmoid_temperature, settings.negative_floor)

    def phi_of_values(self, values: np.ndarray) -> np.ndarray:
        """The ``C x C`` Phi (symmetric, entries in [-1, 1])."""
        return pairs_to_matrix(values, self.num_classes)

    def phi_checker(self) -> Callable[[Any], np.ndarray]:
        return partial(check_pair_phi, num_classes=self.num_classes)

    def set_values(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.loss.set_phi(pairs_to_matrix(self.values, self.num_classes))

    def row_statistics(self, evaluation: Evaluation) -> np.ndarray:
        """``[C_ij, C_ji]`` per pair, normalised by ``log C``."""
        normalised = np.clip(evaluation.confusion / np.log(self.num_classes), 0.0, CONFUSION_CLIP)
        rows, cols = self.pairs[:, 0], self.pairs[:, 1]
        return np.stack([normalised[rows, cols], normalised[cols, rows]], axis=1)

    def row_metric(self, evaluation: Evaluation) -> np.ndarray:
        return self.pair_weights @ evaluation.class_metric

    def info(self, evaluation: Evaluation) -> dict[str, Any]:
        return {"confusion": evaluation.confusion, "soft_labels": evaluation.statistics["soft_labels"]}  # phi: the episode's


def check_pair_phi(value: Any, num_classes: int) -> np.ndarray:
    """A user-given Phi checked (``ala_gym.core.losses.check_phi``) and read as one value per class pair."""
    return matrix_to_pairs(check_phi(value, num_classes))


def pair_weights(pairs: np.ndarray, class_counts: np.ndarray) -> np.ndarray:
    """``[n_pairs, C]`` weights that turn a per-class metric into the metric on the samples of each pair's
    two classes: ``(n_i m_i + n_j m_j) / (n_i + n_j)`` for ``(i, j)``, ``m_i`` for ``(i, i)``."""
    weights = np.zeros((len(pairs), len(class_counts)))
    rows = np.arange(len(pairs))
    total = np.maximum(class_counts[pairs[:, 0]] + class_counts[pairs[:, 1]], 1.0)
    diagonal = pairs[:, 0] == pairs[:, 1]
    weights[rows, pairs[:, 0]] = np.where(diagonal, 1.0, class_counts[pairs[:, 0]] / total)
    weights[rows[~diagonal], pairs[~diagonal, 1]] = class_counts[pairs[~diagonal, 1]] / total[~diagonal]
    return weights
