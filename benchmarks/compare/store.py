"""The result store of a comparison folder: run files claimed under file locks and written atomically,
``config.json`` and ``results.json`` (the runs it keeps compact), each checked for its shape when read back
and refused, naming its fix, when it does not have it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ala_gym.agents.base import mean_off_diagonal
from ala_gym.benchmarks.compare.errors import ComparisonError
from ala_gym.benchmarks.compare.provenance import without_locations
from ala_gym.core.files import write_text_atomic

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
        children.append({
            **child,
            "val_metric": np.round(child["val_metric"], 6).tolist(),
            "phi": [phi[i] for i in picks],
            "phi_steps": picks,
            "phi_off_diagonal": mean_off_diagonal(phi).round(6).tolist(),
        })  # fmt: skip
    return {**run, "children": children}


def write_json(path: Path, payload: Any, indent: int | None = 1) -> None:
    """Write atomically: a crash mid-write never leaves a truncated result behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # default=str: env keywords such as gymnasium's AutoresetMode are recorded by name. Each write has a temporary
    # name of its own: two processes finishing one comparison may write results.json at once.
    separators = (",", ":") if indent is None else None
    write_text_atomic(path, json.dumps(payload, indent=indent, separators=separators, default=str))


STORE_FILES = ("config.json", "results.json", "table.md", "val_metric.png", "test_metric.png")
"""The files a comparison writes into its folder, beside ``runs/`` and its ``phi_<row>.png`` heatmaps."""


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
    # A file of the store is replaced in one step when written, which a folder of its name would refuse late.
    for path in [*(out / name for name in STORE_FILES), *(out / "runs").glob("*.json")]:
        if path.is_dir():
            raise ComparisonError(f"{path} is a folder where the comparison keeps a file: move it away")


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
    problem: str | None
    try:
        payload = json.loads(path.read_text())
    except OSError as error:  # a folder, or a file this user may not read
        raise ComparisonError(f"cannot read {path} ({type(error).__name__}: {error.strerror}); move it away") from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        problem = f"not valid JSON ({error})"
    else:
        problem = shape_problem(payload, shape)
        if problem is None:
            return payload
    raise ComparisonError(f"{path} is damaged: {problem}; {fix}")


def file_stem(spec: str) -> str:
    """The start of a file name for the row ``spec``: the spec itself, a ``/`` (of a policy file's path,
    ``reinforce-transfer-frozen(policy=runs/meta.pt)``) written ``%2F`` so that the file stays in its folder."""
    return spec.replace("/", "%2F")


def run_file(runs: Path, controller: str, seed: int) -> Path:
    """The file in the folder ``runs`` that holds the run of ``controller`` on ``seed``."""
    return runs / f"{file_stem(controller)}-seed{seed}.json"


def load_run(path: Path) -> dict | None:
    """The run recorded in ``path``, None if it has none yet; a :class:`ComparisonError` if the file is damaged
    or holds another run than its name says (copied or renamed by hand: the run of its name is done again)."""
    if not path.exists():
        return None
    run = read_json(path, RUN_SHAPE, "running it again")
    if (own := run_file(path.parent, run["controller"], run["seed"])).name != path.name:
        raise ComparisonError(
            f"{path} holds the run of {run['controller']} on seed {run['seed']}, whose file is {own.name}; running it again"
        )
    return run


def finished_run(path: Path) -> bool:
    """Whether ``path`` holds a finished run. A run file is a cache of its run: a damaged one counts as not
    finished, so that the run is done again and its file replaced (atomically, by :func:`write_json`)."""
    try:
        return load_run(path) is not None
    except ComparisonError:
        return False


def saved_seed_stride(out: Path) -> int | None:
    """The seed stride of the comparison in ``out`` (1 for one recorded before strides were kept), None where the
    folder holds none yet."""
    path = out / "config.json"
    if not path.exists():
        return None
    fix = f"restore it from version control, or delete it if every run in {out} is of this command's configuration"
    return int(read_json(path, CONFIG_SHAPE, fix).get("seed_stride", 1))


def check_same_config(out: Path, config: dict, defaults: dict[str, Any] | None = None) -> None:
    """Refuse to mix runs of different budgets in one folder (resuming must continue the same comparison).

    Data locations are no part of the identity: the same comparison resumes on a machine whose data lie elsewhere.
    Env keywords at the values of ``defaults`` (the env id's registered keywords) count as left out, so that
    giving a default explicitly continues the comparison that left it out; a refusal names what differs.
    """
    path = out / "config.json"
    config = json.loads(json.dumps({**config, "env_kwargs": without_locations(config["env_kwargs"])}))
    if path.exists():
        fix = f"restore it from version control, or delete it if every run in {out} is of this command's configuration"
        saved = read_json(path, CONFIG_SHAPE, fix)
        saved = {**saved, "env_kwargs": without_locations(saved.get("env_kwargs", {}))}
        changed = config_changes(saved, config, defaults or {})
        if changed:
            raise ComparisonError(
                f"{out} holds runs of another configuration ({'; '.join(changed)}); pass --name for a new folder, "
                "or delete it"
            )
        config = saved  # the same comparison: its record keeps the form it was written in
    write_json(path, config)  # (re)written without locations


def config_changes(saved: dict, given: dict, defaults: dict[str, Any]) -> list[str]:
    """What differs between two comparisons' configs, as ``key saved -> given`` (``env_kwargs.key`` for an env
    keyword; an env keyword missing on one side counts at its value in ``defaults``, a missing seed stride as 1)."""
    def flat(config: dict) -> dict[str, Any]:
        env_kwargs = {**defaults, **config.get("env_kwargs", {})}
        rest = {key: value for key, value in config.items() if key != "env_kwargs"}
        rest.setdefault("seed_stride", 1)
        return {**rest, **{f"env_kwargs.{key}": value for key, value in env_kwargs.items()}}

    def shown(config: dict[str, Any], key: str) -> str:
        return repr(config[key]) if key in config else "(not given)"

    old, new = flat(saved), flat(given)
    return [f"{key} {shown(old, key)} -> {shown(new, key)}" for key in sorted(old.keys() | new.keys())
            if shown(old, key) != shown(new, key)]  # fmt: skip


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
    try:
        import fcntl  # POSIX: Linux and macOS
    except ImportError:
        raise ComparisonError(
            "a comparison claims its runs with fcntl file locks, which this OS does not have (Windows); "
            "run it under Linux or macOS, e.g. in WSL"
        ) from None
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
