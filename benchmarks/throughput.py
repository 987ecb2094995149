"""SGD iterations per second summed over children: native vector env vs Gymnasium ``sync`` vs ``async`` vs Ray.

    python -m ala_gym.benchmarks.throughput                      # CPU, the budget of results/throughput.md
    python -m ala_gym.benchmarks.throughput --device cuda        # on a GPU machine
    python -m ala_gym.benchmarks.throughput --models mlp --out benchmarks/results/throughput-mlp   # the MLP on digits
    python -m ala_gym.benchmarks.throughput --models small_cnn --dataset fashion-mnist --num-envs 4 --iterations 200 \
        --modes native-sequential ray-1 ray-2 ray-4 --out benchmarks/results/throughput-ray      # Ray vs in-process

For every model (small CNN and ResNet-32 on CIFAR-10-sized 3x32x32 inputs from the CIFAR-10 subset
under ``--data-root``, or on Fashion-MNIST with ``--dataset fashion-mnist``; the MLP on the embedded 8x8
digits), every N in ``--num-envs`` and every mode:

* ``native-batched``: :class:`ala_gym.envs.vector.ALAVectorEnv`, children vmapped together;
* ``native-sequential``: the same env, children trained one after another;
* ``sync`` / ``async``: ``gym.make_vec(..., vectorization_mode=...)`` over N single envs (async
  workers run 1 torch thread each, the single env's default in a worker process);
* ``ray-A``: :class:`ala_gym.wrappers.ray.RayVectorEnv` on a local Ray cluster of ``--threads`` CPUs
  started by the measuring process, the N children spread over A actors (``ceil(N / A)`` each, trained
  one after another, ``--threads / A`` CPUs and ``max(1, floor(--threads / A))`` torch threads each).
  Against ``native-sequential`` at the same N, ``ray-1`` does the same arithmetic on as many threads in
  one actor, so its extra time per step is Ray's per-step overhead (scheduling and transfer).

the script builds the env, resets it (seed ``--seed``), runs one warm-up step, then times ``--steps``
steps of K = ``--iterations`` SGD iterations each (one validation pass of ``--val-subsample`` images per
step, as the env requires). Throughput = N * steps * K / seconds. Each configuration runs in its own
subprocess, so its peak memory is its own: peak RSS of that process plus that of its largest child
(an async worker; the OS reports only the largest, so async's total is about main + N x worker) and,
on CUDA, ``torch.cuda.max_memory_allocated`` of the main process.

Writes ``throughput.json`` and ``throughput.md`` under ``--out`` (machine, versions, threads, seeds and
budget beside every number, and findings computed from the numbers). ``--render`` rewrites the
markdown from an existing JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from ala_gym.benchmarks.machine import RESULTS
from ala_gym.wrappers import MissingExtraError, require

MODES = ("native-batched", "native-sequential", "sync", "async", "ray-1", "ray-2", "ray-4")
DEFAULT_MODES = MODES[:4]


def measure(config: dict) -> dict:
    """Time one configuration in this process; returns throughput and peak memory."""
    import gymnasium as gym
    import numpy as np
    import torch

    import ala_gym  # noqa: F401  (registers the ids)
    from ala_gym.core.data import cifar10_subset_dir

    torch.set_num_threads(config["threads"])
    n, mode = config["num_envs"], config["mode"]
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
    if mode.startswith("native"):
        envs = gym.make_vec(env_id, num_envs=n, train_mode=mode.split("-")[1], **kwargs)
    elif mode.startswith("ray"):
        import logging

        import ray

        actors = int(mode.split("-")[1])
        ray.init(num_cpus=config["threads"], include_dashboard=False, logging_level=logging.ERROR)
        envs = gym.make_vec(env_id, num_envs=n, backend="ray", train_mode="sequential", children_per_worker=-(-n // actors),
                            num_cpus_per_worker=config["threads"] / actors, **kwargs)  # fmt: skip
    else:
        envs = gym.make_vec(env_id, num_envs=n, vectorization_mode=mode, **kwargs)
    envs.reset(seed=config["seed"])
    actions = np.ones((n, 55), dtype=np.int64)  # Phi unchanged: pure training cost
    envs.step(actions)  # warm-up: allocator, kernels, lazy initialisation
    if config["device"] == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(config["steps"]):
        envs.step(actions)  # every step ends with a host copy of the evaluation, so timing is synchronous
    seconds = time.perf_counter() - start
    envs.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if config["device"] == "cuda" else None
    return {
        **config,
        "seconds": seconds,
        "iterations_per_s": n * config["steps"] * config["iterations"] / seconds,
        "peak_rss_mib": peak_kib / 1024,
        "peak_cuda_mib": cuda_peak,
    }


def run_isolated(config: dict, timeout: float) -> dict:
    """Run :func:`measure` in a fresh interpreter so peak memory is per configuration."""
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
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_markdown(report: dict, path: Path) -> None:
    args = report["args"]
    lines = [
        "# Throughput: native vector env vs `sync` vs `async`",
        "",
        f"Written by `python -m ala_gym.benchmarks.throughput {' '.join(report['argv'])}` at {report['finished']}.",
        "",
        f"* machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPU cores"
        + (f", GPU {report['machine']['gpu']}" if "gpu" in report["machine"] else ", no GPU"),
        f"* python {report['machine']['python']}, torch {report['machine']['torch']}, device `{args['device']}`",
        f"* torch threads: `torch.set_num_threads({args['threads']})` in each benchmark process; async workers 1 thread each",
        f"* seed {args['seed']}; data: "
        + ("Fashion-MNIST (1x28x28 inputs)" if args.get("dataset") == "fashion-mnist" else "the CIFAR-10 subset (3x32x32 inputs)")
        + " for the convolutional models, the embedded 8x8 digits for the MLP",
        f"* budget per measurement: 1 warm-up step, then {args['steps']} timed steps of K = {args['iterations']} "
        f"SGD iterations per child, batch {args['batch_size']} (ResNet-32: {args['resnet_batch_size'] or args['batch_size']}), one validation pass of {args['val_subsample']} images per step",
        "* iterations/s is summed over the N children; `x N=1` is against the same mode at N = 1",
        "* peak RSS: the configuration's process plus its largest child process (an async worker; the OS"
        " reports only the largest, so async's total is roughly main + N x worker; Ray actors are the Ray"
        " daemon's children, not counted)",
    ]
    if report.get("note"):
        lines += ["", report["note"]]
    lines += ["", "Findings (computed from the table below by `findings()`):", ""] + [f"* {f}" for f in findings(report)]
    for model in args["models"]:
        lines += ["", f"## {model}", "", "| N | mode | iterations/s | x N=1 | seconds | peak RSS MiB | peak CUDA MiB |", "|---|---|---|---|---|---|---|"]
        rows = [r for r in report["results"] if r["model"] == model]
        base = {r["mode"]: r["iterations_per_s"] for r in rows if r["num_envs"] == 1 and "error" not in r}
        for r in sorted(rows, key=lambda r: (r["num_envs"], MODES.index(r["mode"]))):
            if "error" in r:
                lines.append(f"| {r['num_envs']} | {r['mode']} | error: {r['error']} | | | | |")
                continue
            ratio = r["iterations_per_s"] / base[r["mode"]] if r["mode"] in base else float("nan")
            cuda = "" if r["peak_cuda_mib"] is None else f"{r['peak_cuda_mib']:.0f}"
            lines.append(
                f"| {r['num_envs']} | {r['mode']} | {r['iterations_per_s']:.1f} | {ratio:.2f} | {r['seconds']:.2f} "
                f"| {r['peak_rss_mib']:.0f} | {cuda} |"
            )
    path.write_text("\n".join(lines) + "\n")


def fastest_native_mode(report: dict, model: str) -> str | None:
    """``"native-batched"`` or ``"native-sequential"``: the faster at the largest N measured with both."""
    rows = [r for r in report["results"] if r["model"] == model and r["mode"].startswith("native") and "error" not in r]
    sizes = [n for n in {r["num_envs"] for r in rows} if sum(r["num_envs"] == n for r in rows) == 2]
    if not sizes:
        return None
    pair = [r for r in rows if r["num_envs"] == max(sizes)]
    return max(pair, key=lambda r: r["iterations_per_s"])["mode"]


def findings(report: dict) -> list[str]:
    """What the numbers say, per model: the faster native path, and the native env against ``sync``."""
    lines = []
    for model in report["args"]["models"]:
        rows = {(r["num_envs"], r["mode"]): r["iterations_per_s"] for r in report["results"]
                if r["model"] == model and "error" not in r}
        sizes = sorted({n for n, _ in rows})
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
            lines.append(f"{model}, N = {n}: Ray's per-step overhead (ray-1 against native-sequential) "
                         f"{100 * overhead:+.1f}% of a step ({'under' if overhead < 0.05 else 'not under'} the 5% target).")
        for mode in ("ray-2", "ray-4"):
            if native and rate[mode]:
                lines.append(f"{model}, N = {n}: {mode} runs {rate[mode] / native:.2f}x the native-sequential rate.")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet32"], choices=["mlp", "small_cnn", "resnet32"],
                        help="child models (mlp runs on digits, the others on the CIFAR-10 subset)")
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 2, 4, 10])
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    parser.add_argument("--dataset", default="cifar10-subset", choices=["cifar10-subset", "fashion-mnist"],
                        help="data of the convolutional models")
    parser.add_argument("--steps", type=int, default=2, help="timed env steps per configuration")
    parser.add_argument("--iterations", type=int, default=5, help="K: SGD iterations per step")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resnet-batch-size", type=int, help="batch size for resnet32 (default: --batch-size)")
    parser.add_argument("--val-subsample", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each benchmark process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path,
                        help="folder holding cifar10-subset/ (default: $ALA_GYM_DATA, else ~/.local/share/ala_gym; make sets it to ../shared/data)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    parser.add_argument("--note", default="", help="free text added to the markdown report")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only rewrite throughput.md from --out's throughput.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one JSON config and print it
    args = parser.parse_args(argv)
    if args.render:
        write_markdown(json.loads((args.out / "throughput.json").read_text()), args.out / "throughput.md")
        return
    if args.data_root is not None:
        os.environ["ALA_GYM_DATA"] = str(args.data_root)  # inherited by the measuring subprocesses
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    if any(mode.startswith("ray") for mode in args.modes):
        try:
            require("ray")  # here, not in the measuring processes, where it would only fill rows with errors
        except MissingExtraError as exc:
            parser.exit(2, f"{parser.prog}: error: --modes {' '.join(args.modes)}: {exc}\n")

    results = []
    for model in args.models:
        for n in args.num_envs:
            for mode in args.modes:
                config = {
                    "model": model, "num_envs": n, "mode": mode, "device": args.device, "threads": args.threads,
                    "seed": args.seed, "steps": args.steps, "iterations": args.iterations,
                    "batch_size": (args.resnet_batch_size or args.batch_size) if model == "resnet32" else args.batch_size,
                    "val_subsample": args.val_subsample, "dataset": args.dataset,
                }
                result = run_isolated(config, args.timeout)
                results.append(result)
                shown = result.get("error") or f"{result['iterations_per_s']:.1f} it/s, {result['peak_rss_mib']:.0f} MiB"
                print(f"{model:10s} N={n:<3d} {mode:18s} {shown}", flush=True)
    report = {
        "argv": sys.argv[1:] if argv is None else argv,
        # Where data and results lie is the machine's business, not the measurement's.
        "args": {k: v for k, v in vars(args).items() if k not in ("one", "render", "data_root", "out")},
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "note": args.note,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "throughput.md")


if __name__ == "__main__":
    main()
