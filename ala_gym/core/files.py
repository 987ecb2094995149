"""Files written whole or not at all: written under a temporary name beside their place, then moved there."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def publish(written: str | Path, path: str | Path) -> None:
    """Move the finished temporary file ``written`` onto ``path`` in one step (``os.replace``), with the
    permissions of the file it replaces, or those a file created at ``path`` directly would get: ``tempfile``
    makes its files readable by their owner alone, which would keep a shared results folder or checkpoint from
    the others who use it."""
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = _created_mode(0o666)
    os.chmod(written, mode)
    os.replace(written, path)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", suffix: str = ".tmp", encoding: str | None = None) -> Iterator[IO]:
    """A file to write ``path`` through, whole or not at all: a temporary file beside it (named with ``suffix``),
    :func:`publish`-ed onto ``path`` when the block ends, removed when it raises (an interruption leaves the file
    that was there). A link at ``path`` is written through: the file it names is replaced, the link kept."""
    path = Path(os.path.realpath(path))
    tmp = tempfile.NamedTemporaryFile(mode, encoding=encoding, dir=path.parent, suffix=suffix, delete=False)
    try:
        with tmp:
            yield tmp
        publish(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)  # nothing half-written stays beside the target
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, "w", encoding="utf-8") as file:
        file.write(text)


def publish_folder(written: str | Path, path: str | Path) -> None:
    """:func:`publish` for a finished temporary folder (``tempfile.mkdtemp``'s) and a ``path`` that does not exist."""
    os.chmod(written, _created_mode(0o777))
    os.replace(written, path)


def _created_mode(mode: int) -> int:
    """``mode`` under the process's umask: what ``open`` or ``mkdir`` would give a new file or folder."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask
