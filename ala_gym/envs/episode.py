"""One child's ALA episode bookkeeping, shared by the single env and the vector env.

:class:`ChildEpisode` holds everything of an episode except the model: Phi (and the loss that reads
it), the evaluation schedule of a step, the discounted metric and reward, the observation history and
moving average, divergence handling and the step's ``info``. The core's trainers train the model:
the env hands them the step's :meth:`ChildEpisode.plan` and :meth:`ChildEpisode.record_chunk` as the
callback that receives each scheduled evaluation, then calls :meth:`ChildEpisode.finish`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ala_gym.core.losses import PhiLoss, check_phi, class_pairs, matrix_to_pairs, pairs_to_matrix
from ala_gym.core.metrics import Evaluation, discounted_metric, get_metric

N_ACTIONS = 3  # {-beta, 0, +beta}
CONFUSION_CLIP = 10.0  # bound of the normalised confusion statistics (C / log(num_classes))
CHANGE_CLIP = 10.0  # bound of their relative change from the moving average
MOVING_AVERAGE_RATE = 0.1


@dataclass(frozen=True)
class EpisodeSettings:
    """The per-step rules of an ALA episode (validated by the env that builds them)."""

    num_classes: int
    total_iterations: int
    steps_per_action: int
    beta: float
    loss_form: str
    sigmoid_temperature: float
    negative_floor: float | None
    metric: str
    reward: str
    gamma: float
    eval_points: int
    eval_stride: int
    history: int
    divergence_penalty: float
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

    def schedule(self, iteration: int) -> list[tuple[int, int]]:
        """``(iterations to train, K - j)`` before each evaluation of the step that starts at ``iteration``.

        The evaluated iterations ``j`` lie ``eval_stride`` apart and end at the step's last iteration;
        the step is shortened to the remaining budget.
        """
        iterations = min(self.steps_per_action, self.total_iterations - iteration)
        offsets = [k * self.eval_stride for k in range(self.eval_points - 1, -1, -1)]
        offsets = [o for o in offsets if o < iterations]
        chunks = np.diff([0] + [iterations - o for o in offsets])
        return [(int(chunk), offset) for chunk, offset in zip(chunks, offsets)]


class ChildEpisode:
    """Phi, rewards, observations and info of one child; the model is trained elsewhere."""

    def __init__(
        self, settings: EpisodeSettings, phi_init: np.ndarray, device: torch.device, val_class_counts: np.ndarray
    ) -> None:
        self.settings = settings
        self.metric = get_metric(settings.metric)
        self.pairs = class_pairs(settings.num_classes)
        self.step_sizes = settings.step_sizes()
        self.pair_weights = pair_weights(self.pairs, np.asarray(val_class_counts, dtype=np.float64))
        self.phi_init = phi_init
        self.phi_pairs = matrix_to_pairs(phi_init)
        # Phi changes are copied into the loss's tensor (PhiLoss.set_phi), so the loss is never rebuilt.
        phi = torch.tensor(phi_init, dtype=torch.float32, device=device)
        self.loss = PhiLoss(phi, settings.loss_form, settings.sigmoid_temperature, settings.negative_floor)
        self.running = False
        self.diverged = False
        self._pair_history: deque[np.ndarray] = deque(maxlen=settings.history)
        self._moving_average = np.zeros((len(self.pairs), 2))
        self._last_metric = 0.0
        self._last_pair_metric = np.zeros(len(self.pairs))
        self._values: list[float] = []
        self._class_values: list[np.ndarray] = []
        self._offsets: list[int] = []
        self._loss_sums: list[float] = []
        self._trained = 0
        self._evaluation: Evaluation | None = None
        self._schedule: list[tuple[int, int]] = []

    # ---------------------------------------------------------------- Phi
    @property
    def phi(self) -> np.ndarray:
        return pairs_to_matrix(self.phi_pairs, self.settings.num_classes)

    @phi.setter
    def phi(self, value: np.ndarray) -> None:
        self.set_phi_pairs(matrix_to_pairs(check_phi(value, self.settings.num_classes)))

    def set_phi_pairs(self, values: np.ndarray) -> None:
        self.phi_pairs = np.asarray(values, dtype=np.float64)
        self.loss.set_phi(pairs_to_matrix(self.phi_pairs, self.settings.num_classes))

    # ---------------------------------------------------------------- episode life
    def begin(self, evaluation: Evaluation, iteration: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode from the initial model's ``evaluation``: Phi to its initial value, history filled."""
        self.set_phi_pairs(matrix_to_pairs(self.phi_init))
        pair_stats = self._pair_statistics(evaluation)
        self._pair_history = deque([pair_stats] * self.settings.history, maxlen=self.settings.history)
        self._moving_average = pair_stats.copy()
        self._last_metric = evaluation.metric
        self._last_pair_metric = self.pair_weights @ evaluation.class_metric
        self.running = True
        self.diverged = False
        info = self._info(evaluation, float("nan"), iteration, diverged=False)
        info["pair_improvement"] = np.zeros(len(self.pairs))
        return self._observation(iteration), info

    def validate_action(self, action: Any) -> np.ndarray:
        return check_action(action, len(self.pairs))

    def apply_action(self, action: Any) -> None:
        """Move Phi by the action (validated) and open a new step."""
        if not self.running:
            raise RuntimeError("the episode has ended (or never started): call reset() before step()")
        deltas = self.step_sizes * (self.validate_action(action) - 1)
        self.set_phi_pairs(np.clip(self.phi_pairs + deltas, -1.0, 1.0))
        self._values, self._class_values, self._offsets, self._loss_sums, self._trained = [], [], [], [], 0
        self._evaluation = None

    def plan(self, iteration: int) -> list[int]:
        """The step's chunks (iterations to train before each evaluation), from the child's ``iteration``."""
        self._schedule = self.settings.schedule(iteration)
        return [chunk for chunk, _ in self._schedule]

    def record_chunk(self, index: int, loss_sum: float, evaluation: Evaluation) -> bool:
        """:meth:`record` of the ``index``-th chunk of :meth:`plan`; the trainers' evaluation callback."""
        chunk, offset = self._schedule[index]
        return self.record(loss_sum, chunk, offset, evaluation)

    def record(self, loss_sum: float, iterations: int, offset: int, evaluation: Evaluation) -> bool:
        """Note one scheduled evaluation after ``iterations`` more iterations; False once training diverged."""
        self._loss_sums.append(loss_sum)
        self._trained += iterations
        self._values.append(evaluation.metric)
        self._class_values.append(evaluation.class_metric)
        self._offsets.append(offset)
        self._evaluation = evaluation
        return bool(np.isfinite(loss_sum) and evaluation.finite)

    def finish(self, iteration: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """Close the step: ``(observation, reward, terminated, info)``; ``iteration`` is the child's count now."""
        evaluation = self._evaluation
        if evaluation is None:
            raise RuntimeError("finish() needs at least one record() since apply_action()")
        settings = self.settings
        train_loss = float(sum(self._loss_sums) / self._trained)
        diverged = not (np.isfinite(train_loss) and evaluation.finite)
        terminated = diverged or iteration >= settings.total_iterations
        pair_improvement = np.zeros(len(self.pairs))
        if diverged:
            reward = settings.divergence_penalty
            observation = self._observation(iteration)
        else:
            metric = discounted_metric(self._values, self._offsets, settings.gamma)
            improvement = self.metric.improvement(self._last_metric, metric)
            reward = float(np.sign(improvement)) if settings.reward == "sign" else float(improvement)
            self._last_metric = metric
            pair_metric = self.pair_weights @ discounted_metric(self._class_values, self._offsets, settings.gamma)
            pair_improvement = self.metric.improvement(self._last_pair_metric, pair_metric)
            self._last_pair_metric = pair_metric
            pair_stats = self._pair_statistics(evaluation)
            self._pair_history.append(pair_stats)
            change = (pair_stats - self._moving_average) / np.maximum(np.abs(self._moving_average), 1e-8)
            self._moving_average += MOVING_AVERAGE_RATE * (pair_stats - self._moving_average)
            observation = self._observation(iteration, change)
        self.running = not terminated
        self.diverged = diverged
        info = self._info(evaluation, train_loss, iteration, diverged)
        info["pair_improvement"] = pair_improvement
        return observation, float(reward), bool(terminated), info

    def final_metrics(self, evaluate: Callable[[str], Evaluation]) -> dict[str, float]:
        """``test_metric`` and ``final_val_metric`` for a finished child; ``evaluate("test" | "val")``.

        A diverged child (or a non-finite value) scores the metric's worst value, ``Metric.worst``, under
        every metric alike (the error rate of a broken model is 1 by itself, its NLL would be NaN).
        """
        worst = self.metric.worst

        def final(split: str) -> float:
            value = worst if self.diverged else evaluate(split).metric
            return value if np.isfinite(value) else worst

        return {"test_metric": final("test"), "final_val_metric": final("val")}

    # ---------------------------------------------------------------- observation and info
    def _pair_statistics(self, evaluation: Evaluation) -> np.ndarray:
        """``[C_ij, C_ji]`` per pair, normalised by ``log C`` (the value of a uniform prediction)."""
        normalised = np.clip(evaluation.confusion / np.log(self.settings.num_classes), 0.0, CONFUSION_CLIP)
        rows, cols = self.pairs[:, 0], self.pairs[:, 1]
        return np.stack([normalised[rows, cols], normalised[cols, rows]], axis=1)

    def _observation(self, iteration: int, change: np.ndarray | None = None) -> np.ndarray:
        n_pairs = len(self.pairs)
        history = np.concatenate(list(self._pair_history), axis=1)  # [n_pairs, 2 * history], oldest first
        change = np.zeros((n_pairs, 2)) if change is None else np.clip(change, -CHANGE_CLIP, CHANGE_CLIP)
        progress = np.full((n_pairs, 1), min(iteration / self.settings.total_iterations, 1.0))
        return np.concatenate([history, change, self.phi_pairs[:, None], progress], axis=1).astype(np.float32)

    def _info(self, evaluation: Evaluation, train_loss: float, iteration: int, diverged: bool) -> dict[str, Any]:
        return {
            "val_metric": evaluation.metric,
            "val_loss": evaluation.loss,
            "val_metric_discounted": self._last_metric,
            "train_loss": train_loss,
            "iteration": iteration,
            "phi": self.phi,
            "confusion": evaluation.confusion,
            "diverged": diverged,
        }


def check_action(action: Any, n_pairs: int) -> np.ndarray:
    """One child's action as ``int64``, or a ``ValueError`` naming what is wrong with it."""
    array = np.asarray(action)
    if array.shape != (n_pairs,):
        raise ValueError(f"action must have shape {(n_pairs,)} (one entry per class pair), got {array.shape}")
    # An integer dtype is required: a float action (even 1.0) is more likely a policy's output passed
    # unsampled than a choice, and MultiDiscrete.contains refuses it too.
    if not np.issubdtype(array.dtype, np.integer) or not np.all(np.isin(array, (0, 1, 2))):
        raise ValueError(
            f"action entries must be integers (an integer dtype, got {array.dtype}) in {{0, 1, 2}} "
            "(meaning -beta, 0, +beta)"
        )
    return array.astype(np.int64)


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
