"""The wheel is a good citizen: it adds only the import name ``ala_gym``, ships the policies and typing marker
but nothing of the results, tests or docs, and once installed in a fresh virtual environment beside
openai-agents (whose import name is ``agents``) both import, an env runs, the command lines answer ``--help``,
and data and results are looked for outside the installed package.

The wheel is built once per module, without build isolation (setuptools builds wheels itself, so nothing is
downloaded), from a temporary tree of links to the checkout's files: the build's ``build/`` and ``*.egg-info``
folders go there, so neither the checkout is written to nor a stale ``build/lib`` slips into the wheel.
The fresh environment has no packages of its own: a ``.pth`` file lists this environment's site-packages, so
the dependencies (and pip) are found there, while the ``.pth`` files inside that folder, among them the
editable install of this checkout, are not processed; ``import ala_gym`` fails there until the wheel is
installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "agents" / "policies"
NOT_LINKED = {"build", "dist", "site"}
"""Build outputs of the checkout (and the documentation site) that the temporary source tree leaves out."""
SOURCES = {"ala_gym": "ala_gym", "agents": "ala_gym/agents", "benchmarks": "ala_gym/benchmarks"}
"""The checkout's folders of code, and where in the wheel they go."""

PROBE = """
import sys
from importlib import metadata
from pathlib import Path

root, site_packages = Path(sys.argv[1]), Path(sys.argv[2])

import agents

where = Path(agents.__file__).resolve()
assert hasattr(agents, "Agent"), f"agents is not openai-agents: {where}"
assert where == Path(metadata.distribution("openai-agents").locate_file("agents/__init__.py")).resolve(), where
assert not where.is_relative_to(root / "agents"), f"agents comes from the checkout: {where}"

import gymnasium as gym

import ala_gym
import ala_gym.agents
import ala_gym.benchmarks.compare
import ala_gym.benchmarks.machine
import ala_gym.core.data

for module in (ala_gym, ala_gym.agents, ala_gym.benchmarks.compare):
    assert Path(module.__file__).resolve().is_relative_to(site_packages), f"{module.__name__}: {module.__file__}"

env = gym.make("ALA-Digits-v0", total_iterations=4, steps_per_action=2, device="cpu")
env.reset(seed=0)
env.step(env.action_space.sample())
env.close()

home = ala_gym.core.data.data_home()
assert home == Path.home() / ".local" / "share" / "ala_gym", home
assert not home.resolve().is_relative_to(site_packages), home

results = ala_gym.benchmarks.machine.RESULTS
assert not results.is_absolute() and results.resolve().is_relative_to(Path.cwd().resolve()), results
print("ok")
"""
"""Run by the fresh environment's Python in an empty folder, with the checkout and the site-packages the
wheel went into as arguments."""


def require(distribution: str) -> None:
    """Fail in one line, rather than skip, when the development environment lacks ``distribution``."""
    try:
        metadata.version(distribution)
        return
    except metadata.PackageNotFoundError:
        pass
    pytest.fail(f"{distribution} is not installed in this environment: run `make setup`", pytrace=False)


def fresh_env() -> dict[str, str]:
    """This process's environment without what would point Python or ala_gym at the checkout or its data."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    for key in ("VIRTUAL_ENV", "ALA_GYM_DATA", "XDG_DATA_HOME"):
        env.pop(key, None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("setuptools")
    source = tmp_path_factory.mktemp("source")
    for entry in ROOT.iterdir():
        if entry.name.startswith(".") or entry.name in NOT_LINKED or entry.name.endswith(".egg-info"):
            continue
        (source / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    result = run([*command, "-w", str(out), str(source)], cwd=source, env=fresh_env())
    assert result.returncode == 0, explain(result)
    (built,) = out.glob("ala_gym-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh virtual environment with the wheel installed: its Python and its site-packages."""
    venv = tmp_path_factory.mktemp("venv")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = fresh_env()
    result = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=elsewhere, env=env)
    assert result.returncode == 0, explain(result)
    python = venv / "bin" / "python"
    site_packages = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=elsewhere, env=env).stdout.strip())  # fmt: skip
    assert site_packages.resolve().is_relative_to(venv.resolve()), site_packages
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "ala_gym_test_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))

    before = run([str(python), "-c", "import ala_gym"], cwd=elsewhere, env=env)
    assert "No module named 'ala_gym'" in before.stderr, f"before the wheel is installed: {explain(before)}"
    # --ignore-installed: the ala-gym of this environment is visible through the .pth file, and pip must neither
    # take it for the installed one nor try to remove it.
    command = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed"]
    result = run([*command, str(wheel)], cwd=elsewhere, env=env)
    assert result.returncode == 0, explain(result)
    return python, site_packages.resolve()


