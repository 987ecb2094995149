"""Adapters from the ALA envs to RL libraries and to Ray (each behind its extra, ``sb3`` or ``ray``: ``pip install -e
'.[sb3]'`` in a clone, or the extra's requirements, which :func:`install_hint` names), :func:`require`, the check every
user of an extra makes before importing it, and :class:`ChildAttributes`, the per-child attribute access every ALA
vector env offers."""

from __future__ import annotations

from importlib import metadata
from importlib.util import find_spec
from typing import Any, Protocol

EXTRAS: dict[str, tuple[str, str]] = {
    "sb3": ("stable_baselines3", "stable-baselines3"),
    "ray": ("ray", "ray"),
    "learnloss": ("optuna", "optuna"),
}
"""The extras of ``setup.cfg``: name -> (the module it makes importable, the package that provides it)."""


class MissingExtraError(ImportError):
    """An optional dependency that is not installed; the message names the extra that installs it."""


def require(extra: str) -> None:
    """Raise :class:`MissingExtraError` unless ``extra``'s package is installed; call it before importing
    that package, so that a base install gets one line saying what to install instead of a
    ``ModuleNotFoundError`` from deep inside an import. Looks the package up without importing it
    (Ray and Stable-Baselines3 take seconds to import)."""
    module, package = EXTRAS[extra]
    if find_spec(module) is None:
        raise MissingExtraError(f"{package} is not installed: {install_hint(extra)}")


def install_hint(extra: str) -> str:
    """The command that installs ``extra``: its requirements as the installed package declares them (a wheel
    has no clone to install from), and the clone's editable install beside it."""
    in_clone = f"pip install -e '.[{extra}]' in a clone of ala-gym"
    try:
        requires = metadata.requires("ala-gym") or []
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return in_clone
    marker = f'extra == "{extra}"'
    wanted = [requirement.partition(";")[0].strip() for requirement in requires if requirement.partition(";")[2].strip() == marker]
    if not wanted:
        return in_clone
    return "pip install " + " ".join(f"'{requirement}'" for requirement in wanted) + f" (the '{extra}' extra; or {in_clone})"


class ChildAttributes(Protocol):
    """The per-child attributes of an ALA vector env (:class:`ala_gym.envs.vector.ALAVectorEnv` and
    :class:`ala_gym.wrappers.ray.RayVectorEnv` alike), which gymnasium's ``VectorEnv`` base class, the type
    ``gym.make_vec`` returns, does not declare: what the adapters and controllers read (``get_attr``) and
    set (``set_attr("phi", ...)``) through it."""

    def get_attr(self, name: str) -> tuple[Any, ...]: ...

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None: ...
