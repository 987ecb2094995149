"""The leave-one-dataset-out report: verdicts against cross-entropy, the best fixed Phi and tuned label
smoothing; rows not run shown as such; the meta-training cost from the policies' provenance; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ala_gym.benchmarks import transfer


def row(controller: str, mean: float, std: float, **extra) -> dict:
    return {"controller": controller, "test_mean": mean, "test_std": std, "test_per_seed": [mean] * 5,
            "seeds": [0, 1, 2, 3, 4], "children_per_run": 10, **extra}  # fmt: skip


def test_verdicts_compare_against_the_larger_spread() -> None:
    ce = row("ce", 4.0, 0.1)
    assert transfer.verdicts(row("t", 3.5, 0.2), ce)["beats_ce_beyond_std"]  # 0.5 ahead, spread 0.2
    assert not transfer.verdicts(row("t", 3.85, 0.2), ce)["beats_ce_beyond_std"]  # 0.15 ahead, spread 0.2
    assert "reaches_best_fixed_phi" not in transfer.verdicts(row("t", 3.5, 0.2), ce)  # oracle not run
    oracle, smoothing = row("oracle-phi", 3.0, 0.3), row("oracle-smoothing", 3.55, 0.05)
    near = transfer.verdicts(row("t", 3.25, 0.2), ce, oracle, smoothing)
    assert near["reaches_best_fixed_phi"] and near["beats_tuned_smoothing"] and near["beats_tuned_smoothing_beyond_std"]
    far = transfer.verdicts(row("t", 3.5, 0.1), ce, oracle, smoothing)
    assert not far["reaches_best_fixed_phi"] and far["beats_tuned_smoothing"] and not far["beats_tuned_smoothing_beyond_std"]
    assert near["best_fixed_phi_beats_ce_beyond_std"]  # 1.0 ahead of ce, spread 0.3
    out_of_reach = transfer.verdicts(row("t", 3.95, 0.1), ce, row("oracle-phi", 3.8, 0.25))  # 0.2 ahead, spread 0.25
    assert not out_of_reach["best_fixed_phi_beats_ce_beyond_std"] and not out_of_reach["beats_ce_beyond_std"]
    # On the boundary (exact in binary): a margin equal to the spread beats nothing, a gap equal to it still
    # reaches the oracle, and an equal mean does not beat tuned smoothing.
    edge = transfer.verdicts(row("t", 3.5, 0.25), row("ce", 4.0, 0.5), row("oracle-phi", 3.0, 0.5), row("oracle-smoothing", 3.5, 0.25))
    assert not edge["beats_ce_beyond_std"] and edge["reaches_best_fixed_phi"] and not edge["beats_tuned_smoothing"]
    assert not transfer.verdicts(row("t", 3.5, 0.25), row("ce", 4.0, 0.5), row("oracle-phi", 3.5, 0.5))["best_fixed_phi_beats_ce_beyond_std"]


def test_the_policy_is_compared_with_cross_entropy_seed_by_seed() -> None:
    """The differences of the two rows' values on each seed (the same children under both): their mean, sample
    standard deviation and the seeds where the policy is lower; nothing where the rows ran other seeds, whose
    values do not pair."""
    ce = row("ce", 4.0, 0.0) | {"test_per_seed": [4.0, 5.0, 3.0, 4.0, 4.0]}
    policy = row("t", 3.9, 0.0) | {"test_per_seed": [3.5, 4.5, 3.5, 4.0, 4.0]}
    paired = transfer.per_seed_difference(policy, ce)
    assert paired == {"mean": pytest.approx(-0.1), "std": pytest.approx(0.41833, abs=1e-5), "lower": 2, "seeds": 5}
    assert transfer.per_seed_difference(policy | {"seeds": [5, 6, 7, 8, 9]}, ce) is None
    assert transfer.per_seed_difference({k: v for k, v in policy.items() if k != "seeds"}, ce) is None


def write_results(folder: Path, preset: str, rows: list[dict]) -> None:
    (folder / preset).mkdir(parents=True)
    (folder / preset / "results.json").write_text(json.dumps({"header": {}, "summary": rows, "runs": []}))


def write_policy(folder: Path, name: str = "without-digits", **changes) -> Path:
    """A meta-training record of ``name`` in ``folder`` (``changes`` replace its entries; None removes one)."""
    record = {"config": {"tasks": ["ALA-FashionMNIST-v0"]}, "generations": 1, "child_iterations": 100,
              "history": [{"task": "ALA-FashionMNIST-v0", "fitness_mean": -0.2}]}  # fmt: skip
    record = {key: value for key, value in (record | changes).items() if value is not None}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record))
    return folder / f"{name}.json"


def test_report_gathers_the_held_out_rows_and_the_cost(tmp_path: Path, capsys) -> None:
    results, policies = tmp_path / "results", tmp_path / "policies"
    digits = transfer.HELD_OUT[0]
    write_results(results, digits.preset, [
        row("ce", 4.5, 0.1), row(digits.row, 3.0, 0.2),
        row("oracle-phi", 2.6, 0.2, selected="phi-uniform(off_diagonal=0.03)"),
        row("oracle-smoothing", 2.7, 0.1, selected="phi-uniform(label_smoothing=0.1)"),
    ])  # fmt: skip
    policies.mkdir()
    (policies / "without-digits.json").write_text(json.dumps({
        "config": {"tasks": ["ALA-FashionMNIST-v0", "ALA-CIFAR10-v0"], "task_kwargs": {"ALA-FashionMNIST-v0": {"train_size": 5000}}},
        "generations": 30,
        "child_iterations": 601_920, "wall_seconds": 1800.0, "cpu": "Some CPU", "torch_threads": 1,
        "history": [{"task": "ALA-CIFAR10-v0", "fitness_mean": -f} for f in (0.62, 0.61, 0.60, 0.59, 0.58, 0.57, 0.56)],
    }))  # fmt: skip
    rerun = json.loads((policies / "without-digits.json").read_text()) | {"wall_seconds": 900.0, "cpu": "Other CPU", "workers": 2}
    rerun["config"] |= {"init_policy": "ramp-clone"}
    (results / transfer.RERUNS).mkdir(parents=True)
    (results / transfer.RERUNS / "without-digits.json").write_text(json.dumps(rerun))
    transfer.main(["--results", str(results), "--policies", str(policies)])
    report = json.loads((results / "transfer" / "transfer.json").read_text())
    first = report["held_out"][0]
    assert first["verdicts"] == {"beats_ce_beyond_std": True, "ahead_of_ce": pytest.approx(1.5),
                                 "reaches_best_fixed_phi": False, "beats_tuned_smoothing": False,
                                 "reaches_only_by_a_fewer_children_oracles_spread": False,
                                 "beats_tuned_smoothing_beyond_std": False,
                                 "best_fixed_phi_beats_ce_beyond_std": True}  # fmt: skip
    assert all("missing" in entry for entry in report["held_out"][1:])  # the other presets were not run here
    # Named within --results: a committed report holds no path of the machine that wrote it.
    assert str(tmp_path) not in (results / "transfer" / "transfer.json").read_text()
    assert report["meta_training"]["without-digits"]["child_iterations"] == 601_920
    table = (results / "transfer" / "transfer.md").read_text()
    assert table == capsys.readouterr().out
    assert ("| digits | `digits` | `without-digits` | 3.00 +- 0.20 | 4.50 +- 0.10 | -1.50 +- 0.00 (5/5 lower) | "
            "2.60 +- 0.20 (off_diagonal=0.03) | "
            "2.70 +- 0.10 (label_smoothing=0.1) | **yes** | no | no (no) | **yes** |") in table  # fmt: skip
    family = "ALA-FashionMNIST-v0 (5,000 training images at most), ALA-CIFAR10-v0 | 1"  # one task a generation: older records
    assert f"| `without-digits` | {family} | 30 | ALA-CIFAR10-v0: 61.00 -> 57.00 | 601,920 | 30.0 min | 334 | Some CPU, 1 torch thread(s) |" in table
    assert f"| `without-digits (rerun)` | {family.replace(' | 1', '; the search started from `ramp-clone` | 1')} | 30 | ALA-CIFAR10-v0: 61.00 -> 57.00 | 601,920 | 15.0 min | 669 | Other CPU, 1 torch thread(s), 2 Ray workers of 1 thread each |" in table


def test_references_a_comparison_did_not_run_read_not_run(tmp_path: Path) -> None:
    """A comparison without the oracle rows: their cells and the verdicts that need them say so."""
    digits = transfer.HELD_OUT[0]
    write_results(tmp_path, digits.preset, [row("ce", 4.5, 0.1), row(digits.row, 3.0, 0.2)])
    table = transfer.markdown(transfer.gather(tmp_path, tmp_path))
    assert ("| digits | `digits` | `without-digits` | 3.00 +- 0.20 | 4.50 +- 0.10 | -1.50 +- 0.00 (5/5 lower) | not run | "
            "not run | **yes** | not run | "
            "not run | not run |") in table  # fmt: skip


def test_a_family_task_is_labelled_with_its_model_and_training_set() -> None:
    config = {"env_kwargs": {"model": "small_cnn"}, "task_kwargs": {"ALA-FashionMNIST-v0": {"train_size": 1000}}}
    assert transfer.task_label("ALA-FashionMNIST-v0", config) == "ALA-FashionMNIST-v0 (small_cnn, 1,000 training images at most)"
    assert transfer.task_label("ALA-Digits-v0", config) == "ALA-Digits-v0 (small_cnn)"
    assert transfer.task_label("ALA-Digits-v0", {}) == "ALA-Digits-v0"


def test_a_transfer_row_without_its_reference_or_damaged_results_exit_2(tmp_path: Path, capsys) -> None:
    digits = transfer.HELD_OUT[0]
    write_results(tmp_path, digits.preset, [row(digits.row, 3.0, 0.2)])
    write_policy(tmp_path)
    with pytest.raises(SystemExit) as caught:
        transfer.main(["--results", str(tmp_path), "--policies", str(tmp_path)])
    assert caught.value.code == 2 and "not its reference 'ce'" in capsys.readouterr().err
    for damaged in ("{", '{"summary": [{"x": 1}]}', '{"summary": [{"controller": "ce"}]}'):
        (tmp_path / digits.preset / "results.json").write_text(damaged)
        with pytest.raises(SystemExit) as caught:
            transfer.main(["--results", str(tmp_path), "--policies", str(tmp_path)])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and "Traceback" not in err and "results.json is damaged" in err, err
    (tmp_path / digits.preset / "results.json").unlink()  # no held-out row at all: no table of "not run" rows
    with pytest.raises(SystemExit) as caught:
        transfer.main(["--results", str(tmp_path), "--policies", str(tmp_path)])
    assert caught.value.code == 2 and "holds no held-out row" in capsys.readouterr().err
    assert not (tmp_path / "transfer").exists()
    for option in ("--results", "--policies"):  # a folder that is not there: refused, nothing written beside it
        paths = {"--results": tmp_path, "--policies": tmp_path, option: tmp_path / "absent"}
        with pytest.raises(SystemExit) as caught:
            transfer.main([str(item) for pair in paths.items() for item in pair])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and f"{option} {tmp_path / 'absent'} is not a folder" in err
        assert not (tmp_path / "absent").exists()


def test_a_row_of_two_children_is_judged_against_cross_entropy_on_two_children(tmp_path: Path) -> None:
    """A row whose children train two at a time is judged against ``ce(num_envs=2)``, its own reference, not the
    one-child ``ce`` of the same table: here it beats the latter beyond the spread and the former not at all."""
    held = next(held for held in transfer.HELD_OUT if held.ce == "ce(num_envs=2)")
    write_results(tmp_path, held.preset, [row("ce", 12.0, 0.1), row(held.ce, 10.0, 0.1), row(held.row, 10.5, 0.1)])
    entry = next(entry for entry in transfer.gather(tmp_path, tmp_path)["held_out"] if entry["row"] == held.row)
    assert entry["ce_row"]["test_mean"] == 10.0
    assert entry["verdicts"]["ahead_of_ce"] == pytest.approx(-0.5) and not entry["verdicts"]["beats_ce_beyond_std"]


def test_a_policy_folder_without_the_policies_records_leaves_the_report_as_it_was(tmp_path: Path, capsys) -> None:
    results, saved = tmp_path / "results", '{"held_out": [], "meta_training": {"without-digits": {}}}'
    (results / "transfer").mkdir(parents=True)
    (results / "transfer" / "transfer.json").write_text(saved)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as caught:
        transfer.main(["--results", str(results), "--policies", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and "holds no provenance file of the policies judged" in err
    assert (results / "transfer" / "transfer.json").read_text() == saved


@pytest.mark.parametrize("changes, problem", [({"config": None}, "it has no config"), ({"history": {}}, "history is an object")])
def test_a_damaged_policy_record_is_named_in_one_line(tmp_path: Path, capsys, changes: dict, problem: str) -> None:
    path = write_policy(tmp_path / "policies", **changes)
    (tmp_path / "results").mkdir()
    with pytest.raises(SystemExit) as caught:
        transfer.main(["--results", str(tmp_path / "results"), "--policies", str(tmp_path / "policies")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and f"{path} is damaged: {problem}" in err
    assert not (tmp_path / "results" / "transfer").exists()


def test_a_comparison_whose_seeds_share_children_is_named_beside_the_verdicts(tmp_path: Path) -> None:
    """A held-out comparison run at a seed stride below its child count (its header's ``shared_children``) is named
    above the table, which says its *beats* verdicts rest on seed values that are not independent."""
    path = tmp_path / "results.json"
    header = {"seeds": [0, 1], "shared_children": {"seed_stride": 1, "children": 2}}
    path.write_text(json.dumps({"header": header, "summary": [{"controller": "ce", "test_mean": 1.0, "test_std": 0.1}]}))
    summary, shared, _ = transfer.read_summary(path, "fashion-mnist")
    assert summary[0]["controller"] == "ce" and shared == header["shared_children"]
    assert transfer.shared_children_note({}) == []
    note = " ".join(transfer.shared_children_note({"fashion-mnist": shared}))
    assert "`fashion-mnist` (stride 1, 2 children)" in note and "*beats* verdict there is weaker" in note
    report = {"held_out": [], "meta_training": {}, "shared_children": {"fashion-mnist": shared}}
    assert "`fashion-mnist` (stride 1, 2 children)" in transfer.markdown(report)


def test_pairs_across_cpus_and_oracles_of_fewer_children_are_named(tmp_path: Path) -> None:
    """A policy whose ce ran on another CPU has both CPUs named beside its per-seed differences; an oracle of fewer
    children per seed is named with its count, and a reach of it that rests on its wider spread alone says so."""
    held = next(held for held in transfer.HELD_OUT if held.ce == "ce(num_envs=2)")
    rows = [row(held.ce, 10.2, 0.1, children_per_run=2), row(held.row, 10.0, 0.1, children_per_run=2),
            row("oracle-phi", 9.7, 0.4, children_per_run=1, selected="phi-uniform(off_diagonal=-0.1)"),
            row("oracle-smoothing", 10.1, 0.3, children_per_run=2, selected="label-smoothing")]  # fmt: skip
    runs = [{"controller": held.ce, "machine": {"cpu": "CPU A"}}, {"controller": held.row, "machine": {"cpu": "CPU B"}}]
    (tmp_path / held.preset).mkdir(parents=True)
    (tmp_path / held.preset / "results.json").write_text(json.dumps({"header": {}, "summary": rows, "runs": runs}))
    entry = next(entry for entry in transfer.gather(tmp_path, tmp_path)["held_out"] if entry["row"] == held.row)
    assert entry["cpus"] == {"transfer": ["CPU B"], "ce": ["CPU A"]}
    assert entry["verdicts"]["reaches_best_fixed_phi"] and entry["verdicts"]["reaches_only_by_a_fewer_children_oracles_spread"]
    table = transfer.markdown({"held_out": [entry], "meta_training": {}})
    assert ("| -0.20 +- 0.00 (5/5 lower); ce on CPU A, the policy on CPU B | 9.70 +- 0.40 (off_diagonal=-0.1; 1 child) | "
            "10.10 +- 0.30 (label-smoothing) | **yes** | **yes** (by the oracle's spread only) |") in table


def test_a_summary_without_values_per_seed_pairs_nothing_and_is_no_traceback(tmp_path: Path) -> None:
    digits = transfer.HELD_OUT[0]
    bare = [{k: v for k, v in r.items() if k != "test_per_seed"} for r in (row("ce", 4.5, 0.1), row(digits.row, 3.0, 0.2))]
    write_results(tmp_path, digits.preset, bare)
    entry = transfer.gather(tmp_path, tmp_path)["held_out"][0]
    assert entry["per_seed_vs_ce"] is None and "seeds differ" in transfer.markdown({"held_out": [entry], "meta_training": {}})
