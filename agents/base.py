"""The one interface every controller implements, and the loop that runs one over a vector env.

A controller drives a ``gymnasium.vector.VectorEnv`` of ALA children (``num_envs`` may be 1) for one
training run of each child and returns what happened to each, as :class:`EpisodeRecord`s. Step-wise
controllers (fixed baselines, the bundled REINFORCE) implement :meth:`Controller.act` and, if they
learn, :meth:`Controller.learn`; the default :meth:`Controller.run` loop does the rest. Controllers
with their own training loop (Stable-Baselines3) override :meth:`Controller.run`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

import ala_gym  # noqa: F401  (registers the env ids that make_envs names)
from ala_gym.wrappers import ChildAttributes

OnStep = Callable[[int, dict[str, Any]], None]
"""``on_step(step, logs)``, called after every vector step of :meth:`Controller.run`."""


@dataclass
class EpisodeRecord:
    """One child's training run under a controller."""

    val_metric: list[float] = field(default_factory=list)
    """Validation metric (env subsample) after every step."""
    rewards: list[float] = field(default_factory=list)
    phi: list[list[list[float]]] = field(default_factory=list)
    """Phi after every step (``C x C`` nested lists, JSON-ready)."""
    test_metric: float = float("nan")
    """Test metric at the end of the training run; NaN if the episode was truncated before it ended."""
    final_val_metric: float = float("nan")
    final_val_loss: float = float("nan")
    """The loss on the full validation split at the end (the env's ``final_val_loss``: NLL in classification)."""
    diverged: bool = False
    iterations: int = 0
    test_statistics: dict[str, float] = field(default_factory=dict)
    """The env's other terminal ``test_*`` keys (``test_recall@k`` in metric learning)."""
    worker_lost: bool = False
    """The child's Ray worker died before its run ended (``info["worker_lost"]``); its test metric is NaN."""


class EpisodeRecorder:
    """Collects each child's first episode (later autoreset episodes are ignored).

    :meth:`add` reads gymnasium vector-env infos (a dict of per-child arrays with ``_key`` masks);
    :meth:`add_child` takes one child's info dict, as Stable-Baselines3's ``VecEnv`` gives them.
    """

    def __init__(self, num_envs: int) -> None:
        self.records = [EpisodeRecord() for _ in range(num_envs)]
        self.finished = np.zeros(num_envs, dtype=bool)

    def add(self, rewards: np.ndarray, terminations: np.ndarray, truncations: np.ndarray, infos: dict) -> None:
        for child in range(len(self.records)):
            if infos.get("_val_metric", np.ones(len(self.records), bool))[child]:
                info = {key: values[child] for key, values in infos.items() if isinstance(values, np.ndarray)}
                self.add_child(child, float(rewards[child]), bool(terminations[child] or truncations[child]), info)

    def add_child(self, child: int, reward: float, done: bool, info: dict) -> None:
        """Append one step of ``child`` (``info`` holds the single env's keys) unless its first episode ended."""
        if self.finished[child]:
            return
        record = self.records[child]
        record.val_metric.append(float(info["val_metric"]))
        record.rewards.append(float(reward))
        record.phi.append(np.asarray(info["phi"]).round(6).tolist())
        record.iterations = int(info["iteration"])
        if done:
            record.diverged = bool(info["diverged"])
            record.worker_lost = bool(info.get("worker_lost", False))
            # Absent after a truncation (max_episode_steps): the record keeps NaN, "not measured".
            record.test_metric = float(info.get("test_metric", np.nan))
            record.final_val_metric = float(info.get("final_val_metric", np.nan))
            record.final_val_loss = float(info.get("final_val_loss", np.nan))
            record.test_statistics = {
                key: float(value) for key, value in info.items() if key.startswith("test_") and key != "test_metric"
            }
            self.finished[child] = True

    @property
    def done(self) -> bool:
        return bool(self.finished.all())


def require_vector_env(envs: Any) -> None:
    """Refuse (``TypeError``, one line) a single env where a controller needs a vector env."""
    if not hasattr(envs, "num_envs"):  # a single env, what the guides show first (a vector env may be duck-typed)
        raise TypeError(
            f"a controller runs a vector env, not a single env ({type(getattr(envs, 'unwrapped', envs)).__name__}): "
            "build one with controller.make_envs(env_id) or gym.make_vec(env_id, num_envs=...)"
        )


