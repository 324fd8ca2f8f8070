"""The documentation site (docs/, mkdocs.yml): its code runs, it builds, it covers the API.

- Every ```python block of every page runs (the rules are tests/doc_blocks.py's, the README's
  too), and the blocks whose output the pages describe say what the pages say.
- The site builds with warnings as errors (``mkdocs build --strict``), as .ci/run builds it.
- Every page is in the nav, and every public name of ``fastgrad``, ``fastgrad.torch``,
  ``fastgrad.jax``, ``fastgrad.testing`` and ``fastgrad.monitor`` has its entry in the reference.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest

import fastgrad

import doc_blocks
from doc_blocks import DOCS, ROOT

# The python blocks that are excerpts, each named by a line it contains. Make a new example
# runnable instead of adding it here.
FRAGMENTS = ("mon.log_filters(W1, image_shape=(8, 8))",)
PAGES = doc_blocks.pages()
RUNNABLE = [f for f in doc_blocks.all_fences(PAGES) if f.runnable]
REFERENCED = ("fastgrad", "fastgrad.torch", "fastgrad.jax", "fastgrad.testing", "fastgrad.monitor")


@pytest.fixture(scope="session")
def run_block(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    return lambda code: doc_blocks.run(code, folder)


def _block(containing: str) -> str:
    return doc_blocks.block(PAGES, containing)


@pytest.mark.parametrize("code", [f.body for f in RUNNABLE], ids=[f.where for f in RUNNABLE])
def test_every_python_block_runs(code, run_block):
    run_block(code)


def test_fragments_are_the_known_ones():
    doc_blocks.check_fragments(PAGES, FRAGMENTS)


def test_no_python_example_hides_in_another_fence():
    doc_blocks.check_fence_kinds(PAGES)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_resolve(page):
    doc_blocks.check_links(page)


# ---------------------------------------------------------------- what the blocks say


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
    out = run_block(_block("fastgrad.jax.check(")).out
    assert "PASSED" in out and "layers/0/w" in out


def test_numpy_layer_example(run_block):
    out = run_block(_block("fastgrad.check_layer(")).out
    assert "PASSED" in out and all(f"\n  {name} " in out for name in ("x", "w", "b"))


def test_numpy_model_example(run_block):
    out = run_block(_block("fastgrad.check_model(Softmax")).out
    assert "PASSED" in out and "\n  W " in out and "\n  b " in out


def test_audit_example(run_block):
    out = run_block(_block("fg.audit(")).out
    assert "12345" in out and "150000" in out
    assert "['W[30, 345]', 'W[375, 0]']" in out


def test_cli_factory_example(run_block, tmp_path, monkeypatch, capsys):
    from fastgrad.cli import main

    code = _block("def least_squares():")
    run_block(code)
    (tmp_path / "my_problems.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "my_problems:least_squares", "--samples", "all"]) == 0
    assert main(["check", "my_problems:least_squares", "--audit", "--json",
                 str(tmp_path / "out.json")]) == 0
    assert "PASSED" in capsys.readouterr().out and (tmp_path / "out.json").exists()


# ---------------------------------------------------------------- the site


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), "a page is twice in the nav"
    assert sorted(nav) == sorted(str(p.relative_to(DOCS)) for p in PAGES)


@pytest.mark.parametrize("module", REFERENCED)
def test_every_public_name_is_in_the_reference(module):
    if module in ("fastgrad.torch", "fastgrad.jax"):
        # a missing framework is re-raised as an ImportError with an install hint, which
        # importorskip does not take for a missing module: skip on the framework itself
        pytest.importorskip(module.removeprefix("fastgrad."))
    public = importlib.import_module(module)
    entries = set()
    for page in (DOCS / "reference").glob("*.md"):
        entries |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.M))
    missing = [name for name in public.__all__ if f"{module}.{name}" not in entries]
    assert not missing, f"{module}: no '::: {module}.<name>' entry in docs/reference for {missing}"


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                            str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    for page in PAGES:
        html = page.relative_to(DOCS).with_suffix("")
        html = html.parent if html.name == "index" else html
        assert (tmp_path / "site" / html / "index.html").exists(), page
    reference = (tmp_path / "site" / "reference" / "fastgrad" / "index.html").read_text()
    assert 'id="fastgrad.check"' in reference and 'id="fastgrad.audit"' in reference  # lazy names
