"""SGD iterations per second summed over children: one child, native vector env, Gymnasium ``sync``/``async``, Ray.

    python -m ala_gym.benchmarks.throughput                      # CPU, the budget of results/throughput.md
    python -m ala_gym.benchmarks.throughput --device cuda        # on a GPU machine
    python -m ala_gym.benchmarks.throughput --models mlp small_cnn --num-envs 1 4 10 32 \\
        --modes single native-sequential native-batched --steps 2 --iterations 20 --min-seconds 2 --repeats 2 \\
        --threads 1 --out benchmarks/results/throughput-mlp     # against one child, FLOP/s, roofline: ~9 min
    python -m ala_gym.benchmarks.throughput --models small_cnn --dataset fashion-mnist --num-envs 4 --iterations 200 \\
        --modes native-sequential ray-1 ray-2 ray-4 --out benchmarks/results/throughput-ray      # Ray vs in-process

For every model (small CNN and ResNet-32 on CIFAR-10-sized 3x32x32 inputs from the CIFAR-10 subset
under ``--data-root``, or on Fashion-MNIST with ``--dataset fashion-mnist``; the MLP on the embedded 8x8
digits), every N in ``--num-envs`` and every mode:

* ``single``: one child, ``gym.make`` of the single env (measured once per model, N = 1): the reference
  every other rate is set against (``x one child``);
* ``native-batched``: :class:`ala_gym.envs.vector.ALAVectorEnv`, children trained together
  (:class:`ala_gym.core.batched.BatchedTrainer`);
* ``native-sequential``: the same env, children trained one after another;
* ``sync`` / ``async``: ``gym.make_vec(..., vectorization_mode=...)`` over N single envs (async
  workers run 1 torch thread each, the single env's default in a worker process);
* ``ray-A``: :class:`ala_gym.wrappers.ray.RayVectorEnv` on a local Ray cluster of ``--threads`` CPUs
  started by the measuring process, the N children spread over A actors (``ceil(N / A)`` each, trained
  one after another, ``--threads / A`` CPUs and ``max(1, floor(--threads / A))`` torch threads each).
  Against ``native-sequential`` at the same N, ``ray-1`` does the same arithmetic on as many threads in
  one actor, so its extra time per step is Ray's per-step overhead (scheduling and transfer).

the script builds the env, resets it (seed ``--seed``), runs one warm-up step, then times at least
``--steps`` steps, and at least ``--min-seconds`` seconds, of K = ``--iterations`` SGD iterations each (one
validation pass of ``--val-subsample`` images per step, as the env requires). Throughput = N * steps * K /
seconds. Each configuration runs in its own subprocess, so its peak memory is its own: peak RSS of that
process plus that of its largest child (an async worker; the OS reports only the largest, so async's total
is about main + N x worker) and, on CUDA, ``torch.cuda.max_memory_allocated`` of the main process. Every
measuring process first fixes glibc's malloc thresholds (:func:`ala_gym.core.allocator.retain_freed_memory`),
so that no configuration pays page faults that another does not. ``--repeats`` runs every configuration
that many times, in rounds that alternate their order (so that a slow spell of a shared machine does not
fall on one configuration only); a row reports the median.

Arithmetic. Before each round a fresh process times a float32 ``torch.mm`` of two ``ROOFLINE_SIZE``-square
matrices on the device (``--threads`` threads) for ``--roofline-seconds``: the roofline is the best round's GFLOP/s.
A child's training FLOPs per SGD iteration are counted by ``torch.utils.flop_counter.FlopCounterMode`` over
one iteration of the env's own child (:meth:`ala_gym.core.trainer.ChildTrainer.train_step`: its data, batch
and loss): matrix products and convolutions, forward and backward; element-wise work and the validation
passes are not counted, so a row's GFLOP/s (iterations/s times that count) is a lower bound on the
arithmetic it did. For the batched target (:data:`BATCHED_TARGET`), two more fresh processes a round time
its forward and backward alone (:func:`kernel_rate`) and the matrix products of that forward and backward
alone, recorded in one call and replayed in their layouts, in float32 and in bfloat16 (:func:`product_rate`):
how far the step's own arithmetic, and half-width products, would let the target go.

Writes ``throughput.json`` and ``throughput.md`` under ``--out`` (machine, load, versions, threads, seeds
and budget beside every number, and findings and targets computed from the numbers). ``--render``
rewrites the markdown from an existing JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from ala_gym.agents.cli import OneLineParser, portable_argv, run_main, seed_option
from ala_gym.benchmarks.machine import (
    RESULTS,
    check_out_folder,
    cpu_model,
    float32_precision,
    load_average,
    peak_rss_mib,
    render_saved,
)
from ala_gym.core.files import write_text_atomic
from ala_gym.wrappers import MissingExtraError, require

MODES = ("single", "native-batched", "native-sequential", "sync", "async", "ray-1", "ray-2", "ray-4")
DEFAULT_MODES = MODES[:5]
ROOFLINE_SIZE = {"cpu": 1024, "cuda": 8192}
"""Per device, the side of the square float32 matrices of the roofline's ``torch.mm``: on a CPU large enough
to run near one core's full matrix-multiply rate, on a GPU large enough to keep it busy between two synchronisations."""
BATCHED_TARGET = ("mlp", 32, 8.0)
"""Model, N and the factor over one child's iterations/s that N batched children are to reach."""
NO_SLOWER_MODEL, NO_SLOWER_FROM = "small_cnn", 4
"""The model whose batched path is to run no slower than its sequential path, from this N on."""


