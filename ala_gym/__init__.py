"""ala-gym: Adaptive Loss Alignment as Gymnasium environments.

``import ala_gym`` registers ``ALA-CIFAR10-v0``, ``ALA-FashionMNIST-v0`` and ``ALA-Digits-v0``.
"""

from functools import partial
from typing import Any

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

ENV_IDS = {
    "ALA-CIFAR10-v0": "ala_gym.envs.cifar10:ALACIFAR10Env",
    "ALA-FashionMNIST-v0": "ala_gym.envs.fashion_mnist:ALAFashionMNISTEnv",
    "ALA-Digits-v0": "ala_gym.envs.digits:ALADigitsEnv",
}


def make_vector_env(env_id: str, num_envs: int, **kwargs: Any) -> Any:
    """``gym.make_vec(env_id, num_envs=N)`` creator; imports the vector env (and torch) only when called.

    Module-level (bound to an id with ``functools.partial``) so that env specs stay picklable.
    """
    from ala_gym.envs.vector import ALAVectorEnv

    return ALAVectorEnv(env_id, num_envs, **kwargs)


for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in registry:  # importing twice (or reloading) must not re-register
        register(id=_env_id, entry_point=_entry_point, vector_entry_point=partial(make_vector_env, _env_id))
