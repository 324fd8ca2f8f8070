"""check() and assert_gradients(): centered differences on coordinates sampled from every
segment, judged coordinate by coordinate.

prepare -> sampling -> steps -> engine (pairs) -> judge (verdicts, re-checks) -> results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import GradientCheckError, InvalidValue
from ..judge.noise import UNMEASURED, inconclusive_note, measure_noise
from ..judge.rechecks import Judge, scaled
from ..judge.verdicts import segment_stats
from ..results.report import (
    CoordRecords,
    Report,
    SegmentReport,
    Unjudged,
    max_all,
    overall_status,
)
from ..sampling import sample_coordinates
from ..segments import SegmentMap
from ..steps import coordinate_steps
from ..tuning import DEFAULT_TUNING, Tuning
from .prepare import Prepared, prepare

__all__ = ["check", "assert_gradients", "Problem"]


@dataclass
class Problem:
    """What ``fastgrad check MODULE:FACTORY`` expects FACTORY() to return.

    Attributes
    ----------
    f : callable
        The loss, ``f(theta, *args)``.
    theta : numpy.ndarray
        The flat parameter vector.
    grad : numpy.ndarray, callable or bool
        The analytic gradient, a callable ``grad(theta, *args)``, or True when f returns
        ``(loss, gradient)``.
    segments : SegmentMap, mapping or None
        The segment map (or ``{name: shape}``).
    args : tuple
        Extra arguments of f.
    options : dict
        More check() options, e.g. ``{"depth": 3, "samples": "all"}``.

    Examples
    --------
    >>> def my_problem():                  # in mymodule.py; then: fastgrad check mymodule:my_problem
    ...     theta, segs = fg.flatten({"W": W, "b": b})
    ...     return fg.Problem(loss, theta, grad, segments=segs, args=(X, y))
    """

    f: Callable
    theta: np.ndarray
    grad: np.ndarray | Callable | bool
    segments: SegmentMap | Mapping | None = None
    args: tuple = ()
    options: dict = field(default_factory=dict)


def check(
    f: Callable,
    theta: np.ndarray,
    grad: np.ndarray | Callable | Mapping | bool,
    *,
    args: tuple = (),
    segments: SegmentMap | Mapping | None = None,
    samples: int | str | Mapping = 16,
    h: float | str = "auto",
    seed: int = 0,
    depth: int = 1,
    tol: float | None = None,
    kinks: str | Callable = "detect",
    workers: int | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
    nondet_tol: float = 0.0,
    jit: bool | str = "auto",
    backend: str | None = None,
    timeout: float | None = None,
    tuning: Tuning = DEFAULT_TUNING,
) -> Report:
    """Compare the analytic gradient with centered differences on sampled coordinates.

    ``samples`` coordinates of every segment are checked with ``(f(x+h) - f(x-h)) / 2h``; a
    coordinate fails when its relative error ``|a - n| / max(|a|, |n|)`` exceeds ``tol``.
    Kink crossings are re-checked with smaller steps, disagreements within the noise of f with
    larger ones; where the measured noise of f leaves the numeric derivative uncertain by more
    than ``tol`` at every step tried, the coordinate is "inconclusive" and the check does not
    pass. ``theta`` and ``grad`` are never modified.

    Parameters
    ----------
    f : callable
        The loss, ``f(theta, *args) -> float`` (or a dict of loss terms, or ``(loss,
        gradient)`` with ``grad=True``). A Numba ``@njit`` function runs in parallel kernels.
        A loss value is any real value with exactly one element (what ``float(x)`` accepts:
        a number, a 0-d array, an array of shape ``(1,)`` or ``(1, 1)``); more elements are
        refused.
    theta : numpy.ndarray or list
        The flat parameter vector: a 1-D float64 or float32 array, or a list/tuple of numbers,
        taken as ``np.asarray(theta, np.float64)`` (f then receives that array). Any other
        shape is refused (f is called with the flat vector): pass ``theta.ravel()``, or
        ``fastgrad.flatten`` several arrays.
    grad : numpy.ndarray, callable, mapping or bool
        The analytic gradient at theta, ``grad(theta, *args)``, one gradient per loss term, or
        True when f returns ``(loss, gradient)``. Each gradient has theta's shape ``(n,)``
        (a list is converted); an ``(n, 1)`` column or ``(1, n)`` row is refused, never
        reinterpreted: pass ``np.ravel(grad)`` when its values are in theta's order.
    args : tuple
        Extra arguments of f.
    segments : SegmentMap, mapping or None
        The segment map or ``{name: shape}``; None: one segment "theta".
    samples : int, str or mapping
        Coordinates per segment: an int, ``{name: int}`` or "all".
    h : float or str
        The step; "auto": ``eps^(1/3) * max(1, |x_i|)``, exactly representable.
    seed : int
        Which coordinates are sampled depends only on seed, segments and samples.
    depth : int
        Network depth: the default tolerance grows with it.
    tol : float or None
        The failure threshold on the relative error; None: from dtype and depth.
    kinks : str or callable
        "detect", "ignore", or ``kinks(theta, *args) -> int``, an active-set signature.
    workers : int or None
        Parallel workers; None: all cores.
    backend : {None, "serial", "threads", "kernel", "processes", "forked"}
        Who evaluates the perturbed losses. None: chosen per loss and said in ``report.path``
        (a Python loss on Linux: batches shared with forked copies of this process where that
        is safe; elsewhere measured, and on threads only after a bitwise comparison with serial
        evaluations shows threads do not change its values); a name forces that backend
        ("kernel": the Numba prange kernel, reported as path "jit").
    executor : concurrent.futures.Executor or None
        Shard the evaluations over this executor (e.g. a Dask client's).
    progress : bool or None
        A progress bar; None: only on long checks in a terminal.
    nondet_tol : float
        The relative difference between two evaluations at theta that is accepted.
    jit : bool or str
        "auto": compile a plain numpy loss with Numba when that gives the same values.
    timeout : float or None
        Seconds one evaluation of f may take; one past it ends the check with ``LossTimeout``
        (a ``LossError``) naming the coordinate. Worker processes are stopped; a thread cannot
        be: the check raises at the deadline and the evaluation finishes in the background,
        its result discarded (serial evaluations run on a helper thread for this). Not applied
        to f at theta, the Numba kernel or ``executor=`` (refused there). None: no limit.
    tuning : Tuning
        The method's numbers (noise and re-check thresholds, the planner's timings, the
        thread-safety guard's size): ``fastgrad.Tuning()`` by default, or one with some
        changed, ``fastgrad.Tuning(gil_bound_seconds=1e-3)``. Used by this check only:
        concurrent checks with other tunings are not affected.

    Returns
    -------
    Report
        ``report.status`` ("passed", "failed", "inconclusive"), ``report.passed``, the rows in
        ``report.segments``, every coordinate in ``report.coords``; ``print(report)``.

    Raises
    ------
    ValueError
        Bad input, naming the argument: NaN in theta or grad, a size mismatch, a bad segment
        map, a non-finite loss at theta (``fastgrad.errors.InvalidValue``).
    TypeError
        An argument of the wrong type (``fastgrad.errors.InvalidType``).
    NondeterminismError
        f gave two different values at theta.
    LossError
        f raised at a perturbed point (the message names the coordinate), or took longer than
        ``timeout`` there (``fastgrad.LossTimeout``).

    Examples
    --------
    >>> theta, segs = fg.flatten({"W": W, "b": b})
    >>> report = fg.check(loss, theta, grad, segments=segs, samples=32)
    >>> print(report)            # one row per segment, then the worst coordinates
    """
    if not (kinks in ("detect", "ignore") or callable(kinks)):
        raise InvalidValue(f"kinks: expected 'detect', 'ignore' or a callable, got {kinks!r}")
    problem, ev = prepare(f, theta, grad, args=args, segments=segments, seed=seed, depth=depth,
                          tol=tol, workers=workers, executor=executor, progress=progress,
                          jit=jit, nondet_tol=nondet_tol, backend=backend, timeout=timeout,
                          tuning=tuning)
    try:
        return _check(problem, ev, samples, h, kinks)
    finally:
        ev.close()  # the worker processes' shared block goes now, also on error


def _check(problem: Prepared, ev, samples, h, kinks) -> Report:
    """check() after the preparation: sample, evaluate, judge, re-check, report."""
    seed = problem.seed
    x = problem.x
    index = sample_coordinates(problem.segments, samples, seed)
    step = coordinate_steps(x[index], h, x.dtype)
    f_plus, f_minus = ev.pairs(index, step)
    judge = Judge(ev, x, problem.f0, problem.grads, problem.tol, problem.eps, kinks,
                  problem.args)
    # first against the roundoff floor assumed from eps; the noise of f is measured only when
    # a coordinate fails there (a floor only ever excuses a failure, so a pass stands)
    stats = judge.verdicts(index, step, f_plus, f_minus)
    noise = UNMEASURED
    failing = np.zeros(index.size, dtype=bool)
    for s in stats:
        failing |= s.failed
    if ev.confirm_serially(index, step, f_plus, f_minus, failing):
        # threads changed f's values (a loss that is not thread-safe): judged again
        stats = judge.verdicts(index, step, f_plus, f_minus)
        failing[:] = np.any([s.failed for s in stats], axis=0)
    if failing.any():
        # along what the check perturbs: one coordinate (the first sampled)
        noise = measure_noise(ev, x, problem.f0, problem.seed, coordinate=int(index[0]))
        if h == "auto" and noise.step_gain > 1.0:
            # f is noisier than assumed: the failing coordinates again, at grown steps
            bad = np.flatnonzero(failing)
            step[bad] = scaled(x[index[bad]], step[bad], noise.step_gain, x.dtype)
            f_plus[bad], f_minus[bad] = ev.pairs(index[bad], step[bad], label="noise re-check")
        judge.noise_abs = noise.noise_abs
        stats = judge.verdicts(index, step, f_plus, f_minus)
        still = np.zeros(index.size, dtype=bool)
        for s in stats:
            still |= s.failed
        if not (failing & ~still).any():
            # the measured noise excused nothing: not worth a line of the report
            noise = replace(noise, note="")
    steps, rechecked = judge.recheck(index, step, stats)
    unsure = judge.mark_inconclusive(index, stats, steps, problem.segments.segment_ids(index))
    note = inconclusive_note(noise, int(np.count_nonzero(unsure))) if unsure.any() else ""
    return _report(problem, ev, index, stats, steps, rechecked, noise, note)


def _report(problem: Prepared, ev, index, stats, steps, rechecked, noise,
            inconclusive: str) -> Report:
    """Per segment, per term (the C accumulator again), then one Report."""
    segs = problem.segments
    term_names = list(problem.grads)
    seg_ids = segs.segment_ids(index)
    coords: list[dict] = []
    by_term: dict[str | None, dict[str, SegmentReport]] = {}
    for m, t in enumerate(term_names):
        s = stats[m]
        agg = segment_stats(seg_ids, s.rel_error, s.verdict, s.failed, s.kink, len(segs))
        unjudged = Unjudged.count(seg_ids, s.rel_error, s.verdict, len(segs))
        by_term[t] = {
            seg.name: SegmentReport(
                name=seg.name, size=seg.size, checked=int(agg.checked[p]),
                failed=int(agg.failed[p]), kinks=int(agg.kinks[p]),
                max_rel_error=float(agg.max_rel[p]),
                passed=bool(agg.failed[p] == 0 and unjudged.inconclusive[p] == 0),
                worst=int(index[agg.argmax[p]]) if agg.argmax[p] >= 0 else None,
                histogram=tuple(int(v) for v in agg.hist[p]),
                rechecked=int(np.count_nonzero(rechecked[seg_ids == p])), term=t,
                **unjudged.row(p),
            )
            for p, seg in enumerate(segs)
        }
        # the records are made when report.coords is read (CoordRecords): cheaper than 2 evals
        coords.append({"term": t, "index": index, "analytic": problem.grads[t][index],
                       "numeric": s.numeric, "rel_error": s.rel_error, "kink": s.kink,
                       "verdict": s.verdict, "step": steps[m], "failed": s.failed,
                       "noise": s.noise})
    f0 = problem.f0
    if problem.terms is None:
        segments_report = by_term[None]
        terms_report = {}
        loss_value: float | dict[str, float] = float(f0[0])
    else:
        terms_report = by_term
        segments_report = _merge_terms(by_term, segs)
        loss_value = {t: float(v) for t, v in zip(term_names, f0)}
    eligible = [s.max_rel_error for s in segments_report.values() if s.checked]
    return Report(
        status=overall_status(segments_report.values()),
        max_rel_error=float(max(eligible)) if eligible else 0.0,
        max_rel_error_all=max_all(s.max_rel_error_all for s in segments_report.values()),
        segments=segments_report, coords=CoordRecords(segs, coords), evaluations=ev.evaluations,
        tol=problem.tol, tol_reason=problem.tol_reason, path=ev.path, path_reason=ev.path_reason,
        dtype=problem.dtype.name, depth=problem.depth, seed=problem.seed, loss=loss_value,
        terms=terms_report, rechecked=int(np.count_nonzero(rechecked)),
        noise_sigma=(None if noise is UNMEASURED else noise.sigma[0] if problem.terms is None
                     else dict(zip(term_names, noise.sigma))),
        noise_note=noise.note, inconclusive_note=inconclusive,
    )


def _merge_terms(by_term, segs) -> dict[str, SegmentReport]:
    """One row per segment over all loss terms: counts summed, worst error kept."""
    merged = {}
    for seg in segs:
        rows = [by_term[t][seg.name] for t in by_term]
        worst = max(rows, key=lambda r: r.max_rel_error)
        merged[seg.name] = SegmentReport(
            name=seg.name, size=seg.size, checked=rows[0].checked,
            failed=sum(r.failed for r in rows), kinks=max(r.kinks for r in rows),
            max_rel_error=worst.max_rel_error, passed=all(r.passed for r in rows),
            worst=worst.worst,
            histogram=tuple(int(v) for v in np.sum([r.histogram for r in rows], axis=0)),
            rechecked=rows[0].rechecked, noise=sum(r.noise for r in rows),
            nan=sum(r.nan for r in rows), inconclusive=sum(r.inconclusive for r in rows),
            on_kink=sum(r.on_kink for r in rows), judged=sum(r.judged for r in rows),
            max_rel_error_all=max_all(r.max_rel_error_all for r in rows),
        )
    return merged


def assert_gradients(f: Callable, theta: np.ndarray,
                     grad: np.ndarray | Callable | Mapping | bool, **options) -> Report:
    """Like check(), but raise GradientCheckError (an AssertionError) unless the check passed.

    An inconclusive check (the noise of f hides the answer) raises too.

    Parameters
    ----------
    f : callable
        The loss, as for check().
    theta : numpy.ndarray
        The flat parameter vector.
    grad : numpy.ndarray, callable, mapping or bool
        The analytic gradient, as for check().
    **options
        Any other check() option (segments, samples, tol, ...).

    Returns
    -------
    Report
        The passing report.

    Raises
    ------
    GradientCheckError
        The check failed or was inconclusive; the message is the report's table and
        ``.report`` holds it.
    ValueError, TypeError, NondeterminismError, LossError
        As check().

    Examples
    --------
    >>> fg.assert_gradients(loss, theta, grad, segments=segs)   # silent when right
    """
    report = check(f, theta, grad, **options)
    if not report.passed:
        raise GradientCheckError(report)
    return report
