"""The numbers a comparison reports, computed from hand-built runs: the summary rows (sample std over seeds,
wall times, the ratio to ``ce``, diverged children, Phi at the end), the end-of-training, oracle and retrieval
sections, the oracle's choice for a metric to raise, the budget in the header, AdaLFL's report, and the result
store's handling of a damaged run file and of a failed run's lock, and the plots of a row with a long name. No
network is trained: runs are dicts of the shape ``run_one`` returns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from ala_gym.agents.reinforce import library_policy
from ala_gym.benchmarks import adalfl_report, compare, oracle
from ala_gym.benchmarks.compare import run as compare_run
from ala_gym.benchmarks.compare.report import (
    end_of_training_table,
    markdown_table,
    oracle_table,
    plot,
    shorten,
    summarize,
)
from ala_gym.benchmarks.compare.store import finished_run

MACHINE = {"cpu": "test cpu", "cores": 2, "torch_threads": 1, "gpu": None}
# 12 iterations in actions of 5: the last action is short, so a child takes 3 controller steps, not 2.
BUDGET = dict(total_iterations=12, steps_per_action=5, device="cpu")


def _child(test: float, diverged: bool = False, phi: list | None = None, val: list[float] | None = None) -> dict:
    return {"val_metric": val or [0.5, 0.4], "phi": phi or [], "diverged": diverged, "test_metric": test,
            "final_val_metric": 0.4, "final_val_loss": 1.0}  # fmt: skip


def _run(controller: str, seed: int, wall: float, children: list[dict], env: str = "ALA-Digits-v0") -> dict:
    return {
        "env": env, "controller": controller, "seed": seed, "env_seed": seed, "num_children": len(children),
        "env_kwargs": {}, "wall_s": wall, "test_metric": float(np.mean([c["test_metric"] for c in children])),
        "children": children, "device": "cpu", "machine": MACHINE, "versions": {},
    }  # fmt: skip


def _steps(final: list[list[float]]) -> list:
    """A child's Phi over training: the identity first, ``final`` at the end."""
    return [np.eye(len(final)).tolist(), final]


def test_summary_rows_hold_the_mean_sample_std_wall_times_divergences_and_final_phi() -> None:
    ce = [_run("ce", 0, 2.0, [_child(0.20)]), _run("ce", 1, 4.0, [_child(0.30)])]
    phis = [[[1.2, 0.1], [-0.1, 0.8]], [[1.0, 0.0], [0.0, 1.0]], [[0.9, 0.3], [0.1, 0.9]], [[1.4, 0.0], [0.2, 1.0]]]
    slow = [
        _run("slow", 0, 12.0, [_child(0.08, True, _steps(phis[0])), _child(0.12, False, _steps(phis[1]))]),
        _run("slow", 1, 24.0, [_child(0.14, False, _steps(phis[2])), _child(0.18, False, _steps(phis[3]))]),
    ]
    ce_row, slow_row = summarize(ce + slow, ["ce", "slow"])

    # Test metric in %: a run's value is its children's mean (10 and 16); the std is the sample std (n - 1).
    assert slow_row["test_per_seed"] == pytest.approx([10.0, 16.0])
    assert slow_row["test_mean"] == pytest.approx(13.0)
    assert slow_row["test_std"] == pytest.approx(np.sqrt(18.0))
    assert ce_row["test_std"] == pytest.approx(np.sqrt(50.0))
    # Wall time: the mean over seeds per run; per child, each run's wall shared by its 2 children (6 and 12 s).
    assert slow_row["wall_s_per_run"] == pytest.approx(18.0)
    assert slow_row["wall_s_per_child"] == pytest.approx(9.0)
    # ce takes 3 s per child on average: a row three times slower reads 3.0, the reference itself 1.0.
    assert slow_row["wall_vs_ce"] == pytest.approx(3.0)
    assert ce_row["wall_vs_ce"] == pytest.approx(1.0)
    assert slow_row["diverged_children"] == 1 and ce_row["diverged_children"] == 0
    # Final Phi per child: mean |Phi - I| of 0.15, 0, 0.15, 0.15, and mean diagonal of 1.0, 1.0, 0.9, 1.2.
    assert slow_row["final_phi_offset"] == pytest.approx(0.1125)
    assert slow_row["final_phi_diagonal"] == pytest.approx(1.025)
    assert np.isnan(ce_row["final_phi_offset"]) and np.isnan(ce_row["final_phi_diagonal"])  # ce records no Phi
    assert ce_row["seeds"] == slow_row["seeds"] == [0, 1] and slow_row["children_per_run"] == 2


