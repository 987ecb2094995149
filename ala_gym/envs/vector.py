"""The native vectorized ALA environment: N children, one process, one device, one controller."""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ala_gym.core.batched import TRAIN_MODES, BatchedTrainer, build_children, default_train_mode
from ala_gym.core.checks import check_int, check_no_options, check_optional_int
from ala_gym.core.metrics import Evaluation
from ala_gym.core.trainer import SequentialChildren
from ala_gym.envs.base import ALAEnv, episode_spaces, set_threads
from ala_gym.envs.episode import Episode
from ala_gym.envs.spec import vector_task_spec
from ala_gym.envs.task import check_action


class ALAVectorEnv(VectorEnv):
    """
    ## Description
    ``num_envs`` ALA children (see :class:`ala_gym.envs.classification.ALAClassificationEnv` for the loss,
    actions, observations and rewards of one child) trained in one process on one device under one
    controller, as in the paper's 10 parallel children. The dataset is loaded once; each child has its
    own initial weights, batch order and Phi. ``gym.make_vec("ALA-Digits-v0", num_envs=10)`` builds it.

    With ``train_mode="batched"`` the children's weights are stacked and every SGD iteration runs all
    children in one ``torch.func.vmap``-ed forward and backward (:class:`ala_gym.core.batched.BatchedTrainer`,
    per-child momentum and BatchNorm statistics); ``"sequential"`` trains one
    :class:`ala_gym.core.trainer.ChildTrainer` after another and reproduces N single envs bit for bit.
    ``"auto"`` picks the faster path for the device (:func:`ala_gym.core.batched.default_train_mode`).

    ## Seeding
    ``reset(seed=s)`` seeds child ``i`` exactly as ``single_env.reset(seed=s + i)`` (Gymnasium's
    ``SyncVectorEnv`` convention): child ``i``'s generator is ``np_random(s + i)`` and its trainer seed
    the first draw from it. So child ``i`` matches ``gym.make(id, **kwargs).reset(seed=s + i)``: exactly
    in sequential mode. In batched mode the same computation runs in another float order: the reset
    observation agrees to float tolerance, but training is chaotic and the two drift apart as iterations
    accumulate, so a batched child is an equally distributed run, not the same run. How soon depends on the
    network: the MLP's and the small CNN's first step still agree to float tolerance, while a ResNet with
    BatchNorm can differ visibly within the first step's K iterations. Autoresets draw the next trainer seed from
    the child's own generator, as a second ``reset()`` of the single env does, and so does ``reset(seed=None)``
    (fresh entropy only before any seed was given); ``reset(seed=[s_0, ..., s_{N-1}])`` gives each child its own
    seed.

    ## Action Space
    One single-env action per child: ``single_action_space`` is the single env's ``MultiDiscrete``, and
    ``action_space`` its batch, which Gymnasium's ``batch_space`` makes an integer ``Box`` of shape
    ``(num_envs, n_pairs)`` with the same bounds (as in ``SyncVectorEnv``).

    ## Observation Space
    ``Box`` of shape ``(num_envs, n_pairs, 2 * history + 4)``: one single-env observation per child.

    ## Rewards, Episode End and Autoreset
    Per child, as in the single env, returned as arrays ``[num_envs]``. With ``max_episode_steps`` a
    child's episode is truncated after that many steps (Gymnasium's ``TimeLimit`` rule: one whose training
    run ends at that very step is terminated and truncated). ``metadata["autoreset_mode"]`` is ``NEXT_STEP``
    (default): the step after a child's episode ended resets that child (its action is ignored, its
    reward is 0, terminated and truncated are False). ``autoreset_mode=AutoresetMode.SAME_STEP`` resets
    at once and puts the last observation and info in ``info["final_obs"]`` and ``info["final_info"]``.

    ## Info
    A dict of arrays with boolean masks ``info["_key"]`` (Gymnasium's vector convention) holding the
    single env's keys per child; ``test_metric``, ``final_val_metric`` and ``final_val_loss`` are present
    (masked True) for each child whose episode terminated this step (not for one truncated by
    ``max_episode_steps``, as in the single env). ``info["episode_step"]`` counts each child's steps.

    ## Arguments
    ``ALAVectorEnv(env_id, num_envs, *, max_episode_steps=None, autoreset_mode=NEXT_STEP,
    train_mode="auto", **env_kwargs)``: ``env_id`` is a registered ALA id (or an ALA env class), and
    ``env_kwargs`` are its keyword arguments (``device``, ``total_iterations``, ...), turned into the same
    :class:`ala_gym.envs.spec.TaskSpec` as the single env's (``envs.task_spec``); no single env is built.
    ``num_threads`` sets torch's threads; ``render_mode`` may only be None (the vector env does not render;
    ``gym.make(id, render_mode=...)`` renders one child).

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        env_id: str | type[ALAEnv],
        num_envs: int,
        *,
        max_episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        train_mode: str = "auto",
        **env_kwargs: Any,
    ) -> None:
        autoreset_mode = check_vector_args(
            num_envs, max_episode_steps, autoreset_mode, train_mode, env_kwargs.pop("render_mode", None)
        )
        set_threads(env_kwargs.pop("num_threads", None))
        # The spec checks the keywords and applies the id's; building it loads the data (once per process for
        # a registered name: load_dataset caches) and makes what every child shares.
        self.task_spec = spec = vector_task_spec(env_id, **env_kwargs)
        self.task = spec.build()
        self.data = self.task.data
        self.settings = spec.episode
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.train_mode = default_train_mode(self.data.device, spec.train.model, num_envs) if train_mode == "auto" else train_mode
        if not self.task.batchable:  # a loss that samples, or a model with dropout-like layers: no vmap
            if train_mode == "batched":
                raise ValueError(
                    f"{env_id} trains its children one after another (its loss samples, or its model draws random "
                    "numbers): use train_mode='sequential' or 'auto'"
                )
            self.train_mode = "sequential"
        evaluator = self.evaluator = self.task.evaluator
        self.episodes = [
            Episode(self.settings, self.task.make_task(), evaluator.higher_is_better, evaluator.worst)
            for _ in range(num_envs)
        ]
        observation_space, action_space = episode_spaces(self.settings, self.episodes[0].task)
        self._observation_shape = observation_space.shape
        set_vector_spaces(self, observation_space, action_space, autoreset_mode)
        self._child_rngs: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(num_envs)]
        self._children: BatchedTrainer | SequentialChildren | None = None
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._started = False

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        check_open(self)
        check_no_options(options)
        seeds = seed_children(self, seed)
        if seeds is not None:  # without a seed a child's generator goes on, as the single env's np_random
            self._child_rngs = [rng if s is None else seeding.np_random(s)[0] for s, rng in zip(seeds, self._child_rngs)]
        trainer_seeds = [self._draw_trainer_seed(i) for i in range(self.num_envs)]
        self._children = build_children(self.train_mode, self.data, self.task.train_config, trainer_seeds)
        for episode, trainer_seed in zip(self.episodes, trainer_seeds):
            episode.task.seed(trainer_seed)
        evaluations = self._children.evaluate(self.task.val_eval, list(range(self.num_envs)), self.evaluator)
        infos: dict[str, Any] = {}
        observations = []
        for i, (episode, evaluation) in enumerate(zip(self.episodes, evaluations)):
            observation, info = episode.begin(evaluation, 0)
            observations.append(observation)
            infos = self._add_info(infos, info | {"episode_step": 0}, i)
        self._steps[:] = 0
        self._needs_reset[:] = False
        self._started = True
        return np.stack(observations), infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        check_open(self)
        if not self._started:
            raise RuntimeError("call reset() before step()")
        stepping = ~self._needs_reset
        actions = check_actions(actions, self.action_space, stepping)
        for child in np.flatnonzero(stepping):
            self.episodes[child].apply_action(actions[child])

        if stepping.any():
            assert self._children is not None
            iterations = self._children.iterations
            plans = {int(i): self.episodes[i].plan(int(iterations[i])) for i in np.flatnonzero(stepping)}

            def record(child: int, index: int, loss_sum: float, evaluation: Evaluation) -> bool:
                return self.episodes[child].record_chunk(index, loss_sum, evaluation)

            self._children.train_chunks(
                plans, [episode.loss for episode in self.episodes], self.task.val_eval, self.evaluator, record
            )

        observations = np.zeros((self.num_envs, *self._observation_shape), dtype=np.float32)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminations = np.zeros(self.num_envs, dtype=bool)
        truncations = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        for i in range(self.num_envs):
            if stepping[i]:
                observation, reward, terminated, info = self.episodes[i].finish(self._iteration(i))
                self._steps[i] += 1
                # Gymnasium's TimeLimit rule, as the single env under gym.make(max_episode_steps=...): a run that ends
                # at the very step the limit cuts is both terminated and truncated.
                truncated = self.max_episode_steps is not None and self._steps[i] >= self.max_episode_steps
                if terminated:  # as in the single env: a truncated child has not finished its training run
                    info.update(self.episodes[i].final_metrics(partial(self._evaluate_full, i)))
                if terminated or truncated:
                    self.episodes[i].running = False
                info["episode_step"] = int(self._steps[i])
                rewards[i], terminations[i], truncations[i] = reward, terminated, truncated
                if (terminated or truncated) and self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP:
                    infos = self._add_info(infos, {"final_obs": observation, "final_info": info}, i)
                    observation, info = self._reset_child(i)
            else:
                observation, info = self._reset_child(i)
            observations[i] = observation
            infos = self._add_info(infos, info, i)
        self._needs_reset = (terminations | truncations) & (self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP)
        return observations, rewards, terminations, truncations, infos

    def copy_child(self, source: int, target: int) -> None:
        """Give child ``target`` the state of child ``source``: weights, momentum buffers, BatchNorm statistics
        and its episode's statistics (population-based training's exploit step). ``target`` keeps its own
        batch order, Phi, generator and step count; both must be at the same iteration of training."""
        check_open(self)
        if self._children is None:
            raise RuntimeError("call reset() before copy_child()")
        for name, child in (("source", source), ("target", target)):
            if isinstance(child, bool) or not isinstance(child, (int, np.integer)) or not 0 <= child < self.num_envs:
                raise ValueError(f"{name} must be a child index in [0, {self.num_envs}), got {child!r}")
        iterations = self._children.iterations
        if iterations[source] != iterations[target]:
            raise ValueError(
                f"children {source} and {target} are at iterations {iterations[source]} and {iterations[target]}: "
                "copy only between children at the same point of training"
            )
        self._children.copy_child(source, target)
        self.episodes[target].adopt(self.episodes[source])

    def close_extras(self, **kwargs: Any) -> None:
        self._children = None  # the children's weights and batches; a later reset or step raises

    # ---------------------------------------------------------------- attributes (``set_attr("phi", ...)``)
    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Per child: ``"phi"`` (the task's loss parameters, ``C x C`` in classification), ``"movable_rows"``, or
        an attribute every child shares, as a single env of the task has it (``"train_config"``, ``"metric"``,
        ``"num_classes"``, ...: :meth:`ala_gym.envs.spec.BuiltTask.public_attributes`)."""
        if name == "phi":
            return tuple(episode.task.phi for episode in self.episodes)
        if name == "movable_rows":
            return tuple(episode.task.movable_rows for episode in self.episodes)
        shared = self.task.public_attributes()
        if name not in shared:
            raise AttributeError(f"the children have no attribute {name!r}; they have 'phi', 'movable_rows' and {sorted(shared)}")
        return tuple(shared[name] for _ in range(self.num_envs))

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Set ``"phi"`` per child: a list (or a stacked array) of ``num_envs`` matrices, or one matrix for every
        child."""
        check_open(self)
        values = phi_values(name, values, self.num_envs, np.ndim(self.episodes[0].task.phi))
        checked = [episode.task.phi_checker()(value) for episode, value in zip(self.episodes, values)]
        for episode, value in zip(self.episodes, checked):  # all checked before any child changes
            episode.task.set_values(value)

    # ---------------------------------------------------------------- helpers
    def _draw_trainer_seed(self, child: int) -> int:
        # The single env's reset draws its trainer seed the same way from its np_random.
        return int(self._child_rngs[child].integers(2**63 - 1))

    def _iteration(self, child: int) -> int:
        assert self._children is not None
        return int(self._children.iterations[child])

    def _reset_child(self, child: int) -> tuple[np.ndarray, dict]:
        seed = self._draw_trainer_seed(child)
        assert self._children is not None
        self._children.reset_child(child, seed)
        self.episodes[child].task.seed(seed)
        evaluation = self._children.evaluate(self.task.val_eval, [child], self.evaluator)[0]
        self._steps[child] = 0
        observation, info = self.episodes[child].begin(evaluation, 0)
        return observation, info | {"episode_step": 0}

    def _evaluate_full(self, child: int, split: str) -> Evaluation:
        data = {"val": self.data.val, "test": self.data.test}[split]
        assert self._children is not None
        return self._children.evaluate(data, [child], self.evaluator)[0]



# ---------------------------------------------------------------- shared by every ALA vector env
def check_vector_args(
    num_envs: int, max_episode_steps: int | None, autoreset_mode: AutoresetMode | str, train_mode: str,
    render_mode: str | None = None,
) -> AutoresetMode:
    """The shared arguments of an ALA vector env, checked; returns the autoreset mode as an enum."""
    if render_mode is not None:  # a picture asked for must not silently never come
        raise ValueError(
            f"the vector env does not render (render_mode must be None, got {render_mode!r}): render one child "
            "with gym.make(id, render_mode='rgb_array' or 'ansi')"
        )
    check_int("num_envs", num_envs, 1)
    check_optional_int("max_episode_steps", max_episode_steps, 1)
    modes = "AutoresetMode.NEXT_STEP or AutoresetMode.SAME_STEP ('NextStep' or 'SameStep')"
    try:
        autoreset_mode = AutoresetMode(autoreset_mode)
    except ValueError:
        raise ValueError(f"autoreset_mode must be {modes}, got {autoreset_mode!r}") from None
    if autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
        raise ValueError(f"autoreset_mode must be {modes}, got {autoreset_mode}")
    if train_mode not in TRAIN_MODES:
        raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
    return autoreset_mode


def check_actions(actions: Any, action_space: gym.Space, stepping: np.ndarray) -> np.ndarray:
    """The vector action as an array, every ``stepping`` child's action checked before any child changes."""
    try:
        actions = np.asarray(actions)
    except ValueError:  # NumPy's message on a ragged nesting says nothing of actions
        raise ValueError(f"actions must have shape {action_space.shape} (children x rows), got a ragged sequence") from None
    if actions.shape != action_space.shape:
        raise ValueError(f"actions must have shape {action_space.shape} (children x rows), got {actions.shape}")
    for i in np.flatnonzero(stepping):
        check_action(actions[i], actions.shape[1])
    return actions


