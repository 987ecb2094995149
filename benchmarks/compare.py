"""Compare loss controllers on one ALA env: same seeds, same budget, every run reported.

    python -m benchmarks.compare --env ALA-Digits-v0 --controllers ce,random,reinforce --seeds 2 \\
        --total-iterations 200 --steps-per-action 20 --name digits-small

writes under ``benchmarks/results/<name>/``:

* ``runs/<controller>-seed<k>.json``: one file per finished run (config, seed, each child's per-step
  validation metric, Phi, final test metric, wall time, device, versions). A run is written only when
  it has finished, atomically, so an interrupted comparison resumes where it stopped: finished runs
  are skipped, nothing written is lost. A run file that is not a whole run (cut short, edited) is a
  cache miss: a warning says so, and the run is run again.
* ``results.json``: all runs together (each child's Phi at 4 of its steps and every step's mean off-diagonal
  entry: :func:`compact_run`); ``table.md``: mean +- std of the test metric over seeds, wall
  time and its ratio to cross-entropy; ``val_metric.png``; ``phi_<controller>.png`` heatmaps.

``runs/`` is not committed; the runs of a committed ``results.json`` count as finished too, so the
same command in a fresh clone rebuilds the table instead of running again. A folder holds one
comparison: a command with another configuration, or with other controllers or seeds than the
``results.json`` already there (which would shrink the table or merge into it), is refused.

Data locations are a setting of the machine, not of a result: an env's ``data_root`` given as a
relative path (the ``cifar10-subset`` preset's) is looked up under ``--data-root`` (default
``$ALA_GYM_DATA``, else ``<repo>/../shared/data``), and no ``data_root`` is recorded or compared.

For a controller that trains several children in one run (``reinforce-multi``, ``ppo``), a seed's test
metric is the mean over its children; every child's value is in the JSON.

A controller name may carry env keywords of its own after ``@``: ``reinforce-multi@beta=0.01`` runs
``reinforce-multi`` with ``beta=0.01`` (values read as JSON, else as strings), beside the same
controller at the shared settings.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

import ala_gym
from agents import CONTROLLERS, resolve_controller
from ala_gym.core.data import DataError, data_home, resolve_device
from ala_gym.wrappers import MissingExtraError
from benchmarks.machine import cpu_model, package_version
from benchmarks.oracle import ORACLES, SELECTION_SEEDS, is_oracle, select

RESULTS = Path(__file__).resolve().parent / "results"

# The fixed rows every comparison has: what a user would compare a learned loss with. Where multi-child
# controllers run 2 children, ``ce(num_envs=2)`` trains cross-entropy on exactly their children (run k:
# seeds k and k + 1), for a paired comparison.
FIXED_ROWS = "ce,phi-identity,label-smoothing,phi-uniform,random,confusion"
# The Fashion-MNIST presets' budget: 1200 iterations of batch 128 are about 3 epochs of the 50k training
# images; K = 30 gives 40 steps.
FASHION_MNIST_BUDGET = dict(total_iterations=1200, steps_per_action=30, eval_points=2, eval_stride=5, val_subsample=1000)


def metric_learning_preset(env: str, name: str) -> dict[str, Any]:
    """A Fashion-MNIST metric-learning comparison (train on classes 0-4, retrieve on 5-9): the framework's
    fixed loss, the adaptive loss held at its initial Phi, ALA learned online and frozen at its initial
    policy, and PPO, every row on the same 2 children per seed. 1000 iterations of 5 x 20 batches (4 epochs
    of the 25k training images), K = 50: 20 steps a child."""
    return dict(
        env=env,
        controllers="fixed-loss,phi-init,reinforce-multi,reinforce-frozen,ppo",
        seeds=3,
        children=2,
        baseline_children=2,
        seed_stride=2,
        env_kwargs=dict(total_iterations=1000, steps_per_action=50, eval_points=2, eval_stride=5, val_subsample=1000),
        name=name,
    )


# Budgets chosen so a CPU can finish; each gives every child tens of controller steps.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(
        env="ALA-Digits-v0",
        controllers="ce,label-smoothing,reinforce-frozen,reinforce-multi",
        seeds=2,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=dict(total_iterations=600, steps_per_action=20),
        name="demo-digits",
    ),
    # Every controller on the same 10 children per seed (seeds 0, 10, ..., 40: no child shared between
    # seeds), and the sweep that chose the defaults of ReinforceConfig, UniformPhi and the env step rules
    # (one lever changed per row).
    "digits": dict(
        env="ALA-Digits-v0",
        controllers="ce,label-smoothing,random,ppo,phi-uniform(off_diagonal=0.003),phi-uniform(off_diagonal=0.01),"
        "phi-uniform(off_diagonal=0.03),phi-uniform(off_diagonal=0.1),confusion,reinforce-paper-multi,"
        "reinforce-frozen,reinforce-multi,reinforce-multi(lr=0.001),reinforce-multi(lr=0.03),"
        "reinforce-multi(baseline=ema),reinforce-multi(pair_credit=false),reinforce-multi(init_no_change=0.9),"
        "reinforce-multi(entropy_coef=0.01),reinforce-multi(updates_per_step=4),"
        "reinforce-multi@fixed_diagonal=false,reinforce-multi@step_scaling=entry,reinforce-multi@beta=0.3",
        seeds=5,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=dict(total_iterations=600, steps_per_action=20),
        name="digits",
    ),
    # Horizon: does the policy keep learning over 100 controller steps, and does it optimise the end of
    # training? 2000 iterations of 128 images are ~240 epochs of the 1,077 training images: the regime where a
    # regularising loss pays. The oracles and every credit of ReinforceConfig on the same 10 children per seed.
    "digits-long": dict(
        env="ALA-Digits-v0",
        controllers="ce,phi-uniform,oracle-phi,oracle-smoothing,online-smoothing,reinforce-frozen,reinforce-multi,"
        "reinforce-multi(return_horizon=10),reinforce-multi(return_horizon=25),"
        "reinforce-multi(episodic_weight=1.0;warmup_runs=2),reinforce-multi(episodic_weight=0.5;warmup_runs=2),pbt,"
        "pbt-frozen",
        seeds=5,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=dict(total_iterations=2000, steps_per_action=20),
        name="digits-long",
    ),
    # The long-horizon regime on a second dataset, sized for a CPU: the 64-64 MLP child on 5,000 Fashion-MNIST
    # training images (2000 iterations of 128: 51 epochs), where cross-entropy's validation error is flat or
    # rising at the end. The oracles, online label smoothing, the online learner with per-step and with episodic
    # credit, its frozen initial policy, PBT and its initial population, all on the same 10 children per seed.
    "fashion-mnist-long": dict(
        env="ALA-FashionMNIST-v0",
        controllers="ce,oracle-phi,oracle-smoothing,online-smoothing,reinforce-frozen,reinforce-multi,"
        "reinforce-multi(episodic_weight=1.0;warmup_runs=2),pbt,pbt-frozen",
        seeds=5,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=dict(model="mlp", train_size=5000, total_iterations=2000, steps_per_action=20, eval_points=2,
                        eval_stride=5, val_subsample=1000),
        name="fashion-mnist-long",
    ),
    "fashion-mnist": dict(
        env="ALA-FashionMNIST-v0",
        controllers=FIXED_ROWS + ",phi-identity-sigmoid,reinforce-paper,reinforce-paper-multi,"
        "reinforce-paper@beta=0.01,reinforce-paper-multi@beta=0.01,ppo@fixed_diagonal=false;step_scaling=entry,"
        "reinforce-frozen,reinforce-multi,reinforce-transfer-frozen,reinforce-transfer,ce(num_envs=2),"
        "adalfl@offline_steps=50,learnloss,"
        # Ablation of the transferred policy: it lowers every off-diagonal entry by one step per step, to
        # -0.444 after 40 steps; these hold such a Phi fixed from the start, on the same 2 children.
        "phi-uniform(off_diagonal=-0.444;num_envs=2),phi-uniform(off_diagonal=-0.1;num_envs=2),"
        # Fine-tuning that can learn: the shipped policy's logits divided by 10 (at 1 it is deterministic).
        "reinforce-transfer(temperature=10)",
        seeds=5,
        children=2,
        env_kwargs=FASHION_MNIST_BUDGET,
        name="fashion-mnist",
    ),
    # The online learner at its own child count (10, as in the paper and the digits sweep) instead of the
    # fashion-mnist preset's 2, at that preset's budget: every row on the same 10 children per seed. Then
    # the shipped digits policy, and one reward for all pairs (per-pair credit can move pairs apart).
    "fashion-mnist-10": dict(
        env="ALA-FashionMNIST-v0",
        controllers="ce,reinforce-multi,reinforce-frozen,reinforce-transfer-frozen,reinforce-multi(pair_credit=false)",
        seeds=5,
        children=10,
        baseline_children=10,
        seed_stride=10,
        env_kwargs=FASHION_MNIST_BUDGET,
        name="fashion-mnist-10",
    ),
    # AUCPR as the reward (Table 2 of the paper) at the fashion-mnist preset's budget: cross-entropy, the
    # pairwise AUC-ROC surrogate, ALA with the bundled REINFORCE on one child, and PPO on two.
    "fashion-mnist-aucpr": dict(
        env="ALA-FashionMNIST-AUCPR-v0",
        controllers="ce,auc-pairwise,reinforce,ppo",
        seeds=5,
        children=2,
        env_kwargs=FASHION_MNIST_BUDGET,
        name="fashion-mnist-aucpr",
    ),
    "cifar10-subset": dict(
        env="ALA-CIFAR10-v0",
        controllers=FIXED_ROWS + ",phi-identity-sigmoid,reinforce-paper,reinforce-paper-multi,"
        "reinforce-paper@beta=0.01,reinforce-paper-multi@beta=0.01,ppo@fixed_diagonal=false;step_scaling=entry,"
        "reinforce-frozen,reinforce-multi,reinforce-transfer-frozen,reinforce-transfer,ce(num_envs=2),"
        "reinforce-transfer(temperature=10)",
        seeds=5,
        children=2,
        env_kwargs=dict(
            model="small_cnn",
            lr=0.05,
            weight_decay=5e-4,
            data_root="cifar10-subset",  # relative: under --data-root / $ALA_GYM_DATA (see with_locations)
            total_iterations=400,
            steps_per_action=20,
            eval_points=2,
            eval_stride=5,
            val_subsample=None,
        ),
        name="cifar10-subset",
    ),
    # Metric learning: Table 3's triplet framework (Eq. 9 mixture) and margin framework (Eq. 10 focal weights).
    "fashion-mnist-triplet": metric_learning_preset("ALA-FashionMNIST-Triplet-v0", "fashion-mnist-triplet"),
    "fashion-mnist-margin": metric_learning_preset("ALA-FashionMNIST-Margin-v0", "fashion-mnist-margin"),
    # The paper's setting at a reduced budget, for a GPU: python -m benchmarks.compare --preset cifar10-gpu
    "cifar10-gpu": dict(
        env="ALA-CIFAR10-v0",
        controllers="ce,phi-identity,random,confusion,reinforce,reinforce-multi",
        seeds=3,
        env_kwargs=dict(total_iterations=16000, steps_per_action=200, device="cuda"),
        name="cifar10-resnet32-gpu",
    ),
}



LOCATION_KEYS = ("data_root",)  # env keywords that say where data lies: the machine's, not part of a result


class ComparisonError(ValueError):
    """A comparison that cannot go ahead as asked; :func:`main` prints it on one line and exits 2."""


def without_locations(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``env_kwargs`` as recorded and compared: data locations left out."""
    return {key: value for key, value in env_kwargs.items() if key not in LOCATION_KEYS}


