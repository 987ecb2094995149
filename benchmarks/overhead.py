"""ALA's cost: one env step (Phi = I) against plain cross-entropy training of the same child, per iteration.

Per config, these run the same K SGD iterations of the same child model, interleaved (plain, trainer x 3,
env, plain, ...; interleaving spreads the load of a shared machine over all of them):

* ``plain``: a plain, well-written cross-entropy loop: the training set resident on the device and
  normalised once, a random batch drawn each iteration (``torch.randint``; CIFAR batches get the same
  pad-crop-flip augmentation as the trainer's), ``F.cross_entropy``, ``torch.optim.SGD`` with the
  child's momentum and weight decay. No schedule.
* ``trainer``: the package's :class:`ala_gym.core.trainer.ChildTrainer` under Eq. 6 at Phi = I (the env's
  loss at identity, computed by the hard-label cross-entropy kernel); ``trainer-soft`` at a non-negative
  Phi off identity (the soft-target kernel); ``trainer-general`` at a Phi with negative entries (the
  floored log-softmax).
* ``env``: ``env.step`` with Phi kept at identity: the trainer's K iterations plus the step's
  validation passes, statistics, reward and observation.

Overheads are ratios of medians minus one, in this process's CPU time (the steady figure when other
processes share the cores) and in wall time. It also breaks the env's extra cost down: one validation pass
(the env runs ``eval_points`` of them a step) and the per-image cost of evaluation at several eval batch
sizes against the per-image cost of training.

Before measuring, :func:`ala_gym.core.allocator.retain_freed_memory` fixes glibc's malloc thresholds
(``--system-malloc`` leaves them alone). Without it, how often freed activations are handed back to the
kernel and page-faulted in again depends on each loop's order of allocations, so two loops with the
same arithmetic can differ by their page faults alone (``benchmarks/malloc.py`` measures it on
ResNet-32), by as much as the rows are meant to compare.

Every config pins all the env keywords it depends on (K, evaluation schedule, validation subsample),
so a later change of an env default does not change what a row measures.

Usage::

    python -m ala_gym.benchmarks.overhead --out runs/overhead   # CPU: digits (MLP, K = 50), Fashion-MNIST (small CNN, K = 100)
    python -m ala_gym.benchmarks.overhead --out runs/overhead --configs cifar10-subset --merge   # add ResNet-32, K = 200
    python -m ala_gym.benchmarks.overhead --device cuda   # every config, on the GPU

A command that leaves out a config whose row the report in ``--out`` holds is refused unless ``--merge`` keeps
that row (the committed report holds all three CPU configs).

ResNet-32 is by far the slowest config on a CPU; how long each took is ``benchmark_wall_s`` in
``benchmarks/results/overhead.json``.

The CIFAR-10 subset is read from ``--data-root`` (default ``$ALA_GYM_DATA``: :func:`ala_gym.core.data.data_home`).

Writes ``benchmarks/results/overhead.json`` and ``benchmarks/results/overhead.md``
(``--out`` changes the folder).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from torch.nn import functional as F

import ala_gym  # noqa: F401  (registers the env ids)
from ala_gym.agents.cli import DescriptionFormatter, OneLineParser, portable_argv, run_main
from ala_gym.benchmarks.compare import ComparisonError
from ala_gym.benchmarks.compare.store import read_json
from ala_gym.benchmarks.machine import RESULTS, check_out_folder, cpu_model, load_average, render_saved
from ala_gym.core.allocator import retain_freed_memory
from ala_gym.core.data import CIFAR10_SUBSET, DataError, training_batch, with_data_home
from ala_gym.core.files import write_text_atomic
from ala_gym.core.losses import PhiLoss
from ala_gym.core.trainer import ChildTrainer
from ala_gym.envs.classification import ALAClassificationEnv
from ala_gym.envs.spec import task_spec

# The evaluation schedule every config pins (the env defaults when these rows were first measured).
SCHEDULE = {"eval_points": 3, "eval_stride": 10}
# Per config: env id, env kwargs (all that the row depends on, pinned), whether it reads the CIFAR-10
# subset, default repetitions on (CPU, CUDA). The MLP on digits is so fast that its step is dominated by
# noise unless repeated often; ResNet-32 on a CPU takes minutes a step.
CONFIGS: dict[str, dict[str, Any]] = {
    "digits": {
        "env_id": "ALA-Digits-v0", "kwargs": {"steps_per_action": 50, "val_subsample": None, **SCHEDULE}, "repeats": (40, 20),
    },
    "fashion-mnist": {
        "env_id": "ALA-FashionMNIST-v0", "kwargs": {"steps_per_action": 100, "val_subsample": 1000, **SCHEDULE},
        "repeats": (15, 10),
    },
    "cifar10-subset": {
        "env_id": "ALA-CIFAR10-v0", "kwargs": {"steps_per_action": 200, "val_subsample": None, **SCHEDULE},
        "cifar10_subset": True, "repeats": (2, 5),
    },
}
DEFAULT_CONFIGS = {"cpu": ["digits", "fashion-mnist"], "cuda": list(CONFIGS)}
LOOPS = ("plain", "trainer", "trainer-soft", "trainer-general", "env")
PROJECTED_K = 200  # the paper's K, at which the per-image costs are also projected
EVAL_BATCH_SIZES = (128, 256, 512, 1000)
ENV_SEED = 0  # the env's reset seed; every loop starts from the weights of the env's child
# One child for all loops: the kernels' speed depends on the data they see (measured for max pooling on two
# seeds' children, see docs/overhead.md), so loops on different children would compare children.


def data_location(name: str) -> dict[str, Any]:
    """The env keywords that say where config ``name``'s dataset lies: the CIFAR-10 subset's folder, never
    downloaded (torchvision would otherwise try to fetch the full dataset into it); none for the datasets
    the packages ship. Left out of a row's recorded keywords: the location is the machine's, not the row's."""
    return with_data_home({"data_root": CIFAR10_SUBSET}) if CONFIGS[name].get("cifar10_subset") else {}


