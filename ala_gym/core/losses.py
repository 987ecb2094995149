"""The adaptive classification loss of ALA (Eq. 6) and its class-pair parameterisation.

Eq. 6 as printed (taken from L2T-DLF) is ``l = -sigmoid(y^T Phi log f(y|x))``. The paper also states
that Phi = I reduces it to cross-entropy, which holds only without the sigmoid: ``l = -y^T Phi log f``.
The two forms train differently (``benchmarks/results/fashion-mnist/table.md``: the sigmoid form at
identity, ``phi-identity-sigmoid``, against cross-entropy, ``ce``). ALA is meant to start from the
cross-entropy baseline, so the default form is
``"linear"``; ``"sigmoid"`` keeps the printed form, with an optional temperature dividing its
argument (one public re-implementation divided by sqrt(C) against saturation). ``"cross_entropy"``
ignores Phi and calls ``F.cross_entropy``: the plain baseline, run through the same machinery.
``"auc_pairwise"`` ignores Phi too: :func:`pairwise_auc_loss`, the pairwise AUC-ROC surrogate that the
paper's AUCPR comparison (Table 2) sets beside cross-entropy.

A negative entry ``Phi(y, j)`` rewards pushing ``log f_j`` towards minus infinity: Eq. 6 is then
unbounded below (linear form) or saturates once that term dominates (sigmoid form), and training
drives the logits towards infinity. ``negative_floor`` (default 1e-3) therefore stops the reward of a
negative entry once ``f_j < negative_floor``: for entries with ``Phi(y, j) < 0`` the loss uses
``max(log f_j, log negative_floor)``. Entries >= 0, and so Phi = I, are untouched; ``negative_floor=None``
gives Eq. 6 exactly as printed.

Cost: the linear form is a cross-entropy against the soft targets ``Phi[y]``, so :class:`PhiLoss` computes it
with torch's fused cross-entropy kernel wherever that is exact: ``F.cross_entropy(logits, labels)`` at
Phi = I, ``F.cross_entropy(logits, Phi[y])`` when no entry is negative (or without a floor), and the
floored log-softmax only otherwise. Which one applies is decided when Phi is set
(:meth:`PhiLoss.set_phi`, from the host copy), never per iteration, so the training loop does not wait
on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

from ala_gym.core.checks import as_numbers

LOSS_FORMS = ("linear", "sigmoid", "cross_entropy", "auc_pairwise")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ParamLoss(Protocol):
    """A loss with its own parameters (Phi, the weights of a linear loss, ...).

    Called as ``loss(logits, labels)`` it uses :attr:`params`; :meth:`functional` takes them as an
    argument, which is what the N-children trainer vmaps over (one parameter tensor per child).
    """

    params: torch.Tensor

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def functional(self, logits: torch.Tensor, labels: torch.Tensor, params: torch.Tensor) -> torch.Tensor: ...


def phi_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    phi: torch.Tensor,
    form: str = "linear",
    temperature: float = 1.0,
    negative_floor: float | None = 1e-3,
) -> torch.Tensor:
    """Mean Eq. 6 loss over a batch: rows ``Phi[y]`` weight the log-probabilities of every class."""
    if form == "cross_entropy":
        return F.cross_entropy(logits, labels)
    if form == "auc_pairwise":
        return pairwise_auc_loss(logits, labels)
    weights, log_probs = phi[labels], F.log_softmax(logits, dim=1)
    if negative_floor is not None:
        log_probs = torch.where(weights < 0, log_probs.clamp_min(float(np.log(negative_floor))), log_probs)
    weighted = (weights * log_probs).sum(dim=1)  # y^T Phi log f(y|x)
    if form == "linear":
        return -weighted.mean()
    if form == "sigmoid":
        return -torch.sigmoid(weighted / temperature).mean()
    raise ValueError(f"unknown loss form {form!r}; choose one of {LOSS_FORMS}")


def pairwise_auc_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Pairwise AUC-ROC surrogate (Rakotomamonjy 2004, the paper's Table 2 baseline), one-vs-rest per class.

    For class ``c`` every (positive ``i``, negative ``j``) pair of the batch, ``y_i = c != y_j``, pays the
    squared hinge ``max(0, margin - (s_ic - s_jc))^2`` on the softmax scores ``s``, the scores that the
    AUCPR metric ranks (``ala_gym.core.metrics.aucpr``); the loss is the mean over a class's pairs, averaged
    over the classes that have a pair in the batch. With scores in [0, 1] and ``margin = 1`` every pair
    stays active (the squared-hinge default of LibAUC's pairwise losses). Masks instead of indexing, so
    that it runs under ``torch.vmap`` (the N-children trainer) and never waits on the device.
    """
    scores = F.softmax(logits, dim=1)
    positive = labels[:, None] == torch.arange(logits.shape[1], device=logits.device)  # [B, C]
    pairs = (positive[:, None, :] & ~positive[None, :, :]).to(scores.dtype)  # [B (positive), B (negative), C]
    hinge = (margin - (scores[:, None, :] - scores[None, :, :])).clamp_min(0.0).square()
    counts = pairs.sum(dim=(0, 1))
    per_class = (hinge * pairs).sum(dim=(0, 1)) / counts.clamp_min(1.0)
    present = (counts > 0).to(scores.dtype)
    return (per_class * present).sum() / present.sum().clamp_min(1.0)


