"""The ALA Gymnasium environments (registered in ``ala_gym/__init__.py``)."""

from ala_gym.envs.cifar10 import ALACIFAR10Env
from ala_gym.envs.classification import ALAClassificationEnv
from ala_gym.envs.digits import ALADigitsEnv
from ala_gym.envs.fashion_mnist import ALAFashionMNISTEnv

__all__ = ["ALAClassificationEnv", "ALACIFAR10Env", "ALADigitsEnv", "ALAFashionMNISTEnv"]
