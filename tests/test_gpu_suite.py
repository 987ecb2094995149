"""The GPU suite runs end to end at a token budget on the CPU, so that it is ready when a GPU is."""

from __future__ import annotations

import json

import pytest
import torch

from ala_gym.benchmarks import gpu


def test_the_tiny_suite_writes_every_report(tmp_path) -> None:
    gpu.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    for report in ("overhead.md", "throughput.md", "adalfl_cost.md", "meta_generation.json", "gpu.md"):
        assert (tmp_path / report).stat().st_size > 0, report
    meta = json.loads((tmp_path / "meta_generation.json").read_text())
    assert meta["children"] == 2 and meta["child_iterations_per_s"] > 0
    assert "| one meta-training generation" in (tmp_path / "gpu.md").read_text()


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
    gpu.main(["--device", "cuda", "--out", str(tmp_path), *(["--tiny"] if tiny else [])])
    budget = "tiny" if tiny else "full"
    for name in ("overhead", "throughput", "adalfl"):
        assert calls[name] == ["--device", "cuda", *gpu.PARTS[name][budget], "--out", str(tmp_path)]
    assert calls["meta"] == ["cuda", budget]
    assert "GPU: Some GPU; device `cuda`" in (tmp_path / "gpu.md").read_text()


def test_the_full_adalfl_part_finds_the_data_of_every_task(tmp_path, tiny_cifar_dir, monkeypatch) -> None:
    """The full budget's AdaLFL tasks read their data where the other parts do (the CIFAR-10 subset from the data
    home): every task's data is checked before the first is measured, so reaching the measuring means all were found."""

    class Measured(Exception):
        pass

    (tmp_path / "cifar10-subset").symlink_to(tiny_cifar_dir)
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path))
    monkeypatch.setattr(gpu.adalfl_cost, "measure", lambda *args: (_ for _ in ()).throw(Measured()))
    argv = gpu.PARTS["adalfl"]["full"]
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