class PhiLoss:
    """Eq. 6 with a fixed Phi, as a ``loss_fn(logits, labels)`` for :class:`ala_gym.core.trainer.ChildTrainer`."""

    def __init__(
        self, phi: torch.Tensor, form: str = "linear", temperature: float = 1.0, negative_floor: float | None = 1e-3
    ) -> None:
        if form not in LOSS_FORMS:
            raise ValueError(f"unknown loss form {form!r}; choose one of {LOSS_FORMS}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if negative_floor is not None and not 0 < negative_floor < 1:
            raise ValueError(f"negative_floor must be in (0, 1) or None, got {negative_floor}")
        self.phi, self.form, self.temperature, self.negative_floor = phi, form, temperature, negative_floor
        self.kernel = self._kernel(phi.detach().cpu().numpy())

    @property
    def params(self) -> torch.Tensor:
        return self.phi

    def set_phi(self, matrix: np.ndarray) -> None:
        """Copy the host matrix ``matrix`` into :attr:`phi` (in place: the tensor stays the same object) and
        choose the kernel that computes Eq. 6 exactly for it."""
        self.phi.copy_(torch.from_numpy(np.asarray(matrix)))
        self.kernel = self._kernel(np.asarray(matrix))

    def _kernel(self, matrix: np.ndarray) -> str:
        """``"hard"`` (Phi = I: plain cross-entropy), ``"soft"`` (cross-entropy against ``Phi[y]``) or
        ``"general"`` (:func:`phi_loss`), for the linear form; other forms always take ``"general"``."""
        if self.form != "linear":
            return "general"
        if np.array_equal(matrix, np.eye(len(matrix))):
            return "hard"
        return "soft" if self.negative_floor is None or bool((matrix >= 0).all()) else "general"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.kernel == "hard":
            return F.cross_entropy(logits, labels)
        if self.kernel == "soft":
            return F.cross_entropy(logits, self.phi[labels])
        return phi_loss(logits, labels, self.phi, self.form, self.temperature, self.negative_floor)

    def functional(self, logits: torch.Tensor, labels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Eq. 6 under ``params`` as Phi (this loss's form, temperature and floor), by the general kernel:
        ``params`` may be any child's Phi (the N-children trainer vmaps over them)."""
        return phi_loss(logits, labels, params, self.form, self.temperature, self.negative_floor)


@functools.cache
def _upper_triangle(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(num_classes)``, read-only and computed once per size: the envs convert Phi between its
    pairs and its matrix at every step of every child, where numpy's version costs more than the conversion."""
    rows, cols = np.triu_indices(num_classes)
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def class_pairs(num_classes: int) -> np.ndarray:
    """The unordered class pairs ``(i, j)`` with ``i <= j``, diagonal included: ``C(C+1)/2`` rows."""
    return np.stack(_upper_triangle(num_classes), axis=1)


def pairs_to_matrix(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Symmetric ``C x C`` matrix from one value per unordered pair (the order of :func:`class_pairs`)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.float64)
    rows, cols = _upper_triangle(num_classes)
    matrix[rows, cols] = values
    matrix[cols, rows] = values
    return matrix


def matrix_to_pairs(matrix: np.ndarray) -> np.ndarray:
    """One value per unordered pair, read from the upper triangle of ``matrix``."""
    return np.asarray(matrix)[_upper_triangle(len(matrix))]


def check_phi(matrix: np.ndarray, num_classes: int, bound: float = 1.0) -> np.ndarray:
    """Validate a user-given Phi: ``C x C``, finite, symmetric, entries within ``[-bound, bound]``."""
    matrix = as_numbers("Phi", matrix, f"a {num_classes} x {num_classes} array")
    if matrix.shape != (num_classes, num_classes):
        raise ValueError(f"Phi must have shape ({num_classes}, {num_classes}), got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("Phi must be finite")
    if np.any(np.abs(matrix) > bound):
        raise ValueError(f"Phi entries must lie in [-{bound}, {bound}], got range [{matrix.min()}, {matrix.max()}]")
    if not np.allclose(matrix, matrix.T):
        raise ValueError("Phi must be symmetric (ALA updates Phi(i, j) and Phi(j, i) together)")
    return matrix
