"""Argument checks that name the argument: every numeric setting is checked for type, finiteness and range
where it is built (the config dataclasses' ``__post_init__``, the envs' constructors), so that a bad value
fails at once with one line instead of hanging, training on nonsense or failing deep inside torch.

``True`` is refused wherever a number is expected (Python counts it as the integer 1), and so are strings
that look like numbers; numpy's integer and float scalars are accepted.
"""

from __future__ import annotations

import math
import multiprocessing
import numbers
from typing import Any

import numpy as np
import torch

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
"""The largest float32: children train in float32, so a larger learning rate cannot even be applied."""


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool, not a float such as 2.5 or 2.0) of at least
    ``minimum``; otherwise a ``ValueError`` that names ``name``."""
    bound = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer{bound}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


SEED_LIMIT = 2**32
"""Seeds of a run are below it: NumPy's legacy seeding (which Stable-Baselines3 calls) takes no larger one."""


def check_seed(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is an integer in ``[0, 2**32 - 1]``; otherwise a ``ValueError`` naming ``name``."""
    seed = check_int(name, value, 0)
    if seed >= SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32 - 1], got {value!r}")
    return seed


def check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) in the interval given by ``low``
    and ``high`` (closed unless ``low_open`` / ``high_open``); otherwise a ``ValueError`` naming ``name``."""
    left = "" if low is None else f"{'(' if low_open else '['}{low:g}"
    right = "" if high is None else f"{high:g}{')' if high_open else ']'}"
    interval = "" if low is None and high is None else f" in {left or '(-inf'}, {right or 'inf)'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number{interval}, got {value!r} ({type(value).__name__})")
    number = float(value)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or too_low or too_high:
        raise ValueError(f"{name} must be a finite number{interval}, got {value!r}")
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` if it is one (numpy's too); otherwise a ``ValueError`` naming ``name``: the string
    ``"False"`` and the number 0 would otherwise pass for a choice by their truth value."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_no_options(options: dict | None) -> None:
    """An ALA env's ``reset`` takes no options: one it would ignore (a vector env's ``reset_mask`` among them,
    which would still reset every child) is a ``ValueError`` naming it."""
    if options:
        raise ValueError(f"reset takes no options, got {sorted(map(str, options))}: it starts every child's run afresh")


def as_numbers(name: str, value: Any, shape: str) -> np.ndarray:
    """``value`` as a float64 array, or a ``ValueError`` naming ``name`` and the ``shape`` it must have when it
    holds something other than numbers (a string, a ragged list)."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {shape} of numbers, got {value!r:.80}") from None


def check_optional_int(name: str, value: Any, minimum: int | None = None) -> int | None:
    """:func:`check_int`, letting ``None`` through (the setting's "not set")."""
    return None if value is None else check_int(name, value, minimum)


def worker_registration_hint() -> str:
    """The end of an "unknown name" error raised in a multiprocessing worker (an async vector env's child):
    a worker knows only the names that importing its modules registers. A spawned worker (the default on
    macOS and Windows, and on a GPU) runs nothing under ``if __name__ == "__main__":``, so a name registered
    there exists in the parent alone. Empty in any other process."""
    if multiprocessing.parent_process() is None:
        return ""
    return (
        "; this worker process knows only the names its modules register when imported (a spawned worker runs "
        "nothing under `if __name__ == '__main__':`): register it at a module's top level, or pass it itself"
    )
