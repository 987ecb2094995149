"""The documentation site: it builds in strict mode, the commands and code of its pages run at a tiny
budget (the tutorials' scripts among them), its env pages cover the registry, and a headless browser
renders it with every local asset in place.

The site build and the pages' commands start together, once for the module, each in its own process and
folder (they mostly wait on different things: the build on imports, Ray on its actors); each test waits
for the process it checks.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import ala_gym

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = DOCS / "tutorials"
# The budget of every command a page shows, shrunk: 2 steps of K = 10 iterations, 1 seed, 2 children.
SHRINK = {"--total-iterations": "20", "--steps-per-action": "10", "--seeds": "1", "--children": "2"}
# The budget of every Python block of the pages and of the README, shrunk: 2 steps of
# K = 10 iterations per child, 2 steps per child for PPO's 4 children.
TINY_BUDGET = {r"total_iterations=\d+": "total_iterations=20", r"steps_per_action=\d+": "steps_per_action=10",
               r"total_timesteps=\d+": "total_timesteps=8"}
# A line the output of a page's Python block must hold, by label.
BLOCK_OUTPUT = {
    "quickstart.md#0": "test error",
    "guide/single-env.md#0": "test error",
    "README.md#0": "test error",  # also shown on guide/own-task.md
    "controllers.md#0": "[",
}
# A line each tutorial script's output must hold.
SCRIPT_OUTPUT = {
    "first_env.py": "test error",
    "custom_controller.py": "smooth-then-hold: test error",
    "meta_training.py": "meta-trained policy: test error",
    "sb3_ppo.py": "ppo controller, test error per child",
    "ray_vector_env.py": "reinforce-multi on Ray, test error per child",
}
TIMEOUT_S = 600
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def page_commands() -> dict[str, list[str]]:
    """Every Python command of the bash blocks of the hand-written pages, ``{"page#n": argv}``, its budget
    shrunk and any ``--name`` left as ``{out}`` (a folder of the test's); a command shown twice runs once."""
    commands: dict[str, list[str]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL)
        lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
        argvs = [argv for argv in map(partial(shlex.split, comments=True), lines) if argv and re.fullmatch(r"(.*/)?python3?", argv[0])]
        for number, argv in enumerate(argvs):
            label = f"{page.relative_to(DOCS)}#{number}"
            assert "--total-iterations" in argv, f"{label}: a command should state its budget, so that it can be shrunk"
            if "ala_gym.benchmarks.compare" in argv or any(arg.endswith("custom_controller.py") for arg in argv):
                assert "--name" in argv, f"{label}: a comparison should name its folder, so that the test writes elsewhere"
            argv[0] = sys.executable
            for index, flag in enumerate(argv[:-1]):
                if flag in SHRINK:
                    argv[index + 1] = SHRINK[flag]
                elif flag == "--name":
                    argv[index + 1] = "{out}"
            if "ala_gym.benchmarks.compare" in argv and "--children" not in argv:
                argv += ["--children", SHRINK["--children"]]  # the multi-child controllers' children too
            if argv not in commands.values():
                commands[label] = argv
    return commands


COMMANDS = page_commands()


@dataclass
class Started:
    command: list[str]
    env: dict[str, str]
    log: Path
    folder: Path | None = None
    """What the process writes, where a test reads it."""
    process: subprocess.Popen | None = None
    after: list[Started] = field(default_factory=list)
    """Commands that must have ended before this one starts (held back until its test)."""

    def start(self) -> None:
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def finish(self) -> str:
        """Wait for the process (started now if it was held back); its output, or a failure that shows its tail."""
        if self.process is None:
            for other in self.after:
                if other.process is not None:
                    other.process.wait(timeout=TIMEOUT_S)
            self.start()
        assert self.process is not None
        try:
            code = self.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"still running after {TIMEOUT_S} s: {self.process.args}")
        output = self.log.read_text(errors="replace")
        assert code == 0, f"{self.process.args} exited {code}:\n{output[-6000:]}"
        return output


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Started]]:
    tmp = tmp_path_factory.mktemp("docs_site")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1", "ALA_GYM_CACHE": str(tmp / "cache")}
    site = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp / "site")]
    runs = {}
    for number, (label, argv) in enumerate({"site": site, **COMMANDS}.items()):
        folder = tmp / ("site" if label == "site" else f"out{number}")
        runs[label] = Started([arg.replace("{out}", str(folder)) for arg in argv], env, tmp / f"run{number}.log", folder)
    # All at once but a command that starts a Ray cluster: its test starts it once every other command has ended,
    # so that the cluster's start (which Ray gives a fixed time) does not wait on cores that all the others hold.
    uses_ray = {label for label in runs if re.search(r"(^|[^a-z])ray", label)}  # ray.md, not "array"
    for label, run in runs.items():
        if label in uses_ray:
            run.after = [other for name, other in runs.items() if name not in uses_ray]
        else:
            run.start()
    yield runs
    for run in runs.values():
        if run.process is not None and run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.fixture(scope="module")
