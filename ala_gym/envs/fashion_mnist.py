"""ALA on Fashion-MNIST with a small CNN child."""

from __future__ import annotations

from typing import Any

from ala_gym.envs.classification import ALAClassificationEnv


class ALAFashionMNISTEnv(ALAClassificationEnv):
    """
    ## Description
    ALA (see :class:`ALAClassificationEnv`) on Fashion-MNIST, 10 classes of 28x28 grey images: 50,000
    training, 10,000 validation (seeded split of the 60,000 training images) and 10,000 test images,
    read from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or
    ``data_root``. The child is a small CNN (two conv + pool stages, 16/32 channels, 128 hidden units)
    trained for 8,000 momentum-SGD iterations (about 20 epochs; lr 0.05, weight decay 5e-4, decayed
    10x at 50% and 75%), with a controller step every K = 200 iterations: 40 steps an episode.

    ## Arguments
    Every keyword of :class:`ALAClassificationEnv`; ``data_root`` is the folder of the four idx
    ``.gz`` files.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, **kwargs: Any) -> None:
        defaults = dict(model="small_cnn", total_iterations=8000, steps_per_action=200, lr=0.05, weight_decay=5e-4)
        super().__init__(**{"dataset": "fashion-mnist", **defaults, **kwargs})  # dataset= too may be overridden
