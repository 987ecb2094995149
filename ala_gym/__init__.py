"""ala-gym: Adaptive Loss Alignment as Gymnasium environments.

``import ala_gym`` registers ``ALA-CIFAR10-v0``, ``ALA-FashionMNIST-v0`` and ``ALA-Digits-v0``.
"""

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

ENV_IDS = {
    "ALA-CIFAR10-v0": "ala_gym.envs.cifar10:ALACIFAR10Env",
    "ALA-FashionMNIST-v0": "ala_gym.envs.fashion_mnist:ALAFashionMNISTEnv",
    "ALA-Digits-v0": "ala_gym.envs.digits:ALADigitsEnv",
}

for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in registry:  # importing twice (or reloading) must not re-register
        register(id=_env_id, entry_point=_entry_point)
