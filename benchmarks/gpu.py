"""The measurements that need a GPU, in one command: ``python -m ala_gym.benchmarks.gpu`` (or ``make gpu-check``).

On CUDA it runs, with budgets sized to finish in a few minutes, and writes under ``benchmarks/results/gpu/``:

1. overhead: an env step against plain cross-entropy training of the same child (``benchmarks/overhead.py``)
   on digits, Fashion-MNIST and the CIFAR-10 subset (ResNet-32);
2. throughput: N children batched (one vmap) against one after another (``benchmarks/throughput.py``), the MLP
   on digits and the small CNN on the CIFAR-10 subset, N = 1, 4, 16, 32;
3. one generation of meta-training (``agents/meta_train.py``): wall time and child iterations per second;
4. AdaLFL's step against plain training (``benchmarks/adalfl_cost.py``).

``--tiny`` runs every part at a token budget; the test suite runs it so on the CPU, so the suite cannot rot.
Each part's own report lands in the output folder; ``gpu.md`` lists what ran, on what machine, and how long.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TypedDict

import torch

from ala_gym.benchmarks import adalfl_cost, overhead, throughput
from ala_gym.benchmarks.machine import RESULTS as DEFAULT_RESULTS
from ala_gym.benchmarks.machine import check_out_folder, cpu_model

RESULTS = DEFAULT_RESULTS / "gpu"

# Each part's command-line arguments: full (on a GPU) and tiny (a smoke run anywhere).
PARTS: dict[str, dict[str, list[str]]] = {
    "overhead": {
        "full": ["--configs", "digits", "fashion-mnist", "cifar10-subset", "--repeats", "3"],
        "tiny": ["--configs", "digits", "--repeats", "1", "--steps-per-action", "2"],
    },
    "throughput": {
        "full": ["--models", "mlp", "small_cnn", "--num-envs", "1", "4", "16", "32", "--modes", "native-batched",
                 "native-sequential", "--steps", "3", "--iterations", "10"],
        "tiny": ["--models", "mlp", "--num-envs", "1", "2", "--modes", "native-batched", "native-sequential",
                 "--steps", "1", "--iterations", "2", "--threads", "1"],
    },  # fmt: skip
    "adalfl": {
        "full": ["--tasks", "digits,fashion-mnist,cifar10-subset", "--iterations", "20", "--repeats", "5"],
        "tiny": ["--tasks", "digits", "--iterations", "1", "--repeats", "1"],
    },
}


class MetaGeneration(TypedDict):
    """The size of the timed meta-training generation."""

    population: int
    horizon: tuple[int, int]


META_GENERATION: dict[str, MetaGeneration] = {
    "full": {"population": 8, "horizon": (400, 400)}, "tiny": {"population": 1, "horizon": (20, 20)}
}


def meta_generation(device: str, budget: str, out: Path) -> dict[str, Any]:
    """Time one generation of meta-training on digits; write ``meta_generation.json``."""
    from ala_gym.agents.meta_train import MetaTrainConfig, MetaTrainer

    settings = META_GENERATION[budget]
    config = MetaTrainConfig(
        population=settings["population"], horizon=settings["horizon"], steps_per_action=10 if budget == "tiny" else 20,
        generations=1, env_kwargs={"device": device, "val_subsample": 200},
    )  # fmt: skip
    trainer = MetaTrainer(config)
    start = time.perf_counter()
    (entry,) = trainer.step()  # one task a generation: one entry
    wall = time.perf_counter() - start
    children = 2 * config.population
    result = {
        "device": device, "children": children, "total_iterations": entry["total_iterations"], "wall_s": wall,
        "child_iterations_per_s": children * entry["total_iterations"] / wall, "fitness_mean": entry["fitness_mean"],
    }  # fmt: skip
    (out / "meta_generation.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="every part at a token budget (a smoke run, any device)")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/gpu/)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: error: --device cuda but torch sees no CUDA GPU; run on a GPU machine, or --device cpu --tiny\n")
    budget = "tiny" if args.tiny else "full"
    out = args.out or RESULTS
    check_out_folder(parser, out, ("meta_generation.json", "gpu.md"))
    out.mkdir(parents=True, exist_ok=True)
    runs = {"overhead": overhead.main, "throughput": throughput.main, "adalfl": adalfl_cost.main}
    walls: dict[str, float] = {}
    for name, run in runs.items():
        start = time.perf_counter()
        run(["--device", args.device, *PARTS[name][budget], "--out", str(out)])
        walls[name] = time.perf_counter() - start
        print(f"{name}: {walls[name]:.0f} s", flush=True)
    start = time.perf_counter()
    meta = meta_generation(args.device, budget, out)
    walls["meta_generation"] = time.perf_counter() - start
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    lines = [
        "# GPU suite",
        "",
        f"- Machine: {cpu_model()}, GPU: {gpu}; device `{args.device}`; budget `{budget}`; torch {torch.__version__}",
        f"- Command: `python -m ala_gym.benchmarks.gpu --device {args.device}{' --tiny' if args.tiny else ''}`",
        "",
        "| part | report | wall s |",
        "|---|---|---|",
        f"| overhead | overhead.md | {walls['overhead']:.0f} |",
        f"| throughput | throughput.md | {walls['throughput']:.0f} |",
        f"| AdaLFL step | adalfl_cost.md | {walls['adalfl']:.0f} |",
        f"| one meta-training generation ({meta['children']} children x {meta['total_iterations']} iterations: "
        f"{meta['child_iterations_per_s']:.0f} child iterations/s) | meta_generation.json | {walls['meta_generation']:.0f} |",
    ]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