def with_locations(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``env_kwargs`` as given to the env: a relative ``data_root`` resolved under :func:`ala_gym.core.data.data_home`."""
    root = env_kwargs.get("data_root")
    if root is None or Path(root).is_absolute():
        return env_kwargs
    return {**env_kwargs, "data_root": str(data_home() / root)}


def versions() -> dict[str, str | None]:
    """The versions a result depends on; Stable-Baselines3's is None where its extra is not installed."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "stable_baselines3": package_version("stable-baselines3"),
        "ala_gym": ala_gym.__version__,
    }


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}


def parse_controller(spec: str) -> tuple[str, dict[str, Any]]:
    """``"reinforce@beta=0.01"`` -> ``("reinforce", {"beta": 0.01})``: the controller (with any config
    keywords in parentheses, see :func:`parse_config`) and env keywords."""
    name, _, overrides = spec.partition("@")
    return name, _parse_keywords(spec, overrides)


def parse_config(name: str) -> tuple[str, dict[str, Any]]:
    """``"reinforce-multi(lr=0.001;pair_credit=false)"`` -> ``("reinforce-multi", {"lr": 0.001, ...})``: a
    registered name and fields of the controller's config dataclass (or, for a controller without one, its
    factory's keywords: ``phi-uniform(off_diagonal=0.03)``)."""
    base, _, rest = name.partition("(")
    if rest and not rest.endswith(")"):
        raise ComparisonError(f"controller {name!r}: write config keywords as name(key=value;key=value)")
    return base, _parse_keywords(name, rest[:-1])


