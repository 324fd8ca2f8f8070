"""pytest plugin: a failing gradient check reads as its report table, not a traceback.

Installed with fastgrad through the ``pytest11`` entry point (``-p fastgrad.pytest_plugin``
loads it by hand). When a test fails with ``fastgrad.GradientCheckError``, the failure shows the
line of the test that ran the check and the report table (one row per segment, then the worst
coordinates) instead of a traceback through fastgrad's kernels:

    tests/test_layers.py:42: gradient check failed in 'b1' (16 of 16 checked failed)
    fastgrad check FAILED: max rel. error 1.0e+00 over 64 coordinates, 16 failed, ...

Options (``pytest --help`` lists them under "fastgrad gradient checks"):

``--fastgrad-traceback``
    Show pytest's usual traceback for a failed gradient check instead of the report table.
``-p no:fastgrad``
    pytest's own switch: do not load the plugin at all.

Only failures whose exception is a ``fastgrad.GradientCheckError`` (what
``fastgrad.assert_gradients`` and the ``fastgrad.testing`` assertions raise) are rewritten; any
other failure, and a passing test, is reported as pytest reports it. The plugin does not import
fastgrad (nor numba) at pytest start-up: it only looks at exceptions raised after fastgrad was
imported by the tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--fastgrad-traceback`` in the option group "fastgrad gradient checks".

    Parameters
    ----------
    parser : pytest.Parser
        pytest's command-line parser.
    """
    group = parser.getgroup("fastgrad", "fastgrad gradient checks")
    group.addoption(
        "--fastgrad-traceback",
        action="store_true",
        default=False,
        help="show pytest's usual traceback for failed gradient checks instead of the report",
    )


def _gradient_check_error(value: BaseException) -> Any:
    fastgrad = sys.modules.get("fastgrad")  # not imported: the exception cannot be ours
    error_class = getattr(fastgrad, "GradientCheckError", None)
    if error_class is not None and isinstance(value, error_class):
        return value
    return None


@dataclass
class _Crash:
    """What pytest's short summary (``-ra``) and JUnit XML read from a failure."""

    path: str
    lineno: int
    message: str


class GradientCheckFailure:
    """The failure representation (``report.longrepr``) of a test that failed a gradient check.

    Parameters
    ----------
    path : str
        The test file, relative to pytest's root directory.
    lineno : int
        The 1-based line of the statement that ran the check.
    statement : str
        That statement's source ("" when the source is not available).
    summary : str
        One line naming the failing segments, for ``-ra`` and JUnit XML.
    table : str
        The report table (``str(report)``).
    """

    def __init__(self, path: str, lineno: int, statement: str, summary: str, table: str):
        self.reprcrash = _Crash(path, lineno, summary)
        self.statement = statement
        self.table = table

    def toterminal(self, tw: Any) -> None:
        """Write the statement, the table and the location line to pytest's terminal writer.

        Parameters
        ----------
        tw : _pytest._io.TerminalWriter
            pytest's terminal writer (its ``line(text, red=..., bold=...)`` is used).
        """
        if self.statement:
            tw.line(f"    {self.statement}")
        tw.line("")
        for line in self.table.splitlines():
            tw.line(line, red=line.lstrip().startswith("fastgrad check FAILED"))
        tw.line("")
        crash = self.reprcrash
        tw.line(f"{crash.path}:{crash.lineno}: {crash.message}", red=True, bold=True)

    def __str__(self) -> str:
        head = f"    {self.statement}\n\n" if self.statement else ""
        crash = self.reprcrash
        return f"{head}{self.table}\n\n{crash.path}:{crash.lineno}: {crash.message}"


def _summary(report: Any) -> str:
    """``gradient check failed in 'b1' (3 of 16 checked failed), 'W2' (1 of 16 checked failed)``."""
    segments = getattr(report, "segments", {}) or {}
    failed = [s for s in segments.values() if not s.passed]
    if getattr(report, "status", "failed") == "inconclusive":
        # nothing failed: the noise of f left coordinates unjudgeable
        return "gradient check inconclusive in " + ", ".join(
            f"{s.name!r} ({getattr(s, 'inconclusive', '?')} of {getattr(s, 'checked', '?')} "
            f"checked inconclusive)" for s in failed)
    if not failed:
        return "gradient check failed"
    return "gradient check failed in " + ", ".join(
        f"{s.name!r} ({s.failed} of {s.checked} checked failed)" for s in failed
    )


def _test_frame(item: pytest.Item, excinfo: pytest.ExceptionInfo) -> tuple[str, int, str]:
    """The innermost traceback entry in the test's own file: the line that ran the check."""
    entries = list(excinfo.traceback)
    item_path = os.path.abspath(str(getattr(item, "path", "")))
    chosen = None
    for entry in entries:
        if os.path.abspath(str(entry.path)) == item_path:
            chosen = entry
    if chosen is None:
        chosen = next((e for e in reversed(entries) if "fastgrad" not in str(e.path)), entries[-1])
    try:
        statement = str(chosen.statement).strip()
    except Exception:  # source not available
        statement = ""
    try:
        path = os.path.relpath(str(chosen.path), str(item.config.rootpath))
    except ValueError:  # another drive on Windows
        path = str(chosen.path)
    return path, chosen.lineno + 1, statement


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, None]:
    """Replace the traceback of a failed gradient check by its report table.

    Parameters
    ----------
    item : pytest.Item
        The test.
    call : pytest.CallInfo
        The phase's outcome; only a ``fastgrad.GradientCheckError`` in a failing phase is
        rewritten, and nothing is with ``--fastgrad-traceback``.

    Yields
    ------
    None
        Once, while pytest builds the report, whose ``longrepr`` becomes a
        ``GradientCheckFailure``.
    """
    outcome = yield
    report = outcome.get_result()
    excinfo = call.excinfo
    if excinfo is None or not report.failed or item.config.getoption("fastgrad_traceback"):
        return
    error = _gradient_check_error(excinfo.value)
    if error is None:
        return
    check_report = getattr(error, "report", None)
    table = str(check_report) if check_report is not None else str(error)
    path, lineno, statement = _test_frame(item, excinfo)
    report.longrepr = GradientCheckFailure(path, lineno, statement, _summary(check_report), table)
