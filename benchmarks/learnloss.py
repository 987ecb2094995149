"""Tuning the L1 and L2 strengths of softmax regression: LearnLoss against random search and Optuna's TPE.

    python -m ala_gym.benchmarks.learnloss --seeds 5 --budget 20 --name learnloss

The loss of every run is ``CE_train(W, b) + lambda_1 ||W||_1 + lambda_2 ||W||_2^2`` (bias not
penalised); LearnLoss sees the components ``[CE_train, ||W||_1, ||W||_2^2]`` of each trained model with
the data term's weight fixed at 1. All three tuners search ``lambda_i`` in ``[1e-6, 0.1]`` (random search
and TPE log-uniformly; LearnLoss in the box ``[0, 0.1]^2``, its first ``k + 1 = 3`` runs drawn as random
search draws them, from the same seed, so both start from the same three models).

Training is deterministic and full batch, so a model is a function of lambda: scipy's L-BFGS-B on the
split form ``W = P - N`` with ``P, N >= 0``, where the L1 norm becomes the linear ``sum(P + N)`` and the
problem smooth and bound-constrained (L-BFGS-B's home ground; plain proximal gradient needed thousands of
iterations at small lambda here). The run stops at L-BFGS-B's tolerance or after ``max_iter`` (200) iterations,
which keeps the whole comparison within about 20 CPU minutes (each run records ``converged``); either
way it is deterministic. Float64 throughout.

Datasets (features standardised with the training subsample's statistics):

* ``digits``: scikit-learn's 8x8 digits, 64 pixels; ``ala_gym.core.data.load_digits`` split, 1,077 train /
  360 validation / 360 test.
* ``fashion-mnist``: Fashion-MNIST pixels, 2x2 average-pooled to 14x14 (196 features) so that a fit takes
  about a second; a fixed subsample (generator seed 0) of 1,000 training and 2,000 validation images of
  ``ala_gym.core.data.load_fashion_mnist``'s split, and the full 10,000-image test set.
* ``cifar10``: the CIFAR-10 subset's pixels, 4x4 average-pooled to 8x8x3 (192 features); 1,000 of its
  training images (fixed subsample), its full validation split (1,034) and test split (1,017).

Writes under ``benchmarks/results/<name>/``: ``runs/<dataset>-<method>-seed<k>.json`` (every training run:
lambda, validation and test error, components, fit and selection seconds; written when a tuning run
finishes, so an interrupted benchmark resumes), ``results.json``, ``table.md`` and ``best_val_error.png``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp

from ala_gym.agents.cli import DescriptionFormatter, OneLineParser, interrupted
from ala_gym.agents.learnloss import LearnLossConfig, Trial, learn_loss, random_lambda
from ala_gym.benchmarks.compare import ComparisonError, write_json
from ala_gym.benchmarks.compare.store import NUMBER, check_writable, read_json
from ala_gym.benchmarks.machine import RESULTS, cpu_model, package_version
from ala_gym.core.data import DataError, cifar10_subset_dir, load_cifar10, load_digits, load_fashion_mnist
from ala_gym.core.files import write_text_atomic
from ala_gym.core.machine import load_average, source_digest
from ala_gym.wrappers import MissingExtraError, require

METHODS = ("learnloss", "random", "tpe")
DATASETS = ("digits", "fashion-mnist", "cifar10")


@dataclass
class Problem:
    """Standardised float64 features and labels of one dataset's three splits."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


