"""The optional extras (``sb3``, ``ray``, ``learnloss``): the base install runs without them, and what needs
one says, in one line, which extra to install. Likewise the POSIX-only modules ``fcntl`` and ``resource``, which
Windows lacks: every module still imports, and what needs one says so in one line.

Each test runs Python with the extra's package made unimportable (``sys.modules[name] = None`` from a
``sitecustomize`` on ``PYTHONPATH``, so the subprocesses a command starts lack it too), as on an install
without that extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HINTS = {  # what installs each extra, from the package's installed metadata (setup.cfg's ranges)
    "sb3": "pip install 'stable-baselines3<3,>=2.6' (the 'sb3' extra; or pip install -e '.[sb3]' in a clone of ala-gym)",
    "ray": "pip install 'ray<3,>=2.10' (the 'ray' extra; or pip install -e '.[ray]' in a clone of ala-gym)",
    "learnloss": "pip install 'optuna<6,>=5' (the 'learnloss' extra; or pip install -e '.[learnloss]' in a clone of ala-gym)",
}
TINY = dict(total_iterations=10, steps_per_action=5, eval_points=2, eval_stride=2, device="cpu")
COMPARE = ("import sys; from pathlib import Path; from ala_gym.benchmarks.compare import main, run; "
           "run.RESULTS = Path(sys.argv[1]); main(sys.argv[2:])")


def run_without(modules: list[str], args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``python *args`` in the repository with ``modules`` unimportable."""
    site = tmp_path / "without"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({modules!r}))\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=300)


