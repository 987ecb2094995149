"""What a comparison shows: the summary rows, the Markdown table (with its oracle, end-of-training and
retrieval sections) and the figures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ala_gym.agents.base import mean_off_diagonal
from ala_gym.benchmarks.compare.specs import build_controller
from ala_gym.benchmarks.compare.store import file_stem


def machine_key(run: dict) -> str:
    """The machine a run ran on, as a value to group runs by (runs recorded before machines were: one group)."""
    return json.dumps(run.get("machine"), sort_keys=True)


def summarize(runs: list[dict], controllers: list[str]) -> list[dict]:
    # The wall-time reference is ce's per child on the same machine: a ratio across CPUs would measure the CPUs.
    ce_wall: dict[str, list[float]] = {}
    for run in runs:
        if run["controller"] == "ce":
            ce_wall.setdefault(machine_key(run), []).append(run["wall_s"] / run["num_children"])
    rows = []
    for name in controllers:
        mine = sorted((r for r in runs if r["controller"] == name), key=lambda r: r["seed"])  # values in seed order
        tests = np.array([r["test_metric"] for r in mine]) * 100
        per_child = np.array([r["wall_s"] / r["num_children"] for r in mine])
        machines = {machine_key(r) for r in mine}
        reference = ce_wall.get(machines.pop()) if len(machines) == 1 else None
        # The Phi columns describe Eq. 6's matrix; they read nan for controllers without one (adalfl records no
        # Phi) and for the metric-learning envs, whose loss weights are a vector with no identity to drift from.
        final_phis = [
            np.array(c["phi"][-1]) for r in mine for c in r["children"] if c["phi"] and np.ndim(c["phi"][-1]) == 2
        ] or [np.full((1, 1), np.nan)]
        rows.append(
            {
                "controller": name,
                "seeds": [r["seed"] for r in mine],
                "children_per_run": mine[0]["num_children"],
                "test_mean": float(tests.mean()),
                "test_std": float(tests.std(ddof=1)) if len(tests) > 1 else 0.0,
                "test_per_seed": tests.round(3).tolist(),
                "wall_s_per_run": float(np.mean([r["wall_s"] for r in mine])),
                "wall_s_per_child": float(per_child.mean()),
                "wall_vs_ce": float(per_child.mean() / np.mean(reference)) if reference else None,
                "diverged_children": int(sum(c["diverged"] for r in mine for c in r["children"])),
                # How far the controller moved the loss: mean |Phi - I| over entries at the end, and the diagonal.
                "final_phi_offset": float(np.mean([np.abs(phi - np.eye(len(phi))).mean() for phi in final_phis])),
                "final_phi_diagonal": float(np.mean([np.diag(phi).mean() for phi in final_phis])),
            }
        )
    return rows


def markdown_table(rows: list[dict], header: dict[str, Any], runs_by_controller: dict[str, list[dict]] | None = None) -> str:
    # Error-rate tables (the envs' default metric) read as they always have; a metric to raise says so.
    direction = " (higher is better)" if header.get("higher_is_better") else ""
    lines = [
        f"# {header['env']}: controller comparison",
        "",
        f"- Machine: {header['machine']['cpu']}, {header['machine']['cores']} cores, "
        f"{header['machine']['torch_threads']} torch threads, GPU: {header['machine']['gpu']}; device `{header['device']}`",
        f"- Budget per child: {header['total_iterations']} SGD iterations, K = {header['steps_per_action']} "
        f"-> {header['steps_per_child']} controller steps; env kwargs `{json.dumps(header['env_kwargs'])}`",
        f"- Seeds: {header['seeds']}{_child_seeds(header['seeds'], runs_by_controller)}; versions: {json.dumps(header['versions'])}",
        *(["- Code (runs by `source_digest` of the package that ran them; a finished run is kept, not recomputed): "
           + ", ".join(f"`{source}` {count}" for source, count in header["sources"].items())] if "sources" in header else []),
        f"- Test metric: {header.get('metric', 'error')} (%) on the test split{direction}; mean +- sample std over seeds (a multi-child run's seed value is",
        "  the mean over its children). Wall time per child relative to cross-entropy (`ce`) on the same machine (`-`",
        "  where ce ran on another); for a multi-child run that is the run's wall time divided by its children, who",
        "  train together (amortised). Phi at the end: mean |Phi - I| over all entries and mean diagonal entry,",
        "  averaged over children (Phi starts at I; `ce` ignores it).",
        "",
        f"| controller | children/run | test {header.get('metric', 'error')} % (mean +- std) | per seed | wall s/run | wall s/child | vs ce "
        "| final mean abs(Phi - I) | final diag | diverged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if header.get("shared_children"):  # a stride below the child count: seed k's children are seeds k*S .. k*S + n-1
        stride, count = header["shared_children"]["seed_stride"], header["shared_children"]["children"]
        lines.insert(
            lines.index("", 2),  # after the header's paragraphs, before the blank line above the table
            f"- Seeds share children: run k seeds its children k * {stride} + i, so in a row of {count} children a run "
            f"shares {count - stride} of them (initial weights and batch order) with the next seed's; that row's seed "
            "values are not independent, and their std understates the spread between independent seeds",
        )
    if header.get("other_machines"):  # rows added later by --extend, elsewhere
        elsewhere = "; ".join(f"`{spec}` on {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads"
                              for spec, m in header["other_machines"].items())  # fmt: skip
        lines.insert(3, f"- Rows that ran on another machine (their wall times compare only within it): {elsewhere}")
    for row in rows:
        ratio = f"{row['wall_vs_ce']:.2f}x" if row["wall_vs_ce"] is not None else "-"
        if row["wall_vs_ce"] is not None and row["children_per_run"] > 1:
            ratio += f" (amortised over {row['children_per_run']})"
        label = f"{row['controller']}: {row['selected']}" if "selected" in row else row["controller"]
        lines.append(
            f"| {label} | {row['children_per_run']} | {row['test_mean']:.2f} +- {row['test_std']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in row['test_per_seed'])} | {row['wall_s_per_run']:.1f} | "
            f"{row['wall_s_per_child']:.1f} | {ratio} | {row['final_phi_offset']:.3f} | {row['final_phi_diagonal']:.2f} | "
            f"{row['diverged_children']} |"
        )
    runs_by_controller = runs_by_controller or {}
    oracles = header.get("oracles", {})
    extra = oracle_table(oracles, header) + end_of_training_table(runs_by_controller, bool(header.get("higher_is_better"))) if oracles else []
    return "\n".join(lines + extra + retrieval_table(runs_by_controller)) + "\n"


def _child_seeds(seeds: list[int], runs_by_controller: dict[str, list[dict]] | None) -> str:
    """Where a run's env seed is not its seed (a stride above 1): the env seeds, from which its children count up."""
    env_seeds = {  # runs recorded before env seeds were say nothing
        run["seed"]: run["env_seed"] for runs in (runs_by_controller or {}).values() for run in runs if "env_seed" in run
    }
    if all(env_seeds.get(seed, seed) == seed for seed in seeds):
        return ""
    shown = ", ".join(str(env_seeds.get(seed, "?")) for seed in seeds)
    return f" (env seeds {shown}: a run's children are seeded from its env seed up, one per child)"


