"""Oracle rows of a comparison: the best fixed loss of a family, selected on validation, reported on test.

A learned loss is worth what it gains over the best simple answer tuned on the same data, not over an
untuned default. An oracle row names a family of fixed controllers (a grid); the comparison runs every
grid point on the first ``SELECTION_SEEDS`` seeds, selects the point with the best mean final validation
metric (the full validation split, never the test split; among equal means, the lowest mean final validation
loss), runs that point on every seed, and reports its test metric under the oracle's name with the selected
point beside it.

* ``oracle-phi``: Phi = I plus one uniform off-diagonal value (``phi-uniform``), negative (a sharper loss,
  what the online learner drifts to) through zero (cross-entropy) to positive (label-smoothing-like): the
  best fixed point of the controller's own action space along its main direction.
* ``oracle-smoothing``: cross-entropy with tuned label smoothing (``phi-uniform(label_smoothing=eps)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SELECTION_SEEDS = 2
"""Seeds on which every grid point runs; only the selected point runs on the others."""

ORACLES: dict[str, list[str]] = {
    "oracle-phi": [
        f"phi-uniform(off_diagonal={value})" for value in (-0.1, -0.03, -0.01, 0.0, 0.01, 0.03, 0.1)
    ],
    "oracle-smoothing": [f"phi-uniform(label_smoothing={value})" for value in (0.02, 0.05, 0.1, 0.2)],
}
"""Each oracle's grid, as controller specs of the comparison."""


def is_oracle(spec: str) -> bool:
    return spec in ORACLES


def final_validation(run: dict) -> float:
    """A run's final validation metric: the mean over its children (full validation split)."""
    return float(np.mean([child["final_val_metric"] for child in run["children"]]))


def final_validation_loss(run: dict) -> float:
    """A run's final validation loss (the NLL in classification): the mean over its children; NaN for a run
    recorded before runs kept it."""
    return float(np.mean([child.get("final_val_loss", np.nan) for child in run["children"]]))


TIE_TOLERANCE = 1e-9
"""Validation means this close are tied: far below one image of any validation split, far above float rounding."""


def select(
    candidates: list[str], runs: dict[tuple[str, int], dict], seeds: list[int], higher_is_better: bool
) -> dict[str, Any]:
    """The candidate with the best mean final validation metric over ``seeds``, with every candidate's mean;
    ``runs`` maps ``(spec, seed)`` to a finished run.

    An error rate on a few hundred validation images moves in steps of one image, so grid points tie. Tied
    points are told apart by their mean final validation loss (lowest first; recorded in ``tie_break``), and by
    grid order where that cannot: equal losses, or a tied point whose runs predate the loss.
    """
    means = {spec: float(np.mean([final_validation(runs[spec, seed]) for seed in seeds])) for spec in candidates}
    best = (max if higher_is_better else min)(means.values())
    # Equal image counts can average to floats a last bit apart (0.15 and 0.15000000000000002): a tie all the same.
    # Equal infinite means (every run diverged under the NLL) tie too.
    tied = [spec for spec in candidates if means[spec] == best or abs(means[spec] - best) <= TIE_TOLERANCE]
    selection: dict[str, Any] = {"selected": tied[0], "selection_seeds": list(seeds), "validation": means}
    if len(tied) > 1:
        losses = {spec: float(np.mean([final_validation_loss(runs[spec, seed]) for seed in seeds])) for spec in tied}
        if not any(np.isnan(loss) for loss in losses.values()):
            selection["selected"] = min(tied, key=losses.__getitem__)  # min keeps grid order among equal losses
        selection["tie_break"] = losses
    return selection