def test_wheel_adds_only_ala_gym_and_ships_the_package_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        declared = [archive.read(name).decode().split() for name in names if name.endswith(".dist-info/top_level.txt")]
    top_level = {PurePosixPath(name).parts[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"ala_gym"}, sorted(top_level)
    assert all(names == ["ala_gym"] for names in declared), declared

    # Every module of the checkout, under the name it installs as; a new subpackage missing from setup.cfg's
    # packages is missing here.
    expected = {"ala_gym/py.typed"} | {
        f"{prefix}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, prefix in SOURCES.items()
        for path in (ROOT / folder).rglob("*.py")
        if not {"results", "__pycache__"} & set(path.relative_to(ROOT / folder).parts)
    }
    assert {"ala_gym/agents/reinforce.py", "ala_gym/benchmarks/machine.py"} <= expected, sorted(expected)
    policies = [path for pattern in ("*.pt", "*.md", "*.json") for path in POLICIES.glob(pattern)]
    assert any(path.suffix == ".pt" for path in policies), f"no policy in {POLICIES}"
    expected |= {f"ala_gym/agents/policies/{path.name}" for path in policies}
    missing = sorted(expected - set(names))
    assert not missing, f"not in the wheel (setup.cfg's packages and package_data): {missing}"
    # The licence the metadata declares, with its text (setup.cfg's license_files).
    (license_text,) = [name for name in names if re.fullmatch(r"[^/]+\.dist-info/(licenses/)?LICENSE", name)]
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(license_text).decode() == (ROOT / "LICENSE").read_text()

    unwanted = [
        name for name in names
        if {"results", "tests", "docs", "__pycache__"} & set(PurePosixPath(name).parts) or name.endswith(".pyc")
    ]  # fmt: skip
    assert not unwanted, unwanted


def test_installs_and_imports_beside_openai_agents(installed: tuple[Path, Path], tmp_path: Path) -> None:
    require("openai-agents")
    python, site_packages = installed
    result = run([str(python), "-c", PROBE, str(ROOT), str(site_packages)], cwd=tmp_path, env=fresh_env())
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), explain(result)


@pytest.mark.parametrize("module", ["ala_gym.benchmarks.compare", "ala_gym.agents.reinforce"])
def test_command_lines_answer_help(installed: tuple[Path, Path], tmp_path: Path, module: str) -> None:
    python, _ = installed
    result = run([str(python), "-m", module, "--help"], cwd=tmp_path, env=fresh_env())
    assert result.returncode == 0 and "usage:" in result.stdout, explain(result)


def test_the_installed_wheel_runs_code_of_the_same_source_digest_as_the_checkout(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """A run's ``source`` names the code, not the layout: the wheel built from this checkout digests as it does."""
    from ala_gym.core.machine import source_digest

    python, _ = installed
    probe = "from ala_gym.core.machine import source_digest; print(source_digest())"
    result = run([str(python), "-c", probe], cwd=tmp_path, env=fresh_env())
    assert result.returncode == 0 and result.stdout.strip() == source_digest(), explain(result)


def test_a_checkout_with_windows_line_ends_digests_as_this_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git's autocrlf writes CRLF line ends into a Windows checkout of the same commit: the same code, the same
    digest. A change of the code itself changes it."""
    from importlib.machinery import ModuleSpec

    from ala_gym.core import machine

    for folder, installed_as in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            copy = tmp_path / installed_as / path.relative_to(ROOT / folder)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))

    def copied_spec(name: str) -> ModuleSpec:
        spec = ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(tmp_path / name.replace(".", "/"))]
        return spec

    checkout = machine.source_digest.__wrapped__()  # uncached: as this checkout's files are now
    monkeypatch.setattr(machine, "find_spec", copied_spec)
    assert machine.source_digest.__wrapped__() == checkout
    edited = tmp_path / "ala_gym" / "core" / "machine.py"
    edited.write_bytes(edited.read_bytes() + b"# an edit\r\n")
    assert machine.source_digest.__wrapped__() != checkout
