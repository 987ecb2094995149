"""ALA on CIFAR-10 with ResNet-32: the paper's classification setting."""

from __future__ import annotations

from typing import Any

from ala_gym.envs.classification import ALAClassificationEnv


class ALACIFAR10Env(ALAClassificationEnv):
    """
    ## Description
    ALA (see :class:`ALAClassificationEnv`) in the paper's CIFAR-10 setting (section 6.1, Table 1):
    40,000 training / 10,000 validation (seeded) / 10,000 test images, ResNet-32 (He et al. 2016)
    trained with momentum SGD (batch 128, lr 0.1, weight decay 1e-4, decayed 10x at 32k and 48k of
    64k iterations, pad-crop-flip augmentation), a controller step every K = 200 iterations: 320
    steps an episode.

    ## Arguments
    Every keyword of :class:`ALAClassificationEnv`. ``data_root`` is torchvision's root (holding
    ``cifar-10-batches-py/``; downloaded there when ``download`` and online) or a CIFAR-format folder
    with its own ``MD5SUMS``, such as the 6,187-image subset in ``shared/data/cifar10-subset``.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, **kwargs: Any) -> None:
        defaults = dict(model="resnet32", total_iterations=64000, steps_per_action=200, lr=0.1, weight_decay=1e-4)
        super().__init__(**{"dataset": "cifar10", **defaults, **kwargs})  # dataset= too may be overridden