def end_of_training_table(runs_by_controller: dict[str, list[dict]], higher_is_better: bool) -> list[str]:
    """Where each row's loss ended (the signed mean off-diagonal entry of Phi: negative is sharper than
    cross-entropy, positive smoother) and whether its validation metric was still improving at the end (how
    far the last step's value lies behind the best step's, on the env's validation subsample, in points)."""
    lines = [
        "",
        "## End of training",
        "",
        "Mean off-diagonal Phi at the end (children's mean; nan where Phi is not Eq. 6's matrix) and how far the",
        "validation metric's last value lies behind its best over the run (0: still at its best at the end; above 0:",
        "it fell back from its best, as an overfitting child does), mean over children, in points.",
        "",
        "| controller | final mean off-diagonal Phi | validation: last behind best (points) |",
        "|---|---|---|",
    ]
    for name, runs in runs_by_controller.items():
        children = [child for run in runs for child in run["children"]]
        phis = [np.array(child["phi"][-1]) for child in children if child["phi"] and np.ndim(child["phi"][-1]) == 2]
        off = [float(mean_off_diagonal(phi)) for phi in phis if len(phi) > 1]
        sign = -1.0 if higher_is_better else 1.0
        rise = [100 * sign * (c["val_metric"][-1] - (max if higher_is_better else min)(c["val_metric"])) for c in children]
        lines.append(f"| {name} | {np.mean(off) if off else float('nan'):+.4f} | {np.mean(rise):+.2f} |")
    return lines


