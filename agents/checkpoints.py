"""The policy checkpoint format of the learned controllers: plain tensors and primitives, loadable with
``torch.load(..., weights_only=True)``, versioned, and refused with one clear line when it is not one.

A checkpoint loads only in the ala-gym version that wrote it (``ala_gym_version``): a policy's meaning
depends on the env's observation features and step rules, which any release may change. Its weights
must be finite: a policy that diverged while training would fail only at its first action.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

import ala_gym
from ala_gym.core.files import atomic_file

FORMAT_VERSION = 1
"""Version of the checkpoint layout; bump it whenever a saved policy can no longer be loaded as is."""
CHECKPOINT_KEYS = ("format_version", "ala_gym_version", "kind", "config", "state_dict")


class CheckpointError(ValueError):
    """A file that is not a loadable ala-gym policy checkpoint; the message says which file and why."""


def save_checkpoint(
    path: str | Path, kind: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor], **extra: Any
) -> None:
    """Write a policy as plain tensors and primitives, so that it loads with ``weights_only=True``; ``extra``
    entries (plain types and tensors too) go beside the header. Written atomically: an interruption while
    writing leaves the file that was there. Weights that are not finite are refused (:class:`CheckpointError`),
    as :func:`load_checkpoint` would refuse them, and the file that was there stays."""
    clashes = sorted(set(extra) & set(CHECKPOINT_KEYS))
    if clashes:
        raise ValueError(f"extra entries {clashes} would overwrite the checkpoint's own keys {CHECKPOINT_KEYS}")
    if non_finite := non_finite_weights(state_dict):
        raise CheckpointError(
            f"{path} not written: the policy's weights are not finite (NaN or inf in {', '.join(non_finite)}), as "
            "after a training that diverged; train it again"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format_version": FORMAT_VERSION, "ala_gym_version": ala_gym.__version__, "kind": kind, "config": config}
    with atomic_file(path) as file:
        torch.save({**header, "state_dict": state_dict, **extra}, file)


def non_finite_weights(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors of ``state_dict`` that hold NaN or inf (none for what is not a dictionary of
    tensors: a damaged file, named so by :func:`load_checkpoint`)."""
    if not isinstance(state_dict, dict):
        return []
    return [name for name, value in state_dict.items() if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all())]


def load_checkpoint(path: str | Path, kind: str, written_by: str | None = None) -> dict[str, Any]:
    """Read a checkpoint of ``kind`` written by :func:`save_checkpoint`; :class:`CheckpointError` if it is
    not one (never torch's own message, whose advice to load with ``weights_only=False`` would run
    whatever code the file holds). ``written_by`` is the fix an error names (default: how a policy is saved)."""
    written_by = written_by or "write one with --save (python -m ala_gym.agents.reinforce / ala_gym.agents.sb3)"
    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; name the .pt file in it")
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; {written_by}")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a file that is no checkpoint before failing on it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        # Only a refused read has a fix to name; another OS error (a device's I/O error) is named as it is.
        fix = "; check its permissions" if isinstance(exc, PermissionError) else ""
        raise CheckpointError(f"{path} cannot be read ({exc.strerror or exc}){fix}") from None
    except Exception as exc:
        # A file that is not a zip archive is read as a legacy pickle, and torch's weights-only unpickler
        # then fails with whatever error its bytes lead to (KeyError for text, IndexError, EOFError, ...).
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
    if checkpoint["ala_gym_version"] != ala_gym.__version__:
        raise CheckpointError(
            f"{path} was written by ala-gym {checkpoint['ala_gym_version']} and this is ala-gym {ala_gym.__version__}, "
            f"which loads only its own policies: load it with ala-gym {checkpoint['ala_gym_version']}, or train and "
            "save the policy again with this version (--save)"
        )
    if checkpoint["kind"] != kind:
        raise CheckpointError(f"{path} holds a {checkpoint['kind']!r} checkpoint, not a {kind!r} one")
    state_dict = checkpoint["state_dict"]
    if not isinstance(checkpoint["config"], dict) or not isinstance(state_dict, dict):
        raise CheckpointError(f"{path} is damaged: its config and state_dict must be dictionaries; {written_by}")
    if not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise CheckpointError(f"{path} is damaged: its state_dict must hold tensors only; {written_by}")
    if non_finite := non_finite_weights(state_dict):
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or inf in {', '.join(non_finite)}), as a policy that diverged in "
            "training does: train it again and save it with --save"
        )
    return checkpoint
