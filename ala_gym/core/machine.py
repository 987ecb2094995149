"""The machine a run computes on, and the code it runs, as results and meta-trained policies record them beside
their numbers."""

from __future__ import annotations

import functools
import hashlib
import platform
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
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()[:12]
