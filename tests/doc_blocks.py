"""The code blocks of README.md and docs/: found, classified and run as tests/test_readme.py and
tests/test_docs.py run them.

How the code in the project's markdown is tested (keep README.md and docs/ within these rules):

- Every fence says what it holds, in its info string: ```python (run), ```bash (shell commands:
  shown, not run), ```text (output, usage lines, trees: shown, not run). A bare fence, or any other
  info string, is refused, and a ```bash or ```text block must not be Python code (a statement
  or a call): an example written in the wrong fence would otherwise never run.
- Every ```python block is run as a script of its own (a real file: ``@njit(cache=True)`` needs
  one), once per session even when two pages show the same block, and every ``test_*`` function
  it defines is called. A block that imports an optional dependency (torch, jax, matplotlib,
  dask, scikit-learn, or ``fastgrad.torch`` / ``fastgrad.jax``) is skipped when that dependency is
  not installed.
- A ```python block whose first line is ``# fragment: <why>`` is an excerpt that calls the
  reader's own code: it is compiled, not run. Each test module pins its fragments by a line they
  contain (``FRAGMENTS``), so a new example cannot escape the run by being marked as one.
- Relative links and images resolve to files of the repository.

Blocks are found by a line they contain, never by their position, so pages can gain or lose
blocks without breaking the tests that check what a block prints.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import runpy
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FRAGMENT_MARK = "# fragment:"
KINDS = ("python", "bash", "text")  # run; shell commands; output, usage, trees

# what a block may import that `pip install fastgrad` does not bring: module -> distribution to skip on
OPTIONAL = {"torch": "torch", "jax": "jax", "matplotlib": "matplotlib", "dask": "dask",
            "sklearn": "sklearn"}


def pages() -> list[Path]:
    """Every markdown page of the docs site, in a fixed order."""
    return sorted(DOCS.rglob("*.md"))


def where(path: Path, line: int) -> str:
    """``docs/guides/audits.md:12``: a block's place, as a test id."""
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"{name}:{line}"


@dataclass(frozen=True)
class Fence:
    """One fenced block: the page, the line of its opening fence, its info string and body."""

    path: Path
    line: int
    info: str
    body: str

    @property
    def fragment(self) -> bool:
        return self.info == "python" and self.body.startswith(FRAGMENT_MARK)

    @property
    def runnable(self) -> bool:
        return self.info == "python" and not self.fragment

    @property
    def where(self) -> str:
        return where(self.path, self.line)


def fences(path: Path) -> list[Fence]:
    """Every fenced block of ``path`` (fences at any indentation, as in a list item)."""
    text = path.read_text()
    found = []
    for match in re.finditer(r"^([ \t]*)```([^\n`]*)\n(.*?)^\1```[ \t]*$", text, re.M | re.S):
        indent = match.group(1)
        body = "".join(line[len(indent):] if line.startswith(indent) else line
                       for line in match.group(3).splitlines(keepends=True))
        line = text.count("\n", 0, match.start()) + 1
        found.append(Fence(path, line, match.group(2).strip(), body))
    return found


def all_fences(paths: list[Path]) -> list[Fence]:
    return [fence for path in paths for fence in fences(path)]


def block(paths: list[Path], containing: str) -> str:
    """The one runnable python block of ``paths`` that contains the line ``containing``."""
    found = [f.body for f in all_fences(paths) if f.runnable and containing in f.body]
    assert len(found) == 1, f"{len(found)} python blocks contain {containing!r}"
    return found[0]


def check_fence_kinds(paths: list[Path]) -> None:
    """Every fence is ```python, ```bash or ```text, and only ```python holds Python code."""
    for fence in all_fences(paths):
        assert fence.info in KINDS, (
            f"{fence.where}: a ```{fence.info} block; say what it holds: "
            f"{', '.join('```' + kind for kind in KINDS)}")
        if fence.info == "python":
            continue
        try:
            tree = ast.parse(fence.body)
        except SyntaxError:
            continue
        # a shell line can parse too (``pytest -q`` is a subtraction): Python code does something
        code = [node for node in ast.walk(tree)
                if isinstance(node, (ast.stmt, ast.Call)) and not isinstance(node, ast.Expr)]
        assert not code, f"{fence.where}: a ```{fence.info} block that is Python; make it ```python"


def check_fragments(paths: list[Path], known: tuple[str, ...]) -> None:
    """The fragments of ``paths`` are exactly the ``known`` ones, and each is Python."""
    fragments = [f for f in all_fences(paths) if f.fragment]
    assert len(fragments) == len(known), (
        f"{len(fragments)} '{FRAGMENT_MARK}' blocks ({[f.where for f in fragments]}), "
        f"the known ones are {known}")
    for line in known:
        assert sum(line in f.body for f in fragments) == 1, line
    for fragment in fragments:
        compile(fragment.body, fragment.where, "exec")  # an excerpt still has to be Python


def check_links(path: Path) -> None:
    """Every relative link or image of ``path`` names a file that exists (anchors aside)."""
    text = re.sub(r"^([ \t]*)```.*?^\1```", "", path.read_text(), flags=re.M | re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file = (path.parent / target.split("#")[0]).resolve()
        assert file.exists(), f"{where(path, 1)[:-2]}: the link {target!r} names no file"


def optional_dependencies(code: str) -> list[str]:
    needed = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            top = parts[1] if parts[0] == "fastgrad" and len(parts) > 1 else parts[0]
            if top in OPTIONAL and OPTIONAL[top] not in needed:
                needed.append(OPTIONAL[top])
    return needed


@dataclass
class Run:
    """What running a block left: its globals, what it printed, the test functions it called."""

    namespace: dict
    out: str
    called: list[str]


# one run per block text and session, shared by test_readme.py and test_docs.py
_RUNS: dict[str, Run] = {}


def run(code: str, folder: Path) -> Run:
    """Run ``code`` as ``python script.py`` in ``folder`` (once per session) and its tests."""
    for dependency in optional_dependencies(code):
        pytest.importorskip(dependency)
    if code not in _RUNS:
        script = folder / f"doc_block_{len(_RUNS)}.py"
        script.write_text(code)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            namespace = runpy.run_path(str(script), run_name="__main__")
            called = []
            for name, value in list(namespace.items()):
                if name.startswith("test_") and callable(value):
                    value()
                    called.append(name)
        _RUNS[code] = Run(namespace, out.getvalue(), called)
    return _RUNS[code]
