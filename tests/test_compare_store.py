"""The comparison's result store: a folder it cannot write is refused before any training, a damaged
``config.json`` or ``results.json`` is named with its fix, and a damaged run file is run again."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from ala_gym.agents.reinforce import library_policy
from ala_gym.benchmarks import compare
from ala_gym.benchmarks.compare import run as compare_run
from ala_gym.benchmarks.compare.store import ComparisonError, read_json

TINY = dict(total_iterations=10, steps_per_action=5, eval_points=2, eval_stride=2, device="cpu")
ARGS = ["--env", "ALA-Digits-v0", "--controllers", "ce", "--seeds", "1", "--env-kwargs", json.dumps(TINY),
        "--name", "tiny"]


@pytest.fixture()
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_run, "RESULTS", tmp_path)
    return tmp_path


def no_training(monkeypatch) -> None:
    monkeypatch.setattr(compare_run, "run_one", lambda *args, **kwargs: pytest.fail("a run was trained"))


def refused_in_one_line(capsys) -> str:
    with pytest.raises(SystemExit) as caught:
        compare.main(ARGS)
    error = capsys.readouterr().err
    assert caught.value.code == 2, error
    assert "Traceback" not in error and error.strip().count("\n") == 0, error
    return error


@pytest.mark.parametrize("blocked", ["tiny", "tiny/runs"])
def test_unwritable_results_folder_is_refused_before_any_training(blocked, results_dir, monkeypatch, capsys):
    no_training(monkeypatch)
    folder = results_dir / blocked
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("a file where the folder should be")
    error = refused_in_one_line(capsys)
    assert f"cannot write results to {folder}" in error and "--name" in error


@pytest.mark.parametrize("name", ["config.json", "results.json", "table.md", "test_metric.png", "runs/ce-seed0.json"])
def test_a_folder_where_the_comparison_keeps_a_file_is_refused_before_any_training(name, results_dir, monkeypatch, capsys):
    no_training(monkeypatch)
    (results_dir / "tiny" / name).mkdir(parents=True)
    error = refused_in_one_line(capsys)
    assert f"{results_dir / 'tiny' / name} is a folder where the comparison keeps a file: move it away" in error, error


def test_a_store_file_this_user_may_not_read_is_named(tmp_path, monkeypatch):
    def forbidden(self: Path, *args, **kwargs) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", forbidden)  # as root, a file's mode bits would not stop the read
    with pytest.raises(ComparisonError, match=f"cannot read {tmp_path / 'config.json'} \\(PermissionError: Permission denied\\)"):
        read_json(tmp_path / "config.json", {}, "delete it")


def test_env_keywords_that_no_json_holds_are_refused_before_the_folder_is_made(results_dir, monkeypatch):
    no_training(monkeypatch)
    data = (np.zeros((8, 3)), np.arange(8) % 2, np.zeros((4, 3)), np.arange(4) % 2)
    with pytest.raises(ComparisonError, match="env keywords must be JSON values.*register_dataset"):
        compare_run.compare("ALA-Classification-v0", ["ce"], [0], {"dataset": data}, "arrays")
    assert not (results_dir / "arrays").exists()


DAMAGED = [
    ("config.json", "{\"env\": ", "not valid JSON"),
    ("config.json", "[]", "a list, not an object"),
    ("config.json", '{"env": "ALA-Digits-v0", "env_kwargs": []}', "env_kwargs is a list, not an object"),
    ("results.json", '{"header": {"seeds": [0', "not valid JSON"),
    ("results.json", "[]", "a list, not an object"),
    ("results.json", '{"header": {"seeds": [0]}, "summary": [{"controller": "ce"}]}', "has no runs"),
    ("results.json", '{"header": {"seeds": [0]}, "summary": [], "runs": [{"controller": "ce", "seed": 0}]}',
     "runs[0] has no env"),
]


@pytest.mark.parametrize(("name", "text", "problem"), DAMAGED, ids=[f"{n}:{p}" for n, _, p in DAMAGED])
def test_damaged_config_or_results_is_named_with_its_fix(name, text, problem, results_dir, monkeypatch, capsys):
    no_training(monkeypatch)
    path = results_dir / "tiny" / name
    path.parent.mkdir()
    path.write_text(text)
    error = refused_in_one_line(capsys)
    assert f"{path} is damaged" in error and problem in error, error
    assert "restore it from version control, or delete it" in error
    assert path.read_text() == text  # left as it was, for the user to restore


def test_damaged_run_file_is_run_again_with_a_warning(results_dir, monkeypatch, capsys):
    rows = compare.compare("ALA-Digits-v0", ["ce"], [0, 1], TINY, "tiny")
    out = results_dir / "tiny"
    runs = {seed: out / "runs" / f"ce-seed{seed}.json" for seed in (0, 1)}
    good = {seed: json.loads(path.read_text()) for seed, path in runs.items()}

    # An interrupted comparison (no results.json yet) whose run files were damaged: run those again.
    (out / "results.json").unlink()
    runs[0].write_text(runs[0].read_text()[:100])
    runs[1].write_text("[]")
    run_one, ran = compare_run.run_one, []
    monkeypatch.setattr(compare_run, "run_one", lambda *args, **kwargs: ran.append(args[1:3]) or run_one(*args, **kwargs))
    capsys.readouterr()
    again = compare.compare("ALA-Digits-v0", ["ce"], [0, 1], TINY, "tiny")
    warnings = capsys.readouterr().err
    assert sorted(ran) == [("ce", 0), ("ce", 1)]
    for seed, path in runs.items():
        assert f"warning: {path} is damaged" in warnings and "running it again" in warnings
        assert json.loads(path.read_text())["test_metric"] == good[seed]["test_metric"]  # the same run, rewritten
    assert [row["test_per_seed"] for row in again] == [row["test_per_seed"] for row in rows]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["ce-seed0.json", "ce-seed1.json"]  # no lock left

    # With the run in results.json, a damaged run file blocks nothing and nothing is run again.
    no_training(monkeypatch)
    runs[0].write_text("{")
    assert compare.compare("ALA-Digits-v0", ["ce"], [0, 1], TINY, "tiny") == again


def test_a_run_file_that_holds_another_run_than_its_name_says_is_run_again(results_dir, monkeypatch, capsys):
    controllers = ["ce", "phi-uniform"]
    rows = compare.compare("ALA-Digits-v0", controllers, [0], TINY, "tiny")
    out = results_dir / "tiny"
    (out / "results.json").unlink()
    # A file copied by hand over another: ce's file now holds the run of the fixed row.
    shutil.copyfile(out / "runs" / "phi-uniform-seed0.json", out / "runs" / "ce-seed0.json")
    run_one, ran = compare_run.run_one, []
    monkeypatch.setattr(compare_run, "run_one", lambda *args, **kwargs: ran.append(args[1:3]) or run_one(*args, **kwargs))
    capsys.readouterr()
    again = compare.compare("ALA-Digits-v0", controllers, [0], TINY, "tiny")
    warning = capsys.readouterr().err
    assert ran == [("ce", 0)]
    assert f"{out / 'runs' / 'ce-seed0.json'} holds the run of phi-uniform on seed 0" in warning
    assert "whose file is phi-uniform-seed0.json; running it again" in warning
    assert json.loads((out / "runs" / "ce-seed0.json").read_text())["controller"] == "ce"
    assert [row["test_per_seed"] for row in again] == [row["test_per_seed"] for row in rows]


def test_results_are_readable_by_whoever_could_read_a_file_written_there(results_dir):
    compare.compare("ALA-Digits-v0", ["ce"], [0], TINY, "tiny")
    umask = os.umask(0)
    os.umask(umask)
    for path in (results_dir / "tiny" / "results.json", results_dir / "tiny" / "config.json",
                 results_dir / "tiny" / "runs" / "ce-seed0.json"):  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path  # not tempfile's owner-only 0600


@pytest.mark.parametrize("args, message", [
    (["--controllers", "ce,label-smoothing,ce"], "controllers named more than once: ce"),
    (["--name", "."], "holds other comparisons; name a folder of its own"),
], ids=["repeated-row", "results-root"])  # fmt: skip
def test_a_repeated_row_or_the_results_root_is_refused(args, message, results_dir, monkeypatch, capsys):
    no_training(monkeypatch)
    with pytest.raises(SystemExit) as caught:
        compare.main([*ARGS, *args])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and message in err and err.strip().count("\n") == 0
    assert list(results_dir.iterdir()) == []  # refused before any folder or file of the comparison was made


def test_ctrl_c_ends_in_one_line_and_the_finished_runs_stay(results_dir, monkeypatch, capsys):
    run_one = compare_run.run_one

    def interrupted_at_seed_1(*args, **kwargs):
        if args[2] == 1:
            raise KeyboardInterrupt
        return run_one(*args, **kwargs)

    monkeypatch.setattr(compare_run, "run_one", interrupted_at_seed_1)
    with pytest.raises(SystemExit) as caught:
        compare.main([*ARGS[:5], "2", *ARGS[6:]])  # --seeds 2
    err = capsys.readouterr().err
    assert caught.value.code == 130 and "Traceback" not in err
    assert "interrupted; the finished runs are kept, and the same command runs the rest" in err
    assert (results_dir / "tiny" / "runs" / "ce-seed0.json").exists()


def test_a_policy_file_of_ones_own_runs_as_a_row(results_dir, tmp_path):
    policy = tmp_path / "mine" / "policy.pt"
    policy.parent.mkdir()
    shutil.copy(library_policy("digits"), policy)
    row = f"reinforce-transfer-frozen(policy={policy})"
    rows = compare.compare("ALA-Digits-v0", ["ce", row], [0], TINY, "tiny", children=1)
    assert [r["controller"] for r in rows] == ["ce", row]
    # The path's slashes stay inside the file name: the run lies in runs/, where a later command finds it.
    assert (results_dir / "tiny" / "runs" / f"{row.replace('/', '%2F')}-seed0.json").is_file()


def test_a_run_that_fails_after_the_checks_keeps_its_traceback_and_names_its_row(results_dir, monkeypatch, capsys):
    # Every input is checked before the first run: what fails inside one (a controller's act, say) is a fault
    # to debug, not bad input to report in one line.
    def failing(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(compare_run, "run_one", failing)
    with pytest.raises(compare_run.RunError, match="the run of ce on seed 0 failed: ValueError: operands") as raised:
        compare.main(ARGS)
    assert isinstance(raised.value.__cause__, ValueError)


@pytest.mark.parametrize(
    "controllers, seeds, extend, allowed",
    [
        (["ce", "random"], [0, 1], False, True),  # the same plan, in another order
        (["ce", "random", "ls"], [0, 1, 2], True, True),  # --extend grows both
        (["ce", "random"], [0, 1, 2], True, True),
        (["ce", "random", "ls"], [0, 1], False, False),  # growing needs --extend
        (["ce"], [0, 1, 2], True, False),  # more seeds do not excuse a dropped controller
        (["ce", "random", "ls"], [0], True, False),  # nor more controllers a dropped seed
    ],
)
def test_a_saved_table_only_grows_and_only_with_extend(tmp_path, controllers, seeds, extend, allowed) -> None:
    from ala_gym.benchmarks.compare.store import check_same_plan

    (tmp_path / "results.json").write_text(json.dumps(
        {"header": {"seeds": [1, 0], "controllers": ["random", "ce"]}, "summary": [], "runs": []}))  # fmt: skip
    if allowed:
        check_same_plan(tmp_path, controllers, seeds, extend)
    else:
        with pytest.raises(compare.ComparisonError, match="would shrink that table or merge into it"):
            check_same_plan(tmp_path, controllers, seeds, extend)


def test_the_table_holds_the_runs_of_its_own_seeds_only(results_dir, monkeypatch) -> None:
    """Runs of other seeds left in ``runs/`` (here by a wider comparison whose table was removed) stay out of a
    comparison's table and summary."""
    compare.compare("ALA-Digits-v0", ["ce"], [0, 1], TINY, "tiny", children=2)
    (results_dir / "tiny" / "results.json").unlink()
    no_training(monkeypatch)
    rows = compare.compare("ALA-Digits-v0", ["ce"], [1], TINY, "tiny", children=2)
    assert len(rows[0]["test_per_seed"]) == 1
    assert [run["seed"] for run in json.loads((results_dir / "tiny" / "results.json").read_text())["runs"]] == [1]


