"""Oracle rows: the best fixed loss of a grid, selected on the validation split only, reported on test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ala_gym.benchmarks import compare, oracle
from ala_gym.benchmarks.compare import run as compare_run

TINY = dict(total_iterations=10, steps_per_action=5, eval_points=2, eval_stride=2, device="cpu")


def _run(val: float, test: float, val_loss: float | None = None) -> dict:
    child = {"final_val_metric": val, "test_metric": test}
    return {"children": [child if val_loss is None else {**child, "final_val_loss": val_loss}]}


def test_selection_reads_validation_never_test() -> None:
    """The point best on test but worst on validation is not selected; the best on validation is."""
    grid = ["a", "b", "c"]
    runs = {
        ("a", 0): _run(0.30, 0.01), ("a", 1): _run(0.32, 0.01),  # best test, worst validation
        ("b", 0): _run(0.10, 0.50), ("b", 1): _run(0.12, 0.50),  # best validation, worst test
        ("c", 0): _run(0.20, 0.20), ("c", 1): _run(0.20, 0.20),
    }  # fmt: skip
    chosen = oracle.select(grid, runs, [0, 1], higher_is_better=False)
    assert chosen["selected"] == "b" and chosen["validation"]["b"] == pytest.approx(0.11)
    assert oracle.select(grid, runs, [0, 1], higher_is_better=True)["selected"] == "a"  # AUCPR-like: highest
    tie = {("a", 0): _run(0.1, 0.9), ("b", 0): _run(0.1, 0.0)}
    assert oracle.select(["a", "b"], tie, [0], higher_is_better=False)["selected"] == "a"  # no losses: grid order


def test_points_whose_every_run_diverged_under_the_nll_tie_at_inf() -> None:
    """Every run of every point diverged under the NLL (worst value inf): the means are all inf and tie, so the
    first point of the grid is selected, not an empty list of ties."""
    inf = float("inf")
    runs = {(spec, 0): _run(inf, inf, inf) for spec in ("a", "b")}
    assert oracle.select(["a", "b"], runs, [0], higher_is_better=False)["selected"] == "a"


def test_a_tie_on_validation_goes_to_the_lower_validation_loss_never_to_test() -> None:
    """Equal mean validation metrics: the lower mean validation loss wins, whatever the test metric; equal
    losses, or a tied point recorded without one, fall back to grid order. Untied points are not asked."""
    runs = {
        ("a", 0): _run(0.10, 0.0, 0.40), ("a", 1): _run(0.12, 0.0, 0.40),
        ("b", 0): _run(0.12, 0.9, 0.30), ("b", 1): _run(0.10, 0.9, 0.34),  # same mean error, lower loss
        ("c", 0): _run(0.30, 0.0), ("c", 1): _run(0.30, 0.0),  # no loss, but not tied
    }  # fmt: skip
    chosen = oracle.select(["a", "b", "c"], runs, [0, 1], higher_is_better=False)
    assert chosen["selected"] == "b" and chosen["tie_break"] == {"a": pytest.approx(0.40), "b": pytest.approx(0.32)}
    highest = oracle.select(["b", "a", "c"], runs, [0, 1], higher_is_better=True)
    assert highest["selected"] == "c" and "tie_break" not in highest  # untied: no loss asked
    same = {**runs, ("b", 0): _run(0.12, 0.9, 0.40), ("b", 1): _run(0.10, 0.9, 0.40)}
    assert oracle.select(["a", "b"], same, [0, 1], higher_is_better=False)["selected"] == "a"
    # The same counts split otherwise over two seeds: means a last bit apart (0.15000000000000002 and 0.15) still tie.
    rounded = {("a", 0): _run(0.1, 0.0, 0.5), ("a", 1): _run(0.2, 0.0, 0.5),
               ("b", 0): _run(0.15, 0.0, 0.9), ("b", 1): _run(0.15, 0.0, 0.9)}  # fmt: skip
    chosen = oracle.select(["a", "b"], rounded, [0, 1], higher_is_better=False)
    assert chosen["validation"]["a"] != chosen["validation"]["b"] and chosen["selected"] == "a" and "tie_break" in chosen
    unmeasured = {**runs, ("a", 1): _run(0.12, 0.0)}  # a run recorded before runs kept the loss
    chosen = oracle.select(["a", "b"], unmeasured, [0, 1], higher_is_better=False)
    assert chosen["selected"] == "a" and np.isnan(chosen["tie_break"]["a"])


def test_selection_averages_every_child_of_every_selection_seed_and_ties_only_last_bits() -> None:
    """A run's validation value is its children's mean, a point's the mean over the selection seeds (recorded);
    points one image of 10,000 apart are not tied: the better wins, whatever its validation loss."""
    def run(vals: list[float], loss: float) -> dict:
        return {"children": [{"final_val_metric": v, "final_val_loss": loss} for v in vals]}

    runs = {
        ("a", 0): run([0.10, 0.30], 0.1), ("a", 1): run([0.10, 0.30], 0.1),  # first child best, mean 0.20
        ("b", 0): run([0.15, 0.15], 0.9), ("b", 1): run([0.15, 0.15], 0.9),
    }  # fmt: skip
    chosen = oracle.select(["a", "b"], runs, [0, 1], higher_is_better=False)
    assert chosen["selected"] == "b" and chosen["validation"]["a"] == pytest.approx(0.20)
    assert chosen["selection_seeds"] == [0, 1] and "tie_break" not in chosen
    close = {("a", 0): run([0.1000], 0.9), ("b", 0): run([0.1001], 0.1)}
    assert oracle.select(["b", "a"], close, [0], higher_is_better=False)["selected"] == "a"
    assert oracle.select(["a", "b"], close, [0], higher_is_better=True)["selected"] == "b"


def test_every_oracle_grid_is_a_buildable_fixed_controller() -> None:
    for grid in oracle.ORACLES.values():
        for spec in grid:
            assert not compare.build_controller(spec).learned, spec


@pytest.fixture()
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_run, "RESULTS", tmp_path)
    return tmp_path


def test_comparison_runs_the_grid_on_selection_seeds_and_the_selected_point_on_all(results_dir, monkeypatch) -> None:
    monkeypatch.setitem(oracle.ORACLES, "oracle-phi", ["phi-uniform(off_diagonal=-0.1)", "phi-uniform(off_diagonal=0.1)"])
    monkeypatch.setattr(compare_run, "SELECTION_SEEDS", 1)
    rows = compare.compare("ALA-Digits-v0", ["ce", "oracle-phi"], [0, 1], TINY, "oracle")
    out = results_dir / "oracle"
    results = json.loads((out / "results.json").read_text())
    selection = results["header"]["oracles"]["oracle-phi"]
    grid = oracle.ORACLES["oracle-phi"]
    # Selected by the mean final validation metric of the selection seed, recomputed from the runs.
    seed0 = {r["controller"]: r for r in results["runs"] if r["seed"] == 0}
    validation = {spec: np.mean([child["final_val_metric"] for child in seed0[spec]["children"]]) for spec in grid}
    assert validation[grid[0]] != validation[grid[1]]  # no tie: the validation metric alone decides
    assert selection["selected"] == min(grid, key=lambda spec: validation[spec])
    assert selection["selection_seeds"] == [0]
    # Every child records its final validation loss, what a tie on the validation metric is decided by.
    assert all(child["final_val_loss"] > 0 for run in results["runs"] for child in run["children"])
    runs = {(r["controller"], r["seed"]) for r in results["runs"]}
    other = next(spec for spec in grid if spec != selection["selected"])
    assert {(selection["selected"], 0), (selection["selected"], 1), (other, 0)} <= runs and (other, 1) not in runs
    row = next(row for row in rows if row["controller"] == "oracle-phi")
    selected_tests = [r["test_metric"] * 100 for r in results["runs"] if r["controller"] == selection["selected"]]
    assert row["selected"] == selection["selected"] and row["test_per_seed"] == [round(v, 3) for v in selected_tests]
    table = (out / "table.md").read_text()
    assert f"| oracle-phi: {selection['selected']} |" in table and "## Oracle selection" in table
    # Resuming runs nothing again.
    monkeypatch.setattr(compare_run, "run_one", lambda *args, **kwargs: pytest.fail("finished run redone"))
    again = compare.compare("ALA-Digits-v0", ["ce", "oracle-phi"], [0, 1], TINY, "oracle")
    assert [r["test_per_seed"] for r in again] == [r["test_per_seed"] for r in rows]
