"""The ALA Gymnasium environments; their ids (``ala_gym.ENV_IDS``) are registered by importing ``ala_gym``."""

from ala_gym.envs.aucpr import ALACIFAR10AUCPREnv, ALADigitsAUCPREnv, ALAFashionMNISTAUCPREnv
from ala_gym.envs.cifar10 import ALACIFAR10Env
from ala_gym.envs.classification import ALAClassificationEnv
from ala_gym.envs.digits import ALADigitsEnv
from ala_gym.envs.fashion_mnist import ALAFashionMNISTEnv
from ala_gym.envs.metric_learning import ALAMetricLearningEnv
from ala_gym.registration import ENV_IDS, VECTOR_BACKENDS, make_vector_env

__all__ = [
    "ALAClassificationEnv",
    "ALACIFAR10Env",
    "ALADigitsEnv",
    "ALAFashionMNISTEnv",
    "ALACIFAR10AUCPREnv",
    "ALADigitsAUCPREnv",
    "ALAFashionMNISTAUCPREnv",
    "ALAMetricLearningEnv",
    "ENV_IDS",
    "VECTOR_BACKENDS",
    "make_vector_env",
]