def test_a_run_file_removed_during_the_comparison_fails_it_before_any_table(results_dir, monkeypatch) -> None:
    """A finished run's file that vanishes before the table is written (removed by hand, or by another process)
    ends the comparison naming that run and how to finish it; no table with a hole is written."""

    def run_one(env_id: str, controller: str, seed: int, *args: object) -> dict:
        if seed == 1:
            (results_dir / "tiny" / "runs" / "ce-seed0.json").unlink()
        child = {"val_metric": [0.1], "phi": [], "diverged": False, "test_metric": 0.1}
        machine = {"cpu": "test cpu", "cores": 2, "torch_threads": 1, "gpu": None}
        return {"env": env_id, "controller": controller, "seed": seed, "num_children": 1, "env_kwargs": {}, "wall_s": 1.0,
                "test_metric": 0.1, "children": [child], "device": "cpu", "machine": machine, "versions": {}}  # fmt: skip

    monkeypatch.setattr(compare_run, "run_one", run_one)
    with pytest.raises(ComparisonError, match=r"runs missing from .*runs: ce seed 0; run the command again"):
        compare.compare("ALA-Digits-v0", ["ce"], [0, 1], TINY, "tiny")
    assert not (results_dir / "tiny" / "results.json").exists() and not (results_dir / "tiny" / "table.md").exists()


