"""Every python block of README.md runs as written, and says what the README says.

The rules for the README's code (fences, fragments, optional dependencies) are those of every page
of the docs: see tests/doc_blocks.py. README.md has no fragment: each of its four examples runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

import doc_blocks
from doc_blocks import README, ROOT

# The python blocks that are excerpts, each named by a line it contains. Make a new example
# runnable instead of adding it here.
FRAGMENTS: tuple[str, ...] = ()
PAGES = [README]


@pytest.fixture(scope="session")
def run_block(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    return lambda code: doc_blocks.run(code, folder)


def _block(containing: str) -> str:
    return doc_blocks.block(PAGES, containing)


def _shown(after: str) -> list[str]:
    """The lines of the ```text block that follows the python block containing ``after``."""
    found = doc_blocks.fences(README)
    for i, fence in enumerate(found):
        if fence.runnable and after in fence.body:
            assert found[i + 1].info == "text", f"no ```text block after {fence.where}"
            return found[i + 1].body.splitlines()
    raise AssertionError(f"no README python block contains {after!r}")


RUNNABLE = [f for f in doc_blocks.fences(README) if f.runnable]


@pytest.mark.parametrize("code", [f.body for f in RUNNABLE], ids=[f.where for f in RUNNABLE])
def test_every_python_block_runs(code, run_block):
    run_block(code)


def test_fragments_are_the_known_ones():
    doc_blocks.check_fragments(PAGES, FRAGMENTS)


def test_no_python_example_hides_in_another_fence():
    doc_blocks.check_fence_kinds(PAGES)


def test_links_resolve():
    doc_blocks.check_links(README)


def test_readme_is_a_guide_not_a_manual():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_shows_the_two_setup_commands():
    text = README.read_text()
    assert "pip install . && fastgrad demo" in text
    assert 'pip install -e ".[test]" && pytest' in text
    # .ci/run replays this block in a fresh clone: two commands under this heading
    block = text.split("## Set-up: two commands\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert len([line for line in block.splitlines() if line.strip()]) == 2


def test_numpy_net_example_fails_in_w2_only(run_block):
    run = run_block(_block("class TwoLayerNet"))
    report = run.namespace["report"]
    assert not report.passed
    assert report.segments["W2"].failed == report.segments["W2"].checked == 16
    assert all(report.segments[name].passed for name in ("W1", "b1", "b2"))
    for line in _shown("class TwoLayerNet"):
        if line.strip() != "...":
            assert line in run.out, line


def _plugin_args() -> list[str]:
    """Load the plugin by hand unless it is installed through its entry point."""
    if any(ep.name == "fastgrad" for ep in entry_points(group="pytest11")):
        return []
    section = (ROOT / "pyproject.toml").read_text().split("[project.entry-points.pytest11]")[1]
    return ["-p", re.search(r'^fastgrad = "([\w.]+)"', section, re.M).group(1)]


def test_torch_suite_example_switches_with_one_flag(run_block, tmp_path):
    code = _block("from torch.autograd import gradcheck, gradgradcheck")
    assert run_block(code).called == ["test_softplus_gradients"]  # passes on torch's own checkers
    (tmp_path / "test_my_ops.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_plugin_args()]
    replaced = subprocess.run([*base, "--fastgrad-gradcheck", "test_my_ops.py"], cwd=tmp_path,
                              env=env, capture_output=True, text=True)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert "2 calls routed to fastgrad (0 fallbacks to the original)" in replaced.stdout
    compared = subprocess.run([*base, "--fastgrad-gradcheck=compare", "--fastgrad-gradcheck-json",
                               "compare.json", "test_my_ops.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    record = json.loads((tmp_path / "compare.json").read_text())
    assert [call["checker"] for call in record["calls"]] == ["gradcheck", "gradgradcheck"]
    first = record["calls"][0]
    assert first["node"] == "test_my_ops.py::test_softplus_gradients" and first["agree"] is True
    assert first["original"]["verdict"] == first["fastgrad"]["verdict"] == "pass"
    summary = record["summary"]
    assert (summary["mode"], summary["calls"], summary["compared"]) == ("compare", 2, 2)
    assert summary["disagreements"] == [] and summary["fastgrad"]["passed"] == 2
    excerpt = next(f.body for f in doc_blocks.fences(README)
                   if f.info == "text" and '"calls": [' in f.body)
    for key in [*first, *summary]:
        assert f'"{key}"' in excerpt, key  # every key the file has is shown


def test_model_audit_example_localizes_the_row(run_block):
    run = run_block(_block("class MyLinear(torch.autograd.Function)"))
    report = run.namespace["report"]
    assert [(b.segment, b.first, b.last) for b in report.blocks] == [("2.weight", (17, 0), (17, 95))]
    assert [name for name, s in report.segments.items() if not s.passed] == ["2.weight"]
    assert "2.weight[17, 0] .. 2.weight[17, 95] (96 values" in run.out


def test_monitor_example_finds_the_too_high_learning_rate(run_block):
    code = _block("from fastgrad.monitor import TrainingMonitor")
    run = run_block(code)
    findings = run.namespace["mon"].diagnose()
    assert [f.kind for f in findings] == ["lr_too_high", "dead_units", "update_ratio_low",
                                          "update_ratio_low"]
    assert findings[0].severity == "error" and "consequence_of" in findings[1].evidence
    printed = run.out.splitlines()
    shown = _shown("from fastgrad.monitor import TrainingMonitor")
    assert len(printed) == len(shown)
    for line, text in zip(printed, shown):
        assert line.startswith(text.split(" ...")[0].split(" (...)")[0]), (line, text)
    # "With lr = 0.1 the same loop prints nothing"
    good = code.replace("lr = 10.0 ", "lr = 0.1  ", 1)
    assert good != code
    assert run_block(good).out == ""
