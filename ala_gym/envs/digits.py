"""ALA on scikit-learn's bundled digits: an MLP child, seconds on a CPU."""

from __future__ import annotations

from typing import Any

from ala_gym.envs.classification import ALAClassificationEnv


class ALADigitsEnv(ALAClassificationEnv):
    """
    ## Description
    ALA (see :class:`ALAClassificationEnv` for the loss, actions, observations, rewards and episode end)
    on scikit-learn's bundled 8x8 digits, 10 classes: 1,077 training, 360 validation and 360 test
    images. The child is a 64-64 ReLU MLP trained for 2,000 momentum-SGD iterations (lr 0.05, decayed
    10x at 50% and 75%), with a controller step every K = 50 iterations: 40 steps an episode.
    Embedded in the package's dependencies, so it needs no download: the default for demos and tests.

    ## Arguments
    Every keyword of :class:`ALAClassificationEnv`; shrink ``total_iterations`` and ``steps_per_action``
    for tests.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, **kwargs: Any) -> None:
        defaults = dict(model="mlp", total_iterations=2000, steps_per_action=50, lr=0.05, weight_decay=5e-4)
        super().__init__(**{"dataset": "digits", **defaults, **kwargs})  # dataset= too may be overridden
