"""The GPU suite runs end to end at a token budget on the CPU, so that it is ready when a GPU is."""

from __future__ import annotations

import json

import pytest
import torch

from ala_gym.benchmarks import gpu
from ala_gym.core.metric_learning import SeededMiner


def test_the_tiny_suite_writes_every_report(tmp_path, monkeypatch) -> None:
    mined = []  # the metric-learning path runs the miner (the distance mixture's), which only it exercises
    miner_call = SeededMiner.__call__
    monkeypatch.setattr(SeededMiner, "__call__", lambda self, *args: mined.append(1) or miner_call(self, *args))
    gpu.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    assert mined
    for report in ("overhead.md", "throughput.md", "adalfl_cost.md", "meta_generation.json", "device_paths.json", "gpu.md"):
        assert (tmp_path / report).stat().st_size > 0, report
    meta = json.loads((tmp_path / "meta_generation.json").read_text())
    assert meta["children"] == 2 and meta["child_iterations_per_s"] > 0
    paths = json.loads((tmp_path / "device_paths.json").read_text())
    assert [(p["env"], p.get("model"), p["train_mode"]) for p in paths] == [
        ("ALA-Digits-v0", "resnet20", "batched"), ("ALA-FashionMNIST-Margin-v0", None, "sequential")
    ]
    for path in paths:  # every child ran its whole episode: its test metric was measured
        assert len(path["test_metric"]) == path["num_envs"] and all(0 <= value <= 1 for value in path["test_metric"])
    table = (tmp_path / "gpu.md").read_text()
    assert "| one meta-training generation" in table
    assert "| device paths: ALA-Digits-v0, ALA-FashionMNIST-Margin-v0 |" in table
    assert "failed" not in table and "Left out" not in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_in_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        gpu.main(["--device", "cuda"])
    assert caught.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("tiny", [False, True])
def test_every_part_runs_on_the_device_asked_for_at_its_budget(tmp_path, monkeypatch, tiny: bool) -> None:
    """On a GPU machine (faked here: the parts are replaced by recorders) each part gets ``--device cuda`` and the
    arguments of the budget asked for, and the meta-training generation runs its children on CUDA too."""
    calls: dict[str, list[str]] = {}
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu.torch.cuda, "get_device_name", lambda index: "Some GPU")
    for name, module in (("overhead", gpu.overhead), ("throughput", gpu.throughput), ("adalfl", gpu.adalfl_cost)):
        monkeypatch.setattr(module, "main", lambda argv, name=name: calls.setdefault(name, argv))
    meta = {"children": 16, "total_iterations": 400, "child_iterations_per_s": 1.0}
    monkeypatch.setattr(gpu, "meta_generation", lambda device, budget, out: calls.setdefault("meta", [device, budget]) and meta)
    monkeypatch.setattr(gpu, "device_paths", lambda device, budget, out, datasets: calls.setdefault("paths", [device, budget]))
    monkeypatch.setattr(gpu, "data_problems", lambda device, budget, datasets: calls.setdefault("data", [device, budget]) and [])
    gpu.main(["--device", "cuda", "--out", str(tmp_path), *(["--tiny"] if tiny else [])])
    budget = "tiny" if tiny else "full"
    for name in ("overhead", "throughput", "adalfl"):
        assert calls[name] == ["--device", "cuda", *gpu.part_args(name, budget), "--out", str(tmp_path)]
    assert calls["meta"] == calls["paths"] == calls["data"] == ["cuda", budget]
    assert "GPU: Some GPU; device `cuda`" in (tmp_path / "gpu.md").read_text()
    if not tiny:  # a hung measuring process costs minutes, not the whole suite's time
        assert gpu.part_args("throughput", "full")[-2:] == ["--timeout", "120"]


def test_a_part_that_fails_is_named_and_the_others_run_on(tmp_path, monkeypatch, capsys) -> None:
    ran = []

    def refuses(argv: list[str]) -> None:
        ran.append("throughput")
        raise SystemExit(2)

    def breaks(argv: list[str]) -> None:
        ran.append("overhead")
        raise RuntimeError("CUDA error: out of memory\nmore lines")

    monkeypatch.setattr(gpu.overhead, "main", breaks)
    monkeypatch.setattr(gpu.throughput, "main", refuses)
    monkeypatch.setattr(gpu.adalfl_cost, "main", lambda argv: ran.append("adalfl"))
    monkeypatch.setattr(gpu, "meta_generation", lambda device, budget, out: ran.append("meta") or {})
    monkeypatch.setattr(gpu, "device_paths", lambda device, budget, out, datasets: ran.append("paths"))
    monkeypatch.setattr(gpu, "data_problems", lambda device, budget, datasets: [])
    with pytest.raises(SystemExit) as caught:
        gpu.main(["--device", "cpu", "--out", str(tmp_path)])
    assert caught.value.code == 1 and ran == ["overhead", "throughput", "adalfl", "meta", "paths"]
    table = (tmp_path / "gpu.md").read_text()
    assert "| overhead | failed: RuntimeError: CUDA error: out of memory |" in table
    assert "| throughput | failed: exited with status 2 (its message is in the output) |" in table
    assert "| AdaLFL step | adalfl_cost.md |" in table and "| one meta-training generation | meta_generation.json |" in table
    assert "overhead: 0 s, failed: RuntimeError: CUDA error: out of memory" in capsys.readouterr().out


