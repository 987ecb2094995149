"""The ALA Gymnasium environments; importing this package registers their ids (``ala_gym.ENV_IDS``)."""

from functools import partial
from typing import Any

from gymnasium.envs.registration import load_env_creator, register, registry

from ala_gym import ENV_IDS
from ala_gym.envs.aucpr import ALACIFAR10AUCPREnv, ALADigitsAUCPREnv, ALAFashionMNISTAUCPREnv
from ala_gym.envs.cifar10 import ALACIFAR10Env
from ala_gym.envs.classification import ALAClassificationEnv
from ala_gym.envs.digits import ALADigitsEnv
from ala_gym.envs.fashion_mnist import ALAFashionMNISTEnv
from ala_gym.envs.metric_learning import ALAMetricLearningEnv

__all__ = [
    "ALAClassificationEnv",
    "ALACIFAR10Env",
    "ALADigitsEnv",
    "ALAFashionMNISTEnv",
    "ALACIFAR10AUCPREnv",
    "ALADigitsAUCPREnv",
    "ALAFashionMNISTAUCPREnv",
    "ALAMetricLearningEnv",
    "make_vector_env",
]


# Where each vector backend lives, named by entry-point string (as gymnasium's registry names env classes):
# the Ray backend sits in the wrappers layer behind its extra, and is imported only when asked for.
VECTOR_BACKENDS = {"native": "ala_gym.envs.vector:ALAVectorEnv", "ray": "ala_gym.wrappers.ray:RayVectorEnv"}


def make_vector_env(env_id: str, num_envs: int, backend: str = "native", **kwargs: Any) -> Any:
    """``gym.make_vec(env_id, num_envs=N, backend=...)`` creator.

    ``backend="native"`` (default): :class:`ala_gym.envs.vector.ALAVectorEnv`, every child in this process.
    ``backend="ray"``: :class:`ala_gym.wrappers.ray.RayVectorEnv`, the children on Ray actors
    (``pip install ala-gym[ray]``; keywords such as ``children_per_worker`` and ``address`` are its own).
    Module-level (bound to an id with ``functools.partial``) so that env specs stay picklable.
    """
    if backend not in VECTOR_BACKENDS:
        raise ValueError(f"backend must be one of {sorted(VECTOR_BACKENDS)}, got {backend!r}")
    return load_env_creator(VECTOR_BACKENDS[backend])(env_id, num_envs, **kwargs)

for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in registry:  # importing twice (or reloading) must not re-register
        register(id=_env_id, entry_point=_entry_point, vector_entry_point=partial(make_vector_env, _env_id))
