"""Files written whole or not at all: written under a temporary name beside their place, then moved there."""

from __future__ import annotations

import os
from pathlib import Path


def publish(written: str | Path, path: str | Path) -> None:
    """Move the finished temporary file ``written`` onto ``path`` in one step (``os.replace``), with the
    permissions a file created at ``path`` directly would get: ``tempfile`` makes its files readable by their
    owner alone, which would keep a shared results folder or checkpoint from the others who use it."""
    os.chmod(written, _created_mode(0o666))
    os.replace(written, path)


def publish_folder(written: str | Path, path: str | Path) -> None:
    """:func:`publish` for a finished temporary folder (``tempfile.mkdtemp``'s) and a ``path`` that does not exist."""
    os.chmod(written, _created_mode(0o777))
    os.replace(written, path)


def _created_mode(mode: int) -> int:
    """``mode`` under the process's umask: what ``open`` or ``mkdir`` would give a new file or folder."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask
