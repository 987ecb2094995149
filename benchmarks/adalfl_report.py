"""AdaLFL's part of a comparison folder: its learned loss's shape, offline time and cost against ``ce``.

Reads the runs that ``ala_gym.benchmarks.compare`` wrote for the AdaLFL controllers (``adalfl`` and
``adalfl@...``) in ``benchmarks/results/<name>/`` and writes beside them:

* ``loss_shape.png``: the learned loss ``M_phi`` against the predicted probability of the true class
  (the others sharing the rest equally), after the offline initialisation and at the end of training,
  one line per seed, with cross-entropy for reference;
* ``adalfl.md``: per seed the test metric, wall time, offline time and online time, and the mean wall
  time against cross-entropy runs of the same env settings (``--ce``: a ``results.json`` of another
  comparison folder, when the ``ce`` rows were run there).

    python -m ala_gym.benchmarks.adalfl_report --name fashion-mnist-adalfl --ce benchmarks/results/fashion-mnist/results.json
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ala_gym.agents.adalfl import AdaLFLConfig
from ala_gym.agents.cli import DescriptionFormatter, OneLineParser, run_main
from ala_gym.benchmarks.compare import ComparisonError
from ala_gym.benchmarks.compare.store import NUMBER, RESULTS_SHAPE, RUN_SHAPE, read_json, shape_problem
from ala_gym.benchmarks.machine import RESULTS
from ala_gym.core.files import write_text_atomic
from ala_gym.registration import UnknownEnvError, env_spec

LOSS_SHAPE = {"p_true": [NUMBER], "loss": [NUMBER]}
ADALFL_RUN_SHAPE = {
    **RUN_SHAPE, "machine": {"cpu": str, "cores": int, "torch_threads": int},
    "children": [{"test_metric": NUMBER, "offline_s": NUMBER, "offline_meta_loss": NUMBER, "diverged": bool,
                  "loss_shape_start": LOSS_SHAPE, "loss_shape_end": LOSS_SHAPE}],
}  # fmt: skip
"""What the report reads of an AdaLFL run file: a comparison's run, with the children's AdaLFL entries."""


def load_runs(folder: Path) -> list[dict]:
    """The AdaLFL runs of a comparison folder: those under ``folder/runs``, and those of its committed
    ``results.json`` (``runs/`` is not committed) that no run file replaces; a :class:`ComparisonError` naming
    a damaged file."""
    fix = "delete it and run ala_gym.benchmarks.compare again to redo that run"
    runs = {
        (run["controller"], run["seed"]): run
        for run in (read_json(p, ADALFL_RUN_SHAPE, fix) for p in sorted((folder / "runs").glob("adalfl*.json")))
    }
    results = folder / "results.json"
    if results.is_file():
        committed = read_json(results, {"runs": [{"controller": str, "seed": int}]}, "restore it (git checkout)")["runs"]
        for index, run in enumerate(committed):
            if run["controller"].startswith("adalfl") and (run["controller"], run["seed"]) not in runs:
                if problem := shape_problem(run, ADALFL_RUN_SHAPE, f"runs[{index}]"):
                    raise ComparisonError(f"{results} is damaged: {problem}; restore it (git checkout)")
                runs[(run["controller"], run["seed"])] = run
    return sorted(runs.values(), key=lambda r: (r["controller"], r["seed"]))


def plot_shapes(runs: list[dict], out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))  # not pyplot's: the process's backend stays as it was
    axes = fig.subplots(1, 2, sharex=True)
    for ax, key, title in zip(axes, ("loss_shape_start", "loss_shape_end"), ("after offline initialisation", "end of training")):
        for run in runs:
            shape = run["children"][0][key]
            ax.plot(shape["p_true"], shape["loss"], label=f"{run['controller']} seed {run['seed']}")
        p = np.asarray(runs[0]["children"][0][key]["p_true"])
        ce_axis = ax.twinx()
        ce_axis.plot(p, -np.log(p), "k:", label="cross-entropy (right axis)")
        ce_axis.set_ylabel("cross-entropy -log p")
        ax.set_title(f"learned loss, {title}")
        ax.set_xlabel("predicted probability of the true class")
        ax.set_ylabel("M_phi (others share 1 - p equally)")
        ax.grid(alpha=0.3)
    handles = axes[0].get_legend_handles_labels()
    extra = ce_axis.get_legend_handles_labels()
    axes[1].legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_shape.png", dpi=110)


def task_keywords(run: dict) -> dict:
    """A run's env keywords that set its task: all but AdaLFL's own config fields and the loss form (ce's)."""
    own = {f.name for f in dataclasses.fields(AdaLFLConfig)} | {"loss_form"}
    return {key: value for key, value in run["env_kwargs"].items() if key not in own}


def run_metric(run: dict) -> str:
    """The test metric a run reports: its env keyword ``metric``, else its env id's registered one, else the envs'
    default (the error rate)."""
    if "metric" in run["env_kwargs"]:
        return str(run["env_kwargs"]["metric"])
    try:
        return str(env_spec(run["env"]).kwargs.get("metric", "error"))
    except UnknownEnvError:  # an env of one's own not importable here
        return "error"


def machine_text(run: dict) -> str:
    machine = run["machine"]  # older runs: no gpu key
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch thread(s), "
            f"GPU: {machine.get('gpu')}; device `{run['device']}`")  # fmt: skip