def test_the_command_line_hands_its_options_to_the_comparison(monkeypatch) -> None:
    """Budget flags land in the env keywords, the folder is named after the env unless --name says otherwise,
    and the seeds count from 0."""
    from ala_gym.benchmarks.compare import cli

    calls = []
    monkeypatch.setattr(cli, "compare", lambda *args: calls.append(args))
    compare.main(["--env", "ALA-Digits-v0", "--controllers", "ce,ppo", "--seeds", "2", "--total-iterations", "30",
                  "--steps-per-action", "5", "--env-kwargs", '{"beta": 0.01}'])  # fmt: skip
    env, controllers, seeds, env_kwargs, name, *_ = calls[-1]
    assert (env, controllers, seeds, name) == ("ALA-Digits-v0", ["ce", "ppo"], [0, 1], "ala-digits-v0")
    assert env_kwargs == {"beta": 0.01, "total_iterations": 30, "steps_per_action": 5}


def test_data_root_and_threads_are_set_before_the_comparison_runs(tmp_path, monkeypatch, one_torch_thread) -> None:
    """--data-root becomes the data home (``ALA_GYM_DATA``, which the runs and their workers read) and --threads
    torch's thread count, both in place when the comparison starts."""
    from ala_gym.benchmarks.compare import cli

    monkeypatch.setenv("ALA_GYM_DATA", "elsewhere")  # restored after the test
    seen = []
    monkeypatch.setattr(cli, "compare", lambda *args: seen.append((os.environ["ALA_GYM_DATA"], torch.get_num_threads())))
    compare.main([*ARGS, "--data-root", str(tmp_path / "data"), "--threads", "2"])
    assert seen == [(str(tmp_path / "data"), 2)]


