"""The dependency floors setup.cfg declares are the versions ``make test-oldest`` runs the suite's core on
(``requirements-oldest.txt``), so that a floor cannot drift away from what was tested."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("learnloss", "sb3", "ray", "zoo")
"""The extras a user installs; ``docs`` and ``dev`` hold tools, not dependencies of the package."""


def _requirements(text: str) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line]


def _floors() -> dict[str, str]:
    """Each declared dependency's lowest admitted version, by canonical name (torch's and torchvision's too)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = _requirements(config["options"]["install_requires"])
    declared += [req for extra in EXTRAS for req in _requirements(config["options.extras_require"][extra])]
    floors = {}
    for requirement in declared:
        lowest = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert len(lowest) == 1, f"setup.cfg: {requirement} declares no single floor (>=)"
        floors[requirement.name.lower().replace("_", "-")] = lowest[0]
    return floors


def test_every_floor_but_torchs_is_pinned_where_make_test_oldest_installs_it() -> None:
    pinned = {}
    for requirement in _requirements((ROOT / "requirements-oldest.txt").read_text()):
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"requirements-oldest.txt: {requirement} is not a pin"
        pinned[requirement.name.lower().replace("_", "-")] = spec.version
    floors = _floors()
    # torch's and torchvision's floors stay untested: the Makefile's builds (2.14.1, 0.29.1) are the ones it installs.
    for name in ("torch", "torchvision"):
        floors.pop(name)
    for name, floor in floors.items():
        assert name in pinned, f"setup.cfg's {name}>={floor} is not in requirements-oldest.txt"
        # a floor of 1.1 is the release 1.1.0
        assert pinned[name].split(".")[: len(floor.split("."))] == floor.split("."), (name, floor, pinned[name])
        assert all(part == "0" for part in pinned[name].split(".")[len(floor.split(".")) :]), (name, pinned[name])
    assert set(pinned) == set(floors)


def test_make_tests_two_workers_keep_each_group_of_tests_on_one_of_them(tmp_path: Path) -> None:
    """The groups tests/conftest.py gives hold under pytest-xdist (Ray's tests on one worker: two Ray clusters at
    once have hung the suite): its hook runs before xdist's, which reads them, and pytest stays below 9.2, with
    which pytest-xdist 3.8 silently stops grouping (pytest-dev/pytest-xdist#1386). The tests are scheduled and
    not run: a plugin records where each one would run."""
    (tmp_path / "where_tests_run.py").write_text(
        "import os\n"
        "import pytest\n\n"
        "@pytest.hookimpl(tryfirst=True)\n"
        "def pytest_runtest_protocol(item, nextitem):\n"
        "    groups = [mark.args[0] for mark in item.iter_markers('xdist_group')]\n"
        "    with open(os.environ['WHERE_TESTS_RUN'], 'a') as log:\n"
        "        log.write(f\"{os.environ['PYTEST_XDIST_WORKER']} {','.join(groups) or '-'}\\n\")\n"
        "    return True\n"
    )
    log = tmp_path / "where.txt"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")])), WHERE_TESTS_RUN=str(log))
    files = ["tests/test_ray.py", "tests/test_meta_train.py", "tests/test_vector.py", "tests/test_inputs.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
         "-p", "where_tests_run", *files],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 5), done.stdout[-2000:] + done.stderr[-2000:]  # 5: no test ran, as asked
    runs = [line.split() for line in log.read_text().splitlines()]
    ray = {worker for worker, group in runs if group == "ray"}
    assert sum(group == "ray" for _, group in runs) >= 10 and len(ray) == 1, ray  # many Ray tests, one worker
    assert len({worker for worker, _ in runs}) == 2  # the other tests spread over both
