"""Compare loss controllers on one ALA env: same seeds, same budget, every run reported
(``python -m ala_gym.benchmarks.compare --help`` says what a comparison writes, and lists the presets).

* :mod:`~ala_gym.benchmarks.compare.presets`: the named configurations of ``--preset``, as data;
* :mod:`~ala_gym.benchmarks.compare.specs`: the controller-spec language (``name(config)@env``) and the
  controller a spec names;
* :mod:`~ala_gym.benchmarks.compare.store`: the result store: run claims (file locks), atomic writes, the
  shape checks of what is read back, and the refusals of a folder that holds another comparison;
* :mod:`~ala_gym.benchmarks.compare.provenance`: what a run records about where it ran, data locations left out;
* :mod:`~ala_gym.benchmarks.compare.report`: the summary rows, the tables and the figures;
* :mod:`~ala_gym.benchmarks.compare.run`: one run, and :func:`compare`, which runs what is missing and reports;
* :mod:`~ala_gym.benchmarks.compare.cli`: the command line;
* :mod:`~ala_gym.benchmarks.compare.errors`: :class:`ComparisonError`.

``RESULTS``, ``SELECTION_SEEDS`` and ``run_one`` are read from :mod:`~ala_gym.benchmarks.compare.run` when a
comparison runs, so they are set there, not here.
"""

from __future__ import annotations

from ala_gym.benchmarks.compare.cli import main
from ala_gym.benchmarks.compare.errors import ComparisonError
from ala_gym.benchmarks.compare.provenance import machine, versions, without_locations
from ala_gym.benchmarks.compare.report import retrieval_table
from ala_gym.benchmarks.compare.run import compare
from ala_gym.benchmarks.compare.specs import build_controller, parse_config, parse_controller
from ala_gym.benchmarks.compare.store import claim, release, write_json

__all__ = [
    "ComparisonError",
    "build_controller",
    "claim",
    "compare",
    "machine",
    "main",
    "parse_config",
    "parse_controller",
    "release",
    "retrieval_table",
    "versions",
    "without_locations",
    "write_json",
]
