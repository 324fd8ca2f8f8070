"""Run other projects' gradient-check tests, unchanged, with fastgrad's checker beside torch's.

Each project below is a released package from PyPI whose own test suite calls
``torch.autograd.gradcheck`` (directly, through ``from torch.autograd import gradcheck``, or
through a helper of its own). This script runs a selection of those tests through pytest with
fastgrad's plugin option ``--fastgrad-gradcheck=compare``: every gradcheck call is judged by
torch's checker (the test's outcome stays torch's) and by ``fastgrad.torch.gradcheck``, and the
plugin writes both verdicts and the seconds spent inside each checker to a JSON file
(``--fastgrad-gradcheck-json``). This script collects those files and prints, per project:
calls; torch's verdicts (pass / fail / error); fastgrad's verdicts (pass / pass with a
``GradcheckWarning`` / fail / error); the disagreements; the seconds inside torch's checker and
inside fastgrad's, and their ratio. Then it lists every disagreement with both verdicts and
fastgrad's report.

Which checker runs first on a call matters: the costs of a first use (an op's first backward,
torch's lazy import of sympy on the first ``autograd.grad`` with ``grad_outputs``, 0.3 s) fall
on the first, and the second call of a TorchScript function (kornia's ``find_fundamental``)
compiles it, 0.1 s on the second. By default (``--order both``) each project runs twice, torch's
checker first on every call and then fastgrad's (the plugin's ``--fastgrad-gradcheck-order``
``original-first`` and ``fastgrad-first``), and each call's seconds per checker are the mean of
its two runs: every such cost counts half for each checker. The verdicts shown are the first
run's; a disagreement in either run is listed. ``--order alternate`` (fastgrad's first on every
second call) or a single order runs each project once.

How to run
----------
1. Install the projects beside the installed torch, never changing torch (a constraints file
   keeps pip from replacing it; if pip still wants another torch, leave that project out)::

       echo "torch==2.13.0" > /tmp/torch-pin.txt
       pip install -c /tmp/torch-pin.txt kornia==0.8.3 onnx entmax==1.3 roma==1.6 \\
           torchdiffeq==0.2.5 cvxpylayers==1.1.0 cvxpy==1.8.2 pytorch-wavelets==1.3.0 \\
           PyWavelets py3nvml==0.2.7 "setuptools<81"

   (``onnx`` only because kornia's ``conftest.py`` imports it for pytest's report header;
   ``cvxpy==1.8.2`` because cvxpylayers 1.1.0's tests raise KeyError with cvxpy 1.9;
   ``setuptools<81`` because pytorch-wavelets 1.3.0 imports ``pkg_resources``, and ``py3nvml``
   because its tests import it.)

2. Put each project's tests, taken from its own repository at the commit of the installed
   release, under ``SOURCES/<project>/`` (default SOURCES: ``/work/downstream``). The table
   ``PROJECTS`` below names the repository, the tag or commit and the paths; e.g. for kornia::

       git -C <clone of kornia/kornia> archive v0.8.3 tests testing conftest.py pyproject.toml \\
           | tar -x -C /work/downstream/kornia

   This script downloads nothing; when a project's tests are missing it prints these steps.

   With an editable install of fastgrad and ``PYTHONDONTWRITEBYTECODE=1`` in the environment
   (as on this project's machines), every pytest process compiles fastgrad's modules from
   source, and the ones a check imports on first use (the audit's, ~30 modules, 35-50 ms) are
   timed inside fastgrad's checker; torch's bytecode was compiled when pip installed it. Compile
   fastgrad's once, as a regular ``pip install`` does::

       python -m compileall -q fastgrad

3. Run it (from the repository root)::

       python benchmarks/downstream/run.py                      # all projects, full selections
       python benchmarks/downstream/run.py --quick              # a few test files per project
       python benchmarks/downstream/run.py --projects roma,entmax --json /tmp/downstream.json
       python benchmarks/downstream/run.py --baseline           # also time plain pytest

   Other options: ``--sources DIR``, ``--timeout SECONDS`` (per project), ``--keep DIR`` (keep
   each project's plugin JSON and pytest output there), ``--pytest-arg ARG`` (repeatable, passed
   to every pytest run), ``--show-warnings`` (also list fastgrad's passes with a warning).
   On a 2-core machine the compare runs of the full selections take about 10 minutes per order
   when it is otherwise idle (20 with the default ``--order both``; pytorch_wavelets is most of
   it; plain pytest: kornia ~2 min, entmax ~1, roma, torchdiffeq ~0.5 each, cvxpylayers ~0.3)
   and more when it is shared (``--baseline`` adds the plain runs); ``--quick`` takes 2-4
   minutes per order. Seconds inside the checkers are the ones to compare: wall
   times move with the machine's load.

The selections (``args``/``keyword``) are the projects' tests that call gradcheck, minus a few
that take minutes each (named in ``notes``). pytest runs in the project's folder with
``-p no:cacheprovider --color=no -o addopts=`` (the last only drops the project's own verbosity
and colour options); nothing in the projects' tests is changed. One project's selection
loads a plugin of this folder: pytorch_wavelets marks all its gradient checks ``skip`` as too
slow, and ``-p run_skipped`` drops that mark at collection (nothing else).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from fastgrad.testing.routing import ORDERS  # the plugin's --fastgrad-gradcheck-order values

# --order both: each project runs in these two orders, and each call's seconds are the mean
BOTH_ORDERS = ("original-first", "fastgrad-first")

# --------------------------------------------------------------------------- the projects
#
# | project     | pip requirement    | repository           | tag    | commit       | tests taken          |
# |-------------|--------------------|----------------------|--------|--------------|----------------------|
# | kornia      | kornia==0.8.3      | kornia/kornia        | v0.8.3 | d6bb4bf0d8a0 | tests testing        |
# |             | (+ onnx)           |                      |        |              | conftest.py          |
# |             |                    |                      |        |              | pyproject.toml       |
# | entmax      | entmax==1.3        | deep-spin/entmax     | v1.3   | 4a9eb7f1a299 | entmax/test_*.py     |
# |             |                    |                      |        |              | -> tests/            |
# | roma        | roma==1.6          | naver/roma           | v1.6.0 | cc40b10df185 | test                 |
# | torchdiffeq | torchdiffeq==0.2.5 | rtqichen/torchdiffeq | (none) | a88aac53cae7 | tests                |
# | cvxpylayers | cvxpylayers==1.1.0 | cvxpy/cvxpylayers    | v1.1.0 | bb74e4b29083 | tests pyproject.toml |
# |             | (+ cvxpy==1.8.2)   |                      |        |              |                      |
# | pytorch_    | pytorch-wavelets== | fbcotter/            | (none) | 9a0c507f04f4 | tests                |
# | wavelets    | 1.3.0 (+ PyWavelets| pytorch_wavelets     |        |              |                      |
# |             | py3nvml, setuptools<81)                   |        |              |                      |
#
# How each test suite reaches gradcheck:
#   kornia       testing/base.py BaseTester.gradcheck (`from torch.autograd import gradcheck`,
#                fast_mode=True unless the test says otherwise), from ~450 test_gradcheck methods
#   entmax       `from torch.autograd import gradcheck` in test_losses, test_root_finding, test_topk
#   roma         torch.autograd.gradcheck in test/test_procrustes_derivatives.py (custom Functions,
#                one call with check_forward_ad=True)
#   torchdiffeq  torch.autograd.gradcheck in tests/gradient_tests.py and tests/api_tests.py
#                (odeint and odeint_adjoint, in unittest subTests)
#   cvxpylayers  torch.autograd.gradcheck in tests/test_torch.py (15 tests) and
#                tests/test_dual_variables.py (10 tests): implicit differentiation of convex programs
#   pytorch_wavelets  `from torch.autograd import gradcheck` in tests/test_dwt_grad.py and
#                tests/test_scatnet_bwd.py, full mode, on custom autograd Functions; every one
#                marked skip as too slow, run with the run_skipped plugin of this folder
#
# Selections, pytest arguments and notes: the PROJECTS tuple below (`run.py --list` prints them).


@dataclass(frozen=True)
class Project:
    """One downstream project: how to install it, where its tests come from, what to run."""

    name: str
    requirement: str  # pip requirement of the release whose tests are run
    extra_requirements: tuple[str, ...]  # what its test set-up needs besides pytest
    repository: str  # owner/name of its source repository
    ref: str  # tag (or commit) matching the release
    commit: str  # the commit that ref names
    archive: tuple[str, ...]  # paths given to `git archive ref ...`
    layout_note: str  # how the archive is laid under SOURCES/<name>
    args: tuple[str, ...]  # pytest arguments (files or node ids), relative to SOURCES/<name>
    keyword: str | None  # pytest -k expression, or None
    quick_args: tuple[str, ...]
    quick_keyword: str | None
    extra_pytest: tuple[str, ...] = ()  # e.g. --ignore / --deselect
    notes: str = ""
    gradcheck_files: tuple[str, ...] = field(default=())  # test files that call gradcheck
    # pytest plugins of this folder loaded with -p (run_skipped: the project's skip marks off)
    plugins: tuple[str, ...] = ()


PROJECTS: tuple[Project, ...] = (
    Project(
        name="kornia",
        requirement="kornia==0.8.3",
        extra_requirements=("onnx",),
        repository="kornia/kornia",
        ref="v0.8.3",
        commit="d6bb4bf0d8a043c2bb8cef0c346a1b006d100930",
        archive=("tests", "testing", "conftest.py", "pyproject.toml"),
        layout_note="git archive v0.8.3 tests testing conftest.py pyproject.toml | tar -x -C SOURCES/kornia",
        args=("tests",),
        keyword="gradcheck and not TestExtractPatchesSimple and not TestALIKED",
        quick_args=(
            "tests/color/test_rgb.py",
            "tests/geometry/test_conversions.py",
            "tests/enhance/test_adjust.py",
            "tests/geometry/epipolar/test_fundamental.py",
        ),
        quick_keyword="gradcheck",
        extra_pytest=(
            "--ignore=tests/integration",  # needs transformers models
            "--ignore=tests/onnx",  # needs onnxruntime
            "--ignore=tests/models",  # SigLip2, SAM3, ...: a minute per gradcheck
        ),
        notes=(
            "most checks go through testing/base.py BaseTester.gradcheck, which imports "
            "gradcheck with `from torch.autograd import gradcheck` and passes fast_mode=True "
            "unless a test asks fast_mode=False; TestExtractPatchesSimple (100 s, fast_mode=False) "
            "and TestALIKED (12 s) are left out, as are tests/models, tests/integration, tests/onnx"
        ),
        gradcheck_files=("testing/base.py (helper)", "149 files under tests/ (test_gradcheck methods)"),
    ),
    Project(
        name="entmax",
        requirement="entmax==1.3",
        extra_requirements=(),
        repository="deep-spin/entmax",
        ref="v1.3",
        commit="4a9eb7f1a29920bf0aebfe3ad04f6d2ef44d3df7",
        archive=("entmax",),
        layout_note=(
            "git archive v1.3 entmax | tar -x -C /tmp && cp /tmp/entmax/test_*.py SOURCES/entmax/tests/ "
            "(the tests live inside the package; copied out so that `import entmax` is the installed release)"
        ),
        args=(
            "tests/test_losses.py::test_loss",
            "tests/test_root_finding.py",
            "tests/test_topk.py::test_mapping",
        ),
        keyword="grad or test_loss or test_mapping",
        quick_args=("tests/test_root_finding.py",),
        quick_keyword="grad",
        notes=(
            "bisection-based entmax/sparsemax/normmax/budget with custom autograd Functions; "
            "inputs are unseeded random tensors, and test_budget_grad_multiple_k was seen failing "
            "under torch's checker in one of two plain runs"
        ),
        gradcheck_files=("tests/test_losses.py", "tests/test_root_finding.py", "tests/test_topk.py"),
    ),
    Project(
        name="roma",
        requirement="roma==1.6",
        extra_requirements=(),
        repository="naver/roma",
        ref="v1.6.0",
        commit="cc40b10df18520d07d370ef523f674f4e48d3814",
        archive=("test",),
        layout_note="git archive v1.6.0 test | tar -x -C SOURCES/roma",
        args=(
            "test/test_procrustes_derivatives.py::TestProcrustesDerivatives::test_derivatives",
            "test/test_procrustes_derivatives.py::TestProcrustesForwardDerivatives::test_gradcheck",
        ),
        keyword=None,
        quick_args=("test/test_procrustes_derivatives.py::TestProcrustesForwardDerivatives::test_gradcheck",),
        quick_keyword=None,
        notes=(
            "Procrustes / special Procrustes through an SVD with a custom autograd Function; "
            "test_gradcheck also asks check_forward_ad=True"
        ),
        gradcheck_files=("test/test_procrustes_derivatives.py",),
    ),
    Project(
        name="torchdiffeq",
        requirement="torchdiffeq==0.2.5",
        extra_requirements=(),
        repository="rtqichen/torchdiffeq",
        ref="a88aac53cae738addee44251288ce5be9a018af3",
        commit="a88aac53cae738addee44251288ce5be9a018af3",
        archive=("tests",),
        layout_note=(
            "git archive a88aac53cae738addee44251288ce5be9a018af3 tests | tar -x -C SOURCES/torchdiffeq "
            "(the repository has no tags; this is the commit that set the version to 0.2.5)"
        ),
        args=(
            "tests/gradient_tests.py::TestGradient::test_odeint",
            "tests/gradient_tests.py::TestGradient::test_adjoint",
            "tests/api_tests.py::TestCollectionState::test_gradient",
        ),
        keyword=None,
        quick_args=("tests/api_tests.py::TestCollectionState::test_gradient",),
        quick_keyword=None,
        notes=(
            "ODE solvers differentiated through the solver and through the adjoint method "
            "(a custom autograd Function solving the adjoint ODE backwards); each test loops "
            "over methods in unittest subTests"
        ),
        gradcheck_files=("tests/gradient_tests.py", "tests/api_tests.py"),
    ),
    Project(
        name="cvxpylayers",
        requirement="cvxpylayers==1.1.0",
        extra_requirements=("cvxpy==1.8.2",),
        repository="cvxpy/cvxpylayers",
        ref="v1.1.0",
        commit="bb74e4b2908355bfff1e5b52406fabf360cc804b",
        archive=("tests", "pyproject.toml"),
        layout_note="git archive v1.1.0 tests pyproject.toml | tar -x -C SOURCES/cvxpylayers",
        args=tuple(
            f"tests/test_torch.py::{t}" for t in (
                "test_simple_batch_socp", "test_logistic_regression", "test_entropy_maximization",
                "test_lml", "test_sdp", "test_shared_parameter", "test_equality", "test_basic_gp",
                "test_batched_gp", "test_gp_without_param_values", "test_gp_reversed_parameter_order",
                "test_quad_form_psd_gradcheck_q", "test_quad_form_psd_gradcheck_Q",
                "test_quad_form_sum_of_parameters_gradcheck",
                "test_quad_form_negated_parameter_gradcheck",
            )
        ) + tuple(
            f"tests/test_dual_variables.py::{t}" for t in (
                "test_dual_gradcheck_equality", "test_dual_gradcheck_inequality",
                "test_dual_gradcheck_mixed", "test_dual_gradcheck_vector_equality",
                "test_soc_gradcheck", "test_exp_cone_gradcheck", "test_pow_cone_gradcheck",
                "test_psd_gradcheck", "test_gp_dual_gradcheck", "test_soc_explicit_multi_dual_gradcheck",
            )
        ),
        keyword=None,
        quick_args=("tests/test_dual_variables.py",),
        quick_keyword="gradcheck",
        notes=(
            "implicit differentiation of convex programs (diffcp, SCS/Clarabel) in a custom autograd "
            "Function; several checks pass float32 inputs with atol 1e-4..1e-3. cvxpy is pinned to "
            "1.8.2: with cvxpy 1.9.3 a dozen tests raise KeyError in cvxpylayers' parse_args. "
            "With cvxpy 1.8.2, diffcp 1.1.9, scs 3.3.1, torch's checker fails three of these tests "
            "(test_sdp, test_dual_gradcheck_inequality, test_dual_gradcheck_vector_equality)"
        ),
        gradcheck_files=("tests/test_torch.py", "tests/test_dual_variables.py"),
    ),
    Project(
        name="pytorch_wavelets",
        requirement="pytorch-wavelets==1.3.0",
        extra_requirements=("PyWavelets", "py3nvml==0.2.7", "setuptools<81"),
        repository="fbcotter/pytorch_wavelets",
        ref="9a0c507f04f43c5397e384bb6be8340169b2fd9a",
        commit="9a0c507f04f43c5397e384bb6be8340169b2fd9a",
        archive=("tests",),
        layout_note=(
            "git archive 9a0c507f04f43c5397e384bb6be8340169b2fd9a tests | tar -x -C "
            "SOURCES/pytorch_wavelets (no tag for 1.3.0: the PyPI wheel's package is this "
            "commit's, file for file)"
        ),
        args=(
            "tests/test_dwt_grad.py",
            "tests/test_scatnet_bwd.py::test_grad_scat",
            "tests/test_scatnet_bwd.py::test_grad_scat_colour",
            "tests/test_scatnet_bwd.py::test_grad_mag",
            "tests/test_scatnet_bwd.py::test_grad_odd_size",
        ),
        keyword=None,
        quick_args=("tests/test_dwt_grad.py", "tests/test_scatnet_bwd.py::test_grad_mag"),
        quick_keyword=None,
        notes=(
            "full-Jacobian checks (fast_mode off) of hand-written backward passes: the wavelet "
            "filter banks (AFB2D, SFB2D) and the scattering layer's custom Functions on "
            "3 x 32 x 32 images. The project skips all of them as too slow; the run_skipped "
            "plugin runs them. Left out: test_dtcwt_grad.py (its tests raise NameError on "
            "o_dim before any check) and the ScatLayerj2 tests of test_scatnet_bwd.py (minutes "
            "each). The release imports pkg_resources (setuptools<81) and the tests import "
            "py3nvml (a GPU library; nothing of it runs on the CPU)"
        ),
        gradcheck_files=("tests/test_dwt_grad.py", "tests/test_scatnet_bwd.py"),
        plugins=("run_skipped",),
    ),
)

BY_NAME = {p.name: p for p in PROJECTS}
HERE = Path(__file__).resolve().parent

COMMON_PYTEST = ("-p", "no:cacheprovider", "--color=no", "-o", "addopts=", "-q")


# --------------------------------------------------------------------------- the plugin's JSON

_PASS = {"pass", "passed", "ok", "true", "success"}
_WARN = {"pass with warning", "pass-with-warning", "pass_with_warning", "warn", "warning"}
_FAIL = {"fail", "failed", "false", "failure"}
_ERROR = {"error", "errored", "raised", "exception"}


def _first(d: dict, *names: str, default: Any = None) -> Any:
    for n in names:
        if n in d:
            return d[n]
    return default


def _verdict(side: dict | None, *, fastgrad: bool) -> str:
    """One checker's verdict as 'pass', 'warn' (fastgrad only), 'fail', 'error' or 'missing'."""
    if not side:
        return "missing"
    raw = _first(side, "verdict", "outcome", "result", "status", "passed")
    v = str(raw).strip().lower()
    warnings = _first(side, "warnings", "warning", default=None) or []
    if v in _WARN:
        return "warn" if fastgrad else "pass"
    if v in _PASS:
        return "warn" if fastgrad and warnings else "pass"
    if v in _FAIL:
        return "fail"
    if v in _ERROR or v.startswith("error"):  # the plugin writes "error: <Type>: <first line>"
        return "error"
    return v or "missing"


