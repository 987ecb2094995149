"""One run of one controller, and the comparison: run what is missing on every seed, then write the
aggregate JSON, the table and the figures from every finished run.

:data:`RESULTS`, :data:`SELECTION_SEEDS` and :func:`run_one` are read here when a comparison runs: set them on
this module (a test's folder, no training) to change what :func:`compare` does."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ala_gym.benchmarks.compare.errors import ComparisonError
from ala_gym.benchmarks.compare.provenance import machine, versions, without_locations
from ala_gym.benchmarks.compare.report import markdown_table, plot, summarize
from ala_gym.benchmarks.compare.specs import build_controller, check_row, parse_controller
from ala_gym.benchmarks.compare.store import (
    check_same_config,
    check_same_plan,
    check_writable,
    claim,
    committed_runs,
    compact_run,
    file_stem,
    finished_run,
    load_run,
    release,
    run_file,
    saved_seed_stride,
    write_json,
)
from ala_gym.benchmarks.machine import RESULTS
from ala_gym.benchmarks.oracle import ORACLES, SELECTION_SEEDS, is_oracle, select
from ala_gym.core.data import resolve_device, with_data_home
from ala_gym.core.files import write_text_atomic
from ala_gym.core.machine import source_digest
from ala_gym.envs.spec import task_spec
from ala_gym.registration import env_spec


class RunError(RuntimeError):
    """A run that failed after every input was checked: a controller's or the package's own fault, reported with
    its row and its traceback."""


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
    # The comparison's keywords are every row's defaults: a row's controller sets its own (ce its loss form) over
    # them; a row's own keywords after @ must agree with it (check_row refused them before any run).
    own = controller.env_kwargs()
    env_kwargs = {**{k: v for k, v in env_kwargs.items() if k not in own}, **parse_controller(controller_name)[1]}
    kwargs = without_locations({**env_kwargs, **controller.env_kwargs()})
    # What the record says about where it ran is gathered before the training, so that no failure in it
    # can throw a finished run away.
    provenance = {
        "device": str(resolve_device(kwargs.get("device", "auto"))), "machine": machine(), "versions": versions(),
        "source": source_digest(),
    }
    envs = controller.make_envs(env_id, **with_data_home(env_kwargs))
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


def env_facts(env_id: str, env_kwargs: dict) -> dict[str, Any]:
    """What the table's header says about the env, from its task spec: its metric, which way is better, and the
    budget per child. Making the spec refuses bad env keywords, and loading its data refuses missing data, before
    any run."""
    spec = task_spec(env_id, **with_data_home(env_kwargs))
    spec.data.load()
    return {
        "metric": spec.metric,
        "higher_is_better": spec.higher_is_better,
        "total_iterations": spec.train.total_iterations,
        "steps_per_action": spec.episode.steps_per_action,
    }


def compare(
    env_id: str,
    controllers: list[str],
    seeds: list[int],
    env_kwargs: dict,
    name: str,
    children: int | None = None,
    baseline_children: int | None = None,
    seed_stride: int | None = None,
    extend: bool = False,
) -> list[dict]:
    """Run what is missing, then rewrite the aggregate JSON, table and plots from every finished run.

    Several processes may run the same comparison at once (one per core): each claims a run before
    starting it (:func:`claim`), so none is run twice; a process that has nothing left to start waits
    for the runs others hold, and runs any whose process died, so the table it writes is complete.

    Run ``seed`` seeds its env with ``seed * seed_stride`` (:func:`run_one`). Without one, a comparison resumed
    keeps its folder's stride, and a new one takes the most children any row runs, so that no child is shared
    between seeds. Where the stride is below a row's child count, the table says that the seeds' values of such
    rows are not independent.
    """
    try:  # the folder's config.json records them: arrays or a model factory cannot be, nor compared on resume
        json.dumps(env_kwargs)
    except (TypeError, ValueError) as error:
        raise ComparisonError(
            f"env keywords must be JSON values, which the results record ({error}); give data and models of one's own "
            "by name (ala_gym.core.data.register_dataset, ala_gym.core.models.register_model, in an env id's module "
            "passed as --env module:EnvId)"
        ) from None
    repeated = sorted({spec for spec in controllers if controllers.count(spec) > 1})
    if repeated:  # one row each: a second would repeat the first's runs in the table
        raise ComparisonError(f"controllers named more than once: {', '.join(repeated)}; name each row once")
    oracles = {spec: ORACLES[spec] for spec in controllers if is_oracle(spec)}
    plain = [spec for spec in controllers if spec not in oracles]
    # Unknown names, bad keywords and a row's own child count against the comparison's fail before any run (and
    # before any data is read): each row is built as its runs build it.
    grids = [c for grid in oracles.values() for c in grid]
    built = {spec: build_controller(spec, children, baseline_children) for spec in plain + grids}
    largest = max(getattr(controller, "num_envs", 1) for controller in built.values())
    # An unknown env id, a bad env keyword or missing data fails before the results folder is made or claimed.
    facts = env_facts(env_id, env_kwargs)
    for spec in plain:  # each row as its runs will make its env: a row that does not fit fails before any run
        check_row(spec, env_id, env_kwargs, built[spec], facts["metric"])
    out = RESULTS / name
    if out.resolve() in (RESULTS.resolve(), *RESULTS.resolve().parents):  # "." or "..": the other folders' home
        raise ComparisonError(f"--name {name!r} names {out.resolve()}, which holds other comparisons; name a folder of its own")
    check_writable(out)
    # Without a stride: the folder's own (its runs' children follow it), else for a new comparison the most children
    # a row runs, so that no child is shared between seeds and the seeds' values are independent samples.
    stride = next(s for s in (seed_stride, saved_seed_stride(out), largest) if s is not None)
    config = {"env": env_id, "env_kwargs": env_kwargs, "children": children}
    if baseline_children is not None or stride != 1:
        config |= {"baseline_children": baseline_children, "seed_stride": stride}
    check_same_config(out, config, json.loads(json.dumps(env_spec(env_id).kwargs, default=str)))
    check_same_plan(out, controllers, seeds, extend)
    committed = {(r["controller"], r["seed"]): r for r in committed_runs(out)}

    def result_path(controller: str, seed: int) -> Path:
        return run_file(out / "runs", controller, seed)

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
                    try:
                        record = run_one(
                            env_id, controller, seed, env_kwargs, progress, children, baseline_children, stride
                        )
                    except (ValueError, TypeError) as error:
                        # Every input was checked before the first run: what fails in one is the controller's or
                        # the package's own fault, and keeps its traceback (not the one line of bad input).
                        raise RunError(f"the run of {controller} on seed {seed} failed: {type(error).__name__}: {error}") from error
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
        if missing:  # only if a run's file vanished meanwhile; never write a table with holes
            raise ComparisonError(f"runs missing from {out / 'runs'}: {', '.join(missing)}; run the command again")

    def gather(specs: set[str]) -> list[dict]:
        """Every finished run of ``specs`` on this comparison's seeds, in the order of their files in runs/ but
        with seeds as numbers (seed 10 after seed 2), the order in which the summary lists per-seed values."""
        # Damaged files of runs outside this comparison are left out (its own were run again above).
        on_disk = [run for p in sorted((out / "runs").glob("*.json")) if finished_run(p) and (run := load_run(p))]
        fresh = {(r["controller"], r["seed"]) for r in on_disk}
        runs = on_disk + [r for key, r in committed.items() if key not in fresh]
        runs = [r for r in runs if r["controller"] in specs and r["seed"] in seeds and r["env"] == env_id]
        for run in runs:  # runs recorded before locations were left out lose them here
            run["env_kwargs"] = without_locations(run["env_kwargs"])
        return sorted(runs, key=lambda r: (f"{file_stem(r['controller'])}-seed", r["seed"]))

    # Seed-major: an interrupted comparison has every controller on the same seeds so far. An oracle's grid
    # runs on the selection seeds first; the point selected on validation then runs on every seed.
    selection_seeds = seeds[:SELECTION_SEEDS]
    run_missing([(c, s) for s in seeds for c in plain] + [(c, s) for s in selection_seeds for grid in oracles.values() for c in grid])
    grid_runs = {(r["controller"], r["seed"]): r for r in gather({c for grid in oracles.values() for c in grid})}
    selections = {
        spec: select(grid, grid_runs, selection_seeds, facts["higher_is_better"]) for spec, grid in oracles.items()
    }
    if selections:  # the selected points on every seed; a comparison without oracles has nothing more to run
        run_missing([(selection["selected"], s) for s in seeds for selection in selections.values()])
    runs = gather(set(plain) | {c for grid in oracles.values() for c in grid})
    # The controller whose runs each row shows: an oracle's selected grid point, else the row itself.
    ran_as = {spec: selections[spec]["selected"] if spec in oracles else spec for spec in controllers}
    by_row = {spec: [run for run in runs if run["controller"] == ran_as[spec]] for spec in controllers}
    rows = []
    for spec in controllers:
        for row in summarize(runs, [ran_as[spec]]):
            rows.append(row | {"controller": spec, "selected": ran_as[spec]} if spec in oracles else row)
    total, k = facts["total_iterations"], facts["steps_per_action"]
    header = {
        "env": env_id,
        "metric": facts["metric"],
        "higher_is_better": facts["higher_is_better"],
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
    # The code each run ran (source_digest): a run is kept once finished, so a table can hold runs of several states
    # of the code. Runs recorded before the digest existed have none; a table of only such runs says nothing.
    if any("source" in run for run in runs):
        header["sources"] = dict(Counter(run.get("source", "not recorded") for run in runs).most_common())
    # Rows added later (--extend) may have run on another machine: their wall times compare only within it.
    elsewhere = {spec: run["machine"] for spec in controllers for run in by_row[spec] if run["machine"] != header["machine"]}
    if elsewhere:
        header["other_machines"] = elsewhere
    if selections:
        header["oracles"] = selections
    if stride < largest and len(seeds) > 1:  # consecutive seeds' children overlap: said beside the std
        header["shared_children"] = {"seed_stride": stride, "children": largest}
    # Without indentation: a list of every step's values would take a line per number.
    write_json(out / "results.json", {"header": header, "summary": rows, "runs": [compact_run(r) for r in runs]}, indent=None)
    table = markdown_table(rows, header, {row["controller"]: by_row[row["controller"]] for row in rows})
    write_text_atomic(out / "table.md", table)
    plot(runs, [ran_as[c] for c in controllers], out, header["metric"], header["higher_is_better"], labels=controllers)
    print(table)
    return rows
