"""Compare loss controllers on one ALA env: same seeds, same budget, every run reported.

    python -m benchmarks.compare --env ALA-FashionMNIST-v0 \\
        --controllers ce,phi-identity,random,confusion,reinforce,reinforce-multi,ppo --seeds 5 \\
        --total-iterations 600 --steps-per-action 20 --name fashion-mnist

writes under ``benchmarks/results/<name>/``:

* ``runs/<controller>-seed<k>.json``: one file per finished run (config, seed, each child's per-step
  validation metric, Phi, final test metric, wall time, device, versions). A run is written only when
  it has finished, atomically, so an interrupted comparison resumes where it stopped: finished runs
  are skipped, nothing written is lost.
* ``results.json``: all runs together; ``table.md``: mean +- std of the test metric over seeds, wall
  time and its ratio to cross-entropy; ``val_metric.png``; ``phi_<controller>.png`` heatmaps.

For a controller that trains several children in one run (``reinforce-multi``, ``ppo``), a seed's test
metric is the mean over its children; every child's value is in the JSON.

A controller name may carry env keywords of its own after ``@``: ``reinforce-multi@beta=0.01`` runs
``reinforce-multi`` with ``beta=0.01`` (values read as JSON, else as strings), beside the same
controller at the shared settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

import ala_gym
from ala_gym.envs.classification import resolve_device
from agents import CONTROLLERS
from benchmarks.machine import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"

# Budgets chosen so a CPU can finish; each gives every child tens of controller steps.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(
        env="ALA-Digits-v0",
        controllers="ce,phi-identity,random,confusion,reinforce,reinforce-multi,reinforce-multi@beta=0.01",
        seeds=2,
        env_kwargs=dict(total_iterations=600, steps_per_action=20),
        name="demo-digits",
    ),
    "fashion-mnist": dict(
        env="ALA-FashionMNIST-v0",
        controllers="ce,phi-identity,reinforce,reinforce-multi,random,confusion,phi-identity-sigmoid,ppo,"
        "reinforce@beta=0.01,reinforce-multi@beta=0.01",
        seeds=5,
        children=2,
        # 1200 iterations of batch 128 are about 3 epochs of the 50k training images; K = 30 gives 40 steps.
        env_kwargs=dict(total_iterations=1200, steps_per_action=30, eval_points=2, eval_stride=5, val_subsample=1000),
        name="fashion-mnist",
    ),
    "cifar10-subset": dict(
        env="ALA-CIFAR10-v0",
        controllers="ce,phi-identity,reinforce,reinforce-multi,random,confusion,phi-identity-sigmoid,ppo,"
        "reinforce@beta=0.01,reinforce-multi@beta=0.01",
        seeds=5,
        children=2,
        env_kwargs=dict(
            model="small_cnn",
            lr=0.05,
            weight_decay=5e-4,
            data_root=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"),
            total_iterations=400,
            steps_per_action=20,
            eval_points=2,
            eval_stride=5,
            val_subsample=None,
        ),
        name="cifar10-subset",
    ),
    # The paper's setting at a reduced budget, for a GPU: python -m benchmarks.compare --preset cifar10-gpu
    "cifar10-gpu": dict(
        env="ALA-CIFAR10-v0",
        controllers="ce,phi-identity,random,confusion,reinforce,reinforce-multi",
        seeds=3,
        env_kwargs=dict(total_iterations=16000, steps_per_action=200, device="cuda"),
        name="cifar10-resnet32-gpu",
    ),
}

LEARNED = {"reinforce", "reinforce-multi", "ppo", "a2c"}  # controllers whose Phi trajectories get heatmaps
MULTI_CHILD = {"reinforce-multi", "ppo", "a2c"}  # controllers that share one policy across several children


def versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "ala_gym": ala_gym.__version__,
    }


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}


def parse_controller(spec: str) -> tuple[str, dict[str, Any]]:
    """``"reinforce@beta=0.01,..."`` -> ``("reinforce", {"beta": 0.01})``: a registered name and env keywords."""
    name, _, overrides = spec.partition("@")
    env_kwargs: dict[str, Any] = {}
    for item in filter(None, overrides.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"controller {spec!r}: write env keywords as name@key=value;key=value")
        try:
            env_kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            env_kwargs[key] = value
    return name, env_kwargs


def write_json(path: Path, payload: Any) -> None:
    """Write atomically: a crash mid-write never leaves a truncated result behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # default=str: env keywords such as gymnasium's AutoresetMode are recorded by name.
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def run_one(
    env_id: str, controller_name: str, seed: int, env_kwargs: dict, controller_kwargs: dict, progress: tqdm | None
) -> dict:
    """One run of one controller: its children train once; return the JSON-ready record."""
    base, overrides = parse_controller(controller_name)
    controller = CONTROLLERS[base](**controller_kwargs)
    env_kwargs = {**env_kwargs, **overrides}
    kwargs = {**env_kwargs, **controller.env_kwargs()}
    envs = controller.make_envs(env_id, **env_kwargs)
    start = time.perf_counter()

    def on_step(step: int, logs: dict[str, Any]) -> None:
        if progress is not None:
            progress.set_postfix(step=step, reward=f"{logs.get('reward', 0.0):+.2f}")

    try:
        records = controller.run(envs, seed=seed, on_step=on_step)
    finally:
        envs.close()
    wall = time.perf_counter() - start
    children = [vars(record) for record in records]
    return {
        "env": env_id,
        "controller": controller_name,
        "seed": seed,
        "num_children": len(children),
        "env_kwargs": kwargs,
        "wall_s": wall,
        "test_metric": float(np.mean([c["test_metric"] for c in children])),
        "children": children,
        "device": str(resolve_device(kwargs.get("device", "auto"))),
        "machine": machine(),
        "versions": versions(),
    }


