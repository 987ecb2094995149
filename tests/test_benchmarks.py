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
    rows = compare.compare("ALA-Digits-v0", ["ce", "reinforce"], [0, 1], TINY, "tiny")
    out = results_dir / "tiny"
    assert sorted(p.name for p in (out / "runs").glob("*")) == [
        "ce-seed0.json", "ce-seed1.json", "reinforce-seed0.json", "reinforce-seed1.json"
    ]  # no lock left behind
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4
    assert results["header"]["steps_per_child"] == 2  # 10 iterations, K = 5
    for run in results["runs"]:
        child = run["children"][0]
        assert len(child["val_metric"]) == 2 and 0.0 <= run["test_metric"] <= 1.0
    ce = next(row for row in rows if row["controller"] == "ce")
    assert ce["wall_vs_ce"] == pytest.approx(1.0) and len(ce["test_per_seed"]) == 2
    table = (out / "table.md").read_text()
    assert "| ce | 1 |" in table and "| reinforce | 1 |" in table and "K = 5 -> 2 controller steps" in table
    assert (out / "val_metric.png").stat().st_size > 0 and (out / "phi_reinforce.png").stat().st_size > 0

    # Resuming runs nothing again: a run attempt would fail loudly.
    monkeypatch.setattr(compare, "run_one", lambda *args, **kwargs: pytest.fail("finished run redone"))
    again = compare.compare("ALA-Digits-v0", ["ce", "reinforce"], [0, 1], TINY, "tiny")
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


def test_cli_rejects_unknown_controllers(results_dir):
    with pytest.raises(SystemExit, match="unknown controllers"):
        compare.main(["--env", "ALA-Digits-v0", "--controllers", "ce,nonsense", "--seeds", "1"])