def site(started: dict[str, Started]) -> Path:
    output = started["site"].finish()
    assert "WARNING" not in output, output
    return started["site"].folder


def test_the_site_builds_in_strict_mode_with_every_page(site: Path) -> None:
    expected = ["index.html", "quickstart.html", "concepts.html", "guide/single-env.html",
                "guide/several-children.html", "guide/own-task.html", "guide/design.html", "envs/index.html",
                "envs/classification.html", "envs/aucpr.html", "envs/metric-learning.html", "controllers.html",
                "tutorials/index.html", "tutorials/first-env.html", "tutorials/custom-controller.html",
                "tutorials/sb3.html", "tutorials/ray.html", "tutorials/meta-training.html", "benchmarks/index.html", "results.html", "overhead.html",
                "benchmarks/results/index.html", "benchmarks/results/digits/table.html",
                "benchmarks/results/digits/val_metric.png", "benchmarks/results/digits-long/val_metric.png",
                "benchmarks/results/digits-long/test_metric.png",
                "api/index.html", "api/core.html", "api/envs.html", "api/wrappers.html", "api/agents.html"]  # fmt: skip
    assert [page for page in expected if not (site / page).is_file()] == []
    # Each tutorial page shows its whole script, line by line.
    for page, script in (("first-env", "first_env.py"), ("custom-controller", "custom_controller.py"),
                         ("sb3", "sb3_ppo.py"), ("ray", "ray_vector_env.py")):  # fmt: skip
        text = html.unescape(re.sub(r"<[^>]+>", "", (site / "tutorials" / f"{page}.html").read_text()))
        lines = [line.strip() for line in (TUTORIALS / script).read_text().splitlines() if line.strip()]
        assert [line for line in lines if line not in text] == [], f"{page}.html does not show all of {script}"


def test_the_env_pages_list_every_registered_id_once(site: Path) -> None:
    families = [site / "envs" / name for name in ("classification.html", "aucpr.html", "metric-learning.html")]
    pages = {path.name: path.read_text() for path in families}
    overview = (site / "envs" / "index.html").read_text()
    for env_id in ala_gym.ENV_IDS:
        holders = [name for name, text in pages.items() if f'id="{env_id}"' in text]
        assert len(holders) == 1, f"{env_id} has a section on {holders or 'no family page'}"
        assert f"#{env_id}" in overview, f"the environments overview does not link {env_id}"


def load_generator() -> object:
    name = "gen_envs_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "gen_envs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        del sys.modules[name]
    return module


def test_the_stand_in_datasets_have_the_real_loaders_shapes(tiny_fashion_mnist_dir: Path, tiny_cifar_dir: Path) -> None:
    """The env pages read spaces from envs built on stand-in data; the real loaders, on files of the real
    formats, give the same input shape and class count."""
    from ala_gym.core.data import load_cifar10, load_fashion_mnist

    stand_ins = load_generator().STAND_INS
    real = {
        "fashion-mnist": load_fashion_mnist(data_root=tiny_fashion_mnist_dir, val_size=50),
        "cifar10": load_cifar10(data_root=tiny_cifar_dir),
    }
    assert set(stand_ins) == set(real)
    for name, data in real.items():
        assert stand_ins[name] == (data.image_shape, data.num_classes), name


def test_every_tutorial_script_is_run_by_a_page_command() -> None:
    scripts = {path.name for path in TUTORIALS.glob("*.py")}
    run = {Path(arg).name for argv in COMMANDS.values() for arg in argv if arg.startswith("docs/tutorials/")}
    assert scripts == set(SCRIPT_OUTPUT) == run


