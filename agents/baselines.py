"""The fixed controllers of the paper's Table 1: rows that change Phi by no learned rule.

* ``ce``: plain cross-entropy (the env's ``loss_form="cross_entropy"``, Phi ignored).
* ``auc-pairwise``: the pairwise AUC-ROC surrogate of the paper's AUCPR comparison (Table 2; the env's
  ``loss_form="auc_pairwise"``, ``ala_gym.core.losses.pairwise_auc_loss``, Phi ignored).
* ``phi-identity`` / ``phi-identity-sigmoid``: Phi held at identity under Eq. 6, in the linear form
  (equal to cross-entropy, a check of the machinery) or the printed sigmoid form.
* ``random``: "random loss parameters Phi_t (identity matrix perturbed by 10% noise)".
* ``confusion``: "the prediction confusion matrix (Equation 7) as Phi_t".
* ``label-smoothing``: cross-entropy with label smoothing 0.1, written as a fixed Phi.
* ``phi-uniform``: Phi = I plus one small positive value on every off-diagonal entry, held fixed.
* ``phi-ramp``: Phi = I plus one off-diagonal value that moves linearly with the child's progress, from
  ``start`` at the first iteration towards ``end``, set at the start of each step (so the last step trains at
  ``start + (end - start) (T - K) / T``): when in a run a smoother loss pays.
* ``online-smoothing``: online label smoothing (Zhang et al., IEEE TIP 2021): Phi recomputed before every
  step from the child's own correct predictions, no controller.

All act "no change" (action 1 on every pair) except ``phi-ramp(follow=True)``, which follows its ramp by the
action space's steps and imposes nothing; ``random``, ``confusion``, ``label-smoothing``, ``phi-uniform``,
``phi-ramp`` and ``online-smoothing`` impose Phi through :meth:`Controller.prescribe_phi` before every step.
Each child is independent: ``num_envs`` children are just that many training runs under the same rule.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from ala_gym.agents.base import Controller
from ala_gym.core.checks import check_bool, check_real
from ala_gym.core.losses import class_pairs, pairs_to_matrix

NO_CHANGE = 1  # the action that moves a Phi entry by 0


class FixedPhi(Controller):
    """Leaves Phi where the env starts it (identity) under ``loss_form`` (None: the env's default form)."""

    name = "phi-identity"

    def __init__(self, loss_form: str | None = "linear", num_envs: int = 1) -> None:
        self.loss_form = loss_form
        self.num_envs = num_envs

    def env_kwargs(self) -> dict[str, Any]:
        return {"loss_form": self.loss_form}

    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        return np.full(observations.shape[:2], NO_CHANGE, dtype=np.int64)


class RandomPhi(FixedPhi):
    """Phi = identity plus Gaussian noise of std ``noise`` on every unordered pair, drawn afresh before
    each step; mirrored to keep Phi symmetric and clipped to [-1, 1] as the env requires."""

    name = "random"

    def __init__(self, noise: float = 0.1, loss_form: str = "linear", num_envs: int = 1) -> None:
        super().__init__(loss_form, num_envs)
        self.noise = check_real("noise", noise, 0.0)  # a standard deviation
        self.rng = np.random.default_rng(0)

    def begin(self, envs: gym.vector.VectorEnv, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        num_envs, num_classes = len(observations), np.shape(infos["phi"])[-1]
        noise = self.rng.normal(0.0, self.noise, size=(num_envs, len(class_pairs(num_classes))))
        return np.stack([np.clip(np.eye(num_classes) + pairs_to_matrix(row, num_classes), -1.0, 1.0) for row in noise])


class UniformPhi(FixedPhi):
    """Phi with one value on the diagonal and one off it, imposed before every step.

    ``off_diagonal=u`` gives ``I + u`` off the diagonal: each sample's target keeps weight 1 and every other
    class gets ``u``, a label-smoothing-like regulariser under the linear Eq. 6. ``label_smoothing=eps``
    instead gives diagonal ``1 - eps + eps / C`` and off-diagonal ``eps / C``, under which the linear Eq. 6
    is exactly cross-entropy with label smoothing ``eps`` (``F.cross_entropy(..., label_smoothing=eps)``); the
    two are alternatives, and one given with the other is refused. The default ``u = 0.03`` was the best of
    0.003, 0.01, 0.03 and 0.1 on digits (``benchmarks/results/digits``).
    """

    name = "phi-uniform"

    def __init__(
        self, off_diagonal: float | None = None, label_smoothing: float | None = None, num_envs: int = 1
    ) -> None:  # fmt: skip
        super().__init__("linear", num_envs)
        if label_smoothing is not None and off_diagonal is not None:  # one would be ignored
            raise ValueError("off_diagonal and label_smoothing are two ways to set Phi: give one of them")
        if label_smoothing is not None:
            label_smoothing = check_real("label_smoothing", label_smoothing, 0.0, 1.0)
        off_diagonal = 0.03 if off_diagonal is None else off_diagonal
        self.off_diagonal, self.label_smoothing = check_real("off_diagonal", off_diagonal, -1.0, 1.0), label_smoothing

    def matrix(self, num_classes: int) -> np.ndarray:
        if self.label_smoothing is None:
            return off_diagonal_matrix(num_classes, self.off_diagonal)
        off = self.label_smoothing / num_classes
        return off_diagonal_matrix(num_classes, off, diagonal=1.0 - self.label_smoothing + off)

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        num_envs, num_classes = len(observations), np.shape(infos["phi"])[-1]
        return np.repeat(self.matrix(num_classes)[None], num_envs, axis=0)


def off_diagonal_matrix(num_classes: int, off_diagonal: float, diagonal: float = 1.0) -> np.ndarray:
    """``[C, C]``: ``diagonal`` on the diagonal, ``off_diagonal`` everywhere else."""
    return np.full((num_classes, num_classes), off_diagonal) + (diagonal - off_diagonal) * np.eye(num_classes)


class RampPhi(FixedPhi):
    """Phi = I plus ``start + (end - start) * progress`` off the diagonal, imposed before every step, where
    ``progress`` is the child's iterations done over its ``total_iterations`` (the observation's last column).

    A policy of the ALA action space starts at identity and moves an entry by ``beta / (C - 1)`` a step, so
    it reaches a smoothing value only gradually; ``phi-ramp(start=0, end=u)`` is the straight line such a
    policy follows when it drifts one way all run, and ``phi-ramp(start=u, end=0)`` smooths early and ends at
    cross-entropy. Beside ``phi-uniform(off_diagonal=u)`` they say when in a run a smoother loss pays.

    With ``follow=True`` the ramp is not imposed but followed by actions of the action space, from the two
    features a policy sees in each pair's row (the entry's value, second to last, and progress): every
    off-diagonal entry steps up while it is below the ramp and down while above it (so it stays within a
    step of it once it has caught up), the diagonal is left alone. That is a policy the pair-shared policy
    could be.
    """

    name = "phi-ramp"

    def __init__(self, start: float = 0.0, end: float = 0.1, follow: bool = False, num_envs: int = 1) -> None:
        super().__init__("linear", num_envs)
        self.start, self.end = check_real("start", start, -1.0, 1.0), check_real("end", end, -1.0, 1.0)
        self.follow = check_bool("follow", follow)

    def target(self, progress: np.ndarray) -> np.ndarray:
        return self.start + (self.end - self.start) * progress

    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        if not self.follow:
            return super().act(observations, infos)
        observations = np.asarray(observations)
        value, target = observations[..., -2], self.target(observations[..., -1])
        actions = np.where(value < target, NO_CHANGE + 1, NO_CHANGE - 1)
        num_classes = np.shape(infos["phi"])[-1]
        diagonal = np.diff(class_pairs(num_classes), axis=1)[:, 0] == 0
        actions[:, diagonal] = NO_CHANGE
        return actions.astype(np.int64)

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray | None:
        if self.follow:
            return None
        num_classes = np.shape(infos["phi"])[-1]
        progress = np.asarray(observations)[:, 0, -1]  # every pair's row carries the child's progress
        return np.stack([off_diagonal_matrix(num_classes, float(self.target(p))) for p in progress])


def identity_where_not_finite(phi: np.ndarray) -> np.ndarray:
    """``phi`` (``[..., C, C]``) with the identity in place of each matrix that is not finite: a child that just
    diverged reports NaN statistics, and it is reset before it trains under a Phi again."""
    finite = np.isfinite(phi).all(axis=(-2, -1), keepdims=True)
    return np.where(finite, phi, np.eye(phi.shape[-1]))


class ConfusionPhi(FixedPhi):
    """Phi from the validation confusion statistics of Eq. 7, recomputed before every step.

    Eq. 7 gives ``C_ij`` = mean ``-log p_j`` over validation samples of class ``i`` (``infos["confusion"]``,
    unnormalised), a cost rather than a matrix usable as Phi. Read here as ``P_ij = exp(-C_ij)`` (the
    geometric-mean probability of class ``j`` on class-``i`` samples), each row normalised to sum to 1,
    then symmetrised ``(P + P^T) / 2`` because Phi must be symmetric, and the diagonal set to 1. Without
    that last step an untrained model's near-uniform ``P`` (about 0.1 everywhere) makes the loss pull
    predictions towards uniform, which holds the model there;
    with it, Phi is cross-entropy plus a small positive weight on confused pairs (label-smoothing-like),
    matching the paper's description of positive entries grouping similar classes.
    """

    name = "confusion"

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        confusion = np.asarray(infos["confusion"], dtype=np.float64)
        # Subtracting each row's minimum before exp avoids underflow; row normalisation cancels it.
        probabilities = np.exp(-(confusion - confusion.min(axis=-1, keepdims=True)))
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        phi = np.clip((probabilities + np.swapaxes(probabilities, -1, -2)) / 2, -1.0, 1.0)
        phi[..., np.arange(phi.shape[-1]), np.arange(phi.shape[-1])] = 1.0
        return identity_where_not_finite(phi)


class OnlineSmoothingPhi(FixedPhi):
    """Online label smoothing (Zhang et al., IEEE TIP 2021) as Phi, recomputed before every step.

    The paper keeps, per class ``y``, the mean predicted distribution ``S_y`` over the training samples of
    ``y`` that the model classified correctly in the last epoch, and trains on ``alpha`` times the hard label
    plus ``1 - alpha`` times ``S_y``. Here ``S`` is the env's ``infos["soft_labels"]``, from the correctly
    classified samples of the validation subsample at the last evaluation (the statistics the env reports;
    an overfitting child's training predictions are near one-hot, which would leave plain cross-entropy), and
    Phi is ``alpha I + (1 - alpha) (S + S^T) / 2``: symmetrised, because Phi must be symmetric. Under the
    linear Eq. 6 that is the paper's loss with ``S`` symmetrised. ``alpha = 0.5`` is the paper's default.
    """

    name = "online-smoothing"

    def __init__(self, alpha: float = 0.5, num_envs: int = 1) -> None:
        super().__init__("linear", num_envs)
        self.alpha = check_real("alpha", alpha, 0.0, 1.0)

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        soft = np.asarray(infos["soft_labels"], dtype=np.float64)
        symmetric = (soft + np.swapaxes(soft, -1, -2)) / 2
        return identity_where_not_finite(np.clip(self.alpha * np.eye(soft.shape[-1]) + (1 - self.alpha) * symmetric, -1.0, 1.0))
