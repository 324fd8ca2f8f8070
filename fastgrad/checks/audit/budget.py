"""The audit's evaluation budget and its progress bar: what is left, what each phase spent."""

from __future__ import annotations

import math

from ...engine.evaluator import Evaluator
from ...progress import Progress

__all__ = ["Budget", "BudgetExhausted"]


class BudgetExhausted(Exception):
    """The evaluation budget ran out: the audit stops and reports what it has localized."""


class Budget:
    """The evaluations an audit may still spend (``limit``: at most that many in all; None: no
    limit), the evaluations spent per phase (``phases``, from the ones given: those before
    the audit's own) and the one progress bar of the audit.

    Every part of the audit asks ``require`` before it evaluates and calls ``spend`` after; the
    engine counts the evaluations (``ev.evaluations``), so the guard's serial re-runs count too.
    """

    def __init__(self, ev: Evaluator, limit: int | None, bar: Progress,
                 phases: dict[str, int] | None = None):
        self.ev, self.limit, self.bar = ev, limit, bar
        self.phases: dict[str, int] = dict(phases or {})

    @property
    def evaluations(self) -> int:
        """The evaluations spent so far (every call of f, the audit's first two included)."""
        return self.ev.evaluations

    def remaining(self) -> float:
        return math.inf if self.limit is None else self.limit - self.ev.evaluations

    def require(self, evaluations: int) -> None:
        """Raise BudgetExhausted unless ``evaluations`` more fit in the budget."""
        if evaluations > self.remaining():
            raise BudgetExhausted

    def spend(self, phase: str, before: int) -> None:
        """Count the evaluations made since ``before`` (an ``evaluations`` value) to ``phase``."""
        spent = self.ev.evaluations - before
        self.phases[phase] = self.phases.get(phase, 0) + spent
        # the backends move the bar evaluation by evaluation; this sets it to the true count
        # (re-checks and zero-gradient directions run outside them); the total is an estimate
        self.bar.total = max(self.bar.total, self.ev.evaluations)
        self.bar.count_to(self.ev.evaluations)

    def expect(self, evaluations: float, phase: str) -> None:
        """Re-estimate the evaluations left (at most the budget's) and show the phase."""
        self.bar.expect(int(min(evaluations, self.remaining())), label=f"audit {phase}")

    def phase(self, phase: str, evaluations: int) -> None:
        """Show ``phase`` on the progress bar, expecting ``evaluations`` more in it at least."""
        self.bar.label = f"audit {phase}"
        self.bar.total = max(self.bar.total, self.ev.evaluations + evaluations)

    def done(self) -> None:
        """The audit evaluates no more: the bar ends full."""
        self.bar.expect(0, label="audit done")
