"""What every benchmark result records about the machine it ran on."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from ala_gym.core.machine import cpu_model, load_average, peak_rss_mib

T = TypeVar("T")

__all__ = [
    "RESULTS",
    "check_out_folder",
    "cpu_model",
    "float32_precision",
    "load_average",
    "package_version",
    "peak_rss_mib",
]

RESULTS = Path("benchmarks") / "results"
"""Where the benchmarks write by default: relative to the current directory (from a clone's root, the committed
results), never inside the installed package."""


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (e.g. an optional extra's package), None if it is not
    installed; read from its metadata, so the package itself is never imported."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_out_folder(parser: argparse.ArgumentParser, out: Path, files: tuple[str, ...] = ()) -> None:
    """Exit 2 in one line if ``out`` cannot become the folder a report is written to (it, or a folder above it,
    is a file), or holds a folder where the report's ``files`` go. Asked before measuring: a report is written
    only once its measuring is done."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                fix = "name a folder (it is created if missing)"
                parser.exit(2, f"{parser.prog}: error: --out {out}: {path} is a file, not a folder; {fix}\n")
            break
    for name in files:
        if (out / name).is_dir():
            parser.exit(2, f"{parser.prog}: error: --out {out}: {out / name} is a folder where the report goes; move it away\n")


def render_saved(parser: argparse.ArgumentParser, path: Path, render: Callable[[], T], fix: str) -> T:
    """``render()``, a report of the saved file ``path``: a file that parses but lacks what the report reads
    (edited by hand, or cut down) ends the command in one line (exit status 2) that names it and ``fix``."""
    try:
        return render()
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        parser.exit(2, f"{parser.prog}: error: {path} is damaged: it lacks what the report reads "
                       f"({type(error).__name__}: {error}); {fix}\n")  # fmt: skip


def float32_precision() -> str:
    """How CUDA computes float32 matrix products and cuDNN float32 convolutions in this process: in TF32 or in
    IEEE float32 (torch's defaults differ between the two), as a report of CUDA timings states beside them."""
    import torch

    def mode(tf32: bool) -> str:
        return "TF32" if tf32 else "IEEE float32"

    return (f"matrix products {mode(torch.backends.cuda.matmul.allow_tf32)}, "
            f"cuDNN convolutions {mode(torch.backends.cudnn.allow_tf32)}")  # fmt: skip
