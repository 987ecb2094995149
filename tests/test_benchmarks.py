"""The controller comparison: results, table and plots from a tiny run; resuming; run claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import compare

TINY = dict(total_iterations=10, steps_per_action=5, eval_points=2, eval_stride=2, device="cpu")


@pytest.fixture()
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "RESULTS", tmp_path)
    return tmp_path


def test_compare_writes_every_run_table_and_plots_then_resumes(results_dir, monkeypatch):
    controllers = ["ce", "reinforce@beta=0.05", "ppo"]
    rows = compare.compare("ALA-Digits-v0", controllers, [0, 1], TINY, "tiny", children=2)
    out = results_dir / "tiny"
    assert sorted(p.name for p in (out / "runs").glob("*")) == sorted(
        f"{c}-seed{s}.json" for c in controllers for s in (0, 1)
    )  # and no lock left behind
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 6
    assert results["header"]["steps_per_child"] == 2  # 10 iterations, K = 5
    for run in results["runs"]:
        child = run["children"][0]
        assert len(child["val_metric"]) == 2 and 0.0 <= run["test_metric"] <= 1.0
    by_name = {run["controller"]: run for run in results["runs"] if run["seed"] == 0}
    assert by_name["reinforce@beta=0.05"]["env_kwargs"]["beta"] == 0.05 and "beta" not in by_name["ce"]["env_kwargs"]
    assert by_name["ppo"]["num_children"] == 2 and by_name["ce"]["num_children"] == 1
    ce = next(row for row in rows if row["controller"] == "ce")
    assert ce["wall_vs_ce"] == pytest.approx(1.0) and len(ce["test_per_seed"]) == 2
    assert ce["final_phi_offset"] == 0.0 and ce["final_phi_diagonal"] == 1.0
    learned = next(row for row in rows if row["controller"] == "reinforce@beta=0.05")
    assert 0.0 < learned["final_phi_offset"] <= 2 * 0.05  # two steps of at most beta per entry
    table = (out / "table.md").read_text()
    assert "| ce | 1 |" in table and "| reinforce@beta=0.05 | 1 |" in table and "| ppo | 2 |" in table
    assert "K = 5 -> 2 controller steps" in table
    for plot in ("val_metric.png", "phi_reinforce@beta=0.05.png", "phi_ppo.png"):
        assert (out / plot).stat().st_size > 0

    # Resuming runs nothing again: a run attempt would fail loudly.
    monkeypatch.setattr(compare, "run_one", lambda *args, **kwargs: pytest.fail("finished run redone"))
    again = compare.compare("ALA-Digits-v0", controllers, [0, 1], TINY, "tiny", children=2)
    assert [row["test_per_seed"] for row in again] == [row["test_per_seed"] for row in rows]

    with pytest.raises(SystemExit, match="another configuration"):
        compare.compare("ALA-Digits-v0", ["ce"], [0], {**TINY, "total_iterations": 20}, "tiny")


def test_claim_skips_done_and_live_runs_and_takes_over_stale_locks(tmp_path):
    result = tmp_path / "runs" / "ce-seed0.json"
    assert compare.claim(result)
    assert result.with_suffix(".lock").read_text() == str(os.getpid())
    assert not compare.claim(result)  # held by a live process (this one)

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    result.with_suffix(".lock").write_text(dead.stdout.strip())
    assert compare.claim(result)  # its owner has exited: the lock is stale

    result.with_suffix(".lock").unlink()
    result.write_text("{}")
    assert not compare.claim(result)  # already done


def test_controller_specs_carry_env_keywords_and_bad_ones_are_refused(results_dir):
    assert compare.parse_controller("reinforce-multi@beta=0.01;loss_form=sigmoid") == (
        "reinforce-multi", {"beta": 0.01, "loss_form": "sigmoid"}
    )
    assert compare.parse_controller("ce") == ("ce", {})
    with pytest.raises(SystemExit, match="key=value"):
        compare.parse_controller("reinforce@beta")
    with pytest.raises(SystemExit, match="unknown controllers"):
        compare.main(["--env", "ALA-Digits-v0", "--controllers", "ce,nonsense@beta=0.1", "--seeds", "1"])
