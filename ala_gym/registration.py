"""The env ids and their registration with gymnasium, by entry-point strings: registering imports no env.

:func:`register_envs` runs when ``ala_gym`` is imported, in whatever order ``ala_gym`` and gymnasium are
imported; ``gym.make(id)`` imports an env's module only when it is made.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gymnasium import error
from gymnasium.envs.registration import EnvSpec, load_env_creator, register, registry, spec

CLASSIFICATION = "ala_gym.envs.classification:ALAClassificationEnv"
METRIC_LEARNING = "ala_gym.envs.metric_learning:ALAMetricLearningEnv"


@dataclass(frozen=True)
class EnvVariant:
    """One registered id: the env class that runs it, the keywords it fixes, and what it is (its page's text)."""

    entry_point: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


DIGITS = dict(dataset="digits", model="mlp", total_iterations=2000, steps_per_action=50, lr=0.05, weight_decay=5e-4)
FASHION_MNIST = dict(
    dataset="fashion-mnist", model="small_cnn", total_iterations=8000, steps_per_action=200, lr=0.05, weight_decay=5e-4
)
CIFAR10 = dict(dataset="cifar10", model="resnet32", total_iterations=64000, steps_per_action=200, lr=0.1, weight_decay=1e-4)
# ResNet-32 as the paper's CIFAR child; budget and learning rate chosen for a CPU, not tuned.
CIFAR10_RETRIEVAL = dict(dataset="cifar10", model="resnet32", total_iterations=8000, steps_per_action=200, lr=0.05,
                         weight_decay=1e-4)  # fmt: skip
AUCPR_TEXT = (
    " rewarded by the validation AUCPR instead of the error rate: the setting of the paper's Table 2 (section "
    "6.1, \"Optimizing AUCPR\"; the paper's AUCPR is Eban et al.'s, whose exact definition it does not give). AUCPR is the average precision of each class one-vs-rest, from the softmax scores, macro-averaged "
    "over the classes (``ala_gym.core.metrics.aucpr``: torchmetrics' exact ``multiclass_average_precision`` on "
    "the fixed validation subsample). It is not a sum over samples, so no loss trains it directly: the case ALA "
    "is made for. Higher is better, so a positive reward, ``sign(M_{t+1} - M_t)``, means it went up; the test "
    "and final validation metrics are AUCPRs in [0, 1], and a diverged child scores 0."
)

ENV_IDS: dict[str, EnvVariant] = {
    "ALA-CIFAR10-v0": EnvVariant(CLASSIFICATION, CIFAR10, (
        "The paper's CIFAR-10 setting (section 6.1): 40,000 training / 10,000 validation (seeded) / 10,000 test "
        "images, ResNet-32 trained with momentum SGD, a controller step every K = 200 iterations (section 5). The "
        "paper does not state the child's schedule; it is He et al. (2016)'s CIFAR-10 recipe for ResNet-32 (batch "
        "128, lr 0.1, weight decay 1e-4, decayed 10x at 32k and 48k of 64k iterations, pad-crop-flip "
        "augmentation): 320 steps an episode. ``data_root`` is torchvision's root (holding "
        "``cifar-10-batches-py/``; downloaded there when ``download`` and online) or a CIFAR-format folder with "
        "its own ``MD5SUMS``, such as the 6,187-image subset in the data home's ``cifar10-subset`` folder (``$ALA_GYM_DATA``, else "
        "``~/.local/share/ala_gym``)."
    )),
    "ALA-FashionMNIST-v0": EnvVariant(CLASSIFICATION, FASHION_MNIST, (
        "Fashion-MNIST, 10 classes of 28x28 grey images: 50,000 training, 10,000 validation (seeded split of the "
        "60,000 training images) and 10,000 test images, read from Debian's ``dataset-fashion-mnist`` "
        "(``/usr/share/datasets/fashion-mnist``) or ``data_root`` (the folder of the four idx ``.gz`` files). The "
        "child is a small CNN (two conv + pool stages, 16/32 channels, 128 hidden units) trained for 8,000 "
        "momentum-SGD iterations (about 20 epochs; lr 0.05, weight decay 5e-4, decayed 10x at 50% and 75%), "
        "with a controller step every K = 200 iterations: 40 steps an episode."
    )),
    "ALA-Digits-v0": EnvVariant(CLASSIFICATION, DIGITS, (
        "scikit-learn's bundled 8x8 digits, 10 classes: 1,077 training, 360 validation and 360 test images. "
        "The child is a 64-64 ReLU MLP trained for 2,000 momentum-SGD iterations (lr 0.05, decayed 10x at 50% "
        "and 75%), with a controller step every K = 50 iterations: 40 steps an episode. Embedded in the "
        "package's dependencies, so it needs no download: the default for demos and tests; shrink "
        "``total_iterations`` and ``steps_per_action`` for tests."
    )),
    "ALA-FashionMNIST-Triplet-v0": EnvVariant(METRIC_LEARNING, dict(dataset="fashion-mnist", framework="triplet"), (
        "The triplet framework with the distance mixture (Eq. 9) on Fashion-MNIST: training on classes 0-4 "
        "(T-shirt, trouser, pullover, dress, coat; 25,000 images of the 50,000-image training split), retrieval "
        "on classes 5-9 (sandal, shirt, sneaker, bag, ankle boot; about 5,000 validation and 5,000 test images). "
        "Small CNN with a 64-d embedding, 2,000 momentum-SGD iterations of 5 x 20 batches (lr 0.01, decayed 10x "
        "at 50% and 75%), a controller step every K = 100 iterations: 20 steps an episode."
    )),
    "ALA-FashionMNIST-Margin-v0": EnvVariant(METRIC_LEARNING, dict(dataset="fashion-mnist", framework="margin"), (
        "The margin framework (Wu et al.'s distance-weighted sampling) with focal weighting (Eq. 10) on "
        "Fashion-MNIST, with the data, child and budget of ``ALA-FashionMNIST-Triplet-v0`` "
        "(``loss_form=\"mixture\"`` for the distance mixture)."
    )),
    "ALA-CIFAR10-Triplet-v0": EnvVariant(METRIC_LEARNING, dict(CIFAR10_RETRIEVAL, framework="triplet"), (
        "The triplet framework with the distance mixture (Eq. 9) on CIFAR-10: training on classes 0-4 "
        "(airplane, automobile, bird, cat, deer), retrieval on 5-9 (dog, frog, horse, ship, truck). ResNet-32 "
        "with a 64-d embedding, 8,000 momentum-SGD iterations of 5 x 20 batches (lr 0.05, weight decay 1e-4, "
        "decayed 10x at 50% and 75%; pad-crop-flip augmentation), a step every K = 200 iterations: 40 steps an "
        "episode. ``data_root`` as for ``ALA-CIFAR10-v0``."
    )),
    "ALA-CIFAR10-Margin-v0": EnvVariant(METRIC_LEARNING, dict(CIFAR10_RETRIEVAL, framework="margin"), (
        "The margin framework with focal weighting (Eq. 10) on CIFAR-10, with the data, child and budget of "
        "``ALA-CIFAR10-Triplet-v0`` (``loss_form=\"mixture\"`` for the distance mixture)."
    )),
    "ALA-CIFAR10-AUCPR-v0": EnvVariant(CLASSIFICATION, dict(CIFAR10, metric="aucpr"), (
        "``ALA-CIFAR10-v0`` (ResNet-32 on CIFAR-10 on He et al.'s schedule; the paper's Table 2 used Eban et al.'s "
        "architecture)" + AUCPR_TEXT
    )),
    "ALA-FashionMNIST-AUCPR-v0": EnvVariant(CLASSIFICATION, dict(FASHION_MNIST, metric="aucpr"), (
        "``ALA-FashionMNIST-v0`` (a small CNN on Fashion-MNIST, the AUCPR task on a dataset a CPU can train)"
        + AUCPR_TEXT
    )),
    "ALA-Digits-AUCPR-v0": EnvVariant(CLASSIFICATION, dict(DIGITS, metric="aucpr"), (
        "``ALA-Digits-v0`` (an MLP on scikit-learn's 8x8 digits, the AUCPR task at the size of tests and demos)"
        + AUCPR_TEXT
    )),
    "ALA-Classification-v0": EnvVariant(CLASSIFICATION, {}, (
        "Data and a child model of one's own: ``dataset`` takes a registered name, arrays or tensors ``(x_train, "
        "y_train, x_test, y_test)`` of any input shape (tabular ``[N, F]``, signals, images), or two map-style "
        "``torch.utils.data.Dataset`` s ``(train, test)``; ``model`` takes a registered name or a factory "
        "``(input_shape, num_outputs) -> nn.Module``, called once per child. uint8 inputs are images scaled to "
        "[0, 1]; every input is normalised per channel (per feature for ``[N, F]``) with the training split's "
        "statistics; ``val_size`` training samples (default a fifth) become the validation split. The env holds "
        "copies: the caller's arrays are never written (``ala_gym.core.data.from_user_data``). A factory's model "
        "keeps its own initialisation, for any layer or parameter, built with torch's global generator forked "
        "and seeded from the child's seed; its forward passes run under the same kind of fork, so dropout is "
        "reproducible per seed, and the global random state is never changed. ``gym.make`` refuses, in one line "
        "each, inputs that are not finite numbers, lengths that differ, labels that are not integers ``0..C-1``, "
        "a class missing from the training or validation split, and a model that fails on, or gives outputs "
        "other than ``[2, C]`` for, two training inputs. Defaults: ``\"digits\"`` and ``\"mlp\"`` (which flattens "
        "any input shape). A vector env trains a factory's children one after another unless "
        "``train_mode=\"batched\"`` asks for vmap (refused for a model with dropout-like layers). "
        "``ala_gym.core.data.register_dataset`` and ``ala_gym.core.models.register_model`` give data and "
        "models names."
    )),
}
"""The registered ids: each a registration of one env class with keywords (Gymnasium's way of variants)."""

# Where each vector backend lives, named by entry-point string (as gymnasium's registry names env classes):
# the Ray backend sits in the wrappers layer behind its extra, and is imported only when asked for.
VECTOR_ENTRY_POINTS = "ala_gym.vector_entry_points"
"""The module whose attribute named by an id is that id's vector env creator (ids are no Python names)."""
VECTOR_BACKENDS = {"native": "ala_gym.envs.vector:ALAVectorEnv", "ray": "ala_gym.wrappers.ray:RayVectorEnv"}
RAY_KEYWORDS = (
    "children_per_worker", "num_cpus_per_worker", "num_gpus_per_worker", "address", "num_cpus", "runtime_env",
    "worker_lost_reward",
)  # fmt: skip
"""The Ray backend's own keywords (named here, as its module needs Ray to import): given to the native backend,
they are told to ask for the Ray one, where the env class would call them unknown."""


def make_vector_env(env_id: str, num_envs: int, backend: str = "native", **kwargs: Any) -> Any:
    """``gym.make_vec(env_id, num_envs=N, backend=...)`` creator.

    ``backend="native"`` (default): :class:`ala_gym.envs.vector.ALAVectorEnv`, every child in this process.
    ``backend="ray"``: :class:`ala_gym.wrappers.ray.RayVectorEnv`, the children on Ray actors
    (``pip install -e '.[ray]'``; keywords such as ``children_per_worker`` and ``address`` are its own).
    Each id's vector entry point names it bound to that id (``"ala_gym.vector_entry_points:<id>"``), so that
    env specs stay picklable and serialisable.
    """
    if backend not in VECTOR_BACKENDS:
        raise ValueError(f"backend must be one of {sorted(VECTOR_BACKENDS)}, got {backend!r}")
    ray_only = [name for name in RAY_KEYWORDS if name in kwargs]
    if backend != "ray" and ray_only:
        raise TypeError(
            f"{', '.join(ray_only)} {'is a keyword' if len(ray_only) == 1 else 'are keywords'} of the Ray vector env: "
            f"pass backend=\"ray\" to gym.make_vec (pip install -e '.[ray]'), or leave {'it' if len(ray_only) == 1 else 'them'} out"
        )
    if backend == "ray":  # its workers are other processes: they import the module of an id of one's own
        env_id = importable_id(env_id)
    # gymnasium types what it loads as a creator called with keywords only; a backend takes the id and size first.
    backend_class: Callable[..., Any] = load_env_creator(VECTOR_BACKENDS[backend])
    return backend_class(env_id, num_envs, **kwargs)


def register_envs() -> None:
    """Register :data:`ENV_IDS` with gymnasium; ids already registered (a second import, a reload) are kept."""
    for env_id, variant in ENV_IDS.items():
        if env_id not in registry:
            _register(env_id, variant.kwargs, variant.entry_point)


def register_env(env_id: str, kwargs: dict[str, Any], entry_point: str = CLASSIFICATION) -> None:
    """Register an env id of one's own with gymnasium, as the package registers its own: ``entry_point``'s env
    class (classification by default, or ``METRIC_LEARNING``) with ``kwargs`` (a registered dataset and model
    name, a budget, ...), and the package's vector env behind ``gym.make_vec`` (gymnasium's own would run
    the children one env each, which the controllers, meta-training and AdaLFL cannot drive).

    Called in the module that also registers the id's data and model names, the id works in every command
    line as ``"module:EnvId"``: naming it imports the module, which registers all three in that process (the
    Ray backend's workers are handed the id so named, see :func:`importable_id`). The
    package's own ids are refused: replacing one would change what every command and result means by it."""
    if env_id in ENV_IDS:
        raise ValueError(f"{env_id} is one of the package's env ids; register yours under a name of its own")
    _REGISTERED_IN[env_id] = importing_module()
    _register(env_id, kwargs, entry_point)


def importing_module() -> str:
    """The module whose top-level code (its import) led to this call, through any helper functions: importing it
    again in another process registers what it registered here; ``"__main__"`` where none did (a script's own
    code, or a function called after every import)."""
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    return frame.f_globals.get("__name__", "__main__") if frame is not None else "__main__"


_REGISTERED_IN: dict[str, str] = {}
"""The module that registered each id of one's own (:func:`register_env`): where another process finds it."""


def importable_id(env_id: str) -> str:
    """``env_id`` as a process that has imported only ``ala_gym`` makes it: an id of one's own as
    ``"module:EnvId"``, naming the module that registered it (gymnasium strips the module from an id it makes).
    An id registered by the script run as ``__main__`` is refused: no other process can import that."""
    module = _REGISTERED_IN.get(env_id)
    if module is None:
        return env_id
    if module == "__main__":
        raise ValueError(
            f"{env_id} was registered by the script run as __main__, which the Ray workers cannot import: call "
            f"register_env in a module of its own and name the id 'module:{env_id}'"
        )
    return f"{module}:{env_id}"


def _register(env_id: str, kwargs: dict[str, Any], entry_point: str) -> None:
    # The vector entry point is a string, as the env's is: gymnasium writes only strings into a spec's JSON
    # (``EnvSpec.to_json``). It names the attribute of ala_gym.vector_entry_points called by the id.
    register(id=env_id, entry_point=entry_point, kwargs=dict(kwargs), vector_entry_point=f"{VECTOR_ENTRY_POINTS}:{env_id}")


class UnknownEnvError(ValueError):
    """An env id that gymnasium does not know (:func:`env_spec`)."""


def env_spec(env_id: str) -> EnvSpec:
    """gymnasium's spec of ``env_id``, read as ``gym.make`` reads it: ``"module:EnvId"`` imports ``module``
    first (where an env of one's own registers itself). An id that is not registered raises
    :class:`UnknownEnvError`, which names the closest ala-gym ids rather than gymnasium's closest name of any
    installed env."""
    module, _, name = env_id.rpartition(":")
    if module:
        if module.startswith("."):  # importlib needs a package to resolve it against
            raise UnknownEnvError(f"env id {env_id!r}: {module!r} is relative; name the module by its full import path")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UnknownEnvError(f"env id {env_id!r}: cannot import {module!r} ({exc})") from None
        except Exception as exc:  # whatever else the module raises while it is imported
            raise UnknownEnvError(f"env id {env_id!r}: importing {module!r} fails ({type(exc).__name__}: {exc})") from None
    try:
        return spec(name)
    except error.Error:
        by_lower = {known_id.lower(): known_id for known_id in ENV_IDS}
        close = [by_lower[match] for match in difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.75)]
        known = f"did you mean {close[0]!r}?" if close else f"the package registers {', '.join(ENV_IDS)};"
        raise UnknownEnvError(
            f"unknown env id {name!r}: {known} an env of your own is named 'module:EnvId', the module registering "
            "it with gymnasium when imported"
        ) from None
