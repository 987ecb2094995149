"""Leave-one-dataset-out transfer of the meta-trained policies, from the committed comparisons.

    python -m ala_gym.benchmarks.transfer      # reads results/<preset>/results.json, writes results/transfer/

Each policy of ``agents/policies/without-<dataset>.pt`` was meta-trained (``ala_gym.agents.meta_train``) on the
other datasets only; the comparisons run it frozen on the held-out one, at the budget of that dataset's preset
and at its long-horizon preset's. ``without-<dataset>-<variant>.pt`` is another meta-training on the same
held-out split (its provenance file says how it differs), judged the same way. This script runs nothing: it gathers those rows from the committed
``results.json`` files with the references they are judged against, on the same seeds and, for ``ce``, the same
children:

* ``ce``: cross-entropy on the same children (``ce(num_envs=2)`` where the transfer row trains 2 children and
  ``ce`` 1);
* ``oracle-phi``: the best fixed Phi of the policy's action space (I plus one uniform off-diagonal value),
  selected on validation; ``oracle-smoothing``: cross-entropy with label smoothing tuned on validation.

and says, per held-out dataset and budget, whether the policy beats cross-entropy by more than the larger of
the two standard deviations, reaches the best fixed Phi within the larger standard deviation, and beats tuned
label smoothing (its mean below; and by more than the larger standard deviation, or not); and whether the best
fixed Phi itself beats cross-entropy by the first rule, which says if that test is within the action space's
reach of a constant. Beside these, the policy against cross-entropy seed by seed: the children of one seed start
from the same weights and see the same batches under every controller, so the per-seed differences show how
consistently it gains or loses, which the spread across seeds hides. A reference a
preset does not run is shown as not run. Beside it, each policy's meta-training cost from its provenance file
(``agents/policies/<policy>.json``): generations, child-iterations, wall seconds and the CPU, the policy the
search started from where it did not start from a new one (a declared prior, such as a clone of a schedule), and
the same for the reruns of a shipped policy's command recorded under ``results/transfer/reruns/``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ala_gym.agents.cli import OneLineParser, run_main
from ala_gym.agents.reinforce import POLICY_LIBRARY
from ala_gym.benchmarks.compare import write_json
from ala_gym.benchmarks.compare.presets import CIFAR10_FRESH, FASHION_MNIST_APART, META_DIGITS_CNN
from ala_gym.benchmarks.compare.store import NUMBER, read_json
from ala_gym.benchmarks.machine import RESULTS
from ala_gym.core.files import write_text_atomic

RERUNS = Path("transfer") / "reruns"
"""Under the results folder: meta-training records (``meta_train``'s JSON) of a shipped policy's command run
again, named after the policy; their policies are not shipped."""


@dataclass(frozen=True)
class HeldOut:
    """One held-out dataset at one budget: the preset, its transfer row and the cross-entropy row on the same
    children."""

    dataset: str
    preset: str
    policy: str
    sequential: bool = False
    """The row trains the children one after the other, as its cross-entropy reference did."""
    ce: str = "ce"

    @property
    def row(self) -> str:
        """The comparison row of :attr:`policy` run frozen."""
        suffix = "@train_mode=sequential" if self.sequential else ""
        return f"reinforce-transfer-frozen(policy={self.policy}){suffix}"


def on_both_cifar10_presets(policy: str) -> tuple[HeldOut, HeldOut]:
    """``policy`` held out on the CIFAR-10 subset at 400 and at 1,200 iterations, trained sequentially like the
    presets' cross-entropy rows (the short preset's on 2 children)."""
    return (
        HeldOut("CIFAR-10 subset", "cifar10-subset", policy, sequential=True, ce="ce(num_envs=2)"),
        HeldOut("CIFAR-10 subset", "cifar10-subset-long", policy, sequential=True),
    )


HELD_OUT = (
    HeldOut("digits", "digits", "without-digits"),
    HeldOut("digits", "digits-long", "without-digits"),
    HeldOut("digits", "digits", "without-digits-seed1"),
    HeldOut("digits", "digits-long", "without-digits-seed1"),
    HeldOut("Fashion-MNIST", "fashion-mnist", "without-fashion-mnist", sequential=True, ce="ce(num_envs=2)"),
    HeldOut("Fashion-MNIST", "fashion-mnist-long", "without-fashion-mnist"),
    HeldOut("CIFAR-10 subset", "cifar10-subset", "without-cifar10", ce="ce(num_envs=2)"),
    HeldOut("CIFAR-10 subset", "cifar10-subset-long", "without-cifar10"),
    # Meta-trained without Fashion-MNIST on both tasks every generation (two seeds).
    HeldOut("Fashion-MNIST", "fashion-mnist", "without-fashion-mnist-all-tasks", sequential=True, ce="ce(num_envs=2)"),
    HeldOut("Fashion-MNIST", "fashion-mnist-long", "without-fashion-mnist-all-tasks"),
    HeldOut("Fashion-MNIST", "fashion-mnist", "without-fashion-mnist-all-tasks-seed1", sequential=True, ce="ce(num_envs=2)"),
    HeldOut("Fashion-MNIST", "fashion-mnist-long", "without-fashion-mnist-all-tasks-seed1"),
    # Meta-trained without CIFAR-10 on both tasks every generation (all-tasks), with Fashion-MNIST on 1,000
    # images (small-train), on small CNN children as on the CIFAR-10 subset (cnn), that run on to 60 generations
    # (cnn-60), and the small CNN family's search started from ramp-clone, a declared prior (ramp, two seeds).
    *(held for name in ("all-tasks", "small-train", "cnn", "cnn-60", "ramp", "ramp-seed1")
      for held in on_both_cifar10_presets(f"without-cifar10-{name}")),
    # Digits alone with the short Fashion-MNIST preset's small CNN child and budget (several searches).
    *(HeldOut("Fashion-MNIST", "fashion-mnist", name, sequential=True, ce="ce(num_envs=2)") for name in META_DIGITS_CNN),
    # Four of them again, at the same budget on children that no two seeds share (the fashion-mnist preset's 2-child
    # rows share one between consecutive seeds), beside cross-entropy on the same children; the first three seeds'
    # children are those the fashion-mnist preset chose them on.
    *(HeldOut("Fashion-MNIST", "fashion-mnist-apart", name, sequential=True, ce="ce(num_envs=2)@train_mode=sequential")
      for name in FASHION_MNIST_APART),
    # And on children that no earlier comparison of this budget trained, the oracles on as many children.
    *(HeldOut("Fashion-MNIST", "fashion-mnist-fresh", name) for name in FASHION_MNIST_APART),
    # The short CIFAR-10 subset budget the same way, on 4 children per seed, with the two searches started from the
    # ramp (those that beat ce at the long budget).
    *(HeldOut("CIFAR-10 subset", "cifar10-subset-fresh", name)
      for name in (*CIFAR10_FRESH, "without-cifar10-ramp", "without-cifar10-ramp-seed1")),
)  # fmt: skip
POLICIES = sorted({held.policy for held in HELD_OUT})
"""The policies judged, each with its provenance file ``<policy>.json`` in the policy folder."""
RECORD_SHAPE = {
    "config": {"tasks": [str]}, "generations": int, "child_iterations": int,
    "history": [{"task": str, "fitness_mean": NUMBER}],
}  # fmt: skip
"""What the cost table reads of a meta-training record (``meta_train``'s JSON)."""


def verdicts(transfer: dict, ce: dict, oracle_phi: dict | None = None, smoothing: dict | None = None) -> dict[str, Any]:
    """The three tests of one held-out dataset and budget, on summary rows (``test_mean``, ``test_std``; an error
    rate in %, lower is better). None where the reference was not run."""
    mean, std = transfer["test_mean"], transfer["test_std"]

    def margin(reference: dict) -> tuple[float, float]:  # how far the policy is ahead, and the larger spread
        return reference["test_mean"] - mean, max(std, reference["test_std"])

    ahead, spread = margin(ce)
    result: dict[str, Any] = {"beats_ce_beyond_std": ahead > spread, "ahead_of_ce": ahead}
    if oracle_phi is not None:
        ahead, spread = margin(oracle_phi)
        result["reaches_best_fixed_phi"] = -ahead <= spread
        # An oracle of fewer children per seed has a wider spread (a mean over fewer children), which widens the
        # margin this test allows: said where the policy's own spread would not have sufficed.
        fewer = oracle_phi.get("children_per_run", 0) < transfer.get("children_per_run", 0)
        result["reaches_only_by_a_fewer_children_oracles_spread"] = bool(fewer and std < -ahead <= spread)
        # Whether the first test is within the action space's reach at all: a constant Phi selected on
        # validation beating cross-entropy by the same rule.
        result["best_fixed_phi_beats_ce_beyond_std"] = (
            ce["test_mean"] - oracle_phi["test_mean"] > max(ce["test_std"], oracle_phi["test_std"])
        )
    if smoothing is not None:
        ahead, spread = margin(smoothing)
        result["beats_tuned_smoothing"] = ahead > 0
        result["beats_tuned_smoothing_beyond_std"] = ahead > spread
    return result


def per_seed_difference(transfer: dict, ce: dict) -> dict[str, Any] | None:
    """The policy's test error minus cross-entropy's, seed by seed (summary rows with ``seeds`` and
    ``test_per_seed``): the mean and sample standard deviation of the differences, and on how many seeds the
    policy is lower. None where the two rows did not run the same seeds."""
    if transfer.get("seeds") is None or transfer.get("seeds") != ce.get("seeds"):
        return None
    if len(transfer.get("test_per_seed", [])) != len(transfer["seeds"]) or len(ce.get("test_per_seed", [])) != len(ce["seeds"]):
        return None  # a summary without its values per seed
    differences = np.array(transfer["test_per_seed"]) - np.array(ce["test_per_seed"])
    return {
        "mean": float(differences.mean()), "std": float(differences.std(ddof=1)) if len(differences) > 1 else float("nan"),
        "lower": int((differences < 0).sum()), "seeds": len(differences),
    }  # fmt: skip


SUMMARY_SHAPE = {
    "summary": [{"controller": str, "test_mean": NUMBER, "test_std": NUMBER, "test_per_seed?": [NUMBER], "seeds?": [int],
                 "children_per_run?": int, "selected?": str}],
    "runs?": [{"controller": str, "machine?": {"cpu": str}}],
}  # fmt: skip
"""What the report reads of a comparison's ``results.json``."""


def read_summary(path: Path, preset: str) -> tuple[list[dict], dict | None, dict[str, list[str]]]:
    """The summary rows of a comparison's ``results.json``, its ``shared_children`` (None where no child is
    shared between seeds) and the CPUs each controller's runs ran on; a file that is not one gets an error
    naming it."""
    fix = f"restore it (git checkout) or run python -m ala_gym.benchmarks.compare --preset {preset} again"
    results = read_json(path, SUMMARY_SHAPE, fix)
    cpus: dict[str, set[str]] = {}
    for run in results.get("runs", []):
        if "machine" in run:
            cpus.setdefault(run["controller"], set()).add(run["machine"]["cpu"])
    return results["summary"], results.get("header", {}).get("shared_children"), {k: sorted(v) for k, v in cpus.items()}


def fitness_by_task(history: list[dict]) -> dict[str, dict[str, float]]:
    """Per task of a meta-training run: the children's mean final validation metric (the fitness, negated back
    for an error rate, in %) over its first and its last three generations, which drew horizons anew."""
    by_task: dict[str, list[float]] = {}
    for entry in history:
        by_task.setdefault(entry["task"], []).append(-100 * entry["fitness_mean"])
    return {task: {"first": float(np.mean(values[:3])), "last": float(np.mean(values[-3:]))} for task, values in by_task.items()}


def gather(results: Path, policies: Path) -> dict[str, Any]:
    """Every held-out row with its references and verdicts, and each policy's meta-training cost."""
    entries, shared = [], {}
    for held in HELD_OUT:
        path = results / held.preset / "results.json"
        summary, shared_children, cpus = read_summary(path, held.preset) if path.is_file() else ([], None, {})
        rows = {row["controller"]: row for row in summary}
        if shared_children:
            shared[held.preset] = shared_children
        if held.row not in rows:
            # Named within --results: the report is committed, and holds no path of the machine that wrote it.
            entries.append({**asdict(held), "row": held.row, "missing": f"{held.preset}/results.json holds no row {held.row!r}; run --preset {held.preset} --extend"})
            continue
        if held.ce not in rows:
            raise ValueError(f"{path} holds {held.row!r} but not its reference {held.ce!r}")
        named = {"transfer": held.row, "ce_row": held.ce, "oracle_phi": "oracle-phi", "oracle_smoothing": "oracle-smoothing"}
        keep = ("test_mean", "test_std", "test_per_seed", "seeds", "children_per_run", "selected")
        found = {key: {k: v for k, v in rows[name].items() if k in keep} if name in rows else None for key, name in named.items()}
        judged = verdicts(rows[held.row], rows[held.ce], rows.get("oracle-phi"), rows.get("oracle-smoothing"))
        paired = per_seed_difference(rows[held.row], rows[held.ce])
        # Where the policy and its ce ran on other CPUs, their children round differently: not the same trajectories.
        machines = {"transfer": cpus.get(held.row, []), "ce": cpus.get(held.ce, [])}
        entries.append({**asdict(held), "row": held.row, **found, "verdicts": judged, "per_seed_vs_ce": paired, "cpus": machines})
    records = {policy: policies / f"{policy}.json" for policy in POLICIES}
    # Reruns of a shipped policy's command, kept for their cost: on another CPU they give another policy.
    records |= {f"{path.stem} (rerun)": path for path in sorted((results / RERUNS).glob("*.json"))}
    costs = {}
    for name, path in records.items():
        if path.is_file():
            record = read_json(path, RECORD_SHAPE, "restore it (git checkout), or move it away to leave it out")
            costs[name] = {key: record.get(key) for key in ("generations", "child_iterations", "wall_seconds", "cpu", "torch_threads", "workers")}
            config = record["config"]
            costs[name]["tasks"] = [task_label(task, config) for task in config["tasks"]]
            costs[name]["tasks_per_generation"] = config.get("tasks_per_generation", 1)  # older records: one
            costs[name]["fitness_by_task"] = fitness_by_task(record["history"])
            costs[name]["init_policy"] = config.get("init_policy")  # the policy the search started from, if any
    return {"held_out": entries, "meta_training": costs, "shared_children": shared}


def task_label(task: str, config: dict[str, Any]) -> str:
    """A task of a meta-training family with its children's model and the training set size they kept, where
    the record names them."""
    kwargs = {**config.get("env_kwargs", {}), **config.get("task_kwargs", {}).get(task, {})}
    details = [str(kwargs["model"])] if "model" in kwargs else []
    if "train_size" in kwargs:
        details.append(f"{kwargs['train_size']:,} training images at most")
    return f"{task} ({', '.join(details)})" if details else task


def yes_no(value: bool | None) -> str:
    return "not run" if value is None else ("**yes**" if value else "no")


def shared_children_note(shared: dict[str, dict]) -> list[str]:
    """Where a comparison's consecutive seeds share children (a seed stride below the child count): its rows of
    more children than the stride have seed values that are not independent, so their std reads too small."""
    if not shared:
        return []
    named = ", ".join(f"`{preset}` (stride {s['seed_stride']}, {s['children']} children)" for preset, s in shared.items())
    return [
        "",
        f"Seeds that share children: in {named}, run k's children are seeded k * stride + i, so each run of a",
        "row with more children than the stride shares children with the next seed's run (the policies' rows and",
        "their `ce` among them). Those rows' seed values are not independent samples: their standard deviations",
        "understate the spread between independent seeds, and a *beats* verdict there is weaker than it reads.",
    ]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Leave-one-dataset-out transfer of the meta-trained policies",
        "",
        "Written by `python -m ala_gym.benchmarks.transfer` from the committed comparisons (`results/<preset>/`; their",
        "tables hold the machine, seeds, budgets and every seed's value). Test error % (mean +- sample std over the",
        "5 seeds); each policy was meta-trained without the dataset it runs on here, and runs frozen. `ce` is",
        "cross-entropy on the same children; the oracles are selected on validation. *Beats ce*: the mean is lower by",
        "more than the larger of the two standard deviations; *reaches best fixed Phi*: within the larger standard",
        "deviation of `oracle-phi`; *beats tuned LS*: mean below `oracle-smoothing` (beyond the larger standard deviation",
        "in brackets). *Best fixed Phi beats ce*: `oracle-phi` itself passes the first test; where it does not, no",
        "constant of the action space beats ce beyond the spread, and a policy would have to do better than all of them.",
        "*Per seed vs ce*: the policy's test error minus ce's on each seed, whose children start from the same weights",
        "and see the same batches under both (mean +- sample std of the differences; negative: the policy is lower),",
        "and on how many seeds the policy is lower. Where the two rows ran on different CPUs (named in that column),",
        "their children round differently, so a pair is not one trajectory under two losses: float rounding alone",
        "moves a child's test error (`benchmarks/README.md`, on reading the tables). An oracle run on fewer children",
        "per seed than the policy (its child count is named in its cell) has a wider spread, which widens the margin",
        "*reaches best fixed Phi* allows; where the policy's own spread would not have sufficed, the verdict says so.",
        *shared_children_note(report.get("shared_children", {})),
        "",
        "| held out | preset | policy | transfer | ce | per seed vs ce | oracle-phi | oracle-smoothing | beats ce | "
        "reaches best fixed Phi | beats tuned LS | best fixed Phi beats ce |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(row: dict | None, children: int | None = None) -> str:
        if row is None:
            return "not run"
        notes = [row["selected"].partition("(")[2].rstrip(")") or row["selected"]] if row.get("selected") else []
        if children is not None and row.get("children_per_run", children) != children:
            count = row["children_per_run"]
            notes.append(f"{count} child{'ren' if count > 1 else ''}")
        return f"{row['test_mean']:.2f} +- {row['test_std']:.2f}" + (f" ({'; '.join(notes)})" if notes else "")

    for entry in report["held_out"]:
        if "missing" in entry:
            lines.append(f"| {entry['dataset']} | `{entry['preset']}` | `{entry['policy']}` | not run | | | | | | | | |")
            continue
        v = entry["verdicts"]
        smoothing = yes_no(v.get("beats_tuned_smoothing"))
        if "beats_tuned_smoothing_beyond_std" in v:
            smoothing += f" ({yes_no(v['beats_tuned_smoothing_beyond_std']).strip('*')})"
        paired = entry["per_seed_vs_ce"]
        per_seed = "seeds differ" if paired is None else (
            f"{paired['mean']:+.2f} +- {paired['std']:.2f} ({paired['lower']}/{paired['seeds']} lower)"
        )
        cpus = entry.get("cpus", {})
        if cpus.get("transfer") and cpus.get("ce") and cpus["transfer"] != cpus["ce"]:
            per_seed += f"; ce on {', '.join(cpus['ce'])}, the policy on {', '.join(cpus['transfer'])}"
        reaches = yes_no(v.get("reaches_best_fixed_phi"))
        if v.get("reaches_only_by_a_fewer_children_oracles_spread"):
            reaches += " (by the oracle's spread only)"
        children = entry["transfer"].get("children_per_run")
        lines.append(
            f"| {entry['dataset']} | `{entry['preset']}` | `{entry['policy']}` | {cell(entry['transfer'])} | "
            f"{cell(entry['ce_row'])} | {per_seed} | {cell(entry['oracle_phi'], children)} | "
            f"{cell(entry['oracle_smoothing'], children)} | {yes_no(v['beats_ce_beyond_std'])} | {reaches} | {smoothing} | "
            f"{yes_no(v.get('best_fixed_phi_beats_ce_beyond_std'))} |"
        )
    lines += ["", "## Meta-training cost", "",
              "Validation error: the children's mean final validation error over the first and the last three generations",
              "of each task (horizons drawn anew each generation), from the policy's provenance file. A rerun is the",
              "command of a shipped policy run again on another machine, kept for its cost (`results/transfer/reruns/`):",
              "across CPUs the float order differs, so it meta-trains another policy, which is not shipped. A rerun",
              "named `-own-uniforms` ran the command with `--action-uniforms own` (its provenance file holds it).", "",
              "| policy | task family | tasks a generation | generations | validation error %, first -> last | "
              "child-iterations | wall time | child-iterations/s | machine |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for policy, cost in report["meta_training"].items():
        seconds = cost.get("wall_seconds")
        wall, rate = (f"{seconds / 60:.1f} min", f"{cost['child_iterations'] / seconds:.0f}") if seconds else ("not recorded", "")
        machine = f"{cost['cpu']}, {cost['torch_threads']} torch thread(s)" if cost.get("cpu") else "not recorded"
        if cost.get("workers"):  # older records ran in the process and hold no count
            machine += f", {cost['workers']} Ray workers of 1 thread each"
        trend = "; ".join(f"{task}: {v['first']:.2f} -> {v['last']:.2f}" for task, v in cost["fitness_by_task"].items())
        family = ", ".join(cost["tasks"]) + (f"; the search started from `{cost['init_policy']}`" if cost.get("init_policy") else "")
        lines.append(f"| `{policy}` | {family} | {cost['tasks_per_generation']} | {cost['generations']} | {trend} | "
                     f"{cost['child_iterations']:,} | "
                     f"{wall} | {rate} | {machine} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the comparisons' folder (default: %(default)s)")
    parser.add_argument("--policies", type=Path, default=POLICY_LIBRARY, help="the policies and their provenance files")
    args = parser.parse_args(argv)
    for option, folder in (("--results", args.results), ("--policies", args.policies)):
        if not folder.is_dir():  # a report gathered from nothing would still be written, and read as one
            parser.exit(2, f"{parser.prog}: error: {option} {folder} is not a folder; name the one that holds them\n")
    if not any((args.policies / f"{policy}.json").is_file() for policy in POLICIES):
        # The cost table would be empty, and the report written over one that has it.
        parser.exit(2, f"{parser.prog}: error: --policies {args.policies} holds no provenance file of the policies "
                       f"judged (such as {POLICIES[0]}.json); name the folder that holds them\n")  # fmt: skip
    try:
        report = gather(args.results, args.policies)
    except (ValueError, OSError) as exc:  # a damaged results.json is a ValueError (JSONDecodeError)
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if all("missing" in entry for entry in report["held_out"]):  # a table of "not run" rows only, over a real one
        parser.exit(2, f"{parser.prog}: error: --results {args.results} holds no held-out row (such as "
                       f"{HELD_OUT[0].preset}/results.json); name the folder that holds the comparisons\n")  # fmt: skip
    out = args.results / "transfer"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "transfer.json", report)
    text = markdown(report)
    write_text_atomic(out / "transfer.md", text)
    sys.stdout.write(text)


if __name__ == "__main__":
    run_main(main, "nothing was written; the same command gathers the report again")