def matching_ce(candidates: list[dict], runs: list[dict]) -> list[dict]:
    """The ce runs among ``candidates`` that are a reference for ``runs`` (one controller's): the same env, seeds
    among theirs, the same env keywords both ways (a keyword either side leaves at its default is another setting)
    but for AdaLFL's own fields and the loss form, and the same machine, where alone wall times compare."""
    seeds = {r["seed"] for r in runs}
    return [
        r for r in candidates
        if r["controller"] == "ce" and r["env"] == runs[0]["env"] and r["seed"] in seeds
        and task_keywords(r) == task_keywords(runs[0]) and r["machine"] == runs[0]["machine"]
    ]  # fmt: skip


def summary(runs: list[dict], ce_candidates: list[dict], ce_source: str | None) -> str:
    first = runs[0]
    metric = run_metric(first)
    names = sorted({r["controller"] for r in runs})
    by_name = {name: [r for r in runs if r["controller"] == name] for name in names}
    # What every run shares is said once; what a controller's runs set otherwise, per controller.
    shared = {k: v for k, v in first["env_kwargs"].items() if all(r["env_kwargs"].get(k, object()) == v for r in runs)}
    own = {name: {k: v for k, v in mine[0]["env_kwargs"].items() if k not in shared} for name, mine in by_name.items()}
    machines = {name: machine_text(mine[0]) for name, mine in by_name.items()}
    lines = [f"# AdaLFL on {first['env']}", ""]
    if len({machine_text(r) for r in runs}) == 1:
        lines.append(f"- Machine: {machine_text(first)}")
    else:
        lines.append("- Machines: " + "; ".join(f"`{name}` on {machines[name]}" for name in names))
    lines.append(f"- Env keywords of every run (AdaLFL's own config fields among them): `{json.dumps(shared)}`")
    if any(own.values()):
        lines.append("- Each controller's own: " + "; ".join(f"`{name}` `{json.dumps(own[name])}`" for name in names))
    lines += [
        "- Wall time includes the offline initialisation; online = wall - offline (training, evaluations every K",
        f"  iterations, final test). Test metric: {metric} (%) on the test split. Each controller's wall time is",
        "  set against `ce` runs of its own env keywords (AdaLFL's fields aside), seeds and machine.",
        "",
        f"| controller | seed | test {metric} % | wall s | offline s | online s | offline meta loss | diverged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        child = run["children"][0]
        lines.append(
            f"| {run['controller']} | {run['seed']} | {100 * child['test_metric']:.2f} | {run['wall_s']:.1f} | "
            f"{child['offline_s']:.1f} | {run['wall_s'] - child['offline_s']:.1f} | {child['offline_meta_loss']:.3f} | "
            f"{child['diverged']} |"
        )
    lines += ["", f"| controller | seeds | test {metric} % mean +- std | wall s mean | offline s mean | wall vs ce | online vs ce |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    references = {name: matching_ce(ce_candidates, mine) for name, mine in by_name.items()}
    for name, mine in by_name.items():
        ce_runs = references[name]
        ce_wall = float(np.mean([r["wall_s"] for r in ce_runs])) if ce_runs else None
        tests = np.array([100 * r["children"][0]["test_metric"] for r in mine])
        wall = float(np.mean([r["wall_s"] for r in mine]))
        offline = float(np.mean([r["children"][0]["offline_s"] for r in mine]))
        std = tests.std(ddof=1) if len(tests) > 1 else 0.0
        ratio = f"{wall / ce_wall:.2f}x | {(wall - offline) / ce_wall:.2f}x" if ce_wall else "- | -"
        lines.append(f"| {name} | {len(mine)} | {tests.mean():.2f} +- {std:.2f} | {wall:.1f} | {offline:.1f} | {ratio} |")
    # One paragraph per distinct reference (controllers of one machine and budget share theirs).
    shown: list[list[dict]] = []
    for ce_runs in references.values():
        if not ce_runs or ce_runs in shown:
            continue
        shown.append(ce_runs)
        ce_tests = np.array([100 * r["test_metric"] for r in ce_runs])
        ce_wall = float(np.mean([r["wall_s"] for r in ce_runs]))
        users = ", ".join(f"`{name}`" for name in names if references[name] == ce_runs)
        lines += [
            "",
            f"Cross-entropy reference of {users}: `ce` runs of `{ce_source}` (same env keywords, seeds "
            f"{sorted(r['seed'] for r in ce_runs)}, same machine: {machine_text(ce_runs[0])}): test {metric} "
            f"{ce_tests.mean():.2f} +- {ce_tests.std(ddof=1) if len(ce_tests) > 1 else 0.0:.2f} %, wall {ce_wall:.1f} s per run.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=DescriptionFormatter)
    parser.add_argument("--name", required=True, help="comparison folder under benchmarks/results/")
    parser.add_argument("--ce", help="results.json holding ce runs of the same env settings (for the wall-time ratio)")
    args = parser.parse_args(argv)
    folder = RESULTS / args.name
    try:
        runs = load_runs(folder)
    except ComparisonError as error:
        parser.exit(2, f"{error}\n")
    if not runs:
        parser.exit(2, f"no AdaLFL runs in {folder / 'runs'} or {folder / 'results.json'}; run ala_gym.benchmarks.compare "
                       "with --controllers adalfl first\n")  # fmt: skip
    candidates: list[dict] = []
    if args.ce is not None:
        fix = "give the results.json of a comparison that ran ce"
        if not Path(args.ce).is_file():
            problem = "is a folder, not a file" if Path(args.ce).is_dir() else "does not exist"
            parser.exit(2, f"{args.ce} {problem}; {fix}\n")
        try:
            candidates = read_json(Path(args.ce), {"runs": RESULTS_SHAPE["runs"]}, fix)["runs"]  # all it reads
        except ComparisonError as error:
            parser.exit(2, f"{error}\n")
        controllers = {r["controller"] for r in runs}
        if not any(matching_ce(candidates, [r for r in runs if r["controller"] == name]) for name in controllers):
            # the ratio columns would read "-" without a word
            parser.exit(2, f"{parser.prog}: error: --ce {args.ce} holds no ce run of {runs[0]['env']} on the seeds, "
                           "env keywords and machine of these AdaLFL runs; name the comparison that ran them\n")  # fmt: skip
    plot_shapes(runs, folder)
    text = summary(runs, candidates, args.ce)
    write_text_atomic(folder / "adalfl.md", text)
    print(text)


if __name__ == "__main__":
    run_main(main, "nothing was written; the same command writes the report again")
