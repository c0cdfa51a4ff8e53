"""A griffe extension for the documentation site: the docstrings' reStructuredText, as Markdown.

The docstrings follow torch.optim's style (``:math:`` roles, ``.. math::`` blocks, ``:class:``
roles), which reads well in ``help()`` and Sphinx; mkdocstrings renders Markdown, so each
docstring is rewritten once the package is loaded, for pymdownx.arithmatex to render its math
(``$...$``, ``$$...$$``), instead of changing every docstring in the source.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj):`~?([^`]+)`")
_INLINE_MATH = re.compile(r":math:`([^`]+)`")
# A ``.. math::`` directive and its indented body, up to the first line indented less.
_MATH_BLOCK = re.compile(r"^( *)\.\. math::\n((?:\1 +\S.*\n|\s*\n)+)", re.MULTILINE)
# reST's literal-block marker ends a paragraph in ``::``; Markdown keeps one colon.
_LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)


def _math_block(match: re.Match[str]) -> str:
    indent, body = match.group(1), match.group(2).rstrip()
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    # A block of several ``&=`` rows is an align environment in reST's math directive.
    math = "\n".join(lines)
    if "&" in math:
        math = "\\begin{aligned}\n" + math + "\n\\end{aligned}"
    fenced = "\n".join(indent + line for line in ["$$", *math.splitlines(), "$$"])
    return fenced + "\n\n"


def rst_to_markdown(text: str) -> str:
    """``text`` with reST math, cross-reference roles and literal-block markers as Markdown."""
    text = _MATH_BLOCK.sub(_math_block, text if text.endswith("\n") else text + "\n")
    text = _INLINE_MATH.sub(lambda m: f"${m.group(1)}$", text)
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    # ``compile``\ d: reST's escaped space joins a word to a literal; Markdown needs nothing.
    text = text.replace("``\\ ", "``")
    return _LITERAL_MARKER.sub(r"\1:", text).rstrip("\n")


def _runtime_docstring(obj: griffe.Object) -> str | None:
    """A class's docstring as Python sees it: ALTO and Lamb append their shared arguments to
    ``__doc__`` at import time, which griffe's static reading does not see."""
    if not obj.is_class or f"{obj.name}.__doc__ =" not in obj.module.source:
        return None
    try:
        runtime = getattr(importlib.import_module(obj.module.path), obj.name)
    except (ImportError, AttributeError):
        return None
    return inspect.getdoc(runtime)


class RstToMarkdown(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`rst_to_markdown`."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        runtime = _runtime_docstring(obj)
        if runtime is not None:
            obj.docstring.value = runtime
        obj.docstring.value = rst_to_markdown(obj.docstring.value)
