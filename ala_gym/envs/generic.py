"""ALA on a classification task of one's own: any labelled data, any ``nn.Module``."""

from __future__ import annotations

from typing import Any

from ala_gym.core.data import UserData
from ala_gym.core.models import ModelSpec
from ala_gym.envs.classification import ALAClassificationEnv

__all__ = ["ALAGenericClassificationEnv"]


class ALAGenericClassificationEnv(ALAClassificationEnv):
    """
    ## Description
    ALA (the loss of Eq. 6, its class-pair actions and the validation reward: see
    :class:`ala_gym.envs.classification.ALAClassificationEnv`) on data and a child model of one's own::

        env = gym.make("ALA-Classification-v0", dataset=(x_train, y_train, x_test, y_test),
                       model=lambda input_shape, num_outputs: MyNet(input_shape[0], num_outputs))

    Data. ``dataset`` takes a registered name, arrays or tensors ``(x_train, y_train, x_test, y_test)``, or
    two map-style ``torch.utils.data.Dataset`` s ``(train, test)`` yielding ``(x, y)``. Inputs may have any
    shape ``[N, *input_shape]``: tabular ``[N, F]``, signals ``[N, L]`` or ``[N, C, L]``, images
    ``[N, C, H, W]``. uint8 inputs are images, scaled to [0, 1] and then normalised per channel exactly as
    the registered image datasets are; any other real dtype becomes float32, normalised per channel (dim 1;
    per feature for ``[N, F]``) with the training split's statistics (a constant feature is only centred).
    Labels are integer class indices ``0..C-1``, ``C`` the largest label plus one. ``val_size`` samples of
    the training part (default: a fifth), drawn from ``split_seed``, become the validation split the reward
    is measured on; the test part is kept for ``info["test_metric"]``. The env holds copies: the caller's
    arrays are never written (:func:`ala_gym.core.data.from_user_data`).

    Model. ``model`` takes a registered name or a factory ``(input_shape, num_outputs) -> nn.Module``,
    called once per child (each child needs its own weights, so a module instance is refused). A factory's
    model keeps its own constructor's initialisation, for any layer, buffer or ``nn.Parameter``: it is built
    on the CPU with torch's global generator forked and seeded from the child's seed, so a seed gives the
    same weights and the global random state is unchanged. Its forward passes run under the same kind of
    fork, seeded per pass from the child's own generator, so dropout (or any random draw in ``forward``)
    is reproducible per seed as well (:class:`ala_gym.core.trainer.ChildTrainer`).

    Checks. ``gym.make`` refuses, with one ``ValueError`` line each: inputs that are not finite numbers,
    ``x``/``y`` lengths that differ, labels that are not 1-D non-negative integers, fewer than two
    classes, a class with no sample in the training or validation split, a factory that returns no
    ``nn.Module``, and a model that fails on, or gives outputs other than ``[2, C]`` for, a batch of two
    training inputs (built and run once in evaluation mode).

    ## Action Space
    ``MultiDiscrete([3] * n_pairs)``, ``n_pairs = C (C + 1) / 2`` class pairs of the data's ``C`` classes
    (6 for 3 classes), as in :class:`ala_gym.envs.classification.ALAClassificationEnv`.

    ## Observation Space
    ``Box(shape=(n_pairs, 24), float32)``, as in :class:`ala_gym.envs.classification.ALAClassificationEnv`.

    ## Rewards
    As in :class:`ala_gym.envs.classification.ALAClassificationEnv`: the sign of the improvement of the
    discounted validation metric (``metric``, the error rate by default).

    ## Episode End
    As in :class:`ala_gym.envs.classification.ALAClassificationEnv`: after ``total_iterations`` SGD
    iterations, or at divergence.

    ## Arguments
    ``dataset`` and ``model`` as above (defaults: ``"digits"`` and ``"mlp"``, which flattens any input
    shape), and every keyword of :class:`ala_gym.envs.classification.ALAClassificationEnv`; ``data_root``
    and ``download`` apply to registered names only. ``ala_gym.core.data.register_dataset(name, loader)``
    (``loader()`` returns one of the data forms above) and ``ala_gym.core.models.register_model(name,
    factory)`` give data and models names, for command lines and configuration files.

    ``gym.make_vec("ALA-Classification-v0", num_envs=N, dataset=..., model=...)`` builds the native vector
    env. A factory's model trains its children one after another unless ``train_mode="batched"`` is asked
    for (:func:`ala_gym.core.batched.default_train_mode`), which a model with dropout-like layers refuses.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, dataset: str | UserData = "digits", *, model: ModelSpec = "mlp", **kwargs: Any) -> None:
        super().__init__(dataset, model=model, **kwargs)
