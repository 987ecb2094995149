"""The ALA Gymnasium environments; their ids (``ala_gym.ENV_IDS``) are registered by importing ``ala_gym``.

:func:`register_dataset` and :func:`register_model` (from :mod:`ala_gym.core.data` and
:mod:`ala_gym.core.models`) give data and models of one's own a name every env accepts.
"""

from ala_gym.core.data import register_dataset
from ala_gym.core.models import register_model
from ala_gym.envs.aucpr import ALACIFAR10AUCPREnv, ALADigitsAUCPREnv, ALAFashionMNISTAUCPREnv
from ala_gym.envs.cifar10 import ALACIFAR10Env
from ala_gym.envs.classification import ALAClassificationEnv
from ala_gym.envs.digits import ALADigitsEnv
from ala_gym.envs.fashion_mnist import ALAFashionMNISTEnv
from ala_gym.envs.generic import ALAGenericClassificationEnv
from ala_gym.envs.metric_learning import ALAMetricLearningEnv
from ala_gym.registration import ENV_IDS, VECTOR_BACKENDS, make_vector_env

__all__ = [
    "ALAClassificationEnv",
    "ALACIFAR10Env",
    "ALADigitsEnv",
    "ALAFashionMNISTEnv",
    "ALAGenericClassificationEnv",
    "ALACIFAR10AUCPREnv",
    "ALADigitsAUCPREnv",
    "ALAFashionMNISTAUCPREnv",
    "ALAMetricLearningEnv",
    "ENV_IDS",
    "VECTOR_BACKENDS",
    "make_vector_env",
    "register_dataset",
    "register_model",
]

