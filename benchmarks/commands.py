"""How long the README's commands, its example and the tutorials take: ``make setup``, ``make demo``, the own-task
example, each tutorial script and ``make test``, timed in a fresh clone.

The README's first lines say how long ``make demo`` and ``make test`` run, its own-task example and the tutorials'
scripts how long they take; this script is where those figures come from. It clones the repository's committed ``HEAD`` into a temporary folder (as CI does: nothing
uncommitted travels) and runs there, one after the other, each to its end:

* ``make setup``: the virtual environment, torch and the package with its ``dev`` extra (pip's own cache is the
  machine's, as it is on a fresh clone of a machine that installed them before);
* ``make demo``: the main job, on the environment ``make setup`` made ("after set-up");
* ``own-task``: the README's example of one's own data and model (between its ``own-task`` snippet markers), run by
  the clone's Python on one torch thread (``OMP_NUM_THREADS=1``): the whole process, imports included;
* ``tutorials``: each script of ``docs/tutorials/`` at its default budget, one after the other, by the clone's Python;
* ``make test``: the test suite; its set-up targets find everything in place then, so "``make test`` from a clean
  clone, set-up included" is ``setup`` + ``test``.

``make test`` also installs two Debian packages (Fashion-MNIST and Chromium) where they are missing; the report
says whether they were there before. The clone reads the data that is not downloaded (the CIFAR-10 subset) from
``--data-root`` (default ``$ALA_GYM_DATA``: :func:`ala_gym.core.data.data_home`), which the report never records.
Every step but ``own-task`` runs with torch's default thread count (``OMP_NUM_THREADS`` unset, as in a fresh
shell; ``make test`` sets its own). Each finished step (each tutorial script) prints one line; a step that fails or runs past ``--timeout`` ends the run, and the
report holds what ran (exit status 1).

Usage::

    python -m ala_gym.benchmarks.commands                      # setup, demo, own-task, tutorials, test, in this order
    python -m ala_gym.benchmarks.commands --steps setup demo

Writes ``benchmarks/results/commands/commands.json`` and ``commands.md`` (``--out`` changes the folder). Run it with
nothing else on the machine: the test suite uses both cores.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ala_gym.agents.cli import DescriptionFormatter, OneLineParser, run_main
from ala_gym.benchmarks.machine import RESULTS, check_out_folder, cpu_model
from ala_gym.core.data import data_home
from ala_gym.core.files import write_text_atomic

STEPS = ("setup", "demo", "own-task", "tutorials", "test")
"""What can be timed, in the order it runs: make targets, ``own-task`` (the README's example) and ``tutorials``."""
NEEDS_SETUP = ("own-task", "tutorials")
"""Steps that run the clone's ``.venv`` Python, which ``setup`` makes."""
OWN_TASK = re.compile(r"<!-- --8<-- \[start:own-task\] -->\s*```python\n(.*?)```\s*<!-- --8<-- \[end:own-task\] -->", re.DOTALL)
FILES = ("commands.json", "commands.md")
# What `make test` installs from Debian where it is missing: the folder the Makefile checks (fashion-mnist target).
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# pytest's closing tally, such as "1242 passed, 2 skipped in 510.31s (0:08:30)" or "1 failed, 1241 passed in ...".
PYTEST_TALLY = re.compile(r"^=*\s*(\d+ (?:failed|passed|errors?|skipped)\b.* in \d+(?:\.\d+)?s\b.*?)\s*=*$")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def system_packages() -> dict[str, bool]:
    """Whether each Debian package ``make test`` would install (its fashion-mnist and chromium targets) is there."""
    return {"fashion-mnist": FASHION_MNIST.is_dir(), "chromium": shutil.which("chromium") is not None}


def pytest_tally(output: str) -> str | None:
    """The last line of pytest's closing tally in ``output``, None where there is none."""
    tallies = [match.group(1) for line in output.splitlines() if (match := PYTEST_TALLY.match(line.strip()))]
    return tallies[-1] if tallies else None


def own_task_example(readme: str) -> str:
    """The Python of the README's own-task example, between its snippet markers."""
    match = OWN_TASK.search(readme)
    if match is None:
        raise ValueError("README.md has no own-task example between its snippet markers")
    return match.group(1)


def label(result: dict[str, Any]) -> str:
    """How a step's result is named in the report: ``make TARGET``, the README's example, or a tutorial's script."""
    if result["step"] == "own-task":
        return "the README's own-task example"
    if result["step"] == "tutorials":
        return f"docs/tutorials/{result['script']}"
    return f"make {result['step']}"


def tutorial_scripts(clone: Path) -> list[str]:
    """The scripts of the clone's ``docs/tutorials/``, by name."""
    return sorted(path.name for path in (clone / "docs" / "tutorials").glob("*.py"))


def run_step(clone: Path, step: str, timeout: float, data_root: Path, script: str | None = None) -> dict[str, Any]:
    """One step in ``clone`` (for ``tutorials``, its ``script``): its wall time, exit status (None: cut at
    ``timeout``) and pytest's tally."""
    env = {**os.environ, "ALA_GYM_DATA": str(data_root.resolve())}
    # The clone's make builds and uses its own .venv: none of an activated one may be seen, its python3 included.
    active = env.pop("VIRTUAL_ENV", None)
    if active:
        env["PATH"] = os.pathsep.join(entry for entry in env.get("PATH", "").split(os.pathsep) if not entry.startswith(active))
    env.pop("OMP_NUM_THREADS", None)  # torch's default, as in a fresh shell, whatever the caller's
    python = str(clone / ".venv" / "bin" / "python")
    if step == "own-task":
        example = clone.parent / "own_task.py"  # beside the clone: its work tree stays as cloned
        example.write_text(own_task_example((clone / "README.md").read_text()))
        command, env["OMP_NUM_THREADS"] = [python, str(example)], "1"
    elif step == "tutorials":
        command = [python, str(clone / "docs" / "tutorials" / str(script))]
    else:
        command = ["make", step]
    start = time.perf_counter()
    # A session of its own, so that a step cut at the timeout takes its children (pytest's workers) with it.
    with subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as process:  # fmt: skip
        try:
            output, _ = process.communicate(timeout=timeout)
            returncode: int | None = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            output, returncode = "", None
    seconds = time.perf_counter() - start
    named = {} if script is None else {"script": script}
    return {"step": step, **named, "seconds": round(seconds, 1), "returncode": returncode, "pytest": pytest_tally(output)}


def measure(repo: Path, steps: list[str], timeout: float, data_root: Path, log: Any = print) -> dict[str, Any]:
    """Clone ``repo``'s HEAD into a temporary folder, run ``steps`` there in order, stop at the first that
    fails; the clone is removed afterwards."""
    report: dict[str, Any] = {
        "commit": git(repo, "rev-parse", "HEAD"),
        "uncommitted_changes_left_out": bool(git(repo, "status", "--porcelain", "--untracked-files=no")),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "system_packages_present": system_packages(),
        "steps": [],
    }
    with tempfile.TemporaryDirectory(prefix="ala-gym-commands-") as folder:
        clone = Path(folder) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True, capture_output=True)
        runs = [(step, script) for step in steps for script in (tutorial_scripts(clone) if step == "tutorials" else [None])]
        for step, script in runs:
            result = run_step(clone, step, timeout, data_root, script)
            report["steps"].append(result)
            status = "timed out" if result["returncode"] is None else f"exit {result['returncode']}"
            tally = f", {result['pytest']}" if result["pytest"] else ""
            log(f"{label(result)}: {result['seconds']:.1f} s, {status}{tally}")
            if result["returncode"] != 0:
                break
    return report