def test_without_a_ce_row_there_is_no_wall_ratio() -> None:
    (row,) = summarize([_run("slow", 0, 5.0, [_child(0.1)])], ["slow"])
    assert row["wall_vs_ce"] is None and row["test_std"] == 0.0


def test_the_wall_ratio_is_against_ce_on_the_same_machine_only() -> None:
    """A row that ran on another CPU than ``ce`` gets no ratio (it would compare the CPUs); one whose runs are
    on ``ce``'s machine gets it against ``ce``'s runs there alone."""
    elsewhere = {**MACHINE, "cpu": "Another CPU"}
    ce = [_run("ce", 0, 2.0, [_child(0.2)]), {**_run("ce", 1, 8.0, [_child(0.2)]), "machine": elsewhere}]
    here = _run("here", 0, 4.0, [_child(0.1)])
    there = {**_run("there", 0, 4.0, [_child(0.1)]), "machine": elsewhere}
    mixed = [_run("mixed", 0, 4.0, [_child(0.1)]), {**_run("mixed", 1, 4.0, [_child(0.1)]), "machine": elsewhere}]
    nowhere = {**_run("nowhere", 0, 4.0, [_child(0.1)]), "machine": {**MACHINE, "cpu": "A third CPU"}}
    rows = {row["controller"]: row for row in summarize([*ce, here, there, *mixed, nowhere], ["here", "there", "mixed", "nowhere"])}
    assert rows["here"]["wall_vs_ce"] == pytest.approx(2.0) and rows["there"]["wall_vs_ce"] == pytest.approx(0.5)
    assert rows["mixed"]["wall_vs_ce"] is None and rows["nowhere"]["wall_vs_ce"] is None


def test_ce_wall_is_per_child_every_diverged_child_counts_and_a_vector_phi_reads_nan() -> None:
    """The reference is ``ce``'s wall time per child, a multi-child ``ce`` run's shared by its children; a
    diverged child counts wherever it sits in its run; loss weights recorded as a vector (metric learning) have
    no identity to drift from, so the Phi columns read nan."""
    ce = [_run("ce", 0, 4.0, [_child(0.2), _child(0.2)])]  # 2 s per child
    vector = [[1.0, 0.5], [0.9, 0.6]]
    slow = [_run("slow", 0, 6.0, [_child(0.1, phi=vector), _child(0.1, True, phi=vector)])]  # 3 s per child
    _, row = summarize(ce + slow, ["ce", "slow"])
    assert row["wall_vs_ce"] == pytest.approx(1.5) and row["diverged_children"] == 1
    assert np.isnan(row["final_phi_offset"]) and np.isnan(row["final_phi_diagonal"])


@pytest.mark.parametrize(("label", "expected"), [("a" * 10, "a" * 10), ("a" * 11, "a" * 7 + "...")])
def test_a_label_longer_than_its_width_is_cut_to_the_width_with_an_ellipsis(label: str, expected: str) -> None:
    assert shorten(label, 10) == expected


def test_end_of_training_measures_how_far_validation_fell_back_from_its_best_either_way_round() -> None:
    """An error rate's best is its minimum, a recall's its maximum; falling back from the best reads positive
    in both, in points."""
    error = {"ce": [{"children": [_child(0.1, phi=_steps([[1.0, -0.02], [-0.04, 1.0]]), val=[0.30, 0.10, 0.15])]}]}
    assert end_of_training_table(error, higher_is_better=False)[-1] == "| ce | -0.0300 | +5.00 |"
    recall = {"margin": [{"children": [_child(0.7, val=[0.5, 0.8, 0.7]), _child(0.8, val=[0.6, 0.7, 0.8])]}]}
    # 10 points behind the best in one child, still at its best in the other: 5 on average.
    assert end_of_training_table(recall, higher_is_better=True)[-1] == "| margin | +nan | +5.00 |"