def summarize(runs: list[dict], controllers: list[str]) -> list[dict]:
    ce_wall = [r["wall_s"] / r["num_children"] for r in runs if r["controller"] == "ce"]
    rows = []
    for name in controllers:
        mine = [r for r in runs if r["controller"] == name]
        if not mine:
            continue
        tests = np.array([r["test_metric"] for r in mine]) * 100
        per_child = np.array([r["wall_s"] / r["num_children"] for r in mine])
        # Controllers without Phi (adalfl) record none: their Phi columns read nan.
        final_phis = [np.array(c["phi"][-1]) for r in mine for c in r["children"] if c["phi"]] or [np.full((1, 1), np.nan)]
        rows.append(
            {
                "controller": name,
                "seeds": sorted(r["seed"] for r in mine),
                "children_per_run": mine[0]["num_children"],
                "test_mean": float(tests.mean()),
                "test_std": float(tests.std(ddof=1)) if len(tests) > 1 else 0.0,
                "test_per_seed": tests.round(3).tolist(),
                "wall_s_per_run": float(np.mean([r["wall_s"] for r in mine])),
                "wall_s_per_child": float(per_child.mean()),
                "wall_vs_ce": float(per_child.mean() / np.mean(ce_wall)) if ce_wall else None,
                "diverged_children": int(sum(c["diverged"] for r in mine for c in r["children"])),
                # How far the controller moved the loss: mean |Phi - I| over entries at the end, and the diagonal.
                "final_phi_offset": float(np.mean([np.abs(phi - np.eye(len(phi))).mean() for phi in final_phis])),
                "final_phi_diagonal": float(np.mean([np.diag(phi).mean() for phi in final_phis])),
            }
        )
    return rows


def markdown_table(rows: list[dict], header: dict[str, Any]) -> str:
    lines = [
        f"# {header['env']}: controller comparison",
        "",
        f"- Machine: {header['machine']['cpu']}, {header['machine']['cores']} cores, "
        f"{header['machine']['torch_threads']} torch threads, GPU: {header['machine']['gpu']}; device `{header['device']}`",
        f"- Budget per child: {header['total_iterations']} SGD iterations, K = {header['steps_per_action']} "
        f"-> {header['steps_per_child']} controller steps; env kwargs `{json.dumps(header['env_kwargs'])}`",
        f"- Seeds: {header['seeds']}; versions: {json.dumps(header['versions'])}",
        "- Test metric: error (%) on the test split; mean +- sample std over seeds (a multi-child run's seed value is",
        "  the mean over its children). Wall time per child relative to cross-entropy (`ce`). Phi at the end: mean",
        "  |Phi - I| over all entries and mean diagonal entry, averaged over children (Phi starts at I; `ce` ignores it).",
        "",
        "| controller | children/run | test error % (mean +- std) | per seed | wall s/run | wall s/child | vs ce "
        "| final mean abs(Phi - I) | final diag | diverged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row['wall_vs_ce']:.2f}x" if row["wall_vs_ce"] is not None else "-"
        lines.append(
            f"| {row['controller']} | {row['children_per_run']} | {row['test_mean']:.2f} +- {row['test_std']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in row['test_per_seed'])} | {row['wall_s_per_run']:.1f} | "
            f"{row['wall_s_per_child']:.1f} | {ratio} | {row['final_phi_offset']:.3f} | {row['final_phi_diagonal']:.2f} | "
            f"{row['diverged_children']} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], controllers: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in controllers:
        curves = [c["val_metric"] for r in runs if r["controller"] == name for c in r["children"]]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        stacked = np.array([c[:length] for c in curves]) * 100
        mean, std = stacked.mean(0), stacked.std(0)
        steps = np.arange(1, length + 1)
        ax.plot(steps, mean, label=name)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("controller step")
    ax.set_ylabel("validation error % (env subsample)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "val_metric.png", dpi=110)
    plt.close(fig)

    for name in controllers:
        mine = [r for r in runs if r["controller"] == name and parse_controller(name)[0] in LEARNED]
        if not mine:
            continue
        phis = np.array(sorted(mine, key=lambda r: r["seed"])[0]["children"][0]["phi"])
        picks = np.unique(np.linspace(0, len(phis) - 1, 4).round().astype(int))
        fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3))
        for ax, index in zip(np.atleast_1d(axes), picks):
            image = ax.imshow(phis[index], vmin=-1, vmax=1, cmap="RdBu_r")
            ax.set_title(f"step {index + 1}")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(image, ax=axes, shrink=0.8)
        fig.suptitle(f"Phi over training: {name} (first seed, child 0)")
        fig.savefig(out / f"phi_{name}.png", dpi=100)
        plt.close(fig)


def check_same_config(out: Path, config: dict) -> None:
    """Refuse to mix runs of different budgets in one folder (resuming must continue the same comparison)."""
    path = out / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(config)):
            raise SystemExit(
                f"{out} holds runs of another configuration ({saved}); pass --name for a new folder or delete it"
            )
    else:
        write_json(path, config)


