"""The ALA Gymnasium environments; their ids (``ala_gym.ENV_IDS``) are registered by importing ``ala_gym``.

Two env classes, each built from a :class:`ala_gym.envs.spec.TaskSpec`: :class:`ALAClassificationEnv` (Phi of
Eq. 6 over class pairs) and :class:`ALAMetricLearningEnv` (Eqs. 9-10); every registered id is one of them with
keywords (``ala_gym.registration.ENV_IDS``). :func:`task_spec` gives an id's spec without loading data.
:func:`register_dataset` and :func:`register_model` (from :mod:`ala_gym.core.data` and :mod:`ala_gym.core.models`)
give data and models of one's own a name every env accepts.
"""

from ala_gym.core.data import register_dataset
from ala_gym.core.models import register_model
from ala_gym.envs.classification import ALAClassificationEnv, ClassificationLoss
from ala_gym.envs.metric_learning import ALAMetricLearningEnv, RetrievalLoss
from ala_gym.envs.spec import DataSpec, TaskSpec, task_spec
from ala_gym.registration import ENV_IDS, VECTOR_BACKENDS, make_vector_env

__all__ = [
    "ALAClassificationEnv",
    "ALAMetricLearningEnv",
    "ClassificationLoss",
    "DataSpec",
    "ENV_IDS",
    "RetrievalLoss",
    "TaskSpec",
    "VECTOR_BACKENDS",
    "make_vector_env",
    "register_dataset",
    "register_model",
    "task_spec",
]
