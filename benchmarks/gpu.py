"""The measurements that need a GPU, in one command: ``python -m ala_gym.benchmarks.gpu`` (or ``make gpu-check``).

On CUDA it runs, with budgets sized to finish in a few minutes, and writes under ``benchmarks/results/gpu/``:

1. overhead: an env step against plain cross-entropy training of the same child (``benchmarks/overhead.py``)
   on digits, Fashion-MNIST and the CIFAR-10 subset (ResNet-32);
2. throughput: N children batched (one forward and backward for all) against one after another and against the single env
   (``benchmarks/throughput.py``), the MLP on digits and the small CNN on the CIFAR-10 subset, N = 1, 4, 16, 32;
3. one generation of meta-training (``agents/meta_train.py``): wall time and child iterations per second;
4. AdaLFL's step against plain training (``benchmarks/adalfl_cost.py``);
5. the device paths the parts above leave out, each run through one whole episode: a batched vector env of
   ResNet-32 children (vmap over BatchNorm, the CUDA default for several ResNet children) and a metric-learning
   env (class-balanced batches, the distance-weighted miner of the distance mixture, ``loss_form="mixture"``) on
   digits, which every machine has. What each ran and its final test metric go to ``device_paths.json``.

``--tiny`` runs every part at a token budget; the test suite runs it so on the CPU, so the suite cannot rot.
Each part's own report lands in the output folder; ``gpu.md`` lists what ran, on what machine (with the float32
precision of CUDA's matrix products and cuDNN's convolutions: TF32 or IEEE), and how long. Every dataset is
checked before the first part starts; a part that fails is named in ``gpu.md`` with its error and the others
run on (exit status 1 at the end). ``--skip fashion-mnist cifar10-subset`` leaves out the runs on datasets that a
machine lacks (digits is embedded); ``gpu.md`` names them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

import gymnasium as gym
import numpy as np
import torch

import ala_gym  # noqa: F401  (registers the env ids)
from ala_gym.agents.cli import OneLineParser, run_main
from ala_gym.benchmarks import adalfl_cost, overhead, throughput
from ala_gym.benchmarks.machine import RESULTS as DEFAULT_RESULTS
from ala_gym.benchmarks.machine import check_out_folder, cpu_model, float32_precision
from ala_gym.core.data import DataError, with_data_home
from ala_gym.core.files import write_text_atomic
from ala_gym.envs.spec import task_spec
from ala_gym.envs.vector import ALAVectorEnv

RESULTS = DEFAULT_RESULTS / "gpu"

DATASETS = ("digits", "fashion-mnist", "cifar10-subset")
"""The datasets of the full budget. Every one but digits (embedded in scikit-learn) can be left out with ``--skip``
on a machine that lacks it; the runs on it are then left out of each part, and ``gpu.md`` says so."""

# Each part's command-line arguments at the tiny budget (a smoke run anywhere, on digits).
TINY_PARTS: dict[str, list[str]] = {
    "overhead": ["--configs", "digits", "--repeats", "1", "--steps-per-action", "2"],
    "throughput": ["--models", "mlp", "--num-envs", "1", "2", "--modes", "native-batched", "native-sequential",
                   "--steps", "1", "--iterations", "2", "--threads", "1"],
    "adalfl": ["--tasks", "digits", "--iterations", "1", "--repeats", "1"],
}  # fmt: skip


def part_args(name: str, budget: str, datasets: Sequence[str] = DATASETS) -> list[str]:
    """The command-line arguments of part ``name`` (``overhead``, ``throughput`` or ``adalfl``) at ``budget``, on
    ``datasets`` (those of :data:`DATASETS` not left out; digits is always among them)."""
    if budget == "tiny":
        return TINY_PARTS[name]
    if name == "overhead":
        return ["--configs", *datasets, "--repeats", "3"]
    if name == "throughput":  # the MLP on digits; the small CNN on the CIFAR-10 subset
        models = ["mlp", *(["small_cnn"] if "cifar10-subset" in datasets else [])]
        # With the single env: the batched target's ratio, and the bounds that the kernels alone set to it.
        return ["--models", *models, "--num-envs", "1", "4", "16", "32", "--modes", "single", "native-batched",
                "native-sequential", "--steps", "3", "--iterations", "10", "--timeout", "120"]  # fmt: skip
    return ["--tasks", ",".join(datasets), "--iterations", "20", "--repeats", "5"]


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
    write_text_atomic(out / "meta_generation.json", json.dumps(result, indent=1) + "\n")
    return result


# The device paths no other part runs: (dataset, env id, vector env keywords) per budget, each run through one episode.
DEVICE_PATHS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "full": [
        ("cifar10-subset", "ALA-CIFAR10-v0", {"model": "resnet32", "data_root": "cifar10-subset", "num_envs": 4,
                                              "train_mode": "batched", "total_iterations": 20, "steps_per_action": 10,
                                              "val_subsample": 256}),
        ("digits", "ALA-FashionMNIST-Margin-v0", {"dataset": "digits", "loss_form": "mixture", "num_envs": 2,
                                                  "total_iterations": 20, "steps_per_action": 10, "batch_size": 20,
                                                  "samples_per_class": 4}),
    ],
    "tiny": [
        ("digits", "ALA-Digits-v0", {"model": "resnet20", "num_envs": 2, "train_mode": "batched",
                                     "total_iterations": 2, "steps_per_action": 1, "batch_size": 8, "eval_points": 1,
                                     "val_subsample": 50}),
        ("fashion-mnist", "ALA-FashionMNIST-Margin-v0", {"loss_form": "mixture", "num_envs": 2, "total_iterations": 2,
                                                         "steps_per_action": 1, "batch_size": 16, "samples_per_class": 4,
                                                         "eval_points": 1, "val_size": 40}),
    ],
}  # fmt: skip


def device_path_runs(budget: str, datasets: Sequence[str] = DATASETS) -> list[tuple[str, dict[str, Any]]]:
    """The (env id, keywords) of :data:`DEVICE_PATHS` at ``budget`` whose dataset is among ``datasets``."""
    return [(env_id, settings) for dataset, env_id, settings in DEVICE_PATHS[budget] if dataset in datasets]


def device_paths(device: str, budget: str, out: Path, datasets: Sequence[str] = DATASETS) -> list[dict[str, Any]]:
    """Run each of :func:`device_path_runs` through one whole episode on ``device`` (seed 0, actions sampled from
    the action space); write ``device_paths.json``."""
    results = []
    for env_id, settings in device_path_runs(budget, datasets):
        kwargs = with_data_home({**settings, "device": device})
        start = time.perf_counter()
        envs = gym.make_vec(env_id, **kwargs)
        envs.action_space.seed(0)
        envs.reset(seed=0)
        done = np.zeros(envs.num_envs, dtype=bool)
        test_metrics = np.full(envs.num_envs, np.nan)
        while not done.all():
            _, _, terminated, truncated, infos = envs.step(envs.action_space.sample())
            ended = (terminated | truncated) & ~done
            if ended.any():  # present, masked, for the children whose episode ended this step
                test_metrics[ended] = np.asarray(infos["test_metric"])[ended]
            done |= ended
        assert isinstance(envs.unwrapped, ALAVectorEnv)  # what make_vec builds for an ALA id
        train_mode = envs.unwrapped.train_mode
        envs.close()
        results.append({"env": env_id, **{k: v for k, v in settings.items() if k != "data_root"}, "device": device,
                        "train_mode": train_mode, "wall_s": time.perf_counter() - start,
                        "test_metric": test_metrics.tolist()})  # fmt: skip
    write_text_atomic(out / "device_paths.json", json.dumps(results, indent=1) + "\n")
    return results


def data_problems(device: str, budget: str, datasets: Sequence[str] = DATASETS) -> list[str]:
    """What keeps a part from running (a dataset missing or damaged), one line each; asked before the first part,
    so that no part's minutes are spent before a later part's data turns out to be absent. The overhead part's
    datasets are those of the overhead, throughput and AdaLFL parts; the device paths' are checked beside them."""
    args = part_args("overhead", budget, datasets)
    configs = args[1 : args.index("--repeats")]
    problems = [problem for name in configs if (problem := overhead.data_problem(name, torch.device(device)))]
    for env_id, settings in device_path_runs(budget, datasets):
        keywords = {k: v for k, v in settings.items() if k not in ("num_envs", "train_mode")}
        try:  # a missing subset folder is named by with_data_home, a damaged one by the load
            task_spec(env_id, **with_data_home({**keywords, "device": device})).data.load()
        except DataError as error:
            problems.append(f"{env_id}: {error}")
    return problems


