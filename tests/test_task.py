"""A new task is a small addition: a one-row task written here runs through the generic episode, the single
env, the vector env and the environment checkers without any change to them."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from ala_gym.core.losses import PhiLoss
from ala_gym.core.metrics import Evaluation
from ala_gym.envs.classification import ALAClassificationEnv, ClassificationLoss
from ala_gym.envs.spec import BuiltTask, TaskSpec
from ala_gym.envs.task import LossTask, check_action
from ala_gym.envs.vector import ALAVectorEnv

TINY = dict(total_iterations=8, steps_per_action=2, batch_size=16, eval_points=1, val_subsample=100, device="cpu")


class SmoothingTask(LossTask):
    """One row: the off-diagonal value ``s`` of Phi = I + s (11^T - I), a label-smoothing schedule."""

    bounds = (0.0, 0.5)
    statistics_bound = 10.0

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.initial_values = np.zeros(1)
        self.step_sizes = np.array([0.05])
        self.values = self.initial_values.copy()
        self.loss = PhiLoss(torch.eye(num_classes))

    def set_values(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        off = np.ones((self.num_classes, self.num_classes)) - np.eye(self.num_classes)
        self.loss.set_phi(np.eye(self.num_classes) + self.values[0] * off)

    def row_statistics(self, evaluation: Evaluation) -> np.ndarray:
        confusion = evaluation.confusion / np.log(self.num_classes)
        off = ~np.eye(self.num_classes, dtype=bool)
        return np.clip([[np.diag(confusion).mean(), confusion[off].mean()]], 0.0, self.statistics_bound)

    def row_metric(self, evaluation: Evaluation) -> np.ndarray:
        return np.array([evaluation.metric])

    def info(self, evaluation: Evaluation) -> dict[str, Any]:
        return {"smoothing": float(self.values[0])}


@dataclass(frozen=True, eq=False)
class SmoothingLoss(ClassificationLoss):
    """A task of one's own is a loss part of the spec: here the classification data and metric, one row."""

    def build(self, spec: TaskSpec) -> BuiltTask:
        built = super().build(spec)
        built.make_task = partial(SmoothingTask, built.attributes["num_classes"])
        return built


class SmoothingEnv(ALAClassificationEnv):
    @classmethod
    def make_spec(cls, **keywords: Any) -> TaskSpec:
        return dataclasses.replace(super().make_spec(**keywords), loss=SmoothingLoss())


def test_a_one_row_task_passes_both_env_checkers_and_moves_its_value():
    env = SmoothingEnv(**TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
        # The (rows, features) Box draws SB3's flattening advice, as for every id.
        warnings.filterwarnings("ignore", message=".*unconventional shape.*")
        sb3_check_env(SmoothingEnv(**TINY), warn=True)
    assert env.observation_space.shape == (1, env.settings.n_features) and env.action_space.shape == (1,)
    observation, info = env.reset(seed=0)
    assert info["smoothing"] == 0.0 and observation[0, -2] == 0.0
    observation, _, _, _, info = env.step(np.array([2]))
    assert info["smoothing"] == pytest.approx(0.05) and observation[0, -2] == pytest.approx(0.05)
    assert env.episode.loss.kernel == "soft"  # the loss reads the task's value
    env.step(np.array([0]))
    env.step(np.array([0]))  # clipped at the lower bound
    assert env.phi == pytest.approx([0.0])


def test_a_one_row_task_runs_as_a_vector_env_with_a_task_per_child():
    envs = ALAVectorEnv(SmoothingEnv, 2, train_mode="sequential", **TINY)
    envs.reset(seed=0)
    envs.set_attr("phi", [np.array([0.1]), np.array([0.2])])
    _, rewards, terminated, _, infos = envs.step(np.array([[1], [2]]))
    assert infos["smoothing"] == pytest.approx([0.1, 0.25]) and rewards.shape == (2,)
    with pytest.raises(ValueError, match="1 finite values in"):
        envs.set_attr("phi", np.array([0.9]))  # outside the task's bounds
    assert envs.get_attr("phi")[1] == pytest.approx([0.25])  # a refused value changes no child


def test_a_controller_runs_a_task_whose_info_names_no_phi():
    # Every step's info carries the task's phi, which the controllers' records read: a task need not add it.
    from ala_gym.agents.baselines import FixedPhi

    envs = ALAVectorEnv(SmoothingEnv, 2, train_mode="sequential", **TINY)
    records = FixedPhi(loss_form=None, num_envs=2).run(envs, seed=0)
    assert [record.phi[-1] for record in records] == [[0.0], [0.0]] and all(np.isfinite(r.test_metric) for r in records)


def test_a_tasks_phi_must_be_one_finite_value_per_row_within_its_bounds():
    """The default ``phi_checker`` of a task: a value that is NaN, infinite or of another count of rows is refused by
    name (NaN compares false with both bounds, so it is not caught by the range alone), and the task keeps its value."""
    env = SmoothingEnv(**TINY)
    env.reset(seed=0)
    env.phi = np.array([0.5])  # the upper bound itself is allowed
    for bad in (np.array([np.nan]), np.array([np.inf]), np.array([0.1, 0.2]), np.array([[0.1]])):
        with pytest.raises(ValueError, match=r"^the loss parameters must be 1 finite values in \[0.0, 0.5\], got"):
            env.phi = bad
    assert env.phi.tolist() == [0.5] and env.episode.loss.phi[0, 1].item() == 0.5


def test_actions_are_checked_against_the_task_rows():
    for wrong_shape in (np.array([1, 1]), np.array([[1]]), np.array(1)):  # one entry, but not as a row vector
        with pytest.raises(ValueError, match="one entry per row"):
            check_action(wrong_shape, 1)
    with pytest.raises(ValueError, match="integer dtype"):
        check_action(np.array([1.0]), 1)
    for outside in (-1, 3):
        with pytest.raises(ValueError, match=rf"in \{{0, 1, 2\}}.*got {outside}$"):
            check_action(np.array([1, outside, 2], dtype=np.int8), 3)
    assert check_action(np.array([0, 1, 2], dtype=np.uint8), 3).dtype == np.int64
