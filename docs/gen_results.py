"""MkDocs hook: the benchmark pages, generated at every build from what is committed under benchmarks/.

* ``benchmarks/README.md`` becomes the page ``benchmarks/index.md``, and every committed Markdown file and
  plot under ``benchmarks/results/`` a page or image at the same path under ``benchmarks/results/``, so
  that the links between them work as they do on the repository; a link to a file outside that tree
  becomes the file's path in code. A results folder's plots are appended to its ``table.md`` (or to its
  only page), the Phi heatmaps folded.
* ``benchmarks/results/index.md`` is a table made from every comparison's ``results.json`` (header and
  summary): nothing in it is typed by hand.
* The "Benchmarks" section of the navigation gets one entry per results folder and measurement.

"Committed" means listed by ``git ls-files``; outside a git checkout, every file under benchmarks/results/
except the ``runs/`` folders (one file per unfinished or uncommitted run) and the ``demo-digits`` folder
that ``make demo`` writes.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results"
NOT_RESULTS = ("runs", "demo-digits")  # folders of results that are not committed (outside git)
PLOT_ORDER = ("val_metric.png", "loss_shape.png", "best_val_error.png")


@cache
def committed_files() -> tuple[str, ...]:
    """Repository paths of the committed Markdown files and PNGs under benchmarks/results/."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", RESULTS], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = [
            path.relative_to(ROOT).as_posix()
            for path in (ROOT / RESULTS).rglob("*")
            if path.is_file() and not set(path.relative_to(ROOT / RESULTS).parts[:-1]) & set(NOT_RESULTS)
        ]
    return tuple(sorted(p for p in listed if p.endswith((".md", ".png", ".json")) and (ROOT / p).is_file()))


def docs_path(repo_path: str) -> str:
    """Where a repository file of the benchmarks lands in the site's docs tree."""
    return "benchmarks/index.md" if repo_path == "benchmarks/README.md" else repo_path


def title_of(repo_path: str) -> str:
    for line in (ROOT / repo_path).read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return PurePosixPath(repo_path).stem


def folders() -> dict[str, list[str]]:
    """``{results subfolder: its committed files}``; top-level files under the key ``""``."""
    grouped: dict[str, list[str]] = {}
    for path in committed_files():
        relative = PurePosixPath(path).relative_to(RESULTS)
        key = relative.parts[0] if len(relative.parts) > 1 else ""
        if len(relative.parts) > 2:  # deeper files (a committed run of runs/) are data, not pages
            continue
        grouped.setdefault(key, []).append(path)
    return grouped


def pages_of(files: list[str]) -> list[str]:
    return [path for path in files if path.endswith(".md")]


# ------------------------------------------------------------------------------------------- page content
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def rewrite_links(text: str, repo_path: str, mirrored: set[str]) -> str:
    """Links to files that are not in the site become the file's repository path, in code."""
    folder = posixpath.dirname(repo_path)

    def fix(match: re.Match) -> str:
        bang, label, target = match.groups()
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path:
            return match.group(0)
        path = posixpath.normpath(posixpath.join(folder, unquote(parts.path)))
        if path in mirrored:
            return match.group(0)
        return f"{label} (`{path}`)" if label and not bang else f"`{path}`"

    return LINK.sub(fix, text)


def plots_section(pngs: list[str], page: str) -> str:
    """The folder's plots as Markdown for ``page`` (same folder): the named plots first, Phi heatmaps folded."""
    names = sorted((PurePosixPath(p).name for p in pngs), key=lambda n: (PLOT_ORDER.index(n) if n in PLOT_ORDER else len(PLOT_ORDER), n))
    main = [n for n in names if not n.startswith("phi_")]
    heatmaps = [n for n in names if n.startswith("phi_")]
    lines = ["", "## Plots", ""]
    for name in main:
        lines += [f"![{name}]({quote(name)}){{ loading=lazy }}", ""]
    if heatmaps:
        lines += ['??? note "Phi over training, one heatmap per learned controller"', ""]
        for name in heatmaps:
            controller = name[len("phi_") : -len(".png")]
            lines += [f"    `{controller}`", "", f"    ![Phi of {controller}]({quote(name)}){{ loading=lazy }}", ""]
    return "\n".join(lines)


def read_summary(repo_path: str) -> dict[str, Any] | None:
    """A comparison's header and summary rows, or None for a ``results.json`` of another shape."""
    try:
        payload = json.loads((ROOT / repo_path).read_text())
    except (OSError, ValueError):
        return None
    header, rows = payload.get("header") if isinstance(payload, dict) else None, payload.get("summary") if isinstance(payload, dict) else None
    if not isinstance(header, dict) or not all(key in header for key in ("env", "total_iterations", "steps_per_action", "seeds")):
        return None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "test_mean" in r for r in rows):
        return None
    return {"header": header, "summary": rows}


