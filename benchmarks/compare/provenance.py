"""What a run records about where it ran (versions, machine), and the data locations it leaves out: a
setting of the machine, not part of a result."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

import ala_gym
import ala_gym.agents
import ala_gym.benchmarks
from ala_gym.benchmarks.machine import cpu_model, package_version

LOCATION_KEYS = ("data_root",)  # env keywords that say where data lies: the machine's, not part of a result


def without_locations(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``env_kwargs`` as recorded and compared: data locations left out."""
    return {key: value for key, value in env_kwargs.items() if key not in LOCATION_KEYS}


def versions() -> dict[str, str | None]:
    """The versions a result depends on; Stable-Baselines3's is None where its extra is not installed."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "stable_baselines3": package_version("stable-baselines3"),
        "ala_gym": ala_gym.__version__,
    }


@functools.cache
def source_digest() -> str:
    """The first 12 hex digits of a SHA-256 over the package's Python source as this process runs it (every module
    of ``ala_gym``, its controllers and benchmarks included, by installed name): runs with the same digest ran
    the same code, whether from a clone or a wheel. The package's version alone does not say so; a change to the
    code can change the order of a training run's float operations, and so its numbers."""
    digest = hashlib.sha256()
    roots = {"ala_gym": ala_gym, "ala_gym/agents": ala_gym.agents, "ala_gym/benchmarks": ala_gym.benchmarks}
    files: dict[str, Path] = {}
    for name, package in roots.items():
        for folder in map(Path, package.__path__):
            for path in folder.rglob("*.py"):
                relative = path.relative_to(folder)
                nested = name == "ala_gym" and relative.parts[0] in ("agents", "benchmarks")  # an installed layout
                if not nested and not {"__pycache__", "results"} & set(relative.parts):
                    files[f"{name}/{relative.as_posix()}"] = path
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def machine() -> dict[str, Any]:
    """The machine a result ran on: CPU model, cores, torch's CPU threads and the GPU (None without CUDA)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}
