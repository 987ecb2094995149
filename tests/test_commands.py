"""The README's command timer (``benchmarks/commands.py``) on a made-up clone whose make targets and example take
no time: what it runs, in which clone, what it records, and how it ends where a step fails, hangs or the input is
bad."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ala_gym.benchmarks import commands

TALLY = "1242 passed, 2 skipped in 510.31s (0:08:30)"


# The README's own-task example, as the README marks it; this one checks the thread count it is run with.
EXAMPLE = "import os\nassert os.environ['OMP_NUM_THREADS'] == '1'\nprint('test error 0.042')\n"
README = f"# x\n\n<!-- --8<-- [start:own-task] -->\n```python\n{EXAMPLE}```\n<!-- --8<-- [end:own-task] -->\n"
# A set-up that makes the .venv/bin/python the example runs with.
SETUP_VENV = 'mkdir -p .venv/bin && ln -s "$$(command -v python3)" .venv/bin/python'


# Two tutorial scripts: one checks that it runs with torch's default thread count (no OMP_NUM_THREADS).
TUTORIALS = {"a_first.py": "import os\nassert 'OMP_NUM_THREADS' not in os.environ\n", "b_second.py": "print('done')\n"}


def make_repo(path: Path, recipes: dict[str, str], readme: str = README, tutorials: dict[str, str] | None = None) -> Path:
    """A git clone whose Makefile runs ``recipes`` (target -> one shell line), whose README is ``readme`` and whose
    ``docs/tutorials/`` holds ``tutorials`` (name -> source; default :data:`TUTORIALS`), committed."""
    path.mkdir()
    (path / "docs" / "tutorials").mkdir(parents=True)
    for name, source in (TUTORIALS if tutorials is None else tutorials).items():
        (path / "docs" / "tutorials" / name).write_text(source)
    lines = [".PHONY: " + " ".join(recipes)]
    for target, recipe in recipes.items():
        lines += [f"{target}:", f"\t@{recipe}"]
    (path / "Makefile").write_text("\n".join(lines) + "\n")
    (path / "README.md").write_text(readme)
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)
    return path


def run_main(repo: Path, out: Path, *extra: str) -> int:
    try:
        commands.main(["--repo", str(repo), "--out", str(out), "--data-root", str(out.parent / "data"), *extra])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_each_step_runs_in_a_fresh_clone_of_head_with_the_data_root_and_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = (tmp_path / "data").resolve()
    # An activated virtual environment whose python3 fails: the clone's steps must not see it; the example must get
    # one thread whatever the caller has.
    active = tmp_path / "active-venv"
    (active / "bin").mkdir(parents=True)
    (active / "bin" / "python3").write_text("#!/bin/sh\nexit 9\n")
    (active / "bin" / "python3").chmod(0o755)
    monkeypatch.setenv("VIRTUAL_ENV", str(active))
    monkeypatch.setenv("PATH", f"{active / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    repo = make_repo(tmp_path / "repo", {
        "setup": f"test ! -e marker && touch marker && {SETUP_VENV}",  # a fresh clone: nothing of the repo's own work tree
        "demo": f'test -e marker && test "$$ALA_GYM_DATA" = "{data}"',  # the same clone, after set-up
        "test": f"echo '= {TALLY} ='",
    })  # fmt: skip
    (repo / "marker").touch()  # untracked: a clone never sees it
    out = tmp_path / "out"
    assert run_main(repo, out) == 0
    report = json.loads((out / "commands.json").read_text())
    steps = [("setup", 0), ("demo", 0), ("own-task", 0), ("tutorials", 0), ("tutorials", 0), ("test", 0)]
    assert [(t["step"], t["returncode"]) for t in report["steps"]] == steps
    assert [t.get("script") for t in report["steps"]] == [None, None, None, "a_first.py", "b_second.py", None]
    assert [t["pytest"] for t in report["steps"]] == [None] * 5 + [TALLY]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert report["commit"] == head and report["uncommitted_changes_left_out"] is False
    assert report["command"] == "python -m ala_gym.benchmarks.commands"
    markdown = (out / "commands.md").read_text()
    assert "`make demo` after set-up:" in markdown and "set-up included (setup + test):" in markdown
    assert "The README's own-task example, on one torch thread:" in markdown
    assert f"| make test | {report['steps'][5]['seconds']:.1f} | 0 | {TALLY} |" in markdown
    assert f"| the README's own-task example | {report['steps'][2]['seconds']:.1f} | 0 |  |" in markdown
    assert f"| docs/tutorials/b_second.py | {report['steps'][4]['seconds']:.1f} | 0 |  |" in markdown
    assert "`docs/tutorials/a_first.py` at its default budget:" in markdown
    for text in (markdown, (out / "commands.json").read_text()):
        assert str(tmp_path) not in text  # no path of the machine in a result


def test_uncommitted_changes_are_left_out_and_said_so(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"setup": "true"})
    (repo / "Makefile").write_text(".PHONY: setup\nsetup:\n\t@exit 5\n")  # not committed: the clone runs HEAD's
    out = tmp_path / "out"
    assert run_main(repo, out, "--steps", "setup") == 0
    report = json.loads((out / "commands.json").read_text())
    assert report["uncommitted_changes_left_out"] is True and report["steps"][0]["returncode"] == 0
    assert report["command"] == "python -m ala_gym.benchmarks.commands --steps setup"
    assert "uncommitted changes, which were left out" in (out / "commands.md").read_text()


def test_a_failing_step_ends_the_run_and_its_report_holds_what_ran(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"setup": "true", "demo": "exit 3", "test": f"echo '{TALLY}'"})
    out = tmp_path / "out"
    assert run_main(repo, out) == 1
    report = json.loads((out / "commands.json").read_text())
    assert [(t["step"], t["returncode"]) for t in report["steps"]] == [("setup", 0), ("demo", 2)]  # make's own 2
    assert commands.findings(report) == []
    assert "none: a step failed or did not run." in (out / "commands.md").read_text()


def test_a_failing_tutorial_ends_the_run_after_its_own_line(tmp_path: Path) -> None:
    tutorials = {"a.py": "raise SystemExit(6)\n", "b.py": "print('not run')\n"}
    repo = make_repo(tmp_path / "repo", {"setup": SETUP_VENV, "test": "true"}, tutorials=tutorials)
    out = tmp_path / "out"
    assert run_main(repo, out, "--steps", "setup", "tutorials", "test") == 1
    report = json.loads((out / "commands.json").read_text())
    assert [(t["step"], t.get("script"), t["returncode"]) for t in report["steps"]] == [
        ("setup", None, 0), ("tutorials", "a.py", 6)
    ]


def test_a_failing_example_is_recorded_with_its_exit_status(tmp_path: Path) -> None:
    readme = README.replace("print(", "raise SystemExit(4)\nprint(")
    repo = make_repo(tmp_path / "repo", {"setup": SETUP_VENV}, readme)
    out = tmp_path / "out"
    assert run_main(repo, out, "--steps", "setup", "own-task") == 1
    report = json.loads((out / "commands.json").read_text())
    assert [(t["step"], t["returncode"]) for t in report["steps"]] == [("setup", 0), ("own-task", 4)]


def test_a_target_past_the_timeout_is_cut_with_its_children(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"setup": "sleep 60 & sleep 60"})
    out = tmp_path / "out"
    start = time.perf_counter()
    assert run_main(repo, out, "--steps", "setup", "--timeout", "1") == 1
    assert time.perf_counter() - start < 30
    report = json.loads((out / "commands.json").read_text())
    assert report["steps"][0]["returncode"] is None
    assert "| make setup |" in (out / "commands.md").read_text() and "| timed out |" in (out / "commands.md").read_text()


@pytest.mark.parametrize("line", [TALLY, f"========== {TALLY} ==========", "3 passed in 0.01s",
                                  "1 failed, 1288 passed, 2 skipped in 527.10s (0:08:47)"])  # fmt: skip
def test_pytest_tally_is_read_from_its_closing_line(line: str) -> None:
    assert commands.pytest_tally(f"collected\n.....\n{line}\n") == line.strip("= ")


def test_output_without_a_tally_has_none() -> None:
    assert commands.pytest_tally("make: Nothing to be done for 'setup'.\n") is None


def test_findings_quote_demo_the_example_and_setup_plus_test() -> None:
    report = {"steps": [{"step": "setup", "seconds": 150.0, "returncode": 0},
                        {"step": "demo", "seconds": 41.4, "returncode": 0},
                        {"step": "own-task", "seconds": 5.2, "returncode": 0},
                        {"step": "tutorials", "script": "first_env.py", "seconds": 12.6, "returncode": 0},
                        {"step": "test", "seconds": 510.0, "returncode": 0}]}  # fmt: skip
    assert commands.findings(report) == [
        "`make demo` after set-up: 41 s.",
        "The README's own-task example, on one torch thread: 5.2 s.",
        "`docs/tutorials/first_env.py` at its default budget: 13 s.",
        "`make test` from a clean clone, set-up included (setup + test): 11.0 min.",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repo", "{tmp}"], "--repo {tmp}: not a git clone; name the folder of a clone of ala-gym"),
        (["--repo", "{repo}", "--timeout", "0"], "--timeout must be a finite positive number of seconds, got 0.0"),
        (["--repo", "{repo}", "--timeout", "nan"], "--timeout must be a finite positive number of seconds, got nan"),
        (["--repo", "{repo}", "--timeout", "inf"], "--timeout must be a finite positive number of seconds, got inf"),
        (["--repo", "{repo}", "--out", "{repo}/Makefile"], "--out {repo}/Makefile: {repo}/Makefile is a file, not a folder"),
        (["--repo", "{repo}", "--steps", "own-task", "setup"], "--steps: own-task runs the clone's .venv, which setup makes; put setup before it"),
        (["--repo", "{repo}", "--steps", "tutorials"], "--steps: tutorials runs the clone's .venv, which setup makes; put setup before it"),
        (["--repo", "{bare}"], "--repo {bare}: README.md has no own-task example between its snippet markers; leave own-task out of --steps"),
    ],
)
def test_bad_input_exits_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    repo = make_repo(tmp_path / "repo", {"setup": "true"})
    bare = make_repo(tmp_path / "bare", {"setup": "true"}, readme="# no example\n")
    (tmp_path / "empty").mkdir()
    paths = {"tmp": str(tmp_path / "empty"), "repo": str(repo), "bare": str(bare)}
    with pytest.raises(SystemExit) as exit_:
        commands.main([arg.format(**paths) for arg in args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(**paths) in err


def test_a_clone_without_a_makefile_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    with pytest.raises(SystemExit) as exit_:
        commands.main(["--repo", str(repo)])
    assert exit_.value.code == 2 and "the clone has no Makefile; name a clone of ala-gym" in capsys.readouterr().err
