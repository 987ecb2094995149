"""Keeping the global random state as it was, where code outside the package draws from it."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator


@contextlib.contextmanager
def python_random_kept() -> Iterator[None]:
    """Run the block and give Python's ``random`` back the state it had before: for imports that draw from it
    (rich, which scikit-learn's datasets and Stable-Baselines3 import, seeds a counter from it at import time).
    The package leaves the global random generators as it found them."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)
