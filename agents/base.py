"""The one interface every controller implements, and the loop that runs one over a vector env.

A controller drives a ``gymnasium.vector.VectorEnv`` of ALA children (``num_envs`` may be 1) for one
training run of each child and returns what happened to each, as :class:`EpisodeRecord`s. Step-wise
controllers (fixed baselines, the bundled REINFORCE) implement :meth:`Controller.act` and, if they
learn, :meth:`Controller.learn`; the default :meth:`Controller.run` loop does the rest. Controllers
with their own training loop (Stable-Baselines3) override :meth:`Controller.run`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np


@dataclass
class EpisodeRecord:
    """One child's training run under a controller."""

    val_metric: list[float] = field(default_factory=list)
    """Validation metric (env subsample) after every step."""
    rewards: list[float] = field(default_factory=list)
    phi: list[list[list[float]]] = field(default_factory=list)
    """Phi after every step (``C x C`` nested lists, JSON-ready)."""
    test_metric: float = float("nan")
    final_val_metric: float = float("nan")
    diverged: bool = False
    iterations: int = 0


class EpisodeRecorder:
    """Collects each child's first episode from vector-env infos (later autoreset episodes are ignored)."""

    def __init__(self, num_envs: int) -> None:
        self.records = [EpisodeRecord() for _ in range(num_envs)]
        self.finished = np.zeros(num_envs, dtype=bool)

    def add(self, rewards: np.ndarray, terminations: np.ndarray, truncations: np.ndarray, infos: dict) -> None:
        for child, record in enumerate(self.records):
            if self.finished[child] or not infos.get("_val_metric", np.ones(len(self.records), bool))[child]:
                continue
            record.val_metric.append(float(infos["val_metric"][child]))
            record.rewards.append(float(rewards[child]))
            record.phi.append(np.asarray(infos["phi"][child]).round(6).tolist())
            record.iterations = int(infos["iteration"][child])
            if terminations[child] or truncations[child]:
                record.diverged = bool(infos["diverged"][child])
                record.test_metric = float(infos["test_metric"][child])
                record.final_val_metric = float(infos["final_val_metric"][child])
                self.finished[child] = True

    @property
    def done(self) -> bool:
        return bool(self.finished.all())


class Controller(ABC):
    """Chooses loss-parameter changes for a batch of ALA children."""

    name: str = "controller"

    def begin(self, envs: gym.vector.VectorEnv) -> None:
        """Called once before :meth:`run` steps ``envs``; learned controllers size themselves here."""

    @abstractmethod
    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        """Actions ``[num_envs, n_pairs]`` in {0, 1, 2} (-beta, 0, +beta) for the current observations."""

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray | None:
        """Phi to impose on each child before the step (``[num_envs, C, C]``), or None to leave Phi alone.

        Fixed baselines that prescribe Phi (random, confusion-matrix) return it and act with 1 (no change).
        """
        return None

    def learn(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_observations: np.ndarray,
        terminations: np.ndarray,
        infos: dict,
    ) -> dict[str, float]:
        """Learn from one transition of every child; return scalars to log. Fixed controllers do nothing."""
        return {}

    def run(
        self,
        envs: gym.vector.VectorEnv,
        seed: int,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> list[EpisodeRecord]:
        """Run every child of ``envs`` through one full training run; return one record per child.

        ``on_step(step, logs)`` is called after every vector step (for progress bars and logging).
        """
        self.begin(envs)
        observations, infos = envs.reset(seed=seed)
        recorder = EpisodeRecorder(envs.num_envs)
        step = 0
        while not recorder.done:
            phi = self.prescribe_phi(observations, infos)
            if phi is not None:
                envs.set_attr("phi", list(phi))
            actions = self.act(observations, infos)
            next_observations, rewards, terminations, truncations, infos = envs.step(actions)
            recorder.add(rewards, terminations, truncations, infos)
            logs = self.learn(observations, actions, rewards, next_observations, terminations, infos)
            observations = next_observations
            step += 1
            if on_step is not None:
                on_step(step, {"reward": float(np.mean(rewards)), **logs})
        return recorder.records
