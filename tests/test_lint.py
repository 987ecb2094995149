"""The code passes the linter and the type checker the project configures (pyproject.toml's [tool.ruff] and
[tool.mypy]), so it cannot drift."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# agents/ and benchmarks/ install as ala_gym.agents and ala_gym.benchmarks (setup.cfg's package_dir); mypy cannot
# follow that mapping, so it checks a copy laid out as the installed package.
STAGED_PACKAGES = {"ala_gym": ROOT / "ala_gym", "ala_gym/agents": ROOT / "agents", "ala_gym/benchmarks": ROOT / "benchmarks"}
# The same folder every run (one per checkout, so two checkouts never share a tree): mypy's cache, kept beside the
# staged tree, is keyed by the files' paths, sizes and modification times (copied along), so a warm run re-checks
# only what changed instead of all of torch's stubs.
STAGE = Path(tempfile.gettempdir()) / f"ala_gym_mypy_stage-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"


def test_ruff_finds_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "ala_gym", "agents", "benchmarks", "tests", "docs"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-1000:]


def _stage_package(tree: Path) -> None:
    """Copy the package's Python files (and its py.typed marker) into `tree` as the install lays them out."""
    shutil.rmtree(tree, ignore_errors=True)
    for target, source in STAGED_PACKAGES.items():
        for path in source.rglob("*"):
            relative = path.relative_to(source)
            if source.name == "benchmarks" and relative.parts[0] == "results":
                continue  # benchmark output, not code
            if not path.is_file() or (path.suffix != ".py" and path.name != "py.typed"):
                continue
            destination = tree / target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)  # keeps the modification time, so mypy's cache stays valid


def _repository_paths(output: str) -> str:
    """mypy's report with the staged paths (ala_gym/agents/..., ala_gym/benchmarks/...) put back as the repository's."""
    return re.sub(r"^ala_gym[/\\](agents|benchmarks)(?=[/\\])", r"\1", output, flags=re.MULTILINE)


def _python_version_to_check() -> list[str]:
    """mypy's ``--python-version`` where the configured one (the oldest Python the package supports) cannot be
    checked against the installed dependencies: NumPy 2.5's stubs are written in Python 3.12's syntax, and it
    installs only there. Nothing where they allow the configured one."""
    from importlib import metadata

    from packaging.specifiers import SpecifierSet

    configured = re.search(r'^python_version = "(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert configured, "pyproject.toml's [tool.mypy] names no python_version"
    oldest = tuple(int(part) for part in configured.groups())
    numpy_python = SpecifierSet(metadata.metadata("numpy")["Requires-Python"] or "")
    allowed = [(3, minor) for minor in range(oldest[1], 20) if f"3.{minor}.0" in numpy_python]
    return [] if not allowed or allowed[0] == oldest else ["--python-version", "{}.{}".format(*allowed[0])]


def test_mypy_finds_nothing() -> None:
    tree = STAGE / "tree"
    _stage_package(tree)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "-p", "ala_gym", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(STAGE / "cache"), *_python_version_to_check()],
        cwd=tree, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, _repository_paths(result.stdout[-8000:] + result.stderr[-2000:])
