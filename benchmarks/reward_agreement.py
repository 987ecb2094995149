"""How reliable is the sign reward of Eq. 5 for a given validation size? Two disjoint halves agree how often?

Along cross-entropy trajectories (Phi = I, no action), the discounted validation error of every step is
computed on two disjoint random validation subsets of the same size ``S``, drawn once per seed. The
reward ``sign(M_t - M_{t+1})`` of each is compared: ``agree`` is the fraction of steps where both give
the same sign (ties included), ``ties`` the fraction of zero rewards. A size whose rewards agree in most
steps measures the child rather than which images were drawn; the env's default ``val_subsample`` per
dataset is chosen from these results (``benchmarks/results/reward_agreement.md``).

    python -m ala_gym.benchmarks.reward_agreement --env ALA-Digits-v0 --sizes 90,180,360 --seeds 3 \\
        --env-kwargs '{"total_iterations": 600, "steps_per_action": 20, "val_size": 720}'

Every logit pass covers the whole validation split once; the subsets are read from it, so each size
costs no extra forward pass.
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import ala_gym  # noqa: F401  (registers the env ids)
from ala_gym.agents.cli import DescriptionFormatter, OneLineParser, run_main
from ala_gym.benchmarks.compare import ComparisonError, machine, versions, without_locations, write_json
from ala_gym.benchmarks.compare.store import read_json
from ala_gym.benchmarks.machine import RESULTS as DEFAULT_RESULTS
from ala_gym.benchmarks.machine import render_saved
from ala_gym.core.data import DataError, with_data_home
from ala_gym.core.files import write_text_atomic
from ala_gym.core.metrics import discounted_metric, error_rate
from ala_gym.envs.base import ALAEnv
from ala_gym.envs.classification import ALAClassificationEnv
from ala_gym.envs.spec import spec_keywords

RESULTS = DEFAULT_RESULTS / "reward_agreement.json"


def disjoint_halves(count: int, sizes: list[int], seed: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per size ``S``: two disjoint random sets of ``S`` indices into ``count`` images, drawn from ``seed``: the
    first ``S`` and the next ``S`` of one permutation (so a smaller size's first set lies in a larger one's first
    set, while its second set need not lie in the larger one's second)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return {size: (order[:size], order[size : 2 * size]) for size in sizes}


FIXED_KEYWORDS = frozenset({"val_subsample", "loss_form"})
"""Env keywords the measurement sets itself (:func:`trajectory_rewards`)."""


def trajectory_rewards(env_id: str, env_kwargs: dict[str, Any], sizes: list[int], seed: int) -> dict[int, np.ndarray]:
    """Per size: ``[steps, 2]`` sign rewards of the two halves along one cross-entropy trajectory."""
    env_kwargs = with_data_home({**env_kwargs, "val_subsample": None, "loss_form": "cross_entropy"})
    env = gym.make(env_id, **env_kwargs).unwrapped
    assert isinstance(env, ALAEnv)  # an ALA id
    env.reset(seed=seed)
    val = env.data.val
    if 2 * max(sizes) > len(val):
        raise ValueError(f"the validation split has {len(val)} images: --sizes up to {len(val) // 2} fit two halves")
    halves = disjoint_halves(len(val), sizes, seed)
    settings, trainer = env.settings, env.trainer
    assert trainer is not None  # built by reset

    def errors() -> dict[int, tuple[float, ...]]:  # per size, the two halves' errors
        logits = trainer.logits(val)
        return {
            size: tuple(float(error_rate(logits[idx], val.labels[idx])) for idx in pair) for size, pair in halves.items()
        }

    last = {size: np.array(pair) for size, pair in errors().items()}
    rewards: dict[int, list[np.ndarray]] = {size: [] for size in sizes}
    while trainer.iteration < settings.total_iterations:
        values, offsets = [], []
        for chunk, offset in settings.schedule(trainer.iteration):
            trainer.train(chunk, env.episode.loss)
            values.append(errors())
            offsets.append(offset)
        for size in sizes:
            metric = np.array([discounted_metric([v[size][h] for v in values], offsets, settings.gamma) for h in (0, 1)])
            rewards[size].append(np.sign(last[size] - metric))
            last[size] = metric
    return {size: np.array(r) for size, r in rewards.items()}


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=DescriptionFormatter)
    parser.add_argument("--env", required=True, help="registered ALA env id")
    parser.add_argument("--sizes", required=True, help="comma-separated subset sizes S (two disjoint subsets each)")
    parser.add_argument("--seeds", type=int, default=3, help="number of trajectories (seeds 0..N-1)")
    parser.add_argument(
        "--env-kwargs", default="{}",
        help="JSON dict of env kwargs (budget, ...); a relative data_root is read under $ALA_GYM_DATA: ala_gym.core.data.data_home()",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=RESULTS,
        help="the JSON file of every env's record (default: the committed one); the table is written beside it (.md)",
    )
    parser.add_argument("--replace", action="store_true", help="replace the env's record where the file holds one")
    args = parser.parse_args(argv)
    out = args.out
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.exit(2, f"reward_agreement: --sizes {args.sizes!r}: give whole numbers separated by commas, e.g. 50,200\n")
    try:
        env_kwargs = json.loads(args.env_kwargs)
    except ValueError as error:
        parser.exit(2, f"reward_agreement: --env-kwargs is not JSON ({error}); write e.g. '{{\"total_iterations\": 500}}'\n")
    if min(sizes) < 1 or args.seeds < 1 or args.threads < 1 or not isinstance(env_kwargs, dict):
        parser.exit(2, "reward_agreement: --sizes, --seeds and --threads must be positive, --env-kwargs a JSON object\n")
    if set_here := sorted(FIXED_KEYWORDS & set(env_kwargs)):  # the record would name a value the run did not use
        parser.exit(2, f"reward_agreement: --env-kwargs sets {', '.join(set_here)}, which the measurement fixes "
                       "(cross-entropy trajectories, scored on the whole validation split); leave them out\n")  # fmt: skip
    # The other envs' records are read before any computing: the new record is written beside them.
    fix = "restore it (git checkout), or move it away to start a new one"
    results: dict[str, Any] = {}
    try:
        if out.exists():
            results = read_json(out, {}, fix)
    except ComparisonError as error:  # damaged, or no file to read (a folder)
        parser.exit(2, f"reward_agreement: {error}\n")
    render_saved(parser, out, partial(markdown, results), fix)  # its records are rendered again at the end
    if args.env in results and not args.replace:  # a measurement of other settings would go unseen
        saved = results[args.env]
        parser.exit(2, f"reward_agreement: {out} holds a record of {args.env} (seeds {len(saved['seeds'])}, sizes "
                       f"{','.join(str(row['size']) for row in saved['rows'])}, env kwargs {json.dumps(saved['env_kwargs'])}); "
                       "pass --replace to replace it, or --out another file\n")  # fmt: skip
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        builder, _ = spec_keywords(args.env)  # an unknown id, or one of no ALA env, named with the package's ids
        if not issubclass(getattr(builder, "__self__", object), ALAClassificationEnv):  # error rates of logits
            raise ValueError(f"{args.env} is no classification env: the measurement scores error rates of class logits")
        per_seed = [trajectory_rewards(args.env, env_kwargs, sizes, seed) for seed in range(args.seeds)]
    except (ValueError, TypeError, DataError, gym.error.Error) as error:  # an unknown id, a bad keyword, no data
        parser.exit(2, f"reward_agreement: {error}\n")
    rows = []
    for size in sizes:
        pairs = np.concatenate([r[size] for r in per_seed])
        rows.append(
            {
                "size": size,
                "steps": len(pairs),
                "agree": float(np.mean(pairs[:, 0] == pairs[:, 1])),
                "opposite": float(np.mean(pairs[:, 0] * pairs[:, 1] < 0)),
                "ties": float(np.mean(pairs == 0)),
                "agree_nonzero": float(np.mean((pairs[:, 0] == pairs[:, 1])[np.all(pairs != 0, axis=1)]))
                if np.all(pairs != 0, axis=1).any() else float("nan"),
                "agree_per_seed": [float(np.mean(r[size][:, 0] == r[size][:, 1])) for r in per_seed],
            }
        )
    shown = without_locations(env_kwargs)  # where data lives is not a result's identity
    record = {"env": args.env, "env_kwargs": shown, "seeds": list(range(args.seeds)), "rows": rows,
              "wall_s": time.perf_counter() - start, "machine": machine(), "versions": versions()}
    results[args.env] = record
    write_json(out, results)
    write_text_atomic(out.with_suffix(".md"), markdown(results))
    for row in rows:
        print(f"{args.env} S={row['size']}: agree {row['agree']:.2f}, opposite {row['opposite']:.2f}, "
              f"ties {row['ties']:.2f}, agree when both non-zero {row['agree_nonzero']:.2f} over {row['steps']} steps", file=sys.stdout)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Reward agreement between two disjoint validation subsets of size S",
        "",
        "`python -m ala_gym.benchmarks.reward_agreement` (each env's settings in its row): along cross-entropy trajectories, the",
        "sign reward of Eq. 5 (discounted validation error, the env's evaluation schedule) computed on two",
        "disjoint random subsets of S validation images each. agree = same sign (ties included), opposite =",
        "one +1 and one -1, ties = fraction of zero rewards, agree when both non-zero = same sign among the steps",
        "where neither subset gives a tie (what a sign reward can be trusted with). Pooled over all steps of all seeds.",
        "",
        "| env | env kwargs | seeds | S | steps | agree | opposite | ties | agree when both non-zero | agree per seed | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for env_id, record in results.items():
        for row in record["rows"]:
            lines.append(
                f"| {env_id} | `{json.dumps(record['env_kwargs'])}` | {record['seeds']} | {row['size']} | {row['steps']} | "
                f"{row['agree']:.2f} | {row['opposite']:.2f} | {row['ties']:.2f} | {row['agree_nonzero']:.2f} | "
                f"{', '.join(f'{a:.2f}' for a in row['agree_per_seed'])} | {record['machine']['cpu']}, "
                f"{record['machine']['torch_threads']} thread |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_main(main, "nothing was written (the record is written once every seed ran); the same command runs again")
