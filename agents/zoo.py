"""RL Baselines3 Zoo hyperparameters for the ALA envs, read by the zoo from this module (the ``zoo`` extra)::

    python -m rl_zoo3.train --algo ppo --env ALA-Digits-v0 --gym-packages ala_gym --conf-file ala_gym.agents.zoo \\
        --env-kwargs total_iterations:400 steps_per_action:20 device:"'cpu'"

A module rather than a YAML file, so that the same ``--conf-file`` works from an installed package and from a
clone. :data:`hyperparams` holds, per env id, PPO with :class:`ala_gym.agents.sb3.SB3Config`'s defaults on SB3's
``MlpPolicy`` over the flattened observation (its weights are sized by the class count; the pair-shared policy of
:mod:`ala_gym.agents.sb3` is the package's own).
"""

from __future__ import annotations

from typing import Any

from ala_gym.agents.sb3 import SB3Config
from ala_gym.registration import ENV_IDS

N_ENVS = 4
"""Children the zoo trains side by side (its ``n_envs``: one single env each, in SB3's ``DummyVecEnv``)."""

_DEFAULTS = SB3Config()

PPO: dict[str, Any] = {
    "n_envs": N_ENVS,
    "n_timesteps": 2e3,
    "policy": "MlpPolicy",
    "n_steps": _DEFAULTS.n_steps,
    "batch_size": _DEFAULTS.batch_size or _DEFAULTS.n_steps * N_ENVS,  # 0 there: one minibatch of a whole rollout
    "gae_lambda": _DEFAULTS.gae_lambda,
    "n_epochs": _DEFAULTS.n_epochs,
    "gamma": _DEFAULTS.gamma,
    "learning_rate": _DEFAULTS.lr,
    "ent_coef": _DEFAULTS.ent_coef,
    "env_wrapper": ["gymnasium.wrappers.FlattenObservation"],
}

hyperparams: dict[str, dict[str, Any]] = {env_id: dict(PPO) for env_id in ENV_IDS}
"""The zoo's table, keyed by env id (the name and layout ``rl_zoo3.train --conf-file <module>`` reads): every id
the package registers (an id of one's own takes a table of its own, in the same layout)."""
