"""The base of every ALA environment: one child trained by the core under a task's loss.

:class:`ALAEnv` is generic: it trains the child with :class:`ala_gym.core.trainer.ChildTrainer`, evaluates it
with the task's evaluator and delegates actions, rewards and observations to an
:class:`ala_gym.envs.episode.Episode` over a :class:`ala_gym.envs.task.LossTask`. What it trains comes from a
:class:`ala_gym.envs.spec.TaskSpec` (a task env turns its keywords into one: ``make_spec``);
:class:`ala_gym.envs.vector.ALAVectorEnv` builds N children from the same spec.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from ala_gym.core.checks import check_int, check_no_options
from ala_gym.core.data import ClassificationData, Split
from ala_gym.core.metrics import Evaluation, Evaluator
from ala_gym.core.trainer import ChildTrainer, TrainConfig
from ala_gym.envs.episode import CHANGE_CLIP, Episode, EpisodeSettings
from ala_gym.envs.spec import TaskSpec, comparable, spec_of
from ala_gym.envs.task import N_ACTIONS, LossTask

STATE_KEY = "ala_gym_env_state"  # marks a dict as one of ALAEnv.get_state's
SETTINGS_KEY = "ala_gym_env_settings"  # what the state fits: an env of other settings refuses it
DATA_KEY = "ala_gym_env_data"  # the dataset the saved child trains on (shared with the env, never copied)
MACHINE_SETTINGS = ("data_root", "download", "device")  # where the data is read and computed: not what it is


class ALAEnv(gym.Env):
    """A child's training run as an episode, made from a :class:`ala_gym.envs.spec.TaskSpec`.

    A task env's ``__init__`` turns its keywords into a spec (its ``make_spec``) and calls this one, which
    builds the task (:meth:`ala_gym.envs.spec.TaskSpec.build`) and sets its attributes: ``task_spec``,
    ``data``, ``train_config``, ``settings``, ``evaluator``, ``val_eval`` (the validation split the reward is
    computed on), ``metric``, ``steps_per_action``, ``batchable`` and the task's own (``num_classes``, ...).
    """

    metadata = {"render_modes": [], "render_fps": 4}
    batchable: bool
    """Whether the vector env may train this env's children in one ``vmap`` (``train_mode="batched"``): not
    with a loss that samples, nor with a model holding dropout-like layers."""
    data: ClassificationData
    train_config: TrainConfig
    settings: EpisodeSettings
    evaluator: Evaluator
    val_eval: Split
    make_task: Callable[[], LossTask]
    """A fresh task for one child (each child of a vector env gets its own)."""
    metric: str
    steps_per_action: int
    observation_space: spaces.Box
    action_space: spaces.MultiDiscrete

    def __init__(
        self, *, spec: TaskSpec | None = None, render_mode: str | None = None, num_threads: int | None = None,
        **keywords: Any,
    ) -> None:  # fmt: skip
        """``spec``, or the task's keywords (those of the class's ``make_spec``) to make it from."""
        modes = self.metadata["render_modes"]
        if render_mode is not None and render_mode not in modes:
            raise ValueError(
                f"render_mode must be one of {modes} or None, got {render_mode!r}"
                if modes else f"render_mode must be None (this env does not render), got {render_mode!r}"
            )  # fmt: skip
        self.render_mode = render_mode
        set_threads(num_threads)
        spec = spec_of(self, spec, keywords)
        built = spec.build()
        self.task_spec = spec
        vars(self).update(built.public_attributes())
        self.make_task = built.make_task
        self._setup(spec.episode)

    def _setup(self, settings: EpisodeSettings) -> None:
        """Build the task, the episode and the spaces."""
        self.trainer: ChildTrainer | None = None
        self._closed = False
        task = self.make_task()
        self.episode = Episode(settings, task, self.evaluator.higher_is_better, self.evaluator.worst)
        # Which rows an action can move: learned controllers leave the others out of their policy gradient.
        self.movable_rows = task.movable_rows
        self.n_features = settings.n_features
        self.observation_space, self.action_space = episode_spaces(settings, task)

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self._check_open()
        check_no_options(options)
        # numpy integers (a seed drawn from an array, as the vector env accepts) are seeds too.
        super().reset(seed=None if seed is None else check_int("seed", seed, 0))
        trainer_seed = int(self.np_random.integers(2**63 - 1))
        self.trainer = ChildTrainer(self.data, self.train_config, trainer_seed)
        self.episode.task.seed(trainer_seed)
        observation, self._last_info = self.episode.begin(
            self.trainer.evaluate(self.val_eval, self.evaluator), self.trainer.iteration
        )
        return observation, self._last_info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._check_open()
        if self.trainer is None or not self.episode.running:
            raise RuntimeError("the episode has ended (or never started): call reset() before step()")
        self.episode.apply_action(action)
        self.trainer.train_chunks(
            self.episode.plan(self.trainer.iteration), self.episode.loss, self.val_eval, self.evaluator,
            self.episode.record_chunk,
        )  # fmt: skip
        observation, reward, terminated, info = self.episode.finish(self.trainer.iteration)
        if terminated:
            info.update(self.episode.final_metrics(self.evaluate_split))
        self._last_info = info
        return observation, reward, terminated, False, info

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this env is closed: make a new one with gym.make(...)")

    def render(self) -> Any:
        """None: this env has no render mode (Gymnasium's rule for ``render_mode=None``)."""
        return None

    def close(self) -> None:
        """Free the child (its weights and batches); a later ``reset``, ``step`` or ``render`` (with a render mode)
        raises."""
        self.trainer = None
        self._closed = True
        super().close()

    def get_state(self) -> dict[str, Any]:
        """A copy of all that the rest of the episode depends on: the child (weights, momentum, BatchNorm
        statistics, batch stream, iteration), the episode (statistics history, metrics, Phi) and the env's
        generator. :meth:`set_state` restores it; the run then continues bit for bit as it did after this call,
        however often it is restored (on a GPU, where the kernels are deterministic: cuDNN may pick convolution
        algorithms that are not, unless ``torch.backends.cudnn.deterministic`` is set). The dataset is shared, not copied."""
        self._check_open()
        if self.trainer is None:
            raise RuntimeError("nothing to save before reset(): call reset() first")
        state = (self.trainer, self.episode, self.np_random, self._last_info)
        return {
            STATE_KEY: copy.deepcopy(state, memo={id(self.data): self.data}),
            SETTINGS_KEY: self._settings(),
            DATA_KEY: self.data,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state of :meth:`get_state` (the state itself is left as it was, to restore again) into this
        env or another made with the same keywords: the same data and split, training, loss and metric, episode
        and spaces (where the data is read from may differ)."""
        if not isinstance(state, dict) or STATE_KEY not in state or DATA_KEY not in state:
            raise ValueError("state must be a dict returned by this env's get_state()")
        self._check_open()
        if state.get(SETTINGS_KEY) != self._settings():
            raise ValueError(
                "state was saved by an env of another data split, training, loss, metric, episode or spaces: restore "
                "it into an env made with the same keywords"
            )
        saved_data = state[DATA_KEY]
        if not (isinstance(saved_data, ClassificationData) and saved_data.same_samples(self.data)):
            raise ValueError(
                "state was saved by an env of other data (other samples or device): restore it into an env made "
                "with the same dataset and keywords"
            )
        # The restored child trains on this env's data (the same samples, checked above), never on a copy.
        self.trainer, self.episode, self.np_random, self._last_info = copy.deepcopy(
            state[STATE_KEY], memo={id(saved_data): self.data}
        )

    def _settings(self) -> tuple:
        """What a saved state must fit: the data's split (not where it is read from: the samples themselves are
        compared by :meth:`set_state`), the child's training, the loss and its metric, the episode's rules and
        the spaces."""
        spec = self.task_spec
        data = tuple(
            (f.name, value if isinstance(value := getattr(spec.data, f.name), str | int | None) else "own data")
            for f in dataclasses.fields(spec.data)
            if f.name not in MACHINE_SETTINGS
        )
        return data, spec.train, comparable(spec.loss), spec.episode, self.observation_space, self.action_space

    def evaluate_split(self, split: str) -> Evaluation:
        """The current child's :class:`ala_gym.core.metrics.Evaluation` on the full ``"val"`` or ``"test"`` split."""
        assert self.trainer is not None
        return self.trainer.evaluate({"val": self.data.val, "test": self.data.test}[split], self.evaluator)

    # ---------------------------------------------------------------- the loss parameters, readable and settable
    @property
    def phi(self) -> np.ndarray:
        """The current loss parameters (the task's ``phi``: Phi's ``C x C`` matrix in classification).
        Assigning them lets fixed baselines prescribe them; through a vector env:
        ``envs.set_attr("phi", [phi_0, phi_1, ...])``."""
        return self.episode.task.phi

    @phi.setter
    def phi(self, value: np.ndarray) -> None:
        self.episode.task.phi = value


def set_threads(num_threads: int | None) -> None:
    """torch's intra-op threads of this process. ``None`` leaves the setting alone, except in a
    multiprocessing worker, where it means 1: workers then neither oversubscribe the cores nor, when forked,
    hang on the parent's OpenMP pool."""
    if num_threads is None and multiprocessing.parent_process() is not None:
        num_threads = 1
    if num_threads is not None:
        torch.set_num_threads(check_int("num_threads", num_threads, 1))


def episode_spaces(settings: EpisodeSettings, task: LossTask) -> tuple[spaces.Box, spaces.MultiDiscrete]:
    """One child's observation and action spaces: per row, the statistics' history and change, the row's value
    and the progress; one of ``N_ACTIONS`` per row."""
    history = settings.history
    low = np.concatenate([np.zeros(2 * history), [-CHANGE_CLIP] * 2, [task.bounds[0], 0.0]]).astype(np.float32)
    high = np.concatenate(
        [np.full(2 * history, task.statistics_bound), [CHANGE_CLIP] * 2, [task.bounds[1], 1.0]]
    ).astype(np.float32)
    observation_space = spaces.Box(np.tile(low, (task.rows, 1)), np.tile(high, (task.rows, 1)), dtype=np.float32)
    return observation_space, spaces.MultiDiscrete(np.full(task.rows, N_ACTIONS, dtype=np.int64))
