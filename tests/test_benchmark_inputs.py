"""The benchmark commands refuse bad input in one line with exit status 2, before they measure, and never
write a report over the one already on disk: an output folder that is a file, data that is missing or
damaged, saved JSON that is damaged, a device or thread count the machine refuses, a budget the folder's
runs were not made with. A measuring worker that fails after these checks is named with its own error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ala_gym.benchmarks import adalfl_cost, adalfl_report, gpu, learnloss, malloc, overhead, reward_agreement


def refused(main: Callable[[list[str]], None], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``main(argv)`` prints before exiting with status 2."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.strip() and err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


def never(*args: object, **kwargs: object) -> None:
    pytest.fail("measured despite bad input")


@pytest.fixture
def saved_overhead(tmp_path: Path) -> Path:
    """An output folder that holds an earlier overhead report."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "overhead.json").write_text(json.dumps({"argv": [], "results": {"digits": {"model": "mlp"}}, "notes": []}))
    (out / "overhead.md").write_text("the digits row\n")
    return out


@pytest.fixture
def damaged_cifar(tmp_path: Path, tiny_cifar_dir: Path) -> Path:
    """A data home whose CIFAR-10 subset has a batch file that no longer matches its md5 sum."""
    home = tmp_path / "damaged-data"
    shutil.copytree(tiny_cifar_dir, home / "cifar10-subset")
    with open(home / "cifar10-subset" / "data_batch_1", "ab") as batch:
        batch.write(b"x")
    return home


def test_overhead_refuses_missing_data_and_keeps_the_saved_report(saved_overhead, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path))  # --data-root sets it; restored after the test
    monkeypatch.setattr(overhead, "measure", never)
    before = {path.name: path.read_text() for path in saved_overhead.iterdir()}
    monkeypatch.chdir(tmp_path)  # a relative --data-root reaches the measuring processes as an absolute one
    argv = ["--configs", "cifar10-subset", "--data-root", "no-data", "--repeats", "1"]
    err = refused(overhead.main, [*argv, "--out", str(saved_overhead)], capsys)
    assert os.environ["ALA_GYM_DATA"] == str(tmp_path / "no-data")
    assert f"cifar10-subset: no dataset folder {tmp_path / 'no-data' / 'cifar10-subset'}" in err and "--data-root" in err
    assert {path.name: path.read_text() for path in saved_overhead.iterdir()} == before
    assert not (tmp_path / "no-data").exists()  # nothing was downloaded there


def test_overhead_and_malloc_refuse_a_damaged_cifar_subset_in_one_line(damaged_cifar, monkeypatch, capsys):
    monkeypatch.setenv("ALA_GYM_DATA", str(damaged_cifar))
    monkeypatch.setattr(overhead, "measure", never)
    monkeypatch.setattr(malloc.subprocess, "run", never)  # no worker starts
    for main, argv in ((overhead.main, ["--configs", "cifar10-subset"]), (malloc.main, ["--config", "cifar10-subset"])):
        err = refused(main, [*argv, "--data-root", str(damaged_cifar), "--out", str(damaged_cifar / "out")], capsys)
        assert "data_batch_1 is corrupt" in err
    assert not (damaged_cifar / "out").exists()


@pytest.mark.parametrize("content", ["{", "[]", '{"results": {}}'])
def test_overhead_merge_refuses_a_damaged_report(saved_overhead, monkeypatch, capsys, content: str):
    monkeypatch.setattr(overhead, "measure", never)
    (saved_overhead / "overhead.json").write_text(content)
    err = refused(overhead.main, ["--configs", "digits", "--merge", "--out", str(saved_overhead)], capsys)
    assert f"{saved_overhead / 'overhead.json'} is damaged" in err and "without --merge" in err
    assert (saved_overhead / "overhead.json").read_text() == content