class Controller(ABC):
    """Chooses loss-parameter changes for a batch of ALA children."""

    name: str = "controller"
    num_envs: int = 1
    """How many children the benchmark should give this controller (``gym.make_vec(..., num_envs=)``)."""
    learned: bool = False
    """Whether the controller learns (or runs a learned policy): the benchmark draws its Phi trajectories."""
    config: Any
    """The controller's configuration dataclass, where it has one (the benchmark's ``name(field=value)``
    keywords set its fields); declared here, set by the controllers that have one."""
    multi_child: bool = False
    """Whether one controller drives several children as one run (a shared policy): the benchmark's
    ``--children`` sets its ``num_envs``. Fixed controllers treat children independently; the benchmark's
    ``--baseline-children`` sets theirs."""
    acts_in_any_state: bool = True
    """Whether :meth:`act` chooses actions for any observations it is shown once :meth:`begin` has run (what
    ``ala_gym.agents.imitate`` needs of a teacher); False for a controller that acts only inside its own
    :meth:`run` (Stable-Baselines3's builds its model there, AdaLFL trains the child itself)."""
    own_keywords: frozenset[str] = frozenset()
    """Keywords that :meth:`make_envs` takes for this controller rather than for the env (AdaLFL's config
    fields, so that the benchmark's ``adalfl@offline_steps=300`` sets them); the benchmark checks the others
    as the env's before any run."""

    def check_settings(self) -> None:  # noqa: B027  (a hook: most controllers check their config when it is made)
        """Refuse, with a ``ValueError``, settings that do not fit together (a config set after construction, as
        the benchmark's ``name(field=value)`` sets it, against the child count)."""

    def check_task(self, spec: Any) -> None:  # noqa: B027  (a hook: most controllers drive any ALA task)
        """Refuse, with a ``ValueError``, a task (its :class:`ala_gym.envs.spec.TaskSpec`) this controller cannot
        drive; the benchmark asks before any run."""

    def env_kwargs(self) -> dict[str, Any]:
        """Env keywords this controller needs (e.g. ``loss_form``); the caller may give them only as they are."""
        return {}

    def check_env_kwargs(self, env_kwargs: dict[str, Any]) -> None:
        """Refuse (``ValueError``) env keywords that ask otherwise than :meth:`env_kwargs` (``ce`` under
        ``loss_form="sigmoid"``): the run would train under the controller's, against what was asked."""
        own = self.env_kwargs()
        if clashes := sorted(key for key in own if key in env_kwargs and env_kwargs[key] != own[key]):
            asked = ", ".join(f"{key}={env_kwargs[key]!r}" for key in clashes)
            needs = ", ".join(f"{key}={own[key]!r}" for key in clashes)
            raise ValueError(f"{self.name} trains its children with {needs}, but the env keywords ask {asked}; leave them out")

    def make_envs(self, env_id: str, **env_kwargs: Any) -> gym.vector.VectorEnv:
        """The vector env this controller expects: ``num_envs`` children, :meth:`env_kwargs` applied."""
        self.check_env_kwargs(env_kwargs)
        return gym.make_vec(env_id, num_envs=self.num_envs, **{**env_kwargs, **self.env_kwargs()})

    def check_envs(self, envs: gym.vector.VectorEnv) -> None:
        """Refuse (``ValueError``) envs this controller cannot drive, before anything runs; the command lines call
        it on the envs they made, so that such input ends in one line. :meth:`run` meets the same on its way."""
        require_vector_env(envs)
        mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode != AutoresetMode.NEXT_STEP:  # under SAME_STEP a finished child's last info is in final_info
            raise ValueError(f"a controller runs a vector env that autoresets NEXT_STEP (gym.make_vec's default), not {mode}")

    def begin(self, envs: gym.vector.VectorEnv, seed: int) -> None:  # noqa: B027  (a hook: most controllers need none)
        """Called once before :meth:`run` steps ``envs``: learned controllers size themselves to the env
        and every controller seeds its own generators from ``seed`` (never the global RNGs)."""

    @abstractmethod
    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        """Actions ``[num_envs, n_pairs]`` in {0, 1, 2} (-beta, 0, +beta) for the current observations."""

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray | None:
        """Phi to impose on each child before the step (``[num_envs, C, C]``), or None to leave Phi alone.

        Fixed baselines that prescribe Phi (:mod:`ala_gym.agents.baselines`: random, confusion, uniform, ramp,
        online smoothing) return it and act with 1 (no change).
        """
        return None

    def learn(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_observations: np.ndarray,
        dones: np.ndarray,
        infos: dict,
    ) -> dict[str, float]:
        """Learn from one transition of every child (``dones``: its episode terminated or was truncated);
        return scalars to log. Fixed controllers do nothing."""
        return {}

    def run(
        self,
        envs: gym.vector.VectorEnv,
        seed: int,
        on_step: OnStep | None = None,
    ) -> list[EpisodeRecord]:
        """Run every child of ``envs`` through one full training run; return one record per child.

        ``envs`` autoresets in gymnasium's default ``NEXT_STEP`` mode (as ``gym.make_vec`` builds it); a
        child's later episodes, run while the others finish, are neither recorded nor learned from.

        ``on_step(step, logs)`` is called after every vector step (for progress bars and logging) with
        :func:`step_logs` plus what :meth:`learn` returned.
        """
        require_vector_env(envs)  # before begin() reads the children's count
        self.begin(envs, seed)
        return self.run_episode(envs, seed, on_step)

    def begin_episode(self, envs: gym.vector.VectorEnv) -> None:  # noqa: B027  (a hook: most controllers need none)
        """Called by :meth:`run_episode` before it resets ``envs``: a learner clears what it tracks per run."""

    def run_episode(self, envs: gym.vector.VectorEnv, seed: int, on_step: OnStep | None = None) -> list[EpisodeRecord]:
        """One training run of every child of ``envs`` from ``reset(seed=seed)``, the controller as it is
        (:meth:`begin` has been called); one record per child. :meth:`run` is :meth:`begin` and this; a
        controller that learns across runs calls it once per run."""
        Controller.check_envs(self, envs)  # the mode every controller's episode loop needs
        self.begin_episode(envs)
        observations, infos = envs.reset(seed=seed)
        recorder = EpisodeRecorder(envs.num_envs)
        step = 0
        while not recorder.done:
            phi = self.prescribe_phi(observations, infos)
            if phi is not None:
                cast(ChildAttributes, envs).set_attr("phi", list(phi))
            actions = self.act(observations, infos)
            next_observations, rewards, terminations, truncations, infos = envs.step(actions)
            running = ~recorder.finished  # children still in their first episode before this step
            recorder.add(rewards, terminations, truncations, infos)
            logs = self.learn(observations, actions, rewards, next_observations, terminations | truncations, infos)
            observations = next_observations
            step += 1
            if on_step is not None:
                phi = np.asarray(infos["phi"])[running]
                on_step(step, {**step_logs(rewards[running], phi, infos["val_metric"][running]), **logs})
        return recorder.records


