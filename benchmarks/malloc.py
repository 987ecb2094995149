"""Why the overhead benchmark fixes glibc's malloc thresholds: the same arithmetic, timed under both settings.

Two worker processes, one with glibc's default (dynamic) malloc thresholds and one after
:func:`ala_gym.core.allocator.retain_freed_memory`, each run two loops of one child, one SGD iteration
at a time, interleaved (the order rotating every round):

* ``plain``: the overhead benchmark's plain cross-entropy loop (``torch.optim.SGD``);
* ``trainer``: :class:`ala_gym.core.trainer.ChildTrainer` under Eq. 6 at Phi = I (hard-label
  cross-entropy and :func:`ala_gym.core.sgd.sgd_step`).

Both do the same arithmetic on the env child's weights. Each iteration's CPU time and minor page faults
(``getrusage``) are recorded; the report gives medians per loop and process. Where the two loops differ
under the default thresholds and not once the thresholds are fixed, and the faults go with the time,
the difference is the allocator's, not the loops'.

Usage::

    python -m ala_gym.benchmarks.malloc                       # ResNet-32 on the CIFAR-10 subset, 16 rounds
    python -m ala_gym.benchmarks.malloc --config fashion-mnist --rounds 40

The CIFAR-10 subset is read from ``--data-root`` (default ``$ALA_GYM_DATA``: :func:`ala_gym.core.data.data_home`).
Writes ``benchmarks/results/malloc.json`` and ``benchmarks/results/malloc.md`` (``--out`` changes the folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import ala_gym  # noqa: F401  (registers the env ids)
from ala_gym.agents.cli import DescriptionFormatter, OneLineParser, portable_argv, run_main
from ala_gym.benchmarks.machine import RESULTS, check_out_folder
from ala_gym.benchmarks.overhead import (
    CONFIGS,
    ENV_SEED,
    _plain_loop,
    _trainer_loop,
    data_location,
    data_problem,
    env_child_seed,
    machine_info,
)
from ala_gym.core.allocator import retain_freed_memory
from ala_gym.core.files import write_text_atomic
from ala_gym.envs.classification import ALAClassificationEnv

MODES = ("default", "retained")
LOOP_NAMES = ("plain", "trainer")
WARMUP_ROUNDS = 3


def _minor_faults() -> int:
    import resource  # POSIX only; main() has refused other systems before any worker starts

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(config: str, rounds: int) -> dict[str, Any]:
    """Per-iteration CPU seconds and minor page faults of the two loops, ``rounds`` interleaved rounds."""
    spec = CONFIGS[config]
    env = gym.make(spec["env_id"], disable_env_checker=True, **spec["kwargs"], device="cpu", **data_location(config)).unwrapped
    assert isinstance(env, ALAClassificationEnv)  # every config's id
    seed = env_child_seed(ENV_SEED)
    loops = {"plain": _plain_loop(env, seed), "trainer": _trainer_loop(env, seed, np.eye(env.data.num_classes))}
    cpu: dict[str, list[float]] = {name: [] for name in LOOP_NAMES}
    faults: dict[str, list[int]] = {name: [] for name in LOOP_NAMES}
    for round_index in range(WARMUP_ROUNDS + rounds):
        order = LOOP_NAMES[round_index % 2 :] + LOOP_NAMES[: round_index % 2]
        for name in order:
            start_faults, start_cpu = _minor_faults(), time.process_time()
            loops[name](1)
            if round_index >= WARMUP_ROUNDS:
                cpu[name].append(time.process_time() - start_cpu)
                faults[name].append(_minor_faults() - start_faults)
    return {
        "model": env.train_config.model,
        "median_cpu_s": {name: statistics.median(values) for name, values in cpu.items()},
        "median_faults": {name: statistics.median(values) for name, values in faults.items()},
        "mean_faults": {name: statistics.fmean(values) for name, values in faults.items()},
        "cpu_s": cpu,
        "faults": faults,
    }


def worker(mode: str, config: str, rounds: int) -> None:
    torch.set_num_threads(1)
    retained = retain_freed_memory() if mode == "retained" else None
    print(json.dumps({"mode": mode, "retain_freed_memory": retained, **measure(config, rounds)}))


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# The same arithmetic under glibc's default and fixed malloc thresholds",
        "",
        f"Produced by `python -m ala_gym.benchmarks.malloc {' '.join(report['argv'])}` on {machine['date_utc']}.",
        "",
        f"* Machine: {machine['cpu_model']}, {machine['cpu_cores_visible']} cores visible, 1 torch thread per worker "
        f"process; torch {machine['torch_version']}, device `cpu`; load average at the start {machine['load_average_start'] or 'not kept by this OS'}.",
        f"* Config `{report['config']}` of `benchmarks/overhead.py` ({report['results'][0]['model']}), env reset seed "
        f"{ENV_SEED}: both loops start from that env child's weights. {report['rounds']} timed rounds after "
        f"{WARMUP_ROUNDS} warm-up rounds; a round is one SGD iteration of each loop, the order rotating.",
        "* Medians per iteration: CPU time (this process's) and minor page faults (`getrusage`); the mean of the faults too.",
        "",
        "| malloc thresholds | plain (ms CPU) | trainer (ms CPU) | trainer vs plain | plain faults (median / mean) | trainer faults (median / mean) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        cpu, median, mean = row["median_cpu_s"], row["median_faults"], row["mean_faults"]
        lines.append(
            f"| {row['mode']} | {1000 * cpu['plain']:.1f} | {1000 * cpu['trainer']:.1f} | "
            f"{100 * (cpu['trainer'] / cpu['plain'] - 1):+.1f}% | {median['plain']:.0f} / {mean['plain']:.0f} | "
            f"{median['trainer']:.0f} / {mean['trainer']:.0f} |"
        )
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"* {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=DescriptionFormatter)
    parser.add_argument("--config", default="cifar10-subset", choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=16, help="timed rounds (one iteration of each loop)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", action="append", default=[], help="a line for the notes section of the md")
    parser.add_argument(
        "--data-root", type=Path, help="folder holding cifar10-subset/ (default: $ALA_GYM_DATA: ala_gym.core.data.data_home())"
    )
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)  # internal: one measuring process
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be positive, got {args.rounds}")
    if args.data_root is not None:
        os.environ["ALA_GYM_DATA"] = str(args.data_root.resolve())  # inherited by the workers, which run elsewhere
    if args.worker:
        worker(args.worker, args.config, args.rounds)
        return
    if platform.libc_ver()[0] != "glibc":  # retain_freed_memory() does nothing there: both modes would be the same
        parser.exit(2, f"{parser.prog}: error: this benchmark compares glibc's malloc settings, and this Python runs on "
                       f"{platform.system()} without glibc; run it on Linux with glibc\n")  # fmt: skip
    check_out_folder(parser, args.out, ("malloc.json", "malloc.md"))
    # Here, before the workers start: a worker that fails on its data would only end the run with its traceback.
    if problem := data_problem(args.config, torch.device("cpu")):
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    torch.set_num_threads(1)  # as in the workers, so that the recorded machine says what they ran with
    machine = machine_info(torch.device("cpu"), 1)
    results = []
    for mode in MODES:
        command = [sys.executable, "-m", "ala_gym.benchmarks.malloc", "--worker", mode, "--config", args.config,
                   "--rounds", str(args.rounds)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)  # in this folder, where a relative data home is
        if done.returncode != 0:
            sys.exit(f"the {mode} worker failed:\n{done.stderr.strip()}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        cpu = results[-1]["median_cpu_s"]
        print(f"{mode}: plain {1000 * cpu['plain']:.1f} ms, trainer {1000 * cpu['trainer']:.1f} ms", flush=True)
    report = {
        "argv": portable_argv(sys.argv[1:] if argv is None else argv),  # no path of this machine
        "machine": machine,
        "config": args.config,
        "rounds": args.rounds,
        "results": results,
        "notes": list(args.note),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "malloc.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(args.out / "malloc.md", render_markdown(report))


if __name__ == "__main__":
    run_main(main, "nothing was written (the report is written once both workers finished); the same command measures again")
