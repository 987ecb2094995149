"""The fixed controllers of the paper's Table 1: rows that change Phi by no learned rule.

* ``ce``: plain cross-entropy (the env's ``loss_form="cross_entropy"``, Phi ignored).
* ``phi-identity`` / ``phi-identity-sigmoid``: Phi held at identity under Eq. 6, in the linear form
  (equal to cross-entropy, a check of the machinery) or the printed sigmoid form.
* ``random``: "random loss parameters Phi_t (identity matrix perturbed by 10% noise)".
* ``confusion``: "the prediction confusion matrix (Equation 7) as Phi_t".

All act "no change" (action 1 on every pair); the last two impose Phi through
:meth:`Controller.prescribe_phi` before every step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from agents.base import Controller
from ala_gym.losses import class_pairs, pairs_to_matrix

NO_CHANGE = 1  # the action that moves a Phi entry by 0


class FixedPhi(Controller):
    """Leaves Phi where the env starts it (identity) under ``loss_form``."""

    name = "phi-identity"

    def __init__(self, loss_form: str = "linear") -> None:
        self.loss_form = loss_form

    def env_kwargs(self) -> dict[str, Any]:
        return {"loss_form": self.loss_form}

    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        return np.full(observations.shape[:2], NO_CHANGE, dtype=np.int64)


class RandomPhi(FixedPhi):
    """Phi = identity plus Gaussian noise of std ``noise`` on every unordered pair, drawn afresh before
    each step; mirrored to keep Phi symmetric and clipped to [-1, 1] as the env requires."""

    name = "random"

    def __init__(self, noise: float = 0.1, loss_form: str = "linear") -> None:
        super().__init__(loss_form)
        self.noise = noise
        self.rng = np.random.default_rng(0)

    def begin(self, envs: gym.vector.VectorEnv, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        num_envs, num_classes = len(observations), np.shape(infos["phi"])[-1]
        noise = self.rng.normal(0.0, self.noise, size=(num_envs, len(class_pairs(num_classes))))
        return np.stack([np.clip(np.eye(num_classes) + pairs_to_matrix(row, num_classes), -1.0, 1.0) for row in noise])


class ConfusionPhi(FixedPhi):
    """Phi from the validation confusion statistics of Eq. 7, recomputed before every step.

    Eq. 7 gives ``C_ij`` = mean ``-log p_j`` over validation samples of class ``i`` (``infos["confusion"]``,
    unnormalised), a cost rather than a matrix usable as Phi. Our reading: ``P_ij = exp(-C_ij)`` (the
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
        return phi