def claim(result: Path) -> bool:
    """Reserve the run that writes ``result`` for this process: False if it is done or another live process
    holds it. The lock file names its owner's PID, so a lock left by a killed process is taken over."""
    lock = result.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        if result.exists():
            return False
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = lock.read_text()
                if owner:
                    os.kill(int(owner), 0)  # signal 0: only asks whether the process exists
                return False  # its owner is alive, or is writing its PID right now
            except PermissionError:
                return False  # alive, under another user
            except (ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale (or just released): retry once
                continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def compare(
    env_id: str, controllers: list[str], seeds: list[int], env_kwargs: dict, name: str, children: int | None = None
) -> list[dict]:
    """Run what is missing, then rewrite the aggregate JSON, table and plots from every finished run.

    Several processes may run the same comparison at once (one per core): each claims a run before
    starting it (:func:`claim`), so none is run twice.
    """
    unknown = [c for c in controllers if parse_controller(c)[0] not in CONTROLLERS]
    if unknown:
        raise SystemExit(f"unknown controllers {unknown}; choose from {sorted(CONTROLLERS)}")
    out = RESULTS / name
    check_same_config(out, {"env": env_id, "env_kwargs": env_kwargs, "children": children})
    # Seed-major: an interrupted comparison has every controller on the same seeds so far.
    todo = [(c, s) for s in seeds for c in controllers if not (out / "runs" / f"{c}-seed{s}.json").exists()]
    print(f"{len(controllers) * len(seeds) - len(todo)} runs already done in {out}; {len(todo)} to run")
    with tqdm(todo, desc="runs", unit="run", file=sys.stdout) as progress:
        for controller, seed in progress:
            result = out / "runs" / f"{controller}-seed{seed}.json"
            if not claim(result):
                continue  # another process runs it, or has just finished it
            try:
                progress.set_description(f"{controller} seed {seed}")
                multi = parse_controller(controller)[0] in MULTI_CHILD
                kwargs = {"num_envs": children} if children is not None and multi else {}
                record = run_one(env_id, controller, seed, env_kwargs, kwargs, progress)
                write_json(result, record)
            finally:
                result.with_suffix(".lock").unlink()

    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    runs = [r for r in runs if r["controller"] in controllers and r["seed"] in seeds and r["env"] == env_id]
    rows = summarize(runs, controllers)
    probe = gym.make(env_id, **env_kwargs).unwrapped
    total, k = probe.train_config.total_iterations, probe.steps_per_action
    header = {
        "env": env_id,
        "env_kwargs": env_kwargs,
        "total_iterations": total,
        "steps_per_action": k,
        "steps_per_child": -(-total // k),
        "seeds": seeds,
        "device": runs[0]["device"] if runs else "-",
        "machine": machine(),
        "versions": versions(),
    }
    write_json(out / "results.json", {"header": header, "summary": rows, "runs": runs})
    table = markdown_table(rows, header)
    (out / "table.md").write_text(table)
    plot(runs, controllers, out)
    print(table)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named configuration; flags override it")
    parser.add_argument("--env", help="registered ALA env id")
    parser.add_argument("--controllers", help=f"comma-separated, from {sorted(CONTROLLERS)}")
    parser.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    parser.add_argument("--total-iterations", type=int, help="SGD iterations per child")
    parser.add_argument("--steps-per-action", type=int, help="K, SGD iterations per controller step")
    parser.add_argument("--env-kwargs", default="{}", help="JSON dict of further env kwargs")
    parser.add_argument("--name", help="results folder under benchmarks/results/")
    parser.add_argument("--children", type=int, help="children of the multi-child controllers (default: theirs, 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    config: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {"env_kwargs": {}}
    config["env_kwargs"] = {**config["env_kwargs"], **json.loads(args.env_kwargs)}
    for flag in ("env", "controllers", "seeds", "name", "children"):
        if getattr(args, flag) is not None:
            config[flag] = getattr(args, flag)
    if args.total_iterations is not None:
        config["env_kwargs"]["total_iterations"] = args.total_iterations
    if args.steps_per_action is not None:
        config["env_kwargs"]["steps_per_action"] = args.steps_per_action
    missing = [k for k in ("env", "controllers", "seeds") if k not in config]
    if missing:
        parser.error(f"give --preset or all of --env --controllers --seeds (missing: {', '.join(missing)})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name = config.get("name") or config["env"].lower()
    seeds = list(range(config["seeds"]))
    compare(config["env"], config["controllers"].split(","), seeds, config["env_kwargs"], name, config.get("children"))


if __name__ == "__main__":
    main()
