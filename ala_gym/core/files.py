"""Files written whole or not at all: written under a temporary name beside their place, then moved there."""

from __future__ import annotations

import os
from pathlib import Path


def publish(written: str | Path, path: str | Path) -> None:
    """Move the finished temporary file ``written`` onto ``path`` in one step (``os.replace``), with the
    permissions a file created at ``path`` directly would get: ``tempfile`` makes its files readable by their
    owner alone, which would keep a shared results folder or checkpoint from the others who use it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(written, 0o666 & ~umask)
    os.replace(written, path)
