"""A griffe extension for fastgrad's reference: public names resolve, doctests render as code.

- ``fastgrad`` and ``fastgrad.torch`` load some public names on first access (PEP 562
  ``__getattr__``), which static analysis cannot follow. This extension imports each public
  module (skipping one whose framework is not installed) and, for every name of its ``__all__``
  that griffe did not find, adds an alias to where the object is defined. The reference pages
  name objects by their public paths (``fastgrad.check``, ``fastgrad.torch.audit_module``),
  whichever module defines them, so moving a module does not touch the docs.
- The docstrings show short ``>>>`` examples outside their ``Examples`` section too (a module's
  summary, a method's one-liner). Markdown would read them as text (``x[0]["k"]`` as a link), so
  each such run of lines becomes a ``pycon`` code block.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import griffe

PUBLIC_MODULES = ("fastgrad", "fastgrad.torch", "fastgrad.jax", "fastgrad.testing",
                  "fastgrad.monitor")

# the checkout being documented: griffe reads its files, so the names are imported from it too
# (not from another install of fastgrad that happens to be on the path)
ROOT = str(Path(__file__).resolve().parents[2])
_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")


def fence_doctests(text: str) -> str:
    """``text`` with every run of ``>>>`` lines (and their output) outside ``Examples`` fenced."""
    lines = text.splitlines()
    out: list[str] = []
    section, i = "", 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and _UNDERLINE.match(lines[i + 1]) and line.strip():
            section = line.strip()
        if section != "Examples" and line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{indent}```")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class PublicNames(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.path != "fastgrad":
            return
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        for path in PUBLIC_MODULES:
            try:
                module = importlib.import_module(path)
            except ImportError:  # an optional framework that is not installed
                continue
            node = pkg if path == "fastgrad" else pkg.get_member(path.split(".", 1)[1])
            for name in getattr(module, "__all__", ()):
                if name in node.members:
                    continue
                value = getattr(module, name)
                target = f"{value.__module__}.{value.__qualname__}"
                node.set_member(name, griffe.Alias(name, target, parent=node))
