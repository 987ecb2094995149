"""The ALA Gymnasium environments; importing this package registers their ids (``ala_gym.ENV_IDS``)."""

from functools import partial
from typing import Any

from gymnasium.envs.registration import register, registry

from ala_gym import ENV_IDS
from ala_gym.envs.cifar10 import ALACIFAR10Env
from ala_gym.envs.classification import ALAClassificationEnv
from ala_gym.envs.digits import ALADigitsEnv
from ala_gym.envs.fashion_mnist import ALAFashionMNISTEnv

__all__ = ["ALAClassificationEnv", "ALACIFAR10Env", "ALADigitsEnv", "ALAFashionMNISTEnv", "make_vector_env"]


def make_vector_env(env_id: str, num_envs: int, **kwargs: Any) -> Any:
    """``gym.make_vec(env_id, num_envs=N)`` creator.

    Module-level (bound to an id with ``functools.partial``) so that env specs stay picklable.
    """
    from ala_gym.envs.vector import ALAVectorEnv

    return ALAVectorEnv(env_id, num_envs, **kwargs)


for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in registry:  # importing twice (or reloading) must not re-register
        register(id=_env_id, entry_point=_entry_point, vector_entry_point=partial(make_vector_env, _env_id))