def assert_one_line_naming(done: subprocess.CompletedProcess, extra: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert HINTS[extra] in done.stderr, done.stderr


def test_sb3_command_without_the_extra_names_it_in_one_line(tmp_path: Path) -> None:
    assert_one_line_naming(run_without(["stable_baselines3"], ["-m", "ala_gym.agents.sb3", "--help"], tmp_path), "sb3")


def test_agents_import_without_sb3_and_its_controllers_name_the_extra(tmp_path: Path) -> None:
    code = (
        "import ala_gym.agents\n"
        "ala_gym.agents.CONTROLLERS['ce']()\n"
        "for make in (lambda: ala_gym.agents.CONTROLLERS['ppo'](), lambda: __import__('ala_gym.wrappers.sb3')):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as error:\n"
        "        print(error)\n"
    )
    done = run_without(["stable_baselines3"], ["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"stable-baselines3 is not installed: {HINTS['sb3']}"] * 2


def test_compare_without_sb3_keeps_its_runs_and_refuses_sb3_controllers(tmp_path: Path) -> None:
    common = ["--env", "ALA-Digits-v0", "--seeds", "1", "--env-kwargs", json.dumps(TINY)]
    done = run_without(["stable_baselines3"], ["-c", COMPARE, str(tmp_path), *common, "--controllers", "ce",
                                               "--name", "ce"], tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "ce" / "results.json").read_text())
    assert [run["controller"] for run in results["runs"]] == ["ce"]
    done = run_without(["stable_baselines3"], ["-c", COMPARE, str(tmp_path), *common, "--controllers", "ce,ppo",
                                               "--name", "ppo"], tmp_path)
    assert_one_line_naming(done, "sb3")
    assert "'ppo'" in done.stderr and not (tmp_path / "ppo").exists()


def test_ray_backend_and_throughput_without_ray_name_the_extra(tmp_path: Path) -> None:
    code = (
        "import gymnasium as gym\n"
        "import ala_gym\n"
        "try:\n"
        "    gym.make_vec('ALA-Digits-v0', num_envs=1, backend='ray', device='cpu')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = run_without(["ray"], ["-c", code], tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"ray is not installed: {HINTS['ray']}", done.stderr
    out = tmp_path / "throughput"
    args = ["-m", "ala_gym.benchmarks.throughput", "--models", "mlp", "--num-envs", "1", "--modes", "native-sequential", "ray-1",
            "--steps", "1", "--iterations", "1", "--out", str(out)]
    assert_one_line_naming(run_without(["ray"], args, tmp_path), "ray")
    assert not out.exists()  # refused before any measurement


def test_tuning_benchmark_without_optuna_keeps_its_runs_and_refuses_tpe(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from ala_gym.benchmarks import learnloss\n"
        "learnloss.RESULTS = Path(sys.argv[1])\n"
        "learnloss.run_benchmark(['digits'], ['random'], [0], 4, 'tiny', problem_kwargs={'train_size': 300})\n"
    )
    done = run_without(["optuna"], ["-c", code, str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "tiny" / "results.json").read_text())
    assert [run["method"] for run in results["runs"]] == ["random"]
    code = (
        "import sys; from pathlib import Path; from ala_gym.benchmarks import learnloss\n"
        "learnloss.RESULTS = Path(sys.argv[1])\n"
        "learnloss.main(['--datasets', 'digits', '--methods', 'random,tpe', '--seeds', '1', '--budget', '4', "
        "'--name', 'tpe'])\n"
    )
    assert_one_line_naming(run_without(["optuna"], ["-c", code, str(tmp_path)], tmp_path), "learnloss")
    assert not (tmp_path / "tpe").exists()  # refused before any training run


def test_a_result_records_no_version_for_an_extra_that_is_not_installed(monkeypatch) -> None:
    """Where an extra's distribution is not installed, a run's versions say None for it instead of failing."""
    from importlib import metadata

    from ala_gym.benchmarks import machine
    from ala_gym.benchmarks.compare import versions

    installed = metadata.version

    def version(distribution: str) -> str:
        if distribution == "stable-baselines3":
            raise metadata.PackageNotFoundError(distribution)
        return installed(distribution)

    monkeypatch.setattr(machine.metadata, "version", version)
    assert versions()["stable_baselines3"] is None and versions()["torch"]


def test_the_install_hint_names_each_extras_requirements_as_setup_cfg_declares_them(monkeypatch) -> None:
    from importlib import metadata

    from ala_gym.wrappers import EXTRAS, install_hint

    assert set(HINTS) == set(EXTRAS) and all(install_hint(extra) == hint for extra, hint in HINTS.items())

    def not_installed(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "requires", not_installed)  # a source tree on sys.path, never installed
    assert install_hint("sb3") == "pip install -e '.[sb3]' in a clone of ala-gym"


POSIX_ONLY = ["fcntl", "resource"]


def test_every_module_imports_without_the_posix_only_modules(tmp_path: Path) -> None:
    """A module that fails is one of the package's own imports of them; a third-party package's own need (Ray's
    Linux build of psutil) is not the package's to answer."""
    code = (
        "import importlib, pkgutil, sys, traceback\n"
        "own = tuple(sys.argv[1:])\n"
        "packages = [importlib.import_module(name) for name in ('ala_gym', 'ala_gym.agents', 'ala_gym.benchmarks')]\n"
        "names = {m.name for p in packages for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')}\n"
        "for name in sorted(names):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as error:\n"
        "        innermost = traceback.extract_tb(error.__traceback__)[-1].filename\n"
        "        print(('own ' if innermost.startswith(own) else 'third-party ') + name, error)\n"
        "    else:\n"
        "        print('imported', name)\n"
    )
    sources = [str(ROOT / folder) + os.sep for folder in ("ala_gym", "agents", "benchmarks")]
    done = run_without(POSIX_ONLY, ["-c", code, *sources], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.startswith("own ")], done.stdout
    imported = {line.split()[1] for line in lines if line.startswith("imported ")}
    assert len(imported) > 50 and all(line.startswith(("imported ", "third-party ")) for line in lines), done.stdout
    assert {"ala_gym.benchmarks.compare.store", "ala_gym.benchmarks.throughput", "ala_gym.benchmarks.malloc"} <= imported


def test_a_comparison_without_file_locks_says_so_in_one_line(tmp_path: Path) -> None:
    args = ["--env", "ALA-Digits-v0", "--seeds", "1", "--env-kwargs", json.dumps(TINY), "--controllers", "ce"]
    done = run_without(POSIX_ONLY, ["-c", COMPARE, str(tmp_path), *args], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert "fcntl file locks, which this OS does not have (Windows)" in done.stderr, done.stderr


def test_peak_memory_and_load_read_as_each_os_reports_them(monkeypatch) -> None:
    import resource
    from types import SimpleNamespace

    from ala_gym.core import machine

    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3 * 2**20))
    assert machine.peak_rss_mib() == 6 * 2**10  # Linux: kibibytes, the process's and its largest child's
    monkeypatch.setattr(machine.sys, "platform", "darwin")
    assert machine.peak_rss_mib() == 6  # macOS: bytes
    monkeypatch.setitem(sys.modules, "resource", None)
    assert machine.peak_rss_mib() is None
    assert len(machine.load_average()) == 3
    monkeypatch.delattr(os, "getloadavg")
    assert machine.load_average() is None


def test_the_malloc_benchmark_refuses_a_c_library_other_than_glibc(monkeypatch, capsys, tmp_path: Path) -> None:
    import platform

    import pytest

    from ala_gym.benchmarks import malloc

    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    with pytest.raises(SystemExit) as exit_info:
        malloc.main(["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip().endswith(
        "error: this benchmark compares glibc's malloc settings, and this Python runs on Darwin without glibc; "
        "run it on Linux with glibc"
    )
