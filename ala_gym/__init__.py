"""ala-gym: Adaptive Loss Alignment as Gymnasium environments, on a torch-only child-training core.

Layout (imports flow one way, left to right): :mod:`ala_gym.core` (torch only) -> :mod:`ala_gym.envs`
(gymnasium) -> :mod:`ala_gym.wrappers` (adapters for RL libraries) -> ``ala_gym.agents`` ->
``ala_gym.benchmarks`` (the repository's ``agents/`` and ``benchmarks/`` folders, installed under ``ala_gym``).

Registration. ``import ala_gym`` registers ``ALA-CIFAR10-v0``, ``ALA-FashionMNIST-v0`` and
``ALA-Digits-v0`` (classification, rewarded by the validation error), their AUCPR twins
``ALA-CIFAR10-AUCPR-v0``, ``ALA-FashionMNIST-AUCPR-v0`` and ``ALA-Digits-AUCPR-v0``, and the
metric-learning ids ``ALA-FashionMNIST-Triplet-v0``, ``ALA-FashionMNIST-Margin-v0``,
``ALA-CIFAR10-Triplet-v0`` and ``ALA-CIFAR10-Margin-v0`` with gymnasium, whatever the order of the two
imports; ``gym.register_envs(ala_gym)`` (gymnasium's idiom that keeps linters from dropping the import)
works too, and ``gym.make("ala_gym.envs:ALA-Digits-v0")`` needs no import at all. Registration names
entry points by string (:mod:`ala_gym.registration`), so it imports no env: the core's code stays free of
gymnasium, though importing it runs this registration.
"""

__version__ = "0.1.0"

from ala_gym.registration import ENV_IDS, register_env, register_envs  # noqa: E402  (after the version, which setup.cfg reads)

register_envs()

__all__ = ["ENV_IDS", "__version__", "register_env"]