def _message(side: dict | None) -> str:
    if not side:
        return ""
    m = _first(side, "message", "report", "table", "error", default="") or ""
    return m if isinstance(m, str) else json.dumps(m, indent=1)


def _warnings(side: dict | None) -> list[str]:
    if not side:
        return []
    w = _first(side, "warnings", "warning", default=None) or []
    if isinstance(w, str):
        return [w]
    return [x if isinstance(x, str) else json.dumps(x) for x in w]


def _seconds(side: dict | None) -> float:
    if not side:
        return 0.0
    s = _first(side, "seconds", "time", "elapsed", "duration", default=0.0)
    try:
        return float(s or 0.0)
    except (TypeError, ValueError):
        return 0.0


def normalize_call(call: dict) -> dict:
    """One call of the plugin's JSON, in this script's own field names."""
    original = _first(call, "original", "torch", "reference")
    fast = _first(call, "fastgrad", "fast", "candidate")
    tv = _verdict(original, fastgrad=False)
    fv = _verdict(fast, fastgrad=True)
    agree = call.get("agree")
    if agree is None and fast is not None and original is not None:
        # the plugin's rule: the same kind of verdict (pass, fail, error); a warning is a pass
        agree = tv == {"warn": "pass"}.get(fv, fv)
    return {
        "nodeid": _first(call, "node", "nodeid", "test", default="?") or "(outside tests)",
        "checker": _first(call, "checker", "function", "kind", default="gradcheck"),
        "fast_mode": bool(_first(call, "fast_mode", default=False)),  # None: torch's default False
        "fallback": call.get("fallback"),  # fastgrad's drop-in did not take the call: why
        "torch_verdict": tv,
        "fastgrad_verdict": "fallback" if call.get("fallback") and fast is None else fv,
        "torch_verdict_text": str(_first(original or {}, "verdict", default="")),
        "fastgrad_verdict_text": str(_first(fast or {}, "verdict", default="")),
        "torch_seconds": _seconds(original),
        "fastgrad_seconds": _seconds(fast),
        "torch_collector_seconds": float((original or {}).get("collector_seconds") or 0.0),
        "fastgrad_collector_seconds": float((fast or {}).get("collector_seconds") or 0.0),
        "torch_message": _message(original),
        "fastgrad_message": _message(fast),
        "fastgrad_warnings": _warnings(fast),
        "disagree": agree is False,
    }


