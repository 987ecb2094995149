"""The machine under the process: retain_freed_memory (under glibc, the memory of freed activations is reused
without page faults; elsewhere nothing is touched) and cpu_model, the CPU name results record."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from ala_gym.core import machine
from ala_gym.core.allocator import retain_freed_memory

# A small convolutional child's forward and backward at batch 128: about 10,000 pages (40 MB) of
# activations a step. Under glibc's default thresholds part of them goes back to the kernel after
# some steps and is faulted in again on the next; retained, it is reused once the heap has settled.
PROGRAM = """
import resource, torch
from torch import nn
from ala_gym.core.allocator import retain_freed_memory
torch.set_num_threads(1)
retained = retain_freed_memory()
generator = torch.Generator().manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
    nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32 * 32, 10),
)
inputs, labels = torch.randn(128, 3, 32, 32, generator=generator), torch.randint(10, (128,), generator=generator)
def step():
    torch.autograd.grad(nn.functional.cross_entropy(model(inputs), labels), list(model.parameters()))
for _ in range(8):
    step()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(retained, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_retained_memory_is_reused_without_page_faults() -> None:
    retained, faults = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True
    ).stdout.split()
    assert retained == "True"
    # Over 10 steps, fewer faults than two steps' activation pages (the settled heap still moves a little).
    assert int(faults) < 20_000, faults


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where platform names no glibc (macOS, musl), the C library is not even loaded (mallopt is glibc's): False."""
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: pytest.fail("the C library was loaded"))
    assert retain_freed_memory() is False


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(None, "aarch64"), ("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n", "aarch64"),
     ("processor\t: 0\nmodel name\t: Some CPU @ 2.00GHz\n", "Some CPU @ 2.00GHz")],
    ids=["no-cpuinfo", "cpuinfo-without-model-name", "model-name"],
)  # fmt: skip
def test_cpu_model_is_cpuinfos_model_name_else_platforms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpuinfo: str | None, expected: str
) -> None:
    """macOS has no /proc/cpuinfo and ARM Linux's names no model: what platform knows is recorded instead."""
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    monkeypatch.setattr(machine, "Path", lambda _: path)
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert machine.cpu_model() == expected
