"""The policy checkpoint format of the learned controllers: plain tensors and primitives, loadable with
``torch.load(..., weights_only=True)``, versioned, and refused with one clear line when it is not one."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

import ala_gym

FORMAT_VERSION = 1
"""Version of the checkpoint layout; bump it whenever a saved policy can no longer be loaded as is."""
CHECKPOINT_KEYS = ("format_version", "ala_gym_version", "kind", "config", "state_dict")


class CheckpointError(ValueError):
    """A file that is not a loadable ala-gym policy checkpoint; the message says which file and why."""


def save_checkpoint(path: str | Path, kind: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
    """Write a policy as plain tensors and primitives, so that it loads with ``weights_only=True``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format_version": FORMAT_VERSION,
            "ala_gym_version": ala_gym.__version__,
            "kind": kind,
            "config": config,
            "state_dict": state_dict,
        },
        path,
    )


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Read a checkpoint of ``kind`` written by :func:`save_checkpoint`; :class:`CheckpointError` if it is
    not one (never torch's own message, whose advice to load with ``weights_only=False`` would run
    whatever code the file holds)."""
    written_by = "write one with --save (python -m agents.reinforce / agents.sb3)"
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; {written_by}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not an ala-gym policy checkpoint (it does not load as plain tensors: "
            f"{type(exc).__name__}); {written_by}"
        ) from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not an ala-gym policy checkpoint (no {', '.join(missing)}); {written_by}")
    version = checkpoint["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} has an invalid format_version {version!r} (an integer is written); {written_by}")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by ala-gym {checkpoint['ala_gym_version']} in checkpoint format {version}; this "
            f"ala-gym {ala_gym.__version__} reads format {FORMAT_VERSION} only: save the policy again with this version"
        )
    if checkpoint["kind"] != kind:
        raise CheckpointError(f"{path} holds a {checkpoint['kind']!r} policy, not a {kind!r} one")
    if not isinstance(checkpoint["config"], dict) or not isinstance(checkpoint["state_dict"], dict):
        raise CheckpointError(f"{path} is damaged: its config and state_dict must be dictionaries; {written_by}")
    return checkpoint