def test_first_seed_starts_the_seeds_there_and_a_negative_one_is_refused(monkeypatch, capsys) -> None:
    from ala_gym.benchmarks.compare import cli

    seen = []
    monkeypatch.setattr(cli, "compare", lambda *args: seen.append(args[2]))
    compare.main([*ARGS[:5], "2", *ARGS[6:], "--first-seed", "3"])  # --seeds 2
    compare.main(["--preset", "fashion-mnist-fresh"])
    assert seen == [[3, 4], [50, 51, 52, 53, 54]]
    with pytest.raises(SystemExit) as caught:
        compare.main([*ARGS, "--first-seed", "-1"])
    error = capsys.readouterr().err
    assert caught.value.code == 2 and error.strip().endswith("error: --first-seed must be a seed >= 0, got -1"), error


def test_a_command_without_preset_names_the_options_it_lacks(monkeypatch, capsys) -> None:
    no_training(monkeypatch)
    with pytest.raises(SystemExit) as caught:
        compare.main(["--env", "ALA-Digits-v0", "--controllers", "ce"])
    error = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in error, error
    message = "error: give --preset or all of --env --controllers --seeds (missing: seeds)"
    assert error.strip().splitlines()[-1].endswith(message), error


@pytest.mark.parametrize("kwargs, message", [("[1, 2]", "--env-kwargs must be a JSON object"), ("{", "--env-kwargs is not JSON")])
def test_env_keywords_that_are_not_a_json_object_exit_2(kwargs: str, message: str, monkeypatch, capsys) -> None:
    no_training(monkeypatch)
    with pytest.raises(SystemExit) as caught:
        compare.main([*ARGS, "--env-kwargs", kwargs])
    assert caught.value.code == 2 and message in capsys.readouterr().err


