"""AdaLFL's extra cost per SGD iteration, against cross-entropy on the same child.

Per task, two children are built from the same seed (same model, initial weights, batches and SGD
settings as the env's child): one trains with ``torch.optim.SGD`` under ``F.cross_entropy`` (the
repository's ``ChildTrainer``, what the ``ce`` controller runs), the other with AdaLFL's online step
(:class:`ala_gym.agents.adalfl.OnlineTrainer`: base step under the loss network through the differentiable
SGD step, meta forward and backward, Adam step on the loss network). Blocks of ``--iterations``
iterations of each alternate ``--repeats`` times (interleaving spreads the load of a shared machine
over both); the table gives the medians per iteration, their ratio, and the cost of one offline
meta step (Algorithm 1, which also rebuilds the child each step). No evaluation is timed.

Usage::

    python -m ala_gym.benchmarks.adalfl_cost                          # digits (MLP), Fashion-MNIST (small CNN)
    python -m ala_gym.benchmarks.adalfl_cost --tasks cifar10 --data-root PATH --repeats 2 --iterations 3 \
        --out runs/adalfl-cost-cifar10                                # ResNet-32
    python -m ala_gym.benchmarks.adalfl_cost --tasks cifar10-subset --out runs/adalfl-cost-subset  # on the subset

Writes ``adalfl_cost.json`` and ``adalfl_cost.md`` under ``benchmarks/results/`` (``--out`` changes it). A report
is written whole: a command that leaves out a task the report there holds is refused (name another ``--out``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from ala_gym.agents.adalfl import AdaLFLConfig, LossNetwork, OnlineTrainer, initialise_offline
from ala_gym.agents.cli import DescriptionFormatter, OneLineParser, recorded_command, run_main
from ala_gym.benchmarks.compare import ComparisonError
from ala_gym.benchmarks.compare.store import read_json
from ala_gym.benchmarks.machine import RESULTS, check_out_folder, cpu_model
from ala_gym.core.data import (
    CIFAR10_SUBSET,
    ClassificationData,
    DataError,
    load_dataset,
    resolve_device,
    with_data_home,
)
from ala_gym.core.files import write_text_atomic
from ala_gym.core.trainer import ChildTrainer, TrainConfig

# The registered envs' child settings (ala_gym/envs/*.py).
TASKS: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits", "model": "mlp"},
    "fashion-mnist": {"dataset": "fashion-mnist", "model": "small_cnn"},
    "cifar10": {"dataset": "cifar10", "model": "resnet32"},
    # The 6,187-image subset in the data home ($ALA_GYM_DATA), as the CIFAR-10 presets and the other benchmarks read it.
    "cifar10-subset": {"dataset": "cifar10", "model": "resnet32", "data_root": CIFAR10_SUBSET},
}


def median_ms(run: Callable[[], Any], device: torch.device, iterations: int) -> Callable[[], float]:
    """A timer of one block: wall ms per iteration, synchronising a CUDA device before reading the clock."""

    def timed() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1000 / iterations

    return timed


def task_data(task: str, device: torch.device, data_root: str | None) -> ClassificationData:
    """The dataset of ``task`` on ``device`` (read once per process: a second call takes it from the cache)."""
    spec = TASKS[task]
    kwargs: dict[str, Any]
    if "data_root" in spec:  # a folder of the data home, never --data-root's
        kwargs = with_data_home({"data_root": spec["data_root"]})
    else:
        kwargs = {"data_root": data_root} if data_root is not None and spec["dataset"] != "digits" else {}
        if spec["dataset"] == "cifar10":
            kwargs["download"] = False
    return load_dataset(spec["dataset"], device=device, **kwargs)


def measure(task: str, device: torch.device, iterations: int, repeats: int, data_root: str | None) -> dict[str, Any]:
    spec = TASKS[task]
    data = task_data(task, device, data_root)
    train = TrainConfig(model=spec["model"], total_iterations=10**6, lr=0.05, weight_decay=5e-4)
    config = AdaLFLConfig()
    ce = ChildTrainer(data, train, seed=0)
    adalfl = OnlineTrainer(ChildTrainer(data, train, seed=0), LossNetwork(config, torch.Generator().manual_seed(1)).to(device), config, 2)
    offline_network = LossNetwork(config, torch.Generator().manual_seed(3)).to(device)
    offline_config = AdaLFLConfig(offline_steps=iterations)

    time_ce = median_ms(lambda: ce.train(iterations, F.cross_entropy), device, iterations)
    time_adalfl = median_ms(lambda: adalfl.train(iterations), device, iterations)
    time_offline = median_ms(lambda: initialise_offline(offline_network, data, train, offline_config, 4), device, iterations)
    for timer in (time_ce, time_adalfl, time_offline):  # warm-up: allocator, first-call dispatch
        timer()
    samples: dict[str, list[float]] = {"ce": [], "adalfl": [], "offline": []}
    for _ in range(repeats):
        samples["ce"].append(time_ce())
        samples["adalfl"].append(time_adalfl())
        samples["offline"].append(time_offline())
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "task": task,
        "model": spec["model"],
        "device": str(device),
        "iterations_per_block": iterations,
        "repeats": repeats,
        "ms_per_iteration": medians,
        "samples_ms": samples,
        "adalfl_vs_ce": medians["adalfl"] / medians["ce"],
        "offline_step_vs_ce": medians["offline"] / medians["ce"],
    }


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        "# AdaLFL: cost per SGD iteration against cross-entropy",
        "",
        f"- Machine: {header['cpu']}, {header['torch_threads']} torch thread(s), GPU: {header['gpu']}; "
        f"torch {header['torch']}; {header['date']}",
        f"- {header['note']}",
        "- Same child, seed, batch size 128 and SGD settings (lr 0.05, momentum 0.9, weight decay 5e-4) on both sides;",
        "  medians over interleaved blocks; no evaluation timed. `offline step`: one meta step of Algorithm 1",
        "  (fresh child weights, one unrolled step), the unit of the offline phase's cost.",
        f"- Command: `{header['command']}`",
        "",
        "| task | model | device | ce ms/it | adalfl ms/it | adalfl / ce | offline step ms | offline step / ce |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ms = row["ms_per_iteration"]
        lines.append(
            f"| {row['task']} | {row['model']} | {row['device']} | {ms['ce']:.2f} | {ms['adalfl']:.2f} | "
            f"{row['adalfl_vs_ce']:.2f}x | {ms['offline']:.2f} | {row['offline_step_vs_ce']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=DescriptionFormatter)
    parser.add_argument("--tasks", default="digits,fashion-mnist", help=f"comma-separated, from {sorted(TASKS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved blocks per method")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data-root", help="folder of the dataset files (Fashion-MNIST, CIFAR-10); default: the loader's "
                        "(cifar10-subset is the data home's: $ALA_GYM_DATA)")
    parser.add_argument("--note", default="", help="a line on the machine's state (e.g. cores shared with other work)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.exit(2, f"unknown tasks {unknown}; choose from {sorted(TASKS)}\n")
    if args.iterations < 1 or args.repeats < 1 or args.threads < 1:
        parser.exit(2, "--iterations, --repeats and --threads must be positive\n")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.exit(2, f"--device: {error}\n")
    out = Path(args.out)
    check_out_folder(parser, out, ("adalfl_cost.json", "adalfl_cost.md"))
    if (out / "adalfl_cost.json").is_file():  # the report is rewritten whole: a saved task left out would go unseen
        try:
            saved = read_json(out / "adalfl_cost.json", {"rows": [{"task": str}]}, "restore it (git checkout), or move it away")
        except ComparisonError as error:
            parser.exit(2, f"{error}\n")
        if left := [row["task"] for row in saved["rows"] if row["task"] not in tasks]:
            parser.exit(2, f"{out / 'adalfl_cost.json'} holds rows of {', '.join(left)}, which this command leaves out; "
                           "add them to --tasks, or name another --out\n")  # fmt: skip
    torch.set_num_threads(args.threads)
    for task in tasks:  # every task's data before the first is measured
        try:
            task_data(task, device, args.data_root)
        except (DataError, FileNotFoundError) as error:
            parser.exit(2, f"{task}: {error}\n")
    rows = []
    for task in tasks:
        rows.append(measure(task, device, args.iterations, args.repeats, args.data_root))
        print(json.dumps({k: rows[-1][k] for k in ("task", "ms_per_iteration", "adalfl_vs_ce")}), flush=True)
    header = {
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "note": args.note or "no note on the machine's load",
        "command": recorded_command("ala_gym.benchmarks.adalfl_cost", sys.argv[1:] if argv is None else argv),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "adalfl_cost.json", json.dumps({"header": header, "rows": rows}, indent=1))
    table = markdown(rows, header)
    write_text_atomic(out / "adalfl_cost.md", table)
    print(table)


if __name__ == "__main__":
    run_main(main, "nothing was written (the report is written once every task is measured); the same command measures again")
