"""The one error of the comparison: input it refuses, said on one line by the command."""

from __future__ import annotations


class ComparisonError(ValueError):
    """A comparison that cannot go ahead as asked; the command line
    (:func:`ala_gym.benchmarks.compare.cli.main`) prints it on one line and exits 2."""
