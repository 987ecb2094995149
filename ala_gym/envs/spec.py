"""One task spec behind every ALA env: what a child trains on, how, under which episode rules and which loss.

A :class:`TaskSpec` is typed and frozen, and each of its parts checks itself when it is made:

* :class:`DataSpec`: the dataset and its splits (where it lies is a setting of the machine, not of a result);
* :class:`ala_gym.core.trainer.TrainConfig`: the child model and its momentum SGD;
* :class:`ala_gym.envs.episode.EpisodeSettings`: the step schedule, reward and observation history;
* ``loss``: the task's own part (:class:`ala_gym.envs.classification.ClassificationLoss`,
  :class:`ala_gym.envs.metric_learning.RetrievalLoss`): the actions, the loss they move and the metric.

``gym.make(env_id, **keywords)`` and ``gym.make_vec`` go through one: the env class turns the registration's
keywords and the caller's into a spec (:func:`task_spec` does the same without building anything), and
:meth:`TaskSpec.build` loads the data and makes what every child shares (:class:`BuiltTask`). A single env, the
native and Ray vector envs, AdaLFL and the benchmark's header are all made from a spec; a spec is also what an
env built from it reports (``env.unwrapped.task_spec``), so that another env of the same task is one call away
(:meth:`TaskSpec.make_env`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import torch
from gymnasium.envs.registration import load_env_creator

from ala_gym.core.checks import check_bool, check_int, check_optional_int
from ala_gym.core.data import (
    LOADERS,
    ClassificationData,
    Split,
    UserData,
    from_user_data,
    load_dataset,
    resolve_device,
    training_subset,
)
from ala_gym.core.metrics import Evaluator
from ala_gym.core.trainer import TrainConfig
from ala_gym.envs.episode import EpisodeSettings
from ala_gym.envs.task import LossTask
from ala_gym.registration import env_spec

if TYPE_CHECKING:  # the envs import this module: the spec names their base class for the type checker only
    from ala_gym.envs.base import ALAEnv

__all__ = [
    "BuiltTask", "ComparedByValue", "DataSpec", "LossSpec", "TaskSpec", "assemble", "spec_keywords", "spec_of",
    "task_spec", "vector_task_spec",
]  # fmt: skip


def comparable(part: Any) -> Any:
    """A spec part as a value that ``==`` compares and ``hash`` takes: a dataclass as its type and fields, arrays,
    tensors and lists as nested tuples of their values, anything else as it is."""
    if isinstance(part, torch.Tensor):
        part = part.detach().cpu().numpy()
    if isinstance(part, np.ndarray):
        part = part.tolist()
    if isinstance(part, list | tuple):
        return tuple(comparable(value) for value in part)
    if is_dataclass(part) and not isinstance(part, type):
        return type(part).__qualname__, tuple((f.name, comparable(getattr(part, f.name))) for f in fields(part))
    return part


class ComparedByValue:
    """A frozen spec part that may hold arrays or lists (declared ``eq=False``): ``==`` and ``hash`` by value,
    where a dataclass's own ``__eq__`` would ask an array for a truth value, which it has not."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(comparable(self) == comparable(other))

    def __hash__(self) -> int:
        return hash(comparable(self))