def load_problem(name: str, fashion_mnist_root: str | None = None, cifar10_root: str | None = None,
                 train_size: int | None = None, val_size: int | None = None) -> Problem:
    """The features of ``name`` (module docstring); ``train_size``/``val_size`` override the subsample sizes."""
    sizes: tuple[int | None, int | None]  # train and validation subsample sizes; None keeps the whole split
    if name == "digits":
        data, pool, sizes = load_digits(), 1, (None, None)
    elif name == "fashion-mnist":
        data, pool, sizes = load_fashion_mnist(data_root=fashion_mnist_root), 2, (1000, 2000)
    elif name == "cifar10":
        data, pool, sizes = load_cifar10(data_root=cifar10_root or cifar10_subset_dir(), download=False), 4, (1000, None)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    sizes = (train_size or sizes[0], val_size or sizes[1])

    def features(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(images.double() / 255.0, pool).flatten(1)

    generator = torch.Generator().manual_seed(0)
    splits = []
    for split, size in ((data.train, sizes[0]), (data.val, sizes[1]), (data.test, None)):
        keep = torch.randperm(len(split), generator=generator)[:size] if size is not None else torch.arange(len(split))
        splits.append((features(split.images[keep]), split.labels[keep]))
    mean, std = splits[0][0].mean(0), splits[0][0].std(0).clamp_min(1e-3)
    (xt, yt), (xv, yv), (xs, ys) = [((x - mean) / std, y) for x, y in splits]
    return Problem(name, xt, yt, xv, yv, xs, ys, data.num_classes)


def fit(problem: Problem, lam: np.ndarray, max_iter: int = 200) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Train softmax regression with ``lam = [l1, l2]`` to convergence; return (components, val error, info)."""
    l1, l2 = float(lam[0]), float(lam[1])
    x, y = problem.x_train.numpy(), problem.y_train.numpy()
    n, p, c = len(y), x.shape[1], problem.num_classes
    size = p * c
    rows = np.arange(n)

    def unpack(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (z[:size] - z[size : 2 * size]).reshape(p, c), z[2 * size :]

    def loss_and_grad(z: np.ndarray) -> tuple[float, np.ndarray]:
        # Hand-written gradient of mean cross-entropy: autograd's per-call overhead dominated these small fits.
        w, b = unpack(z)
        logits = x @ w + b
        log_norm = logsumexp(logits, axis=1)
        residual = np.exp(logits - log_norm[:, None])
        residual[rows, y] -= 1.0
        grad_w = (x.T @ residual / n + 2 * l2 * w).ravel()
        value = float(np.mean(log_norm - logits[rows, y])) + l2 * float((w * w).sum()) + l1 * float(z[: 2 * size].sum())
        return value, np.concatenate([grad_w + l1, -grad_w + l1, residual.mean(axis=0)])

    start = time.perf_counter()
    bounds = [(0.0, None)] * (2 * size) + [(None, None)] * c
    result = minimize(loss_and_grad, np.zeros(2 * size + c), jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"maxiter": max_iter, "ftol": 1e-9, "gtol": 1e-6})
    seconds = time.perf_counter() - start
    w, b = (torch.from_numpy(part) for part in unpack(result.x))

    def error(xs: torch.Tensor, ys: torch.Tensor) -> float:
        return float(((xs @ w + b).argmax(1) != ys).double().mean())

    components = np.array([
        float(torch.nn.functional.cross_entropy(problem.x_train @ w + b, problem.y_train)), float(w.abs().sum()),
        float((w * w).sum()),
    ])
    info = {"test_error": error(problem.x_test, problem.y_test), "fit_s": seconds, "iterations": int(result.nit),
            "converged": bool(result.status == 0)}
    return components, error(problem.x_val, problem.y_val), info


class CachedFit:
    """``fit`` memoised on lambda: methods that draw the same lambda (LearnLoss's random start and random
    search share a seed) reuse the model, and are charged its original fit time."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.cache: dict[bytes, tuple[np.ndarray, float, dict[str, Any]]] = {}

    def __call__(self, lam: np.ndarray) -> tuple[np.ndarray, float, dict[str, Any]]:
        key = np.asarray(lam, dtype=np.float64).tobytes()
        if key not in self.cache:
            self.cache[key] = fit(self.problem, lam)
        components, val_error, info = self.cache[key]
        return components.copy(), val_error, dict(info)


def tune(method: str, train: Callable, config: LearnLossConfig, seed: int) -> list[Trial]:
    """Run one tuner for ``config.budget`` training runs with ``seed``; every run as a :class:`Trial`."""
    if method == "learnloss":
        return learn_loss(train, config, np.random.default_rng(seed))
    trials: list[Trial] = []
    if method == "random":
        rng = np.random.default_rng(seed)  # the same stream as LearnLoss's random start
        for _ in range(config.budget):
            lam = random_lambda(config, rng)
            features, error, info = train(lam)
            trials.append(Trial(lam, features, error, "random", 0.0, info))
        return trials
    if method == "tpe":
        require("learnloss")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # 5 random start-up trials (Optuna's default is 10) leave TPE 15 guided trials of the 20.
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
        low = np.asarray(config.upper) * config.log_low
        for _ in range(config.budget):
            start = time.perf_counter()
            trial = study.ask()
            lam = np.array([trial.suggest_float(f"l{i + 1}", low[i], config.upper[i], log=True) for i in range(len(low))])
            propose_s = time.perf_counter() - start
            features, error, info = train(lam)
            start = time.perf_counter()
            study.tell(trial, error)
            trials.append(Trial(lam, features, error, "tpe", propose_s + time.perf_counter() - start, info))
        return trials
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def trial_record(trial: Trial) -> dict[str, Any]:
    return {"lam": trial.lam.tolist(), "components": trial.features.tolist(), "val_error": trial.error,
            "source": trial.source, "propose_s": trial.propose_s, **trial.info}


# ---------------------------------------------------------------------- analysis
def curves(run: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best validation error so far, the test error of that model, and cumulative seconds, after each run."""
    val = np.array([t["val_error"] for t in run["trials"]])
    best = np.array([int(np.argmin(val[: i + 1])) for i in range(len(val))])  # first index on ties
    test = np.array([run["trials"][i]["test_error"] for i in best])
    seconds = np.cumsum([t["fit_s"] + t["propose_s"] for t in run["trials"]])
    return val[best], test, seconds


def runs_to_reach(run: dict, target: float) -> int | None:
    """Training runs until the best validation error is <= ``target`` (None: not within the budget)."""
    hits = np.flatnonzero(curves(run)[0] <= target + 1e-12)
    return int(hits[0]) + 1 if len(hits) else None


def summarize(runs: list[dict], budget: int) -> dict[str, Any]:
    """Per dataset and method: final best validation/test error per seed; runs to reach each comparator's
    final median best validation error (LearnLoss against random search and TPE)."""
    summary: dict[str, Any] = {}
    for dataset in sorted({r["dataset"] for r in runs}):
        mine = {m: sorted((r for r in runs if r["dataset"] == dataset and r["method"] == m), key=lambda r: r["seed"])
                for m in METHODS}
        rows: dict[str, dict[str, Any]] = {}  # JSON-ready, per method
        for method, group in mine.items():
            if not group:
                continue
            finals = [curves(r) for r in group]
            rows[method] = {
                "seeds": [r["seed"] for r in group],
                "best_val_per_seed": [float(f[0][-1]) for f in finals],
                "test_per_seed": [float(f[1][-1]) for f in finals],
                "wall_s_per_seed": [float(f[2][-1]) for f in finals],
                # Mean time to choose lambda: the LP, or TPE's ask and tell (its 5 start-up trials included).
                "propose_ms_mean": 1000 * float(np.mean(
                    [t["propose_s"] for r in group for t in r["trials"] if t["source"] not in ("initial", "random")] or [0.0]
                )),
            }
        reach = {}
        for comparator in ("random", "tpe"):
            if comparator not in rows or "learnloss" not in rows:
                continue
            target = float(np.median(rows[comparator]["best_val_per_seed"]))
            counts = {m: [runs_to_reach(r, target) for r in mine[m]] for m in ("learnloss", comparator)}
            # A seed that never reaches the target counts as budget + 1 (a lower bound on its true count).
            medians = {m: float(np.median([c if c is not None else budget + 1 for c in v])) for m, v in counts.items()}
            reach[comparator] = {"target_val_error": target, "runs_per_seed": counts, "median_runs": medians,
                                 "ratio": medians[comparator] / medians["learnloss"]}
        summary[dataset] = {"methods": rows, "runs_to_reach": reach}
    return summary


def script_options(header: dict[str, Any]) -> str:
    """The run's ``--datasets`` and ``--methods`` where they are not the defaults (a header written before these
    were recorded: none)."""
    options = ""
    for flag, default in (("datasets", DATASETS), ("methods", METHODS)):
        chosen = header.get(flag)
        if chosen is not None and list(chosen) != list(default):
            options += f" --{flag} {','.join(chosen)}"
    return options


def load_text(load: dict[str, Any] | None) -> str:
    """What the header says of the machine's load while the runs ran (other work there slows their wall times)."""
    if not load:
        return "the load on the machine while the runs ran was not recorded (their wall times may be noisy)"
    recorded = "" if load["runs"] == load["of"] else f" (recorded for {load['runs']} of {load['of']} runs)"
    return f"1-minute load average as each run ended {load['min']:.2f}-{load['max']:.2f}{recorded}"


def markdown(summary: dict[str, Any], header: dict[str, Any]) -> str:
    lines = [
        "# Tuning L1 + L2 of softmax regression: LearnLoss, random search, Optuna TPE",
        "",
        f"- Machine: {header['machine']} (CPU only), 1 torch thread; {load_text(header.get('load_1min'))}.",
        f"- Budget: {header['budget']} training runs per tuner and seed; seeds {header['seeds']}; search space "
        f"lambda_1, lambda_2 in [{header['low']:g}, {header['upper']:g}] (LearnLoss: box [0, {header['upper']:g}]).",
        f"- Script: `python -m ala_gym.benchmarks.learnloss{script_options(header)} --seeds {len(header['seeds'])} "
        f"--budget {header['budget']}`; "
        f"versions {json.dumps(header['versions'])}.",
        f"- Fits: {header['fits']['count']}, {header['fits']['converged']} within L-BFGS-B's tolerance (the rest stopped at "
        f"its iteration cap); recorded fit seconds {header['fits']['seconds_total']:.0f} in all (a model shared by LearnLoss's "
        f"random start and random search counts twice); median fit seconds "
        f"{', '.join(f'{d} {v:.2f}' for d, v in header['fits']['median_s'].items())}.",
        "- Errors in %; 'best val' is the lowest validation error after all runs, 'test' that model's test error.",
        "",
        "- Wall s: fits plus choosing lambda, per tuning run; choose ms: mean milliseconds to choose one lambda (0 for random).",
        "",
        "| dataset | method | best val % (mean +- std) | per seed | test % of that model (mean +- std) | per seed | wall s (mean) "
        "| choose ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, entry in summary.items():
        for method, row in entry["methods"].items():
            val, test = np.array(row["best_val_per_seed"]) * 100, np.array(row["test_per_seed"]) * 100
            lines.append(
                f"| {dataset} | {method} | {val.mean():.2f} +- {val.std(ddof=1) if len(val) > 1 else 0:.2f} | "
                f"{', '.join(f'{v:.2f}' for v in val)} | {test.mean():.2f} +- {test.std(ddof=1) if len(test) > 1 else 0:.2f} | "
                f"{', '.join(f'{v:.2f}' for v in test)} | {np.mean(row['wall_s_per_seed']):.1f} | {row['propose_ms_mean']:.1f} |"
            )
    lines += [
        "",
        "## Training runs to reach the same validation error",
        "",
        "Target: the comparator's median (over seeds) best validation error after all runs. Runs per seed until the",
        f"best validation error is at or below it ('-': not within {header['budget']} runs, counted as "
        f"{header['budget'] + 1} in the median). Ratio: comparator's median runs / LearnLoss's median runs.",
        "",
        "| dataset | comparator | target val % | LearnLoss runs per seed | comparator runs per seed | median LearnLoss | median comparator | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, entry in summary.items():
        for comparator, r in entry["runs_to_reach"].items():
            def fmt(values: list[int | None]) -> str:
                return ", ".join("-" if v is None else str(v) for v in values)

            lines.append(
                f"| {dataset} | {comparator} | {r['target_val_error'] * 100:.2f} | {fmt(r['runs_per_seed']['learnloss'])} | "
                f"{fmt(r['runs_per_seed'][comparator])} | {r['median_runs']['learnloss']:g} | "
                f"{r['median_runs'][comparator]:g} | {r['ratio']:.2f}x |"
            )
    lines += ["", "In words:", ""] + [f"- {sentence}" for sentence in reach_sentences(summary, header["budget"])]
    return "\n".join(lines) + "\n"


def reach_sentences(summary: dict[str, Any], budget: int) -> list[str]:
    """The runs-to-reach table as plain statements: how many times fewer runs LearnLoss needs, or that it does not."""
    names = {"random": "random search", "tpe": "TPE"}
    sentences = []
    for dataset, entry in summary.items():
        for comparator, r in entry["runs_to_reach"].items():
            ours, theirs = r["median_runs"]["learnloss"], r["median_runs"][comparator]
            ours_text = f"more than {budget}" if ours > budget else f"{ours:g}"
            head = (f"{dataset}, against {names[comparator]} (target {r['target_val_error'] * 100:.2f}% validation "
                    f"error): LearnLoss needs a median of {ours_text} runs, {names[comparator]} {theirs:g}")
            if r["ratio"] > 1:
                sentences.append(f"{head}: {r['ratio']:.1f} times fewer runs for LearnLoss.")
            else:
                sentences.append(f"{head}: LearnLoss does not need fewer runs.")
    return sentences


def plot(runs: list[dict], out: Path) -> None:
    from matplotlib.figure import Figure

    datasets = sorted({r["dataset"] for r in runs})
    fig = Figure(figsize=(4.6 * len(datasets), 7))  # not pyplot's: the process's backend stays as it was
    axes = fig.subplots(2, len(datasets), squeeze=False)
    for column, dataset in enumerate(datasets):
        low, high = np.inf, -np.inf
        for method in METHODS:
            group = [curves(r) for r in runs if r["dataset"] == dataset and r["method"] == method]
            if not group:
                continue
            val = np.array([g[0] for g in group]) * 100
            # The first runs' errors are far above the rest: zoom on the range after the third run.
            low, high = min(low, val.min()), max(high, np.median(val, 0)[min(2, val.shape[1] - 1)])
            steps = np.arange(1, val.shape[1] + 1)
            line, = axes[0, column].plot(steps, np.median(val, 0), label=method)
            axes[0, column].fill_between(steps, val.min(0), val.max(0), alpha=0.15, color=line.get_color())
            for best, _, seconds in group:
                axes[1, column].step(seconds, best * 100, where="post", color=line.get_color(), alpha=0.6)
        pad = 0.1 * max(high - low, 0.1)
        for row in (0, 1):
            axes[row, column].set_ylim(low - pad, high + pad)
        axes[0, column].set_title(dataset)
        axes[0, column].set_xlabel("training runs")
        axes[1, column].set_xlabel("wall seconds (fits + selection)")
        axes[1, column].set_xscale("log")
        for row in (0, 1):
            axes[row, column].set_ylabel("best validation error %")
            axes[row, column].grid(alpha=0.3)
        axes[0, column].legend(fontsize=8, title="median, min-max over seeds", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "best_val_error.png", dpi=110)


RUN_SHAPE = {
    "dataset": str, "method": str, "seed": int, "budget": int,
    "trials": [{"val_error": NUMBER, "test_error": NUMBER, "fit_s": NUMBER, "propose_s": NUMBER, "converged": bool,
                "source": str}],
}  # fmt: skip
"""What the summary reads of a run file (``runs/<dataset>-<method>-seed<k>.json``)."""


def saved_runs(out: Path, budget: int) -> dict[Path, dict]:
    """The run files under ``out/runs``, read and checked before any training; a :class:`ComparisonError` for a
    damaged one, or for runs of another budget: a folder holds one budget, so that a run file, which marks its
    run as done, is never one the summary leaves out."""
    runs = {path: read_json(path, RUN_SHAPE, "delete it to run it again") for path in sorted((out / "runs").glob("*.json"))}
    other = sorted({run["budget"] for run in runs.values()} - {budget})
    if other:
        raise ComparisonError(f"{out / 'runs'} holds runs of budget {', '.join(map(str, other))}, not {budget}; pass "
                              f"--budget {other[0]} to resume them, or --name a folder of its own for budget {budget}")  # fmt: skip
    return runs


def check_same_plan(out: Path, datasets: list[str], methods: list[str], seeds: list[int], budget: int) -> None:
    """Refuse (:class:`ComparisonError`) to rewrite ``out/results.json`` with a plan that leaves out runs it holds or
    has another budget: its table would shrink without a word (a clone holds the committed table, not its run
    files). More datasets, methods or seeds add to it."""
    results = out / "results.json"
    if not results.is_file():
        return
    held = read_json(results, {"header": {"budget": int}, "runs": [{"dataset": str, "method": str, "seed": int}]},
                     "delete it (the run files under runs/ rebuild it)")  # fmt: skip
    folder = f"--name a folder of its own (this one holds {results})"
    if held["header"]["budget"] != budget:
        raise ComparisonError(f"--budget {budget}, but {results} holds budget {held['header']['budget']}; {folder}")
    left_out = {(r["dataset"], r["method"], r["seed"]) for r in held["runs"]} - {
        (d, m, s) for d in datasets for m in methods for s in seeds
    }
    if left_out:
        kept = [sorted({key[i] for key in left_out}) for i in range(3)]
        raise ComparisonError(
            f"{results} holds runs this command leaves out (datasets {kept[0]}, methods {kept[1]}, seeds {kept[2]}); "
            f"ask for them too, or {folder}"
        )


def run_benchmark(datasets: list[str], methods: list[str], seeds: list[int], budget: int, name: str,
                  fashion_mnist_root: str | None = None, cifar10_root: str | None = None,
                  problem_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run what is missing (one file per dataset, method and seed), then rewrite the summary files."""
    if "tpe" in methods:
        require("learnloss")  # before any training run, not when the first TPE run starts
    out = RESULTS / name
    if out.resolve() in (RESULTS.resolve(), *RESULTS.resolve().parents):  # "." or "..": the other results' home
        raise ComparisonError(f"--name {name!r} names {out.resolve()}, which holds other results; name a folder of its own")
    check_writable(out)  # a folder that cannot take the run files is refused before they are trained
    check_same_plan(out, datasets, methods, seeds, budget)
    saved = saved_runs(out, budget)
    config = LearnLossConfig(upper=(0.1, 0.1), budget=budget)
    for dataset in datasets:
        todo = [(m, s) for s in seeds for m in methods if out / "runs" / f"{dataset}-{m}-seed{s}.json" not in saved]
        if not todo:
            continue
        train = CachedFit(load_problem(dataset, fashion_mnist_root, cifar10_root, **(problem_kwargs or {})))
        for method, seed in todo:
            trials = tune(method, train, config, seed)
            record = {"dataset": dataset, "method": method, "seed": seed, "budget": budget, "source": source_digest(),
                      "load_average": load_average(), "trials": [trial_record(t) for t in trials]}
            path = out / "runs" / f"{dataset}-{method}-seed{seed}.json"
            write_json(path, record)
            saved[path] = record
            val, test, seconds = curves(record)
            print(f"{dataset} {method} seed {seed}: best val {val[-1]:.4f} test {test[-1]:.4f} in {seconds[-1]:.1f} s",
                  flush=True)
    runs = [saved[path] for path in sorted(saved)]
    runs = [r for r in runs if r["dataset"] in datasets and r["method"] in methods and r["seed"] in seeds]
    import scipy

    # None where the learnloss extra is not installed: only the TPE runs need Optuna.
    # The 1-minute load as each run ended (runs recorded before it was kept have none).
    loads = [r["load_average"][0] for r in runs if r.get("load_average")]
    header = {"machine": f"{cpu_model()}, {os.cpu_count()} cores", "budget": budget, "seeds": seeds,
              "load_1min": {"min": min(loads), "max": max(loads), "runs": len(loads), "of": len(runs)} if loads else None,
              "datasets": datasets, "methods": methods, "low": config.upper[0] * config.log_low,
              "upper": config.upper[0], "versions": {"torch": torch.__version__, "scipy": scipy.__version__,
                                                     "optuna": package_version("optuna")}}
    fits = [t for r in runs for t in r["trials"]]
    header["fits"] = {
        "count": len(fits),
        "converged": sum(t["converged"] for t in fits),
        "seconds_total": float(sum(t["fit_s"] for t in fits)),
        "median_s": {d: float(np.median([t["fit_s"] for r in runs if r["dataset"] == d for t in r["trials"]]))
                     for d in sorted({r["dataset"] for r in runs})},
    }
    summary = summarize(runs, budget)
    write_json(out / "results.json", {"header": header, "summary": summary, "runs": runs})
    table = markdown(summary, header)
    write_text_atomic(out / "table.md", table)
    plot(runs, out)
    print(table)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=DescriptionFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, from {DATASETS}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {METHODS}")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    parser.add_argument("--budget", type=int, default=20, help="training runs per tuner and seed")
    parser.add_argument("--name", default="learnloss", help="results folder under benchmarks/results/")
    parser.add_argument("--fashion-mnist-root", help="folder with the Fashion-MNIST idx .gz files (default: Debian's)")
    parser.add_argument("--cifar10-root", help="CIFAR-format folder with MD5SUMS (default: the shared subset)")
    args = parser.parse_args(argv)
    datasets, methods = args.datasets.split(","), args.methods.split(",")
    for given, allowed, flag in ((datasets, DATASETS, "--datasets"), (methods, METHODS, "--methods")):
        if set(given) - set(allowed):
            parser.error(f"{flag}: unknown {sorted(set(given) - set(allowed))}; choose from {', '.join(allowed)}")
    if args.seeds < 1 or args.budget < 4:
        parser.error("--seeds must be >= 1 and --budget >= 4 (LearnLoss starts with 3 random runs)")
    torch.set_num_threads(1)
    try:
        run_benchmark(datasets, methods, list(range(args.seeds)), args.budget, args.name,
                      args.fashion_mnist_root, args.cifar10_root)
    except DataError as exc:  # the loader names its own keyword: this command sets it by option
        parser.exit(2, f"{parser.prog}: error: {exc} (here data_root is --fashion-mnist-root or --cifar10-root)\n")
    except (MissingExtraError, ComparisonError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:  # every finished run is on disk already; the one in progress starts over
        interrupted(parser.prog, f"the finished runs are kept in {RESULTS / args.name / 'runs'}; the same command resumes")


if __name__ == "__main__":
    main()