def run_part(name: str, run: Callable[[], Any]) -> tuple[float, str | None]:
    """Wall seconds of ``run()`` and its error in one line (None if it finished): a part that fails, or refuses
    its input, must not lose the parts after it."""
    start = time.perf_counter()
    error = None
    try:
        run()
    except SystemExit as stop:  # a part's own refusal; its message is already on stderr
        if stop.code not in (0, None):
            error = f"exited with status {stop.code} (its message is in the output)"
    except Exception as exc:  # noqa: BLE001  (any failure: recorded, and the next part runs)
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    wall = time.perf_counter() - start
    print(f"{name}: {wall:.0f} s" + (f", failed: {error}" if error else ""), flush=True)
    return wall, error


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="every part at a token budget (a smoke run, any device)")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/gpu/)")
    parser.add_argument("--skip", nargs="+", action="extend", default=[], choices=DATASETS[1:], metavar="DATASET",
                        help=f"leave out the runs on these datasets ({', '.join(DATASETS[1:])}), on a machine that "
                             "lacks them; gpu.md names what was left out")  # fmt: skip
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: error: --device cuda but torch sees no CUDA GPU; run on a GPU machine, or --device cpu --tiny\n")
    budget = "tiny" if args.tiny else "full"
    args.skip = list(dict.fromkeys(args.skip))  # once each, in the order given (--skip may repeat)
    datasets = tuple(name for name in DATASETS if name not in args.skip)
    out = args.out or RESULTS
    check_out_folder(parser, out, ("meta_generation.json", "device_paths.json", "gpu.md"))
    if problems := data_problems(args.device, budget, datasets):
        parser.exit(2, f"{parser.prog}: error: {problems[0]}\n")
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, Callable[[], Any]] = {
        name: partial(run, ["--device", args.device, *part_args(name, budget, datasets), "--out", str(out)])
        for name, run in (("overhead", overhead.main), ("throughput", throughput.main), ("adalfl", adalfl_cost.main))
    }  # fmt: skip
    meta: dict[str, Any] = {}
    parts["meta_generation"] = lambda: meta.update(meta_generation(args.device, budget, out))
    if device_path_runs(budget, datasets):
        parts["device_paths"] = lambda: device_paths(args.device, budget, out, datasets)
    outcomes = {name: run_part(name, run) for name, run in parts.items()}
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    described = {
        "overhead": ("overhead", "overhead.md"),
        "throughput": ("throughput", "throughput.md"),
        "adalfl": ("AdaLFL step", "adalfl_cost.md"),
        "meta_generation": (
            f"one meta-training generation ({meta['children']} children x {meta['total_iterations']} iterations: "
            f"{meta['child_iterations_per_s']:.0f} child iterations/s)" if meta else "one meta-training generation",
            "meta_generation.json",
        ),
        "device_paths": (
            f"device paths: {', '.join(env_id for env_id, _ in device_path_runs(budget, datasets))}",
            "device_paths.json",
        ),
    }
    lines = [
        "# GPU suite",
        "",
        f"- Machine: {cpu_model()}, GPU: {gpu}; device `{args.device}`; budget `{budget}`; torch {torch.__version__}",
        f"- float32 on CUDA: {float32_precision()}",
        f"- Command: `python -m ala_gym.benchmarks.gpu --device {args.device}{' --tiny' if args.tiny else ''}"
        + (f" --skip {' '.join(args.skip)}`" if args.skip else "`"),
        *([f"- Left out: the runs on {', '.join(args.skip)}"] if args.skip else []),
        "",
        "| part | report | wall s |",
        "|---|---|---|",
    ]
    for name, (wall, error) in outcomes.items():
        part, report = described[name]
        lines.append(f"| {part} | {'failed: ' + error if error else report} | {wall:.0f} |")
    write_text_atomic(out / "gpu.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    if any(error for _, error in outcomes.values()):
        sys.exit(1)


if __name__ == "__main__":
    run_main(main, "the parts that finished wrote their reports, gpu.md was not written; the same command runs every part again")
