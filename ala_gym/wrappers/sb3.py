"""A Stable-Baselines3 ``VecEnv`` over an ALA vector env (native :class:`ala_gym.envs.vector.ALAVectorEnv`
or :class:`ala_gym.wrappers.ray.RayVectorEnv`, which share one contract).

SB3 does not accept a ``gymnasium.vector.VectorEnv``; its ``VecEnv`` resets a finished child within
the same step and returns per-child info dicts. The adapter runs the vector env in ``SAME_STEP``
autoreset mode and translates: ``info["terminal_observation"]`` (the last observation of a finished
episode), ``info["TimeLimit.truncated"]``, and ``info["episode"] = {"r", "l", "t"}`` (what SB3's
``VecMonitor`` adds, so ``ep_rew_mean`` is logged without another wrapper).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from ala_gym.core.global_rng import python_random_kept
from ala_gym.wrappers import ChildAttributes, require

require("sb3")  # before importing it: without the extra, one line saying which to install
with python_random_kept():  # its first import draws from Python's random
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

StepReturn = tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]
"""SB3's ``VecEnvStepReturn`` as this adapter gives it: observations in one array (``VecEnvObs`` also admits
dicts and tuples), rewards, dones and one info dict per child."""


class SB3VecEnv(VecEnv):
    """``SB3VecEnv(ALAVectorEnv(...))``, or ``SB3VecEnv.make("ALA-Digits-v0", num_envs=4, **kwargs)`` (with
    ``backend="ray"`` among the keywords for children on Ray actors).

    Seeding follows SB3: ``seed(s)`` makes the next ``reset()`` seed child ``i`` with ``s + i``, which
    is also the native env's convention, so ``SB3VecEnv.seed(s)`` equals ``ALAVectorEnv.reset(seed=s)``.
    """

    def __init__(self, venv: gym.vector.VectorEnv) -> None:
        if not isinstance(venv, gym.vector.VectorEnv):
            raise TypeError(f"SB3VecEnv wraps an ALA vector env (gym.make_vec of an ALA id), got {type(venv).__name__}")
        if venv.metadata["autoreset_mode"] != AutoresetMode.SAME_STEP:
            raise ValueError("SB3VecEnv needs an ALA vector env built with autoreset_mode=AutoresetMode.SAME_STEP")
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._start = time.time()

    @classmethod
    def make(cls, env_id: str, num_envs: int, **kwargs: Any) -> SB3VecEnv:
        """Build the vector env for ``env_id`` (``gym.make_vec``) in SAME_STEP mode and wrap it."""
        mode = kwargs.pop("autoreset_mode", AutoresetMode.SAME_STEP)
        if mode not in (AutoresetMode.SAME_STEP, AutoresetMode.SAME_STEP.value):
            raise ValueError(f"SB3VecEnv runs its vector env in AutoresetMode.SAME_STEP, got autoreset_mode={mode!r}; leave it out")
        return cls(gym.make_vec(env_id, num_envs=num_envs, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs).unwrapped)

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """SB3's ``seed``, except that ``seed(None)`` draws nothing from NumPy's global generator (SB3's draws a
        seed there): the next ``reset()`` continues each child's own generator, as the native ``reset()`` does."""
        if seed is None:
            self._seeds = [None] * self.num_envs
            return self._seeds
        return super().seed(seed)

    def reset(self) -> np.ndarray:  # SB3's VecEnvObs, as one array
        seed = self._seeds[0]
        # SB3 seeds env i with seed + i; the native env does the same from one integer.
        # set_options' options go to the native reset, which refuses any (it takes none) rather than drop them.
        options = next((options for options in self._options if options), None)
        observations, infos = self.venv.reset(seed=seed, options=options)
        self.reset_infos = self._split_infos(infos)
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return observations

    def step(self, actions: np.ndarray) -> StepReturn:
        # VecEnv.step itself, with this adapter's return type.
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        # As given: the vector env refuses actions of another shape (a reshape here would deal one child's actions
        # out among the others without a word).
        self._actions = np.asarray(actions)

    def step_wait(self) -> StepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async(): call step_async(actions) first")
        observations, rewards, terminations, truncations, infos = self.venv.step(self._actions)
        self._actions = None
        self._returns += rewards
        self._lengths += 1
        dones = terminations | truncations
        step_infos = self._split_infos(infos)
        final_infos = self._split_infos(infos.get("final_info", {}))
        for i in np.flatnonzero(dones):
            # SB3 wants the finished episode's info, not the reset's, plus its bookkeeping keys.
            info = final_infos[i]
            info["terminal_observation"] = infos["final_obs"][i]
            info["TimeLimit.truncated"] = bool(truncations[i] and not terminations[i])
            info["episode"] = {"r": float(self._returns[i]), "l": int(self._lengths[i]), "t": round(time.time() - self._start, 6)}
            self.reset_infos[i] = step_infos[i]
            step_infos[i] = info
            self._returns[i] = 0.0
            self._lengths[i] = 0
        return observations, rewards.astype(np.float32), dones, step_infos

    def _split_infos(self, infos: dict[str, Any]) -> list[dict[str, Any]]:
        """Gymnasium's dict of masked arrays -> one dict per child."""
        per_child: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, values in infos.items():
            if key.startswith("_") or key in ("final_obs", "final_info"):
                continue
            mask = infos.get(f"_{key}", np.ones(self.num_envs, dtype=bool))
            for i in np.flatnonzero(mask):
                per_child[i][key] = values[i]
        return per_child

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":  # what SB3 asks of every VecEnv; the children do not render
            return [self.venv.render_mode for _ in self._get_indices(indices)]
        values = cast(ChildAttributes, self.venv).get_attr(attr_name)
        return [values[i] for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        venv = cast(ChildAttributes, self.venv)
        current = list(venv.get_attr(attr_name))
        for i in self._get_indices(indices):
            current[i] = value
        venv.set_attr(attr_name, current)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        raise NotImplementedError("the children are not separate env objects; use get_attr/set_attr('phi')")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
