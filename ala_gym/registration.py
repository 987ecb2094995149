"""The env ids and their registration with gymnasium, by entry-point strings: registering imports no env.

:func:`register_envs` runs when ``ala_gym`` is imported, in whatever order ``ala_gym`` and gymnasium are
imported; ``gym.make(id)`` imports an env's module only when it is made.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from gymnasium.envs.registration import load_env_creator, register, registry

ENV_IDS = {
    "ALA-CIFAR10-v0": "ala_gym.envs.cifar10:ALACIFAR10Env",
    "ALA-FashionMNIST-v0": "ala_gym.envs.fashion_mnist:ALAFashionMNISTEnv",
    "ALA-Digits-v0": "ala_gym.envs.digits:ALADigitsEnv",
    "ALA-FashionMNIST-Triplet-v0": "ala_gym.envs.metric_learning:ALAFashionMNISTTripletEnv",
    "ALA-FashionMNIST-Margin-v0": "ala_gym.envs.metric_learning:ALAFashionMNISTMarginEnv",
    "ALA-CIFAR10-Triplet-v0": "ala_gym.envs.metric_learning:ALACIFAR10TripletEnv",
    "ALA-CIFAR10-Margin-v0": "ala_gym.envs.metric_learning:ALACIFAR10MarginEnv",
    "ALA-CIFAR10-AUCPR-v0": "ala_gym.envs.aucpr:ALACIFAR10AUCPREnv",
    "ALA-FashionMNIST-AUCPR-v0": "ala_gym.envs.aucpr:ALAFashionMNISTAUCPREnv",
    "ALA-Digits-AUCPR-v0": "ala_gym.envs.aucpr:ALADigitsAUCPREnv",
    "ALA-Classification-v0": "ala_gym.envs.generic:ALAGenericClassificationEnv",
}
"""The registered ids and their entry points."""

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


def register_envs() -> None:
    """Register :data:`ENV_IDS` with gymnasium; ids already registered (a second import, a reload) are kept."""
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point, vector_entry_point=partial(make_vector_env, env_id))