def test_the_plots_draw_rows_whose_children_diverged_under_the_nll(tmp_path: Path) -> None:
    """Under the NLL a diverged step and child score inf: a row where every child diverged at its first step has
    nothing to draw on a log scale, and a row where one of two did keeps the other's curve (the inf left out)."""
    inf = float("inf")
    runs = [
        _run("ce", 0, 1.0, [_child(inf, diverged=True, val=[inf])]),
        _run("random", 0, 1.0, [_child(0.3, val=[0.5, 0.4]), _child(inf, diverged=True, val=[inf, inf])]),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" or invalid-value warnings either
        plot(runs, ["ce", "random"], tmp_path, metric="nll")
    assert {path.name for path in tmp_path.glob("*.png")} == {"test_metric.png", "val_metric.png"}


def test_a_row_named_by_a_long_file_path_keeps_the_plots_inside_their_figures(tmp_path: Path) -> None:
    # A policy of one's own is named by its path; drawn in full, the label pushed the axes out of the picture.
    from matplotlib.image import imread

    policy = tmp_path.joinpath(*["a-long-folder-name"] * 6, "policy.pt")
    policy.parent.mkdir(parents=True)
    shutil.copy(library_policy("digits"), policy)
    mine = f"reinforce-transfer-frozen(policy={policy})"
    runs = [_run(name, seed, 1.0, [_child(0.1 + seed / 100)]) for name in ("ce", mine) for seed in (0, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when tight_layout cannot fit the labels
        plot(runs, ["ce", mine], tmp_path)
    assert {path.name for path in tmp_path.glob("*.png")} == {"test_metric.png", "val_metric.png"}
    # Saved with every text inside (bbox_inches="tight"), each picture keeps about its figure's width at 110 dpi
    # (7 inches; 3.2 a panel): the long name is shortened in the labels and titles, not drawn across the page.
    for name, inches in (("test_metric.png", 7.0), ("val_metric.png", 6.4)):
        width = imread(tmp_path / name).shape[1]
        assert width <= 1.05 * 110 * inches, (name, width)


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Every matplotlib figure saved during the test, by file name."""
    from matplotlib.figure import Figure

    figures, save = {}, Figure.savefig

    def recorded(self: Figure, path: Path, *args: object, **kwargs: object) -> None:
        figures[Path(path).name] = self
        save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recorded)
    return figures


def test_the_validation_panels_fill_rows_of_four_and_hide_the_empty_ones(tmp_path: Path, saved_figures: dict) -> None:
    """Five rows take two rows of four panels: the three left over are hidden, not drawn as empty axes."""
    names = ["ce", "random", "phi-uniform", "label-smoothing", "phi-ramp"]
    plot([_run(name, 0, 1.0, [_child(0.1)]) for name in names], names, tmp_path)
    assert [axes.get_visible() for axes in saved_figures["val_metric.png"].axes] == [True] * 5 + [False] * 3


@pytest.mark.parametrize("higher_is_better", [False, True])
def test_the_test_metric_figure_puts_the_best_row_on_top_with_its_sample_std(
    tmp_path: Path, saved_figures: dict, higher_is_better: bool
) -> None:
    """Rows sorted by mean test metric, the best at the top either way round, each with the sample std over seeds
    as its error bar; the validation panels show the mean +- std over children and seeds at every step."""
    tests = {"ce": (0.20, 0.30), "phi-ramp": (0.10, 0.12), "random": (0.40, 0.50)}
    runs = [_run(name, seed, 1.0, [_child(value, val=[0.6, value])]) for name, values in tests.items()
            for seed, value in enumerate(values)]  # fmt: skip
    plot(runs, list(tests), tmp_path, higher_is_better=higher_is_better)
    axes = saved_figures["test_metric.png"].axes[0]
    bottom_to_top = [tick.get_text() for tick in axes.get_yticklabels()]
    assert bottom_to_top == (["phi-ramp", "ce", "random"] if higher_is_better else ["random", "ce", "phi-ramp"])
    (bar,) = [c for c in axes.containers if bottom_to_top[c.lines[0].get_ydata()[0]] == "ce"]
    (segment,) = bar.lines[2][0].get_segments()
    np.testing.assert_allclose(segment[:, 0], [25.0 - np.sqrt(50.0), 25.0 + np.sqrt(50.0)])
    band = next(ax for ax in saved_figures["val_metric.png"].axes if ax.get_title() == "random").collections[0]
    # Curves [60, 40] and [60, 50] %: mean [60, 45], std over the two runs [0, 5] (not along each curve).
    np.testing.assert_allclose(sorted(set(band.get_paths()[0].vertices[:, 1].round(6))), [40.0, 50.0, 60.0])


def test_a_learned_row_of_loss_weights_draws_its_steps_in_one_panel(tmp_path: Path, saved_figures: dict) -> None:
    """On a metric-learning task Phi is a vector of loss weights per step (no matrix to subtract I from): its figure
    is one heatmap, a row per loss parameter and a column per controller step."""
    phi = [[1.0, 0.5, 0.2], [1.1, 0.4, 0.3], [1.2, 0.3, 0.4], [1.3, 0.2, 0.5]]
    plot([_run("ce", 0, 1.0, [_child(0.1)]), _run("reinforce", 0, 1.0, [_child(0.1, phi=phi)])], ["ce", "reinforce"], tmp_path)
    heatmap = saved_figures["phi_reinforce.png"].axes[0]
    assert heatmap.get_xlabel() == "controller step" and heatmap.get_ylabel() == "loss parameter"
    assert np.array_equal(heatmap.images[0].get_array(), np.array(phi).T)


def test_the_oracle_table_marks_the_selected_point_and_shows_tie_breaks() -> None:
    selections = {"oracle-phi": {
        "selected": "b", "selection_seeds": [0, 1], "validation": {"a": 0.2, "b": 0.1, "c": 0.1},
        "tie_break": {"b": 0.25, "c": 0.5},
    }}  # fmt: skip
    lines = oracle_table(selections, {"metric": "error"})
    assert lines[-3:] == [
        "| oracle-phi | a | 20.00 |  |",
        "| oracle-phi | b | 10.00 | selected, tied; validation loss 0.2500 |",
        "| oracle-phi | c | 10.00 | tied; validation loss 0.5000 |",
    ]


def test_a_tie_with_a_point_lacking_its_loss_falls_back_to_grid_order() -> None:
    """Losses compare only when every tied point has one: a point recorded before runs kept the loss could
    have had the lowest."""
    runs = {
        ("y", 0): {"children": [{"final_val_metric": 0.1, "final_val_loss": 0.5}]},
        ("z", 0): {"children": [{"final_val_metric": 0.1, "final_val_loss": 0.3}]},
        ("x", 0): {"children": [{"final_val_metric": 0.1}]},
    }
    chosen = oracle.select(["y", "z", "x"], runs, [0], higher_is_better=False)
    assert chosen["selected"] == "y"
    assert chosen["tie_break"]["z"] == pytest.approx(0.3) and np.isnan(chosen["tie_break"]["x"])


RECALLS = {  # per seed, two children's recall@1/2/4/8
    0: ([0.5, 0.6, 0.7, 0.8], [0.7, 0.8, 0.9, 1.0]),
    1: ([0.6, 0.7, 0.8, 0.9], [0.8, 0.9, 1.0, 1.0]),
}


def test_retrieval_table_averages_a_runs_children_then_takes_the_sample_std_over_seeds() -> None:
    runs = [
        {"children": [{"test_statistics": {f"test_recall@{k}": value for k, value in zip((1, 2, 4, 8), recalls)}}
                      for recalls in RECALLS[seed]]}
        for seed in (0, 1)
    ]  # fmt: skip
    table = markdown_table([], {
        "env": "ALA-FashionMNIST-Margin-v0", "machine": MACHINE, "device": "cpu", "total_iterations": 12,
        "steps_per_action": 5, "steps_per_child": 3, "env_kwargs": {}, "seeds": [0, 1], "versions": {},
    }, {"margin": runs})  # fmt: skip
    # Seed values 60/70/80/90 and 70/80/90/95: means 65/75/85/92.5, sample stds sqrt(50) and sqrt(12.5).
    assert (
        "| margin | 65.00 +- 7.07 | 75.00 +- 7.07 | 85.00 +- 7.07 | 92.50 +- 3.54 | 60.00, 70.00 | 70.00, 80.00 | "
        "80.00, 90.00 | 90.00, 95.00 |"
    ) in table.splitlines()


def _fake_runs(monkeypatch: pytest.MonkeyPatch, final_val: dict[str, float]) -> list[tuple[str, int]]:
    """``run_one`` replaced by records whose final validation metric is ``final_val[controller]`` and whose test
    metric names the controller and seed (controller index + seed / 100); returns the runs it made."""
    ran: list[tuple[str, int]] = []
    names = list(final_val)

    def run_one(env_id: str, controller: str, seed: int, env_kwargs: dict, *args: object) -> dict:
        ran.append((controller, seed))
        child = {**_child(names.index(controller) + seed / 100), "final_val_metric": final_val[controller]}
        return {**_run(controller, seed, 1.0, [child], env_id), "env_kwargs": dict(env_kwargs)}

    monkeypatch.setattr(compare_run, "run_one", run_one)
    monkeypatch.setattr(compare_run, "plot", lambda *args, **kwargs: None)  # no figures here: the numbers are checked
    return ran


def test_an_oracle_for_a_metric_to_raise_selects_its_highest_point_and_the_header_counts_a_short_last_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = ["phi-uniform(off_diagonal=-0.1)", "phi-uniform(off_diagonal=0.0)", "phi-uniform(off_diagonal=0.1)"]
    monkeypatch.setitem(oracle.ORACLES, "oracle-phi", grid)
    monkeypatch.setattr(compare_run, "SELECTION_SEEDS", 1)
    monkeypatch.setattr(compare_run, "RESULTS", tmp_path)
    ran = _fake_runs(monkeypatch, {"ce": 0.7, grid[0]: 0.80, grid[1]: 0.90, grid[2]: 0.85})
    rows = compare.compare("ALA-Digits-v0", ["ce", "oracle-phi"], [0, 1], {**BUDGET, "metric": "accuracy"}, "acc")

    results = json.loads((tmp_path / "acc" / "results.json").read_text())
    assert results["header"]["higher_is_better"] and results["header"]["oracles"]["oracle-phi"]["selected"] == grid[1]
    assert sorted(ran) == sorted([("ce", 0), ("ce", 1), *[(spec, 0) for spec in grid], (grid[1], 1)])
    row = next(row for row in rows if row["controller"] == "oracle-phi")
    assert row["selected"] == grid[1] and row["test_per_seed"] == pytest.approx([200.0, 201.0])
    assert results["header"]["steps_per_child"] == 3
    table = (tmp_path / "acc" / "table.md").read_text()
    assert "Budget per child: 12 SGD iterations, K = 5 -> 3 controller steps" in table
    assert f"| oracle-phi | {grid[1]} | 90.00 | selected |" in table.splitlines()
    assert f"| oracle-phi | {grid[0]} | 80.00 |  |" in table.splitlines()


def test_per_seed_values_follow_the_seeds_in_numeric_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 10's run file sorts before seed 2's by name; the table still lists its values in seed order, beside
    the seeds it names."""
    monkeypatch.setattr(compare_run, "RESULTS", tmp_path)
    _fake_runs(monkeypatch, {"ce": 0.4})
    (row,) = compare.compare("ALA-Digits-v0", ["ce"], [10, 2], BUDGET, "seeds")
    assert row["seeds"] == [2, 10] and row["test_per_seed"] == pytest.approx([2.0, 10.0])  # test metric: seed / 100
    assert [run["seed"] for run in json.loads((tmp_path / "seeds" / "results.json").read_text())["runs"]] == [2, 10]


def test_a_run_file_without_its_divergence_flag_is_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table counts diverged children: a run file that lost the flag (cut or edited by hand) is damaged."""
    monkeypatch.setattr(compare_run, "RESULTS", tmp_path)
    ran = _fake_runs(monkeypatch, {"ce": 0.4})
    compare.compare("ALA-Digits-v0", ["ce"], [0], BUDGET, "tiny")
    out = tmp_path / "tiny"
    (out / "results.json").unlink()  # an interrupted comparison: the run files are all there is
    path = out / "runs" / "ce-seed0.json"
    run = json.loads(path.read_text())
    del run["children"][0]["diverged"]
    path.write_text(json.dumps(run))
    assert not finished_run(path)

    capsys.readouterr()
    rows = compare.compare("ALA-Digits-v0", ["ce"], [0], BUDGET, "tiny")
    assert f"warning: {path} is damaged: children[0] has no diverged; running it again" in capsys.readouterr().err
    assert ran == [("ce", 0), ("ce", 0)]
    assert json.loads(path.read_text())["children"][0]["diverged"] is False and rows[0]["diverged_children"] == 0


def _open_count(path: Path) -> int:
    """How many descriptors this process holds open on ``path``."""
    target = os.path.realpath(path)
    return sum(os.path.realpath(fd) == target for fd in Path("/proc/self/fd").iterdir())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the waiter's descriptor")
def test_a_failed_run_passes_to_the_process_waiting_for_it_and_to_no_other(tmp_path: Path) -> None:
    """A run whose process failed stays claimable by exactly one process: the one already waiting on its lock
    takes it over, and a process arriving after finds it held. Were the failed run's lock file removed, the
    waiter would hold a lock on a file no longer there and a newcomer would lock a new one: the run twice."""
    result = tmp_path / "runs" / "ce-seed0.json"
    lock = result.with_suffix(".lock")
    first = compare.claim(result, done=finished_run)
    assert first is not None
    waiter: list[int | None] = []
    thread = threading.Thread(
        target=lambda: waiter.append(compare.claim(result, wait=True, done=finished_run)), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while _open_count(lock) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the waiter has opened the lock file (the claim's and its own) and blocks on it
    assert _open_count(lock) == 2

    compare.release(result, first, finished_run)  # failed: no result written
    thread.join(10)
    (fd,) = waiter
    assert fd is not None  # the waiter runs it
    assert compare.claim(result, done=finished_run) is None  # a newcomer leaves it to the waiter
    compare.write_json(result, _run("ce", 0, 1.0, [_child(0.1)]))
    compare.release(result, fd, finished_run)
    assert not lock.exists()  # finished: its lock file goes
    assert compare.claim(result, done=finished_run) is None


def _adalfl_run(seed: int, wall: float, offline: float, test: float) -> dict:
    shape = {"p_true": [0.1, 0.5, 0.9], "loss": [2.0, 0.7, 0.1]}
    child = {**_child(test), "offline_s": offline, "offline_meta_loss": 0.5, "loss_shape_start": shape,
             "loss_shape_end": shape}  # fmt: skip
    kwargs = {**BUDGET, "loss_form": "matrix", "offline_steps": 3}  # offline_steps: AdaLFL's own, not the env's
    return {**_run("adalfl", seed, wall, [child]), "env_kwargs": kwargs}


def test_adalfl_report_splits_offline_from_online_time_against_ce_of_the_same_seeds_and_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(adalfl_report, "RESULTS", tmp_path)
    runs = tmp_path / "adl" / "runs"
    runs.mkdir(parents=True)
    for run in (_adalfl_run(0, 30.0, 10.0, 0.10), _adalfl_run(1, 50.0, 14.0, 0.16)):
        (runs / f"adalfl-seed{run['seed']}.json").write_text(json.dumps(run))

    def ce(seed: int, wall: float, test: float, env: str = "ALA-Digits-v0", **kwargs: object) -> dict:
        # ce trains with its own loss_form; the comparison's other keywords must match.
        kwargs = {**BUDGET, "loss_form": "cross_entropy", **kwargs}
        return {**_run("ce", seed, wall, [_child(test)], env), "env_kwargs": kwargs}

    ce_runs = [
        ce(0, 8.0, 0.20), ce(1, 12.0, 0.30),
        ce(2, 100.0, 0.90),  # a seed AdaLFL did not run
        ce(0, 100.0, 0.90, total_iterations=24),  # another budget
        ce(1, 100.0, 0.90, env="ALA-FashionMNIST-v0"),  # another env
    ]  # fmt: skip
    ce_file = tmp_path / "ce" / "results.json"
    ce_file.parent.mkdir()
    ce_file.write_text(json.dumps({"runs": ce_runs}))

    adalfl_report.main(["--name", "adl", "--ce", str(ce_file)])
    report = (tmp_path / "adl" / "adalfl.md").read_text()
    assert capsys.readouterr().out == report + "\n"
    lines = report.splitlines()
    # Online time is what the wall time adds to the offline initialisation.
    assert "| adalfl | 0 | 10.00 | 30.0 | 10.0 | 20.0 | 0.500 | False |" in lines
    assert "| adalfl | 1 | 16.00 | 50.0 | 14.0 | 36.0 | 0.500 | False |" in lines
    # Mean wall 40 s, offline 12 s, against ce's 10 s per run on seeds 0 and 1: 4x in all, 2.8x online.
    assert "| adalfl | 2 | 13.00 +- 4.24 | 40.0 | 12.0 | 4.00x | 2.80x |" in lines
    assert (
        f"Cross-entropy reference of `adalfl`: `ce` runs of `{ce_file}` (same env keywords, seeds [0, 1], same machine: "
        "test cpu, 2 cores, 1 torch thread(s), GPU: None; device `cpu`): test error 25.00 +- 7.07 %, wall 10.0 s per run."
    ) in lines
    assert (tmp_path / "adl" / "loss_shape.png").stat().st_size > 0


def test_drawing_leaves_the_processs_matplotlib_backend_and_pyplot_alone(tmp_path: Path) -> None:
    """The figures of a run's TensorBoard log and of a comparison are the package's own, not pyplot's: a notebook's
    or a GUI's backend is the same after them, and no source of the package switches it or draws through pyplot."""
    script = (
        "import sys, matplotlib\n"
        "matplotlib.use('pdf')\n"
        "import matplotlib.pyplot as plt, numpy as np\n"
        "from pathlib import Path\n"
        "from ala_gym.agents.progress import phi_figure\n"
        "from ala_gym.benchmarks.compare.report import plot\n"
        "phi_figure(np.eye(3), 1)\n"
        "child = dict(val_metric=[0.5, 0.4], phi=[np.eye(2).tolist(), [[1.0, 0.1], [0.1, 1.0]]], diverged=False,\n"
        "             test_metric=0.1, final_val_metric=0.4, final_val_loss=1.0)\n"
        "runs = [dict(controller=name, seed=0, test_metric=0.1, children=[child]) for name in ('ce', 'reinforce')]\n"
        "plot(runs, ['ce', 'reinforce'], Path(sys.argv[1]))\n"
        "print(matplotlib.get_backend(), plt.get_fignums(), sorted(p.name for p in Path(sys.argv[1]).iterdir()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == "pdf [] ['phi_reinforce.png', 'test_metric.png', 'val_metric.png']"
    root = Path(__file__).resolve().parents[1]
    sources = [path for folder in ("ala_gym", "agents", "benchmarks") for path in (root / folder).rglob("*.py")]
    assert [path.name for path in sources if re.search(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot", path.read_text())] == []