def _parse_keywords(spec: str, text: str) -> dict[str, Any]:
    keywords: dict[str, Any] = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ComparisonError(f"controller {spec!r}: write keywords as key=value;key=value")
        try:
            keywords[key] = json.loads(value)
        except json.JSONDecodeError:
            keywords[key] = value
    return keywords


def build_controller(spec: str, children: int | None = None, baseline_children: int | None = None) -> Any:
    """The controller a spec names: config keywords applied, ``children`` for a multi-child controller and
    ``baseline_children`` for a fixed one (each None: the controller's own count)."""
    base, config_overrides = parse_config(parse_controller(spec)[0])
    try:
        factory = resolve_controller(base)
    except ValueError as error:
        raise ComparisonError(f"{error} (in {spec!r})") from None
    try:
        controller = factory()
        # Keywords that name a field of the controller's config dataclass go to it, the others to its factory.
        config = getattr(controller, "config", None)
        config_fields = {f.name for f in fields(config)} if is_dataclass(config) else set()
        config_kwargs = {k: v for k, v in config_overrides.items() if k in config_fields}
        factory_kwargs = {k: v for k, v in config_overrides.items() if k not in config_fields}
        count = children if controller.multi_child else baseline_children if not controller.learned else None
        if count is not None:
            factory_kwargs["num_envs"] = count
        if factory_kwargs:
            controller = factory(**factory_kwargs)
        if config_kwargs:
            controller.config = replace(controller.config, **config_kwargs)
    except (TypeError, ValueError, MissingExtraError) as error:
        raise ComparisonError(f"controller {spec!r}: {error}") from None
    return controller


PHI_STEPS_KEPT = 4
"""Steps of a child's Phi matrix that ``results.json`` keeps (the first, the last and two between); ``runs/``
keeps every step."""


def compact_run(run: dict) -> dict:
    """``run`` as ``results.json`` keeps it: per child, Phi at :data:`PHI_STEPS_KEPT` evenly spaced steps
    (``phi``, with their indices in ``phi_steps``) and every step's mean off-diagonal entry
    (``phi_off_diagonal``), validation curves to 6 decimals. Every step of every matrix would take a hundred
    times the room; the run files under ``runs/``, which the command writes again, keep them."""
    children = []
    for child in run["children"]:
        phi = child["phi"]
        if "phi_steps" in child or not phi or np.ndim(phi[-1]) != 2:  # compact already, or no Eq. 6 matrix
            children.append(child)
            continue
        picks = sorted({int(i) for i in np.linspace(0, len(phi) - 1, PHI_STEPS_KEPT).round()})
        matrices = np.asarray(phi, dtype=np.float64)
        off_diagonal = ~np.eye(matrices.shape[-1], dtype=bool)
        children.append({
            **child,
            "val_metric": np.round(child["val_metric"], 6).tolist(),
            "phi": [phi[i] for i in picks],
            "phi_steps": picks,
            "phi_off_diagonal": matrices[:, off_diagonal].mean(axis=1).round(6).tolist(),
        })  # fmt: skip
    return {**run, "children": children}