# --------------------------------------------------------------------------- running pytest


def installed_version(requirement: str) -> str | None:
    name = re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0]
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing_sources(project: Project, root: Path) -> list[str]:
    """The selection's paths that are not under root (empty when all are there)."""
    missing = []
    for a in project.args + project.quick_args:
        path = a.split("::", 1)[0]
        if not (root / path).exists():
            missing.append(path)
    return sorted(set(missing))


def how_to_obtain(project: Project, root: Path) -> str:
    return (
        f"  {project.name}: tests not found under {root}\n"
        f"    install: pip install -c /tmp/torch-pin.txt {project.requirement}"
        + "".join(f" {r}" for r in project.extra_requirements)
        + "   (with torch==2.13.0 in /tmp/torch-pin.txt)\n"
        f"    tests:   repository {project.repository} (GitHub) at {project.ref}"
        f" (commit {project.commit}):\n"
        f"             mkdir -p {root} && cd <bare clone or mirror> && "
        f"{project.layout_note.replace('SOURCES', str(root.parent))}\n"
    )


def plugin_has_compare(extra: list[str]) -> bool:
    """Whether pytest (with fastgrad's plugin, and any extra -p) offers --fastgrad-gradcheck."""
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *extra, "--help"],
            cwd=d, capture_output=True, text=True, timeout=300,
        )
    return "--fastgrad-gradcheck" in r.stdout