def test_missing_data_is_named_before_any_part_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path / "empty"))  # no cifar10-subset/ there
    problems = gpu.data_problems("cpu", "full")
    assert [problem.split(":")[0] for problem in problems] == ["cifar10-subset", "ALA-CIFAR10-v0"]
    assert all("cifar10-subset" in problem for problem in problems)
    monkeypatch.setattr(gpu.overhead, "main", lambda argv: pytest.fail("a part ran"))
    with pytest.raises(SystemExit) as caught:
        gpu.main(["--device", "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and problems[0] in err
    assert not (tmp_path / "out").exists()


def test_skipped_datasets_are_left_out_of_every_part_and_named(tmp_path, monkeypatch) -> None:
    """A machine without the CIFAR-10 subset and Fashion-MNIST still runs every part on digits: their data is not
    asked for, each part gets only digits' runs, the device paths run only the one on digits (metric learning, with
    its miner), and gpu.md says what was left out."""
    calls: dict[str, list[str]] = {}
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path / "empty"))  # no cifar10-subset/ there
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu.torch.cuda, "get_device_name", lambda index: "Some GPU")
    monkeypatch.setattr(gpu.overhead, "data_problem", lambda name, device: None if name == "digits" else f"{name}: absent")
    for name, module in (("overhead", gpu.overhead), ("throughput", gpu.throughput), ("adalfl", gpu.adalfl_cost)):
        monkeypatch.setattr(module, "main", lambda argv, name=name: calls.setdefault(name, argv))
    monkeypatch.setattr(gpu, "meta_generation", lambda device, budget, out: {})
    monkeypatch.setattr(gpu, "device_paths", lambda device, budget, out, datasets: calls.setdefault("paths", list(datasets)))
    checks = gpu.data_problems  # the data checked as on the GPU, here on the CPU (no GPU to load onto)
    monkeypatch.setattr(gpu, "data_problems", lambda device, budget, datasets: checks("cpu", budget, datasets))
    gpu.main(["--device", "cuda", "--out", str(tmp_path / "out"), "--skip", "fashion-mnist", "--skip", "cifar10-subset"])
    assert calls["overhead"][2:5] == ["--configs", "digits", "--repeats"]
    throughput_args = calls["throughput"]
    assert throughput_args[throughput_args.index("--models") + 1 : throughput_args.index("--num-envs")] == ["mlp"]
    assert calls["adalfl"][calls["adalfl"].index("--tasks") + 1] == "digits"
    assert calls["paths"] == ["digits"]
    (metric_learning,) = gpu.device_path_runs("full", ("digits",))
    assert metric_learning[0] == "ALA-FashionMNIST-Margin-v0" and metric_learning[1]["loss_form"] == "mixture"
    table = (tmp_path / "out" / "gpu.md").read_text()
    assert "--skip fashion-mnist cifar10-subset`" in table and "- Left out: the runs on fashion-mnist, cifar10-subset" in table
    assert "| device paths: ALA-FashionMNIST-Margin-v0 |" in table
    assert [env_id for env_id, _ in gpu.device_path_runs("full", ("digits", "cifar10-subset"))] == [
        "ALA-CIFAR10-v0", "ALA-FashionMNIST-Margin-v0"]


def test_digits_cannot_be_skipped(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        gpu.main(["--device", "cpu", "--skip", "digits"])
    assert caught.value.code == 2 and "invalid choice: 'digits'" in capsys.readouterr().err


def test_the_full_adalfl_part_finds_the_data_of_every_task(tmp_path, tiny_cifar_dir, monkeypatch) -> None:
    """The full budget's AdaLFL tasks read their data where the other parts do (the CIFAR-10 subset from the data
    home): every task's data is checked before the first is measured, so reaching the measuring means all were found."""

    class Measured(Exception):
        pass

    (tmp_path / "cifar10-subset").symlink_to(tiny_cifar_dir)
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path))
    monkeypatch.setattr(gpu.adalfl_cost, "measure", lambda *args: (_ for _ in ()).throw(Measured()))
    argv = gpu.part_args("adalfl", "full")
    assert argv[argv.index("--tasks") + 1].split(",") == ["digits", "fashion-mnist", "cifar10-subset"]
    with pytest.raises(Measured):
        gpu.adalfl_cost.main(["--device", "cpu", *argv, "--out", str(tmp_path / "out")])


def test_the_timed_generation_trains_its_children_on_the_device_given(tmp_path, monkeypatch) -> None:
    from ala_gym.agents import meta_train

    made = []

    class Recorder:
        def __init__(self, config) -> None:
            made.append(config)

        def step(self) -> list[dict]:
            return [{"total_iterations": 400, "fitness_mean": -0.1}]

    monkeypatch.setattr(meta_train, "MetaTrainer", Recorder)
    result = gpu.meta_generation("cuda", "full", tmp_path)
    assert made[0].env_kwargs["device"] == "cuda" and made[0].population == gpu.META_GENERATION["full"]["population"]
    assert result["device"] == "cuda" and result["children"] == 2 * made[0].population


def test_the_full_metric_learning_path_runs_and_mines_on_the_cpu(tmp_path, monkeypatch) -> None:
    """The full budget's device path on digits, as the GPU would run it (a few seconds on a CPU): its settings are
    valid for digits' training classes, and its loss mines triplets, the path only it exercises."""
    mined = []
    miner_call = SeededMiner.__call__
    monkeypatch.setattr(SeededMiner, "__call__", lambda self, *args: mined.append(1) or miner_call(self, *args))
    (path,) = gpu.device_paths("cpu", "full", tmp_path, ("digits",))
    assert path["train_mode"] == "sequential" and len(path["test_metric"]) == path["num_envs"] == 2
    assert len(mined) == 2 * path["total_iterations"]  # once per child and SGD iteration
