"""The controller-spec language: ``name(config_key=value;...)@env_key=value;...``, and the controller a
spec names."""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import types
import typing
from dataclasses import fields, is_dataclass, replace
from typing import Any

from gymnasium.vector import AutoresetMode

from ala_gym.agents import factory_target, resolve_controller
from ala_gym.benchmarks.compare.errors import ComparisonError
from ala_gym.benchmarks.oracle import ORACLES
from ala_gym.core.checks import check_int
from ala_gym.core.data import with_data_home
from ala_gym.envs.spec import VECTOR_OPTIONS, task_spec
from ala_gym.envs.vector import check_vector_args
from ala_gym.wrappers import MissingExtraError


def parse_controller(spec: str) -> tuple[str, dict[str, Any]]:
    """``"reinforce@beta=0.01"`` -> ``("reinforce", {"beta": 0.01})``: the controller (with any config
    keywords in parentheses, see :func:`parse_config`) and env keywords."""
    at = next((i for i, depth in enumerate(_depths(spec)) if spec[i] == "@" and depth == 0), len(spec))
    return spec[:at].strip(), _parse_keywords(spec, spec[at + 1 :])  # an "@" in parentheses is a value's (a path)


def parse_config(name: str) -> tuple[str, dict[str, Any]]:
    """``"reinforce-multi(lr=0.001;pair_credit=false)"`` -> ``("reinforce-multi", {"lr": 0.001, ...})``: a
    registered name and fields of the controller's config dataclass (or, for a controller without one, its
    factory's keywords: ``phi-uniform(off_diagonal=0.03)``)."""
    base, parenthesis, rest = name.partition("(")
    base = base.strip()
    if parenthesis and not rest.endswith(")"):  # "ce(" too: not a row of ce
        raise ComparisonError(f"controller {name!r}: write config keywords as name(key=value;key=value)")
    return base, _parse_keywords(name, rest[:-1])