_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed"
                      r"|subtests passed|subtests failed)")


def pytest_summary(output: str) -> dict[str, int]:
    """The counts of pytest's closing line ('12 passed, 1 failed, 3 deselected in 4.5s')."""
    counts: dict[str, int] = {}
    for line in reversed(output.splitlines()):
        if re.search(r"\bin [\d.]+s\b", line) and _SUMMARY.search(line):
            for n, what in _SUMMARY.findall(line):
                counts[what.rstrip("s") if what.startswith("error") else what] = int(n)
            break
    return counts


def run_pytest(cmd: list[str], cwd: Path, timeout: float, log: Path) -> tuple[int, float, str, bool]:
    """Run pytest in its own process group; on timeout interrupt it (so it still writes its JSON)."""
    t0 = time.perf_counter()
    # this folder on the path: the projects' ``plugins`` (run_skipped) live here
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p))
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGINT)  # pytest stops, runs its unconfigure hooks
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    wall = time.perf_counter() - t0
    return rc, wall, log.read_text(errors="replace"), timed_out


def selection(project: Project, quick: bool) -> list[str]:
    args = list(project.quick_args if quick else project.args)
    keyword = project.quick_keyword if quick else project.keyword
    sel = [*(a for name in project.plugins for a in ("-p", name)), *project.extra_pytest, *args]
    if keyword:
        sel += ["-k", keyword]
    return sel