def env_setup(config: dict) -> tuple[str, dict[str, Any]]:
    """The env id and keywords of ``config``'s model: never-ending episodes of K iterations a step."""
    from ala_gym.core.data import cifar10_subset_dir

    data: dict[str, str | bool]  # where the env finds its dataset
    if config["model"] == "mlp":
        env_id, data = "ALA-Digits-v0", {}
    elif config.get("dataset") == "fashion-mnist":
        env_id, data = "ALA-FashionMNIST-v0", {}  # Debian's package (make fashion-mnist)
    else:
        env_id, data = "ALA-CIFAR10-v0", dict(data_root=str(cifar10_subset_dir()), download=False)
    kwargs = dict(
        model=config["model"],
        **data,
        device=config["device"],
        steps_per_action=config["iterations"],
        total_iterations=10**9,  # never ends during the measurement
        batch_size=config["batch_size"],
        eval_points=1,
        val_subsample=config["val_subsample"],
    )
    return env_id, kwargs


def measure(config: dict) -> dict:
    """Time one configuration in this process; returns throughput and peak memory."""
    import gymnasium as gym
    import numpy as np
    import torch

    import ala_gym  # noqa: F401  (registers the ids)
    from ala_gym.core.allocator import retain_freed_memory

    retain_freed_memory()
    torch.set_num_threads(config["threads"])
    n, mode = config["num_envs"], config["mode"]
    env_id, kwargs = env_setup(config)
    envs: gym.Env | gym.vector.VectorEnv
    if mode == "single":
        envs = gym.make(env_id, **kwargs)
    elif mode.startswith("native"):
        envs = gym.make_vec(env_id, num_envs=n, train_mode=mode.split("-")[1], **kwargs)
    elif mode.startswith("ray"):
        import logging

        import ray

        actors = int(mode.split("-")[1])
        ray.init(num_cpus=config["threads"], include_dashboard=False, logging_level=logging.ERROR)
        envs = gym.make_vec(env_id, num_envs=n, backend="ray", train_mode="sequential", children_per_worker=-(-n // actors),
                            num_cpus_per_worker=config["threads"] / actors, **kwargs)  # fmt: skip
    else:
        # Forked workers cannot use CUDA once the parent has (gymnasium builds one env in the parent first).
        spawn = {"context": "spawn"} if mode == "async" and config["device"] == "cuda" else {}
        envs = gym.make_vec(env_id, num_envs=n, vectorization_mode=mode, vector_kwargs=spawn, **kwargs)
    envs.reset(seed=config["seed"])
    shape = envs.action_space.shape
    assert shape is not None  # a MultiDiscrete space, one child's or the children's
    actions = np.ones(shape, dtype=np.int64)  # Phi unchanged: pure training cost
    envs.step(actions)  # warm-up: allocator, kernels, lazy initialisation
    if config["device"] == "cuda":
        torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    # Every step ends with a host copy of the evaluation, so timing is synchronous.
    while steps < config["steps"] or time.perf_counter() - start < config.get("min_seconds", 0.0):
        envs.step(actions)
        steps += 1
    seconds = time.perf_counter() - start
    envs.close()
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if config["device"] == "cuda" else None
    return {
        **config,
        "timed_steps": steps,
        "seconds": seconds,
        "iterations_per_s": n * steps * config["iterations"] / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": cuda_peak,
    }


def roofline(config: dict) -> dict:
    """GFLOP/s of a float32 ``torch.mm`` of two ``ROOFLINE_SIZE``-square matrices on ``config["device"]`` (a CPU:
    with ``config["threads"]`` threads): the best of the blocks of multiplications timed in ``config["seconds"]``."""
    import torch

    torch.set_num_threads(config["threads"])
    device, size = torch.device(config["device"]), ROOFLINE_SIZE[config["device"]]
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    out = torch.mm(a, b)  # warm-up
    if device.type == "cuda":  # the warm-up (and the copies) finished before the clock starts
        torch.cuda.synchronize()
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < config["seconds"] or best == 0.0:
        block = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - block) / 1e9)
    return {**config, "gflops": best}


