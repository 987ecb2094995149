"""Griffe extension of the API reference: docstrings written with Sphinx roles, rendered as Markdown links.

The package's docstrings are Markdown (Gymnasium-style ``## Section`` headings, tables) with two habits of
reStructuredText, which Markdown would print literally:

* roles such as ``:class:`ala_gym.envs.vector.ALAVectorEnv``` or ``:meth:`LossTask.set_values```: each becomes
  an optional cross-reference, a link where the reference documents the object, plain code otherwise (a
  role naming something outside the reference, such as a torch class, never fails a strict build);
* a paragraph ending in ``::`` before an indented literal block: the ``::`` becomes ``:`` (the block is
  already a Markdown code block).

Names are resolved in the scope of the object whose docstring holds them (its members, then its module's,
imports included), as Python would.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([\w.]+)`")
LITERAL_BLOCK_MARKER = re.compile(r"(\S)::\n(\s*\n)")


def resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path of ``name`` as written in ``obj``'s docstring, or None when it names nothing known."""
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head)
    except griffe.NameResolutionError:
        return name if rest else None  # a dotted name is taken as written
    return f"{path}.{rest}" if rest else path


def markdown(text: str, obj: griffe.Object) -> str:
    """``text`` with its roles turned into optional cross-references and ``::`` markers into ``:``."""

    def link(match: re.Match) -> str:
        short, name = match.groups()
        title = html.escape(name.rsplit(".", 1)[-1] if short else name)
        path = resolve(obj, name)
        if path is None:
            return f"<code>{title}</code>"
        return f'<autoref identifier="{html.escape(path)}" optional><code>{title}</code></autoref>'

    return LITERAL_BLOCK_MARKER.sub(r"\1:\n\2", ROLE.sub(link, text))


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrites every docstring of a loaded package (see the module's docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._rewrite(pkg, set())

    def _rewrite(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(member, seen)