def run_project(project: Project, root: Path, args: argparse.Namespace, workdir: Path) -> dict:
    sel = selection(project, args.quick)
    result: dict[str, Any] = {
        "project": project.name,
        "requirement": project.requirement,
        "installed": installed_version(project.requirement),
        "repository": project.repository,
        "ref": project.ref,
        "commit": project.commit,
        "selection": sel,
        "quick": args.quick,
    }
    if args.baseline:
        cmd = [sys.executable, "-m", "pytest", *COMMON_PYTEST, *args.pytest_arg, *sel]
        log = workdir / f"{project.name}.plain.txt"
        rc, wall, out, to = run_pytest(cmd, root, args.timeout, log)
        result["plain"] = {"command": cmd, "returncode": rc, "wall_seconds": wall,
                           "pytest": pytest_summary(out), "timed_out": to}
        print(f"  plain pytest: rc={rc} {wall:.1f}s {pytest_summary(out)}", flush=True)

    orders = BOTH_ORDERS if args.order == "both" else (args.order,)
    runs = []
    for order in orders:
        suffix = f".{order}" if len(orders) > 1 else ""
        json_path = workdir / f"{project.name}{suffix}.json"
        if json_path.exists():
            json_path.unlink()
        cmd = [sys.executable, "-m", "pytest", *COMMON_PYTEST, *args.pytest_arg,
               "--fastgrad-gradcheck=compare", f"--fastgrad-gradcheck-order={order}",
               "--fastgrad-gradcheck-json", str(json_path), *sel]
        log = workdir / f"{project.name}{suffix}.compare.txt"
        print(f"  cd {root} && {' '.join(_quote(c) for c in cmd)}", flush=True)
        rc, wall, out, to = run_pytest(cmd, root, args.timeout, log)
        run: dict[str, Any] = dict(order=order, command=cmd, returncode=rc, wall_seconds=wall,
                                   timed_out=to, pytest=pytest_summary(out))
        if rc not in (0, 1) or not json_path.exists():
            run["pytest_tail"] = "\n".join(out.splitlines()[-30:])
        raw: dict = {}
        if json_path.exists():
            raw = json.loads(json_path.read_text())
        run["calls"] = [normalize_call(c) for c in (raw.get("calls", []) if isinstance(raw, dict)
                                                    else raw)]
        run["plugin_summary"] = raw.get("summary") if isinstance(raw, dict) else None
        print(f"  pytest: rc={rc} {wall:.1f}s {run['pytest']}; {len(run['calls'])} checker calls"
              + (" (TIMED OUT)" if to else ""), flush=True)
        runs.append(run)
    first = runs[0]
    result.update({k: first[k] for k in ("command", "returncode", "timed_out", "pytest",
                                         "plugin_summary") if k in first})
    result["wall_seconds"] = sum(r["wall_seconds"] for r in runs)
    if any("pytest_tail" in r for r in runs):
        result["pytest_tail"] = "\n".join(r.get("pytest_tail", "") for r in runs)
    result["runs"] = [{k: v for k, v in r.items() if k != "calls"} for r in runs]
    result["calls"] = (first["calls"] if len(runs) == 1
                       else paired(first["calls"], runs[1]["calls"], result))
    result["totals"] = totals(result["calls"])
    return result