def batched_gradients(config: dict) -> Callable[[], Any]:
    """One call of :meth:`ala_gym.core.batched.BatchedTrainer.gradients` for ``config["num_envs"]`` children of
    ``config``'s env (its data, a batch each and its loss), ready to run again and again; the process set up
    as a measuring one (malloc thresholds, ``config["threads"]`` torch threads)."""
    import gymnasium as gym
    import numpy as np
    import torch

    import ala_gym  # noqa: F401  (registers the ids)
    from ala_gym.core.allocator import retain_freed_memory
    from ala_gym.core.batched import BatchedTrainer, fused_kernel
    from ala_gym.envs.base import ALAEnv

    retain_freed_memory()
    torch.set_num_threads(config["threads"])
    env_id, kwargs = env_setup(config)
    env = gym.make(env_id, **kwargs).unwrapped
    assert isinstance(env, ALAEnv)
    n = config["num_envs"]
    trainer = BatchedTrainer(env.data, env.train_config, [config["seed"] + child for child in range(n)])
    active = np.ones(n, dtype=bool)
    inputs, labels = trainer.next_batches(active)
    mask = torch.as_tensor(active, device=trainer.device)
    loss = env.episode.loss
    loss_params, kernel = torch.stack([loss.params] * n), fused_kernel([loss] * n)
    return partial(trainer.gradients, inputs, labels, mask, loss_params, loss, kernel)


def kernel_rate(config: dict) -> dict:
    """Iterations/s summed over ``config["num_envs"]`` children of :meth:`ala_gym.core.batched.BatchedTrainer.gradients`
    alone (the forward and backward of a batched SGD iteration, with the env's data, batch and loss) for
    ``config["seconds"]``: the ceiling of the batched path's kernels, with no batch gather, SGD update,
    validation pass or env step around them. Then the same call under bfloat16 autocast (products in bfloat16,
    weights, gradients and element-wise work as autocast keeps them): what mixed precision would give the
    whole forward and backward, beside what it gives their products alone (:func:`product_rate`)."""
    import torch

    run = batched_gradients(config)
    seconds = seconds_per_run(run, config["seconds"], config["device"])

    def autocast_run() -> Any:
        with torch.autocast(config["device"], dtype=torch.bfloat16):
            return run()

    autocast_seconds = seconds_per_run(autocast_run, config["seconds"], config["device"])
    n = config["num_envs"]
    return {**config, "iterations_per_s": n / seconds, "bfloat16_autocast_iterations_per_s": n / autocast_seconds}


MATRIX_PRODUCTS = ("mm", "bmm", "addmm", "baddbmm", "convolution", "convolution_backward")
"""The aten operators :func:`product_rate` replays: the matrix products and convolutions that
``FlopCounterMode`` counts."""


class TensorLayout(NamedTuple):
    """A recorded tensor argument: what a replay needs to make one like it."""

    size: tuple[int, ...]
    stride: tuple[int, ...]


def recorded_products(run: Callable[[], Any]) -> list[tuple[Any, list[Any], dict[str, Any]]]:
    """The matrix products (:data:`MATRIX_PRODUCTS`) that ``run()`` dispatches, forward and backward, in order:
    each operator with its arguments, tensors kept as :class:`TensorLayout`."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    def layout(value: Any) -> Any:
        return TensorLayout(tuple(value.shape), value.stride()) if isinstance(value, torch.Tensor) else value

    calls = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in MATRIX_PRODUCTS:
                calls.append((func, [layout(a) for a in args], {k: layout(v) for k, v in kwargs.items()}))
            return func(*args, **kwargs)

    with Recorder():
        run()
    return calls


def replay_products(calls: list, dtype: Any, generator: Any, device: str) -> list[tuple[Any, list[Any], dict[str, Any]]]:
    """The recorded products ``calls`` ready to run again: fresh random tensors of their sizes and strides,
    in ``dtype`` (float32 as recorded, or bfloat16), on ``device``."""
    import torch

    def tensor(value: Any) -> Any:
        if not isinstance(value, TensorLayout):
            return value
        size, stride = value
        extent = 1 + sum((n - 1) * step for n, step in zip(size, stride))  # an expanded bias has stride 0
        return torch.randn(extent, generator=generator).to(device, dtype).as_strided(size, stride)

    return [(func, [tensor(a) for a in args], {k: tensor(v) for k, v in kwargs.items()}) for func, args, kwargs in calls]


def run_products(replays: list) -> None:
    for func, args, kwargs in replays:
        func(*args, **kwargs)


def seconds_per_run(run: Callable[[], Any], seconds: float, device: str) -> float:
    """Seconds per call of ``run()`` after a warm-up call, timed for at least ``seconds`` and three calls (on
    CUDA, until the device has finished them)."""
    import torch

    run()
    if device == "cuda":  # the warm-up call finished before the clock starts
        torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        run()
        count += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / count


def product_rate(config: dict) -> dict:
    """Iterations/s summed over ``config["num_envs"]`` children of the matrix products alone of
    :meth:`ala_gym.core.batched.BatchedTrainer.gradients` (recorded in one call, forward and backward, then
    replayed in their layouts), in float32 and in bfloat16: how fast the step's products are, apart from its
    element-wise work, reductions and autograd, and what half-width products would give (on a CPU with
    AMX or AVX-512 BF16, the faster kernels for them). ``flops`` is the products' count, for checking."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    n = config["num_envs"]
    calls = recorded_products(batched_gradients(config))
    generator = torch.Generator().manual_seed(config["seed"])
    replays = {dtype: replay_products(calls, dtype, generator, config["device"]) for dtype in (torch.float32, torch.bfloat16)}
    with FlopCounterMode(display=False) as counter:
        run_products(replays[torch.float32])
    seconds = {dtype: seconds_per_run(partial(run_products, replay), config["seconds"], config["device"])
               for dtype, replay in replays.items()}  # fmt: skip
    return {
        **config,
        "products": [f"{func.overloadpacket.__name__} " + " ".join("x".join(map(str, a.size)) for a in args if isinstance(a, TensorLayout))
                     for func, args, _ in calls],  # fmt: skip
        "flops": int(counter.get_total_flops()),
        "iterations_per_s": n / seconds[torch.float32],
        "bfloat16_iterations_per_s": n / seconds[torch.bfloat16],
    }


