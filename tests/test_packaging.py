"""The dependency floors setup.cfg declares are the versions ``make test-oldest`` runs the suite's core on
(``requirements-oldest.txt``), so that a floor cannot drift away from what was tested."""

from __future__ import annotations

import configparser
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
