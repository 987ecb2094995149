"""The one-way architecture: core (torch only) -> envs (gymnasium) -> wrappers -> agents -> benchmarks.

A static check reads every module's imports (also those inside functions); a subprocess checks what
``import ala_gym.core`` (and every core module) really loads in a fresh interpreter.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = {
    # package folder: imports it must not make
    "ala_gym/core": (
        "gymnasium", "stable_baselines3", "ala_gym.envs", "ala_gym.wrappers", "ala_gym.agents", "ala_gym.benchmarks",
    ),
    "ala_gym": ("ala_gym.agents", "ala_gym.benchmarks"),
    "agents": ("ala_gym.benchmarks",),
    "benchmarks": (),
    "tests": (),
    "docs": (),
}
# agents/ and benchmarks/ install as ala_gym.agents and ala_gym.benchmarks: no code may import them by their
# folder names, which the installed distribution does not provide.
FOLDER_NAMES = ("agents", "benchmarks")


def _imports(path: Path, source: str | None = None) -> list[str]:
    """Every module ``path`` (or ``source`` as if it were that file) imports, by its full name: relative imports
    resolved against the module's package as installed (``agents/`` is ``ala_gym.agents``)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = ".".join((("ala_gym",) if parts[0] in FOLDER_NAMES else ()) + parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            assert module, f"{path}: an import from nowhere"
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def test_a_relative_import_is_read_by_its_full_name() -> None:
    module = ROOT / "ala_gym" / "core" / "trainer.py"
    assert "ala_gym.envs.base" in _imports(module, "def f():\n    from ..envs import base\n")
    assert "ala_gym.core.losses.PhiLoss" in _imports(module, "from .losses import PhiLoss\n")
    assert "ala_gym.benchmarks.compare" in _imports(ROOT / "agents" / "cli.py", "from ..benchmarks import compare\n")


@pytest.mark.parametrize("package", sorted(RULES))
def test_static_imports_flow_one_way(package: str) -> None:
    forbidden = RULES[package]
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in (*forbidden, *FOLDER_NAMES)):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
            if package == "ala_gym/core" and name in ("ala_gym", "ala_gym.__init__"):
                offenders.append(f"{path.relative_to(ROOT)}: {name} (the package root may register envs)")
    assert not offenders, offenders


def test_importing_the_core_loads_no_env_rl_library_or_higher_layer() -> None:
    # The package root registers the env ids by entry-point strings, which loads gymnasium's registry but
    # no env module; the static check above keeps the core's own code free of gymnasium.
    modules = sorted(f"ala_gym.core.{p.stem}" for p in (ROOT / "ala_gym" / "core").glob("*.py") if p.stem != "__init__")
    assert "ala_gym.core.trainer" in modules and "ala_gym.core.batched" in modules
    code = (
        "import sys, importlib\n"
        "import ala_gym.core\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('stable_baselines3', 'ray', 'agents', 'benchmarks') or m.startswith(('ala_gym.envs', 'ala_gym.wrappers', "
        "'ala_gym.agents', 'ala_gym.benchmarks')))\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize(
    "imports",
    [
        "import ala_gym\nimport gymnasium as gym",  # the order isort and ruff sort them in
        "import gymnasium as gym\nimport ala_gym",
        "import gymnasium as gym\nimport ala_gym\ngym.register_envs(ala_gym)",
        "import ala_gym.core\nimport gymnasium as gym",
    ],
)
def test_importing_the_package_registers_the_ids_in_any_order(imports: str) -> None:
    code = (
        f"{imports}\n"
        "from ala_gym import ENV_IDS\n"
        "assert all(env_id in gym.registry for env_id in ENV_IDS), 'ids missing'\n"
        "env = gym.make('ALA-Digits-v0', total_iterations=4, steps_per_action=2, device='cpu')\n"
        "print(env.spec.id)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ALA-Digits-v0", result.stderr[-2000:]
