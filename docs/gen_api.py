"""MkDocs hook: the API reference pages, one per package, one section per module found on disk, and the
table of registered controllers.

Each page is the package's docstring followed by a mkdocstrings directive for every module of the package
(found with ``pkgutil``, without importing anything), so that a new module is documented without editing
the site. The repository's ``agents/`` and ``benchmarks/`` install as ``ala_gym.agents`` and ``ala_gym.benchmarks``;
mkdocstrings reads sources by folder, so :func:`stage_sources` lays the package out as installed under
``build/api-src`` (mkdocs.yml's ``paths``) when the build starts. Names a package re-exports are documented once, in the module that defines them; names its ``__init__.py``
defines itself (``ala_gym.agents.CONTROLLERS``), under the package.
"""

from __future__ import annotations

import ast
import html
import inspect
import pkgutil
import re
import shutil
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "api-src"
INSTALLED_AS = {"ala_gym": "ala_gym", "ala_gym/agents": "agents", "ala_gym/benchmarks": "benchmarks"}
"""Where each folder of the installed package comes from in the repository (setup.cfg's ``package_dir``)."""
PACKAGES = {
    "api/ala_gym.md": ("ala_gym", "registration of the env ids with Gymnasium"),
    "api/core.md": ("ala_gym.core", "torch only: data, child models, losses, metrics, the SGD step, the trainers"),
    "api/envs.md": ("ala_gym.envs", "the Gymnasium envs: episode, tasks, the single and native vector envs"),
    "api/wrappers.md": ("ala_gym.wrappers", "adapters to Stable-Baselines3 and Ray"),
    "api/agents.md": ("ala_gym.agents", "the controllers and what their command lines share"),
}


def stage_sources() -> None:
    """Copy the Python sources into :data:`STAGE` in the installed layout (``agents/`` as ``ala_gym/agents``)."""
    shutil.rmtree(STAGE, ignore_errors=True)
    for installed, source in INSTALLED_AS.items():
        for path in (ROOT / source).rglob("*.py"):
            relative = path.relative_to(ROOT / source)
            if relative.parts[0] in INSTALLED_AS.values() or "__pycache__" in relative.parts:
                continue  # a folder mapped on its own (never nested in the repository) or a cache
            target = STAGE / installed / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def modules(package: str) -> list[str]:
    """The package's public modules (not its subpackages, which have pages of their own), sorted."""
    folder = STAGE.joinpath(*package.split("."))
    return sorted(
        f"{package}.{info.name}" for info in pkgutil.iter_modules([str(folder)]) if not info.ispkg and not info.name.startswith("_")
    )


def own_names(package: str) -> list[str]:
    """The public names the package's ``__init__.py`` defines itself (not those it imports)."""
    tree = ast.parse(STAGE.joinpath(*package.split("."), "__init__.py").read_text())
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [target.id for target in node.targets if isinstance(target, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [name for name in dict.fromkeys(names) if not name.startswith("_")]


def page(package: str, what: str) -> str:
    names = own_names(package)
    members = f"[{', '.join(names)}]" if names else "false"
    lines = [f"# `{package}`", "", f"*{what}.*", "", f"::: {package}", "    options:", f"      members: {members}",
             "      show_submodules: false", ""]  # fmt: skip
    for module in modules(package):
        lines += [f"::: {module}", "    options:", "      show_root_heading: true", "      heading_level: 2", ""]
    return "\n".join(lines)


def index() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings when the site is built, one page per package; imports flow one way, "
             "down this table (`tests/test_architecture.py` checks it).", "",
             "| page | what |", "|---|---|"]  # fmt: skip
    for path, (package, what) in PACKAGES.items():
        lines.append(f"| [`{package}`]({Path(path).name}) | {what} |")
    lines += ["", "The envs' docstrings follow Gymnasium's layout (Description, Action Space, Observation Space, "
              "Rewards, Episode End, Arguments, Version History); the [environment pages](../envs/index.md) list "
              "every registered id with its spaces and defaults.", ""]  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the controllers
CONTROLLERS_TABLE = "<!-- generated: ala_gym.agents.CONTROLLERS -->"
"""Where a hand-written page gets the table of :data:`ala_gym.agents.CONTROLLERS`."""
ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([\w.]+)`")


def factory_target(factory: Any) -> tuple[str, dict[str, Any]]:
    """``(path of what the factory builds, the keywords it fixes)``: a factory of ``ala_gym.agents._factory`` names
    its class by ``module:Class`` (imported on first use, never here); any other callable is itself."""
    try:
        closure = inspect.getclosurevars(factory).nonlocals
    except TypeError:
        closure = {}
    if {"module", "class_name", "defaults"} <= set(closure):
        return f"{closure['module']}.{closure['class_name']}", dict(closure["defaults"])
    return f"{factory.__module__}.{factory.__qualname__}", {}


ABBREVIATIONS = {"eq", "eqs", "al", "e.g", "i.e", "vs", "cf", "fig", "sec"}


def summary(docstring: str) -> str:
    """The first sentence of a docstring (a period before a capital, not after an abbreviation), its roles
    as code, ready for a table cell."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    sentence = paragraph
    for match in re.finditer(r"\.\s+(?=[A-Z(`])", paragraph):
        word = paragraph[: match.start()].rsplit(" ", 1)[-1].lstrip("(")
        if word.lower() not in ABBREVIATIONS and len(word) > 1:
            sentence = paragraph[: match.start() + 1]
            break
    return ROLE.sub(r"`\1`", sentence).replace("|", "\\|")


def controllers_table() -> str:
    import griffe

    import ala_gym.agents
    package = griffe.load("ala_gym.agents", search_paths=[str(STAGE)], resolve_aliases=False)
    lines = ["| name | builds | fixed keywords | what |", "|---|---|---|---|"]
    for name, factory in ala_gym.agents.CONTROLLERS.items():
        path, defaults = factory_target(factory)
        try:
            documented = package[path.removeprefix("ala_gym.agents.")]
            what = summary(documented.docstring.value) if documented.docstring else ""
        except (KeyError, griffe.GriffeError):
            what = ""
        short = html.escape(path.rsplit(".", 1)[-1])
        builds = f'<autoref identifier="{html.escape(path)}" optional><code>{short}</code></autoref>'
        fixed = ", ".join(f"`{key}={value!r}`" for key, value in defaults.items()) or "-"
        lines.append(f"| `{name}` | {builds} | {fixed} | {what} |")
    return "\n".join(lines)


@event_priority(100)  # before mkdocstrings' own on_config, which looks for the folders of its paths
def on_config(config: Any) -> Any:
    stage_sources()
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return markdown.replace(CONTROLLERS_TABLE, controllers_table()) if CONTROLLERS_TABLE in markdown else markdown


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    generated = {path: page(package, what) for path, (package, what) in PACKAGES.items()}
    for path, text in {"api/index.md": index(), **generated}.items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=text))
    return files
