"""The README is a landing page whose figures are those of the committed results and whose links resolve;
no committed file holds a machine's path or words about who made it.

The README's former examples live on the documentation pages, whose Python blocks
``tests/test_docs_site.py`` runs at a tiny budget."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listed.splitlines() if (ROOT / name).is_file()]


# Written with groups so that this file does not match itself: machine paths, and words about tickets
# or people rather than the software.
FORBIDDEN = re.compile(
    r"/(?:work|root)/|/home/\w+|\bthe\s+(?:issue|lead)\b|\bissue's\b|\bengin(?:eer)s?\b|\bmandates?\b|\bticket",
    flags=re.IGNORECASE,
)


def test_no_committed_file_holds_a_machine_path_or_work_process_words() -> None:
    offending = []
    for path in tracked_files():
        if path == Path(__file__).resolve() or path.suffix in (".png", ".pt"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if FORBIDDEN.search(line):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offending, "\n".join(offending)


# ------------------------------------------------------------------------------------------- quoted figures
RESULTS = ROOT / "benchmarks" / "results"
PAIR = re.compile(r"(?<![\w.])\d+\.\d+ \+- \d+\.\d+(?![\w.])")
"""A mean and its standard deviation, as the tables write them: ``2.97 +- 0.53``."""
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
PERCENT = re.compile(r"(?<![\w.])\d+\.\d+(?=%)")


def prose(markdown: str) -> str:
    """The text a reader sees as figures: without fenced code, link and image targets, whitespace collapsed."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.DOTALL)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"\s+", " ", text)


def committed_results_text() -> str:
    """Every committed Markdown file under benchmarks/results/, whitespace collapsed."""
    files = [path for path in tracked_files() if path.suffix == ".md" and RESULTS in path.parents]
    assert files, "no committed results"
    return re.sub(r"\s+", " ", " ".join(path.read_text() for path in files))


def figures_missing(text: str, produced: str, *, every_decimal: bool) -> list[str]:
    """The quoted figures of ``text`` not found in ``produced``: each "mean +- std" pair whole, then every
    other decimal (``every_decimal``) or every other decimal percentage."""
    def found(figure: str) -> bool:  # whole: "3.3" is not found in "13.32"
        return re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d])", produced) is not None

    rest = PAIR.sub(" ", text)
    singles = (DECIMAL if every_decimal else PERCENT).findall(rest)
    return [figure for figure in PAIR.findall(text) + singles if not found(figure)]


def test_every_figure_the_readme_quotes_is_in_the_committed_results() -> None:
    """No figure is made up or left behind by a rerun: each is found whole in the committed results. Which row it
    belongs to (two figures swapped between controllers) is not checked here; the prose names each one's table."""
    text = prose(README.read_text())
    assert len(PAIR.findall(text)) >= 10, "the README should quote the headline results"
    assert figures_missing(text, committed_results_text(), every_decimal=True) == []


def test_every_result_the_results_page_quotes_is_in_the_committed_results() -> None:
    """docs/results.md also reasons with differences ("3.3 points"); its means, deviations and
    percentages are the tables'."""
    text = prose((ROOT / "docs" / "results.md").read_text())
    assert len(PAIR.findall(text)) >= 10
    assert figures_missing(text, committed_results_text(), every_decimal=False) == []


def test_the_overhead_figures_are_those_of_the_committed_benchmarks() -> None:
    page = (ROOT / "docs" / "overhead.md").read_text()
    # The whole page from the table on: the design choices timed by uncommitted probes quote no figure of their own.
    text = page[page.index("What `step` costs") :]
    figures = re.findall(r"(?<![\w.+-])[-+]?\d+\.\d+(?![\w.])", text)  # every decimal with its sign: percentages and times
    produced = "".join((RESULTS / name).read_text() for name in ("overhead.md", "malloc.md"))
    # Whole and signed: "5.4" is not found in "15.4", nor "+15.4" in "-15.4".
    missing = [figure for figure in figures if not re.search(rf"(?<![\d.+-]){re.escape(figure)}(?!\d)", produced)]
    assert len(figures) >= 10 and missing == [], missing


