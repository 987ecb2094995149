"""Adapters from the ALA envs to RL libraries and to Ray (each behind its extra: ``pip install -e '.[sb3]'``,
``'.[ray]'`` from the clone), :func:`require`, the check every user of an extra makes before importing it, and
:class:`ChildAttributes`, the per-child attribute access every ALA vector env offers."""

from __future__ import annotations

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
        raise MissingExtraError(f"{package} is not installed: pip install -e '.[{extra}]' in the ala-gym clone")


class ChildAttributes(Protocol):
    """The per-child attributes of an ALA vector env (:class:`ala_gym.envs.vector.ALAVectorEnv` and
    :class:`ala_gym.wrappers.ray.RayVectorEnv` alike), which gymnasium's ``VectorEnv`` base class, the type
    ``gym.make_vec`` returns, does not declare: what the adapters and controllers read (``get_attr``) and
    set (``set_attr("phi", ...)``) through it."""

    def get_attr(self, name: str) -> tuple[Any, ...]: ...

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None: ...
