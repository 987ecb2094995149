"""One child's ALA episode, for any task: shared by the single env and the vector env.

:class:`Episode` holds everything of an episode except the model and the loss parameters: the
evaluation schedule of a step, the discounted metric and reward (Eqs. 4-5, direction-aware), divergence
handling, the observation history and moving average, and the step's ``info``. Its
:class:`ala_gym.envs.task.LossTask` owns the loss, its parameters, the actions on them and the per-row
features. The core's trainers train the model: the env hands them the step's :meth:`Episode.plan` and
:meth:`Episode.record_chunk` as the callback that receives each scheduled evaluation, then calls
:meth:`Episode.finish`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ala_gym.core.checks import check_int, check_real
from ala_gym.core.metrics import Evaluation, discounted_metric, finite_or, improvement
from ala_gym.envs.task import LossTask

CHANGE_CLIP = 10.0  # bound of the statistics' relative change from the moving average
MOVING_AVERAGE_RATE = 0.1


REWARDS = ("sign", "raw")


@dataclass(frozen=True)
class EpisodeSettings:
    """The per-step rules of an ALA episode, whatever the task; each checked here, with a message that names it."""

    total_iterations: int
    steps_per_action: int
    reward: str
    gamma: float
    eval_points: int
    eval_stride: int
    history: int
    divergence_penalty: float

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        # A non-integer count would never bring a step's countdown to zero: checked as integers, not numbers.
        checked = {
            "total_iterations": check_int("total_iterations", self.total_iterations, 1),
            "steps_per_action": check_int("steps_per_action", self.steps_per_action, 1),
            "gamma": check_real("gamma", self.gamma, 0.0, 1.0, low_open=True),
            "eval_points": check_int("eval_points", self.eval_points, 1),
            "eval_stride": check_int("eval_stride", self.eval_stride, 1),
            "history": check_int("history", self.history, 1),
            "divergence_penalty": check_real("divergence_penalty", self.divergence_penalty),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

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

    @property
    def n_features(self) -> int:
        """Observation columns per row: statistics history, their change, the row's value, progress."""
        return 2 * self.history + 4


