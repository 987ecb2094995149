"""What every benchmark result records about the machine it ran on."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from ala_gym.core.machine import cpu_model

__all__ = ["RESULTS", "cpu_model", "package_version"]

RESULTS = Path("benchmarks") / "results"
"""Where the benchmarks write by default: relative to the current directory (from a clone's root, the committed
results), never inside the installed package."""


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (e.g. an optional extra's package), None if it is not
    installed; read from its metadata, so the package itself is never imported."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
