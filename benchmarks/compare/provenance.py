"""What a run records about where it ran (versions, machine), and the data locations it leaves out: a
setting of the machine, not part of a result."""

from __future__ import annotations

import os
import platform
from typing import Any

import gymnasium as gym
import torch

import ala_gym
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


def machine() -> dict[str, Any]:
    """The machine a result ran on: CPU model, cores, torch's CPU threads and the GPU (None without CUDA)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}