def write_json(path: Path, payload: Any, indent: int | None = 1) -> None:
    """Write atomically: a crash mid-write never leaves a truncated result behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own: two processes finishing one comparison may write results.json at once.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        # default=str: env keywords such as gymnasium's AutoresetMode are recorded by name.
        separators = (",", ":") if indent is None else None
        tmp.write(json.dumps(payload, indent=indent, separators=separators, default=str))
    os.replace(tmp.name, path)


def check_writable(out: Path) -> None:
    """Refuse a results folder that cannot be written before any training: a run's file is written only
    once its compute is spent."""
    for folder in (out, out / "runs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp").close()
        except OSError as error:
            reason = "it is a file, not a folder" if isinstance(error, FileExistsError) else error.strerror or error
            raise ComparisonError(
                f"cannot write results to {folder}: {reason}; make it a writable folder or pass --name for another one"
            ) from None


# The shapes of the store's files, as far as the comparison reads them: a dict names required keys (``"key?"``
# an optional one), a one-item list is a list of such items, a type (or tuple of types) a value of it.
NUMBER = (int, float)
RUN_SHAPE = {
    "env": str, "controller": str, "seed": int, "num_children": int, "env_kwargs": dict, "wall_s": NUMBER,
    "test_metric": NUMBER, "children": [{"val_metric": [NUMBER], "phi": list, "diverged": bool}], "device": str,
    "machine": dict, "versions": dict,
}
RESULTS_SHAPE = {"header": {"seeds": [int], "controllers?": [str]}, "summary": [{"controller": str}], "runs": [RUN_SHAPE]}
CONFIG_SHAPE = {"env_kwargs?": dict}
JSON_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "an integer",
              float: "a number", type(None): "null"}


def shape_problem(value: Any, shape: Any, where: str = "") -> str | None:
    """What in the JSON ``value`` does not have ``shape`` (see ``RUN_SHAPE``), located by its path; None if all does."""
    kind = dict if isinstance(shape, dict) else list if isinstance(shape, list) else shape
    if not isinstance(value, kind):
        expected = "a number" if kind == NUMBER else JSON_NAMES[kind]
        return f"{where or 'its top level'} is {JSON_NAMES[type(value)]}, not {expected}"
    if isinstance(shape, dict):
        for key, inner in shape.items():
            name = key.removesuffix("?")
            if name not in value:
                if key.endswith("?"):
                    continue
                return f"{where or 'it'} has no {name}"
            if problem := shape_problem(value[name], inner, f"{where}.{name}" if where else name):
                return problem
    elif isinstance(shape, list):
        for index, item in enumerate(value):
            if problem := shape_problem(item, shape[0], f"{where}[{index}]"):
                return problem
    return None


def read_json(path: Path, shape: Any, fix: str) -> Any:
    """``path``'s JSON; a :class:`ComparisonError` naming the file, what is wrong and ``fix`` if it does not
    parse or lacks ``shape`` (cut short or edited by hand: :func:`write_json` never leaves such a file)."""
    try:
        payload = json.loads(path.read_text())
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        problem = f"not valid JSON ({error})"
    else:
        problem = shape_problem(payload, shape)
        if problem is None:
            return payload
    raise ComparisonError(f"{path} is damaged: {problem}; {fix}")


def load_run(path: Path) -> dict | None:
    """The run recorded in ``path``, None if it has none yet; a :class:`ComparisonError` if the file is damaged."""
    return read_json(path, RUN_SHAPE, "running it again") if path.exists() else None


def finished_run(path: Path) -> bool:
    """Whether ``path`` holds a finished run. A run file is a cache of its run: a damaged one counts as not
    finished, so that the run is done again and its file replaced (atomically, by :func:`write_json`)."""
    try:
        return load_run(path) is not None
    except ComparisonError:
        return False


def run_one(
    env_id: str,
    controller_name: str,
    seed: int,
    env_kwargs: dict,
    progress: tqdm | None,
    children: int | None = None,
    baseline_children: int | None = None,
    seed_stride: int = 1,
) -> dict:
    """One run of one controller: its children train once; return the JSON-ready record.

    Run ``seed`` seeds the env with ``seed * seed_stride`` (child ``i`` with that plus ``i``), so that a
    stride of at least the child count gives every run its own children."""
    controller = build_controller(controller_name, children, baseline_children)
    env_kwargs = {**env_kwargs, **parse_controller(controller_name)[1]}
    kwargs = without_locations({**env_kwargs, **controller.env_kwargs()})
    # What the record says about where it ran is gathered before the training, so that no failure in it
    # can throw a finished run away.
    provenance = {"device": str(resolve_device(kwargs.get("device", "auto"))), "machine": machine(), "versions": versions()}
    envs = controller.make_envs(env_id, **with_locations(env_kwargs))
    start = time.perf_counter()

    def on_step(step: int, logs: dict[str, Any]) -> None:
        if progress is not None:
            progress.set_postfix(step=step, reward=f"{logs.get('reward', 0.0):+.2f}")

    try:
        records = controller.run(envs, seed=seed * seed_stride, on_step=on_step)
    finally:
        envs.close()
    wall = time.perf_counter() - start
    child_records = [vars(record) for record in records]
    return {
        "env": env_id,
        "controller": controller_name,
        "seed": seed,
        "env_seed": seed * seed_stride,
        "num_children": len(records),
        "env_kwargs": kwargs,
        "wall_s": wall,
        "test_metric": float(np.mean([c["test_metric"] for c in child_records])),
        "children": child_records,
        **provenance,
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
        # The Phi columns describe Eq. 6's matrix; they read nan for controllers without one (adalfl records no
        # Phi) and for the metric-learning envs, whose loss weights are a vector with no identity to drift from.
        final_phis = [
            np.array(c["phi"][-1]) for r in mine for c in r["children"] if c["phi"] and np.ndim(c["phi"][-1]) == 2
        ] or [np.full((1, 1), np.nan)]
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
        f"- Seeds: {header['seeds']}; versions: {json.dumps(header['versions'])}",
        f"- Test metric: {header.get('metric', 'error')} (%) on the test split{direction}; mean +- sample std over seeds (a multi-child run's seed value is",
        "  the mean over its children). Wall time per child relative to cross-entropy (`ce`); for a multi-child run",
        "  that is the run's wall time divided by its children, who train together (amortised). Phi at the end: mean",
        "  |Phi - I| over all entries and mean diagonal entry, averaged over children (Phi starts at I; `ce` ignores it).",
        "",
        f"| controller | children/run | test {header.get('metric', 'error')} % (mean +- std) | per seed | wall s/run | wall s/child | vs ce "
        "| final mean abs(Phi - I) | final diag | diverged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
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
        off = [phi[~np.eye(len(phi), dtype=bool)].mean() for phi in phis if len(phi) > 1]
        sign = -1.0 if higher_is_better else 1.0
        rise = [100 * sign * (c["val_metric"][-1] - (max if higher_is_better else min)(c["val_metric"])) for c in children]
        lines.append(f"| {name} | {np.mean(off) if off else float('nan'):+.4f} | {np.mean(rise):+.2f} |")
    return lines


def oracle_table(selections: dict[str, dict], header: dict[str, Any]) -> list[str]:
    """Each oracle's grid with its mean final validation metric on the selection seeds; nothing without oracles."""
    if not selections:
        return []
    metric = header.get("metric", "error")
    lines = [
        "",
        "## Oracle selection (on validation, never on test)",
        "",
        f"Each grid point's final {metric} % on the full validation split, mean over seeds "
        f"{next(iter(selections.values()))['selection_seeds']}; the selected point (marked) then ran on every seed.",
        "",
        "| oracle | grid point | validation % | |",
        "|---|---|---|---|",
    ]
    for name, selection in selections.items():
        for spec, value in selection["validation"].items():
            mark = "selected" if spec == selection["selected"] else ""
            lines.append(f"| {name} | {spec} | {100 * value:.2f} | {mark} |")
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