def paired(first: list[dict], second: list[dict], result: dict) -> list[dict]:
    """The calls of two runs in opposite orders (``BOTH_ORDERS``), one per call: each
    checker's seconds the mean of its two runs' (so a cost that lands on whichever checker
    goes first, or second, counts half for each), the first run's verdicts, and a
    disagreement when either run had one (its verdicts and messages then shown). Runs whose
    calls do not pair up (another number, or other tests in another order) are both kept,
    their seconds halved, and ``result["unpaired"]`` says so."""
    seconds = ("torch_seconds", "fastgrad_seconds", "torch_collector_seconds",
               "fastgrad_collector_seconds")
    if len(first) != len(second) or any(a["nodeid"] != b["nodeid"] for a, b in zip(first, second)):
        result["unpaired"] = (f"the runs' calls do not pair up ({len(first)} and "
                              f"{len(second)}): both kept, each call's seconds halved")
        out = []
        for c in first + second:
            c = dict(c)
            for k in seconds:
                c[k] /= 2
            out.append(c)
        return out
    out = []
    result["verdicts_changed"] = 0
    for a, b in zip(first, second):
        c = dict(a)
        for k in seconds:
            c[k] = (a[k] + b[k]) / 2
        if (a["torch_verdict"], a["fastgrad_verdict"]) != (b["torch_verdict"],
                                                          b["fastgrad_verdict"]):
            result["verdicts_changed"] += 1  # a random input: the runs drew different ones
        if b["disagree"] and not a["disagree"]:
            for k in ("torch_verdict", "fastgrad_verdict", "torch_verdict_text",
                      "fastgrad_verdict_text", "torch_message", "fastgrad_message",
                      "fastgrad_warnings"):
                c[k] = b[k]
            c["disagree"] = True
            c["disagree_run"] = 2
        out.append(c)
    return out


def _quote(s: str) -> str:
    return s if re.fullmatch(r"[\w./:=,+-]+", s) else "'" + s.replace("'", "'\\''") + "'"


