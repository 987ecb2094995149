"""Files written whole or not at all (``ala_gym.core.files``): what every result, report, policy and provenance
file is written through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ala_gym.core.files import atomic_file, write_text_atomic


def test_a_write_replaces_the_file_with_the_permissions_a_direct_write_gives(tmp_path: Path) -> None:
    target = tmp_path / "table.md"
    target.write_text("old\n")
    write_text_atomic(target, "new ± 1\n")
    assert target.read_text(encoding="utf-8") == "new ± 1\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not tempfile's owner-only 0o600


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_the_file_that_was_there_and_nothing_beside_it(tmp_path: Path, error: type) -> None:
    target = tmp_path / "results.json"
    target.write_text('{"finished": true}')
    with pytest.raises(error):
        with atomic_file(target, "w") as file:
            file.write('{"finis')
            raise error()
    assert target.read_text() == '{"finished": true}' and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_the_temporary_file_carries_the_suffix_asked_for(tmp_path: Path) -> None:
    """A library that writes by name and adds its own suffix to a name without it (SB3's ``.zip``) is given a
    temporary name that already ends in it."""
    with atomic_file(tmp_path / "model.zip", suffix=".zip") as file:
        assert file.name.endswith(".zip") and Path(file.name).parent == tmp_path
        Path(file.name).write_bytes(b"PK")
    assert (tmp_path / "model.zip").read_bytes() == b"PK"
