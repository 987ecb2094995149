"""Controllers that drive the ALA envs, all behind one interface (:class:`ala_gym.agents.base.Controller`).

How a caller (the benchmark, a notebook) runs any of them::

    import ala_gym.agents
    controller = ala_gym.agents.CONTROLLERS["reinforce-multi"]()      # factories take optional keywords
    envs = controller.make_envs("ALA-Digits-v0", total_iterations=400, steps_per_action=20)
    records = controller.run(envs, seed=0, on_step=None)       # list[EpisodeRecord], one per child
    envs.close()

``make_envs(env_id, **env_kwargs)`` is ``gym.make_vec(env_id, num_envs=controller.num_envs,
**{**env_kwargs, **controller.env_kwargs()})``: a controller says how many children it trains
(``num_envs``) and which env keywords it needs (``env_kwargs()``, e.g. ``{"loss_form": "cross_entropy"}``
for the plain cross-entropy row); the caller may give one of them only with the same value (another is
refused by name). A caller building the vector env
itself must apply both the same way. ``on_step(step, logs)`` receives per-step scalars (``reward``,
``val_metric``, :func:`ala_gym.agents.base.phi_stats`' ``phi_drift`` and ``phi_max_offdiag``, or ``phi_mean``
and ``phi_max_abs`` where Phi is a vector per child (metric learning), and for learners ``entropy`` and losses)
plus ``logs["phi"]``, the running children's Phi as a ``[children, C, C]`` array (``[children, rows]`` for a
vector).

Registry (``CONTROLLERS``, keyed by the benchmark's names; the documentation's Controllers page,
``docs/controllers.md``, says what each is).

Factory keywords: every baseline takes ``num_envs``; the fixed-loss rows (``ce``, ``phi-identity*``,
``auc-pairwise``, ``fixed-loss``, ``phi-init``), ``confusion`` and ``random`` also ``loss_form``, ``random`` ``noise``,
``phi-uniform``/``label-smoothing`` ``off_diagonal`` and ``label_smoothing``, ``phi-ramp`` ``start``, ``end``
and ``follow``, ``online-smoothing`` ``alpha``; ``reinforce``, ``reinforce-multi`` and ``reinforce-frozen`` take
``config`` (:class:`ala_gym.agents.reinforce.ReinforceConfig`), ``num_envs``, ``train``; ``reinforce-paper*``
``num_envs`` and ``train`` (:func:`ala_gym.agents.reinforce.paper_controller`: the config is the paper's);
``reinforce-transfer*`` ``policy`` (a shipped policy's name or a ``.pt`` file), ``num_envs``, ``train`` and
``temperature`` (:func:`ala_gym.agents.reinforce.transfer_controller`); ``ppo``/``a2c`` take
``config`` (:class:`ala_gym.agents.sb3.SB3Config`), ``num_envs``, ``policy`` (``"pair"`` or ``"mlp"``) and need the
``sb3`` extra (without it their factories raise :class:`ala_gym.wrappers.MissingExtraError`, which says so); ``pbt``
takes ``config`` (:class:`ala_gym.agents.pbt.PBTConfig`), ``num_envs`` (the population, 10) and ``frozen``;
``adalfl`` and ``learnloss`` take ``config`` (:class:`ala_gym.agents.adalfl.AdaLFLConfig`,
:class:`ala_gym.agents.learnloss.LearnLossPhiConfig`). Saved
policies: ``ala_gym.agents.reinforce.ReinforceController.load(path, train=False)`` (``train=True`` fine-tunes;
``temperature`` divides the loaded logits) and
``ala_gym.agents.sb3.SB3Controller.load(path, algo)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, get_args, get_type_hints

from ala_gym.agents.base import Controller, EpisodeRecord, EpisodeRecorder


def _config_class(built: Callable[..., Any]) -> Any:
    """The dataclass a controller class or function takes as ``config`` (``config: SomeConfig | None``), or None."""
    try:
        hint = get_type_hints(built.__init__ if isinstance(built, type) else built).get("config")  # type: ignore[misc]
    except Exception:  # noqa: BLE001  (hints that do not resolve: no config class to name)
        return None
    candidates = [hint, *get_args(hint)]
    return next((candidate for candidate in candidates if is_dataclass(candidate) and isinstance(candidate, type)), None)


def _own_keywords(built: Callable[..., Any]) -> set[str]:
    """The keyword names a controller class or function takes itself."""
    try:
        return set(inspect.signature(built).parameters)
    except (TypeError, ValueError):
        return set()


def _factory(path: str, name: str, **defaults: Any) -> Callable[..., Controller]:
    """A factory for the class at ``module:Class``, imported on first use: the modules with a command
    line (``python -m ala_gym.agents.reinforce``) must not be imported by the package itself, and
    Stable-Baselines3 is slow to import and an optional extra: ``import ala_gym.agents`` works without it."""
    module, _, class_name = path.partition(":")

    def make(**kwargs: Any) -> Controller:
        built = getattr(import_module(module), class_name)
        try:
            controller = built(**{**defaults, **kwargs})
        except TypeError as error:
            config_class = _config_class(built)
            own = _own_keywords(built)
            settings = {field.name for field in fields(config_class)} if config_class else set()
            misplaced = sorted(key for key in set(kwargs) & settings if key not in own)
            if not misplaced or "unexpected keyword argument" not in str(error):
                raise
            raise TypeError(
                f"{', '.join(misplaced)}: a setting of {config_class.__name__}, not a keyword of {class_name}; pass "
                f"config={config_class.__name__}({misplaced[0]}=...), as the comparison's {name}({misplaced[0]}=...) does"
            ) from None
        controller.name = name
        return controller

    def target() -> Any:
        """What ``make`` calls (imported now): the types of ``make``'s keywords are its parameters'."""
        return getattr(import_module(module), class_name)

    make.__name__ = make.__qualname__ = f"make_{name.replace('-', '_')}"
    make.target = target  # type: ignore[attr-defined]
    return make


CONTROLLERS: dict[str, Callable[..., Controller]] = {
    "ce": _factory("ala_gym.agents.baselines:FixedPhi", "ce", loss_form="cross_entropy"),
    "auc-pairwise": _factory("ala_gym.agents.baselines:FixedPhi", "auc-pairwise", loss_form="auc_pairwise"),
    "phi-identity": _factory("ala_gym.agents.baselines:FixedPhi", "phi-identity", loss_form="linear"),
    "phi-identity-sigmoid": _factory("ala_gym.agents.baselines:FixedPhi", "phi-identity-sigmoid", loss_form="sigmoid"),
    "label-smoothing": _factory("ala_gym.agents.baselines:UniformPhi", "label-smoothing", label_smoothing=0.1),
    "phi-uniform": _factory("ala_gym.agents.baselines:UniformPhi", "phi-uniform"),
    "phi-ramp": _factory("ala_gym.agents.baselines:RampPhi", "phi-ramp"),
    "random": _factory("ala_gym.agents.baselines:RandomPhi", "random"),
    # Metric learning: the framework's fixed pytorch-metric-learning loss, and the adaptive loss held at its
    # initial Phi (the env's default loss_form).
    "fixed-loss": _factory("ala_gym.agents.baselines:FixedPhi", "fixed-loss", loss_form="fixed"),
    "phi-init": _factory("ala_gym.agents.baselines:FixedPhi", "phi-init", loss_form=None),
    "confusion": _factory("ala_gym.agents.baselines:ConfusionPhi", "confusion"),
    "online-smoothing": _factory("ala_gym.agents.baselines:OnlineSmoothingPhi", "online-smoothing"),
    "reinforce": _factory("ala_gym.agents.reinforce:ReinforceController", "reinforce", num_envs=1),
    "reinforce-multi": _factory("ala_gym.agents.reinforce:ReinforceController", "reinforce-multi", num_envs=10),
    "reinforce-frozen": _factory(
        "ala_gym.agents.reinforce:ReinforceController", "reinforce-frozen", num_envs=10, train=False, multi_child=True
    ),
    "reinforce-paper": _factory(
        "ala_gym.agents.reinforce:paper_controller", "reinforce-paper", num_envs=1
    ),
    "reinforce-paper-multi": _factory("ala_gym.agents.reinforce:paper_controller", "reinforce-paper-multi", num_envs=10),
    "reinforce-transfer": _factory("ala_gym.agents.reinforce:transfer_controller", "reinforce-transfer", train=True),
    "reinforce-transfer-frozen": _factory(
        "ala_gym.agents.reinforce:transfer_controller", "reinforce-transfer-frozen", train=False
    ),
    "ppo": _factory("ala_gym.agents.sb3:SB3Controller", "ppo", algo="ppo"),
    "a2c": _factory("ala_gym.agents.sb3:SB3Controller", "a2c", algo="a2c"),
    "pbt": _factory("ala_gym.agents.pbt:PBTController", "pbt"),
    "pbt-frozen": _factory("ala_gym.agents.pbt:PBTController", "pbt-frozen", frozen=True),
    "adalfl": _factory("ala_gym.agents.adalfl:AdaLFLController", "adalfl"),
    "learnloss": _factory("ala_gym.agents.learnloss:LearnLossPhi", "learnloss"),
}

ENTRY_POINT_GROUP = "ala_gym.controllers"
"""Installed packages add controllers by name under this entry-point group: in their ``pyproject.toml``,
``[project.entry-points."ala_gym.controllers"]`` and ``my-controller = "my_package.module:make_controller"``."""


def factory_target(factory: Callable[..., Controller]) -> Callable[..., Any]:
    """What a controller factory calls, whose parameters are its keywords: a registered factory's class
    (imported now), else the factory itself."""
    target = getattr(factory, "target", None)
    return target() if callable(target) else factory


def resolve_controller(name: str) -> Callable[..., Controller]:
    """The factory of controller ``name``: a key of :data:`CONTROLLERS`, a controller an installed package
    registers under :data:`ENTRY_POINT_GROUP`, or ``"package.module:Factory"`` (any callable, a class
    included, whose result is a :class:`Controller`). A ``ValueError`` says what could not be found."""
    if name in CONTROLLERS:
        return CONTROLLERS[name]
    plugins = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}
    if name in plugins:
        try:
            loaded = plugins[name].load()
        except Exception as error:  # whatever the plugin's module raises on import
            raise ValueError(
                f"controller {name!r}: the entry point {plugins[name].value!r} of group {ENTRY_POINT_GROUP!r} does not "
                f"load ({type(error).__name__}: {error}); fix or uninstall the package that declares it"
            ) from None
        return _checked(loaded, name)
    module, colon, attribute = name.partition(":")
    if not colon:
        known = sorted(CONTROLLERS) + sorted(plugins)
        raise ValueError(f"unknown controller {name!r}; choose from {known}, or name your own as package.module:Factory")
    if module.startswith("."):  # importlib needs a package to resolve it against
        raise ValueError(f"controller {name!r}: {module!r} is relative; name the module by its full import path")
    try:
        target: Any = import_module(module)
    except ImportError as error:
        raise ValueError(f"controller {name!r}: cannot import {module!r} ({error}); is it installed or on PYTHONPATH?") from None
    except Exception as error:  # whatever else the module raises while it is imported
        raise ValueError(f"controller {name!r}: importing {module!r} fails ({type(error).__name__}: {error})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"controller {name!r}: module {module!r} has no {attribute!r}")
        target = getattr(target, part)
    return _checked(target, name)


def _checked(factory: Any, name: str) -> Callable[..., Controller]:
    """``factory`` wrapped so that what it makes is a :class:`Controller` named ``name``."""
    if not callable(factory):
        raise ValueError(f"controller {name!r}: {factory!r} is not callable")

    # make.__wrapped__ (below): inspect.unwrap finds the factory, whose signature types a comparison's keywords.
    def make(**kwargs: Any) -> Controller:
        controller = factory(**kwargs)
        if not isinstance(controller, Controller):
            raise ValueError(f"controller {name!r} made a {type(controller).__name__}, not an ala_gym.agents.Controller")
        controller.name = name
        return controller

    make.__wrapped__ = factory  # type: ignore[attr-defined]
    return make


__all__ = ["CONTROLLERS", "ENTRY_POINT_GROUP", "Controller", "EpisodeRecord", "EpisodeRecorder", "factory_target", "resolve_controller"]