def test_missing_data_exits_2_in_one_line(results_dir, monkeypatch, tmp_path, capsys) -> None:
    """A dataset that is not on disk (Fashion-MNIST in an empty folder) ends the command with the loader's one
    line, which names the missing file and how to get it."""
    no_training(monkeypatch)
    kwargs = json.dumps({**TINY, "data_root": str(tmp_path / "empty")})
    with pytest.raises(SystemExit) as caught:
        compare.main(["--env", "ALA-FashionMNIST-v0", "--controllers", "ce", "--seeds", "1", "--env-kwargs", kwargs])
    error = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in error and error.strip().count("\n") == 0, error
    assert "train-images-idx3-ubyte.gz is missing" in error and "apt-get install -y dataset-fashion-mnist" in error


def test_results_json_keeps_four_matrices_every_steps_mean_and_rounded_curves() -> None:
    """``results.json`` keeps a child's Phi at the first, the last and two evenly spaced steps between, the mean
    off-diagonal entry of every step, and validation curves to 6 decimals; a compact run stays as it is."""
    from ala_gym.benchmarks.compare.store import compact_run

    phi = [(np.eye(3) + step * 0.01 * (1 - np.eye(3))).tolist() for step in range(10)]
    run = {"controller": "x", "children": [{"phi": phi, "val_metric": [0.123456789] * 10}]}
    (child,) = compact_run(run)["children"]
    assert child["phi_steps"] == [0, 3, 6, 9] and child["phi"] == [phi[i] for i in (0, 3, 6, 9)]
    np.testing.assert_allclose(child["phi_off_diagonal"], 0.01 * np.arange(10))
    assert child["val_metric"] == [0.123457] * 10
    assert compact_run(compact_run(run)) == compact_run(run)


def test_another_seed_stride_is_another_comparison(results_dir) -> None:
    """The seed stride decides which children a run trains: a folder of stride 1 refuses stride 2, and a record
    written before strides were kept counts as stride 1."""
    from ala_gym.benchmarks.compare.store import config_changes

    compare.compare("ALA-Digits-v0", ["ce"], [0], TINY, "tiny")
    with pytest.raises(compare.ComparisonError, match=r"seed_stride 1 -> 2"):
        compare.compare("ALA-Digits-v0", ["ce"], [0], TINY, "tiny", seed_stride=2)
    saved = {"env": "ALA-Digits-v0", "env_kwargs": {}, "children": None}
    assert config_changes(saved, {**saved, "seed_stride": 2}, {}) == ["seed_stride 1 -> 2"]


def test_by_default_no_child_is_shared_between_seeds_and_a_smaller_stride_is_said(results_dir) -> None:
    """Without a stride, run k of a row of 2 children seeds them 2k and 2k + 1 (the seeds' values are independent
    samples); a stride of 1, kept as given, makes consecutive seeds share a child, which the table says."""
    compare.compare("ALA-Digits-v0", ["ce(num_envs=2)"], [0, 1], TINY, "apart")
    runs = json.loads((results_dir / "apart" / "results.json").read_text())["runs"]
    assert sorted(run["env_seed"] for run in runs) == [0, 2]
    assert json.loads((results_dir / "apart" / "config.json").read_text())["seed_stride"] == 2
    assert "Seeds share children" not in (results_dir / "apart" / "table.md").read_text()
    assert "- Seeds: [0, 1] (env seeds 0, 2: a run's children are seeded" in (results_dir / "apart" / "table.md").read_text()
    compare.compare("ALA-Digits-v0", ["ce(num_envs=2)"], [0, 1], TINY, "shared", seed_stride=1)
    runs = json.loads((results_dir / "shared" / "results.json").read_text())["runs"]
    assert sorted(run["env_seed"] for run in runs) == [0, 1]
    table = (results_dir / "shared" / "table.md").read_text()
    assert "- Seeds share children: run k seeds its children k * 1 + i, so in a row of 2 children a run shares 1" in table
    assert "- Seeds: [0, 1]; versions" in table  # env seeds as the seeds: nothing more to say
    # Resumed without a stride, a comparison keeps its folder's: a seed added runs the children its stride gives.
    compare.compare("ALA-Digits-v0", ["ce(num_envs=2)"], [0, 1, 2], TINY, "shared", extend=True)
    runs = json.loads((results_dir / "shared" / "results.json").read_text())["runs"]
    assert sorted(run["env_seed"] for run in runs) == [0, 1, 2]