def training_flops(config: dict) -> int:
    """FLOPs of one SGD iteration of ``config``'s child (matrix products and convolutions, forward and
    backward), counted by ``FlopCounterMode`` on the single env's own child, data and loss."""
    import gymnasium as gym
    from torch.utils.flop_counter import FlopCounterMode

    import ala_gym  # noqa: F401  (registers the ids)
    from ala_gym.core.trainer import ChildTrainer
    from ala_gym.envs.base import ALAEnv

    env_id, kwargs = env_setup(config)
    env = gym.make(env_id, **kwargs).unwrapped
    assert isinstance(env, ALAEnv)
    trainer = ChildTrainer(env.data, env.train_config, config["seed"])
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(env.episode.loss)
    return int(counter.get_total_flops())


def run_isolated(config: dict, timeout: float) -> dict:
    """Run :func:`measure` (:func:`roofline` for ``mode="roofline"``, :func:`kernel_rate` for ``"kernels"``) in a
    fresh interpreter, so peak memory is per configuration."""
    command = [sys.executable, "-m", "ala_gym.benchmarks.throughput", "--one", json.dumps(config)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**config, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {**config, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["float32_on_cuda"] = float32_precision()  # the roofline's products and the children's convolutions
    return info


def write_markdown(report: dict, path: Path) -> None:
    args = report["args"]
    load = report.get("load_average")
    lines = [
        f"# Throughput of {', '.join(args['models'])} children by mode: {', '.join(f'`{mode}`' for mode in args['modes'])}",
        "",
        f"Written by `python -m ala_gym.benchmarks.throughput {' '.join(report['argv'])}` at {report['finished']}.",
        "",
        f"* machine: {report['machine']['platform']}, {report['machine'].get('cpu_model', report['machine']['processor'])}, "
        f"{report['machine']['cpu_count']} CPU cores"
        + (f", GPU {report['machine']['gpu']}" if "gpu" in report["machine"] else ", no GPU")
        + (f" (float32 on CUDA: {report['machine']['float32_on_cuda']})" if "float32_on_cuda" in report["machine"] else ""),
        f"* python {report['machine']['python']}, torch {report['machine']['torch']}, device `{args['device']}`",
        f"* torch threads: `torch.set_num_threads({args['threads']})` in each benchmark process; async workers 1 thread each",
        f"* seed {args['seed']}; data: "
        + ("Fashion-MNIST (1x28x28 inputs)" if args.get("dataset") == "fashion-mnist" else "the CIFAR-10 subset (3x32x32 inputs)")
        + " for the convolutional models, the embedded 8x8 digits for the MLP",
        f"* budget per measurement: 1 warm-up step, then at least {args['steps']} timed steps"
        + (f" and {args['min_seconds']:g} s" if args.get("min_seconds") else "")
        + f" of K = {args['iterations']} SGD iterations per child, batch {args['batch_size']} (ResNet-32: "
        f"{args['resnet_batch_size'] or args['batch_size']}), one validation pass of {args['val_subsample']} images per step"
        + (f"; {args['repeats']} rounds in alternating order, the median shown" if args.get("repeats", 1) > 1 else ""),
        "* iterations/s is summed over the N children; `x N=1` is against the same mode at N = 1, `x one child`"
        " against the single env (`single`)",
        "* peak RSS: the configuration's process plus its largest child process (an async worker; the OS"
        " reports only the largest, so async's total is roughly main + N x worker; Ray actors are the Ray"
        " daemon's children, not counted)",
    ]
    if load and load["start"] is not None:  # None where the OS keeps no load average
        lines.append(f"* load average (1, 5, 15 min) at the start {load['start']}, at the end {load['end']}")
    if report.get("roofline"):
        lines.append(
            f"* roofline: float32 `torch.mm` of two {report['roofline']['size']}-square matrices on {args['threads']} "
            f"thread(s), {report['roofline']['gflops']:.1f} GFLOP/s (the best of {len(report['roofline']['rounds'])} "
            "round(s), timed in a fresh process before each round)"
        )
    if report.get("kernels"):
        kernels = report["kernels"]
        lines.append(
            f"* batched kernels alone: `BatchedTrainer.gradients` (forward and backward of a batched SGD iteration) of "
            f"N = {kernels['num_envs']} {kernels['model']} children on one batch each, for {args['roofline_seconds']:g} s "
            f"in a fresh process before each round, the best of {len(kernels['rounds'])} round(s)"
            + ("; then the same under `torch.autocast` to bfloat16" if "bfloat16_autocast_iterations_per_s" in kernels else "")
        )
    if report.get("products"):
        products = report["products"]
        lines.append(
            f"* their matrix products alone: the {len(products['products'])} products that one such call dispatches "
            f"({'; '.join(products['products'])}: {products['flops'] / 1e6:.1f} MFLOP), recorded and replayed on fresh "
            f"tensors of the same sizes and strides, in float32 and in bfloat16, the best of {len(products['rounds'])} round(s)"
        )
    if report.get("flops_per_iteration"):
        counted = ", ".join(f"{model} {flops / 1e6:.1f} MFLOP" for model, flops in report["flops_per_iteration"].items())
        lines.append(
            f"* training FLOPs per child and SGD iteration ({counted}): `torch.utils.flop_counter.FlopCounterMode` over "
            "one iteration of the env's child (matrix products and convolutions, forward and backward; element-wise "
            "work and validation passes not counted, so GFLOP/s is a lower bound)"
        )
    if report.get("note"):
        lines += ["", report["note"]]
    lines += ["", "Findings (computed from the table below by `findings()`):", ""] + [f"* {f}" for f in findings(report)]
    roof = report.get("roofline", {}).get("gflops")
    for model in args["models"]:
        lines += [
            "", f"## {model}", "",
            "| N | mode | iterations/s | x N=1 | x one child | GFLOP/s | % of roofline | seconds | peak RSS MiB | peak CUDA MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        rows = [r for r in report["results"] if r["model"] == model]
        base = {r["mode"]: r["iterations_per_s"] for r in rows if r["num_envs"] == 1 and "error" not in r}
        flops = report.get("flops_per_iteration", {}).get(model)
        for r in sorted(rows, key=lambda r: (r["num_envs"], MODES.index(r["mode"]))):
            if "error" in r:
                lines.append(f"| {r['num_envs']} | {r['mode']} | error: {r['error']} | | | | | | | |")
                continue
            rate = r["iterations_per_s"]
            ratio = f"{rate / base[r['mode']]:.2f}" if r["mode"] in base else ""
            one = f"{rate / base['single']:.2f}" if "single" in base else ""
            gflops = rate * flops / 1e9 if flops else None
            achieved = "" if gflops is None else f"{gflops:.2f}"
            share = "" if gflops is None or not roof else f"{100 * gflops / roof:.1f}"
            cuda = "" if r["peak_cuda_mib"] is None else f"{r['peak_cuda_mib']:.0f}"
            lines.append(
                f"| {r['num_envs']} | {r['mode']} | {rate:.1f} | {ratio} | {one} | {achieved} | {share} "
                f"| {r['seconds']:.2f} | {mib(r['peak_rss_mib'])} | {cuda} |"
            )
    write_text_atomic(path, "\n".join(lines) + "\n")


def mib(value: float | None) -> str:
    """A peak memory for the table: whole MiB, or blank where the OS does not report it."""
    return "" if value is None else f"{value:.0f}"


def fastest_native_mode(report: dict, model: str) -> str | None:
    """``"native-batched"`` or ``"native-sequential"``: the faster at the largest N measured with both."""
    rows = [r for r in report["results"] if r["model"] == model and r["mode"].startswith("native") and "error" not in r]
    sizes = [n for n in {r["num_envs"] for r in rows} if sum(r["num_envs"] == n for r in rows) == 2]
    if not sizes:
        return None
    pair = [r for r in rows if r["num_envs"] == max(sizes)]
    return max(pair, key=lambda r: r["iterations_per_s"])["mode"]


def findings(report: dict) -> list[str]:
    """What the numbers say, per model: the faster native path, the native env against ``sync``, Ray's
    overhead; then the targets (:data:`BATCHED_TARGET`, :data:`NO_SLOWER_MODEL`), met or not."""
    lines = []
    rates = {(r["model"], r["num_envs"], r["mode"]): r["iterations_per_s"] for r in report["results"] if "error" not in r}
    for model in report["args"]["models"]:
        rows = {(n, mode): value for (m, n, mode), value in rates.items() if m == model}
        sizes = sorted({n for n, mode in rows if mode != "single"})
        if not sizes:
            continue
        n = sizes[-1]
        rate = {mode: rows.get((n, mode)) for mode in MODES}
        measured = ", ".join(f"{mode} {value:.1f}" for mode, value in rate.items() if value is not None)
        fastest = fastest_native_mode(report, model)
        verdict = f"; the faster native path is {fastest.split('-')[1]}" if fastest else ""
        lines.append(f"{model}, N = {n}: {measured} iterations/s{verdict}.")
        native, alone = rate["native-sequential"], rate["ray-1"]
        if native and alone:
            # The same children, arithmetic and threads in one actor: the extra step time is Ray's.
            overhead = native / alone - 1
            if overhead < 0:  # the actor outran the process: what differs between them is not Ray's cost
                verdict = "negative: the actor ran faster than the process, so this run cannot tell Ray's overhead"
            else:
                verdict = f"{'under' if overhead < 0.05 else 'not under'} the 5% target"
            lines.append(f"{model}, N = {n}: Ray's per-step overhead (ray-1 against native-sequential) "
                         f"{100 * overhead:+.1f}% of a step ({verdict}).")
        for mode in ("ray-2", "ray-4"):
            if native and rate[mode]:
                lines.append(f"{model}, N = {n}: {mode} runs {rate[mode] / native:.2f}x the native-sequential rate.")
    return lines + targets(report, rates)


def targets(report: dict, rates: dict[tuple[str, int, str], float]) -> list[str]:
    """The targets' lines, for the targets whose rows were measured; each says met or not met."""
    lines = []
    model, n, factor = BATCHED_TARGET
    one, batched = rates.get((model, 1, "single")), rates.get((model, n, "native-batched"))
    if one and batched:
        lines.append(f"Target: {model}, N = {n} batched at {batched / one:.2f}x one child's iterations/s "
                     f"(target >= {factor:g}x): {'met' if batched / one >= factor else 'not met'}.")
        roof, flops = report.get("roofline", {}).get("gflops"), report.get("flops_per_iteration", {}).get(model)
        if roof and flops:
            # Training arithmetic alone at the matrix-multiply roofline, nothing else in the step.
            ceiling = roof * 1e9 / flops
            lines.append(f"Bound: at the roofline ({roof:.1f} GFLOP/s) and {flops / 1e6:.2f} MFLOP per {model} "
                         f"iteration, no number of children exceeds {ceiling:.0f} iterations/s, {ceiling / one:.1f}x one "
                         f"child's; one child runs at {100 * one * flops / 1e9 / roof:.1f}% of the roofline.")
        kernels = report.get("kernels") or {}
        if (kernels.get("model"), kernels.get("num_envs")) == (model, n):
            alone = kernels["iterations_per_s"]
            reach = "within" if alone / one >= factor else "beyond"
            lines.append(f"Bound: the batched forward and backward alone of N = {n} {model} children "
                         f"(`BatchedTrainer.gradients`, without batch gather, SGD update, validation or env step) run at "
                         f"{alone:.0f} iterations/s (their best round; the table's rates, one child's among them, are medians), "
                         f"{alone / one:.2f}x one child's: the target is {reach} these kernels' "
                         f"reach here; the env's batched step runs at {100 * batched / alone:.0f}% of them.")
            autocast = kernels.get("bfloat16_autocast_iterations_per_s")
            if autocast:
                lines.append(f"Bound: under bfloat16 autocast the same forward and backward run at {autocast:.0f} "
                             f"iterations/s, {autocast / one:.2f}x one child's ({autocast / alone:.2f}x float32).")
        products = report.get("products") or {}
        if (products.get("model"), products.get("num_envs")) == (model, n):
            full, half = products["iterations_per_s"], products["bfloat16_iterations_per_s"]
            reach = "within" if full / one >= factor else "beyond"
            # Per call, the products' time over the whole forward and backward's: the inverse ratio of the rates.
            share = f"; they take {100 * kernels['iterations_per_s'] / full:.0f}% of `gradients`' time" if kernels else ""
            lines.append(f"Bound: the matrix products alone of that forward and backward run at {full:.0f} iterations/s "
                         "(their best round), "
                         f"{full / one:.2f}x one child's: the target is {reach} their reach in float32{share}. In "
                         f"bfloat16 they run at {half:.0f} iterations/s, {half / one:.2f}x.")
    pairs = sorted(
        (size, rates[(m, size, "native-batched")] / rates[(m, size, "native-sequential")])
        for m, size, mode in rates
        if m == NO_SLOWER_MODEL and mode == "native-batched" and size >= NO_SLOWER_FROM
        and (m, size, "native-sequential") in rates
    )  # fmt: skip
    if pairs:
        shown = ", ".join(f"N = {size}: {ratio:.2f}x" for size, ratio in pairs)
        met = all(ratio >= 1 for _, ratio in pairs)
        lines.append(f"Target: {NO_SLOWER_MODEL} batched no slower than sequential from N = {NO_SLOWER_FROM} on "
                     f"(batched / sequential iterations/s: {shown}): {'met' if met else 'not met'}.")
    return lines


def configurations(args: argparse.Namespace) -> list[dict]:
    """Every configuration to measure: the single env once per model (N = 1), each other mode at each N."""
    configs = []
    for model in args.models:
        sizes = [(1, "single")] if "single" in args.modes else []
        sizes += [(n, mode) for n in args.num_envs for mode in args.modes if mode != "single"]
        for n, mode in sizes:
            configs.append({
                "model": model, "num_envs": n, "mode": mode, "device": args.device, "threads": args.threads,
                "seed": args.seed, "steps": args.steps, "min_seconds": args.min_seconds, "iterations": args.iterations,
                "batch_size": (args.resnet_batch_size or args.batch_size) if model == "resnet32" else args.batch_size,
                "val_subsample": args.val_subsample, "dataset": args.dataset,
            })  # fmt: skip
    return configs


def check_inputs(args: argparse.Namespace, configs: list[dict]) -> str | None:
    """What is wrong with the command, in one line, before any measuring process starts (which would only
    fill every row with the same error): a count or a time that is not positive (a timeout of 0 s times out
    every row), or a model's data that is missing."""
    from ala_gym.core.data import DataError
    from ala_gym.envs.spec import task_spec

    counts = {"--num-envs": min(args.num_envs), "--steps": args.steps, "--iterations": args.iterations,
              "--batch-size": args.batch_size, "--val-subsample": args.val_subsample, "--threads": args.threads,
              "--repeats": args.repeats,
              # Not given: --batch-size's; 0 would fall back to it unnoticed.
              "--resnet-batch-size": 1 if args.resnet_batch_size is None else args.resnet_batch_size}  # fmt: skip
    not_positive = [option for option, value in counts.items() if value < 1]
    if not_positive:
        return f"{', '.join(not_positive)} must be positive"
    seconds = {"--timeout": args.timeout, "--roofline-seconds": args.roofline_seconds}
    not_timed = [option for option, value in seconds.items() if not (math.isfinite(value) and value > 0)]
    if not_timed:
        return f"{', '.join(not_timed)} must be a positive, finite number of seconds"
    if not (math.isfinite(args.min_seconds) and args.min_seconds >= 0):  # 0, the default: no minimum
        return "--min-seconds must be a finite number of seconds, 0 or more (0: --steps alone counts)"
    for config in {config["model"]: config for config in configs}.values():  # one per model: its data
        env_id, kwargs = env_setup(config)
        try:
            task_spec(env_id, **kwargs).data.load()
        except (DataError, ValueError) as error:  # ValueError: a setting the task's spec or the machine refuses
            return str(error)
    return None


def best_kernels(rounds: list[dict]) -> dict:
    """The :func:`kernel_rate` rounds as one entry: the best float32 and bfloat16-autocast rates, every round's
    kept; empty when no round measured them."""
    measured = [probe for probe in rounds if "error" not in probe]
    if not measured:
        return {}
    return {
        "model": measured[0]["model"], "num_envs": measured[0]["num_envs"],
        "iterations_per_s": max(probe["iterations_per_s"] for probe in measured),
        "bfloat16_autocast_iterations_per_s": max(probe["bfloat16_autocast_iterations_per_s"] for probe in measured),
        "rounds": [probe.get("iterations_per_s") for probe in rounds],
        "bfloat16_autocast_rounds": [probe.get("bfloat16_autocast_iterations_per_s") for probe in rounds],
    }  # fmt: skip


def best_products(rounds: list[dict]) -> dict:
    """The :func:`product_rate` rounds as one entry: the best round's float32 and bfloat16 rates, every round's
    kept; empty when no round measured them."""
    measured = [probe for probe in rounds if "error" not in probe]
    if not measured:
        return {}
    best = max(measured, key=lambda probe: probe["iterations_per_s"])
    return {
        "model": best["model"], "num_envs": best["num_envs"], "products": best["products"], "flops": best["flops"],
        "iterations_per_s": best["iterations_per_s"],
        "bfloat16_iterations_per_s": max(probe["bfloat16_iterations_per_s"] for probe in measured),
        "rounds": [probe.get("iterations_per_s") for probe in rounds],
        "bfloat16_rounds": [probe.get("bfloat16_iterations_per_s") for probe in rounds],
    }  # fmt: skip


def median_row(runs: list[dict]) -> dict:
    """One configuration's rounds as one row: the median rate (every round's rate kept), the first error if any."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    rates = [run["iterations_per_s"] for run in runs]
    peaks = [run["peak_rss_mib"] for run in runs]
    return {
        **runs[0],
        "iterations_per_s": statistics.median(rates),
        "round_iterations_per_s": rates,
        "seconds": statistics.median(run["seconds"] for run in runs),
        "peak_rss_mib": None if None in peaks else max(peaks),
    }


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet32"], choices=["mlp", "small_cnn", "resnet32"],
                        help="child models (mlp runs on digits, the others on the CIFAR-10 subset)")
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 2, 4, 10])
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    parser.add_argument("--dataset", default="cifar10-subset", choices=["cifar10-subset", "fashion-mnist"],
                        help="data of the convolutional models")
    parser.add_argument("--steps", type=int, default=2, help="timed env steps per configuration (at least)")
    parser.add_argument("--min-seconds", type=float, default=0.0,
                        help="time steps for at least this long per configuration (more steps for fast configurations)")
    parser.add_argument("--iterations", type=int, default=5, help="K: SGD iterations per step")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resnet-batch-size", type=int, help="batch size for resnet32 (default: --batch-size)")
    parser.add_argument("--val-subsample", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each benchmark process")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all configurations; rows report the median")
    parser.add_argument("--roofline-seconds", type=float, default=2.0, help="time of the matrix-multiply roofline per round")
    parser.add_argument("--seed", type=seed_option, default=0, help="seed of the children, in [0, 2**32 - 1]")
    parser.add_argument("--data-root", type=Path,
                        help="folder holding cifar10-subset/ (default: $ALA_GYM_DATA, else ~/.local/share/ala_gym; make sets it to ../shared/data)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    parser.add_argument("--note", default="", help="free text added to the markdown report")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only rewrite throughput.md from --out's throughput.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one JSON config and print it
    args = parser.parse_args(argv)
    if args.render:
        from ala_gym.benchmarks.compare import ComparisonError
        from ala_gym.benchmarks.compare.store import read_json

        path = args.out / "throughput.json"
        if not path.is_file():
            parser.exit(2, f"{parser.prog}: error: --render: no {path}; name the --out folder of a measured run\n")
        shape = {"argv": list, "args": dict, "machine": dict, "finished": str, "results": [dict]}
        try:
            report = read_json(path, shape, "restore it (git checkout), or measure again without --render")
        except ComparisonError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        render_saved(parser, path, partial(write_markdown, report, args.out / "throughput.md"),
                     "restore it (git checkout), or measure again without --render")  # fmt: skip
        return
    if args.data_root is not None:
        os.environ["ALA_GYM_DATA"] = str(args.data_root.resolve())  # inherited by the measuring subprocesses
    if args.one:
        config = json.loads(args.one)
        probes = {"roofline": roofline, "kernels": kernel_rate, "products": product_rate}
        print(json.dumps(probes.get(config["mode"], measure)(config)))
        return
    if any(mode.startswith("ray") for mode in args.modes):
        try:
            require("ray")  # here, not in the measuring processes, where it would only fill rows with errors
        except MissingExtraError as exc:
            parser.exit(2, f"{parser.prog}: error: --modes {' '.join(args.modes)}: {exc}\n")

    check_out_folder(parser, args.out, ("throughput.json", "throughput.md"))
    configs = configurations(args)
    refused = check_inputs(args, configs)
    if refused:
        parser.exit(2, f"{parser.prog}: error: {refused}\n")

    load_start = load_average()
    runs: list[list[dict]] = [[] for _ in configs]
    roofline_rounds = []
    # The batched target's forward and backward alone, timed like the roofline before each round.
    model, n, _ = BATCHED_TARGET
    kernel_config = next((c for c in configs if (c["model"], c["num_envs"], c["mode"]) == (model, n, "native-batched")), None)
    kernel_rounds: list[dict] = []
    product_rounds: list[dict] = []
    for round_index in range(args.repeats):
        probe = run_isolated({"mode": "roofline", "device": args.device, "threads": args.threads,
                              "seconds": args.roofline_seconds}, args.timeout)  # fmt: skip
        roofline_rounds.append(probe.get("gflops"))
        print(f"round {round_index + 1}: roofline {probe.get('gflops') or probe.get('error')} GFLOP/s", flush=True)
        if kernel_config is not None:
            probe = run_isolated({**kernel_config, "mode": "kernels", "seconds": args.roofline_seconds}, args.timeout)
            kernel_rounds.append(probe)
            print(f"round {round_index + 1}: batched kernels alone {probe.get('iterations_per_s') or probe.get('error')} "
                  "iterations/s", flush=True)  # fmt: skip
            probe = run_isolated({**kernel_config, "mode": "products", "seconds": args.roofline_seconds}, args.timeout)
            product_rounds.append(probe)
            print(f"round {round_index + 1}: their matrix products alone {probe.get('iterations_per_s') or probe.get('error')} "
                  "iterations/s", flush=True)  # fmt: skip
        order = list(range(len(configs)))
        for index in order if round_index % 2 == 0 else order[::-1]:
            config = configs[index]
            result = run_isolated(config, args.timeout)
            runs[index].append(result)
            shown = result.get("error") or f"{result['iterations_per_s']:.1f} it/s, {mib(result['peak_rss_mib'])} MiB"
            print(f"{config['model']:10s} N={config['num_envs']:<3d} {config['mode']:18s} {shown}", flush=True)
    rows = [median_row(model_runs) for model_runs in runs]
    if all("error" in row for row in rows):  # a report of errors alone would replace the one already in --out
        parser.exit(2, f"{parser.prog}: error: no configuration was measured (first error: {rows[0]['error']}); "
                       f"{args.out} left as it was\n")  # fmt: skip
    measured = [rate for rate in roofline_rounds if rate]
    report = {
        "argv": portable_argv(sys.argv[1:] if argv is None else argv),  # no path of this machine
        # Where data and results lie is the machine's business, not the measurement's.
        "args": {k: v for k, v in vars(args).items() if k not in ("one", "render", "data_root", "out")},
        "machine": machine(),
        "load_average": {"start": load_start, "end": load_average()},
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "note": args.note,
        "roofline": {"gflops": max(measured), "rounds": roofline_rounds, "size": ROOFLINE_SIZE[args.device]} if measured else {},
        "kernels": best_kernels(kernel_rounds),
        "products": best_products(product_rounds),
        "flops_per_iteration": {model: training_flops(next(c for c in configs if c["model"] == model))
                                for model in args.models if any(c["model"] == model for c in configs)},  # fmt: skip
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "throughput.json", json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "throughput.md")


if __name__ == "__main__":
    run_main(main, "nothing was written (the report is written once every configuration is measured); the same command measures again")
