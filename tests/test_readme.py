"""Every python block of README.md runs as written, and says what the README says.

How README code is tested (keep README.md within these rules):

- Every ```python block is run as a script of its own (a real file: ``@njit(cache=True)`` needs
  one), once per session, and every ``test_*`` function it defines is called. A block that imports
  an optional dependency (torch, jax, matplotlib, dask, scikit-learn, or ``fastgrad.torch`` /
  ``fastgrad.jax``) is skipped when that dependency is not installed.
- A ```python block whose first line is ``# fragment: <why>`` is an excerpt that calls the
  reader's own code: it is compiled, not run. The fragments are pinned by ``FRAGMENTS`` below, so
  a new example cannot escape the run by being marked as one.
- Every other fence (```bash, or a bare fence for output, usage lines, the layout) must not parse
  as Python: an example written in a bare fence would otherwise never be run.

Blocks are found by a line they contain, never by their position, so other sections of the README
can gain or lose blocks without breaking these tests.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import runpy
from pathlib import Path

import pytest

import fastgrad

README = Path(__file__).resolve().parent.parent / "README.md"
FRAGMENT_MARK = "# fragment:"

# The python blocks that are excerpts, each named by a line it contains. Make a new example
# runnable instead of adding it here.
FRAGMENTS = ("from fastgrad.monitor import TrainingMonitor",)

# what a block may import that `pip install fastgrad` does not bring: module -> distribution to skip on
OPTIONAL = {"torch": "torch", "jax": "jax", "matplotlib": "matplotlib", "dask": "dask",
            "sklearn": "sklearn"}


def _fences() -> list[tuple[str, int, str]]:
    """(info string, line number of the opening fence, body) of every fenced block."""
    text = README.read_text()
    found = []
    for match in re.finditer(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", text, re.M | re.S):
        line = text.count("\n", 0, match.start()) + 1
        found.append((match.group(1).strip(), line, match.group(2)))
    return found


def _python_blocks(fragments: bool) -> list[tuple[int, str]]:
    return [(line, body) for info, line, body in _fences()
            if info == "python" and body.startswith(FRAGMENT_MARK) == fragments]


def _block(containing: str) -> str:
    """The one runnable python block that contains the line ``containing``."""
    found = [body for _, body in _python_blocks(False) if containing in body]
    assert len(found) == 1, f"{len(found)} README python blocks contain {containing!r}"
    return found[0]


def _optional_dependencies(code: str) -> list[str]:
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


class _Run:
    """What running a block left: its globals, what it printed, the test functions it called."""

    def __init__(self, namespace: dict, out: str, called: list[str]):
        self.namespace, self.out, self.called = namespace, out, called


_RUNS: dict[str, _Run] = {}


@pytest.fixture(scope="session")
def run_block(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")

    def run(code: str) -> _Run:
        for dependency in _optional_dependencies(code):
            pytest.importorskip(dependency)
        if code not in _RUNS:
            script = folder / f"readme_block_{len(_RUNS)}.py"
            script.write_text(code)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                namespace = runpy.run_path(str(script), run_name="__main__")  # as `python script.py`
                called = []
                for name, value in list(namespace.items()):
                    if name.startswith("test_") and callable(value):
                        value()
                        called.append(name)
            _RUNS[code] = _Run(namespace, out.getvalue(), called)
        return _RUNS[code]

    return run


@pytest.mark.parametrize(
    "code", [body for _, body in _python_blocks(False)],
    ids=[f"README.md:{line}" for line, _ in _python_blocks(False)],
)
def test_every_python_block_runs(code, run_block):
    run_block(code)


def test_fragments_are_the_known_ones():
    fragments = _python_blocks(True)
    assert len(fragments) == len(FRAGMENTS), (
        f"README has {len(fragments)} '{FRAGMENT_MARK}' blocks (at lines "
        f"{[line for line, _ in fragments]}), the known ones are {FRAGMENTS}")
    for known in FRAGMENTS:
        assert sum(known in body for _, body in fragments) == 1, known
    for line, body in fragments:
        compile(body, f"README.md:{line}", "exec")  # an excerpt still has to be Python


def test_no_python_example_hides_in_another_fence():
    for info, line, body in _fences():
        if info == "python":
            continue
        try:
            tree = ast.parse(body)
        except SyntaxError:
            continue
        bare_words = all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Name) for s in tree.body)
        assert bare_words, f"README.md:{line}: a ```{info} block that is Python; make it ```python"


def test_readme_shows_the_two_setup_commands():
    text = README.read_text()
    assert "pip install . && fastgrad demo" in text
    assert 'pip install -e ".[test]" && pytest' in text


def test_ten_line_numba_example(run_block):
    report = run_block(_block("from numba import njit")).namespace["report"]
    assert not report.passed
    assert report.segments["b"].failed == 3 and report.segments["W"].passed
    assert report.path == "jit"


def test_segment_map_example_shows_true_values(run_block):
    code = _block("segs.locate(")
    namespace = run_block(code).namespace
    lines = code.splitlines()
    shown = 0
    for i, line in enumerate(lines):
        expression, _, comment = line.partition("#")
        if not comment.strip() or "=" in expression or not expression.strip():
            continue  # only lines that are a bare expression followed by its value
        before: dict = {}
        exec("\n".join(lines[:i]), before)  # the state at that line: later lines rebind segs
        value = eval(expression, before)
        assert value == eval(comment, {"Segment": fastgrad.Segment}), line
        shown += 1
    assert shown == 3
    assert namespace["params"]["W1"].shape == (64, 32)
    assert namespace["segs"].names == ("W1", "b1")


def test_torch_module_example(run_block):
    out = run_block(_block("fastgrad.torch.check_module(")).out
    assert "PASSED" in out and "0.weight" in out and "2.bias" in out


def test_torch_custom_function_example(run_block):
    run = run_block(_block("class MyFn(torch.autograd.Function)"))
    assert "PASSED" in run.out and "\n  arg0 " in run.out and "\n  arg1 " in run.out
    assert run.namespace["x"].requires_grad and run.namespace["w"].requires_grad


def test_pytest_example_test_is_called(run_block):
    assert run_block(_block("from fastgrad.testing import")).called == ["test_my_layer"]


def test_jax_example(run_block):
    out = run_block(_block("import jax")).out
    assert "PASSED" in out and "layers/0/w" in out


def test_numpy_layer_example(run_block):
    out = run_block(_block("fastgrad.check_layer(")).out
    assert "PASSED" in out and all(f"\n  {name} " in out for name in ("x", "w", "b"))


def test_numpy_model_example(run_block):
    out = run_block(_block("fastgrad.check_model(")).out
    assert "PASSED" in out and "\n  W " in out and "\n  b " in out


def test_audit_example(run_block):
    out = run_block(_block("fg.audit(")).out
    assert "12345" in out and "150000" in out
    assert "['W[30, 345]', 'W[375, 0]']" in out