class Episode:
    """Rewards, observations and info of one child under ``task``; the model is trained elsewhere.

    ``higher_is_better`` and ``worst`` describe the validation metric (the evaluator's): a positive reward
    always means the child got better, and a diverged child scores ``worst``.
    """

    def __init__(self, settings: EpisodeSettings, task: LossTask, higher_is_better: bool, worst: float) -> None:
        self.settings, self.task = settings, task
        self.higher_is_better, self.worst = higher_is_better, worst
        self.running = False
        self.diverged = False
        self._history: deque[np.ndarray] = deque(maxlen=settings.history)
        self._moving_average = np.zeros((task.rows, 2))
        self._last_metric = 0.0
        self._last_row_metric: np.ndarray = np.zeros(task.rows)
        self._values: list[float] = []
        self._row_values: list[np.ndarray] = []
        self._offsets: list[int] = []
        self._loss_sums: list[float] = []
        self._trained = 0
        self._evaluation: Evaluation | None = None
        self._schedule: list[tuple[int, int]] = []

    @property
    def loss(self) -> Any:
        """The loss the child trains under (the task's)."""
        return self.task.loss

    # ---------------------------------------------------------------- episode life
    def begin(self, evaluation: Evaluation, iteration: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode from the initial model's ``evaluation``: the task's initial values, history filled."""
        self.task.reset()
        statistics = self._statistics(evaluation)
        self._history = deque([statistics] * self.settings.history, maxlen=self.settings.history)
        self._moving_average = statistics.copy()
        # A model that is NaN on some validation inputs from its initialisation on starts from the worst value (its
        # first step then ends with the divergence penalty): no NaN reaches a reward or an observation.
        self._last_metric = finite_or(evaluation.metric, self.worst)
        row_metric = self.task.row_metric(evaluation)
        self._last_row_metric = np.where(np.isfinite(row_metric), row_metric, self.worst)
        self.running = True
        self.diverged = False
        info = self._info(evaluation, float("nan"), iteration, diverged=False)
        info["row_improvement"] = np.zeros(self.task.rows)
        return self._observation(iteration), info

    def apply_action(self, action: Any) -> None:
        """Move the task's values by the action (validated) and open a new step."""
        if not self.running:
            raise RuntimeError("the episode has ended (or never started): begin() one before apply_action()")
        self.task.apply_action(action)
        self._values, self._row_values, self._offsets, self._loss_sums, self._trained = [], [], [], [], 0
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
        finite = bool(np.isfinite(loss_sum) and evaluation.finite)
        # A diverged evaluation's per-row metric is never used (the step ends with the penalty).
        self._row_values.append(self.task.row_metric(evaluation) if finite else np.zeros(self.task.rows))
        self._offsets.append(offset)
        self._evaluation = evaluation
        return finite

    def finish(self, iteration: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """Close the step: ``(observation, reward, terminated, info)``; ``iteration`` is the child's count now."""
        evaluation = self._evaluation
        if evaluation is None:
            raise RuntimeError("finish() needs at least one record() since apply_action()")
        settings = self.settings
        train_loss = float(sum(self._loss_sums) / self._trained)
        diverged = not (np.isfinite(train_loss) and evaluation.finite)
        terminated = diverged or iteration >= settings.total_iterations
        row_improvement = np.zeros(self.task.rows)
        if diverged:
            reward = settings.divergence_penalty
            observation = self._observation(iteration)
        else:
            metric = discounted_metric(self._values, self._offsets, settings.gamma)
            gain = self._gain(self._last_metric, metric)
            reward = float(np.sign(gain)) if settings.reward == "sign" else float(gain)
            self._last_metric = metric
            row_metric = discounted_metric(self._row_values, self._offsets, settings.gamma)
            row_improvement = self._gain(self._last_row_metric, row_metric)
            self._last_row_metric = row_metric
            statistics = self._statistics(evaluation)
            self._history.append(statistics)
            change = (statistics - self._moving_average) / np.maximum(np.abs(self._moving_average), 1e-8)
            self._moving_average += MOVING_AVERAGE_RATE * (statistics - self._moving_average)
            observation = self._observation(iteration, change)
        self.running = not terminated
        self.diverged = diverged
        info = self._info(evaluation, train_loss, iteration, diverged)
        info["row_improvement"] = row_improvement
        return observation, float(reward), bool(terminated), info

    def final_metrics(self, evaluate: Callable[[str], Evaluation]) -> dict[str, float]:
        """``test_metric``, ``final_val_metric`` and ``final_val_loss`` for a finished child, and the task's own
        test keys (:meth:`ala_gym.envs.task.LossTask.final_info`); ``evaluate("test" | "val")``.

        A diverged child (or a non-finite value) scores the metric's worst value (the error rate of a broken
        model is 1 by itself, its NLL would be NaN), and a validation loss of ``inf``. ``final_val_loss`` is
        :attr:`ala_gym.core.metrics.Evaluation.loss` on the full validation split (classification: the NLL), a
        continuous companion of a coarse metric (an error rate on a few hundred images); NaN where the
        evaluator computes no loss.
        """

        evaluations = {split: None if self.diverged else evaluate(split) for split in ("test", "val")}

        def final(split: str) -> float:
            evaluation = evaluations[split]
            value = self.worst if evaluation is None else evaluation.metric
            return value if np.isfinite(value) else self.worst

        val = evaluations["val"]
        val_loss = float("inf") if val is None or not val.finite else val.loss
        extra = self.task.final_info(evaluations["test"])
        return {"test_metric": final("test"), "final_val_metric": final("val"), "final_val_loss": val_loss, **extra}

    def adopt(self, other: Episode) -> None:
        """Take ``other``'s record of the run (statistics history, moving average, last metrics), as when a
        child takes another's weights (population-based training): its next reward and observation then
        continue from the state it now has. The task (loss and its values) stays this episode's."""
        self._history = deque((row.copy() for row in other._history), maxlen=self.settings.history)
        self._moving_average = other._moving_average.copy()
        self._last_metric = other._last_metric
        self._last_row_metric = other._last_row_metric.copy()

    # ---------------------------------------------------------------- observation and info
    def _gain(self, old: Any, new: Any) -> Any:
        """:func:`improvement` of ``new`` over ``old``; 0 where it is not finite: from a non-finite start (the NLL's
        worst value, inf) no gain is measured, rather than an infinite reward."""
        return np.nan_to_num(improvement(old, new, self.higher_is_better), nan=0.0, posinf=0.0, neginf=0.0)

    def _statistics(self, evaluation: Evaluation) -> np.ndarray:
        """The task's row statistics, where a non-finite one (from outputs that are NaN on some validation inputs)
        reads as the bound: every observation is finite."""
        bound = self.task.statistics_bound
        return np.nan_to_num(self.task.row_statistics(evaluation), nan=bound, posinf=bound, neginf=0.0)

    def _observation(self, iteration: int, change: np.ndarray | None = None) -> np.ndarray:
        rows = self.task.rows
        history = np.concatenate(list(self._history), axis=1)  # [rows, 2 * history], oldest first
        change = np.zeros((rows, 2)) if change is None else np.clip(change, -CHANGE_CLIP, CHANGE_CLIP)
        progress = np.full((rows, 1), min(iteration / self.settings.total_iterations, 1.0))
        return np.concatenate([history, change, self.task.values[:, None], progress], axis=1).astype(np.float32)

    def _info(self, evaluation: Evaluation, train_loss: float, iteration: int, diverged: bool) -> dict[str, Any]:
        finite = evaluation.finite  # else, as on a diverged step: the worst metric and losses of inf, never NaN
        return {
            "val_metric": evaluation.metric if finite else finite_or(evaluation.metric, self.worst),
            "val_loss": evaluation.loss if finite else float("inf"),
            "val_metric_discounted": self._last_metric,
            "train_loss": train_loss if np.isfinite(train_loss) or not diverged else float("inf"),
            "iteration": iteration,
            "phi": self.task.phi,  # every task's: the controllers and the benchmark read it
            **self.task.info(evaluation),
            "diverged": diverged,
        }