def data_problem(name: str, device: torch.device) -> str | None:
    """What keeps config ``name`` from being measured (its dataset missing or damaged), in one line; None if
    nothing. Asked of every config before the first is measured, so that no measuring is spent on a report
    that could not be written whole; the dataset read stays in the process's cache for the env."""
    spec = CONFIGS[name]
    try:  # a missing subset folder is named by data_location, a damaged one by the load
        task_spec(spec["env_id"], **spec["kwargs"], device=str(device), **data_location(name)).data.load()
    except DataError as error:
        return f"{name}: {error}"
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    return _timed_both(fn, device)[0]


def _timed_both(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds of ``fn()``.

    CPU time is recorded too because the benchmark machine may be shared: other processes stretch
    wall time but barely change the CPU time a computation needs.
    """
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _plain_loop(env: ALAClassificationEnv, seed: int) -> Callable[[int], None]:
    """A plain, well-written cross-entropy loop (see the module docstring) of the child that
    ``ChildTrainer(..., seed)`` starts from."""
    config, data = env.train_config, env.data
    model = copy.deepcopy(ChildTrainer(data, config, seed).model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    generator = torch.Generator(data.device).manual_seed(seed)
    model.train()

    def run(iterations: int) -> None:
        total = torch.zeros((), device=data.device)
        for _ in range(iterations):
            index = torch.randint(len(data.train), (config.batch_size,), generator=generator, device=data.device)
            inputs, labels = training_batch(data, index, generator)
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        float(total)  # the env reads its mean loss back once a step too

    return run


def _trainer_loop(env: ALAClassificationEnv, seed: int, phi: np.ndarray) -> Callable[[int], float]:
    """The package's trainer under Eq. 6 (the env's loss settings) at ``phi``; reads the mean loss back."""
    trainer = ChildTrainer(env.data, env.train_config, seed)
    settings = env.task_settings
    loss = PhiLoss(
        torch.zeros(phi.shape, device=env.data.device), settings.loss_form, settings.sigmoid_temperature, settings.negative_floor
    )
    loss.set_phi(phi.astype(np.float32))
    return lambda iterations: trainer.train(iterations, loss)


def env_child_seed(reset_seed: int) -> int:
    """The trainer seed of the child that ``env.reset(seed=reset_seed)`` builds (its first draw from ``np_random``)."""
    return int(seeding.np_random(reset_seed)[0].integers(2**63 - 1))


def _phis(num_classes: int) -> dict[str, np.ndarray]:
    """Phi = I, a non-negative Phi off identity (0.05 off the diagonal) and one with negative entries."""
    identity = np.eye(num_classes)
    mixed = identity + 0.05 * np.where(np.add.outer(np.arange(num_classes), np.arange(num_classes)) % 2 == 0, 1, -1)
    np.fill_diagonal(mixed, 1.0)
    return {"trainer": identity, "trainer-soft": identity + 0.05 * (1 - identity), "trainer-general": mixed}


def _per_image_costs(env: ALAClassificationEnv, device: torch.device) -> dict[str, Any]:
    """Seconds per image of one training iteration and of evaluation at several eval batch sizes."""
    trainer, config = env.trainer, env.train_config
    assert trainer is not None
    train_iters = 5
    train_s = _timed(lambda: trainer.train(train_iters, env.episode.loss), device) / (train_iters * trainer.sampler.batch_size)
    split = env.val_eval
    eval_s: dict[str, float] = {}  # str keys, as they come back from the json
    for size in sorted({*EVAL_BATCH_SIZES, config.eval_batch_size}):
        trainer.config = replace(config, eval_batch_size=size)
        trainer.evaluate(split, env.metric)  # warm the allocator for this shape
        eval_s[str(size)] = min(_timed(lambda: trainer.evaluate(split, env.metric), device) for _ in range(2)) / len(split)
    trainer.config = config
    return {"train_s_per_image": train_s, "eval_s_per_image": eval_s}


def measure(name: str, device: torch.device, repeats: int, steps_per_action: int | None) -> dict[str, Any]:
    spec = CONFIGS[name]
    kwargs = {**spec["kwargs"], "device": str(device)}
    if steps_per_action is not None:
        kwargs["steps_per_action"] = steps_per_action
    env = gym.make(spec["env_id"], disable_env_checker=True, **kwargs, **data_location(name)).unwrapped
    assert isinstance(env, ALAClassificationEnv)  # every config's id
    k = env.steps_per_action
    keep = np.ones(env.action_space.shape, dtype=np.int64)  # Phi unchanged: identity, the loss of the trainer row

    def env_step(iterations: int) -> None:
        env.step(keep)

    child_seed = env_child_seed(ENV_SEED)
    loops: dict[str, Callable[[int], object]] = {"plain": _plain_loop(env, child_seed)}  # results unused
    loops |= {name: _trainer_loop(env, child_seed, phi) for name, phi in _phis(env.data.num_classes).items()}
    loops["env"] = env_step
    env.reset(seed=ENV_SEED)
    for loop in loops.values():  # warm-up: allocator, kernels, first touch of the data
        loop(k)
    wall: dict[str, list[float]] = {name: [] for name in LOOPS}
    cpu: dict[str, list[float]] = {name: [] for name in LOOPS}
    for _ in range(repeats):
        assert env.trainer is not None  # built by reset
        if env.trainer.iteration + k > env.train_config.total_iterations:
            env.reset(seed=ENV_SEED)  # outside the timing: a full step every time
        for name in LOOPS:
            seconds, cpu_seconds = _timed_both(partial(loops[name], k), device)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    trainer = env.trainer
    assert trainer is not None
    eval_pass = statistics.median(_timed(lambda: trainer.evaluate(env.val_eval, env.metric), device) for _ in range(3))
    costs = _per_image_costs(env, device)
    median_wall = {name: statistics.median(values) for name, values in wall.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "env_id": spec["env_id"],
        "env_kwargs": {key: value for key, value in kwargs.items()},
        "model": env.train_config.model,
        "steps_per_action": k,
        "batch_size": env.train_config.batch_size,
        "eval_points": env.settings.eval_points,
        "eval_stride": env.settings.eval_stride,
        "val_eval_images": len(env.val_eval),
        "eval_batch_size": env.train_config.eval_batch_size,
        "train_images": len(env.data.train),
        "repeats": repeats,
        "wall_s": wall,
        "cpu_s": cpu,
        "median_wall_s": median_wall,
        "median_cpu_s": median_cpu,
        "vs_plain_cpu_pct": {name: 100.0 * (median_cpu[name] / median_cpu["plain"] - 1) for name in LOOPS},
        "vs_plain_wall_pct": {name: 100.0 * (median_wall[name] / median_wall["plain"] - 1) for name in LOOPS},
        "env_vs_trainer_cpu_pct": 100.0 * (median_cpu["env"] / median_cpu["trainer"] - 1),
        "env_vs_trainer_wall_pct": 100.0 * (median_wall["env"] / median_wall["trainer"] - 1),
        "load_average_after": load_average(),
        "validation_pass_s": eval_pass,
        "validation_share_of_step_pct": 100.0 * env.settings.eval_points * eval_pass / median_wall["env"],
        **costs,
    }


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_cores_visible": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_threads_requested": threads,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "seeds": {"env_reset": ENV_SEED},
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": load_average(),
    }


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def headline_clock(device: str) -> tuple[str, str]:
    """The clock the report's ratios read and the other one, as (key, label): this process's CPU time on a CPU
    (steadier on a shared machine); wall time on a GPU, where CPU time counts launches and waits, not the work."""
    return ("wall", "wall") if device.startswith("cuda") else ("cpu", "CPU")


def merged_rows(report: dict[str, Any]) -> list[str]:
    """A line naming the rows that another command measured (kept by ``--merge``), with its command, date, CPU
    threads and machine where they differ from the header's; none where every row is the header's own."""
    own = report.get("argv", [])
    others = [(name, row) for name, row in report["results"].items() if "argv" in row and row["argv"] != own]
    if not others:
        return []
    return ["* Rows kept from earlier commands (`--merge`): " + "; ".join(
        f"{name}: `python -m ala_gym.benchmarks.overhead {' '.join(row['argv'])}` on {row['date_utc']}, "
        f"{row['torch_num_threads']} torch thread(s)" for name, row in others
    ) + "."]


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    clock, label = headline_clock(machine["device"])
    other, other_label = ("cpu", "CPU") if clock == "wall" else ("wall", "wall")
    lines = [
        "# ALA's cost: one env step against plain cross-entropy training of the same child",
        "",
        f"Produced by `python -m ala_gym.benchmarks.overhead {' '.join(report.get('argv', []))}` on {machine['date_utc']}.",
        "",
        f"* Machine: {machine['cpu_model']}, {machine['cpu_cores_visible']} cores visible, "
        f"`torch.get_num_threads()` = {machine['torch_num_threads']} (set explicitly); torch {machine['torch_version']}, "
        f"Python {machine['python']}.",
        f"* Device: `{machine['device']}`" + (f" ({machine['gpu']})" if machine["gpu"] else "") + ".",
        f"* Seeds: env reset {machine['seeds']['env_reset']}; every loop starts from the env child's initial weights "
        "(the trainers also draw its batches); the env keeps Phi at identity (action 1 everywhere).",
        "* Rows (module docstring of `benchmarks/overhead.py`): `plain` = plain cross-entropy loop (training set resident "
        "and normalised once, random batch per iteration, `torch.optim.SGD`); `trainer` = `ChildTrainer` under Eq. 6 at "
        "Phi = I; `trainer-soft` = at a non-negative Phi off identity; `trainer-general` = at a Phi with negative "
        "entries; `env` = `env.step` at Phi = I (the trainer's K iterations plus the step's validation passes).",
        "* malloc (`ala_gym.core.allocator.retain_freed_memory`, see the module docstring): "
        + "; ".join(f"{name} {row.get('malloc', 'system default')}" for name, row in report["results"].items()) + ".",
        "* Times are medians over interleaved repetitions (plain, trainers, env, plain, ...), after one warm-up of each.",
        f"* Load average (1, 5, 15 min) at the start: {machine['load_average_start'] or 'not kept by this OS'}. Overheads are ratios of medians "
        "minus one; " + ("CPU time is this process's CPU seconds, the steadier figure on a shared machine."
                         if clock == "cpu" else "wall time, synchronised with the GPU: its CPU time counts launches and waits."),
        *merged_rows(report),
        "* Env keywords of each row (pinned in `CONFIGS`): "
        + "; ".join(f"{name} `{json.dumps(row['env_kwargs'])}`" for name, row in report["results"].items()) + ".",
        "",
        f"| config | model | K | repeats | plain CE (ms, {label}) | " + " | ".join(f"{name} vs plain ({label})" for name in LOOPS[1:])
        + f" | env vs plain ({other_label}) | env vs trainer ({label}) | validation passes / step |",
        "|---|---|---|---|---|" + "---|" * (len(LOOPS) - 1) + "---|---|---|",
    ]
    for name, row in report["results"].items():
        lines.append(
            f"| {name} | {row['model']} | {row['steps_per_action']} | {row['repeats']} | {_ms(row[f'median_{clock}_s']['plain'])} | "
            + " | ".join(f"{row[f'vs_plain_{clock}_pct'][loop]:+.1f}%" for loop in LOOPS[1:])
            + f" | {row[f'vs_plain_{other}_pct']['env']:+.1f}% | {row[f'env_vs_trainer_{clock}_pct']:+.1f}% "
            f"| {row['validation_share_of_step_pct']:.1f}% ({row['val_eval_images']} images x {row['eval_points']}) |"
        )
    lines += [
        "",
        "Per-image cost (microseconds) of training (forward + backward + SGD, batch as configured) and of",
        "evaluation at several eval batch sizes, and what the validation passes would cost per step with each:",
        "",
        "| config | train / image | " + " | ".join(f"eval / image @ {b}" for b in EVAL_BATCH_SIZES) + " | "
        + " | ".join(f"eval share @ {b}" for b in EVAL_BATCH_SIZES) + f" | eval share @ configured, K = {PROJECTED_K} |",
        "|---|---|" + "---|" * (2 * len(EVAL_BATCH_SIZES)) + "---|",
    ]
    for name, row in report["results"].items():
        train_step = row["train_s_per_image"] * row["batch_size"] * row["steps_per_action"]
        evals = row["eval_s_per_image"]
        evaluated_at = {b: row["eval_points"] * row["val_eval_images"] * evals[str(b)] for b in EVAL_BATCH_SIZES}
        shares = [100 * e / (train_step + e) for e in evaluated_at.values()]
        evaluated = row["eval_points"] * row["val_eval_images"] * evals[str(row["eval_batch_size"])]
        projected = 100 * evaluated / (row["train_s_per_image"] * row["batch_size"] * PROJECTED_K + evaluated)
        lines.append(
            f"| {name} | {1e6 * row['train_s_per_image']:.1f} | "
            + " | ".join(f"{1e6 * evals[str(b)]:.1f}" for b in EVAL_BATCH_SIZES)
            + " | "
            + " | ".join(f"{s:.1f}%" for s in shares)
            + f" | {projected:.1f}% |"
        )
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"* {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=DescriptionFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="default: all on CUDA; all but CIFAR on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per config (default: per config)")
    parser.add_argument("--merge", action="store_true", help="keep the other configs' results already in --out")
    parser.add_argument("--steps-per-action", type=int, default=None, help="override K (default: each env's own)")
    # One thread by default: on a shared CPU, several intra-op threads per process oversubscribe the cores
    # and their synchronisation dominates small kernels.
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument(
        "--system-malloc", action="store_true", help="leave glibc's malloc thresholds alone (see the module docstring)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", action="append", default=[], help="a line for the notes section of the md")
    parser.add_argument(
        "--data-root", type=Path, help="folder holding cifar10-subset/ (default: $ALA_GYM_DATA: ala_gym.core.data.data_home())"
    )
    args = parser.parse_args(argv)
    not_positive = [f"--{name.replace('_', '-')}" for name in ("repeats", "steps_per_action", "threads")
                    if getattr(args, name) is not None and getattr(args, name) < 1]  # fmt: skip
    if not_positive:
        parser.error(f"{', '.join(not_positive)} must be positive")
    check_out_folder(parser, args.out, ("overhead.json", "overhead.md"))
    if args.data_root is not None:
        os.environ["ALA_GYM_DATA"] = str(args.data_root.resolve())

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False on this machine")
    names = args.configs or DEFAULT_CONFIGS[device.type]
    for name in names:
        if problem := data_problem(name, device):
            parser.exit(2, f"{parser.prog}: error: {problem}\n")
    json_path = args.out / "overhead.json"
    previous = None
    if not args.merge and json_path.is_file():  # rows measured for hours would go unseen
        try:
            saved = read_json(json_path, {"results": dict}, "restore it (git checkout), or move it away")
        except ComparisonError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        if left := [name for name in saved["results"] if name not in names]:
            parser.exit(2, f"{parser.prog}: error: {json_path} holds rows of {', '.join(left)}, which this command "
                           "leaves out; add them to --configs, pass --merge to keep them, or name another --out\n")  # fmt: skip
    if args.merge and json_path.exists():
        fix = "restore it (git checkout), or run without --merge to write a new one"
        try:
            previous = read_json(json_path, {"results": dict, "notes": [str]}, fix)
        except ComparisonError as error:  # damaged, or no file to read (a folder)
            parser.exit(2, f"{parser.prog}: error: {error}\n")
    torch.set_num_threads(args.threads)
    malloc = "system default" if args.system_malloc else (
        "glibc thresholds fixed" if retain_freed_memory() else "system default (not glibc)"
    )
    report: dict[str, Any] = {
        "argv": portable_argv(sys.argv[1:] if argv is None else argv),  # no path of this machine
        "machine": machine_info(device, args.threads),
        "results": {},
        "notes": list(args.note),
    }
    if previous is not None:
        # Rows of a file written before rows named their command were the command of its header.
        for row in previous["results"].values():
            row.setdefault("argv", previous.get("argv", []))
            row.setdefault("date_utc", previous.get("machine", {}).get("date_utc", "a date not recorded"))
        report["results"] = previous["results"]
        report["notes"] = list(dict.fromkeys(previous["notes"] + report["notes"]))  # once each, in order
        # Its rows are rendered again at the end: one that lacks what the table reads fails now, before measuring.
        render_saved(parser, json_path, partial(render_markdown, report), "restore it (git checkout), or run without --merge")
    if not torch.cuda.is_available() and not args.merge:
        report["notes"].append("No GPU on this machine: CUDA numbers not measured (run with `--device cuda` where one is).")
    for name in names:
        repeats = args.repeats or CONFIGS[name]["repeats"][device.type == "cuda"]
        started = time.perf_counter()
        report["results"][name] = row = measure(name, device, repeats, args.steps_per_action)
        row["device"], row["torch_num_threads"], row["malloc"] = str(device), torch.get_num_threads(), malloc
        # Which command measured the row: a merged file holds rows of several, and its header tells the latest.
        row["argv"], row["date_utc"] = report["argv"], report["machine"]["date_utc"]
        row["benchmark_wall_s"] = time.perf_counter() - started
        clock, label = headline_clock(str(device))
        print(f"{name}: plain {_ms(row[f'median_{clock}_s']['plain'])} ms {label}, "
              + ", ".join(f"{loop} {row[f'vs_plain_{clock}_pct'][loop]:+.1f}%" for loop in LOOPS[1:])
              + f" ({row['benchmark_wall_s']:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json_path, json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(args.out / "overhead.md", render_markdown(report))


if __name__ == "__main__":
    run_main(main, "nothing was written (the report is written once every configuration is measured); the same command measures again")
