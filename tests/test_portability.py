"""The tests that compare floats hold on any CPU: run here under each SIMD dispatch level torch knows.

torch picks its CPU kernels by the processor's instruction set (AVX-512, AVX2 or none), and kernels of
different levels sum in different orders. ``ATEN_CPU_CAPABILITY`` forces a level for a whole process, so
these subprocesses see what a machine of each kind would compute: the recorded golden trajectories must
match within their float32 room, and the within-process determinism tests (same seed twice, single env
against the vector env) must stay bit for bit, at every level. oneDNN, which computes the convolutions,
picks its kernels by the processor on its own: ``ONEDNN_MAX_CPU_ISA`` caps them, and the last level runs
both libraries at their oldest kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FLOAT_COMPARING_TESTS = [
    "tests/test_golden.py",
    "tests/test_env.py::test_determinism",
    "tests/test_vector.py::test_sequential_vector_env_equals_single_envs_bit_for_bit",
    "tests/test_trainer.py",
]


@pytest.mark.parametrize("capability, onednn", [("default", None), ("avx2", None), ("default", "SSE41")])
def test_float_comparisons_hold_under_each_dispatch_level(capability: str, onednn: str | None) -> None:
    if torch.backends.cpu.get_cpu_capability().lower() == capability and onednn is None:
        pytest.skip(f"{capability} is this CPU's own level: the suite itself runs these tests at it")
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    environment = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "1"}
    if onednn is not None:
        environment["ONEDNN_MAX_CPU_ISA"] = onednn
    # A CPU without AVX2 runs its best level instead: the forced level is what this test checks.
    level = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, check=True)
    if level.stdout.strip().lower() != capability:
        pytest.skip(f"this CPU cannot run torch's {capability} kernels (it runs {level.stdout.strip()})")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not ray", *FLOAT_COMPARING_TESTS]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    settings = f"ATEN_CPU_CAPABILITY={capability}" + (f" ONEDNN_MAX_CPU_ISA={onednn}" if onednn else "")
    assert result.returncode == 0, f"under {settings}:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