def oracle_table(selections: dict[str, dict], header: dict[str, Any]) -> list[str]:
    """Each oracle's grid with its mean final validation metric on the selection seeds."""
    metric = header.get("metric", "error")
    lines = [
        "",
        "## Oracle selection (on validation, never on test)",
        "",
        f"Each grid point's final {metric} % on the full validation split, mean over seeds "
        f"{next(iter(selections.values()))['selection_seeds']}; the selected point (marked) then ran on every seed. "
        "Points tied on it are told apart by their mean final validation loss (shown), else by grid order.",
        "",
        "| oracle | grid point | validation % | |",
        "|---|---|---|---|",
    ]
    for name, selection in selections.items():
        for spec, value in selection["validation"].items():
            marks = ["selected"] if spec == selection["selected"] else []
            if spec in selection.get("tie_break", {}):
                marks.append(f"tied; validation loss {selection['tie_break'][spec]:.4f}")
            lines.append(f"| {name} | {spec} | {100 * value:.2f} | {', '.join(marks)} |")
    return lines


PAPER_TABLE_3 = [
    "Triplet (Schroff et al., 2015) | 66.7 | 82.4 | 91.9 | -",
    "Margin (Wu et al., 2017) | 72.7 | 86.2 | 93.8 | 98.0",
    "Triplet + ALA (distance mixture) | 75.7 | 89.4 | 95.3 | 98.6",
    "Margin + ALA (distance mixture) | 78.9 | 90.7 | 96.5 | 98.9",
    "Margin + ALA (focal weighting) | 77.9 | 90.1 | 95.8 | 98.7",
]
"""The paper's Table 3: Recall@1/10/100/1000 (%) on Stanford Online Products (22,634 classes)."""


def retrieval_table(runs_by_controller: dict[str, list[dict]]) -> list[str]:
    """Recall@1/2/4/8 on the test split per controller (mean +- std over seeds, then every seed), and the paper's
    Table 3 beside it; nothing for an env without ``test_recall@k`` (classification)."""
    ks = (1, 2, 4, 8)
    if not any(c.get("test_statistics", {}).get("test_recall@1") is not None
               for runs in runs_by_controller.values() for r in runs for c in r["children"]):  # fmt: skip
        return []
    lines = [
        "",
        "## Retrieval on the test split (classes never trained on)",
        "",
        "Recall@k (%): a query counts if any of its k nearest test items (itself excluded) shares its class.",
        "Mean +- sample std over seeds (a multi-child run's seed value is the mean over its children), then each seed.",
        "",
        "| controller | " + " | ".join(f"R@{k}" for k in ks) + " | " + " | ".join(f"R@{k} per seed" for k in ks) + " |",
        "|---|" + "---|" * (2 * len(ks)),
    ]
    for name, runs in runs_by_controller.items():
        per_seed = np.array(
            [[np.mean([c["test_statistics"][f"test_recall@{k}"] for c in r["children"]]) for k in ks] for r in runs]
        ) * 100
        std = per_seed.std(axis=0, ddof=1) if len(per_seed) > 1 else np.zeros(len(ks))
        cells = [f"{m:.2f} +- {s:.2f}" for m, s in zip(per_seed.mean(axis=0), std)]
        seeds = [", ".join(f"{v:.2f}" for v in per_seed[:, column]) for column in range(len(ks))]
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(seeds) + " |")
    lines += [
        "",
        "The paper's Table 3 (its numbers, not measured here): Recall@1/10/100/1000 (%) on Stanford Online Products,",
        "22,634 classes of 120k images with large networks; another dataset and other k, so not comparable in value.",
        "",
        "| method (paper) | R@1 | R@10 | R@100 | R@1000 |",
        "|---|---|---|---|---|",
        *[f"| {row} |" for row in PAPER_TABLE_3],
    ]
    return lines


def shorten(label: str, width: int) -> str:
    """``label`` cut to ``width`` characters with "..." at the end where longer: a row named with a file path
    would otherwise push its figure's axes out of the picture."""
    return label if len(label) <= width else label[: width - 3] + "..."