@dataclass(frozen=True, eq=False)
class DataSpec:
    """The dataset a child trains on and how it is split. Two compare equal with equal fields, data of one's
    own being the same objects (the samples are not compared: an env's ``set_state`` does that)."""

    dataset: str | UserData = "digits"
    """A registered name (``"digits"``, ``"fashion-mnist"``, ``"cifar10"``, or one given to
    :func:`ala_gym.core.data.register_dataset`) or data of one's own (:func:`ala_gym.core.data.from_user_data`)."""
    data_root: str | None = None
    """A registered dataset's folder (a machine setting, never part of a result)."""
    download: bool = True
    """Whether a registered dataset that can be downloaded (CIFAR-10) may be."""
    val_size: int | None = None
    """Training samples held out for validation (None: the loader's default)."""
    split_seed: int = 0
    """Seeds the train/validation split, the training subset and the validation subsample (not the child)."""
    train_size: int | None = None
    """Keep this many training samples (a subset drawn from ``split_seed``); None keeps them all."""
    val_subsample: int | None = 1000
    """Validation samples the per-step reward is measured on (a fixed subsample); None: all of them."""
    device: str = "auto"
    """``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``."""

    def __post_init__(self) -> None:
        resolve_device(self.device)  # first: a device that is absent is named before any data is read
        object.__setattr__(self, "split_seed", check_int("split_seed", self.split_seed, 0))
        object.__setattr__(self, "download", check_bool("download", self.download))
        for name in ("val_size", "train_size", "val_subsample"):
            object.__setattr__(self, name, check_optional_int(name, getattr(self, name), 1))
        if isinstance(self.dataset, str) and self.dataset not in LOADERS:  # named with the spec, as a model is
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {sorted(LOADERS)}, or register_dataset it")
        if not isinstance(self.dataset, str) and self.data_root is not None:
            raise ValueError(
                "data_root names a registered dataset's folder; it does not apply to data given as arrays or Datasets"
            )

    def _key(self) -> tuple:
        return tuple(
            value if f.name != "dataset" or isinstance(value, str) else ("data of one's own", id(value))
            for f in fields(self)
            for value in [getattr(self, f.name)]
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def load(self) -> ClassificationData:
        """The dataset, on the device, with its training subset. A registered name is read once per process by
        :func:`ala_gym.core.data.load_dataset`, given only the keywords its loader takes: ``data_root`` (not
        digits'), ``download`` (CIFAR-10's), ``val_size`` when set; data of one's own goes through
        :func:`ala_gym.core.data.from_user_data`."""
        device = resolve_device(self.device)
        if not isinstance(self.dataset, str):
            data = from_user_data(self.dataset, val_size=self.val_size, split_seed=self.split_seed, device=device)
        else:
            # A loader's own keywords (a name not registered in this process, as on a Ray actor: load_dataset names the choices).
            accepted = inspect.signature(LOADERS[self.dataset]).parameters if self.dataset in LOADERS else {}
            loader_kwargs: dict[str, Any] = {"split_seed": self.split_seed}
            if self.data_root is not None and "data_root" in accepted:
                loader_kwargs["data_root"] = self.data_root
            if "download" in accepted:
                loader_kwargs["download"] = self.download
            if self.val_size is not None:
                loader_kwargs["val_size"] = self.val_size
            data = load_dataset(self.dataset, device=device, **loader_kwargs)
        return training_subset(data, self.train_size, self.split_seed)

    def validation(self, data: ClassificationData) -> Split:
        """The fixed validation subsample of ``val_subsample`` samples the per-step reward is measured on, drawn
        once from ``split_seed`` (all of the split for None)."""
        if self.val_subsample is None or self.val_subsample >= len(data.val):
            return data.val
        generator = torch.Generator().manual_seed(self.split_seed + 2)
        order = torch.randperm(len(data.val), generator=generator)[: self.val_subsample]
        return data.val.subset(order.to(data.val.labels.device))


class LossSpec(Protocol):
    """The task's own part of a spec: a frozen dataclass that checks itself and builds the rest."""

    @property
    def metric(self) -> str:
        """The validation metric the reward follows (its name in :data:`ala_gym.core.metrics.METRICS`, or
        ``recall@k``)."""
        ...

    @property
    def higher_is_better(self) -> bool: ...

    def build(self, spec: TaskSpec) -> BuiltTask:
        """Load the data and make what every child of the task shares."""
        ...


@dataclass(frozen=True)
class TaskSpec:
    """Everything an ALA task is made from; frozen, and checked part by part when made."""

    data: DataSpec
    train: TrainConfig
    episode: EpisodeSettings
    loss: LossSpec
    env_class: str
    """Entry point (``module:Class``) of the single env that runs this spec."""

    def __post_init__(self) -> None:
        if self.train.total_iterations != self.episode.total_iterations:
            raise ValueError(
                f"the training budget ({self.train.total_iterations}) and the episode's "
                f"({self.episode.total_iterations}) must be the same number of iterations"
            )

    @property
    def metric(self) -> str:
        return self.loss.metric

    @property
    def higher_is_better(self) -> bool:
        return self.loss.higher_is_better

    def build(self) -> BuiltTask:
        """Load the data (once per process for a registered name) and make what the children share."""
        return self.loss.build(self)

    def make_env(self, **options: Any) -> ALAEnv:
        """A single env of this task (``options``: ``render_mode``, ``num_threads``)."""
        unknown = sorted(set(options) - set(ENV_OPTIONS))
        if unknown:  # a time limit, say: not the env's own keyword
            raise TypeError(
                f"make_env takes {' and '.join(ENV_OPTIONS)}, not {', '.join(unknown)}: the task's keywords are parts "
                "of the spec (dataclasses.replace them), and a time limit is gymnasium.wrappers.TimeLimit's"
            )
        return cast("ALAEnv", load_env_creator(self.env_class)(spec=self, **options))


@dataclass
class BuiltTask:
    """What every child of a task shares, made by :meth:`TaskSpec.build`: the data, the evaluator, the
    validation subsample, and a factory of each child's :class:`ala_gym.envs.task.LossTask`."""

    spec: TaskSpec
    data: ClassificationData
    evaluator: Evaluator
    val_eval: Split
    make_task: Callable[[], LossTask]
    batchable: bool
    """Whether the children may be trained in one ``vmap`` (not with a loss that samples, nor a model with
    dropout-like layers)."""
    attributes: dict[str, Any] = field(default_factory=dict)
    """The task's own readable attributes (``num_classes``, ``phi_init``, ...), set on the env it builds and
    answered by a vector env's ``get_attr``."""

    @property
    def train_config(self) -> TrainConfig:
        return self.spec.train

    @property
    def settings(self) -> EpisodeSettings:
        return self.spec.episode

    def public_attributes(self) -> dict[str, Any]:
        """The names an env built from this task exposes (``env.metric``, ``envs.get_attr("train_config")``)."""
        return {
            "data": self.data, "train_config": self.train_config, "settings": self.settings,
            "evaluator": self.evaluator, "val_eval": self.val_eval, "metric": self.spec.metric,
            # The metric's direction on its own, so that a controller need not fetch the evaluator (from a Ray
            # actor, with the tensors it holds on the actor's device) to learn it.
            "higher_is_better": self.evaluator.higher_is_better,
            "steps_per_action": self.settings.steps_per_action, "batchable": self.batchable, **self.attributes,
        }  # fmt: skip


def assemble(env_class: type, keywords: dict[str, Any], loss: type, renames: dict[str, str] | None = None) -> TaskSpec:
    """The spec of an env class's flat keywords (its ``make_spec``'s), each given to every part that has a field
    of its name (``total_iterations`` to the training and the episode); ``renames`` maps a keyword to a field's
    name. The task's loss part is made, and so checked, first."""
    renames = renames or {}
    renamed = {renames.get(key, key): value for key, value in keywords.items()}

    def part(kind: type) -> Any:
        try:
            return kind(**{f.name: renamed[f.name] for f in fields(kind) if f.name in renamed})
        except (ValueError, TypeError) as exc:
            # A part's check names its own field first: name the keyword the caller gave instead.
            for keyword, name in renames.items():
                if str(exc).startswith(f"{name} "):
                    raise type(exc)(keyword + str(exc)[len(name) :]) from exc
            raise

    kinds = (loss, DataSpec, TrainConfig, EpisodeSettings)
    unused = set(renamed) - {f.name for kind in kinds for f in fields(kind)}
    if unused:  # a keyword of make_spec that no part takes would be silently ignored
        raise TypeError(
            f"{env_class.__name__}.make_spec's keywords {sorted(unused)} belong to no part of the spec: give a part (the "
            "task's loss part) a field of that name, or map it to one with renames"
        )
    loss_part = part(loss)
    return TaskSpec(
        data=part(DataSpec), train=part(TrainConfig), episode=part(EpisodeSettings), loss=loss_part,
        env_class=f"{env_class.__module__}:{env_class.__qualname__}",
    )  # fmt: skip


ENV_OPTIONS = ("render_mode", "num_threads")
"""Keywords of an env that are not part of its task: how it renders and the process's threads."""
VECTOR_OPTIONS = ("max_episode_steps", "autoreset_mode", "train_mode")
"""Keywords of the vector env that are not part of its children's task."""


def spec_keywords(env_id: str | type, **keywords: Any) -> tuple[Callable[..., TaskSpec], dict[str, Any]]:
    """The spec builder of ``env_id`` (a registered id or an ALA env class) and the keywords it gets: the
    registration's ``kwargs`` overridden by the caller's, without the env options."""
    return _builder_keywords(env_id, keywords, ENV_OPTIONS)


def _builder_keywords(
    env_id: str | type, keywords: dict[str, Any], options: tuple[str, ...]
) -> tuple[Callable[..., TaskSpec], dict[str, Any]]:
    """:func:`spec_keywords` for a caller that takes ``options`` besides the task's keywords (named to a
    misspelt keyword as the task's are)."""
    env_class: Any
    if isinstance(env_id, str):
        registered = env_spec(env_id)
        env_class = registered.entry_point
        keywords = {**registered.kwargs, **keywords}
        if isinstance(env_class, str):
            env_class = load_env_creator(env_class)
    else:
        env_class = env_id
    builder = getattr(env_class, "make_spec", None)
    if builder is None:
        raise TypeError(
            f"{env_id!r} is not an ALA env (its class has no make_spec): name an id that ala_gym registers, such as "
            "'ALA-Digits-v0', or one of your own registered with ala_gym.register_env"
        )
    keywords = {key: value for key, value in keywords.items() if key not in ENV_OPTIONS}
    name = getattr(env_class, "__name__", str(env_class))
    check_keywords(builder, keywords, name if options == ENV_OPTIONS else f"the vector env of {name}", options)
    return builder, keywords


def check_keywords(
    builder: Callable[..., Any], keywords: dict[str, Any], name: str, options: tuple[str, ...] = ENV_OPTIONS
) -> None:
    """Refuse a keyword ``builder`` does not take (``TypeError``, as Python's own), naming the closest it or
    the caller (``options``) takes and where the others are listed, rather than Python's message with the
    keyword alone."""
    parameters = inspect.signature(builder).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    known = sorted(key for key, parameter in parameters.items() if parameter.kind is not inspect.Parameter.VAR_POSITIONAL)
    for key in keywords:
        if key not in parameters:
            close = difflib.get_close_matches(key, known + list(options), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            if key == "num_envs":  # the child count is no env setting
                hint = "the child count is gym.make_vec's num_envs (the comparison's --children, --baseline-children); "
            raise TypeError(f"{name} takes no keyword {key!r}; {hint}its keywords are {', '.join(known + list(options))}")


def task_spec(env_id: str | type, **keywords: Any) -> TaskSpec:
    """The :class:`TaskSpec` that ``gym.make(env_id, **keywords)`` trains, made without loading any data."""
    builder, keywords = spec_keywords(env_id, **keywords)
    return builder(**keywords)


def vector_task_spec(env_id: str | type, **keywords: Any) -> TaskSpec:
    """:func:`task_spec` for the vector env, whose own options a misspelt keyword is matched against too."""
    builder, keywords = _builder_keywords(env_id, keywords, ENV_OPTIONS + VECTOR_OPTIONS)
    return builder(**keywords)


def spec_of(env: Any, spec: TaskSpec | None, keywords: dict[str, Any]) -> TaskSpec:
    """The spec an ALA env's ``__init__`` trains: ``spec`` as given, or its class's ``make_spec(**keywords)``."""
    if spec is None:
        check_keywords(type(env).make_spec, keywords, type(env).__name__)
        return type(env).make_spec(**keywords)
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"spec must be a TaskSpec (ala_gym.envs.spec), got {type(spec).__name__}")
    # By name, as the spec records its class: one defined in a function cannot be imported to compare.
    if spec.env_class not in {f"{cls.__module__}:{cls.__qualname__}" for cls in type(env).__mro__}:
        raise TypeError(
            f"spec is a task of {spec.env_class}, not of {type(env).__name__}: build its env with spec.make_env()"
        )
    if keywords:
        raise TypeError(
            f"give either spec= or the task's keywords, not both (got {sorted(keywords)}); "
            "to change a spec, dataclasses.replace its parts, or build its env with spec.make_env()"
        )
    return spec