def totals(calls: list[dict]) -> dict:
    t = {"calls": len(calls), "fast_mode_calls": sum(c["fast_mode"] for c in calls),
         "gradgradcheck_calls": sum(c["checker"] == "gradgradcheck" for c in calls)}
    for v in ("pass", "fail", "error", "missing"):
        t[f"torch_{v}"] = sum(c["torch_verdict"] == v for c in calls)
    for v in ("pass", "warn", "fail", "error", "fallback", "missing"):
        t[f"fastgrad_{v}"] = sum(c["fastgrad_verdict"] == v for c in calls)
    t["disagreements"] = sum(c["disagree"] for c in calls)
    t["torch_seconds"] = sum(c["torch_seconds"] for c in calls)
    t["fastgrad_seconds"] = sum(c["fastgrad_seconds"] for c in calls)
    for side in ("torch", "fastgrad"):  # full garbage collections, not in the seconds above
        t[f"{side}_collector_seconds"] = sum(c.get(f"{side}_collector_seconds", 0.0)
                                             for c in calls)
    both = [c for c in calls if c["fastgrad_verdict"] not in ("fallback", "missing")]
    t["compared"] = len(both)
    t["torch_seconds_compared"] = sum(c["torch_seconds"] for c in both)
    t["fastgrad_seconds_compared"] = sum(c["fastgrad_seconds"] for c in both)
    t["ratio"] = (t["fastgrad_seconds_compared"] / t["torch_seconds_compared"]
                  if t["torch_seconds_compared"] else float("nan"))
    return t


# --------------------------------------------------------------------------- printing


def print_table(results: list[dict]) -> None:
    head = ("project", "tests p/f/s", "calls", "fast", "torch P/F/E", "fastgrad P/W/F/E",
            "fallback", "disagree", "torch s", "fastgrad s", "ratio", "full GC s", "wall s")
    rows = []
    grand = totals([c for r in results for c in r.get("calls", [])])
    for r in results + [{"project": "TOTAL", "totals": grand, "pytest": {}, "wall_seconds":
                         sum(x.get("wall_seconds", 0.0) for x in results)}]:
        t = r.get("totals") or totals([])
        p = r.get("pytest") or {}
        tests = (f"{p.get('passed', 0)}/{p.get('failed', 0) + p.get('error', 0)}/{p.get('skipped', 0)}"
                 if r["project"] != "TOTAL" else "")
        if r.get("skipped_reason"):
            rows.append((r["project"], *["-"] * (len(head) - 2), r["skipped_reason"]))
            continue
        rows.append((
            r["project"], tests, str(t["calls"]), str(t["fast_mode_calls"]),
            f"{t['torch_pass']}/{t['torch_fail']}/{t['torch_error']}",
            f"{t['fastgrad_pass']}/{t['fastgrad_warn']}/{t['fastgrad_fail']}/{t['fastgrad_error']}",
            str(t["fastgrad_fallback"]), str(t["disagreements"]),
            f"{t['torch_seconds']:.2f}", f"{t['fastgrad_seconds']:.2f}",
            f"{t['ratio']:.2f}",
            f"{t['torch_collector_seconds']:.2f}/{t['fastgrad_collector_seconds']:.2f}",
            f"{r.get('wall_seconds', 0.0):.0f}",
        ))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(head))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        if row[0] == "TOTAL":
            print("  ".join("-" * w for w in widths))
        print(line(row))
    print("tests p/f/s: pytest's passed/failed/skipped (outcome is torch's); fast: calls with "
          "fast_mode=True; P/W/F/E: pass / pass with GradcheckWarning / fail / error; "
          "fallback: calls fastgrad's drop-in does not accept (torch's checker only); "
          "disagree: verdicts of another kind (pass / fail / error); "
          "s: seconds inside each checker (fallbacks: torch's only), without the full garbage "
          "collections that ran meanwhile; ratio: fastgrad s / torch s over the calls both ran; "
          "full GC s: those collections (torch/fastgrad), whose cost is the whole heap's and "
          "which land on whichever checker allocates at the threshold; wall s: the pytest run")


def print_disagreements(results: list[dict], show_warnings: bool) -> None:
    any_ = False
    for r in results:
        for c in r.get("calls", []):
            if not c["disagree"]:
                continue
            any_ = True
            run = " (in the second run)" if c.get("disagree_run") == 2 else ""
            print(f"\n### {r['project']}: {c['nodeid']} ({c['checker']}, "
                  f"fast_mode={c['fast_mode']}){run}")
            tv = c["torch_verdict_text"] or c["torch_verdict"]
            fv = c["fastgrad_verdict_text"] or c["fastgrad_verdict"]
            print(f"torch: {tv} ({c['torch_seconds']:.3f}s)  fastgrad: {fv} ({c['fastgrad_seconds']:.3f}s)")
            if c["torch_message"]:
                print("--- torch's message:")
                print(_clip(c["torch_message"], 3000))
            if c["fastgrad_message"]:
                print("--- fastgrad's report:")
                print(_clip(c["fastgrad_message"], 6000))
            for w in c["fastgrad_warnings"]:
                print("--- fastgrad's warning:")
                print(_clip(w, 3000))
    if not any_:
        print("\n(no disagreements)")
    for r in results:
        for c in r.get("calls", []):
            if c["fallback"]:
                print(f"fallback, {r['project']}: {c['nodeid']} ({c['checker']}): {c['fallback']}")
    if show_warnings:
        for r in results:
            for c in r.get("calls", []):
                if c["fastgrad_verdict"] == "warn" and not c["disagree"]:
                    print(f"\n### warning only, {r['project']}: {c['nodeid']} (torch {c['torch_verdict']})")
                    for w in c["fastgrad_warnings"]:
                        print(_clip(w, 2000))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters)"


