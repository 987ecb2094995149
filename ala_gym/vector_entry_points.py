"""The vector entry points of the ids registered by ``ala_gym``: ``"ala_gym.vector_entry_points:<env id>"``.

Gymnasium serialises a spec's entry points only as ``"module:attribute"`` strings, and an env id (``ALA-Digits-v0``)
is no Python name, so no function of that name can be defined: this module answers an id with
:func:`ala_gym.registration.make_vector_env` bound to it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from gymnasium.envs.registration import registry

from ala_gym.registration import VECTOR_ENTRY_POINTS, make_vector_env


def __getattr__(name: str) -> Callable[..., Any]:
    if name in registry and registry[name].vector_entry_point == f"{VECTOR_ENTRY_POINTS}:{name}":
        return partial(make_vector_env, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