# ------------------------------------------------------------------------------------------- run times
COMMANDS = RESULTS / "commands" / "commands.json"
"""The README's commands and example, timed from a fresh clone by ``python -m ala_gym.benchmarks.commands``."""


ABOUT = 0.15
"""How far "about N" may lie from the committed timing, relative to it, so that a figure need not be rewritten
after every measurement; repeated runs on one machine differ (``make test`` by under a tenth, the seconds-long
example by more), and one that falls outside means updating the text."""


def test_the_run_times_the_pages_quote_are_those_the_command_timer_measured() -> None:
    """"under a minute" for ``make demo`` after set-up; "about N min" for ``make test`` from a clean clone (set-up
    + test) and "about N s" for the own-task example, N within :data:`ABOUT` of the committed timing (on the
    machine it names)."""
    report = json.loads(COMMANDS.read_text())
    seconds = {step["step"]: step["seconds"] for step in report["steps"] if step["step"] != "tutorials" and step["returncode"] == 0}
    assert set(seconds) == {"setup", "demo", "own-task", "test"}, "the committed timing should hold every step"
    measured = {"test": (seconds["setup"] + seconds["test"]) / 60, "own-task": seconds["own-task"]}

    def about(quoted: str, step: str) -> bool:
        return abs(int(quoted) - measured[step]) <= ABOUT * measured[step]

    for page in (README, ROOT / "docs" / "quickstart.md"):
        lines = page.read_text().splitlines()
        demo = next(line for line in lines if line.startswith("make demo "))
        test = next(line for line in lines if line.startswith("make test "))
        assert "under a minute" in demo and seconds["demo"] < 60, (page.name, demo)
        quoted = re.search(r"about (\d+) min on 2 CPU cores from a clean clone, set-up included", test)
        assert quoted and about(quoted.group(1), "test"), (page.name, test, measured["test"])
    for page in (README, ROOT / "docs" / "guide" / "own-task.md"):
        quoted = re.search(r"about (\d+) s\s+on one CPU core", page.read_text())
        assert quoted and about(quoted.group(1), "own-task"), (page.name, measured["own-task"])


def test_the_tutorials_run_times_are_those_the_command_timer_measured() -> None:
    """Every tutorial script was timed at its default budget; one whose usage line says "under a minute" or
    "seconds" ran in under a minute."""
    report = json.loads(COMMANDS.read_text())
    timed = {step["script"]: step["seconds"] for step in report["steps"] if step["step"] == "tutorials" and step["returncode"] == 0}
    scripts = sorted((ROOT / "docs" / "tutorials").glob("*.py"))
    assert sorted(timed) == [script.name for script in scripts]
    claims = 0
    for script in scripts:
        usage = next(line for line in script.read_text().splitlines() if line.strip().startswith(f"python docs/tutorials/{script.name}"))
        if re.search(r"under a minute|, seconds$", usage):
            claims += 1
            assert timed[script.name] < 60, (script.name, timed[script.name])
    assert claims >= 3


# ------------------------------------------------------------------------------------------- links
def test_the_readme_links_resolve_and_show_one_committed_plot() -> None:
    """Relative links work on GitHub as they do here: each names a file of the repository (not of the built
    site/); the one plot is a committed result."""
    readme = README.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path:
            continue
        path = ROOT / unquote(parts.path)
        if not path.is_file() or path.relative_to(ROOT).parts[0] == "site":
            broken.append(target)
    assert broken == [], f"README links to files the repository does not hold: {broken}"
    plots = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    assert len(plots) == 1 and plots[0].startswith("benchmarks/results/") and plots[0].endswith(".png"), plots
    assert ROOT / plots[0] in set(tracked_files()), f"{plots[0]} is not committed"
    for page in ("quickstart", "concepts", "controllers", "results", "tutorials/index", "guide/single-env"):
        assert f"](docs/{page}.md)" in readme, f"the README does not link docs/{page}.md"
    assert "make docs" in readme
