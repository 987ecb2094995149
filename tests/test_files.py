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


def test_a_rewrite_keeps_the_files_permissions_and_writes_through_a_link(tmp_path: Path) -> None:
    private = tmp_path / "state.pt"
    private.write_text("old")
    private.chmod(0o600)
    write_text_atomic(private, "new")
    assert private.read_text() == "new" and private.stat().st_mode & 0o777 == 0o600  # not made readable by others
    (tmp_path / "target.md").write_text("old")
    (tmp_path / "link.md").symlink_to(tmp_path / "target.md")
    write_text_atomic(tmp_path / "link.md", "new")
    assert (tmp_path / "link.md").is_symlink() and (tmp_path / "target.md").read_text() == "new"


def test_a_move_that_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "report.md").mkdir()  # a folder where the file would go: the final move fails
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "report.md", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