def plot(
    runs: list[dict], controllers: list[str], out: Path, metric: str = "error", higher_is_better: bool = False,
    labels: list[str] | None = None,
) -> None:  # fmt: skip
    """``test_metric.png``: every row's final test metric as a point (mean) with its std and every seed's value,
    sorted; ``val_metric.png``: one small panel per row (mean +- std over children and seeds) with the first
    row (the reference, ``ce``) in grey in each; ``phi_<row>.png``: heatmaps of Phi - I of learned rows.
    ``labels`` names the rows (default: ``controllers``, the names their runs carry)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or controllers
    present = [(label, name) for label, name in zip(labels, controllers) if any(r["controller"] == name for r in runs)]
    tests = {label: np.array([r["test_metric"] for r in runs if r["controller"] == name]) * 100 for label, name in present}
    order = sorted(tests, key=lambda label: tests[label].mean(), reverse=higher_is_better)  # best first, at the top
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(order) + 1.2))
    for row, label in enumerate(reversed(order)):
        values = tests[label]
        ax.scatter(values, np.full(len(values), row), s=10, color="0.6", zorder=2)
        ax.errorbar(values.mean(), row, xerr=values.std(ddof=1) if len(values) > 1 else 0, fmt="o", color="C0",
                    capsize=3, zorder=3)  # fmt: skip
    ax.set_yticks(range(len(order)), list(reversed(order)), fontsize=8)
    ax.set_xlabel(f"test {metric} % (mean +- std over seeds; grey: each seed)" + (", higher is better" if higher_is_better else ""))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out / "test_metric.png", dpi=110)
    plt.close(fig)

    def band(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        curves = [c["val_metric"] for r in runs if r["controller"] == name for c in r["children"]]
        length = min(len(c) for c in curves)
        stacked = np.array([c[:length] for c in curves]) * 100
        return np.arange(1, length + 1), stacked.mean(0), stacked.std(0)

    columns = min(4, len(present))
    rows = -(-len(present) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), sharex=True, sharey=True, squeeze=False)
    reference_label, reference = present[0]
    for ax, (label, name) in zip(axes.flat, present):
        if name != reference:
            steps, mean, _ = band(reference)
            ax.plot(steps, mean, color="0.6", lw=1, label=reference_label)
        steps, mean, std = band(name)
        ax.plot(steps, mean, color="C0", lw=1.2)
        ax.fill_between(steps, mean - std, mean + std, color="C0", alpha=0.2)
        ax.set_title(label if len(label) <= 38 else label[:36] + "...", fontsize=8)
        ax.grid(alpha=0.3)
        if not higher_is_better:  # an error rate falls over decades; a score to raise approaches 100% from below
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(present):]:
        ax.set_visible(False)
    fig.supxlabel("controller step", fontsize=9)
    fig.supylabel(f"validation {metric} % (env subsample)", fontsize=9)
    fig.suptitle(f"mean +- std over children and seeds; grey: {reference_label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "val_metric.png", dpi=110)
    plt.close(fig)

    for name in controllers:
        # Learned controllers that move Phi (a learned loss network has no Phi to draw).
        mine = [r for r in runs if r["controller"] == name and build_controller(name).learned and r["children"][0]["phi"]]
        if not mine:
            continue
        child = sorted(mine, key=lambda r: r["seed"])[0]["children"][0]
        phis = np.array(child["phi"])
        if phis.ndim == 2:  # one vector of loss parameters per step (metric learning): one panel, steps across
            fig, ax = plt.subplots(figsize=(7, 3))
            image = ax.imshow(phis.T, aspect="auto", cmap="viridis")
            ax.set_xlabel("controller step")
            ax.set_ylabel("loss parameter")
            fig.colorbar(image, ax=ax)
            fig.suptitle(f"Phi over training: {name} (first seed, child 0)")
            fig.savefig(out / f"phi_{name}.png", dpi=100)
            plt.close(fig)
            continue
        # A run file has every step, results.json the kept ones (compact_run): draw 4 either way.
        steps = child.get("phi_steps", list(range(len(phis))))
        picks = range(len(phis)) if "phi_steps" in child else np.unique(np.linspace(0, len(phis) - 1, 4).round().astype(int))
        # Phi - I on a symmetric scale fitted to the drawn steps: moves of a few hundredths stay visible.
        offsets = phis - np.eye(phis.shape[-1])
        scale = max(float(np.abs(offsets[list(picks)]).max()), 1e-3)
        fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3))
        for ax, index in zip(np.atleast_1d(axes), picks):
            image = ax.imshow(offsets[index], vmin=-scale, vmax=scale, cmap="RdBu_r")
            ax.set_title(f"step {steps[index] + 1}")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(image, ax=axes, shrink=0.8)
        fig.suptitle(f"Phi - I over training: {name} (first seed, child 0)")
        fig.savefig(out / f"phi_{name}.png", dpi=100)
        plt.close(fig)


def check_same_config(out: Path, config: dict) -> None:
    """Refuse to mix runs of different budgets in one folder (resuming must continue the same comparison).

    Data locations are no part of the identity: the same comparison resumes on a machine whose data lie elsewhere.
    """
    path = out / "config.json"
    config = json.loads(json.dumps({**config, "env_kwargs": without_locations(config["env_kwargs"])}))
    if path.exists():
        saved = read_json(
            path, CONFIG_SHAPE,
            f"restore it from version control, or delete it if every run in {out} is of this command's configuration",
        )
        if {**saved, "env_kwargs": without_locations(saved.get("env_kwargs", {}))} != config:
            raise ComparisonError(
                f"{out} holds runs of another configuration ({saved}); pass --name for a new folder or delete it"
            )
    write_json(path, config)  # (re)written without locations


def read_results(out: Path) -> dict | None:
    """``out/results.json`` (committed with the table, while ``runs/`` is not), None if there is none."""
    path = out / "results.json"
    fix = "restore it from version control, or delete it to rebuild it from runs/ (runs missing there are run again)"
    return read_json(path, RESULTS_SHAPE, fix) if path.exists() else None


def committed_runs(out: Path) -> list[dict]:
    """The runs of ``out/results.json``."""
    saved = read_results(out)
    return saved["runs"] if saved else []


def check_same_plan(out: Path, controllers: list[str], seeds: list[int], extend: bool = False) -> None:
    """Refuse to rewrite a finished comparison's table with other controllers or seeds: fewer would shrink
    it (a partial command would overwrite a full table), more would merge new runs into it (allowed
    with ``extend``, which never drops a controller or seed)."""
    saved = read_results(out)
    if saved is None:
        return
    saved_controllers = saved["header"].get("controllers") or [row["controller"] for row in saved["summary"]]
    saved_seeds = saved["header"]["seeds"]
    grows = set(saved_controllers) <= set(controllers) and set(saved_seeds) <= set(seeds)
    if extend and grows:
        return
    if sorted(saved_controllers) != sorted(controllers) or sorted(saved_seeds) != sorted(seeds):
        raise ComparisonError(
            f"{out / 'results.json'} holds the comparison of {len(saved_controllers)} controllers "
            f"({','.join(saved_controllers)}) "
            f"on seeds {saved_seeds}; this command asks for {len(controllers)} controllers ({','.join(controllers)}) "
            f"on seeds {seeds}, which would shrink that table or merge into it. Run it with the same controllers "
            "and seeds (its preset as is), add --extend to add runs to it, or pass --name for a new folder"
        )


def claim(result: Path, wait: bool = False, done: Callable[[Path], bool] = Path.exists) -> int | None:
    """Reserve the run that writes ``result`` for this process: an open descriptor holding an exclusive
    ``fcntl`` lock on ``<result>.lock``, or None if the run is done (``done(result)``, by default: the file
    exists) or another process holds it (with ``wait``, block until it lets go, then look again).

    The kernel drops the lock when its process exits, however it exits, so a killed run never blocks
    its successor and no process id is trusted. ``result`` is written before its lock is released, and
    looked for only under the lock, so a run is never done twice.
    """
    lock = result.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if done(result):  # finished by another process while this one waited: its lock is no longer needed
        lock.unlink(missing_ok=True)
        os.close(fd)
        return None
    return fd


def release(result: Path, fd: int, done: Callable[[Path], bool] = Path.exists) -> None:
    """Let go of a claimed run; a finished run's lock file is removed (a failed one's stays, unlocked, so that
    a process waiting on it runs the run, and no other process starts it beside that one)."""
    if done(result):
        result.with_suffix(".lock").unlink(missing_ok=True)
    os.close(fd)


def compare(
    env_id: str,
    controllers: list[str],
    seeds: list[int],
    env_kwargs: dict,
    name: str,
    children: int | None = None,
    baseline_children: int | None = None,
    seed_stride: int = 1,
    extend: bool = False,
) -> list[dict]:
    """Run what is missing, then rewrite the aggregate JSON, table and plots from every finished run.

    Several processes may run the same comparison at once (one per core): each claims a run before
    starting it (:func:`claim`), so none is run twice; a process that has nothing left to start waits
    for the runs others hold, and runs any whose process died, so the table it writes is complete.
    """
    oracles = {spec: ORACLES[spec] for spec in controllers if is_oracle(spec)}
    plain = [spec for spec in controllers if spec not in oracles]
    for spec in plain + [candidate for grid in oracles.values() for candidate in grid]:
        build_controller(spec)  # unknown names and bad keywords fail before any run
    out = RESULTS / name
    check_writable(out)
    config = {"env": env_id, "env_kwargs": env_kwargs, "children": children}
    if baseline_children is not None or seed_stride != 1:
        config |= {"baseline_children": baseline_children, "seed_stride": seed_stride}
    check_same_config(out, config)
    check_same_plan(out, controllers, seeds, extend)
    committed = {(r["controller"], r["seed"]): r for r in committed_runs(out)}
    probe = gym.make(env_id, **with_locations(env_kwargs)).unwrapped

    def result_path(controller: str, seed: int) -> Path:
        return out / "runs" / f"{controller}-seed{seed}.json"

    def finished(controller: str, seed: int) -> bool:
        return (controller, seed) in committed or finished_run(result_path(controller, seed))

    def run_missing(plan: list[tuple[str, int]]) -> None:
        """Run the ``(controller, seed)`` pairs of ``plan`` that have not finished; every one has after."""
        todo = []
        for controller, seed in plan:
            if (controller, seed) in committed:
                continue
            try:
                if load_run(result_path(controller, seed)) is not None:
                    continue
            except ComparisonError as error:  # a damaged run file: said once here, then its run is done again
                print(f"warning: {error}", file=sys.stderr, flush=True)
            todo.append((controller, seed))
        print(f"{len(plan) - len(todo)} runs already done in {out}; {len(todo)} to run", flush=True)
        # A bar on a terminal only; otherwise (a log file) one line per finished run.
        with tqdm(total=len(todo), desc="runs", unit="run", file=sys.stdout, disable=None) as progress:

            def run_claimed(controller: str, seed: int, fd: int) -> None:
                result = result_path(controller, seed)
                try:
                    progress.set_description(f"{controller} seed {seed}")
                    record = run_one(
                        env_id, controller, seed, env_kwargs, progress, children, baseline_children, seed_stride
                    )
                    write_json(result, record)
                finally:
                    release(result, fd, finished_run)
                progress.update(1)
                if progress.disable:
                    print(f"{controller} seed {seed}: test metric {record['test_metric']:.4f}, "
                          f"{record['wall_s']:.0f} s", flush=True)

            held_elsewhere = []
            for controller, seed in todo:
                fd = claim(result_path(controller, seed), done=finished_run)
                if fd is not None:
                    run_claimed(controller, seed, fd)
                elif not finished_run(result_path(controller, seed)):
                    held_elsewhere.append((controller, seed))
            for controller, seed in held_elsewhere:
                print(f"{controller} seed {seed} is being run by another process: waiting for it", flush=True)
                fd = claim(result_path(controller, seed), wait=True, done=finished_run)
                if fd is not None:  # that process ended without finishing it
                    run_claimed(controller, seed, fd)

        missing = [f"{c} seed {s}" for c, s in plan if not finished(c, s)]
        if missing:  # only if a run's file vanished under us; never write a table with holes
            raise ComparisonError(f"runs missing from {out / 'runs'}: {', '.join(missing)}; run the command again")

    def gather(specs: set[str]) -> list[dict]:
        """Every finished run of ``specs`` on this comparison's seeds, in the order of the files in runs/."""
        # Damaged files of runs outside this comparison are left out (its own were run again above).
        on_disk = [load_run(p) for p in sorted((out / "runs").glob("*.json")) if finished_run(p)]
        fresh = {(r["controller"], r["seed"]) for r in on_disk}
        runs = on_disk + [r for key, r in committed.items() if key not in fresh]
        runs = [r for r in runs if r["controller"] in specs and r["seed"] in seeds and r["env"] == env_id]
        for run in runs:  # runs recorded before locations were left out lose them here
            run["env_kwargs"] = without_locations(run["env_kwargs"])
        return sorted(runs, key=lambda r: f"{r['controller']}-seed{r['seed']}.json")

    # Seed-major: an interrupted comparison has every controller on the same seeds so far. An oracle's grid
    # runs on the selection seeds first; the point selected on validation then runs on every seed.
    selection_seeds = seeds[:SELECTION_SEEDS]
    run_missing([(c, s) for s in seeds for c in plain] + [(c, s) for s in selection_seeds for grid in oracles.values() for c in grid])
    grid_runs = {(r["controller"], r["seed"]): r for r in gather({c for grid in oracles.values() for c in grid})}
    selections = {
        spec: select(grid, grid_runs, selection_seeds, probe.evaluator.higher_is_better) for spec, grid in oracles.items()
    }
    run_missing([(selection["selected"], s) for s in seeds for selection in selections.values()])
    runs = gather(set(plain) | {c for grid in oracles.values() for c in grid})
    rows = []
    for spec in controllers:
        for row in summarize(runs, [selections[spec]["selected"] if spec in oracles else spec]):
            rows.append(row | {"controller": spec, "selected": selections[spec]["selected"]} if spec in oracles else row)
    total, k = probe.train_config.total_iterations, probe.steps_per_action
    header = {
        "env": env_id,
        "metric": probe.metric,
        "higher_is_better": probe.evaluator.higher_is_better,
        "env_kwargs": without_locations(env_kwargs),
        "controllers": controllers,
        "total_iterations": total,
        "steps_per_action": k,
        "steps_per_child": -(-total // k),
        "seeds": seeds,
        "device": runs[0]["device"],
        # Where the runs ran (a rebuilt table may be written elsewhere).
        "machine": runs[0]["machine"],
        "versions": runs[0]["versions"],
    }
    if selections:
        header["oracles"] = selections
    # Without indentation: a list of every step's values would take a line per number.
    write_json(out / "results.json", {"header": header, "summary": rows, "runs": [compact_run(r) for r in runs]}, indent=None)
    shown = [row["controller"] for row in rows]
    table = markdown_table(
        rows, header,
        {c: [r for r in runs if r["controller"] == selections.get(c, {}).get("selected", c)] for c in shown},
    )  # fmt: skip
    (out / "table.md").write_text(table)
    plot(runs, [selections[c]["selected"] if c in oracles else c for c in controllers], out, header["metric"],
         header["higher_is_better"], labels=controllers)  # fmt: skip
    print(table)
    return rows


def describe_presets() -> str:
    """What each preset runs, for ``--help``."""
    lines = ["presets (flags given beside --preset override its values):"]
    for name, preset in PRESETS.items():
        kwargs = preset["env_kwargs"]
        children = preset.get("children")
        lines.append(
            f"  {name}: {preset['env']}, {preset['seeds']} seeds, {kwargs.get('total_iterations', 'env default')} "
            f"iterations, K = {kwargs.get('steps_per_action', 'env default')}, "
            + (f"--children {children}" if children else "multi-child controllers at their own child count")
            + (f", --baseline-children {preset['baseline_children']}" if preset.get("baseline_children") else "")
            + (f", --seed-stride {preset['seed_stride']}" if preset.get("seed_stride") else "")
            + f", writes results/{preset['name']}/; controllers: {preset['controllers'].replace(',', ', ')}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=describe_presets(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named configuration (listed below)")
    parser.add_argument("--env", help="registered ALA env id, e.g. ALA-Digits-v0")
    parser.add_argument(
        "--controllers",
        help=f"comma-separated, from {sorted(CONTROLLERS)}, a controller of an installed plugin, or your own as "
        "package.module:Factory; each optionally name(config_key=value;...)@env_key=value;...",
    )
    parser.add_argument("--seeds", type=int, help="how many seeds: runs seeds 0, 1, ..., N-1")
    parser.add_argument("--total-iterations", type=int, help="SGD iterations per child (default: the env's)")
    parser.add_argument("--steps-per-action", type=int, help="K, SGD iterations per controller step (default: the env's)")
    parser.add_argument("--env-kwargs", default="{}", help="JSON dict of further env keywords")
    parser.add_argument("--name", help="results folder under benchmarks/results/ (default: the preset's, else the env id)")
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
        help="run k seeds its env with k * stride (default 1); a stride of at least the child count keeps the "
        "children of different seeds apart",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--extend", action="store_true",
        help="add controllers or seeds to the comparison already in the folder (it is never shrunk)",
    )
    parser.add_argument(
        "--data-root", type=Path,
        help="folder holding the datasets that are not downloaded, such as cifar10-subset/ "
        "(default: $ALA_GYM_DATA, else <repo>/../shared/data); not part of a result's identity",
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
    for flag in ("env", "controllers", "seeds", "name", "children", "baseline_children", "seed_stride"):
        if getattr(args, flag) is not None:
            config[flag] = getattr(args, flag)
    if args.total_iterations is not None:
        config["env_kwargs"]["total_iterations"] = args.total_iterations
    if args.steps_per_action is not None:
        config["env_kwargs"]["steps_per_action"] = args.steps_per_action
    missing = [k for k in ("env", "controllers", "seeds") if k not in config]
    if missing:
        parser.error(f"give --preset or all of --env --controllers --seeds (missing: {', '.join(missing)})")
    for flag in ("seeds", "children", "baseline_children", "seed_stride", "threads"):
        value = config.get(flag) if flag != "threads" else args.threads
        if value is not None and value < 1:
            parser.error(f"--{flag} must be a positive count, got {value}")
    if args.data_root is not None:
        os.environ["ALA_GYM_DATA"] = str(args.data_root)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name = config.get("name") or config["env"].lower()
    seeds = list(range(config["seeds"]))
    try:
        compare(
            config["env"],
            config["controllers"].split(","),
            seeds,
            config["env_kwargs"],
            name,
            config.get("children"),
            config.get("baseline_children"),
            config.get("seed_stride", 1),
            args.extend,
        )
    except (ComparisonError, DataError, ValueError, TypeError, gym.error.Error) as exc:
        # Bad input (a refused folder, an unknown id, an env keyword out of range, missing data): one line.
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    main()
