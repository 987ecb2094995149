"""The per-task half of an ALA episode: the loss parameters an action moves, and the features it sees.

An ALA env is a generic :class:`ala_gym.envs.episode.Episode` (the step schedule, the discounted metric
reward of Eqs. 4-5, divergence, observation history, info) plus one :class:`LossTask` per child. A task
owns the loss the child trains under and its parameters, laid out as **rows**: one row per parameter a
controller decides on (a class pair ``(i, j)`` of Phi in classification, one mixture weight in metric
learning). Every task shares the action rule, ``{-step, 0, +step}`` per row within bounds, and the
observation layout: per row, two statistics from each evaluation (history and change), the row's current
value and the progress. A controller that acts on rows with one shared network (the bundled REINFORCE,
the SB3 policies) therefore drives every task unchanged.

A new task implements :meth:`LossTask.set_values`, :meth:`LossTask.row_statistics`, :meth:`LossTask.row_metric`
and :meth:`LossTask.info`, and sets the attributes documented on :class:`LossTask`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from ala_gym.core.checks import as_numbers
from ala_gym.core.losses import LossFn
from ala_gym.core.metrics import Evaluation

N_ACTIONS = 3  # {-step, 0, +step}


class LossTask(ABC):
    """One child's loss parameters, moved row by row by a controller's actions.

    Attributes a task sets in its ``__init__``:

    * ``loss``: the ``loss(outputs, labels)`` the child trains under; it reads the current values (set by
      :meth:`set_values`), so the trainer never needs a new loss object.
    * ``initial_values``: ``[rows]`` values at the start of an episode.
    * ``step_sizes``: ``[rows]`` how far action 2 (action 0) moves each row up (down); 0 for a row an action
      cannot move.
    * ``bounds``: ``(low, high)`` that every value is clipped to after an action.
    * ``statistics_bound``: the two per-row statistics of :meth:`row_statistics` lie in ``[0, statistics_bound]``.
    """

    loss: LossFn
    initial_values: np.ndarray
    step_sizes: np.ndarray
    bounds: tuple[float, float]
    statistics_bound: float

    values: np.ndarray
    """The current values, one per row."""

    @property
    def rows(self) -> int:
        return len(self.initial_values)

    @property
    def movable_rows(self) -> np.ndarray:
        """Which rows an action can move: learned controllers leave the others out of their policy gradient."""
        return self.step_sizes > 0

    @property
    def phi(self) -> np.ndarray:
        """The loss parameters in their natural shape (:meth:`phi_of_values`); assigning them prescribes them
        (validated by :meth:`phi_checker`)."""
        return self.phi_of_values(self.values)

    @phi.setter
    def phi(self, value: np.ndarray) -> None:
        self.set_values(self.phi_checker()(value))

    def phi_of_values(self, values: np.ndarray) -> np.ndarray:
        """The loss parameters that the rows' ``values`` stand for (the values themselves unless a task says
        otherwise)."""
        return values.copy()

    def phi_checker(self) -> Callable[[Any], np.ndarray]:
        """A picklable function that validates a ``phi`` for this task and returns its rows' values (a Ray
        driver checks values with it before any worker changes)."""
        return partial(check_values, rows=self.rows, bounds=self.bounds)

    def seed(self, seed: int) -> None:  # noqa: B027  (a hook: most tasks draw nothing)
        """Seed the task's own randomness (a loss that samples, such as a triplet miner) from the child's
        trainer seed; called whenever a child starts. Most tasks have none."""

    def reset(self) -> None:
        """Back to the initial values (the start of an episode)."""
        self.set_values(self.initial_values)

    def apply_action(self, action: Any) -> None:
        """Move each row by ``step * (action - 1)``, within :attr:`bounds` (``action`` is validated first)."""
        moves = self.step_sizes * (check_action(action, self.rows) - 1)
        self.set_values(np.clip(self.values + moves, *self.bounds))

    @abstractmethod
    def set_values(self, values: np.ndarray) -> None:
        """Set :attr:`values` and the loss's parameters from them."""

    @abstractmethod
    def row_statistics(self, evaluation: Evaluation) -> np.ndarray:
        """``[rows, 2]`` features of one validation evaluation, in ``[0, statistics_bound]``."""

    @abstractmethod
    def row_metric(self, evaluation: Evaluation) -> np.ndarray:
        """``[rows]``: the metric restricted to what each row acts on (the per-row credit of
        ``info["row_improvement"]``); the whole metric for every row where nothing finer is defined."""

    def final_info(self, test: Evaluation | None) -> dict[str, float]:
        """Extra ``test_*`` keys of the terminal ``info`` from the test split's evaluation (None: the child
        diverged, and each key scores its worst value); none by default."""
        return {}

    @abstractmethod
    def info(self, evaluation: Evaluation) -> dict[str, Any]:
        """The task's own keys of a step's ``info`` (for example ``confusion``), beside the keys every task's info
        has: ``phi`` among them (:attr:`phi`, unless given here)."""


def check_values(value: Any, rows: int, bounds: tuple[float, float]) -> np.ndarray:
    """``rows`` finite values within ``bounds``, or a ``ValueError`` that says what they must be."""
    value = as_numbers("the loss parameters", value, f"{rows} values")
    low, high = bounds
    if value.shape != (rows,) or not np.all(np.isfinite(value)) or np.any((value < low) | (value > high)):
        raise ValueError(f"the loss parameters must be {rows} finite values in [{low}, {high}], got {value!r}")
    return value


def check_action(action: Any, rows: int) -> np.ndarray:
    """One child's action as ``int64``, or a ``ValueError`` naming what is wrong with it."""
    array = np.asarray(action)
    if array.shape != (rows,):
        raise ValueError(f"action must have shape {(rows,)} (one entry per row: class pair or loss parameter), got {array.shape}")
    # An integer dtype is required: a float action (even 1.0) is more likely a policy's output passed
    # unsampled than a choice, and MultiDiscrete.contains refuses it too. It takes a boolean array, which is refused
    # here all the same: True and False are likelier a mask passed by mistake than -step and 0.
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"action entries must be integers (an integer dtype, got {array.dtype}) in {{0, 1, 2}} (-step, 0, +step)")
    outside = array[(array < 0) | (array > 2)]
    if outside.size:
        raise ValueError(f"action entries must lie in {{0, 1, 2}} (-step, 0, +step), got {outside[0]}")
    return array.astype(np.int64)
