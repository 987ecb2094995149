"""The README's code runs, and no committed file holds a machine's path or words about who made it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The README's budgets, shrunk: 2 steps of K = 10 iterations per child, 2 steps per child for PPO's 4 children.
TINY_BUDGET = {r"total_iterations=\d+": "total_iterations=20", r"steps_per_action=\d+": "steps_per_action=10",
               r"total_timesteps=\d+": "total_timesteps=8"}


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_code_examples_run_at_a_tiny_budget(index: int, capsys) -> None:
    code = readme_python_blocks()[index]
    for pattern, replacement in TINY_BUDGET.items():
        code, count = re.subn(pattern, replacement, code)
    assert "total_iterations=20" in code, "every example should state its budget, so that it can be shrunk here"
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})
    if index == 0:
        assert "test error" in capsys.readouterr().out


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


def test_readme_overhead_figures_are_those_of_the_committed_benchmarks() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("What `step` costs") : readme.index("## Several children")]
    figures = re.findall(r"\d+\.\d%", table)
    produced = "".join((ROOT / "benchmarks" / "results" / name).read_text() for name in ("overhead.md", "malloc.md"))
    assert len(figures) >= 10 and all(figure in produced for figure in figures), figures