def step_logs(rewards: np.ndarray, phi: np.ndarray, val_metric: np.ndarray) -> dict[str, Any]:
    """What every controller logs per step, over the children still running: mean reward and validation
    metric, Phi's drift from identity (:func:`phi_stats`), and ``phi`` itself
    (``[children, C, C]`` array, for heatmaps)."""
    return {"reward": float(np.mean(rewards)), "val_metric": float(np.mean(val_metric)), **phi_stats(phi), "phi": phi}


def mean_off_diagonal(phi: np.ndarray) -> np.ndarray:
    """The mean off-diagonal entry of each ``C x C`` matrix of ``phi`` (``[..., C, C]``): ``[...]``, the one number
    the results report for how far a Phi smooths (positive) or sharpens (negative) the loss."""
    phi = np.asarray(phi, dtype=np.float64)
    return phi[..., ~np.eye(phi.shape[-1], dtype=bool)].mean(axis=-1)


def phi_stats(phi: np.ndarray) -> dict[str, float]:
    """Drift of Phi (``[children, C, C]``) from identity; for loss parameters that are a vector per child
    (``[children, rows]``, metric learning) their mean and largest absolute value instead.

    ``phi_drift = ||Phi - I||_F / C`` and ``phi_max_offdiag = max |Phi(i, j)|, i != j``: the two numbers
    that showed Phi blowing up at the paper's beta on 100 classes in the public re-implementation.
    """
    if np.ndim(phi) == 2:
        return {"phi_mean": float(np.mean(phi)), "phi_max_abs": float(np.max(np.abs(phi)))}
    phi = np.asarray(phi, dtype=np.float64).reshape(-1, *np.shape(phi)[-2:])
    num_classes = phi.shape[-1]
    identity = np.eye(num_classes)
    drift = np.linalg.norm(phi - identity, axis=(1, 2)) / num_classes
    off_diagonal = np.abs(phi[:, ~identity.astype(bool)]) if num_classes > 1 else np.zeros((len(phi), 1))
    return {"phi_drift": float(drift.mean()), "phi_max_offdiag": float(off_diagonal.max())}