def set_vector_spaces(envs: VectorEnv, observation_space: gym.Space, action_space: gym.Space, autoreset_mode: AutoresetMode) -> None:
    """The spaces, metadata and render mode of a vector env of ``envs.num_envs`` ALA children."""
    envs.metadata = {"render_modes": [], "autoreset_mode": autoreset_mode}
    envs.render_mode = None
    envs.single_observation_space = observation_space
    envs.single_action_space = action_space
    envs.observation_space = batch_space(observation_space, envs.num_envs)
    envs.action_space = batch_space(action_space, envs.num_envs)


def check_open(envs: VectorEnv) -> None:
    """Refuse to train the children of a closed vector env."""
    if envs.closed:
        raise RuntimeError("this vector env is closed: make a new one with gym.make_vec(...)")


def seed_children(envs: VectorEnv, seed: int | list[int | None] | None) -> list[int | None] | None:
    """Seed the vector env's own ``np_random`` and return the per-child seeds of ``reset(seed=...)``:
    ``seed + i``, or one listed seed each (None in a list: that child's generator goes on, as in Gymnasium's
    vector envs); None for ``seed=None`` (every child's generator goes on). numpy integers and 0-d arrays count
    as ints; a seed that is no integer, or a negative one, is a ``ValueError`` (as the single env's), naming it."""
    num_envs = envs.num_envs
    if isinstance(seed, np.ndarray) and seed.ndim == 0:
        seed = seed.item()
    if seed is None:
        VectorEnv.reset(envs, seed=None)
        return None
    if isinstance(seed, (list, tuple, np.ndarray)):
        if len(seed) != num_envs:
            raise ValueError(f"need one seed per child ({num_envs}), got {len(seed)}")
        seeds = [None if value is None else _seed(f"seed[{i}]", value, "an int or None") for i, value in enumerate(seed)]
        VectorEnv.reset(envs, seed=None)
        return seeds
    first = _seed("seed", seed, f"an int, a list of {num_envs} ints or None")
    VectorEnv.reset(envs, seed=first)
    return [first + i for i in range(num_envs)]


def _seed(name: str, value: Any, expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value}")
    return int(value)


def phi_values(name: str, values: Any, num_envs: int, phi_ndim: int) -> list[Any]:
    """``set_attr(name, values)``'s per-child Phi matrices: ``name`` must be ``"phi"``, ``values`` one
    matrix per child (a list, or one array stacked along a first axis: one more than a Phi's ``phi_ndim``) or
    one for all."""
    if name != "phi":
        raise ValueError(f"only 'phi' can be set on the children, not {name!r}")
    try:
        depth = np.ndim(values)
    except ValueError:  # a ragged nesting: taken as one value per child, each checked by its child
        depth = phi_ndim + 1
    # By depth, not by type: one Phi as nested lists is one value for all, as an array of its shape is.
    values = list(values) if depth == phi_ndim + 1 else [values] * num_envs
    if len(values) != num_envs:
        raise ValueError(f"need one value per child ({num_envs}), got {len(values)}")
    return list(values)