def test_overhead_refuses_cuda_on_a_machine_without_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(overhead.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(overhead, "measure", never)
    with pytest.raises(SystemExit) as caught:
        overhead.main(["--device", "cuda", "--configs", "digits", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("error: --device cuda asked for, but torch.cuda.is_available() is False "
                                                 "on this machine")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_malloc_refuses_rounds_below_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(malloc.subprocess, "run", never)
    with pytest.raises(SystemExit) as caught:
        malloc.main(["--config", "digits", "--rounds", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.strip().splitlines()[-1].endswith("error: --rounds must be positive, got 0"), err
    assert not (tmp_path / "out").exists()


def test_malloc_names_a_failed_worker_with_its_error_and_writes_no_report(tmp_path, monkeypatch):
    """A worker that fails after the inputs were checked is the package's fault: its mode and its own stderr
    (the traceback) end the command, and no report is written."""
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="Traceback (most recent call last):\nMemoryError\n")
    monkeypatch.setattr(malloc.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(SystemExit) as caught:
        malloc.main(["--config", "digits", "--out", str(tmp_path / "out")])
    assert caught.value.code == "the default worker failed:\nTraceback (most recent call last):\nMemoryError"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["overhead", "malloc", "adalfl_cost", "gpu"])
def test_an_output_folder_that_is_a_file_is_refused_before_measuring(command, tmp_path, monkeypatch, capsys):
    for module in (overhead, malloc, adalfl_cost):
        monkeypatch.setattr(module, "measure", never)
    monkeypatch.setattr(malloc.subprocess, "run", never)
    main = {"overhead": overhead.main, "malloc": malloc.main, "adalfl_cost": adalfl_cost.main, "gpu": gpu.main}[command]
    if command == "gpu":  # its parts are the other commands
        for module in (gpu.overhead, gpu.throughput, gpu.adalfl_cost):
            monkeypatch.setattr(module, "main", never)
    (tmp_path / "file").write_text("kept\n")
    argv = {"overhead": ["--configs", "digits"], "malloc": ["--config", "digits"], "adalfl_cost": ["--tasks", "digits"],
            "gpu": ["--device", "cpu", "--tiny"]}[command]  # fmt: skip
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        err = refused(main, [*argv, "--out", str(out)], capsys)
        assert f"{tmp_path / 'file'} is a file, not a folder" in err
    assert (tmp_path / "file").read_text() == "kept\n"
    report = {"overhead": "overhead.md", "malloc": "malloc.json", "adalfl_cost": "adalfl_cost.json", "gpu": "gpu.md"}[command]
    (tmp_path / "out" / report).mkdir(parents=True)  # a folder where the report goes: it would fail only when written
    err = refused(main, [*argv, "--out", str(tmp_path / "out")], capsys)
    assert f"{tmp_path / 'out' / report} is a folder where the report goes" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "bogus"], "--device: device must be"),
        (["--device", "cuda:99"], "--device: device='cuda:99'"),  # no machine here has 100 GPUs
        (["--threads", "0"], "--threads must be positive"),
    ],
)
def test_adalfl_cost_refuses_a_device_or_thread_count_the_machine_refuses(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(adalfl_cost, "measure", never)
    assert message in refused(adalfl_cost.main, ["--tasks", "digits", *argv, "--out", str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists()


def test_adalfl_cost_refuses_missing_cifar10_before_measuring_and_never_downloads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(adalfl_cost, "measure", never)
    argv = ["--tasks", "digits,cifar10", "--data-root", str(tmp_path / "no-data"), "--out", str(tmp_path / "out")]
    err = refused(adalfl_cost.main, argv, capsys)
    assert err.startswith(f"cifar10: CIFAR-10 not found or corrupt under {tmp_path / 'no-data'}"), err
    assert "extracted cifar-10-python.tar.gz" in err  # what to put there
    assert not (tmp_path / "no-data").exists() and not (tmp_path / "out").exists()  # nothing downloaded or written


# ---------------------------------------------------------------------- learnloss
def run_record(budget: int) -> dict:
    """A finished random-search run of seed 0 on digits."""
    trial = {"lam": [0.01, 0.01], "components": [1.0, 2.0, 3.0], "val_error": 0.1, "test_error": 0.1, "fit_s": 0.1,
             "propose_s": 0.0, "source": "random", "iterations": 5, "converged": True}  # fmt: skip
    return {"dataset": "digits", "method": "random", "seed": 0, "budget": budget, "trials": [trial] * budget}


@pytest.fixture
def learnloss_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None) -> Path:
    """A learnloss results folder holding one run of budget 4 and its table; training fails the test."""
    monkeypatch.setattr(learnloss, "RESULTS", tmp_path)
    monkeypatch.setattr(learnloss, "fit", never)
    runs = tmp_path / "tiny" / "runs"
    runs.mkdir(parents=True)
    (runs / "digits-random-seed0.json").write_text(json.dumps(run_record(4)))
    (tmp_path / "tiny" / "table.md").write_text("the budget-4 table\n")
    return tmp_path / "tiny"


LEARNLOSS_ARGV = ["--datasets", "digits", "--methods", "random", "--seeds", "1", "--name", "tiny"]


def test_learnloss_refuses_a_budget_other_than_its_folders_runs(learnloss_folder, capsys):
    err = refused(learnloss.main, [*LEARNLOSS_ARGV, "--budget", "5"], capsys)
    assert "holds runs of budget 4, not 5" in err and "--budget 4" in err
    assert (learnloss_folder / "table.md").read_text() == "the budget-4 table\n"
    assert not (learnloss_folder / "results.json").exists()


def test_learnloss_refuses_a_damaged_run_file_naming_it(learnloss_folder, capsys):
    path = learnloss_folder / "runs" / "digits-random-seed0.json"
    path.write_text('{"dataset": "digits"')
    err = refused(learnloss.main, [*LEARNLOSS_ARGV, "--budget", "4"], capsys)
    assert f"{path} is damaged" in err and "delete it to run it again" in err
    assert (learnloss_folder / "table.md").read_text() == "the budget-4 table\n"


def test_learnloss_refuses_a_results_folder_that_is_a_file(tmp_path, monkeypatch, one_torch_thread, capsys):
    monkeypatch.setattr(learnloss, "RESULTS", tmp_path)
    monkeypatch.setattr(learnloss, "fit", never)
    (tmp_path / "file").write_text("kept\n")
    err = refused(learnloss.main, [*LEARNLOSS_ARGV[:-1], "file", "--budget", "4"], capsys)
    assert "it is a file, not a folder" in err and (tmp_path / "file").read_text() == "kept\n"


def test_learnloss_summarises_the_runs_of_its_budget(learnloss_folder, capsys):
    learnloss.main([*LEARNLOSS_ARGV, "--budget", "4"])  # every run done: nothing trained, the summary rewritten
    assert len(json.loads((learnloss_folder / "results.json").read_text())["runs"]) == 1
    assert "| digits | random |" in (learnloss_folder / "table.md").read_text()


# ---------------------------------------------------------------------- adalfl_report
def adalfl_run() -> dict:
    """An AdaLFL run file as the comparison writes it, as far as the report reads it."""
    shape = {"p_true": [0.1, 0.9], "loss": [2.0, 0.1]}
    child = {"val_metric": [0.2], "phi": [], "diverged": False, "test_metric": 0.2, "offline_s": 1.0,
             "offline_meta_loss": 0.5, "loss_shape_start": shape, "loss_shape_end": shape}  # fmt: skip
    return {"env": "ALA-Digits-v0", "controller": "adalfl", "seed": 0, "num_children": 1, "env_kwargs": {},
            "wall_s": 3.0, "test_metric": 0.2, "children": [child], "device": "cpu", "versions": {},
            "machine": {"cpu": "Some CPU", "cores": 2, "torch_threads": 1, "gpu": None}}  # fmt: skip


@pytest.mark.parametrize("damage", ["{", json.dumps({**adalfl_run(), "children": [{}]})])
def test_adalfl_report_refuses_a_damaged_run_file_naming_it(damage, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(adalfl_report, "RESULTS", tmp_path)
    path = tmp_path / "tiny" / "runs" / "adalfl-seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text(damage)
    err = refused(adalfl_report.main, ["--name", "tiny"], capsys)
    assert f"{path} is damaged" in err and "ala_gym.benchmarks.compare" in err
    assert not (tmp_path / "tiny" / "adalfl.md").exists()


def test_adalfl_report_refuses_a_ce_file_without_a_matching_ce_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(adalfl_report, "RESULTS", tmp_path)
    (tmp_path / "tiny" / "runs").mkdir(parents=True)
    (tmp_path / "tiny" / "runs" / "adalfl-seed0.json").write_text(json.dumps(adalfl_run()))
    (tmp_path / "ce.json").write_text(json.dumps({"runs": []}))
    err = refused(adalfl_report.main, ["--name", "tiny", "--ce", str(tmp_path / "ce.json")], capsys)
    assert f"--ce {tmp_path / 'ce.json'} holds no ce run of ALA-" in err
    assert not (tmp_path / "tiny" / "adalfl.md").exists()


def test_adalfl_report_takes_ce_runs_of_the_same_settings_and_machine_only_and_names_the_metric(
    tmp_path, monkeypatch, capsys
) -> None:
    """A ce run is the reference only with the same env keywords both ways (a budget the AdaLFL runs left at the
    default is another setting), AdaLFL's own fields and the loss form aside, and on the same machine; the tables
    name the runs' metric (AUCPR on an AUCPR env), not always the error."""
    monkeypatch.setattr(adalfl_report, "RESULTS", tmp_path)
    (tmp_path / "tiny" / "runs").mkdir(parents=True)
    run = {**adalfl_run(), "env": "ALA-FashionMNIST-AUCPR-v0", "env_kwargs": {"device": "cpu", "offline_steps": 5}}
    (tmp_path / "tiny" / "runs" / "adalfl-seed0.json").write_text(json.dumps(run))
    ce = {key: run[key] for key in ("env", "seed", "num_children", "wall_s", "test_metric", "device", "versions", "machine")}
    ce |= {"controller": "ce", "children": run["children"], "env_kwargs": {"device": "cpu", "loss_form": "cross_entropy"}}
    others = [
        {**ce, "env_kwargs": {**ce["env_kwargs"], "total_iterations": 50000}},  # another budget
        {**ce, "machine": {**ce["machine"], "cpu": "Another CPU"}},  # another machine
    ]
    for other in others:
        (tmp_path / "ce.json").write_text(json.dumps({"runs": [other]}))
        err = refused(adalfl_report.main, ["--name", "tiny", "--ce", str(tmp_path / "ce.json")], capsys)
        assert "holds no ce run of ALA-FashionMNIST-AUCPR-v0 on the seeds, env keywords and machine" in err
    (tmp_path / "ce.json").write_text(json.dumps({"runs": [ce]}))
    adalfl_report.main(["--name", "tiny", "--ce", str(tmp_path / "ce.json")])
    text = (tmp_path / "tiny" / "adalfl.md").read_text()
    assert "Test metric: aucpr (%)" in text and "| test aucpr % |" in text and "test error" not in text
    assert "`ce` runs of" in text and "same machine: Some CPU, 2 cores, 1 torch thread(s), GPU: None; device `cpu`): test aucpr 20.00" in text


@pytest.mark.parametrize("content, problem", [("{", "not valid JSON"), ("{}", "has no runs"), ("[]", "a list")])
def test_adalfl_report_refuses_a_ce_file_that_is_no_comparisons_results(content, problem, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(adalfl_report, "RESULTS", tmp_path)
    (tmp_path / "tiny" / "runs").mkdir(parents=True)
    (tmp_path / "tiny" / "runs" / "adalfl-seed0.json").write_text(json.dumps(adalfl_run()))
    (tmp_path / "ce.json").write_text(content)
    err = refused(adalfl_report.main, ["--name", "tiny", "--ce", str(tmp_path / "ce.json")], capsys)
    assert f"{tmp_path / 'ce.json'} is damaged" in err and problem in err and "a comparison that ran ce" in err
    assert not (tmp_path / "tiny" / "adalfl.md").exists()


@pytest.mark.parametrize(
    "ce, message",
    [(None, "no AdaLFL runs in {runs} or {results}; run ala_gym.benchmarks.compare with --controllers adalfl first"),
     ("missing", "{ce} does not exist; give the results.json of a comparison that ran ce"),
     ("folder", "{ce} is a folder, not a file; give the results.json of a comparison that ran ce")],
)  # fmt: skip
def test_adalfl_report_refuses_a_folder_without_runs_or_a_ce_path_of_no_file(ce, message, tmp_path, monkeypatch, capsys):
    """No report from a folder without AdaLFL runs, nor with ``--ce`` naming no file: each says what to give."""
    monkeypatch.setattr(adalfl_report, "RESULTS", tmp_path)
    runs = tmp_path / "tiny" / "runs"
    runs.mkdir(parents=True)
    argv = ["--name", "tiny"]
    if ce is not None:
        (runs / "adalfl-seed0.json").write_text(json.dumps(adalfl_run()))
        if ce == "folder":
            (tmp_path / "ce.json").mkdir()
        argv += ["--ce", str(tmp_path / "ce.json")]
    err = refused(adalfl_report.main, argv, capsys)
    assert message.format(runs=runs, results=tmp_path / "tiny" / "results.json", ce=tmp_path / "ce.json") in err
    assert not (tmp_path / "tiny" / "adalfl.md").exists() and not (tmp_path / "tiny" / "loss_shape.png").exists()


def test_adalfl_report_reads_the_committed_results_where_runs_are_absent_and_names_each_controllers_keywords(
    tmp_path, monkeypatch, capsys
) -> None:
    """A clone has no ``runs/`` (it is not committed): the AdaLFL runs of ``results.json`` make the report, a run
    file replacing its entry there. Keywords every run shares are said once, the others per controller, and each
    controller's wall time is set against ce runs of its own machine; a damaged entry is named."""
    monkeypatch.setattr(adalfl_report, "RESULTS", tmp_path)
    folder = tmp_path / "tiny"
    folder.mkdir()
    few = {**adalfl_run(), "controller": "adalfl@offline_steps=3", "env_kwargs": {"offline_steps": 3}}
    many = {**adalfl_run(), "controller": "adalfl@offline_steps=9", "env_kwargs": {"offline_steps": 9}, "wall_s": 9.0,
            "machine": {**adalfl_run()["machine"], "cpu": "Another CPU"}}  # fmt: skip
    ce = {**adalfl_run(), "controller": "ce", "env_kwargs": {"loss_form": "cross_entropy"}, "wall_s": 2.0}
    (folder / "results.json").write_text(json.dumps({"runs": [ce, few, many]}))
    (folder / "runs").mkdir()
    (folder / "runs" / "adalfl-seed0.json").write_text(json.dumps({**few, "wall_s": 4.0}))  # replaces its entry
    adalfl_report.main(["--name", "tiny", "--ce", str(folder / "results.json")])
    text = (folder / "adalfl.md").read_text()
    assert "- Machines: `adalfl@offline_steps=3` on Some CPU" in text and "`adalfl@offline_steps=9` on Another CPU" in text
    assert "- Env keywords of every run (AdaLFL's own config fields among them): `{}`" in text
    assert '`adalfl@offline_steps=3` `{"offline_steps": 3}`; `adalfl@offline_steps=9` `{"offline_steps": 9}`' in text
    assert "| adalfl@offline_steps=3 | 1 | 20.00 +- 0.00 | 4.0 | 1.0 | 2.00x | 1.50x |" in text  # against ce here
    assert "| adalfl@offline_steps=9 | 1 | 20.00 +- 0.00 | 9.0 | 1.0 | - | - |" in text  # no ce on its machine
    (folder / "runs" / "adalfl-seed0.json").unlink()
    (folder / "results.json").write_text(json.dumps({"runs": [ce, {**few, "children": [{}]}]}))
    err = refused(adalfl_report.main, ["--name", "tiny"], capsys)
    assert f"{folder / 'results.json'} is damaged: runs[1].children[0] has no" in err


# ---------------------------------------------------------------------- reward_agreement
@pytest.mark.parametrize("damage", ["truncated", "list", "folder", "rows"])
def test_reward_agreement_checks_its_saved_results_before_computing(damage, tmp_path, monkeypatch, capsys):
    results = tmp_path / "reward_agreement.json"
    monkeypatch.setattr(reward_agreement, "RESULTS", results)
    monkeypatch.setattr(reward_agreement, "trajectory_rewards", never)
    if damage == "folder":
        results.mkdir()
    else:
        saved = {"truncated": '{"ALA-Digits-v0": {', "list": "[]", "rows": '{"ALA-Foo-v0": {"rows": [{}]}}'}[damage]
        results.write_text(saved)
    err = refused(reward_agreement.main, ["--env", "ALA-Digits-v0", "--sizes", "10", "--seeds", "1"], capsys)
    assert str(results) in err and "move it away" in err


@pytest.mark.parametrize(
    "argv, message",
    [(["--sizes", "10,ten"], "--sizes '10,ten': give whole numbers separated by commas, e.g. 50,200"),
     (["--sizes", "10", "--env-kwargs", "{beta: 1}"], "--env-kwargs is not JSON (Expecting property name"),
     (["--sizes", "10", "--env-kwargs", '{"loss_form": "sigmoid"}'], "--env-kwargs sets loss_form, which the measurement fixes"),
     (["--sizes", "10", "--env", "ALA-FashionMNIST-Triplet-v0"], "ALA-FashionMNIST-Triplet-v0 is no classification env")],
)  # fmt: skip
def test_reward_agreement_names_the_option_it_cannot_read(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reward_agreement, "RESULTS", tmp_path / "reward_agreement.json")
    monkeypatch.setattr(reward_agreement, "trajectory_rewards", never)
    err = refused(reward_agreement.main, ["--env", "ALA-Digits-v0", *argv], capsys)
    assert err.startswith(f"reward_agreement: {message}"), err
    assert not (tmp_path / "reward_agreement.json").exists()


def test_reward_agreement_refuses_a_thread_count_below_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reward_agreement, "RESULTS", tmp_path / "reward_agreement.json")
    monkeypatch.setattr(reward_agreement, "trajectory_rewards", never)
    err = refused(reward_agreement.main, ["--env", "ALA-Digits-v0", "--sizes", "10", "--threads", "0"], capsys)
    assert "--threads must be positive" in err
