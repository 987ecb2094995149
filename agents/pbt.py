"""Population-based training of Phi (Jaderberg et al., 2017) over the children of one vector env.

Read top to bottom: the config, the controller.

The children are the population. Each child ``i`` trains under a fixed-form Phi, ``I`` plus one value
``u_i`` on every off-diagonal entry (the family of ``phi-uniform``: negative sharpens the loss, positive
smooths it), with ``u_i`` drawn uniformly from ``initial_range`` at the start. Every ``interval``
controller steps the children are ranked by their discounted validation metric (Eq. 4, the env's
``info["val_metric_discounted"]``; never the test split): each child of the bottom ``quantile`` copies the
state of a child drawn from the top ``quantile`` (weights, momentum, BatchNorm statistics and its episode's
statistics: ``ALAVectorEnv.copy_child``; its own batch order stays) and its ``u`` (exploit), then moves that
``u`` by ``+-explore_step`` or, with probability ``resample_probability``, draws it afresh (explore). So a
schedule of ``u`` over training is learned within one run, from the same children the other rows train.

``frozen=True`` (the ``pbt-frozen`` row) keeps every child at its initial value: the population PBT starts
from, without its rounds. A seed's test metric is, as for every multi-child row, the mean over the children at the end; by then
most children descend from the best members. Needs the native vector env (the Ray backend cannot copy
children between actors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import gymnasium as gym
import numpy as np

from ala_gym.agents.base import Controller
from ala_gym.core.checks import check_int, check_real

if TYPE_CHECKING:
    from ala_gym.envs.vector import ALAVectorEnv

NO_CHANGE = 1


@dataclass
class PBTConfig:
    """Population-based training of the uniform off-diagonal Phi value."""

    interval: int = 10
    """Controller steps between two rounds of exploit and explore."""
    quantile: float = 0.25
    """Fraction of the population replaced each round (the bottom) and copied from (the top): rounded, at least one
    child, at most half, so that the two groups never share a child."""
    initial_range: tuple[float, float] = (-0.1, 0.1)
    """Range of the children's initial off-diagonal values (uniform draws)."""
    explore_step: float = 0.01
    """How far an exploited child's value moves, up or down with equal probability."""
    resample_probability: float = 0.25
    """Probability that an exploited child draws its value afresh from ``initial_range`` instead."""
    bounds: tuple[float, float] = (-0.2, 0.2)
    """Values are kept in this interval."""

    def __post_init__(self) -> None:
        check_int("interval", self.interval, 1)
        check_real("quantile", self.quantile, 0.0, 0.5, low_open=True)
        low, high = self.bounds
        if not -1 <= low <= self.initial_range[0] <= self.initial_range[1] <= high <= 1:
            raise ValueError(f"need -1 <= bounds[0] <= initial_range <= bounds[1] <= 1, got {self.initial_range}, {self.bounds}")
        check_real("explore_step", self.explore_step, 0.0)
        check_real("resample_probability", self.resample_probability, 0.0, 1.0)


class PBTController(Controller):
    """Population-based training of ``u`` in ``Phi = I + u`` (off the diagonal) over the vector env's children."""

    name = "pbt"
    learned = True
    multi_child = True

    def __init__(self, config: PBTConfig | None = None, num_envs: int = 10, frozen: bool = False) -> None:
        if num_envs < 2:
            raise ValueError(f"population-based training needs at least 2 children, got {num_envs}")
        self.config = config or PBTConfig()
        self.num_envs = num_envs
        self.frozen = frozen
        """No exploit or explore: each child keeps its initial value (the ``pbt-frozen`` row, what PBT starts from)."""

    def env_kwargs(self) -> dict[str, Any]:
        return {"loss_form": "linear"}

    def begin(self, envs: gym.vector.VectorEnv, seed: int) -> None:
        if not hasattr(envs.unwrapped, "copy_child"):
            raise ValueError(f"{type(envs.unwrapped).__name__} cannot copy one child's state into another: use the native vector env")
        self.rng = np.random.default_rng(seed)

    def begin_episode(self, envs: gym.vector.VectorEnv) -> None:
        # The native vector env, which begin() checked for: the one that can copy a child into another.
        self.envs = cast("ALAVectorEnv", envs.unwrapped)
        low, high = self.config.initial_range
        self.values = self.rng.uniform(low, high, size=envs.num_envs)
        self.steps = 0
        self.running = np.ones(envs.num_envs, dtype=bool)

    def act(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        return np.full(observations.shape[:2], NO_CHANGE, dtype=np.int64)

    def prescribe_phi(self, observations: np.ndarray, infos: dict) -> np.ndarray:
        num_classes = np.shape(infos["phi"])[-1]
        identity = np.eye(num_classes)
        return np.stack([identity + value * (1 - identity) for value in self.values])

    def learn(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_observations: np.ndarray,
        dones: np.ndarray,
        infos: dict,
    ) -> dict[str, float]:
        self.running &= ~np.asarray(dones, dtype=bool)
        self.steps += 1
        logs = {"pbt_value_mean": float(self.values.mean()), "pbt_value_std": float(self.values.std())}
        if self.frozen or self.steps % self.config.interval:
            return logs
        # Among the children still in their run: one that has ended (diverged; the env resets it) is out of it, and
        # the others go on with their rounds. At the last step every child has ended: no round.
        alive = np.flatnonzero(self.running)
        metric = np.asarray(infos["val_metric_discounted"], dtype=np.float64)[alive]
        higher_is_better = bool(self.envs.evaluator.higher_is_better)
        order = alive[np.argsort(-metric if higher_is_better else metric, kind="stable")]  # best first
        # At most half: with an odd population and quantile 0.5 the rounded share would put the median child in both
        # groups, a top child to be replaced, or to copy a bottom one that another copy had just overwritten.
        count = min(max(1, int(round(self.config.quantile * len(order)))), len(order) // 2)
        if count == 0:
            return logs
        top, bottom = order[:count], order[-count:]
        for target in bottom:
            source = int(self.rng.choice(top))
            self.envs.copy_child(source, int(target))
            self.values[target] = self._explore(self.values[source])
        return {**logs, "pbt_round": 1.0}

    def _explore(self, value: float) -> float:
        config = self.config
        if self.rng.random() < config.resample_probability:
            return float(self.rng.uniform(*config.initial_range))
        moved = value + config.explore_step * self.rng.choice([-1.0, 1.0])
        return float(np.clip(moved, *config.bounds))
