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
