"""retain_freed_memory: under glibc, the memory of freed activations is reused without page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

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
