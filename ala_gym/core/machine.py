"""The machine a run computes on, and the code it runs, as results and meta-trained policies record them beside
their numbers."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
from importlib.util import find_spec
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def source_digest() -> str:
    """The first 12 hex digits of a SHA-256 over the package's Python source as this process finds it (every module
    of ``ala_gym``, its controllers and benchmarks included, by installed name): runs with the same digest ran
    the same code, whether from a clone or a wheel. The package's version alone does not say so; a change to the
    code can change the order of a training run's float operations, and so its numbers."""
    digest = hashlib.sha256()
    files: dict[str, Path] = {}
    for name in ("ala_gym", "ala_gym.agents", "ala_gym.benchmarks"):
        spec = find_spec(name)  # where the package lies, without running the higher layers' code
        prefix = name.replace(".", "/")
        for folder in map(Path, (spec.submodule_search_locations or []) if spec else []):
            for path in folder.rglob("*.py"):
                relative = path.relative_to(folder)
                nested = name == "ala_gym" and relative.parts[0] in ("agents", "benchmarks")  # an installed layout
                if not nested and not {"__pycache__", "results"} & set(relative.parts):
                    files[f"{prefix}/{relative.as_posix()}"] = path
    for name in sorted(files):
        # Line ends as in the repository: a checkout that converts them (git's autocrlf on Windows) runs the same code.
        source = files[name].read_bytes().replace(b"\r\n", b"\n")
        digest.update(name.encode() + b"\0" + source + b"\0")
    return digest.hexdigest()[:12]


def peak_rss_mib() -> float | None:
    """This process's peak resident memory plus that of its largest finished child process, in MiB (what
    ``getrusage`` reports: kibibytes on Linux, bytes on macOS), or None where there is no ``resource`` module
    (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def load_average() -> list[float] | None:
    """The system's load average over 1, 5 and 15 minutes, to two decimals, or None where the OS has none (Windows):
    a benchmark records it beside timings that other work on the machine would slow."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(value, 2) for value in os.getloadavg()]