def _parse_keywords(spec: str, text: str) -> dict[str, Any]:
    """Values as JSON (``true``, ``0.1``, ``[1, 2]``), else as Python literals (``False``, ``None``, ``(1, 2)``),
    else as the text itself (a name or a path)."""
    keywords: dict[str, Any] = {}
    for item in filter(None, text.split(";")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise ComparisonError(f"controller {spec!r}: write keywords as key=value;key=value")
        try:
            keywords[key] = json.loads(value)
        except json.JSONDecodeError:
            try:
                keywords[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                keywords[key] = value
    return keywords


def split_controllers(text: str) -> list[str]:
    """``--controllers``' rows: split at the commas outside parentheses and brackets, so that a keyword's value
    may hold commas (``pbt(initial_range=[-0.05,0.05])``)."""
    rows, start = [], 0
    for index, depth in enumerate(_depths(text)):
        if text[index] == "," and depth == 0:
            rows.append(text[start:index].strip())
            start = index + 1
    return [*rows, text[start:].strip()]


def _depths(text: str) -> list[int]:
    """Per character of ``text``: how many parentheses and brackets are open after it."""
    depths, depth = [], 0
    for char in text:
        depth += (char in "([") - (char in ")]")
        depths.append(depth)
    return depths


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as parsed from a spec) has the type ``hint`` asks for; types it cannot tell: yes."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, argument) for argument in arguments)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple or hint is tuple:
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _check_types(spec: str, keywords: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    """``keywords`` checked against the types they set (a bool written ``False`` must not reach a flag as the
    text "False", which is true), lists turned into the tuples a tuple field holds."""
    checked = {}
    for key, value in keywords.items():
        hint = hints.get(key, Any)
        if not _fits(value, hint):
            shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise ComparisonError(f"controller {spec!r}: {key} must be {shown}, got {value!r}")
        tuple_field = typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(hint))
        checked[key] = tuple(value) if tuple_field and isinstance(value, list) else value
    return checked


def _hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:  # annotations this module cannot resolve: no check
        return {}


def _factory_hints(factory: Any) -> dict[str, Any]:
    """The types of a factory's keywords: those of the function it calls (a factory of
    :data:`ala_gym.agents.CONTROLLERS` names it as ``factory.target()``), or of the factory itself; none of its own
    for a class (whose ``__init__`` the caller reads from the controller built)."""
    target = factory.target() if callable(getattr(factory, "target", None)) else inspect.unwrap(factory)
    return {} if isinstance(target, type) else _hints(target)


def _keywords(function: Any) -> set[str] | None:
    """The keyword names ``function`` takes; None where it takes any (``**kwargs``) or cannot be read."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def build_controller(spec: str, children: int | None = None, baseline_children: int | None = None) -> Any:
    """The controller a spec names: config keywords applied, ``children`` for a multi-child controller and
    ``baseline_children`` for a fixed one (each None: the controller's own count)."""
    base, config_overrides = parse_config(parse_controller(spec)[0])
    if base in ORACLES:  # a comparison's own row, given a controller's parameters or env keywords
        raise ComparisonError(f"the row {base} takes no parameters or env keywords (in {spec!r}); name it alone")
    try:
        factory = resolve_controller(base)
    except ValueError as error:  # the comparison's own rows are no controllers: named beside a plain unknown name
        hint = "" if ":" in base else f", or a row {' or '.join(ORACLES)}"
        raise ComparisonError(f"{error}{hint} (in {spec!r})") from None
    try:
        try:
            controller = factory()  # to learn its config's fields
        except TypeError:  # a factory whose keywords are required (none given: it fails again, named below)
            controller = factory(**config_overrides)
        # Keywords that name a field of the controller's config dataclass go to it, the others to its factory.
        config = getattr(controller, "config", None)
        config_fields = {f.name for f in fields(config)} if is_dataclass(config) else set()
        config_kwargs = {k: v for k, v in config_overrides.items() if k in config_fields}
        factory_kwargs = {k: v for k, v in config_overrides.items() if k not in config_fields}
        factory_takes = _keywords(factory_target(factory))
        # A class without a constructor of its own takes no keyword (object.__init__'s signature reads as any).
        init_takes = set() if type(controller).__init__ is object.__init__ else _keywords(type(controller).__init__)
        if factory_kwargs and factory_takes is not None and init_takes is not None:  # a misspelt setting, named
            # A config object and a saved state are passed by code; a row's text cannot hold them.
            known = sorted((config_fields | factory_takes | init_takes) - {"self", "config", "initial_state"})
            unknown = sorted(set(factory_kwargs) - set(known))
            if unknown:
                close = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
                hints = "".join(f" ({name}: did you mean {match[0]}?)" for name, match in close.items() if match)
                raise ComparisonError(f"controller {spec!r}: no setting {', '.join(unknown)}{hints}; it takes {known}")
        config_kwargs = _check_types(spec, config_kwargs, _hints(type(config)))
        factory_kwargs = _check_types(spec, factory_kwargs, {**_hints(type(controller).__init__), **_factory_hints(factory)})
        if "num_envs" in factory_kwargs:
            check_int("num_envs", factory_kwargs["num_envs"], 1)
        count = children if controller.multi_child else baseline_children if not controller.learned else None
        if count is not None:
            option = "--children" if controller.multi_child else "--baseline-children"
            if factory_kwargs.get("num_envs", count) != count:  # the comparison's count would replace it unseen
                raise ComparisonError(f"controller {spec!r}: num_envs={factory_kwargs['num_envs']} but the comparison "
                                      f"runs such rows with {count} children ({option}); set the count there")  # fmt: skip
            if factory_takes is None or "num_envs" in factory_takes:  # what the factory itself takes decides
                factory_kwargs["num_envs"] = count
            elif count != 1:  # a factory of one's own that sets no child count: it would run one child unseen
                raise ComparisonError(
                    f"controller {spec!r}: {option} {count} runs such rows on {count} children, but it takes no num_envs "
                    "keyword; give it one that sets the controller's num_envs (docs/tutorials/custom_controller.py), or "
                    f"leave {option} out"
                )
        if factory_kwargs:
            controller = factory(**factory_kwargs)
        if config_kwargs:
            controller.config = replace(controller.config, **config_kwargs)
            controller.check_settings()  # what the controller checks of its config and child count together
    except ComparisonError:
        raise
    except (TypeError, ValueError, OSError, MissingExtraError) as error:
        raise ComparisonError(f"controller {spec!r}: {error}") from None
    return controller


def check_row(
    spec: str, env_id: str, env_kwargs: dict[str, Any], controller: Any = None, metric: str | None = None
) -> None:
    """The row ``spec`` on the env as its runs will make it: the comparison's keywords, the row's own after
    ``@`` and what the controller asks of the env (``loss_form``, ...), checked on the task's spec (an unknown
    keyword, a value out of range, a controller that does not fit the task), and the keywords after ``@`` that
    set the controller (:attr:`ala_gym.agents.base.Controller.own_keywords`) on its config; so that a bad row fails before any run
    rather than when its own starts. ``controller`` (the row's, already built) and ``metric`` (the comparison's)
    are made here when not given."""
    controller = build_controller(spec) if controller is None else controller
    overrides = parse_controller(spec)[1]
    own = {key: value for key, value in overrides.items() if key in controller.own_keywords}
    kwargs = {**env_kwargs, **{k: v for k, v in overrides.items() if k not in own}, **controller.env_kwargs()}
    try:
        controller.check_env_kwargs({k: v for k, v in overrides.items() if k not in own})
        config = getattr(controller, "config", None)
        if own and is_dataclass(config) and not isinstance(config, type):
            replace(config, **_check_types(spec, own, _hints(type(config))))
        check_vector_args(1, kwargs.get("max_episode_steps"), kwargs.get("autoreset_mode", AutoresetMode.NEXT_STEP),
                          kwargs.get("train_mode", "auto"))  # fmt: skip
        row_task = task_spec(env_id, **with_data_home({k: v for k, v in kwargs.items() if k not in VECTOR_OPTIONS}))
        controller.check_task(row_task)
        metric = task_spec(env_id, **with_data_home(env_kwargs)).metric if metric is None else metric
        if row_task.metric != metric:  # the table has one metric column
            raise ComparisonError(
                f"controller {spec!r} is scored by {row_task.metric!r} and the comparison by {metric!r}; give the "
                "metric to the whole comparison (--env-kwargs) instead"
            )
    except ComparisonError:
        raise
    except (TypeError, ValueError, OSError) as error:
        raise ComparisonError(f"controller {spec!r}: {error}") from None
