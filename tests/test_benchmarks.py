"""The controller comparison: results, table and plots from a tiny run; resuming (also from a committed
results.json alone); run claims; refusals; data locations kept out of results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ala_gym.benchmarks import compare
from ala_gym.benchmarks.compare import run as compare_run
from ala_gym.core.data import cifar10_subset_dir
from ala_gym.core.machine import source_digest

TINY = dict(total_iterations=10, steps_per_action=5, eval_points=2, eval_stride=2, device="cpu")


@pytest.fixture()
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_run, "RESULTS", tmp_path)
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
    ppo_row = next(line for line in table.splitlines() if line.startswith("| ppo |"))
    assert "x (amortised over 2) |" in ppo_row  # a multi-child run's wall time per child is shared
    assert "K = 5 -> 2 controller steps" in table
    for plot in ("val_metric.png", "test_metric.png", "phi_reinforce@beta=0.05.png", "phi_ppo.png"):
        assert (out / plot).stat().st_size > 0
    # Every run names the code that ran it; the table counts the runs by it.
    digest = source_digest()
    assert {run["source"] for run in results["runs"]} == {digest} and results["header"]["sources"] == {digest: 6}
    assert f"a finished run is kept, not recomputed): `{digest}` 6" in table

    # Resuming runs nothing again: a run attempt would fail loudly.
    run_one = compare_run.run_one
    monkeypatch.setattr(compare_run, "run_one", lambda *args, **kwargs: pytest.fail("finished run redone"))
    again = compare.compare("ALA-Digits-v0", controllers, [0, 1], TINY, "tiny", children=2)
    assert [row["test_per_seed"] for row in again] == [row["test_per_seed"] for row in rows]

    with pytest.raises(compare.ComparisonError, match=r"another configuration \(env_kwargs.total_iterations 10 -> 20\)"):
        compare.compare("ALA-Digits-v0", ["ce"], [0], {**TINY, "total_iterations": 20}, "tiny", children=2)
    saved = (out / "config.json").read_text()
    # A keyword given at the env id's registered value is the same comparison, and the record keeps its form.
    again = compare.compare("ALA-Digits-v0", controllers, [0, 1], {**TINY, "lr": 0.05}, "tiny", children=2)
    assert [row["test_per_seed"] for row in again] == [row["test_per_seed"] for row in rows]
    assert (out / "config.json").read_text() == saved

    # runs/ is not committed: a clone holds results.json only, and resumes from it without running.
    shutil.rmtree(out / "runs")
    from_committed = compare.compare("ALA-Digits-v0", controllers, [0, 1], TINY, "tiny", children=2)
    assert from_committed == rows
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]

    # A partial command must not shrink the committed table, nor merge new runs into it.
    with pytest.raises(compare.ComparisonError, match="would shrink that table or merge into it"):
        compare.compare("ALA-Digits-v0", ["ce"], [0], TINY, "tiny", children=2)
    with pytest.raises(compare.ComparisonError, match="would shrink that table or merge into it"):
        compare.compare("ALA-Digits-v0", controllers, [0, 1, 2], TINY, "tiny", children=2)
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    with pytest.raises(compare.ComparisonError, match="would shrink"):
        compare.compare("ALA-Digits-v0", ["ce"], [0], TINY, "tiny", children=2, extend=True)  # never shrinks
    monkeypatch.setattr(compare_run, "run_one", run_one)  # extending runs the new seed only
    compare.compare("ALA-Digits-v0", controllers, [0, 1, 2], TINY, "tiny", children=2, extend=True)
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 9
    assert "another machine" not in (out / "table.md").read_text()
    # A row added on another machine is named with it: its wall times compare only within that machine.
    elsewhere = {"cpu": "Other CPU", "cores": 64, "torch_threads": 1, "gpu": None}
    monkeypatch.setattr(compare_run, "machine", lambda: elsewhere)
    compare.compare("ALA-Digits-v0", [*controllers, "random"], [0, 1, 2], TINY, "tiny", children=2, extend=True)
    header = json.loads((out / "results.json").read_text())["header"]
    assert header["machine"]["cpu"] != "Other CPU" and header["other_machines"] == {"random": elsewhere}
    assert "- Rows that ran on another machine (their wall times compare only within it): `random` on Other CPU, 64 cores" in (
        out / "table.md"
    ).read_text()


HOLD_LOCK = """
import sys
from pathlib import Path
from ala_gym.benchmarks import compare
fd = compare.claim(Path(sys.argv[1]))
print("held" if fd is not None else "refused", flush=True)
sys.stdin.read()
"""


@contextmanager
def _holder(result: Path) -> Iterator[subprocess.Popen]:
    """Another process that claims ``result`` and exits without writing it once its stdin closes (not after a
    time, which a loaded machine could outlast); on leaving, its exit is awaited and its pipes closed
    (``Popen``'s own context)."""
    with subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(result)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as process:  # fmt: skip
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield process


def test_claim_uses_locks_that_die_with_their_process(tmp_path):
    result = tmp_path / "runs" / "ce-seed0.json"
    fd = compare.claim(result)
    assert fd is not None
    assert compare.claim(result) is None  # held (even by another descriptor of this process)
    compare.release(result, fd)

    # A lock file naming a live, unrelated process id (the old scheme's failure) holds nothing.
    result.with_suffix(".lock").write_text(str(subprocess.os.getppid()))
    fd = compare.claim(result)
    assert fd is not None
    compare.release(result, fd)

    with _holder(result) as holder:
        assert compare.claim(result) is None
        holder.kill()  # SIGKILL: no clean-up runs, yet the kernel drops the lock
        holder.wait()
    fd = compare.claim(result)
    assert fd is not None
    result.write_text("{}")
    compare.release(result, fd)
    assert not result.with_suffix(".lock").exists()
    assert compare.claim(result) is None  # already done
    assert not result.with_suffix(".lock").exists()  # and looking left no lock file behind


def test_compare_waits_for_runs_held_elsewhere_and_never_ends_with_one_missing(results_dir, capsys, monkeypatch):
    held = results_dir / "wait" / "runs" / "ce-seed1.json"
    with _holder(held) as holder:
        claim = compare_run.claim

        def claim_after_letting_go(result: Path, wait: bool = False, **kwargs: Any) -> int | None:
            if wait and result == held:  # the comparison now waits for the run: the holder exits without writing it,
                assert holder.stdin is not None  # as a crashed comparison would
                holder.stdin.close()
            return claim(result, wait=wait, **kwargs)

        monkeypatch.setattr(compare_run, "claim", claim_after_letting_go)
        compare.compare("ALA-Digits-v0", ["ce"], [0, 1], TINY, "wait")
    output = capsys.readouterr().out
    assert "ce seed 1 is being run by another process: waiting for it" in output
    results = json.loads((results_dir / "wait" / "results.json").read_text())
    assert sorted(run["seed"] for run in results["runs"]) == [0, 1]
    # Not a terminal: one line per finished run, no progress-bar frames.
    assert "ce seed 0: test metric" in output and "ce seed 1: test metric" in output and "\r" not in output


def test_data_locations_are_a_setting_not_part_of_a_result(results_dir, tiny_cifar_dir, tmp_path, monkeypatch):
    kwargs = {**TINY, "data_root": tiny_cifar_dir.name, "download": False, "val_size": 20, "model": "small_cnn"}
    monkeypatch.setenv("ALA_GYM_DATA", str(tiny_cifar_dir.parent))
    compare.compare("ALA-CIFAR10-v0", ["ce"], [0], kwargs, "cifar")
    out = results_dir / "cifar"
    for path in (out / "config.json", out / "results.json", out / "table.md", *(out / "runs").glob("*.json")):
        assert "data_root" not in path.read_text() and str(tiny_cifar_dir) not in path.read_text()

    # Elsewhere (another clone, another machine): the data lie in another folder; the comparison resumes.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_cifar_dir, elsewhere / tiny_cifar_dir.name)
    monkeypatch.setenv("ALA_GYM_DATA", str(elsewhere))
    monkeypatch.setattr(compare_run, "run_one", lambda *args, **kwargs: pytest.fail("finished run redone"))
    compare.compare("ALA-CIFAR10-v0", ["ce"], [0], kwargs, "cifar")
    # A folder written with an absolute data_root in its config (before locations were left out) resumes too.
    config = json.loads((out / "config.json").read_text())
    config["env_kwargs"]["data_root"] = "/some/machine/path"
    (out / "config.json").write_text(json.dumps(config))
    compare.compare("ALA-CIFAR10-v0", ["ce"], [0], {**kwargs, "data_root": str(elsewhere / tiny_cifar_dir.name)}, "cifar")
    assert "data_root" not in (out / "config.json").read_text()


@pytest.mark.skipif(not cifar10_subset_dir().exists(), reason="the CIFAR-10 subset is not under ALA_GYM_DATA")
def test_committed_cifar10_subset_comparison_resumes_in_a_fresh_clone(results_dir, monkeypatch):
    committed = Path(compare.__file__).parents[1] / "results" / "cifar10-subset"
    shutil.copytree(committed, results_dir / "cifar10-subset", ignore=shutil.ignore_patterns("runs", "*.png"))
    monkeypatch.setattr(compare_run, "run_one", lambda *args, **kwargs: pytest.fail("finished run redone"))
    compare.main(["--preset", "cifar10-subset"])
    rebuilt = json.loads((results_dir / "cifar10-subset" / "results.json").read_text())
    original = json.loads((committed / "results.json").read_text())
    plain = [c for c in original["header"]["controllers"] if c not in original["header"].get("oracles", {})]
    every_run = {(c, s) for c in plain for s in original["header"]["seeds"]}  # and the oracles' grid runs
    assert every_run <= {(run["controller"], run["seed"]) for run in rebuilt["runs"]}
    assert rebuilt["summary"] == original["summary"] and len(rebuilt["runs"]) == len(original["runs"])
    assert (results_dir / "cifar10-subset" / "table.md").read_text() == (committed / "table.md").read_text()


def test_controller_specs_carry_env_keywords_and_bad_input_exits_2(results_dir, capsys):
    assert compare.parse_controller("reinforce-multi@beta=0.01;loss_form=sigmoid") == (
        "reinforce-multi", {"beta": 0.01, "loss_form": "sigmoid"}
    )
    assert compare.parse_controller("ce") == ("ce", {})
    with pytest.raises(compare.ComparisonError, match="key=value"):
        compare.parse_controller("reinforce@beta")
    for argv, message in [
        (["--env", "ALA-Digits-v0", "--controllers", "ce,nonsense@beta=0.1", "--seeds", "1"], "unknown controller"),
        (["--env", "ALA-Digits-v0", "--controllers", "ce", "--seeds", "0"], "--seeds must be a positive count"),
        (["--env", "ALA-Digits-v0", "--controllers", "ce", "--seeds", "1", "--baseline-children", "0"],
         "--baseline-children must be a positive count"),
        (["--env", "ALA-Digits-v0", "--controllers", "ce", "--seeds", "1", "--seed-stride", "0"],
         "--seed-stride must be a positive count"),
        (["--env", "ALA-Digits-v0", "--controllers", "reinforce-multi(lrr=0.1)", "--seeds", "1"],
         "controller 'reinforce-multi(lrr=0.1)': no setting lrr (lrr: did you mean lr?); it takes ["),
        (["--env", "ALA-Digits-v0", "--controllers", "oracle-phi(x=1)", "--seeds", "1"],
         "the row oracle-phi takes no parameters or env keywords (in 'oracle-phi(x=1)'); name it alone"),
        (["--env", "ALA-Digits-v0", "--controllers", "nosuchpkg.mod:Factory", "--seeds", "1"],
         "cannot import 'nosuchpkg.mod' (No module named 'nosuchpkg'); is it installed or on PYTHONPATH? (in"),
        (["--env", "ALA-Digits-v0", "--controllers", "ce", "--seeds", "1", "--env-kwargs", "{beta"], "is not JSON"),
        (["--env", "ALA-Digits-v0", "--controllers", "ce", "--seeds", "1", "--env-kwargs", '{"beta": -1}'],
         "beta must be a finite number in (0, inf)"),
        (["--env", "ALA-Digits-v0", "--controllers", "ce", "--seeds", "1", "--steps-per-action", "2", "--env-kwargs",
          '{"steps_per_action": 4}'], "steps_per_action is given twice (--steps-per-action and --env-kwargs)"),
    ]:
        with pytest.raises(SystemExit) as caught:
            compare.main(argv)
        error = capsys.readouterr().err
        assert caught.value.code == 2 and message in error and "Traceback" not in error, argv


def test_the_committed_results_guard_leaves_out_only_what_make_demo_writes() -> None:
    """``make demo``'s folder may change while the suite runs (a demo beside it): no test's doing, so conftest's
    guard of the committed results does not fail the test then running. A run file in a committed comparison's
    ``runs/`` still counts, since the comparison would take it for a finished run."""
    if shutil.which("git") is None or not (Path(__file__).resolve().parents[1] / ".git").exists():
        pytest.skip("the guard tells what git ignores only in a git checkout")
    from conftest import _not_ignored

    written = ["benchmarks/results/demo-digits/table.md", "benchmarks/results/digits/runs/ce-0.json", "benchmarks/results/digits/table.md"]
    assert _not_ignored(written) == written[1:]
    assert _not_ignored([]) == []
