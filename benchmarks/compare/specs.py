"""The controller-spec language: ``name(config_key=value;...)@env_key=value;...``, and the controller a
spec names."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass, replace
from typing import Any

from gymnasium.vector import AutoresetMode

from ala_gym.agents import resolve_controller
from ala_gym.benchmarks.compare.errors import ComparisonError
from ala_gym.benchmarks.oracle import ORACLES
from ala_gym.core.data import with_data_home
from ala_gym.envs.spec import task_spec
from ala_gym.envs.vector import check_vector_args
from ala_gym.wrappers import MissingExtraError

VECTOR_OPTIONS = ("max_episode_steps", "autoreset_mode", "train_mode")
"""Keywords after ``@`` that go to the vector env, not to its children's task."""


def file_stem(spec: str) -> str:
    """The start of a file name for the row ``spec``: the spec itself, a ``/`` (of a policy file's path,
    ``reinforce-transfer-frozen(policy=runs/meta.pt)``) written ``%2F`` so that the file stays in its folder."""
    return spec.replace("/", "%2F")


def parse_controller(spec: str) -> tuple[str, dict[str, Any]]:
    """``"reinforce@beta=0.01"`` -> ``("reinforce", {"beta": 0.01})``: the controller (with any config
    keywords in parentheses, see :func:`parse_config`) and env keywords."""
    name, _, overrides = spec.partition("@")
    return name, _parse_keywords(spec, overrides)


def parse_config(name: str) -> tuple[str, dict[str, Any]]:
    """``"reinforce-multi(lr=0.001;pair_credit=false)"`` -> ``("reinforce-multi", {"lr": 0.001, ...})``: a
    registered name and fields of the controller's config dataclass (or, for a controller without one, its
    factory's keywords: ``phi-uniform(off_diagonal=0.03)``)."""
    base, _, rest = name.partition("(")
    if rest and not rest.endswith(")"):
        raise ComparisonError(f"controller {name!r}: write config keywords as name(key=value;key=value)")
    return base, _parse_keywords(name, rest[:-1])


def _parse_keywords(spec: str, text: str) -> dict[str, Any]:
    keywords: dict[str, Any] = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ComparisonError(f"controller {spec!r}: write keywords as key=value;key=value")
        try:
            keywords[key] = json.loads(value)
        except json.JSONDecodeError:
            keywords[key] = value
    return keywords


def build_controller(spec: str, children: int | None = None, baseline_children: int | None = None) -> Any:
    """The controller a spec names: config keywords applied, ``children`` for a multi-child controller and
    ``baseline_children`` for a fixed one (each None: the controller's own count)."""
    base, config_overrides = parse_config(parse_controller(spec)[0])
    try:
        factory = resolve_controller(base)
    except ValueError as error:  # the comparison's own rows are no controllers: named beside them
        raise ComparisonError(f"{error}, or a row {' or '.join(ORACLES)} (in {spec!r})") from None
    try:
        controller = factory()
        # Keywords that name a field of the controller's config dataclass go to it, the others to its factory.
        config = getattr(controller, "config", None)
        config_fields = {f.name for f in fields(config)} if is_dataclass(config) else set()
        config_kwargs = {k: v for k, v in config_overrides.items() if k in config_fields}
        factory_kwargs = {k: v for k, v in config_overrides.items() if k not in config_fields}
        count = children if controller.multi_child else baseline_children if not controller.learned else None
        if count is not None:
            factory_kwargs["num_envs"] = count
        if factory_kwargs:
            controller = factory(**factory_kwargs)
        if config_kwargs:
            controller.config = replace(controller.config, **config_kwargs)
    except (TypeError, ValueError, MissingExtraError) as error:
        raise ComparisonError(f"controller {spec!r}: {error}") from None
    return controller


def check_env_overrides(spec: str, env_id: str, env_kwargs: dict[str, Any]) -> None:
    """The env keywords of ``spec`` (after ``@``) over the comparison's, checked as its runs will use them (an
    unknown keyword, a value out of range), so that a typo fails before any run rather than when its own starts."""
    overrides = parse_controller(spec)[1]
    overrides = {key: value for key, value in overrides.items() if key not in build_controller(spec).own_keywords}
    if not overrides:
        return  # the comparison's own keywords: checked once for all
    kwargs = {**env_kwargs, **overrides}
    try:
        check_vector_args(1, kwargs.get("max_episode_steps"), kwargs.get("autoreset_mode", AutoresetMode.NEXT_STEP),
                          kwargs.get("train_mode", "auto"))  # fmt: skip
        task_spec(env_id, **with_data_home({k: v for k, v in kwargs.items() if k not in VECTOR_OPTIONS}))
    except (TypeError, ValueError) as error:
        raise ComparisonError(f"controller {spec!r}: {error}") from None
