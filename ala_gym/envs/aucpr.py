"""ALA rewarded by the validation AUCPR (section 6.2 of the paper, Table 2): the classification tasks, another metric."""

from __future__ import annotations

from typing import Any

from ala_gym.envs.cifar10 import ALACIFAR10Env
from ala_gym.envs.digits import ALADigitsEnv
from ala_gym.envs.fashion_mnist import ALAFashionMNISTEnv


class AUCPRTask:
    """Makes ``metric="aucpr"`` the default of a classification task (any keyword still overrides it)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"metric": "aucpr", **kwargs})  # type: ignore[call-arg]


class ALACIFAR10AUCPREnv(AUCPRTask, ALACIFAR10Env):
    """
    ## Description
    :class:`ala_gym.envs.cifar10.ALACIFAR10Env` (ResNet-32 on CIFAR-10, the paper's training schedule)
    with the reward computed from the validation AUCPR instead of the error rate: the setting of the
    paper's Table 2 (section 6.2). AUCPR is the average precision of each class one-vs-rest, from the
    softmax scores, macro-averaged over the classes (``ala_gym.core.metrics.aucpr``: torchmetrics'
    exact ``multiclass_average_precision`` on the fixed validation subsample, on the training device).
    AUCPR is not a sum over samples: no loss trains it directly, which is the case ALA is made for.

    ## Action Space
    As :class:`ala_gym.envs.classification.ALAClassificationEnv`: one of ``{-beta, 0, +beta}`` per
    class pair of the Eq. 6 loss, ``MultiDiscrete([3] * 55)``.

    ## Observation Space
    As :class:`ala_gym.envs.classification.ALAClassificationEnv`: per class pair, the Eq. 7 statistics
    history, their relative change, Phi and progress, ``Box(shape=(55, 24))``.

    ## Rewards
    Eq. 5 with the sign flipped, because higher AUCPR is better: ``sign(M_{t+1} - M_t)`` with ``M`` the
    discounted validation AUCPR of Eq. 4 (``reward="raw"``: the difference itself). A positive reward
    means the child's AUCPR went up. ``info["row_improvement"]`` of a pair ``(i, j)`` is the change of
    the validation-count-weighted mean of the two classes' average precisions. Divergence ends the
    episode with ``divergence_penalty``, and the diverged child scores AUCPR 0, the worst value.

    ## Episode End
    As :class:`ala_gym.envs.classification.ALAClassificationEnv`; ``info["test_metric"]`` and
    ``info["final_val_metric"]`` are AUCPRs (full test and validation splits) in [0, 1].

    ## Arguments
    Every keyword of :class:`ala_gym.envs.cifar10.ALACIFAR10Env`; ``metric`` defaults to ``"aucpr"``.

    ## Version History
    * v0: initial version.
    """


class ALAFashionMNISTAUCPREnv(AUCPRTask, ALAFashionMNISTEnv):
    """
    ## Description
    :class:`ala_gym.envs.fashion_mnist.ALAFashionMNISTEnv` (a small CNN on Fashion-MNIST) with the
    reward computed from the validation AUCPR instead of the error rate: the AUCPR task of the paper's
    Table 2 on a dataset a CPU can train. AUCPR is the average precision of each class one-vs-rest,
    from the softmax scores, macro-averaged over the classes (``ala_gym.core.metrics.aucpr``:
    torchmetrics' exact ``multiclass_average_precision`` on the fixed validation subsample).

    ## Action Space, Observation Space, Episode End
    Those of :class:`ala_gym.envs.classification.ALAClassificationEnv`; the test and final validation
    metrics at the episode's end are AUCPRs in [0, 1].

    ## Rewards
    Higher AUCPR is better, so the sign of Eq. 5 flips: the reward is ``sign(M_{t+1} - M_t)``, ``M``
    the discounted validation AUCPR (Eq. 4). Per-pair credit and divergence (a diverged child scores
    AUCPR 0) as in :class:`ALACIFAR10AUCPREnv`.

    ## Arguments
    Every keyword of :class:`ala_gym.envs.fashion_mnist.ALAFashionMNISTEnv`; ``metric`` defaults to
    ``"aucpr"``.

    ## Version History
    * v0: initial version.
    """


class ALADigitsAUCPREnv(AUCPRTask, ALADigitsEnv):
    """
    ## Description
    :class:`ala_gym.envs.digits.ALADigitsEnv` (an MLP on scikit-learn's 8x8 digits, seconds on a CPU)
    rewarded by the validation AUCPR (``ala_gym.core.metrics.aucpr``, macro one-vs-rest average
    precision): the AUCPR task at the size of tests and demos. Spaces and episode end are those of
    :class:`ala_gym.envs.classification.ALAClassificationEnv`.

    ## Rewards
    As :class:`ALACIFAR10AUCPREnv`: AUCPR is better when higher, and a positive reward
    (``sign(M_{t+1} - M_t)``) means it went up.

    ## Arguments
    Every keyword of :class:`ala_gym.envs.digits.ALADigitsEnv`; ``metric`` defaults to ``"aucpr"``.

    ## Version History
    * v0: initial version.
    """