def plot(
    runs: list[dict], controllers: list[str], out: Path, metric: str = "error", higher_is_better: bool = False,
    labels: list[str] | None = None,
) -> None:  # fmt: skip
    """``test_metric.png``: every row's final test metric as a point (mean) with its std and every seed's value,
    sorted; ``val_metric.png``: one small panel per row (mean +- std over children and seeds) with the first
    row (the reference, ``ce``) in grey in each; ``phi_<row>.png``: heatmaps of Phi - I of learned rows.
    ``labels`` names the rows (default: ``controllers``, the names their runs carry)."""
    from matplotlib.figure import Figure  # figures of their own, not pyplot's: the process's backend stays as it was

    labels = labels or controllers
    present = [(label, name) for label, name in zip(labels, controllers) if any(r["controller"] == name for r in runs)]
    tests = {label: np.array([r["test_metric"] for r in runs if r["controller"] == name]) * 100 for label, name in present}
    order = sorted(tests, key=lambda label: tests[label].mean(), reverse=higher_is_better)  # best first, at the top
    fig = Figure(figsize=(7, 0.4 * len(order) + 1.2))
    ax = fig.subplots()
    for row, label in enumerate(reversed(order)):
        values = tests[label]
        ax.scatter(values, np.full(len(values), row), s=10, color="0.6", zorder=2)
        ax.errorbar(values.mean(), row, xerr=values.std(ddof=1) if len(values) > 1 else 0, fmt="o", color="C0",
                    capsize=3, zorder=3)  # fmt: skip
    ax.set_yticks(range(len(order)), [shorten(label, 60) for label in reversed(order)], fontsize=8)
    ax.set_xlabel(f"test {metric} % (mean +- std over seeds; grey: each seed)" + (", higher is better" if higher_is_better else ""))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out / "test_metric.png", dpi=110, bbox_inches="tight")  # no text cut at the edges

    def band(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        curves = [c["val_metric"] for r in runs if r["controller"] == name for c in r["children"]]
        length = min(len(c) for c in curves)
        stacked = np.array([c[:length] for c in curves], dtype=float) * 100
        # A diverged step's value can be infinite (the NLL's worst): left out of the band, not spread over it.
        stacked[~np.isfinite(stacked)] = np.nan
        with warnings.catch_warnings():  # a step where every child diverged has no band: NaN, not drawn
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.arange(1, length + 1), np.nanmean(stacked, 0), np.nanstd(stacked, 0)

    columns = min(4, len(present))
    rows = -(-len(present) // columns)
    fig = Figure(figsize=(3.2 * columns, 2.4 * rows))
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    reference_label, reference = present[0]
    for ax, (label, name) in zip(axes.flat, present):
        if name != reference:
            steps, mean, _ = band(reference)
            ax.plot(steps, mean, color="0.6", lw=1, label=reference_label)
        steps, mean, std = band(name)
        ax.plot(steps, mean, color="C0", lw=1.2)
        ax.fill_between(steps, mean - std, mean + std, color="C0", alpha=0.2)
        ax.set_title(shorten(label, 38), fontsize=8)
        ax.grid(alpha=0.3)
        # An error rate falls over decades; a score to raise approaches 100% from below. A log scale needs a
        # positive value to draw (none where every child diverged at its first step).
        if not higher_is_better and (mean > 0).any():
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(present):]:
        ax.set_visible(False)
    fig.supxlabel("controller step", fontsize=9)
    fig.supylabel(f"validation {metric} % (env subsample)", fontsize=9)
    fig.suptitle(f"mean +- std over children and seeds; grey: {reference_label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "val_metric.png", dpi=110, bbox_inches="tight")  # no text cut at the edges

    for name in controllers:
        # Learned controllers that move Phi (a learned loss network has no Phi to draw).
        mine = [r for r in runs if r["controller"] == name and build_controller(name).learned and r["children"][0]["phi"]]
        if not mine:
            continue
        child = sorted(mine, key=lambda r: r["seed"])[0]["children"][0]
        phis = np.array(child["phi"])
        if phis.ndim == 2:  # one vector of loss parameters per step (metric learning): one panel, steps across
            fig = Figure(figsize=(7, 3))
            ax = fig.subplots()
            image = ax.imshow(phis.T, aspect="auto", cmap="viridis")
            ax.set_xlabel("controller step")
            ax.set_ylabel("loss parameter")
            fig.colorbar(image, ax=ax)
            fig.suptitle(f"Phi over training: {name} (first seed, child 0)")
            fig.savefig(out / f"phi_{file_stem(name)}.png", dpi=100)
            continue
        # A run file has every step, results.json the kept ones (compact_run): draw 4 either way.
        steps = child.get("phi_steps", list(range(len(phis))))
        picks = range(len(phis)) if "phi_steps" in child else np.unique(np.linspace(0, len(phis) - 1, 4).round().astype(int))
        # Phi - I on a symmetric scale fitted to the drawn steps: moves of a few hundredths stay visible.
        offsets = phis - np.eye(phis.shape[-1])
        scale = max(float(np.abs(offsets[list(picks)]).max()), 1e-3)
        fig = Figure(figsize=(3.2 * len(picks), 3))
        axes = fig.subplots(1, len(picks))
        for ax, index in zip(np.atleast_1d(axes), picks):
            image = ax.imshow(offsets[index], vmin=-scale, vmax=scale, cmap="RdBu_r")
            ax.set_title(f"step {steps[index] + 1}")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(image, ax=axes, shrink=0.8)
        fig.suptitle(f"Phi - I over training: {name} (first seed, child 0)")
        fig.savefig(out / f"phi_{file_stem(name)}.png", dpi=100)
