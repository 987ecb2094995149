"""What every benchmark result records about the machine it ran on."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

RESULTS = Path("benchmarks") / "results"
"""Where the benchmarks write by default: relative to the current directory (from a clone's root, the committed
results), never inside the installed package."""


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (e.g. an optional extra's package), None if it is not
    installed; read from its metadata, so the package itself is never imported."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
