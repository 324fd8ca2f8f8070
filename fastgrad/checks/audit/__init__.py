"""audit(): random-direction checks of every segment, then group-testing localization.

Each segment is tested with random directions against its analytic gradient, judged against
the noise floor (directions.py: the Measurer); a disagreeing segment is split in halves until
the wrong coordinates or blocks are found (localize.py: the Localizer), confirmed by check()'s
own coordinate verdicts (confirm.py: the Confirmer), the exact zeros of a wrong block judged
apart (zeros.py: the ZeroSettler). Every part spends from one Budget (budget.py) and writes what
it establishes to one Findings record (findings.py), which report.py turns into the AuditReport.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor

import numpy as np

from ...arguments import optional_positive_int
from ...engine.evaluator import Evaluator
from ...judge.rechecks import Judge
from ...progress import Progress
from ...results.audit_report import AuditReport, DirectionRecord
from ...segments import SegmentMap
from ...tuning import DEFAULT_TUNING, Tuning
from ..prepare import Prepared, prepare
from .budget import Budget, BudgetExhausted
from .confirm import Confirmer
from .directions import Measurer, Part, ThreadsRefused
from .findings import Findings
from .localize import Localizer
from .report import audit_report
from .zeros import ZeroSettler

__all__ = ["audit"]


def audit(
    f: Callable,
    theta: np.ndarray,
    grad: np.ndarray | Callable,
    *,
    args: tuple = (),
    segments: SegmentMap | Mapping | None = None,
    budget: int | None = None,
    seed: int = 0,
    depth: int = 1,
    tol: float | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
    nondet_tol: float = 0.0,
    jit: bool | str = "auto",
    backend: str | None = None,
    timeout: float | None = None,
    tuning: Tuning = DEFAULT_TUNING,
) -> AuditReport:
    """Audit every segment with random directions, then localize the wrong coordinates.

    Each segment is tested with ``(f(x+hv) - f(x-hv)) / 2h`` against ``grad . v`` for random
    directions v, judged against the noise floor; a disagreeing segment is split in halves
    (group testing) until the wrong coordinates or blocks are found and confirmed by check()'s
    own verdicts. A segment whose directions the measured noise of f leaves uncertain by more
    than ``tol`` is "inconclusive" and the audit does not pass.

    Parameters
    ----------
    f : callable
        The loss, ``f(theta, *args) -> float``: a value with exactly one element, as in
        ``fastgrad.check``.
    theta : numpy.ndarray or list
        The flat parameter vector (1-D, or a list of numbers), as in ``fastgrad.check``.
    grad : numpy.ndarray or callable
        The analytic gradient at theta, or ``grad(theta, *args)``, of theta's shape ``(n,)``.
    args : tuple
        Extra arguments of f.
    segments : SegmentMap, mapping or None
        The segment map or ``{name: shape}``; None: one segment "theta".
    budget : int or None
        The most loss evaluations to spend (at least 4): every call of f counts, the
        thread-safety guard's serial re-runs included; None: as many as localization needs.
    seed : int
        The seed of the random directions.
    depth : int
        Network depth: the tolerance grows with it.
    tol : float or None
        A coordinate's failure threshold on the relative error; None: from dtype and depth.
    workers : int or None
        Parallel workers; None: all cores.
    backend : {None, "serial", "threads", "kernel", "processes", "forked"}
        Who evaluates the perturbed losses. None: chosen per loss and said in ``report.path``
        (a Python loss on Linux: batches shared with forked copies of this process where that
        is safe; elsewhere measured, and on threads only after a bitwise comparison with serial
        evaluations shows threads do not change its values); a name forces that backend
        ("kernel": the Numba prange kernel, reported as path "jit").
    executor : concurrent.futures.Executor or None
        Shard the evaluations over this executor.
    progress : bool or None
        A progress bar; None: only on long audits in a terminal.
    nondet_tol : float
        The relative difference between two evaluations at theta that is accepted.
    jit : bool or str
        "auto": compile a plain numpy loss with Numba when that gives the same values.
    timeout : float or None
        Seconds one evaluation of f may take, as for check(): one past it raises
        ``LossTimeout`` naming the direction or coordinate. None: no limit.
    tuning : Tuning
        The method's numbers, as for check() (noise probe, re-checks, the planner, the
        thread-safety guard), and the audit's own: directions per test, the Richardson and
        smaller steps of a disagreeing direction, the leaf size, block samples and widest front
        of the localization. ``fastgrad.Tuning()`` by default, or one with some changed,
        ``fastgrad.Tuning(leaf_size=8)``. Used by this audit only: concurrent checks and audits
        with other tunings are not affected.

    Returns
    -------
    AuditReport
        ``report.status``, ``report.suspects`` (flat indices), ``report.blocks``, per-segment
        rows; ``print(report)``.

    Raises
    ------
    ValueError
        Bad input, naming the argument (``fastgrad.errors.InvalidValue``).
    TypeError
        An argument of the wrong type (``fastgrad.errors.InvalidType``).
    NondeterminismError
        f gave two different values at theta.
    LossError
        f raised at a perturbed point, or took longer than ``timeout`` there
        (``fastgrad.LossTimeout``).

    Examples
    --------
    >>> theta, segs = fg.flatten({"W1": W1, "b1": b1, "W2": W2, "b2": b2})
    >>> report = fg.audit(loss, theta, grad, segments=segs, budget=2000)
    >>> print(report); report.suspects          # flat indices localized as wrong
    """
    budget = optional_positive_int(
        "budget", budget, minimum=4,
        meaning=" loss evaluations (2 at theta, 2 per direction)")
    # one bar for the whole audit (the engine's per-batch bars stay off)
    problem, ev = prepare(f, theta, grad, args=args, segments=segments, seed=seed, depth=depth,
                          tol=tol, workers=workers, executor=executor, progress=False, jit=jit,
                          nondet_tol=nondet_tol, terms_allowed=False, backend=backend,
                          timeout=timeout, tuning=tuning)
    ev.budget = budget  # the engine keeps the guard's duplicates inside it too
    try:
        return _audit(problem, ev, budget, progress)
    finally:
        ev.close()  # the worker processes' shared block goes now, also on error


def _audit(problem: Prepared, ev: Evaluator, budget: int | None, progress) -> AuditReport:
    """audit() after the preparation."""
    segs = problem.segments
    judge = Judge(ev, problem.x, problem.f0, problem.grads, problem.tol, problem.eps)
    # the noise probe, the whole vector's direction (with several segments) and one per
    # segment; re-estimated by phase
    expected = (ev.evaluations + ev.tuning.noise_probe_evaluations + 2 * (len(segs) > 1)
                + 2 * len(segs))
    if budget is not None:
        expected = min(expected, budget)
    with Progress(total=expected, label="audit", enabled=progress) as bar:
        at_theta = ev.evaluations
        bar.update(ev.evaluations)
        try:
            return _run(problem, ev, judge, Budget(ev, budget, bar, {"theta": at_theta}))
        except ThreadsRefused:
            # threads changed f's values: every direction again with the plan that replaced
            # them (the same directions, so the verdicts are those of a serial audit)
            spent = {"theta": at_theta, "before threads were refused": ev.evaluations - at_theta}
            return _run(problem, ev, judge, Budget(ev, budget, bar, spent))


def _run(problem: Prepared, ev: Evaluator, judge: Judge, budget: Budget) -> AuditReport:
    """The audit's phases: the noise of f, one direction over the whole vector, the segments'
    own directions, then the localization of the segments that disagree."""
    segs, seed, n = problem.segments, problem.seed, problem.x.size
    findings = Findings()
    measurer = Measurer(ev, judge, segs, seed, budget, findings)
    confirmer = Confirmer(ev, judge, segs, budget, measurer.floor, findings)
    settler = ZeroSettler(ev, segs, seed, budget, measurer, confirmer, findings)
    localizer = Localizer(segs, seed, budget, measurer, confirmer, settler, findings)

    seg_records: dict[int, list[DirectionRecord]] = {p: [] for p in range(len(segs))}
    significant = np.zeros(len(segs), dtype=bool)
    roots: list[Part] = []
    try:
        measurer.measure_noise()
        # one direction over the whole vector: the cheap global test (with one segment, the
        # segment's own test below is that test)
        whole = len(segs) > 1 and measurer.test([Part(-1, 0, n)], "global")[0]
        # every segment on its own
        seg_parts = [Part(p, seg.start, seg.stop) for p, seg in enumerate(segs)]
        start = len(findings.directions)
        significant = measurer.test(seg_parts, "segments")
        if whole and not significant.any():
            # the whole vector disagreed and no segment did: an error that hid in the
            # segments' directions (a near cancellation) gets every direction there is
            significant = measurer.test(seg_parts, "segments", thorough=True)
            if not significant.any():
                findings.notes.append(
                    "the direction over the whole vector disagreed beyond its noise floor, but "
                    f"no segment's {ev.tuning.directions_per_test} directions did (truncation "
                    "or a kink along the whole vector, or an error below every segment's floor)")
        for rec in findings.directions[start:]:
            seg_records[segs.names.index(rec.segment)].append(rec)
        roots = [p for p, bad in zip(seg_parts, significant) if bad]
    except BudgetExhausted:
        findings.complete = False
        findings.notes.append("the budget ran out before every segment had a directional test")
        for p, seg in enumerate(segs):
            if not seg_records[p]:
                findings.unresolved.append((seg.name, seg.start, seg.stop))
    if roots:
        localizer.localize(roots)
    budget.done()
    return audit_report(findings, seg_records, significant, problem=problem, ev=ev, judge=judge,
                        budget=budget, level=measurer.floor.level)