# --------------------------------------------------------------------------- main


def uncompiled_fastgrad() -> int:
    """How many of fastgrad's modules pytest processes will compile from source (no cached
    bytecode and none written: PYTHONDONTWRITEBYTECODE); 0 when bytecode is written or there."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return 0
    import importlib.util

    spec = importlib.util.find_spec("fastgrad")
    if spec is None or not spec.submodule_search_locations:
        return 0
    root = Path(list(spec.submodule_search_locations)[0])
    return sum(1 for source in root.rglob("*.py")
               if not Path(importlib.util.cache_from_source(str(source))).exists())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", default="/work/downstream", help="folder holding <project>/ test trees")
    ap.add_argument("--projects", default=",".join(BY_NAME),
                    help="comma-separated subset of: " + ", ".join(BY_NAME))
    ap.add_argument("--quick", action="store_true", help="a few test files per project")
    ap.add_argument("--json", metavar="OUT", help="write the combined result here")
    ap.add_argument("--baseline", action="store_true", help="also run each selection with plain pytest first")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per pytest run (default 1800)")
    ap.add_argument("--keep", metavar="DIR", help="keep the plugin's JSON and pytest's output here")
    ap.add_argument("--pytest-arg", action="append", default=[], metavar="ARG", help="extra pytest argument")
    ap.add_argument("--show-warnings", action="store_true", help="also list fastgrad passes with a warning")
    ap.add_argument("--order", choices=(*ORDERS, "both"), default="both",
                    help="which checker runs first on a call; 'both' (default): each project twice, "
                         "torch's first on every call, then fastgrad's, each call's seconds the "
                         "mean of the two")
    ap.add_argument("--list", action="store_true",
                    help="print the projects and their selections, run nothing")
    args = ap.parse_args(argv)

    names = [n.strip() for n in args.projects.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown project(s) {unknown}; known: {', '.join(BY_NAME)}")
    sources = Path(args.sources)

    if args.list:
        for n in names:
            p = BY_NAME[n]
            print(f"{p.name}: {p.requirement} ({p.repository} @ {p.ref}), installed "
                  f"{installed_version(p.requirement)}\n"
                  f"  selection: {' '.join(map(_quote, selection(p, args.quick)))}"
                  f"\n  notes: {p.notes}")
        return 0

    ready: dict[str, str | None] = {}  # project -> why it cannot run (None: it can)
    for n in names:
        p = BY_NAME[n]
        root = sources / p.name
        have = installed_version(p.requirement)
        if have is None or missing_sources(p, root):
            print(f"== {p.name}: {'not installed' if have is None else 'tests missing'}; to obtain it:")
            print(how_to_obtain(p, root), flush=True)
            ready[n] = "not installed" if have is None else "tests missing"
        else:
            ready[n] = None
    if not any(v is None for v in ready.values()):
        return 2
    if not plugin_has_compare(args.pytest_arg):
        print("pytest has no --fastgrad-gradcheck option: fastgrad's pytest plugin "
              "(fastgrad/testing/plugin.py, entry point pytest11) is not installed or too old.",
              file=sys.stderr)
        return 2

    uncompiled = uncompiled_fastgrad()
    if uncompiled:
        print(f"note: {uncompiled} of fastgrad's modules have no bytecode and "
              "PYTHONDONTWRITEBYTECODE is set: every pytest process compiles them, and the time "
              "of those a check imports on first use counts as fastgrad's (`python -m "
              "compileall -q fastgrad` compiles them once, as pip install does)", flush=True)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fastgrad-downstream-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in names:
        p = BY_NAME[n]
        if ready[n] is not None:
            results.append({"project": p.name, "skipped_reason": ready[n]})
            continue
        print(f"== {p.name} ({p.requirement}, {p.repository} @ {p.ref})", flush=True)
        have = installed_version(p.requirement)
        want = p.requirement.split("==", 1)[1]
        if have != want:
            print(f"  note: {p.name} {have} is installed; its tests are those of {want}", flush=True)
        results.append(run_project(p, root=sources / p.name, args=args, workdir=workdir))

    print()
    print_table(results)
    for r in results:
        if r.get("unpaired"):
            print(f"{r['project']}: {r['unpaired']}")
        if r.get("verdicts_changed"):
            print(f"{r['project']}: {r['verdicts_changed']} call(s) had other verdicts in the "
                  "second run (random inputs; the table counts the first run's)")
    print_disagreements(results, args.show_warnings)
    for r in results:
        if r.get("pytest_tail"):
            print(f"\n### {r['project']}: pytest exited {r['returncode']}; its last lines:")
            print(r["pytest_tail"])
    if args.json:
        meta = {"python": sys.version.split()[0], "torch": installed_version("torch"),
                "fastgrad": installed_version("fastgrad"), "quick": args.quick, "order": args.order,
                "fastgrad_modules_uncompiled": uncompiled}
        Path(args.json).write_text(json.dumps({"meta": meta, "projects": results}, indent=1))
        print(f"\nwrote {args.json}")
    if not args.keep:
        print(f"(plugin JSON and pytest output in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