def seconds_of(report: dict[str, Any], step: str) -> float | None:
    """The wall time of ``step`` in the report, None where it did not run to a clean exit."""
    for result in report["steps"]:
        if result["step"] == step and result["returncode"] == 0:
            return result["seconds"]
    return None


def findings(report: dict[str, Any]) -> list[str]:
    """What the README and the tutorials quote, from the table: ``make demo`` after set-up, the own-task example,
    each tutorial's script, ``make test`` with set-up."""
    setup, demo, own_task, test = (seconds_of(report, step) for step in ("setup", "demo", "own-task", "test"))
    lines = []
    if demo is not None:
        lines.append(f"`make demo` after set-up: {demo:.0f} s.")
    if own_task is not None:
        lines.append(f"The README's own-task example, on one torch thread: {own_task:.1f} s.")
    for result in report["steps"]:
        if result["step"] == "tutorials" and result["returncode"] == 0:
            lines.append(f"`{label(result)}` at its default budget: {result['seconds']:.0f} s.")
    if setup is not None and test is not None:
        lines.append(f"`make test` from a clean clone, set-up included (setup + test): {(setup + test) / 60:.1f} min.")
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    machine = report["machine"]
    present = ", ".join(f"{name} {'present' if there else 'installed by the run'}" for name, there in report["system_packages_present"].items())
    lines = [
        "# The README's commands, its example and the tutorials, timed from a fresh clone",
        "",
        f"Written by `{report['command']}` at {report['date']}.",
        "",
        f"* commit `{report['commit'][:12]}`, cloned fresh"
        + (" (the work tree had uncommitted changes, which were left out)" if report["uncommitted_changes_left_out"] else ""),
        f"* machine: {machine['platform']}, {machine['cpu_model']}, {machine['cpu_count']} CPU cores",
        f"* Debian packages `make test` installs where missing: {present}",
        "* each step runs to its end in the same clone, in this order; wall seconds; pip's cache is the machine's; "
        "torch's default thread count except for the own-task example (one thread)",
        "",
        "Findings (computed from the table below by `findings()`):",
        "",
        *(f"* {line}" for line in findings(report) or ["none: a step failed or did not run."]),
        "",
        "| step | wall s | exit status | pytest |",
        "|---|---|---|---|",
    ]
    for result in report["steps"]:
        status = "timed out" if result["returncode"] is None else str(result["returncode"])
        lines.append(f"| {label(result)} | {result['seconds']:.1f} | {status} | {result['pytest'] or ''} |")
    write_text_atomic(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m ala_gym.benchmarks.commands", description=__doc__, formatter_class=DescriptionFormatter)
    parser.add_argument("--repo", type=Path, default=Path("."), help="the clone whose HEAD is timed (default: the current folder)")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS, help="what to time, run in the order given")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per step")
    parser.add_argument("--data-root", type=Path, help="folder holding cifar10-subset/ (default: $ALA_GYM_DATA: ala_gym.core.data.data_home())")
    parser.add_argument("--out", type=Path, default=RESULTS / "commands")
    args = parser.parse_args(argv)
    for tool in ("git", "make"):
        if shutil.which(tool) is None:
            parser.exit(2, f"{parser.prog}: error: {tool} is not on PATH; install it (apt-get install -y {tool})\n")
    try:
        repo = Path(git(args.repo, "rev-parse", "--show-toplevel"))
    except (subprocess.CalledProcessError, OSError):
        parser.exit(2, f"{parser.prog}: error: --repo {args.repo}: not a git clone; name the folder of a clone of ala-gym\n")
    if not (repo / "Makefile").is_file():
        parser.exit(2, f"{parser.prog}: error: --repo {args.repo}: the clone has no Makefile; name a clone of ala-gym\n")
    for step in NEEDS_SETUP:
        if step in args.steps and "setup" not in args.steps[: args.steps.index(step)]:
            parser.exit(2, f"{parser.prog}: error: --steps: {step} runs the clone's .venv, which setup makes; put setup before it\n")
    if "own-task" in args.steps:
        readme = repo / "README.md"
        if not readme.is_file() or OWN_TASK.search(readme.read_text()) is None:
            parser.exit(2, f"{parser.prog}: error: --repo {args.repo}: README.md has no own-task example between its snippet markers; leave own-task out of --steps\n")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        parser.exit(2, f"{parser.prog}: error: --timeout must be a finite positive number of seconds, got {args.timeout}\n")
    check_out_folder(parser, args.out, FILES)
    report = measure(repo, args.steps, args.timeout, args.data_root or data_home())
    report["command"] = "python -m ala_gym.benchmarks.commands" + (f" --steps {' '.join(args.steps)}" if args.steps != list(STEPS) else "")
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "commands.json", json.dumps(report, indent=1) + "\n")
    write_markdown(report, args.out / "commands.md")
    print(f"wrote {args.out / 'commands.md'}")
    if any(result["returncode"] != 0 for result in report["steps"]):
        sys.exit(1)


if __name__ == "__main__":
    run_main(main, "nothing was written (the report is written once every step ran); the same command times again")
