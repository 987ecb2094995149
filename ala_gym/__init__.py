"""ala-gym: Adaptive Loss Alignment as Gymnasium environments, on a torch-only child-training core.

Layout (imports flow one way, left to right): :mod:`ala_gym.core` (torch only) -> :mod:`ala_gym.envs`
(gymnasium) -> :mod:`ala_gym.wrappers` (adapters for RL libraries) -> ``agents`` -> ``benchmarks``.

Registration. ``import ala_gym.envs`` registers ``ALA-CIFAR10-v0``, ``ALA-FashionMNIST-v0`` and
``ALA-Digits-v0`` (classification, rewarded by the validation error), their AUCPR twins
``ALA-CIFAR10-AUCPR-v0``, ``ALA-FashionMNIST-AUCPR-v0`` and ``ALA-Digits-AUCPR-v0``, and the metric-learning ids ``ALA-FashionMNIST-Triplet-v0``,
``ALA-FashionMNIST-Margin-v0``, ``ALA-CIFAR10-Triplet-v0`` and ``ALA-CIFAR10-Margin-v0`` with gymnasium;
``gym.make("ala_gym.envs:ALA-Digits-v0")`` imports it by itself.
``import ala_gym`` registers them too, but only when gymnasium has already been imported
(``import gymnasium as gym; import ala_gym``, the usual order): the package root must not load
gymnasium itself, so that ``import ala_gym.core`` stays free of it for loss learners without RL.
Code that may import ``ala_gym`` before gymnasium imports ``ala_gym.envs``.
"""

import sys

__version__ = "0.1.0"

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
}
"""The registered ids and their entry points (registered by :mod:`ala_gym.envs`)."""

if "gymnasium" in sys.modules:
    import ala_gym.envs  # noqa: F401  (registers ENV_IDS)
