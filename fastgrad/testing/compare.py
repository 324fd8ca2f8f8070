"""The record of routed gradient checks: each checker's outcome (verdict, time, what it
returned or raised), per call; the summary of a session and its JSON (compare mode lists every
disagreement)."""

from __future__ import annotations

import gc
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .render import first_line, text

__all__ = ["CallLog", "FullCollections", "Outcome", "run_checker"]

MESSAGE_LINES = 60  # a disagreement's messages are cut to this many lines


def _cut(message: str, lines: int = MESSAGE_LINES) -> str:
    kept = message.splitlines()
    if len(kept) <= lines:
        return message
    return "\n".join(kept[:lines] + [f"... ({len(kept) - lines} more lines)"])


def _failure_classes() -> tuple[type, ...]:
    """What counts as a failed check (not an error): torch's, fastgrad's and jax's exceptions."""
    classes: list[type] = [AssertionError]  # jax; fastgrad's GradientCheckError is one too
    torch_gradcheck = sys.modules.get("torch.autograd.gradcheck")
    torch_error = getattr(torch_gradcheck, "GradcheckError", None)
    if isinstance(torch_error, type):
        classes.append(torch_error)
    return tuple(classes)


class FullCollections:
    """Seconds the cyclic garbage collector spends in full (generation 2) collections while
    installed (a ``gc.callbacks`` entry). A full collection walks every container object of
    the process, so its cost is the size of the whole heap (a test suite of thousands of
    collected items: 0.2-0.4 s each), not the work of the code that happened to allocate at
    the threshold; timed inside one checker, it decides a comparison by where it lands.
    ``clock``: seconds, as ``time.perf_counter`` (a test passes a scripted one)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.seconds = 0.0
        self._clock = clock
        self._started: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = self._clock()
        elif self._started is not None:
            self.seconds += self._clock() - self._started
            self._started = None

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


@dataclass
class Outcome:
    """One checker's run of a call: its verdict, its time (without the full garbage
    collections that ran meanwhile, which are ``collector_seconds``), and what it returned or
    raised."""

    verdict: str  # pass | pass with warning | fail | error: <ExcType>: <first line>
    seconds: float
    result: Any = None
    error: BaseException | None = None
    warnings: tuple[str, ...] = ()  # first lines of fastgrad's GradcheckWarnings
    caught: tuple = ()  # every warning caught (warnings.WarningMessage), to re-emit
    collector_seconds: float = 0.0  # full (generation 2) garbage collections during the call

    @property
    def kind(self) -> str:
        """pass, fail or error: what two checkers must share to agree."""
        return self.verdict.split(":")[0].split(" ")[0]

    def message(self) -> str:
        if self.error is not None:
            return _cut(text(self.error))
        if self.verdict == "fail":
            return "returned False"
        return "\n".join(self.warnings) if self.warnings else "passed"

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "seconds": self.seconds,
                "collector_seconds": self.collector_seconds, "warnings": list(self.warnings)}

    def returned(self) -> Any:
        """What the call returned, or raise what it raised."""
        if self.error is not None:
            raise self.error
        return self.result


def run_checker(checker: Callable, args: tuple, kwargs: dict, *, catch: bool,
                clock: Callable[[], float] = time.perf_counter) -> Outcome:
    """Call a checker, timed by ``clock`` (full garbage collections apart:
    ``FullCollections``); its exception is kept in the outcome, never raised."""
    caught: list = []
    with FullCollections(clock) as collections:
        start = clock()
        try:
            if catch:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = checker(*args, **kwargs)
            else:
                result = checker(*args, **kwargs)
        except Exception as error:
            seconds = clock() - start - collections.seconds
            if isinstance(error, _failure_classes()):
                verdict = "fail"
            else:
                verdict = f"error: {type(error).__name__}: {first_line(text(error))}"
            return Outcome(verdict, seconds, error=error, caught=tuple(caught),
                           collector_seconds=collections.seconds)
        seconds = clock() - start - collections.seconds
    # imported lazily, and it may not exist yet in an older fastgrad
    warning_class = getattr(sys.modules.get("fastgrad.errors"), "GradcheckWarning", None)
    ours = tuple(first_line(text(w.message)) for w in caught
                 if warning_class is not None and issubclass(w.category, warning_class))
    if result is False:
        verdict = "fail"
    else:
        verdict = "pass with warning" if ours else "pass"
    return Outcome(verdict, seconds, result=result, warnings=ours, caught=tuple(caught),
                   collector_seconds=collections.seconds)


class CallLog:
    """The record of every routed call of one session: per call, the node id, the checker,
    fast_mode, a fallback's reason, each checker's outcome (``Outcome.as_dict``) and whether the
    two agree; the summary (counts and times per checker, the disagreements) and the JSON.

    Parameters
    ----------
    mode : str
        "replace" or "compare": the summary's shape follows it.
    order : str
        Compare mode: "original-first" (the original checker runs first on every call),
        "alternate" (fastgrad's runs first on every second compared call) or "fastgrad-first"
        (fastgrad's on every call).
    """

    def __init__(self, mode: str, order: str = "original-first"):
        self.mode, self.order = mode, order
        self.calls: list[dict] = []

    def summary(self) -> dict:
        """Counts and times per checker, and the disagreements (compare mode)."""
        out: dict[str, Any] = {"mode": self.mode, "calls": len(self.calls),
                               "fallbacks": sum(1 for c in self.calls if c["fallback"])}
        if self.mode == "compare":
            out["order"] = self.order
        for side in ("original", "fastgrad"):
            runs = [c[side] for c in self.calls if c[side] is not None]
            seconds = [r["seconds"] for r in runs]
            verdicts = [r["verdict"] for r in runs]
            out[side] = {
                "runs": len(runs),
                "passed": sum(v.startswith("pass") for v in verdicts),
                "passed_with_warning": sum(v == "pass with warning" for v in verdicts),
                "failed": sum(v == "fail" for v in verdicts),
                "errors": sum(v.startswith("error") for v in verdicts),
                "total_seconds": sum(seconds),
                "median_seconds": statistics.median(seconds) if seconds else None,
                "collector_seconds": sum(r.get("collector_seconds", 0.0) for r in runs),
            }
        compared = [c for c in self.calls if c["agree"] is not None]
        original_time = sum(c["original"]["seconds"] for c in compared)
        fastgrad_time = sum(c["fastgrad"]["seconds"] for c in compared)
        out["compared"] = len(compared)
        out["ratio_fastgrad_to_original"] = (fastgrad_time / original_time
                                             if compared and original_time > 0 else None)
        out["disagreements"] = [{"node": c["node"], "checker": c["checker"],
                                 "original": c["original"]["verdict"],
                                 "fastgrad": c["fastgrad"]["verdict"]}
                                for c in compared if not c["agree"]]
        return out

    def as_dict(self) -> dict:
        """``{"calls": [one dict per call], "summary": summary()}``, JSON-ready."""
        return {"calls": self.calls, "summary": self.summary()}

    def summary_lines(self) -> list[str]:
        """The terminal summary: one line in replace mode, a section in compare mode."""
        summary = self.summary()
        ours = summary["fastgrad"]
        if self.mode == "replace":
            return [f"fastgrad gradcheck: {summary['calls']} calls routed to fastgrad "
                    f"({summary['fallbacks']} fallbacks to the original): "
                    f"{_counts(ours)}; {_times(ours)}"]
        theirs = summary["original"]
        lines = [f"{summary['calls']} calls, {summary['compared']} compared, "
                 f"{summary['fallbacks']} fallbacks to the original checker only",
                 f"original: {_counts(theirs)}; {_times(theirs)}",
                 f"fastgrad: {_counts(ours)}; {_times(ours)}"]
        ratio = summary["ratio_fastgrad_to_original"]
        if ratio is not None:
            first = {"original-first": "the original first on every call",
                     "fastgrad-first": "fastgrad first on every call"}.get(
                self.order, "each first on every second call")
            lines.append(f"time fastgrad / original: {ratio:.2f} ({first})")
        lines.append(f"disagreements: {len(summary['disagreements'])}")
        for call in self.calls:
            if call["agree"] is False:
                lines.append(f"  {call['node'] or '(outside tests)'}: {call['checker']}: "
                             f"original {call['original']['verdict']}, "
                             f"fastgrad {call['fastgrad']['verdict']}")
                for side in ("fastgrad", "original"):
                    lines.append(f"    {side}:")
                    lines += [f"      {line}" for line in call[side]["message"].splitlines()]
        for call in self.calls:
            if call["fallback"]:
                lines.append(f"  {call['node'] or '(outside tests)'}: {call['checker']}: "
                             f"{call['fallback']}")
        return lines


def _counts(side: dict) -> str:
    warned = side["passed_with_warning"]
    return (f"{side['runs']} runs, {side['passed']} passed" + (f" ({warned} with warning)" if warned else "")
            + f", {side['failed']} failed, {side['errors']} errors")


def _times(side: dict) -> str:
    if not side["runs"]:
        return "no runs"
    return (f"{side['total_seconds']:.3f} s in total, median {side['median_seconds']:.4f} s "
            f"(+ {side['collector_seconds']:.3f} s of full garbage collections)")
