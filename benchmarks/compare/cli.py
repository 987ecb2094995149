"""Compare loss controllers on one ALA env: same seeds, same budget, every run reported.

    python -m ala_gym.benchmarks.compare --env ALA-Digits-v0 --controllers ce,random,reinforce --seeds 2 \\
        --total-iterations 200 --steps-per-action 20 --name digits-small

writes under ``benchmarks/results/<name>/``:

* ``runs/<controller>-seed<k>.json``: one file per finished run (config, seed, each child's per-step
  validation metric, Phi, final test metric, wall time, device, versions). A run is written only when
  it has finished, atomically, so an interrupted comparison resumes where it stopped: finished runs
  are skipped, nothing written is lost. A run file that is not a whole run (cut short, edited) is a
  cache miss: a warning says so, and the run is run again.
* ``results.json``: all runs together (each child's Phi at 4 of its steps and every step's mean off-diagonal
  entry: :func:`ala_gym.benchmarks.compare.store.compact_run`); ``config.json``: the comparison's configuration,
  which a later command must match; ``table.md``: mean +- std of the test metric over seeds, wall time and its
  ratio to cross-entropy; ``val_metric.png``; ``test_metric.png``; ``phi_<controller>.png`` heatmaps of Phi - I for the learned controllers.

``runs/`` is not committed; the runs of a committed ``results.json`` count as finished too, so the
same command in a fresh clone rebuilds the table instead of running again. A folder holds one
comparison: a command with another configuration, or with other controllers or seeds than the
``results.json`` already there (which would shrink the table or merge into it), is refused.

Data locations are a setting of the machine, not of a result: an env's ``data_root`` given as a
relative path (the ``cifar10-subset`` preset's) is looked up under ``--data-root`` (default
``$ALA_GYM_DATA``: :func:`ala_gym.core.data.data_home`), and no ``data_root`` is recorded or compared.

For a controller that trains several children in one run (``reinforce-multi``, ``ppo``), a seed's test
metric is the mean over its children; every child's value is in the JSON.

A controller name may carry env keywords of its own after ``@``: ``reinforce-multi@beta=0.01`` runs
``reinforce-multi`` with ``beta=0.01`` (values read as JSON, else as strings), beside the same
controller at the shared settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from ala_gym.agents import CONTROLLERS
from ala_gym.agents.cli import DescriptionFormatter, OneLineParser
from ala_gym.benchmarks.compare.errors import ComparisonError
from ala_gym.benchmarks.compare.presets import PRESETS, describe_presets
from ala_gym.benchmarks.compare.run import compare
from ala_gym.benchmarks.compare.specs import split_controllers
from ala_gym.benchmarks.oracle import ORACLES
from ala_gym.core.data import DataError


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """The command line: ``argv`` (default: the process's arguments) as ``--help`` describes it; bad input exits 2
    with one line. ``prog`` names the command in its usage and error lines (default: argparse's, the script's name)."""
    parser = OneLineParser(
        prog=prog, description=__doc__, epilog=describe_presets(), formatter_class=DescriptionFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named configuration (listed below)")
    parser.add_argument("--env", help="registered ALA env id, e.g. ALA-Digits-v0")
    parser.add_argument(
        "--controllers",
        help=f"comma-separated, from {sorted(CONTROLLERS)}, a controller of an installed plugin, or your own as "
        f"package.module:Factory; each optionally name(config_key=value;...)@env_key=value;...; and the rows "
        f"{', '.join(ORACLES)} (the best fixed loss of a grid, selected on validation)",
    )
    parser.add_argument("--seeds", type=int, help="how many seeds: runs seeds F, F + 1, ..., F + N - 1 (F: --first-seed)")
    parser.add_argument(
        "--first-seed", type=int,
        help="the first seed (default 0); with --seed-stride, a later first seed gives children no earlier seed trained",
    )
    parser.add_argument("--total-iterations", type=int, help="SGD iterations per child (default: the env's)")
    parser.add_argument("--steps-per-action", type=int, help="K, SGD iterations per controller step (default: the env's)")
    parser.add_argument("--env-kwargs", default="{}", help="JSON dict of further env keywords")
    parser.add_argument("--name", help="results folder under benchmarks/results/, or an absolute path (a folder of its "
                        "own); default: the preset's, else the env id")  # fmt: skip
    parser.add_argument(
        "--children", type=int,
        help="children per run of the multi-child controllers (those sharing one policy, such as reinforce-multi "
        "and ppo); the Fashion-MNIST and CIFAR presets set 2; without it, each controller's own count (10)",
    )
    parser.add_argument(
        "--baseline-children", type=int,
        help="children per run of each fixed controller (default 1); a seed's value is their mean",
    )
    parser.add_argument(
        "--seed-stride", type=int,
        help="run k seeds its env with k * stride (default: the most children a row runs, so that no child is "
        "shared between seeds); a smaller stride makes consecutive seeds share children",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--extend", action="store_true",
        help="add controllers or seeds to the comparison already in the folder (it is never shrunk)",
    )
    parser.add_argument(
        "--data-root", type=Path,
        help="the folder under which a relative data_root of the env keywords lies, such as the presets' cifar10-subset "
        "(default: $ALA_GYM_DATA, else ~/.local/share/ala_gym; make sets it to ../shared/data); Fashion-MNIST is read "
        "from Debian's package unless data_root names another folder; not part of a result's identity",
    )
    args = parser.parse_args(argv)

    config: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {"env_kwargs": {}}
    try:
        extra = json.loads(args.env_kwargs)
    except json.JSONDecodeError as exc:
        parser.error(f"--env-kwargs is not JSON ({exc}); write e.g. '{{\"beta\": 0.01}}'")
    if not isinstance(extra, dict):
        parser.error("--env-kwargs must be a JSON object, e.g. '{\"beta\": 0.01}'")
    config["env_kwargs"] = {**config["env_kwargs"], **extra}
    for flag in ("env", "controllers", "seeds", "first_seed", "name", "children", "baseline_children", "seed_stride"):
        if getattr(args, flag) is not None:
            config[flag] = getattr(args, flag)
    for key in ("total_iterations", "steps_per_action"):  # over a preset's value; beside --env-kwargs', refused
        if getattr(args, key) is not None:
            if key in extra:
                parser.error(f"{key} is given twice (--{key.replace('_', '-')} and --env-kwargs); give it once")
            config["env_kwargs"][key] = getattr(args, key)
    missing = [k for k in ("env", "controllers", "seeds") if k not in config]
    if missing:
        parser.error(f"give --preset or all of --env --controllers --seeds (missing: {', '.join(missing)})")
    for flag in ("seeds", "children", "baseline_children", "seed_stride", "threads"):
        value = config.get(flag) if flag != "threads" else args.threads
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be a positive count, got {value}")
    first_seed = config.get("first_seed", 0)
    if first_seed < 0:
        parser.error(f"--first-seed must be a seed >= 0, got {first_seed}")
    if args.data_root is not None:
        os.environ["ALA_GYM_DATA"] = str(args.data_root.resolve())
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name = config.get("name") or config["env"].lower()
    seeds = list(range(first_seed, first_seed + config["seeds"]))
    try:
        compare(
            config["env"],
            split_controllers(config["controllers"]),
            seeds,
            config["env_kwargs"],
            name,
            config.get("children"),
            config.get("baseline_children"),
            config.get("seed_stride"),
            args.extend,
        )
    except (ComparisonError, DataError, ValueError, TypeError, gym.error.Error) as exc:
        # Bad input (a refused folder, an unknown id, an env keyword out of range, missing data): one line.
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:  # every finished run is on disk already; the one in progress starts over
        parser.exit(130, f"{parser.prog}: interrupted; the finished runs are kept, and the same command runs the rest\n")