def mean_std(row: dict[str, Any]) -> str:
    std = row.get("test_std")
    return f"{row['test_mean']:.2f} +- {std:.2f}" if isinstance(std, (int, float)) and math.isfinite(std) else f"{row['test_mean']:.2f}"


def glance_page(grouped: dict[str, list[str]]) -> str:
    lines = [
        "# Results at a glance",
        "",
        "One row per committed controller comparison, made from its `results.json` when the site is built. "
        "Test metric in %: mean +- sample std over seeds (a multi-child run's seed value is the mean over its "
        "children). \"Best\" is the row with the best mean, whatever its spread: the comparison's own page has "
        "every row, per seed, and what the spread allows to say.",
        "",
        "| comparison | env | test metric | budget per child | seeds | rows | `ce` | best row | best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for folder, files in sorted(grouped.items()):
        json_path = f"{RESULTS}/{folder}/results.json"
        summary = read_summary(json_path) if json_path in files else None
        if summary is None:
            continue
        header, rows = summary["header"], summary["summary"]
        # Comparisons written before the header named its metric all ranked by the error rate.
        metric = header.get("metric") or header.get("env_kwargs", {}).get("metric") or "error"
        higher = bool(header.get("higher_is_better", False))
        best = (max if higher else min)(rows, key=lambda row: row["test_mean"])
        ce = next((row for row in rows if row["controller"] == "ce"), None)
        page = f"{folder}/table.md" if f"{RESULTS}/{folder}/table.md" in files else f"{folder}/{PurePosixPath(pages_of(files)[0]).name}"
        lines.append(
            f"| [{folder}]({page}) | `{header['env']}` | {metric} ({'higher' if higher else 'lower'} is better) "
            f"| {header['total_iterations']:,} iterations, K = {header['steps_per_action']} | {len(header['seeds'])} "
            f"| {len(rows)} | {mean_std(ce) if ce else '-'} | `{best['controller']}` | {mean_std(best)} |"
        )
    lines += ["", "The analysis of these results: [Benchmarks](../index.md)."]
    return "\n".join(lines) + "\n"


def page_contents() -> dict[str, tuple[str, str | None]]:
    """``{docs path: (Markdown, None)}`` for pages and ``{docs path: (None, repository path)}`` for images."""
    grouped = folders()
    mirrored = {path for path in committed_files() if path.endswith((".md", ".png"))} | {"benchmarks/README.md"}
    contents: dict[str, tuple[str | None, str | None]] = {}
    readme = "benchmarks/README.md"
    contents[docs_path(readme)] = (rewrite_links((ROOT / readme).read_text(), readme, mirrored), None)
    for folder, files in grouped.items():
        pages, pngs = pages_of(files), [p for p in files if p.endswith(".png")]
        host = None
        if folder and pages:  # the table's page, else the folder's README, else its first page
            host = next((p for suffix in ("/table.md", "/README.md") for p in pages if p.endswith(suffix)), pages[0])
        for page in pages:
            text = rewrite_links((ROOT / page).read_text(), page, mirrored)
            if page == host and pngs:
                text = text.rstrip("\n") + "\n" + plots_section(pngs, page) + "\n"
            contents[docs_path(page)] = (text, None)
        for png in pngs:
            contents[docs_path(png)] = (None, png)
    contents[f"{RESULTS}/index.md"] = (glance_page(grouped), None)
    return contents


def nav_entries() -> tuple[list[Any], list[Any]]:
    """The comparisons' and the measurements' navigation entries."""
    comparisons: list[Any] = []
    measurements: list[Any] = []
    for folder, files in sorted(folders().items()):
        pages = pages_of(files)
        if not folder:
            measurements += [{PurePosixPath(p).stem: docs_path(p)} for p in pages]
            continue
        if not pages:
            continue
        target = measurements if not any(p.endswith(("/table.md", "/README.md")) for p in pages) else comparisons
        if len(pages) == 1:
            target.append({folder: docs_path(pages[0])})
            continue
        entries: list[Any] = [docs_path(p) for p in pages if p.endswith("/README.md")]
        for page in pages:
            if page.endswith("/README.md"):
                continue
            title = "Table and plots" if page.endswith("/table.md") else title_of(page)
            entries.append({title: docs_path(page)})
        target.append({folder: entries})
    return comparisons, measurements


# ------------------------------------------------------------------------------------------- the MkDocs hooks
def on_config(config: Any) -> Any:
    comparisons, measurements = nav_entries()
    for entry in config.nav or []:
        if isinstance(entry, dict) and "Benchmarks" in entry:
            entry["Benchmarks"] += [{"Comparisons": comparisons}, {"Measurements": measurements}]
            break
    else:
        raise ValueError("mkdocs.yml's nav has no 'Benchmarks' section for the generated result pages")
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for path, (text, source) in page_contents().items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        if text is not None:
            files.append(File.generated(config, path, content=text))
        else:
            files.append(File.generated(config, path, abs_src_path=str(ROOT / source)))
    return files
