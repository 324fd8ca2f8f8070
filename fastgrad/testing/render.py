"""Rendering a failed gradient check for pytest: the line of the test that ran it and the report
table, in place of a traceback through fastgrad's internals (``pytest_runtest_makereport``)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = ["GradientCheckFailure", "first_line", "rewrite", "text"]


def text(value: object) -> str:
    """``str(value)``, or a placeholder when its ``__str__`` raises."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def first_line(message: str) -> str:
    """The first line of ``message`` that is not blank, stripped ("" when there is none)."""
    return next((line.strip() for line in message.splitlines() if line.strip()), "")


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
            headline = line.lstrip()  # fastgrad check / Jacobian check / audit FAILED: ...
            tw.line(line, red=headline.startswith("fastgrad ") and " FAILED" in headline)
        tw.line("")
        crash = self.reprcrash
        tw.line(f"{crash.path}:{crash.lineno}: {crash.message}", red=True, bold=True)

    def __str__(self) -> str:
        head = f"    {self.statement}\n\n" if self.statement else ""
        crash = self.reprcrash
        return f"{head}{self.table}\n\n{crash.path}:{crash.lineno}: {crash.message}"


def _summary(report: Any, error: BaseException | None = None) -> str:
    """One line naming what failed, for ``-ra`` and JUnit XML, from any report type.

    ``Report`` and ``JacobianReport`` rows count failed coordinates (``'b1' (3 of 16 checked
    failed)``); an ``AuditReport``'s rows count wrong coordinates (``'b1' (2 of 16 wrong,
    localized)``); without a report (an error raised before one existed) or with another
    object, the error's first line.
    """
    segments = getattr(report, "segments", None) if report is not None else None
    if not isinstance(segments, dict):
        return first_line(str(error)) if error is not None else "gradient check failed"
    failed = [s for s in segments.values() if not getattr(s, "passed", True)]
    if getattr(report, "status", "failed") == "inconclusive":
        # nothing failed: the noise of f (or the budget) left segments unjudged
        return "gradient check inconclusive in " + ", ".join(
            _segment_summary(s, "inconclusive") for s in failed)
    if not failed:
        return "gradient check failed"
    return "gradient check failed in " + ", ".join(
        _segment_summary(s, "failed") for s in failed)


def _segment_summary(segment: Any, outcome: str) -> str:
    """``'b1' (3 of 16 checked failed)`` for a check's row, ``'b1' (2 of 16 wrong,
    localized)`` for an audit's (a ``SegmentAudit``: suspects and blocks, no counts checked)."""
    name = getattr(segment, "name", "?")
    if hasattr(segment, "checked"):
        count = getattr(segment, outcome, "?")
        return f"{name!r} ({count} of {segment.checked} checked {outcome})"
    wrong = (getattr(segment, "suspects", 0) or 0) + (getattr(segment, "wrong_in_blocks", 0)
                                                      or 0)
    status = getattr(segment, "status", outcome)
    if wrong:
        return f"{name!r} ({wrong} of {getattr(segment, 'size', '?')} wrong, {status})"
    return f"{name!r} ({status})"


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


def rewrite(item: pytest.Item, call: pytest.CallInfo, report: pytest.TestReport) -> None:
    """Set ``report.longrepr`` to the report table when the phase failed a gradient check."""
    excinfo = call.excinfo
    if excinfo is None or not report.failed or item.config.getoption("fastgrad_traceback"):
        return
    error = _gradient_check_error(excinfo.value)
    if error is not None:
        # built in full before it is assigned: a failure leaves the longrepr untouched
        report.longrepr = _failure(item, excinfo, error)


def _failure(item: pytest.Item, excinfo: pytest.ExceptionInfo,
             error: BaseException) -> GradientCheckFailure:
    check_report = getattr(error, "report", None)
    message = str(error)
    if check_report is None:
        table = message
    else:
        # the drop-ins' message is a sentence, then the table: keep both
        table = str(check_report)
        if table in message:
            table = message
    path, lineno, statement = _test_frame(item, excinfo)
    return GradientCheckFailure(path, lineno, statement, _summary(check_report, error), table)