@pytest.mark.parametrize("label", list(COMMANDS))
def test_each_command_of_the_pages_runs_at_a_tiny_budget(started: dict[str, Started], label: str) -> None:
    output = started[label].finish()
    argv = COMMANDS[label]
    for arg in argv:
        if arg.startswith("docs/tutorials/"):
            assert SCRIPT_OUTPUT[Path(arg).name] in output, output[-3000:]
    if "--controllers" in argv:  # a comparison: its table has a row per controller
        table = (started[label].folder / "table.md").read_text()
        for spec in argv[argv.index("--controllers") + 1].split(","):
            assert f"| {spec} |" in table, f"no row for {spec} in {label}'s table"
    if "custom_controller.py" in " ".join(argv):
        assert "| smooth-then-hold(until=0.25) |" in (started[label].folder / "table.md").read_text()


class References(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for key, value in attrs if key in ("src", "href") and value]


def missing_local_assets(dom: str, page: Path) -> list[str]:
    parser = References()
    parser.feed(dom)
    missing = []
    for reference in parser.found:
        parts = urlsplit(reference)
        if parts.scheme not in ("", "file") or parts.netloc or not parts.path:
            continue  # another host (none expected), a mailto:, a data: URL, or an anchor on the page
        target = Path(unquote(parts.path)) if parts.scheme == "file" else page.parent / unquote(parts.path)
        if not target.exists():
            missing.append(reference)
    return missing


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--virtual-time-budget=3000", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it: make chromium)")
@pytest.mark.parametrize("page", ["index.html", "tutorials/first-env.html", "results.html", "benchmarks/results/digits/table.html"])
def test_a_browser_renders_the_page_with_every_local_asset(site: Path, page: str, tmp_path: Path) -> None:
    """The DOM after the theme's JavaScript ran, every file it refers to (styles, scripts, plots, links), and
    for the home page a screenshot that is not blank."""
    path = site / page
    rendered = chromium("--dump-dom", path.as_uri(), profile=tmp_path / "profile")
    dom = rendered.stdout
    assert "md-content" in dom, rendered.stderr[-3000:]
    assert 'class="no-js"' not in dom, "the theme's JavaScript did not run"
    assert missing_local_assets(dom, path) == []
    if page.startswith("tutorials/"):
        assert "md-code__button" in dom, "the code blocks got no copy button: the theme's JavaScript did not run"
    if page == "index.html":
        screenshot = tmp_path / "page.png"
        chromium("--window-size=1280,900", f"--screenshot={screenshot}", path.as_uri(), profile=tmp_path / "profile")
        from matplotlib.image import imread

        assert imread(screenshot).std() > 0.05, "the screenshot is blank"


def page_python_blocks() -> list[tuple[str, str]]:
    """The Python blocks of the hand-written pages and of the README (not the tutorials' scripts, which run
    whole above), ``("page#n", code)``."""
    blocks = []
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        label = page.relative_to(DOCS if DOCS in page.parents else ROOT)
        for number, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)):
            if "--8<--" not in code:
                blocks.append((f"{label}#{number}", code))
    return blocks


def shrink(code: str, label: str) -> str:
    """The block at ``TINY_BUDGET``; every block states its budget, so that it can be shrunk."""
    for pattern, replacement in TINY_BUDGET.items():
        code = re.sub(pattern, replacement, code)
    assert "total_iterations=20" in code, f"{label}: every example should state its budget, so that it can be shrunk here"
    return code


def test_the_blocks_whose_output_is_checked_exist() -> None:
    assert set(BLOCK_OUTPUT) <= {label for label, _ in page_python_blocks()}


@pytest.mark.parametrize("label, code", page_python_blocks(), ids=[label for label, _ in page_python_blocks()])
def test_each_python_block_of_the_pages_runs_at_a_tiny_budget(label: str, code: str, capsys) -> None:
    exec(compile(shrink(code, label), label, "exec"), {"__name__": "docs_page"})
    if label in BLOCK_OUTPUT:
        assert BLOCK_OUTPUT[label] in capsys.readouterr().out
